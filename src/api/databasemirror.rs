//! `DatabaseMirror`: a PostgreSQL primary with equal-spec mirrors that the
//! operator promotes when the primary fails.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{FailoverSpec, ReplicationStatus, Resources, StorageSpec};
use super::names::{max_name_length, name_rule};

/// The longest suffix a DatabaseMirror's builders append to its name: the
/// credentials Secret `<name>-credentials` (longer than `-postgresql`,
/// `-primary`, `-mirror`, `-agent`, `-rw`, `-ro` and the members' `-1` … `-9`).
pub const LONGEST_CHILD_SUFFIX: &str = "-credentials";
/// Longest DatabaseMirror name (51): every child name stays within 63.
pub const MAX_NAME_LENGTH: usize = max_name_length(LONGEST_CHILD_SUFFIX);

/// A PostgreSQL primary and `mirrors` streaming mirrors, every member built
/// from the one `instance` template so a promoted mirror performs exactly as
/// the primary did. Services `<name>-rw` (primary) and `<name>-ro` (healthy
/// mirrors), PodDisruptionBudgets and a credentials Secret `<name>-credentials`.
/// Members are named `<name>-1` … `<name>-<mirrors + 1>`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "hostwright.io",
    version = "v1alpha1",
    kind = "DatabaseMirror",
    plural = "databasemirrors",
    shortname = "dbm",
    category = "hostwright",
    namespaced,
    doc = "A PostgreSQL primary with equal-spec mirrors that Hostwright promotes when the primary fails.",
    status = "DatabaseMirrorStatus",
    derive = "PartialEq",
    printcolumn(name = "Primary", type_ = "string", json_path = ".status.currentPrimary", description = "Member taking writes"),
    printcolumn(name = "Mirrors", type_ = "integer", json_path = ".spec.mirrors", description = "Desired mirrors"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.ready", description = "Ready members / desired members"),
    printcolumn(name = "Lag", type_ = "integer", json_path = ".status.maxLagBytes", description = "Bytes the furthest mirror is behind"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Last-Failover", type_ = "date", json_path = ".status.failover.lastFailoverTime"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(
        "!has(self.spec.primary) || (self.spec.primary.startsWith(self.metadata.name + '-') \
         && self.spec.primary.substring(size(self.metadata.name) + 1).matches('^[1-9][0-9]*$') \
         && int(self.spec.primary.substring(size(self.metadata.name) + 1)) <= self.spec.mirrors + 1)"
    )
    .message("spec.primary must name a member of this DatabaseMirror: <name>-1 … <name>-<mirrors + 1>")
    .field_path(".spec.primary"),
    validation = name_rule("DatabaseMirror", MAX_NAME_LENGTH, "the Secret <name>-credentials")
)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseMirrorSpec {
    /// The one template every member (primary and mirrors) is built from.
    pub instance: InstanceTemplate,

    /// Mirrors beside the primary. Raise it to add read capacity and
    /// promotion candidates; a new mirror copies the primary without
    /// disturbing it.
    #[serde(default = "default_mirrors")]
    #[schemars(range(min = 1, max = 8))]
    pub mirrors: i32,

    /// `async`: commits return before a mirror has them (a failover may lose
    /// the last ones, bounded by `failover.maxLagBytes`). `sync`: commits wait
    /// for a mirror, and no acknowledged write is ever lost.
    #[serde(default)]
    pub replication: Replication,

    /// When and how a mirror is promoted after the primary fails.
    #[serde(default)]
    pub failover: FailoverSpec,

    /// Set to a member name to switch the primary over to it on purpose
    /// (clean demotion first, then the same steps as a failover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,

    /// Database created on first start and named in the credentials Secret.
    #[serde(default = "default_database")]
    #[schemars(regex(pattern = r"^[a-z_][a-z0-9_]{0,62}$"))]
    pub database: String,

    /// Role that owns `database`; the web tier connects as it.
    #[serde(default = "default_database")]
    #[schemars(regex(pattern = r"^[a-z_][a-z0-9_]{0,62}$"))]
    #[x_kube(validation = Rule::new("self != 'postgres' && self != 'replication'").message("owner must not be a role the operator reserves (postgres, replication)"))]
    pub owner: String,
}

fn default_mirrors() -> i32 {
    1
}

fn default_database() -> String {
    "app".into()
}

/// Settings PostgreSQL parameters may not override, because replication and
/// failover depend on them.
pub const RESERVED_PARAMETERS: &[&str] = &[
    "listen_addresses",
    "port",
    "wal_level",
    "hot_standby",
    "primary_conninfo",
    "primary_slot_name",
    "synchronous_standby_names",
    "synchronous_commit",
    "restore_command",
    "recovery_target",
    "archive_mode",
    "data_directory",
    "hba_file",
];

/// The specification shared by every member.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceTemplate {
    /// PostgreSQL container image; members run the same major version.
    #[serde(default = "default_postgres_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// CPU and memory of every member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Data volume of every member.
    pub storage: StorageSpec,
    /// `postgresql.conf` settings applied to every member (e.g.
    /// `shared_buffers: 512MB`). Settings replication depends on are reserved.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 128))]
    #[x_kube(validation = reserved_parameters_rule())]
    pub parameters: BTreeMap<String, String>,
}

/// CEL rule rejecting any reserved setting in `instance.parameters`, built
/// from [`RESERVED_PARAMETERS`] so the schema and the code cannot disagree.
fn reserved_parameters_rule() -> kube::core::Rule {
    let quoted: Vec<String> = RESERVED_PARAMETERS.iter().map(|p| format!("'{p}'")).collect();
    let message = format!(
        "parameters must not set a setting the operator manages for replication ({})",
        RESERVED_PARAMETERS.join(", ")
    );
    kube::core::Rule::new(format!("[{}].all(r, !(r in self))", quoted.join(", ")))
        .message(kube::core::Message::Message(message))
}

fn default_postgres_image() -> String {
    "postgres:15".into()
}

/// Replication mode between primary and mirrors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Replication {
    /// Commits return once on the primary's disk.
    #[default]
    Async,
    /// Commits return once a mirror has them too.
    Sync,
}

/// Observed state of a DatabaseMirror.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseMirrorStatus {
    /// Primary, members, failover history and conditions.
    #[serde(flatten)]
    pub replication: ReplicationStatus,
    /// Bytes the furthest healthy mirror is behind the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag_bytes: Option<i64>,
    /// Every member runs the instance template unchanged (equal spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equal_spec: Option<bool>,
    /// Secret with the database, user, password and URLs for `-rw` and `-ro`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn a_minimal_spec_gets_one_async_mirror_with_failover_on() {
        let spec: DatabaseMirrorSpec = serde_yaml::from_str("instance: {storage: {size: 10Gi}}").unwrap();
        assert_eq!(spec.mirrors, 1);
        assert_eq!(spec.replication, Replication::Async);
        assert!(spec.failover.enabled);
        assert_eq!(spec.failover.delay.to_string(), "5s");
        assert_eq!(spec.instance.image, "postgres:15");
        assert_eq!((spec.database.as_str(), spec.owner.as_str()), ("app", "app"));
        assert!(!spec.instance.storage.delete_on_removal);
    }

    #[test]
    fn the_reserved_parameter_rule_names_every_reserved_setting() {
        let crd = serde_json::to_string(&DatabaseMirror::crd()).unwrap();
        for p in RESERVED_PARAMETERS {
            assert!(crd.contains(&format!("'{p}'")), "{p} is checked by the CEL rule");
        }
    }

    #[test]
    fn the_switchover_rule_sits_at_the_root_where_metadata_name_is_visible() {
        let crd = DatabaseMirror::crd();
        let schema = crd.spec.versions[0].schema.as_ref().unwrap();
        let root = schema.open_api_v3_schema.as_ref().unwrap();
        let rules = root.x_kubernetes_validations.as_ref().unwrap();
        assert!(rules.iter().any(|r| r.rule.contains("self.metadata.name")));
    }
}

//! `DatabaseMirror`: a PostgreSQL primary with equal-spec mirrors that the
//! operator promotes when the primary fails.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::backup::{BackupSpec, BackupStatus, BootstrapSpec};
use super::common::{
    DataDurability, FailoverSpec, ReplicationStatus, Resources, StorageSpec, StoreTlsSpec, UpdateStrategy,
};
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
#[x_kube(
    validation = Rule::new("self.dataDurability == 'required' || self.replication == 'sync'")
        .message("dataDurability: preferred applies only to replication: sync")
        .field_path(".dataDurability"),
    validation = Rule::new("has(self.bootstrap) == has(oldSelf.bootstrap)")
        .message("bootstrap is set at creation and never added or removed")
        .field_path(".bootstrap"),
    validation = Rule::new(
        "!has(self.bootstrap) || !has(self.backup) || !has(self.backup.objectStore.path) \
         || self.backup.objectStore.endpoint != self.bootstrap.recovery.source.endpoint \
         || self.backup.objectStore.bucket != self.bootstrap.recovery.source.bucket \
         || self.backup.objectStore.path != self.bootstrap.recovery.source.path"
    )
    .message("backup.objectStore must not be the recovery source: the recovered database's new timeline would collide with the source's WAL")
    .field_path(".backup.objectStore.path")
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

    /// With `replication: sync`, what happens while no mirror is healthy:
    /// `required` (default) blocks writes and says so; `preferred` keeps
    /// taking them without a mirror's acknowledgement, and says so.
    #[serde(default)]
    pub data_durability: DataDurability,

    /// When and how a mirror is promoted after the primary fails.
    #[serde(default)]
    pub failover: FailoverSpec,

    /// How members move to a changed template: mirrors one at a time, then
    /// the primary (`primary: switchover`, `restart` or `supervised`).
    #[serde(default)]
    pub update_strategy: UpdateStrategy,

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

    /// Where the server certificate comes from. Clients and replication
    /// always use TLS; by default the operator keeps a CA for the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<StoreTlsSpec>,

    /// Continuous WAL archiving to an S3-compatible object store. No
    /// archiving when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,

    /// Start from another database's backups instead of empty. Set at
    /// creation only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("bootstrap is set at creation and never changes"))]
    pub bootstrap: Option<BootstrapSpec>,
}

/// The most mirrors a DatabaseMirror may have (the schema's bound on `mirrors`).
pub const MAX_MIRRORS: i32 = 8;

fn default_mirrors() -> i32 {
    1
}

fn default_database() -> String {
    "app".into()
}

/// Settings PostgreSQL parameters may not override, because replication and
/// failover depend on them, and the directives that would read another file.
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
    // Directives, not settings: they would read another file as configuration.
    "include",
    "include_dir",
    "include_if_exists",
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
    /// `shared_buffers: 512MB`), each written as a quoted string. Names are
    /// lower-case PostgreSQL setting names; settings replication depends on
    /// are reserved.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 128,
        "additionalProperties" = {"type": "string", "maxLength": 1024, "pattern": PARAMETER_VALUE_PATTERN}
    ))]
    #[x_kube(validation = parameter_names_rule(), validation = reserved_parameters_rule())]
    pub parameters: BTreeMap<String, String>,
}

/// A setting name as PostgreSQL's configuration lexer reads one (`ID` or
/// `QUALIFIED_ID`: letters, digits and `_`, not starting with a digit, one
/// `.` for an extension's setting), in lower case so that one spelling
/// names one setting. `[.]`, not `\.`: the pattern goes into a CEL string.
pub const PARAMETER_NAME_PATTERN: &str = "^[a-z_][a-z0-9_]*([.][a-z_][a-z0-9_]*)?$";

/// No control characters (Unicode `Cc`: newline, CR, NUL, DEL, …) in a
/// parameter value: a newline would end the setting's line and start another.
pub const PARAMETER_VALUE_PATTERN: &str = r"^\P{Cc}*$";

/// `name` is a setting name of [`PARAMETER_NAME_PATTERN`].
pub fn is_parameter_name(name: &str) -> bool {
    let word = |w: &str| {
        w.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && w.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    match name.split_once('.') {
        Some((extension, setting)) => word(extension) && word(setting),
        None => word(name),
    }
}

/// `name` is in [`RESERVED_PARAMETERS`], in any case: PostgreSQL reads
/// `WAL_LEVEL` as `wal_level`.
pub fn is_reserved_parameter(name: &str) -> bool {
    RESERVED_PARAMETERS.iter().any(|r| r.eq_ignore_ascii_case(name))
}

/// CEL rule holding every key of `instance.parameters` to [`PARAMETER_NAME_PATTERN`],
/// so nothing but a setting name reaches the left of `=` in postgresql.conf.
fn parameter_names_rule() -> kube::core::Rule {
    kube::core::Rule::new(format!("self.all(k, k.matches('{PARAMETER_NAME_PATTERN}'))")).message(
        kube::core::Message::Message(
            "parameter names must be PostgreSQL setting names in lower case: letters, digits and '_', not \
             starting with a digit, with one '.' for an extension's setting (e.g. shared_buffers, \
             pg_stat_statements.max)"
                .into(),
        ),
    )
}

/// CEL rule rejecting any reserved setting in `instance.parameters`, built
/// from [`RESERVED_PARAMETERS`] so the schema and the code cannot disagree.
/// Case is ignored, as PostgreSQL ignores it.
fn reserved_parameters_rule() -> kube::core::Rule {
    let quoted: Vec<String> = RESERVED_PARAMETERS.iter().map(|p| format!("'{p}'")).collect();
    let message = format!(
        "parameters must not set a setting the operator manages for replication, nor include another file \
         ({}), in any case",
        RESERVED_PARAMETERS.join(", ")
    );
    kube::core::Rule::new(format!("self.all(k, !(k.lowerAscii() in [{}]))", quoted.join(", ")))
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
    /// WAL archiving (when `spec.backup` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupStatus>,
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
    fn parameter_names_follow_postgresqls_syntax_in_lower_case() {
        let re = regex::Regex::new(PARAMETER_NAME_PATTERN).unwrap();
        for ok in
            ["shared_buffers", "work_mem", "_x", "pg_stat_statements.max", "auto_explain.log_min_duration"]
        {
            assert!(re.is_match(ok) && is_parameter_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Shared_Buffers",
            "WAL_LEVEL",
            "1abc",
            "a.b.c",
            "a.",
            ".a",
            "a.1b",
            "max connections",
            "port = 1 #",
            "a-b",
            "a\nb",
            "wal_level\n",
        ] {
            assert!(!re.is_match(bad) && !is_parameter_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn parameter_values_may_not_hold_control_characters() {
        let re = regex::Regex::new(PARAMETER_VALUE_PATTERN).unwrap();
        for ok in ["512MB", "", "'quoted'", "back\\slash", "ünïcode", "a b"] {
            assert!(re.is_match(ok), "{ok:?}");
        }
        for bad in ["x\nsynchronous_commit = off", "a\rb", "a\0b", "tab\t", "del\u{7f}", "c1\u{85}"] {
            assert!(!re.is_match(bad), "{bad:?}");
            assert!(bad.chars().any(char::is_control), "the builders refuse {bad:?} too");
        }
    }

    #[test]
    fn reserved_names_are_refused_in_any_case() {
        assert!(is_reserved_parameter("wal_level"));
        assert!(is_reserved_parameter("WAL_LEVEL"));
        assert!(is_reserved_parameter("Synchronous_Commit"));
        assert!(is_reserved_parameter("include"));
        assert!(!is_reserved_parameter("shared_buffers"));
        let crd = serde_json::to_string(&DatabaseMirror::crd()).unwrap();
        assert!(crd.contains("self.all(k, !(k.lowerAscii() in ['listen_addresses'"), "{crd}");
        assert!(crd.contains(&format!("k.matches('{PARAMETER_NAME_PATTERN}')")));
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

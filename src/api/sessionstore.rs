//! `SessionStore`: user sessions held out of process, so web servers can be
//! restarted or upgraded without logging anyone out.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    DataDurability, FailoverSpec, LocalObjectReference, ReplicationStatus, Resources, StorageSpec,
    StoreTlsSpec, UpdateStrategy,
};
use super::names::{max_name_length, name_rule};

/// The longest suffix a SessionStore's builders append to its name: the
/// connection Secret `<name>-connection` (longer than `-replicas`,
/// `-primary`, `-replica`, `-redis`, `-agent` and the members' `-1` … `-9`).
pub const LONGEST_CHILD_SUFFIX: &str = "-connection";
/// Longest SessionStore name (52): every child name stays within 63.
pub const MAX_NAME_LENGTH: usize = max_name_length(LONGEST_CHILD_SUFFIX);

/// An out-of-process session store for web clusters: a Redis primary with
/// replicas that the operator promotes when the primary fails, or an existing
/// endpoint (`external`). Services `<name>` (primary) and `<name>-replicas`,
/// a PodDisruptionBudget and a connection Secret `<name>-connection` whose
/// contents stay the same across promotions.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "hostwright.io",
    version = "v1alpha1",
    kind = "SessionStore",
    plural = "sessionstores",
    shortname = "sst",
    category = "hostwright",
    namespaced,
    doc = "An out-of-process session store (Redis) for web clusters, with replica promotion.",
    status = "SessionStoreStatus",
    derive = "PartialEq",
    printcolumn(name = "Engine", type_ = "string", json_path = ".spec.engine"),
    printcolumn(
        name = "Primary",
        type_ = "string",
        json_path = ".status.currentPrimary",
        description = "Member taking writes"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.ready",
        description = "Ready members / desired members"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(
        "!has(self.spec.primary) || (self.spec.primary.startsWith(self.metadata.name + '-') \
         && self.spec.primary.substring(size(self.metadata.name) + 1).matches('^[1-9][0-9]*$') \
         && int(self.spec.primary.substring(size(self.metadata.name) + 1)) <= self.spec.replicas + 1)"
    )
    .message("spec.primary must name a member of this SessionStore: <name>-1 … <name>-<replicas + 1>")
    .field_path(".spec.primary"),
    validation = name_rule("SessionStore", MAX_NAME_LENGTH, "the Secret <name>-connection")
)]
#[x_kube(
    validation = Rule::new("!has(self.external) || !has(self.storage)")
        .message("storage cannot be set for an external session store: the operator deploys nothing for it")
        .field_path(".storage"),
    validation = Rule::new("!has(self.external) || !has(self.tls)")
        .message("tls cannot be set for an external session store: its certificates are its own")
        .field_path(".tls"),
    validation = Rule::new("self.dataDurability == 'required' || self.durability == 'wait'")
        .message("dataDurability: preferred applies only to durability: wait")
        .field_path(".dataDurability")
)]
#[serde(rename_all = "camelCase")]
pub struct SessionStoreSpec {
    /// The session store server. Only `redis` today.
    #[serde(default)]
    pub engine: SessionEngine,

    /// Container image of the server.
    #[serde(default = "default_redis_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// Replicas beside the primary. Each is a promotion candidate; 0 leaves
    /// sessions with no copy (fine for staging, not for production).
    #[serde(default = "default_session_replicas")]
    #[schemars(range(min = 0, max = 8))]
    pub replicas: i32,

    /// CPU and memory of each member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,

    /// Persist sessions (append-only file) on a volume per member. Without it
    /// sessions live in memory and on the replicas only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,

    /// `async`: a promotion may lose the last writes not yet replicated.
    /// `wait`: the agent reports the offset clients confirmed with `WAIT`,
    /// and a promotion never picks a replica behind a confirmed write.
    #[serde(default)]
    pub durability: Durability,

    /// With `durability: wait`, what happens while no replica is healthy:
    /// `required` (default) refuses writes (`min-replicas-to-write`) and
    /// says so; `preferred` keeps taking them, and says so.
    #[serde(default)]
    pub data_durability: DataDurability,

    /// When and how a replica is promoted after the primary fails.
    #[serde(default)]
    pub failover: FailoverSpec,

    /// How members move to a changed template: mirrors one at a time, then
    /// the primary (`primary: switchover`, `restart` or `supervised`).
    #[serde(default)]
    pub update_strategy: UpdateStrategy,

    /// The member that should be primary. Set it to another member to switch
    /// over on purpose (before maintenance); unset, the operator keeps
    /// whichever member is primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub primary: Option<String>,

    /// Use an existing session store instead of deploying one. The operator
    /// checks that it answers and publishes it in `<name>-connection`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalSessionStore>,

    /// Where the server certificate comes from. Clients and replication
    /// always use TLS; by default the operator keeps a CA for the store.
    /// Not for an external store (its TLS is its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<StoreTlsSpec>,
}

fn default_redis_image() -> String {
    "redis:7.4".into()
}

fn default_session_replicas() -> i32 {
    1
}

/// Session store server software.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionEngine {
    /// Redis 7 (or a protocol-compatible server).
    #[default]
    Redis,
}

/// How much a promotion may lose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Replicate in the background; fastest, may lose the last writes.
    #[default]
    Async,
    /// Writes confirmed with `WAIT` survive any promotion.
    Wait,
}

/// An existing session store the web clusters should use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalSessionStore {
    /// Secret (same namespace) holding either `url`, or `host` and `port`
    /// (with an optional `password`).
    pub secret_ref: LocalObjectReference,
}

/// Observed state of a SessionStore.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionStoreStatus {
    /// Primary (`external` for an external store), members, failover history
    /// and conditions.
    #[serde(flatten)]
    pub replication: ReplicationStatus,
    /// Secret holding the connection URL, host, port and password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_secret: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_spec_is_one_redis_primary_with_one_replica() {
        let spec: SessionStoreSpec = serde_yaml::from_str("{}").unwrap();
        assert_eq!(spec.engine, SessionEngine::Redis);
        assert_eq!(spec.replicas, 1);
        assert_eq!(spec.durability, Durability::Async);
        assert!(spec.external.is_none());
        assert!(spec.failover.enabled);
    }

    #[test]
    fn an_external_store_names_its_secret() {
        let spec: SessionStoreSpec =
            serde_yaml::from_str("external: {secretRef: {name: provider-redis}}").unwrap();
        assert_eq!(spec.external.unwrap().secret_ref.name, "provider-redis");
    }
}

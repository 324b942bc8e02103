//! Types shared by the three kinds: conditions, references, storage, and the
//! failover settings and member status used by both replicated stores.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use kube::core::{Message, Rule};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::GoDuration;

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// API group of every Hostwright kind.
pub const GROUP: &str = "hostwright.io";

/// Condition types every kind reports (Kubernetes API conventions).
pub mod condition_type {
    /// The object does what it was asked to do and its dependencies are Ready.
    pub const READY: &str = "Ready";
    /// A change (rollout, scale, failover, bootstrap) is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// Running with less redundancy or capacity than asked for.
    pub const DEGRADED: &str = "Degraded";
    /// Stores: a drain of the primary's node waits, and why.
    pub const DRAIN_BLOCKED: &str = "DrainBlocked";
}

/// A reference to another Hostwright object in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
pub struct LocalObjectReference {
    /// Name of the object, in the same namespace as the referring object.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: String,
    /// Not supported: named only so that a reference across namespaces is
    /// refused with a reason instead of silently read as a local one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("false").message(
        "references are same-namespace: the referenced object must live in this object's namespace \
         (a site's stores belong to the site); remove namespace"
    ))]
    pub namespace: Option<String>,
}

/// Where a store's server certificate comes from. Without `issuerRef` the
/// operator keeps a certificate authority of its own for the store (the
/// default, nothing to set up).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoreTlsSpec {
    /// A cert-manager issuer that signs the store's server certificate: the
    /// operator asks for it with a cert-manager Certificate and members load
    /// each renewal without a restart. The issuer must put its CA in the
    /// Secret (`ca.crt`), as CA and Vault issuers do: clients verify the
    /// server against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
}

/// A cert-manager issuer, as cert-manager's own `issuerRef` names one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
pub struct IssuerRef {
    /// Name of the issuer (an `Issuer` in the store's namespace, or a
    /// `ClusterIssuer`).
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: String,
    /// `Issuer` (default) or `ClusterIssuer`, or an external issuer's kind.
    #[serde(default = "default_issuer_kind")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[A-Z][A-Za-z0-9]*$"))]
    pub kind: String,
    /// API group of the issuer; `cert-manager.io` by default.
    #[serde(default = "default_issuer_group")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub group: String,
}

fn default_issuer_kind() -> String {
    "Issuer".into()
}

fn default_issuer_group() -> String {
    "cert-manager.io".into()
}

/// A persistent volume for a member's data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Requested size of each member's volume, e.g. `10Gi`. Raising it
    /// expands the volumes where their StorageClass allows; it never shrinks.
    #[x_kube(validation = storage_never_shrinks_rule())]
    pub size: Quantity,
    /// StorageClass of the volumes; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Delete the volumes when the owning object is deleted. Off by default:
    /// customer data outlives the object unless you say otherwise.
    #[serde(default)]
    pub delete_on_removal: bool,
}

/// CEL transition rule: `storage.size` may grow, never shrink (a volume
/// cannot give space back). Sizes CEL cannot read are left to the API.
fn storage_never_shrinks_rule() -> Rule {
    Rule::new(
        "!isQuantity(string(oldSelf)) || !isQuantity(string(self)) || \
         quantity(string(self)).compareTo(quantity(string(oldSelf))) >= 0",
    )
    .message(Message::Message(
        "storage.size cannot shrink: a volume cannot give space back (create a new store and move the data \
         to use smaller volumes)"
            .into(),
    ))
}

/// CPU and memory for a container; a plain Kubernetes ResourceRequirements.
pub type Resources = ResourceRequirements;

/// Longest `failover.delay` the API accepts. The delay is how long a primary
/// may be unhealthy before a mirror is promoted, and the site takes no writes
/// for all of it: past an hour, waiting is no longer riding out a blip but an
/// outage (and a human's call: `enabled: false` says "never promote").
pub const MAX_FAILOVER_DELAY: GoDuration = GoDuration::from_secs(3600);
/// [`MAX_FAILOVER_DELAY`] as users write it (and as the CEL rule states it).
pub const MAX_FAILOVER_DELAY_TEXT: &str = "1h";

/// When and how the operator promotes a mirror (or replica) after the primary fails.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSpec {
    /// Promote a mirror automatically when the primary is lost. When false the
    /// operator reports the loss and waits for a planned switchover.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How long the primary must be unhealthy before a mirror is promoted
    /// (Go duration, e.g. `5s`, `1m30s`; 0s to 1h). Shorter is faster, longer rides out blips.
    #[serde(default = "default_failover_delay")]
    #[x_kube(validation = failover_delay_rule())]
    pub delay: GoDuration,
    /// A mirror further behind the primary than this many bytes of replication
    /// stream is never promoted automatically, so a failover cannot silently
    /// drop more than this much acknowledged data in async mode.
    #[serde(default = "default_max_lag_bytes")]
    #[schemars(range(min = 0))]
    pub max_lag_bytes: i64,
}

impl Default for FailoverSpec {
    fn default() -> Self {
        Self { enabled: true, delay: default_failover_delay(), max_lag_bytes: default_max_lag_bytes() }
    }
}

fn default_true() -> bool {
    true
}

fn default_failover_delay() -> GoDuration {
    GoDuration::from_secs(5)
}

/// CEL rule holding `failover.delay` to [`MAX_FAILOVER_DELAY`]. A string
/// the pattern refuses is left to the pattern's message; one that matches
/// but is too large for any duration makes CEL's `duration()` fail, and the
/// API server then reports this rule's message with the failure.
fn failover_delay_rule() -> Rule {
    Rule::new(format!(
        "!self.matches(r'{}') || duration(self) <= duration('{MAX_FAILOVER_DELAY_TEXT}')",
        GoDuration::PATTERN
    ))
    .message(Message::Message(format!(
        "failover.delay must be between 0s and {MAX_FAILOVER_DELAY_TEXT}: it is how long a primary may be \
         unhealthy before a mirror is promoted, and the site takes no writes meanwhile \
         (to never promote automatically, set failover.enabled: false)"
    )))
}

/// 16 MiB: one WAL segment.
fn default_max_lag_bytes() -> i64 {
    16 * 1024 * 1024
}

/// How members move to a changed template (image, resources, settings, or
/// the operator's own agent): the mirrors one at a time, each streaming and
/// caught up before the next is touched, then the primary.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStrategy {
    /// How the primary moves once every mirror runs the new template.
    #[serde(default)]
    pub primary: PrimaryUpdate,
}

/// How a rolling update moves the primary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PrimaryUpdate {
    /// A planned switchover to an updated mirror (writes pause for about a
    /// second), then the old primary is updated as a mirror.
    #[default]
    Switchover,
    /// The primary is restarted in place: writes pause until it is back, and
    /// no failover is started for a restart that stays within a minute.
    Restart,
    /// Wait for a person to set `spec.primary` to an updated member; the
    /// Progressing condition says so.
    Supervised,
}

/// What synchronous replication (DatabaseMirror `replication: sync`,
/// SessionStore `durability: wait`) does while no mirror can acknowledge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DataDurability {
    /// Writes wait for a mirror's acknowledgement and block while none can
    /// give one (Ready=False, reason WritesBlocked): no acknowledged write is
    /// ever lost.
    #[default]
    Required,
    /// While no mirror is healthy the primary takes writes without waiting
    /// (Degraded, reason DurabilityRelaxed), and waits again once a mirror
    /// streams; a failover in that window can lose those writes.
    Preferred,
}

/// What a member of a replicated store is doing right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MemberRole {
    /// Takes writes; the read-write Service points at it.
    Primary,
    /// Streams from the primary; serves reads.
    Mirror,
    /// A former primary cut off from writes until it rejoins as a mirror.
    Fenced,
    /// Being created or bootstrapped; not yet part of replication.
    Pending,
}

/// Observed state of one member (pod) of a replicated store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Member (and pod) name.
    pub name: String,
    /// Role the member is in.
    pub role: MemberRole,
    /// The member's server answers and its agent renews its lease.
    pub healthy: bool,
    /// Replication position the member reported, in bytes of stream
    /// (a PostgreSQL LSN or a Redis replication offset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<i64>,
    /// How far this member is behind the primary, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<i64>,
    /// The member's spec differs from the shared instance template (changed by hand).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spec_drift: bool,
    /// When the member's agent last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_report_time: Option<Time>,
}

#[cfg(test)]
impl MemberStatus {
    /// A member as a status reports it, for tests.
    pub fn sample(name: &str, role: MemberRole, healthy: bool, lag_bytes: Option<i64>) -> Self {
        MemberStatus {
            name: name.into(),
            role,
            healthy,
            position: None,
            lag_bytes,
            spec_drift: false,
            last_report_time: None,
        }
    }
}

/// Failover history shared by the replicated stores' status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverStatus {
    /// When the last failover or switchover completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover_time: Option<Time>,
    /// How long the last failover took from detection to the new primary
    /// taking writes, in seconds (decimal string, e.g. `2.41`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover_duration: Option<String>,
    /// How far the promoted member was behind the old primary's last known
    /// position, in bytes: the most the last failover can have lost (0 with
    /// synchronous replication, or after a clean switchover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover_lag_bytes: Option<i64>,
    /// How many failovers and switchovers have completed.
    #[serde(default)]
    pub failover_count: i64,
}

/// Coarse lifecycle of a replicated store (SessionStore or DatabaseMirror),
/// for humans and printer columns; conditions carry the detail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StorePhase {
    /// Accepted; members not yet created.
    Pending,
    /// Members are being created, initialised or caught up.
    Bootstrapping,
    /// The primary takes writes and every mirror streams from it.
    Ready,
    /// The primary takes writes but some mirrors are missing or behind.
    Degraded,
    /// The primary was lost; the failover engine is promoting a mirror.
    FailingOver,
    /// A planned change of primary (`spec.primary`) is under way.
    SwitchingOver,
    /// A rolling update moves the members onto a changed template.
    Updating,
    /// No member can take writes and none may be promoted; see the conditions.
    Failed,
}

/// A step of the failover engine (see DESIGN.md, "Mirror promotion").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum EngineState {
    /// The first primary is being created.
    Bootstrapping,
    /// The primary takes writes.
    Steady,
    /// The primary is unhealthy; it is replaced if it stays so for `failover.delay`.
    Suspect,
    /// The old primary was fenced; waiting until it is known to take no writes.
    Fencing,
    /// A mirror was told to promote; waiting for its agent to report it.
    Promoting,
    /// Planned switchover: the primary was asked to stop taking writes.
    Demoting,
}

/// The failover engine's durable state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EngineStatus {
    pub state: EngineState,
    /// The primary (Bootstrapping once chosen, Steady, Suspect) or the
    /// member being replaced; empty while a first primary is being chosen.
    #[serde(default)]
    pub member: String,
    /// The member taking over (Promoting, Demoting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor: Option<String>,
    /// The fencing token of the instructions on the pods: raised whenever
    /// they change; agents ignore anything older.
    #[serde(default)]
    pub epoch: i64,
    /// The epoch at which the member being replaced was fenced (Fencing,
    /// Demoting): reports from that epoch on come from after the fence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_epoch: Option<i64>,
    /// When the state began, in milliseconds since the Unix epoch: unhealthy
    /// since (Suspect), demotion asked at (Demoting), promotion asked at
    /// (Promoting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
    /// When the failover or switchover began (Unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<i64>,
    /// The replaced primary's last known position (Suspect, Fencing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_position: Option<i64>,
    /// How far the member being promoted was behind the old primary's last
    /// known position, in bytes: the most an async failover can lose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<i64>,
    /// Promoting: the last step of a planned switchover, not a failover.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub planned: bool,
    /// Bootstrapping: no member can hold data, so the first may initialise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fresh: bool,
    /// Steady: the primary takes writes without a mirror's acknowledgement
    /// (`durability: preferred` while no mirror is healthy).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relaxed: bool,
}

/// Where a rolling update of the members stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The template revision the members are moving to.
    pub revision: String,
    /// Members running it, streaming and caught up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub updated: Vec<String>,
    /// Members still running an older revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outdated: Vec<String>,
    /// What the rollout waits for now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// The member that did not come back on the new revision: the rollout
    /// is halted and touches nothing else until the template changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted_on: Option<String>,
}

/// Status every replicated store reports (DatabaseMirror and SessionStore
/// share the failover engine, so they share how they report it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Coarse lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<StorePhase>,
    /// Member taking writes now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_primary: Option<String>,
    /// Member being promoted, while a failover or switchover is under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_primary: Option<String>,
    /// Ready members over desired members, e.g. `3/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// Per-member role, health, replication position and lag.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub members: Vec<MemberStatus>,
    /// Failover history.
    #[serde(default)]
    pub failover: FailoverStatus,
    /// A rolling update under way (absent when every member runs the template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// Where the failover engine stands. Kept here so that a restarted
    /// operator, or a new leader, resumes a failover where it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineStatus>,
    /// Ready, Progressing and Degraded, Kubernetes style.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_bound_is_one_hour_in_rust_and_in_the_rule() {
        assert_eq!(MAX_FAILOVER_DELAY_TEXT.parse::<GoDuration>(), Ok(MAX_FAILOVER_DELAY));
        assert_eq!(MAX_FAILOVER_DELAY.as_std(), std::time::Duration::from_secs(3600));
        let rule = failover_delay_rule();
        assert!(rule.rule.ends_with("|| duration(self) <= duration('1h')"), "{}", rule.rule);
        assert!(rule.rule.contains(GoDuration::PATTERN), "{}", rule.rule);
        let Some(Message::Message(message)) = rule.message else { panic!("a static message") };
        assert!(message.contains("between 0s and 1h"), "{message}");
    }

    #[test]
    fn the_delay_field_carries_the_bound_the_pattern_and_a_max_length() {
        let schema = serde_json::to_value(schemars::schema_for!(FailoverSpec)).unwrap();
        let delay = &schema["properties"]["delay"];
        assert_eq!(delay["type"], "string");
        assert_eq!(delay["pattern"], GoDuration::PATTERN);
        assert_eq!(delay["maxLength"], GoDuration::MAX_LENGTH);
        let rule = delay["x-kubernetes-validations"][0]["rule"].as_str().unwrap();
        assert!(rule.ends_with("duration(self) <= duration('1h')"), "{rule}");
    }

    #[test]
    fn a_delay_too_large_for_any_duration_is_a_serde_error_not_a_panic() {
        for delay in ["99999999999999999999h", "9223372036854775807h", "1e309s", "-1s", ""] {
            let yaml = format!("delay: '{delay}'");
            let err = serde_yaml::from_str::<FailoverSpec>(&yaml).unwrap_err();
            assert!(err.to_string().contains("invalid duration"), "{delay}: {err}");
        }
        let spec: FailoverSpec = serde_yaml::from_str("delay: 1m30s").unwrap();
        assert_eq!(spec.delay.to_string(), "1m30s");
        assert_eq!(FailoverSpec::default().delay.to_string(), "5s");
    }

    #[test]
    fn the_schema_pattern_admits_what_users_write_and_nothing_unbounded() {
        let re = regex::Regex::new(GoDuration::PATTERN).unwrap();
        for ok in ["5s", "1m30s", "1.5s", "500ms", "10us", "10µs", "1h"] {
            assert!(re.is_match(ok) && ok.parse::<GoDuration>().is_ok(), "{ok}");
        }
        for bad in ["soon", "-1s", "1e309s", "", "5", ".5s", "5 s"] {
            assert!(!re.is_match(bad), "{bad}");
        }
        // The pattern alone admits this one; the parser refuses it and so
        // does CEL's duration(), with the rule's message.
        assert!(re.is_match("99999999999999999999h"));
        assert!("99999999999999999999h".parse::<GoDuration>().is_err());
    }
}

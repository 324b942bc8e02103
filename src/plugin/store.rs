//! `kubectl hostwright switchover` and `kubectl hostwright restart`: the
//! day-2 moves on one store, asked of the operator the way its API already
//! offers them, so they are exactly as safe as the operator's own moves:
//! - `switchover` sets `spec.primary`. The operator moves the primary only
//!   to a healthy member that has caught up (a planned switchover: the old
//!   primary stops taking writes, the new one takes over at its final
//!   position, nothing acknowledged is lost).
//! - `restart` sets the annotation [`RESTART_ANNOTATION`]. Every member's
//!   revision changes, and the members roll as on a template change:
//!   mirrors one at a time, each back and caught up before the next, then
//!   the primary as `updateStrategy.primary` says.
//!
//! The plugin checks what it can from the status before asking, and says
//! what it asked; `kubectl hostwright status` shows the move as it goes.

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::api::common::{MemberRole, ReplicationStatus};
use crate::api::{DatabaseMirror, SessionStore};
use crate::controllers::members::{Replicated, StoreStatus};
use crate::resources::members::RESTART_ANNOTATION;

/// The field manager of the plugin's writes.
pub const FIELD_MANAGER: &str = "kubectl-hostwright";

/// The two kinds of store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    SessionStore,
    DatabaseMirror,
}

/// A store named on the command line: `<name>`, or `<kind>/<name>` (the
/// kind as kubectl spells it: `sessionstore`, `sst`, `databasemirror`,
/// `dbm`, plural or with the group) when both kinds have the name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreRef {
    pub kind: Option<StoreKind>,
    pub name: String,
}

impl std::str::FromStr for StoreRef {
    type Err = StoreError;

    fn from_str(text: &str) -> Result<Self, StoreError> {
        let bad = || StoreError::BadRef(text.to_string());
        let (kind, name) = match text.split_once('/') {
            None => (None, text),
            Some((kind, name)) => (Some(parse_kind(kind).ok_or_else(bad)?), name),
        };
        if name.is_empty() || name.contains('/') {
            return Err(bad());
        }
        Ok(StoreRef { kind, name: name.to_string() })
    }
}

fn parse_kind(text: &str) -> Option<StoreKind> {
    let kind = text.to_ascii_lowercase();
    let kind = kind.strip_suffix(".hostwright.io").unwrap_or(&kind);
    match kind {
        "sessionstore" | "sessionstores" | "sst" => Some(StoreKind::SessionStore),
        "databasemirror" | "databasemirrors" | "dbm" => Some(StoreKind::DatabaseMirror),
        _ => None,
    }
}

/// Why a move was not asked for.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{0:?} names no store: give <name>, or <kind>/<name> with the kind sessionstore (sst) or databasemirror (dbm)"
    )]
    BadRef(String),
    #[error("no SessionStore or DatabaseMirror {name:?} in namespace {namespace:?}")]
    NoStore { namespace: String, name: String },
    #[error(
        "a SessionStore and a DatabaseMirror are both called {name:?}: say which, as sessionstore/{name} or databasemirror/{name}"
    )]
    Ambiguous { name: String },
    #[error("{store} is an external session store: the operator runs none of its servers")]
    External { store: String },
    #[error("{store} has no primary yet (it is still starting): nothing to switch over from")]
    NoPrimary { store: String },
    #[error("{store} has no member {member:?}; its members: {members}")]
    UnknownMember { store: String, member: String, members: String },
    #[error("{member} is already the primary of {store}")]
    AlreadyPrimary { store: String, member: String },
    #[error(
        "{member} of {store} is not healthy; the operator promotes only a healthy member that has caught up"
    )]
    Unhealthy { store: String, member: String },
    #[error("{store} has no healthy member to switch over to")]
    NoCandidate { store: String },
    #[error("{action} {store} in namespace {namespace:?}: {source}")]
    Api {
        action: &'static str,
        store: String,
        namespace: String,
        #[source]
        source: Box<kube::Error>,
    },
}

/// The member to make primary: `asked` when the operator could promote it
/// now, otherwise none; unasked, the healthy mirror least behind.
pub fn switchover_target(
    store: &str,
    replication: &ReplicationStatus,
    asked: Option<&str>,
) -> Result<String, StoreError> {
    let primary = replication
        .current_primary
        .as_deref()
        .ok_or_else(|| StoreError::NoPrimary { store: store.into() })?;
    let Some(asked) = asked else {
        return replication
            .members
            .iter()
            .filter(|m| m.healthy && m.name != primary && m.role != MemberRole::Primary)
            .min_by_key(|m| (m.lag_bytes.unwrap_or(i64::MAX), m.name.clone()))
            .map(|m| m.name.clone())
            .ok_or_else(|| StoreError::NoCandidate { store: store.into() });
    };
    let member =
        replication.members.iter().find(|m| m.name == asked).ok_or_else(|| StoreError::UnknownMember {
            store: store.into(),
            member: asked.into(),
            members: replication.members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "),
        })?;
    if member.name == primary {
        return Err(StoreError::AlreadyPrimary { store: store.into(), member: asked.into() });
    }
    if !member.healthy {
        return Err(StoreError::Unhealthy { store: store.into(), member: asked.into() });
    }
    Ok(member.name.clone())
}

/// The change that asks for `member` as primary.
pub fn switchover_patch(member: &str) -> serde_json::Value {
    json!({"spec": {"primary": member}})
}

/// The change that asks for a restart; `at` makes each request new.
pub fn restart_patch(at: Timestamp) -> serde_json::Value {
    json!({"metadata": {"annotations": {RESTART_ANNOTATION: at.to_string()}}})
}

/// Ask the operator to switch `store` over to `member` (or to the healthy
/// mirror least behind); what was asked, in a sentence.
pub async fn switchover(
    client: &Client,
    namespace: &str,
    store: &StoreRef,
    member: Option<&str>,
) -> Result<String, StoreError> {
    match find(client, namespace, store).await? {
        Found::Sessions(s) => switch_over(client, namespace, s.as_ref(), member).await,
        Found::Database(d) => switch_over(client, namespace, d.as_ref(), member).await,
    }
}

/// Ask the operator to roll every member of `store`; what was asked.
pub async fn restart(client: &Client, namespace: &str, store: &StoreRef) -> Result<String, StoreError> {
    let patch = restart_patch(Timestamp::now());
    let label = match find(client, namespace, store).await? {
        Found::Sessions(s) => ask(client, namespace, s.as_ref(), "restarting", patch).await?,
        Found::Database(d) => ask(client, namespace, d.as_ref(), "restarting", patch).await?,
    };
    Ok(format!(
        "{label}: restart asked; the members roll one at a time, mirrors first, the primary last as \
         updateStrategy.primary says\n"
    ))
}

async fn switch_over<K: Replicated>(
    client: &Client,
    namespace: &str,
    store: &K,
    member: Option<&str>,
) -> Result<String, StoreError> {
    let replication = store.current_status().map(|s| s.replication().clone()).unwrap_or_default();
    let target = switchover_target(&label(store), &replication, member)?;
    let label = ask(client, namespace, store, "switching over", switchover_patch(&target)).await?;
    let from = replication.current_primary.unwrap_or_default();
    Ok(format!(
        "{label}: switchover from {from} to {target} asked; the operator promotes {target} once it has caught up\n"
    ))
}

/// "Kind name", for messages.
fn label<K: Replicated>(store: &K) -> String {
    format!("{} {}", K::kind(&()), store.name_any())
}

/// Write `patch` to `store` as the plugin; the store's label.
async fn ask<K: Replicated>(
    client: &Client,
    namespace: &str,
    store: &K,
    action: &'static str,
    patch: serde_json::Value,
) -> Result<String, StoreError> {
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    Api::<K>::namespaced(client.clone(), namespace)
        .patch(&store.name_any(), &params, &Patch::Merge(patch))
        .await
        .map_err(|source| StoreError::Api {
            action,
            store: label(store),
            namespace: namespace.into(),
            source: Box::new(source),
        })?;
    Ok(label(store))
}

/// The store a reference names.
enum Found {
    Sessions(Box<SessionStore>),
    Database(Box<DatabaseMirror>),
}

async fn find(client: &Client, namespace: &str, store: &StoreRef) -> Result<Found, StoreError> {
    let wants = |kind| store.kind.is_none_or(|k| k == kind);
    let sessions =
        read::<SessionStore>(wants(StoreKind::SessionStore), client, namespace, &store.name).await?;
    let database =
        read::<DatabaseMirror>(wants(StoreKind::DatabaseMirror), client, namespace, &store.name).await?;
    match (sessions, database) {
        (Some(_), Some(_)) => Err(StoreError::Ambiguous { name: store.name.clone() }),
        (Some(s), None) if s.spec.external.is_some() => Err(StoreError::External { store: label(&s) }),
        (Some(s), None) => Ok(Found::Sessions(Box::new(s))),
        (None, Some(d)) => Ok(Found::Database(Box::new(d))),
        (None, None) => Err(StoreError::NoStore { namespace: namespace.into(), name: store.name.clone() }),
    }
}

/// Store `name` of kind `K`, if `wanted` and there.
async fn read<K: Replicated>(
    wanted: bool,
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<K>, StoreError> {
    if !wanted {
        return Ok(None);
    }
    Api::<K>::namespaced(client.clone(), namespace).get_opt(name).await.map_err(|source| StoreError::Api {
        action: "reading",
        store: format!("{} {name}", K::kind(&())),
        namespace: namespace.into(),
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::MemberStatus;

    fn member(name: &str, role: MemberRole, healthy: bool, lag: Option<i64>) -> MemberStatus {
        MemberStatus::sample(name, role, healthy, lag)
    }

    fn three() -> ReplicationStatus {
        ReplicationStatus {
            current_primary: Some("db-1".into()),
            members: vec![
                member("db-1", MemberRole::Primary, true, Some(0)),
                member("db-2", MemberRole::Mirror, true, Some(4096)),
                member("db-3", MemberRole::Mirror, true, Some(16)),
            ],
            ..ReplicationStatus::default()
        }
    }

    #[test]
    fn unasked_the_healthy_mirror_least_behind_is_chosen() {
        assert_eq!(switchover_target("db", &three(), None).unwrap(), "db-3");
        let mut status = three();
        status.members[2].healthy = false;
        assert_eq!(switchover_target("db", &status, None).unwrap(), "db-2");
        status.members[1].healthy = false;
        assert!(matches!(switchover_target("db", &status, None), Err(StoreError::NoCandidate { .. })));
    }

    #[test]
    fn an_asked_member_must_exist_be_healthy_and_not_be_the_primary() {
        assert_eq!(switchover_target("db", &three(), Some("db-2")).unwrap(), "db-2");
        let unknown = switchover_target("db", &three(), Some("db-9")).unwrap_err().to_string();
        assert!(unknown.contains("db-1, db-2, db-3"), "{unknown}");
        assert!(matches!(
            switchover_target("db", &three(), Some("db-1")),
            Err(StoreError::AlreadyPrimary { .. })
        ));
        let mut status = three();
        status.members[1].healthy = false;
        assert!(matches!(switchover_target("db", &status, Some("db-2")), Err(StoreError::Unhealthy { .. })));
    }

    #[test]
    fn a_store_still_starting_has_nothing_to_switch_over_from() {
        let starting = ReplicationStatus::default();
        assert!(matches!(switchover_target("db", &starting, None), Err(StoreError::NoPrimary { .. })));
    }

    #[test]
    fn stores_are_named_as_kubectl_names_them() {
        let parse = |t: &str| t.parse::<StoreRef>();
        assert_eq!(parse("shop-db").unwrap(), StoreRef { kind: None, name: "shop-db".into() });
        for kind in ["dbm", "databasemirror", "DatabaseMirrors", "databasemirror.hostwright.io"] {
            assert_eq!(parse(&format!("{kind}/shop-db")).unwrap().kind, Some(StoreKind::DatabaseMirror));
        }
        for kind in ["sst", "sessionstore", "sessionstores.hostwright.io"] {
            assert_eq!(parse(&format!("{kind}/s")).unwrap().kind, Some(StoreKind::SessionStore));
        }
        for bad in ["webcluster/shop", "dbm/", "", "dbm/a/b"] {
            assert!(matches!(parse(bad), Err(StoreError::BadRef(_))), "{bad:?} was taken");
        }
    }

    #[test]
    fn the_patches_ask_through_the_api_a_person_would_use() {
        assert_eq!(switchover_patch("db-2"), json!({"spec": {"primary": "db-2"}}));
        let at: Timestamp = "2026-11-30T13:00:00Z".parse().unwrap();
        assert_eq!(
            restart_patch(at),
            json!({"metadata": {"annotations": {"hostwright.io/restart-request": "2026-11-30T13:00:00Z"}}})
        );
    }
}

//! One reconcile of a replicated store, in four named steps:
//!
//! 1. [`observe`]: read the caches (the Leases judged on the operator's own
//!    clock) and check that no other object holds a name this store needs;
//! 2. [`decide`]: pure — step the failover engine, compute the status and
//!    the Events;
//! 3. persist: write the status, conditional on the resourceVersion the
//!    engine stepped from, so a stale cache or a former leader cannot
//!    replay an old decision;
//! 4. [`act`]: bring the children, volumes and pods in line, carry the
//!    instructions to the pods (conditional too, and never over a newer
//!    epoch), and revoke the Leases the fence waits on.
//!
//! The decision is durable before any pod is told anything, so a crash
//! between the two only repeats the instruction.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::rollout::{self, PodFacts};
use super::status::{self, Credentials, Facts};
use super::{ACTIVE_INTERVAL, Context, Replicated, StoreStatus, last_written, write_status};
use super::{base_backups, certificates, volumes};
use crate::api::common::EngineStatus;
use crate::contract::keys::BACKUP_ANNOTATION;
use crate::contract::keys::SETTINGS_ANNOTATION;
use crate::contract::{
    ArchiveReport, BackupReport, Instruction, decode_archive, decode_backup, decode_backup_order,
    decode_report, decode_settings, encode_backup_order,
};
use crate::controllers::{Child, Claimant, Error, Planned, RESYNC, jittered, owned_child};
use crate::failover::{Decision, Engine, Member, Route, State, Step, step};
use crate::resources::FIELD_MANAGER;
use crate::resources::members::{
    Blueprint, INSTANCE_LABEL, INSTRUCTION_ANNOTATION, MEMBER_LABEL, Routing, TEMPLATE_HASH_ANNOTATION,
    keep_settings_in_use, settings_keys_of,
};
use k8s_openapi::api::coordination::v1::Lease as LeaseObject;

/// A reconcile of a store with members (not an external one).
pub(super) async fn reconcile_store<K: Replicated>(store: &K, ctx: &Context<K>) -> Result<Action, Error> {
    let seen = observe(store, ctx).await?;
    if let Some(conflict) = &seen.conflict {
        return refuse(store, ctx, &seen, conflict).await;
    }
    let plan = decide(store, &seen);
    if let Some(requeue) =
        write_status(store, ctx, &seen.old_status, &plan.status, &seen.resource_version).await?
    {
        return Ok(requeue);
    }
    act(store, ctx, &seen, &plan).await
}

/// What a reconcile read.
pub(super) struct Seen<K: Replicated> {
    blueprint: Blueprint,
    old_status: K::Status,
    resource_version: String,
    now_ms: u64,
    credentials: Credentials,
    /// The passwords to keep the Secret with (None: refused, see credentials).
    passwords: Option<K::Passwords>,
    live_secret: Option<Arc<Secret>>,
    /// The application's Secret as it is.
    live_app_secret: Option<Arc<Secret>>,
    members: Vec<Member>,
    /// Member pods this store owns, by member.
    pods: BTreeMap<String, Arc<Pod>>,
    /// Pods of members the spec no longer has.
    extra_pods: Vec<Arc<Pod>>,
    /// Kept volumes by member.
    volumes: BTreeMap<String, Arc<PersistentVolumeClaim>>,
    /// No member volume existed (or the store has none): no member can hold data.
    fresh: bool,
    /// A name this store needs belongs to another object.
    conflict: Option<String>,
    /// When the first Live Lease could go stale.
    next_lease_change: Option<Duration>,
    /// The revision a member pod built now carries.
    revision: String,
    /// Member pods (the extra ones too) as the day-2 planner sees them.
    pod_facts: BTreeMap<String, PodFacts>,
    /// Nodes marked unschedulable.
    cordoned: BTreeSet<String>,
    /// Volumes smaller than the template asks for, and whether they can grow.
    resizes: Vec<volumes::Resize>,
    /// Why the members have no server certificate yet (see [`certificates::pending`]).
    certificate_pending: Option<String>,
    /// How each member's WAL archiving goes, as its Lease reports it.
    archives: BTreeMap<String, ArchiveReport>,
    /// Each member's report of the last base backup asked of it.
    backups: BTreeMap<String, BackupReport>,
}

fn now_ms() -> u64 {
    Timestamp::now().as_millisecond().max(0) as u64
}

/// A cached object of this store by name and instance label (kept volumes
/// and Secrets carry no owner).
pub(super) fn labelled<C>(cache: &Store<C>, namespace: &str, name: &str, instance: &str) -> Option<Arc<C>>
where
    C: Resource<DynamicType = ()> + Clone,
{
    cache
        .get(&ObjectRef::new(name).within(namespace))
        .filter(|o| o.labels().get(INSTANCE_LABEL).map(String::as_str) == Some(instance))
}

async fn observe<K: Replicated>(store: &K, ctx: &Context<K>) -> Result<Seen<K>, Error> {
    let (namespace, name) = (store.namespace().unwrap_or_default(), store.name_any());
    let object = format!("{namespace}/{name}");
    let uid = store.uid().unwrap_or_default();
    let caches = &ctx.caches;
    let blueprint = store.blueprint().map_err(|source| Error::Build { object: object.clone(), source })?;
    let (old_status, resource_version) = last_written(store, ctx);

    let volumes: BTreeMap<String, Arc<PersistentVolumeClaim>> = blueprint
        .members
        .iter()
        .filter_map(|m| Some((m.clone(), labelled(&caches.volumes, &namespace, m, &name)?)))
        .collect();
    let live_secret = match labelled(&caches.secrets, &namespace, &store.credentials_name(), &name) {
        Some(cached) => Some(cached),
        // Not cached: just created and the watch is behind, or really gone.
        // Only the API can tell, and a Secret is never made twice on a guess.
        None => {
            read_labelled(&ctx.shared.client, "secrets", &namespace, &store.credentials_name(), &name).await?
        }
    };
    let has_engine = old_status.replication().engine.is_some();
    let live_app_secret = match labelled(&caches.secrets, &namespace, &store.app_secret_name(), &name) {
        Some(cached) => Some(cached),
        None if live_secret.is_none() => {
            read_labelled(&ctx.shared.client, "secrets", &namespace, &store.app_secret_name(), &name).await?
        }
        None => None,
    };
    let adopted =
        live_secret.is_none().then(|| live_app_secret.as_deref().and_then(K::adopt_passwords)).flatten();
    let (passwords, credentials) = match (&live_secret, adopted) {
        (Some(secret), _) => match K::read_passwords(secret) {
            Ok(p) => (Some(p), Credentials::Ready),
            Err(key) => (None, Credentials::Invalid { key }),
        },
        // A store made before its members had a Secret of their own.
        (None, Some(adopted)) => (Some(adopted), Credentials::Ready),
        // Generated once; never regenerated over data they opened.
        (None, None) if !volumes.is_empty() || has_engine => (None, Credentials::Missing),
        (None, None) => (Some(K::generate_passwords()), Credentials::Ready),
    };

    let pods: BTreeMap<String, Arc<Pod>> = blueprint
        .members
        .iter()
        .filter_map(|m| Some((m.clone(), owned_child(&caches.pods, &namespace, m, &uid)?)))
        .collect();
    let extra_pods: Vec<Arc<Pod>> = caches
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|p| p.labels().get(INSTANCE_LABEL) == Some(&name))
        .filter(|p| p.labels().get(MEMBER_LABEL).is_some_and(|m| !blueprint.members.contains(m)))
        .collect();

    let (members, next_lease_change) = judge_members(store, ctx, &blueprint.members, &old_status).await?;
    let conflict = claims(store, ctx, &blueprint).await?;
    let pod_facts = pods
        .iter()
        .map(|(m, p)| (m.clone(), p.clone()))
        .chain(extra_pods.iter().map(|p| (p.name_any(), p.clone())))
        .map(|(m, pod): (String, Arc<Pod>)| {
            let lease = labelled(&caches.leases, &namespace, &m, &name);
            (m, pod_facts(&pod, lease.as_deref()))
        })
        .collect();
    let cordoned = caches.nodes.state().iter().filter(|n| super::cordoned(n)).map(|n| n.name_any()).collect();
    let resizes = volumes::resizes(&ctx.shared.client, ctx.cluster_reads, &blueprint, &volumes).await?;
    Ok(Seen {
        revision: blueprint.revision(&ctx.agent_image),
        pod_facts,
        cordoned,
        resizes,
        archives: blueprint
            .members
            .iter()
            .filter_map(|m| {
                let lease = labelled(&caches.leases, &namespace, m, &name)?;
                let report = decode_archive(lease.annotations());
                (report != ArchiveReport::default()).then(|| (m.clone(), report))
            })
            .collect(),
        backups: blueprint
            .members
            .iter()
            .filter_map(|m| {
                let lease = labelled(&caches.leases, &namespace, m, &name)?;
                Some((m.clone(), decode_backup(lease.annotations())?))
            })
            .collect(),
        certificate_pending: certificates::pending(
            &blueprint,
            labelled(&caches.secrets, &namespace, &blueprint.tls_secret_name(), &name).as_deref(),
        ),
        fresh: blueprint.storage.is_none() || volumes.is_empty(),
        blueprint,
        old_status,
        resource_version,
        now_ms: now_ms(),
        credentials,
        passwords,
        live_secret,
        live_app_secret,
        members,
        pods,
        extra_pods,
        volumes,
        conflict,
        next_lease_change,
    })
}

/// A member pod as the day-2 planner needs it: its revision, age, node, and
/// whether its member's Lease was last renewed by the agent in this pod.
fn pod_facts(pod: &Pod, lease: Option<&LeaseObject>) -> PodFacts {
    let uid = pod.uid();
    let reporting = lease.is_some_and(|l| l.owner_references().iter().any(|o| Some(&o.uid) == uid.as_ref()));
    PodFacts {
        revision: pod.annotations().get(TEMPLATE_HASH_ANNOTATION).cloned().unwrap_or_default(),
        created_ms: pod.creation_timestamp().map(|t| t.0.as_millisecond().max(0) as u64).unwrap_or_default(),
        terminating: pod.metadata.deletion_timestamp.is_some(),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        reporting,
        settings: pod.annotations().get(SETTINGS_ANNOTATION).cloned(),
        settings_report: lease
            .filter(|_| reporting)
            .and_then(|l| l.metadata.annotations.as_ref())
            .map(decode_settings)
            .unwrap_or_default(),
    }
}

/// `name` as the API server has it now, if it belongs to `instance`: what
/// [`labelled`] gives from the cache, for when the cache may be behind.
pub(super) async fn read_labelled<C>(
    client: &kube::Client,
    resource: &'static str,
    namespace: &str,
    name: &str,
    instance: &str,
) -> Result<Option<Arc<C>>, Error>
where
    C: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<C> = Api::namespaced(client.clone(), namespace);
    let live = api.get_opt(name).await.map_err(|source| Error::Read {
        resource,
        object: format!("{namespace}/{name}"),
        source,
    })?;
    Ok(live.filter(|o| o.labels().get(INSTANCE_LABEL).map(String::as_str) == Some(instance)).map(Arc::new))
}

/// Every member as its Lease shows it, judged on the operator's clock. A
/// Lease the cache shows stale is read again from the API before it
/// counts: a watch that fell behind must not fail a primary over.
async fn judge_members<K: Replicated>(
    store: &K,
    ctx: &Context<K>,
    members: &[String],
    old_status: &K::Status,
) -> Result<(Vec<Member>, Option<Duration>), Error> {
    let namespace = store.namespace().unwrap_or_default();
    let name = store.name_any();
    let uid = store.uid().unwrap_or_default();
    let mut leases: Vec<Option<Arc<LeaseObject>>> =
        members.iter().map(|m| labelled(&ctx.caches.leases, &namespace, m, &name)).collect();
    let doubtful: Vec<bool> = {
        let mut clocks = ctx.leases.lock().unwrap_or_else(|p| p.into_inner());
        let clock = clocks.entry(uid.clone()).or_default();
        clock.retain(members);
        let now = Instant::now();
        members.iter().zip(&leases).map(|(m, l)| clock.worth_reading(m, l.as_deref(), now)).collect()
    };
    for (i, _) in doubtful.iter().enumerate().filter(|(_, d)| **d) {
        leases[i] = read_labelled(&ctx.shared.client, "leases", &namespace, &members[i], &name).await?;
    }
    let recorded = |m: &str| {
        old_status
            .replication()
            .members
            .iter()
            .find(|s| s.name == m)
            .and_then(|s| s.position)
            .and_then(|p| u64::try_from(p).ok())
    };
    let mut clocks = ctx.leases.lock().unwrap_or_else(|p| p.into_inner());
    let clock = clocks.entry(uid).or_default();
    let now = Instant::now();
    let observed = members
        .iter()
        .zip(&leases)
        .zip(doubtful)
        .map(|((m, lease), read)| {
            let report = lease
                .as_ref()
                .and_then(|l| l.metadata.annotations.as_ref())
                .and_then(decode_report)
                .map(|(report, _)| report);
            let lease = if read {
                clock.judge_read(m, lease.as_deref(), now)
            } else {
                clock.judge(m, lease.as_deref(), now)
            };
            Member { name: m.clone(), report, lease, recorded_position: recorded(m) }
        })
        .collect();
    Ok((observed, clock.next_change(now)))
}

/// The first name this store needs that another object holds, said in
/// words; None when every name is free or already this store's.
async fn claims<K: Replicated>(
    store: &K,
    ctx: &Context<K>,
    blueprint: &Blueprint,
) -> Result<Option<String>, Error> {
    let caches = &ctx.caches;
    let children = store.shared_children(blueprint);
    let (account, role, binding) = blueprint.agent_rbac();
    let mut taken = Vec::new();
    for service in &children.services {
        taken.push(claimed(ctx, &caches.services, &service.name_any(), blueprint).await?);
    }
    for budget in &children.budgets {
        taken.push(claimed(ctx, &caches.budgets, &budget.name_any(), blueprint).await?);
    }
    for config in &children.config_maps {
        taken.push(claimed(ctx, &caches.config_maps, &config.name_any(), blueprint).await?);
    }
    taken.push(claimed(ctx, &caches.accounts, &account.name_any(), blueprint).await?);
    taken.push(claimed(ctx, &caches.roles, &role.name_any(), blueprint).await?);
    taken.push(claimed(ctx, &caches.bindings, &binding.name_any(), blueprint).await?);
    for member in &blueprint.members {
        taken.push(claimed(ctx, &caches.pods, member, blueprint).await?);
        if blueprint.storage.is_some() {
            taken.push(claimed(ctx, &caches.volumes, member, blueprint).await?);
        }
    }
    Ok(taken.into_iter().flatten().next())
}

async fn claimed<K: Replicated, C: Child>(
    ctx: &Context<K>,
    cache: &Store<C>,
    name: &str,
    blueprint: &Blueprint,
) -> Result<Option<String>, Error> {
    let owner = Claimant { uid: &blueprint.owner.uid, app: blueprint.app, instance: &blueprint.name };
    ctx.shared.claimed(cache, &blueprint.namespace, name, &owner).await
}

/// A name clash: say so in status, touch nothing, look again later.
async fn refuse<K: Replicated>(
    store: &K,
    ctx: &Context<K>,
    seen: &Seen<K>,
    conflict: &str,
) -> Result<Action, Error> {
    let time = Time(Timestamp::now());
    let status = status::conflicted(store, conflict, &seen.old_status, &time);
    if let Some(requeue) = write_status(store, ctx, &seen.old_status, &status, &seen.resource_version).await?
    {
        return Ok(requeue);
    }
    for event in status::events(store, None, &seen.old_status, &status) {
        ctx.shared.event(store, event.type_, event.reason, event.action, event.note).await;
    }
    Ok(Action::requeue(jittered(Duration::from_secs(60))))
}

/// What a reconcile decided.
pub(super) struct Plan<K: Replicated> {
    decision: Decision,
    status: K::Status,
    events: Vec<Planned>,
    /// Rollout, drain and shrink.
    day2: rollout::Plan,
}

fn decide<K: Replicated>(store: &K, seen: &Seen<K>) -> Plan<K> {
    let engine = seen
        .old_status
        .replication()
        .engine
        .as_ref()
        .and_then(EngineStatus::to_engine)
        .unwrap_or_else(|| Engine::bootstrap(seen.fresh));
    let day2 = plan_day2(store, seen, &engine);
    let mut policy = store.policy();
    policy.requested_primary = day2.primary.clone();
    if day2.restarting_primary {
        policy.delay_ms = policy.delay_ms.max(rollout::RESTART_GRACE_MS);
    }
    let decision = step(&engine, &seen.members, &policy, seen.now_ms);
    let pod_hashes: BTreeMap<String, String> = seen
        .pods
        .iter()
        .map(|(m, pod)| {
            (m.clone(), pod.annotations().get(TEMPLATE_HASH_ANNOTATION).cloned().unwrap_or_default())
        })
        .collect();
    let facts = Facts {
        members: &seen.members,
        pod_hashes: &pod_hashes,
        revision: &seen.revision,
        credentials: &seen.credentials,
        certificate_pending: seen.certificate_pending.as_deref(),
        archives: &seen.archives,
        backups: &seen.backups,
        day2: &day2,
    };
    let status = status::compute(store, &decision, &facts, &seen.old_status, &Time(Timestamp::now()));
    let events = status::events(store, Some(&decision), &seen.old_status, &status);
    Plan { decision, status, events, day2 }
}

/// The day-2 planner's view of this store, stepped from `engine`.
fn plan_day2<K: Replicated>(store: &K, seen: &Seen<K>, engine: &Engine) -> rollout::Plan {
    let (steady, told) = match &engine.state {
        State::Steady { primary, .. } => (Some(primary.as_str()), Some(primary.as_str())),
        State::Suspect { primary, .. } => (None, Some(primary.as_str())),
        State::Bootstrapping { primary, .. } => (None, primary.as_deref()),
        _ => (None, None),
    };
    let extra: Vec<String> = seen.extra_pods.iter().map(|p| p.name_any()).collect();
    let container = seen.blueprint.engine.container;
    let images: Vec<String> = seen
        .pods
        .values()
        .filter_map(|p| p.spec.as_ref()?.containers.iter().find(|c| c.name == container)?.image.clone())
        .collect();
    let policy = store.policy();
    rollout::plan(&rollout::Input {
        members: &seen.members,
        extra: &extra,
        pods: &seen.pod_facts,
        revision: &seen.revision,
        settings_key: &seen.blueprint.settings_key,
        steady_primary: steady,
        engine_primary: told,
        strategy: store.update_strategy(),
        requested_primary: policy.requested_primary.as_deref(),
        max_lag_bytes: policy.max_lag_bytes,
        synchronous: policy.synchronous,
        cordoned: &seen.cordoned,
        refused: store.refused_change(&images),
        was_rolling: seen.old_status.replication().rollout.is_some(),
        now_ms: seen.now_ms,
    })
}

async fn act<K: Replicated>(
    store: &K,
    ctx: &Context<K>,
    seen: &Seen<K>,
    plan: &Plan<K>,
) -> Result<Action, Error> {
    let tls = certificates::keep(store, ctx, &seen.blueprint).await?;
    keep_credentials(store, ctx, seen, tls.ca_pem.as_deref()).await?;
    keep_children(store, ctx, seen).await?;
    keep_volumes(ctx, seen).await?;
    volumes::expand(store, ctx, &seen.resizes).await?;
    for event in &plan.events {
        ctx.shared.event(store, event.type_, event.reason, event.action, event.note.clone()).await;
    }
    count_promotions::<K>(ctx, &plan.decision);
    let superseded = instruct_pods(store, ctx, seen, &plan.decision).await?;
    let revoked = revoke(store, ctx, &plan.decision).await?;
    let replaced = replace_member(store, ctx, seen, plan.day2.replace.as_deref()).await?;
    reload_member(store, ctx, seen, plan.day2.reload.as_deref()).await?;
    remove_extra_members(ctx, seen, &plan.day2.remove, &plan.decision).await?;
    order_backup(store, ctx, seen, &plan.status).await?;
    if superseded || revoked || replaced {
        return Ok(Action::requeue(ACTIVE_INTERVAL));
    }
    let renewal = tls.look_again.max(Duration::from_secs(1));
    let next = next_look(&plan.decision, &plan.status, seen.next_lease_change).min(renewal);
    Ok(Action::requeue(next.min(next_backup(store, &plan.status, seen.now_ms))))
}

/// Put the running base backup's order on its member's pod, and take
/// orders off pods once their backup is over (written, like every order,
/// after the status that decided it).
async fn order_backup<K: Replicated>(
    store: &K,
    ctx: &Context<K>,
    seen: &Seen<K>,
    status: &K::Status,
) -> Result<(), Error> {
    let (Some(spec), Some(backup)) = (store.backup_spec(), status.backup()) else { return Ok(()) };
    let running = backup.running_backup.as_ref();
    for (member, pod) in &seen.pods {
        let carried = pod.annotations().get(BACKUP_ANNOTATION);
        let wanted = running
            .filter(|r| r.member == *member)
            .map(|r| encode_backup_order(&base_backups::order(spec, r)));
        let same = match (carried, &wanted) {
            (Some(c), Some(w)) => decode_backup_order(c) == decode_backup_order(w),
            (None, None) => true,
            _ => false,
        };
        if same {
            continue;
        }
        let patch = serde_json::json!({"metadata": {"annotations": {BACKUP_ANNOTATION: wanted}}});
        let namespace = pod.namespace().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), &namespace);
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
        match pods.patch(member, &params, &Patch::Merge(&patch)).await {
            Ok(_) => ctx.shared.metrics.write(ctx.shared.controller, "pods", "patch"),
            // Gone since the cache saw it: the next reconcile sees why.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(Error::Apply {
                    resource: "pods",
                    object: format!("{namespace}/{member}"),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// How long until the next scheduled base backup is due (a minute at most
/// while one runs, in case its member's report never comes).
fn next_backup<K: Replicated>(store: &K, status: &K::Status, now_ms: u64) -> Duration {
    let (Some(spec), Some(backup)) = (store.backup_spec(), status.backup()) else { return RESYNC };
    if backup.running_backup.is_some() {
        return Duration::from_secs(60);
    }
    let created = base_backups::created(store.meta(), now_ms);
    match base_backups::next_scheduled(spec, backup, created) {
        Some(Ok(at)) => Duration::from_millis(at.saturating_sub(now_ms)).max(Duration::from_secs(1)),
        _ => RESYNC,
    }
}

/// The members' Secret: generated once (or adopted from an older store's
/// application Secret); afterwards only its ownership follows the spec.
/// Then the application's Secret, with the CA the web tier verifies the
/// server against.
async fn keep_credentials<K: Replicated>(
    store: &K,
    ctx: &Context<K>,
    seen: &Seen<K>,
    ca_pem: Option<&str>,
) -> Result<(), Error> {
    let Some(passwords) = &seen.passwords else { return Ok(()) };
    let desired = store.credentials(&seen.blueprint, passwords);
    match &seen.live_secret {
        None => {
            ctx.shared.apply(&desired, None).await?;
            let note = format!("generated Secret {}", store.credentials_name());
            ctx.shared.event(store, EventType::Normal, "CredentialsCreated", "Create", note).await;
        }
        Some(live) => {
            ctx.shared.apply(&desired, Some(live)).await?;
            keep_ownership(ctx, live.as_ref(), &desired).await?;
        }
    }
    // Without the CA (an issuer that has not issued yet) the web tier could
    // not verify the server: its Secret waits for it.
    let Some(ca_pem) = ca_pem else { return Ok(()) };
    let app = store.app_secret(&seen.blueprint, passwords, ca_pem);
    match &seen.live_app_secret {
        // Keys it no longer has (the passwords an older store kept there)
        // go: a forced apply drops the fields this manager stops sending.
        Some(live) if has_other_keys(live, &app) => drop(ctx.shared.apply(&app, None).await?),
        live => drop(ctx.shared.apply(&app, live.as_ref()).await?),
    }
    if let Some(live) = &seen.live_app_secret {
        keep_ownership(ctx, live.as_ref(), &app).await?;
    }
    Ok(())
}

/// `live` holds a data key `desired` does not.
fn has_other_keys(live: &Secret, desired: &Secret) -> bool {
    let wanted = desired.data.as_ref();
    live.data.iter().flatten().any(|(key, _)| !wanted.is_some_and(|w| w.contains_key(key)))
}

/// Services, budgets, settings and the agents' identity.
async fn keep_children<K: Replicated>(store: &K, ctx: &Context<K>, seen: &Seen<K>) -> Result<(), Error> {
    let (caches, shared) = (&ctx.caches, &ctx.shared);
    let uid = store.uid().unwrap_or_default();
    let children = store.shared_children(&seen.blueprint);
    for service in &children.services {
        shared.apply_owned(service, &caches.services, &uid).await?;
    }
    for budget in &children.budgets {
        shared.apply_owned(budget, &caches.budgets, &uid).await?;
    }
    // Pods keep reading the settings they were built with until the
    // rollout replaces them.
    let in_use: BTreeSet<String> =
        seen.pods.values().chain(&seen.extra_pods).flat_map(|p| settings_keys_of(p)).collect();
    for config in &children.config_maps {
        let mut config = config.clone();
        let live = owned_child(&caches.config_maps, &seen.blueprint.namespace, &config.name_any(), &uid);
        keep_settings_in_use(&mut config, live.as_deref(), &in_use);
        shared.apply_owned(&config, &caches.config_maps, &uid).await?;
    }
    let clients = referencing_web_tiers::<K>(ctx, &seen.blueprint);
    let policy = seen.blueprint.network_policy(&clients, &ctx.admin_networks, ctx.metrics_scrapers.as_ref());
    shared.apply_owned(&policy, &caches.network_policies, &uid).await?;
    let (account, role, binding) = seen.blueprint.agent_rbac();
    shared.apply_owned(&account, &caches.accounts, &uid).await?;
    shared.apply_owned(&role, &caches.roles, &uid).await?;
    shared.apply_owned(&binding, &caches.bindings, &uid).await?;
    Ok(())
}

/// The pod labels of each WebCluster of the store's namespace that
/// references it (sorted, so the policy does not flap with cache order).
fn referencing_web_tiers<K: Replicated>(
    ctx: &Context<K>,
    blueprint: &Blueprint,
) -> Vec<BTreeMap<String, String>> {
    let mut webs: Vec<String> = ctx
        .caches
        .web_clusters
        .state()
        .iter()
        .filter(|w| w.namespace().as_deref() == Some(blueprint.namespace.as_str()))
        .filter_map(|w| crate::controllers::invalid::decoded(w).ok())
        .filter(|w| K::referenced_by(w).as_deref() == Some(blueprint.name.as_str()))
        .map(|w| w.name_any())
        .collect();
    webs.sort();
    webs.iter()
        .map(|w| crate::resources::labels::selector(crate::resources::webcluster::APP_NAME, w))
        .collect()
}

/// Member volumes: created once; owned by the store (deleted with it)
/// exactly when `storage.deleteOnRemoval` says so, for existing ones too.
async fn keep_volumes<K: Replicated>(ctx: &Context<K>, seen: &Seen<K>) -> Result<(), Error> {
    for member in &seen.blueprint.members {
        let Some(desired) = seen.blueprint.member_volume(member) else { continue };
        match seen.volumes.get(member) {
            None => drop(ctx.shared.apply(&desired, None).await?),
            Some(live) => keep_ownership(ctx, live.as_ref(), &desired).await?,
        }
    }
    Ok(())
}

/// Give `live` exactly the owner references `desired` has (kept objects
/// gain or lose the store as owner when `deleteOnRemoval` changes).
async fn keep_ownership<C: Child>(
    ctx: &Context<impl Replicated>,
    live: &C,
    desired: &C,
) -> Result<(), Error> {
    let wanted: Vec<OwnerReference> = desired.owner_references().to_vec();
    if live.owner_references() == wanted.as_slice() {
        return Ok(());
    }
    let (namespace, name) = (live.namespace().unwrap_or_default(), live.name_any());
    let patch = match wanted.is_empty() {
        true => serde_json::json!({ "metadata": { "ownerReferences": null } }),
        false => serde_json::json!({ "metadata": { "ownerReferences": wanted } }),
    };
    let api: Api<C> = Api::namespaced(ctx.shared.client.clone(), &namespace);
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    let resource = crate::controllers::resource_name::<C>();
    api.patch(&name, &params, &Patch::Merge(&patch)).await.map_err(|source| Error::Apply {
        resource,
        object: format!("{namespace}/{name}"),
        source,
    })?;
    ctx.shared.metrics.write(ctx.shared.controller, resource, "patch");
    info!(%name, owned = !wanted.is_empty(), "kept object's ownership follows storage.deleteOnRemoval");
    Ok(())
}

fn count_promotions<K: Replicated>(ctx: &Context<K>, decision: &Decision) {
    for s in &decision.steps {
        if let Step::Promoted { member, duration_ms, lag_bytes } = s {
            info!(%member, duration_ms, ?lag_bytes, "promoted");
            let labels = crate::telemetry::ControllerLabels { controller: K::CONTROLLER };
            ctx.shared.metrics.failovers.get_or_create(&labels).inc();
            ctx.shared.metrics.failover_duration.get_or_create(&labels).observe(*duration_ms as f64 / 1000.0);
        }
    }
}

/// Carry the decision to the pods: routes taken away before routes given;
/// missing pods created. True when a pod already carries a newer epoch
/// than this decision, or changed under us (this reconcile is stale).
async fn instruct_pods<K: Replicated>(
    store: &K,
    ctx: &Context<K>,
    seen: &Seen<K>,
    decision: &Decision,
) -> Result<bool, Error> {
    let mut order: Vec<&String> = seen.blueprint.members.iter().collect();
    order.sort_by_key(|m| decision.routes.get(*m).copied().unwrap_or(Route::None) != Route::None);
    let mut superseded = false;
    for member in order {
        let Some(routing) = Routing::of(decision, member) else { continue };
        match seen.pods.get(member) {
            Some(pod) => superseded |= !route_pod(store, ctx, pod, &routing).await?,
            None => {
                let mut pod = seen.blueprint.member_pod(member, &ctx.agent_image);
                let (labels, annotations) = routing.metadata();
                pod.labels_mut().extend(labels);
                pod.annotations_mut().extend(annotations);
                ctx.shared.apply(&pod, None).await?;
            }
        }
    }
    Ok(superseded)
}

/// Put `routing` on a member's pod by a metadata patch conditional on the
/// pod's resourceVersion, and never over an instruction of a newer epoch:
/// a former leader that resumes cannot put back what it decided before.
/// False when the pod was not ours to change (stale view).
async fn route_pod<K: Replicated>(
    store: &K,
    ctx: &Context<K>,
    pod: &Pod,
    routing: &Routing,
) -> Result<bool, Error> {
    let (labels, annotations) = routing.metadata();
    let differs = labels.iter().any(|(k, v)| pod.labels().get(k) != Some(v))
        || annotations.iter().any(|(k, v)| pod.annotations().get(k) != Some(v));
    if !differs {
        return Ok(true);
    }
    let was = pod.annotations().get(INSTRUCTION_ANNOTATION).and_then(|t| Instruction::parse(t).ok());
    if was.as_ref().is_some_and(|w| w.epoch > routing.instruction.epoch) {
        warn!(pod = %pod.name_any(), "the pod carries a newer instruction than this decision: not overwriting it");
        return Ok(false);
    }
    let (namespace, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
    let api: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), &namespace);
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": pod.resource_version(), "labels": labels, "annotations": annotations }
    });
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    match api.patch(&name, &params, &Patch::Merge(&patch)).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => return Ok(false),
        Err(source) => {
            return Err(Error::Apply { resource: "pods", object: format!("{namespace}/{name}"), source });
        }
    }
    ctx.shared.metrics.write(K::CONTROLLER, "pods", "patch");
    let rejoins = was.is_some_and(|w| w.desired == crate::contract::Desired::Fenced)
        && routing.instruction.desired == crate::contract::Desired::Mirror;
    if rejoins {
        let upstream = routing.instruction.upstream.clone().unwrap_or_else(|| "nobody yet".into());
        let note = format!("{name} rejoins as a mirror of {upstream}");
        ctx.shared.event(store, EventType::Normal, "Rejoining", "Failover", note).await;
    }
    Ok(true)
}

/// Revoke the Leases the engine's fence waits on: each a delete conditional
/// on the resourceVersion that went stale. True when any was revoked.
async fn revoke<K: Replicated>(store: &K, ctx: &Context<K>, decision: &Decision) -> Result<bool, Error> {
    let namespace = store.namespace().unwrap_or_default();
    let api: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(ctx.shared.client.clone(), &namespace);
    let uid = store.uid().unwrap_or_default();
    let mut any = false;
    for member in &decision.revoke {
        let version =
            ctx.leases.lock().unwrap_or_else(|p| p.into_inner()).get(&uid).and_then(|c| c.version(member));
        let Some(version) = version else { continue };
        let params = DeleteParams {
            preconditions: Some(Preconditions { resource_version: Some(version), uid: None }),
            ..DeleteParams::default()
        };
        let outcome = api.delete(member, &params).await;
        let now = Instant::now();
        let with_clock = |change: &dyn Fn(&mut super::leases::LeaseClock)| {
            let mut clocks = ctx.leases.lock().unwrap_or_else(|p| p.into_inner());
            change(clocks.entry(uid.clone()).or_default());
        };
        match outcome {
            Ok(_) => {
                with_clock(&|c| c.revoked(member, now));
                revoked_event(store, ctx, member).await;
                any = true;
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {
                with_clock(&|c| c.revoked(member, now));
                any = true;
            }
            // Renewed after all: the member is alive.
            Err(kube::Error::Api(e)) if e.code == 409 => with_clock(&|c| c.renewed(member, now)),
            Err(source) => {
                return Err(Error::Delete {
                    resource: "leases",
                    object: format!("{namespace}/{member}"),
                    source,
                });
            }
        }
    }
    Ok(any)
}

async fn revoked_event<K: Replicated>(store: &K, ctx: &Context<K>, member: &str) {
    ctx.shared.metrics.write(K::CONTROLLER, "leases", "delete");
    let note =
        format!("revoked the lease of {member}: its agent stopped renewing, so its server has been stopped");
    ctx.shared.event(store, EventType::Warning, "LeaseRevoked", "Failover", note).await;
}

/// The rollout's next member: its pod is deleted (its agent stops the
/// server cleanly) and built again from the template over the same volume
/// once it is gone. True when a pod was deleted.
async fn replace_member<K: Replicated>(
    store: &K,
    ctx: &Context<K>,
    seen: &Seen<K>,
    member: Option<&str>,
) -> Result<bool, Error> {
    let Some(pod) = member.and_then(|m| seen.pods.get(m)) else { return Ok(false) };
    if pod.metadata.deletion_timestamp.is_some() {
        return Ok(false);
    }
    ctx.shared.delete(pod.as_ref()).await?;
    let was = pod.annotations().get(TEMPLATE_HASH_ANNOTATION).cloned().unwrap_or_default();
    let note =
        format!("replacing {} (revision {was}) with a pod of revision {}", pod.name_any(), seen.revision);
    // The pod as the related object: one Event per replaced pod, not a
    // series under the first one's note.
    let related = Some(pod.object_ref(&()));
    ctx.shared.event_with(store, related, EventType::Normal, "UpdatingMember", "Update", note).await;
    Ok(true)
}

/// Tell a member's agent to load the current settings without a restart:
/// the settings key on its pod (a metadata patch, like the instructions).
async fn reload_member<K: Replicated>(
    store: &K,
    ctx: &Context<K>,
    seen: &Seen<K>,
    member: Option<&str>,
) -> Result<(), Error> {
    let Some(pod) = member.and_then(|m| seen.pods.get(m)) else { return Ok(()) };
    let key = &seen.blueprint.settings_key;
    let (namespace, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
    let api: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), &namespace);
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": pod.resource_version(), "annotations": { SETTINGS_ANNOTATION: key } }
    });
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    match api.patch(&name, &params, &Patch::Merge(&patch)).await {
        Ok(_) => {}
        // Changed meanwhile: the next reconcile decides again.
        Err(kube::Error::Api(e)) if e.code == 409 => return Ok(()),
        Err(source) => {
            return Err(Error::Apply { resource: "pods", object: format!("{namespace}/{name}"), source });
        }
    }
    ctx.shared.metrics.write(K::CONTROLLER, "pods", "patch");
    let note = format!("{name} loads the new settings ({key}) without a restart");
    let related = Some(pod.object_ref(&()));
    ctx.shared.event_with(store, related, EventType::Normal, "ReloadingSettings", "Update", note).await;
    Ok(())
}

/// Members beyond the spec that the day-2 plan lets go (never the one
/// this decision routes writes to); their volumes go too when
/// `storage.deleteOnRemoval` says so.
async fn remove_extra_members<K: Replicated>(
    ctx: &Context<K>,
    seen: &Seen<K>,
    removable: &[String],
    decision: &Decision,
) -> Result<(), Error> {
    let delete_volumes = seen.blueprint.storage.as_ref().is_some_and(|s| s.delete_on_removal);
    for pod in &seen.extra_pods {
        let member = pod.name_any();
        let writer =
            decision.primary() == Some(member.as_str()) || decision.read_write() == Some(member.as_str());
        if !removable.contains(&member) || writer {
            continue;
        }
        ctx.shared.delete(pod.as_ref()).await?;
        if delete_volumes
            && let Some(volume) =
                labelled(&ctx.caches.volumes, &seen.blueprint.namespace, &member, &seen.blueprint.name)
        {
            ctx.shared.delete(volume.as_ref()).await?;
        }
    }
    Ok(())
}

/// When to step the engine again if no event comes first.
fn next_look<S: StoreStatus>(decision: &Decision, status: &S, lease_change: Option<Duration>) -> Duration {
    let settled = matches!(decision.engine.state, State::Steady { .. })
        && decision.blocked.is_none()
        && status.replication().members.iter().all(|m| m.healthy);
    if !settled {
        return ACTIVE_INTERVAL;
    }
    // A rollout moves on events (pods, Leases), but halts on the clock.
    if status.replication().rollout.is_some() {
        return Duration::from_secs(1);
    }
    // A Lease goes stale without an event: look again just after it would.
    lease_change.map(|d| d + Duration::from_millis(50)).unwrap_or(RESYNC).min(jittered(RESYNC))
}

//! The controller of every replicated store (DatabaseMirror, SessionStore):
//! keep the shared children and one pod (and volume) per member, run the
//! failover engine on what the agents report, and carry its decision to the
//! pods (instructions for the agents, role labels for the Services). What
//! differs between the kinds is behind [`Replicated`].
//!
//! The engine's state is written to status *before* any pod is told
//! anything, so a crash between the two only repeats the instruction; and
//! each status write is conditional on the resourceVersion it was computed
//! from, so a stale cache can never step the engine from an old state.

pub mod status;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Instrument, info, info_span};

use super::{Error, RESYNC, Scope, Shared, cached, filled, jittered, owned_child};
use crate::agent::report;
use crate::api::common::{FailoverSpec, ReplicationStatus};
use crate::failover::{Decision, Member, Policy, Route, State, Step, step};
use crate::resources::members::{
    Blueprint, DESIRED_ROLE_ANNOTATION, INSTANCE_LABEL, MEMBER_LABEL, Routing, TEMPLATE_HASH_ANNOTATION,
};
use crate::resources::{BuildError, FIELD_MANAGER};
use status::{Credentials, Observation};

/// The children besides members and credentials: built fresh on every
/// reconcile and applied only where they differ from the cache.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SharedChildren {
    pub services: Vec<Service>,
    pub budgets: Vec<PodDisruptionBudget>,
    pub config_maps: Vec<ConfigMap>,
}

/// Figures of the status that only some kinds print.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Bytes the furthest healthy member is behind the primary.
    pub max_lag_bytes: Option<i64>,
    /// Every member runs the template unchanged.
    pub equal_spec: Option<bool>,
}

/// A kind's status: the shared replication part, and how to take out the
/// fields that move with every report.
pub trait StoreStatus:
    Clone + Default + PartialEq + std::fmt::Debug + Serialize + Send + Sync + 'static
{
    fn replication(&self) -> &ReplicationStatus;
    /// This status without positions, lag and report times.
    fn without_positions(&self) -> Self;
}

/// A custom resource whose members are replicated servers under the failover
/// engine: what the shared controller needs to know of it.
pub trait Replicated:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    /// Controller name in logs, metrics and Events; also its `app.kubernetes.io/name`.
    const CONTROLLER: &'static str;
    /// `<plural>/status`, for the write metrics.
    const STATUS_RESOURCE: &'static str;
    type Status: StoreStatus;
    /// Generated once, kept in the credentials Secret.
    type Passwords: Send + Sync;

    fn current_status(&self) -> Option<&Self::Status>;
    /// The status to write, from the shared part and the summary figures.
    fn status(&self, replication: ReplicationStatus, summary: Summary) -> Self::Status;
    fn blueprint(&self) -> Result<Blueprint, BuildError>;
    fn shared_children(&self, blueprint: &Blueprint) -> SharedChildren;
    fn failover(&self) -> &FailoverSpec;
    fn policy(&self) -> Policy;
    /// The Service writes go through, for messages.
    fn read_write_service(&self) -> String;
    fn credentials_name(&self) -> String;
    fn generate_passwords() -> Self::Passwords;
    /// The passwords in an existing Secret, or the first key it lacks.
    fn read_passwords(secret: &Secret) -> Result<Self::Passwords, &'static str>;
    fn credentials(&self, blueprint: &Blueprint, passwords: &Self::Passwords) -> Secret;
    /// Nothing to deploy (an external store): reconciled by the kind itself.
    fn external(
        &self,
        _ctx: &Context<Self>,
    ) -> impl std::future::Future<Output = Option<Result<Action, Error>>> + Send {
        async { None }
    }
}
/// How often the engine is stepped while something is in motion (a
/// failover, a member catching up): timeouts are judged on the clock, not
/// only on events.
const ACTIVE_INTERVAL: Duration = Duration::from_millis(250);
/// Positions and lag alone are refreshed in status at most this often.
const POSITION_REFRESH: Duration = Duration::from_secs(10);

/// Caches of everything a reconcile reads.
pub struct Caches {
    pub pods: Store<Pod>,
    pub volumes: Store<PersistentVolumeClaim>,
    pub services: Store<Service>,
    pub budgets: Store<PodDisruptionBudget>,
    pub config_maps: Store<ConfigMap>,
    pub secrets: Store<Secret>,
    pub accounts: Store<ServiceAccount>,
    pub roles: Store<Role>,
    pub bindings: Store<RoleBinding>,
    pub leases: Store<Lease>,
}

/// The status this process last wrote for an object, and its
/// resourceVersion: the reconciler steps the engine from here rather than
/// from a cache that may not have caught up with its own write.
struct Written<S> {
    status: S,
    resource_version: String,
    at: Instant,
}

/// The controller's context.
pub struct Context<K: Replicated> {
    pub shared: Shared,
    pub caches: Caches,
    pub caches_ready: AtomicBool,
    /// Image carrying `hostwright agent` (the operator's own).
    pub agent_image: String,
    written: Mutex<HashMap<String, Written<K::Status>>>,
}

/// Run the controller of `K` until `shutdown` resolves.
pub async fn run<K: Replicated>(
    scope: Scope,
    shared: Shared,
    agent_image: String,
    concurrency: u16,
    ready: impl FnOnce() + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let mine = format!("app.kubernetes.io/name={}", K::CONTROLLER);
    let (pods, pod_events) = cached::<Pod>(&scope, Some(&mine));
    let (volumes, volume_events) = cached::<PersistentVolumeClaim>(&scope, Some(&mine));
    let (services, service_events) = cached::<Service>(&scope, Some(&mine));
    let (budgets, budget_events) = cached::<PodDisruptionBudget>(&scope, Some(&mine));
    let (config_maps, config_map_events) = cached::<ConfigMap>(&scope, Some(&mine));
    let (secrets, secret_events) = cached::<Secret>(&scope, Some(&mine));
    let (accounts, account_events) = cached::<ServiceAccount>(&scope, Some(&mine));
    let (roles, role_events) = cached::<Role>(&scope, Some(&mine));
    let (bindings, binding_events) = cached::<RoleBinding>(&scope, Some(&mine));
    let (leases, lease_events) = cached::<Lease>(&scope, Some(&mine));

    let controller = Controller::new(scope.api::<K>(), watcher::Config::default().any_semantic())
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency));
    let objects = controller.store();
    let context = Arc::new(Context {
        shared,
        caches: Caches {
            pods: pods.clone(),
            volumes: volumes.clone(),
            services: services.clone(),
            budgets: budgets.clone(),
            config_maps: config_maps.clone(),
            secrets: secrets.clone(),
            accounts: accounts.clone(),
            roles: roles.clone(),
            bindings: bindings.clone(),
            leases: leases.clone(),
        },
        caches_ready: AtomicBool::new(false),
        agent_image,
        written: Mutex::new(HashMap::new()),
    });

    // Volumes, the Secret and the agents' Leases may have no owner (kept
    // data, agent-made Leases): they map to their object by label.
    let controller = controller
        .owns_stream(pod_events)
        .owns_stream(service_events)
        .owns_stream(budget_events)
        .owns_stream(config_map_events)
        .owns_stream(account_events)
        .owns_stream(role_events)
        .owns_stream(binding_events)
        .watches_stream(volume_events, by_instance::<K, _>)
        .watches_stream(secret_events, by_instance::<K, _>)
        .watches_stream(lease_events, by_instance::<K, _>)
        .graceful_shutdown_on(shutdown);

    let caches_ready = {
        let context = context.clone();
        async move {
            futures::join!(
                filled(&objects),
                filled(&pods),
                filled(&volumes),
                filled(&services),
                filled(&budgets),
                filled(&config_maps),
                filled(&secrets),
                filled(&accounts),
                filled(&roles),
                filled(&bindings),
                filled(&leases),
            );
            context.caches_ready.store(true, Ordering::Release);
            ready();
        }
    };
    tokio::spawn(caches_ready);

    controller
        .run(reconcile::<K>, error_policy::<K>, context)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(%err, "controller event");
            }
        })
        .await;
}

/// The store an object belongs to, by its instance label.
fn by_instance<K: Replicated, C: Resource>(obj: C) -> Option<ObjectRef<K>> {
    let instance = obj.labels().get(INSTANCE_LABEL)?;
    Some(ObjectRef::new(instance).within(&obj.namespace()?))
}

async fn reconcile<K: Replicated>(store: Arc<K>, ctx: Arc<Context<K>>) -> Result<Action, Error> {
    if !ctx.caches_ready.load(Ordering::Acquire) {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let namespace = store.namespace().unwrap_or_default();
    let name = store.name_any();
    let span = info_span!("reconcile", controller = K::CONTROLLER, namespace = %namespace, name = %name);
    let _timer = ctx.shared.metrics.reconcile_started(K::CONTROLLER);
    let key = format!("{namespace}/{name}");
    let result = match store.external(&ctx).instrument(span.clone()).await {
        Some(result) => result,
        None => reconcile_inner(store.as_ref(), &ctx, &namespace).instrument(span).await,
    };
    if result.is_ok() {
        ctx.shared.backoff.succeeded(&key);
    }
    result
}

fn now_ms() -> u64 {
    report::millis(Timestamp::now())
}

/// 32 random alphanumerics: safe in URIs and conninfo strings unquoted.
pub fn random_password() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

/// A cached object of this store (by name and instance label, as
/// kept volumes and Secrets carry no owner).
fn labelled<K>(store: &Store<K>, namespace: &str, name: &str, instance: &str) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    store
        .get(&ObjectRef::new(name).within(namespace))
        .filter(|o| o.labels().get(INSTANCE_LABEL).map(String::as_str) == Some(instance))
}

async fn reconcile_inner<K: Replicated>(
    store: &K,
    ctx: &Context<K>,
    namespace: &str,
) -> Result<Action, Error> {
    let name = store.name_any();
    let uid = store.uid().unwrap_or_default();
    let object = format!("{namespace}/{name}");
    let caches = &ctx.caches;
    let shared = &ctx.shared;
    let build_error = |source| Error::Build { object: object.clone(), source };
    let blueprint = store.blueprint().map_err(build_error)?;
    let members = blueprint.members.clone();

    let (old_status, resource_version) = last_written(store, ctx);

    // The credentials: generated once; never regenerated over existing data.
    let secret_name = store.credentials_name();
    let live_secret = labelled(&caches.secrets, namespace, &secret_name, &name);
    let has_data = members.iter().any(|m| labelled(&caches.volumes, namespace, m, &name).is_some());
    let (passwords, credentials_state) = match &live_secret {
        Some(secret) => match K::read_passwords(secret) {
            Ok(p) => (Some(p), Credentials::Ready),
            Err(key) => (None, Credentials::Invalid { key }),
        },
        None if has_data || old_status.replication().engine.is_some() => (None, Credentials::Missing),
        None => (Some(K::generate_passwords()), Credentials::Ready),
    };
    if let (Some(passwords), None) = (&passwords, &live_secret) {
        shared.apply(&store.credentials(&blueprint, passwords), None).await?;
        shared
            .event(
                store,
                EventType::Normal,
                "CredentialsCreated",
                "Create",
                format!("generated Secret {secret_name}"),
            )
            .await;
    } else if let (Some(passwords), Some(live)) = (&passwords, &live_secret) {
        // Keeps the passwords; brings the other keys (hosts, URIs) up to date.
        shared.apply(&store.credentials(&blueprint, passwords), Some(live)).await?;
    }

    // Shared children and the agents' identity.
    let children = store.shared_children(&blueprint);
    for service in &children.services {
        shared.apply_owned(service, &caches.services, &uid).await?;
    }
    for budget in &children.budgets {
        shared.apply_owned(budget, &caches.budgets, &uid).await?;
    }
    for config in &children.config_maps {
        shared.apply_owned(config, &caches.config_maps, &uid).await?;
    }
    let (account, role, binding) = blueprint.agent_rbac();
    shared.apply_owned(&account, &caches.accounts, &uid).await?;
    shared.apply_owned(&role, &caches.roles, &uid).await?;
    shared.apply_owned(&binding, &caches.bindings, &uid).await?;
    for member in &members {
        if let Some(volume) = blueprint.member_volume(member)
            && labelled(&caches.volumes, namespace, member, &name).is_none()
        {
            shared.apply(&volume, None).await?;
        }
    }

    // The engine.
    let now = now_ms();
    let (observed, expiries): (Vec<Member>, Vec<Option<u64>>) =
        members.iter().map(|m| observe(caches, namespace, m, now)).unzip();
    let policy = store.policy();
    let state = old_status.replication().engine.as_ref().and_then(|e| e.to_state()).unwrap_or_else(|| {
        State::Bootstrapping {
            primary: policy.requested_primary.clone().unwrap_or_else(|| members[0].clone()),
        }
    });
    let decision = step(&state, &observed, &policy, now);

    // Members beyond `mirrors`: removed, unless one is the primary.
    let extra: Vec<Arc<Pod>> = caches
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace))
        .filter(|p| p.labels().get(INSTANCE_LABEL) == Some(&name))
        .filter(|p| p.labels().get(MEMBER_LABEL).is_some_and(|m| !members.contains(m)))
        .collect();
    let engine_primary = match &decision.state {
        State::Bootstrapping { primary } | State::Steady { primary } | State::Suspect { primary, .. } => {
            Some(primary.clone())
        }
        _ => None,
    };
    let shrink_blocked = extra
        .iter()
        .map(|p| p.name_any())
        .find(|p| Some(p) == engine_primary.as_ref() || Some(p.as_str()) == decision.read_write());

    // Status first: the decision is durable before any pod acts on it.
    let pod_hashes: BTreeMap<String, String> = members
        .iter()
        .filter_map(|m| {
            let pod = owned_child(&caches.pods, namespace, m, &uid)?;
            Some((m.clone(), pod.annotations().get(TEMPLATE_HASH_ANNOTATION).cloned().unwrap_or_default()))
        })
        .collect();
    let observation = Observation {
        members: &observed,
        pod_hashes: &pod_hashes,
        template_hash: &blueprint.template_hash,
        credentials: &credentials_state,
        shrink_blocked: shrink_blocked.as_deref(),
    };
    let time = Time(Timestamp::now());
    let new_status = status::compute(store, &decision, &observation, &old_status, &time);
    if let Some(requeue) = write_status(store, ctx, &old_status, &new_status, &resource_version).await? {
        return Ok(requeue);
    }
    for event in status::events(store, &decision, &old_status, &new_status) {
        shared.event(store, event.type_, event.reason, event.action, event.note).await;
    }
    for s in &decision.steps {
        if let Step::Promoted { member, duration_ms } = s {
            info!(%member, duration_ms, "promoted");
            let labels = crate::telemetry::ControllerLabels { controller: K::CONTROLLER };
            shared.metrics.failovers.get_or_create(&labels).inc();
            shared.metrics.failover_duration.get_or_create(&labels).observe(*duration_ms as f64 / 1000.0);
        }
    }

    // Then the pods: routes taken away before routes given.
    let mut order: Vec<&String> = members.iter().collect();
    order.sort_by_key(|m| decision.routes.get(*m).copied().unwrap_or(Route::None) != Route::None);
    for member in order {
        let routing = Routing::of(&decision, member);
        match owned_child(&caches.pods, namespace, member, &uid) {
            Some(pod) => route_pod(store, ctx, &pod, &routing).await?,
            None => {
                let mut pod = blueprint.member_pod(member, &ctx.agent_image);
                let (labels, annotations) = routing.metadata();
                pod.labels_mut().extend(labels);
                pod.annotations_mut().extend(annotations);
                shared.apply(&pod, None).await?;
            }
        }
    }
    for pod in extra {
        if Some(pod.name_any()) != shrink_blocked {
            shared.delete(pod.as_ref()).await?;
            if blueprint.storage.as_ref().is_some_and(|s| s.delete_on_removal)
                && let Some(volume) = labelled(&caches.volumes, namespace, &pod.name_any(), &name)
            {
                shared.delete(volume.as_ref()).await?;
            }
        }
    }

    Ok(Action::requeue(next_look(&decision, &expiries, &new_status, now)))
}

/// When to step the engine again if no event comes first.
fn next_look<S: StoreStatus>(
    decision: &Decision,
    expiries: &[Option<u64>],
    status: &S,
    now: u64,
) -> Duration {
    let settled = matches!(decision.state, State::Steady { .. })
        && decision.blocked.is_none()
        && status.replication().members.iter().all(|m| m.healthy);
    if !settled {
        return ACTIVE_INTERVAL;
    }
    // A lease expires without an event: look again just after the first one would.
    expiries
        .iter()
        .flatten()
        .filter(|at| **at > now)
        .min()
        .map(|at| Duration::from_millis(at.saturating_sub(now) + 50))
        .unwrap_or(RESYNC)
        .min(jittered(RESYNC))
}

/// The engine's policy from a store's failover settings.
pub fn policy(failover: &FailoverSpec, synchronous: bool, requested_primary: Option<String>) -> Policy {
    let delay: Duration = failover.delay.into();
    Policy {
        enabled: failover.enabled,
        delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        max_lag_bytes: u64::try_from(failover.max_lag_bytes).unwrap_or(0),
        synchronous,
        force: false,
        requested_primary,
    }
}

/// A member as its Lease shows it, and when that Lease expires.
fn observe(caches: &Caches, namespace: &str, member: &str, now: u64) -> (Member, Option<u64>) {
    match caches.leases.get(&ObjectRef::new(member).within(namespace)) {
        Some(lease) => {
            let (reported, expired) = report::decode(&lease, now);
            let member =
                Member { name: member.to_string(), report: reported.map(|(r, _)| r), lease_expired: expired };
            (member, report::expires_at(&lease))
        }
        None => (Member { name: member.to_string(), report: None, lease_expired: true }, None),
    }
}

/// The status to step from and its resourceVersion: what this process last
/// wrote, which wins over a cache that has not caught up with it.
pub fn last_written<K: Replicated>(obj: &K, ctx: &Context<K>) -> (K::Status, String) {
    let written = ctx.written.lock().unwrap_or_else(|p| p.into_inner());
    match written.get(&obj.uid().unwrap_or_default()) {
        Some(w) => (w.status.clone(), w.resource_version.clone()),
        None => {
            (obj.current_status().cloned().unwrap_or_default(), obj.resource_version().unwrap_or_default())
        }
    }
}

/// Write `new` unless it equals `old` (positions alone are refreshed at a
/// slower pace). Returns an Action when the write lost a race and the
/// reconcile must start over.
pub async fn write_status<K: Replicated>(
    store: &K,
    ctx: &Context<K>,
    old: &K::Status,
    new: &K::Status,
    resource_version: &str,
) -> Result<Option<Action>, Error> {
    let (namespace, name, uid) =
        (store.namespace().unwrap_or_default(), store.name_any(), store.uid().unwrap_or_default());
    let significant = old.without_positions() != new.without_positions();
    let last_write = ctx.written.lock().unwrap_or_else(|p| p.into_inner()).get(&uid).map(|w| w.at);
    let stale = old != new && last_write.is_none_or(|at| at.elapsed() >= POSITION_REFRESH);
    if !significant && !stale {
        return Ok(None);
    }
    let api: Api<K> = Api::namespaced(ctx.shared.client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        // A precondition: the engine stepped from this version's state.
        "metadata": { "resourceVersion": resource_version },
        "status": new,
    });
    match api.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await {
        Ok(written) => {
            ctx.shared.metrics.write(K::CONTROLLER, K::STATUS_RESOURCE, "apply");
            let status = written.current_status().cloned().unwrap_or_default();
            ctx.written.lock().unwrap_or_else(|p| p.into_inner()).insert(
                uid,
                Written {
                    status,
                    resource_version: written.resource_version().unwrap_or_default(),
                    at: Instant::now(),
                },
            );
            Ok(None)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            // Someone else changed the object (a spec edit): start over from
            // what the API server has now.
            let fresh = api
                .get(&name)
                .await
                .map_err(|source| Error::Status { object: format!("{namespace}/{name}"), source })?;
            ctx.written.lock().unwrap_or_else(|p| p.into_inner()).insert(
                uid,
                Written {
                    status: fresh.current_status().cloned().unwrap_or_default(),
                    resource_version: fresh.resource_version().unwrap_or_default(),
                    at: last_write.unwrap_or_else(Instant::now),
                },
            );
            Ok(Some(Action::requeue(Duration::from_millis(10))))
        }
        Err(source) => Err(Error::Status { object: format!("{namespace}/{name}"), source }),
    }
}

/// Put `routing` on a member's pod: a metadata-only patch, since a pod's
/// spec cannot change in place.
async fn route_pod<K: Replicated>(
    store: &K,
    ctx: &Context<K>,
    pod: &Pod,
    routing: &Routing,
) -> Result<(), Error> {
    let (labels, annotations) = routing.metadata();
    let differs = labels.iter().any(|(k, v)| pod.labels().get(k) != Some(v))
        || annotations.iter().any(|(k, v)| pod.annotations().get(k) != Some(v));
    if !differs {
        return Ok(());
    }
    let was = pod.annotations().get(DESIRED_ROLE_ANNOTATION).cloned().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), &pod.namespace().unwrap_or_default());
    let patch = serde_json::json!({ "metadata": { "labels": labels, "annotations": annotations } });
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    api.patch(&pod.name_any(), &params, &Patch::Merge(&patch)).await.map_err(|source| Error::Apply {
        resource: "pods",
        object: format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()),
        source,
    })?;
    ctx.shared.metrics.write(K::CONTROLLER, "pods", "patch");
    let now = report::desired_annotation(routing.desired);
    if was == "fenced" && now == "mirror" {
        let note = format!(
            "{} rejoins as a mirror of {}",
            pod.name_any(),
            routing.primary.clone().unwrap_or_default()
        );
        ctx.shared.event(store, EventType::Normal, "Rejoining", "Failover", note).await;
    }
    Ok(())
}

fn error_policy<K: Replicated>(store: Arc<K>, error: &Error, ctx: Arc<Context<K>>) -> Action {
    ctx.shared.retry_after(store.as_ref(), error)
}

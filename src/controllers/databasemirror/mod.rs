//! The DatabaseMirror controller: keep the shared children and one pod and
//! volume per member, run the failover engine on what the agents report,
//! and carry its decision to the pods (instructions for the agents, role
//! labels for the Services).
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
use tracing::{Instrument, info, info_span};

use super::{Error, RESYNC, Scope, Shared, cached, jittered, owned_child};
use crate::agent::report;
use crate::api::databasemirror::Replication;
use crate::api::{DatabaseMirror, DatabaseMirrorStatus};
use crate::failover::{Decision, Member, Policy, Route, State, Step, step};
use crate::resources::FIELD_MANAGER;
use crate::resources::databasemirror::{
    APP_NAME, DESIRED_ROLE_ANNOTATION, MEMBER_LABEL, Passwords, Routing, TEMPLATE_HASH_ANNOTATION,
    agent_rbac, build, credentials, credentials_name, member_names, member_pod, member_volume, template_hash,
};
use status::{Credentials, Observation};

const CONTROLLER: &str = "databasemirror";
/// How often the engine is stepped while something is in motion (a
/// failover, a member catching up): timeouts are judged on the clock, not
/// only on events.
const ACTIVE_INTERVAL: Duration = Duration::from_millis(250);
/// Positions and lag alone are refreshed in status at most this often.
const POSITION_REFRESH: Duration = Duration::from_secs(10);
const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";

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
struct Written {
    status: DatabaseMirrorStatus,
    resource_version: String,
    at: Instant,
}

/// The DatabaseMirror controller's context.
pub struct Context {
    pub shared: Shared,
    pub caches: Caches,
    pub caches_ready: AtomicBool,
    /// Image carrying `hostwright agent` (the operator's own).
    pub agent_image: String,
    written: Mutex<HashMap<String, Written>>,
}

/// Run the DatabaseMirror controller until `shutdown` resolves.
pub async fn run(
    scope: Scope,
    shared: Shared,
    agent_image: String,
    concurrency: u16,
    ready: impl FnOnce() + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let mine = format!("app.kubernetes.io/name={APP_NAME}");
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

    let controller =
        Controller::new(scope.api::<DatabaseMirror>(), watcher::Config::default().any_semantic())
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
        .watches_stream(volume_events, by_instance)
        .watches_stream(secret_events, by_instance)
        .watches_stream(lease_events, by_instance)
        .graceful_shutdown_on(shutdown);

    let caches_ready = {
        let context = context.clone();
        async move {
            let _ = futures::join!(
                objects.wait_until_ready(),
                pods.wait_until_ready(),
                volumes.wait_until_ready(),
                services.wait_until_ready(),
                budgets.wait_until_ready(),
                config_maps.wait_until_ready(),
                secrets.wait_until_ready(),
                accounts.wait_until_ready(),
                roles.wait_until_ready(),
                bindings.wait_until_ready(),
                leases.wait_until_ready(),
            );
            context.caches_ready.store(true, Ordering::Release);
            ready();
        }
    };
    tokio::spawn(caches_ready);

    controller
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(%err, "controller event");
            }
        })
        .await;
}

/// The DatabaseMirror an object belongs to, by its instance label.
fn by_instance<K: Resource>(obj: K) -> Option<ObjectRef<DatabaseMirror>> {
    let instance = obj.labels().get(INSTANCE_LABEL)?;
    Some(ObjectRef::new(instance).within(&obj.namespace()?))
}

async fn reconcile(dbm: Arc<DatabaseMirror>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.caches_ready.load(Ordering::Acquire) {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let namespace = dbm.namespace().unwrap_or_default();
    let name = dbm.name_any();
    let span = info_span!("reconcile", controller = CONTROLLER, namespace = %namespace, name = %name);
    let _timer = ctx.shared.metrics.reconcile_started(CONTROLLER);
    let key = format!("{namespace}/{name}");
    let result = reconcile_inner(&dbm, &ctx, &namespace).instrument(span).await;
    if result.is_ok() {
        ctx.shared.backoff.succeeded(&key);
    }
    result
}

fn now_ms() -> u64 {
    report::millis(Timestamp::now())
}

/// 32 random alphanumerics: safe in URIs and conninfo strings unquoted.
fn random_password() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

/// A cached object of this DatabaseMirror (by name and instance label, as
/// kept volumes and Secrets carry no owner).
fn labelled<K>(store: &Store<K>, namespace: &str, name: &str, instance: &str) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    store
        .get(&ObjectRef::new(name).within(namespace))
        .filter(|o| o.labels().get(INSTANCE_LABEL).map(String::as_str) == Some(instance))
}

async fn reconcile_inner(dbm: &DatabaseMirror, ctx: &Context, namespace: &str) -> Result<Action, Error> {
    let name = dbm.name_any();
    let uid = dbm.uid().unwrap_or_default();
    let object = format!("{namespace}/{name}");
    let caches = &ctx.caches;
    let shared = &ctx.shared;
    let build_error = |source| Error::Build { object: object.clone(), source };
    let members = member_names(dbm);

    // What this process last wrote wins over a cache that has not caught up.
    let (old_status, resource_version) = {
        let written = ctx.written.lock().unwrap_or_else(|p| p.into_inner());
        match written.get(&uid) {
            Some(w) => (w.status.clone(), w.resource_version.clone()),
            None => (dbm.status.clone().unwrap_or_default(), dbm.resource_version().unwrap_or_default()),
        }
    };

    // The credentials: generated once; never regenerated over existing data.
    let live_secret = labelled(&caches.secrets, namespace, &credentials_name(dbm), &name);
    let has_data = members.iter().any(|m| labelled(&caches.volumes, namespace, m, &name).is_some());
    let (passwords, credentials_state) = match &live_secret {
        Some(secret) => match Passwords::from_secret(secret) {
            Ok(p) => (Some(p), Credentials::Ready),
            Err(key) => (None, Credentials::Invalid { key }),
        },
        None if has_data || old_status.replication.engine.is_some() => (None, Credentials::Missing),
        None => (
            Some(Passwords {
                owner: random_password(),
                replication: random_password(),
                superuser: random_password(),
            }),
            Credentials::Ready,
        ),
    };
    if let (Some(passwords), None) = (&passwords, &live_secret) {
        shared.apply(&credentials(dbm, passwords).map_err(build_error)?, None).await?;
        shared
            .event(
                dbm,
                EventType::Normal,
                "CredentialsCreated",
                "Create",
                format!("generated Secret {}", credentials_name(dbm)),
            )
            .await;
    } else if let (Some(passwords), Some(live)) = (&passwords, &live_secret) {
        // Keeps the passwords; brings the other keys (hosts, URIs) up to date.
        shared.apply(&credentials(dbm, passwords).map_err(build_error)?, Some(live)).await?;
    }

    // Shared children and the agents' identity.
    let children = build(dbm).map_err(build_error)?;
    shared.apply_owned(&children.read_write, &caches.services, &uid).await?;
    shared.apply_owned(&children.read_only, &caches.services, &uid).await?;
    shared.apply_owned(&children.primary_budget, &caches.budgets, &uid).await?;
    shared.apply_owned(&children.mirror_budget, &caches.budgets, &uid).await?;
    shared.apply_owned(&children.config, &caches.config_maps, &uid).await?;
    let (account, role, binding) = agent_rbac(dbm).map_err(build_error)?;
    shared.apply_owned(&account, &caches.accounts, &uid).await?;
    shared.apply_owned(&role, &caches.roles, &uid).await?;
    shared.apply_owned(&binding, &caches.bindings, &uid).await?;
    for member in &members {
        if labelled(&caches.volumes, namespace, member, &name).is_none() {
            shared.apply(&member_volume(dbm, member).map_err(build_error)?, None).await?;
        }
    }

    // The engine.
    let now = now_ms();
    let (observed, expiries): (Vec<Member>, Vec<Option<u64>>) =
        members.iter().map(|m| observe(caches, namespace, m, now)).unzip();
    let state = old_status.replication.engine.as_ref().and_then(|e| e.to_state()).unwrap_or_else(|| {
        State::Bootstrapping { primary: dbm.spec.primary.clone().unwrap_or_else(|| members[0].clone()) }
    });
    let decision = step(&state, &observed, &policy(dbm), now);

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
    let hash = template_hash(dbm);
    let observation = Observation {
        members: &observed,
        pod_hashes: &pod_hashes,
        template_hash: &hash,
        credentials: &credentials_state,
        shrink_blocked: shrink_blocked.as_deref(),
    };
    let time = Time(Timestamp::now());
    let new_status = status::compute(dbm, &decision, &observation, &old_status, &time);
    if let Some(requeue) = write_status(dbm, ctx, &old_status, &new_status, &resource_version).await? {
        return Ok(requeue);
    }
    for event in status::events(dbm, &decision, &old_status, &new_status) {
        shared.event(dbm, event.type_, event.reason, event.action, event.note).await;
    }
    for s in &decision.steps {
        if let Step::Promoted { member, duration_ms } = s {
            info!(%member, duration_ms, "promoted");
            let labels = crate::telemetry::ControllerLabels { controller: CONTROLLER };
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
            Some(pod) => route_pod(dbm, ctx, &pod, &routing).await?,
            None => {
                let mut pod = member_pod(dbm, member, &ctx.agent_image).map_err(build_error)?;
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
            if dbm.spec.instance.storage.delete_on_removal
                && let Some(volume) = labelled(&caches.volumes, namespace, &pod.name_any(), &name)
            {
                shared.delete(volume.as_ref()).await?;
            }
        }
    }

    Ok(Action::requeue(next_look(&decision, &expiries, &new_status, now)))
}

/// When to step the engine again if no event comes first.
fn next_look(
    decision: &Decision,
    expiries: &[Option<u64>],
    status: &DatabaseMirrorStatus,
    now: u64,
) -> Duration {
    let settled = matches!(decision.state, State::Steady { .. })
        && decision.blocked.is_none()
        && status.replication.members.iter().all(|m| m.healthy);
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

fn policy(dbm: &DatabaseMirror) -> Policy {
    let failover = &dbm.spec.failover;
    let delay: Duration = failover.delay.into();
    Policy {
        enabled: failover.enabled,
        delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        max_lag_bytes: u64::try_from(failover.max_lag_bytes).unwrap_or(0),
        synchronous: dbm.spec.replication == Replication::Sync,
        force: false,
        requested_primary: dbm.spec.primary.clone(),
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

/// Write `new` unless it equals `old` (positions alone are refreshed at a
/// slower pace). Returns an Action when the write lost a race and the
/// reconcile must start over.
async fn write_status(
    dbm: &DatabaseMirror,
    ctx: &Context,
    old: &DatabaseMirrorStatus,
    new: &DatabaseMirrorStatus,
    resource_version: &str,
) -> Result<Option<Action>, Error> {
    let (namespace, name, uid) =
        (dbm.namespace().unwrap_or_default(), dbm.name_any(), dbm.uid().unwrap_or_default());
    let significant = status::without_positions(old) != status::without_positions(new);
    let last_write = ctx.written.lock().unwrap_or_else(|p| p.into_inner()).get(&uid).map(|w| w.at);
    let stale = old != new && last_write.is_none_or(|at| at.elapsed() >= POSITION_REFRESH);
    if !significant && !stale {
        return Ok(None);
    }
    let api: Api<DatabaseMirror> = Api::namespaced(ctx.shared.client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": "hostwright.io/v1alpha1",
        "kind": "DatabaseMirror",
        // A precondition: the engine stepped from this version's state.
        "metadata": { "resourceVersion": resource_version },
        "status": new,
    });
    match api.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await {
        Ok(written) => {
            ctx.shared.metrics.write(CONTROLLER, "databasemirrors/status", "apply");
            let status = written.status.clone().unwrap_or_default();
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
                    status: fresh.status.clone().unwrap_or_default(),
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
async fn route_pod(dbm: &DatabaseMirror, ctx: &Context, pod: &Pod, routing: &Routing) -> Result<(), Error> {
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
    ctx.shared.metrics.write(CONTROLLER, "pods", "patch");
    let now = report::desired_annotation(routing.desired);
    if was == "fenced" && now == "mirror" {
        let note = format!(
            "{} rejoins as a mirror of {}",
            pod.name_any(),
            routing.primary.clone().unwrap_or_default()
        );
        ctx.shared.event(dbm, EventType::Normal, "Rejoining", "Failover", note).await;
    }
    Ok(())
}

fn error_policy(dbm: Arc<DatabaseMirror>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.shared.retry_after(dbm.as_ref(), error)
}

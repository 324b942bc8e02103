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

pub mod archiving;
pub mod base_backups;
mod certificates;
pub mod leases;
mod reconcile;
pub mod rollout;
pub mod status;
mod volumes;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Node, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Instrument, info_span};

use super::invalid::{self, DeserializeGuard};
use super::watch::{Feed, NoReader, SharedWatch, Watches};
use super::{Error, Scope, Shared, cached, filled};
use crate::api::WebCluster;
use crate::api::common::{FailoverSpec, PrimaryUpdate, ReplicationStatus};
use crate::failover::Policy;
use crate::resources::members::{Blueprint, INSTANCE_LABEL};
use crate::resources::{BuildError, FIELD_MANAGER};
use crate::telemetry::objects;

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
    /// WAL archiving, for a store whose primary archives.
    pub backup: Option<crate::api::backup::BackupStatus>,
}

/// A kind's status: the shared replication part, and how to take out the
/// fields that move with every report.
pub trait StoreStatus:
    Clone + Default + PartialEq + std::fmt::Debug + Serialize + Send + Sync + 'static
{
    fn replication(&self) -> &ReplicationStatus;
    fn replication_mut(&mut self) -> &mut ReplicationStatus;
    /// This status without positions, lag and report times.
    fn without_positions(&self) -> Self;
    /// Archiving and base backups, for a kind that has them.
    fn backup(&self) -> Option<&crate::api::backup::BackupStatus> {
        None
    }
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
    /// The operator's one watch of this kind.
    fn shared_watch(watches: &Watches) -> &SharedWatch<DeserializeGuard<Self>>;
    /// Archiving and base backups, for a kind that has them.
    fn backup_spec(&self) -> Option<&crate::api::backup::BackupSpec> {
        None
    }
    /// The status to write, from the shared part and the summary figures.
    fn status(&self, replication: ReplicationStatus, summary: Summary) -> Self::Status;
    fn blueprint(&self) -> Result<Blueprint, BuildError>;
    fn shared_children(&self, blueprint: &Blueprint) -> SharedChildren;
    fn failover(&self) -> &FailoverSpec;
    /// How a rolling update moves the primary.
    fn update_strategy(&self) -> PrimaryUpdate;
    /// Why the template may not be rolled onto members running the server
    /// `images` (a PostgreSQL major version, say); None: it may.
    fn refused_change(&self, _images: &[String]) -> Option<String> {
        None
    }
    fn policy(&self) -> Policy;
    /// The Service writes go through, for messages.
    fn read_write_service(&self) -> String;
    /// The members' own Secret (`<name>-agent`): every password, kept with
    /// the data they open. Only member pods mount it.
    fn credentials_name(&self) -> String;
    /// The Secret the web tier reads: the application's user alone.
    fn app_secret_name(&self) -> String;
    fn generate_passwords() -> Self::Passwords;
    /// The passwords in the members' Secret, or the first key it lacks.
    fn read_passwords(secret: &Secret) -> Result<Self::Passwords, &'static str>;
    /// The passwords of a store made before its members had a Secret of
    /// their own, from the application Secret that then held them.
    fn adopt_passwords(app_secret: &Secret) -> Option<Self::Passwords> {
        Self::read_passwords(app_secret).ok()
    }
    /// The members' Secret.
    fn credentials(&self, blueprint: &Blueprint, passwords: &Self::Passwords) -> Secret;
    /// The application's Secret: its user, URLs that verify the server
    /// against `ca_pem`, and the CA itself.
    fn app_secret(&self, blueprint: &Blueprint, passwords: &Self::Passwords, ca_pem: &str) -> Secret;
    /// The store of this kind `web` references, if any.
    fn referenced_by(web: &WebCluster) -> Option<String>;
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
pub(crate) const ACTIVE_INTERVAL: Duration = Duration::from_millis(250);
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
    /// Nodes, trimmed to their spec: which are cordoned (being drained).
    pub nodes: Store<Node>,
    pub network_policies: Store<NetworkPolicy>,
    /// Every WebCluster (decoded or not): who references which store.
    pub web_clusters: Store<DeserializeGuard<WebCluster>>,
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
    /// Lifetime of the server certificates issued to stores.
    pub certificate_lifetime: Duration,
    /// Networks (CIDRs) every store's NetworkPolicy admits besides its
    /// members and web tiers: an operations bastion, say.
    pub admin_networks: Vec<String>,
    /// Namespaces whose pods may scrape the agents' metrics.
    pub metrics_scrapers: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    written: Mutex<HashMap<String, Written<K::Status>>>,
    /// How each store's member Leases look on this operator's clock, by store uid.
    leases: Mutex<HashMap<String, leases::LeaseClock>>,
    /// Refused volume resizes already announced (`<store uid>/<member>/<size>`):
    /// the Warning is published once, not on every reconcile.
    resize_refusals: Mutex<std::collections::HashSet<String>>,
    /// StorageClasses may be read (see [`Scope::cluster_reads`]).
    pub cluster_reads: bool,
}

/// Operator-wide settings of the stores' members and children.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    /// Image carrying `hostwright agent` (the operator's own).
    pub agent_image: String,
    /// Lifetime of the server certificates issued to stores.
    pub certificate_lifetime: Duration,
    /// CIDRs admitted to every store besides its members and web tiers.
    pub admin_networks: Vec<String>,
    /// Namespaces (a label selector) whose pods may scrape the agents'
    /// metrics port of every store; None: nobody.
    pub metrics_scrapers: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
}

/// The shared watches a store controller reads.
pub struct Feeds<K: Replicated> {
    own: Feed<DeserializeGuard<K>>,
    web_clusters: Feed<DeserializeGuard<WebCluster>>,
}

impl<K: Replicated> Feeds<K> {
    pub fn take(watches: &Watches) -> Result<Self, NoReader> {
        Ok(Feeds { own: K::shared_watch(watches).feed()?, web_clusters: watches.web_clusters.feed()? })
    }
}

/// Run the controller of `K` until `shutdown` resolves.
pub async fn run<K: Replicated>(
    scope: Scope,
    feeds: Feeds<K>,
    shared: Shared,
    settings: StoreSettings,
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
    let (nodes, node_events) = cordons(&scope);
    let (network_policies, network_policy_events) = cached::<NetworkPolicy>(&scope, Some(&mine));
    // Which WebClusters reference a store decides who its NetworkPolicy lets in.
    let Feeds { own, web_clusters } = feeds;
    let (web_events, web_clusters) = (web_clusters.events, web_clusters.store);
    let controller = Controller::for_shared_stream(own.events, own.store)
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
            nodes: nodes.clone(),
            network_policies: network_policies.clone(),
            web_clusters: web_clusters.clone(),
        },
        caches_ready: AtomicBool::new(false),
        agent_image: settings.agent_image,
        certificate_lifetime: settings.certificate_lifetime,
        admin_networks: settings.admin_networks,
        metrics_scrapers: settings.metrics_scrapers,
        written: Mutex::new(HashMap::new()),
        leases: Mutex::new(HashMap::new()),
        resize_refusals: Mutex::new(std::collections::HashSet::new()),
        cluster_reads: scope.cluster_reads,
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
        .owns_stream(network_policy_events)
        .watches_shared_stream(web_events, |web: Arc<DeserializeGuard<WebCluster>>| {
            let namespace = web.namespace()?;
            let store = invalid::decoded(&web).ok().and_then(K::referenced_by)?;
            Some(ObjectRef::new(&store).within(&namespace))
        })
        .watches_stream(volume_events, by_instance::<K, _>)
        .watches_stream(secret_events, by_instance::<K, _>)
        .watches_stream(lease_events, by_instance::<K, _>)
        .watches_stream(node_events, {
            let pods = pods.clone();
            move |node: Node| stores_on_node::<K>(&pods, &node.name_any())
        })
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
                filled(&nodes),
                filled(&network_policies),
                filled(&web_clusters),
            );
            context.caches_ready.store(true, Ordering::Release);
            ready();
        }
    };
    tokio::spawn(caches_ready);

    let metrics = context.shared.metrics.clone();
    controller
        .run(reconcile::<K>, error_policy::<K>, context)
        .for_each(move |result| {
            super::settle(&metrics, &K::kind(&()), result);
            std::future::ready(())
        })
        .await;
}

/// Every node, trimmed to its name and spec, and a stream of the nodes
/// whose cordon changed: a drain starts with a cordon, and the stores with
/// a member there must look at once. Without cluster reads (an install with
/// no grant on Nodes), an empty store that counts as filled and no events:
/// no node is seen cordoned, so a drain waits on the primary's budget until
/// the primary is moved, instead of the operator never turning ready.
fn cordons(
    scope: &Scope,
) -> (Store<Node>, futures::stream::BoxStream<'static, Result<Node, watcher::Error>>) {
    let (reader, mut writer) = kube::runtime::reflector::store();
    if !scope.cluster_reads {
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitDone);
        return (reader, futures::stream::empty().boxed());
    }
    let client = &scope.client;
    let seen: Mutex<HashMap<String, bool>> = Mutex::new(HashMap::new());
    let stream = watcher(Api::<Node>::all(client.clone()), scope.initial_list.config(None))
        .inspect_err(|err| tracing::warn!(%err, "node watch failed; retrying with backoff"))
        .default_backoff()
        .modify(|node| {
            node.status = None;
            node.metadata = kube::api::ObjectMeta {
                name: node.metadata.name.take(),
                resource_version: node.metadata.resource_version.take(),
                ..Default::default()
            };
        })
        .reflect(writer)
        .applied_objects()
        .try_filter(move |node| {
            let cordoned = cordoned(node);
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            let changed = seen.insert(node.name_any(), cordoned).is_some_and(|was| was != cordoned);
            std::future::ready(changed)
        });
    (reader, stream.boxed())
}

/// The node is marked unschedulable (`kubectl cordon`, the first step of `kubectl drain`).
pub fn cordoned(node: &Node) -> bool {
    node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false)
}

/// The stores with a member pod on `node`.
fn stores_on_node<K: Replicated>(pods: &Store<Pod>, node: &str) -> Vec<ObjectRef<DeserializeGuard<K>>> {
    pods.state()
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .filter_map(|p| by_instance::<K, Pod>(p.as_ref().clone()))
        .collect()
}

/// The store an object belongs to, by its instance label.
fn by_instance<K: Replicated, C: Resource>(obj: C) -> Option<ObjectRef<DeserializeGuard<K>>> {
    let instance = obj.labels().get(INSTANCE_LABEL)?;
    Some(ObjectRef::new(instance).within(&obj.namespace()?))
}

async fn reconcile<K: Replicated>(
    guard: Arc<DeserializeGuard<K>>,
    ctx: Arc<Context<K>>,
) -> Result<Action, Error> {
    if !ctx.caches_ready.load(Ordering::Acquire) {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let store = match invalid::decoded(&guard) {
        Ok(store) => store,
        Err(bad) => return invalid::report::<K>(&ctx.shared, bad).await,
    };
    let namespace = store.namespace().unwrap_or_default();
    let name = store.name_any();
    let span = info_span!("reconcile", controller = K::CONTROLLER, namespace = %namespace, name = %name);
    let _timer = ctx.shared.metrics.reconcile_started(K::CONTROLLER);
    let key = format!("{namespace}/{name}");
    let result = match store.external(&ctx).instrument(span.clone()).await {
        Some(result) => result,
        None => reconcile::reconcile_store(store, &ctx).instrument(span).await,
    };
    if result.is_ok() {
        ctx.shared.backoff.succeeded(&key);
    }
    result
}

/// 32 random alphanumerics: safe in URIs and conninfo strings unquoted.
pub fn random_password() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

/// The engine's policy from a store's failover settings. `relax_when_alone`:
/// `durability: preferred` (keep taking writes while no mirror is healthy).
pub fn policy(
    failover: &FailoverSpec,
    synchronous: bool,
    relax_when_alone: bool,
    requested_primary: Option<String>,
) -> Policy {
    let delay: Duration = failover.delay.into();
    Policy {
        enabled: failover.enabled,
        delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        max_lag_bytes: u64::try_from(failover.max_lag_bytes).unwrap_or(0),
        synchronous,
        relax_when_alone: synchronous && relax_when_alone,
        force: false,
        requested_primary,
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
    publish(store, ctx, new, &namespace, &name);
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

/// Every status a reconcile computes comes through [`write_status`], written
/// or not: its per-object gauges are published from here.
fn publish<K: Replicated>(store: &K, ctx: &Context<K>, status: &K::Status, namespace: &str, name: &str) {
    let samples = objects::store(status.replication(), store.failover().max_lag_bytes, status.backup());
    ctx.shared.metrics.objects.publish(K::kind(&()), namespace, name, samples);
}

fn error_policy<K: Replicated>(
    store: Arc<DeserializeGuard<K>>,
    error: &Error,
    ctx: Arc<Context<K>>,
) -> Action {
    ctx.shared.retry_after(store.as_ref(), error)
}

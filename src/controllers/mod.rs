//! Controllers: thin reconcilers over the pure builders in `resources`.
//!
//! Shared here: the context every reconcile gets (client, caches, events,
//! metrics), the error type, per-object exponential backoff, and "apply only
//! what differs" so an idle fleet sends no writes at all.

pub mod compact;
pub mod databasemirror;
pub mod events;
pub mod invalid;
pub mod members;
pub mod sessionstore;
pub mod watch;
pub mod webcluster;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::resources::FIELD_MANAGER;
use crate::resources::subset::first_difference_owning;
use crate::telemetry::Metrics;
use compact::Compact;

/// How often a healthy object is looked at again without any change.
pub const RESYNC: Duration = Duration::from_secs(300);
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What can go wrong in a reconcile. Each variant names the object and the
/// step; `metric_label` groups failures for `hostwright_reconcile_errors_total`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("building the children of {object}: {source}")]
    Build {
        object: String,
        #[source]
        source: crate::resources::BuildError,
    },
    #[error("applying {resource} {object}: {source}")]
    Apply {
        resource: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting {resource} {object}: {source}")]
    Delete {
        resource: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading {resource} {object}: {source}")]
    Read {
        resource: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating the status of {object}: {source}")]
    Status {
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("encoding {what}: {source}")]
    Encode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the certificates of {object}: {source}")]
    Certificate {
        object: String,
        #[source]
        source: crate::tls::TlsError,
    },
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Build { .. } => "build",
            Error::Apply { .. } => "apply",
            Error::Delete { .. } => "delete",
            Error::Read { .. } => "read",
            Error::Status { .. } => "status",
            Error::Encode { .. } => "encode",
            Error::Certificate { .. } => "certificate",
        }
    }
}

/// An Event to publish about the reconciled object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub type_: EventType,
    pub reason: &'static str,
    pub action: &'static str,
    pub note: String,
}

/// Consecutive failures per object, for exponential backoff that resets on success.
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// Record a failure of `key` and return how long to wait before retrying:
    /// 0.5 s, 1 s, 2 s, … up to 5 minutes, each ±20%.
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let exp = BACKOFF_BASE.saturating_mul(1u32 << (*n - 1).min(16));
        jittered(exp.min(BACKOFF_MAX))
    }

    /// Forget `key`'s failures after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(key);
    }
}

/// A duration spread by ±20%, so a large fleet does not resync (or retry)
/// in the same second.
pub fn jittered(base: Duration) -> Duration {
    base.mul_f64(rand::random_range(0.8..1.2))
}

/// A namespaced object the operator applies, prunes and caches.
pub trait Child:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug
{
}

impl<K> Child for K where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug
{
}

/// What every reconcile of one controller shares.
pub struct Shared {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    /// The operator's one Event recorder.
    pub events: Arc<events::Events>,
    pub backoff: Backoff,
    /// `controller` label of this controller's metrics.
    pub controller: &'static str,
}

impl Shared {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        events: Arc<events::Events>,
        controller: &'static str,
    ) -> Self {
        Self { events, client, metrics, backoff: Backoff::default(), controller }
    }

    /// Publish an Event about `obj`; failures are logged, never fatal.
    pub async fn event<K>(&self, obj: &K, type_: EventType, reason: &str, action: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        self.event_on(&obj.object_ref(&()), type_, reason, action, note).await;
    }

    /// [`Shared::event`] naming a second object it concerns (`related`).
    pub async fn event_with<K>(
        &self,
        obj: &K,
        related: Option<k8s_openapi::api::core::v1::ObjectReference>,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) where
        K: Resource<DynamicType = ()>,
    {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: related,
        };
        self.publish(&event, &obj.object_ref(&())).await;
    }

    async fn publish(&self, event: &Event, reference: &k8s_openapi::api::core::v1::ObjectReference) {
        match self.events.publish(event, reference).await {
            Ok(()) => self.metrics.write(self.controller, "events", "create"),
            Err(err) => tracing::warn!(%err, reason = %event.reason, "could not publish event"),
        }
    }

    /// [`Shared::event`] about the object `reference` names.
    pub async fn event_on(
        &self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event =
            Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
        self.publish(&event, reference).await;
    }

    /// Server-side apply `desired` unless `live` already has every field of
    /// it. Returns the object as the API server now has it.
    pub async fn apply<K>(&self, desired: &K, live: Option<&Arc<K>>) -> Result<Option<K>, Error>
    where
        K: Child,
    {
        self.apply_owning(desired, live, &[]).await
    }

    /// [`Shared::apply`], where the values at the JSON pointers `owned` must
    /// also hold nothing `desired` lacks (see [`first_difference_owning`]).
    pub async fn apply_owning<K>(
        &self,
        desired: &K,
        live: Option<&Arc<K>>,
        owned: &[&str],
    ) -> Result<Option<K>, Error>
    where
        K: Child,
    {
        let name = desired.name_any();
        let namespace = desired.namespace().unwrap_or_default();
        let resource = resource_name::<K>();
        let desired_json = serde_json::to_value(desired)
            .map_err(|source| Error::Encode { what: format!("{resource} {namespace}/{name}"), source })?;
        if let Some(live) = live {
            let live_json = serde_json::to_value(live.as_ref())
                .map_err(|source| Error::Encode { what: format!("{resource} {namespace}/{name}"), source })?;
            match first_difference_owning(&desired_json, &live_json, owned) {
                None => return Ok(None),
                Some(path) => {
                    tracing::debug!(%resource, %namespace, %name, differs_at = %path, "applying")
                }
            }
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), &namespace);
        let mut patch = desired_json;
        patch["apiVersion"] = K::api_version(&()).into();
        patch["kind"] = K::kind(&()).into();
        let applied = api
            .patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(|source| Error::Apply { resource, object: format!("{namespace}/{name}"), source })?;
        self.metrics.write(self.controller, resource, "apply");
        Ok(Some(applied))
    }

    /// [`Shared::apply`] against the cached copy `owner_uid` controls, if any.
    pub async fn apply_owned<K>(
        &self,
        desired: &K,
        cache: &Store<K>,
        owner_uid: &str,
    ) -> Result<Option<K>, Error>
    where
        K: Child,
    {
        let namespace = desired.namespace().unwrap_or_default();
        let live = owned_child(cache, &namespace, &desired.name_any(), owner_uid);
        self.apply(desired, live.as_ref()).await
    }

    /// Whether the name of a child of kind `C` is held by another object than
    /// `owner`, said in words: looked up in `cache`, or, as a cache holds only
    /// the operator's own children of one kind, read from the API — which
    /// happens only for a child not created yet.
    pub async fn claimed<C: Child>(
        &self,
        cache: &Store<C>,
        namespace: &str,
        name: &str,
        owner: &Claimant<'_>,
    ) -> Result<Option<String>, Error> {
        let cached = cache.get(&ObjectRef::new(name).within(namespace));
        self.claimed_given::<C>(cached.as_deref().map(Resource::meta), namespace, name, owner).await
    }

    /// [`Shared::claimed`] for a cache of [`Compact`] objects.
    pub async fn claimed_compact<C: Child>(
        &self,
        cache: &Store<Compact<C>>,
        namespace: &str,
        name: &str,
        owner: &Claimant<'_>,
    ) -> Result<Option<String>, Error> {
        let cached = cache.get(&ObjectRef::new(name).within(namespace));
        // Labels decide only for an object no owner controls: only those
        // are decoded (the reconcile decodes the one it applies anyway).
        let uncontrolled =
            cached.as_deref().filter(|c| !c.owner_references().iter().any(|o| o.controller == Some(true)));
        let decoded = uncontrolled.map(Compact::metadata);
        let meta = decoded.as_ref().or(cached.as_deref().map(Resource::meta));
        self.claimed_given::<C>(meta, namespace, name, owner).await
    }

    async fn claimed_given<C: Child>(
        &self,
        cached: Option<&kube::api::ObjectMeta>,
        namespace: &str,
        name: &str,
        owner: &Claimant<'_>,
    ) -> Result<Option<String>, Error> {
        let holder = match cached {
            Some(meta) => owner.holder(meta),
            None => {
                let api: Api<C> = Api::namespaced(self.client.clone(), namespace);
                let live = api.get_metadata_opt(name).await.map_err(|source| Error::Read {
                    resource: resource_name::<C>(),
                    object: format!("{namespace}/{name}"),
                    source,
                })?;
                live.and_then(|meta| owner.holder(&meta.metadata))
            }
        };
        Ok(holder.map(|who| format!("{} {name} already belongs to {who}", C::kind(&()))))
    }

    /// The error policy of every controller: count the failure, log it, and
    /// retry after the object's exponential backoff.
    pub fn retry_after<K>(&self, obj: &K, error: &Error) -> kube::runtime::controller::Action
    where
        K: Resource,
    {
        let key = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
        self.metrics.failure(self.controller, error.metric_label());
        let delay = self.backoff.failed(&key);
        tracing::warn!(object = %key, error = %error, retry_in = ?delay, "reconcile failed");
        kube::runtime::controller::Action::requeue(delay)
    }

    /// Apply an optional child when it is wanted; delete it when it is not
    /// but still exists.
    pub async fn apply_or_prune<K>(&self, desired: Option<&K>, live: Option<Arc<K>>) -> Result<(), Error>
    where
        K: Child,
    {
        self.apply_or_prune_owning(desired, live, &[]).await
    }

    /// [`Shared::apply_or_prune`] with [`Shared::apply_owning`]'s owned fields.
    pub async fn apply_or_prune_owning<K>(
        &self,
        desired: Option<&K>,
        live: Option<Arc<K>>,
        owned: &[&str],
    ) -> Result<(), Error>
    where
        K: Child,
    {
        match (desired, live) {
            (Some(desired), live) => self.apply_owning(desired, live.as_ref(), owned).await.map(drop),
            (None, Some(unwanted)) => self.delete(unwanted.as_ref()).await,
            (None, None) => Ok(()),
        }
    }

    /// Delete a child that is no longer wanted, if it exists.
    pub async fn delete<K>(&self, live: &K) -> Result<(), Error>
    where
        K: Child,
    {
        let namespace = live.namespace().unwrap_or_default();
        let api: Api<K> = Api::namespaced(self.client.clone(), &namespace);
        self.delete_exactly(&api, resource_name::<K>(), live.meta()).await
    }

    /// Delete the object `meta` describes through `api` (typed or dynamic),
    /// only if it is still that object: a successor that took its name (a
    /// member pod built again) is not deleted on a stale view. Gone, or
    /// replaced, already is done.
    pub async fn delete_exactly<K>(
        &self,
        api: &Api<K>,
        resource: &'static str,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ) -> Result<(), Error>
    where
        K: Clone + DeserializeOwned + Debug,
    {
        let name = meta.name.clone().unwrap_or_default();
        let params = DeleteParams {
            preconditions: meta
                .uid
                .clone()
                .map(|uid| kube::api::Preconditions { uid: Some(uid), resource_version: None }),
            ..DeleteParams::background()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {
                self.metrics.write(self.controller, resource, "delete");
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(source) => {
                let namespace = meta.namespace.clone().unwrap_or_default();
                Err(Error::Delete { resource, object: format!("{namespace}/{name}"), source })
            }
        }
    }
}

/// The object that wants a child's name: the owner's uid, and the
/// `app.kubernetes.io/name` and `instance` labels its kept (unowned) children
/// carry.
pub struct Claimant<'a> {
    pub uid: &'a str,
    pub app: &'a str,
    pub instance: &'a str,
}

impl Claimant<'_> {
    /// Who holds an object with `meta`, unless it is ours: controlled by
    /// another owner, or unowned and not labelled as ours (a kept volume or
    /// Secret of an earlier object of the same kind and name is ours to adopt).
    pub fn holder(
        &self,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ) -> Option<String> {
        let controller = meta.owner_references.iter().flatten().find(|o| o.controller == Some(true));
        match controller {
            Some(owner) if owner.uid == self.uid => None,
            Some(owner) => Some(format!("{} {}", owner.kind, owner.name)),
            None => {
                let labels = meta.labels.clone().unwrap_or_default();
                let ours = labels.get(crate::contract::keys::INSTANCE_LABEL).map(String::as_str)
                    == Some(self.instance)
                    && labels.get(crate::contract::keys::NAME_LABEL).map(String::as_str) == Some(self.app);
                (!ours).then(|| "an object this operator did not create for it".to_string())
            }
        }
    }
}

/// Plural resource name of `K`, for messages and metric labels.
pub(crate) fn resource_name<K: Resource<DynamicType = ()>>() -> &'static str {
    // `Resource::plural` returns a Cow that is borrowed for every k8s-openapi
    // and derived type, so the common cases need no allocation.
    match K::plural(&()).as_ref() {
        "deployments" => "deployments",
        "services" => "services",
        "poddisruptionbudgets" => "poddisruptionbudgets",
        "horizontalpodautoscalers" => "horizontalpodautoscalers",
        "ingresses" => "ingresses",
        "networkpolicies" => "networkpolicies",
        "secrets" => "secrets",
        "pods" => "pods",
        "persistentvolumeclaims" => "persistentvolumeclaims",
        "configmaps" => "configmaps",
        "serviceaccounts" => "serviceaccounts",
        "roles" => "roles",
        "rolebindings" => "rolebindings",
        "leases" => "leases",
        _ => "other",
    }
}

/// Log what a controller's run yields. An object scheduled for a reconcile
/// but gone from the cache was deleted: its per-object series go with it.
/// (Deletions trigger no reconcile, but the garbage-collected children and
/// the pending requeue of every object do, soon after.)
pub(crate) fn settle<T, E, Q>(metrics: &Metrics, kind: &str, result: Result<T, controller::Error<E, Q>>)
where
    E: std::error::Error,
    Q: std::error::Error,
{
    match result {
        Ok(_) => {}
        Err(controller::Error::ObjectNotFound(gone)) => {
            metrics.objects.remove(kind, gone.namespace.as_deref().unwrap_or_default(), &gone.name);
        }
        Err(err) => tracing::debug!(%err, "controller event"),
    }
}

/// Where the controller watches: every namespace, or one.
#[derive(Clone)]
pub struct Scope {
    pub client: kube::Client,
    pub namespace: Option<String>,
    /// Cluster-scoped Nodes and StorageClasses may be read. A namespaced
    /// install may grant neither; the controllers then do without them
    /// rather than wait forever on a watch the API server refuses.
    pub cluster_reads: bool,
    /// How every watch fills its cache: streamed or paged, settled at start.
    pub initial_list: watch::InitialList,
}

impl Scope {
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }
}

/// A watched, cached stream of `K`, with managed fields dropped to keep the
/// cache small. Only objects carrying `label_selector` are cached, when given.
pub fn cached<K>(
    scope: &Scope,
    label_selector: Option<&str>,
) -> (Store<K>, impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static)
where
    K: watch::Watched,
{
    let (reader, writer) = reflector::store();
    let stream = watch::events::<K>(scope, label_selector).reflect(writer).applied_objects();
    (reader, stream)
}

/// [`cached`], each object kept as a [`Compact`]: for a kind whose objects
/// are large and read by one reconcile at a time (a web tier's Deployment).
pub fn cached_compact<K>(
    scope: &Scope,
    label_selector: Option<&str>,
) -> (Store<Compact<K>>, impl futures::Stream<Item = Result<Compact<K>, watcher::Error>> + Send + 'static)
where
    K: watch::Watched + Serialize,
{
    let (reader, writer) = reflector::store();
    let stream = watch::events::<K>(scope, label_selector)
        .map_ok(|event| match event {
            watcher::Event::Init => watcher::Event::Init,
            watcher::Event::InitDone => watcher::Event::InitDone,
            watcher::Event::InitApply(obj) => watcher::Event::InitApply(Compact::new(obj)),
            watcher::Event::Apply(obj) => watcher::Event::Apply(Compact::new(obj)),
            watcher::Event::Delete(obj) => watcher::Event::Delete(Compact::new(obj)),
        })
        .reflect(writer)
        .applied_objects();
    (reader, stream)
}

/// Wait until `store` has been filled by its first list.
///
/// kube's `Store::wait_until_ready` wakes one waiter per store (a oneshot
/// channel keeps one waker), and the Controller awaits its own store too: of
/// two concurrent waiters one may sleep forever, and the operator never turns
/// ready. Asking again every 100 ms does not depend on being woken.
pub async fn filled<K>(store: &Store<K>)
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    while tokio::time::timeout(Duration::from_millis(100), store.wait_until_ready()).await.is_err() {}
}

/// [`owned_child`] from a cache of [`Compact`] objects, decoded for one
/// reconcile. One that cannot be decoded counts as not cached: it is applied
/// again, which puts right whatever the cache made of it.
pub fn live_compact<K>(
    store: &Store<Compact<K>>,
    namespace: &str,
    name: &str,
    owner_uid: &str,
) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    let compact = owned_child(store, namespace, name, owner_uid)?;
    match compact.decode() {
        Ok(obj) => Some(Arc::new(obj)),
        Err(err) => {
            let kind = K::kind(&());
            tracing::warn!(%namespace, %name, %kind, %err, "a cached object does not decode; applying it again");
            None
        }
    }
}

/// The cached child `name` in `namespace`, if `owner_uid` controls it.
pub fn owned_child<K>(store: &Store<K>, namespace: &str, name: &str, owner_uid: &str) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    store
        .get(&ObjectRef::new(name).within(namespace))
        .filter(|obj| obj.owner_references().iter().any(|o| o.controller == Some(true) && o.uid == owner_uid))
}

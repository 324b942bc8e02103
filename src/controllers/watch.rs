//! How the controllers watch: how a cache is first filled, and one watch per
//! kind that several controllers read.
//!
//! Memory at a thousand sites is spent in two places. A paged list holds a
//! whole page of objects, managed fields and all, before the first is
//! trimmed, and every watch lists at once when the operator starts; a
//! streamed initial list (`sendInitialEvents`) hands over one object at a
//! time. And a kind that three controllers read (WebClusters) was cached
//! three times; a shared watch caches it once and fans its events out.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::Resource;
use kube::api::{Api, WatchEvent, WatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, ReflectHandle, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

use super::Scope;
use crate::api::{DatabaseMirror, SessionStore, WebCluster};

/// Objects in one page of a paged initial list: a page is held whole, with
/// its managed fields, until its objects are trimmed into the cache.
pub const LIST_PAGE_SIZE: u32 = 100;

/// Events a shared watch buffers for its slowest reader before it waits.
const SHARED_BUFFER: usize = 256;

/// The bookmark annotation that ends a streamed initial list.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// How a watch fills its cache when it starts (or after its history expired).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InitialList {
    /// Ask the API server whether it streams initial lists, once at start.
    Auto,
    /// Streamed over the watch (`sendInitialEvents`; Kubernetes 1.34 and
    /// later unless the WatchList feature gate is off): one object at a time.
    Streaming,
    /// Listed in pages of [`LIST_PAGE_SIZE`].
    Paged,
}

impl InitialList {
    /// `Auto` settled by asking the API server; the others as they are.
    pub async fn resolve(self, client: &kube::Client, namespace: Option<&str>) -> InitialList {
        match self {
            InitialList::Auto => {
                let api: Api<WebCluster> = match namespace {
                    Some(ns) => Api::namespaced(client.clone(), ns),
                    None => Api::all(client.clone()),
                };
                if streams_initial_lists(&api).await { InitialList::Streaming } else { InitialList::Paged }
            }
            chosen => chosen,
        }
    }

    /// The watcher configuration of a cache filled this way.
    pub fn config(self, label_selector: Option<&str>) -> watcher::Config {
        let mut config = watcher::Config::default().any_semantic();
        config = match self {
            InitialList::Streaming => config.streaming_lists(),
            InitialList::Auto | InitialList::Paged => config.page_size(LIST_PAGE_SIZE),
        };
        match label_selector {
            Some(selector) => config.labels(selector),
            None => config,
        }
    }
}

/// Whether the API server ends a streamed initial list with its bookmark: a
/// watch for a label no object carries, so the answer costs one request. A
/// server without the feature refuses the parameter (422), or an old one
/// ignores it and never sends the bookmark; both mean paged lists.
async fn streams_initial_lists<K>(api: &Api<K>) -> bool
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let params = WatchParams::streaming_lists().labels("hostwright.io/initial-list-probe=none").timeout(5);
    let answer = async {
        let mut events = api.watch(&params, "0").await?.boxed();
        while let Some(event) = events.try_next().await? {
            if let WatchEvent::Bookmark(mark) = event {
                return Ok(mark.metadata.annotations.contains_key(INITIAL_EVENTS_END));
            }
        }
        Ok::<bool, kube::Error>(false)
    };
    match tokio::time::timeout(Duration::from_secs(6), answer).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(err)) => {
            tracing::info!(%err, "the API server does not stream initial lists; listing in pages");
            false
        }
        Err(_) => false,
    }
}

/// What a watched, cached kind is: namespaced, typed, and shareable
/// between tasks.
pub trait Watched:
    Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// Every change to the `K`s in scope (carrying `label_selector`, when
/// given), filled as `scope` says, trimmed, and retried with backoff: a
/// failing watch keeps the caches (and readiness) back, so it says so.
pub fn events<K>(
    scope: &Scope,
    label_selector: Option<&str>,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Watched,
{
    watcher(scope.api::<K>(), scope.initial_list.config(label_selector))
        .inspect_err(|err| tracing::warn!(kind = %K::kind(&()), %err, "watch failed; retrying with backoff"))
        .default_backoff()
        .modify(trim)
}

/// Drop what no reconcile reads before an object is cached: managed fields
/// (the bulk of most objects) and kubectl's copy of the last applied object.
/// The list goes with its allocation (clearing it would keep its capacity,
/// some hundreds of bytes on every cached object).
pub fn trim<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// A shared cache handed out no reader: kube's `store_shared` always does,
/// so this is a broken invariant, reported instead of a panic.
#[derive(Debug, thiserror::Error)]
#[error("the shared {kind} cache handed out no event reader")]
pub struct NoReader {
    kind: String,
}

/// What one controller reads of a shared watch: its cache, and its events.
/// Every event reader must be polled (a controller does) or dropped: the
/// watch waits for its slowest reader once [`SHARED_BUFFER`] events queue.
pub struct Feed<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    pub store: Store<K>,
    pub events: ReflectHandle<K>,
}

/// One watch of `K` whose cache and events several controllers share. Not
/// started until [`Watches::drive`]; readers are taken before.
pub struct SharedWatch<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store: Store<K>,
    writer: Writer<K>,
}

impl<K> SharedWatch<K>
where
    K: Watched,
{
    fn new() -> Self {
        let (store, writer) = reflector::store_shared(SHARED_BUFFER);
        SharedWatch { store, writer }
    }

    /// A reader for one controller.
    pub fn feed(&self) -> Result<Feed<K>, NoReader> {
        let events = self.writer.subscribe().ok_or_else(|| NoReader { kind: K::kind(&()).into_owned() })?;
        Ok(Feed { store: self.store.clone(), events })
    }

    /// Watch, trim and cache; every reader is fed from here.
    fn drive(self, scope: &Scope) -> impl Future<Output = ()> + Send + 'static {
        events::<K>(scope, None).reflect_shared(self.writer).for_each(|_| futures::future::ready(()))
    }
}

/// The kinds more than one controller reads, each watched once.
pub struct Watches {
    pub web_clusters: SharedWatch<DeserializeGuard<WebCluster>>,
    pub session_stores: SharedWatch<DeserializeGuard<SessionStore>>,
    pub database_mirrors: SharedWatch<DeserializeGuard<DatabaseMirror>>,
}

impl Watches {
    pub fn new() -> Self {
        Watches {
            web_clusters: SharedWatch::new(),
            session_stores: SharedWatch::new(),
            database_mirrors: SharedWatch::new(),
        }
    }

    /// Start watching, once every reader is taken: the future runs the
    /// watches until it is dropped.
    pub fn drive(self, scope: &Scope) -> impl Future<Output = ()> + Send + 'static {
        let web = self.web_clusters.drive(scope);
        let sessions = self.session_stores.drive(scope);
        let databases = self.database_mirrors.drive(scope);
        async move {
            futures::join!(web, sessions, databases);
        }
    }
}

impl Default for Watches {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use kube::ResourceExt;

    use super::*;

    #[test]
    fn each_way_of_listing_asks_for_what_it_means() {
        let streaming = InitialList::Streaming.config(Some("a=b"));
        assert_eq!(streaming.initial_list_strategy, watcher::InitialListStrategy::StreamingList);
        assert_eq!(streaming.label_selector.as_deref(), Some("a=b"));
        let paged = InitialList::Paged.config(None);
        assert_eq!(paged.initial_list_strategy, watcher::InitialListStrategy::ListWatch);
        assert_eq!(paged.page_size, Some(LIST_PAGE_SIZE));
        assert_eq!(paged.label_selector, None);
        // Both are served from the API server's watch cache, not etcd.
        assert_eq!(paged.list_semantic, watcher::ListSemantic::Any);
        assert_eq!(streaming.list_semantic, watcher::ListSemantic::Any);
    }

    #[test]
    fn trimming_drops_managed_fields_and_the_last_applied_copy() {
        let mut wc: WebCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "hostwright.io/v1alpha1", "kind": "WebCluster",
            "metadata": {"name": "a", "namespace": "n",
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "keep": "me"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"image": "site:1"}
        }))
        .unwrap();
        trim(&mut wc);
        assert_eq!(wc.meta().managed_fields, None, "the list and its allocation are gone");
        assert_eq!(wc.annotations().keys().collect::<Vec<_>>(), ["keep"]);
    }
}

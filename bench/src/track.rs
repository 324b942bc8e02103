//! Watch-based trackers: one watch per kind and namespace records, for every
//! object, the first moment each condition of interest held and the first
//! moment each pod-template image appeared. The API is watched, never polled
//! per object; waiting only looks at this local state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use hostwright::api::WebCluster;

type Predicate<K> = fn(&K) -> bool;

/// The latest state of one object.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub generation: i64,
    /// Value of each predicate on the latest version.
    pub now: Vec<bool>,
    /// First time each predicate held (on any version).
    pub first: Vec<Option<Instant>>,
    /// First time each pod-template image was seen.
    pub images: HashMap<String, Instant>,
}

struct State {
    objects: HashMap<String, Seen>,
    /// Watch errors (the watcher retries; these are only counted).
    errors: usize,
}

pub struct Tracker {
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
    what: &'static str,
}

impl Tracker {
    /// Start watching `K` in `namespace`, evaluating `predicates` on every
    /// version seen, and `image` (if given) to record template images.
    pub fn start<K>(
        client: &Client,
        namespace: &str,
        what: &'static str,
        predicates: Vec<Predicate<K>>,
        image: Option<fn(&K) -> Option<String>>,
    ) -> Self
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        let api: Api<K> = Api::namespaced(client.clone(), namespace);
        let state = Arc::new(Mutex::new(State { objects: HashMap::new(), errors: 0 }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
            while let Some(event) = stream.next().await {
                let at = Instant::now();
                let obj = match event {
                    Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => obj,
                    Ok(watcher::Event::Delete(obj)) => {
                        shared.lock().unwrap_or_else(|p| p.into_inner()).objects.remove(&obj.name_any());
                        continue;
                    }
                    Ok(_) => continue,
                    Err(_) => {
                        shared.lock().unwrap_or_else(|p| p.into_inner()).errors += 1;
                        continue;
                    }
                };
                let values: Vec<bool> = predicates.iter().map(|p| p(&obj)).collect();
                let img = image.and_then(|f| f(&obj));
                let mut state = shared.lock().unwrap_or_else(|p| p.into_inner());
                let seen = state
                    .objects
                    .entry(obj.name_any())
                    .or_insert_with(|| Seen { first: vec![None; predicates.len()], ..Seen::default() });
                seen.generation = obj.meta().generation.unwrap_or(0);
                for (i, v) in values.iter().enumerate() {
                    if *v && seen.first[i].is_none() {
                        seen.first[i] = Some(at);
                    }
                }
                seen.now = values;
                if let Some(img) = img {
                    seen.images.entry(img).or_insert(at);
                }
            }
        });
        Tracker { state, task, what }
    }

    /// A copy of what is known about `name`.
    pub fn get(&self, name: &str) -> Option<Seen> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).objects.get(name).cloned()
    }

    pub fn watch_errors(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).errors
    }

    /// First time predicate `idx` held, for every object where it did.
    pub fn first_times(&self, idx: usize) -> Vec<Instant> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.objects.values().filter_map(|s| s.first.get(idx).copied().flatten()).collect()
    }

    /// Wait until predicate `idx` has held at least once for `n` objects;
    /// returns the moment the last of them got there.
    pub async fn wait_first(&self, idx: usize, n: usize, timeout: Duration, label: &str) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let times = self.first_times(idx);
            if times.len() >= n {
                let mut times = times;
                times.sort();
                return Ok(times[n - 1]);
            }
            if Instant::now() >= deadline {
                bail!("timed out after {timeout:?}: {label}: {}/{n} {} there", times.len(), self.what);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until `check` holds for every name in `names`.
    pub async fn wait_all(
        &self,
        names: &[String],
        timeout: Duration,
        label: &str,
        check: impl Fn(&Seen) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let missing = {
                let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                names.iter().filter(|n| !state.objects.get(*n).is_some_and(&check)).count()
            };
            if missing == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?}: {label}: {missing}/{} {} not there",
                    names.len(),
                    self.what
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Deployment predicates: [ready & updated (the direct baseline's criterion),
/// available (what a WebCluster's Ready also requires)].
pub fn deployment_predicates() -> Vec<Predicate<Deployment>> {
    vec![deployment_ready, deployment_available]
}
pub const DEPLOYMENT_READY: usize = 0;
pub const DEPLOYMENT_AVAILABLE: usize = 1;

fn desired(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn deployment_ready(d: &Deployment) -> bool {
    let s = d.status.clone().unwrap_or_default();
    let want = desired(d);
    s.ready_replicas == Some(want) && s.updated_replicas == Some(want)
}

fn deployment_available(d: &Deployment) -> bool {
    let s = d.status.clone().unwrap_or_default();
    let want = desired(d);
    deployment_ready(d) && s.available_replicas == Some(want) && s.replicas == Some(want)
}

/// Image of the first container of the pod template.
pub fn deployment_image(d: &Deployment) -> Option<String> {
    d.spec.as_ref()?.template.spec.as_ref()?.containers.first()?.image.clone()
}

/// WebCluster Ready: condition Ready True for the current generation.
pub fn web_cluster_ready(wc: &WebCluster) -> bool {
    let generation = wc.metadata.generation;
    wc.status.as_ref().is_some_and(|s| {
        s.observed_generation == generation
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True" && c.observed_generation == generation)
    })
}
pub const WEB_CLUSTER_READY: usize = 0;

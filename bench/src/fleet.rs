//! The fleet under test: N WebClusters of 3 replicas, and the very same
//! Deployments, Services and PodDisruptionBudgets the operator would build for
//! them, for the direct baseline.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use hostwright::api::WebCluster;
use hostwright::resources::webcluster::{Wiring, build};
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

pub const IMAGE: &str = "site:1";
pub const CHANGED_IMAGE: &str = "site:2";
pub const REPLICAS: i32 = 3;
/// Field manager of everything the benchmark itself writes.
pub const FIELD_MANAGER: &str = "hostwright-bench";

/// Names of the fleet's sites: s-1 … s-N.
pub fn names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("s-{i}")).collect()
}

/// The WebCluster a user would apply for site `name`.
pub fn web_cluster(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "hostwright.io/v1alpha1",
        "kind": "WebCluster",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"image": IMAGE, "replicas": REPLICAS},
    })
}

/// What the operator builds for `name`, without ownerReferences (there is no
/// owner in the direct run): Deployment, Service, PodDisruptionBudget.
pub fn direct_children(namespace: &str, name: &str) -> Result<Vec<Value>> {
    let mut wc: WebCluster = serde_json::from_value(web_cluster(namespace, name))
        .context("decoding the WebCluster (spec defaults)")?;
    // The builders need a uid for the ownerReference we strip again below.
    wc.metadata.uid = Some(format!("00000000-0000-0000-0000-{:012}", name.len()));
    let children = build(&wc, &Wiring::default()).context("building the children")?;
    anyhow::ensure!(
        children.autoscaler.is_none() && children.ingress.is_none(),
        "the benchmark's WebCluster should have no autoscaler and no ingress"
    );
    let mut out = vec![
        serde_json::to_value(&children.deployment)?,
        serde_json::to_value(&children.service)?,
        serde_json::to_value(&children.pod_disruption_budget)?,
    ];
    for obj in &mut out {
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("ownerReferences");
        }
    }
    Ok(out)
}

/// Server-side apply `objects` (each a full object with apiVersion and kind),
/// `concurrency` requests at a time. Returns when every apply has answered.
pub async fn apply_all(client: &Client, objects: Vec<Value>, concurrency: usize) -> Result<Duration> {
    let started = Instant::now();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    futures::stream::iter(objects)
        .map(|obj| {
            let client = client.clone();
            let params = params.clone();
            async move { apply_one(&client, &obj, &params).await }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(started.elapsed())
}

async fn apply_one(client: &Client, obj: &Value, params: &PatchParams) -> Result<()> {
    let api_version = obj["apiVersion"].as_str().context("object without apiVersion")?;
    let kind = obj["kind"].as_str().context("object without kind")?;
    let name = obj["metadata"]["name"].as_str().context("object without name")?;
    let namespace = obj["metadata"]["namespace"].as_str().context("object without namespace")?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    api.patch(name, params, &Patch::Apply(obj))
        .await
        .with_context(|| format!("applying {kind} {namespace}/{name}"))?;
    Ok(())
}

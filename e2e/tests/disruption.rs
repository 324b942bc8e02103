//! Node failures and node drains against the web tier. These tests change
//! cluster-wide node state, so they run one at a time (a shared lock) and
//! need the local control plane's KWOK nodes.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hostwright::api::WebCluster;
use hostwright_e2e::operator::Operator;
use hostwright_e2e::{
    Cordoned, EndpointWatch, FailedNode, TestNamespace, client, client_without_retries, ensure_crds,
    eventually, kubectl, wait_web_ready,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

static NODES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const TIMEOUT: Duration = Duration::from_secs(180);

/// (pod name, node name) of the ready, running web pods of WebCluster `site`.
async fn placement(pods: &Api<Pod>, site: &str) -> Result<Vec<(String, String)>> {
    let selector = format!("app.kubernetes.io/instance={site}");
    let list = pods.list(&ListParams::default().labels(&selector)).await?.items;
    Ok(list
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| Some((p.metadata.name?, p.spec?.node_name?)))
        .collect())
}

/// A ready 3-server WebCluster, named like its namespace so that selectors
/// (`kubectl drain --pod-selector`) cannot match another test's pods.
async fn site(
    client: &kube::Client,
    prefix: &str,
) -> Result<(TestNamespace, Operator, Vec<(String, String)>)> {
    ensure_crds(client).await?;
    let ns = TestNamespace::create(client, prefix, &[]).await?;
    let name = ns.name.clone();
    let operator = Operator::start(client, &ns.name, "solo").await?;
    let wc: WebCluster = serde_json::from_value(json!({
        "apiVersion": "hostwright.io/v1alpha1", "kind": "WebCluster",
        "metadata": {"name": name}, "spec": {"image": "site:1", "replicas": 3},
    }))?;
    let clusters = ns.api::<WebCluster>();
    clusters.create(&PostParams::default(), &wc).await?;
    wait_web_ready(&clusters, &name, TIMEOUT).await?;
    let placed = placement(&ns.api::<Pod>(), &name).await?;
    let nodes: BTreeSet<_> = placed.iter().map(|(_, n)| n.clone()).collect();
    ensure!(placed.len() == 3 && nodes.len() == 3, "expected one pod per node, got {placed:?}");
    Ok((ns, operator, placed))
}

/// Ask the Eviction API to evict a pod, exactly as `kubectl drain` does: a
/// policy/v1 Eviction posted to the pod's `eviction` subresource.
async fn evict(pods: &Api<Pod>, namespace: &str, name: &str) -> kube::Result<Value> {
    let eviction = json!({
        "apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": name, "namespace": namespace},
    });
    pods.create_subresource::<Value, Value>("eviction", name, &PostParams::default(), &eviction).await
}

#[tokio::test]
async fn losing_two_of_three_nodes_keeps_the_site_serving() -> Result<()> {
    let _lock = NODES.lock().await;
    let client = client().await?;
    let (ns, _operator, placed) = site(&client, "nodeloss").await?;
    let survivor = placed[2].1.clone();

    let watch = EndpointWatch::start(&client, &ns.name, &ns.name).await?;
    eventually(Duration::from_secs(30), "3 ready endpoints", || async {
        Ok((watch.current() == 3).then_some(()))
    })
    .await?;
    let failed = [FailedNode::fail(&placed[0].1)?, FailedNode::fail(&placed[1].1)?];

    // The dead nodes' pods are evicted and replaced on the survivor.
    let pods = ns.api::<Pod>();
    let replaced = eventually(TIMEOUT, "3 ready pods on the surviving node", || async {
        let now = placement(&pods, &ns.name).await?;
        Ok((now.len() == 3 && now.iter().all(|(_, n)| *n == survivor)).then_some(now))
    })
    .await?;
    wait_web_ready(&ns.api::<WebCluster>(), &ns.name, TIMEOUT).await?;
    let min_ready = watch.finish().await?;
    eprintln!("node loss: fewest ready endpoints = {min_ready}; now {replaced:?}");
    assert!(min_ready >= 1, "the Service had {min_ready} ready endpoints while two nodes were down");
    drop(failed);
    Ok(())
}

#[tokio::test]
async fn drains_evict_one_pod_at_a_time_and_stop_at_the_floor() -> Result<()> {
    let _lock = NODES.lock().await;
    let client = client().await?;
    let (ns, _operator, placed) = site(&client, "drain").await?;
    // kube's client retries 429s by default; a refused eviction must stay refused.
    let pods: Api<Pod> = Api::namespaced(client_without_retries().await?, &ns.name);

    // Two evictions back to back, as a drain of two nodes would ask: the
    // first is allowed, the second would go below the floor and is refused.
    evict(&pods, &ns.name, &placed[0].0).await.context("first eviction")?;
    let refused = evict(&pods, &ns.name, &placed[1].0).await;
    match refused {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 429, "{status:?}");
            assert!(status.message.contains("disruption budget"), "{}", status.message);
        }
        other => {
            panic!("the second eviction must be refused by the PodDisruptionBudget, got {other:?}")
        }
    }

    // kubectl drain goes node by node once the replacement is ready.
    let selector = format!("--pod-selector=app.kubernetes.io/instance={}", ns.name);
    let _a = Cordoned(placed[0].1.clone());
    kubectl(&["drain", &placed[0].1, "--ignore-daemonsets", &selector, "--timeout=60s"])?;
    wait_web_ready(&ns.api::<WebCluster>(), &ns.name, TIMEOUT).await?;
    let _b = Cordoned(placed[1].1.clone());
    let out = kubectl(&["drain", &placed[1].1, "--ignore-daemonsets", &selector, "--timeout=120s"])?;
    assert!(out.contains("drained"), "{out}");
    let wc = wait_web_ready(&ns.api::<WebCluster>(), &ns.name, TIMEOUT).await?;
    assert_eq!(wc.status.context("status")?.ready_replicas, 3);
    Ok(())
}

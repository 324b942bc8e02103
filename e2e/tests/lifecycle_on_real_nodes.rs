//! Day 2 on the real nodes: a rolling update and a drain of the primary's
//! node with the members in real containers (the agent installed by the init
//! container, probed by the kubelet, stopped by it on deletion), the rows
//! written through the Service's virtual IP (kube-proxy).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use hostwright::api::{DatabaseMirror, DatabaseMirrorSpec};
use hostwright::resources::members::TEMPLATE_HASH_ANNOTATION;
use hostwright_e2e::database::{Credentials, Writer, connect_rw, current_primary, lost_writes};
use hostwright_e2e::lifecycle::settled;
use hostwright_e2e::operator::Operator;
use hostwright_e2e::testbed::Testbed;
use hostwright_e2e::{TestNamespace, client, drain_node, ensure_crds, eventually};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// Generous: real containers start, stop and catch up.
const TIMEOUT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_and_a_drain_in_real_containers_lose_no_row() -> Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let ns = TestNamespace::on_real_nodes(&client, "realday2").await?;
    let _operator = Operator::start(&client, &ns.name, "solo").await?;
    // Only the volumes: it leaves pods on real nodes to their kubelet.
    let root = std::env::temp_dir().join("hostwright-e2e").join(&ns.name);
    let _volumes = Testbed::start(client.clone(), Some(ns.name.clone()), root).await?;
    let databases: Api<DatabaseMirror> = ns.api();
    let pods: Api<Pod> = ns.api();
    let spec: DatabaseMirrorSpec = serde_yaml::from_str(
        "instance: {image: 'hostwright.local/postgres:15', storage: {size: 1Gi}}\nmirrors: 2\n\
         replication: sync\nfailover: {delay: 1s}",
    )?;
    databases.create(&PostParams::default(), &DatabaseMirror::new("db", spec)).await?;
    settled(&databases, "db", TIMEOUT).await?;
    let creds = Credentials::read(&client, &ns.name, "db").await?;
    connect_rw(&client, &ns.name, "db", &creds)
        .await?
        .batch_execute("CREATE TABLE acked (id bigint PRIMARY KEY)")
        .await?;
    let rows =
        Writer::start_via_service_ip(client.clone(), ns.name.clone(), "db".into(), creds.clone(), "acked")
            .await?;
    eventually(TIMEOUT, "rows acknowledged", || async { Ok((rows.acked().len() > 50).then_some(())) })
        .await?;

    // A rolling update: resources and a setting only a restart applies.
    let revision = |p: &Pod| p.annotations().get(TEMPLATE_HASH_ANNOTATION).cloned().unwrap_or_default();
    let mut before = BTreeSet::new();
    for m in ["db-1", "db-2", "db-3"] {
        before.insert(revision(&pods.get(m).await?));
    }
    let started = Instant::now();
    let patch = json!({"spec": {"instance": {
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
        "parameters": {"max_connections": "120"},
    }}});
    databases.patch("db", &PatchParams::default(), &Patch::Merge(&patch)).await?;
    let dbm = settled(&databases, "db", TIMEOUT).await?;
    let rolled = started.elapsed();
    for m in ["db-1", "db-2", "db-3"] {
        let pod = pods.get(m).await?;
        ensure!(!before.contains(&revision(&pod)), "{m} runs the new revision");
        ensure!(
            pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| n.starts_with("hw-real")),
            "{m} on a real node"
        );
    }
    let primary = current_primary(&dbm).context("a primary")?;
    let value: String = connect_rw(&client, &ns.name, "db", &creds)
        .await?
        .query_one("SHOW max_connections", &[])
        .await?
        .get(0);
    ensure!(value == "120", "max_connections = {value}");
    println!("rolled 3 members in real containers in {:.1} s; primary now {primary}", rolled.as_secs_f64());

    // A drain of the primary's node.
    let node = pods.get(&primary).await?.spec.and_then(|s| s.node_name).context("scheduled")?;
    let (_, took) = drain_node(&node, "db", Duration::from_secs(180)).await?;
    let dbm = settled(&databases, "db", TIMEOUT).await?;
    ensure!(current_primary(&dbm).is_some_and(|p| p != primary), "the primary moved off {node}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked = rows.stop().await;
    let lost = lost_writes(&client, &ns.name, "db", &creds, "acked", &acked).await?;
    println!(
        "drained {node} (primary {primary}) in {:.1} s; {} rows acknowledged through the Service, {} lost",
        took.as_secs_f64(),
        acked.len(),
        lost.len()
    );
    ensure!(lost.is_empty(), "acknowledged rows lost in sync mode: {lost:?}");
    Ok(())
}

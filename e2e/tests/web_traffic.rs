//! A WebCluster on the real nodes under steady HTTP traffic through its
//! Service's VIP (kube-proxy), while the web tier rolls to a new image and
//! while a node holding web pods is drained: not one request may fail. In
//! between, a whole node is lost: the requests that fail are counted and
//! reported, and traffic must recover.
//!
//! The namespace's annotations (the PodNodeSelector and
//! PodTolerationRestriction admission plugins) put its pods on the real
//! nodes, as a hosting company dedicates nodes to a tenant.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use hostwright::api::WebCluster;
use hostwright_e2e::operator::Operator;
use hostwright_e2e::{TestNamespace, client, ensure_crds, eventually, http_get, kubectl, wait_web_ready};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const USERS: usize = 8;
const READY: Duration = Duration::from_secs(180);

/// Requests sent and failed since the last [`Traffic::take`].
#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    failed: AtomicU64,
}

/// `USERS` clients requesting `/` through the VIP one after another, each on
/// a new connection, until stopped; every error or non-200 answer counts as
/// a failed request.
struct Traffic {
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Traffic {
    fn start(addr: String) -> Self {
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks = (0..USERS)
            .map(|_| {
                let (counts, stop, failures, addr) =
                    (counts.clone(), stop.clone(), failures.clone(), addr.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let outcome = http_get(&addr, "/").await;
                        counts.sent.fetch_add(1, Ordering::Relaxed);
                        let failure = match outcome {
                            Ok((200, _)) => None,
                            Ok((status, _)) => Some(format!("status {status}")),
                            Err(e) => Some(format!("{e:#}")),
                        };
                        if let Some(why) = failure {
                            counts.failed.fetch_add(1, Ordering::Relaxed);
                            failures.lock().unwrap_or_else(|p| p.into_inner()).push(why);
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Traffic { counts, stop, tasks, failures }
    }

    /// (sent, failed) since the last call, and what failed.
    fn take(&self) -> (u64, u64, Vec<String>) {
        let failures = std::mem::take(&mut *self.failures.lock().unwrap_or_else(|p| p.into_inner()));
        (self.counts.sent.swap(0, Ordering::Relaxed), self.counts.failed.swap(0, Ordering::Relaxed), failures)
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Run `e2e/cluster ARGS` (the local cluster's own script) off the runtime's
/// threads, so the traffic goes on meanwhile.
async fn cluster(args: &[&str]) -> Result<()> {
    let args: Vec<String> = args.iter().map(|a| (*a).to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/cluster"))
            .args(&args)
            .output()
            .context("running e2e/cluster")?;
        ensure!(
            out.status.success(),
            "e2e/cluster {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    })
    .await?
}

/// Running web pods on each node.
async fn pods_per_node(pods: &Api<Pod>) -> Result<BTreeMap<String, usize>> {
    let mut per_node = BTreeMap::new();
    for pod in pods.list(&ListParams::default()).await?.items {
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            && pod.metadata.deletion_timestamp.is_none();
        if let Some(node) = pod.spec.and_then(|s| s.node_name).filter(|_| running) {
            *per_node.entry(node).or_insert(0) += 1;
        }
    }
    Ok(per_node)
}

/// Which pages the Service gives now, out of `n` requests.
async fn pages(addr: &str, n: usize) -> Result<BTreeMap<String, usize>> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let (_, body) = http_get(addr, "/").await?;
        *seen.entry(body.trim().to_string()).or_insert(0) += 1;
    }
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_while_the_web_tier_rolls_and_a_node_drains() -> Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let real = Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels("hostwright.io/node=real"))
        .await?;
    if real.items.len() < 2 {
        bail!("needs two real nodes (e2e/cluster up with HOSTWRIGHT_REAL_NODES=2)");
    }
    let ns = TestNamespace::create(&client, "webtraffic", &[]).await?;
    Api::<Namespace>::all(client.clone())
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "scheduler.alpha.kubernetes.io/node-selector": "hostwright.io/node=real",
                "scheduler.alpha.kubernetes.io/defaultTolerations":
                    r#"[{"key":"hostwright.io/real-node","operator":"Exists","effect":"NoSchedule"}]"#,
            }}})),
        )
        .await?;
    let _operator = Operator::start(&client, &ns.name, "solo").await?;
    let sites: Api<WebCluster> = ns.api();
    let site: WebCluster = serde_json::from_value(json!({
        "apiVersion": "hostwright.io/v1alpha1", "kind": "WebCluster", "metadata": {"name": "site"},
        "spec": {"image": "hostwright.local/web:1", "port": 8080, "replicas": 3, "hosts": ["site.example.com"]},
    }))?;
    sites.create(&PostParams::default(), &site).await?;
    wait_web_ready(&sites, "site", READY).await?;
    println!("web pods per node: {:?}", pods_per_node(&ns.api::<Pod>()).await?);
    let vip =
        ns.api::<Service>().get("site").await?.spec.and_then(|s| s.cluster_ip).context("a ClusterIP")?;
    let addr = format!("{vip}:80");
    ensure!(pages(&addr, 20).await?.keys().all(|p| p.contains("v1")), "v1 answering before the rollout");

    let traffic = Traffic::start(addr.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (warm_sent, warm_failed, warm_why) = traffic.take();
    ensure!(
        warm_failed == 0,
        "{warm_failed} of {warm_sent} requests failed before anything happened: {warm_why:?}"
    );

    // 1. The web tier rolls to a new image.
    sites
        .patch(
            "site",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"image": "hostwright.local/web:2"}})),
        )
        .await?;
    eventually(READY, "the rollout to v2, the Service answering v2 only", || {
        let (sites, addr) = (sites.clone(), addr.clone());
        async move {
            let wc = sites.get("site").await?;
            let done = wc.status.as_ref().is_some_and(|s| {
                s.image.as_deref() == Some("hostwright.local/web:2")
                    && s.updated_replicas == 3
                    && s.ready_replicas == 3
            });
            Ok((done && pages(&addr, 20).await?.keys().all(|p| p.contains("v2"))).then_some(()))
        }
    })
    .await?;
    let (rollout_sent, rollout_failed, rollout_why) = traffic.take();

    // 2. The loss of a whole node: hw-real-2 (node 1's kube-proxy carries
    // this machine's Service traffic, as a load balancer's node would).
    // Requests sent to its pods fail until the node is found NotReady and
    // its endpoints go: a figure, reported, and traffic must recover.
    let lost = "hw-real-2";
    let held_lost = pods_per_node(&ns.api::<Pod>()).await?.get(lost).copied().unwrap_or(0);
    ensure!(held_lost > 0, "{lost} holds a web pod before it is lost");
    cluster(&["stop-node", "2"]).await?;
    let stopped = std::time::Instant::now();
    let (mut lost_sent, mut lost_failed) = (0, 0);
    let clean = loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (sent, failed, _) = traffic.take();
        lost_sent += sent;
        lost_failed += failed;
        if failed == 0 && sent > 0 {
            break stopped.elapsed();
        }
        ensure!(stopped.elapsed() < READY, "requests still failing {READY:?} after {lost} was lost");
    };
    cluster(&["start-node", "2"]).await?;
    println!(
        "loss of {lost} ({held_lost} web pods): {lost_failed} of {lost_sent} requests failed; \
         the first 5 s without a failure ended {:.1} s after the loss",
        clean.as_secs_f64()
    );
    traffic.take();

    // 3. `kubectl drain` of the real node holding the most web pods.
    let per_node = pods_per_node(&ns.api::<Pod>()).await?;
    println!("web pods per node before the drain: {per_node:?}");
    let (node, held) = per_node.into_iter().max_by_key(|(_, n)| *n).context("a node holding web pods")?;
    let drain_node = node.clone();
    // kubectl blocks: off the runtime's threads, so the traffic goes on.
    let drained = tokio::task::spawn_blocking(move || {
        kubectl(&["drain", &drain_node, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=180s"])
    })
    .await?;
    let uncordoned = kubectl(&["uncordon", &node]);
    drained.with_context(|| format!("draining {node}"))?;
    uncordoned?;
    wait_web_ready(&sites, "site", READY).await?;
    let (drain_sent, drain_failed, drain_why) = traffic.take();
    traffic.stop().await;

    println!("rollout v1 → v2: {rollout_failed} of {rollout_sent} requests failed");
    println!("drain of {node} ({held} web pods): {drain_failed} of {drain_sent} requests failed");
    ensure!(rollout_failed == 0, "requests failed during the rollout: {rollout_why:?}");
    ensure!(drain_failed == 0, "requests failed during the drain: {drain_why:?}");
    ensure!(rollout_sent > 0 && drain_sent > 0, "traffic flowed throughout");
    Ok(())
}

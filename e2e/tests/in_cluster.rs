//! The operator as users run it: `helm install` with the locally built image
//! (`e2e/cluster load-operator`), two replicas in real containers on the
//! real nodes, in a namespace enforcing the `restricted` Pod Security
//! profile, reaching the API server through the `kubernetes` Service. One
//! replica leads; deleting the leader's pod hands over, and the new leader
//! reconciles.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hostwright::api::WebCluster;
use hostwright_e2e::{
    TestNamespace, client, container_status, ensure_crds, eventually, kill_container, wait_for,
    wait_web_ready,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const IMAGE: &str = "hostwright.local/hostwright:dev";
const LEASE: &str = "hostwright-leader";

/// A Helm release of the chart, uninstalled when dropped (its ClusterRole
/// and binding outlive the namespace otherwise).
struct Release {
    name: String,
    namespace: String,
}

impl Release {
    fn install(name: &str, namespace: &str) -> Result<Self> {
        let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/hostwright");
        let out = Command::new("helm")
            .args(["install", name, chart, "--namespace", namespace, "--wait", "--timeout", "3m"])
            .args(["--set", "image.repository=hostwright.local/hostwright", "--set", "image.tag=dev"])
            .args(["--set", "image.pullPolicy=Never", "--set", &format!("watchNamespace={namespace}")])
            .args(["--set", &format!("leaderElection.leaseName={LEASE}")])
            .args(["--set-json", r#"nodeSelector={"hostwright.io/node":"real"}"#])
            .args([
                "--set-json",
                r#"tolerations=[{"key":"hostwright.io/real-node","operator":"Exists","effect":"NoSchedule"}]"#,
            ])
            .output()
            .context("running helm (is it on PATH?)")?;
        let release = Release { name: name.into(), namespace: namespace.into() };
        if !out.status.success() {
            bail!("helm install {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(release)
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = Command::new("helm").args(["uninstall", &self.name, "--namespace", &self.namespace]).output();
    }
}

async fn leader(leases: &Api<Lease>) -> Result<Option<String>> {
    Ok(leases
        .get_opt(LEASE)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty()))
}

#[tokio::test]
async fn the_operator_runs_in_real_containers_and_a_deleted_leader_hands_over() -> Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels("hostwright.io/node=real"))
        .await?;
    let loaded = nodes.items.iter().filter(|n| {
        n.status.as_ref().and_then(|s| s.images.as_ref()).is_some_and(|images| {
            images
                .iter()
                .any(|i| i.names.as_ref().is_some_and(|names| names.iter().any(|n| n.ends_with(IMAGE))))
        })
    });
    if loaded.count() < 2 {
        bail!(
            "needs two real nodes holding {IMAGE}: e2e/cluster up with HOSTWRIGHT_REAL_NODES=2, then e2e/cluster load-operator target/debug/hostwright"
        );
    }

    let ns =
        TestNamespace::create(&client, "incluster", &[("pod-security.kubernetes.io/enforce", "restricted")])
            .await?;
    let _release = Release::install(&format!("{}-op", ns.name), &ns.name)?;
    let deployments: Api<Deployment> = ns.api();
    let operator = format!("{}-op-hostwright", ns.name);
    wait_for(
        &deployments,
        &operator,
        Duration::from_secs(120),
        "2 operator pods Ready",
        |d: Option<&Deployment>| {
            d.and_then(|d| d.status.as_ref()).is_some_and(|s| s.ready_replicas == Some(2))
        },
    )
    .await?;

    let leases: Api<Lease> = ns.api();
    let pods: Api<Pod> = ns.api();
    let first = eventually(Duration::from_secs(60), "a leader", || {
        let leases = leases.clone();
        async move { leader(&leases).await }
    })
    .await?;
    ensure!(pods.get_opt(&first).await?.is_some(), "the leader {first} is one of the operator's pods");

    // The leader reconciles: a site goes Ready.
    let sites: Api<WebCluster> = ns.api();
    let site: WebCluster = serde_json::from_value(json!({
        "apiVersion": "hostwright.io/v1alpha1", "kind": "WebCluster", "metadata": {"name": "site"},
        "spec": {"image": "nginxinc/nginx-unprivileged:1.27", "hosts": ["site.example.com"]},
    }))?;
    sites.create(&PostParams::default(), &site).await?;
    wait_web_ready(&sites, "site", Duration::from_secs(120)).await?;

    // Delete the leader's pod: the other replica takes the Lease and goes on.
    let deleted = Instant::now();
    pods.delete(&first, &DeleteParams::default()).await?;
    let second = eventually(Duration::from_secs(60), "another leader", || {
        let leases = leases.clone();
        let first = first.clone();
        async move { Ok(leader(&leases).await?.filter(|h| *h != first)) }
    })
    .await?;
    let handover = deleted.elapsed();
    println!("leader {first} deleted; {second} led after {:.2} s", handover.as_secs_f64());
    scale_and_wait(&sites, &deployments, 4).await?;

    // Crash the new leader (SIGKILL of its container's processes): it cannot
    // release the Lease. Either its restarted container (the same pod, so
    // the same identity) or the standby must lead again and reconcile.
    let container = container_status(&pods, &second, "hostwright")
        .await?
        .container_id
        .context("the leader's container id")?;
    let killed = Instant::now();
    ensure!(kill_container(&container)? > 0, "no process of container {container} found on this machine");
    scale_and_wait(&sites, &deployments, 5).await?;
    let now = leader(&leases).await?.context("a leader after the crash")?;
    let restarts = container_status(&pods, &second, "hostwright").await?.restart_count;
    ensure!(restarts >= 1, "kubelet restarted the crashed container (restarts: {restarts})");
    println!(
        "leader {second} crashed (SIGKILL); {now} led and reconciled after {:.2} s (crashed container restarted {restarts}x)",
        killed.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Change the site's replicas; the leader of the moment must carry it to
/// the Deployment.
async fn scale_and_wait(sites: &Api<WebCluster>, deployments: &Api<Deployment>, replicas: i32) -> Result<()> {
    sites
        .patch("site", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": replicas}})))
        .await?;
    wait_for(
        deployments,
        "site",
        Duration::from_secs(60),
        "the leader scaling the site",
        |d: Option<&Deployment>| {
            d.and_then(|d| d.spec.as_ref()).is_some_and(|s| s.replicas == Some(replicas))
        },
    )
    .await?;
    Ok(())
}

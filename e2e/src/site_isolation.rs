//! Isolation between sites on the real nodes, where NetworkPolicy is
//! enforced: the stores of a running site (its SessionStore and
//! DatabaseMirror, their NetworkPolicies as the operator made them) are
//! probed by pods that are not the site's web tier.
//!
//! - a pod of another site: another namespace, labelled exactly as the
//!   site's web pods are (so only the namespace tells it apart);
//! - a pod of another web tier in the site's namespace (a WebCluster named
//!   `blog` that references neither store);
//! - a control pod in the site's namespace labelled as the site's web pods:
//!   it must connect, or "refused" would prove nothing about the probes.
//!
//! Every store member's address and every store Service's virtual IP is
//! tried; the web pods' port too, which no policy limits, so a refusal is
//! the store's policy and not a probe that cannot reach anything. That the
//! site's real web pods connect is read from the server's side:
//! `pg_stat_activity` shows a connection from every web pod.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hostwright::api::WebCluster;
use hostwright::resources::{databasemirror, labels, sessionstore, webcluster};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Client;
use kube::api::{Api, ListParams};

use crate::database::{Credentials, connect_rw};
use crate::reachability::{probe_pod, start_pods};
use crate::{TestNamespace, delete_ignoring_missing, eventually};

/// The site's stores and their Services (as in `e2e/demo/site.yaml`).
const DATABASE: &str = "db";
const SESSIONS: &str = "sessions";
const WEB: &str = "site";
const STORE_SERVICES: [&str; 4] = ["db-rw", "db-ro", "sessions", "sessions-replicas"];

/// What each probe could open, one line per probe, for the test's output.
pub struct Verdicts {
    pub lines: Vec<String>,
    /// The web pods' addresses seen in `pg_stat_activity`.
    pub web_clients: usize,
}

/// Probe the stores of the site running in `ns` (see the module's doc).
pub async fn check(client: &Client, ns: &str) -> Result<Verdicts> {
    let store_targets = store_targets(client, ns).await?;
    let web_port = Api::<WebCluster>::namespaced(client.clone(), ns).get(WEB).await?.spec.port;
    let web_targets: Vec<String> =
        web_pod_ips(client, ns).await?.iter().map(|ip| format!("{ip}:{web_port}")).collect();
    ensure!(!web_targets.is_empty(), "the site has no running web pod");

    let site_labels = labels::selector(webcluster::APP_NAME, WEB);
    let blog_labels = labels::selector(webcluster::APP_NAME, "blog");
    let other_site = TestNamespace::on_real_nodes(client, "othersite").await?;
    let site_pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    start_pods(
        &site_pods,
        vec![
            probe_pod("probe-site-labels", None, &site_labels)?,
            probe_pod("probe-blog", None, &blog_labels)?,
        ],
    )
    .await?;
    start_pods(&other_site.api(), vec![probe_pod("probe-other-site", None, &site_labels)?]).await?;

    let probes = [
        (ns, "probe-site-labels", true, "the site's namespace, the site's web labels (control)"),
        (ns, "probe-blog", false, "the site's namespace, another web tier's labels"),
        (
            other_site.name.as_str(),
            "probe-other-site",
            false,
            "another site's namespace, the site's web labels",
        ),
    ];
    let all_targets: Vec<String> = store_targets.iter().chain(&web_targets).cloned().collect();
    let mut lines = Vec::new();
    for (namespace, pod, admitted, who) in probes {
        let verdicts = crate::reachability::connects(namespace, pod, &all_targets)?;
        let opened = |targets: &[String]| targets.iter().filter(|t| verdicts[*t]).count();
        let (stores_open, web_open) = (opened(&store_targets), opened(&web_targets));
        lines.push(format!(
            "{who}: stores {stores_open}/{} open, web pods {web_open}/{} open",
            store_targets.len(),
            web_targets.len()
        ));
        ensure!(web_open == web_targets.len(), "{pod} ({who}) could not reach the web pods: {verdicts:?}");
        let expected = if admitted { store_targets.len() } else { 0 };
        ensure!(stores_open == expected, "{pod} ({who}), admitted {admitted}: {verdicts:?}");
    }
    // Bare pods would stand in the way of the scenario's drain.
    for pod in ["probe-site-labels", "probe-blog"] {
        delete_ignoring_missing(&site_pods, pod).await?;
    }
    let web_clients = web_pods_connected_to_the_database(client, ns).await?;
    Ok(Verdicts { lines, web_clients })
}

/// Every member's address on its server port, and every store Service's
/// virtual IP on its port.
async fn store_targets(client: &Client, ns: &str) -> Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut targets = Vec::new();
    for (app, name, port) in
        [(databasemirror::APP_NAME, DATABASE, 5432), (sessionstore::APP_NAME, SESSIONS, 6379)]
    {
        let selector = labels::selector_string(&labels::selector(app, name));
        let members = pods.list(&ListParams::default().labels(&selector)).await?.items;
        ensure!(members.len() >= 2, "{name}: expected two members, found {}", members.len());
        for pod in members {
            let ip = pod.status.and_then(|s| s.pod_ip).context("a member without an address")?;
            targets.push(format!("{ip}:{port}"));
        }
    }
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    for name in STORE_SERVICES {
        let spec = services.get(name).await?.spec.with_context(|| format!("Service {name} has no spec"))?;
        let vip = spec.cluster_ip.with_context(|| format!("Service {name} has no virtual IP"))?;
        let port =
            spec.ports.into_iter().flatten().next().with_context(|| format!("Service {name}: no port"))?;
        targets.push(format!("{vip}:{}", port.port));
    }
    Ok(targets)
}

/// The addresses of the site's running web pods.
async fn web_pod_ips(client: &Client, ns: &str) -> Result<BTreeSet<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = labels::selector_string(&labels::selector(webcluster::APP_NAME, WEB));
    let list = pods.list(&ListParams::default().labels(&selector)).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.status)
        .filter(|s| s.phase.as_deref() == Some("Running"))
        .filter_map(|s| s.pod_ip)
        .collect())
}

/// Wait until `pg_stat_activity` on the primary shows a connection of the
/// site's owner from every running web pod; how many web pods that is.
async fn web_pods_connected_to_the_database(client: &Client, ns: &str) -> Result<usize> {
    let creds = Credentials::read(client, ns, DATABASE).await?;
    eventually(Duration::from_secs(60), "a database connection from every web pod", || async {
        let web = web_pod_ips(client, ns).await?;
        let db = connect_rw(client, ns, DATABASE, &creds).await?;
        let rows = db
            .query(
                "SELECT DISTINCT host(client_addr) FROM pg_stat_activity \
                 WHERE usename = current_user AND client_addr IS NOT NULL",
                &[],
            )
            .await?;
        let clients: BTreeSet<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
        Ok(web.is_subset(&clients).then_some(web.len()))
    })
    .await
}

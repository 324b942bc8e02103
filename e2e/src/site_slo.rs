//! The site SLO scenario: the demo site (`e2e/demo/site.yaml`: a WebCluster
//! of the demo site's image, a SessionStore and a DatabaseMirror) on the real
//! nodes, visited by a few hundred users through its Service's virtual IP
//! (kube-proxy) without pause, while these happen in turn:
//!
//! 1. the web tier rolls to a new image;
//! 2. the loss of a whole node (its kubelet, runtime and containers killed),
//!    and its return;
//! 3. `kubectl drain` of a node holding web pods (the web pods only: drains
//!    of store members are another matter);
//! 4. the loss of the SessionStore's primary (its container crashes);
//! 5. the loss of the DatabaseMirror's primary (likewise);
//! 6. the loss of the operator's leader (SIGKILL; a second operator waits).
//!
//! For each it records requests, failed requests, users found logged out
//! and acknowledged page views missing from the database. The e2e test
//! asserts the zero cases; `make bench` reports every figure as `site.*`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hostwright::api::{DatabaseMirror, SessionStore, WebCluster};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde::Deserialize;
use serde_json::json;

use crate::database::{Credentials, all_healthy, connect_rw, current_primary};
use crate::operator::Operator;
use crate::testbed::Testbed;
use crate::visitors::{Tally, Visitors, get, lost_views};
use crate::{TestNamespace, container_status, eventually, kill_container, wait_for, wait_web_ready};

/// How long one step of the scenario may take.
const STEP: Duration = Duration::from_secs(240);
/// Traffic goes on this long after an event has settled, before its tally.
const SETTLE: Duration = Duration::from_secs(5);

/// What the visitors saw through one event.
#[derive(Clone, Debug)]
pub struct EventReport {
    /// A short key (`rollout`, `node_loss`, ...).
    pub event: &'static str,
    pub requests: u64,
    pub failed: u64,
    pub sessions_lost: u64,
    pub views: usize,
    pub rows_lost: usize,
    /// From the event's start until it had settled.
    pub seconds: f64,
    pub why: Vec<String>,
}

impl std::fmt::Display for EventReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} of {} requests failed, {} sessions lost, {} of {} acknowledged rows lost ({:.1} s)",
            self.event,
            self.failed,
            self.requests,
            self.sessions_lost,
            self.rows_lost,
            self.views,
            self.seconds
        )?;
        if !self.why.is_empty() {
            write!(f, "; e.g. {:?}", self.why)?;
        }
        Ok(())
    }
}

/// The demo site in a namespace of its own on the real nodes, with two
/// operators (one leads), and its visitors.
pub struct SiteScenario {
    client: Client,
    ns: TestNamespace,
    operators: Vec<Operator>,
    /// Provisions the DatabaseMirror's volumes (it leaves pods on real
    /// nodes to their kubelet).
    volumes: Option<Testbed>,
    addr: String,
    visitors: Option<Visitors>,
    /// Every view acknowledged so far, and those already found missing.
    views: Vec<i64>,
    lost: BTreeSet<i64>,
}

impl SiteScenario {
    /// Deploy the site and wait until it serves.
    pub async fn start(client: &Client) -> Result<Self> {
        let ns = TestNamespace::on_real_nodes(client, "site").await?;
        let mut operators = Vec::new();
        for identity in ["a", "b"] {
            operators.push(Operator::start(client, &ns.name, identity).await?);
        }
        let root = std::env::temp_dir().join("hostwright-e2e").join(&ns.name);
        let volumes = Some(Testbed::start(client.clone(), Some(ns.name.clone()), root).await?);
        create_site(client, &ns.name).await?;
        stores_healthy(client, &ns.name).await?;
        wait_web_ready(&ns.api::<WebCluster>(), "site", STEP).await?;
        let vip =
            ns.api::<Service>().get("site").await?.spec.and_then(|s| s.cluster_ip).context("a virtual IP")?;
        let addr = format!("{vip}:80");
        eventually(STEP, "a page through the Service", || async {
            Ok(get(&addr, "/", None).await.ok().filter(|a| a.status == 200))
        })
        .await?;
        Ok(SiteScenario {
            client: client.clone(),
            ns,
            operators,
            volumes,
            addr,
            visitors: None,
            views: Vec::new(),
            lost: BTreeSet::new(),
        })
    }

    /// The namespace the site runs in.
    pub fn namespace(&self) -> &str {
        &self.ns.name
    }

    /// Let `users` users log in and visit, `workers` requests at a time;
    /// what they saw while nothing happened (3 s).
    pub async fn visit(&mut self, users: usize, workers: usize) -> Result<EventReport> {
        self.visitors = Some(Visitors::start(&self.addr, users, workers).await?);
        self.observe("steady", Instant::now(), || async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok(())
        })
        .await
    }

    /// Every event of the scenario in turn; `seen` hears of each as it ends
    /// (so a later event's failure does not hide the earlier figures).
    pub async fn run_events(&mut self, seen: impl Fn(&EventReport)) -> Result<Vec<EventReport>> {
        let mut reports = Vec::new();
        for event in 0..6 {
            let report = match event {
                0 => self.rollout().await?,
                1 => self.node_loss().await?,
                2 => self.drain().await?,
                3 => {
                    self.store_primary_loss::<SessionStore>("session_primary_loss", "sessions", "redis")
                        .await?
                }
                4 => {
                    self.store_primary_loss::<DatabaseMirror>("database_primary_loss", "db", "postgres")
                        .await?
                }
                _ => self.operator_leader_loss().await?,
            };
            seen(&report);
            reports.push(report);
        }
        Ok(reports)
    }

    /// Stop the visitors; what they saw since the last event.
    pub async fn finish(mut self) -> Result<EventReport> {
        let started = Instant::now();
        let tally = match self.visitors.take() {
            Some(visitors) => visitors.stop().await,
            None => Tally::default(),
        };
        let report = self.report("after", started, tally).await;
        if let Some(volumes) = self.volumes.take() {
            volumes.stop().await?;
        }
        report
    }

    async fn rollout(&mut self) -> Result<EventReport> {
        let sites = self.ns.api::<WebCluster>();
        let addr = self.addr.clone();
        self.observe("rollout", Instant::now(), || async {
            sites
                .patch(
                    "site",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"image": "hostwright.local/site:2"}})),
                )
                .await?;
            eventually(STEP, "the rollout to version 2, every page from it", || async {
                let wc = sites.get("site").await?;
                let replicas = wc.spec.replicas;
                let done = wc.status.as_ref().is_some_and(|s| {
                    s.image.as_deref() == Some("hostwright.local/site:2")
                        && s.updated_replicas == replicas
                        && s.ready_replicas == replicas
                });
                Ok((done && pages_from(&addr, "version 2").await).then_some(()))
            })
            .await
        })
        .await
    }

    /// Node 2 loses power, then comes back once the Service no longer sends
    /// visitors there (the node found NotReady, its pods' endpoints not
    /// ready). Node 1 stays: its kube-proxy carries this machine's traffic
    /// to the Service, as a load balancer's node would.
    async fn node_loss(&mut self) -> Result<EventReport> {
        let client = self.client.clone();
        let ns = self.ns.name.clone();
        self.observe("node_loss", Instant::now(), || async {
            crate::cluster(&["stop-node", "2"]).await?;
            eventually(STEP, "no ready endpoint of the site on the lost node", || async {
                let nodes = ready_endpoint_nodes(&client, &ns, "site").await?;
                Ok((!nodes.is_empty() && nodes.iter().all(|n| !n.ends_with("-2"))).then_some(()))
            })
            .await?;
            crate::cluster(&["start-node", "2"]).await?;
            wait_web_ready(&Api::<WebCluster>::namespaced(client.clone(), &ns), "site", STEP).await?;
            stores_healthy(&client, &ns).await
        })
        .await
    }

    /// Drain the node with the most web pods (its web pods only).
    async fn drain(&mut self) -> Result<EventReport> {
        let client = self.client.clone();
        let ns = self.ns.name.clone();
        let per_node = web_pods_per_node(&client, &ns).await?;
        let node = per_node
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(node, _)| node.clone())
            .context("a node with web pods")?;
        self.observe("drain", Instant::now(), || async {
            let selector = "--pod-selector=app.kubernetes.io/name=webcluster";
            crate::kubectl_async(&["drain", &node, selector, "--ignore-daemonsets", "--timeout=180s"])
                .await?;
            crate::kubectl_async(&["uncordon", &node]).await?;
            wait_web_ready(&Api::<WebCluster>::namespaced(client.clone(), &ns), "site", STEP).await?;
            Ok(())
        })
        .await
    }

    async fn store_primary_loss<K>(
        &mut self,
        event: &'static str,
        name: &str,
        container: &str,
    ) -> Result<EventReport>
    where
        K: hostwright::controllers::members::Replicated,
    {
        let client = self.client.clone();
        let ns = self.ns.name.clone();
        let api: Api<K> = self.ns.api();
        let primary = current_primary(&api.get(name).await?).context("a current primary")?;
        let pods: Api<Pod> = self.ns.api();
        let id =
            container_status(&pods, &primary, container).await?.container_id.context("a container id")?;
        self.observe(event, Instant::now(), || async {
            kill_container(&id)?;
            // Healthy again: failed over, or the member back; then every
            // member again, the crashed one following the new primary.
            tokio::time::sleep(Duration::from_secs(2)).await;
            stores_healthy(&client, &ns).await
        })
        .await
    }

    async fn operator_leader_loss(&mut self) -> Result<EventReport> {
        let mut operators = std::mem::take(&mut self.operators);
        let leader = operators.iter().position(Operator::is_leader).context("an operator leading")?;
        let report = self
            .observe("operator_leader_loss", Instant::now(), || async {
                operators[leader].kill();
                eventually(STEP, "the other operator to lead", || async {
                    Ok(operators.iter().enumerate().any(|(i, o)| i != leader && o.is_leader()).then_some(()))
                })
                .await
            })
            .await;
        self.operators = operators;
        report
    }

    /// Run `event`, let it settle, and report what the visitors saw since
    /// the last report (the event, and the moment before it).
    async fn observe<F, Fut>(&mut self, event: &'static str, started: Instant, act: F) -> Result<EventReport>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        act().await.with_context(|| format!("event {event}"))?;
        tokio::time::sleep(SETTLE).await;
        let tally = self.take();
        self.report(event, started, tally).await
    }

    fn take(&self) -> Tally {
        self.visitors.as_ref().map(Visitors::take).unwrap_or_default()
    }

    /// The event's figures; rows lost are the acknowledged views (of this
    /// event and every earlier one) newly found missing.
    async fn report(&mut self, event: &'static str, started: Instant, tally: Tally) -> Result<EventReport> {
        let views = tally.views.len();
        self.views.extend(&tally.views);
        let creds = Credentials::read(&self.client, &self.ns.name, "db").await?;
        let db = connect_rw(&self.client, &self.ns.name, "db", &creds).await?;
        let missing = lost_views(&db, &self.views).await?;
        let new: Vec<i64> = missing.into_iter().filter(|v| self.lost.insert(*v)).collect();
        Ok(EventReport {
            event,
            requests: tally.requests,
            failed: tally.failed,
            sessions_lost: tally.sessions_lost,
            views,
            rows_lost: new.len(),
            seconds: started.elapsed().as_secs_f64(),
            why: tally.why,
        })
    }
}

/// Whether a few pages through `addr` all come from `version`.
async fn pages_from(addr: &str, version: &str) -> bool {
    for _ in 0..10 {
        match get(addr, "/", None).await {
            Ok(answer) if answer.status == 200 && answer.body.contains(version) => {}
            _ => return false,
        }
    }
    true
}

/// Both stores healthy, every member's container ready.
async fn stores_healthy(client: &Client, ns: &str) -> Result<()> {
    wait_for(
        &Api::<SessionStore>::namespaced(client.clone(), ns),
        "sessions",
        STEP,
        "the SessionStore healthy",
        |s: Option<&SessionStore>| s.is_some_and(all_healthy),
    )
    .await?;
    wait_for(
        &Api::<DatabaseMirror>::namespaced(client.clone(), ns),
        "db",
        STEP,
        "the DatabaseMirror healthy",
        |d: Option<&DatabaseMirror>| d.is_some_and(all_healthy),
    )
    .await?;
    Ok(())
}

/// The nodes of the ready endpoints of Service `service`.
async fn ready_endpoint_nodes(client: &Client, ns: &str, service: &str) -> Result<Vec<String>> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let list =
        slices.list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}"))).await?;
    Ok(list
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .filter_map(|e| e.node_name.clone())
        .collect())
}

/// Running web pods per node.
async fn web_pods_per_node(client: &Client, ns: &str) -> Result<std::collections::BTreeMap<String, usize>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut per_node = std::collections::BTreeMap::new();
    for pod in pods.list(&ListParams::default().labels("app.kubernetes.io/name=webcluster")).await?.items {
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            && pod.metadata.deletion_timestamp.is_none();
        if let Some(node) = pod.spec.and_then(|s| s.node_name).filter(|_| running) {
            *per_node.entry(node).or_insert(0) += 1;
        }
    }
    Ok(per_node)
}

/// The objects of `e2e/demo/site.yaml` but its Namespace, created in `ns`.
async fn create_site(client: &Client, ns: &str) -> Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/demo/site.yaml");
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(document)?;
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default().to_string();
        let params = PostParams::default();
        match kind.as_str() {
            "Namespace" => continue,
            "SessionStore" => {
                let mut object: SessionStore = serde_yaml::from_value(value)?;
                object.metadata.namespace = Some(ns.into());
                Api::<SessionStore>::namespaced(client.clone(), ns).create(&params, &object).await?;
            }
            "DatabaseMirror" => {
                let mut object: DatabaseMirror = serde_yaml::from_value(value)?;
                object.metadata.namespace = Some(ns.into());
                Api::<DatabaseMirror>::namespaced(client.clone(), ns).create(&params, &object).await?;
            }
            "WebCluster" => {
                let mut object: WebCluster = serde_yaml::from_value(value)?;
                object.metadata.namespace = Some(ns.into());
                Api::<WebCluster>::namespaced(client.clone(), ns).create(&params, &object).await?;
            }
            other => bail!("{path}: unexpected kind {other:?}"),
        }
    }
    ensure!(
        !Api::<WebCluster>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await?
            .items
            .is_empty(),
        "{path} holds no WebCluster"
    );
    Ok(())
}

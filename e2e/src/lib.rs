//! Helpers for Hostwright's end-to-end tests.
//!
//! Every test talks to the real API server named by `KUBECONFIG` (the local
//! control plane from `e2e/cluster up`, or any other cluster), works in a
//! throwaway namespace of its own, and waits on conditions, never on sleeps.

use std::future::Future;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{Condition, await_condition};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// Field manager of everything the tests apply.
pub const FIELD_MANAGER: &str = "hostwright-e2e";

/// Label on every namespace the tests create, so leftovers are easy to find.
pub const TEST_LABEL: &str = "hostwright.io/e2e";

/// A client for the cluster in `KUBECONFIG`.
pub async fn client() -> Result<Client> {
    if std::env::var_os("KUBECONFIG").is_none() {
        bail!("KUBECONFIG is not set: run the e2e suite through `make test` or point it at a cluster");
    }
    hostwright::tls::client::install_default_provider();
    Client::try_default().await.context("building a client from KUBECONFIG")
}

/// A client that reports 429/503 answers instead of retrying them, for calls
/// whose refusal is the point (evictions blocked by a PodDisruptionBudget).
pub async fn client_without_retries() -> Result<Client> {
    hostwright::tls::client::install_default_provider();
    let mut config = kube::Config::infer().await.context("reading KUBECONFIG")?;
    config.default_retry = false;
    Client::try_from(config).context("building a client")
}

/// A WebCluster named `name` with `spec` (JSON as a user would write it).
pub fn web_cluster(name: &str, spec: serde_json::Value) -> Result<WebCluster> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "hostwright.io/v1alpha1", "kind": "WebCluster",
        "metadata": {"name": name}, "spec": spec,
    }))?)
}

/// Merge `spec` into WebCluster `name`'s spec.
pub async fn merge_web_spec(api: &Api<WebCluster>, name: &str, spec: serde_json::Value) -> Result<()> {
    api.patch(name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": spec}))).await?;
    Ok(())
}

/// Wait up to `timeout` for `cond` to hold for the named object. A watch
/// that ends (e.g. its resourceVersion expired) is started again.
pub async fn wait_for<K, C>(api: &Api<K>, name: &str, timeout: Duration, what: &str, cond: C) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    C: Condition<K> + Clone,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, await_condition(api.clone(), name, cond.clone())).await {
            Err(_) => bail!("timed out after {timeout:?} waiting for {what} ({name})"),
            Ok(Ok(Some(found))) => return Ok(found),
            Ok(Ok(None)) => bail!("{name} was deleted while waiting for {what}"),
            Ok(Err(err)) => {
                note_watch_restart(&err);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// A watch error while waiting is retried; say so on stderr for the log.
fn note_watch_restart(err: &dyn std::fmt::Display) {
    eprintln!("watch ended ({err}); watching again");
}

/// Wait up to `timeout` until the named object no longer exists.
pub async fn wait_deleted<K>(api: &Api<K>, name: &str, timeout: Duration, what: &str) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    tokio::time::timeout(timeout, await_condition(api.clone(), name, |obj: Option<&K>| obj.is_none()))
        .await
        .map_err(|_| anyhow!("timed out after {timeout:?} waiting for {what} ({name}) to be deleted"))?
        .with_context(|| format!("watching {name} for deletion"))?;
    Ok(())
}

/// Poll an async check until it yields `Some`, for state that is not one
/// object's condition (e.g. a set of pods). Re-checks on a short interval.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(match last_err {
                Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
                None => anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A namespace that lives as long as one test. It is deleted when dropped,
/// also when the test fails half way.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    /// Create `hw-<prefix>-<random>` with extra labels, and wait until pods can
    /// be created in it (its default ServiceAccount exists).
    pub async fn create(client: &Client, prefix: &str, labels: &[(&str, &str)]) -> Result<Self> {
        let suffix: u32 = rand::random::<u32>() % 1_000_000;
        let name = format!("hw-{prefix}-{suffix:06}");
        let mut ns_labels = serde_json::Map::new();
        ns_labels.insert(TEST_LABEL.into(), "true".into());
        for (k, v) in labels {
            ns_labels.insert((*k).into(), (*v).into());
        }
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": { "name": name, "labels": ns_labels },
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        let created = TestNamespace { name: name.clone(), client: client.clone() };
        eventually(Duration::from_secs(60), "the default ServiceAccount", || {
            let sas = sas.clone();
            async move { Ok(sas.get_opt("default").await?.map(|_| ())) }
        })
        .await?;
        Ok(created)
    }

    /// Like [`TestNamespace::create`], for a namespace whose every pod runs on
    /// the real nodes (kubelet, containers), by the admission plugins
    /// PodNodeSelector and PodTolerationRestriction. Fails when the cluster
    /// has fewer than two real nodes.
    pub async fn on_real_nodes(client: &Client, prefix: &str) -> Result<Self> {
        let real = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
            .list(&ListParams::default().labels(testbed::REAL_NODE_SELECTOR))
            .await?;
        if real.items.len() < 2 {
            bail!("needs two real nodes (e2e/cluster up with HOSTWRIGHT_REAL_NODES=2)");
        }
        let ns = Self::create(client, prefix, &[]).await?;
        let annotations = serde_json::json!({"metadata": {"annotations": {
            "scheduler.alpha.kubernetes.io/node-selector": testbed::REAL_NODE_SELECTOR,
            "scheduler.alpha.kubernetes.io/defaultTolerations":
                r#"[{"key":"hostwright.io/real-node","operator":"Exists","effect":"NoSchedule"}]"#,
        }}});
        Api::<Namespace>::all(client.clone())
            .patch(&ns.name, &PatchParams::default(), &Patch::Merge(annotations))
            .await
            .with_context(|| format!("placing namespace {} on the real nodes", ns.name))?;
        Ok(ns)
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Drop cannot await; kubectl is on PATH for every e2e run.
        let _ = Command::new("kubectl")
            .args(["delete", "namespace", &self.name, "--wait=false", "--ignore-not-found"])
            .output();
    }
}

/// Install (server-side apply) Hostwright's CRDs and wait until each is
/// Established. Idempotent: on a cluster where the Helm chart installed the
/// same CRDs this changes nothing.
pub async fn ensure_crds(client: &Client) -> Result<Vec<CustomResourceDefinition>> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut out = Vec::new();
    for crd in hostwright::api::crds() {
        let name = crd.name_any();
        crds.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("applying CRD {name}"))?;
        let established = wait_for(
            &crds,
            &name,
            Duration::from_secs(60),
            "CRD Established",
            |obj: Option<&CustomResourceDefinition>| {
                obj.and_then(|c| c.status.as_ref())
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"))
            },
        )
        .await?;
        out.push(established);
    }
    Ok(out)
}

/// Run kubectl against `KUBECONFIG` and return its output, failing on a non-zero exit.
pub fn kubectl(args: &[&str]) -> Result<String> {
    let out = kubectl_raw(args)?;
    if !out.status.success() {
        bail!("kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run kubectl and return its raw output, whatever the exit code.
pub fn kubectl_raw(args: &[&str]) -> Result<Output> {
    Command::new("kubectl").args(args).output().context("running kubectl (is it on PATH?)")
}

/// Delete an object and ignore "not found".
pub async fn delete_ignoring_missing<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub mod backups;
pub mod database;
pub mod lifecycle;
pub mod monitoring;
pub mod operator;
pub mod partition;
pub mod reachability;
pub mod sessions;
pub mod site;
pub mod site_isolation;
pub mod site_slo;
pub mod testbed;
pub mod trials;
pub mod visitors;
pub mod writer;

/// Write `<dir>/kubeconfig`, authenticating as ServiceAccount
/// `namespace/name` with a token from the TokenRequest API kept in
/// `<dir>/token`; server and CA come from the current `KUBECONFIG`.
///
/// The kubeconfig names the token by file because clients re-read token
/// files: calling this again for the same `dir` refreshes the token of a
/// process that keeps running (a test-bed agent, a demo operator) past the
/// token's hour.
pub async fn write_service_account_kubeconfig(
    client: &Client,
    namespace: &str,
    name: &str,
    dir: &std::path::Path,
) -> Result<std::path::PathBuf> {
    write_kubeconfig(client, namespace, name, dir, None).await
}

/// [`write_service_account_kubeconfig`], naming `server` instead of the
/// current cluster's server: a proxy in front of it (see [`partition`]),
/// reached with the same CA, so it must be served under a name or address
/// the API server's certificate covers (127.0.0.1 on the local control
/// plane).
pub async fn write_service_account_kubeconfig_via(
    client: &Client,
    namespace: &str,
    name: &str,
    dir: &std::path::Path,
    server: &str,
) -> Result<std::path::PathBuf> {
    write_kubeconfig(client, namespace, name, dir, Some(server)).await
}

/// The API server URL of the current `KUBECONFIG` context.
pub fn api_server_url() -> Result<String> {
    current_cluster()?.server.context("cluster without server")
}

/// The cluster of the current `KUBECONFIG` context.
fn current_cluster() -> Result<kube::config::Cluster> {
    let kubeconfig = kube::config::Kubeconfig::read().context("reading KUBECONFIG")?;
    let context_name = kubeconfig.current_context.clone().context("KUBECONFIG has no current context")?;
    let context = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.clone())
        .context("current context not found")?;
    kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.clone())
        .context("current cluster not found")
}

async fn write_kubeconfig(
    client: &Client,
    namespace: &str,
    name: &str,
    dir: &std::path::Path,
    server: Option<&str>,
) -> Result<std::path::PathBuf> {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(3600), ..TokenRequestSpec::default() }),
        ..TokenRequest::default()
    };
    let token = sas
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for ServiceAccount {namespace}/{name}"))?
        .status
        .and_then(|s| s.token)
        .context("TokenRequest answered without a token")?;

    let cluster = current_cluster()?;
    let server = match server {
        Some(server) => server.to_string(),
        None => cluster.server.context("cluster without server")?,
    };
    let mut cluster_entry = serde_json::json!({ "server": server });
    match (&cluster.certificate_authority_data, &cluster.certificate_authority) {
        (Some(data), _) => cluster_entry["certificate-authority-data"] = data.as_str().into(),
        (None, Some(path)) => cluster_entry["certificate-authority"] = path.as_str().into(),
        (None, None) => cluster_entry["insecure-skip-tls-verify"] = true.into(),
    }

    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::fs::canonicalize(dir)?;
    let token_path = dir.join("token");
    // Write then rename: a client re-reading the token never sees half of one.
    let partial = dir.join("token.partial");
    std::fs::write(&partial, token).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, &token_path)?;
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "c", "cluster": cluster_entry }],
        "users": [{ "name": name, "user": { "tokenFile": token_path } }],
        "contexts": [{ "name": "c", "context": { "cluster": "c", "user": name, "namespace": namespace } }],
        "current-context": "c",
    });
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Send `signal` to the process `pid` alone. A pid that would name a
/// process group or every process (0, or one beyond `i32::MAX`, which
/// would turn negative) is refused: the test bed's agents lead process
/// groups that hold their watchdogs.
pub fn signal(pid: u32, signal: libc::c_int) -> std::io::Result<()> {
    let Some(target) = libc::pid_t::try_from(pid).ok().filter(|p| *p > 0) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{pid} names no single process"),
        ));
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(target, signal) } == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Run `e2e/cluster ARGS` (the local cluster's own script) off the runtime's
/// threads, so traffic goes on meanwhile.
pub async fn cluster(args: &[&str]) -> Result<()> {
    run_blocking(concat!(env!("CARGO_MANIFEST_DIR"), "/cluster"), args).await
}

/// What `e2e/cluster env` exports for the local control plane, by name:
/// the test bed's settings, which a test reads here rather than trusting
/// whoever started it to have sourced them (none without a local cluster).
pub fn cluster_env() -> Result<std::collections::BTreeMap<String, String>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/cluster");
    let out = Command::new(script).arg("env").output().context("running e2e/cluster env")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect())
}

/// `kubectl ARGS` off the runtime's threads.
/// `kubectl drain` of `node` for the pods of store `instance` (the
/// `app.kubernetes.io/instance` label), then `kubectl uncordon` whatever
/// happened. Returns kubectl's output and how long the drain took.
pub async fn drain_node(node: &str, instance: &str, timeout: Duration) -> Result<(String, Duration)> {
    let started = std::time::Instant::now();
    let (node, selector, timeout) = (
        node.to_string(),
        format!("--pod-selector=app.kubernetes.io/instance={instance}"),
        format!("--timeout={}s", timeout.as_secs()),
    );
    let drained = tokio::task::spawn_blocking({
        let node = node.clone();
        move || {
            kubectl(&["drain", &node, "--ignore-daemonsets", "--delete-emptydir-data", &selector, &timeout])
        }
    })
    .await?;
    let took = started.elapsed();
    let uncordon = kubectl(&["uncordon", &node]);
    let output = drained.with_context(|| format!("kubectl drain of {node} completes"))?;
    uncordon?;
    Ok((output, took))
}

pub async fn kubectl_async(args: &[&str]) -> Result<()> {
    run_blocking("kubectl", args).await
}

async fn run_blocking(program: &'static str, args: &[&str]) -> Result<()> {
    let args: Vec<String> = args.iter().map(|a| (*a).to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(program).args(&args).output().with_context(|| format!("running {program}"))?;
        if !out.status.success() {
            bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    })
    .await?
}

/// GET `path` from `addr` over HTTP/1.0; the status code and the body.
pub async fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut stream = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
        .await
        .with_context(|| format!("connecting to {addr}: timed out"))?
        .with_context(|| format!("connecting to {addr}"))?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(3), stream.read_to_string(&mut response))
        .await
        .with_context(|| format!("reading from {addr}: timed out"))??;
    let (head, body) = response.split_once("\r\n\r\n").context("an HTTP response")?;
    let status = head.split_whitespace().nth(1).context("a status line")?.parse()?;
    Ok((status, body.to_string()))
}

/// The processes of a container on one of this machine's real nodes, found
/// by the container's id in their cgroup path (`containerID` of a pod's
/// status, `containerd://<id>`), each with its command line.
pub fn container_processes(container_id: &str) -> Result<Vec<(u32, String)>> {
    let id = container_id.rsplit("://").next().unwrap_or(container_id);
    if id.len() < 12 {
        bail!("{container_id:?} is no container id");
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if std::fs::read_to_string(entry.path().join("cgroup")).is_ok_and(|c| c.contains(id)) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            found.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ").trim().to_string()));
        }
    }
    Ok(found)
}

/// SIGKILL every process of a container on a real node: a crash, so nothing
/// in it runs its shutdown path. Returns how many processes were killed.
pub fn kill_container(container_id: &str) -> Result<usize> {
    let processes = container_processes(container_id)?;
    Ok(processes.iter().filter(|(pid, _)| signal(*pid, libc::SIGKILL).is_ok()).count())
}

/// The status of container `container` of pod `name`.
pub async fn container_status(
    pods: &Api<k8s_openapi::api::core::v1::Pod>,
    name: &str,
    container: &str,
) -> Result<k8s_openapi::api::core::v1::ContainerStatus> {
    pods.get(name)
        .await?
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|cs| cs.into_iter().find(|c| c.name == container))
        .with_context(|| format!("the status of container {container} of {name}"))
}

use hostwright::api::WebCluster;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// Wait until a WebCluster reports Ready for its current generation.
pub async fn wait_web_ready(api: &Api<WebCluster>, name: &str, timeout: Duration) -> Result<WebCluster> {
    wait_for(api, name, timeout, "WebCluster Ready", |wc: Option<&WebCluster>| {
        wc.is_some_and(|wc| {
            let generation = wc.metadata.generation;
            wc.status.as_ref().is_some_and(|s| {
                s.observed_generation == generation
                    && s.conditions.iter().any(|c| {
                        c.type_ == "Ready" && c.status == "True" && c.observed_generation == generation
                    })
            })
        })
    })
    .await
}

/// Wait until a WebCluster's condition `type_` has `reason`.
pub async fn wait_web_reason(
    api: &Api<WebCluster>,
    name: &str,
    type_: &'static str,
    reason: &'static str,
    timeout: Duration,
) -> Result<WebCluster> {
    wait_for(api, name, timeout, reason, move |wc: Option<&WebCluster>| {
        wc.and_then(|wc| wc.status.as_ref())
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == type_ && c.reason == reason))
    })
    .await
}

/// Follows a Service's EndpointSlices and records the fewest ready endpoints
/// seen while it runs, as a client of the Service would experience them.
pub struct EndpointWatch {
    min_ready: Arc<AtomicI64>,
    current: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl EndpointWatch {
    /// Start watching `service` in `namespace`; the minimum counts from now.
    pub async fn start(client: &Client, namespace: &str, service: &str) -> Result<Self> {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
        let selector = format!("kubernetes.io/service-name={service}");
        let min_ready = Arc::new(AtomicI64::new(i64::MAX));
        let current = Arc::new(AtomicI64::new(-1));
        let stop = Arc::new(AtomicBool::new(false));
        let (min, cur, halt) = (min_ready.clone(), current.clone(), stop.clone());
        let task = tokio::spawn(async move {
            // A (re-)list arrives as Init, InitApply..., InitDone: count it only
            // once complete, so a watch restart never looks like an outage.
            let mut slices: std::collections::BTreeMap<String, i64> = Default::default();
            let mut listing: Option<std::collections::BTreeMap<String, i64>> = None;
            let mut stream =
                watcher(api, watcher::Config::default().labels(&selector)).default_backoff().boxed();
            while let Some(event) = stream.next().await {
                if halt.load(Ordering::Relaxed) {
                    break;
                }
                match event? {
                    watcher::Event::Init => {
                        listing = Some(Default::default());
                        continue;
                    }
                    watcher::Event::InitApply(s) => {
                        if let Some(l) = listing.as_mut() {
                            l.insert(s.metadata.name.clone().unwrap_or_default(), ready_endpoints(&s));
                        }
                        continue;
                    }
                    watcher::Event::InitDone => slices = listing.take().unwrap_or_default(),
                    watcher::Event::Apply(s) => {
                        slices.insert(s.metadata.name.clone().unwrap_or_default(), ready_endpoints(&s));
                    }
                    watcher::Event::Delete(s) => {
                        slices.remove(&s.metadata.name.clone().unwrap_or_default());
                    }
                }
                let total: i64 = slices.values().sum();
                cur.store(total, Ordering::Relaxed);
                min.fetch_min(total, Ordering::Relaxed);
            }
            Ok(())
        });
        Ok(Self { min_ready, current, stop, task })
    }

    /// Ready endpoints right now (-1 before the first event).
    pub fn current(&self) -> i64 {
        self.current.load(Ordering::Relaxed)
    }

    /// Stop and return the fewest ready endpoints observed.
    pub async fn finish(self) -> Result<i64> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
        if let Ok(Err(e)) = self.task.await.map_err(|_| ()) {
            return Err(e);
        }
        Ok(self.min_ready.load(Ordering::Relaxed))
    }
}

fn ready_endpoints(slice: &EndpointSlice) -> i64 {
    slice
        .endpoints
        .iter()
        .flatten()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
        .count() as i64
}

/// A fake node made to fail: KWOK stops renewing its lease (as if the
/// machine lost power) until the guard is dropped or `restore` is called.
pub struct FailedNode {
    pub name: String,
}

impl FailedNode {
    /// Fail a KWOK-managed node. Errors if the node is not a KWOK node: a
    /// real node cannot be failed from a test.
    pub fn fail(name: &str) -> Result<Self> {
        let labels = kubectl(&["get", "node", name, "-o", "jsonpath={.metadata.labels.type}"])?;
        if labels.trim() != "kwok" {
            bail!(
                "node {name} is not managed by KWOK (label type=kwok); node failures need the local control plane"
            );
        }
        kubectl(&["label", "node", name, "type-"])?;
        Ok(Self { name: name.into() })
    }

    pub fn restore(self) {}
}

impl Drop for FailedNode {
    fn drop(&mut self) {
        let _ = kubectl(&["label", "node", &self.name, "type=kwok", "--overwrite"]);
        // A returning kubelet confirms the deletion of pods evicted while it was
        // away; KWOK does not revisit them, so do it on its behalf.
        let field = format!("spec.nodeName={}", self.name);
        let pods = kubectl(&[
            "get",
            "pods",
            "-A",
            "--field-selector",
            &field,
            "-o",
            "jsonpath={range .items[?(@.metadata.deletionTimestamp)]}{.metadata.namespace} {.metadata.name}{\"\\n\"}{end}",
        ]);
        for line in pods.unwrap_or_default().lines() {
            if let Some((ns, name)) = line.split_once(' ') {
                let _ = kubectl(&[
                    "delete",
                    "pod",
                    "-n",
                    ns,
                    name,
                    "--grace-period=0",
                    "--force",
                    "--wait=false",
                ]);
            }
        }
    }
}

/// Uncordons a node when dropped.
pub struct Cordoned(pub String);

impl Drop for Cordoned {
    fn drop(&mut self) {
        let _ = kubectl(&["uncordon", &self.0]);
    }
}

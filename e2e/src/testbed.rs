//! What a real cluster has and the local control plane lacks, so that
//! DatabaseMirror and SessionStore member pods become real PostgreSQL and
//! Redis servers in tests and in `make demo`:
//!
//! - a **provisioner** for the default StorageClass `hostwright-local`
//!   (`e2e/cluster up` creates it): each claim gets a host directory under
//!   `<root>/volumes/`, and kube-controller-manager binds claim and volume as
//!   it would on any cluster;
//! - a **pod runner** playing the kubelet for member pods (KWOK pods run
//!   no containers): it lays out the pod's Secret, ConfigMap and socket
//!   directory under `<root>/pods/<ns>/<pod>/`, resolves the data volume to
//!   its host directory (or an emptyDir of the pod's), and runs `hostwright
//!   agent run` with the pod's own arguments and ServiceAccount identity. The
//!   agent supervises PostgreSQL or Redis as in the pod. Each pod's agent
//!   reaches the API server through a proxy of its own ([`partition`]).
//!
//! For data-safety trials it also plays an agent that stops making
//! progress while its server keeps running: a frozen process
//! ([`Testbed::stall_agent`]) or one cut off the API server
//! ([`Testbed::cut_api`]).
//!
//! The API server refuses loopback addresses in EndpointSlices, so pods keep
//! their KWOK addresses 10.244.c.d and the server "behind" one listens on its
//! loopback twin 127.244.c.d (Linux routes all of 127/8 to `lo`); [`twin`]
//! maps one to the other.
//!
//! Tests start a [`Testbed`] for their namespace; `hostwright-testbed` runs
//! one for all namespaces. The two must not serve the same namespace, so the
//! all-namespaces one leaves test namespaces (label `hostwright.io/e2e`)
//! alone.
//!
//! [`partition`]: crate::partition

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use hostwright::contract::keys;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::partition::{ApiProxy, loopback_upstream};
use crate::{TEST_LABEL, api_server_url, write_service_account_kubeconfig_via};

/// The default StorageClass of the local control plane.
pub const STORAGE_CLASS: &str = "hostwright-local";
/// Provisioner named by [`STORAGE_CLASS`]; this module plays it.
pub const PROVISIONER: &str = "hostwright.io/e2e-local";
/// Annotation by which kube-controller-manager leaves a volume's deletion to
/// its (external) provisioner.
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// Held locked in the root while a test bed runs: the root is one test
/// bed's, and the volumes of a root nobody holds are free to reclaim.
const LOCK_FILE: &str = ".testbed.lock";
/// Pods the runner plays the kubelet for.
const POD_SELECTOR: &str = "app.kubernetes.io/name in (databasemirror,sessionstore)";
/// The label `e2e/cluster` gives its real nodes (kubelet, containers).
pub const REAL_NODE_SELECTOR: &str = "hostwright.io/node=real";
/// Between an agent's exit and its restart, like a kubelet's first back-off.
const RESTART_DELAY: Duration = Duration::from_secs(1);
/// The agent stops PostgreSQL with a fast shutdown (up to 30 s) on SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// ServiceAccount tokens last an hour; running agents get a fresh one well before.
const TOKEN_REFRESH: Duration = Duration::from_secs(20 * 60);
/// How soon a changed Secret or ConfigMap reaches a running pod's files.
const FILE_SYNC: Duration = Duration::from_secs(5);
/// How often the runner and the provisioner look again without an event
/// (a failed step is retried on the next look).
const RESYNC: Duration = Duration::from_millis(500);

/// The loopback twin 127.x.c.d of a pod address 10.x.c.d, where the
/// process "behind" the pod listens; `None` for any other address. `x` is
/// the pod network's second octet, 240 to 254 (`HOSTWRIGHT_POD_NET` of
/// `e2e/cluster`: 244 for the test cluster, 245 for the bench's), so the
/// servers of two clusters on one machine never share an address.
pub fn twin(pod_ip: &str) -> Option<String> {
    let ip: Ipv4Addr = pod_ip.parse().ok()?;
    match ip.octets() {
        [10, x @ 240..=254, c, d] => Some(Ipv4Addr::new(127, x, c, d).to_string()),
        _ => None,
    }
}

/// Where this machine reaches the ready endpoints of `service`, from its
/// EndpointSlices: where a client of the Service would connect right now.
/// A test-bed pod is reached at its loopback twin, a pod on a real node at
/// its own address (routed to the nodes' bridge).
pub async fn ready_endpoints(client: &Client, namespace: &str, service: &str) -> Result<Vec<String>> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    let list = slices
        .list(&params)
        .await
        .with_context(|| format!("listing EndpointSlices of {namespace}/{service}"))?;
    let mut addresses = BTreeSet::new();
    let ready = list
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        // The API defines an unknown readiness as ready.
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true));
    for endpoint in ready {
        let real = on_real_node(client, endpoint.node_name.as_deref()).await?;
        for address in &endpoint.addresses {
            addresses.extend(if real { Some(address.clone()) } else { twin(address) });
        }
    }
    Ok(addresses.into_iter().collect())
}

/// Where this machine reaches a pod's server: see [`ready_endpoints`].
pub async fn pod_address(client: &Client, pod: &Pod) -> Result<String> {
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).context("the pod has no IP")?;
    if on_real_node(client, pod.spec.as_ref().and_then(|s| s.node_name.as_deref())).await? {
        return Ok(ip);
    }
    twin(&ip).with_context(|| format!("the pod's IP {ip} has no loopback twin"))
}

/// Whether `node` is one of `e2e/cluster`'s real nodes (remembered: a
/// node's labels do not change here).
async fn on_real_node(client: &Client, node: Option<&str>) -> Result<bool> {
    static KNOWN: Mutex<Option<HashMap<String, bool>>> = Mutex::new(None);
    let Some(node) = node else { return Ok(false) };
    if let Some(real) = lock(&KNOWN).as_ref().and_then(|k| k.get(node).copied()) {
        return Ok(real);
    }
    let found = Api::<Node>::all(client.clone())
        .get_opt(node)
        .await
        .with_context(|| format!("reading node {node}"))?;
    let (key, value) = REAL_NODE_SELECTOR.split_once('=').unwrap_or_default();
    let real = found.is_some_and(|n| n.labels().get(key).is_some_and(|v| v == value));
    lock(&KNOWN).get_or_insert_default().insert(node.to_string(), real);
    Ok(real)
}

/// Namespace and name of a pod.
type Key = (String, String);

/// The provisioner and pod runner of one scope (a namespace, or all).
/// Stop it with [`Testbed::stop`]; dropping it stops the agents too, best
/// effort, blocking until they are gone.
pub struct Testbed {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

struct Shared {
    /// Locked for the test bed's lifetime (see [`LOCK_FILE`]).
    _lock: std::fs::File,
    client: Client,
    namespace: Option<String>,
    root: PathBuf,
    binary: PathBuf,
    /// The API server the agents' proxies forward to (loopback).
    api_server: SocketAddr,
    members: Mutex<HashMap<Key, Member>>,
    /// Each pod's API proxy, by pod uid: kept across its agent's restarts
    /// (and a retried supervisor), with its cut state; a pod's replacement
    /// gets a new one.
    proxies: Mutex<HashMap<Key, PodProxy>>,
    /// Pods taken down by [`Testbed::kill_member`], by uid: a replacement
    /// pod (another uid) runs, like a new pod on a healthy machine.
    down: Mutex<HashMap<Key, String>>,
    /// All-namespaces scope: whether a namespace is a test's (left alone).
    test_namespaces: Mutex<HashMap<String, bool>>,
    stopping: AtomicBool,
}

/// One pod the runner has taken on, and its supervising task.
struct Member {
    uid: String,
    stop: watch::Sender<bool>,
    /// The running agent.
    agent: Option<u32>,
    /// The pod's server, once its data directory is resolved.
    server: Option<ServerFiles>,
    task: Option<JoinHandle<()>>,
}

/// The API proxy of the pod with `uid`.
struct PodProxy {
    uid: String,
    proxy: ApiProxy,
}

/// Where one pod's files live under the root.
struct PodPaths {
    dir: PathBuf,
    log: PathBuf,
}

impl PodPaths {
    fn new(root: &Path, (namespace, name): &Key) -> Self {
        let pods = root.join("pods").join(namespace);
        PodPaths { dir: pods.join(name), log: pods.join(format!("{name}.log")) }
    }

    fn credentials(&self) -> PathBuf {
        self.dir.join("credentials")
    }

    fn tls(&self) -> PathBuf {
        self.dir.join("tls")
    }

    fn config(&self) -> PathBuf {
        self.dir.join("config")
    }

    fn run(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// A line of the test bed's own in the pod's log, beside the agent's.
    fn note(&self, message: &str) {
        use std::io::Write;
        let line = format!("{} testbed: {message}\n", Timestamp::now());
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if written.is_err() {
            eprint!("{line}");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not stop the clean-up of processes.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Testbed {
    /// Start the provisioner and the pod runner for `namespace` (or all
    /// namespaces but the tests'), keeping volumes and pod files under `root`.
    ///
    /// `root` must be reachable by the `postgres` user, which the servers run
    /// as (`/tmp/...` is; a directory under a 0700 home is not).
    pub async fn start(client: Client, namespace: Option<String>, root: PathBuf) -> Result<Testbed> {
        let binary = std::env::var_os("HOSTWRIGHT_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/hostwright"));
        // `hostwright agent` runs the agent binary built beside it.
        for needed in [binary.clone(), binary.with_file_name("hostwright-agent")] {
            if !needed.exists() {
                bail!("{} does not exist: `cargo build --package hostwright --bins` first", needed.display());
            }
        }
        let postgres = user_ids("postgres")?;
        let server = api_server_url()?;
        let api_server = loopback_upstream(&server).with_context(|| {
            format!("the test bed's agents cannot reach API server {server} through a proxy")
        })?;
        std::fs::create_dir_all(root.join("volumes"))
            .and_then(|()| std::fs::create_dir_all(root.join("pods")))
            .with_context(|| format!("creating {}", root.display()))?;
        // Volume paths go into PersistentVolumes: absolute, no symlinks.
        let root = std::fs::canonicalize(&root)?;
        reachable_by(&root, postgres)?;
        let lock_path = root.join(LOCK_FILE);
        let lock =
            std::fs::File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => bail!("another test bed runs on {}", root.display()),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", lock_path.display()));
            }
        }
        let shared = Arc::new(Shared {
            _lock: lock,
            client,
            namespace,
            root,
            binary,
            api_server,
            members: Mutex::default(),
            proxies: Mutex::default(),
            down: Mutex::default(),
            test_namespaces: Mutex::default(),
            stopping: AtomicBool::new(false),
        });
        let provisioner = tokio::spawn(report_end("provisioner", provision(shared.clone())));
        let runner = tokio::spawn(report_end("pod runner", run_pods(shared.clone())));
        Ok(Testbed { shared, tasks: vec![provisioner, runner] })
    }

    /// Where volumes and pod files are kept.
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// SIGKILL the pod's server (PostgreSQL's postmaster, redis-server), as
    /// a crash would; the agent lives on and notices. Returns once it is dead.
    pub async fn kill_server(&self, pod: &str) -> Result<()> {
        let key = self.key(pod)?;
        let server = self.shared.member(&key, |m| m.server.clone()).flatten();
        let server = server.with_context(|| format!("pod {pod} has no data directory yet"))?;
        let pid = server.pid().with_context(|| format!("pod {pod} has no running server"))?;
        signal(pid, libc::SIGKILL);
        wait_gone(pid, Duration::from_secs(10)).await
    }

    /// SIGKILL the pod's agent and server, as a machine that lost power, and
    /// keep them down (the member's Lease then expires) until [`revive`].
    /// Returns once both are dead.
    ///
    /// [`revive`]: Testbed::revive
    pub async fn kill_member(&self, pod: &str) -> Result<()> {
        let key = self.key(pod)?;
        let (uid, agent, files) = self
            .shared
            .member(&key, |m| (m.uid.clone(), m.agent, m.server.clone()))
            .with_context(|| format!("pod {pod} is not running"))?;
        lock(&self.shared.down).insert(key.clone(), uid);
        // The server's pid first: once the agent is gone it is an orphan.
        let server = files.as_ref().and_then(ServerFiles::pid);
        if let Some(pid) = agent {
            signal(pid, libc::SIGKILL);
        }
        if let Some(pid) = server {
            signal(pid, libc::SIGKILL);
            wait_gone(pid, Duration::from_secs(10)).await?;
        }
        crate::eventually(Duration::from_secs(10), "the killed agent to be reaped", || async {
            Ok(self.shared.member(&key, |m| m.agent).flatten().is_none().then_some(()))
        })
        .await
    }

    /// Let a pod taken down by [`Testbed::kill_member`] run again.
    pub fn revive(&self, pod: &str) -> Result<()> {
        let key = self.key(pod)?;
        lock(&self.shared.down).remove(&key);
        Ok(())
    }

    /// The pid of the pod's running agent.
    pub fn agent_pid(&self, pod: &str) -> Option<u32> {
        let key = self.key(pod).ok()?;
        self.shared.member(&key, |m| m.agent).flatten()
    }

    /// The pid of the pod's running server (PostgreSQL's postmaster, redis-server).
    pub fn server_pid(&self, pod: &str) -> Option<u32> {
        let key = self.key(pod).ok()?;
        self.shared.member(&key, |m| m.server.clone()).flatten()?.pid()
    }

    /// SIGSTOP the pod's agent process alone, as a frozen or starved
    /// process: its watchdog (a child in its process group) and its server
    /// (in a group of its own) run on, and clients keep their connections.
    /// Returns once the kernel shows the agent stopped. The supervisor does
    /// not take a stopped agent for an exited one; an agent started later
    /// for the pod runs.
    pub async fn stall_agent(&self, pod: &str) -> Result<()> {
        let pid = self.agent_pid(pod).with_context(|| format!("pod {pod} has no running agent"))?;
        crate::signal(pid, libc::SIGSTOP)
            .with_context(|| format!("stopping the agent of {pod} (pid {pid})"))?;
        self.note(pod, &format!("agent stalled (SIGSTOP to pid {pid})"));
        crate::eventually(Duration::from_secs(10), &format!("agent {pid} to be stopped"), || async {
            Ok(frozen(pid).then_some(()))
        })
        .await
    }

    /// SIGCONT the pod's agent after [`Testbed::stall_agent`]; returns once
    /// it runs again.
    pub async fn resume_agent(&self, pod: &str) -> Result<()> {
        let pid = self.agent_pid(pod).with_context(|| format!("pod {pod} has no running agent"))?;
        crate::signal(pid, libc::SIGCONT)
            .with_context(|| format!("resuming the agent of {pod} (pid {pid})"))?;
        self.note(pod, &format!("agent resumed (SIGCONT to pid {pid})"));
        crate::eventually(Duration::from_secs(10), &format!("agent {pid} to run"), || async {
            Ok((process_state(pid) != Some('T')).then_some(()))
        })
        .await
    }

    /// SIGSTOP the pod's agent and its watchdog (its process group) while
    /// the server runs on: a fault past what the design covers (the
    /// watchdog is there so that this cannot leave a live primary), to show
    /// what the engine alone still guarantees. Undone by
    /// [`Testbed::resume_agent_and_watchdog`].
    pub async fn stall_agent_and_watchdog(&self, pod: &str) -> Result<()> {
        let pid = self.agent_pid(pod).with_context(|| format!("pod {pod} has no running agent"))?;
        signal_group(pid, libc::SIGSTOP).with_context(|| format!("stopping the agent group of {pod}"))?;
        self.note(pod, &format!("agent and watchdog stalled (SIGSTOP to process group {pid})"));
        crate::eventually(Duration::from_secs(10), &format!("agent {pid} to be stopped"), || async {
            Ok(frozen(pid).then_some(()))
        })
        .await
    }

    /// SIGCONT what [`Testbed::stall_agent_and_watchdog`] stopped.
    pub async fn resume_agent_and_watchdog(&self, pod: &str) -> Result<()> {
        let pid = self.agent_pid(pod).with_context(|| format!("pod {pod} has no running agent"))?;
        signal_group(pid, libc::SIGCONT).with_context(|| format!("resuming the agent group of {pod}"))?;
        self.note(pod, &format!("agent and watchdog resumed (SIGCONT to process group {pid})"));
        crate::eventually(Duration::from_secs(10), &format!("agent {pid} to run"), || async {
            Ok((process_state(pid) != Some('T')).then_some(()))
        })
        .await
    }

    /// SIGSTOP the pod's server (its whole process group): a server that
    /// hangs while its agent runs, e.g. in the middle of a promotion.
    pub fn stall_server(&self, pod: &str) -> Result<()> {
        let pid = self.server_pid(pod).with_context(|| format!("pod {pod} has no running server"))?;
        signal_group(pid, libc::SIGSTOP).with_context(|| format!("stopping the server of {pod}"))?;
        self.note(pod, &format!("server stalled (SIGSTOP to process group {pid})"));
        Ok(())
    }

    /// SIGCONT what [`Testbed::stall_server`] stopped.
    pub fn resume_server(&self, pod: &str) -> Result<()> {
        let pid = self.server_pid(pod).with_context(|| format!("pod {pod} has no running server"))?;
        signal_group(pid, libc::SIGCONT).with_context(|| format!("resuming the server of {pod}"))?;
        self.note(pod, &format!("server resumed (SIGCONT to process group {pid})"));
        Ok(())
    }

    /// Partition the pod's agent from the API server: its open connections
    /// hang and new ones get no answer, until [`Testbed::restore_api`]. The
    /// cut outlasts restarts of the agent; nothing else goes through it.
    pub fn cut_api(&self, pod: &str) -> Result<()> {
        self.with_proxy(pod, ApiProxy::cut)?;
        self.note(pod, "API cut");
        Ok(())
    }

    /// End the pod's partition: its hung connections are dropped, so the
    /// agent connects anew, and traffic flows.
    pub fn restore_api(&self, pod: &str) -> Result<()> {
        self.with_proxy(pod, ApiProxy::restore)?;
        self.note(pod, "API restored");
        Ok(())
    }

    fn with_proxy(&self, pod: &str, act: impl FnOnce(&ApiProxy)) -> Result<()> {
        let key = self.key(pod)?;
        let proxies = lock(&self.shared.proxies);
        let proxy = proxies.get(&key).with_context(|| format!("pod {pod} has no API proxy yet"))?;
        act(&proxy.proxy);
        Ok(())
    }

    /// A line in the pod's log, so a trial's faults show among the agent's lines.
    fn note(&self, pod: &str, message: &str) {
        if let Ok(key) = self.key(pod) {
            PodPaths::new(&self.shared.root, &key).note(message);
        }
    }

    /// The pod's private run directory (its servers' unix sockets).
    pub fn run_dir(&self, pod: &str) -> Option<PathBuf> {
        self.key(pod).ok().map(|key| PodPaths::new(&self.shared.root, &key).run())
    }

    /// A superuser session over a PostgreSQL member's unix socket, inside
    /// its "pod" (where the agent administers it): the network offers none.
    pub async fn superuser(&self, member: &str) -> Result<tokio_postgres::Client> {
        let socket = self.run_dir(member).context("the member's run directory")?;
        let mut config = tokio_postgres::Config::new();
        config.host_path(socket).port(5432).user("postgres").dbname("postgres");
        let (client, connection) =
            config.connect(tokio_postgres::NoTls).await.context("the member's unix socket")?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Close the current WAL segment on `member` (so it is archived now);
    /// its name.
    pub async fn switch_wal(&self, member: &str) -> Result<String> {
        let row =
            self.superuser(member).await?.query_one("SELECT pg_walfile_name(pg_switch_wal())", &[]).await?;
        Ok(row.get(0))
    }

    /// The pod's log so far: the agent's output and the test bed's notes.
    pub fn log(&self, pod: &str) -> String {
        self.key(pod)
            .and_then(|key| {
                let path = PodPaths::new(&self.shared.root, &key).log;
                std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
            })
            .unwrap_or_else(|e| format!("(no log: {e:#})"))
    }

    /// SIGTERM every agent (each stops its server cleanly), wait for them,
    /// and stop the provisioner and the runner.
    pub async fn stop(mut self) -> Result<()> {
        self.shared.stopping.store(true, Ordering::SeqCst);
        for task in self.tasks.drain(..) {
            task.abort();
        }
        let supervisors: Vec<JoinHandle<()>> = lock(&self.shared.members)
            .values_mut()
            .filter_map(|m| {
                let _ = m.stop.send(true);
                m.task.take()
            })
            .collect();
        // Every one is awaited, even after one failed: no agent is left running.
        let mut outcome = Ok(());
        for supervisor in supervisors {
            if let Err(err) = supervisor.await {
                outcome = Err(anyhow!(err).context("a pod supervisor failed"));
            }
        }
        // Only now: stopping agents release their Leases through them.
        lock(&self.shared.proxies).clear();
        outcome
    }

    /// `namespace/name`, or a name in the test bed's namespace (or, for all
    /// namespaces, the one running pod of that name).
    fn key(&self, pod: &str) -> Result<Key> {
        if let Some((namespace, name)) = pod.split_once('/') {
            return Ok((namespace.into(), name.into()));
        }
        if let Some(namespace) = &self.shared.namespace {
            return Ok((namespace.clone(), pod.into()));
        }
        let members = lock(&self.shared.members);
        let mut found = members.keys().filter(|(_, name)| name == pod);
        match (found.next(), found.next()) {
            (Some(key), None) => Ok(key.clone()),
            (Some(_), Some(_)) => bail!("pod {pod} runs in more than one namespace: say namespace/name"),
            (None, _) => bail!("no pod {pod} runs: say namespace/name"),
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if self.tasks.is_empty() {
            return; // stopped
        }
        self.shared.stopping.store(true, Ordering::SeqCst);
        for task in &self.tasks {
            task.abort();
        }
        // Drop cannot await the supervisors: signal the agents directly and
        // wait for them here, so no server outlives the test.
        let mut running = Vec::new();
        for member in lock(&self.shared.members).values() {
            let _ = member.stop.send(true);
            if let Some(pid) = member.agent {
                signal(pid, libc::SIGTERM);
                // A stalled agent (and its watchdog) would only see the
                // SIGTERM once resumed.
                signal(pid, libc::SIGCONT);
                let _ = signal_group(pid, libc::SIGCONT);
                running.push((pid, member.server.clone()));
            }
        }
        let deadline = std::time::Instant::now() + STOP_TIMEOUT;
        for (pid, files) in running {
            while alive(pid) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if alive(pid) {
                signal(pid, libc::SIGKILL);
            }
            if let Some(server) = files.as_ref().and_then(ServerFiles::pid) {
                signal(server, libc::SIGKILL);
            }
        }
        lock(&self.shared.proxies).clear();
    }
}

impl Shared {
    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        match &self.namespace {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::all(self.client.clone()),
        }
    }

    fn member<T>(&self, key: &Key, read: impl FnOnce(&Member) -> T) -> Option<T> {
        lock(&self.members).get(key).map(read)
    }

    fn update(&self, key: &Key, uid: &str, write: impl FnOnce(&mut Member)) {
        if let Some(member) = lock(&self.members).get_mut(key).filter(|m| m.uid == uid) {
            write(member);
        }
    }

    /// The address of the API proxy of pod `uid`, started on first use.
    async fn proxy(&self, key: &Key, uid: &str) -> Result<SocketAddr> {
        if let Some(p) = lock(&self.proxies).get(key).filter(|p| p.uid == uid) {
            return Ok(p.proxy.address());
        }
        // One supervisor per pod name at a time: nobody starts one meanwhile.
        let proxy = ApiProxy::start(self.api_server).await?;
        let address = proxy.address();
        lock(&self.proxies).insert(key.clone(), PodProxy { uid: uid.into(), proxy });
        Ok(address)
    }

    fn is_down(&self, key: &Key, uid: &str) -> bool {
        lock(&self.down).get(key).is_some_and(|d| d == uid)
    }

    /// Whether objects in `namespace` are ours to serve.
    async fn serves(&self, namespace: &str) -> bool {
        if let Some(ours) = &self.namespace {
            return ours == namespace;
        }
        if let Some(test) = lock(&self.test_namespaces).get(namespace) {
            return !test;
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        match namespaces.get_opt(namespace).await {
            Ok(Some(ns)) => {
                let test = ns.labels().contains_key(TEST_LABEL);
                lock(&self.test_namespaces).insert(namespace.into(), test);
                !test
            }
            // Not yet known: decide on a later look.
            _ => false,
        }
    }
}

/// Log why a background task ended (it only ends on an error or abort).
async fn report_end(what: &'static str, task: impl Future<Output = Result<()>>) {
    if let Err(err) = task.await {
        eprintln!("{} testbed: the {what} stopped: {err:#}", Timestamp::now());
    }
}

/// A reflector for `api`, and a stream that yields whenever it changed. The
/// store is complete once `ready` (after the first list).
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (Store<K>, impl futures::Stream<Item = Result<(), watcher::Error>> + Send)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let events = reflector::reflector(writer, watcher(api, config)).default_backoff().map(|e| e.map(drop));
    (store, events)
}

/// The store holds a complete list (it fills as its stream is polled).
fn ready<K>(store: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    use futures::FutureExt;
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}

// ---------------------------------------------------------------------------
// Provisioner

/// Provision claims of [`STORAGE_CLASS`]; reclaim released volumes.
async fn provision(shared: Arc<Shared>) -> Result<()> {
    let (claims, claim_events) = reflect(shared.api::<PersistentVolumeClaim>(), watcher::Config::default());
    let volumes_api: Api<PersistentVolume> = Api::all(shared.client.clone());
    let (volumes, volume_events) = reflect(volumes_api.clone(), watcher::Config::default());
    let mut events = futures::stream::select(claim_events.boxed(), volume_events.boxed());
    let mut tick = tokio::time::interval(RESYNC);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(())) => {}
                Some(Err(err)) => eprintln!("{} testbed: watching volumes: {err}", Timestamp::now()),
                None => bail!("the volume watches ended"),
            },
            _ = tick.tick() => {}
        }
        if !ready(&claims) || !ready(&volumes) {
            continue;
        }
        for claim in claims.state() {
            if let Err(err) = provision_one(&shared, &claim, &volumes, &volumes_api).await {
                eprintln!("{} testbed: provisioning {}: {err:#}", Timestamp::now(), claim.name_any());
            }
            if let Err(err) = expand_one(&shared, &claim, &volumes, &volumes_api).await {
                eprintln!("{} testbed: expanding {}: {err:#}", Timestamp::now(), claim.name_any());
            }
        }
        for volume in volumes.state() {
            if let Err(err) = reclaim(&shared, &volume, &volumes_api).await {
                eprintln!("{} testbed: reclaiming {}: {err:#}", Timestamp::now(), volume.name_any());
            }
        }
    }
}

/// Create the volume of an unbound claim, pre-bound to it by `claimRef`;
/// kube-controller-manager's PV controller completes the binding.
async fn provision_one(
    shared: &Shared,
    claim: &PersistentVolumeClaim,
    volumes: &Store<PersistentVolume>,
    api: &Api<PersistentVolume>,
) -> Result<()> {
    let spec = claim.spec.clone().unwrap_or_default();
    let pending = claim.status.as_ref().and_then(|s| s.phase.as_deref()).is_none_or(|p| p == "Pending");
    if spec.storage_class_name.as_deref() != Some(STORAGE_CLASS)
        || !pending
        || spec.volume_name.is_some()
        || claim.metadata.deletion_timestamp.is_some()
    {
        return Ok(());
    }
    let (namespace, name) = (claim.namespace().unwrap_or_default(), claim.name_any());
    let uid = claim.uid().context("claim without uid")?;
    let volume_name = format!("pvc-{uid}");
    if volumes.get(&ObjectRef::new(&volume_name)).is_some() || !shared.serves(&namespace).await {
        return Ok(());
    }
    if spec.volume_mode.as_deref() == Some("Block") {
        bail!("block volumes are not supported, only Filesystem");
    }
    let size = spec
        .resources
        .and_then(|r| r.requests)
        .and_then(|r| r.get("storage").cloned())
        .context("the claim requests no storage")?;
    let dir = shared.root.join("volumes").join(format!("{namespace}-{name}-{}", &uid[..uid.len().min(8)]));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Every node is this machine, so the directory serves a pod wherever it
    // runs. For a pod on a KWOK node the pod runner hands it to the
    // server's user (fsGroup); a real kubelet mounts a hostPath as it is,
    // so until then anyone may create in it (the servers keep their data in
    // a 0700 directory of their own, or files they own).
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777))?;
    let volume: PersistentVolume = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": volume_name,
            "annotations": { PROVISIONED_BY: PROVISIONER },
        },
        "spec": {
            "capacity": { "storage": size },
            "accessModes": spec.access_modes.unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
            "volumeMode": "Filesystem",
            "hostPath": { "path": dir, "type": "Directory" },
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": namespace,
                "name": name,
                "uid": uid,
            },
            "storageClassName": STORAGE_CLASS,
            "persistentVolumeReclaimPolicy": "Delete",
        },
    }))?;
    match api.create(&PostParams::default(), &volume).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            // Made meanwhile by another test bed: the empty directory is not used.
            let existing = api.get(&volume_name).await?;
            if host_path(&existing).as_deref() != Some(dir.as_path()) {
                let _ = std::fs::remove_dir(&dir);
            }
            Ok(())
        }
        Err(e) => Err(e).context("creating the PersistentVolume"),
    }
}

/// Grow the volume of a bound claim whose request was raised, as a CSI
/// resizer and kubelet would: the volume's capacity, then the claim's
/// (a hostPath directory has no size of its own to change).
async fn expand_one(
    shared: &Shared,
    claim: &PersistentVolumeClaim,
    volumes: &Store<PersistentVolume>,
    api: &Api<PersistentVolume>,
) -> Result<()> {
    let storage =
        |m: Option<&std::collections::BTreeMap<String, Quantity>>| m.and_then(|m| m.get("storage")).cloned();
    let spec = claim.spec.clone().unwrap_or_default();
    let (Some(volume_name), Some(wanted)) =
        (spec.volume_name.clone(), storage(spec.resources.as_ref().and_then(|r| r.requests.as_ref())))
    else {
        return Ok(());
    };
    let Some(volume) = volumes.get(&ObjectRef::new(&volume_name)) else { return Ok(()) };
    let namespace = claim.namespace().unwrap_or_default();
    let have = storage(volume.spec.as_ref().and_then(|s| s.capacity.as_ref()));
    let claimed = storage(claim.status.as_ref().and_then(|s| s.capacity.as_ref()));
    let grown = have.as_ref() == Some(&wanted) && claimed.as_ref() == Some(&wanted);
    if grown || spec.storage_class_name.as_deref() != Some(STORAGE_CLASS) || !shared.serves(&namespace).await
    {
        return Ok(());
    }
    if have.as_ref() != Some(&wanted) {
        let patch = serde_json::json!({ "spec": { "capacity": { "storage": wanted } } });
        api.patch(&volume_name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    }
    if claimed.as_ref() != Some(&wanted) {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(shared.client.clone(), &namespace);
        let patch = serde_json::json!({ "status": { "capacity": { "storage": wanted } } });
        claims.patch_status(&claim.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    }
    Ok(())
}

/// A volume directory no running test bed will reclaim: it is gone, or its
/// root is not locked (its test bed stopped). A root without a lock file
/// may belong to a running test bed of an older version: left alone.
fn abandoned(dir: &Path) -> bool {
    if !dir.exists() {
        return true;
    }
    let root = dir.parent().filter(|p| p.file_name() == Some("volumes".as_ref())).and_then(Path::parent);
    let Some(lock) = root.and_then(|r| std::fs::File::open(r.join(LOCK_FILE)).ok()) else { return false };
    // Dropping the file releases the lock taken here.
    lock.try_lock().is_ok()
}

fn host_path(volume: &PersistentVolume) -> Option<PathBuf> {
    volume.spec.as_ref()?.host_path.as_ref().map(|h| PathBuf::from(&h.path))
}

/// Delete a volume its claim let go of, and its directory: the class's
/// reclaim policy is Delete. Volumes under this root are ours; so are those
/// of a test bed that stopped before its claims were released (typically:
/// a test's namespace is deleted after the test), see [`abandoned`].
async fn reclaim(shared: &Shared, volume: &PersistentVolume, api: &Api<PersistentVolume>) -> Result<()> {
    let phase = volume.status.as_ref().and_then(|s| s.phase.as_deref());
    let provisioned = volume.annotations().get(PROVISIONED_BY).is_some_and(|p| p == PROVISIONER);
    let Some(dir) = host_path(volume) else { return Ok(()) };
    let ours = dir.starts_with(shared.root.join("volumes"));
    if !provisioned || !matches!(phase, Some("Released" | "Failed")) || (!ours && !abandoned(&dir)) {
        return Ok(());
    }
    // A server may still be shutting down on it (a pod is gone from the API
    // before its agent has stopped).
    if lock(&shared.members).values().any(|m| m.server.as_ref().is_some_and(|f| f.data.starts_with(&dir))) {
        return Ok(());
    }
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
    }
    match api.delete(&volume.name_any(), &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e).context("deleting the PersistentVolume"),
    }
}

// ---------------------------------------------------------------------------
// Pod runner

/// Start a supervisor for every database pod that is scheduled and has an
/// address; stop the supervisors of pods deleted or replaced.
async fn run_pods(shared: Arc<Shared>) -> Result<()> {
    let (pods, events) = reflect(shared.api::<Pod>(), watcher::Config::default().labels(POD_SELECTOR));
    let mut events = std::pin::pin!(events);
    // Pods on real nodes run in real containers: a kubelet runs those.
    let (real_nodes, node_events) = reflect(
        Api::<Node>::all(shared.client.clone()),
        watcher::Config::default().labels(REAL_NODE_SELECTOR),
    );
    let mut node_events = std::pin::pin!(node_events);
    let mut tick = tokio::time::interval(RESYNC);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(())) => {}
                Some(Err(err)) => eprintln!("{} testbed: watching pods: {err}", Timestamp::now()),
                None => bail!("the pod watch ended"),
            },
            event = node_events.next() => match event {
                Some(Ok(())) => {}
                Some(Err(err)) => eprintln!("{} testbed: watching nodes: {err}", Timestamp::now()),
                None => bail!("the node watch ended"),
            },
            _ = tick.tick() => {}
        }
        // Before the first list the store is empty, and every pod would look gone.
        if !ready(&pods) || !ready(&real_nodes) {
            continue;
        }
        let mut wanted: HashMap<Key, Arc<Pod>> = HashMap::new();
        for pod in pods.state() {
            let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
            let scheduled = node.is_some_and(|n| real_nodes.get(&ObjectRef::new(n)).is_none());
            let addressed = pod.status.as_ref().is_some_and(|s| s.pod_ip.is_some());
            let key = (pod.namespace().unwrap_or_default(), pod.name_any());
            if scheduled
                && addressed
                && pod.metadata.deletion_timestamp.is_none()
                && shared.serves(&key.0).await
            {
                wanted.insert(key, pod);
            }
        }
        let mut members = lock(&shared.members);
        for (key, member) in members.iter() {
            if wanted.get(key).and_then(|p| p.uid()).as_deref() != Some(member.uid.as_str()) {
                let _ = member.stop.send(true);
            }
        }
        // A proxy lives as long as its pod is wanted or its agent runs.
        lock(&shared.proxies).retain(|key, p| {
            members.get(key).is_some_and(|m| m.uid == p.uid)
                || wanted.get(key).and_then(|pod| pod.uid()).is_some_and(|uid| uid == p.uid)
        });
        if shared.stopping.load(Ordering::SeqCst) {
            continue;
        }
        for (key, pod) in wanted {
            // A replaced pod's supervisor must finish (its server stopped)
            // before the new pod's starts on the same volume.
            if members.contains_key(&key) {
                continue;
            }
            let (stop, stopped) = watch::channel(false);
            let uid = pod.uid().unwrap_or_default();
            let task = tokio::spawn(supervise(shared.clone(), key.clone(), pod, stopped));
            members.insert(key, Member { uid, stop, agent: None, server: None, task: Some(task) });
        }
    }
}

/// Until the supervisor is to stop (or its sender is gone).
async fn stop_wanted(stop: &mut watch::Receiver<bool>) {
    // The guard wait_for returns must not live across an await: not Send.
    let _ = stop.wait_for(|s| *s).await.map(drop);
}

/// Sleep for `duration`; true (at once) when the supervisor is to stop.
async fn stop_requested(stop: &mut watch::Receiver<bool>, duration: Duration) -> bool {
    tokio::time::timeout(duration, stop_wanted(stop)).await.is_ok()
}

/// Play the kubelet for one pod until it is deleted or replaced: set it up,
/// run its agent, restart the agent when it exits (restartPolicy Always).
async fn supervise(shared: Arc<Shared>, key: Key, pod: Arc<Pod>, mut stop: watch::Receiver<bool>) {
    let paths = PodPaths::new(&shared.root, &key);
    let uid = pod.uid().unwrap_or_default();
    if let Err(err) = supervise_inner(&shared, &key, &uid, &pod, &paths, &mut stop).await {
        paths.note(&format!("gave up on pod uid {uid} (retrying): {err:#}"));
        // The runner starts a new supervisor for the pod; not at once.
        stop_requested(&mut stop, RESTART_DELAY).await;
    }
    let mut members = lock(&shared.members);
    if members.get(&key).is_some_and(|m| m.uid == uid) {
        members.remove(&key);
    }
}

async fn supervise_inner(
    shared: &Shared,
    key: &Key,
    uid: &str,
    pod: &Pod,
    paths: &PodPaths,
    stop: &mut watch::Receiver<bool>,
) -> Result<()> {
    std::fs::create_dir_all(&paths.dir).with_context(|| format!("creating {}", paths.dir.display()))?;
    paths.note(&format!(
        "pod uid {uid} scheduled on {}",
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or("?")
    ));
    // Like a kubelet mounting volumes: retried until it works or the pod goes.
    let mut last_problem = String::new();
    let setup = loop {
        match set_up(shared, pod, paths).await {
            Ok(setup) => break setup,
            Err(err) => {
                let problem = format!("{err:#}");
                if problem != last_problem {
                    paths.note(&format!("waiting: {problem}"));
                    last_problem = problem;
                }
            }
        }
        if stop_requested(stop, RESYNC).await {
            return Ok(());
        }
    };
    shared.update(key, uid, |m| m.server = Some(setup.server.clone()));
    let api = format!("https://{}", shared.proxy(key, uid).await?);
    loop {
        while shared.is_down(key, uid) {
            if stop_requested(stop, Duration::from_millis(200)).await {
                return Ok(());
            }
        }
        if *stop.borrow() {
            return Ok(());
        }
        if let Err(err) = write_service_account_kubeconfig_via(
            &shared.client,
            &key.0,
            &setup.service_account,
            &paths.dir,
            &api,
        )
        .await
        {
            paths.note(&format!("waiting for a ServiceAccount token: {err:#}"));
            if stop_requested(stop, RESTART_DELAY).await {
                return Ok(());
            }
            continue;
        }
        let mut agent = spawn_agent(shared, key, &setup, paths)?;
        let pid = agent.id().context("the agent has no pid")?;
        shared.update(key, uid, |m| m.agent = Some(pid));
        paths.note(&format!("agent started, pid {pid}"));
        let mut refresh =
            tokio::time::interval_at(tokio::time::Instant::now() + TOKEN_REFRESH, TOKEN_REFRESH);
        let mut sync = tokio::time::interval_at(tokio::time::Instant::now() + FILE_SYNC, FILE_SYNC);
        let exit = loop {
            tokio::select! {
                status = agent.wait() => break Some(status),
                () = stop_wanted(stop) => break None,
                _ = sync.tick() => {
                    if let Err(err) = project(shared, pod, paths, setup.owner).await {
                        let problem = format!("{err:#}");
                        if problem != last_problem {
                            paths.note(&format!("could not update the Secret and ConfigMap files: {problem}"));
                            last_problem = problem;
                        }
                    }
                }
                _ = refresh.tick() => {
                    let refreshed = write_service_account_kubeconfig_via(
                        &shared.client, &key.0, &setup.service_account, &paths.dir, &api,
                    ).await;
                    if let Err(err) = refreshed {
                        paths.note(&format!("could not refresh the token: {err:#}"));
                    }
                }
            }
        };
        let stopping = exit.is_none();
        let status = match exit {
            Some(status) => status,
            None => {
                paths.note("pod deleted: stopping the agent (SIGTERM)");
                terminate(&mut agent, &setup.server).await
            }
        };
        shared.update(key, uid, |m| m.agent = None);
        paths.note(&format!("agent exited: {}", status.map_or_else(|e| e.to_string(), |s| s.to_string())));
        // The container is gone with its main process; so is what it started.
        if let Some(server) = setup.server.pid() {
            paths.note(&format!("killing the server the agent left behind (pid {server})"));
            signal(server, libc::SIGKILL);
            wait_gone(server, Duration::from_secs(10)).await?;
        }
        if stopping || stop_requested(stop, RESTART_DELAY).await {
            return Ok(());
        }
    }
}

/// The server software behind a member pod, from its `--engine` argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    Postgres,
    Redis,
}

impl Engine {
    /// The local user the server runs as (Debian's packages create both).
    fn user(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Redis => "redis",
        }
    }
}

/// Where a pod's server keeps its data, and so where its pid file is.
#[derive(Clone, Debug)]
struct ServerFiles {
    engine: Engine,
    /// Host directory given to the agent as `--data-dir`.
    data: PathBuf,
}

impl ServerFiles {
    /// The running server on this data directory: the pid in its pid file,
    /// if that process is alive and is such a server (a stale file may name
    /// a pid reused by anything).
    fn pid(&self) -> Option<u32> {
        let file = match self.engine {
            Engine::Postgres => "postmaster.pid",
            Engine::Redis => hostwright::agent::redis::PID_FILE,
        };
        let text = std::fs::read_to_string(self.data.join(file)).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        // PostgreSQL names its data directory on the command line; Redis
        // rewrites its title to its address, so its name must do.
        let serves = match self.engine {
            Engine::Postgres => std::fs::read(format!("/proc/{pid}/cmdline"))
                .ok()?
                .split(|b| *b == 0)
                .any(|arg| arg == self.data.to_string_lossy().as_bytes()),
            Engine::Redis => {
                std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim().starts_with("redis-server")
            }
        };
        (serves && alive(pid)).then_some(pid)
    }
}

/// What a pod's agent is started with.
struct Setup {
    /// The pod's uid, which the agent is told, as by the downward API.
    pod_uid: String,
    server: ServerFiles,
    /// The settings file (`--config`) under the pod's ConfigMap directory.
    config: PathBuf,
    twin: String,
    port: String,
    /// uid and gid the server runs as; its files are theirs.
    owner: (u32, u32),
    service_account: String,
    /// `--engine`, `--database-mirror`, `--session-store`, the archive
    /// target and the recovery source: from the pod's own args.
    extra_args: Vec<String>,
}

/// The Secret volumes of a pod beyond its own two, as the agent argument
/// that names where they are mounted (the pod's value is a path inside the
/// container; here it becomes the projected directory, or file in it).
const OPTIONAL_SECRETS: [(&str, &str, Option<&str>); 4] = [
    ("backup-credentials", "--archive-credentials-dir", None),
    ("backup-ca", "--archive-ca-file", Some("ca.crt")),
    ("recovery-credentials", "--recovery-credentials-dir", None),
    ("recovery-ca", "--recovery-ca-file", Some("ca.crt")),
];

/// The value of `--name=value` among a pod's container arguments.
fn pod_arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().find_map(|a| a.strip_prefix(name)?.strip_prefix('='))
}

/// Lay out the pod's Secret, ConfigMap and socket directory, and find its
/// data directory (a bound volume's or the pod's emptyDir). Fails (to be
/// retried) while any is missing.
async fn set_up(shared: &Shared, pod: &Pod, paths: &PodPaths) -> Result<Setup> {
    let namespace = pod.namespace().unwrap_or_default();
    let spec = pod.spec.as_ref().context("pod without spec")?;
    let pod_ip = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).context("pod without address")?;
    let twin = twin(pod_ip).with_context(|| format!("pod address {pod_ip} is not in 10.244.0.0/16"))?;
    let container = spec.containers.first().context("pod without containers")?;
    let args = container.args.clone().unwrap_or_default();
    let engine = match pod_arg(&args, "--engine") {
        Some("postgres") => Engine::Postgres,
        Some("redis") => Engine::Redis,
        other => bail!("the pod's agent has engine {other:?}, not postgres or redis"),
    };
    let owner = user_ids(engine.user())?;
    let port = pod_arg(&args, "--port").context("the pod's agent has no --port")?.to_string();
    let data_arg = pod_arg(&args, "--data-dir").context("the pod's agent has no --data-dir")?;
    let config_arg = pod_arg(&args, "--config").context("the pod's agent has no --config")?;
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "data")
        .context("the server container does not mount data")?;
    let within = Path::new(data_arg)
        .strip_prefix(&mount.mount_path)
        .with_context(|| format!("--data-dir {data_arg} is not under the data mount {}", mount.mount_path))?;
    let data_volume =
        spec.volumes.iter().flatten().find(|v| v.name == "data").context("pod has no volume data")?;

    project(shared, pod, paths, owner).await?;
    let run = paths.run();
    std::fs::create_dir_all(&run)?;
    own(&run, owner, 0o700)?;

    let volume = match (&data_volume.persistent_volume_claim, &data_volume.empty_dir) {
        (Some(claim), _) => bound_directory(shared, &namespace, &claim.claim_name).await?,
        // An emptyDir lives as long as the pod (this uid), not its name.
        (None, Some(_)) => paths.dir.join("empty-dirs").join(pod.uid().unwrap_or_default()).join("data"),
        (None, None) => bail!("data is neither a PersistentVolumeClaim nor an emptyDir"),
    };
    std::fs::create_dir_all(&volume)?;
    // Like fsGroup: the server's user owns its volume.
    own(&volume, owner, 0o700)?;
    let data = volume.join(within);

    let service_account = spec.service_account_name.clone().unwrap_or_else(|| "default".into());
    let extra_args = args
        .iter()
        .filter(|a| {
            [
                "--engine=",
                "--database-mirror=",
                "--session-store=",
                "--archive-endpoint=",
                "--archive-bucket=",
                "--archive-prefix=",
                "--archive-region=",
                "--archive-max-pending-bytes=",
                "--recovery-endpoint=",
                "--recovery-bucket=",
                "--recovery-prefix=",
                "--recovery-region=",
                "--recovery-target-time=",
            ]
            .iter()
            .any(|p| a.starts_with(p))
        })
        .cloned()
        .chain(OPTIONAL_SECRETS.iter().flat_map(|(volume, arg, file)| {
            let mounted = spec.volumes.iter().flatten().any(|v| v.name == *volume);
            let dir = paths.dir.join(volume);
            let path = match file {
                Some(file) => dir.join(file),
                None => dir,
            };
            mounted.then(|| [arg.to_string(), path.display().to_string()]).into_iter().flatten()
        }))
        .collect();
    let config_file = Path::new(config_arg).file_name().context("--config names no file")?;
    Ok(Setup {
        pod_uid: pod.uid().context("pod without uid")?,
        server: ServerFiles { engine, data },
        config: paths.config().join(config_file),
        twin,
        port,
        owner,
        service_account,
        extra_args,
    })
}

/// The host directory of the volume bound to claim `claim_name`.
async fn bound_directory(shared: &Shared, namespace: &str, claim_name: &str) -> Result<PathBuf> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(shared.client.clone(), namespace);
    let claim = claims.get(claim_name).await.with_context(|| format!("PVC {claim_name}"))?;
    let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let volume_name = claim.spec.and_then(|s| s.volume_name).filter(|_| bound);
    let volume_name = volume_name.with_context(|| format!("PVC {claim_name} is not bound yet"))?;
    let volumes: Api<PersistentVolume> = Api::all(shared.client.clone());
    let volume = volumes.get(&volume_name).await.with_context(|| format!("PV {volume_name}"))?;
    let volume = host_path(&volume).with_context(|| format!("PV {volume_name} is not a hostPath volume"))?;
    if !volume.is_dir() {
        bail!("the directory {} of PV {volume_name} does not exist", volume.display());
    }
    Ok(volume)
}

/// Write the pod's Secret and ConfigMap volumes as files, as a kubelet
/// does; run again while the pod runs, so changes reach it (the kubelet
/// takes up to a minute, this test bed [`FILE_SYNC`]).
async fn project(shared: &Shared, pod: &Pod, paths: &PodPaths, owner: (u32, u32)) -> Result<()> {
    let namespace = pod.namespace().unwrap_or_default();
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    let volume = |name: &str| {
        volumes
            .into_iter()
            .flatten()
            .find(|v| v.name == name)
            .with_context(|| format!("pod has no volume {name}"))
    };
    let secrets: Api<Secret> = Api::namespaced(shared.client.clone(), &namespace);
    let optional = OPTIONAL_SECRETS
        .iter()
        .filter(|(name, ..)| volumes.into_iter().flatten().any(|v| v.name == *name))
        .map(|(name, ..)| (*name, paths.dir.join(name)));
    let secret_volumes =
        [("credentials", paths.credentials()), ("tls", paths.tls())].into_iter().chain(optional);
    for (volume_name, dir) in secret_volumes.collect::<Vec<_>>() {
        let secret_name = volume(volume_name)?
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.clone())
            .with_context(|| format!("{volume_name} is not a Secret"))?;
        let secret = secrets.get(&secret_name).await.with_context(|| format!("Secret {secret_name}"))?;
        std::fs::create_dir_all(&dir)?;
        own(&dir, owner, 0o700)?;
        for (key, value) in secret.data.iter().flatten() {
            write_owned(&dir.join(key), &value.0, owner, 0o600)?;
        }
    }
    let config_name =
        volume("config")?.config_map.as_ref().map(|c| c.name.clone()).context("config is not a ConfigMap")?;

    let config_maps: Api<ConfigMap> = Api::namespaced(shared.client.clone(), &namespace);
    let config_map =
        config_maps.get(&config_name).await.with_context(|| format!("ConfigMap {config_name}"))?;
    let dir = paths.config();
    std::fs::create_dir_all(&dir)?;
    own(&dir, owner, 0o755)?;
    for (key, value) in config_map.data.iter().flatten() {
        write_owned(&dir.join(key), value.as_bytes(), owner, 0o644)?;
    }
    Ok(())
}

fn spawn_agent(
    shared: &Shared,
    (namespace, name): &Key,
    setup: &Setup,
    paths: &PodPaths,
) -> Result<tokio::process::Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.log)
        .with_context(|| format!("opening {}", paths.log.display()))?;
    let mut command = tokio::process::Command::new(&shared.binary);
    command
        .args(["agent", "run", "--member", name, "--namespace", namespace])
        .args(&setup.extra_args)
        .arg("--data-dir")
        .arg(&setup.server.data)
        .arg("--config")
        .arg(&setup.config)
        .arg("--socket-dir")
        .arg(paths.run())
        .args(["--listen-address", &setup.twin, "--advertise-address", &setup.twin])
        .args(["--port", &setup.port])
        .arg("--probe-address")
        .arg(format!("{}:{}", setup.twin, hostwright::contract::probes::PORT))
        .arg("--credentials-dir")
        .arg(paths.credentials())
        .arg("--tls-dir")
        .arg(paths.tls())
        .args(["--run-as-user", setup.server.engine.user()])
        .env("KUBECONFIG", paths.dir.join("kubeconfig"))
        .env(keys::POD_UID_ENV, &setup.pod_uid)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        // Its own process group: a Ctrl-C meant for the test bed reaches the
        // agents through the test bed, in order.
        .process_group(0);
    command.spawn().with_context(|| format!("starting {}", shared.binary.display()))
}

/// SIGTERM the agent (it stops its server cleanly) and wait; SIGKILL both
/// if it takes too long.
async fn terminate(
    agent: &mut tokio::process::Child,
    server: &ServerFiles,
) -> std::io::Result<std::process::ExitStatus> {
    if let Some(pid) = agent.id() {
        signal(pid, libc::SIGTERM);
        // A stalled agent would only see the SIGTERM once resumed.
        signal(pid, libc::SIGCONT);
    }
    match tokio::time::timeout(STOP_TIMEOUT, agent.wait()).await {
        Ok(status) => status,
        Err(_) => {
            if let Some(pid) = server.pid() {
                signal(pid, libc::SIGKILL);
            }
            agent.kill().await?;
            agent.wait().await
        }
    }
}

// ---------------------------------------------------------------------------
// Processes and files

/// The process exists and is not a zombie (dead, not yet reaped).
/// Send `signal` to the process group `group` (a process that leads it).
fn signal_group(group: u32, signal: libc::c_int) -> std::io::Result<()> {
    let Some(target) = libc::pid_t::try_from(group).ok().filter(|g| *g > 1) else {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{group} names no group")));
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(-target, signal) } == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

fn alive(pid: u32) -> bool {
    process_state(pid).is_some_and(|s| s != 'Z')
}

/// Every thread of `pid` is stopped, or blocked in the kernel where the
/// pending stop holds it: a thread that was spawning a child when its
/// whole process group was stopped waits (state D) for a child that is
/// stopped too, and never shows T.
fn frozen(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    let states: Vec<Option<char>> =
        tasks.filter_map(|t| t.ok()).map(|t| stat_state(&t.path().join("stat"))).collect();
    !states.is_empty() && states.iter().all(|s| matches!(s, Some('T' | 't' | 'D')))
}

/// The state letter in /proc/<pid>/stat (R, S, T for stopped, Z...); `None`
/// when there is no such process.
fn process_state(pid: u32) -> Option<char> {
    stat_state(std::path::Path::new(&format!("/proc/{pid}/stat")))
}

/// The state letter of a process or thread `stat` file.
fn stat_state(path: &std::path::Path) -> Option<char> {
    let stat = std::fs::read_to_string(path).ok()?;
    // "pid (comm) S ...": comm may hold spaces and parentheses.
    stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next())
}

async fn wait_gone(pid: u32, timeout: Duration) -> Result<()> {
    crate::eventually(timeout, &format!("process {pid} to end"), || async { Ok((!alive(pid)).then_some(())) })
        .await
}

/// Best effort: the process may be gone already.
fn signal(pid: u32, signal: libc::c_int) {
    let _ = crate::signal(pid, signal);
}

fn user_ids(user: &str) -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let out = std::process::Command::new("id").args([flag, user]).output().context("running id")?;
        String::from_utf8(out.stdout)?
            .trim()
            .parse()
            .with_context(|| format!("a local user {user} (make deps)"))
    };
    Ok((id("-u")?, id("-g")?))
}

fn own(path: &Path, (uid, gid): (u32, u32), mode: u32) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Replace `path` in one step (a reader never sees half a file), unless it
/// already holds `contents`.
fn write_owned(path: &Path, contents: &[u8], owner: (u32, u32), mode: u32) -> Result<()> {
    if std::fs::read(path).is_ok_and(|current| current == contents) {
        return Ok(());
    }
    let partial = path.with_extension("partial");
    std::fs::write(&partial, contents).with_context(|| format!("writing {}", partial.display()))?;
    own(&partial, owner, mode)?;
    std::fs::rename(&partial, path).with_context(|| format!("replacing {}", path.display()))
}

/// Fail early, with a way out, when the servers could not reach `root`.
fn reachable_by(root: &Path, (uid, gid): (u32, u32)) -> Result<()> {
    let status = std::process::Command::new("test")
        .arg("-x")
        .arg(root)
        .uid(uid)
        .gid(gid)
        .status()
        .context("running test as postgres")?;
    if !status.success() {
        return Err(anyhow!(
            "the postgres user cannot reach {} (a parent directory is private, e.g. a 0700 home): \
             choose a root under /tmp",
            root.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::twin;

    #[test]
    fn pod_addresses_have_loopback_twins() {
        assert_eq!(twin("10.244.3.17").as_deref(), Some("127.244.3.17"));
        assert_eq!(twin("10.245.1.2").as_deref(), Some("127.245.1.2"), "the bench cluster's");
        assert_eq!(twin("10.240.0.1").as_deref(), Some("127.240.0.1"));
        assert_eq!(twin("10.254.9.9").as_deref(), Some("127.254.9.9"));
        assert_eq!(twin("10.239.1.1"), None, "below the pod networks");
        assert_eq!(twin("10.255.1.1"), None, "above the pod networks");
        assert_eq!(twin("10.96.0.1"), None, "service addresses have none");
        assert_eq!(twin("10.244.1"), None);
        assert_eq!(twin("fd00::1"), None);
    }
}

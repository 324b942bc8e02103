//! The operator under test: the real `hostwright run` binary, started as a
//! local process with the Helm chart's ServiceAccount identity (a token from
//! the TokenRequest API), so every test also proves the chart's RBAC.
//!
//! Each test runs its own operator(s), scoped to its namespace with a lease of
//! its own, so tests run in parallel and can kill and restart operators
//! without touching each other.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kube::Client;

use crate::eventually;

/// Namespace and name of the ServiceAccount the Helm chart creates.
pub fn chart_service_account() -> (String, String) {
    let namespace = std::env::var("HOSTWRIGHT_E2E_NAMESPACE").unwrap_or_else(|_| "hostwright-system".into());
    let name = std::env::var("HOSTWRIGHT_E2E_SERVICE_ACCOUNT").unwrap_or_else(|_| "hostwright".into());
    (namespace, name)
}

/// The operator binary: `HOSTWRIGHT_BIN`, or the workspace's debug build.
pub fn binary() -> PathBuf {
    std::env::var_os("HOSTWRIGHT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/hostwright"))
}

/// The image member pods install the agent from: `HOSTWRIGHT_AGENT_IMAGE`,
/// or the one `e2e/cluster load-operator` loads into the real nodes.
fn agent_image() -> String {
    std::env::var("HOSTWRIGHT_AGENT_IMAGE").unwrap_or_else(|_| "hostwright.local/hostwright:dev".into())
}

/// A kubeconfig that authenticates as the chart's ServiceAccount, in a
/// temporary directory of its own.
pub async fn service_account_kubeconfig(client: &Client) -> Result<PathBuf> {
    let (namespace, name) = chart_service_account();
    let dir = std::env::temp_dir().join("hostwright-e2e").join(format!("sa-{}", rand::random::<u64>()));
    crate::write_service_account_kubeconfig(client, &namespace, &name, &dir)
        .await
        .with_context(|| format!("a kubeconfig for {namespace}/{name} (is the Helm chart installed?)"))
}

/// One running `hostwright run` process.
pub struct Operator {
    child: Option<Child>,
    pub metrics_port: u16,
    pub identity: String,
    log: PathBuf,
}

/// The real nodes' bridge network (`e2e/lib/nodes.sh`), this machine on
/// it: the tests reach the stores from here as an operations host would, so
/// the operator admits it to every store's NetworkPolicy.
fn this_machine_on_the_nodes_bridge() -> String {
    let net = std::env::var("HOSTWRIGHT_POD_NET").unwrap_or_else(|_| "244".into());
    format!("192.168.{net}.0/24")
}

impl Operator {
    /// Start an operator that watches `namespace` only, electing a leader over
    /// the Lease `hostwright-<namespace>` in the chart's namespace.
    pub async fn start(client: &Client, namespace: &str, identity: &str) -> Result<Self> {
        Self::start_with(client, namespace, identity, &[]).await
    }

    /// [`Operator::start`] with settings of its own (`HOSTWRIGHT_*` variables).
    pub async fn start_with(
        client: &Client,
        namespace: &str,
        identity: &str,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let kubeconfig = service_account_kubeconfig(client).await?;
        let port = free_port()?;
        let (lease_namespace, _) = chart_service_account();
        let log = std::env::temp_dir().join("hostwright-e2e").join(format!("{namespace}-{identity}.log"));
        let log_file = std::fs::File::create(&log)?;
        let mut command = Command::new(binary());
        command
            .args(["run", "--namespace", namespace, "--lease-namespace", &lease_namespace])
            .args(["--lease-name", &format!("hostwright-{namespace}"), "--identity", identity])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .env("KUBECONFIG", &kubeconfig)
            .env("HOSTWRIGHT_ADMIN_NETWORKS", this_machine_on_the_nodes_bridge())
            .envs(env.iter().copied());
        Self::spawn(command, port, identity, log, log_file).await
    }

    /// Start `command` (the common environment added, its output to `log`)
    /// and wait until its /healthz answers on `port`.
    async fn spawn(
        mut command: Command,
        port: u16,
        identity: &str,
        log: PathBuf,
        log_file: std::fs::File,
    ) -> Result<Self> {
        let child = command
            .env("HOSTWRIGHT_AGENT_IMAGE", agent_image())
            .env("RUST_LOG", "info,hostwright=debug")
            .stdout(Stdio::from(log_file.try_clone()?))
            .stderr(Stdio::from(log_file))
            .spawn()
            .with_context(|| format!("starting {} (built? `cargo build`)", binary().display()))?;
        let op = Operator { child: Some(child), metrics_port: port, identity: identity.into(), log };
        eventually(Duration::from_secs(30), "the operator's /healthz", || async {
            Ok(op.get("/healthz").ok())
        })
        .await?;
        Ok(op)
    }

    /// Start `hostwright run` with `args` as given (say, those the chart
    /// renders into its Deployment) but for `--metrics-addr`, which gets a
    /// free local port, authenticating with `kubeconfig`; `name` names its log.
    pub async fn start_with_args(kubeconfig: &std::path::Path, args: &[String], name: &str) -> Result<Self> {
        let port = free_port()?;
        let log = std::env::temp_dir().join("hostwright-e2e").join(format!("{name}.log"));
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let log_file = std::fs::File::create(&log)?;
        let args: Vec<String> = args
            .iter()
            .filter(|a| !a.starts_with("--metrics-addr"))
            .cloned()
            .chain([format!("--metrics-addr=127.0.0.1:{port}")])
            .collect();
        let mut command = Command::new(binary());
        command.args(&args).env("KUBECONFIG", kubeconfig);
        Self::spawn(command, port, name, log, log_file).await
    }

    /// GET a path on the operator's HTTP listener.
    pub fn get(&self, path: &str) -> Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.metrics_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
        }
        Ok(body.to_string())
    }

    /// The sum of a metric's samples whose labels contain `label_filter`.
    pub fn metric(&self, name: &str, label_filter: &str) -> Result<f64> {
        let text = self.get("/metrics")?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(name) && l.contains(label_filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Whether this process holds the leader lease.
    pub fn is_leader(&self) -> bool {
        self.metric("hostwright_leader", "").map(|v| v == 1.0).unwrap_or(false)
    }

    /// Writes this process sent to the API server, by its own count.
    pub fn writes(&self) -> f64 {
        self.metric("hostwright_api_writes_total", "").unwrap_or(0.0)
    }

    /// SIGKILL: a crash, no clean-up, no lease release.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait: a clean shutdown that releases the lease.
    pub fn terminate(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            crate::signal(child.id(), libc::SIGTERM).context("sending the operator SIGTERM")?;
            let status = child.wait()?;
            if !status.success() {
                bail!("operator exited with {status} after SIGTERM; log: {}", self.log.display());
            }
        }
        Ok(())
    }

    /// The operator's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

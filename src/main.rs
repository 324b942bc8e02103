//! The `hostwright` command line.

use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use hostwright::controllers::watch::InitialList;
use hostwright::telemetry::{self, LogFormat};

/// The operator allocates with jemalloc (see `hostwright::memory` for why).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, under the name its (prefixed) build reads them from.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: hostwright::memory::ConfPointer =
    hostwright::memory::ConfPointer::new(hostwright::memory::MALLOC_CONF);

/// Kubernetes operator for highly available web hosting.
#[derive(Parser, Debug)]
#[command(name = "hostwright", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator (controllers, leader election, metrics and health endpoints).
    Run(RunArgs),
    /// The in-pod agent beside each database server.
    ///
    /// Runs the `hostwright-agent` binary installed beside this one: a
    /// binary of its own, so that the operator does not map the agent's code.
    #[command(disable_help_flag = true)]
    Agent {
        /// Everything after `agent`, as the agent binary takes it
        /// (`run …`, `install PATH`, `--help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Print the CustomResourceDefinitions as YAML (what `crds/` holds).
    Crds,
    /// The kubectl plugin's commands: `kubectl hostwright …` when this
    /// binary is installed as `kubectl-hostwright`.
    #[command(subcommand)]
    Kubectl(PluginCommand),
    /// Print the version of this build.
    Version,
}

#[derive(Subcommand, Debug)]
enum PluginCommand {
    /// Print the YAML of a new site in all three kinds (SessionStore,
    /// DatabaseMirror, WebCluster), wired together, to edit and apply.
    Site {
        /// The site's name: its WebCluster's; the stores are <name>-sessions and <name>-db.
        name: String,
        /// The web servers' image.
        #[arg(long, default_value = "nginxinc/nginx-unprivileged:1.27")]
        image: String,
        /// A host name the site answers to (repeat for more).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// The same shape, smaller: for a staging environment.
        #[arg(long)]
        staging: bool,
    },
    /// Show a site's whole tree: its web tier, both stores, their members
    /// with roles and lag, the last failover, backups, every condition.
    Status {
        /// The site's WebCluster.
        site: String,
        /// Its namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Move a store's primary to another member on purpose (before
    /// maintenance): the operator promotes it once it has caught up.
    Switchover {
        /// The store: <name>, or sessionstore/<name> or databasemirror/<name>.
        store: String,
        /// The member to promote (default: the healthy mirror least behind).
        member: Option<String>,
        /// Its namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Restart every member of a store the safe way: mirrors one at a time,
    /// then the primary as its updateStrategy says.
    Restart {
        /// The store: <name>, or sessionstore/<name> or databasemirror/<name>.
        store: String,
        /// Its namespace (default: the kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Address of the HTTP listener serving /metrics, and /healthz and
    /// /readyz unless --health-addr is given.
    #[arg(long, env = "HOSTWRIGHT_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// A listener of its own for /healthz and /readyz (default: the metrics
    /// listener), so /metrics can stay on a loopback address while the
    /// kubelet probes the pod.
    #[arg(long, env = "HOSTWRIGHT_HEALTH_ADDR")]
    health_addr: Option<SocketAddr>,
    /// Read cluster-scoped Nodes (cordons start switchovers before a drain)
    /// and StorageClasses (whether a volume may grow). false: for an install
    /// whose RBAC grants no cluster-wide read; both are done without.
    #[arg(long, env = "HOSTWRIGHT_CLUSTER_READS", default_value_t = true, action = clap::ArgAction::Set)]
    cluster_reads: bool,
    /// How caches are first filled: `streaming` (the watch sends the current
    /// objects one at a time; needs the WatchList feature, on by default
    /// from Kubernetes 1.34), `paged` (lists of 100), or `auto` (ask the API
    /// server once at start).
    #[arg(long, env = "HOSTWRIGHT_INITIAL_LIST", value_enum, default_value_t = InitialList::Auto)]
    initial_list: InitialList,
    /// Elect a leader over a Lease so that only one replica writes.
    #[arg(long, env = "HOSTWRIGHT_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "HOSTWRIGHT_LEASE_NAME", default_value = "hostwright-leader")]
    lease_name: String,
    /// Namespace of the leader Lease (default: the namespace of the client's context or pod).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Identity of this replica in the Lease (default: a random one).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "HOSTWRIGHT_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Reconciles run at the same time per controller.
    #[arg(long, env = "HOSTWRIGHT_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
    /// Log line format.
    #[arg(long, env = "HOSTWRIGHT_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Image whose `hostwright agent` runs beside every database server
    /// (the operator's own image).
    #[arg(long, env = "HOSTWRIGHT_AGENT_IMAGE", default_value = concat!("ghcr.io/hostwright/hostwright:", env!("CARGO_PKG_VERSION")))]
    agent_image: String,
    /// Lifetime of the server certificates the operator issues to stores,
    /// in seconds (default 90 days); each is renewed when a third is left.
    #[arg(long, env = "HOSTWRIGHT_CERTIFICATE_LIFETIME_SECONDS", default_value_t = 90 * 24 * 3600,
          value_parser = clap::value_parser!(u64).range(60..=10 * 365 * 24 * 3600))]
    certificate_lifetime_seconds: u64,
    /// Networks (CIDRs, comma-separated) every store's NetworkPolicy admits
    /// besides the store's members and the web tiers that reference it: an
    /// operations bastion, a backup host. Default: none.
    #[arg(long, env = "HOSTWRIGHT_ADMIN_NETWORKS", value_delimiter = ',')]
    admin_networks: Vec<String>,
    /// Namespaces (a label selector, as `kubectl -l` takes it) whose pods
    /// may scrape the agents' metrics: every store's NetworkPolicy admits
    /// them to the agent's port alone. Default: none. Every namespace
    /// carries `kubernetes.io/metadata.name`, so
    /// `kubernetes.io/metadata.name=monitoring` names one.
    #[arg(long, env = "HOSTWRIGHT_METRICS_SCRAPERS")]
    metrics_scrapers: Option<String>,
}

fn main() -> ExitCode {
    hostwright::tls::client::install_default_provider();
    let cli = Cli::parse_from(hostwright::plugin::arguments(std::env::args_os()));
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Agent { args } => exec_agent(args),
        Command::Crds => print_crds(),
        Command::Kubectl(PluginCommand::Site { name, image, hosts, staging }) => {
            let shape = hostwright::plugin::site::SiteShape { name, image, hosts, staging };
            hostwright::plugin::site::manifests(&shape).map(|yaml| print!("{yaml}")).map_err(Into::into)
        }
        Command::Kubectl(PluginCommand::Status { site, namespace }) => {
            against_the_cluster(namespace, |client, ns| async move {
                let tree = hostwright::plugin::status::fetch(&client, &ns, &site).await?;
                Ok(hostwright::plugin::status::render(&tree, hostwright::plugin::status::Paint::for_stdout()))
            })
        }
        Command::Kubectl(PluginCommand::Switchover { store, member, namespace }) => {
            against_the_cluster(namespace, |client, ns| async move {
                let store = store.parse()?;
                Ok(hostwright::plugin::store::switchover(&client, &ns, &store, member.as_deref()).await?)
            })
        }
        Command::Kubectl(PluginCommand::Restart { store, namespace }) => {
            against_the_cluster(namespace, |client, ns| async move {
                Ok(hostwright::plugin::store::restart(&client, &ns, &store.parse()?).await?)
            })
        }
        Command::Version => {
            println!("hostwright {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hostwright: {err}");
            ExitCode::FAILURE
        }
    }
}

/// A plugin command: `call` with a client of the kubeconfig's cluster and
/// the namespace (the context's unless given); what it returns is printed.
fn against_the_cluster<F, Fut>(namespace: Option<String>, call: F) -> Result<(), Box<dyn std::error::Error>>
where
    F: FnOnce(kube::Client, String) -> Fut,
    Fut: std::future::Future<Output = Result<String, Box<dyn std::error::Error>>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = kube::Client::try_default().await?;
        let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
        print!("{}", call(client, namespace).await?);
        Ok(())
    })
}

fn run(args: RunArgs) -> Result<(), Box<dyn std::error::Error>> {
    telemetry::init_logging(args.log_format);
    let identity = args.identity.filter(|i| !i.is_empty()).unwrap_or_else(|| {
        let suffix: u32 = rand::random();
        format!("hostwright-{suffix:08x}")
    });
    let options = hostwright::run::Options {
        metrics_addr: args.metrics_addr,
        health_addr: args.health_addr,
        cluster_reads: args.cluster_reads,
        initial_list: args.initial_list,
        leader_elect: args.leader_elect,
        lease_name: args.lease_name,
        lease_namespace: args.lease_namespace.filter(|n| !n.is_empty()),
        identity,
        namespace: args.namespace.filter(|n| !n.is_empty()),
        concurrency: args.concurrency,
        stores: hostwright::controllers::members::StoreSettings {
            agent_image: args.agent_image,
            certificate_lifetime: std::time::Duration::from_secs(args.certificate_lifetime_seconds),
            admin_networks: args.admin_networks.into_iter().filter(|n| !n.trim().is_empty()).collect(),
            metrics_scrapers: args
                .metrics_scrapers
                .filter(|s| !s.trim().is_empty())
                .map(|s| hostwright::resources::store_network::parse_selector(&s))
                .transpose()
                .map_err(|err| format!("--metrics-scrapers: {err}"))?,
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(hostwright::run::run(options))?;
    Ok(())
}

/// The agent binary, installed beside the operator's (both images and
/// builds hold the two side by side).
const AGENT_BINARY: &str = "hostwright-agent";

/// Replace this process with `<this binary's directory>/hostwright-agent
/// agent ARGS…`; returns only when that cannot be started.
fn exec_agent(args: Vec<OsString>) -> Result<(), Box<dyn std::error::Error>> {
    let exe = std::env::current_exe().map_err(|e| format!("locating this binary: {e}"))?;
    let agent = exe.with_file_name(AGENT_BINARY);
    let err = std::process::Command::new(&agent).arg("agent").args(args).exec();
    Err(format!(
        "running the agent binary {}: {err} (it must be installed beside {})",
        agent.display(),
        exe.display()
    )
    .into())
}

fn print_crds() -> Result<(), Box<dyn std::error::Error>> {
    let yaml = hostwright::api::crds_yaml()?;
    std::io::stdout().lock().write_all(yaml.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `hostwright agent …` hands everything after `agent` to the agent
    /// binary untouched, its own help flags included.
    #[test]
    fn the_agents_arguments_pass_through_verbatim() {
        let args = ["hostwright", "agent", "run", "--help", "--port", "5432", "-h"];
        let Command::Agent { args } = Cli::try_parse_from(args).expect("parses").command else {
            panic!("agent")
        };
        assert_eq!(args, ["run", "--help", "--port", "5432", "-h"]);
    }
}

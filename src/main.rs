//! The `hostwright` command line.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use hostwright::telemetry::{self, LogFormat};

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
    /// Print the CustomResourceDefinitions as YAML (what `crds/` holds).
    Crds,
    /// Print the version of this build.
    Version,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Address of the HTTP listener serving /metrics, /healthz and /readyz.
    #[arg(long, env = "HOSTWRIGHT_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Crds => print_crds(),
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

fn run(args: RunArgs) -> Result<(), Box<dyn std::error::Error>> {
    telemetry::init_logging(args.log_format);
    let identity = args.identity.filter(|i| !i.is_empty()).unwrap_or_else(|| {
        let suffix: u32 = rand::random();
        format!("hostwright-{suffix:08x}")
    });
    let options = hostwright::run::Options {
        metrics_addr: args.metrics_addr,
        leader_elect: args.leader_elect,
        lease_name: args.lease_name,
        lease_namespace: args.lease_namespace.filter(|n| !n.is_empty()),
        identity,
        namespace: args.namespace.filter(|n| !n.is_empty()),
        concurrency: args.concurrency,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(hostwright::run::run(options))?;
    Ok(())
}

fn print_crds() -> Result<(), Box<dyn std::error::Error>> {
    let yaml = hostwright::api::crds_yaml()?;
    std::io::stdout().lock().write_all(yaml.as_bytes())?;
    Ok(())
}

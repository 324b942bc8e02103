//! `hostwright-agent`: the in-pod agent beside each database server. A
//! binary of its own so that the operator maps none of its code (the
//! PostgreSQL and Redis drivers, the object store's client). Member pods
//! install it as `/controller/hostwright` and run `… agent run`; it starts
//! itself again as `agent watchdog`, `agent base-backup` and, through
//! PostgreSQL, `agent wal-push` and `agent wal-fetch`.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use hostwright::telemetry::{self, LogFormat};

/// The in-pod agent of the Hostwright operator.
#[derive(Parser, Debug)]
#[command(name = "hostwright-agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The in-pod agent beside each database server.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Print the version of this build.
    Version,
}

#[derive(Subcommand, Debug)]
enum AgentCommand {
    /// Copy this binary to PATH (an init container's job: the database image
    /// then runs the agent from a shared volume).
    Install { path: std::path::PathBuf },
    /// Supervise the database server of this member and carry out the
    /// operator's instructions.
    Run(Box<AgentArgs>),
    /// The agent's watchdog (started by `agent run`): kills the server's
    /// process group when the agent stops renewing its Lease.
    Watchdog,
    /// PostgreSQL's `archive_command`: archive one WAL file (`%p %f`).
    WalPush {
        /// The store configuration the agent wrote.
        #[arg(long)]
        config: std::path::PathBuf,
        path: std::path::PathBuf,
        name: String,
    },
    /// PostgreSQL's `restore_command`: restore one WAL file (`%f %p`).
    WalFetch {
        #[arg(long)]
        config: std::path::PathBuf,
        name: String,
        path: std::path::PathBuf,
    },
    /// One base backup of this member's server to the object store (the
    /// agent runs it when the operator asks; see `agent::base_backup`).
    BaseBackup {
        #[arg(long)]
        config: std::path::PathBuf,
        /// The encoded order (`contract::BackupOrder`).
        #[arg(long)]
        order: String,
        #[arg(long)]
        member: String,
        #[arg(long)]
        bin_dir: std::path::PathBuf,
        #[arg(long)]
        socket_dir: std::path::PathBuf,
        #[arg(long)]
        port: u16,
        /// Where the outcome (`contract::BackupReport`) is written.
        #[arg(long)]
        result: std::path::PathBuf,
    },
}

#[derive(Args, Debug)]
struct AgentArgs {
    /// Database engine: `postgres` (DatabaseMirror members) or `redis`
    /// (SessionStore members).
    #[arg(long, default_value = "postgres", value_parser = ["postgres", "redis"])]
    engine: String,
    /// The DatabaseMirror this member belongs to (for logs and metrics).
    #[arg(long)]
    database_mirror: Option<String>,
    /// The SessionStore this member belongs to (for logs and metrics).
    #[arg(long)]
    session_store: Option<String>,
    /// This member (its pod name).
    #[arg(long, env = "POD_NAME")]
    member: String,
    /// The uid of this member's pod: the agent acts on no other pod.
    #[arg(long, env = "POD_UID")]
    pod_uid: Option<String>,
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: String,
    #[arg(long)]
    data_dir: std::path::PathBuf,
    /// Settings file rendered from the instance template.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    #[arg(long, default_value = "/var/run/postgresql")]
    socket_dir: std::path::PathBuf,
    /// PostgreSQL's programs (`--engine postgres`).
    #[arg(long, default_value = "/usr/lib/postgresql/15/bin")]
    bin_dir: std::path::PathBuf,
    /// The Redis server (`--engine redis`). A bare name is looked up on
    /// PATH: the official image has it in /usr/local/bin, Debian in /usr/bin.
    #[arg(long, default_value = "redis-server")]
    redis_server: std::path::PathBuf,
    #[arg(long, default_value = "0.0.0.0")]
    listen_address: String,
    #[arg(long, default_value_t = 5432)]
    port: u16,
    /// Address other members reach this server at (default: the pod IP).
    #[arg(long, env = "POD_IP")]
    advertise_address: String,
    #[arg(long, default_value = "/etc/hostwright/credentials")]
    credentials_dir: std::path::PathBuf,
    /// The mounted TLS Secret (`tls.crt`, `tls.key`, `ca.crt`). Without
    /// it the server runs without TLS (an agent run by hand); the operator
    /// always passes it.
    #[arg(long)]
    tls_dir: Option<std::path::PathBuf>,
    /// Archive WAL to the S3-compatible object store at this URL (the
    /// DatabaseMirror's `spec.backup.objectStore`); no archiving without.
    #[arg(long, requires_all = ["archive_bucket", "archive_prefix", "archive_credentials_dir"])]
    archive_endpoint: Option<String>,
    #[arg(long)]
    archive_bucket: Option<String>,
    /// Key prefix of this database's files in the bucket.
    #[arg(long)]
    archive_prefix: Option<String>,
    #[arg(long, default_value = "us-east-1")]
    archive_region: String,
    /// The mounted Secret with the store's `access-key-id` and `secret-access-key`.
    #[arg(long)]
    archive_credentials_dir: Option<std::path::PathBuf>,
    /// The CA that verifies an `https` endpoint with a private certificate.
    #[arg(long)]
    archive_ca_file: Option<std::path::PathBuf>,
    /// Past this many bytes of WAL waiting for the store, a failed push
    /// lets its segment go unarchived (recording the gap) rather than let
    /// the volume fill.
    #[arg(long)]
    archive_max_pending_bytes: Option<u64>,
    /// Make the first primary from the base backups and WAL in this object
    /// store (the DatabaseMirror's `bootstrap.recovery.source`).
    #[arg(long, requires_all = ["recovery_bucket", "recovery_prefix", "recovery_credentials_dir"])]
    recovery_endpoint: Option<String>,
    #[arg(long)]
    recovery_bucket: Option<String>,
    #[arg(long)]
    recovery_prefix: Option<String>,
    #[arg(long, default_value = "us-east-1")]
    recovery_region: String,
    #[arg(long)]
    recovery_credentials_dir: Option<std::path::PathBuf>,
    #[arg(long)]
    recovery_ca_file: Option<std::path::PathBuf>,
    /// Recover up to this time (RFC 3339); the end of the archive without.
    #[arg(long)]
    recovery_target_time: Option<String>,
    /// Where the kubelet's liveness and readiness probes are answered.
    #[arg(long, default_value_t = std::net::SocketAddr::from(([0, 0, 0, 0], hostwright::contract::probes::PORT)))]
    probe_address: std::net::SocketAddr,
    /// When the agent runs as root (test beds), run the server as this user.
    #[arg(long)]
    run_as_user: Option<String>,
    #[arg(long, env = "HOSTWRIGHT_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    hostwright::tls::client::install_default_provider();
    let command = match Cli::parse().command {
        Command::Agent(command) => command,
        Command::Version => {
            println!("hostwright-agent {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
    };
    let result = match command {
        // PostgreSQL reads these exit codes (see agent::archive).
        AgentCommand::WalPush { config, path, name } => {
            return hostwright::agent::archive::push_command(&config, &path, &name);
        }
        AgentCommand::WalFetch { config, name, path } => {
            return hostwright::agent::archive::fetch_command(&config, &name, &path);
        }
        AgentCommand::BaseBackup { config, order, member, bin_dir, socket_dir, port, result } => {
            let Some(order) = hostwright::contract::decode_backup_order(&order) else {
                eprintln!("hostwright base-backup: unreadable order {order:?}");
                return ExitCode::FAILURE;
            };
            let source = hostwright::agent::base_backup::Source { member, bin_dir, socket_dir, port };
            return hostwright::agent::base_backup::command(&config, &order, &source, &result);
        }
        AgentCommand::Install { path } => install_agent(&path),
        AgentCommand::Run(args) => run_agent(*args),
        AgentCommand::Watchdog => {
            hostwright::agent::watchdog::run();
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hostwright-agent: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The database and owner the members' Secret names: the application's
/// user may reach that database and no other.
fn postgres_access(
    credentials: &std::path::Path,
) -> Result<hostwright::agent::postgres::Access, Box<dyn std::error::Error>> {
    use hostwright::contract::keys::credentials as files;
    let read = |key: &str| -> Result<String, Box<dyn std::error::Error>> {
        let path = credentials.join(key);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        Ok(text.trim().to_string())
    };
    Ok(hostwright::agent::postgres::Access {
        database: read(files::DATABASE)?,
        owner: read(files::USERNAME)?,
    })
}

fn install_agent(path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::copy(std::env::current_exe()?, path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn run_agent(args: AgentArgs) -> Result<(), Box<dyn std::error::Error>> {
    telemetry::init_logging(args.log_format);
    let run_as = match &args.run_as_user {
        Some(user) => Some(uid_gid(user)?),
        None => None,
    };
    let archiving = archiving(&args, &std::env::current_exe()?, run_as)?;
    let recovery = recovery(&args, &std::env::current_exe()?, run_as)?;
    let options = hostwright::agent::run::Options {
        advertise: format!("{}:{}", args.advertise_address, args.port),
        member: args.member.clone(),
        namespace: args.namespace,
        pod_uid: args.pod_uid.filter(|u| !u.is_empty()),
        run_as,
        binary: std::env::current_exe()?,
        probe_address: args.probe_address,
        settings_file: args.config.clone(),
        store: args.database_mirror.clone().or_else(|| args.session_store.clone()).unwrap_or_default(),
        kind: if args.engine == "redis" {
            hostwright::agent::metrics::SESSION_STORE
        } else {
            hostwright::agent::metrics::DATABASE_MIRROR
        },
    };
    tracing::info!(
        member = %options.member,
        database_mirror = ?args.database_mirror,
        session_store = ?args.session_store,
        engine = %args.engine,
        "agent starting"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // Copies private to the server's user, in the pod's own run directory.
    let tls = args
        .tls_dir
        .clone()
        .map(|dir| hostwright::agent::certificates::Certificates::new(dir, args.socket_dir.clone(), run_as));
    if args.engine == "redis" {
        let redis = hostwright::agent::redis::RedisMember {
            redis: hostwright::agent::redis::Redis {
                server_bin: args.redis_server,
                data_dir: args.data_dir,
                listen_address: args.listen_address,
                port: args.port,
                settings_file: args.config,
                run_as,
                socket_dir: args.socket_dir,
                tls,
            },
            credentials_dir: args.credentials_dir,
        };
        runtime.block_on(hostwright::agent::run::run(options, redis))?;
        return Ok(());
    }
    let postgres = hostwright::agent::postgres::PostgresMember {
        postgres: hostwright::agent::postgres::Postgres {
            bin_dir: args.bin_dir,
            data_dir: args.data_dir,
            socket_dir: args.socket_dir,
            listen_address: args.listen_address,
            port: args.port,
            settings_file: args.config,
            reloaded: Default::default(),
            application_name: args.member.replace('-', "_"),
            run_as,
            access: postgres_access(&args.credentials_dir)?,
            tls,
            archiving,
            recovery,
        },
        credentials_dir: args.credentials_dir,
    };
    runtime.block_on(hostwright::agent::run::run(options, postgres))?;
    Ok(())
}

/// With `--archive-endpoint`: the store configuration written into the run
/// directory for the archive processes PostgreSQL starts, readable by the
/// server's user.
fn archiving(
    args: &AgentArgs,
    agent: &std::path::Path,
    run_as: Option<(u32, u32)>,
) -> Result<Option<hostwright::agent::archive::Archiving>, Box<dyn std::error::Error>> {
    let (Some(endpoint), Some(bucket), Some(prefix), Some(credentials_dir)) =
        (&args.archive_endpoint, &args.archive_bucket, &args.archive_prefix, &args.archive_credentials_dir)
    else {
        return Ok(None);
    };
    let gap_file = args.data_dir.with_extension("archive-gap");
    let config = hostwright::backup::store::StoreConfig {
        endpoint: endpoint.clone(),
        bucket: bucket.clone(),
        prefix: prefix.clone(),
        region: args.archive_region.clone(),
        credentials_dir: credentials_dir.clone(),
        ca_file: args.archive_ca_file.clone(),
        max_pending_bytes: args.archive_max_pending_bytes,
        // On the member's volume, beside the data: a gap outlives the pod.
        gap_file: Some(gap_file.clone()),
    };
    let config_file = write_store_config(args, hostwright::agent::archive::CONFIG_FILE, &config, run_as)?;
    let gap_file = Some(gap_file);
    Ok(Some(hostwright::agent::archive::Archiving { agent: agent.to_path_buf(), config_file, gap_file }))
}

/// With `--recovery-endpoint`: the source store's configuration, written
/// into the run directory for `restore_command`, and the target.
fn recovery(
    args: &AgentArgs,
    agent: &std::path::Path,
    run_as: Option<(u32, u32)>,
) -> Result<Option<hostwright::agent::postgres::recovery::Recovery>, Box<dyn std::error::Error>> {
    let (Some(endpoint), Some(bucket), Some(prefix), Some(credentials_dir)) = (
        &args.recovery_endpoint,
        &args.recovery_bucket,
        &args.recovery_prefix,
        &args.recovery_credentials_dir,
    ) else {
        return Ok(None);
    };
    let config = hostwright::backup::store::StoreConfig {
        endpoint: endpoint.clone(),
        bucket: bucket.clone(),
        prefix: prefix.clone(),
        region: args.recovery_region.clone(),
        credentials_dir: credentials_dir.clone(),
        ca_file: args.recovery_ca_file.clone(),
        max_pending_bytes: None,
        gap_file: None,
    };
    let config_file = write_store_config(args, "recovery.json", &config, run_as)?;
    let target = args
        .recovery_target_time
        .as_deref()
        .map(hostwright::agent::postgres::recovery::Target::parse)
        .transpose()?;
    Ok(Some(hostwright::agent::postgres::recovery::Recovery {
        agent: agent.to_path_buf(),
        config_file,
        target,
    }))
}

/// Write a store configuration into the run directory as `name`, readable
/// by the server's user (the archive processes PostgreSQL starts read it).
fn write_store_config(
    args: &AgentArgs,
    name: &str,
    config: &hostwright::backup::store::StoreConfig,
    run_as: Option<(u32, u32)>,
) -> Result<std::path::PathBuf, Box<dyn std::error::Error>> {
    let config_file = args.socket_dir.join(name);
    hostwright::agent::archive::write_config(&config_file, config)?;
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(&config_file, Some(uid), Some(gid))?;
    }
    Ok(config_file)
}

/// uid and gid of a local user, via `id`.
fn uid_gid(user: &str) -> Result<(u32, u32), Box<dyn std::error::Error>> {
    let id = |flag: &str| -> Result<u32, Box<dyn std::error::Error>> {
        let out = std::process::Command::new("id").args([flag, user]).output()?;
        if !out.status.success() {
            return Err(format!("no local user {user:?}").into());
        }
        Ok(String::from_utf8(out.stdout)?.trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults a member pod relies on match the official images'
    /// layouts: PostgreSQL's Debian paths, and Redis found on PATH (the
    /// official image installs it in /usr/local/bin, Debian in /usr/bin).
    #[test]
    fn the_agents_server_defaults_fit_the_official_images() {
        let cli = Cli::try_parse_from([
            "hostwright-agent",
            "agent",
            "run",
            "--engine",
            "redis",
            "--member",
            "s-1",
            "--namespace",
            "n",
            "--data-dir",
            "/data",
            "--advertise-address",
            "10.0.0.1",
        ])
        .expect("parses");
        let Command::Agent(AgentCommand::Run(args)) = cli.command else { panic!("agent run") };
        assert_eq!(args.redis_server, std::path::PathBuf::from("redis-server"));
        assert_eq!(args.bin_dir, std::path::PathBuf::from("/usr/lib/postgresql/15/bin"));
    }
}

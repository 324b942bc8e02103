//! The Redis driver of `hostwright agent`: start a member's `redis-server` as
//! primary or replica, promote it, point it at another primary, stop it, and
//! read its replication offset.
//!
//! Redis copies a primary's data by itself once told `replicaof`, and a full
//! resync throws away whatever history a replica had. So cloning and
//! rewinding only record the member's role (see [`ROLE_FILE`]); the work is
//! in the config file written on every start and in `REPLICAOF` at run time.
//! Like PostgreSQL, the server is the agent's child: the agent learns of its
//! death at once, and a dead agent means a dead server.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use redis::{AsyncConnectionConfig, ConnectionAddr, FromRedisValue, IntoConnectionInfo, RedisConnectionInfo};
use tokio::process::{Child, Command};

use super::certificates::{Certificates, Installed};
use super::metrics::{RedisStats, Stats};
use super::plan::Endpoint;
use super::server::{Observed, Server, Start, shut_down};
use crate::contract::DataState;
use crate::contract::keys::credentials as credential_files;
use crate::contract::keys::redis_users;

/// The config file the agent writes into the data directory on every start.
pub const CONFIG_FILE: &str = "hostwright-redis.conf";
/// The server's pid file in the data directory.
pub const PID_FILE: &str = "redis-server.pid";

/// The member's last role, `primary` or `replica`, kept by the agent.
///
/// Redis has no control file saying how its data was left, yet the planner
/// must tell a former primary from an empty member: a former primary started
/// as a primary again (with whatever it did or did not persist) makes its
/// replicas resync from it, which wipes what they held. A former primary is
/// made to rejoin as a replica instead.
pub const ROLE_FILE: &str = "hostwright.role";

/// Every call to the server is bounded, so a hung server cannot hang the
/// agent's loop (and with it the Lease renewals that keep it from fencing).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const START_TIMEOUT: Duration = Duration::from_secs(60);
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(30);
/// Redis 7 waits up to `shutdown-timeout` (10 s by default) for lagging
/// replicas on SIGTERM; this leaves room for that and for a final save.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

/// Where a replica waiting for a primary points. Nothing can listen on port
/// 0, so it stays a read-only replica with nothing to copy (logging a refused
/// connection every second) until it is repointed. Started without
/// `replicaof` it would be a writable primary.
const NO_PRIMARY: (&str, u16) = ("127.0.0.1", 0);

/// Errors of the Redis driver, each naming the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis-server exited while starting ({status}); see its log")]
    Exited { status: std::process::ExitStatus },
    #[error("running {program}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Credentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} on {address}: {source}")]
    Command {
        command: &'static str,
        address: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("{command} on {address}: no answer within {after:?}")]
    Timeout { command: &'static str, address: String, after: Duration },
    #[error("redis-server did not answer PING within {0:?}")]
    StartTimeout(Duration),
    #[error("the server was still a replica {0:?} after REPLICAOF NO ONE")]
    PromoteTimeout(Duration),
    #[error("unreadable INFO replication: {0}")]
    Info(String),
}

/// Where and how one member's server runs.
#[derive(Clone, Debug)]
pub struct Redis {
    /// The `redis-server` binary.
    pub server_bin: PathBuf,
    pub data_dir: PathBuf,
    /// Address(es) the server listens on, as Redis's `bind` takes them
    /// (space-separated); the agent connects to the first.
    pub listen_address: String,
    pub port: u16,
    /// Settings rendered by the operator (`appendonly yes`, `maxmemory`, …),
    /// included before the agent's own so that the agent's win.
    pub settings_file: Option<PathBuf>,
    /// When the agent runs as root (test beds), run the server as this uid/gid.
    pub run_as: Option<(u32, u32)>,
    /// A directory private to the pod: the unix socket the agent
    /// administers the server through, and the certificate copies.
    pub socket_dir: PathBuf,
    /// The server's certificate (None: no TLS, for an agent run by hand).
    pub tls: Option<Certificates>,
}

/// The passwords of the server's ACL users (see
/// [`crate::contract::keys::redis_users`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Users {
    pub app: String,
    pub replication: String,
    pub agent: String,
}

// Passwords print redacted: a log line or an error never carries one.
impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Users { <redacted> }")
    }
}

/// The unix socket in the pod the agent administers its server through.
const SOCKET: &str = "redis.sock";

/// The member's role as [`ROLE_FILE`] records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

/// What the data directory holds, from [`ROLE_FILE`]'s contents. Anything
/// but `replica` counts as a former primary: rejoining through a full
/// resync is safe, starting a former primary as an empty one is not.
pub fn role_state(marker: &str) -> DataState {
    match marker.trim() {
        "replica" => DataState::Standby,
        _ => DataState::Primary,
    }
}

/// What `INFO replication` says: a replica or not, the replication offset
/// and whether the link to its primary is up.
///
/// A replica's offset is what it has processed, which is what it acks and
/// what `WAIT` counts, so "the highest position wins" never drops a write a
/// client confirmed with `WAIT`. Before its first sync a replica reports 1
/// (Redis 7.0) or a negative offset; no command is one byte long, so either
/// means nothing was processed and counts as 0 — below a replica that
/// synced a primary's dataset at offset 0.
pub fn parse_replication(info: &str) -> Result<Observed, RedisError> {
    let field = |name: &str| info_field(info, name);
    let replica = match field("role") {
        Some("master") => false,
        Some("slave") => true,
        other => return Err(RedisError::Info(format!("role {other:?}"))),
    };
    let key = if replica { "slave_repl_offset" } else { "master_repl_offset" };
    let value = field(key).ok_or_else(|| RedisError::Info(format!("no {key}")))?;
    let offset: i64 = value.parse().map_err(|_| RedisError::Info(format!("{key}:{value}")))?;
    let offset = u64::try_from(offset).unwrap_or(0);
    Ok(Observed {
        replica,
        position: if replica && offset == 1 { 0 } else { offset },
        streaming: replica && field("master_link_status") == Some("up"),
        archive: None,
    })
}

/// The value of `name` in `INFO` text (`name:value` lines).
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| line.trim_end().strip_prefix(name)?.strip_prefix(':'))
}

/// What the metrics want of `INFO` (all default sections), with
/// `min-replicas-to-write` as the server runs it:
///
/// - memory (`used_memory`), clients (`connected_clients`, less the
///   agent's own connection), keys (every `dbN:keys=…`), commands
///   processed (`total_commands_processed`);
/// - on a replica, the lag: bytes read from the primary and not yet
///   processed; seconds since it last heard from the primary while bytes
///   are pending (`master_last_io_seconds_ago`), 0 when none are, and
///   since the link dropped while it is down;
/// - on a primary, whether writes are refused for want of replicas
///   (`min_slaves_good_slaves` below `min-replicas-to-write`).
pub fn parse_stats(info: &str, min_replicas_to_write: u32) -> Result<Stats, RedisError> {
    let number = |name: &str| -> Result<i64, RedisError> {
        let value = info_field(info, name).ok_or_else(|| RedisError::Info(format!("no {name}")))?;
        value.parse().map_err(|_| RedisError::Info(format!("{name}:{value}")))
    };
    let optional = |name: &str| info_field(info, name).and_then(|v| v.parse::<i64>().ok());
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    let clients = count(number("connected_clients")? - 1);
    let redis =
        RedisStats { memory_bytes: count(number("used_memory")?), clients, keys: keyspace_keys(info) };
    let replica = info_field(info, "role") == Some("slave");
    let (mut lag_bytes, mut lag_seconds) = (None, None);
    if replica {
        let processed = number("slave_repl_offset")?;
        let read = optional("slave_read_repl_offset").unwrap_or(number("master_repl_offset")?);
        let pending = count(read - processed);
        lag_bytes = Some(pending);
        let seconds = match info_field(info, "master_link_status") {
            Some("up") if pending == 0 => Some(0),
            Some("up") => optional("master_last_io_seconds_ago"),
            _ => optional("master_link_down_since_seconds"),
        };
        lag_seconds = seconds.filter(|s| *s >= 0).map(|s| s as f64);
    }
    let good = optional("min_slaves_good_slaves");
    let short = !replica && good.is_some_and(|good| good < i64::from(min_replicas_to_write));
    Ok(Stats {
        connections: Some(clients),
        commands: Some(count(number("total_commands_processed")?)),
        lag_bytes,
        lag_seconds,
        short_of_replicas: short,
        redis: Some(redis),
        ..Stats::default()
    })
}

/// Keys over every database of `INFO keyspace` (`db0:keys=3,expires=0,…`).
fn keyspace_keys(info: &str) -> u64 {
    info.lines()
        .filter_map(|line| {
            let (db, rest) = line.trim_end().split_once(':')?;
            let index = db.strip_prefix("db")?;
            if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            rest.split(',').find_map(|kv| kv.strip_prefix("keys="))?.parse::<u64>().ok()
        })
        .sum()
}

/// `min-replicas-to-write` as the settings file sets it (0 when it does not).
pub fn configured_min_replicas(settings: &str) -> u32 {
    settings
        .lines()
        .filter_map(|l| l.trim().strip_prefix("min-replicas-to-write"))
        .filter_map(|v| v.trim().parse().ok())
        .next_back()
        .unwrap_or(0)
}

/// A value as Redis's config parser reads a double-quoted string.
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The host the agent connects to: the first listen address, with loopback
/// for a wildcard one.
pub fn client_host(listen_address: &str) -> String {
    let first = listen_address.split_whitespace().next().unwrap_or("127.0.0.1");
    match first.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) if ip.is_unspecified() => "127.0.0.1".into(),
        Ok(IpAddr::V6(ip)) if ip.is_unspecified() => "::1".into(),
        _ => first.into(),
    }
}

/// Run one command on a fresh connection to `host:port`, authenticated with
/// `password` when given, within `timeout` for connecting and answering
/// together. How the operator checks an external session store.
pub async fn command<T: FromRedisValue>(
    host: &str,
    port: u16,
    password: Option<&str>,
    command: &'static str,
    args: &[&str],
    timeout: Duration,
) -> Result<T, RedisError> {
    let mut settings = RedisConnectionInfo::default();
    if let Some(password) = password.filter(|p| !p.is_empty()) {
        settings = settings.set_password(password);
    }
    run_command(ConnectionAddr::Tcp(host.to_string(), port), settings, command, args, timeout).await
}

/// [`command`] over a unix socket, as an ACL user.
async fn local_command<T: FromRedisValue>(
    socket: &Path,
    user: &str,
    password: &str,
    command: &'static str,
    args: &[&str],
    timeout: Duration,
) -> Result<T, RedisError> {
    let settings = RedisConnectionInfo::default().set_username(user).set_password(password);
    run_command(ConnectionAddr::Unix(socket.to_path_buf()), settings, command, args, timeout).await
}

async fn run_command<T: FromRedisValue>(
    addr: ConnectionAddr,
    settings: RedisConnectionInfo,
    command: &'static str,
    args: &[&str],
    timeout: Duration,
) -> Result<T, RedisError> {
    let address = addr.to_string();
    let mut cmd = redis::cmd(command);
    cmd.arg(args);
    let work = async {
        // CLIENT SETINFO, which the crate sends by default, is Redis 7.2's.
        let settings = settings.set_skip_set_lib_name();
        let client = redis::Client::open(addr.into_connection_info()?.set_redis_settings(settings))?;
        // The outer timeout bounds the whole call; the crate's own
        // defaults (0.5 s per answer) would cut WAIT short.
        let config = AsyncConnectionConfig::new().set_connection_timeout(None).set_response_timeout(None);
        let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
        cmd.query_async::<T>(&mut conn).await
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(RedisError::Command { command, address, source }),
        Err(_) => Err(RedisError::Timeout { command, address, after: timeout }),
    }
}

/// The server's config file.
///
/// Redis keeps the last value of a directive, so the order is: defaults the
/// operator's settings may override, the settings, then what the agent relies
/// on. The one default is `save ""`: a session store is rebuilt from its
/// replicas, and RDB snapshots every few minutes cost a fork each. Settings
/// that want snapshots say `save …` (the first `save` line of a file resets
/// the rules, so theirs replace ours) or `appendonly yes`.
pub fn render_config(redis: &Redis, users: &Users, tls: Option<&Installed>, start: Start<'_>) -> String {
    let mut conf = String::from("# Written by hostwright agent on every start.\nsave \"\"\n");
    if let Some(settings) = &redis.settings_file {
        let _ = writeln!(conf, "include {}", quote(&settings.to_string_lossy()));
    }
    let bind: Vec<String> = redis.listen_address.split_whitespace().map(quote).collect();
    let _ = writeln!(conf, "bind {}", bind.join(" "));
    match tls {
        // TLS only: a plaintext connection finds no port to talk to.
        Some(files) => {
            let _ = writeln!(conf, "port 0\ntls-port {}", redis.port);
            let _ = writeln!(conf, "tls-cert-file {}", quote(&files.cert.to_string_lossy()));
            let _ = writeln!(conf, "tls-key-file {}", quote(&files.key.to_string_lossy()));
            let _ = writeln!(conf, "tls-ca-cert-file {}", quote(&files.ca.to_string_lossy()));
            // Clients prove who they are by ACL password, not certificate;
            // replicas verify their primary's certificate against the CA.
            conf.push_str("tls-auth-clients no\ntls-replication yes\ntls-protocols \"TLSv1.2 TLSv1.3\"\n");
        }
        None => {
            let _ = writeln!(conf, "port {}", redis.port);
        }
    }
    let socket = redis.socket_dir.join(SOCKET);
    let _ = writeln!(conf, "unixsocket {}\nunixsocketperm 700", quote(&socket.to_string_lossy()));
    let _ = writeln!(conf, "dir {}", quote(&redis.data_dir.to_string_lossy()));
    // Redis retitles its process to its address; the pid file is how an
    // outside observer (a test bed killing "the server") finds it.
    let pidfile = redis.data_dir.join(PID_FILE);
    let _ = writeln!(conf, "pidfile {}", quote(&pidfile.to_string_lossy()));
    conf.push_str("daemonize no\nprotected-mode yes\n");
    conf.push_str(&acl_users(users));
    let _ = writeln!(conf, "masteruser {}", quote(redis_users::REPLICATION));
    let _ = writeln!(conf, "masterauth {}", quote(&users.replication));
    // A full resync streams the RDB straight to the replica, at once: the
    // default 5 s delay would slow every rejoin.
    conf.push_str(
        "replica-read-only yes\nreplica-serve-stale-data yes\n\
         repl-diskless-sync yes\nrepl-diskless-sync-delay 0\n",
    );
    match start {
        Start::Primary => conf.push_str("replicaof no one\n"),
        Start::Replica(primary) => {
            let (host, port) = primary.map_or(NO_PRIMARY, |p| (p.host.as_str(), p.port));
            let _ = writeln!(conf, "replicaof {} {port}", quote(host));
        }
    }
    conf
}

/// The ACL users: nobody as `default`; the application may run data
/// commands only (no `CONFIG`, `REPLICAOF`, `SHUTDOWN`, `DEBUG`, `KEYS`…:
/// the `@admin` and `@dangerous` categories); replicas may only sync; the
/// agent, over the pod's unix socket, may do anything.
fn acl_users(users: &Users) -> String {
    let secret = |password: &str| quote(&format!(">{password}"));
    format!(
        "user default off resetkeys resetchannels -@all\n\
         user {app} on {} ~* &* +@all -@admin -@dangerous\n\
         user {replication} on {} +psync +replconf +ping\n\
         user {agent} on {} ~* &* +@all\n",
        secret(&users.app),
        secret(&users.replication),
        secret(&users.agent),
        app = redis_users::APP,
        replication = redis_users::REPLICATION,
        agent = redis_users::AGENT,
    )
}

/// Write `tmp` (mode 0600, owned by `run_as`), flush it, and rename it to
/// `path`, so a crash leaves the old file or the new one, never half of one.
fn replace_file(tmp: &Path, path: &Path, contents: &str, run_as: Option<(u32, u32)>) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    // A leftover from a crash may carry other permissions; start afresh.
    let _ = std::fs::remove_file(tmp);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(tmp)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(tmp, Some(uid), Some(gid))?;
    }
    std::fs::rename(tmp, path)
}

impl Redis {
    /// Run one command on this server (see [`command`]), within [`CALL_TIMEOUT`].
    pub async fn call<T: FromRedisValue>(
        &self,
        password: &str,
        command_name: &'static str,
        args: &[&str],
    ) -> Result<T, RedisError> {
        let socket = self.socket_dir.join(SOCKET);
        local_command(&socket, redis_users::AGENT, password, command_name, args, CALL_TIMEOUT).await
    }

    /// Install a renewed certificate and have the running server switch to
    /// it (Redis reloads its TLS context on `CONFIG SET tls-*`).
    pub async fn refresh_certificates(&self, password: &str) -> Result<bool, RedisError> {
        let Some(tls) = &self.tls else { return Ok(false) };
        let fresh = tls.refresh().map_err(|source| RedisError::Write { path: tls.source.clone(), source })?;
        let Some(files) = fresh else { return Ok(false) };
        let (cert, key) = (files.cert.to_string_lossy(), files.key.to_string_lossy());
        let loaded =
            self.call::<()>(password, "CONFIG", &["SET", "tls-cert-file", &cert, "tls-key-file", &key]).await;
        if loaded.is_err() {
            // Tried again on the next tick, not only at the next renewal.
            tls.forget();
        }
        loaded.map(|()| true)
    }

    /// See [`parse_replication`].
    pub async fn observe(&self, password: &str) -> Result<Observed, RedisError> {
        let info: String = self.call(password, "INFO", &["replication"]).await?;
        parse_replication(&info)
    }

    /// See [`parse_stats`]; and the serving certificate's expiry.
    pub async fn stats(&self, password: &str) -> Result<Stats, RedisError> {
        let info: String = self.call(password, "INFO", &[]).await?;
        let (_, min): (String, String) =
            self.call(password, "CONFIG", &["GET", "min-replicas-to-write"]).await?;
        let mut stats = parse_stats(&info, min.parse().unwrap_or(0))?;
        stats.certificate_expiry = self.tls.as_ref().and_then(Certificates::expiry);
        Ok(stats)
    }

    /// The data directory exists and belongs to the server's user.
    async fn ensure_data_dir(&self) -> Result<(), RedisError> {
        let write_err = |source| RedisError::Write { path: self.data_dir.clone(), source };
        tokio::fs::create_dir_all(&self.data_dir).await.map_err(write_err)?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&self.data_dir, Some(uid), Some(gid)).map_err(write_err)?;
        }
        Ok(())
    }

    /// Replace `name` in the data directory atomically (write, then rename),
    /// readable by the server's user only: the config file holds the password.
    async fn write_private(&self, name: &str, contents: &str) -> Result<(), RedisError> {
        self.ensure_data_dir().await?;
        let path = self.data_dir.join(name);
        let tmp = self.data_dir.join(format!(".{name}.tmp"));
        let (target, contents, run_as) = (path.clone(), contents.to_owned(), self.run_as);
        let written = tokio::task::spawn_blocking(move || replace_file(&tmp, &target, &contents, run_as))
            .await
            .unwrap_or_else(|join| Err(std::io::Error::other(join)));
        written.map_err(|source| RedisError::Write { path, source })
    }

    /// Record the member's role in [`ROLE_FILE`].
    pub async fn write_role(&self, role: Role) -> Result<(), RedisError> {
        self.write_private(ROLE_FILE, &format!("{}\n", role.as_str())).await
    }

    /// The role [`ROLE_FILE`] records; [`DataState::Empty`] without one.
    pub async fn data_state(&self) -> DataState {
        match tokio::fs::read_to_string(self.data_dir.join(ROLE_FILE)).await {
            Ok(marker) => role_state(&marker),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => DataState::Empty,
            // Unreadable: the cautious answer, as for an unknown marker.
            Err(_) => DataState::Primary,
        }
    }

    /// Write the config, start the server as `start` says and wait until it
    /// answers PING.
    pub async fn start(&self, users: &Users, start: Start<'_>) -> Result<Child, RedisError> {
        let role = match start {
            Start::Primary => Role::Primary,
            Start::Replica(_) => Role::Replica,
        };
        self.write_role(role).await?;
        let tls = match &self.tls {
            Some(tls) => {
                let write_err = |source| RedisError::Write { path: tls.source.clone(), source };
                tls.refresh().map_err(write_err)?;
                tls.installed()
            }
            None => None,
        };
        self.write_private(CONFIG_FILE, &render_config(self, users, tls.as_ref(), start)).await?;
        let password = users.agent.as_str();

        let mut cmd = Command::new(&self.server_bin);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd
            .arg(self.data_dir.join(CONFIG_FILE))
            .current_dir(&self.data_dir)
            // A group of its own, so the watchdog kills all of it.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| RedisError::Spawn { program: self.server_bin.clone(), source })?;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            // Loading a large dataset answers -LOADING: not ready yet.
            if self.call::<String>(password, "PING", &[]).await.is_ok() {
                return Ok(child);
            }
            // A server that failed at once (port in use, bad settings) must
            // not hold the agent's loop, and its lease, for a minute.
            if let Ok(Some(status)) = child.try_wait() {
                return Err(RedisError::Exited { status });
            }
            if tokio::time::Instant::now() > deadline {
                return Err(RedisError::StartTimeout(START_TIMEOUT));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Make the running replica a primary; returns once it says it is one.
    pub async fn promote(&self, password: &str) -> Result<(), RedisError> {
        // The marker first: if promotion half happens, a former primary
        // rejoins by full resync, which is safe; the reverse is not.
        self.write_role(Role::Primary).await?;
        self.call::<()>(password, "REPLICAOF", &["NO", "ONE"]).await?;
        let deadline = tokio::time::Instant::now() + PROMOTE_TIMEOUT;
        while self.observe(password).await?.replica {
            if tokio::time::Instant::now() > deadline {
                return Err(RedisError::PromoteTimeout(PROMOTE_TIMEOUT));
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    /// Follow `primary` instead, in place: a replica that shares history with
    /// it resyncs partially, any other fully. None: drop the link and stay a
    /// read-only replica of nobody, keeping what it has.
    pub async fn repoint(&self, password: &str, primary: Option<&Endpoint>) -> Result<(), RedisError> {
        let (host, port) = primary.map_or(NO_PRIMARY, |p| (p.host.as_str(), p.port));
        let port = port.to_string();
        self.call::<()>(password, "REPLICAOF", &[host, &port]).await?;
        self.write_role(Role::Replica).await
    }

    /// Stop taking writes, note the final offset (a primary's), then SIGTERM:
    /// Redis lets lagging replicas catch up (`shutdown-timeout`), saves if
    /// persistence is configured, and exits. Killed after [`STOP_TIMEOUT`].
    pub async fn stop(&self, password: &str, server: &mut Child) -> Result<Option<u64>, RedisError> {
        let pause = STOP_TIMEOUT.as_millis().to_string();
        let paused = self.call::<()>(password, "CLIENT", &["PAUSE", &pause, "WRITE"]).await.is_ok();
        let last = match self.observe(password).await {
            Ok(o) if paused && !o.replica => Some(o.position),
            _ => None,
        };
        let clean = shut_down(server, libc::SIGTERM, STOP_TIMEOUT).await;
        Ok(last.filter(|_| clean))
    }

    /// `min-replicas-to-write`: 0 while relaxed, else what the settings say.
    pub async fn set_relaxed(&self, password: &str, relaxed: bool) -> Result<(), RedisError> {
        let configured = match &self.settings_file {
            Some(path) => configured_min_replicas(&tokio::fs::read_to_string(path).await.unwrap_or_default()),
            None => 0,
        };
        let value = if relaxed { 0 } else { configured }.to_string();
        self.call::<()>(password, "CONFIG", &["SET", "min-replicas-to-write", &value]).await
    }
}

/// A Redis member as the agent drives it: the server, and the credentials
/// files the pod's Secret is mounted as.
#[derive(Clone, Debug)]
pub struct RedisMember {
    pub redis: Redis,
    /// Directory of the members' Secret (the ACL users' passwords).
    pub credentials_dir: PathBuf,
}

impl RedisMember {
    /// One of the members' passwords, read on every use so a rotated
    /// Secret is picked up on the next start.
    async fn secret(&self, key: &str) -> Result<String, RedisError> {
        let path = self.credentials_dir.join(key);
        match tokio::fs::read_to_string(&path).await {
            Ok(password) => Ok(password.trim().to_string()),
            Err(source) => Err(RedisError::Credentials { path, source }),
        }
    }

    /// The agent's own password.
    async fn password(&self) -> Result<String, RedisError> {
        self.secret(credential_files::SUPERUSER_PASSWORD).await
    }

    async fn users(&self) -> Result<Users, RedisError> {
        Ok(Users {
            app: self.secret(credential_files::APP_PASSWORD).await?,
            replication: self.secret(credential_files::REPLICATION_PASSWORD).await?,
            agent: self.password().await?,
        })
    }

    /// Run one command on the member's server (see [`Redis::call`]).
    pub async fn call<T: FromRedisValue>(
        &self,
        command: &'static str,
        args: &[&str],
    ) -> Result<T, RedisError> {
        self.redis.call(&self.password().await?, command, args).await
    }
}

impl Server for RedisMember {
    type Error = RedisError;

    async fn data_state(&self) -> DataState {
        self.redis.data_state().await
    }

    /// Only with persistence on disk: an append-only file or a snapshot.
    async fn keeps_data(&self) -> bool {
        let dir = &self.redis.data_dir;
        tokio::fs::try_exists(dir.join("appendonlydir")).await.unwrap_or(false)
            || tokio::fs::try_exists(dir.join("dump.rdb")).await.unwrap_or(false)
    }

    fn marker_path(&self) -> PathBuf {
        self.redis.data_dir.join("hostwright.state")
    }

    async fn observe(&self) -> Result<Observed, RedisError> {
        self.redis.observe(&self.password().await?).await
    }

    async fn stats(&self) -> Result<Stats, RedisError> {
        self.redis.stats(&self.password().await?).await
    }

    /// Nothing to create: an empty Redis is a new primary.
    async fn initialize(&self) -> Result<(), RedisError> {
        self.redis.write_role(Role::Primary).await
    }

    /// Redis copies the primary's data itself once started as its replica.
    async fn clone_from(&self, _primary: &Endpoint) -> Result<(), RedisError> {
        self.redis.write_role(Role::Replica).await
    }

    async fn start(&self, start: Start<'_>) -> Result<Child, RedisError> {
        self.redis.start(&self.users().await?, start).await
    }

    async fn promote(&self) -> Result<(), RedisError> {
        self.redis.promote(&self.password().await?).await
    }

    /// A diverged former primary cannot partially resync from the new one
    /// (its history is not the new primary's), so starting it as a replica
    /// discards that history by full resync.
    async fn rewind(&self, _primary: &Endpoint) -> Result<(), RedisError> {
        self.redis.write_role(Role::Replica).await
    }

    async fn repoint(
        &self,
        server: &mut Option<Child>,
        primary: Option<&Endpoint>,
    ) -> Result<(), RedisError> {
        match server {
            Some(_) => self.redis.repoint(&self.password().await?, primary).await,
            None => {
                *server = Some(self.redis.start(&self.users().await?, Start::Replica(primary)).await?);
                Ok(())
            }
        }
    }

    /// Every setting of a SessionStore is part of its members' revision:
    /// new settings arrive with new pods, never on a running server.
    async fn reload_settings(&self, _file: &Path) -> Result<Result<(), String>, RedisError> {
        Ok(Err("a SessionStore's settings change only by replacing its members".into()))
    }

    async fn stop(&self, server: &mut Child) -> Result<Option<u64>, RedisError> {
        // Without the password the server can still be stopped, not paused.
        let password = self.password().await.unwrap_or_default();
        self.redis.stop(&password, server).await
    }

    async fn set_relaxed(&self, relaxed: bool) -> Result<(), RedisError> {
        self.redis.set_relaxed(&self.password().await?, relaxed).await
    }

    async fn refresh_certificates(&self) -> Result<bool, RedisError> {
        self.redis.refresh_certificates(&self.password().await?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis(settings: Option<&str>) -> Redis {
        Redis {
            server_bin: "/usr/bin/redis-server".into(),
            data_dir: "/data/my redis".into(),
            listen_address: "0.0.0.0".into(),
            port: 6379,
            settings_file: settings.map(PathBuf::from),
            run_as: None,
            socket_dir: "/run/redis".into(),
            tls: None,
        }
    }

    fn users() -> Users {
        Users { app: "a pw".into(), replication: "r".into(), agent: "s3cret".into() }
    }

    fn installed() -> Installed {
        Installed {
            cert: "/run/redis/tls-1.crt".into(),
            key: "/run/redis/tls-1.key".into(),
            ca: "/run/redis/tls-ca.crt".into(),
            version: "1".into(),
        }
    }

    #[test]
    fn a_primary_reports_its_write_offset() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:1\r\n\
                    slave0:ip=10.0.0.2,port=6379,state=online,offset=1234,lag=0\r\n\
                    master_replid:abc\r\nmaster_repl_offset:1234\r\nsecond_repl_offset:-1\r\n";
        assert_eq!(
            parse_replication(info).unwrap(),
            Observed { replica: false, position: 1234, streaming: false, archive: None }
        );
    }

    #[test]
    fn a_replica_reports_what_it_processed() {
        let info = "# Replication\r\nrole:slave\r\nmaster_host:10.0.0.1\r\nmaster_port:6379\r\n\
                    master_link_status:up\r\n\
                    slave_read_repl_offset:2000\r\nslave_repl_offset:1900\r\nmaster_repl_offset:1900\r\n";
        assert_eq!(
            parse_replication(info).unwrap(),
            Observed { replica: true, position: 1900, streaming: true, archive: None }
        );
    }

    #[test]
    fn a_replica_that_never_synced_kept_nothing() {
        for offset in ["1", "0", "-1"] {
            let info = format!("role:slave\nmaster_link_status:down\nslave_repl_offset:{offset}\n");
            let o = parse_replication(&info).unwrap();
            assert_eq!((o.replica, o.position, o.streaming), (true, 0, false), "{offset}");
        }
        assert_eq!(parse_replication("role:master\nmaster_repl_offset:0\n").unwrap().position, 0);
    }

    #[test]
    fn unreadable_replication_info_is_an_error() {
        assert!(parse_replication("").is_err());
        assert!(parse_replication("role:sentinel\n").is_err());
        assert!(parse_replication("role:master\n").is_err());
        assert!(parse_replication("role:master\nmaster_repl_offset:lots\n").is_err());
        // A longer key sharing the prefix is not the field.
        assert!(parse_replication("role:master\nmaster_repl_offset_x:5\n").is_err());
    }

    /// `INFO` of a Redis 7.0 primary, trimmed to what matters.
    const PRIMARY_INFO: &str = "# Clients\r\nconnected_clients:4\r\nblocked_clients:0\r\n\
        # Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n\
        # Stats\r\ntotal_connections_received:9\r\ntotal_commands_processed:321\r\n\
        # Replication\r\nrole:master\r\nconnected_slaves:1\r\nmin_slaves_good_slaves:1\r\n\
        master_repl_offset:5000\r\n\
        # Keyspace\r\ndb0:keys=100,expires=3,avg_ttl=0\r\ndb3:keys=5,expires=0,avg_ttl=0\r\n";

    fn replica_info(link: &str, read: i64, processed: i64) -> String {
        format!(
            "connected_clients:2\r\nused_memory:2048\r\ntotal_commands_processed:7\r\n\
             role:slave\r\nmaster_link_status:{link}\r\nmaster_last_io_seconds_ago:4\r\n\
             master_link_down_since_seconds:-1\r\nslave_read_repl_offset:{read}\r\n\
             slave_repl_offset:{processed}\r\nmaster_repl_offset:{processed}\r\n"
        )
    }

    #[test]
    fn a_primary_reports_memory_clients_keys_and_commands() {
        let stats = parse_stats(PRIMARY_INFO, 1).unwrap();
        assert_eq!(stats.redis, Some(RedisStats { memory_bytes: 1 << 20, clients: 3, keys: 105 }));
        assert_eq!((stats.connections, stats.commands), (Some(3), Some(321)));
        assert_eq!((stats.lag_bytes, stats.lag_seconds), (None, None), "a primary lags nobody");
        assert!(!stats.short_of_replicas);
        assert!(parse_stats(PRIMARY_INFO, 2).unwrap().short_of_replicas, "one good replica of two wanted");
        let no_rule = PRIMARY_INFO.replace("min_slaves_good_slaves:1\r\n", "");
        assert!(!parse_stats(&no_rule, 2).unwrap().short_of_replicas, "no max lag: Redis refuses nothing");
    }

    #[test]
    fn a_replicas_lag_is_what_it_read_and_has_not_processed() {
        let caught_up = parse_stats(&replica_info("up", 900, 900), 0).unwrap();
        assert_eq!((caught_up.lag_bytes, caught_up.lag_seconds), (Some(0), Some(0.0)));
        let behind = parse_stats(&replica_info("up", 1000, 900), 0).unwrap();
        assert_eq!((behind.lag_bytes, behind.lag_seconds), (Some(100), Some(4.0)));
        let down = replica_info("down", 900, 900).replace("since_seconds:-1", "since_seconds:30");
        assert_eq!(parse_stats(&down, 0).unwrap().lag_seconds, Some(30.0), "since the link dropped");
        let never = parse_stats(&replica_info("down", 0, 0), 0).unwrap();
        assert_eq!(never.lag_seconds, None, "never linked: unknown");
        assert!(!parse_stats(&replica_info("up", 900, 900), 5).unwrap().short_of_replicas);
        let redis6 = replica_info("up", 1000, 900).replace("slave_read_repl_offset:1000\r\n", "");
        assert_eq!(
            parse_stats(&redis6, 0).unwrap().lag_bytes,
            Some(0),
            "no read offset: nothing known pending"
        );
    }

    #[test]
    fn keys_are_counted_over_every_database_and_nothing_else() {
        assert_eq!(keyspace_keys("db0:keys=2,expires=0\r\ndb15:keys=3,expires=1\r\n"), 5);
        assert_eq!(keyspace_keys("dbfoo:keys=9\r\ndb:keys=9\r\nrdb_changes_since_last_save:keys=9\r\n"), 0);
        assert_eq!(keyspace_keys("# Keyspace\r\n"), 0);
    }

    #[test]
    fn unreadable_stats_are_an_error() {
        assert!(parse_stats("", 0).is_err());
        assert!(parse_stats(&PRIMARY_INFO.replace("used_memory:1048576", "used_memory:lots"), 0).is_err());
    }

    #[test]
    fn the_marker_tells_a_replica_from_a_former_primary() {
        assert_eq!(role_state("replica\n"), DataState::Standby);
        assert_eq!(role_state("primary\n"), DataState::Primary);
        assert_eq!(role_state("garbage"), DataState::Primary);
    }

    #[test]
    fn relaxing_restores_what_the_settings_say() {
        assert_eq!(
            configured_min_replicas("appendonly no\nmin-replicas-to-write 1\nmin-replicas-max-lag 10\n"),
            1
        );
        assert_eq!(configured_min_replicas("appendonly no\n"), 0);
    }

    #[test]
    fn values_are_quoted_for_the_config_parser() {
        assert_eq!(quote("plain"), "\"plain\"");
        assert_eq!(quote("it's \"x\" \\ y"), "\"it's \\\"x\\\" \\\\ y\"");
        assert_eq!(quote("a\nb"), "\"a\\x0ab\"");
    }

    #[test]
    fn the_agent_connects_to_loopback_for_a_wildcard_address() {
        assert_eq!(client_host("0.0.0.0"), "127.0.0.1");
        assert_eq!(client_host("::"), "::1");
        assert_eq!(client_host("10.1.2.3 ::1"), "10.1.2.3");
        assert_eq!(client_host(""), "127.0.0.1");
    }

    #[test]
    fn settings_come_between_the_defaults_and_what_the_agent_relies_on() {
        let conf = render_config(
            &redis(Some("/etc/redis/settings.conf")),
            &users(),
            Some(&installed()),
            Start::Primary,
        );
        let lines: Vec<&str> = conf.lines().collect();
        let at = |line: &str| lines.iter().position(|l| *l == line).unwrap();
        assert!(at("save \"\"") < at("include \"/etc/redis/settings.conf\""));
        assert!(at("include \"/etc/redis/settings.conf\"") < at("bind \"0.0.0.0\""));
        for line in [
            "port 0",
            "tls-port 6379",
            "tls-cert-file \"/run/redis/tls-1.crt\"",
            "tls-replication yes",
            "tls-auth-clients no",
            "unixsocket \"/run/redis/redis.sock\"",
            "unixsocketperm 700",
            "dir \"/data/my redis\"",
            "daemonize no",
            "protected-mode yes",
            "user default off resetkeys resetchannels -@all",
            "user app on \">a pw\" ~* &* +@all -@admin -@dangerous",
            "user replicator on \">r\" +psync +replconf +ping",
            "user hostwright on \">s3cret\" ~* &* +@all",
            "masteruser \"replicator\"",
            "masterauth \"r\"",
            "repl-diskless-sync-delay 0",
            "replicaof no one",
        ] {
            assert!(at(line) > at("include \"/etc/redis/settings.conf\""), "{line}");
        }
    }

    #[test]
    fn a_replica_follows_its_primary_or_waits_read_only() {
        let primary = Endpoint { member: "s-1".into(), host: "10.0.0.1".into(), port: 6380, lineage: None };
        let conf = render_config(&redis(None), &users(), None, Start::Replica(Some(&primary)));
        assert!(conf.contains("\nport 6379\n") && !conf.contains("tls-port"), "no TLS without certificates");
        assert!(conf.contains("\nreplicaof \"10.0.0.1\" 6380\n"));
        assert!(!conf.contains("include"));
        let waiting = render_config(&redis(None), &users(), None, Start::Replica(None));
        assert!(waiting.contains("\nreplicaof \"127.0.0.1\" 0\n"));
    }
}

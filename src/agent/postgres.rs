//! The PostgreSQL driver of `hostwright agent`: everything the agent does to
//! its server — initialise, clone a primary, start as primary or standby,
//! promote, stop, rewind, and read the replication position.
//!
//! The server runs as the agent's child process (not through `pg_ctl`), so
//! the agent learns of its death at once and a dead agent means a dead server.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::certificates::Certificates;
use super::metrics::Stats;
use super::plan::Endpoint;
use super::server::{Observed, Server, Start, shut_down};
use crate::contract::keys::credentials as credential_files;
use crate::contract::{BackupOrder, DataState, encode_backup_order};

pub mod recovery;

/// Errors of the PostgreSQL driver, each naming the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error("the server exited while starting ({status}); see its log")]
    Exited { status: std::process::ExitStatus },
    #[error("running {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Failed { program: String, status: std::process::ExitStatus, stderr: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("querying the server: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("reading the settings {path}: {source}")]
    Settings {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the server did not accept connections within {0:?}")]
    StartTimeout(Duration),
    #[error("unreadable replication position {0:?}")]
    Lsn(String),
    #[error("reading {path}: {source}")]
    Credentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("recovering from the backups: {0}")]
    Recovery(String),
    #[error("recovering from the backups: {0}")]
    Backup(#[from] crate::backup::BackupError),
}

/// The settings file a running server last loaded on a reload, kept for its
/// next start (shared by the clones of a [`Postgres`]).
#[derive(Clone, Debug, Default)]
pub struct ReloadedSettings(std::sync::Arc<std::sync::Mutex<Option<PathBuf>>>);

impl ReloadedSettings {
    fn get(&self) -> Option<PathBuf> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, file: &Path) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(file.to_path_buf());
    }
}

/// The file in the data directory holding the settings in effect: a copy
/// of the template's, so that a reload can swap it and a refused text can be
/// put back before anything reads it.
const SETTINGS_COPY: &str = "hostwright-settings.conf";

/// Where and how one member's server runs.
#[derive(Clone, Debug)]
pub struct Postgres {
    /// Directory holding `initdb`, `postgres`, `pg_basebackup`, `pg_rewind`.
    pub bin_dir: PathBuf,
    pub data_dir: PathBuf,
    /// Unix socket directory; the agent connects through it.
    pub socket_dir: PathBuf,
    /// Address the server listens on for clients and mirrors.
    pub listen_address: String,
    pub port: u16,
    /// Settings rendered from the instance template (the ConfigMap file)
    /// the pod was built with.
    pub settings_file: Option<PathBuf>,
    /// Settings loaded since without a restart; they win over `settings_file`.
    pub reloaded: ReloadedSettings,
    /// `application_name` of this member as a standby (its member name with
    /// `_` for `-`), as `synchronous_standby_names` lists it.
    pub application_name: String,
    /// When the agent runs as root (test beds), run the server as this
    /// uid/gid: PostgreSQL refuses to run as root.
    pub run_as: Option<(u32, u32)>,
    /// Who may connect, and how (`pg_hba.conf`).
    pub access: Access,
    /// The server's certificate (None: no TLS, for an agent run by hand).
    pub tls: Option<Certificates>,
    /// WAL archiving to an object store (None: the DatabaseMirror has no
    /// backups).
    pub archiving: Option<super::archive::Archiving>,
    /// Where the first primary's data comes from when not from `initdb`
    /// (the DatabaseMirror's `bootstrap.recovery`).
    pub recovery: Option<recovery::Recovery>,
}

/// Who may connect over the network: the application's user to its own
/// database, the replication user for streaming and `pg_rewind`; the
/// superuser only over the unix socket inside the pod. With TLS, every
/// network connection must use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    pub database: String,
    pub owner: String,
}

/// The file in the data directory holding the TLS settings (the paths of
/// the certificate in use), rewritten when it is renewed.
const TLS_SETTINGS: &str = "hostwright-tls.conf";
/// The password file libpq reads the replication password from, so it
/// appears in no command line and no configuration file.
const PASSFILE: &str = ".pgpass";

/// How the server starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartAs {
    Primary,
    /// A standby streaming from the server at this libpq connection string.
    Standby {
        primary_conninfo: String,
    },
    /// Archive recovery of a restored base backup: WAL from
    /// `restore_command` up to `target_time` (the end of the archive when
    /// None), then a promotion.
    Recovering {
        restore_command: String,
        target_time: Option<String>,
    },
}

/// How long a server in archive recovery may take to reach a consistent
/// state and answer (it replays the backup's own WAL first).
const RECOVERY_START: Duration = Duration::from_secs(30 * 60);

/// Roles created on the first primary.
#[derive(Clone)]
pub struct Bootstrap {
    pub superuser_password: String,
    pub replication_password: String,
    pub database: String,
    pub owner: String,
    pub owner_password: String,
}

// Passwords print redacted: a log line or an error never carries one.
impl std::fmt::Debug for Bootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bootstrap")
            .field("database", &self.database)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// A replication position (LSN) as bytes: `X/Y` is `X << 32 | Y`.
pub fn parse_lsn(text: &str) -> Result<u64, PostgresError> {
    let bad = || PostgresError::Lsn(text.to_string());
    let (hi, lo) = text.trim().split_once('/').ok_or_else(bad)?;
    let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
    let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
    if hi > u64::from(u32::MAX) || lo > u64::from(u32::MAX) {
        return Err(bad());
    }
    Ok(hi << 32 | lo)
}

/// A libpq connection string for the replication role at `host:port`: the
/// password comes from `passfile`, and with a CA (`ca`) the connection is
/// TLS and the server must hold a certificate the store's CA signed
/// (`verify-ca`: members are reached by pod address, and only the store's
/// own members hold such a certificate).
pub fn replication_conninfo(
    host: &str,
    port: u16,
    application_name: &str,
    passfile: &Path,
    ca: Option<&Path>,
) -> String {
    let mut conninfo = format!(
        "host={host} port={port} user=replication passfile={} dbname=postgres application_name={application_name} connect_timeout=2",
        quote_conninfo(&passfile.to_string_lossy())
    );
    match ca {
        Some(ca) => {
            // No client certificate: the password authenticates. Without
            // naming one, libpq tries ~/.postgresql/postgresql.crt, and a
            // HOME the server's user cannot read fails the connection.
            let none = ca.with_file_name(".no-client-certificate");
            conninfo.push_str(&format!(
                " sslmode=verify-ca sslrootcert={} sslcert={}",
                quote_conninfo(&ca.to_string_lossy()),
                quote_conninfo(&none.to_string_lossy())
            ));
        }
        None => conninfo.push_str(" sslmode=disable"),
    }
    conninfo
}

fn quote_conninfo(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A `.pgpass` line for `user` on any server: `:` and `\` escaped.
fn passfile_line(user: &str, password: &str) -> String {
    let escape = |v: &str| v.replace('\\', "\\\\").replace(':', "\\:");
    format!("*:*:*:{}:{}\n", escape(user), escape(password))
}

/// `pg_hba.conf` for `access`; `tls`: network connections must use TLS.
pub fn access_rules(access: &Access, tls: bool) -> String {
    let host = if tls { "hostssl" } else { "host" };
    let mut rules = String::from("# Written by hostwright agent.\n");
    // The superuser over the socket, for the agent and its base backups.
    rules.push_str("local all postgres trust\nlocal replication postgres trust\nlocal all all reject\n");
    rules.push_str(&format!("{host} replication replication all scram-sha-256\n"));
    // pg_rewind reads the new primary's files over a normal connection.
    rules.push_str(&format!("{host} postgres replication all scram-sha-256\n"));
    rules.push_str(&format!(
        "{host} {} {} all scram-sha-256\n",
        hba_name(&access.database),
        hba_name(&access.owner)
    ));
    rules.push_str("host all all all reject\n");
    rules
}

/// A database or role name as `pg_hba.conf` reads it: quoted, so that no
/// name is taken for a keyword (`all`, `replication`, `sameuser`).
fn hba_name(name: &str) -> String {
    format!("\"{}\"", name.replace('"', ""))
}

fn quote_sql_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn quote_ident(value: &str) -> String {
    format!("\"{}\"", value.replace('"', "\"\""))
}

impl Postgres {
    fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin(program));
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd.env("LC_ALL", "C").env("TZ", "UTC").kill_on_drop(true);
        cmd
    }

    async fn run(&self, program: &str, args: &[&str]) -> Result<String, PostgresError> {
        let out = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|source| PostgresError::Spawn { program: program.into(), source })?;
        if !out.status.success() {
            return Err(PostgresError::Failed {
                program: program.into(),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Remove the lock files (`postmaster.pid`, and the socket's lock in the
    /// socket directory, an emptyDir that outlives the container) that no
    /// live server holds. A server killed with its container leaves them
    /// behind, and in the next container's PID namespace their PID is often
    /// another process's (the agent's watchdog): PostgreSQL then refuses to
    /// start, for ever. The agent starts this data directory's only server
    /// and is called with none running, so a lock file is stale unless its
    /// PID is a live `postgres` (then it is left: the server refuses to start
    /// and the step is retried).
    fn clear_stale_lock_files(&self) -> Result<(), PostgresError> {
        let socket_lock = self.socket_dir.join(format!(".s.PGSQL.{}.lock", self.port));
        for path in [self.data_dir.join("postmaster.pid"), socket_lock] {
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            let holder = lock_file_pid(&text);
            if holder.is_some_and(|pid| process_name(pid).as_deref() == Some("postgres")) {
                continue;
            }
            tracing::warn!(?holder, path = %path.display(), "removing a stale lock file (its server is gone)");
            std::fs::remove_file(&path).map_err(|source| PostgresError::Write { path, source })?;
        }
        Ok(())
    }

    /// The data directory holds a cluster.
    pub fn initialized(&self) -> bool {
        self.data_dir.join("PG_VERSION").exists()
    }

    /// Write `name` in the data directory (as the server's user).
    async fn write(&self, name: &str, contents: &str) -> Result<(), PostgresError> {
        let path = self.data_dir.join(name);
        tokio::fs::write(&path, contents)
            .await
            .map_err(|source| PostgresError::Write { path: path.clone(), source })?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .map_err(|source| PostgresError::Write { path: path.clone(), source })?;
        }
        Ok(())
    }

    /// Create the first primary's cluster with its roles and database.
    pub async fn initdb(&self, bootstrap: &Bootstrap) -> Result<(), PostgresError> {
        let result = self.initdb_steps(bootstrap).await;
        if result.is_err() {
            // Half a bootstrap (a cluster without its roles or database) must
            // not pass for data: the next attempt starts from nothing.
            let _ = tokio::fs::remove_dir_all(&self.data_dir).await;
        }
        result
    }

    async fn initdb_steps(&self, bootstrap: &Bootstrap) -> Result<(), PostgresError> {
        // The socket directory is private to the pod and writable by the server.
        let pwfile = self.socket_dir.join(".initdb-pwfile");
        tokio::fs::write(&pwfile, &bootstrap.superuser_password)
            .await
            .map_err(|source| PostgresError::Write { path: pwfile.clone(), source })?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))
                .map_err(|source| PostgresError::Write { path: pwfile.clone(), source })?;
        }
        let data = self.data_dir.to_string_lossy().into_owned();
        let pw = format!("--pwfile={}", pwfile.to_string_lossy());
        let result = self
            // Data checksums catch storage corruption and let pg_rewind work.
            .run(
                "initdb",
                &[
                    "-D",
                    &data,
                    "-U",
                    "postgres",
                    &pw,
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--data-checksums",
                ],
            )
            .await;
        let _ = tokio::fs::remove_file(&pwfile).await;
        result?;
        let mut server = self.start(&StartAs::Primary).await?;
        let client = self.connect().await?;
        // One statement at a time: CREATE DATABASE cannot share a transaction.
        let statements = [
            format!(
                "CREATE ROLE replication WITH REPLICATION LOGIN PASSWORD {}",
                quote_sql_literal(&bootstrap.replication_password)
            ),
            format!(
                "CREATE ROLE {} WITH LOGIN PASSWORD {}",
                quote_ident(&bootstrap.owner),
                quote_sql_literal(&bootstrap.owner_password)
            ),
            format!("CREATE DATABASE {} OWNER {}", quote_ident(&bootstrap.database), quote_ident(&bootstrap.owner)),
            // The application's user reaches its own database and no other
            // (pg_hba.conf says so too).
            "REVOKE CONNECT, TEMPORARY ON DATABASE postgres, template1 FROM PUBLIC".into(),
            // pg_rewind connects to `postgres` as the replication user.
            "GRANT CONNECT ON DATABASE postgres TO replication".into(),
            format!("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC", quote_ident(&bootstrap.database)),
            format!("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}", quote_ident(&bootstrap.database), quote_ident(&bootstrap.owner)),
            // What pg_rewind reads from the new primary when an old one rejoins.
            "GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO replication".into(),
            "GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text, boolean) TO replication".into(),
            "GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) TO replication".into(),
            "GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO replication"
                .into(),
        ];
        // With `replication: sync` the settings make commits wait for a
        // mirror, and no mirror can exist before this cluster does.
        client.simple_query("SET synchronous_commit = local").await?;
        for statement in &statements {
            client.simple_query(statement).await?;
        }
        drop(client);
        self.stop(&mut server).await.map(drop)
    }

    /// Clone a running primary into the (empty) data directory.
    pub async fn basebackup(&self, primary_conninfo: &str) -> Result<(), PostgresError> {
        let data = self.data_dir.to_string_lossy().into_owned();
        self.run("pg_basebackup", &["-d", primary_conninfo, "-D", &data, "-X", "stream", "-c", "fast"])
            .await
            .map(drop)
    }

    /// Copy the settings in effect (the last reloaded, else the pod's) into
    /// the data directory, where `hostwright.conf` includes them.
    async fn install_settings(&self) -> Result<(), PostgresError> {
        match self.reloaded.get().or_else(|| self.settings_file.clone()) {
            Some(source) => match tokio::fs::read_to_string(&source).await {
                Ok(text) => self.write(SETTINGS_COPY, &text).await,
                // Not projected yet: the template's settings arrive with the file.
                Err(_) => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// Load the settings in `file` into the running server without a
    /// restart. Ok(Err(why)) when the server refuses them (a value it cannot
    /// parse, or a setting that only a restart applies): the previous
    /// settings are then put back, so no later restart picks the refused
    /// text up.
    pub async fn reload_settings(&self, file: &Path) -> Result<Result<(), String>, PostgresError> {
        let text = tokio::fs::read_to_string(file)
            .await
            .map_err(|source| PostgresError::Settings { path: file.to_path_buf(), source })?;
        let previous = tokio::fs::read_to_string(self.data_dir.join(SETTINGS_COPY)).await.unwrap_or_default();
        self.write(SETTINGS_COPY, &text).await?;
        let db = self.connect().await?;
        let problems: Vec<String> = db
            .query("SELECT name || ': ' || error FROM pg_file_settings WHERE error IS NOT NULL", &[])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        if !problems.is_empty() {
            self.write(SETTINGS_COPY, &previous).await?;
            return Ok(Err(problems.join("; ")));
        }
        db.simple_query("SELECT pg_reload_conf()").await?;
        // The postmaster reads the files on SIGHUP; a new session sees the result.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pending: Vec<String> = self
            .connect()
            .await?
            .query("SELECT name FROM pg_settings WHERE pending_restart", &[])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        if !pending.is_empty() {
            self.write(SETTINGS_COPY, &previous).await?;
            db.simple_query("SELECT pg_reload_conf()").await?;
            return Ok(Err(format!("only a restart applies {}", pending.join(", "))));
        }
        self.reloaded.set(file);
        Ok(Ok(()))
    }

    /// Make a stopped former primary a copy of the new primary's history.
    pub async fn rewind(&self, primary_conninfo: &str) -> Result<(), PostgresError> {
        self.clear_stale_lock_files()?;
        let data = self.data_dir.to_string_lossy().into_owned();
        let source = format!("--source-server={primary_conninfo}");
        self.run("pg_rewind", &["--target-pgdata", &data, &source]).await.map(drop)
    }

    /// `pg_hba.conf`, written on every start: who may connect is the
    /// agent's to say, whatever a clone or an older agent left.
    async fn write_access_rules(&self) -> Result<(), PostgresError> {
        self.write("pg_hba.conf", &access_rules(&self.access, self.tls.is_some())).await
    }

    /// Install the mounted certificate when it changed, and point the TLS
    /// settings at the installed files. True when new files were installed
    /// (or the settings changed): the server should load them.
    async fn install_certificates(&self) -> Result<bool, PostgresError> {
        let Some(tls) = &self.tls else { return Ok(false) };
        let fresh =
            tls.refresh().map_err(|source| PostgresError::Write { path: tls.source.clone(), source })?;
        let installed_now = fresh.is_some();
        let Some(files) = fresh.or_else(|| tls.installed()) else { return Ok(false) };
        let conf = format!(
            "# Written by hostwright agent: the certificate in use.\nssl = on\nssl_cert_file = {}\nssl_key_file = {}\nssl_ca_file = {}\nssl_min_protocol_version = 'TLSv1.2'\n",
            quote_sql_literal(&files.cert.to_string_lossy()),
            quote_sql_literal(&files.key.to_string_lossy()),
            quote_sql_literal(&files.ca.to_string_lossy()),
        );
        let changed =
            tokio::fs::read_to_string(self.data_dir.join(TLS_SETTINGS)).await.ok().as_deref() != Some(&conf);
        if changed {
            self.write(TLS_SETTINGS, &conf).await?;
        }
        Ok(changed || installed_now)
    }

    /// Load a renewed certificate into the running server (PostgreSQL
    /// reads its TLS files again on a reload).
    pub async fn refresh_certificates(&self) -> Result<bool, PostgresError> {
        if !self.install_certificates().await? {
            return Ok(false);
        }
        let reloaded = async {
            self.connect().await?.simple_query("SELECT pg_reload_conf()").await.map_err(PostgresError::from)
        };
        if let Err(err) = reloaded.await {
            // Tried again on the next tick, not only at the next renewal.
            if let Some(tls) = &self.tls {
                tls.forget();
            }
            return Err(err);
        }
        Ok(true)
    }

    /// How this member reaches the primary at `host:port` as the
    /// replication user: over TLS verified against the store's CA (its copy
    /// installed first), the password in a file.
    pub async fn conninfo_to(&self, host: &str, port: u16, password: &str) -> Result<String, PostgresError> {
        let passfile = self.write_passfile(password).await?;
        let ca = match &self.tls {
            Some(tls) => {
                tls.refresh().map_err(|source| PostgresError::Write { path: tls.source.clone(), source })?;
                Some(tls.ca_path())
            }
            None => None,
        };
        Ok(replication_conninfo(host, port, &self.application_name, &passfile, ca.as_deref()))
    }

    /// The password file for the replication user, private to the server's
    /// user; libpq (the WAL receiver, pg_basebackup, pg_rewind) reads it.
    async fn write_passfile(&self, password: &str) -> Result<PathBuf, PostgresError> {
        let path = self.socket_dir.join(PASSFILE);
        let line = passfile_line("replication", password);
        if tokio::fs::read_to_string(&path).await.ok().as_deref() != Some(line.as_str()) {
            let write_err = |source| PostgresError::Write { path: path.clone(), source };
            write_private_file(&path, &line, self.run_as).map_err(write_err)?;
        }
        Ok(path)
    }

    /// `hostwright.conf`: what the agent's own work relies on, written on
    /// every start and rewritten (then reloaded) to repoint, detach or relax.
    fn render_conf(&self, role: &StartAs, relaxed: bool) -> String {
        let mut conf = String::from("# Written by hostwright agent.\n");
        // The copy of the settings in effect (see `install_settings`).
        conf.push_str(&format!("include_if_exists {}\n", quote_sql_literal(SETTINGS_COPY)));
        conf.push_str(&format!("include_if_exists {}\n", quote_sql_literal(TLS_SETTINGS)));
        // pg_rewind needs hint bits in WAL and the WAL back to the last
        // common checkpoint, so segments are kept.
        conf.push_str("wal_log_hints = on\nwal_keep_size = '512MB'\nhot_standby = on\n");
        conf.push_str(&format!(
            "listen_addresses = {}\nport = {}\nunix_socket_directories = {}\ncluster_name = {}\n",
            quote_sql_literal(&self.listen_address),
            self.port,
            quote_sql_literal(&self.socket_dir.to_string_lossy()),
            quote_sql_literal(&self.application_name),
        ));
        let conninfo = match role {
            StartAs::Primary | StartAs::Recovering { .. } => "",
            StartAs::Standby { primary_conninfo } => primary_conninfo,
        };
        conf.push_str(&format!("primary_conninfo = {}\n", quote_sql_literal(conninfo)));
        if let StartAs::Recovering { restore_command, target_time } = role {
            conf.push_str(&recovery::settings(restore_command, target_time.as_deref()));
        }
        if relaxed {
            // No mirror is healthy and the store prefers taking writes.
            conf.push_str("synchronous_standby_names = ''\n");
        }
        if let Some(archiving) = &self.archiving {
            conf.push_str(&archiving.settings());
        }
        conf
    }

    /// Start the server as `role` and wait until it accepts connections.
    pub async fn start(&self, role: &StartAs) -> Result<Child, PostgresError> {
        match role {
            StartAs::Primary => {
                let _ = tokio::fs::remove_file(self.data_dir.join("standby.signal")).await;
            }
            StartAs::Standby { .. } => self.write("standby.signal", "").await?,
            StartAs::Recovering { .. } => {
                let _ = tokio::fs::remove_file(self.data_dir.join("standby.signal")).await;
                self.write("recovery.signal", "").await?;
            }
        }
        self.install_settings().await?;
        self.write_access_rules().await?;
        self.install_certificates().await?;
        // Our settings come last so they win over anything the template set.
        self.write("hostwright.conf", &self.render_conf(role, false)).await?;
        self.ensure_included().await?;
        self.clear_stale_lock_files()?;

        let data = self.data_dir.to_string_lossy().into_owned();
        let mut child = self
            .command("postgres")
            .args(["-D", &data])
            // A group of its own: the watchdog kills the postmaster and
            // every backend at once, cutting every client connection.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| PostgresError::Spawn { program: "postgres".into(), source })?;
        let wait = match role {
            StartAs::Recovering { .. } => RECOVERY_START,
            _ => Duration::from_secs(60),
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.connect().await.is_ok() {
                return Ok(child);
            }
            // A server that failed at once (lock file, port in use, bad
            // settings) must not hold the agent's loop for a minute.
            if let Ok(Some(status)) = child.try_wait() {
                return Err(PostgresError::Exited { status });
            }
            if tokio::time::Instant::now() > deadline {
                let _ = shut_down(&mut child, libc::SIGKILL, Duration::from_secs(5)).await;
                return Err(PostgresError::StartTimeout(wait));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Rewrite `hostwright.conf` for `role` and have the running server
    /// reload it (PostgreSQL 13 and later reload `primary_conninfo`: the
    /// WAL receiver restarts towards the new upstream, or stops for none).
    pub async fn reconfigure(&self, role: &StartAs, relaxed: bool) -> Result<(), PostgresError> {
        self.write("hostwright.conf", &self.render_conf(role, relaxed)).await?;
        self.connect().await?.simple_query("SELECT pg_reload_conf()").await?;
        Ok(())
    }

    /// Make `postgresql.conf` include `hostwright.conf` last (once).
    async fn ensure_included(&self) -> Result<(), PostgresError> {
        let path = self.data_dir.join("postgresql.conf");
        let current = tokio::fs::read_to_string(&path).await.unwrap_or_default();
        if current.lines().any(|l| l.trim() == "include 'hostwright.conf'") {
            return Ok(());
        }
        self.write("postgresql.conf", &format!("{current}\ninclude 'hostwright.conf'\n")).await
    }

    /// Fast shutdown (clean: a checkpoint, mirrors get all WAL), then wait;
    /// killed after 30 s. Returns where WAL ends after a clean shutdown (the
    /// shutdown checkpoint), which a successor must have reached.
    pub async fn stop(&self, server: &mut Child) -> Result<Option<u64>, PostgresError> {
        // SIGINT is PostgreSQL's fast shutdown.
        if !shut_down(server, libc::SIGINT, Duration::from_secs(30)).await {
            return Ok(None);
        }
        Ok(self.controldata().await.as_deref().and_then(checkpoint_location))
    }

    /// `pg_controldata`'s report on the data directory.
    pub async fn controldata(&self) -> Option<String> {
        let out = Command::new(self.bin("pg_controldata"))
            .arg(&self.data_dir)
            .env("LC_ALL", "C")
            .output()
            .await
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A connection over the unix socket as the superuser.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, PostgresError> {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.socket_dir)
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(2));
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Promote a standby and wait until it takes writes. The checkpoint
    /// afterwards writes the new timeline into the control file, which
    /// pg_rewind reads when the old primary rejoins (without it, the rewind
    /// sees one timeline and wrongly decides nothing needs rewinding).
    pub async fn promote(&self) -> Result<(), PostgresError> {
        let client = self.connect().await?;
        client.execute("SELECT pg_promote(wait => true, wait_seconds => 30)", &[]).await?;
        client.batch_execute("CHECKPOINT").await?;
        Ok(())
    }

    /// A primary's write position, or the WAL a standby has received (what
    /// a promotion would keep), and whether its WAL receiver streams.
    pub async fn observe(&self) -> Result<Observed, PostgresError> {
        let client = self.connect().await?;
        let row = client
            .query_one(
                "SELECT pg_is_in_recovery(), (CASE WHEN pg_is_in_recovery() \
                 THEN greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) \
                 ELSE pg_current_wal_lsn() END)::text, \
                 coalesce((SELECT status = 'streaming' FROM pg_stat_wal_receiver LIMIT 1), false)",
                &[],
            )
            .await?;
        let replica: bool = row.get(0);
        let lsn: Option<String> = row.get(1);
        let position = lsn.as_deref().map(parse_lsn).transpose()?.unwrap_or(0);
        let archive = match &self.archiving {
            Some(archiving) => {
                let mut report = archive_report(&client).await?;
                let gap = archiving.gap_file.as_deref().and_then(crate::backup::gap::read);
                report.gap_closed = gap.as_ref().is_some_and(|g| g.closed);
                report.gap = gap.map(|g| (g.first, g.at));
                Some(report)
            }
            None => None,
        };
        Ok(Observed { replica, position, streaming: row.get(2), archive })
    }

    /// What the metrics want beyond [`Postgres::observe`]: commits, client
    /// backends, a mirror's lag, whether commits wait for standbys that
    /// are not there, the certificate's expiry. One query on a connection
    /// of its own.
    pub async fn stats(&self) -> Result<Stats, PostgresError> {
        let row = self.connect().await?.query_one(STATS_QUERY, &[]).await?;
        let figures = Figures {
            commits: row.get(0),
            clients: row.get(1),
            in_recovery: row.get(2),
            receive_lsn: row.get(3),
            replay_lsn: row.get(4),
            latest_end_lsn: row.get(5),
            replay_age: row.get(6),
            synchronous_standby_names: row.get(7),
            synchronous_commit: row.get(8),
            sync_standbys: row.get(9),
        };
        let mut stats = figures.stats()?;
        stats.certificate_expiry = self.tls.as_ref().and_then(Certificates::expiry);
        Ok(stats)
    }
}

/// What the metrics ask of a server, in one round trip (see
/// [`Postgres::stats`]). Our own connection is not a client, and commits
/// in `postgres` are the agent's own queries (every one a transaction,
/// several a second): clients may reach only their own database.
const STATS_QUERY: &str = "SELECT \
    (SELECT sum(xact_commit) FROM pg_stat_database WHERE datname <> 'postgres')::bigint, \
    (SELECT count(*) FROM pg_stat_activity \
     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()), \
    pg_is_in_recovery(), \
    pg_last_wal_receive_lsn()::text, \
    pg_last_wal_replay_lsn()::text, \
    (SELECT latest_end_lsn::text FROM pg_stat_wal_receiver LIMIT 1), \
    extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, \
    current_setting('synchronous_standby_names'), \
    current_setting('synchronous_commit'), \
    (SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum'))";

/// What [`STATS_QUERY`] answers, before it is made [`Stats`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    pub commits: Option<i64>,
    pub clients: i64,
    pub in_recovery: bool,
    pub receive_lsn: Option<String>,
    pub replay_lsn: Option<String>,
    /// The primary's end of WAL as the WAL receiver last heard it.
    pub latest_end_lsn: Option<String>,
    /// Seconds since the last transaction replayed was committed.
    pub replay_age: Option<f64>,
    pub synchronous_standby_names: String,
    pub synchronous_commit: String,
    /// Standbys now counted for synchronous commits.
    pub sync_standbys: i64,
}

/// How many synchronous standbys a commit waits for under
/// `synchronous_standby_names`: `FIRST n (…)`, `ANY n (…)`, `n (…)`, or
/// a plain list (one).
pub fn required_sync_standbys(names: &str) -> u32 {
    let names = names.trim();
    if names.is_empty() {
        return 0;
    }
    let mut words = names.split_whitespace();
    let first = words.next().unwrap_or_default();
    let count = if first.eq_ignore_ascii_case("first") || first.eq_ignore_ascii_case("any") {
        words.next().unwrap_or_default()
    } else {
        first
    };
    count.split('(').next().and_then(|n| n.trim().parse().ok()).unwrap_or(1)
}

impl Figures {
    /// The metrics' figures. A mirror's lag is what it heard of (received,
    /// or announced by the primary) and has not replayed; its age is that
    /// of the last transaction replayed, 0 once nothing is left to replay.
    pub fn stats(&self) -> Result<Stats, PostgresError> {
        let lsn = |text: &Option<String>| text.as_deref().map(parse_lsn).transpose();
        let (received, announced, replayed) =
            (lsn(&self.receive_lsn)?, lsn(&self.latest_end_lsn)?, lsn(&self.replay_lsn)?);
        let heard = received.max(announced);
        let lag_bytes = match self.in_recovery {
            true => replayed.map(|replayed| heard.unwrap_or(replayed).saturating_sub(replayed)),
            false => None,
        };
        let lag_seconds = match lag_bytes {
            Some(0) => Some(0.0),
            Some(_) => self.replay_age.map(|age| age.max(0.0)),
            None => None,
        };
        let waits = matches!(self.synchronous_commit.as_str(), "on" | "remote_write" | "remote_apply");
        let required = i64::from(required_sync_standbys(&self.synchronous_standby_names));
        Ok(Stats {
            connections: u64::try_from(self.clients).ok(),
            commits: self.commits.and_then(|n| u64::try_from(n).ok()),
            lag_bytes,
            lag_seconds,
            short_of_replicas: !self.in_recovery && waits && self.sync_standbys < required,
            ..Stats::default()
        })
    }
}

/// `pg_stat_archiver` as the agent reports it.
async fn archive_report(
    client: &tokio_postgres::Client,
) -> Result<crate::contract::ArchiveReport, PostgresError> {
    let row = client
        .query_one(
            "SELECT last_archived_wal, (extract(epoch FROM last_archived_time) * 1000)::bigint, \
             last_failed_wal, (extract(epoch FROM last_failed_time) * 1000)::bigint FROM pg_stat_archiver",
            &[],
        )
        .await?;
    let entry = |wal: usize, at: usize| -> Option<(String, u64)> {
        let wal: Option<String> = row.get(wal);
        let at: Option<i64> = row.get(at);
        Some((wal?, u64::try_from(at?).ok()?))
    };
    Ok(crate::contract::ArchiveReport { archived: entry(0, 1), failed: entry(2, 3), ..Default::default() })
}

/// How `pg_controldata` says the data directory was left.
pub fn data_state(controldata: &str) -> DataState {
    let state = controldata
        .lines()
        .find_map(|l| l.strip_prefix("Database cluster state:"))
        .map(str::trim)
        .unwrap_or_default();
    match state {
        "" => DataState::Empty,
        s if s.contains("recovery") => DataState::Standby,
        _ => DataState::Primary,
    }
}

/// The shutdown checkpoint's position from `pg_controldata`'s report.
pub fn checkpoint_location(controldata: &str) -> Option<u64> {
    let text = controldata.lines().find_map(|l| l.strip_prefix("Latest checkpoint location:"))?;
    parse_lsn(text).ok()
}

/// A PostgreSQL member as the agent drives it: the server, and the
/// credentials files the pod's Secret is mounted as.
#[derive(Clone, Debug)]
pub struct PostgresMember {
    pub postgres: Postgres,
    /// Directory of the credentials Secret (files `username`, `password`,
    /// `replication-password`, `superuser-password`, `database`).
    pub credentials_dir: PathBuf,
}

impl PostgresMember {
    fn secret(&self, key: &str) -> Result<String, PostgresError> {
        let path = self.credentials_dir.join(key);
        std::fs::read_to_string(&path)
            .map(|s| s.trim().to_string())
            .map_err(|source| PostgresError::Credentials { path, source })
    }

    async fn conninfo(&self, primary: &Endpoint) -> Result<String, PostgresError> {
        let password = self.secret(credential_files::REPLICATION_PASSWORD)?;
        self.postgres.conninfo_to(&primary.host, primary.port, &password).await
    }

    async fn primary_conninfo(&self, primary: Option<&Endpoint>) -> Result<String, PostgresError> {
        match primary {
            Some(p) => self.conninfo(p).await,
            None => Ok(String::new()),
        }
    }

    async fn start_standby(&self, primary: Option<&Endpoint>) -> Result<Child, PostgresError> {
        let primary_conninfo = self.primary_conninfo(primary).await?;
        self.postgres.start(&StartAs::Standby { primary_conninfo }).await
    }
}

impl Server for PostgresMember {
    type Error = PostgresError;

    async fn data_state(&self) -> DataState {
        let pg = &self.postgres;
        // A restore cut short: nothing of it is data.
        if recovery::interrupted(&pg.data_dir) {
            return DataState::Empty;
        }
        // A fresh clone or a rewound former primary carries a backup_label
        // (and the primary's "in production" control file): it starts as a
        // standby, nothing to rewind.
        if pg.data_dir.join("backup_label").exists() {
            return DataState::Standby;
        }
        if !pg.initialized() {
            return DataState::Empty;
        }
        match pg.controldata().await {
            Some(report) => data_state(&report),
            None => DataState::Primary,
        }
    }

    fn marker_path(&self) -> PathBuf {
        // Beside the data directory, on the same volume: pg_basebackup and
        // pg_rewind copy the data directory whole, the marker is the member's.
        let data = &self.postgres.data_dir;
        data.parent().map_or_else(|| data.with_extension("hostwright"), |p| p.join("hostwright.state"))
    }

    async fn observe(&self) -> Result<Observed, PostgresError> {
        self.postgres.observe().await
    }

    async fn stats(&self) -> Result<Stats, PostgresError> {
        self.postgres.stats().await
    }

    async fn initialize(&self) -> Result<(), PostgresError> {
        let bootstrap = Bootstrap {
            superuser_password: self.secret(credential_files::SUPERUSER_PASSWORD)?,
            replication_password: self.secret(credential_files::REPLICATION_PASSWORD)?,
            database: self.postgres.access.database.clone(),
            owner: self.postgres.access.owner.clone(),
            owner_password: self.secret(credential_files::APP_PASSWORD)?,
        };
        match &self.postgres.recovery {
            Some(recovery) => self.postgres.recover(recovery, &bootstrap).await,
            None => self.postgres.initdb(&bootstrap).await,
        }
    }

    async fn clone_from(&self, primary: &Endpoint) -> Result<(), PostgresError> {
        self.postgres.basebackup(&self.conninfo(primary).await?).await
    }

    async fn start(&self, start: Start<'_>) -> Result<Child, PostgresError> {
        match start {
            Start::Primary => self.postgres.start(&StartAs::Primary).await,
            Start::Replica(primary) => self.start_standby(primary).await,
        }
    }

    async fn promote(&self) -> Result<(), PostgresError> {
        self.postgres.promote().await
    }

    async fn rewind(&self, primary: &Endpoint) -> Result<(), PostgresError> {
        self.postgres.rewind(&self.conninfo(primary).await?).await
    }

    /// A reload with the new `primary_conninfo` (empty: receive from nobody).
    async fn repoint(
        &self,
        server: &mut Option<Child>,
        primary: Option<&Endpoint>,
    ) -> Result<(), PostgresError> {
        if server.is_none() {
            *server = Some(self.start_standby(primary).await?);
            return Ok(());
        }
        let primary_conninfo = self.primary_conninfo(primary).await?;
        self.postgres.reconfigure(&StartAs::Standby { primary_conninfo }, false).await
    }

    async fn stop(&self, server: &mut Child) -> Result<Option<u64>, PostgresError> {
        self.postgres.stop(server).await
    }

    async fn reload_settings(&self, file: &Path) -> Result<Result<(), String>, PostgresError> {
        self.postgres.reload_settings(file).await
    }

    async fn set_relaxed(&self, relaxed: bool) -> Result<(), PostgresError> {
        self.postgres.reconfigure(&StartAs::Primary, relaxed).await
    }

    async fn refresh_certificates(&self) -> Result<bool, PostgresError> {
        self.postgres.refresh_certificates().await
    }

    /// `hostwright agent base-backup` against this server's socket, with
    /// the store configuration archiving uses (no archiving, no backups).
    fn base_backup(&self, order: &BackupOrder) -> Option<(tokio::process::Command, PathBuf)> {
        let archiving = self.postgres.archiving.as_ref()?;
        let pg = &self.postgres;
        let result = pg.socket_dir.join(format!("base-backup-{}.json", order.id));
        let mut command = tokio::process::Command::new(&archiving.agent);
        command
            .args(["agent", "base-backup", "--config"])
            .arg(&archiving.config_file)
            .arg(format!("--order={}", encode_backup_order(order)))
            // Member names are DNS labels: `_` in the application name was `-`.
            .arg(format!("--member={}", pg.application_name.replace('_', "-")))
            .arg("--bin-dir")
            .arg(&pg.bin_dir)
            .arg("--socket-dir")
            .arg(&pg.socket_dir)
            .arg(format!("--port={}", pg.port))
            .arg("--result")
            .arg(&result)
            .stdin(Stdio::null());
        Some((command, result))
    }
}

/// Write `path` atomically, mode 0600, owned by `run_as` when given.
fn write_private_file(path: &Path, contents: &str, run_as: Option<(u32, u32)>) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    file.write_all(contents.as_bytes())?;
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))?;
    }
    std::fs::rename(&tmp, path)
}

/// The data directory of a member inside `root`.
pub fn data_dir(root: &Path) -> PathBuf {
    root.join("pgdata")
}

/// The postmaster's PID: the first line of `postmaster.pid`.
fn lock_file_pid(text: &str) -> Option<u32> {
    text.lines().next()?.trim().parse().ok().filter(|pid| *pid > 0)
}

/// The command name of process `pid` (`/proc/<pid>/comm`), if it exists.
fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|name| name.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_files_pid_is_its_first_line() {
        assert_eq!(lock_file_pid("14\n/var/lib/postgresql/data/pgdata\n1764425000\n5432\n"), Some(14));
        assert_eq!(lock_file_pid(""), None);
        assert_eq!(lock_file_pid("0\n"), None, "no process is 0");
        assert_eq!(lock_file_pid("garbage\n"), None);
    }

    #[test]
    fn a_pid_file_held_by_no_postgres_is_removed_and_only_that() {
        let dir = std::env::temp_dir().join(format!("hostwright-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pg = Postgres {
            bin_dir: PathBuf::new(),
            data_dir: dir.clone(),
            socket_dir: dir.clone(),
            listen_address: String::new(),
            port: 0,
            settings_file: None,
            reloaded: ReloadedSettings::default(),
            application_name: String::new(),
            run_as: None,
            access: Access { database: "db".into(), owner: "app".into() },
            tls: None,
            archiving: None,
            recovery: None,
        };
        let pid_file = dir.join("postmaster.pid");
        let socket_lock = dir.join(".s.PGSQL.0.lock");
        // Our own PID: a live process, but not a postgres (the container case).
        for lock in [&pid_file, &socket_lock] {
            std::fs::write(lock, format!("{}\n{}\n", std::process::id(), dir.display())).unwrap();
        }
        pg.clear_stale_lock_files().unwrap();
        assert!(!pid_file.exists(), "a PID taken by another program is stale");
        assert!(!socket_lock.exists(), "so is the socket's lock naming it");
        pg.clear_stale_lock_files().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lsns_are_byte_positions() {
        assert_eq!(parse_lsn("0/3000060").unwrap(), 0x0300_0060);
        assert_eq!(parse_lsn("1/0").unwrap(), 1 << 32);
        assert_eq!(parse_lsn(" A/FF\n").unwrap(), (0xA << 32) | 0xFF);
        assert!(parse_lsn("nonsense").is_err());
        assert!(parse_lsn("1/").is_err());
        assert!(parse_lsn("100000000/0").is_err());
    }

    #[test]
    fn replication_connects_over_tls_with_the_password_in_a_file() {
        let c = replication_conninfo(
            "127.244.1.2",
            5432,
            "db_2",
            Path::new("/run/it's/.pgpass"),
            Some(Path::new("/run/tls-ca.crt")),
        );
        assert_eq!(
            c,
            "host=127.244.1.2 port=5432 user=replication passfile='/run/it\\'s/.pgpass' dbname=postgres \
             application_name=db_2 connect_timeout=2 sslmode=verify-ca sslrootcert='/run/tls-ca.crt' \
             sslcert='/run/.no-client-certificate'"
        );
        assert!(!c.contains("password="));
        assert_eq!(passfile_line("replication", "a:b\\c"), "*:*:*:replication:a\\:b\\\\c\n");
    }

    #[test]
    fn with_tls_the_network_takes_tls_connections_of_the_app_to_its_database_alone() {
        let rules = access_rules(&Access { database: "shop".into(), owner: "shop".into() }, true);
        let lines: Vec<&str> = rules.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "local all postgres trust",
                "local replication postgres trust",
                "local all all reject",
                "hostssl replication replication all scram-sha-256",
                "hostssl postgres replication all scram-sha-256",
                "hostssl \"shop\" \"shop\" all scram-sha-256",
                "host all all all reject",
            ]
        );
    }

    fn mirror_figures() -> Figures {
        Figures {
            in_recovery: true,
            receive_lsn: Some("0/3000100".into()),
            replay_lsn: Some("0/3000060".into()),
            latest_end_lsn: Some("0/3000200".into()),
            replay_age: Some(2.5),
            synchronous_commit: "on".into(),
            ..Figures::default()
        }
    }

    #[test]
    fn a_mirrors_lag_runs_to_the_end_it_heard_of_and_is_zero_once_replayed() {
        let stats = mirror_figures().stats().unwrap();
        assert_eq!(stats.lag_bytes, Some(0x200 - 0x60), "to the primary's end as last announced");
        assert_eq!(stats.lag_seconds, Some(2.5));
        let received_more = Figures { latest_end_lsn: Some("0/3000080".into()), ..mirror_figures() };
        assert_eq!(received_more.stats().unwrap().lag_bytes, Some(0x100 - 0x60), "or as received");
        let caught_up = Figures {
            receive_lsn: Some("0/3000060".into()),
            latest_end_lsn: None,
            replay_age: Some(600.0),
            ..mirror_figures()
        };
        let stats = caught_up.stats().unwrap();
        assert_eq!((stats.lag_bytes, stats.lag_seconds), (Some(0), Some(0.0)), "an idle primary is no lag");
        let never_replayed = Figures { replay_lsn: None, replay_age: None, ..mirror_figures() };
        assert_eq!(never_replayed.stats().unwrap().lag_bytes, None);
        let primary = Figures { in_recovery: false, ..mirror_figures() };
        assert_eq!((primary.stats().unwrap().lag_bytes, primary.stats().unwrap().lag_seconds), (None, None));
        let garbage = Figures { replay_lsn: Some("x".into()), ..mirror_figures() };
        assert!(garbage.stats().is_err());
    }

    #[test]
    fn commits_and_clients_are_counted() {
        let stats = Figures { commits: Some(1234), clients: 3, ..Figures::default() }.stats().unwrap();
        assert_eq!((stats.commits, stats.connections), (Some(1234), Some(3)));
    }

    #[test]
    fn the_synchronous_standbys_a_commit_waits_for() {
        assert_eq!(required_sync_standbys(""), 0);
        assert_eq!(required_sync_standbys("  "), 0);
        assert_eq!(required_sync_standbys("db_2"), 1);
        assert_eq!(required_sync_standbys("db_2, db_3"), 1);
        assert_eq!(required_sync_standbys("*"), 1);
        assert_eq!(required_sync_standbys("ANY 1 (db_2, db_3)"), 1);
        assert_eq!(required_sync_standbys("any 2 (db_2, db_3)"), 2);
        assert_eq!(required_sync_standbys("FIRST 2 (db_2, db_3)"), 2);
        assert_eq!(required_sync_standbys("2 (db_2, db_3)"), 2);
        assert_eq!(required_sync_standbys("2(db_2, db_3)"), 2);
    }

    #[test]
    fn a_primary_is_short_of_replicas_when_commits_wait_for_standbys_it_lacks() {
        let primary = |names: &str, commit: &str, standbys: i64| Figures {
            synchronous_standby_names: names.into(),
            synchronous_commit: commit.into(),
            sync_standbys: standbys,
            ..Figures::default()
        };
        let short = |f: Figures| f.stats().unwrap().short_of_replicas;
        assert!(short(primary("ANY 1 (db_2)", "on", 0)));
        assert!(!short(primary("ANY 1 (db_2)", "on", 1)));
        assert!(short(primary("FIRST 2 (db_2, db_3)", "remote_apply", 1)));
        assert!(!short(primary("", "on", 0)), "relaxed: nothing to wait for");
        assert!(!short(primary("ANY 1 (db_2)", "local", 0)), "commits do not wait");
        assert!(
            !short(Figures { in_recovery: true, ..primary("ANY 1 (db_2)", "on", 0) }),
            "a mirror takes no writes"
        );
    }

    #[test]
    fn sql_values_are_quoted() {
        assert_eq!(quote_sql_literal("o'brien"), "'o''brien'");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}

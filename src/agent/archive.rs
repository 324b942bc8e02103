//! The agent's side of WAL archiving: the `archive_command` and
//! `restore_command` PostgreSQL runs (each a short `hostwright agent
//! wal-push` / `wal-fetch` process), and the settings that name them.
//!
//! Exit codes are PostgreSQL's contract. A push exits non-zero on any
//! failure, and PostgreSQL keeps the segment and tries again. A fetch exits
//! 1 only when the file is not in the archive (the end of archived WAL);
//! when the store cannot be read it exits [`FETCH_FAILED`], which PostgreSQL
//! takes as fatal: a recovery must stop and retry, never end early at a
//! point the user did not ask for because the network blinked.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::backup::BackupError;
use crate::backup::gap;
use crate::backup::store::StoreConfig;
use crate::backup::wal::{self, Fetched, Pushed};

/// The file in the run directory the archive processes read the store from.
pub const CONFIG_FILE: &str = "backup.json";
/// `restore_command`'s exit code for "the archive could not be read":
/// above 125, so PostgreSQL aborts the recovery instead of ending it.
pub const FETCH_FAILED: u8 = 126;
/// A segment is archived at least this often even when little is written,
/// so the archive is never further behind than this (and a partly filled
/// segment of quiet hours is not lost with a volume).
pub const ARCHIVE_TIMEOUT_SECONDS: u32 = 60;

/// How this member archives: the agent binary PostgreSQL runs and the
/// store configuration it hands it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Archiving {
    pub agent: PathBuf,
    pub config_file: PathBuf,
    /// Where `wal-push` records segments it let go (see [`gap`]).
    pub gap_file: Option<PathBuf>,
}

impl Archiving {
    /// `hostwright.conf` lines. Every member archives (`always`): a mirror
    /// pushes each segment it received too, so the segments a failed
    /// primary had not archived yet are archived anyway, and the pushes of
    /// the same bytes are no-ops.
    pub fn settings(&self) -> String {
        let agent = self.agent.to_string_lossy();
        let config = self.config_file.to_string_lossy();
        let push = format!("{} agent wal-push --config {} %p %f", shell_word(&agent), shell_word(&config));
        format!(
            "archive_mode = always\narchive_command = {}\narchive_timeout = {ARCHIVE_TIMEOUT_SECONDS}\n",
            conf_literal(&push)
        )
    }
}

/// The `restore_command` that fetches WAL with `agent` from the store
/// `config` names (a recovery reads another database's archive).
pub fn restore_command(agent: &Path, config: &Path) -> String {
    let (agent, config) = (agent.to_string_lossy(), config.to_string_lossy());
    format!("{} agent wal-fetch --config {} %f %p", shell_word(&agent), shell_word(&config))
}

/// Write the store configuration where the archive processes read it
/// (0600: it names the key files, and the server's user reads it).
pub fn write_config(path: &Path, config: &StoreConfig) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let text = serde_json::to_vec_pretty(config).map_err(std::io::Error::other)?;
    let partial = path.with_extension("partial");
    let mut file =
        std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&partial)?;
    file.write_all(&text)?;
    file.sync_all()?;
    std::fs::rename(partial, path)
}

/// `hostwright agent wal-push --config FILE PATH NAME`.
pub fn push_command(config: &Path, source: &Path, name: &str) -> ExitCode {
    let config = match StoreConfig::load(config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("hostwright wal-push: {name}: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Past the bound one attempt decides: a segment that cannot go now is
    // let go, so the backlog drains to the bound at once.
    let over = gap::let_go(gap::pending_bytes(source), config.max_pending_bytes);
    let outcome = block_on(async {
        let store = config.open_for_push(over)?;
        wal::push(store.as_ref(), &config.prefix, source, name).await
    });
    match outcome {
        Ok(pushed) => {
            if pushed == Pushed::AlreadyArchived {
                eprintln!("hostwright wal-push: {name} was archived already (same bytes)");
            }
            if let Some(file) = &config.gap_file
                && let Err(err) = gap::close(file)
            {
                eprintln!("hostwright wal-push: closing the gap recorded in {}: {err}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(err) => let_go_or_fail(&config, source, name, &err),
    }
}

/// A push failed: keep the segment (PostgreSQL retries), unless more WAL
/// than the bound waits already; then let it go and record the gap.
fn let_go_or_fail(config: &StoreConfig, source: &Path, name: &str, err: &BackupError) -> ExitCode {
    let pending = gap::pending_bytes(source);
    let (Some(file), true) = (&config.gap_file, gap::let_go(pending, config.max_pending_bytes)) else {
        eprintln!("hostwright wal-push: {name}: {err}");
        return ExitCode::FAILURE;
    };
    let now = k8s_openapi::jiff::Timestamp::now().as_millisecond().max(0) as u64;
    if let Err(write_err) = gap::write(file, &gap::widen(gap::read(file), name, now)) {
        eprintln!("hostwright wal-push: {name}: {err}; recording a gap in {}: {write_err}", file.display());
        return ExitCode::FAILURE;
    }
    eprintln!(
        "hostwright wal-push: {name} let go UNARCHIVED: {pending} bytes of WAL wait for the object store, more \
         than the {} bytes kept for it; the archive has a gap until the next base backup ({err})",
        config.max_pending_bytes.unwrap_or_default()
    );
    ExitCode::SUCCESS
}

/// `hostwright agent wal-fetch --config FILE NAME PATH`.
pub fn fetch_command(config: &Path, name: &str, destination: &Path) -> ExitCode {
    let outcome = block_on(async {
        let config = StoreConfig::load(config)?;
        let store = config.open()?;
        wal::fetch(store.as_ref(), &config.prefix, name, destination).await
    });
    match outcome {
        Ok(Fetched::Restored) => ExitCode::SUCCESS,
        Ok(Fetched::Missing) => ExitCode::from(1),
        Err(err) => {
            eprintln!("hostwright wal-fetch: {name}: {err}");
            ExitCode::from(FETCH_FAILED)
        }
    }
}

pub(crate) fn block_on<T>(
    work: impl std::future::Future<Output = Result<T, crate::backup::BackupError>>,
) -> Result<T, crate::backup::BackupError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| crate::backup::BackupError::Read { path: "the async runtime".into(), source })?;
    runtime.block_on(work)
}

/// One word for `/bin/sh -c` (PostgreSQL runs the command through it).
fn shell_word(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// A postgresql.conf string literal.
fn conf_literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgresql_runs_the_agent_with_its_configuration_for_every_segment() {
        let archiving = Archiving {
            agent: "/controller/hostwright".into(),
            config_file: "/run/it's/backup.json".into(),
            gap_file: None,
        };
        let settings = archiving.settings();
        assert!(settings.contains("archive_mode = always\n"), "{settings}");
        assert!(settings.contains("archive_timeout = 60\n"), "{settings}");
        // The shell's quoting of the apostrophe, then postgresql.conf's ('' and \\).
        assert!(
            settings.contains(
                r"archive_command = '''/controller/hostwright'' agent wal-push --config ''/run/it''\\''''s/backup.json'' %p %f'"
            ),
            "{settings}"
        );
        assert_eq!(
            restore_command(&archiving.agent, &archiving.config_file),
            r"'/controller/hostwright' agent wal-fetch --config '/run/it'\''s/backup.json' %f %p"
        );
    }
}

//! `hostwright agent base-backup`: one base backup of this member's server,
//! run by the agent as a child process when the operator asks for one (see
//! [`crate::contract::BackupOrder`]), so a slow upload never holds the
//! agent's loop and a crash of it never takes the agent down.
//!
//! `pg_basebackup` reads the server over its unix socket (a mirror's, so the
//! primary carries no extra load), as one tar with the WAL it needs inside
//! (`--wal-method=fetch`), which is streamed to the object store as a
//! multipart upload: no copy on the member's volume. The manifest is written
//! last, then retention is applied. The outcome goes to a result file the
//! agent reports on its Lease.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use k8s_openapi::jiff::Timestamp;
use tokio::io::AsyncReadExt;

use crate::backup::BackupError;
use crate::backup::base::{self, Keep, Manifest};
use crate::backup::store::StoreConfig;
use crate::contract::{BackupOrder, BackupReport, BackupState, Millis};

/// Where the server is and what to back up.
#[derive(Clone, Debug)]
pub struct Source {
    pub member: String,
    pub bin_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
}

fn now_ms() -> Millis {
    Timestamp::now().as_millisecond().max(0) as u64
}

/// `hostwright agent base-backup`: take the backup `order` asks for and
/// write its [`BackupReport`] to `result`.
pub fn command(config: &Path, order: &BackupOrder, source: &Source, result: &Path) -> ExitCode {
    let outcome = super::archive::block_on(async {
        let config = StoreConfig::load(config)?;
        take(&config, order, source).await
    });
    let state = match outcome {
        Ok((manifest, kept)) => BackupState::Done {
            finished: manifest.finished,
            bytes: manifest.bytes,
            kept: u32::try_from(kept.len()).unwrap_or(u32::MAX),
            oldest_finished: kept.iter().map(|m| m.finished).min().unwrap_or(manifest.finished),
        },
        Err(err) => {
            eprintln!("hostwright base-backup {}: {err}", order.id);
            BackupState::Failed { why: err.to_string() }
        }
    };
    let done = matches!(state, BackupState::Done { .. });
    let report = BackupReport { id: order.id.clone(), state };
    let text = serde_json::to_vec(&report).unwrap_or_default();
    if let Err(err) = std::fs::write(result, text) {
        eprintln!("hostwright base-backup {}: writing {}: {err}", order.id, result.display());
        return ExitCode::FAILURE;
    }
    if done { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// The backup, then retention; the manifest and the backups kept.
async fn take(
    config: &StoreConfig,
    order: &BackupOrder,
    source: &Source,
) -> Result<(Manifest, Vec<Manifest>), BackupError> {
    let store = config.open()?;
    let started = now_ms();
    let mut child = tokio::process::Command::new(source.bin_dir.join("pg_basebackup"))
        .args(["--pgdata=-", "--format=tar", "--wal-method=fetch", "--checkpoint=fast", "--no-manifest"])
        .args(["--verbose", "--username=postgres", "--no-password"])
        .arg(format!("--host={}", source.socket_dir.display()))
        .arg(format!("--port={}", source.port))
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| BackupError::Read { path: "pg_basebackup".into(), source })?;
    let stdout = child.stdout.take().ok_or_else(|| no_pipe("stdout"))?;
    let mut stderr = child.stderr.take().ok_or_else(|| no_pipe("stderr"))?;
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let uploaded = base::upload(store.as_ref(), &config.prefix, &order.id, stdout).await;
    let status =
        child.wait().await.map_err(|source| BackupError::Read { path: "pg_basebackup".into(), source })?;
    let stderr = errors.await.unwrap_or_default();
    if !status.success() {
        return Err(BackupError::Read {
            path: "pg_basebackup".into(),
            source: std::io::Error::other(format!("{status}: {}", stderr.trim())),
        });
    }
    let bytes = uploaded?;
    let (timeline, start) = base::start_point(&stderr).ok_or_else(|| BackupError::Read {
        path: "pg_basebackup".into(),
        source: std::io::Error::other(format!("no start point in its output: {}", stderr.trim())),
    })?;
    let manifest = Manifest {
        id: order.id.clone(),
        member: source.member.clone(),
        started,
        finished: now_ms(),
        timeline,
        start_wal: base::segment_name(timeline, start),
        bytes,
    };
    base::complete(store.as_ref(), &config.prefix, &manifest).await?;
    let keep = Keep { backups: order.keep_backups, days: order.keep_days };
    let kept = base::prune(store.as_ref(), &config.prefix, keep, now_ms()).await?;
    Ok((manifest, kept))
}

fn no_pipe(which: &str) -> BackupError {
    BackupError::Read { path: "pg_basebackup".into(), source: std::io::Error::other(format!("no {which}")) }
}

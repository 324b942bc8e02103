//! What the agent loop needs of a member's server, whatever the engine.
//!
//! [`plan`](super::plan) decides in engine-neutral steps (initialise, clone,
//! start, promote, stop, rewind, repoint, detach); a [`Server`] carries each
//! one out for its engine — PostgreSQL ([`super::postgres`]) or Redis
//! ([`super::redis`]). The agent loop in [`super::run`] is written once
//! against this trait.

use std::future::Future;
use std::path::{Path, PathBuf};

use tokio::process::Child;

use super::plan::Endpoint;
use crate::contract::DataState;

/// How a server is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start<'a> {
    Primary,
    /// A replica of this primary, or of none (read-only, receiving nothing).
    Replica(Option<&'a Endpoint>),
}

/// What a running server says of itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// It is a replica (read-only).
    pub replica: bool,
    /// Replication position in bytes: a primary's write position, a
    /// replica's received (and, for Redis, processed) position.
    pub position: u64,
    /// A replica whose link to its upstream is up.
    pub streaming: bool,
    /// How WAL archiving goes, when the server archives.
    pub archive: Option<crate::contract::ArchiveReport>,
}

/// A member's server as the agent drives it. The server runs as the agent's
/// child process in a process group of its own, so the agent learns of its
/// death at once and the watchdog can kill all of it.
pub trait Server: Send + Sync {
    type Error: std::error::Error + Send + Sync + 'static;

    /// How the data on the member's volume was left, as the engine's own
    /// files say (the agent's marker refines it).
    fn data_state(&self) -> impl Future<Output = DataState> + Send;

    /// A stopped server starts again with the data it had. False for a
    /// server that keeps its data in memory only.
    fn keeps_data(&self) -> impl Future<Output = bool> + Send {
        async { true }
    }

    /// Where the agent keeps its marker: beside the data, on the same volume.
    fn marker_path(&self) -> PathBuf;

    /// The server's own account of itself, while it answers.
    fn observe(&self) -> impl Future<Output = Result<Observed, Self::Error>> + Send;

    /// Create the first primary's data (accounts, database).
    fn initialize(&self) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Copy `primary`'s data into this empty member.
    fn clone_from(&self, primary: &Endpoint) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Start the server and wait until it answers.
    fn start(&self, start: Start<'_>) -> impl Future<Output = Result<Child, Self::Error>> + Send;

    /// Make the running replica a primary; returns once it takes writes.
    fn promote(&self) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Make a stopped former primary's data fit to follow `primary` (its
    /// history may have diverged from the new primary's).
    fn rewind(&self, primary: &Endpoint) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Load the settings in `file` into the running server without a
    /// restart; Ok(Err(why)) when the server refuses them (nothing of them
    /// is then kept).
    fn reload_settings(
        &self,
        file: &Path,
    ) -> impl Future<Output = Result<Result<(), String>, Self::Error>> + Send;

    /// Make the running replica follow `primary` instead, or nobody (None:
    /// it stops receiving, stays read-only and keeps what it has). `server`
    /// is the running child; an engine that must restart replaces it.
    fn repoint(
        &self,
        server: &mut Option<Child>,
        primary: Option<&Endpoint>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Clean, fast shutdown: no more writes, connected replicas get what was
    /// written. Returns the final position when the engine can tell it.
    fn stop(&self, server: &mut Child) -> impl Future<Output = Result<Option<u64>, Self::Error>> + Send;

    /// Install a renewed server certificate (when the mounted one changed)
    /// and have the running server load it without a restart. True when a
    /// new one was loaded.
    fn refresh_certificates(&self) -> impl Future<Output = Result<bool, Self::Error>> + Send;

    /// On a running primary: `relaxed` lets commits return without a
    /// replica's acknowledgement; false restores the configured rule.
    fn set_relaxed(&self, relaxed: bool) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Figures for the agent's metrics alone (see [`super::metrics`]),
    /// asked on a slower interval by a loop of their own, never by the step
    /// loop. None of them by default.
    fn stats(&self) -> impl Future<Output = Result<super::metrics::Stats, Self::Error>> + Send {
        async { Ok(super::metrics::Stats::default()) }
    }

    /// The process that takes the base backup `order` of the running
    /// server, and the file it writes its [`crate::contract::BackupReport`]
    /// to; None when this server takes no base backups.
    fn base_backup(
        &self,
        _order: &crate::contract::BackupOrder,
    ) -> Option<(tokio::process::Command, PathBuf)> {
        None
    }
}

/// Send `signal` to process `pid` (or, negative, a process group) directly:
/// slim server images may have no `kill` program.
pub fn signal(pid: i32, signal: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Ask a child server to shut down with `sig`; SIGKILL its whole group if
/// it has not exited within `timeout`. True when it exited by itself.
pub async fn shut_down(server: &mut Child, sig: i32, timeout: std::time::Duration) -> bool {
    if let Some(pid) = server.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = signal(pid, sig);
        if tokio::time::timeout(timeout, server.wait()).await.is_ok() {
            return true;
        }
        let _ = signal(-pid, libc::SIGKILL);
    }
    let _ = server.wait().await;
    false
}

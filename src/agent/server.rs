//! What the agent loop needs of a member's server, whatever the engine.
//!
//! [`plan`](super::plan) decides in engine-neutral steps (initialise, clone,
//! start, promote, stop, rewind, repoint); a [`Server`] carries each one out
//! for its engine — PostgreSQL ([`super::postgres`]) or Redis
//! ([`super::redis`]). The agent loop in [`super::run`] is written once
//! against this trait.

use std::future::Future;

use tokio::process::Child;

use super::plan::{DataState, Endpoint};

/// How a server is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start<'a> {
    Primary,
    /// A replica of this primary, or of none yet (waiting for one).
    Replica(Option<&'a Endpoint>),
}

/// A member's server as the agent drives it. The server runs as the agent's
/// child process, so the agent learns of its death at once.
pub trait Server: Send + Sync {
    type Error: std::error::Error + Send + Sync + 'static;

    /// How the data on the member's volume was left.
    fn data_state(&self) -> impl Future<Output = DataState> + Send;

    /// A stopped server starts again with the data it had. False for a
    /// server that keeps its data in memory only: restarted as primary it
    /// would be empty, and its replicas would copy the emptiness.
    fn keeps_data(&self) -> impl Future<Output = bool> + Send {
        async { true }
    }

    /// While the server answers: (it is a replica, its replication position
    /// in bytes). A primary's position is what it has written; a replica's
    /// is what a promotion would keep.
    fn position(&self) -> impl Future<Output = Result<(bool, u64), Self::Error>> + Send;

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

    /// Make the running replica follow `primary` instead. `server` is the
    /// running child; an engine that must restart to repoint replaces it.
    fn repoint(
        &self,
        server: &mut Option<Child>,
        primary: &Endpoint,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Clean, fast shutdown: no more writes, replicas get what was written.
    fn stop(&self, server: &mut Child) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

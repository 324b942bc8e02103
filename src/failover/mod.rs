//! The promotion state machine shared by DatabaseMirror and SessionStore.
//!
//! One engine decides, the pods act. [`step`] is pure: it takes what the
//! members' agents last reported and what the engine decided before, and
//! returns what each member should be (for its agent), where reads and writes
//! are routed (for the Services), and the next state, which the reconciler
//! keeps in the object's status so a restarted operator resumes mid-failover.
//!
//! Safety rests on two rules:
//! 1. A member is told to become primary only once the old primary is known
//!    not to take writes: its agent confirmed it after being fenced, or its
//!    lease expired — an agent that cannot renew its lease stops its server
//!    before the lease runs out, so an expired lease means a fenced server.
//! 2. Writes are routed to a member only after its agent reports that its
//!    server runs as primary.
//!
//! Neither rule depends on timing, so no interleaving of crashes, returns and
//! stale reports can leave two members accepting writes (property-tested in
//! `tests.rs` against a model of agents and servers).

mod engine;
mod persist;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

pub use engine::step;

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// What the engine tells a member's agent to make its server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Desired {
    /// Accept writes.
    Primary,
    /// Stream from the primary; read-only.
    Mirror,
    /// Accept no writes (stop, or stay read-only) until told otherwise.
    Fenced,
}

/// What a member's server actually is, as its agent reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerRole {
    /// Running and accepting writes.
    Primary,
    /// Running as a streaming replica.
    Mirror,
    /// Not running (crashed, stopped, fenced).
    Stopped,
}

/// The latest report of a member's agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    /// When the agent made the report.
    pub at: Millis,
    /// What the server is.
    pub role: ServerRole,
    /// Replication position in bytes (LSN or offset); for a primary, its write
    /// position, for a mirror, what it has received and flushed.
    pub position: Option<u64>,
    /// The instruction the agent was acting on when it reported.
    pub acting_on: Desired,
}

impl Report {
    /// Made strictly after `t`: a report from the same millisecond as a
    /// decision may predate it, so it does not count as an answer to it.
    pub fn after(&self, t: Millis) -> bool {
        self.at > t
    }
}

/// One member as the reconciler observed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// The agent's latest report, if it ever reported.
    pub report: Option<Report>,
    /// The agent's lease has expired (it stopped renewing).
    pub lease_expired: bool,
}

impl Member {
    fn alive(&self) -> bool {
        !self.lease_expired && self.report.is_some()
    }

    fn role(&self) -> Option<ServerRole> {
        self.report.filter(|_| self.alive()).map(|r| r.role)
    }

    /// Alive and its server runs as primary.
    fn serving_primary(&self) -> bool {
        self.role() == Some(ServerRole::Primary)
    }

    /// Known not to take writes as of `since`: its lease expired (the agent
    /// fenced itself), or it reported after `since` that it acts on a fence
    /// and its server is not a primary.
    fn fenced_since(&self, since: Millis) -> bool {
        if self.lease_expired {
            return true;
        }
        self.report.is_some_and(|r| {
            r.after(since) && r.acting_on != Desired::Primary && r.role != ServerRole::Primary
        })
    }
}

/// Failover settings, from the object's spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Promote automatically when the primary is lost.
    pub enabled: bool,
    /// How long the primary must be unhealthy before it is replaced.
    pub delay_ms: u64,
    /// Never promote a mirror further behind than this, unless forced.
    pub max_lag_bytes: u64,
    /// Commits wait for a mirror: the most advanced mirror has every
    /// acknowledged write, so promotion waits for fresh positions.
    pub synchronous: bool,
    /// Promote even past `max_lag_bytes` (an operator's explicit choice).
    pub force: bool,
    /// The member the spec asks to be primary (planned switchover).
    pub requested_primary: Option<String>,
}

/// The engine's durable state, kept in the object's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// The first primary is being created; `primary` is told to initialise.
    Bootstrapping { primary: String },
    /// `primary` takes writes.
    Steady { primary: String },
    /// `primary` has been unhealthy since `since`.
    Suspect { primary: String, since: Millis },
    /// `old` was fenced at `fenced_at`; waiting until it is known not to take
    /// writes and the mirrors' positions are fresh, then choosing.
    Fencing { old: String, fenced_at: Millis, started: Millis, last_position: Option<u64> },
    /// `candidate` was told to promote; waiting for its agent to report it.
    Promoting { old: String, candidate: String, started: Millis },
    /// Planned switchover: `old` was told to stop taking writes at `asked_at`.
    Demoting { old: String, target: String, asked_at: Millis, started: Millis },
}

/// Where the Services send traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The read-write Service.
    ReadWrite,
    /// The read-only Service.
    ReadOnly,
    /// Neither.
    None,
}

/// Something a human on call wants to see, as an Event and in status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    PrimaryUnhealthy { primary: String },
    PrimaryRecovered { primary: String },
    Fenced { member: String },
    Promoting { member: String, position: Option<u64> },
    Promoted { member: String, duration_ms: u64 },
    SwitchoverStarted { from: String, to: String },
    Rejoining { member: String },
}

/// Why no member can be promoted right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// Failover is disabled; the primary stays fenced until it returns.
    Disabled,
    /// No healthy mirror is left.
    NoHealthyMirror,
    /// Every healthy mirror is behind by more than `max_lag_bytes`.
    LagTooHigh { best: String, lag_bytes: u64 },
    /// Waiting for the mirrors to report positions newer than the fence.
    AwaitingPositions,
}

/// What to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub state: State,
    /// Instruction for every member's agent.
    pub desired: BTreeMap<String, Desired>,
    /// Routing of every member.
    pub routes: BTreeMap<String, Route>,
    /// Steps taken by this decision, in order.
    pub steps: Vec<Step>,
    /// Set while a failover cannot proceed.
    pub blocked: Option<Blocked>,
}

impl Decision {
    /// The member writes go to, if any.
    pub fn read_write(&self) -> Option<&str> {
        self.routes.iter().find(|(_, r)| **r == Route::ReadWrite).map(|(n, _)| n.as_str())
    }
}

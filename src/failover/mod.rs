//! The promotion state machine shared by DatabaseMirror and SessionStore.
//!
//! One engine decides, the pods act. [`step`] is pure: it takes what the
//! members' agents last reported, how the operator sees their Leases and
//! what the engine decided before, and returns an [`Instruction`] for every
//! member (for its agent), where reads and writes are routed (for the
//! Services), which Leases to revoke, and the next [`Engine`], which the
//! reconciler keeps in the object's status so a restarted operator resumes
//! mid-failover.
//!
//! Safety rests on three rules, none of which depends on timing:
//! 1. A member is told to become primary only once every other member that
//!    was told to be primary is known not to take writes: its agent
//!    reported acting on the fence (an epoch at least the fence's) with its
//!    server not a primary, or its Lease was revoked (see
//!    [`crate::contract::timing`]: a revoked Lease means a killed server).
//! 2. Writes are routed to a member only after its agent reports that its
//!    server runs as primary.
//! 3. Positions are compared only in reports made after the fence by
//!    members that had stopped receiving from the old primary, so an old
//!    primary that is somehow still alive can no longer gather synchronous
//!    acknowledgements for writes the new primary would not have.
//!
//! A model of agents, watchdogs and servers checks them against random
//! crashes, stalls, partitions and stale instructions (`tests.rs`).

mod engine;
mod persist;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

pub use crate::contract::{DataState, Desired, Epoch, Instruction, Millis, Report, ServerRole};
pub use engine::{Engine, step};

/// How the operator sees a member's Lease, on its own clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    /// Renewed within the lease duration.
    Live,
    /// Not seen renewed for the lease duration: the member is unhealthy,
    /// but until the Lease is revoked it may still be serving.
    Stale,
    /// Revoked by the operator (or gone for the lease duration): by the
    /// contract, its server has been killed.
    Revoked,
}

/// One member as the reconciler observed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// The agent's latest report, if it ever reported.
    pub report: Option<Report>,
    pub lease: Lease,
    /// The position the status last recorded for this member: a fallback
    /// for a report that lost its memory (a restarted agent).
    pub recorded_position: Option<u64>,
}

impl Member {
    /// Renewing and reporting.
    pub fn alive(&self) -> bool {
        self.lease == Lease::Live && self.report.is_some()
    }

    pub(crate) fn live_report(&self) -> Option<&Report> {
        self.report.as_ref().filter(|_| self.alive())
    }

    pub fn role(&self) -> Option<ServerRole> {
        self.live_report().map(|r| r.role)
    }

    /// Alive and its server runs as primary.
    pub fn serving_primary(&self) -> bool {
        self.role() == Some(ServerRole::Primary)
    }

    /// Known not to take writes as of `epoch`: its Lease was revoked, or it
    /// reported acting on an instruction of that epoch or later that is not
    /// "primary", with a server that is not a primary.
    fn fenced_since(&self, epoch: Epoch) -> bool {
        self.lease == Lease::Revoked
            || self.report.as_ref().is_some_and(|r| {
                r.epoch >= epoch && r.acting_on != Desired::Primary && r.role != ServerRole::Primary
            })
    }

    /// Alive, reporting on `epoch` or later, and receiving from nobody.
    fn detached_since(&self, epoch: Epoch) -> bool {
        self.live_report().is_some_and(|r| r.epoch >= epoch && r.streaming_from.is_none())
    }

    /// The best known position of this member's data.
    pub fn known_position(&self) -> Option<u64> {
        self.report.as_ref().and_then(Report::known_position).max(self.recorded_position)
    }

    /// Its live report says it streams from `primary`.
    pub fn streams_from(&self, primary: &str) -> bool {
        self.live_report().is_some_and(|r| r.streaming_from.as_deref() == Some(primary))
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
    /// acknowledged write, so promotion waits for every member's position.
    pub synchronous: bool,
    /// With `synchronous`: keep taking writes without a mirror's
    /// acknowledgement while no mirror is healthy (`durability: preferred`).
    pub relax_when_alone: bool,
    /// Promote even past `max_lag_bytes` (an operator's explicit choice).
    pub force: bool,
    /// The member the spec asks to be primary (planned switchover; and the
    /// choice of a person when a store over kept volumes cannot choose).
    pub requested_primary: Option<String>,
}

/// The engine's durable state, kept in the object's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// No primary yet. Until one is chosen every member runs read-only (if
    /// it has data) and reports what it holds. `fresh`: no member can hold
    /// data (new volumes), so the first member may be initialised at once.
    Bootstrapping { primary: Option<String>, fresh: bool },
    /// `primary` takes writes; `relaxed`: without waiting for a mirror.
    Steady { primary: String, relaxed: bool },
    /// `primary` has been unhealthy since `since`.
    Suspect { primary: String, since: Millis, last_position: Option<u64> },
    /// `old` was fenced at `epoch`: waiting until it is known not to take
    /// writes and the others have detached from it, then choosing.
    Fencing { old: String, epoch: Epoch, started: Millis, last_position: Option<u64> },
    /// `candidate` was told to promote at `since`; waiting for its report.
    /// `planned`: the last step of a switchover, not of a failover.
    Promoting {
        old: String,
        candidate: String,
        started: Millis,
        since: Millis,
        lag_bytes: Option<u64>,
        planned: bool,
    },
    /// Planned switchover: `old` was told at `epoch` (at `asked_at`) to stop
    /// taking writes, after which `target` takes over.
    Demoting { old: String, target: String, epoch: Epoch, asked_at: Millis, started: Millis },
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
    Bootstrapping {
        primary: String,
        initialize: bool,
    },
    PrimaryUnhealthy {
        primary: String,
    },
    PrimaryRecovered {
        primary: String,
    },
    Fenced {
        member: String,
    },
    /// The member's Lease is being revoked (it stopped renewing).
    Revoking {
        member: String,
    },
    Promoting {
        member: String,
        position: Option<u64>,
    },
    /// `lag_bytes`: how far the promoted member was behind the old
    /// primary's last known position, the most an async failover lost.
    Promoted {
        member: String,
        duration_ms: u64,
        lag_bytes: Option<u64>,
    },
    SwitchoverStarted {
        from: String,
        to: String,
    },
    SwitchoverAborted {
        primary: String,
        why: &'static str,
    },
    Rejoining {
        member: String,
    },
    DurabilityRelaxed {
        primary: String,
    },
    DurabilityRestored {
        primary: String,
    },
}

/// Why no member can be promoted (or chosen) right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// Failover is disabled; the primary stays fenced until it returns.
    Disabled,
    /// No healthy mirror is left.
    NoHealthyMirror,
    /// Every healthy mirror is behind by more than `max_lag_bytes`.
    LagTooHigh { best: String, lag_bytes: u64 },
    /// The lost primary never reported a position: what a promotion would
    /// lose cannot be bounded.
    LagUnknown,
    /// Waiting for the members to report after the fence, detached.
    AwaitingPositions,
    /// A store over kept volumes: waiting for these members to report what
    /// they hold before choosing the most advanced as primary.
    AwaitingMembers { members: Vec<String> },
    /// A switchover waits for its target to stream from the primary within
    /// `max_lag_bytes` of it (it would otherwise stop writes and then give up).
    TargetBehind { target: String, lag_bytes: Option<u64> },
}

/// What to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub engine: Engine,
    /// Instruction for every member's agent.
    pub instructions: BTreeMap<String, Instruction>,
    /// Routing of every member.
    pub routes: BTreeMap<String, Route>,
    /// Members whose Leases to revoke (each Stale; the fence waits on it).
    pub revoke: Vec<String>,
    /// Steps taken by this decision, in order.
    pub steps: Vec<Step>,
    /// Set while a failover (or the choice of a first primary) cannot proceed.
    pub blocked: Option<Blocked>,
}

impl Decision {
    /// The member writes go to, if any.
    pub fn read_write(&self) -> Option<&str> {
        self.routes.iter().find(|(_, r)| **r == Route::ReadWrite).map(|(n, _)| n.as_str())
    }

    /// The member told to be primary, if any.
    pub fn primary(&self) -> Option<&str> {
        self.instructions.iter().find(|(_, i)| i.desired == Desired::Primary).map(|(n, _)| n.as_str())
    }
}

//! A replicated store's status from the engine's decision and the agents' reports:
//! phase, per-member role/health/lag, failover history, conditions and the
//! Events that tell a human on call what happened. Pure, so every rule is a
//! unit test.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::rollout::{Drain, Plan};
use super::{Replicated, StoreStatus, Summary};
use super::{archiving, base_backups};
use crate::api::common::condition_type::DRAIN_BLOCKED;
use crate::api::common::condition_type::{DEGRADED, PROGRESSING, READY};
use crate::api::common::{
    EngineStatus, FailoverStatus, MemberRole, MemberStatus, ReplicationStatus, StorePhase,
};
use crate::conditions::{self, Observed};
use crate::contract::{ArchiveReport, BackupReport};
use crate::controllers::Planned;
use crate::failover::{Blocked, Decision, Desired, Member, Route, ServerRole, State, Step};

/// What became of the credentials Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// Present with every key (or generated just now).
    Ready,
    /// Deleted after the members were initialised with its passwords.
    Missing,
    /// Present but a key was removed or emptied by hand.
    Invalid { key: &'static str },
}

/// Everything besides the decision that the status reports.
pub struct Facts<'a> {
    /// The engine's inputs: every member and its agent's latest report.
    pub members: &'a [Member],
    /// `hostwright.io/template-hash` (the revision) of every member pod that exists.
    pub pod_hashes: &'a BTreeMap<String, String>,
    /// The revision of the current template and agent.
    pub revision: &'a str,
    pub credentials: &'a Credentials,
    /// Why the members have no server certificate yet (a cert-manager
    /// issuer that has not issued it), if they have none.
    pub certificate_pending: Option<&'a str>,
    /// How each member's WAL archiving goes, for members that archive.
    pub archives: &'a BTreeMap<String, ArchiveReport>,
    /// Each member's report of the last base backup asked of it.
    pub backups: &'a BTreeMap<String, BackupReport>,
    /// The day-2 plan: rollout, drain, shrink.
    pub day2: &'a Plan,
}

/// Why a failover cannot go on, for conditions and Events.
pub fn describe_blocked<K: Replicated>(blocked: &Blocked, store: &K) -> String {
    match blocked {
        Blocked::Disabled => {
            "failover is disabled (spec.failover.enabled: false): the lost primary stays fenced \
                              until it returns; set spec.primary to switch over by hand"
                .into()
        }
        Blocked::NoHealthyMirror => "no healthy mirror is left to promote".into(),
        Blocked::LagTooHigh { best, lag_bytes } => format!(
            "not promoting: every healthy mirror is too far behind; the best, {best}, lags {lag_bytes} bytes, \
             more than failover.maxLagBytes ({}); promoting it would drop acknowledged writes",
            store.failover().max_lag_bytes
        ),
        Blocked::LagUnknown => "not promoting: the lost primary never reported a replication position, so \
                                 what a promotion would drop cannot be bounded; it is promoted again when it \
                                 returns"
            .into(),
        Blocked::AwaitingPositions => {
            "waiting for every member to report its replication position after the fence".into()
        }
        Blocked::TargetBehind { target, lag_bytes } => format!(
            "switching over to {target} once it streams from the primary within failover.maxLagBytes ({}){}",
            store.failover().max_lag_bytes,
            lag_bytes.map(|l| format!("; it is {l} bytes behind")).unwrap_or_default()
        ),
        Blocked::AwaitingMembers { members } => format!(
            "this store's volumes were kept: waiting for {} to report what they hold before the most \
             advanced becomes primary (set spec.primary to choose one yourself)",
            members.join(", ")
        ),
    }
}

fn time_of(ms: u64) -> Option<Time> {
    Timestamp::from_millisecond(i64::try_from(ms).ok()?).ok().map(Time)
}

fn member_status(m: &Member, decision: &Decision, primary_position: Option<u64>, o: &Facts) -> MemberStatus {
    let report = m.report.as_ref().filter(|_| m.alive());
    let desired = decision.instructions.get(&m.name).map(|i| i.desired);
    let role = match (desired, report.map(|r| r.role)) {
        (Some(Desired::Fenced), _) => MemberRole::Fenced,
        (_, Some(ServerRole::Primary)) => MemberRole::Primary,
        (_, Some(ServerRole::Mirror)) => MemberRole::Mirror,
        _ => MemberRole::Pending,
    };
    let position = report.and_then(|r| r.position);
    let lag = match (role, position, primary_position) {
        (MemberRole::Mirror, Some(p), Some(primary)) => Some(primary.saturating_sub(p)),
        _ => None,
    };
    MemberStatus {
        name: m.name.clone(),
        role,
        healthy: decision.routes.get(&m.name).is_some_and(|r| *r != Route::None),
        position: position.and_then(|p| i64::try_from(p).ok()),
        lag_bytes: lag.and_then(|l| i64::try_from(l).ok()),
        spec_drift: o.pod_hashes.get(&m.name).is_some_and(|h| h != o.revision),
        last_report_time: report.and_then(|r| time_of(r.at)),
    }
}

/// The status after `decision`, given the previous one.
pub fn compute<K: Replicated>(
    store: &K,
    decision: &Decision,
    o: &Facts,
    old: &K::Status,
    now: &Time,
) -> K::Status {
    let primary = decision.read_write().map(str::to_string);
    let primary_position = primary
        .as_ref()
        .and_then(|p| o.members.iter().find(|m| &m.name == p))
        .and_then(|m| m.report.as_ref())
        .and_then(|r| r.position);
    let members: Vec<MemberStatus> =
        o.members.iter().map(|m| member_status(m, decision, primary_position, o)).collect();
    let healthy = members.iter().filter(|m| m.healthy).count();
    let mirrors_healthy = members.iter().filter(|m| m.healthy && m.role == MemberRole::Mirror).count();
    let wanted_mirrors = o.members.len().saturating_sub(1);
    let drifted: Vec<String> = members.iter().filter(|m| m.spec_drift).map(|m| m.name.clone()).collect();
    // Passing states, and a switchover that waits while the primary serves,
    // are not a failover that cannot proceed.
    let waiting_switchover = decision.blocked.as_ref().filter(|b| matches!(b, Blocked::TargetBehind { .. }));
    let blocked = decision
        .blocked
        .as_ref()
        .filter(|b| **b != Blocked::AwaitingPositions && !matches!(b, Blocked::TargetBehind { .. }));
    let policy = store.policy();
    // Commits wait for a mirror's acknowledgement and none can give one.
    let writes_blocked = primary.as_ref().is_some_and(|p| {
        policy.synchronous
            && !policy.relax_when_alone
            && o.members.len() > 1
            && !o.members.iter().any(|m| m.streams_from(p))
    });
    let relaxed = matches!(decision.engine.state, State::Steady { relaxed: true, .. });
    let now_ms = u64::try_from(now.0.as_millisecond()).unwrap_or(0);
    let archive = primary.as_ref().and_then(|p| o.archives.get(p));
    let archiving_degraded = archive.and_then(|r| archiving::degraded(r, now_ms));
    let backup = store.backup_spec().map(|spec| {
        let mut backup = archive.map(|r| archiving::status(r, primary_position, now_ms)).unwrap_or_default();
        let created = base_backups::created(store.meta(), now_ms);
        let input = base_backups::Input {
            spec,
            previous: old.backup(),
            request: store.annotations().get(base_backups::REQUEST_ANNOTATION).map(String::as_str),
            reports: o.backups,
            archives: o.archives,
            members: &members,
            created,
            now: now_ms,
        };
        base_backups::step(&input, &mut backup);
        backup
    });

    let mut failover = old.replication().failover.clone();
    for step in &decision.steps {
        if let Step::Promoted { duration_ms, lag_bytes, .. } = step {
            failover = FailoverStatus {
                last_failover_time: Some(now.clone()),
                last_failover_duration: Some(format!("{:.2}", *duration_ms as f64 / 1000.0)),
                last_failover_lag_bytes: lag_bytes.and_then(|l| i64::try_from(l).ok()),
                failover_count: failover.failover_count + 1,
            };
        }
    }

    let switching = match &decision.engine.state {
        State::Demoting { .. } => true,
        State::Promoting { planned, .. } => *planned,
        _ => false,
    };
    let anything_reported = o.members.iter().any(|m| m.report.is_some());
    let phase = match &decision.engine.state {
        _ if o.pod_hashes.is_empty() && !anything_reported => StorePhase::Pending,
        State::Bootstrapping { .. } => StorePhase::Bootstrapping,
        _ if blocked.is_some() => StorePhase::Failed,
        _ if switching => StorePhase::SwitchingOver,
        State::Suspect { .. } | State::Fencing { .. } | State::Promoting { .. } => StorePhase::FailingOver,
        _ if o.day2.halted() || o.day2.reason == "UpdateRefused" => StorePhase::Degraded,
        _ if o.day2.rollout.is_some() => StorePhase::Updating,
        _ if healthy == o.members.len() && !writes_blocked => StorePhase::Ready,
        _ => StorePhase::Degraded,
    };

    let in_motion = match &decision.engine.state {
        State::Bootstrapping { primary: Some(primary), fresh: true } => {
            Some(("Bootstrapping", format!("initialising {primary}")))
        }
        State::Bootstrapping { primary: Some(primary), fresh: false } => Some((
            "Bootstrapping",
            format!("resuming from {primary}, the member holding the most advanced data"),
        )),
        State::Bootstrapping { primary: None, .. } => {
            Some(("Bootstrapping", "choosing the first primary".to_string()))
        }
        State::Suspect { primary, .. } => Some((
            "PrimaryUnhealthy",
            format!(
                "{primary} is unhealthy; a mirror is promoted if it stays so for {}",
                store.failover().delay
            ),
        )),
        State::Fencing { old, .. } => {
            Some(("FailingOver", format!("{old} is fenced; choosing a mirror to promote")))
        }
        State::Promoting { candidate, .. } if switching => {
            Some(("SwitchingOver", format!("promoting {candidate} (planned switchover)")))
        }
        State::Promoting { candidate, .. } => Some(("FailingOver", format!("promoting {candidate}"))),
        State::Demoting { old, target, .. } => {
            Some(("SwitchingOver", format!("{old} is handing over to {target} (planned switchover)")))
        }
        State::Steady { .. } => None,
    };

    let secret = store.credentials_name();
    let ready = match (o.credentials, &primary, blocked) {
        (Credentials::Missing, _, _) => Observed::new(
            READY,
            false,
            "CredentialsMissing",
            format!(
                "Secret {secret} was deleted after the members were initialised with its passwords; the \
                 operator does not generate new ones (the data opens only with the old ones): restore the \
                 Secret from your backup"
            ),
        ),
        (Credentials::Invalid { key }, _, _) => Observed::new(
            READY,
            false,
            "CredentialsInvalid",
            format!("Secret {secret} has no value for {key:?}; restore it"),
        ),
        (_, None, _) if o.certificate_pending.is_some() => Observed::new(
            READY,
            false,
            "CertificatePending",
            o.certificate_pending.map(str::to_string).unwrap_or_default(),
        ),
        (_, Some(p), _) if writes_blocked => Observed::new(
            READY,
            false,
            "WritesBlocked",
            format!(
                "{p} is primary but no mirror streams from it: with synchronous replication and durability: \
                 required, commits wait until one does"
            ),
        ),
        (_, Some(p), _) => Observed::new(
            READY,
            true,
            "PrimaryServing",
            format!("{p} takes writes; {healthy}/{} members healthy", o.members.len()),
        ),
        (_, None, Some(b @ Blocked::AwaitingMembers { .. })) => {
            Observed::new(READY, false, "AwaitingMembers", describe_blocked(b, store))
        }
        (_, None, Some(b)) => Observed::new(READY, false, "FailoverBlocked", describe_blocked(b, store)),
        (_, None, None) => match &in_motion {
            Some((reason, message)) => Observed::new(READY, false, reason, message.clone()),
            None => Observed::new(READY, false, "PrimaryNotServing", "no member takes writes yet"),
        },
    };
    let progressing = match (&in_motion, blocked) {
        (_, Some(_)) => {
            Observed::new(PROGRESSING, false, "FailoverBlocked", "waiting for a person or a member")
        }
        (None, None) if waiting_switchover.is_some() => Observed::new(
            PROGRESSING,
            true,
            "SwitchoverWaiting",
            waiting_switchover.map(|b| describe_blocked(b, store)).unwrap_or_default(),
        ),
        (Some((reason, message)), None) => Observed::new(PROGRESSING, true, reason, message.clone()),
        (None, None) if o.day2.rollout.is_some() => {
            let moving = !o.day2.halted() && o.day2.reason != "UpdateRefused";
            let waiting = o.day2.rollout.as_ref().and_then(|r| r.waiting_for.clone()).unwrap_or_default();
            let message = match moving {
                true => format!("rolling the members onto revision {}: waiting for {waiting}", o.revision),
                false => waiting,
            };
            Observed::new(PROGRESSING, moving, o.day2.reason, message)
        }
        (None, None) if healthy < o.members.len() => Observed::new(
            PROGRESSING,
            true,
            "MembersCatchingUp",
            format!("{healthy}/{} members healthy", o.members.len()),
        ),
        (None, None) => Observed::new(PROGRESSING, false, "Stable", "nothing to do"),
    };
    let degraded = if let Some(b) = blocked {
        Observed::new(DEGRADED, true, "FailoverBlocked", describe_blocked(b, store))
    } else if let Some(why) = &o.day2.shrink_waiting {
        Observed::new(DEGRADED, true, "ShrinkBlocked", why.clone())
    } else if let Some(halted) = o.day2.rollout.as_ref().filter(|r| r.halted_on.is_some()) {
        Observed::new(DEGRADED, true, "RolloutHalted", halted.waiting_for.clone().unwrap_or_default())
    } else if o.day2.reason == "UpdateRefused" && o.day2.rollout.is_some() {
        let why = o.day2.rollout.as_ref().and_then(|r| r.waiting_for.clone()).unwrap_or_default();
        Observed::new(DEGRADED, true, "UpdateRefused", why)
    } else if primary.is_none() {
        Observed::new(DEGRADED, false, "NoPrimary", "no member takes writes yet: see the Ready condition")
    } else if relaxed {
        Observed::new(
            DEGRADED,
            true,
            "DurabilityRelaxed",
            "no mirror is healthy: the primary takes writes without a mirror's acknowledgement \
             (durability: preferred); a failover now could lose them",
        )
    } else if mirrors_healthy < wanted_mirrors {
        Observed::new(
            DEGRADED,
            true,
            "MirrorsUnhealthy",
            format!("{mirrors_healthy} of {wanted_mirrors} mirrors stream from the primary"),
        )
    } else if let Some(gap) = backup.as_ref().and_then(|b| b.archive_gap.clone()) {
        // Before a failing archive: recoverability is lost already.
        Observed::new(DEGRADED, true, "ArchiveGap", gap)
    } else if let Some(why) = archiving_degraded {
        Observed::new(DEGRADED, true, "ArchivingFailing", why)
    } else {
        Observed::new(
            DEGRADED,
            false,
            "AllMembersHealthy",
            format!("{healthy}/{} members healthy", o.members.len()),
        )
    };

    let target_primary = match &decision.engine.state {
        State::Promoting { candidate, .. } => Some(candidate.clone()),
        State::Demoting { target, .. } => Some(target.clone()),
        _ => None,
    };
    let max_lag = members.iter().filter_map(|m| m.lag_bytes).max();
    let replication = ReplicationStatus {
        observed_generation: store.meta().generation,
        phase: Some(phase),
        current_primary: primary,
        target_primary,
        ready: Some(format!("{healthy}/{}", o.members.len())),
        members,
        failover,
        engine: Some(EngineStatus::from(&decision.engine)),
        rollout: o.day2.rollout.clone(),
        conditions: conditions::merge(
            &old.replication().conditions,
            vec![ready, progressing, degraded, drain_condition(&o.day2.drain)],
            store.meta().generation,
            now,
        ),
    };
    let summary = Summary {
        max_lag_bytes: max_lag,
        equal_spec: (!o.pod_hashes.is_empty()).then_some(drifted.is_empty()),
        backup,
    };
    store.status(replication, summary)
}

/// Events for a rollout that started, halted or finished, and for a drain
/// that moves the primary or waits.
fn rollout_events(old: &ReplicationStatus, new: &ReplicationStatus) -> Vec<Planned> {
    let event = |type_, reason, note: String| Planned { type_, reason, action: "Update", note };
    let mut events = Vec::new();
    match (&old.rollout, &new.rollout) {
        (None, Some(r)) => events.push(event(
            EventType::Normal,
            "RolloutStarted",
            format!(
                "rolling {} onto revision {}: mirrors one at a time, then the primary",
                r.outdated.join(", "),
                r.revision
            ),
        )),
        (Some(r), None) => events.push(event(
            EventType::Normal,
            "RolloutComplete",
            format!("every member runs revision {}", r.revision),
        )),
        _ => {}
    }
    let halted = |s: &ReplicationStatus| s.rollout.as_ref().and_then(|r| r.halted_on.clone());
    if let Some(member) = halted(new).filter(|m| halted(old).as_ref() != Some(m)) {
        let why = new.rollout.as_ref().and_then(|r| r.waiting_for.clone()).unwrap_or_default();
        events.push(event(EventType::Warning, "RolloutHalted", format!("halted on {member}: {why}")));
    }
    let drain = |s: &ReplicationStatus| {
        conditions::find(&s.conditions, DRAIN_BLOCKED).map(|c| (c.reason.clone(), c.message.clone()))
    };
    if let Some((reason, message)) = drain(new).filter(|d| drain(old).map(|o| o.0) != Some(d.0.clone())) {
        match reason.as_str() {
            "SwitchingOver" => events.push(event(EventType::Normal, "DrainSwitchover", message)),
            "DrainBlocked" => events.push(event(EventType::Warning, "DrainBlocked", message)),
            _ => {}
        }
    }
    events
}

/// `DrainBlocked`: true while the primary's node is cordoned and the
/// primary cannot move off it.
fn drain_condition(drain: &Drain) -> Observed {
    match drain {
        Drain::None => Observed::new(DRAIN_BLOCKED, false, "NoDrain", "the primary's node is not cordoned"),
        Drain::SwitchingOver { node, to } => Observed::new(
            DRAIN_BLOCKED,
            false,
            "SwitchingOver",
            format!("node {node} is cordoned: switching the primary over to {to} so the drain can proceed"),
        ),
        Drain::Blocked { node, reason } => Observed::new(
            DRAIN_BLOCKED,
            true,
            "DrainBlocked",
            format!("node {node} is cordoned but the primary stays on it: {reason}"),
        ),
    }
}

/// The status of a store that cannot be deployed because a name it needs
/// belongs to another object: everything else as it was.
pub fn conflicted<K: Replicated>(store: &K, conflict: &str, old: &K::Status, now: &Time) -> K::Status {
    let message = format!("{conflict}: this store cannot use that name; rename one of the two");
    let mut status = old.clone();
    let replication = status.replication_mut();
    replication.observed_generation = store.meta().generation;
    replication.phase = Some(StorePhase::Failed);
    replication.conditions = conditions::merge(
        &old.replication().conditions,
        vec![
            Observed::new(READY, false, "NameConflict", message.clone()),
            Observed::new(PROGRESSING, false, "NameConflict", "nothing is deployed until the names are free"),
            Observed::new(DEGRADED, true, "NameConflict", message),
        ],
        store.meta().generation,
        now,
    );
    status
}

/// `replication` with what moves on every report (positions, lag, report
/// times) taken out: when only those changed, the status is refreshed at a
/// slower pace, so a busy store does not turn into a stream of writes.
pub fn clear_positions(replication: &mut ReplicationStatus) {
    for m in &mut replication.members {
        m.position = None;
        m.lag_bytes = None;
        m.last_report_time = None;
    }
}

/// Events for the engine's steps and for conditions that turned.
pub fn events<K: Replicated>(
    store: &K,
    decision: Option<&Decision>,
    old: &K::Status,
    new: &K::Status,
) -> Vec<Planned> {
    let event = |type_, reason, action, note: String| Planned { type_, reason, action, note };
    let mut events: Vec<Planned> = decision
        .map(|d| d.steps.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|step| {
            Some(match step {
                Step::Bootstrapping { primary, initialize: true } => event(
                    EventType::Normal,
                    "Bootstrapping",
                    "Bootstrap",
                    format!("initialising {primary} as the first primary"),
                ),
                Step::Bootstrapping { primary, initialize: false } => event(
                    EventType::Normal,
                    "Bootstrapping",
                    "Bootstrap",
                    format!("resuming from {primary}: of the kept volumes, it holds the most advanced data"),
                ),
                Step::PrimaryUnhealthy { primary } => event(
                    EventType::Warning,
                    "PrimaryUnhealthy",
                    "Failover",
                    format!("{primary} stopped serving as primary"),
                ),
                Step::PrimaryRecovered { primary } => event(
                    EventType::Normal,
                    "PrimaryRecovered",
                    "Failover",
                    format!("{primary} serves as primary again"),
                ),
                Step::Fenced { member } => event(
                    EventType::Warning,
                    "Fenced",
                    "Failover",
                    format!(
                        "{member} is fenced: out of {} and told to take no writes",
                        store.read_write_service()
                    ),
                ),
                Step::Promoting { member, position } => event(
                    EventType::Normal,
                    "Promoting",
                    "Failover",
                    match position {
                        Some(p) => format!("promoting {member} (replication position {p})"),
                        None => format!("promoting {member}"),
                    },
                ),
                Step::Promoted { member, duration_ms, lag_bytes } => event(
                    EventType::Normal,
                    "Promoted",
                    "Failover",
                    format!(
                        "{member} takes writes; {:.2} s after the old primary was judged lost{}",
                        *duration_ms as f64 / 1000.0,
                        match lag_bytes {
                            Some(0) | None => String::new(),
                            Some(l) => format!(
                                "; it was {l} bytes behind the old primary's last known position, \
                                                the most this failover lost"
                            ),
                        }
                    ),
                ),
                Step::Revoking { member } => event(
                    EventType::Warning,
                    "RevokingLease",
                    "Failover",
                    format!("{member} stopped renewing its lease; revoking it"),
                ),
                Step::SwitchoverAborted { primary, why } => event(
                    EventType::Warning,
                    "SwitchoverAborted",
                    "Switchover",
                    format!("switchover abandoned: {why}; {primary} stays primary"),
                ),
                Step::DurabilityRelaxed { primary } => event(
                    EventType::Warning,
                    "DurabilityRelaxed",
                    "Durability",
                    format!(
                        "no mirror is healthy: {primary} takes writes without a mirror's acknowledgement"
                    ),
                ),
                Step::DurabilityRestored { primary } => event(
                    EventType::Normal,
                    "DurabilityRestored",
                    "Durability",
                    format!("a mirror streams from {primary} again: commits wait for its acknowledgement"),
                ),
                Step::SwitchoverStarted { from, to } => event(
                    EventType::Normal,
                    "SwitchoverStarted",
                    "Switchover",
                    format!("switching the primary from {from} to {to}: demoting {from} cleanly first"),
                ),
                // Published when the instruction actually changes on the pod.
                Step::Rejoining { .. } => return None,
            })
        })
        .collect();
    let reason = |s: &K::Status, t: &str| {
        conditions::find(&s.replication().conditions, t).map(|c| (c.status.clone(), c.reason.clone()))
    };
    if let Some(c) = conditions::find(&new.replication().conditions, READY)
        && reason(old, READY) != reason(new, READY)
        && matches!(
            c.reason.as_str(),
            "FailoverBlocked"
                | "CredentialsMissing"
                | "CredentialsInvalid"
                | "CertificatePending"
                | "WritesBlocked"
                | "NameConflict"
        )
    {
        events.push(event(EventType::Warning, "NotReady", "Observe", c.message.clone()));
    }
    events.extend(rollout_events(old.replication(), new.replication()));
    if let Some(backup) = new.backup() {
        let said = base_backups::events(old.backup(), backup);
        events.extend(said.into_iter().map(|(type_, reason, note)| event(type_, reason, "Backup", note)));
    }
    if let Some(c) = conditions::find(&new.replication().conditions, DEGRADED)
        && reason(old, DEGRADED) != reason(new, DEGRADED)
    {
        let was = conditions::is_true(&old.replication().conditions, DEGRADED);
        match (c.status.as_str(), was) {
            ("True", _) => events.push(event(EventType::Warning, "Degraded", "Observe", c.message.clone())),
            (_, true) => events.push(event(EventType::Normal, "Recovered", "Observe", c.message.clone())),
            _ => {}
        }
    }
    events
}

#[cfg(test)]
mod tests;

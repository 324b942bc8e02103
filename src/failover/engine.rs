//! [`step`]: one decision of the failover engine.

use std::collections::BTreeMap;

use super::{
    Blocked, DataState, Decision, Desired, Epoch, Instruction, Lease, Member, Millis, Policy, Report, Route,
    ServerRole, State, Step,
};

/// The engine's durable state and the epoch of its instructions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Engine {
    pub state: State,
    pub epoch: Epoch,
}

impl Engine {
    /// A store with no primary yet. `fresh`: none of its members can hold
    /// data (its volumes were created for it, or it has none).
    pub fn bootstrap(fresh: bool) -> Self {
        Self { state: State::Bootstrapping { primary: None, fresh }, epoch: 0 }
    }
}

/// How long a chosen member may take to report itself a primary before it
/// is fenced and another is chosen. Its Lease stays renewed meanwhile (a
/// long promotion is not a lost member); this bounds a promotion that fails.
const PROMOTION_TIMEOUT_MS: Millis = 60_000;

/// Decide what every member should be now. Call it on every reconcile with
/// fresh observations; it is idempotent when nothing changed.
pub fn step(engine: &Engine, members: &[Member], policy: &Policy, now: Millis) -> Decision {
    // An agent ignores instructions older than one it has seen (a store
    // re-created over kept volumes starts with a new status): start above.
    let seen = members
        .iter()
        .filter_map(|m| m.report.as_ref())
        .map(|r| r.epoch.max(r.lineage.unwrap_or(0)))
        .max()
        .unwrap_or(0);
    let behind = seen > engine.epoch;
    let epoch = engine.epoch.max(seen);
    let mut ctx =
        Ctx { members, policy, now, bumped: epoch + 1, steps: Vec::new(), revoke: Vec::new(), blocked: None };
    let next = ctx.next(&engine.state);

    let before = instructions(&engine.state, members, epoch);
    let mut after = instructions(&next, members, epoch);
    let epoch = if behind || before != after {
        for instruction in after.values_mut() {
            instruction.epoch = epoch + 1;
        }
        epoch + 1
    } else {
        epoch
    };
    let routes = routes(&next, &after, members);
    let mut steps = ctx.steps;
    for m in members {
        let returning = m.alive() && m.report.as_ref().is_some_and(|r| r.acting_on == Desired::Fenced);
        if returning && after.get(&m.name).is_some_and(|i| i.desired == Desired::Mirror) {
            steps.push(Step::Rejoining { member: m.name.clone() });
        }
    }
    Decision {
        engine: Engine { state: next, epoch },
        instructions: after,
        routes,
        revoke: ctx.revoke,
        steps,
        blocked: ctx.blocked,
    }
}

/// One step's inputs and what it collects besides the next state.
struct Ctx<'a> {
    members: &'a [Member],
    policy: &'a Policy,
    now: Millis,
    /// The epoch of the next instructions, should they change.
    bumped: Epoch,
    steps: Vec<Step>,
    revoke: Vec<String>,
    blocked: Option<Blocked>,
}

impl<'a> Ctx<'a> {
    fn find(&self, name: &str) -> Option<&'a Member> {
        self.members.iter().find(|m| m.name == name)
    }

    fn next(&mut self, state: &State) -> State {
        match state {
            State::Bootstrapping { primary, fresh } => self.bootstrapping(primary.as_deref(), *fresh),
            State::Steady { primary, relaxed } => self.steady(primary, *relaxed),
            State::Suspect { primary, since, last_position } => {
                let current = self.find(primary);
                let last = current.and_then(Member::known_position).max(*last_position);
                if current.is_some_and(Member::serving_primary) {
                    self.steps.push(Step::PrimaryRecovered { primary: primary.clone() });
                    State::Steady { primary: primary.clone(), relaxed: false }
                } else {
                    self.suspect_or_fence(primary, *since, last)
                }
            }
            State::Fencing { old, epoch, started, last_position } => {
                self.fencing(old, *epoch, *started, *last_position)
            }
            State::Promoting { old, candidate, started, since, lag_bytes, planned } => {
                self.promoting(old, candidate, (*started, *since), *lag_bytes, *planned)
            }
            State::Demoting { old, target, epoch, asked_at, started } => {
                self.demoting(old, target, *epoch, *asked_at, *started)
            }
        }
    }

    /// Choose the first primary: at once for a fresh store; over kept data,
    /// only once every member said what it holds, the most advanced.
    fn bootstrapping(&mut self, chosen: Option<&str>, fresh: bool) -> State {
        if let Some(primary) = chosen {
            if self.find(primary).is_some_and(Member::serving_primary) {
                return State::Steady { primary: primary.to_string(), relaxed: false };
            }
            return State::Bootstrapping { primary: Some(primary.to_string()), fresh };
        }
        // An operator that lost its status finds a primary already serving.
        let serving: Vec<&Member> = self.members.iter().filter(|m| m.serving_primary()).collect();
        if let [only] = serving.as_slice() {
            return State::Steady { primary: only.name.clone(), relaxed: false };
        }
        let holds_data = |m: &&Member| m.report.as_ref().is_some_and(|r| r.data != DataState::Empty);
        let first = || self.policy.requested_primary.clone().unwrap_or_else(|| self.members[0].name.clone());
        if fresh && !self.members.iter().any(|m| holds_data(&m)) {
            let primary = first();
            self.steps.push(Step::Bootstrapping { primary: primary.clone(), initialize: true });
            return State::Bootstrapping { primary: Some(primary), fresh: true };
        }
        // A person's choice wins when it can serve: the way out when a
        // member that may hold newer data never comes back.
        let policy = self.policy;
        let requested = policy.requested_primary.as_deref().and_then(|r| self.find(r));
        if let Some(r) = requested.filter(|r| r.alive() && holds_data(r) && r.known_position().is_some()) {
            self.steps.push(Step::Bootstrapping { primary: r.name.clone(), initialize: false });
            return State::Bootstrapping { primary: Some(r.name.clone()), fresh: false };
        }
        let waiting: Vec<String> = self
            .members
            .iter()
            .filter(|m| {
                !m.alive() || (holds_data(m) && m.report.as_ref().is_some_and(|r| r.position.is_none()))
            })
            .map(|m| m.name.clone())
            .collect();
        if !waiting.is_empty() {
            self.blocked = Some(Blocked::AwaitingMembers { members: waiting });
            return State::Bootstrapping { primary: None, fresh };
        }
        let best = self.members.iter().filter(holds_data).max_by(|a, b| {
            let key = |m: &Member| {
                let r = m.report.as_ref();
                (
                    r.and_then(|r| r.lineage),
                    r.is_some_and(|r| r.data == DataState::Primary),
                    m.known_position(),
                )
            };
            key(a).cmp(&key(b)).then_with(|| b.name.cmp(&a.name))
        });
        match best {
            Some(best) => {
                self.steps.push(Step::Bootstrapping { primary: best.name.clone(), initialize: false });
                State::Bootstrapping { primary: Some(best.name.clone()), fresh: false }
            }
            // Every member reported an empty volume: nothing to lose.
            None => {
                let primary = first();
                self.steps.push(Step::Bootstrapping { primary: primary.clone(), initialize: true });
                State::Bootstrapping { primary: Some(primary), fresh: true }
            }
        }
    }

    fn steady(&mut self, primary: &str, relaxed: bool) -> State {
        let current = self.find(primary);
        if !current.is_some_and(Member::serving_primary) {
            self.steps.push(Step::PrimaryUnhealthy { primary: primary.to_string() });
            let last = current.and_then(Member::known_position);
            return self.suspect_or_fence(primary, self.now, last);
        }
        let target = self.policy.requested_primary.as_deref().filter(|t| *t != primary);
        let members = self.members;
        let behind = |t: &str| {
            let position = |m: &Member| m.live_report().and_then(|r| r.position);
            let target = members.iter().find(|m| m.name == t);
            let (p, t) = (current.and_then(position), target.and_then(position));
            match (p, t) {
                (Some(p), Some(t)) => Some(p.saturating_sub(t)),
                _ => None,
            }
        };
        let max_lag = self.policy.max_lag_bytes;
        let ready = |t: &&str| {
            members.iter().find(|m| m.name == *t).is_some_and(|m| m.streams_from(primary))
                && behind(t).is_some_and(|lag| lag <= max_lag)
        };
        if let Some(waiting) = target.filter(|t| !ready(t)) {
            self.blocked =
                Some(Blocked::TargetBehind { target: waiting.to_string(), lag_bytes: behind(waiting) });
        }
        if let Some(target) = target.filter(ready) {
            self.steps.push(Step::SwitchoverStarted { from: primary.to_string(), to: target.to_string() });
            return State::Demoting {
                old: primary.to_string(),
                target: target.to_string(),
                epoch: self.bumped,
                asked_at: self.now,
                started: self.now,
            };
        }
        let alone = self.policy.synchronous
            && self.policy.relax_when_alone
            && !self.members.iter().any(|m| m.name != primary && m.streams_from(primary));
        match (relaxed, alone) {
            (false, true) => self.steps.push(Step::DurabilityRelaxed { primary: primary.to_string() }),
            (true, false) => self.steps.push(Step::DurabilityRestored { primary: primary.to_string() }),
            _ => {}
        }
        State::Steady { primary: primary.to_string(), relaxed: alone }
    }

    /// Still suspect before the delay has passed; fenced after it.
    fn suspect_or_fence(&mut self, primary: &str, since: Millis, last_position: Option<u64>) -> State {
        if self.now.saturating_sub(since) < self.policy.delay_ms {
            return State::Suspect { primary: primary.to_string(), since, last_position };
        }
        self.steps.push(Step::Fenced { member: primary.to_string() });
        State::Fencing { old: primary.to_string(), epoch: self.bumped, started: since, last_position }
    }

    /// Revoke `member`'s Lease if it went stale: the fence waits on it.
    fn revoke_if_stale(&mut self, member: Option<&Member>) {
        if let Some(m) = member.filter(|m| m.lease == Lease::Stale) {
            self.revoke.push(m.name.clone());
        }
    }

    fn fencing(&mut self, old: &str, epoch: Epoch, started: Millis, last_position: Option<u64>) -> State {
        let old_member = self.find(old);
        let last = old_member.and_then(Member::known_position).max(last_position);
        let waiting = State::Fencing { old: old.to_string(), epoch, started, last_position: last };
        // A member that no longer exists takes no writes.
        if !old_member.is_none_or(|o| o.fenced_since(epoch)) {
            self.revoke_if_stale(old_member);
            return waiting;
        }
        match self.choose(old, epoch, last) {
            Ok((candidate, lag_bytes)) => {
                let position = self.find(&candidate).and_then(|c| c.report.as_ref()).and_then(|r| r.position);
                self.steps.push(Step::Promoting { member: candidate.clone(), position });
                State::Promoting {
                    old: old.to_string(),
                    candidate,
                    started,
                    since: self.now,
                    lag_bytes,
                    planned: false,
                }
            }
            Err(_)
                if self
                    .members
                    .iter()
                    .all(|m| m.alive() && m.report.as_ref().is_some_and(|r| r.data == DataState::Empty)) =>
            {
                // Every member is back and none kept any data (a store
                // without volumes lost them all): nothing left to lose.
                let primary =
                    self.policy.requested_primary.clone().unwrap_or_else(|| self.members[0].name.clone());
                self.steps.push(Step::Bootstrapping { primary: primary.clone(), initialize: true });
                State::Bootstrapping { primary: Some(primary), fresh: true }
            }
            Err(reason) => {
                // Nobody can take over, but the old primary is back with its
                // data: it becomes primary again (nobody else was promoted).
                let back = old_member.is_some_and(|o| {
                    o.alive() && o.report.as_ref().is_some_and(|r| r.data != DataState::Empty)
                });
                if back && reason != Blocked::AwaitingPositions {
                    self.steps.push(Step::PrimaryRecovered { primary: old.to_string() });
                    return State::Steady { primary: old.to_string(), relaxed: false };
                }
                self.blocked = Some(reason);
                waiting
            }
        }
    }

    /// The member to promote, and how far it is behind the old primary's
    /// last known position (None: not known, sync mode).
    fn choose(&self, old: &str, epoch: Epoch, last: Option<u64>) -> Result<(String, Option<u64>), Blocked> {
        let policy = self.policy;
        if !policy.enabled {
            return Err(Blocked::Disabled);
        }
        let others: Vec<&Member> = self.members.iter().filter(|m| m.name != old).collect();
        // Every member that can hear us stops receiving from the old primary
        // before positions are compared: the old one, were it still alive,
        // can no longer gather acknowledgements the new one would lack.
        if others.iter().any(|m| m.alive() && !m.detached_since(epoch)) {
            return Err(Blocked::AwaitingPositions);
        }
        let position = |m: &Member| m.report.as_ref().and_then(|r| r.position).unwrap_or(0);
        let mirrors: Vec<&Member> = others
            .iter()
            .copied()
            .filter(|m| {
                m.role() == Some(ServerRole::Mirror)
                    && m.report.as_ref().is_some_and(|r| r.position.is_some())
            })
            .collect();
        if mirrors.is_empty() {
            return Err(Blocked::NoHealthyMirror);
        }
        // With synchronous commits (`ANY 1` of the mirrors) an acknowledged
        // write is on at least one mirror, perhaps only one: the choice needs
        // every other member's position (one that cannot report might hold
        // the only copy) and goes to a mirror holding the highest.
        if policy.synchronous && !policy.force {
            if others.iter().any(|m| !m.alive()) {
                return Err(Blocked::AwaitingPositions);
            }
            // A member whose data did not survive holds no copy, whatever
            // position it had reached.
            let highest = others
                .iter()
                .filter_map(|m| m.report.as_ref())
                .filter(|r| r.data != DataState::Empty)
                .filter_map(Report::known_position)
                .max()
                .unwrap_or(0);
            let holder = mirrors.iter().filter(|m| position(m) >= highest).min_by(|a, b| a.name.cmp(&b.name));
            return holder
                .map(|m| (m.name.clone(), last.map(|l| l.saturating_sub(position(m)))))
                .ok_or(Blocked::AwaitingPositions);
        }
        let best = mirrors
            .iter()
            .max_by(|a, b| position(a).cmp(&position(b)).then_with(|| b.name.cmp(&a.name)))
            .ok_or(Blocked::NoHealthyMirror)?;
        let lag = match last {
            Some(last) => last.saturating_sub(position(best)),
            None if policy.force => 0,
            None => return Err(Blocked::LagUnknown),
        };
        if lag > policy.max_lag_bytes && !policy.force {
            return Err(Blocked::LagTooHigh { best: best.name.clone(), lag_bytes: lag });
        }
        Ok((best.name.clone(), Some(lag)))
    }

    fn promoting(
        &mut self,
        old: &str,
        candidate: &str,
        (started, since): (Millis, Millis),
        lag_bytes: Option<u64>,
        planned: bool,
    ) -> State {
        let chosen = self.find(candidate);
        let promoted = chosen.is_some_and(|c| {
            c.serving_primary() && c.report.as_ref().is_some_and(|r| r.acting_on == Desired::Primary)
        });
        if promoted {
            self.steps.push(Step::Promoted {
                member: candidate.to_string(),
                duration_ms: self.now.saturating_sub(started),
                lag_bytes,
            });
            return State::Steady { primary: candidate.to_string(), relaxed: false };
        }
        let lost = chosen.is_none_or(|c| c.lease == Lease::Revoked);
        // Its server stopped while told to be primary (its pod restarted
        // mid-promotion): it waits for a newer instruction, so choose again.
        let stopped = chosen
            .and_then(|c| c.live_report())
            .is_some_and(|r| r.acting_on == Desired::Primary && r.role == ServerRole::Stopped);
        let too_slow = self.now.saturating_sub(since) >= PROMOTION_TIMEOUT_MS;
        if lost || stopped || too_slow {
            // Fenced like a lost primary: it is known to take no writes
            // before anyone else is chosen.
            self.steps.push(Step::Fenced { member: candidate.to_string() });
            let last = chosen.and_then(Member::known_position);
            return State::Fencing {
                old: candidate.to_string(),
                epoch: self.bumped,
                started,
                last_position: last,
            };
        }
        self.revoke_if_stale(chosen);
        State::Promoting {
            old: old.to_string(),
            candidate: candidate.to_string(),
            started,
            since,
            lag_bytes,
            planned,
        }
    }

    fn demoting(
        &mut self,
        old: &str,
        target: &str,
        epoch: Epoch,
        asked_at: Millis,
        started: Millis,
    ) -> State {
        let (old_member, target_member) = (self.find(old), self.find(target));
        let last = old_member.and_then(Member::known_position);
        let timed_out = self.now.saturating_sub(asked_at) >= demotion_timeout(self.policy);
        let as_failure =
            State::Fencing { old: old.to_string(), epoch: self.bumped, started, last_position: last };
        let old_can_serve = old_member
            .is_some_and(|o| o.alive() && o.report.as_ref().is_some_and(|r| r.data != DataState::Empty));
        if !target_member.is_some_and(|t| t.role() == Some(ServerRole::Mirror)) {
            // The target went away before taking over.
            if old_can_serve {
                self.steps
                    .push(Step::SwitchoverAborted { primary: old.to_string(), why: "the target stopped" });
                return State::Steady { primary: old.to_string(), relaxed: false };
            }
            return as_failure;
        }
        if old_member.is_none_or(|o| o.lease == Lease::Revoked) {
            // Lost mid-demotion: its last report may predate writes that
            // reached other mirrors, so choose as after a failure.
            return as_failure;
        }
        let demoting =
            State::Demoting { old: old.to_string(), target: target.to_string(), epoch, asked_at, started };
        if !old_member.is_some_and(|o| o.fenced_since(epoch)) {
            self.revoke_if_stale(old_member);
            if timed_out && old_can_serve {
                self.steps.push(Step::SwitchoverAborted {
                    primary: old.to_string(),
                    why: "it did not stop taking writes in time",
                });
                return State::Steady { primary: old.to_string(), relaxed: false };
            }
            return demoting;
        }
        // A clean demotion: the old primary reported its final position,
        // which a target must have reached; an unknown one is never reached.
        let caught_up = target_member
            .and_then(|t| t.report.as_ref())
            .is_some_and(|r| r.epoch >= epoch && matches!((r.position, last), (Some(p), Some(l)) if p >= l));
        if caught_up {
            self.steps.push(Step::Promoting { member: target.to_string(), position: last });
            return State::Promoting {
                old: old.to_string(),
                candidate: target.to_string(),
                started,
                since: self.now,
                lag_bytes: Some(0),
                planned: true,
            };
        }
        if timed_out {
            // The target never received everything (the old primary
            // stopped uncleanly): choose under the failure rules.
            return as_failure;
        }
        demoting
    }
}

/// How long a planned demotion may wait for the old primary to stop and
/// the target to catch up before it is treated like a failure.
fn demotion_timeout(policy: &Policy) -> Millis {
    policy.delay_ms.max(5_000).saturating_mul(2)
}

/// What every member's agent is told in `state` (at `epoch`).
pub(super) fn instructions(state: &State, members: &[Member], epoch: Epoch) -> BTreeMap<String, Instruction> {
    /// Who is told what in one state.
    #[derive(Default)]
    struct Plan<'s> {
        primary: Option<&'s String>,
        fenced: Option<&'s String>,
        upstream: Option<&'s String>,
        initialize: bool,
        relaxed: bool,
    }
    let plan = match state {
        State::Bootstrapping { primary: None, .. } => Plan::default(),
        // Mirrors copy the first primary only once it serves (Steady): until
        // then it alone holds data, so initialising it again is harmless.
        State::Bootstrapping { primary: Some(p), fresh } => {
            Plan { primary: Some(p), initialize: *fresh, ..Plan::default() }
        }
        State::Steady { primary, relaxed } => {
            Plan { primary: Some(primary), upstream: Some(primary), relaxed: *relaxed, ..Plan::default() }
        }
        State::Suspect { primary, .. } => {
            Plan { primary: Some(primary), upstream: Some(primary), ..Plan::default() }
        }
        // Mirrors stop receiving from a fenced primary (see `choose`)...
        State::Fencing { old, .. } => Plan { fenced: Some(old), ..Plan::default() },
        State::Promoting { old, candidate, .. } => {
            Plan { primary: Some(candidate), fenced: Some(old), upstream: Some(candidate), ..Plan::default() }
        }
        // ...but not from one demoting cleanly: they take its last writes.
        State::Demoting { old, .. } => Plan { fenced: Some(old), upstream: Some(old), ..Plan::default() },
    };
    members
        .iter()
        .map(|m| {
            let instruction = if Some(&m.name) == plan.primary {
                Instruction {
                    initialize: plan.initialize,
                    relaxed: plan.relaxed,
                    ..Instruction::new(Desired::Primary, epoch)
                }
            } else if Some(&m.name) == plan.fenced {
                Instruction::new(Desired::Fenced, epoch)
            } else {
                Instruction::new(Desired::Mirror, epoch).upstream(plan.upstream.cloned())
            };
            (m.name.clone(), instruction)
        })
        .collect()
}

/// Writes go to the member told to be primary once it serves as one; reads
/// to mirrors streaming from it, or, while a failover is under way, to any
/// running mirror (stale but consistent reads beat none).
fn routes(
    state: &State,
    instructions: &BTreeMap<String, Instruction>,
    members: &[Member],
) -> BTreeMap<String, Route> {
    let told = |m: &Member| instructions.get(&m.name).map(|i| i.desired);
    let writer = members.iter().find(|m| told(m) == Some(Desired::Primary) && m.serving_primary());
    let failing_over = matches!(
        state,
        State::Suspect { .. } | State::Fencing { .. } | State::Promoting { .. } | State::Demoting { .. }
    );
    members
        .iter()
        .map(|m| {
            let route = match (told(m), m.role()) {
                (Some(Desired::Primary), Some(ServerRole::Primary)) => Route::ReadWrite,
                (Some(Desired::Mirror), Some(ServerRole::Mirror)) => match writer {
                    Some(w) if m.streams_from(&w.name) => Route::ReadOnly,
                    None if failing_over => Route::ReadOnly,
                    _ => Route::None,
                },
                _ => Route::None,
            };
            (m.name.clone(), route)
        })
        .collect()
}

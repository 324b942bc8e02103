//! [`step`]: one decision of the failover engine.

use std::collections::BTreeMap;

use super::{Blocked, Decision, Desired, Member, Millis, Policy, Route, ServerRole, State, Step};

/// Decide what every member should be now. Call it on every reconcile with
/// fresh observations; it is idempotent when nothing changed.
pub fn step(state: &State, members: &[Member], policy: &Policy, now: Millis) -> Decision {
    let mut steps = Vec::new();
    let mut blocked = None;
    let find = |name: &str| members.iter().find(|m| m.name == name);

    let next = match state {
        State::Bootstrapping { primary } => match members.iter().find(|m| m.serving_primary()) {
            // A primary already runs (e.g. the operator restarted): adopt it.
            Some(serving) => State::Steady { primary: serving.name.clone() },
            None => State::Bootstrapping { primary: primary.clone() },
        },

        State::Steady { primary } => {
            let current = find(primary);
            let target = policy.requested_primary.as_deref().filter(|t| *t != primary.as_str());
            let target_ready = target.and_then(&find).is_some_and(|t| t.role() == Some(ServerRole::Mirror));
            match (current.is_some_and(Member::serving_primary), target) {
                (true, Some(target)) if target_ready => {
                    steps.push(Step::SwitchoverStarted { from: primary.clone(), to: target.to_string() });
                    State::Demoting {
                        old: primary.clone(),
                        target: target.to_string(),
                        asked_at: now,
                        started: now,
                    }
                }
                (true, _) => State::Steady { primary: primary.clone() },
                (false, _) => {
                    steps.push(Step::PrimaryUnhealthy { primary: primary.clone() });
                    suspect_or_fence(primary, now, now, current, policy, &mut steps)
                }
            }
        }

        State::Suspect { primary, since } => {
            let current = find(primary);
            if current.is_some_and(Member::serving_primary) {
                steps.push(Step::PrimaryRecovered { primary: primary.clone() });
                State::Steady { primary: primary.clone() }
            } else {
                suspect_or_fence(primary, *since, now, current, policy, &mut steps)
            }
        }

        State::Fencing { old, fenced_at, started, last_position } => {
            let old_member = find(old);
            // A member that no longer exists takes no writes.
            if !old_member.is_none_or(|o| o.fenced_since(*fenced_at)) {
                State::Fencing {
                    old: old.clone(),
                    fenced_at: *fenced_at,
                    started: *started,
                    last_position: *last_position,
                }
            } else {
                match choose(old, *fenced_at, *last_position, members, policy) {
                    Ok(candidate) => {
                        let position = find(&candidate).and_then(|c| c.report).and_then(|r| r.position);
                        steps.push(Step::Promoting { member: candidate.clone(), position });
                        State::Promoting { old: old.clone(), candidate, started: *started }
                    }
                    Err(reason) => {
                        let waiting = reason == Blocked::AwaitingPositions;
                        blocked = Some(reason);
                        match old_member {
                            // Nobody can take over but the old primary is back:
                            // it becomes primary again (nobody else was promoted).
                            Some(o) if o.alive() && !waiting => {
                                steps.push(Step::PrimaryRecovered { primary: old.clone() });
                                blocked = None;
                                State::Steady { primary: old.clone() }
                            }
                            _ => State::Fencing {
                                old: old.clone(),
                                fenced_at: *fenced_at,
                                started: *started,
                                last_position: *last_position,
                            },
                        }
                    }
                }
            }
        }

        State::Promoting { old, candidate, started } => {
            let chosen = find(candidate);
            if chosen.is_some_and(Member::serving_primary) {
                steps.push(Step::Promoted {
                    member: candidate.clone(),
                    duration_ms: now.saturating_sub(*started),
                });
                State::Steady { primary: candidate.clone() }
            } else if chosen.is_none_or(|c| c.lease_expired) {
                // Lost while promoting: it fenced itself; choose again.
                steps.push(Step::Fenced { member: candidate.clone() });
                let last_position = chosen.and_then(|c| c.report).and_then(|r| r.position);
                State::Fencing { old: candidate.clone(), fenced_at: now, started: *started, last_position }
            } else {
                State::Promoting { old: old.clone(), candidate: candidate.clone(), started: *started }
            }
        }

        State::Demoting { old, target, asked_at, started } => {
            let (old_member, target_member) = (find(old), find(target));
            let demoting = State::Demoting {
                old: old.clone(),
                target: target.clone(),
                asked_at: *asked_at,
                started: *started,
            };
            let last_position = old_member.and_then(|o| o.report).and_then(|r| r.position);
            let as_failure =
                State::Fencing { old: old.clone(), fenced_at: *asked_at, started: *started, last_position };
            if target_member.is_none_or(|t| t.role() != Some(ServerRole::Mirror)) {
                // The target went away before taking over: keep the old primary.
                State::Steady { primary: old.clone() }
            } else if old_member.is_none_or(|o| o.lease_expired) {
                // Lost mid-demotion: its last report may predate writes that
                // reached other mirrors, so choose as after a failure.
                as_failure
            } else if !old_member.is_some_and(|o| o.fenced_since(*asked_at)) {
                demoting
            } else {
                // A clean demotion: the old primary reported its final position.
                let caught_up = target_member
                    .and_then(|t| t.report)
                    .is_some_and(|r| r.after(*asked_at) && r.position >= last_position);
                if caught_up {
                    steps.push(Step::Promoting { member: target.clone(), position: last_position });
                    State::Promoting { old: old.clone(), candidate: target.clone(), started: *started }
                } else if now.saturating_sub(*asked_at) >= demotion_timeout(policy) {
                    // The target never received everything (the old primary
                    // stopped uncleanly): choose under the failure rules.
                    as_failure
                } else {
                    demoting
                }
            }
        }
    };

    let desired = desired_roles(&next, members);
    let routes = members
        .iter()
        .map(|m| {
            let route = match (desired.get(&m.name), m.role()) {
                (Some(Desired::Primary), Some(ServerRole::Primary)) => Route::ReadWrite,
                (Some(Desired::Mirror), Some(ServerRole::Mirror)) => Route::ReadOnly,
                _ => Route::None,
            };
            (m.name.clone(), route)
        })
        .collect();
    for m in members {
        let returning = m.alive() && m.report.is_some_and(|r| r.acting_on == Desired::Fenced);
        if returning && desired.get(&m.name) == Some(&Desired::Mirror) {
            steps.push(Step::Rejoining { member: m.name.clone() });
        }
    }
    Decision { state: next, desired, routes, steps, blocked }
}

/// How long a planned demotion may wait for the target to catch up before it
/// is treated like a failure.
fn demotion_timeout(policy: &Policy) -> Millis {
    policy.delay_ms.max(1_000).saturating_mul(2)
}

/// Still suspect before the delay has passed; fenced after it.
fn suspect_or_fence(
    primary: &str,
    since: Millis,
    now: Millis,
    current: Option<&Member>,
    policy: &Policy,
    steps: &mut Vec<Step>,
) -> State {
    if now.saturating_sub(since) < policy.delay_ms {
        return State::Suspect { primary: primary.to_string(), since };
    }
    steps.push(Step::Fenced { member: primary.to_string() });
    let last_position = current.and_then(|c| c.report).and_then(|r| r.position);
    State::Fencing { old: primary.to_string(), fenced_at: now, started: since, last_position }
}

/// The most advanced healthy mirror, if one may be promoted.
fn choose(
    old: &str,
    fenced_at: Millis,
    last_position: Option<u64>,
    members: &[Member],
    policy: &Policy,
) -> Result<String, Blocked> {
    if !policy.enabled {
        return Err(Blocked::Disabled);
    }
    let mirrors: Vec<&Member> =
        members.iter().filter(|m| m.name != old && m.role() == Some(ServerRole::Mirror)).collect();
    if mirrors.is_empty() {
        return Err(Blocked::NoHealthyMirror);
    }
    // With synchronous commits (`ANY 1` of the mirrors) an acknowledged write
    // is on at least one mirror, but possibly only one: the choice needs every
    // other member's position as of after the fence (a member that cannot
    // report might hold the only copy), and must go to a mirror holding the
    // highest of them.
    if policy.synchronous && !policy.force {
        let others: Vec<&Member> = members.iter().filter(|m| m.name != old).collect();
        if others.iter().any(|m| !m.alive() || m.report.is_none_or(|r| !r.after(fenced_at))) {
            return Err(Blocked::AwaitingPositions);
        }
        let highest = others.iter().filter_map(|m| m.report.and_then(|r| r.position)).max().unwrap_or(0);
        let holder = mirrors
            .iter()
            .filter(|m| m.report.and_then(|r| r.position).unwrap_or(0) >= highest)
            .min_by(|a, b| a.name.cmp(&b.name));
        return holder.map(|m| m.name.clone()).ok_or(Blocked::AwaitingPositions);
    }
    let best = mirrors
        .iter()
        .max_by(|a, b| {
            let pos = |m: &&&Member| m.report.and_then(|r| r.position).unwrap_or(0);
            pos(a).cmp(&pos(b)).then_with(|| b.name.cmp(&a.name))
        })
        .ok_or(Blocked::NoHealthyMirror)?;
    let position = best.report.and_then(|r| r.position).unwrap_or(0);
    let lag = last_position.map_or(0, |last| last.saturating_sub(position));
    if lag > policy.max_lag_bytes && !policy.force {
        return Err(Blocked::LagTooHigh { best: best.name.clone(), lag_bytes: lag });
    }
    Ok(best.name.clone())
}

/// What every member's agent is told, given the state.
fn desired_roles(state: &State, members: &[Member]) -> BTreeMap<String, Desired> {
    let (primary, fenced): (Option<&str>, Option<&str>) = match state {
        State::Bootstrapping { primary } | State::Steady { primary } | State::Suspect { primary, .. } => {
            (Some(primary), None)
        }
        State::Fencing { old, .. } | State::Demoting { old, .. } => (None, Some(old)),
        State::Promoting { old, candidate, .. } => (Some(candidate), Some(old)),
    };
    members
        .iter()
        .map(|m| {
            let desired = if Some(m.name.as_str()) == primary {
                Desired::Primary
            } else if Some(m.name.as_str()) == fenced {
                Desired::Fenced
            } else {
                Desired::Mirror
            };
            (m.name.clone(), desired)
        })
        .collect()
}

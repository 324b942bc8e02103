//! Day-2 moves of a replicated store, decided in one pure step: rolling the
//! members onto a changed template, switching over off a node that is being
//! drained, and letting go of members the spec no longer has.
//!
//! The planner never acts on the data itself. It names at most one member
//! pod to replace (the reconciler deletes it and builds it again from the
//! template over the same volume) and, when the primary must move, the
//! member the failover engine should switch over to: the engine's planned
//! switchover (clean demotion, caught-up target) does the rest, so a day-2
//! move is exactly as safe as a switchover.
//!
//! It only moves while the engine is steady, and only one thing at a time:
//! a member is touched only when every other member streams from the
//! primary within `failover.maxLagBytes`, and counts as updated only once
//! the agent in its *new* pod reports it streaming.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::common::{PrimaryUpdate, RolloutStatus};
use crate::contract::SettingsReport;
use crate::failover::Member;

/// How long a member replaced by the rollout may take to stream from the
/// primary before the rollout halts on it.
pub const UPDATE_TIMEOUT_MS: u64 = 90_000;
/// How long the agent of a replaced member may run without getting its
/// server to start before the rollout halts on it (a replaced member over
/// its own volume starts in seconds).
pub const START_TIMEOUT_MS: u64 = 30_000;
/// With `primary: restart`: how long the restarted primary may be down
/// before the failover engine treats it as lost.
pub const RESTART_GRACE_MS: u64 = 60_000;

/// A member pod as the planner needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFacts {
    /// The template revision it was built from.
    pub revision: String,
    /// When the API server created it (Unix milliseconds).
    pub created_ms: u64,
    /// Being deleted.
    pub terminating: bool,
    /// The node it runs on, once scheduled.
    pub node: Option<String>,
    /// Its member's Lease was last renewed by the agent in *this* pod: the
    /// report describes this pod, not a predecessor.
    pub reporting: bool,
    /// The settings key the pod tells its agent to run with.
    pub settings: Option<String>,
    /// What the agent in this pod reports of its settings.
    pub settings_report: SettingsReport,
}

/// Everything one plan is made from.
pub struct Input<'a> {
    /// The members the spec has, in order.
    pub members: &'a [Member],
    /// Members whose pods exist but that the spec no longer has.
    pub extra: &'a [String],
    /// Pods of the members (and of the extra ones), by member.
    pub pods: &'a BTreeMap<String, PodFacts>,
    /// The revision of the current template.
    pub revision: &'a str,
    /// The settings key of the current template (settings that differ only
    /// in what a reload applies share a revision, not a key).
    pub settings_key: &'a str,
    /// The primary, when the engine is steady (no failover or switchover
    /// under way); None otherwise.
    pub steady_primary: Option<&'a str>,
    /// The member the engine last told to be primary, steady or not.
    pub engine_primary: Option<&'a str>,
    pub strategy: PrimaryUpdate,
    /// `spec.primary`.
    pub requested_primary: Option<&'a str>,
    pub max_lag_bytes: u64,
    /// Commits wait for a mirror: a member may go only while another streams.
    pub synchronous: bool,
    /// Nodes marked unschedulable (cordoned, or being drained).
    pub cordoned: &'a BTreeSet<String>,
    /// Why the template change may not be rolled (e.g. a major version).
    pub refused: Option<String>,
    /// The last status showed a rollout: a member replaced last is still
    /// part of it until it catches up (a new store's members are not).
    pub was_rolling: bool,
    pub now_ms: u64,
}

/// What a drain of the primary's node needs from the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drain {
    /// The primary's node is not cordoned.
    None,
    /// Switching over to `to` so that `node` can be drained.
    SwitchingOver { node: String, to: String },
    /// The primary stays on `node`, for `reason`.
    Blocked { node: String, reason: String },
}

/// What to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The member whose pod to delete now, to be built again from the template.
    pub replace: Option<String>,
    /// The member to tell to load the current settings without a restart.
    pub reload: Option<String>,
    /// The member the engine should make primary (a planned switchover when
    /// it is not the primary already); None: keep the primary.
    pub primary: Option<String>,
    /// The primary is being restarted in place on purpose: the engine waits
    /// [`RESTART_GRACE_MS`] before it treats it as lost.
    pub restarting_primary: bool,
    /// Members the spec no longer has whose pods may be removed now.
    pub remove: Vec<String>,
    /// A member the spec no longer has that must stay for now, and why.
    pub shrink_waiting: Option<String>,
    pub drain: Drain,
    /// None when every member runs the template.
    pub rollout: Option<RolloutStatus>,
    /// The Progressing reason of the rollout: `RollingUpdate`,
    /// `AwaitingSwitchover`, `RolloutHalted` or `UpdateRefused`.
    pub reason: &'static str,
}

impl Plan {
    /// Nothing to do.
    pub const fn idle() -> Self {
        Plan {
            replace: None,
            reload: None,
            primary: None,
            restarting_primary: false,
            remove: Vec::new(),
            shrink_waiting: None,
            drain: Drain::None,
            rollout: None,
            reason: ROLLING,
        }
    }

    /// The rollout stopped on a member that did not come back.
    pub fn halted(&self) -> bool {
        self.rollout.as_ref().is_some_and(|r| r.halted_on.is_some())
    }
}

const ROLLING: &str = "RollingUpdate";

/// The day-2 plan for one reconcile.
pub fn plan(input: &Input) -> Plan {
    let view = View { input };
    let restarting_primary = view.restarting_primary();
    let mut plan = Plan { primary: view.requested_primary(), restarting_primary, ..Plan::idle() };
    let Some(primary) = input.steady_primary else {
        plan.rollout = view.rollout_status(Some("a failover or switchover to finish".into()), None);
        return plan;
    };
    plan.drain = view.drain(primary);
    if let Drain::SwitchingOver { to, .. } = &plan.drain {
        plan.primary = Some(to.clone());
        plan.rollout = view.rollout_status(Some(format!("the switchover to {to} (drain)")), None);
        return plan;
    }
    if let Some((target, why)) = view.shrink(primary, &mut plan.remove) {
        if let Some(target) = target {
            plan.primary = Some(target);
        }
        plan.shrink_waiting = Some(why);
    }
    view.roll(primary, &mut plan);
    plan
}

/// The input with the questions the rules ask of it.
struct View<'a> {
    input: &'a Input<'a>,
}

impl View<'_> {
    fn member(&self, name: &str) -> Option<&Member> {
        self.input.members.iter().find(|m| m.name == name)
    }

    fn pod(&self, name: &str) -> Option<&PodFacts> {
        self.input.pods.get(name)
    }

    fn on_cordoned_node(&self, name: &str) -> bool {
        self.pod(name).and_then(|p| p.node.as_ref()).is_some_and(|n| self.input.cordoned.contains(n))
    }

    /// Its pod runs the current revision (and is not going away).
    fn updated(&self, name: &str) -> bool {
        self.pod(name).is_some_and(|p| p.revision == self.input.revision && !p.terminating)
    }

    /// Its agent runs the current settings (a pod built with them, or one
    /// that loaded them since).
    fn settings_current(&self, name: &str) -> bool {
        let key = Some(self.input.settings_key);
        self.pod(name).is_some_and(|p| {
            p.settings.as_deref() == key && p.reporting && p.settings_report.applied.as_deref() == key
        })
    }

    /// On the current revision, but not yet on the current settings.
    fn settings_stale(&self, name: &str) -> bool {
        self.updated(name) && !self.settings_current(name)
    }

    /// The agent in its current pod reports it streaming from `primary`
    /// within `failover.maxLagBytes`.
    fn caught_up(&self, name: &str, primary: &str) -> bool {
        let position = |m: &Member| m.live_report().and_then(|r| r.position);
        let primary_position = self.member(primary).and_then(position);
        self.pod(name).is_some_and(|p| p.reporting && !p.terminating)
            && self.member(name).is_some_and(|m| {
                m.streams_from(primary)
                    && matches!((primary_position, position(m)),
                        (Some(p), Some(at)) if p.saturating_sub(at) <= self.input.max_lag_bytes)
            })
    }

    /// Why a member replaced on the new revision is taken not to come back:
    /// its agent runs but cannot start its server for [`START_TIMEOUT_MS`]
    /// (a setting the server refuses), or it does not stream within
    /// [`UPDATE_TIMEOUT_MS`]. Judged anew on every step: one that catches up
    /// after all lets the rollout go on.
    fn not_coming_back(&self, name: &str) -> Option<String> {
        let age = self.input.now_ms.saturating_sub(self.pod(name)?.created_ms);
        let reporting = self.pod(name).is_some_and(|p| p.reporting);
        let stopped = self.member(name).and_then(Member::role) == Some(crate::contract::ServerRole::Stopped);
        if reporting && stopped && age >= START_TIMEOUT_MS {
            return Some(format!("has not started its server within {} s", START_TIMEOUT_MS / 1000));
        }
        (age >= UPDATE_TIMEOUT_MS).then(|| format!("did not stream within {} s", UPDATE_TIMEOUT_MS / 1000))
    }

    /// The lag of a caught-up member, for choosing among several.
    fn lag(&self, name: &str, primary: &str) -> u64 {
        let position = |n: &str| self.member(n).and_then(|m| m.live_report()).and_then(|r| r.position);
        match (position(primary), position(name)) {
            (Some(p), Some(at)) => p.saturating_sub(at),
            _ => u64::MAX,
        }
    }

    /// The best member to switch over to from `primary`: caught up, not on
    /// a cordoned node, an updated one first, then the least behind.
    fn switchover_target(&self, primary: &str, only_updated: bool) -> Option<String> {
        self.input
            .members
            .iter()
            .map(|m| m.name.as_str())
            .filter(|m| *m != primary && self.caught_up(m, primary) && !self.on_cordoned_node(m))
            .filter(|m| !only_updated || self.updated(m))
            .min_by_key(|m| (!self.updated(m), self.lag(m, primary), m.to_string()))
            .map(str::to_string)
    }

    /// `spec.primary`, unless it is being drained or removed.
    fn requested_primary(&self) -> Option<String> {
        let requested = self.input.requested_primary?;
        let usable = self.member(requested).is_some() && !self.on_cordoned_node(requested);
        usable.then(|| requested.to_string())
    }

    fn restarting_primary(&self) -> bool {
        let Some(primary) = self.input.engine_primary else { return false };
        if self.input.strategy != PrimaryUpdate::Restart {
            return false;
        }
        match self.pod(primary) {
            // Deleted by the rollout, not yet built again.
            None => true,
            Some(p) if p.terminating => p.revision != self.input.revision,
            Some(p) => {
                p.revision == self.input.revision
                    && self.input.now_ms.saturating_sub(p.created_ms) < RESTART_GRACE_MS
            }
        }
    }

    fn drain(&self, primary: &str) -> Drain {
        let Some(node) = self.pod(primary).and_then(|p| p.node.clone()) else { return Drain::None };
        if !self.input.cordoned.contains(&node) {
            return Drain::None;
        }
        if let Some(to) = self.switchover_target(primary, false) {
            return Drain::SwitchingOver { node, to };
        }
        let others: Vec<&str> =
            self.input.members.iter().map(|m| m.name.as_str()).filter(|m| *m != primary).collect();
        let reason = if others.is_empty() {
            "the store has no mirror to switch over to: add one (or accept the outage and delete the pod)"
                .into()
        } else if others.iter().all(|m| self.on_cordoned_node(m)) {
            format!("every other member ({}) is on a cordoned node too", others.join(", "))
        } else {
            format!(
                "no mirror on a schedulable node streams from {primary} within failover.maxLagBytes ({}) yet",
                self.input.max_lag_bytes
            )
        };
        Drain::Blocked { node, reason }
    }

    /// Members the spec no longer has: those that may go now into `remove`;
    /// when one must wait, the member to switch over to (if the primary is
    /// one of them) and why.
    fn shrink(&self, primary: &str, remove: &mut Vec<String>) -> Option<(Option<String>, String)> {
        let mut waiting = None;
        for extra in self.input.extra {
            if extra == primary {
                let target = self.switchover_target(primary, false);
                let why = match &target {
                    Some(t) => {
                        format!("{extra} is no longer wanted but is the primary: switching over to {t} first")
                    }
                    None => format!(
                        "{extra} is no longer wanted but is the primary, and no remaining member is caught up to \
                         take over yet"
                    ),
                };
                waiting = Some((target, why));
                continue;
            }
            // Commits wait for any one mirror: never let the last one that
            // streams go.
            let another_streams =
                self.input.members.iter().any(|m| m.name != primary && self.caught_up(&m.name, primary));
            if self.input.synchronous && !another_streams {
                waiting = waiting.or(Some((
                    None,
                    format!("{extra} is no longer wanted but is the only mirror acknowledging commits"),
                )));
                continue;
            }
            remove.push(extra.clone());
        }
        waiting
    }

    /// Members on an older revision (or whose pod is going away).
    fn outdated(&self) -> Vec<String> {
        self.input
            .members
            .iter()
            .map(|m| m.name.clone())
            .filter(|m| self.pod(m).is_some_and(|p| p.revision != self.input.revision || p.terminating))
            .collect()
    }

    fn rollout_status(
        &self,
        waiting_for: Option<String>,
        halted_on: Option<String>,
    ) -> Option<RolloutStatus> {
        let mut outdated = self.outdated();
        let stale = self.input.members.iter().map(|m| m.name.clone()).filter(|m| self.settings_stale(m));
        outdated.extend(stale);
        outdated.sort();
        let catching_up = self.input.was_rolling
            && !self.in_flight(self.input.steady_primary.or(self.input.engine_primary)).is_empty();
        if outdated.is_empty() && halted_on.is_none() && !catching_up {
            return None;
        }
        let primary = self.input.steady_primary.or(self.input.engine_primary);
        let updated = self
            .input
            .members
            .iter()
            .map(|m| m.name.clone())
            .filter(|m| {
                self.updated(m)
                    && self.settings_current(m)
                    && (Some(m.as_str()) == primary || primary.is_some_and(|p| self.caught_up(m, p)))
            })
            .collect();
        Some(RolloutStatus {
            revision: self.input.revision.to_string(),
            updated,
            outdated,
            waiting_for,
            halted_on,
        })
    }

    /// Updated mirrors not yet caught up (with `primary` known), or every
    /// member whose pod is missing: the rollout waits for them.
    fn in_flight(&self, primary: Option<&str>) -> Vec<String> {
        self.input
            .members
            .iter()
            .map(|m| m.name.as_str())
            .filter(|m| match (self.pod(m), primary) {
                (None, _) => true,
                (Some(_), Some(p)) => *m != p && self.updated(m) && !self.caught_up(m, p),
                (Some(_), None) => false,
            })
            .map(str::to_string)
            .collect()
    }

    /// The rolling update itself.
    fn roll(&self, primary: &str, plan: &mut Plan) {
        let outdated = self.outdated();
        let in_flight = self.in_flight(Some(primary));
        if outdated.is_empty() && in_flight.is_empty() {
            return self.reload(primary, plan);
        }
        let input = self.input;
        if let Some(refused) = &input.refused {
            plan.rollout = self.rollout_status(Some(refused.clone()), None);
            plan.reason = "UpdateRefused";
            return;
        }
        // A member that came back on the new revision but never caught up
        // halts everything: the rest keep the template that works.
        let halted = in_flight.iter().find_map(|m| self.not_coming_back(m).map(|why| (m, why)));
        if let Some((halted, why)) = halted {
            let why = format!(
                "{halted} {why} on the new template; fix the template (the other members keep the old one)"
            );
            plan.rollout = self.rollout_status(Some(why), Some(halted.clone()));
            plan.reason = "RolloutHalted";
            return;
        }
        if let Some(waiting) = in_flight.first() {
            let why = format!("{waiting} to stream from {primary} on the new template");
            plan.rollout = self.rollout_status(Some(why), None);
            return;
        }
        let mirrors: Vec<&String> = outdated.iter().filter(|m| *m != primary).collect();
        if let Some(next) = self.next_mirror(primary, &mirrors) {
            plan.replace = Some(next.clone());
            plan.rollout =
                self.rollout_status(Some(format!("{next} to come back on the new template")), None);
            return;
        }
        if !mirrors.is_empty() {
            let why = "every member to stream from the primary before the next mirror is updated".to_string();
            plan.rollout = self.rollout_status(Some(why), None);
            return;
        }
        self.move_primary(primary, plan);
    }

    /// The outdated mirror to replace now: one that is not streaming anyway
    /// first (replacing it costs nothing), else the highest-numbered, and
    /// only while every other member is caught up.
    fn next_mirror<'m>(&self, primary: &str, mirrors: &[&'m String]) -> Option<&'m String> {
        if let Some(broken) = mirrors.iter().find(|m| !self.caught_up(m, primary)) {
            return Some(broken);
        }
        let all_caught_up =
            self.input.members.iter().filter(|m| m.name != primary).all(|m| self.caught_up(&m.name, primary));
        if !all_caught_up {
            return None;
        }
        mirrors.iter().max_by_key(|m| member_number(m)).copied()
    }

    /// Every mirror runs the new revision: move the primary as the
    /// strategy says.
    fn move_primary(&self, primary: &str, plan: &mut Plan) {
        let target = self.switchover_target(primary, true);
        let alone = self.input.members.len() == 1;
        let strategy = if alone { PrimaryUpdate::Restart } else { self.input.strategy };
        let waiting = match (strategy, target) {
            (PrimaryUpdate::Restart, _) => {
                plan.replace = Some(primary.to_string());
                plan.restarting_primary = true;
                format!("{primary} (the primary) to restart on the new template")
            }
            (PrimaryUpdate::Switchover, Some(target)) => {
                let preferred = self.requested_primary().filter(|r| *r != primary && self.updated(r));
                let target = preferred.filter(|r| self.caught_up(r, primary)).unwrap_or(target);
                plan.primary = Some(target.clone());
                format!("the switchover from {primary} to {target}, then {primary} is updated")
            }
            (PrimaryUpdate::Supervised, Some(target)) => {
                plan.reason = "AwaitingSwitchover";
                format!(
                    "a person to switch over (updateStrategy.primary: supervised): set spec.primary to an \
                     updated member, e.g. {target}; {primary} is then updated"
                )
            }
            (_, None) => "an updated mirror to catch up, to switch over to".into(),
        };
        plan.rollout = self.rollout_status(Some(waiting), None);
    }
}

impl View<'_> {
    /// Every member runs the current revision: bring each onto the current
    /// settings with a reload, mirrors first (highest-numbered first), the
    /// primary last, one at a time. Settings a member refuses halt it there.
    fn reload(&self, primary: &str, plan: &mut Plan) {
        let key = self.input.settings_key;
        let names = self.input.members.iter().map(|m| m.name.as_str());
        let stale: Vec<&str> = names.filter(|m| self.settings_stale(m)).collect();
        if stale.is_empty() {
            return;
        }
        let refused = stale.iter().find_map(|m| {
            let refused = self.pod(m)?.settings_report.refused.as_ref().filter(|(k, _)| k == key)?;
            Some((m.to_string(), refused.1.clone()))
        });
        if let Some((member, why)) = refused {
            let why = format!(
                "{member} refused the new settings ({why}); it keeps the old ones, as do the others: fix the template"
            );
            plan.rollout = self.rollout_status(Some(why), Some(member));
            plan.reason = "RolloutHalted";
            return;
        }
        let told = |m: &&&str| self.pod(m).is_some_and(|p| p.settings.as_deref() == Some(key));
        if let Some(loading) = stale.iter().find(told) {
            plan.rollout = self.rollout_status(Some(format!("{loading} to load the new settings")), None);
            return;
        }
        let mirrors = stale.iter().filter(|m| **m != primary && self.caught_up(m, primary));
        let next = mirrors.max_by_key(|m| member_number(m)).copied();
        let next = next.or_else(|| stale.iter().all(|m| *m == primary).then_some(primary));
        let waiting = match next {
            Some(next) => {
                plan.reload = Some(next.to_string());
                format!("{next} to load the new settings (no restart)")
            }
            None => "every mirror to stream before it loads the new settings".to_string(),
        };
        plan.rollout = self.rollout_status(Some(waiting), None);
    }
}

/// The number at the end of a member's name (`shop-db-3` → 3).
fn member_number(name: &str) -> u32 {
    name.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests;

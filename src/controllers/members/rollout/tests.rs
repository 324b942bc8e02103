use super::*;
use crate::contract::{DataState, Desired, Report, ServerRole, SettingsReport};
use crate::failover::Lease;

const NEW: &str = "rev-new";
const OLD: &str = "rev-old";
const NOW: u64 = 1_000_000;
const KEY: &str = "postgresql-new.conf";

fn report(role: ServerRole, position: u64, from: Option<&str>) -> Report {
    Report {
        at: NOW,
        role,
        position: Some(position),
        last_position: Some(position),
        acting_on: if role == ServerRole::Primary { Desired::Primary } else { Desired::Mirror },
        epoch: 3,
        streaming_from: from.map(str::to_string),
        data: if role == ServerRole::Primary { DataState::Primary } else { DataState::Standby },
        lineage: Some(1),
    }
}

fn primary(name: &str) -> Member {
    Member {
        name: name.into(),
        report: Some(report(ServerRole::Primary, 1000, None)),
        lease: Lease::Live,
        recorded_position: None,
    }
}

fn mirror(name: &str, position: u64) -> Member {
    Member {
        name: name.into(),
        report: Some(report(ServerRole::Mirror, position, Some("db-1"))),
        lease: Lease::Live,
        recorded_position: None,
    }
}

fn down(name: &str) -> Member {
    Member { name: name.into(), report: None, lease: Lease::Stale, recorded_position: None }
}

fn pod(revision: &str, node: &str) -> PodFacts {
    PodFacts {
        revision: revision.into(),
        created_ms: NOW - 1_000,
        terminating: false,
        node: Some(node.into()),
        reporting: true,
        settings: Some(KEY.into()),
        settings_report: SettingsReport { applied: Some(KEY.into()), refused: None },
    }
}

/// A store of db-1 (primary, node-a), db-2 (node-b), db-3 (node-c).
struct Case {
    members: Vec<Member>,
    pods: BTreeMap<String, PodFacts>,
    extra: Vec<String>,
    strategy: PrimaryUpdate,
    requested: Option<&'static str>,
    cordoned: BTreeSet<String>,
    refused: Option<String>,
    steady: bool,
    synchronous: bool,
    was_rolling: bool,
}

impl Case {
    fn trio(revisions: [&str; 3]) -> Self {
        let pods = ["db-1", "db-2", "db-3"]
            .iter()
            .zip(revisions)
            .zip(["node-a", "node-b", "node-c"])
            .map(|((m, r), n)| (m.to_string(), pod(r, n)))
            .collect();
        Case {
            members: vec![primary("db-1"), mirror("db-2", 1000), mirror("db-3", 1000)],
            pods,
            extra: Vec::new(),
            strategy: PrimaryUpdate::Switchover,
            requested: None,
            cordoned: BTreeSet::new(),
            refused: None,
            steady: true,
            synchronous: true,
            was_rolling: true,
        }
    }

    fn plan(&self) -> Plan {
        plan(&Input {
            members: &self.members,
            extra: &self.extra,
            pods: &self.pods,
            revision: NEW,
            settings_key: KEY,
            steady_primary: self.steady.then_some("db-1"),
            engine_primary: Some("db-1"),
            strategy: self.strategy,
            requested_primary: self.requested,
            max_lag_bytes: 100,
            synchronous: self.synchronous,
            cordoned: &self.cordoned,
            refused: self.refused.clone(),
            was_rolling: self.was_rolling,
            now_ms: NOW,
        })
    }
}

#[test]
fn nothing_changes_when_every_member_runs_the_template() {
    let plan = Case::trio([NEW, NEW, NEW]).plan();
    assert_eq!(plan, Plan::idle());
}

#[test]
fn mirrors_go_first_the_highest_numbered_first_one_at_a_time() {
    let plan = Case::trio([OLD, OLD, OLD]).plan();
    assert_eq!(plan.replace.as_deref(), Some("db-3"));
    assert_eq!(plan.primary, None, "the primary is not moved yet");
    let rollout = plan.rollout.unwrap();
    assert_eq!(rollout.outdated, ["db-1", "db-2", "db-3"]);

    // db-3 came back on the new template but its new agent has not reported yet.
    let mut case = Case::trio([OLD, OLD, NEW]);
    case.pods.get_mut("db-3").unwrap().reporting = false;
    let plan = case.plan();
    assert_eq!(plan.replace, None, "nothing else is touched while db-3 is not counted caught up");
    assert!(plan.rollout.unwrap().waiting_for.unwrap().contains("db-3 to stream"));

    case.pods.get_mut("db-3").unwrap().reporting = true;
    assert_eq!(case.plan().replace.as_deref(), Some("db-2"));
}

#[test]
fn a_new_store_catching_up_is_no_rollout() {
    let mut case = Case::trio([NEW, NEW, NEW]);
    case.members[2] = mirror("db-3", 10);
    case.was_rolling = false;
    assert_eq!(case.plan().rollout, None, "a mirror still copying the primary is not being updated");
    case.was_rolling = true;
    assert!(
        case.plan().rollout.is_some(),
        "the last replaced member is part of the rollout until it catches up"
    );
}

#[test]
fn a_mirror_behind_holds_the_rollout() {
    let mut case = Case::trio([OLD, OLD, NEW]);
    case.members[2] = mirror("db-3", 500);
    let plan = case.plan();
    assert_eq!(plan.replace, None, "db-3 is 500 bytes behind, more than maxLagBytes");
}

#[test]
fn a_broken_outdated_mirror_is_replaced_first() {
    let mut case = Case::trio([OLD, OLD, OLD]);
    case.members[1] = down("db-2");
    assert_eq!(case.plan().replace.as_deref(), Some("db-2"));
}

#[test]
fn the_primary_moves_by_switchover_to_an_updated_mirror() {
    let case = Case::trio([OLD, NEW, NEW]);
    let plan = case.plan();
    assert_eq!(plan.replace, None);
    assert_eq!(plan.primary.as_deref(), Some("db-2"));
    assert_eq!(plan.reason, "RollingUpdate");
}

#[test]
fn spec_primary_is_the_switchover_target_when_it_is_updated() {
    let mut case = Case::trio([OLD, NEW, NEW]);
    case.requested = Some("db-3");
    assert_eq!(case.plan().primary.as_deref(), Some("db-3"));
}

#[test]
fn restart_replaces_the_primary_in_place_and_holds_failover() {
    let mut case = Case::trio([OLD, NEW, NEW]);
    case.strategy = PrimaryUpdate::Restart;
    let plan = case.plan();
    assert_eq!(plan.replace.as_deref(), Some("db-1"));
    assert!(plan.restarting_primary);

    // Deleted, then back on the new template: the engine still waits.
    case.steady = false;
    case.pods.remove("db-1");
    assert!(case.plan().restarting_primary);
    case.pods.insert("db-1".into(), PodFacts { created_ms: NOW - 5_000, ..pod(NEW, "node-a") });
    assert!(case.plan().restarting_primary);
    case.pods.insert("db-1".into(), PodFacts { created_ms: NOW - RESTART_GRACE_MS, ..pod(NEW, "node-a") });
    assert!(!case.plan().restarting_primary, "past the grace, a lost primary is failed over");
}

#[test]
fn supervised_waits_for_a_person() {
    let mut case = Case::trio([OLD, NEW, NEW]);
    case.strategy = PrimaryUpdate::Supervised;
    let plan = case.plan();
    assert_eq!((plan.replace, plan.primary), (None, None));
    assert_eq!(plan.reason, "AwaitingSwitchover");
    assert!(plan.rollout.unwrap().waiting_for.unwrap().contains("set spec.primary"));
    case.requested = Some("db-2");
    assert_eq!(case.plan().primary.as_deref(), Some("db-2"), "the person's choice goes to the engine");
}

#[test]
fn a_member_that_never_catches_up_halts_the_rollout() {
    let mut case = Case::trio([OLD, OLD, NEW]);
    case.members[2] = down("db-3");
    case.pods.get_mut("db-3").unwrap().created_ms = NOW - UPDATE_TIMEOUT_MS;
    let plan = case.plan();
    assert_eq!(plan.replace, None, "db-2 and the primary keep the old template");
    assert_eq!(plan.primary, None);
    assert!(plan.halted());
    assert_eq!(plan.reason, "RolloutHalted");
    assert_eq!(plan.rollout.unwrap().halted_on.as_deref(), Some("db-3"));

    // An agent that runs but cannot start its server halts it sooner.
    let mut refused = Case::trio([OLD, OLD, NEW]);
    refused.members[2] = Member {
        name: "db-3".into(),
        report: Some(report(ServerRole::Stopped, 900, None)),
        lease: Lease::Live,
        recorded_position: None,
    };
    refused.pods.get_mut("db-3").unwrap().created_ms = NOW - START_TIMEOUT_MS;
    assert!(refused.plan().halted(), "its server never started");
    refused.pods.get_mut("db-3").unwrap().created_ms = NOW - START_TIMEOUT_MS + 5_000;
    assert!(!refused.plan().halted(), "still within the start timeout");

    // A fixed template is a new revision: db-3 is outdated (and broken), so it goes first.
    let mut fixed = Case::trio([OLD, OLD, "rev-bad"]);
    fixed.members[2] = down("db-3");
    assert_eq!(fixed.plan().replace.as_deref(), Some("db-3"));
}

#[test]
fn nothing_rolls_during_a_failover() {
    let mut case = Case::trio([OLD, OLD, OLD]);
    case.steady = false;
    let plan = case.plan();
    assert_eq!((plan.replace, plan.primary), (None, None));
    assert!(plan.rollout.unwrap().waiting_for.unwrap().contains("failover"));
}

#[test]
fn a_refused_change_rolls_nothing_and_says_why() {
    let mut case = Case::trio([OLD, OLD, OLD]);
    case.refused = Some("PostgreSQL 16 over 15".into());
    let plan = case.plan();
    assert_eq!(plan.replace, None);
    assert_eq!(plan.reason, "UpdateRefused");
}

#[test]
fn a_cordoned_primary_node_switches_over_to_a_mirror_elsewhere() {
    let mut case = Case::trio([NEW, NEW, NEW]);
    case.cordoned.insert("node-a".into());
    case.cordoned.insert("node-b".into());
    let plan = case.plan();
    assert_eq!(plan.primary.as_deref(), Some("db-3"), "db-2 is on a cordoned node too");
    assert_eq!(plan.drain, Drain::SwitchingOver { node: "node-a".into(), to: "db-3".into() });
}

#[test]
fn a_drain_that_cannot_switch_over_says_why() {
    let mut case = Case::trio([NEW, NEW, NEW]);
    case.cordoned.insert("node-a".into());
    case.members[1] = down("db-2");
    case.members[2] = mirror("db-3", 10);
    let Drain::Blocked { node, reason } = case.plan().drain else { panic!("blocked") };
    assert_eq!(node, "node-a");
    assert!(reason.contains("within failover.maxLagBytes"), "{reason}");

    case.cordoned.extend(["node-b".to_string(), "node-c".to_string()]);
    let Drain::Blocked { reason, .. } = case.plan().drain else { panic!("blocked") };
    assert!(reason.contains("cordoned node too"), "{reason}");
}

#[test]
fn spec_primary_on_a_cordoned_node_is_not_switched_back_to() {
    let mut case = Case::trio([NEW, NEW, NEW]);
    case.requested = Some("db-2");
    case.cordoned.insert("node-b".into());
    assert_eq!(case.plan().primary, None);
}

#[test]
fn a_shrink_removes_mirrors_but_never_the_last_acknowledging_one() {
    let mut case = Case::trio([NEW, NEW, NEW]);
    case.members.truncate(2);
    case.extra = vec!["db-3".into()];
    assert_eq!(case.plan().remove, ["db-3"]);

    case.members[1] = down("db-2");
    let plan = case.plan();
    assert!(plan.remove.is_empty(), "db-3 is the only mirror acknowledging commits");
    assert!(plan.shrink_waiting.unwrap().contains("only mirror"));
    case.synchronous = false;
    assert_eq!(case.plan().remove, ["db-3"]);
}

#[test]
fn a_shrink_that_drops_the_primary_switches_over_first() {
    let mut case = Case::trio([NEW, NEW, NEW]);
    // db-1 is the primary and (say) the spec now keeps db-2 and db-3 only.
    case.members.remove(0);
    case.members.insert(0, mirror("db-2", 1000));
    case.members[1] = mirror("db-3", 1000);
    case.members.push(primary("db-1"));
    case.extra = vec!["db-1".into()];
    let plan = case.plan();
    assert!(plan.remove.is_empty());
    assert_eq!(plan.primary.as_deref(), Some("db-2"));
    assert!(plan.shrink_waiting.unwrap().contains("switching over to db-2"));
}

/// Every member on `NEW`, each running the settings `applied` and told `told`.
fn with_settings(told: [&str; 3], applied: [&str; 3]) -> Case {
    let mut case = Case::trio([NEW, NEW, NEW]);
    for ((m, t), a) in ["db-1", "db-2", "db-3"].iter().zip(told).zip(applied) {
        let p = case.pods.get_mut(*m).unwrap();
        p.settings = Some(t.into());
        p.settings_report.applied = Some(a.into());
    }
    case
}

#[test]
fn reloadable_settings_are_loaded_mirrors_first_then_the_primary_without_replacing_anyone() {
    const OLD_KEY: &str = "postgresql-old.conf";
    let plan = with_settings([OLD_KEY; 3], [OLD_KEY; 3]).plan();
    assert_eq!((plan.replace, plan.reload.as_deref()), (None, Some("db-3")));
    assert_eq!(plan.rollout.unwrap().outdated, ["db-1", "db-2", "db-3"]);

    let plan = with_settings([OLD_KEY, OLD_KEY, KEY], [OLD_KEY, OLD_KEY, OLD_KEY]).plan();
    assert_eq!(plan.reload, None, "db-3 was told and has not loaded them yet");
    assert!(plan.rollout.unwrap().waiting_for.unwrap().contains("db-3 to load"));

    let plan = with_settings([OLD_KEY, OLD_KEY, KEY], [OLD_KEY, OLD_KEY, KEY]).plan();
    assert_eq!(plan.reload.as_deref(), Some("db-2"));
    let plan = with_settings([OLD_KEY, KEY, KEY], [OLD_KEY, KEY, KEY]).plan();
    assert_eq!(plan.reload.as_deref(), Some("db-1"), "the primary last");
    assert_eq!(with_settings([KEY; 3], [KEY; 3]).plan(), Plan::idle());
}

#[test]
fn settings_a_mirror_refuses_halt_before_the_primary() {
    const OLD_KEY: &str = "postgresql-old.conf";
    let mut case = with_settings([OLD_KEY, OLD_KEY, KEY], [OLD_KEY, OLD_KEY, OLD_KEY]);
    case.pods.get_mut("db-3").unwrap().settings_report.refused =
        Some((KEY.into(), "work_mem: invalid".into()));
    let plan = case.plan();
    assert_eq!((plan.reload, plan.replace), (None, None));
    assert_eq!(plan.reason, "RolloutHalted");
    let rollout = plan.rollout.unwrap();
    assert_eq!(rollout.halted_on.as_deref(), Some("db-3"));
    assert!(rollout.waiting_for.unwrap().contains("work_mem: invalid"));
}

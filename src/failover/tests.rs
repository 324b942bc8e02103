//! The engine against a model of three members (agent + server each), driven
//! through random sequences of crashes, partitions, returns, writes and time.
//!
//! Properties:
//! - never two servers accept writes at the same time;
//! - with synchronous replication no acknowledged write is lost by a promotion;
//! - once every failure heals, a primary takes writes again.

use proptest::prelude::*;

use super::*;

const LEASE_MS: u64 = 5_000;
/// An agent that could not renew for this long stops its server.
const SELF_FENCE_MS: u64 = 4_000;
const TICK_MS: u64 = 500;

#[derive(Clone, Debug)]
struct Node {
    name: String,
    agent_alive: bool,
    partitioned: bool,
    server: ServerRole,
    position: u64,
    renewed_at: Millis,
    report: Option<Report>,
    desired: Desired,
}

#[derive(Debug)]
struct World {
    now: Millis,
    nodes: Vec<Node>,
    state: State,
    policy: Policy,
    routes: BTreeMap<String, Route>,
    /// Highest position a client saw acknowledged.
    acked: u64,
    next_position: u64,
}

#[derive(Clone, Debug)]
enum Event {
    KillServer(usize),
    KillMember(usize),
    Restart(usize),
    Partition(usize),
    Heal(usize),
    Write,
    Replicate,
    Wait(u8),
    Switchover(usize),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        1 => (0..3usize).prop_map(Event::KillServer),
        1 => (0..3usize).prop_map(Event::KillMember),
        1 => (0..3usize).prop_map(Event::Restart),
        1 => (0..3usize).prop_map(Event::Partition),
        1 => (0..3usize).prop_map(Event::Heal),
        4 => Just(Event::Write),
        2 => Just(Event::Replicate),
        3 => (1..20u8).prop_map(Event::Wait),
        1 => (0..3usize).prop_map(Event::Switchover),
    ]
}

impl World {
    fn new(synchronous: bool) -> Self {
        let nodes = (1..=3)
            .map(|i| Node {
                name: format!("db-{i}"),
                agent_alive: true,
                partitioned: false,
                server: ServerRole::Stopped,
                position: 0,
                renewed_at: 0,
                report: None,
                desired: Desired::Mirror,
            })
            .collect();
        World {
            now: 0,
            nodes,
            state: State::Bootstrapping { primary: "db-1".into() },
            policy: Policy {
                enabled: true,
                delay_ms: 1_000,
                max_lag_bytes: if synchronous { 0 } else { 1 << 40 },
                synchronous,
                force: false,
                requested_primary: None,
            },
            routes: BTreeMap::new(),
            acked: 0,
            next_position: 1,
        }
    }

    /// The current primary's position, for a mirror to (re)join at.
    fn primary_position(&self) -> Option<u64> {
        let writer = self.routes.iter().find(|(_, r)| **r == Route::ReadWrite).map(|(n, _)| n.clone())?;
        self.nodes.iter().find(|n| n.name == writer && n.server == ServerRole::Primary).map(|n| n.position)
    }

    /// Every live agent acts on its instruction and reports, as its loop would.
    fn agents_act(&mut self) {
        let primary_position = self.primary_position();
        let mut shutdown_flush = None;
        for node in &mut self.nodes {
            if !node.agent_alive {
                continue;
            }
            if node.partitioned {
                // Cannot renew: stop the server before the lease can expire.
                if self.now.saturating_sub(node.renewed_at) >= SELF_FENCE_MS {
                    node.server = ServerRole::Stopped;
                }
                continue;
            }
            node.server = match (node.desired, node.server) {
                (Desired::Primary, _) => ServerRole::Primary,
                (Desired::Fenced, ServerRole::Primary) => {
                    // A clean shutdown sends all WAL to connected mirrors first.
                    shutdown_flush = Some(node.position);
                    ServerRole::Stopped
                }
                (Desired::Fenced, role) => role,
                (Desired::Mirror, _) => match primary_position {
                    // Rewind onto the primary's history and stream from it.
                    Some(p) => {
                        node.position = node.position.min(p);
                        ServerRole::Mirror
                    }
                    // No primary to follow yet: run as a standby and wait.
                    None => ServerRole::Mirror,
                },
            };
            node.renewed_at = self.now;
            node.report = Some(Report {
                at: self.now,
                role: node.server,
                position: Some(node.position),
                acting_on: node.desired,
            });
        }
        if let Some(flushed) = shutdown_flush {
            for n in self.nodes.iter_mut().filter(|n| n.server == ServerRole::Mirror) {
                n.position = n.position.max(flushed);
            }
        }
    }

    fn engine_acts(&mut self) {
        let members: Vec<Member> = self
            .nodes
            .iter()
            .map(|n| Member {
                name: n.name.clone(),
                report: n.report,
                lease_expired: n.report.is_some() && self.now.saturating_sub(n.renewed_at) > LEASE_MS,
            })
            .collect();
        let decision = step(&self.state, &members, &self.policy, self.now);
        // A promoted member must hold every acknowledged write (sync mode).
        if let State::Promoting { candidate, .. } = &decision.state
            && self.policy.synchronous
        {
            let c = self.nodes.iter().find(|n| &n.name == candidate).unwrap();
            assert!(
                c.position >= self.acked,
                "promoting {candidate} at {} loses acked {}",
                c.position,
                self.acked
            );
        }
        for node in &mut self.nodes {
            node.desired = decision.desired[&node.name];
        }
        self.routes = decision.routes;
        self.state = decision.state;
    }

    fn check(&self) {
        let writers: Vec<_> =
            self.nodes.iter().filter(|n| n.server == ServerRole::Primary).map(|n| &n.name).collect();
        assert!(writers.len() <= 1, "two servers accept writes at t={}: {writers:?}\n{self:#?}", self.now);
        let routed: Vec<_> = self.routes.iter().filter(|(_, r)| **r == Route::ReadWrite).collect();
        assert!(routed.len() <= 1, "writes routed to {routed:?}");
    }

    fn tick(&mut self) {
        self.agents_act();
        self.check();
        self.engine_acts();
        self.agents_act();
        self.check();
    }

    fn apply(&mut self, event: &Event) {
        match *event {
            Event::KillServer(i) => self.nodes[i].server = ServerRole::Stopped,
            Event::KillMember(i) => {
                self.nodes[i].server = ServerRole::Stopped;
                self.nodes[i].agent_alive = false;
            }
            Event::Restart(i) => {
                let node = &mut self.nodes[i];
                if !node.agent_alive {
                    node.agent_alive = true;
                    node.server = ServerRole::Stopped;
                }
            }
            Event::Partition(i) => self.nodes[i].partitioned = true,
            Event::Heal(i) => self.nodes[i].partitioned = false,
            Event::Write => self.write(),
            Event::Replicate => {
                if let Some(p) = self.primary_position() {
                    for n in self.nodes.iter_mut().filter(|n| n.server == ServerRole::Mirror) {
                        n.position = n.position.max(p);
                    }
                }
            }
            Event::Wait(ticks) => {
                for _ in 0..ticks {
                    self.now += TICK_MS;
                    self.tick();
                }
            }
            Event::Switchover(i) => self.policy.requested_primary = Some(self.nodes[i].name.clone()),
        }
        self.tick();
    }

    /// A client writes through the read-write route.
    fn write(&mut self) {
        let Some(writer) = self.routes.iter().find(|(_, r)| **r == Route::ReadWrite).map(|(n, _)| n.clone())
        else {
            return;
        };
        let Some(idx) = self.nodes.iter().position(|n| n.name == writer && n.server == ServerRole::Primary)
        else {
            return;
        };
        let position = self.next_position;
        self.next_position += 1;
        self.nodes[idx].position = position;
        if self.policy.synchronous {
            // ANY 1 mirror must have it before the commit returns.
            match self.nodes.iter_mut().find(|n| n.server == ServerRole::Mirror) {
                Some(mirror) => mirror.position = mirror.position.max(position),
                None => return, // the commit waits; the client never sees an ack
            }
        }
        self.acked = self.acked.max(position);
    }

    /// Everything comes back; the cluster must converge to a writable primary.
    fn heal_all(&mut self) {
        for node in &mut self.nodes {
            node.partitioned = false;
            node.agent_alive = true;
        }
        for _ in 0..60 {
            self.now += TICK_MS;
            self.tick();
        }
    }
}

proptest! {
    // PROPTEST_CASES raises the number of runs (default 256).
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn never_two_writers_and_no_acked_loss_in_sync_mode(events in prop::collection::vec(event(), 0..80)) {
        let mut world = World::new(true);
        for _ in 0..4 { world.now += TICK_MS; world.tick(); }
        for e in &events { world.apply(e); }
        world.heal_all();
        prop_assert!(world.routes.values().any(|r| *r == Route::ReadWrite), "no primary after healing: {world:#?}");
    }

    #[test]
    fn never_two_writers_in_async_mode(events in prop::collection::vec(event(), 0..80)) {
        let mut world = World::new(false);
        for _ in 0..4 { world.now += TICK_MS; world.tick(); }
        for e in &events { world.apply(e); }
        world.heal_all();
        prop_assert!(world.routes.values().any(|r| *r == Route::ReadWrite), "no primary after healing: {world:#?}");
    }
}

fn member(name: &str, role: ServerRole, position: u64, at: Millis, acting_on: Desired) -> Member {
    Member {
        name: name.into(),
        report: Some(Report { at, role, position: Some(position), acting_on }),
        lease_expired: false,
    }
}

fn policy() -> Policy {
    Policy {
        enabled: true,
        delay_ms: 1_000,
        max_lag_bytes: 100,
        synchronous: false,
        force: false,
        requested_primary: None,
    }
}

#[test]
fn a_lost_primary_is_fenced_after_the_delay_and_the_most_advanced_mirror_promoted() {
    let steady = State::Steady { primary: "db-1".into() };
    let mut members = vec![
        member("db-1", ServerRole::Stopped, 500, 10, Desired::Primary),
        member("db-2", ServerRole::Mirror, 480, 10, Desired::Mirror),
        member("db-3", ServerRole::Mirror, 490, 10, Desired::Mirror),
    ];
    let d = step(&steady, &members, &policy(), 100);
    assert!(matches!(d.state, State::Suspect { since: 100, .. }));
    assert_eq!(d.read_write(), None, "a stopped server gets no writes");
    let d = step(&d.state, &members, &policy(), 1_100);
    assert!(matches!(d.state, State::Fencing { fenced_at: 1_100, .. }));
    assert_eq!(d.desired["db-1"], Desired::Fenced);
    // The old primary's agent confirms the fence; db-3 is the furthest ahead.
    members[0].report = Some(Report {
        at: 1_200,
        role: ServerRole::Stopped,
        position: Some(500),
        acting_on: Desired::Fenced,
    });
    let d = step(&d.state, &members, &policy(), 1_200);
    assert_eq!(d.state, State::Promoting { old: "db-1".into(), candidate: "db-3".into(), started: 100 });
    assert_eq!(d.desired["db-3"], Desired::Primary);
    members[2].report = Some(Report {
        at: 1_500,
        role: ServerRole::Primary,
        position: Some(490),
        acting_on: Desired::Primary,
    });
    let d = step(&d.state, &members, &policy(), 1_500);
    assert_eq!(d.state, State::Steady { primary: "db-3".into() });
    assert_eq!(d.read_write(), Some("db-3"));
    assert!(d.steps.contains(&Step::Promoted { member: "db-3".into(), duration_ms: 1_400 }));
    assert_eq!(d.desired["db-1"], Desired::Mirror, "the old primary rejoins as a mirror");
}

#[test]
fn no_promotion_while_the_old_primary_may_still_take_writes() {
    let fencing =
        State::Fencing { old: "db-1".into(), fenced_at: 1_000, started: 0, last_position: Some(10) };
    // db-1 reported before the fence and its lease is fresh: it may still be primary.
    let members = vec![
        member("db-1", ServerRole::Primary, 10, 900, Desired::Primary),
        member("db-2", ServerRole::Mirror, 10, 1_000, Desired::Mirror),
    ];
    let d = step(&fencing, &members, &policy(), 2_000);
    assert!(matches!(d.state, State::Fencing { .. }));
    assert_eq!(d.read_write(), None);
    // Its lease expires: its agent has stopped its server by contract.
    let mut members = members;
    members[0].lease_expired = true;
    let d = step(&d.state, &members, &policy(), 7_000);
    assert!(matches!(d.state, State::Promoting { ref candidate, .. } if candidate == "db-2"));
}

#[test]
fn a_mirror_too_far_behind_is_not_promoted_and_says_why() {
    let fencing =
        State::Fencing { old: "db-1".into(), fenced_at: 1_000, started: 0, last_position: Some(1_000) };
    let mut members = vec![
        member("db-1", ServerRole::Stopped, 1_000, 900, Desired::Primary),
        member("db-2", ServerRole::Mirror, 200, 1_000, Desired::Mirror),
    ];
    members[0].lease_expired = true;
    let d = step(&fencing, &members, &policy(), 2_000);
    assert_eq!(d.blocked, Some(Blocked::LagTooHigh { best: "db-2".into(), lag_bytes: 800 }));
    assert!(matches!(d.state, State::Fencing { .. }));
    let forced = Policy { force: true, ..policy() };
    let d = step(&fencing, &members, &forced, 2_000);
    assert!(matches!(d.state, State::Promoting { .. }));
}

#[test]
fn with_no_candidate_the_returning_primary_takes_writes_again() {
    let fencing =
        State::Fencing { old: "db-1".into(), fenced_at: 1_000, started: 0, last_position: Some(10) };
    let members = vec![
        member("db-1", ServerRole::Stopped, 10, 1_500, Desired::Fenced),
        member("db-2", ServerRole::Stopped, 5, 1_500, Desired::Mirror),
    ];
    let d = step(&fencing, &members, &policy(), 2_000);
    assert_eq!(d.state, State::Steady { primary: "db-1".into() });
    assert_eq!(d.desired["db-1"], Desired::Primary);
}

#[test]
fn sync_mode_waits_for_positions_newer_than_the_fence() {
    let sync = Policy { synchronous: true, ..policy() };
    let fencing =
        State::Fencing { old: "db-1".into(), fenced_at: 1_000, started: 0, last_position: Some(10) };
    let mut members = vec![
        member("db-1", ServerRole::Stopped, 10, 1_100, Desired::Fenced),
        member("db-2", ServerRole::Mirror, 9, 900, Desired::Mirror),
    ];
    let d = step(&fencing, &members, &sync, 1_200);
    assert_eq!(d.blocked, Some(Blocked::AwaitingPositions));
    members[1].report =
        Some(Report { at: 1_300, role: ServerRole::Mirror, position: Some(10), acting_on: Desired::Mirror });
    let d = step(&d.state, &members, &sync, 1_300);
    assert!(matches!(d.state, State::Promoting { .. }));
}

#[test]
fn a_planned_switchover_demotes_first_and_waits_for_the_target_to_catch_up() {
    let requested = Policy { requested_primary: Some("db-2".into()), ..policy() };
    let steady = State::Steady { primary: "db-1".into() };
    let mut members = vec![
        member("db-1", ServerRole::Primary, 50, 100, Desired::Primary),
        member("db-2", ServerRole::Mirror, 40, 100, Desired::Mirror),
    ];
    let d = step(&steady, &members, &requested, 200);
    assert!(matches!(d.state, State::Demoting { asked_at: 200, .. }));
    assert_eq!(d.desired["db-1"], Desired::Fenced);
    members[0].report =
        Some(Report { at: 300, role: ServerRole::Stopped, position: Some(55), acting_on: Desired::Fenced });
    members[1].report =
        Some(Report { at: 300, role: ServerRole::Mirror, position: Some(50), acting_on: Desired::Mirror });
    let d = step(&d.state, &members, &requested, 300);
    assert!(matches!(d.state, State::Demoting { .. }), "db-2 has not received everything yet");
    members[1].report =
        Some(Report { at: 400, role: ServerRole::Mirror, position: Some(55), acting_on: Desired::Mirror });
    let d = step(&d.state, &members, &requested, 400);
    assert!(matches!(d.state, State::Promoting { ref candidate, .. } if candidate == "db-2"));
}

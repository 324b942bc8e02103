//! The engine and the agents' real planner against a model of three
//! members — each an agent, a watchdog, a server and a Lease — and an
//! operator that judges Leases on its own clock, revokes them by
//! compare-and-swap and writes instructions guarded by their epochs. Random
//! sequences of crashes, stalls, partitions, pod deletions, writes on old
//! connections, switchovers, a stalled watch and a former leader replaying
//! old decisions drive it.
//!
//! Properties:
//! - never two servers accept writes at the same time;
//! - with synchronous replication (`durability: required`) no acknowledged
//!   write is lost by a promotion;
//! - with async replication a promotion loses at most `maxLagBytes`, and
//!   says how much it may have lost;
//! - an empty member is initialised as primary only when no member holds data;
//! - once every failure heals, a primary takes writes again.

use proptest::prelude::*;

use super::*;
use crate::agent::plan::{Action, Endpoint, Local, plan};
use crate::contract::timing::{FENCE_AFTER, LEASE};

const TICK_MS: u64 = 500;
const LEASE_MS: u64 = LEASE.as_millis() as u64;
const FENCE_MS: u64 = FENCE_AFTER.as_millis() as u64;

#[derive(Clone, Debug)]
struct Node {
    name: String,
    // The agent.
    agent_alive: bool,
    stalled: bool,
    partitioned: bool,
    seen: Epoch,
    instruction: Option<Instruction>,
    last_position: Option<u64>,
    // The watchdog: kills the server at this time (ms) unless moved.
    deadline: Millis,
    // The server and its data.
    server: ServerRole,
    following: Option<usize>,
    relaxed: bool,
    data: DataState,
    position: u64,
    lineage: Option<Epoch>,
    /// The marker's `served`: kept with the data.
    served: Option<Epoch>,
    // The Lease: its version while it exists, and the report it carries.
    lease: Option<u64>,
    held: Option<u64>,
    report: Option<Report>,
    // The pod's instruction annotation.
    pod: Option<Instruction>,
}

#[derive(Clone, Debug)]
struct Seen {
    version: Option<u64>,
    since: Millis,
    revoked: bool,
}

#[derive(Debug)]
struct World {
    now: Millis,
    nodes: Vec<Node>,
    /// Members keep their data on volumes (false: in memory, lost with the server).
    persistent: bool,
    engine: Engine,
    policy: Policy,
    routes: BTreeMap<String, Route>,
    /// The operator's view of each Lease.
    clock: Vec<Seen>,
    watch_stalled: bool,
    /// Instructions of earlier decisions, for a former leader to replay.
    history: Vec<(Epoch, BTreeMap<String, Instruction>)>,
    /// Highest position a client saw acknowledged.
    acked: u64,
    next_position: u64,
    versions: u64,
}

#[derive(Clone, Debug)]
enum Event {
    KillServer(usize),
    KillMember(usize),
    Restart(usize),
    DeletePod(usize),
    Stall(usize),
    Resume(usize),
    Partition(usize),
    Heal(usize),
    Write(usize),
    Replicate,
    Wait(u8),
    Switchover(usize),
    StaleLeader(u8),
    StallWatch,
    HealWatch,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        1 => (0..3usize).prop_map(Event::KillServer),
        1 => (0..3usize).prop_map(Event::KillMember),
        2 => (0..3usize).prop_map(Event::Restart),
        1 => (0..3usize).prop_map(Event::DeletePod),
        1 => (0..3usize).prop_map(Event::Stall),
        1 => (0..3usize).prop_map(Event::Resume),
        1 => (0..3usize).prop_map(Event::Partition),
        1 => (0..3usize).prop_map(Event::Heal),
        5 => (0..3usize).prop_map(Event::Write),
        2 => Just(Event::Replicate),
        3 => (1..20u8).prop_map(Event::Wait),
        1 => (0..3usize).prop_map(Event::Switchover),
        1 => (1..6u8).prop_map(Event::StaleLeader),
        1 => Just(Event::StallWatch),
        1 => Just(Event::HealWatch),
    ]
}

impl World {
    fn new(synchronous: bool, relax: bool, persistent: bool) -> Self {
        let nodes = (1..=3)
            .map(|i| Node {
                name: format!("db-{i}"),
                agent_alive: true,
                stalled: false,
                partitioned: false,
                seen: 0,
                instruction: None,
                last_position: None,
                deadline: 0,
                server: ServerRole::Stopped,
                following: None,
                relaxed: false,
                data: DataState::Empty,
                position: 0,
                lineage: None,
                served: None,
                lease: None,
                held: None,
                report: None,
                pod: None,
            })
            .collect();
        World {
            now: 0,
            nodes,
            persistent,
            engine: Engine::bootstrap(true),
            policy: Policy {
                enabled: true,
                delay_ms: 1_000,
                max_lag_bytes: if synchronous { 0 } else { 3 },
                synchronous,
                relax_when_alone: synchronous && relax,
                force: false,
                requested_primary: None,
            },
            routes: BTreeMap::new(),
            clock: (0..3).map(|_| Seen { version: None, since: 0, revoked: false }).collect(),
            watch_stalled: false,
            history: Vec::new(),
            acked: 0,
            next_position: 1,
            versions: 0,
        }
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    fn running(&self, i: usize) -> bool {
        self.nodes[i].server != ServerRole::Stopped
    }

    /// A mirror's server receives from its upstream (whatever its agent does).
    fn streaming(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        n.server == ServerRole::Mirror && n.following.is_some_and(|u| self.running(u))
    }

    fn kill_server(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if n.server != ServerRole::Stopped {
            n.last_position = n.last_position.max(Some(n.position));
        }
        n.server = ServerRole::Stopped;
        n.following = None;
        n.relaxed = false;
        if !self.persistent {
            // The data is gone; the agent still knows where it had got to.
            (n.data, n.position, n.lineage) = (DataState::Empty, 0, None);
        }
    }

    /// Watchdogs: a server outlives its agent's last renewal by FENCE at most.
    fn watchdogs(&mut self) {
        for i in 0..self.nodes.len() {
            if self.running(i) && self.now >= self.nodes[i].deadline {
                self.kill_server(i);
            }
        }
    }

    /// One agent's tick: renew, read, act, report (nothing when stalled or
    /// dead; no renewal or reading when cut off from the API).
    fn agent(&mut self, i: usize) {
        {
            let n = &self.nodes[i];
            if !n.agent_alive || n.stalled || n.partitioned {
                return;
            }
        }
        if !self.renew(i) {
            return;
        }
        // Read the instruction: never one older than seen.
        if let Some(pod) = self.nodes[i].pod.clone()
            && pod.epoch >= self.nodes[i].seen
        {
            let n = &mut self.nodes[i];
            if pod.desired != Desired::Primary && n.served.is_some_and(|s| pod.epoch > s) {
                n.served = None;
            }
            n.seen = pod.epoch;
            n.instruction = Some(pod);
        }
        self.act(i);
        self.publish(i);
    }

    /// Renew by CAS; on a lost Lease kill the server and take a new one.
    fn renew(&mut self, i: usize) -> bool {
        let n = &mut self.nodes[i];
        match (n.held, n.lease) {
            (Some(h), Some(v)) if h == v => {}
            (Some(_), _) => {
                // Revoked or taken: fence, then start over.
                n.held = None;
                self.kill_server(i);
                return self.renew(i);
            }
            (None, _) => {}
        }
        self.versions += 1;
        let n = &mut self.nodes[i];
        n.lease = Some(self.versions);
        n.held = Some(self.versions);
        n.deadline = self.now + FENCE_MS;
        true
    }

    fn act(&mut self, i: usize) {
        let Some(instruction) = self.nodes[i].instruction.clone() else { return };
        let upstream = instruction.upstream.as_deref().and_then(|u| self.index(u)).filter(|u| *u != i);
        let endpoint = upstream.filter(|u| self.nodes[*u].lease.is_some()).map(|u| Endpoint {
            member: self.nodes[u].name.clone(),
            host: "h".into(),
            port: 1,
            lineage: self.nodes[u].lineage,
        });
        let n = &self.nodes[i];
        let local = Local {
            data: n.data,
            running: n.server != ServerRole::Stopped,
            in_recovery: n.server == ServerRole::Mirror,
            following: n.following.map(|f| Endpoint {
                member: self.nodes[f].name.clone(),
                host: "h".into(),
                port: 1,
                lineage: None,
            }),
            served: n.served,
            relaxed: (n.server == ServerRole::Primary).then_some(n.relaxed),
        };
        let epoch = instruction.epoch;
        match plan(&instruction, endpoint.as_ref(), &local, &n.name) {
            Action::Initialize => {
                for (j, other) in self.nodes.iter().enumerate() {
                    assert!(
                        j == i || other.data == DataState::Empty,
                        "initialising {} while {} holds data\n{self:#?}",
                        self.nodes[i].name,
                        other.name
                    );
                }
                let n = &mut self.nodes[i];
                (n.data, n.lineage, n.position, n.served) = (DataState::Primary, Some(epoch), 0, None);
            }
            Action::Clone(_) => {
                let u = upstream.expect("cloning from an upstream");
                if self.running(u) {
                    let (position, lineage) = (self.nodes[u].position, self.nodes[u].lineage);
                    let n = &mut self.nodes[i];
                    (n.data, n.position, n.lineage, n.last_position) =
                        (DataState::Standby, position, lineage, None);
                }
            }
            Action::StartPrimary => {
                self.check_no_acked_loss(i);
                let n = &mut self.nodes[i];
                (n.server, n.served, n.relaxed, n.data) =
                    (ServerRole::Primary, Some(epoch), false, DataState::Primary);
            }
            Action::StartStandby(_) => {
                let n = &mut self.nodes[i];
                n.server = ServerRole::Mirror;
                n.following = upstream;
            }
            Action::Promote => {
                self.check_no_acked_loss(i);
                let n = &mut self.nodes[i];
                (n.server, n.following, n.relaxed) = (ServerRole::Primary, None, false);
                (n.data, n.lineage, n.served) = (DataState::Primary, Some(epoch), Some(epoch));
            }
            Action::Stop => self.clean_stop(i),
            Action::Rewind(_) => {
                let u = upstream.expect("rewinding onto an upstream");
                if self.running(u) {
                    let (position, lineage) = (self.nodes[u].position, self.nodes[u].lineage);
                    let n = &mut self.nodes[i];
                    // What the old primary wrote past the new history is gone.
                    n.position = n.position.min(position);
                    (n.data, n.lineage, n.last_position) = (DataState::Standby, lineage, None);
                    (n.server, n.following) = (ServerRole::Mirror, Some(u));
                }
            }
            Action::Repoint(_) => self.nodes[i].following = upstream,
            Action::Detach => self.nodes[i].following = None,
            Action::SetRelaxed(r) => self.nodes[i].relaxed = r,
            Action::Wait(_) => {}
        }
    }

    /// With synchronous commits, a server that starts taking writes holds
    /// every acknowledged write (of those any copy of survived: deleting a
    /// memory-only member's pod destroys what it held).
    fn check_no_acked_loss(&self, i: usize) {
        if !self.policy.synchronous || self.policy.relax_when_alone {
            return;
        }
        let surviving = self.nodes.iter().map(|n| n.position).max().unwrap_or(0).min(self.acked);
        let n = &self.nodes[i];
        assert!(
            n.position >= surviving,
            "{} takes writes at {} and loses acked {surviving}\n{self:#?}",
            n.name,
            n.position
        );
    }

    /// A clean shutdown sends everything to the mirrors streaming from it.
    fn clean_stop(&mut self, i: usize) {
        if self.nodes[i].server == ServerRole::Primary {
            let position = self.nodes[i].position;
            for j in 0..self.nodes.len() {
                if j != i && self.streaming(j) && self.nodes[j].following == Some(i) {
                    self.nodes[j].position = self.nodes[j].position.max(position);
                }
            }
        }
        self.kill_server(i);
    }

    fn publish(&mut self, i: usize) {
        let streaming = self.streaming(i);
        let n = &mut self.nodes[i];
        let running = n.server != ServerRole::Stopped;
        if running {
            n.last_position = n.last_position.max(Some(n.position));
        }
        let following = n.following;
        let report = Report {
            at: self.now,
            role: n.server,
            position: running.then_some(n.position),
            last_position: n.last_position,
            acting_on: n.instruction.as_ref().map_or(Desired::Fenced, |x| x.desired),
            epoch: n.instruction.as_ref().map_or(0, |x| x.epoch),
            streaming_from: None,
            data: n.data,
            lineage: n.lineage,
        };
        let from = following.filter(|_| streaming).map(|f| self.nodes[f].name.clone());
        self.nodes[i].report = Some(Report { streaming_from: from, ..report });
    }

    /// The operator: judge Leases, step, persist, instruct, revoke.
    fn operator(&mut self) {
        let members: Vec<Member> = (0..self.nodes.len()).map(|i| self.member(i)).collect();
        let decision = step(&self.engine, &members, &self.policy, self.now);
        if let State::Promoting { lag_bytes, .. } = &decision.engine.state
            && !matches!(&self.engine.state, State::Promoting { .. })
            && !self.policy.synchronous
        {
            let lag = lag_bytes.expect("an async promotion says what it may lose");
            assert!(lag <= self.policy.max_lag_bytes, "promoting past maxLagBytes: {lag}");
        }
        self.engine = decision.engine.clone();
        self.history.push((decision.engine.epoch, decision.instructions.clone()));
        self.write_instructions(&decision.instructions);
        self.routes = decision.routes;
        for member in &decision.revoke {
            let i = self.index(member).expect("a member");
            // A delete conditional on the version the operator saw.
            if self.clock[i].version.is_some() && self.clock[i].version == self.nodes[i].lease {
                self.nodes[i].lease = None;
                self.clock[i] = Seen { version: None, since: self.now, revoked: true };
            } else {
                self.clock[i].since = self.now;
            }
        }
    }

    /// Pod writes never go over a newer epoch (compare-and-swap on the pod).
    fn write_instructions(&mut self, instructions: &BTreeMap<String, Instruction>) {
        for n in &mut self.nodes {
            if let Some(new) = instructions.get(&n.name)
                && n.pod.as_ref().is_none_or(|p| p.epoch <= new.epoch)
            {
                n.pod = Some(new.clone());
            }
        }
    }

    fn member(&mut self, i: usize) -> Member {
        let version = self.nodes[i].lease;
        let seen = &mut self.clock[i];
        if !self.watch_stalled && seen.version != version {
            let revoked = seen.revoked && version.is_none();
            *seen = Seen { version, since: self.now, revoked };
        }
        let quiet = self.now.saturating_sub(seen.since) >= LEASE_MS;
        let lease = match (seen.version, seen.revoked) {
            (_, true) => Lease::Revoked,
            (None, false) if quiet => Lease::Revoked,
            (_, false) if quiet => Lease::Stale,
            (Some(_), false) => Lease::Live,
            (None, false) => Lease::Stale,
        };
        let report = seen.version.and(self.nodes[i].report.clone());
        Member { name: self.nodes[i].name.clone(), report, lease, recorded_position: None }
    }

    fn check(&self) {
        let writers: Vec<_> =
            self.nodes.iter().filter(|n| n.server == ServerRole::Primary).map(|n| &n.name).collect();
        assert!(writers.len() <= 1, "two servers accept writes at t={}: {writers:?}\n{self:#?}", self.now);
        let routed: Vec<_> = self.routes.iter().filter(|(_, r)| **r == Route::ReadWrite).collect();
        assert!(routed.len() <= 1, "writes routed to {routed:?}");
    }

    fn tick(&mut self) {
        self.watchdogs();
        for i in 0..self.nodes.len() {
            self.agent(i);
        }
        self.check();
        self.operator();
        for i in 0..self.nodes.len() {
            self.agent(i);
        }
        self.check();
    }

    fn apply(&mut self, event: &Event) {
        match *event {
            Event::KillServer(i) => self.kill_server(i),
            Event::KillMember(i) => {
                self.kill_server(i);
                self.nodes[i].agent_alive = false;
            }
            Event::Restart(i) => {
                if !self.nodes[i].agent_alive {
                    let n = &mut self.nodes[i];
                    (n.agent_alive, n.stalled, n.instruction, n.seen, n.held) = (true, false, None, 0, None);
                    n.last_position = None;
                }
            }
            Event::DeletePod(i) => {
                // The agent stops its server cleanly and releases its Lease;
                // a new pod starts with a new agent (and, without volumes,
                // no data).
                if self.nodes[i].agent_alive && !self.nodes[i].stalled {
                    self.clean_stop(i);
                }
                self.kill_server(i);
                let n = &mut self.nodes[i];
                (n.lease, n.held, n.instruction, n.seen, n.pod, n.last_position) =
                    (None, None, None, 0, None, None);
                (n.agent_alive, n.stalled, n.partitioned) = (true, false, false);
                if !self.persistent {
                    n.served = None;
                }
            }
            Event::Stall(i) => self.nodes[i].stalled = true,
            Event::Resume(i) => self.nodes[i].stalled = false,
            Event::Partition(i) => self.nodes[i].partitioned = true,
            Event::Heal(i) => self.nodes[i].partitioned = false,
            Event::Write(i) => self.write(i),
            Event::Replicate => {
                for j in 0..self.nodes.len() {
                    if self.streaming(j)
                        && let Some(u) = self.nodes[j].following
                    {
                        self.nodes[j].position = self.nodes[j].position.max(self.nodes[u].position);
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
            Event::StaleLeader(back) => {
                // A former leader resumes and writes what it decided then.
                if let Some((_, old)) =
                    self.history.len().checked_sub(back as usize).map(|k| self.history[k].clone())
                {
                    self.write_instructions(&old);
                }
            }
            Event::StallWatch => self.watch_stalled = true,
            Event::HealWatch => self.watch_stalled = false,
        }
        self.tick();
    }

    /// A client with a connection open to member `i` writes on it (routes
    /// lag: clients keep their connections).
    fn write(&mut self, i: usize) {
        if self.nodes[i].server != ServerRole::Primary {
            return;
        }
        let position = self.next_position;
        self.next_position += 1;
        self.nodes[i].position = position;
        let needs_mirror = self.policy.synchronous && !self.nodes[i].relaxed;
        if needs_mirror {
            // ANY 1 mirror streaming from it must have it before the commit returns.
            match (0..self.nodes.len())
                .find(|j| *j != i && self.streaming(*j) && self.nodes[*j].following == Some(i))
            {
                Some(j) => self.nodes[j].position = self.nodes[j].position.max(position),
                None => return, // the commit waits; the client never sees an ack
            }
        }
        self.acked = self.acked.max(position);
    }

    /// Everything comes back; the store must converge to a writable primary.
    fn heal_all(&mut self) {
        self.watch_stalled = false;
        for node in &mut self.nodes {
            (node.partitioned, node.stalled, node.agent_alive) = (false, false, true);
        }
        // Long enough for every timeout (a promotion that never completes).
        for _ in 0..200 {
            self.now += TICK_MS;
            self.tick();
        }
    }
}

fn run(world: &mut World, events: &[Event]) {
    for _ in 0..6 {
        world.now += TICK_MS;
        world.tick();
    }
    for e in events {
        world.apply(e);
    }
    world.heal_all();
}

proptest! {
    // PROPTEST_CASES raises the number of runs (default 256).
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn never_two_writers_and_no_acked_loss_in_sync_mode(events in prop::collection::vec(event(), 0..80)) {
        let mut world = World::new(true, false, true);
        run(&mut world, &events);
        prop_assert!(world.routes.values().any(|r| *r == Route::ReadWrite), "no primary after healing: {world:#?}");
    }

    #[test]
    fn never_two_writers_in_async_mode(events in prop::collection::vec(event(), 0..80)) {
        let mut world = World::new(false, false, true);
        run(&mut world, &events);
        prop_assert!(world.routes.values().any(|r| *r == Route::ReadWrite), "no primary after healing: {world:#?}");
    }

    #[test]
    fn never_two_writers_with_preferred_durability(events in prop::collection::vec(event(), 0..80)) {
        let mut world = World::new(true, true, true);
        run(&mut world, &events);
        prop_assert!(world.routes.values().any(|r| *r == Route::ReadWrite), "no primary after healing: {world:#?}");
    }

    #[test]
    fn members_without_volumes_never_serve_emptiness(events in prop::collection::vec(event(), 0..80)) {
        let mut world = World::new(true, false, false);
        run(&mut world, &events);
        prop_assert!(world.routes.values().any(|r| *r == Route::ReadWrite), "no primary after healing: {world:#?}");
    }
}

// Single decisions, each pinning one rule.

fn report(role: ServerRole, position: Option<u64>, acting_on: Desired, epoch: Epoch) -> Report {
    Report {
        at: 0,
        role,
        position,
        last_position: position,
        acting_on,
        epoch,
        streaming_from: None,
        data: if role == ServerRole::Primary { DataState::Primary } else { DataState::Standby },
        lineage: Some(1),
    }
}

fn live(name: &str, report: Report) -> Member {
    Member { name: name.into(), report: Some(report), lease: Lease::Live, recorded_position: None }
}

fn primary(name: &str, position: u64, epoch: Epoch) -> Member {
    live(name, report(ServerRole::Primary, Some(position), Desired::Primary, epoch))
}

fn mirror(name: &str, position: u64, epoch: Epoch, from: Option<&str>) -> Member {
    let r = report(ServerRole::Mirror, Some(position), Desired::Mirror, epoch);
    live(name, Report { streaming_from: from.map(Into::into), ..r })
}

fn policy() -> Policy {
    Policy {
        enabled: true,
        delay_ms: 1_000,
        max_lag_bytes: 100,
        synchronous: false,
        relax_when_alone: false,
        force: false,
        requested_primary: None,
    }
}

fn steady(primary: &str, epoch: Epoch) -> Engine {
    Engine { state: State::Steady { primary: primary.into(), relaxed: false }, epoch }
}

#[test]
fn a_lost_primary_is_fenced_after_the_delay_and_the_most_advanced_mirror_promoted() {
    let mut members = vec![
        live("db-1", report(ServerRole::Stopped, None, Desired::Primary, 1)),
        mirror("db-2", 480, 1, Some("db-1")),
        mirror("db-3", 490, 1, Some("db-1")),
    ];
    members[0].report.as_mut().unwrap().last_position = Some(500);
    let d = step(&steady("db-1", 1), &members, &policy(), 100);
    assert!(matches!(d.engine.state, State::Suspect { since: 100, last_position: Some(500), .. }));
    assert_eq!(d.read_write(), None, "a stopped server gets no writes");
    let d = step(&d.engine, &members, &policy(), 1_100);
    assert!(matches!(d.engine.state, State::Fencing { epoch: 2, .. }), "{:?}", d.engine);
    assert_eq!(d.engine.epoch, 2, "the fence raises the epoch");
    assert_eq!(d.instructions["db-1"], Instruction::new(Desired::Fenced, 2));
    assert_eq!(d.instructions["db-2"], Instruction::new(Desired::Mirror, 2), "mirrors stop receiving");
    // The old primary's agent confirms; the mirrors detach and report.
    members[0].report =
        Some(Report { last_position: Some(500), ..report(ServerRole::Stopped, None, Desired::Fenced, 2) });
    let d2 = step(&d.engine, &members, &policy(), 1_200);
    assert_eq!(d2.blocked, Some(Blocked::AwaitingPositions), "positions from before the detach do not count");
    members[1] = mirror("db-2", 480, 2, None);
    members[2] = mirror("db-3", 490, 2, None);
    let d = step(&d2.engine, &members, &policy(), 1_300);
    assert!(
        matches!(d.engine.state, State::Promoting { ref candidate, lag_bytes: Some(10), .. } if candidate == "db-3")
    );
    assert_eq!(d.instructions["db-3"].desired, Desired::Primary);
    assert_eq!(d.instructions["db-2"].upstream.as_deref(), Some("db-3"));
    members[2] = primary("db-3", 490, 3);
    let d = step(&d.engine, &members, &policy(), 1_500);
    assert_eq!(d.engine.state, State::Steady { primary: "db-3".into(), relaxed: false });
    assert_eq!(d.read_write(), Some("db-3"));
    assert!(d.steps.iter().any(|s| matches!(s, Step::Promoted { lag_bytes: Some(10), .. })));
}

#[test]
fn a_stale_primary_is_revoked_before_anyone_is_promoted() {
    let fencing = Engine {
        state: State::Fencing { old: "db-1".into(), epoch: 5, started: 0, last_position: Some(10) },
        epoch: 5,
    };
    let mut members = vec![primary("db-1", 10, 4), mirror("db-2", 10, 5, None)];
    members[0].lease = Lease::Stale;
    let d = step(&fencing, &members, &policy(), 9_000);
    assert!(matches!(d.engine.state, State::Fencing { .. }), "a stale lease may still be serving");
    assert_eq!(d.revoke, vec!["db-1".to_string()]);
    members[0].lease = Lease::Revoked;
    let d = step(&d.engine, &members, &policy(), 9_500);
    assert!(matches!(d.engine.state, State::Promoting { ref candidate, .. } if candidate == "db-2"));
    assert!(d.revoke.is_empty());
}

#[test]
fn a_primary_whose_server_stopped_never_counts_as_caught_up() {
    // The lost primary reports no position, but its last known one stands.
    let mut lost = live("db-1", report(ServerRole::Stopped, None, Desired::Fenced, 3));
    lost.report.as_mut().unwrap().last_position = Some(1_000);
    lost.lease = Lease::Revoked;
    let fencing = Engine {
        state: State::Fencing { old: "db-1".into(), epoch: 3, started: 0, last_position: None },
        epoch: 3,
    };
    let members = vec![lost, mirror("db-2", 200, 3, None)];
    let d = step(&fencing, &members, &policy(), 2_000);
    assert_eq!(d.blocked, Some(Blocked::LagTooHigh { best: "db-2".into(), lag_bytes: 800 }));
    let forced = Policy { force: true, ..policy() };
    assert!(matches!(step(&fencing, &members, &forced, 2_000).engine.state, State::Promoting { .. }));
    // Never known at all: not guessed to be zero.
    let mut unknown = vec![
        live("db-1", report(ServerRole::Stopped, None, Desired::Fenced, 3)),
        mirror("db-2", 200, 3, None),
    ];
    unknown[0].lease = Lease::Revoked;
    assert_eq!(step(&fencing, &unknown, &policy(), 2_000).blocked, Some(Blocked::LagUnknown));
}

#[test]
fn a_switchover_waits_for_the_final_position_not_for_silence() {
    let requested = Policy { requested_primary: Some("db-2".into()), ..policy() };
    let mut members = vec![primary("db-1", 50, 1), mirror("db-2", 40, 1, Some("db-1"))];
    let d = step(&steady("db-1", 1), &members, &requested, 200);
    assert!(matches!(d.engine.state, State::Demoting { epoch: 2, .. }));
    assert_eq!(d.instructions["db-1"].desired, Desired::Fenced);
    assert_eq!(d.instructions["db-2"].upstream.as_deref(), Some("db-1"), "the target keeps receiving");
    // Stopped: no live position, the final one is its last known.
    members[0] = live(
        "db-1",
        Report { last_position: Some(55), ..report(ServerRole::Stopped, None, Desired::Fenced, 2) },
    );
    members[1] = mirror("db-2", 50, 2, Some("db-1"));
    let d = step(&d.engine, &members, &requested, 300);
    assert!(matches!(d.engine.state, State::Demoting { .. }), "db-2 has not received everything yet");
    members[1] = mirror("db-2", 55, 2, None);
    let d = step(&d.engine, &members, &requested, 400);
    assert!(matches!(d.engine.state, State::Promoting { ref candidate, .. } if candidate == "db-2"));
}

#[test]
fn sync_mode_compares_positions_only_after_every_member_detached() {
    let sync = Policy { synchronous: true, ..policy() };
    let fencing = Engine {
        state: State::Fencing { old: "db-1".into(), epoch: 7, started: 0, last_position: Some(10) },
        epoch: 7,
    };
    let old = live("db-1", report(ServerRole::Stopped, None, Desired::Fenced, 7));
    let still_receiving = vec![old.clone(), mirror("db-2", 9, 7, Some("db-1")), mirror("db-3", 10, 7, None)];
    assert_eq!(step(&fencing, &still_receiving, &sync, 1_000).blocked, Some(Blocked::AwaitingPositions));
    let mut dead = vec![old.clone(), mirror("db-2", 9, 7, None), mirror("db-3", 10, 6, None)];
    dead[2].lease = Lease::Stale;
    assert_eq!(
        step(&fencing, &dead, &sync, 1_000).blocked,
        Some(Blocked::AwaitingPositions),
        "db-3 may hold the only copy"
    );
    let detached = vec![old, mirror("db-2", 9, 7, None), mirror("db-3", 10, 7, None)];
    let d = step(&fencing, &detached, &sync, 1_000);
    assert!(matches!(d.engine.state, State::Promoting { ref candidate, .. } if candidate == "db-3"));
}

#[test]
fn a_slow_promotion_is_waited_for_and_never_doubled() {
    let promoting = Engine {
        state: State::Promoting {
            old: "db-1".into(),
            candidate: "db-2".into(),
            started: 0,
            since: 1_000,
            lag_bytes: Some(0),
            planned: false,
        },
        epoch: 4,
    };
    // Its agent keeps its lease while pg_promote runs long.
    let members = vec![
        live("db-1", report(ServerRole::Stopped, None, Desired::Fenced, 4)),
        mirror("db-2", 10, 4, None),
        mirror("db-3", 10, 4, None),
    ];
    for now in [5_000, 20_000, 50_000] {
        let d = step(&promoting, &members, &policy(), now);
        assert_eq!(d.engine.state, promoting.state, "still promoting db-2 at {now}");
        assert_eq!(d.primary(), Some("db-2"));
    }
    // Only a failed promotion is replaced, after it is fenced.
    let d = step(&promoting, &members, &policy(), 61_000);
    assert!(matches!(d.engine.state, State::Fencing { ref old, .. } if old == "db-2"));
    assert_eq!(d.instructions["db-2"].desired, Desired::Fenced);
}

#[test]
fn an_empty_member_is_never_made_primary_outside_a_fresh_bootstrap() {
    // A recreated primary pod without volumes: empty, told primary.
    // The operator remembers where db-1's data had got to before its pod went.
    let mut members = vec![
        live(
            "db-1",
            Report {
                data: DataState::Empty,
                last_position: None,
                ..report(ServerRole::Stopped, None, Desired::Primary, 3)
            },
        ),
        mirror("db-2", 40, 3, Some("db-1")),
    ];
    members[0].recorded_position = Some(40);
    let d = step(&steady("db-1", 3), &members, &policy(), 1_000);
    assert!(!d.instructions["db-1"].initialize);
    let d = step(&d.engine, &members, &policy(), 2_500);
    assert!(matches!(d.engine.state, State::Fencing { .. }));
    members[0].report = Some(Report {
        data: DataState::Empty,
        ..report(ServerRole::Stopped, None, Desired::Fenced, d.engine.epoch)
    });
    members[1] = mirror("db-2", 40, d.engine.epoch, None);
    members[1].report.as_mut().unwrap().last_position = Some(40);
    let d = step(&d.engine, &members, &Policy { max_lag_bytes: 1 << 20, ..policy() }, 3_000);
    assert!(
        matches!(d.engine.state, State::Promoting { ref candidate, .. } if candidate == "db-2"),
        "{:?}",
        d
    );
}

#[test]
fn a_store_over_kept_volumes_resumes_from_the_most_advanced_member() {
    let engine = Engine::bootstrap(false);
    let kept = |name: &str, data, lineage, position| {
        live(
            name,
            Report {
                data,
                lineage: Some(lineage),
                ..report(ServerRole::Mirror, Some(position), Desired::Mirror, 0)
            },
        )
    };
    let mut members = vec![
        kept("db-1", DataState::Standby, 5, 900),
        kept("db-2", DataState::Primary, 5, 1_340),
        live(
            "db-3",
            Report { data: DataState::Standby, ..report(ServerRole::Stopped, None, Desired::Mirror, 0) },
        ),
    ];
    let d = step(&engine, &members, &policy(), 1_000);
    assert_eq!(d.blocked, Some(Blocked::AwaitingMembers { members: vec!["db-3".into()] }));
    assert!(d.instructions.values().all(|i| i.desired == Desired::Mirror && i.upstream.is_none()));
    members[2] = kept("db-3", DataState::Standby, 5, 1_340);
    let d = step(&d.engine, &members, &policy(), 1_500);
    assert_eq!(d.engine.state, State::Bootstrapping { primary: Some("db-2".into()), fresh: false });
    assert!(!d.instructions["db-2"].initialize, "nothing is initialised over kept data");
    // An older lineage loses even with a higher position.
    members[0] = kept("db-1", DataState::Primary, 4, 5_000);
    let d = step(&engine, &members, &policy(), 1_500);
    assert_eq!(d.engine.state, State::Bootstrapping { primary: Some("db-2".into()), fresh: false });
}

#[test]
fn a_new_store_initialises_its_first_member_and_epochs_start_above_what_agents_saw() {
    let fresh = Engine::bootstrap(true);
    let members = vec![
        live(
            "db-1",
            Report { data: DataState::Empty, ..report(ServerRole::Stopped, None, Desired::Fenced, 0) },
        ),
        live(
            "db-2",
            Report { data: DataState::Empty, ..report(ServerRole::Stopped, None, Desired::Fenced, 9) },
        ),
    ];
    let d = step(&fresh, &members, &policy(), 0);
    assert!(d.instructions["db-1"].initialize);
    assert_eq!(d.engine.epoch, 10, "db-2's agent saw epoch 9 and would ignore anything older");
}

#[test]
fn preferred_durability_relaxes_alone_and_restores_with_a_mirror() {
    let preferred = Policy { synchronous: true, relax_when_alone: true, ..policy() };
    let alone =
        vec![primary("db-1", 10, 1), live("db-2", report(ServerRole::Stopped, None, Desired::Mirror, 1))];
    let d = step(&steady("db-1", 1), &alone, &preferred, 0);
    assert_eq!(d.engine.state, State::Steady { primary: "db-1".into(), relaxed: true });
    assert!(d.instructions["db-1"].relaxed && d.engine.epoch == 2);
    let back = vec![primary("db-1", 10, 2), mirror("db-2", 10, 2, Some("db-1"))];
    let d = step(&d.engine, &back, &preferred, 100);
    assert_eq!(d.engine.state, State::Steady { primary: "db-1".into(), relaxed: false });
    let required = Policy { relax_when_alone: false, ..preferred };
    assert!(!step(&steady("db-1", 1), &alone, &required, 0).instructions["db-1"].relaxed);
}

#[test]
fn mirrors_are_routed_only_while_streaming_from_the_primary() {
    let members =
        vec![primary("db-1", 10, 1), mirror("db-2", 10, 1, Some("db-1")), mirror("db-3", 10, 1, None)];
    let d = step(&steady("db-1", 1), &members, &policy(), 0);
    assert_eq!(d.routes["db-2"], Route::ReadOnly);
    assert_eq!(d.routes["db-3"], Route::None, "in recovery is not healthy: it receives nothing");
}

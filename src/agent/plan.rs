//! What the agent does next, decided from what it sees of its own server and
//! what the failover engine asked of it. Pure: the agent loop observes, calls
//! [`plan`], carries out one action, and observes again.

use crate::contract::{DataState, Desired, Epoch, Instruction};

/// Where a member's server can be reached, and the history it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub member: String,
    pub host: String,
    pub port: u16,
    /// The lineage of its data (see [`crate::contract::Report::lineage`]):
    /// a member that follows it takes it on.
    pub lineage: Option<Epoch>,
}

impl Endpoint {
    /// The same server at the same address (lineage aside).
    pub fn same_place(&self, other: &Endpoint) -> bool {
        self.member == other.member && self.host == other.host && self.port == other.port
    }
}

/// The agent's view of its own server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Local {
    pub data: DataState,
    /// The server process is running (and answering).
    pub running: bool,
    /// While running: it is read-only (a replica).
    pub in_recovery: bool,
    /// While running read-only: the server it was told to stream from.
    pub following: Option<Endpoint>,
    /// The epoch under which this member's server last started as primary,
    /// until an instruction other than "primary" arrives (kept on its
    /// volume). A primary that stopped is not started again before the
    /// engine fenced it: meanwhile it may be promoting another member.
    pub served: Option<Epoch>,
    /// While running as primary: whether it waits for no acknowledgement.
    pub relaxed: Option<bool>,
}

/// One step for the agent to take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create the first primary's data.
    Initialize,
    /// Copy the primary into the empty data directory.
    Clone(Endpoint),
    StartPrimary,
    /// Start read-only, streaming from this primary, or from none.
    StartStandby(Option<Endpoint>),
    Promote,
    /// Fast, clean shutdown: the server takes no more writes.
    Stop,
    /// Rewind a former primary onto the current primary's history.
    Rewind(Endpoint),
    /// Stream from another primary.
    Repoint(Endpoint),
    /// Stop receiving from anyone; stay read-only.
    Detach,
    /// A running primary changes whether it waits for acknowledgements.
    SetRelaxed(bool),
    /// Nothing to do; the reason is for logs.
    Wait(&'static str),
}

/// The next step towards what `instruction` asks, given `upstream` (the
/// instruction's upstream member, where its address is known) and the local
/// server.
pub fn plan(instruction: &Instruction, upstream: Option<&Endpoint>, local: &Local, me: &str) -> Action {
    let is_primary = local.running && !local.in_recovery;
    match instruction.desired {
        Desired::Fenced if is_primary => Action::Stop,
        Desired::Fenced => Action::Wait("fenced: taking no writes"),
        Desired::Primary => primary(instruction, local),
        Desired::Mirror if is_primary => Action::Stop,
        Desired::Mirror => match instruction.upstream.as_deref().filter(|u| *u != me) {
            None => hold(local),
            Some(_) => match upstream {
                Some(p) => follow(p, local),
                None => Action::Wait("the upstream's address is not known yet"),
            },
        },
    }
}

fn primary(instruction: &Instruction, local: &Local) -> Action {
    match local.data {
        _ if local.running && local.in_recovery => Action::Promote,
        _ if local.running => match local.relaxed {
            Some(r) if r == instruction.relaxed => Action::Wait("primary"),
            _ => Action::SetRelaxed(instruction.relaxed),
        },
        DataState::Empty if instruction.initialize => Action::Initialize,
        DataState::Empty => {
            Action::Wait("no data: an empty member never starts as primary unless told to initialise")
        }
        _ if local.served.is_some() => {
            Action::Wait("stopped while primary: waiting for the operator to fence it before it serves again")
        }
        _ => Action::StartPrimary,
    }
}

/// Read-only and receiving from nobody: what every member does while the
/// engine compares positions (after a fence, or over kept volumes).
fn hold(local: &Local) -> Action {
    match (local.data, local.running) {
        (DataState::Empty, _) => Action::Wait("no data, and no primary to copy"),
        (_, false) => Action::StartStandby(None),
        (_, true) if local.following.is_some() => Action::Detach,
        _ => Action::Wait("read-only, receiving from nobody"),
    }
}

fn follow(primary: &Endpoint, local: &Local) -> Action {
    match (local.data, local.running) {
        (DataState::Empty, false) => Action::Clone(primary.clone()),
        // A former primary (even one running read-only) may have diverged:
        // stop, rewind, then follow.
        (DataState::Primary, true) => Action::Stop,
        (DataState::Primary, false) => Action::Rewind(primary.clone()),
        (_, false) => Action::StartStandby(Some(primary.clone())),
        (_, true) if !local.following.as_ref().is_some_and(|f| f.same_place(primary)) => {
            Action::Repoint(primary.clone())
        }
        _ => Action::Wait("mirror"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(member: &str) -> Endpoint {
        Endpoint { member: member.into(), host: "10.0.0.1".into(), port: 5432, lineage: Some(1) }
    }

    fn local(data: DataState, running: bool, in_recovery: bool, following: Option<&str>) -> Local {
        Local {
            data,
            running,
            in_recovery,
            following: following.map(endpoint),
            served: None,
            relaxed: Some(false),
        }
    }

    fn primary_at(epoch: Epoch) -> Instruction {
        Instruction::new(Desired::Primary, epoch)
    }

    fn mirror_of(upstream: Option<&str>) -> Instruction {
        Instruction::new(Desired::Mirror, 3).upstream(upstream.map(Into::into))
    }

    #[test]
    fn only_a_new_store_initialises_an_empty_primary() {
        let empty = local(DataState::Empty, false, false, None);
        let init = Instruction { initialize: true, ..primary_at(1) };
        assert_eq!(plan(&init, None, &empty, "db-1"), Action::Initialize);
        assert!(
            matches!(plan(&primary_at(1), None, &empty, "db-1"), Action::Wait(_)),
            "a recreated empty member waits"
        );
        assert_eq!(
            plan(&primary_at(1), None, &local(DataState::Primary, false, false, None), "db-1"),
            Action::StartPrimary
        );
        assert!(matches!(
            plan(&primary_at(1), None, &local(DataState::Primary, true, false, None), "db-1"),
            Action::Wait(_)
        ));
    }

    #[test]
    fn a_primary_that_stopped_waits_to_be_fenced_before_serving_again() {
        let stopped = Local { served: Some(4), ..local(DataState::Primary, false, false, None) };
        assert!(matches!(plan(&primary_at(4), None, &stopped, "db-1"), Action::Wait(_)));
        assert!(
            matches!(plan(&primary_at(5), None, &stopped, "db-1"), Action::Wait(_)),
            "newer, but no fence"
        );
        let fenced_since = Local { served: None, ..stopped };
        assert_eq!(plan(&primary_at(6), None, &fenced_since, "db-1"), Action::StartPrimary);
    }

    #[test]
    fn a_new_mirror_clones_the_primary_then_streams_from_it() {
        let p = endpoint("db-1");
        let told = mirror_of(Some("db-1"));
        assert_eq!(
            plan(&told, Some(&p), &local(DataState::Empty, false, false, None), "db-2"),
            Action::Clone(p.clone())
        );
        assert_eq!(
            plan(&told, Some(&p), &local(DataState::Standby, false, false, None), "db-2"),
            Action::StartStandby(Some(p.clone()))
        );
        assert!(matches!(
            plan(&told, Some(&p), &local(DataState::Standby, true, true, Some("db-1")), "db-2"),
            Action::Wait(_)
        ));
        assert!(matches!(
            plan(&told, None, &local(DataState::Empty, false, false, None), "db-2"),
            Action::Wait(_)
        ));
    }

    #[test]
    fn a_chosen_mirror_promotes_and_a_primary_follows_its_durability() {
        assert_eq!(
            plan(&primary_at(2), None, &local(DataState::Standby, true, true, Some("db-1")), "db-2"),
            Action::Promote
        );
        let relaxed = Instruction { relaxed: true, ..primary_at(2) };
        let running = local(DataState::Primary, true, false, None);
        assert_eq!(plan(&relaxed, None, &running, "db-2"), Action::SetRelaxed(true));
    }

    #[test]
    fn a_fenced_primary_stops_and_a_fenced_mirror_stays() {
        let fenced = Instruction::new(Desired::Fenced, 2);
        assert_eq!(plan(&fenced, None, &local(DataState::Primary, true, false, None), "db-1"), Action::Stop);
        assert!(matches!(
            plan(&fenced, None, &local(DataState::Standby, true, true, Some("db-1")), "db-2"),
            Action::Wait(_)
        ));
    }

    #[test]
    fn mirrors_detach_while_positions_are_compared() {
        let hold = mirror_of(None);
        assert_eq!(
            plan(&hold, None, &local(DataState::Standby, true, true, Some("db-1")), "db-2"),
            Action::Detach
        );
        assert!(matches!(
            plan(&hold, None, &local(DataState::Standby, true, true, None), "db-2"),
            Action::Wait(_)
        ));
        // Over kept volumes every member with data starts read-only to report.
        assert_eq!(
            plan(&hold, None, &local(DataState::Primary, false, false, None), "db-1"),
            Action::StartStandby(None)
        );
    }

    #[test]
    fn an_old_primary_stops_rewinds_then_follows_the_new_one() {
        let p = endpoint("db-2");
        let told = mirror_of(Some("db-2"));
        assert_eq!(
            plan(&told, Some(&p), &local(DataState::Primary, true, false, None), "db-1"),
            Action::Stop
        );
        assert_eq!(plan(&told, Some(&p), &local(DataState::Primary, true, true, None), "db-1"), Action::Stop);
        assert_eq!(
            plan(&told, Some(&p), &local(DataState::Primary, false, false, None), "db-1"),
            Action::Rewind(p.clone())
        );
    }

    #[test]
    fn mirrors_follow_the_primary_wherever_it_is() {
        let p = endpoint("db-3");
        let told = mirror_of(Some("db-3"));
        assert_eq!(
            plan(&told, Some(&p), &local(DataState::Standby, true, true, Some("db-1")), "db-2"),
            Action::Repoint(p.clone())
        );
        // The same member at a new address (its pod was recreated).
        let moved = Endpoint { host: "10.0.0.9".into(), ..p.clone() };
        assert_eq!(
            plan(&told, Some(&moved), &local(DataState::Standby, true, true, Some("db-3")), "db-2"),
            Action::Repoint(moved)
        );
    }
}

//! What the agent does next, decided from what it sees of its own server and
//! what the failover engine asked of it. Pure: the agent loop observes, calls
//! [`plan`], carries out one action, and observes again.

use crate::failover::Desired;

/// Where a member's server can be reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub member: String,
    pub host: String,
    pub port: u16,
}

/// How the data directory was left, from `pg_controldata`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataState {
    /// No cluster in the data directory.
    Empty,
    /// Last ran as a primary (shut down, or crashed while running).
    Primary,
    /// Last ran as a standby.
    Standby,
}

/// The agent's view of its own server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Local {
    pub data: DataState,
    /// The server process is running (and answering).
    pub running: bool,
    /// While running: it is a standby.
    pub in_recovery: bool,
    /// While running as a standby: the member it streams from.
    pub following: Option<String>,
    /// The server died while it was the primary, and the operator has not
    /// said anything but "primary" since. It is not restarted as primary on
    /// the agent's own initiative: the engine may be promoting a mirror.
    pub crashed_primary: bool,
}

/// One step for the agent to take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create the first primary's cluster.
    Initdb,
    /// Copy the primary into the empty data directory.
    Clone(Endpoint),
    StartPrimary,
    /// Start as a standby of this primary (or of none yet, waiting for one).
    StartStandby(Option<Endpoint>),
    Promote,
    /// Fast, clean shutdown: the server takes no more writes.
    Stop,
    /// Rewind a former primary onto the current primary's history.
    Rewind(Endpoint),
    /// Stream from another primary (a reload, no restart).
    Repoint(Endpoint),
    /// Nothing to do; the reason is for logs.
    Wait(&'static str),
}

/// The next step towards what `desired` asks, given `primary` (the member the
/// engine routes writes to, if any) and the local server.
pub fn plan(desired: Desired, primary: Option<&Endpoint>, local: &Local, me: &str) -> Action {
    let is_primary = local.running && !local.in_recovery;
    // Another member's endpoint: a member never follows itself.
    let upstream = primary.filter(|p| p.member != me);
    match desired {
        Desired::Fenced if is_primary => Action::Stop,
        Desired::Fenced => Action::Wait("fenced: taking no writes"),

        Desired::Primary => match local.data {
            _ if local.crashed_primary && !local.running => {
                Action::Wait("primary crashed: waiting for the operator")
            }
            DataState::Empty => Action::Initdb,
            _ if !local.running => Action::StartPrimary,
            _ if local.in_recovery => Action::Promote,
            _ => Action::Wait("primary"),
        },

        Desired::Mirror if is_primary => Action::Stop,
        Desired::Mirror => match (local.data, upstream, local.running) {
            (DataState::Empty, Some(p), _) => Action::Clone(p.clone()),
            (DataState::Empty, None, _) => Action::Wait("no primary to clone yet"),
            // A former primary may have diverged: rewind before following.
            (DataState::Primary, Some(p), false) => Action::Rewind(p.clone()),
            (DataState::Primary, None, false) => {
                Action::Wait("former primary: waiting for a primary to rewind against")
            }
            (_, p, false) => Action::StartStandby(p.cloned()),
            (_, Some(p), true) if local.following.as_deref() != Some(p.member.as_str()) => {
                Action::Repoint(p.clone())
            }
            _ => Action::Wait("mirror"),
        },
    }
}

/// How `pg_controldata` says the data directory was left.
pub fn data_state(controldata: &str) -> DataState {
    let state = controldata
        .lines()
        .find_map(|l| l.strip_prefix("Database cluster state:"))
        .map(str::trim)
        .unwrap_or_default();
    match state {
        "" => DataState::Empty,
        s if s.contains("recovery") => DataState::Standby,
        _ => DataState::Primary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(member: &str) -> Endpoint {
        Endpoint { member: member.into(), host: "10.0.0.1".into(), port: 5432 }
    }

    fn local(data: DataState, running: bool, in_recovery: bool, following: Option<&str>) -> Local {
        Local { data, running, in_recovery, following: following.map(Into::into), crashed_primary: false }
    }

    #[test]
    fn the_first_primary_is_initialised_started_and_left_alone() {
        assert_eq!(
            plan(Desired::Primary, None, &local(DataState::Empty, false, false, None), "db-1"),
            Action::Initdb
        );
        assert_eq!(
            plan(Desired::Primary, None, &local(DataState::Primary, false, false, None), "db-1"),
            Action::StartPrimary
        );
        assert!(matches!(
            plan(Desired::Primary, None, &local(DataState::Primary, true, false, None), "db-1"),
            Action::Wait(_)
        ));
    }

    #[test]
    fn a_new_mirror_clones_the_primary_then_streams_from_it() {
        let p = endpoint("db-1");
        assert_eq!(
            plan(Desired::Mirror, Some(&p), &local(DataState::Empty, false, false, None), "db-2"),
            Action::Clone(p.clone())
        );
        assert_eq!(
            plan(Desired::Mirror, Some(&p), &local(DataState::Standby, false, false, None), "db-2"),
            Action::StartStandby(Some(p.clone()))
        );
        assert!(matches!(
            plan(Desired::Mirror, Some(&p), &local(DataState::Standby, true, true, Some("db-1")), "db-2"),
            Action::Wait(_)
        ));
        assert!(matches!(
            plan(Desired::Mirror, None, &local(DataState::Empty, false, false, None), "db-2"),
            Action::Wait(_)
        ));
    }

    #[test]
    fn a_crashed_primary_waits_for_the_operator_instead_of_restarting_itself() {
        let crashed = Local { crashed_primary: true, ..local(DataState::Primary, false, false, None) };
        assert!(matches!(plan(Desired::Primary, None, &crashed, "db-1"), Action::Wait(_)));
        assert_eq!(
            plan(Desired::Primary, None, &local(DataState::Primary, false, false, None), "db-1"),
            Action::StartPrimary
        );
    }

    #[test]
    fn a_chosen_mirror_promotes() {
        assert_eq!(
            plan(Desired::Primary, None, &local(DataState::Standby, true, true, Some("db-1")), "db-2"),
            Action::Promote
        );
    }

    #[test]
    fn a_fenced_primary_stops_and_a_fenced_mirror_stays() {
        assert_eq!(
            plan(Desired::Fenced, None, &local(DataState::Primary, true, false, None), "db-1"),
            Action::Stop
        );
        assert!(matches!(
            plan(Desired::Fenced, None, &local(DataState::Standby, true, true, Some("db-1")), "db-2"),
            Action::Wait(_)
        ));
    }

    #[test]
    fn an_old_primary_stops_rewinds_then_follows_the_new_one() {
        let p = endpoint("db-2");
        assert_eq!(
            plan(Desired::Mirror, Some(&p), &local(DataState::Primary, true, false, None), "db-1"),
            Action::Stop
        );
        assert_eq!(
            plan(Desired::Mirror, Some(&p), &local(DataState::Primary, false, false, None), "db-1"),
            Action::Rewind(p.clone())
        );
        assert!(matches!(
            plan(Desired::Mirror, None, &local(DataState::Primary, false, false, None), "db-1"),
            Action::Wait(_)
        ));
    }

    #[test]
    fn mirrors_follow_a_new_primary_without_a_restart() {
        let p = endpoint("db-3");
        assert_eq!(
            plan(Desired::Mirror, Some(&p), &local(DataState::Standby, true, true, Some("db-1")), "db-2"),
            Action::Repoint(p)
        );
    }

    #[test]
    fn controldata_tells_how_the_cluster_was_left() {
        assert_eq!(
            data_state("pg_control version number: 1300\nDatabase cluster state:               shut down\n"),
            DataState::Primary
        );
        assert_eq!(data_state("Database cluster state:               in production\n"), DataState::Primary);
        assert_eq!(
            data_state("Database cluster state:               shut down in recovery\n"),
            DataState::Standby
        );
        assert_eq!(
            data_state("Database cluster state:               in archive recovery\n"),
            DataState::Standby
        );
        assert_eq!(data_state(""), DataState::Empty);
    }
}

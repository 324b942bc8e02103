//! The engine's [`State`] as it is kept in an object's status
//! ([`EngineStatus`]), and back.

use super::{Millis, State};
use crate::api::common::{EngineState, EngineStatus};

fn ms(value: Millis) -> Option<i64> {
    i64::try_from(value).ok()
}

fn millis(value: Option<i64>) -> Millis {
    value.and_then(|v| u64::try_from(v).ok()).unwrap_or(0)
}

impl From<&State> for EngineStatus {
    fn from(state: &State) -> Self {
        let status = |state, member: &str| EngineStatus {
            state,
            member: member.to_string(),
            successor: None,
            since_ms: None,
            started_ms: None,
            last_position: None,
        };
        match state {
            State::Bootstrapping { primary } => status(EngineState::Bootstrapping, primary),
            State::Steady { primary } => status(EngineState::Steady, primary),
            State::Suspect { primary, since } => {
                EngineStatus { since_ms: ms(*since), ..status(EngineState::Suspect, primary) }
            }
            State::Fencing { old, fenced_at, started, last_position } => EngineStatus {
                since_ms: ms(*fenced_at),
                started_ms: ms(*started),
                last_position: last_position.and_then(ms),
                ..status(EngineState::Fencing, old)
            },
            State::Promoting { old, candidate, started } => EngineStatus {
                successor: Some(candidate.clone()),
                started_ms: ms(*started),
                ..status(EngineState::Promoting, old)
            },
            State::Demoting { old, target, asked_at, started } => EngineStatus {
                successor: Some(target.clone()),
                since_ms: ms(*asked_at),
                started_ms: ms(*started),
                ..status(EngineState::Demoting, old)
            },
        }
    }
}

impl EngineStatus {
    /// The engine state this status describes, or `None` when a field the
    /// state needs is missing (a status edited by hand): the reconciler then
    /// starts over from what the agents report.
    pub fn to_state(&self) -> Option<State> {
        let member = self.member.clone();
        Some(match self.state {
            EngineState::Bootstrapping => State::Bootstrapping { primary: member },
            EngineState::Steady => State::Steady { primary: member },
            EngineState::Suspect => State::Suspect { primary: member, since: millis(self.since_ms) },
            EngineState::Fencing => State::Fencing {
                old: member,
                fenced_at: millis(Some(self.since_ms?)),
                started: millis(self.started_ms),
                last_position: self.last_position.and_then(|p| u64::try_from(p).ok()),
            },
            EngineState::Promoting => State::Promoting {
                old: member,
                candidate: self.successor.clone()?,
                started: millis(self.started_ms),
            },
            EngineState::Demoting => State::Demoting {
                old: member,
                target: self.successor.clone()?,
                asked_at: millis(Some(self.since_ms?)),
                started: millis(self.started_ms),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_survives_the_round_trip_through_status() {
        let states = [
            State::Bootstrapping { primary: "db-1".into() },
            State::Steady { primary: "db-1".into() },
            State::Suspect { primary: "db-1".into(), since: 1_700_000_000_123 },
            State::Fencing { old: "db-1".into(), fenced_at: 5, started: 4, last_position: Some(0x0300_0000) },
            State::Fencing { old: "db-1".into(), fenced_at: 5, started: 4, last_position: None },
            State::Promoting { old: "db-1".into(), candidate: "db-2".into(), started: 4 },
            State::Demoting { old: "db-1".into(), target: "db-3".into(), asked_at: 9, started: 8 },
        ];
        for state in states {
            let status = EngineStatus::from(&state);
            let yaml = serde_yaml::to_string(&status).unwrap();
            let back: EngineStatus = serde_yaml::from_str(&yaml).unwrap();
            assert_eq!(back.to_state(), Some(state), "{yaml}");
        }
    }

    #[test]
    fn a_promotion_without_a_candidate_is_not_guessed() {
        let status = EngineStatus {
            state: EngineState::Promoting,
            member: "db-1".into(),
            successor: None,
            since_ms: None,
            started_ms: None,
            last_position: None,
        };
        assert_eq!(status.to_state(), None);
    }
}

//! The [`Engine`] as it is kept in an object's status ([`EngineStatus`]),
//! and back.

use super::{Engine, Epoch, Millis, State};
use crate::api::common::{EngineState, EngineStatus};

fn signed(value: u64) -> Option<i64> {
    i64::try_from(value).ok()
}

fn unsigned(value: Option<i64>) -> Option<u64> {
    value.and_then(|v| u64::try_from(v).ok())
}

fn millis(value: Option<i64>) -> Millis {
    unsigned(value).unwrap_or(0)
}

impl From<&Engine> for EngineStatus {
    fn from(engine: &Engine) -> Self {
        let status = |state, member: &str| EngineStatus {
            planned: false,
            state,
            member: member.to_string(),
            successor: None,
            epoch: signed(engine.epoch).unwrap_or(i64::MAX),
            fence_epoch: None,
            since_ms: None,
            started_ms: None,
            last_position: None,
            lag_bytes: None,
            fresh: false,
            relaxed: false,
        };
        match &engine.state {
            State::Bootstrapping { primary, fresh } => EngineStatus {
                fresh: *fresh,
                ..status(EngineState::Bootstrapping, primary.as_deref().unwrap_or_default())
            },
            State::Steady { primary, relaxed } => {
                EngineStatus { relaxed: *relaxed, ..status(EngineState::Steady, primary) }
            }
            State::Suspect { primary, since, last_position } => EngineStatus {
                since_ms: signed(*since),
                last_position: last_position.and_then(signed),
                ..status(EngineState::Suspect, primary)
            },
            State::Fencing { old, epoch, started, last_position } => EngineStatus {
                fence_epoch: signed(*epoch),
                started_ms: signed(*started),
                last_position: last_position.and_then(signed),
                ..status(EngineState::Fencing, old)
            },
            State::Promoting { old, candidate, started, since, lag_bytes, planned } => EngineStatus {
                successor: Some(candidate.clone()),
                planned: *planned,
                since_ms: signed(*since),
                started_ms: signed(*started),
                lag_bytes: lag_bytes.and_then(signed),
                ..status(EngineState::Promoting, old)
            },
            State::Demoting { old, target, epoch, asked_at, started } => EngineStatus {
                successor: Some(target.clone()),
                fence_epoch: signed(*epoch),
                since_ms: signed(*asked_at),
                started_ms: signed(*started),
                ..status(EngineState::Demoting, old)
            },
        }
    }
}

impl EngineStatus {
    /// The engine this status describes, or `None` when a field the state
    /// needs is missing (a status edited by hand): the reconciler then
    /// starts over from what the agents report.
    pub fn to_engine(&self) -> Option<Engine> {
        let member = self.member.clone();
        let fence_epoch = || -> Option<Epoch> { unsigned(self.fence_epoch) };
        let state = match self.state {
            EngineState::Bootstrapping => {
                State::Bootstrapping { primary: Some(member).filter(|m| !m.is_empty()), fresh: self.fresh }
            }
            EngineState::Steady => State::Steady { primary: member, relaxed: self.relaxed },
            EngineState::Suspect => State::Suspect {
                primary: member,
                since: millis(self.since_ms),
                last_position: unsigned(self.last_position),
            },
            EngineState::Fencing => State::Fencing {
                old: member,
                epoch: fence_epoch()?,
                started: millis(self.started_ms),
                last_position: unsigned(self.last_position),
            },
            EngineState::Promoting => State::Promoting {
                old: member,
                candidate: self.successor.clone()?,
                started: millis(self.started_ms),
                since: millis(self.since_ms),
                lag_bytes: unsigned(self.lag_bytes),
                planned: self.planned,
            },
            EngineState::Demoting => State::Demoting {
                old: member,
                target: self.successor.clone()?,
                epoch: fence_epoch()?,
                asked_at: millis(Some(self.since_ms?)),
                started: millis(self.started_ms),
            },
        };
        Some(Engine { state, epoch: unsigned(Some(self.epoch)).unwrap_or(0) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_survives_the_round_trip_through_status() {
        let states = [
            State::Bootstrapping { primary: None, fresh: true },
            State::Bootstrapping { primary: Some("db-2".into()), fresh: false },
            State::Steady { primary: "db-1".into(), relaxed: false },
            State::Steady { primary: "db-1".into(), relaxed: true },
            State::Suspect { primary: "db-1".into(), since: 1_700_000_000_123, last_position: Some(7) },
            State::Fencing { old: "db-1".into(), epoch: 5, started: 4, last_position: Some(0x0300_0000) },
            State::Fencing { old: "db-1".into(), epoch: 5, started: 4, last_position: None },
            State::Promoting {
                old: "db-1".into(),
                candidate: "db-2".into(),
                started: 4,
                since: 6,
                lag_bytes: Some(12),
                planned: false,
            },
            State::Promoting {
                old: "db-1".into(),
                candidate: "db-3".into(),
                started: 4,
                since: 6,
                lag_bytes: Some(0),
                planned: true,
            },
            State::Demoting { old: "db-1".into(), target: "db-3".into(), epoch: 9, asked_at: 9, started: 8 },
        ];
        for (epoch, state) in states.into_iter().enumerate() {
            let engine = Engine { state, epoch: epoch as u64 + 3 };
            let status = EngineStatus::from(&engine);
            let yaml = serde_yaml::to_string(&status).unwrap();
            let back: EngineStatus = serde_yaml::from_str(&yaml).unwrap();
            assert_eq!(back.to_engine(), Some(engine), "{yaml}");
        }
    }

    #[test]
    fn a_promotion_without_a_candidate_is_not_guessed() {
        let engine = Engine {
            state: State::Promoting {
                old: "db-1".into(),
                candidate: "db-2".into(),
                started: 1,
                since: 1,
                lag_bytes: None,
                planned: false,
            },
            epoch: 2,
        };
        let mut status = EngineStatus::from(&engine);
        status.successor = None;
        assert_eq!(status.to_engine(), None);
        let fencing = Engine {
            state: State::Fencing { old: "db-1".into(), epoch: 2, started: 1, last_position: None },
            epoch: 2,
        };
        let mut status = EngineStatus::from(&fencing);
        status.fence_epoch = None;
        assert_eq!(status.to_engine(), None, "a fence without its epoch is not guessed");
    }
}

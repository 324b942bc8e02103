//! Kubernetes-style conditions: built fresh on every reconcile, then merged
//! with the previous ones so `lastTransitionTime` only moves when a
//! condition's status really changes, and an unchanged status compares equal
//! (and is not written).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition as a reconcile sees it, before timestamps are settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Observed {
    pub fn new(type_: &'static str, status: bool, reason: &'static str, message: impl Into<String>) -> Self {
        Self { type_, status, reason, message: message.into() }
    }
}

/// Turn freshly observed conditions into API conditions, keeping the previous
/// `lastTransitionTime` of every condition whose status did not change.
pub fn merge(
    previous: &[Condition],
    observed: Vec<Observed>,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    observed
        .into_iter()
        .map(|o| {
            let status = if o.status { "True" } else { "False" }.to_string();
            let last_transition_time = previous
                .iter()
                .find(|p| p.type_ == o.type_ && p.status == status)
                .map_or_else(|| now.clone(), |p| p.last_transition_time.clone());
            Condition {
                type_: o.type_.to_string(),
                status,
                reason: o.reason.to_string(),
                message: o.message,
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when the condition of `type_` is present with status "True".
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn an_unchanged_status_keeps_its_transition_time() {
        let first = merge(&[], vec![Observed::new("Ready", true, "AllReady", "3/3")], Some(1), &at(100));
        let second = merge(&first, vec![Observed::new("Ready", true, "AllReady", "3/3")], Some(1), &at(200));
        assert_eq!(first, second, "a resync with nothing new is equal, so nothing is written");
    }

    #[test]
    fn a_flipped_status_takes_the_new_time_and_a_new_reason_does_not() {
        let first = merge(&[], vec![Observed::new("Ready", true, "AllReady", "3/3")], Some(1), &at(100));
        let reworded = merge(&first, vec![Observed::new("Ready", true, "Other", "x")], Some(2), &at(200));
        assert_eq!(reworded[0].last_transition_time, at(100));
        assert_eq!(reworded[0].observed_generation, Some(2));
        let flipped =
            merge(&first, vec![Observed::new("Ready", false, "NotReady", "1/3")], Some(1), &at(300));
        assert_eq!(flipped[0].last_transition_time, at(300));
        assert!(!is_true(&flipped, "Ready"));
    }
}

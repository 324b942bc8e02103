//! How the operator judges member Leases: on its own monotonic clock, never
//! on the agent's timestamps (see [`crate::contract::timing`]).
//!
//! A Lease is [`Live`](Lease::Live) until the operator has seen the same
//! resourceVersion for [`LEASE`]; then it is [`Stale`](Lease::Stale) (the
//! member is unhealthy, but may still be serving) until the operator revokes
//! it — a delete conditional on that resourceVersion — after which it is
//! [`Revoked`](Lease::Revoked). A Lease its agent released (no holder: the
//! agent stopped its server and exited) or one gone for `LEASE` counts as
//! revoked too. Pure apart from the clock it is given, so every rule is a
//! unit test.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease as LeaseObject;

use crate::contract::timing::LEASE;
use crate::failover::Lease;

/// What the operator saw of one member's Lease, and since when.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    /// resourceVersion, or None while the Lease does not exist.
    version: Option<String>,
    since: Instant,
    /// The operator revoked this version.
    revoked: bool,
    /// The API server itself showed this version (not only the cache), so
    /// reading it again would tell nothing new.
    read: bool,
}

/// Every member Lease of one store, by member.
#[derive(Debug, Default)]
pub struct LeaseClock {
    seen: HashMap<String, Seen>,
}

impl LeaseClock {
    /// Judge `member`'s Lease as cached now; remembers what it saw.
    pub fn judge(&mut self, member: &str, lease: Option<&LeaseObject>, now: Instant) -> Lease {
        let version = lease.and_then(|l| l.metadata.resource_version.clone());
        let seen = self.seen.entry(member.to_string()).or_insert_with(|| Seen {
            version: version.clone(),
            since: now,
            revoked: false,
            read: false,
        });
        if seen.version != version {
            // Revoked, then gone: stays revoked until the agent takes a new one.
            let gone_after_revocation = seen.revoked && version.is_none();
            *seen = Seen { version, since: now, revoked: gone_after_revocation, read: false };
        }
        self.peek(member, lease, now)
    }

    /// The cache shows `member`'s Lease stale, at a version the API server
    /// has not yet confirmed: worth one read from the API (once per
    /// version, so a member that is really gone costs no read per
    /// reconcile).
    pub fn worth_reading(&self, member: &str, lease: Option<&LeaseObject>, now: Instant) -> bool {
        let version = lease.and_then(|l| l.metadata.resource_version.as_ref());
        let confirmed = self.seen.get(member).is_some_and(|s| s.read && s.version.as_ref() == version);
        !confirmed && self.peek(member, lease, now) == Lease::Stale
    }

    /// Judge `member`'s Lease as just read from the API server.
    pub fn judge_read(&mut self, member: &str, lease: Option<&LeaseObject>, now: Instant) -> Lease {
        let judged = self.judge(member, lease, now);
        if let Some(seen) = self.seen.get_mut(member) {
            seen.read = true;
        }
        judged
    }

    /// What [`judge`](Self::judge) would say, without remembering anything.
    pub fn peek(&self, member: &str, lease: Option<&LeaseObject>, now: Instant) -> Lease {
        let version = lease.and_then(|l| l.metadata.resource_version.clone());
        let (since, revoked) = match self.seen.get(member) {
            Some(seen) if seen.version == version => (seen.since, seen.revoked),
            Some(seen) => (now, seen.revoked && version.is_none()),
            None => (now, false),
        };
        let released = lease.is_some_and(|l| {
            l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()).is_none_or(str::is_empty)
        });
        let quiet = now.saturating_duration_since(since) >= LEASE;
        match (lease, revoked || released) {
            (_, true) => Lease::Revoked,
            (None, false) if quiet => Lease::Revoked,
            (_, false) if quiet => Lease::Stale,
            (Some(_), false) => Lease::Live,
            // Gone just now: not alive, not yet known to be fenced.
            (None, false) => Lease::Stale,
        }
    }

    /// The resourceVersion a revocation must be conditional on.
    pub fn version(&self, member: &str) -> Option<String> {
        self.seen.get(member).and_then(|s| s.version.clone())
    }

    /// The operator deleted `member`'s Lease at the version it saw.
    pub fn revoked(&mut self, member: &str, now: Instant) {
        self.seen.insert(member.to_string(), Seen { version: None, since: now, revoked: true, read: false });
    }

    /// A revocation failed because the Lease changed: it was renewed.
    pub fn renewed(&mut self, member: &str, now: Instant) {
        if let Some(seen) = self.seen.get_mut(member) {
            seen.since = now;
            seen.version = None;
        }
    }

    /// Forget members no longer in the store.
    pub fn retain(&mut self, members: &[String]) {
        self.seen.retain(|m, _| members.contains(m));
    }

    /// How long until the first Live Lease could go stale, if any.
    pub fn next_change(&self, now: Instant) -> Option<Duration> {
        self.seen
            .values()
            .filter(|s| !s.revoked)
            .map(|s| (s.since + LEASE).saturating_duration_since(now))
            .filter(|d| !d.is_zero())
            .min()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::LeaseSpec;

    use super::*;

    fn lease(version: &str, holder: Option<&str>) -> LeaseObject {
        let mut l = LeaseObject {
            spec: Some(LeaseSpec { holder_identity: holder.map(Into::into), ..LeaseSpec::default() }),
            ..LeaseObject::default()
        };
        l.metadata.resource_version = Some(version.into());
        l
    }

    #[test]
    fn a_lease_goes_stale_on_the_operators_clock_and_is_revoked_only_by_the_operator() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::default();
        let held = lease("10", Some("db-1/ab"));
        assert_eq!(clock.judge("db-1", Some(&held), t0), Lease::Live);
        assert_eq!(clock.judge("db-1", Some(&held), t0 + LEASE - Duration::from_millis(1)), Lease::Live);
        assert_eq!(clock.judge("db-1", Some(&held), t0 + LEASE), Lease::Stale);
        assert_eq!(clock.version("db-1").as_deref(), Some("10"), "the revocation's precondition");
        clock.revoked("db-1", t0 + LEASE);
        assert_eq!(clock.judge("db-1", None, t0 + LEASE), Lease::Revoked);
        // The agent comes back and takes a new Lease.
        let retaken = lease("12", Some("db-1/cd"));
        assert_eq!(clock.judge("db-1", Some(&retaken), t0 + LEASE * 2), Lease::Live);
    }

    #[test]
    fn a_peek_remembers_nothing() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::default();
        let held = lease("10", Some("db-1/ab"));
        clock.judge("db-1", Some(&held), t0);
        assert_eq!(clock.peek("db-1", Some(&held), t0 + LEASE), Lease::Stale);
        assert_eq!(clock.peek("db-1", None, t0 + LEASE), Lease::Stale, "gone just now, on a lagging cache");
        // The API shows the Lease renewed: a new version, Live from now.
        let renewed = lease("11", Some("db-1/ab"));
        assert_eq!(clock.judge("db-1", Some(&renewed), t0 + LEASE), Lease::Live);
        assert_eq!(clock.version("db-1").as_deref(), Some("11"));
    }

    #[test]
    fn a_stale_lease_is_worth_one_read_per_version() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::default();
        let held = lease("10", Some("db-1/ab"));
        clock.judge("db-1", Some(&held), t0);
        assert!(!clock.worth_reading("db-1", Some(&held), t0), "live: nothing to check");
        assert!(clock.worth_reading("db-1", Some(&held), t0 + LEASE), "stale in the cache");
        // The API shows the same version: stale indeed, and not read again.
        assert_eq!(clock.judge_read("db-1", Some(&held), t0 + LEASE), Lease::Stale);
        assert!(!clock.worth_reading("db-1", Some(&held), t0 + LEASE * 2));
        // A renewal the cache shows later starts over.
        let renewed = lease("11", Some("db-1/ab"));
        assert_eq!(clock.judge("db-1", Some(&renewed), t0 + LEASE * 2), Lease::Live);
        assert!(clock.worth_reading("db-1", Some(&renewed), t0 + LEASE * 3));
    }

    #[test]
    fn a_renewal_resets_the_clock() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::default();
        clock.judge("db-1", Some(&lease("10", Some("a"))), t0);
        let later = t0 + LEASE - Duration::from_millis(10);
        assert_eq!(clock.judge("db-1", Some(&lease("11", Some("a"))), later), Lease::Live);
        assert_eq!(clock.judge("db-1", Some(&lease("11", Some("a"))), t0 + LEASE), Lease::Live);
        assert_eq!(clock.next_change(t0 + LEASE), Some(Duration::from_millis(LEASE.as_millis() as u64 - 10)));
    }

    #[test]
    fn a_missing_lease_counts_as_revoked_only_after_the_lease_duration() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::default();
        assert_eq!(clock.judge("db-1", None, t0), Lease::Stale);
        assert_eq!(clock.judge("db-1", None, t0 + LEASE), Lease::Revoked);
    }

    #[test]
    fn a_released_lease_counts_as_revoked_at_once() {
        let mut clock = LeaseClock::default();
        assert_eq!(clock.judge("db-1", Some(&lease("10", None)), Instant::now()), Lease::Revoked);
        assert_eq!(clock.judge("db-2", Some(&lease("10", Some(""))), Instant::now()), Lease::Revoked);
    }

    #[test]
    fn a_failed_revocation_means_the_member_renewed() {
        let t0 = Instant::now();
        let mut clock = LeaseClock::default();
        clock.judge("db-1", Some(&lease("10", Some("a"))), t0);
        assert_eq!(clock.judge("db-1", Some(&lease("10", Some("a"))), t0 + LEASE), Lease::Stale);
        clock.renewed("db-1", t0 + LEASE);
        assert_eq!(clock.judge("db-1", Some(&lease("10", Some("a"))), t0 + LEASE), Lease::Live);
    }
}

//! How an agent reports to the operator: a Lease per member, renewed while
//! the agent runs, with its server's role, position and address in
//! annotations. The Lease doubles as the liveness signal the failover engine
//! needs: an expired Lease means the agent stopped renewing, and an agent
//! that cannot renew stops its server before the Lease can expire.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;

use crate::failover::{Desired, Millis, Report, ServerRole};

pub const ROLE: &str = "hostwright.io/role";
pub const POSITION: &str = "hostwright.io/position";
pub const ACTING_ON: &str = "hostwright.io/acting-on";
pub const REPORTED_AT: &str = "hostwright.io/reported-at";
pub const ADDRESS: &str = "hostwright.io/address";

/// How long a report stays valid without renewal.
pub const LEASE_SECONDS: i32 = 5;
/// An agent that could not renew for this long stops its server, one second
/// before anyone may consider the lease expired.
pub const SELF_FENCE_AFTER_MS: u64 = 4_000;

fn role_text(role: ServerRole) -> &'static str {
    match role {
        ServerRole::Primary => "primary",
        ServerRole::Mirror => "mirror",
        ServerRole::Stopped => "stopped",
    }
}

fn desired_text(desired: Desired) -> &'static str {
    match desired {
        Desired::Primary => "primary",
        Desired::Mirror => "mirror",
        Desired::Fenced => "fenced",
    }
}

/// Parse the instruction annotation the operator puts on a member's pod.
pub fn parse_desired(text: &str) -> Option<Desired> {
    match text {
        "primary" => Some(Desired::Primary),
        "mirror" => Some(Desired::Mirror),
        "fenced" => Some(Desired::Fenced),
        _ => None,
    }
}

/// The text form of an instruction (for the pod annotation).
pub fn desired_annotation(desired: Desired) -> &'static str {
    desired_text(desired)
}

/// Annotations carrying `report` and the address mirrors reach the server at.
pub fn encode(report: &Report, address: &str) -> BTreeMap<String, String> {
    let mut a = BTreeMap::from([
        (ROLE.to_string(), role_text(report.role).to_string()),
        (ACTING_ON.to_string(), desired_text(report.acting_on).to_string()),
        (REPORTED_AT.to_string(), report.at.to_string()),
        (ADDRESS.to_string(), address.to_string()),
    ]);
    if let Some(position) = report.position {
        a.insert(POSITION.to_string(), position.to_string());
    }
    a
}

/// When `lease` expires unless renewed (Unix milliseconds).
pub fn expires_at(lease: &Lease) -> Option<Millis> {
    let spec = lease.spec.as_ref()?;
    let renewed = spec.renew_time.as_ref()?.0.as_millisecond().max(0) as u64;
    let duration = u64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS).max(0) as u32) * 1_000;
    Some(renewed + duration)
}

/// A member's report and address from its Lease, and whether the Lease has
/// expired at `now`. A Lease with unreadable annotations reports nothing.
pub fn decode(lease: &Lease, now: Millis) -> (Option<(Report, String)>, bool) {
    let expired = expires_at(lease).is_none_or(|at| now > at);
    let a = lease.metadata.annotations.clone().unwrap_or_default();
    let report = (|| {
        let role = match a.get(ROLE)?.as_str() {
            "primary" => ServerRole::Primary,
            "mirror" => ServerRole::Mirror,
            "stopped" => ServerRole::Stopped,
            _ => return None,
        };
        let report = Report {
            at: a.get(REPORTED_AT)?.parse().ok()?,
            role,
            position: a.get(POSITION).and_then(|p| p.parse().ok()),
            acting_on: parse_desired(a.get(ACTING_ON)?)?,
        };
        Some((report, a.get(ADDRESS).cloned().unwrap_or_default()))
    })();
    (report, expired)
}

/// Milliseconds since the epoch of a timestamp.
pub fn millis(t: Timestamp) -> Millis {
    t.as_millisecond().max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(annotations: BTreeMap<String, String>, renewed_ms: i64) -> Lease {
        let mut l = Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some("db-1".into()),
                lease_duration_seconds: Some(LEASE_SECONDS),
                renew_time: Some(MicroTime(Timestamp::from_millisecond(renewed_ms).unwrap())),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        };
        l.metadata.annotations = Some(annotations);
        l
    }

    #[test]
    fn a_report_survives_the_round_trip_through_the_lease() {
        let report = Report {
            at: 1_000,
            role: ServerRole::Mirror,
            position: Some(0x0300_0060),
            acting_on: Desired::Mirror,
        };
        let (decoded, expired) = decode(&lease(encode(&report, "10.244.1.5:5432"), 1_000), 2_000);
        assert_eq!(decoded, Some((report, "10.244.1.5:5432".to_string())));
        assert!(!expired);
    }

    #[test]
    fn a_lease_not_renewed_for_its_duration_has_expired() {
        let report =
            Report { at: 1_000, role: ServerRole::Primary, position: None, acting_on: Desired::Primary };
        let l = lease(encode(&report, "a"), 1_000);
        assert!(!decode(&l, 6_000).1);
        assert!(decode(&l, 6_001).1);
        assert!(SELF_FENCE_AFTER_MS < u64::from(LEASE_SECONDS as u32) * 1_000, "agents fence before expiry");
    }

    #[test]
    fn garbage_annotations_report_nothing() {
        let l = lease(BTreeMap::from([(ROLE.to_string(), "leader".to_string())]), 1_000);
        assert_eq!(decode(&l, 1_000).0, None);
    }
}

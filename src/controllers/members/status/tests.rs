use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::api::{DatabaseMirror, DatabaseMirrorSpec, DatabaseMirrorStatus};
use crate::contract::DataState;
use crate::failover::{Engine, Lease, Policy, Report, step};

fn dbm(yaml: &str) -> DatabaseMirror {
    let spec: DatabaseMirrorSpec = serde_yaml::from_str(yaml).unwrap();
    let mut d = DatabaseMirror::new("db", spec);
    d.metadata.namespace = Some("shop".into());
    d.metadata.generation = Some(3);
    d
}

fn member(name: &str, role: ServerRole, position: u64, acting_on: Desired) -> Member {
    let streaming_from = (role == ServerRole::Mirror).then(|| "db-1".to_string());
    Member {
        name: name.into(),
        report: Some(Report {
            at: 10_000,
            role,
            position: Some(position),
            last_position: Some(position),
            acting_on,
            epoch: 1,
            streaming_from,
            data: DataState::Standby,
            lineage: Some(1),
        }),
        lease: Lease::Live,
        recorded_position: None,
    }
}

fn lost(name: &str, position: u64) -> Member {
    Member { lease: Lease::Revoked, ..member(name, ServerRole::Primary, position, Desired::Primary) }
}

fn policy(max_lag: u64) -> Policy {
    Policy {
        enabled: true,
        delay_ms: 0,
        max_lag_bytes: max_lag,
        synchronous: false,
        relax_when_alone: false,
        force: false,
        requested_primary: None,
    }
}

fn steady() -> Engine {
    Engine { state: State::Steady { primary: "db-1".into(), relaxed: false }, epoch: 1 }
}

fn hashes(names: &[&str], hash: &str) -> BTreeMap<String, String> {
    names.iter().map(|n| (n.to_string(), hash.to_string())).collect()
}

fn at(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap())
}

fn observe<'a>(
    members: &'a [Member],
    pods: &'a BTreeMap<String, String>,
    credentials: &'a Credentials,
) -> Facts<'a> {
    static IDLE: Plan = Plan::idle();
    static NO_ARCHIVES: BTreeMap<String, ArchiveReport> = BTreeMap::new();
    static NO_BACKUPS: BTreeMap<String, crate::contract::BackupReport> = BTreeMap::new();
    Facts {
        members,
        pod_hashes: pods,
        revision: "h1",
        credentials,
        certificate_pending: None,
        archives: &NO_ARCHIVES,
        backups: &NO_BACKUPS,
        day2: &IDLE,
    }
}

fn condition<'a>(
    s: &'a DatabaseMirrorStatus,
    t: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    conditions::find(&s.replication.conditions, t).unwrap()
}

fn healthy_trio() -> Vec<Member> {
    vec![
        member("db-1", ServerRole::Primary, 5_000, Desired::Primary),
        member("db-2", ServerRole::Mirror, 4_000, Desired::Mirror),
        member("db-3", ServerRole::Mirror, 5_000, Desired::Mirror),
    ]
}

#[test]
fn a_healthy_trio_is_ready_with_its_lag_reported() {
    let d = dbm("instance: {storage: {size: 1Gi}}\nmirrors: 2");
    let members = healthy_trio();
    let decision = step(&steady(), &members, &policy(1 << 24), 20_000);
    let pods = hashes(&["db-1", "db-2", "db-3"], "h1");
    let s =
        compute(&d, &decision, &observe(&members, &pods, &Credentials::Ready), &Default::default(), &at(1));
    let r = &s.replication;
    assert_eq!(r.phase, Some(StorePhase::Ready));
    assert_eq!(r.current_primary.as_deref(), Some("db-1"));
    assert_eq!(r.ready.as_deref(), Some("3/3"));
    assert_eq!(s.max_lag_bytes, Some(1_000));
    assert_eq!(r.members[1].lag_bytes, Some(1_000));
    assert_eq!(s.equal_spec, Some(true));
    assert_eq!(condition(&s, READY).reason, "PrimaryServing");
    assert_eq!(condition(&s, DEGRADED).status, "False");
    assert_eq!(condition(&s, READY).observed_generation, Some(3));
    assert_eq!(s.credentials_secret.as_deref(), Some("db-credentials"));
}

#[test]
fn a_mirror_too_far_behind_is_not_promoted_and_the_condition_says_why() {
    let d = dbm("instance: {storage: {size: 1Gi}}\nmirrors: 1\nfailover: {maxLagBytes: 100}");
    let mut members = vec![lost("db-1", 10_000), member("db-2", ServerRole::Mirror, 1_000, Desired::Mirror)];
    members[1].report.as_mut().unwrap().streaming_from = None;
    let fencing = Engine {
        state: State::Fencing { old: "db-1".into(), epoch: 1, started: 1, last_position: Some(10_000) },
        epoch: 1,
    };
    let decision = step(&fencing, &members, &policy(100), 20_000);
    let pods = hashes(&["db-1", "db-2"], "h1");
    let s =
        compute(&d, &decision, &observe(&members, &pods, &Credentials::Ready), &Default::default(), &at(1));
    assert_eq!(s.replication.phase, Some(StorePhase::Failed));
    let ready = condition(&s, READY);
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "FailoverBlocked"));
    assert!(
        ready.message.contains("db-2, lags 9000 bytes") && ready.message.contains("maxLagBytes (100)"),
        "{}",
        ready.message
    );
    let events = events(&d, Some(&decision), &Default::default(), &s);
    assert!(events.iter().any(|e| e.reason == "NotReady" && e.type_ == EventType::Warning), "{events:?}");
}

#[test]
fn a_promotion_is_counted_timed_and_announced() {
    let d = dbm("instance: {storage: {size: 1Gi}}\nmirrors: 1");
    let members = vec![lost("db-1", 10_000), member("db-2", ServerRole::Primary, 10_000, Desired::Primary)];
    let promoting = Engine {
        state: State::Promoting {
            old: "db-1".into(),
            candidate: "db-2".into(),
            started: 17_500,
            since: 18_000,
            lag_bytes: Some(0),
            planned: false,
        },
        epoch: 1,
    };
    let decision = step(&promoting, &members, &policy(1 << 24), 20_000);
    let pods = hashes(&["db-1", "db-2"], "h1");
    let mut old = DatabaseMirrorStatus::default();
    old.replication.failover.failover_count = 4;
    let s = compute(&d, &decision, &observe(&members, &pods, &Credentials::Ready), &old, &at(1));
    let f = &s.replication.failover;
    assert_eq!((f.failover_count, f.last_failover_duration.as_deref()), (5, Some("2.50")));
    assert_eq!(f.last_failover_time, Some(at(1)));
    assert_eq!(s.replication.current_primary.as_deref(), Some("db-2"));
    assert_eq!(s.replication.members[0].role, MemberRole::Pending, "a lost member reports nothing");
    let events = events(&d, Some(&decision), &old, &s);
    assert!(events.iter().any(|e| e.reason == "Promoted" && e.note.contains("2.50 s")), "{events:?}");
}

#[test]
fn deleted_credentials_are_refused_not_regenerated() {
    let d = dbm("instance: {storage: {size: 1Gi}}\nmirrors: 2");
    let members = healthy_trio();
    let decision = step(&steady(), &members, &policy(1 << 24), 20_000);
    let pods = hashes(&["db-1", "db-2", "db-3"], "h1");
    let s =
        compute(&d, &decision, &observe(&members, &pods, &Credentials::Missing), &Default::default(), &at(1));
    let ready = condition(&s, READY);
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "CredentialsMissing"));
    assert!(ready.message.contains("restore the Secret"), "{}", ready.message);
    assert_eq!(s.replication.current_primary.as_deref(), Some("db-1"), "the primary keeps serving");
}

#[test]
fn a_member_on_another_revision_is_rolled_and_says_so() {
    let d = dbm("instance: {storage: {size: 1Gi}}\nmirrors: 2");
    let members = healthy_trio();
    let decision = step(&steady(), &members, &policy(1 << 24), 20_000);
    let mut pods = hashes(&["db-1", "db-2", "db-3"], "h1");
    pods.insert("db-3".into(), "other".into());
    let rolling = Plan {
        rollout: Some(crate::api::common::RolloutStatus {
            revision: "h1".into(),
            updated: vec!["db-1".into(), "db-2".into()],
            outdated: vec!["db-3".into()],
            waiting_for: Some("db-3 to come back on the new template".into()),
            halted_on: None,
        }),
        ..Plan::idle()
    };
    let facts = Facts { day2: &rolling, ..observe(&members, &pods, &Credentials::Ready) };
    let s = compute(&d, &decision, &facts, &Default::default(), &at(1));
    assert_eq!(s.equal_spec, Some(false));
    assert!(s.replication.members[2].spec_drift);
    assert_eq!(s.replication.phase, Some(StorePhase::Updating));
    let progressing = condition(&s, PROGRESSING);
    assert_eq!(progressing.reason, "RollingUpdate");
    assert!(progressing.message.contains("db-3 to come back"), "{}", progressing.message);
    assert_eq!(condition(&s, DEGRADED).status, "False", "a rollout on healthy members is no degradation");
    let started = events(&d, Some(&decision), &Default::default(), &s);
    assert!(started.iter().any(|e| e.reason == "RolloutStarted"), "{started:?}");

    let halted = Plan {
        rollout: Some(crate::api::common::RolloutStatus {
            halted_on: Some("db-3".into()),
            waiting_for: Some("db-3 did not stream".into()),
            ..rolling.rollout.clone().unwrap()
        }),
        reason: "RolloutHalted",
        ..Plan::idle()
    };
    let facts = Facts { day2: &halted, ..observe(&members, &pods, &Credentials::Ready) };
    let h = compute(&d, &decision, &facts, &s, &at(2));
    assert_eq!(h.replication.phase, Some(StorePhase::Degraded));
    assert_eq!(
        (condition(&h, DEGRADED).reason.as_str(), condition(&h, PROGRESSING).status.as_str()),
        ("RolloutHalted", "False")
    );
    let halting = events(&d, Some(&decision), &s, &h);
    assert!(
        halting.iter().any(|e| e.reason == "RolloutHalted" && e.type_ == EventType::Warning),
        "{halting:?}"
    );
}

#[test]
fn moving_positions_alone_are_not_a_significant_change() {
    let d = dbm("instance: {storage: {size: 1Gi}}\nmirrors: 2");
    let pods = hashes(&["db-1", "db-2", "db-3"], "h1");
    let first = healthy_trio();
    let decision = step(&steady(), &first, &policy(1 << 24), 20_000);
    let a = compute(&d, &decision, &observe(&first, &pods, &Credentials::Ready), &Default::default(), &at(1));
    let mut later = healthy_trio();
    for m in &mut later {
        if let Some(r) = m.report.as_mut() {
            r.position = r.position.map(|p| p + 777);
            r.at += 300;
        }
    }
    let decision = step(&steady(), &later, &policy(1 << 24), 20_300);
    let b = compute(&d, &decision, &observe(&later, &pods, &Credentials::Ready), &a, &at(2));
    assert_ne!(a, b);
    assert_eq!(a.without_positions(), b.without_positions());
}

#[test]
fn a_store_waiting_for_its_issuer_says_so_instead_of_waiting_quietly() {
    let d = dbm("instance: {storage: {size: 1Gi}}\nmirrors: 1");
    let members: Vec<Member> = ["db-1", "db-2"]
        .iter()
        .map(|name| Member { report: None, ..member(name, ServerRole::Mirror, 0, Desired::Mirror) })
        .collect();
    let decision = step(&crate::failover::Engine::bootstrap(true), &members, &policy(1 << 24), 20_000);
    let pods = BTreeMap::new();
    let why = "waiting for cert-manager to issue Certificate db-tls";
    let facts = Facts { certificate_pending: Some(why), ..observe(&members, &pods, &Credentials::Ready) };
    let s = compute(&d, &decision, &facts, &Default::default(), &at(1));
    let ready = condition(&s, READY);
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str(), ready.message.as_str()),
        ("False", "CertificatePending", why)
    );
    let events = events(&d, Some(&decision), &Default::default(), &s);
    assert!(events.iter().any(|e| e.reason == "NotReady" && e.note == why), "{events:?}");
}

#[test]
fn the_primarys_archiving_makes_the_backup_status_and_a_stalled_archive_degrades_the_store() {
    let d = dbm(
        "instance: {storage: {size: 1Gi}}\nmirrors: 2\nbackup: {objectStore: {endpoint: 'http://s3:9000', \
                 bucket: backups, credentials: {secretName: s3}}}",
    );
    let members = healthy_trio();
    let decision = step(&steady(), &members, &policy(1 << 24), 20_000);
    let pods = hashes(&["db-1", "db-2", "db-3"], "h1");
    let now = 1_000_000_000_000;
    let failing = ArchiveReport {
        archived: Some(("000000010000000000000000".into(), now - 300_000)),
        failed: Some(("000000010000000000000001".into(), now - 5_000)),
        gap: None,
        gap_closed: false,
    };
    let archives = BTreeMap::from([("db-1".to_string(), failing)]);
    let facts = Facts { archives: &archives, ..observe(&members, &pods, &Credentials::Ready) };
    let at_now = Time(Timestamp::from_millisecond(now as i64).unwrap());
    let s = compute(&d, &decision, &facts, &Default::default(), &at_now);
    let degraded = condition(&s, DEGRADED);
    assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "ArchivingFailing"));
    assert_eq!(condition(&s, READY).reason, "PrimaryServing", "the primary keeps serving");
    let backup = s.backup.unwrap();
    assert_eq!(backup.last_archived_wal.as_deref(), Some("000000010000000000000000"));
    // db-1 wrote up to 5_000 bytes; the archive ends at the first segment's end.
    assert_eq!(backup.archive_lag_bytes, Some(0));
    assert!(backup.last_failure.unwrap().contains("000000010000000000000001"));
}

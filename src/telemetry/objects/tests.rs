use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use prometheus_client::registry::Registry;

use super::*;
use crate::api::backup::BackupRecord;
use crate::api::common::{MemberStatus, RolloutStatus};
use crate::api::webcluster::WebClusterSpec;

fn condition(type_: &str, status: &str, reason: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: "whatever the reconcile said".into(),
        observed_generation: Some(1),
        last_transition_time: Time("2025-01-02T03:04:05Z".parse().unwrap()),
    }
}

fn web(spec_yaml: &str) -> WebCluster {
    let spec: WebClusterSpec = serde_yaml::from_str(spec_yaml).unwrap();
    WebCluster::new("shop", spec)
}

/// A sample as (family, extra labels, value), for readable assertions.
type Flat = (&'static str, Vec<(&'static str, String)>, i64);

fn flat(samples: &[Sample]) -> Vec<Flat> {
    samples
        .iter()
        .map(|s| (s.metric.name(), s.pairs().map(|(k, v)| (k, v.to_string())).collect(), s.value))
        .collect()
}

fn labels(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

fn render(objects: &std::sync::Arc<ObjectMetrics>) -> String {
    let mut registry = Registry::with_prefix("hostwright");
    registry.register_collector(Box::new(objects.clone()));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
    out
}

#[test]
fn a_web_cluster_reports_conditions_replicas_and_its_stores() {
    let wc = web("image: nginx:1.27\nreplicas: 4\nsessionStoreRef: {name: shop-sessions}");
    let status = WebClusterStatus {
        replicas: 5,
        ready_replicas: 3,
        updated_replicas: 2,
        available_replicas: 1,
        conditions: vec![
            condition("Ready", "False", "ServersNotReady"),
            condition("Progressing", "True", "RolloutStarted"),
        ],
        ..WebClusterStatus::default()
    };
    assert_eq!(
        flat(&web_cluster(&wc, &status)),
        vec![
            ("object_condition", labels(&[("type", "Ready"), ("reason", "ServersNotReady")]), 0),
            ("object_condition", labels(&[("type", "Progressing"), ("reason", "RolloutStarted")]), 1),
            ("webcluster_replicas", labels(&[("state", "desired")]), 4),
            ("webcluster_replicas", labels(&[("state", "ready")]), 3),
            ("webcluster_replicas", labels(&[("state", "updated")]), 2),
            ("webcluster_replicas", labels(&[("state", "available")]), 1),
            ("webcluster_info", labels(&[("session_store", "shop-sessions"), ("database", "")]), 1),
        ]
    );
}

#[test]
fn a_condition_neither_true_nor_false_counts_as_not_true() {
    let samples: Vec<Sample> = conditions(&[condition("Ready", "Unknown", "Pending")]).collect();
    assert_eq!(
        flat(&samples),
        vec![("object_condition", labels(&[("type", "Ready"), ("reason", "Pending")]), 0)]
    );
}

#[test]
fn well_known_condition_types_are_borrowed_others_copied() {
    assert!(matches!(condition_type_label("Ready"), Cow::Borrowed("Ready")));
    assert!(matches!(condition_type_label("DrainBlocked"), Cow::Borrowed(_)));
    assert_eq!(condition_type_label("SomethingNew"), Cow::<str>::Owned("SomethingNew".into()));
}

fn replication() -> ReplicationStatus {
    let mut status = ReplicationStatus {
        members: vec![
            MemberStatus::sample("db-0", MemberRole::Primary, true, Some(0)),
            MemberStatus::sample("db-1", MemberRole::Mirror, false, None),
            MemberStatus::sample("db-2", MemberRole::Fenced, true, Some(4096)),
        ],
        conditions: vec![
            condition("Ready", "True", "Ready"),
            condition("Degraded", "True", "MemberUnhealthy"),
        ],
        ..ReplicationStatus::default()
    };
    status.failover.failover_count = 3;
    status
}

#[test]
fn a_store_reports_members_lag_limit_failovers_and_rollout() {
    assert_eq!(
        flat(&store(&replication(), 16 << 20, None)),
        vec![
            ("object_condition", labels(&[("type", "Ready"), ("reason", "Ready")]), 1),
            ("object_condition", labels(&[("type", "Degraded"), ("reason", "MemberUnhealthy")]), 1),
            ("store_member_healthy", labels(&[("member", "db-0"), ("role", "primary")]), 1),
            ("store_member_lag_bytes", labels(&[("member", "db-0")]), 0),
            ("store_member_healthy", labels(&[("member", "db-1"), ("role", "mirror")]), 0),
            ("store_member_healthy", labels(&[("member", "db-2"), ("role", "fenced")]), 1),
            ("store_member_lag_bytes", labels(&[("member", "db-2")]), 4096),
            ("store_failover_max_lag_bytes", vec![], 16 << 20),
            ("store_failover_count", vec![], 3),
            ("store_rollout_halted", vec![], 0),
        ],
        "no lag series for a member whose lag is unknown, no backup series without backups"
    );
}

#[test]
fn a_halted_rollout_reads_one() {
    let mut status = replication();
    status.rollout = Some(RolloutStatus { revision: "abc".into(), ..RolloutStatus::default() });
    let halted = |status: &ReplicationStatus| {
        store(status, 0, None).iter().find(|s| s.metric == Metric::RolloutHalted).map(|s| s.value)
    };
    assert_eq!(halted(&status), Some(0), "a rollout under way is not halted");
    status.rollout = Some(RolloutStatus { halted_on: Some("db-1".into()), ..RolloutStatus::default() });
    assert_eq!(halted(&status), Some(1));
}

#[test]
fn a_store_with_backups_reports_the_last_success_and_failure() {
    let status = ReplicationStatus::default();
    let backup_series = |backup: &BackupStatus| -> Vec<(&'static str, i64)> {
        store(&status, 0, Some(backup))
            .iter()
            .filter(|s| matches!(s.metric, Metric::BackupLastSuccess | Metric::BackupFailing))
            .map(|s| (s.metric.name(), s.value))
            .collect()
    };
    assert_eq!(
        backup_series(&BackupStatus::default()),
        vec![("store_backup_failing", 0)],
        "no success yet: no timestamp, and nothing failed"
    );
    let finished: Time = Time("2025-01-02T03:04:05Z".parse().unwrap());
    let done = BackupStatus {
        last_backup: Some(BackupRecord {
            id: "b1".into(),
            member: "db-1".into(),
            finished: finished.clone(),
            bytes: 1,
            kept: 1,
        }),
        last_backup_failure: Some("upload refused".into()),
        ..BackupStatus::default()
    };
    assert_eq!(
        backup_series(&done),
        vec![
            ("store_backup_last_success_timestamp_seconds", finished.0.as_second()),
            ("store_backup_failing", 1)
        ]
    );
}

#[test]
fn the_collector_renders_every_object_under_the_contract_names() {
    let objects = std::sync::Arc::new(ObjectMetrics::default());
    assert_eq!(render(&objects), "# EOF\n", "no object, no family");
    objects.publish(Cow::Borrowed("DatabaseMirror"), "shop", "db", store(&replication(), 100, None));
    let wc = web("image: nginx:1.27\ndatabaseRef: {name: db}");
    objects.publish(
        Cow::Borrowed("WebCluster"),
        "shop",
        "web",
        web_cluster(&wc, &WebClusterStatus::default()),
    );
    let text = render(&objects);
    for line in [
        "# TYPE hostwright_object_condition gauge",
        r#"hostwright_object_condition{kind="DatabaseMirror",namespace="shop",name="db",type="Ready",reason="Ready"} 1"#,
        r#"hostwright_store_member_healthy{kind="DatabaseMirror",namespace="shop",name="db",member="db-1",role="mirror"} 0"#,
        r#"hostwright_store_member_lag_bytes{kind="DatabaseMirror",namespace="shop",name="db",member="db-2"} 4096"#,
        r#"hostwright_store_failover_max_lag_bytes{kind="DatabaseMirror",namespace="shop",name="db"} 100"#,
        r#"hostwright_store_failover_count{kind="DatabaseMirror",namespace="shop",name="db"} 3"#,
        r#"hostwright_store_rollout_halted{kind="DatabaseMirror",namespace="shop",name="db"} 0"#,
        r#"hostwright_webcluster_replicas{namespace="shop",name="web",state="desired"} 3"#,
        r#"hostwright_webcluster_info{namespace="shop",name="web",session_store="",database="db"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
    }
    assert_eq!(
        text.matches("# TYPE hostwright_object_condition gauge").count(),
        1,
        "one family, two objects"
    );
}

#[test]
fn publishing_replaces_the_whole_set_and_removal_drops_it() {
    let objects = std::sync::Arc::new(ObjectMetrics::default());
    objects.publish(Cow::Borrowed("SessionStore"), "shop", "cache", store(&replication(), 1, None));
    objects.publish(Cow::Borrowed("SessionStore"), "other", "cache", store(&replication(), 1, None));
    let mut fewer = replication();
    fewer.conditions.truncate(1);
    fewer.members.truncate(1);
    objects.publish(Cow::Borrowed("SessionStore"), "shop", "cache", store(&fewer, 1, None));
    let text = render(&objects);
    assert!(
        !text.contains(r#"namespace="shop",name="cache",type="Degraded""#),
        "a condition gone is gone:\n{text}"
    );
    assert!(!text.contains(r#"namespace="shop",name="cache",member="db-1""#), "a member gone is gone");
    assert!(text.contains(r#"namespace="other",name="cache",type="Degraded""#), "other objects untouched");

    objects.remove("SessionStore", "shop", "cache");
    let text = render(&objects);
    assert!(!text.contains(r#"namespace="shop""#), "{text}");
    assert!(text.contains(r#"namespace="other""#));
    objects.remove("DatabaseMirror", "other", "cache");
    assert!(
        render(&objects).contains(r#"namespace="other""#),
        "another kind of the same name is another object"
    );

    objects.clear();
    assert_eq!(render(&objects), "# EOF\n");
}

#[test]
fn a_sample_stays_small() {
    // 1000 WebClusters hold about 8 samples each: keep them a cache line.
    assert!(std::mem::size_of::<Sample>() <= 64, "{} bytes", std::mem::size_of::<Sample>());
}

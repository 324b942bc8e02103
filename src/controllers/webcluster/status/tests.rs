use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus};
use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::api::webcluster::WebClusterSpec;
use crate::resources::webcluster::{Wiring, build};

fn at(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap())
}

fn web(spec_yaml: &str) -> WebCluster {
    let spec: WebClusterSpec = serde_yaml::from_str(spec_yaml).unwrap();
    let mut wc = WebCluster::new("shop", spec);
    wc.metadata.namespace = Some("customer-a".into());
    wc.metadata.uid = Some("uid-1".into());
    wc.metadata.generation = Some(1);
    wc
}

/// The Deployment the builder makes for `wc`, as the Deployment controller
/// would report it: `(replicas, ready, updated, available)`.
fn deployment(wc: &WebCluster, pods: (i32, i32, i32, i32)) -> Deployment {
    let mut d = build(wc, &Wiring::default()).unwrap().deployment;
    d.metadata.generation = Some(1);
    d.status = Some(DeploymentStatus {
        observed_generation: Some(1),
        replicas: Some(pods.0),
        ready_replicas: Some(pods.1),
        updated_replicas: Some(pods.2),
        available_replicas: Some(pods.3),
        ..DeploymentStatus::default()
    });
    d
}

fn condition<'a>(
    s: &'a WebClusterStatus,
    t: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    conditions::find(&s.conditions, t).unwrap()
}

#[test]
fn a_new_cluster_is_pending_until_its_deployment_exists() {
    let wc = web("image: a");
    let s = compute(&wc, None, &References::default(), &at(1));
    assert_eq!(s.phase, Some(WebClusterPhase::Pending));
    assert_eq!(condition(&s, READY).status, "False");
    assert_eq!(condition(&s, PROGRESSING).reason, "Creating");
    assert_eq!(
        s.selector.as_deref(),
        Some("app.kubernetes.io/instance=shop,app.kubernetes.io/name=webcluster")
    );
}

#[test]
fn all_servers_ready_and_current_is_ready() {
    let wc = web("image: a");
    let s = compute(&wc, Some(&deployment(&wc, (3, 3, 3, 3))), &References::default(), &at(1));
    assert_eq!(s.phase, Some(WebClusterPhase::Ready));
    assert_eq!(condition(&s, READY).reason, "AllServersReady");
    assert_eq!(condition(&s, PROGRESSING).status, "False");
    assert_eq!(condition(&s, DEGRADED).status, "False");
    assert_eq!(s.image.as_deref(), Some("a"));
    assert_eq!((s.replicas, s.ready_replicas, s.updated_replicas), (3, 3, 3));
}

#[test]
fn a_rollout_is_progressing_not_degraded_and_keeps_the_old_image_until_done() {
    let mut wc = web("image: b");
    wc.status = Some(WebClusterStatus { image: Some("a".into()), ..WebClusterStatus::default() });
    // Surge: 4 pods, the old 3 still ready, 1 new one coming up.
    let s = compute(&wc, Some(&deployment(&wc, (4, 3, 1, 3))), &References::default(), &at(1));
    assert_eq!(s.phase, Some(WebClusterPhase::Progressing));
    assert_eq!(condition(&s, PROGRESSING).reason, "RollingOut");
    assert_eq!(condition(&s, DEGRADED).status, "False");
    assert_eq!(s.image.as_deref(), Some("a"));
}

#[test]
fn losing_servers_after_serving_is_degraded() {
    let mut wc = web("image: a");
    wc.status = Some(WebClusterStatus { image: Some("a".into()), ..WebClusterStatus::default() });
    let s = compute(&wc, Some(&deployment(&wc, (3, 1, 3, 1))), &References::default(), &at(1));
    assert_eq!(s.phase, Some(WebClusterPhase::Degraded));
    assert_eq!(condition(&s, DEGRADED).reason, "InsufficientReadyServers");
    assert_eq!(condition(&s, DEGRADED).message, "1/3 web servers ready");
}

#[test]
fn a_rollout_past_its_deadline_is_reported_stuck_with_old_servers_serving() {
    let mut wc = web("image: never-ready");
    wc.status = Some(WebClusterStatus { image: Some("a".into()), ..WebClusterStatus::default() });
    let mut d = deployment(&wc, (4, 3, 1, 3));
    d.status.as_mut().unwrap().conditions = Some(vec![DeploymentCondition {
        type_: "Progressing".into(),
        status: "False".into(),
        reason: Some("ProgressDeadlineExceeded".into()),
        ..DeploymentCondition::default()
    }]);
    let s = compute(&wc, Some(&d), &References::default(), &at(1));
    assert_eq!(condition(&s, DEGRADED).reason, "RolloutStuck");
    assert_eq!(condition(&s, PROGRESSING).reason, "ProgressDeadlineExceeded");
    assert_eq!(s.phase, Some(WebClusterPhase::Degraded), "old servers still serve, so not Failed");
    let events = status_events(wc.status.as_ref().unwrap(), &s);
    assert!(events.iter().any(|e| e.reason == "Degraded" && e.type_ == EventType::Warning));
}

#[test]
fn a_missing_reference_is_a_reason_not_a_crash() {
    let wc = web("image: a\nsessionStoreRef: {name: sessions}");
    let refs =
        References { session_store: Some(("sessions".into(), Reference::NotFound)), ..References::default() };
    assert!(refs.wiring().is_err());
    let s = compute(&wc, None, &refs, &at(1));
    let ready = condition(&s, READY);
    assert_eq!(ready.reason, "SessionStoreNotFound");
    assert_eq!(ready.message, "SessionStore \"sessions\" does not exist in this namespace");
    assert_eq!(s.phase, Some(WebClusterPhase::Pending));
    let events = status_events(&WebClusterStatus::default(), &s);
    assert!(events.iter().any(|e| e.reason == "ReferenceUnresolved"));
}

#[test]
fn ready_references_wire_their_secrets() {
    let refs = References {
        session_store: Some(("sessions".into(), Reference::Ready { secret: "sessions-connection".into() })),
        database: Some(("db".into(), Reference::Ready { secret: "db-credentials".into() })),
        conflict: None,
        gateway_unavailable: None,
    };
    let wiring = refs.wiring().unwrap();
    assert_eq!(wiring.session_secret.as_deref(), Some("sessions-connection"));
    assert_eq!(wiring.database_secret.as_deref(), Some("db-credentials"));
    // A child's name held by another object stops everything, with a reason.
    let clash =
        References { conflict: Some("Service shop already belongs to SessionStore shop".into()), ..refs };
    let blocked = clash.wiring().unwrap_err();
    assert_eq!(blocked.reason, "NameConflict");
    assert!(
        blocked.message.starts_with("Service shop already belongs to SessionStore shop"),
        "{}",
        blocked.message
    );
}

#[test]
fn a_resync_with_nothing_new_computes_an_equal_status() {
    let mut wc = web("image: a");
    let d = deployment(&wc, (3, 3, 3, 3));
    let first = compute(&wc, Some(&d), &References::default(), &at(1));
    wc.status = Some(first.clone());
    let second = compute(&wc, Some(&d), &References::default(), &at(500));
    assert_eq!(first, second, "equal status means no status write");
    assert!(status_events(&first, &second).is_empty());
}

#[test]
fn scaling_and_new_images_are_announced_when_applied() {
    let wc = web("image: a");
    let live = deployment(&wc, (3, 3, 3, 3));
    let desired = build(&web("image: b\nreplicas: 5"), &Wiring::default()).unwrap().deployment;
    let reasons: Vec<_> = apply_events(Some(&live), &desired).iter().map(|e| e.reason).collect();
    assert_eq!(reasons, ["Scaled", "RolloutStarted"]);
    assert_eq!(apply_events(None, &desired)[0].reason, "Created");
}

#[test]
fn paused_clusters_say_so() {
    let wc = web("image: a\npaused: true");
    let s = compute(&wc, Some(&deployment(&wc, (3, 3, 3, 3))), &References::default(), &at(1));
    assert_eq!(s.phase, Some(WebClusterPhase::Paused));
    assert_eq!(condition(&s, PROGRESSING).reason, "Paused");
}

#[test]
fn a_gateway_the_cluster_cannot_serve_is_a_reason_not_an_error_and_the_servers_still_count() {
    let wc = web("image: a\nhosts: [a.example.com]\ngateway: {parentRefs: [{name: public}]}");
    let refs = References {
        gateway_unavailable: Some("the Gateway API is not installed in this cluster".into()),
        ..References::default()
    };
    let s = compute(&wc, Some(&deployment(&wc, (3, 3, 3, 3))), &refs, &at(1));
    let ready = condition(&s, READY);
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", GATEWAY_API_UNAVAILABLE));
    assert!(ready.message.contains("not installed"), "{}", ready.message);
    assert_eq!(s.phase, Some(WebClusterPhase::Pending));
    assert_eq!(s.ready_replicas, 3, "the servers are reported as they are");
    assert_eq!(condition(&s, DEGRADED).status, "False");
    let events = status_events(&WebClusterStatus::default(), &s);
    assert!(events.iter().any(|e| e.reason == GATEWAY_API_UNAVAILABLE), "{events:?}");
    assert!(status_events(&s, &s).is_empty(), "said once, not on every resync");

    // Once the Gateway API is there, the same cluster is Ready.
    let s = compute(&wc, Some(&deployment(&wc, (3, 3, 3, 3))), &References::default(), &at(2));
    assert_eq!(condition(&s, READY).reason, "AllServersReady");
}

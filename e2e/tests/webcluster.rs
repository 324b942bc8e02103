//! The WebCluster controller on a real control plane, run as the Helm
//! chart's ServiceAccount: lifecycle, scaling, autoscaling, zero-downtime
//! rollouts, bad input, crash recovery and leader election.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hostwright::api::WebCluster;
use hostwright::api::webcluster::WebClusterPhase;
use hostwright_e2e::operator::Operator;
use hostwright_e2e::{
    EndpointWatch, TestNamespace, client, ensure_crds, eventually, kubectl, merge_web_spec, wait_deleted,
    wait_for, wait_web_ready, wait_web_reason, web_cluster,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const READY_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn create_scale_autoscale_and_delete() -> Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let ns = TestNamespace::create(&client, "lifecycle", &[]).await?;
    let _operator = Operator::start(&client, &ns.name, "solo").await?;
    let clusters = ns.api::<WebCluster>();
    clusters
        .create(
            &PostParams::default(),
            &web_cluster(
                "site",
                json!({"image": "nginxinc/nginx-unprivileged:1.27", "hosts": ["site.example.com"]}),
            )?,
        )
        .await?;
    let wc = wait_web_ready(&clusters, "site", READY_TIMEOUT).await?;
    let status = wc.status.clone().context("status")?;
    assert_eq!((status.replicas, status.ready_replicas, status.updated_replicas), (3, 3, 3));
    assert_eq!(status.phase, Some(WebClusterPhase::Ready));
    assert_eq!(status.image.as_deref(), Some("nginxinc/nginx-unprivileged:1.27"));
    assert_eq!(
        status.selector.as_deref(),
        Some("app.kubernetes.io/instance=site,app.kubernetes.io/name=webcluster")
    );

    // Children of the expected shape, owned by the WebCluster.
    let deployment = ns.api::<Deployment>().get("site").await?;
    let owner = &deployment.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("WebCluster", "site", Some(true))
    );
    let spec = deployment.spec.clone().context("deployment spec")?;
    assert_eq!(spec.replicas, Some(3));
    let rolling = spec.strategy.and_then(|s| s.rolling_update).context("rolling update")?;
    assert_eq!(
        rolling.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0))
    );
    assert_eq!(deployment.labels()["app.kubernetes.io/managed-by"], "hostwright");
    let service = ns.api::<Service>().get("site").await?;
    assert_eq!(service.spec.and_then(|s| s.ports).context("ports")?[0].port, 80);
    let pdb = ns.api::<PodDisruptionBudget>().get("site").await?;
    assert_eq!(
        pdb.spec.and_then(|s| s.max_unavailable),
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    ns.api::<Ingress>().get("site").await.context("an Ingress for the hosts")?;
    assert!(ns.api::<HorizontalPodAutoscaler>().get_opt("site").await?.is_none());

    // kubectl scale goes through the scale subresource to the Deployment.
    kubectl(&["scale", "wc/site", "--replicas=5", "-n", &ns.name])?;
    let wc = wait_web_ready(&clusters, "site", READY_TIMEOUT).await?;
    assert_eq!(wc.status.context("status")?.ready_replicas, 5);
    assert_eq!(ns.api::<Deployment>().get("site").await?.spec.and_then(|s| s.replicas), Some(5));
    let events =
        kubectl(&["get", "events", "-n", &ns.name, "--field-selector", "involvedObject.kind=WebCluster"])?;
    assert!(events.contains("Scaled") && events.contains("scaled web servers from 3 to 5"), "{events}");

    // Autoscaling adds an HPA that scales the WebCluster; removing it deletes the HPA.
    merge_web_spec(&clusters, "site", json!({"autoscaling": {"minReplicas": 3, "maxReplicas": 8}})).await?;
    let hpas = ns.api::<HorizontalPodAutoscaler>();
    let hpa =
        wait_for(&hpas, "site", READY_TIMEOUT, "the HPA", |h: Option<&HorizontalPodAutoscaler>| h.is_some())
            .await?;
    assert_eq!(hpa.spec.scale_target_ref.kind, "WebCluster");
    assert_eq!(hpa.spec.max_replicas, 8);
    merge_web_spec(&clusters, "site", json!({"autoscaling": null, "hosts": null})).await?;
    wait_deleted(&hpas, "site", READY_TIMEOUT, "the HPA").await?;
    wait_deleted(&ns.api::<Ingress>(), "site", READY_TIMEOUT, "the Ingress").await?;

    // Deleting the WebCluster garbage-collects its children.
    clusters.delete("site", &DeleteParams::foreground()).await?;
    wait_deleted(&ns.api::<Deployment>(), "site", READY_TIMEOUT, "the Deployment").await?;
    wait_deleted(&ns.api::<Service>(), "site", READY_TIMEOUT, "the Service").await?;
    wait_deleted(&ns.api::<PodDisruptionBudget>(), "site", READY_TIMEOUT, "the PDB").await?;
    Ok(())
}

#[tokio::test]
async fn a_rolling_upgrade_never_drops_ready_endpoints_below_the_desired_count() -> Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let ns = TestNamespace::create(&client, "rollout", &[]).await?;
    let _operator = Operator::start(&client, &ns.name, "solo").await?;
    let clusters = ns.api::<WebCluster>();
    clusters
        .create(&PostParams::default(), &web_cluster("site", json!({"image": "site:1", "replicas": 3}))?)
        .await?;
    wait_web_ready(&clusters, "site", READY_TIMEOUT).await?;

    let watch = EndpointWatch::start(&client, &ns.name, "site").await?;
    eventually(Duration::from_secs(30), "the watcher to see 3 ready endpoints", || async {
        Ok((watch.current() == 3).then_some(()))
    })
    .await?;
    merge_web_spec(&clusters, "site", json!({"image": "site:2"})).await?;
    let wc = wait_web_ready(&clusters, "site", READY_TIMEOUT).await?;
    let min_ready = watch.finish().await?;
    eprintln!("rolling upgrade: fewest ready endpoints seen = {min_ready} (desired 3)");
    assert!(min_ready >= 3, "ready endpoints dropped to {min_ready} during the rollout");
    assert_eq!(wc.status.context("status")?.image.as_deref(), Some("site:2"));
    let events =
        kubectl(&["get", "events", "-n", &ns.name, "--field-selector", "involvedObject.kind=WebCluster"])?;
    assert!(events.contains("RolloutStarted") && events.contains("RolloutFinished"), "{events}");
    Ok(())
}

#[tokio::test]
async fn bad_references_and_unready_images_end_in_conditions_not_crashes() -> Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let ns = TestNamespace::create(&client, "badinput", &[]).await?;
    let operator = Operator::start(&client, &ns.name, "solo").await?;
    let clusters = ns.api::<WebCluster>();

    // A reference to a SessionStore that does not exist: a reason, and no half-wired Deployment.
    clusters
        .create(
            &PostParams::default(),
            &web_cluster("orphan", json!({"image": "site:1", "sessionStoreRef": {"name": "missing"}}))?,
        )
        .await?;
    let wc = wait_web_reason(&clusters, "orphan", "Ready", "SessionStoreNotFound", READY_TIMEOUT).await?;
    let ready =
        wc.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready")).context("Ready")?;
    assert_eq!(ready.message, "SessionStore \"missing\" does not exist in this namespace");
    assert!(ns.api::<Deployment>().get_opt("orphan").await?.is_none());

    // An image that never becomes ready: the rollout is reported stuck and the old servers keep serving.
    clusters
        .create(
            &PostParams::default(),
            &web_cluster("stuck", json!({"image": "site:1", "rollout": {"progressDeadlineSeconds": 10}}))?,
        )
        .await?;
    wait_web_ready(&clusters, "stuck", READY_TIMEOUT).await?;
    merge_web_spec(&clusters, "stuck", json!({"image": "registry.invalid/hostwright/never-ready:1"})).await?;
    let wc = wait_web_reason(&clusters, "stuck", "Degraded", "RolloutStuck", READY_TIMEOUT).await?;
    let status = wc.status.context("status")?;
    assert_eq!(status.ready_replicas, 3, "the old servers keep serving");
    assert_eq!(status.image.as_deref(), Some("site:1"));
    assert_eq!(status.phase, Some(WebClusterPhase::Degraded));

    // Fixing the spec recovers.
    merge_web_spec(&clusters, "stuck", json!({"image": "site:2"})).await?;
    wait_web_ready(&clusters, "stuck", READY_TIMEOUT).await?;
    assert_eq!(
        operator.metric("hostwright_reconcile_errors_total", "")?,
        0.0,
        "bad input is not an error:\n{}",
        operator.log()
    );
    Ok(())
}

#[tokio::test]
async fn a_reconcile_with_nothing_to_change_writes_nothing() -> Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let ns = TestNamespace::create(&client, "idle", &[]).await?;
    let operator = Operator::start(&client, &ns.name, "solo").await?;
    let clusters = ns.api::<WebCluster>();
    clusters
        .create(
            &PostParams::default(),
            &web_cluster("site", json!({"image": "site:1", "hosts": ["a.example.com"]}))?,
        )
        .await?;
    wait_web_ready(&clusters, "site", READY_TIMEOUT).await?;
    // Let the last status write and its watch event settle.
    let versions = || async {
        let d = ns.api::<Deployment>().get("site").await?.resource_version();
        let s = ns.api::<Service>().get("site").await?.resource_version();
        let p = ns.api::<PodDisruptionBudget>().get("site").await?.resource_version();
        let i = ns.api::<Ingress>().get("site").await?.resource_version();
        anyhow::Ok((d, s, p, i))
    };
    let writes_before = eventually(Duration::from_secs(30), "writes to settle", || async {
        let w = operator.writes();
        let r = operator.metric("hostwright_reconciliations_total", "")?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok((operator.writes() == w && operator.metric("hostwright_reconciliations_total", "")? == r)
            .then_some(w))
    })
    .await?;
    let before = versions().await?;
    let reconciles = operator.metric("hostwright_reconciliations_total", "")?;

    // Wake the reconciler five times with changes that need nothing done.
    for i in 0..5 {
        clusters
            .patch(
                "site",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"touch": i.to_string()}}})),
            )
            .await?;
        eventually(Duration::from_secs(30), "a reconcile", || async {
            Ok((operator.metric("hostwright_reconciliations_total", "")? >= reconciles + f64::from(i + 1))
                .then_some(()))
        })
        .await?;
    }
    assert_eq!(
        operator.writes(),
        writes_before,
        "idle reconciles sent writes:\n{}",
        operator.get("/metrics")?
    );
    assert_eq!(versions().await?, before, "a child's resourceVersion moved");
    Ok(())
}

#[tokio::test]
async fn an_operator_killed_mid_reconcile_converges_on_restart_with_nothing_orphaned() -> Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let ns = TestNamespace::create(&client, "crash", &[]).await?;
    let mut first = Operator::start(&client, &ns.name, "first").await?;
    let clusters = ns.api::<WebCluster>();
    let names: Vec<String> = (0..6).map(|i| format!("site-{i}")).collect();
    for name in &names {
        clusters
            .create(
                &PostParams::default(),
                &web_cluster(name, json!({"image": "site:1", "hosts": [format!("{name}.example.com")]}))?,
            )
            .await?;
    }
    // Kill it as soon as it has started writing, in the middle of the batch.
    eventually(Duration::from_secs(60), "the first writes", || async {
        Ok((first.writes() > 0.0).then_some(()))
    })
    .await?;
    first.kill();

    let _second = Operator::start(&client, &ns.name, "second").await?;
    for name in &names {
        wait_web_ready(&clusters, name, READY_TIMEOUT).await?;
    }
    let uids: std::collections::BTreeMap<String, String> = clusters
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|wc| (wc.uid().unwrap_or_default(), wc.name_any()))
        .collect();
    let check = |kind: &str, owners: Vec<(String, Vec<OwnerReference>)>| -> Result<()> {
        ensure!(owners.len() == names.len(), "{} {kind}s for {} WebClusters", owners.len(), names.len());
        for (name, refs) in owners {
            let owner = refs
                .iter()
                .find(|r| r.controller == Some(true))
                .with_context(|| format!("{kind} {name} has no controller"))?;
            ensure!(
                uids.get(&owner.uid) == Some(&name),
                "{kind} {name} is owned by {} which is not its WebCluster",
                owner.uid
            );
        }
        Ok(())
    };
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=hostwright");
    check("Deployment", owners(&ns.api::<Deployment>(), &lp).await?)?;
    check("Service", owners(&ns.api::<Service>(), &lp).await?)?;
    check("PDB", owners(&ns.api::<PodDisruptionBudget>(), &lp).await?)?;
    check("Ingress", owners(&ns.api::<Ingress>(), &lp).await?)?;
    Ok(())
}

/// (name, ownerReferences) of every listed object.
async fn owners<K>(api: &Api<K>, lp: &ListParams) -> Result<Vec<(String, Vec<OwnerReference>)>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api.list(lp).await?.items.into_iter().map(|o| (o.name_any(), o.owner_references().to_vec())).collect())
}

#[tokio::test]
async fn only_the_leader_writes_and_killing_it_hands_over() -> Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let ns = TestNamespace::create(&client, "leader", &[]).await?;
    let a = Operator::start(&client, &ns.name, "a").await?;
    let b = Operator::start(&client, &ns.name, "b").await?;
    let (mut leader, standby) = eventually(Duration::from_secs(30), "one leader", || async {
        Ok(match (a.is_leader(), b.is_leader()) {
            (true, false) => Some(true),
            (false, true) => Some(false),
            _ => None,
        })
    })
    .await
    .map(|a_leads| if a_leads { (a, b) } else { (b, a) })?;

    let clusters = ns.api::<WebCluster>();
    clusters.create(&PostParams::default(), &web_cluster("site", json!({"image": "site:1"}))?).await?;
    wait_web_ready(&clusters, "site", READY_TIMEOUT).await?;
    assert!(leader.writes() > 0.0);
    assert_eq!(standby.writes(), 0.0, "the standby wrote:\n{}", standby.get("/metrics")?);
    assert!(!standby.is_leader());

    // A crash: no lease release; the standby takes over when the lease expires.
    leader.kill();
    eventually(Duration::from_secs(60), "the standby to take over", || async {
        Ok(standby.is_leader().then_some(()))
    })
    .await?;
    kubectl(&["scale", "wc/site", "--replicas=4", "-n", &ns.name])?;
    let wc = wait_web_ready(&clusters, "site", READY_TIMEOUT).await?;
    assert_eq!(wc.status.context("status")?.ready_replicas, 4);
    assert!(standby.writes() > 0.0, "the new leader does the work");
    Ok(())
}

#[tokio::test]
async fn sigterm_releases_the_lease_for_an_immediate_handover() -> Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let ns = TestNamespace::create(&client, "handover", &[]).await?;
    let mut first = Operator::start(&client, &ns.name, "first").await?;
    eventually(Duration::from_secs(30), "leadership", || async { Ok(first.is_leader().then_some(())) })
        .await?;
    let second = Operator::start(&client, &ns.name, "second").await?;
    first.terminate()?;
    // The lease was released on the way out, not left to expire.
    let (lease_ns, _) = hostwright_e2e::operator::chart_service_account();
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), &lease_ns);
    let lease = leases.get(&format!("hostwright-{}", ns.name)).await?;
    let holder = lease.spec.and_then(|s| s.holder_identity);
    assert_ne!(holder.as_deref(), Some("first"), "the stopped leader still holds the lease");
    eventually(Duration::from_secs(60), "the second to lead", || async {
        Ok(second.is_leader().then_some(()))
    })
    .await?;
    Ok(())
}

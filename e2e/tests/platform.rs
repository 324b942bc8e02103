//! Proof that the test bed is a working Kubernetes, not a mock: the
//! scheduler spreads pods over nodes, the controller-manager runs the
//! Deployment to Available, KWOK brings pods up, and Pod Security admission
//! refuses a pod that breaks the `restricted` profile.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use hostwright_e2e::{TestNamespace, client, eventually, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

#[tokio::test]
async fn a_spread_deployment_puts_one_ready_pod_on_each_node() -> Result<()> {
    let client = client().await?;
    let nodes: Vec<Node> = Api::<Node>::all(client.clone()).list(&ListParams::default()).await?.items;
    let ready_nodes = nodes
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count();
    assert!(ready_nodes >= 3, "the bed needs at least 3 Ready nodes, found {ready_nodes}");

    let ns = TestNamespace::create(&client, "spread", &[]).await?;
    let deployments: Api<Deployment> = ns.api();
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "spread"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "spread"}},
            "template": {
                "metadata": {"labels": {"app": "spread"}},
                "spec": {
                    "topologySpreadConstraints": [{
                        "maxSkew": 1,
                        "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "DoNotSchedule",
                        "labelSelector": {"matchLabels": {"app": "spread"}},
                    }],
                    "containers": [{"name": "web", "image": "nginx:1.27"}],
                },
            },
        },
    }))?;
    deployments.create(&PostParams::default(), &deployment).await?;
    wait_for(
        &deployments,
        "spread",
        Duration::from_secs(120),
        "Deployment Available with 3 ready",
        |d: Option<&Deployment>| {
            d.and_then(|d| d.status.as_ref()).is_some_and(|s| {
                s.ready_replicas == Some(3)
                    && s.conditions
                        .as_ref()
                        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Available" && c.status == "True"))
            })
        },
    )
    .await?;

    let pods: Api<Pod> = ns.api();
    let placed = eventually(Duration::from_secs(30), "3 running pods with IPs", || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default().labels("app=spread")).await?.items;
            let running: Vec<_> = list
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some())
                .collect();
            Ok((running.len() == 3).then(|| {
                running.iter().filter_map(|p| p.spec.as_ref()?.node_name.clone()).collect::<BTreeSet<_>>()
            }))
        }
    })
    .await?;
    assert_eq!(placed.len(), 3, "one pod on each of three distinct nodes: {placed:?}");
    Ok(())
}

#[tokio::test]
async fn restricted_pod_security_refuses_a_root_privileged_pod() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "psa", &[("pod-security.kubernetes.io/enforce", "restricted")])
        .await?;
    let pods: Api<Pod> = ns.api();

    let privileged: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "root"},
        "spec": {"containers": [{"name": "c", "image": "nginx:1.27", "securityContext": {"privileged": true}}]},
    }))?;
    let err = pods
        .create(&PostParams::default(), &privileged)
        .await
        .err()
        .context("privileged pod was admitted")?;
    let msg = err.to_string();
    assert!(msg.contains("violates PodSecurity \"restricted:latest\""), "{msg}");
    for broken in
        ["privileged", "allowPrivilegeEscalation != false", "runAsNonRoot != true", "seccompProfile"]
    {
        assert!(msg.contains(broken), "the refusal names {broken:?}: {msg}");
    }

    // A pod that meets the profile is admitted, so the refusal above is the policy, not a broken API.
    let compliant: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "compliant"},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "c", "image": "nginx:1.27",
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }))?;
    pods.create(&PostParams::default(), &compliant)
        .await
        .context("a restricted-compliant pod is admitted")?;
    Ok(())
}

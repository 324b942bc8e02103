//! The Helm chart as installed: its RBAC is exactly what the controllers use
//! (every other e2e test runs the operator with it, which proves it is
//! enough), its pods meet the restricted Pod Security profile, and the plain
//! install in manifests/install is the chart rendered.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use hostwright_e2e::operator::chart_service_account;
use hostwright_e2e::{client, kubectl};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::Api;

#[tokio::test]
async fn the_cluster_role_grants_exactly_what_the_controllers_use() -> Result<()> {
    let client = client().await?;
    let (namespace, name) = chart_service_account();
    let role = Api::<ClusterRole>::all(client).get(&name).await.context("the chart's ClusterRole")?;
    let granted: BTreeSet<String> = role
        .rules
        .unwrap_or_default()
        .iter()
        .flat_map(|rule| {
            let groups = rule.api_groups.clone().unwrap_or_default();
            let resources = rule.resources.clone().unwrap_or_default();
            let verbs = rule.verbs.clone();
            groups.into_iter().flat_map(move |g| {
                let verbs = verbs.clone();
                resources.clone().into_iter().flat_map(move |r| {
                    let g = g.clone();
                    verbs.clone().into_iter().map(move |v| format!("{g}/{r}:{v}"))
                })
            })
        })
        .collect();
    assert!(granted.iter().all(|p| !p.contains('*')), "no wildcards: {granted:?}");
    let mut expected = BTreeSet::new();
    for r in ["webclusters", "sessionstores", "databasemirrors"] {
        for v in ["get", "list", "watch"] {
            expected.insert(format!("hostwright.io/{r}:{v}"));
        }
        expected.insert(format!("hostwright.io/{r}/status:patch"));
    }
    // `get`: whether another object holds the name a child needs.
    let database = [
        ("apps", "deployments", &["get", "list", "watch", "create", "patch", "delete"][..]),
        ("autoscaling", "horizontalpodautoscalers", &["get", "list", "watch", "create", "patch", "delete"]),
        ("networking.k8s.io", "ingresses", &["get", "list", "watch", "create", "patch", "delete"]),
        ("", "services", &["get", "list", "watch", "create", "patch", "delete"]),
        ("policy", "poddisruptionbudgets", &["get", "list", "watch", "create", "patch", "delete"]),
        ("", "pods", &["get", "list", "watch", "create", "patch", "delete"]),
        ("", "persistentvolumeclaims", &["get", "list", "watch", "create", "patch", "delete"]),
        ("", "configmaps", &["get", "list", "watch", "create", "patch"]),
        ("", "serviceaccounts", &["get", "list", "watch", "create", "patch"]),
        ("", "secrets", &["get", "list", "watch", "create", "patch"]),
        ("rbac.authorization.k8s.io", "roles", &["get", "list", "watch", "create", "patch"]),
        ("rbac.authorization.k8s.io", "rolebindings", &["get", "list", "watch", "create", "patch"]),
        // `delete`: revoking the Lease of a member that stopped renewing.
        ("coordination.k8s.io", "leases", &["get", "list", "watch", "create", "patch", "update", "delete"]),
        // Cordoned nodes: a drain of the primary's node starts a switchover.
        ("", "nodes", &["list", "watch"]),
        // Whether a member volume's StorageClass allows expansion.
        ("storage.k8s.io", "storageclasses", &["get"]),
    ];
    for (g, r, verbs) in database {
        for v in verbs {
            expected.insert(format!("{g}/{r}:{v}"));
        }
    }
    expected.insert("events.k8s.io/events:create".into());
    expected.insert("events.k8s.io/events:patch".into());
    assert_eq!(granted, expected, "the ClusterRole changed: update the controllers' needs here too");

    // And the ServiceAccount cannot do what it has no business doing.
    let user = format!("system:serviceaccount:{namespace}:{name}");
    for (verb, resource) in [
        ("delete", "secrets"),
        ("update", "secrets"),
        ("delete", "namespaces"),
        ("delete", "persistentvolumes"),
        ("patch", "nodes"),
        ("delete", "nodes"),
        ("patch", "storageclasses.storage.k8s.io"),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
        ("patch", "webclusters.hostwright.io"),
        ("delete", "webclusters.hostwright.io"),
        ("create", "customresourcedefinitions.apiextensions.k8s.io"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ] {
        let out = hostwright_e2e::kubectl_raw(&["auth", "can-i", verb, resource, "--as", &user, "-A"])?;
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no", "{user} can {verb} {resource}");
    }
    Ok(())
}

#[tokio::test]
async fn the_operator_pods_meet_the_restricted_profile() -> Result<()> {
    let client = client().await?;
    let (namespace, name) = chart_service_account();
    let ns_labels = kubectl(&["get", "namespace", &namespace, "-o", "jsonpath={.metadata.labels}"])?;
    assert!(ns_labels.contains("\"pod-security.kubernetes.io/enforce\":\"restricted\""), "{ns_labels}");
    let deployment = Api::<Deployment>::namespaced(client, &namespace).get(&name).await?;
    let status = deployment.status.context("status")?;
    let spec = deployment.spec.context("spec")?;
    assert_eq!(spec.replicas, Some(2), "two replicas with leader election");
    assert_eq!(status.ready_replicas, spec.replicas, "the restricted namespace admitted the operator's pods");
    Ok(())
}

#[test]
fn the_plain_install_is_the_chart_rendered() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let versions = std::fs::read_to_string(root.join("e2e/versions.env"))?;
    let k8s = versions
        .lines()
        .find_map(|l| l.strip_prefix("KUBERNETES_VERSION="))
        .context("KUBERNETES_VERSION in versions.env")?;
    let out = std::process::Command::new("helm")
        .args(["template", "hostwright"])
        .arg(root.join("charts/hostwright"))
        .args(["--namespace", "hostwright-system", "--kube-version", k8s])
        .output()
        .context("running helm")?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rendered = String::from_utf8(out.stdout)?;
    let checked_in = std::fs::read_to_string(root.join("manifests/install/hostwright.yaml"))?;
    let body: String =
        checked_in.lines().skip_while(|l| l.starts_with('#')).map(|l| format!("{l}\n")).collect();
    assert!(body == rendered, "manifests/install/hostwright.yaml is stale: run `make manifests`");
    Ok(())
}

//! The Helm chart as installed: its RBAC is exactly what the controllers use
//! (every other e2e test runs the operator with it, which proves it is
//! enough), its pods meet the restricted Pod Security profile, the plain
//! install in manifests/install is the chart rendered, a namespaced install
//! works with no ClusterRole and is refused outside its namespace, the
//! listeners bind where the values say, and the PrometheusRule carries the
//! alerts promtool tests.

use std::collections::BTreeSet;

use std::time::Duration;

use anyhow::{Context, Result};
use hostwright::api::WebCluster;
use hostwright_e2e::operator::{Operator, chart_service_account};
use hostwright_e2e::{
    TestNamespace, client, ensure_crds, eventually, kubectl, wait_web_ready, write_service_account_kubeconfig,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use serde::Deserialize;
use serde_json::json;

/// `group/resource:verb` for every permission `rules` grant.
fn grants(rules: &[PolicyRule]) -> BTreeSet<String> {
    rules
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
        .collect()
}

fn add(set: &mut BTreeSet<String>, table: &[(&str, &str, &[&str])]) {
    for (g, r, verbs) in table {
        for v in *verbs {
            set.insert(format!("{g}/{r}:{v}"));
        }
    }
}

/// What the controllers do to namespaced objects: the cluster-wide
/// install grants it in every namespace, the namespaced one in its own.
fn namespaced_grants() -> BTreeSet<String> {
    let mut expected = BTreeSet::new();
    for r in ["webclusters", "sessionstores", "databasemirrors"] {
        for v in ["get", "list", "watch"] {
            expected.insert(format!("hostwright.io/{r}:{v}"));
        }
        expected.insert(format!("hostwright.io/{r}/status:patch"));
    }
    // `get`: whether another object holds the name a child needs. `delete`
    // only where the operator deletes (pruned optional children, replaced
    // members, revoked Leases); the rest goes with its owner.
    let applied = &["get", "list", "watch", "create", "patch"][..];
    let pruned = &["get", "list", "watch", "create", "patch", "delete"][..];
    add(
        &mut expected,
        &[
            ("apps", "deployments", applied),
            ("", "services", applied),
            ("policy", "poddisruptionbudgets", applied),
            ("autoscaling", "horizontalpodautoscalers", pruned),
            ("networking.k8s.io", "ingresses", pruned),
            ("networking.k8s.io", "networkpolicies", pruned),
            ("gateway.networking.k8s.io", "httproutes", pruned),
            // Read and applied by name, deleted when the issuer is dropped.
            ("cert-manager.io", "certificates", &["get", "create", "patch", "delete"]),
            ("", "pods", pruned),
            ("", "persistentvolumeclaims", pruned),
            ("", "configmaps", applied),
            ("", "serviceaccounts", applied),
            ("", "secrets", applied),
            ("rbac.authorization.k8s.io", "roles", applied),
            ("rbac.authorization.k8s.io", "rolebindings", applied),
            // `delete`: revoking the Lease of a member that stopped renewing;
            // `update`: granted on to the agents.
            (
                "coordination.k8s.io",
                "leases",
                &["get", "list", "watch", "create", "patch", "update", "delete"],
            ),
            ("events.k8s.io", "events", &["create", "patch"]),
        ],
    );
    expected
}

/// The reads of cluster-scoped kinds, which no Role can grant.
fn cluster_read_grants() -> BTreeSet<String> {
    let mut expected = BTreeSet::new();
    add(
        &mut expected,
        &[
            // Cordoned nodes: a drain of the primary's node starts a switchover.
            ("", "nodes", &["list", "watch"]),
            // Whether a member volume's StorageClass allows expansion.
            ("storage.k8s.io", "storageclasses", &["get"]),
        ],
    );
    expected
}

#[tokio::test]
async fn the_cluster_role_grants_exactly_what_the_controllers_use() -> Result<()> {
    let client = client().await?;
    let (namespace, name) = chart_service_account();
    let role = Api::<ClusterRole>::all(client).get(&name).await.context("the chart's ClusterRole")?;
    let granted = grants(&role.rules.unwrap_or_default());
    assert!(granted.iter().all(|p| !p.contains('*')), "no wildcards: {granted:?}");
    let expected: BTreeSet<String> = namespaced_grants().union(&cluster_read_grants()).cloned().collect();
    assert_eq!(granted, expected, "the ClusterRole changed: update the controllers' needs here too");

    // And the ServiceAccount cannot do what it has no business doing.
    let user = format!("system:serviceaccount:{namespace}:{name}");
    for (verb, resource) in [
        ("delete", "secrets"),
        ("update", "secrets"),
        ("delete", "deployments.apps"),
        ("delete", "services"),
        ("list", "certificates.cert-manager.io"),
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

/// `helm template` of the chart with `args`, as JSON objects.
fn render(args: &[&str]) -> Result<Vec<serde_json::Value>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let versions = std::fs::read_to_string(root.join("e2e/versions.env"))?;
    let k8s = versions
        .lines()
        .find_map(|l| l.strip_prefix("KUBERNETES_VERSION="))
        .context("KUBERNETES_VERSION in versions.env")?;
    let out = std::process::Command::new("helm")
        .args(["template", "hw"])
        .arg(root.join("charts/hostwright"))
        .args(["--kube-version", k8s])
        .args(args)
        .output()
        .context("running helm")?;
    anyhow::ensure!(out.status.success(), "helm template {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout)?;
    let mut objects = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_json::Value::deserialize(doc)?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

fn of_kind<'a>(
    objects: &'a [serde_json::Value],
    kind: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> {
    objects.iter().filter(move |o| o["kind"] == kind)
}

/// The PrometheusRule carries the groups of files/alerts.yaml as they are
/// (the file `make alerts` checks and unit-tests is the one Prometheus
/// gets), only when asked; and every alert has a severity, a summary, a
/// description and a runbook section that exists in docs/alerts.md.
#[test]
fn the_prometheus_rule_carries_the_tested_alerts() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    assert!(of_kind(&render(&[])?, "PrometheusRule").next().is_none(), "no PrometheusRule by default");
    let objects =
        render(&["--set", "prometheusRule.enabled=true", "--set", "prometheusRule.labels.release=kps"])?;
    let rule = of_kind(&objects, "PrometheusRule").next().context("a PrometheusRule")?;
    assert_eq!(rule["metadata"]["labels"]["release"], "kps", "prometheusRule.labels");
    let file: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root.join("charts/hostwright/files/alerts.yaml"))?)?;
    assert_eq!(rule["spec"]["groups"], file["groups"], "the rendered groups are the file's");

    let runbook = std::fs::read_to_string(root.join("docs/alerts.md"))?;
    let sections: BTreeSet<String> =
        runbook.lines().filter_map(|l| l.strip_prefix("## ")).map(str::to_lowercase).collect();
    let rules = file["groups"].as_array().into_iter().flatten().flat_map(|g| g["rules"].as_array()).flatten();
    let mut alerts = 0;
    for alert in rules.filter(|r| r.get("alert").is_some()) {
        alerts += 1;
        let name = alert["alert"].as_str().unwrap_or_default();
        let severity = alert["labels"]["severity"].as_str();
        assert!(matches!(severity, Some("warning" | "critical")), "{name}: severity {severity:?}");
        for annotation in ["summary", "description"] {
            assert!(alert["annotations"][annotation].is_string(), "{name}: no {annotation}");
        }
        let section =
            alert["annotations"]["runbook"].as_str().and_then(|r| r.strip_prefix("docs/alerts.md#"));
        assert_eq!(section, Some(name.to_lowercase().as_str()), "{name}: runbook");
        assert!(sections.contains(&name.to_lowercase()), "{name}: no section in docs/alerts.md");
    }
    assert!(alerts > 0, "no alert in files/alerts.yaml");
    Ok(())
}

/// The namespaced install renders the same grants as the cluster-wide one,
/// as a Role in the watched namespace; the only ClusterRole left is the
/// read-only one of the cluster-scoped reads, and clusterReads=false
/// leaves no cluster-wide grant at all.
#[test]
fn a_namespaced_render_grants_the_same_in_one_namespace() -> Result<()> {
    let objects =
        render(&["--namespace", "ops", "--set", "scope=namespace", "--set", "watchNamespace=sites"])?;
    let roles: Vec<Role> =
        of_kind(&objects, "Role").map(|o| serde_json::from_value(o.clone())).collect::<Result<_, _>>()?;
    let controllers = roles
        .iter()
        .find(|r| r.metadata.namespace.as_deref() == Some("sites"))
        .context("a Role in the watched namespace")?;
    assert_eq!(grants(controllers.rules.as_deref().unwrap_or_default()), namespaced_grants());
    let lease =
        roles.iter().find(|r| r.metadata.namespace.as_deref() == Some("ops")).context("the lease Role")?;
    assert_eq!(
        grants(lease.rules.as_deref().unwrap_or_default()),
        [
            "coordination.k8s.io/leases:create",
            "coordination.k8s.io/leases:get",
            "coordination.k8s.io/leases:patch"
        ]
        .into_iter()
        .map(String::from)
        .collect()
    );
    let cluster_roles: Vec<ClusterRole> = of_kind(&objects, "ClusterRole")
        .map(|o| serde_json::from_value(o.clone()))
        .collect::<Result<_, _>>()?;
    assert_eq!(cluster_roles.len(), 1, "only the cluster reads stay cluster-wide");
    assert_eq!(grants(cluster_roles[0].rules.as_deref().unwrap_or_default()), cluster_read_grants());
    let deployment = of_kind(&objects, "Deployment").next().context("the Deployment")?;
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--namespace=sites") && args.contains("--cluster-reads=true"), "{args}");

    let bare = render(&["--namespace", "ops", "--set", "scope=namespace", "--set", "clusterReads=false"])?;
    assert_eq!(of_kind(&bare, "ClusterRole").count(), 0);
    assert_eq!(of_kind(&bare, "ClusterRoleBinding").count(), 0);
    let deployment = of_kind(&bare, "Deployment").next().context("the Deployment")?;
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--namespace=ops") && args.contains("--cluster-reads=false"), "{args}");
    Ok(())
}

/// metrics.bindAddress and health.port reach the operator's flags, and the
/// probes, the Service and the ServiceMonitor follow the chosen ports.
#[test]
fn the_listeners_bind_where_the_values_say() -> Result<()> {
    let container = |objects: &[serde_json::Value]| -> Result<serde_json::Value> {
        let deployment = of_kind(objects, "Deployment").next().context("the Deployment")?;
        Ok(deployment["spec"]["template"]["spec"]["containers"][0].clone())
    };
    let default = container(&render(&[])?)?;
    assert!(default["args"].to_string().contains("\"--metrics-addr=0.0.0.0:8080\""), "today's default");
    assert!(!default["args"].to_string().contains("--health-addr"));
    assert_eq!(default["livenessProbe"]["httpGet"]["port"], "http-metrics");

    let split = render(&[
        "--set",
        "metrics.bindAddress=127.0.0.1",
        "--set",
        "metrics.port=9100",
        "--set",
        "health.port=9101",
    ])?;
    let c = container(&split)?;
    let args = c["args"].to_string();
    assert!(
        args.contains("\"--metrics-addr=127.0.0.1:9100\"") && args.contains("\"--health-addr=0.0.0.0:9101\"")
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http-health");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http-health");
    let ports: Vec<(String, i64)> = c["ports"]
        .as_array()
        .context("ports")?
        .iter()
        .map(|p| {
            (p["name"].as_str().unwrap_or_default().to_string(), p["containerPort"].as_i64().unwrap_or(0))
        })
        .collect();
    assert_eq!(ports, [("http-metrics".to_string(), 9100), ("http-health".to_string(), 9101)]);

    let monitored = render(&["--set", "metrics.port=9200", "--set", "serviceMonitor.enabled=true"])?;
    let service = of_kind(&monitored, "Service").next().context("the metrics Service")?;
    assert_eq!(service["spec"]["ports"][0]["port"], 9200);
    let monitor = of_kind(&monitored, "ServiceMonitor").next().context("the ServiceMonitor")?;
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http-metrics");
    let ipv6 = container(&render(&["--set", "metrics.bindAddress=::"])?)?;
    assert!(ipv6["args"].to_string().contains("\"--metrics-addr=[::]:8080\""));

    // Probes cannot reach a loopback listener: refused with a reason.
    assert!(render(&["--set", "metrics.bindAddress=127.0.0.1"]).is_err());
    Ok(())
}

/// A Helm release of the chart, uninstalled when dropped.
struct Release {
    name: String,
    namespace: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = std::process::Command::new("helm")
            .args(["uninstall", &self.name, "--namespace", &self.namespace])
            .output();
    }
}

/// The chart installed with scope=namespace and clusterReads=false holds
/// no cluster-wide grant at all. The operator, run as its Deployment says
/// with its ServiceAccount's token, reconciles a WebCluster in its
/// namespace; in another namespace the API server refuses it everything,
/// and an operator pointed there never gets its caches.
#[tokio::test]
async fn a_namespaced_install_reconciles_its_namespace_and_is_refused_elsewhere() -> Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let ns = TestNamespace::create(&client, "nsinstall", &[]).await?;
    let other = TestNamespace::create(&client, "nsother", &[]).await?;
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/hostwright");
    let release = Release { name: format!("{}-op", ns.name), namespace: ns.name.clone() };
    // The chart's own pods are kept off every node (the operator runs here,
    // below, as they would); CRDs are already installed.
    let out = std::process::Command::new("helm")
        .args(["install", &release.name, chart, "--namespace", &ns.name, "--skip-crds"])
        .args(["--set", "scope=namespace", "--set", "clusterReads=false", "--set", "replicaCount=1"])
        .args(["--set-json", r#"nodeSelector={"hostwright.io/e2e-nowhere":"true"}"#])
        .output()
        .context("running helm (is it on PATH?)")?;
    anyhow::ensure!(out.status.success(), "helm install: {}", String::from_utf8_lossy(&out.stderr));

    // No ClusterRole nor ClusterRoleBinding belongs to the release.
    let selector = ListParams::default().labels(&format!("app.kubernetes.io/instance={}", release.name));
    assert!(Api::<ClusterRole>::all(client.clone()).list(&selector).await?.items.is_empty());
    assert!(Api::<ClusterRoleBinding>::all(client.clone()).list(&selector).await?.items.is_empty());

    // The operator's flags as the chart renders them.
    let account = format!("{}-hostwright", release.name);
    let deployment = Api::<Deployment>::namespaced(client.clone(), &ns.name).get(&account).await?;
    let rendered: Vec<String> = deployment
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().next())
        .and_then(|c| c.args)
        .context("the operator container's args")?;
    let args: Vec<String> = rendered
        .iter()
        .map(|a| a.replace("$(POD_NAMESPACE)", &ns.name).replace("$(POD_NAME)", "local-operator"))
        .collect();
    assert!(args.contains(&format!("--namespace={}", ns.name)), "{args:?}");
    assert!(args.contains(&"--cluster-reads=false".to_string()), "{args:?}");
    let dir = std::env::temp_dir().join("hostwright-e2e").join(format!("sa-{}", ns.name));
    let kubeconfig = write_service_account_kubeconfig(&client, &ns.name, &account, &dir).await?;
    let operator = Operator::start_with_args(&kubeconfig, &args, &format!("{}-namespaced", ns.name)).await?;

    // It reconciles a site in its namespace.
    let sites: Api<WebCluster> = ns.api();
    let site: WebCluster = serde_json::from_value(json!({
        "apiVersion": "hostwright.io/v1alpha1", "kind": "WebCluster", "metadata": {"name": "site"},
        "spec": {"image": "nginx:1.27", "replicas": 2, "hosts": ["site.example.com"]},
    }))?;
    sites.create(&PostParams::default(), &site).await?;
    wait_web_ready(&sites, "site", Duration::from_secs(120))
        .await
        .with_context(|| format!("operator log:\n{}", operator.log()))?;

    // Elsewhere its ServiceAccount may do nothing, nor anything cluster-wide.
    let user = format!("system:serviceaccount:{}:{account}", ns.name);
    for (verb, resource) in [
        ("list", "webclusters.hostwright.io"),
        ("patch", "webclusters.hostwright.io/status"),
        ("create", "deployments.apps"),
        ("get", "secrets"),
        ("list", "pods"),
        ("create", "roles.rbac.authorization.k8s.io"),
        ("create", "events.events.k8s.io"),
    ] {
        let out = hostwright_e2e::kubectl_raw(&[
            "auth",
            "can-i",
            verb,
            resource,
            "--as",
            &user,
            "-n",
            &other.name,
        ])?;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "no",
            "{user} can {verb} {resource} in {}",
            other.name
        );
    }
    for (verb, resource) in [("list", "nodes"), ("get", "storageclasses.storage.k8s.io"), ("list", "secrets")]
    {
        let out = hostwright_e2e::kubectl_raw(&["auth", "can-i", verb, resource, "--as", &user, "-A"])?;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "no",
            "{user} can {verb} {resource} cluster-wide"
        );
    }
    // With its own token, too: the API server says Forbidden.
    let as_operator = Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig)?,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?,
    )?;
    let refused =
        Api::<WebCluster>::namespaced(as_operator.clone(), &other.name).list(&ListParams::default()).await;
    assert!(matches!(refused, Err(kube::Error::Api(ref e)) if e.code == 403), "{refused:?}");
    let refused = Api::<Secret>::all(as_operator).list(&ListParams::default()).await;
    assert!(matches!(refused, Err(kube::Error::Api(ref e)) if e.code == 403), "{refused:?}");

    // An operator with the same identity pointed at the other namespace is
    // refused its watches: it never turns ready, and reconciles nothing there.
    let mut elsewhere: Vec<String> = args
        .iter()
        .filter(|a| !a.starts_with("--namespace") && !a.starts_with("--leader-elect"))
        .cloned()
        .collect();
    elsewhere.push(format!("--namespace={}", other.name));
    elsewhere.push("--leader-elect=false".into());
    let stranger =
        Operator::start_with_args(&kubeconfig, &elsewhere, &format!("{}-elsewhere", other.name)).await?;
    let theirs: Api<WebCluster> = other.api();
    theirs.create(&PostParams::default(), &site).await?;
    eventually(Duration::from_secs(60), "the other namespace's watches refused", || async {
        Ok(stranger.log().contains("forbidden").then_some(()))
    })
    .await?;
    assert!(stranger.get("/readyz").is_err(), "ready without its caches");
    let live = theirs.get("site").await?;
    assert!(live.status.is_none(), "a WebCluster in {} was reconciled: {:?}", other.name, live.status);
    let deployments: Api<Deployment> = other.api();
    assert!(deployments.get_opt("site").await?.is_none());
    Ok(())
}

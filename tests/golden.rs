//! Golden files of the rendered children. A change to a pod template rolls
//! every customer's site, so it must show up as a reviewed diff here.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test --test golden`.

use std::path::Path;

use hostwright::api::WebCluster;
use hostwright::api::webcluster::WebClusterSpec;
use hostwright::resources::webcluster::{WebClusterChildren, Wiring, build};

fn render(children: &WebClusterChildren) -> String {
    let WebClusterChildren {
        deployment,
        service,
        pod_disruption_budget,
        autoscaler,
        ingress,
        http_route,
        network_policy,
    } = children;
    let mut docs = vec![
        serde_yaml::to_string(deployment).unwrap(),
        serde_yaml::to_string(service).unwrap(),
        serde_yaml::to_string(pod_disruption_budget).unwrap(),
    ];
    docs.extend(autoscaler.iter().map(|a| serde_yaml::to_string(a).unwrap()));
    docs.extend(ingress.iter().map(|i| serde_yaml::to_string(i).unwrap()));
    docs.extend(http_route.iter().map(|r| serde_yaml::to_string(r).unwrap()));
    docs.extend(network_policy.iter().map(|n| serde_yaml::to_string(n).unwrap()));
    docs.iter().map(|d| format!("---\n{d}")).collect()
}

fn check(name: &str, spec_yaml: &str, wiring: Wiring) {
    let spec: WebClusterSpec = serde_yaml::from_str(spec_yaml).unwrap();
    let mut wc = WebCluster::new("shop", spec);
    wc.metadata.namespace = Some("customer-a".into());
    wc.metadata.uid = Some("5f1c2d9e-0000-4000-8000-000000000001".into());
    let got = render(&build(&wc, &wiring).unwrap());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{name}.yaml"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        got == want,
        "{name}: rendered children differ from {}; review the change and run UPDATE_GOLDEN=1 cargo test --test golden\n{}",
        path.display(),
        pretty_assertions::StrComparison::new(&want, &got)
    );
}

#[test]
fn production_web_cluster() {
    check("webcluster-production", "image: nginxinc/nginx-unprivileged:1.27\n", Wiring::default());
}

#[test]
fn staging_web_cluster_with_stores_hosts_and_autoscaling() {
    check(
        "webcluster-staging-full",
        "image: site:2.1\ntier: staging\nreplicas: 2\ntolerate: 1\nhosts: [staging.shop.example.com]\n\
         autoscaling: {minReplicas: 2, maxReplicas: 4}\nprobes: {readiness: {path: /healthz}}\n\
         rollout: {drainSeconds: 30, minReadySeconds: 10}\nenv: [{name: APP_ENV, value: staging}]\n",
        Wiring {
            session_secret: Some("shop-sessions-connection".into()),
            database_secret: Some("shop-db-credentials".into()),
        },
    );
}

#[test]
fn production_web_cluster_with_https_issued_by_cert_manager_and_a_network_policy() {
    check(
        "webcluster-https-network-policy",
        "image: site:3\nhosts: [shop.example.com, www.shop.example.com]\n\
         tls: {clusterIssuer: letsencrypt-prod}\ningress: {className: nginx}\n\
         networkPolicy: {allowFrom: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ingress-nginx}}}]}\n",
        Wiring {
            session_secret: Some("shop-sessions-connection".into()),
            database_secret: Some("shop-db-credentials".into()),
        },
    );
}

#[test]
fn production_web_cluster_routed_by_a_gateway() {
    check(
        "webcluster-gateway",
        "image: site:3\nhosts: [shop.example.com]\n\
         gateway: {parentRefs: [{name: public, namespace: gateway-system, sectionName: https}]}\n",
        Wiring::default(),
    );
}

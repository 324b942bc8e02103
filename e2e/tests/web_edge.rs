//! The web edge of a WebCluster on a real API server: HTTPS on the Ingress
//! (TLS for every host, cert-manager's issuer annotation, the IngressClass),
//! a NetworkPolicy of its own, and a Gateway API HTTPRoute instead of the
//! Ingress, with and without the Gateway API installed.
//!
//! The Gateway API test installs and removes the Gateway API's CRDs, which
//! are cluster-wide: it is the only test that uses them.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use hostwright::api::WebCluster;
use hostwright_e2e::operator::Operator;
use hostwright_e2e::{
    TestNamespace, client, ensure_crds, kubectl, merge_web_spec, wait_deleted, wait_for, wait_web_ready,
    wait_web_reason, web_cluster,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::core::{ApiResource, DynamicObject};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(120);
/// The operator notices the Gateway API within its watch's longest retry
/// delay (30 s) of the CRDs being installed.
const GATEWAY_API_NOTICED: Duration = Duration::from_secs(150);

#[tokio::test]
async fn the_ingress_serves_every_host_over_https_and_a_network_policy_admits_only_the_listed_peers()
-> Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let ns = TestNamespace::create(&client, "https", &[]).await?;
    let _operator = Operator::start(&client, &ns.name, "solo").await?;
    let clusters = ns.api::<WebCluster>();
    clusters
        .create(
            &PostParams::default(),
            &web_cluster(
                "site",
                json!({
                    "image": "site:1", "port": 8080,
                    "hosts": ["site.example.com", "www.site.example.com"],
                    "tls": {"clusterIssuer": "letsencrypt-prod"},
                    "ingress": {"className": "nginx"},
                    "networkPolicy": {"allowFrom": [
                        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}},
                    ]},
                }),
            )?,
        )
        .await?;
    wait_web_ready(&clusters, "site", TIMEOUT).await?;

    let ingresses = ns.api::<Ingress>();
    let ingress = ingresses.get("site").await?;
    let annotations = ingress.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get("cert-manager.io/cluster-issuer").map(String::as_str),
        Some("letsencrypt-prod")
    );
    let spec = ingress.spec.context("ingress spec")?;
    assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
    let tls = spec.tls.context("tls")?;
    assert_eq!(tls.len(), 1);
    assert_eq!(tls[0].secret_name.as_deref(), Some("site-tls"));
    assert_eq!(
        tls[0].hosts.as_deref(),
        Some(&["site.example.com".to_string(), "www.site.example.com".to_string()][..])
    );

    let policy = ns.api::<NetworkPolicy>().get("site").await?.spec.context("policy spec")?;
    assert_eq!(policy.policy_types.as_deref(), Some(&["Ingress".to_string()][..]));
    let rules = policy.ingress.context("ingress rules")?;
    assert_eq!(rules.len(), 1);
    let from = rules[0].from.clone().context("from")?;
    assert_eq!(from.len(), 1, "only the listed peer");
    let port = rules[0].ports.clone().context("ports")?[0].port.clone();
    assert_eq!(port, Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8080)));

    // A namespace-scoped issuer instead: the annotation follows, the other goes.
    merge_web_spec(
        &clusters,
        "site",
        json!({"tls": {"clusterIssuer": null, "issuer": "site-ca", "secretName": "site-cert"}}),
    )
    .await?;
    wait_for(&ingresses, "site", TIMEOUT, "the Issuer annotation", |i: Option<&Ingress>| {
        i.is_some_and(|i| {
            let a = i.metadata.annotations.clone().unwrap_or_default();
            let secret = i.spec.as_ref().and_then(|s| s.tls.as_ref()).and_then(|t| t[0].secret_name.clone());
            a.get("cert-manager.io/issuer").map(String::as_str) == Some("site-ca")
                && !a.contains_key("cert-manager.io/cluster-issuer")
                && secret.as_deref() == Some("site-cert")
        })
    })
    .await?;

    // Without tls, the class or the policy, the Ingress is plain again and the policy gone.
    merge_web_spec(&clusters, "site", json!({"tls": null, "ingress": null, "networkPolicy": null})).await?;
    wait_for(&ingresses, "site", TIMEOUT, "a plain Ingress", |i: Option<&Ingress>| {
        i.is_some_and(|i| {
            let spec = i.spec.clone().unwrap_or_default();
            let annotations = i.metadata.annotations.clone().unwrap_or_default();
            spec.tls.is_none()
                && spec.ingress_class_name.is_none()
                && !annotations.keys().any(|k| k.starts_with("cert-manager.io/"))
        })
    })
    .await?;
    wait_deleted(&ns.api::<NetworkPolicy>(), "site", TIMEOUT, "the NetworkPolicy").await?;
    wait_web_ready(&clusters, "site", TIMEOUT).await?;
    Ok(())
}

/// The Gateway API's standard CRDs, from the cache outside the repository
/// (`e2e/cluster gateway-api-crds` fetches them once per pinned version).
fn gateway_api_crds() -> Result<String> {
    let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/cluster"))
        .arg("gateway-api-crds")
        .output()
        .context("running e2e/cluster gateway-api-crds")?;
    if !out.status.success() {
        bail!("e2e/cluster gateway-api-crds: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// Removes the Gateway API's CRDs when dropped (also when the test fails),
/// leaving the cluster as the other tests expect it.
struct GatewayApiInstalled {
    dir: String,
}

impl GatewayApiInstalled {
    async fn install(client: &kube::Client, dir: String) -> Result<Self> {
        kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &dir])?;
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        wait_for(
            &crds,
            "httproutes.gateway.networking.k8s.io",
            Duration::from_secs(60),
            "the HTTPRoute CRD Established",
            |c: Option<&CustomResourceDefinition>| {
                c.and_then(|c| c.status.as_ref())
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"))
            },
        )
        .await?;
        Ok(Self { dir })
    }
}

impl Drop for GatewayApiInstalled {
    fn drop(&mut self) {
        let _ = kubectl(&["delete", "--ignore-not-found", "--wait=false", "-f", &self.dir]);
    }
}

#[tokio::test]
async fn an_http_route_replaces_the_ingress_once_the_gateway_api_is_installed_and_follows_the_spec()
-> Result<()> {
    let client = client().await?;
    ensure_crds(&client).await?;
    let dir = gateway_api_crds()?;
    // Start without the Gateway API, whatever an earlier run left.
    kubectl(&["delete", "--ignore-not-found", "--wait=true", "-f", &dir])?;
    let ns = TestNamespace::create(&client, "gateway", &[]).await?;
    let operator = Operator::start(&client, &ns.name, "solo").await?;
    let clusters = ns.api::<WebCluster>();
    let gateway =
        json!({"parentRefs": [{"name": "public", "namespace": "gateway-system", "sectionName": "https"}]});
    clusters
        .create(
            &PostParams::default(),
            &web_cluster(
                "site",
                json!({"image": "site:1", "hosts": ["site.example.com"], "gateway": gateway}),
            )?,
        )
        .await?;

    // No Gateway API: a reason on Ready, while the servers run and nothing else is held up.
    let wc = wait_web_reason(&clusters, "site", "Ready", "GatewayAPIUnavailable", TIMEOUT).await?;
    let ready =
        wc.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready")).context("Ready")?;
    assert!(ready.message.contains("the Gateway API is not installed"), "{}", ready.message);
    ns.api::<Deployment>().get("site").await.context("the Deployment is applied all the same")?;
    assert!(ns.api::<Ingress>().get_opt("site").await?.is_none(), "no Ingress for a gateway-routed site");
    let events =
        kubectl(&["get", "events", "-n", &ns.name, "--field-selector", "involvedObject.kind=WebCluster"])?;
    assert!(events.contains("GatewayAPIUnavailable"), "{events}");
    assert_eq!(
        operator.metric("hostwright_reconcile_errors_total", "")?,
        0.0,
        "a missing Gateway API is not an error loop:\n{}",
        operator.log()
    );

    // The Gateway API arrives: the HTTPRoute appears and the site turns Ready.
    let _installed = GatewayApiInstalled::install(&client, dir).await?;
    let routes: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
            "gateway.networking.k8s.io",
            "v1",
            "HTTPRoute",
        )),
    );
    let route =
        wait_for(&routes, "site", GATEWAY_API_NOTICED, "the HTTPRoute", |r: Option<&DynamicObject>| {
            r.is_some()
        })
        .await?;
    let spec = &route.data["spec"];
    assert_eq!(spec["hostnames"], json!(["site.example.com"]));
    assert_eq!(spec["parentRefs"][0]["name"], "public");
    assert_eq!(spec["parentRefs"][0]["sectionName"], "https");
    assert_eq!(spec["rules"][0]["backendRefs"][0]["name"], "site");
    assert_eq!(spec["rules"][0]["backendRefs"][0]["port"], 80);
    let owner = &route.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!((owner.kind.as_str(), owner.controller), ("WebCluster", Some(true)));
    wait_web_ready(&clusters, "site", TIMEOUT).await?;

    // The route follows the spec: another host, another listener.
    merge_web_spec(
        &clusters,
        "site",
        json!({"hosts": ["site.example.com", "shop.example.com"],
               "gateway": {"parentRefs": [{"name": "public", "namespace": "gateway-system"}]}}),
    )
    .await?;
    wait_for(&routes, "site", TIMEOUT, "the HTTPRoute to follow", |r: Option<&DynamicObject>| {
        r.is_some_and(|r| {
            let spec = &r.data["spec"];
            spec["hostnames"] == json!(["site.example.com", "shop.example.com"])
                && spec["parentRefs"][0].get("sectionName").is_none()
        })
    })
    .await?;

    // Back to an Ingress: the route is pruned.
    merge_web_spec(&clusters, "site", json!({"gateway": null})).await?;
    wait_deleted(&routes, "site", TIMEOUT, "the HTTPRoute").await?;
    wait_for(&ns.api::<Ingress>(), "site", TIMEOUT, "the Ingress", |i: Option<&Ingress>| i.is_some()).await?;
    wait_web_ready(&clusters, "site", TIMEOUT).await?;
    Ok(())
}

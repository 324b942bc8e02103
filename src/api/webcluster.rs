//! `WebCluster`: one hosted site cluster's load-balanced, highly available web tier.

use k8s_openapi::api::core::v1::EnvVar;
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, LocalObjectReference, Resources};
use super::names::{max_name_length, name_rule};

/// Every child of a WebCluster (Deployment, Service, PodDisruptionBudget,
/// HorizontalPodAutoscaler, Ingress or HTTPRoute, NetworkPolicy) takes its
/// name unchanged; the
/// ReplicaSets and pods the Deployment makes are named by Kubernetes, which
/// shortens them to fit.
pub const LONGEST_CHILD_SUFFIX: &str = "";
/// Longest WebCluster name (63): the Service `<name>` must be a DNS label.
pub const MAX_NAME_LENGTH: usize = max_name_length(LONGEST_CHILD_SUFFIX);

/// A load-balanced web server cluster for hosted sites. It becomes a Deployment
/// spread across nodes, a Service, a PodDisruptionBudget, and optionally a
/// HorizontalPodAutoscaler, an Ingress or a Gateway API HTTPRoute, and a
/// NetworkPolicy. Rolling upgrades never drop ready
/// capacity below the desired replica count.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "hostwright.io",
    version = "v1alpha1",
    kind = "WebCluster",
    plural = "webclusters",
    shortname = "wc",
    category = "hostwright",
    namespaced,
    doc = "A hosted site cluster's load-balanced, highly available web tier.",
    status = "WebClusterStatus",
    derive = "PartialEq",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Desired web servers"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Web servers passing readiness"
    ),
    printcolumn(
        name = "Up-To-Date",
        type_ = "integer",
        json_path = ".status.updatedReplicas",
        description = "Web servers running the current template"
    ),
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.image"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Tier", type_ = "string", json_path = ".spec.tier", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = name_rule("WebCluster", MAX_NAME_LENGTH, "the Service <name>")
)]
#[x_kube(
    validation = Rule::new("!has(self.tolerate) || self.tolerate < self.replicas")
        .message("tolerate must be less than replicas: at least one web server has to survive")
        .field_path(".tolerate"),
    validation = Rule::new("!has(self.tolerate) || !has(self.autoscaling) || self.tolerate < self.autoscaling.minReplicas")
        .message("tolerate must be less than autoscaling.minReplicas: at least one web server has to survive")
        .field_path(".tolerate"),
    validation = Rule::new("!has(self.tls) || (has(self.hosts) && size(self.hosts) > 0)")
        .message("tls needs hosts: the certificate is for the host names in hosts (set hosts, or remove tls)")
        .field_path(".tls"),
    validation = Rule::new("!has(self.ingress) || (has(self.hosts) && size(self.hosts) > 0)")
        .message("ingress needs hosts: the Ingress routes the host names in hosts (set hosts, or remove ingress)")
        .field_path(".ingress"),
    validation = Rule::new("!has(self.gateway) || (has(self.hosts) && size(self.hosts) > 0)")
        .message("gateway needs hosts: the HTTPRoute routes the host names in hosts (set hosts, or remove gateway)")
        .field_path(".gateway"),
    validation = Rule::new("!has(self.ingress) || !has(self.gateway)")
        .message("set ingress or gateway, not both: the hosts are routed either by an Ingress or by a Gateway API HTTPRoute")
        .field_path(".gateway"),
    validation = Rule::new("!has(self.gateway) || !has(self.tls)")
        .message(
            "tls applies to the Ingress: with gateway, HTTPS is terminated by the Gateway's listener \
             (its certificateRefs); remove tls"
        )
        .field_path(".tls"),
    validation = Rule::new("!has(self.gateway) || !has(self.hosts) || size(self.hosts) <= 16")
        .message("with gateway, hosts takes at most 16 names: an HTTPRoute has at most 16 hostnames")
        .field_path(".hosts")
)]
#[serde(rename_all = "camelCase")]
pub struct WebClusterSpec {
    /// Container image of the web server, e.g. `registry.example.com/site:1.4.2`.
    /// Changing it rolls the servers one surge at a time with no loss of ready capacity.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new("!self.contains(' ')").message("image must not contain spaces"))]
    pub image: String,

    /// Desired number of web servers. Written by `kubectl scale` and, when
    /// `autoscaling` is set, by the HorizontalPodAutoscaler through the scale subresource.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: i32,

    /// Let a HorizontalPodAutoscaler move `replicas` between min and max on CPU load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,

    /// Host names routed to this cluster: by an Ingress, or by a Gateway API
    /// HTTPRoute when `gateway` is set. Nothing is routed when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub hosts: Vec<String>,

    /// HTTPS on the Ingress for every host in `hosts`, with the certificate in
    /// a Secret that cert-manager can fill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<WebTls>,

    /// How the Ingress is served (its IngressClass). The hosts are routed by
    /// an Ingress unless `gateway` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressRouting>,

    /// Route the hosts through a Gateway API Gateway (an HTTPRoute) instead
    /// of an Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayRouting>,

    /// Accept traffic on the web servers' port only from these peers (a
    /// NetworkPolicy). Unset: no policy, every pod may connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<WebNetworkPolicy>,

    /// TCP port the web server listens on inside the pod.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// HTTP health checks. Sensible defaults (GET `/` on `port`) apply when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<Probes>,

    /// CPU and memory of each web server. Staging defaults are smaller than production's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,

    /// Extra environment variables for the web server container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub env: Vec<EnvVar>,

    /// Node failures the cluster must survive while still serving. Pods are
    /// spread so that losing this many nodes leaves at least one server, and
    /// node drains never go below `replicas - tolerate` ready servers.
    /// Defaults to `replicas - 1` (survive all but one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub tolerate: Option<i32>,

    /// SessionStore (same namespace) whose connection details reach the pods
    /// as `SESSION_STORE_URL`. The cluster is Ready only when it is Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_store_ref: Option<LocalObjectReference>,

    /// DatabaseMirror (same namespace) whose connection details reach the pods
    /// as `DATABASE_URL` (read-write) and `DATABASE_RO_URL` (mirrors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_ref: Option<LocalObjectReference>,

    /// `production` or `staging`. Staging keeps the production shape (spread,
    /// probes, disruption budget) at a smaller size.
    #[serde(default)]
    pub tier: Tier,

    /// Stop changing the children (Deployment, Service, ...) without deleting them.
    #[serde(default)]
    pub paused: bool,

    /// Pace and safety margins of rolling upgrades.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
}

/// How a new image or setting rolls out. Surge first, never below the desired
/// number of ready servers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Seconds a new server must stay ready before it counts as available and
    /// the rollout moves on. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub min_ready_seconds: Option<i32>,
    /// Seconds without progress after which the rollout is reported stuck
    /// (Degraded, reason ProgressDeadlineExceeded). Default 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 86400))]
    pub progress_deadline_seconds: Option<i32>,
    /// Seconds a stopping server keeps serving in-flight requests after it left
    /// the Service (preStop drain). The grace period is this plus 20. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 600))]
    pub drain_seconds: Option<i32>,
}

/// DNS subdomain names (Secrets, issuers, IngressClasses, Gateways).
const SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// HTTPS for the hosts, on the Ingress. One certificate covers every host,
/// so no host of the site is left on plain HTTP.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.clusterIssuer) || !has(self.issuer)")
    .message("tls: set clusterIssuer or issuer, not both: cert-manager takes one issuer per certificate"))]
#[serde(rename_all = "camelCase")]
pub struct WebTls {
    /// Secret (type `kubernetes.io/tls`) holding the certificate for every
    /// host. Default `<name>-tls`. With `clusterIssuer` or `issuer`,
    /// cert-manager creates and renews it; otherwise it must exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SUBDOMAIN))]
    pub secret_name: Option<String>,
    /// cert-manager ClusterIssuer that issues the certificate (the
    /// `cert-manager.io/cluster-issuer` annotation on the Ingress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SUBDOMAIN))]
    pub cluster_issuer: Option<String>,
    /// cert-manager Issuer in this namespace that issues the certificate
    /// (the `cert-manager.io/issuer` annotation on the Ingress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SUBDOMAIN))]
    pub issuer: Option<String>,
}

/// How the Ingress for the hosts is served.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressRouting {
    /// IngressClass of the Ingress (`ingressClassName`); the cluster's
    /// default class when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SUBDOMAIN))]
    pub class_name: Option<String>,
}

/// The hosts routed by a Gateway API HTTPRoute (gateway.networking.k8s.io/v1)
/// attached to Gateways run by the platform team.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRouting {
    /// Gateways (or their listeners) the HTTPRoute attaches to.
    #[schemars(length(min = 1, max = 32))]
    pub parent_refs: Vec<GatewayParentRef>,
}

/// A Gateway the HTTPRoute attaches to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayParentRef {
    /// Name of the Gateway.
    #[schemars(length(min = 1, max = 253), regex(pattern = SUBDOMAIN))]
    pub name: String,
    /// Namespace of the Gateway; this WebCluster's namespace when unset. A
    /// Gateway elsewhere must allow routes from this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: Option<String>,
    /// One listener of the Gateway (e.g. `https`); all that accept the route when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SUBDOMAIN))]
    pub section_name: Option<String>,
    /// Only the Gateway's listeners on this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

/// Who may connect to the web servers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebNetworkPolicy {
    /// Peers (NetworkPolicy `from` entries) allowed to reach the web servers'
    /// port, typically the namespace of the ingress controller or gateway;
    /// nothing else may connect to the web pods.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self.all(p, has(p.podSelector) || has(p.namespaceSelector) || has(p.ipBlock))")
        .message("every allowFrom entry needs podSelector, namespaceSelector or ipBlock"))]
    pub allow_from: Vec<NetworkPolicyPeer>,
}

fn default_replicas() -> i32 {
    3
}

fn default_port() -> i32 {
    8080
}

/// Deployment environment of a WebCluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Full size: default requests, autoscaling when asked for.
    #[default]
    Production,
    /// Same shape, smaller: fewer replicas and smaller requests by default.
    Staging,
}

/// Bounds for the HorizontalPodAutoscaler that scales the web servers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not exceed autoscaling.maxReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// Fewest web servers the autoscaler may leave running.
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Most web servers the autoscaler may start.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Average CPU utilisation (percent of requests) the autoscaler aims for.
    #[serde(default = "default_target_cpu", rename = "targetCPUUtilizationPercentage")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: i32,
}

fn default_target_cpu() -> i32 {
    70
}

/// HTTP health checks of the web server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Probes {
    /// Decides when a server receives traffic (and when a rollout may continue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<HttpProbe>,
    /// Decides when a wedged server is restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<HttpProbe>,
}

/// An HTTP GET against the web server's port.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpProbe {
    /// Path to request; any 2xx or 3xx answer counts as healthy.
    #[serde(default = "default_probe_path")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/"))]
    pub path: String,
    /// Seconds between checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 300))]
    pub period_seconds: Option<i32>,
    /// Seconds before a check times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 60))]
    pub timeout_seconds: Option<i32>,
    /// Consecutive failures before the check is considered failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 30))]
    pub failure_threshold: Option<i32>,
    /// Seconds after start before the first check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub initial_delay_seconds: Option<i32>,
}

fn default_probe_path() -> String {
    "/".into()
}

/// Coarse lifecycle of a WebCluster, for humans; conditions carry the detail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum WebClusterPhase {
    /// Accepted; children not yet created or references not yet resolved.
    Pending,
    /// A rollout or scale is under way.
    Progressing,
    /// Every desired server is ready and up to date.
    Ready,
    /// Serving, but with fewer ready servers than desired.
    Degraded,
    /// `spec.paused` is set; children are left as they are.
    Paused,
    /// The spec cannot be realised; see the conditions.
    Failed,
}

/// Observed state of a WebCluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Web server pods that exist (the scale subresource reads this).
    #[serde(default)]
    pub replicas: i32,
    /// Pods passing readiness.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Pods running the current pod template.
    #[serde(default)]
    pub updated_replicas: i32,
    /// Pods ready for at least `minReadySeconds`.
    #[serde(default)]
    pub available_replicas: i32,
    /// Label selector of the pods, in string form (for the scale subresource and HPAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Image the fully rolled-out pods run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Coarse lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<WebClusterPhase>,
    /// Ready, Progressing and Degraded, Kubernetes style.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn a_minimal_spec_gets_production_defaults() {
        let spec: WebClusterSpec = serde_yaml::from_str("image: nginx:1.27").unwrap();
        assert_eq!(spec.replicas, 3);
        assert_eq!(spec.port, 8080);
        assert_eq!(spec.tier, Tier::Production);
        assert!(!spec.paused);
        assert_eq!(spec.tolerate, None);
        assert!(spec.hosts.is_empty());
    }

    #[test]
    fn tiers_and_autoscaling_read_as_users_write_them() {
        let spec: WebClusterSpec = serde_yaml::from_str(
            "image: site:2\ntier: staging\nautoscaling: {minReplicas: 2, maxReplicas: 6}\n",
        )
        .unwrap();
        assert_eq!(spec.tier, Tier::Staging);
        let autoscaling = spec.autoscaling.unwrap();
        assert_eq!((autoscaling.min_replicas, autoscaling.max_replicas), (2, 6));
        assert_eq!(autoscaling.target_cpu_utilization_percentage, 70);
    }

    #[test]
    fn the_edge_of_a_site_reads_as_users_write_it() {
        let spec: WebClusterSpec = serde_yaml::from_str(
            "image: site:2\nhosts: [shop.example.com]\n\
             tls: {secretName: shop-tls, clusterIssuer: letsencrypt-prod}\n\
             ingress: {className: nginx}\n\
             networkPolicy:\n  allowFrom:\n  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ingress-nginx}}\n",
        )
        .unwrap();
        let tls = spec.tls.unwrap();
        assert_eq!(tls.secret_name.as_deref(), Some("shop-tls"));
        assert_eq!(tls.cluster_issuer.as_deref(), Some("letsencrypt-prod"));
        assert_eq!(spec.ingress.unwrap().class_name.as_deref(), Some("nginx"));
        assert_eq!(spec.network_policy.unwrap().allow_from.len(), 1);
        let spec: WebClusterSpec = serde_yaml::from_str(
            "image: site:2\nhosts: [shop.example.com]\n\
             gateway:\n  parentRefs:\n  - {name: public, namespace: gateway-system, sectionName: https}\n",
        )
        .unwrap();
        let parent = &spec.gateway.unwrap().parent_refs[0];
        assert_eq!((parent.name.as_str(), parent.section_name.as_deref()), ("public", Some("https")));
    }

    #[test]
    fn a_spec_without_the_edge_fields_keeps_them_unset_and_writes_none_of_them() {
        let spec: WebClusterSpec = serde_yaml::from_str("image: a\nhosts: [a.example.com]").unwrap();
        assert_eq!(
            (&spec.tls, &spec.ingress, &spec.gateway, &spec.network_policy),
            (&None, &None, &None, &None)
        );
        let written = serde_json::to_value(&spec).unwrap();
        for field in ["tls", "ingress", "gateway", "networkPolicy"] {
            assert!(written.get(field).is_none(), "{field} is written for a spec that never set it");
        }
    }

    #[test]
    fn the_edge_rules_are_in_the_schema_with_their_messages() {
        let crd = serde_json::to_string(&WebCluster::crd()).unwrap();
        for message in [
            "tls needs hosts",
            "ingress needs hosts",
            "gateway needs hosts",
            "set ingress or gateway, not both",
            "tls applies to the Ingress",
            "hosts takes at most 16 names",
            "set clusterIssuer or issuer, not both",
            "every allowFrom entry needs podSelector, namespaceSelector or ipBlock",
        ] {
            assert!(crd.contains(message), "no rule says {message:?}");
        }
    }

    #[test]
    fn the_crd_has_scale_and_status_subresources_and_the_documented_columns() {
        let crd = WebCluster::crd();
        let version = &crd.spec.versions[0];
        let sub = version.subresources.as_ref().unwrap();
        assert!(sub.status.is_some());
        let scale = sub.scale.as_ref().unwrap();
        assert_eq!(scale.status_replicas_path, ".status.replicas");
        let columns: Vec<_> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .filter(|c| c.priority.unwrap_or(0) == 0)
            .map(|c| c.name.to_uppercase())
            .collect();
        assert_eq!(columns, ["REPLICAS", "READY", "UP-TO-DATE", "IMAGE", "PHASE", "AGE"]);
    }
}

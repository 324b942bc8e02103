//! WebCluster → Deployment, Service, PodDisruptionBudget, and optionally a
//! HorizontalPodAutoscaler, an Ingress or an HTTPRoute, and a NetworkPolicy.
//!
//! The web tier's guarantees live here as object shapes:
//! - rollouts surge first and never remove a ready server before its
//!   replacement is available (`maxUnavailable: 0`, readiness probe,
//!   `minReadySeconds`, a preStop drain inside the grace period);
//! - pods spread over nodes (hard) and zones (soft), so losing `tolerate`
//!   nodes leaves servers running;
//! - voluntary disruptions (drains) take one pod at a time, and none at all
//!   when `tolerate` is 0;
//! - pods meet the `restricted` Pod Security profile;
//! - pods read nothing but the connection Secrets of the stores they use,
//!   and (with `networkPolicy`) accept traffic only from the listed peers.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, Lifecycle,
    LifecycleHandler, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext, Service, ServicePort,
    ServiceSpec, SleepAction, TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend,
    IngressSpec, IngressTLS, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPort, NetworkPolicySpec,
    ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::core::{ApiResource, DynamicObject};

use super::labels;
use super::{BuildError, controller_ref};
use crate::api::webcluster::{HttpProbe, Tier, WebCluster};

/// `app.kubernetes.io/name` of web pods.
pub const APP_NAME: &str = "webcluster";
/// Name of the web server container and of its port.
pub const CONTAINER: &str = "web";
const PORT_NAME: &str = "http";
/// Port the Service exposes; it forwards to `spec.port` in the pods.
pub const SERVICE_PORT: i32 = 80;

const DEFAULT_MIN_READY_SECONDS: i32 = 5;
const DEFAULT_PROGRESS_DEADLINE_SECONDS: i32 = 300;
const DEFAULT_DRAIN_SECONDS: i32 = 10;
/// Time a server gets after its drain to finish shutting down.
const SHUTDOWN_MARGIN_SECONDS: i64 = 20;

/// Secret keys the stores publish and the web pods read.
pub mod secret_keys {
    /// `redis://` URL of the session store's primary Service.
    pub const SESSION_URL: &str = "url";
    /// `postgresql://` URL of the read-write (`-rw`) Service.
    pub const DATABASE_URL: &str = "uri";
    /// `postgresql://` URL of the read-only (`-ro`) Service.
    pub const DATABASE_RO_URL: &str = "ro-uri";
    /// PEM of the CA that signed the store's server certificate; the URLs
    /// verify the server against it (`sslmode=verify-full`, `rediss://`).
    pub const CA_CERT: &str = "ca.crt";
    /// Where a web pod finds the DatabaseMirror's CA (`sslrootcert` of its URLs).
    pub const DATABASE_CA_PATH: &str = "/etc/hostwright/database/ca.crt";
    /// Where a web pod finds the SessionStore's CA.
    pub const SESSION_STORE_CA_PATH: &str = "/etc/hostwright/session-store/ca.crt";
}

/// Connection Secrets a WebCluster's pods read, resolved from its references.
/// Only Secret names and keys reach the pod template, never their contents,
/// and they do not change when a store promotes a new primary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wiring {
    /// Secret with the session store's `url`.
    pub session_secret: Option<String>,
    /// Secret with the database's `uri` and `ro-uri`.
    pub database_secret: Option<String>,
}

/// The cert-manager annotations on the Ingress naming the issuer of its
/// certificate; cert-manager then creates and renews the TLS Secret.
pub mod cert_manager {
    pub const CLUSTER_ISSUER: &str = "cert-manager.io/cluster-issuer";
    pub const ISSUER: &str = "cert-manager.io/issuer";
}

/// Fields of the Ingress the operator sets whole: removing them from the
/// spec must remove them from the live object, which a subset check of
/// what the operator sets would not notice (JSON pointers).
pub const INGRESS_OWNED_FIELDS: &[&str] = &[
    "/spec/tls",
    "/spec/ingressClassName",
    "/metadata/annotations/cert-manager.io~1cluster-issuer",
    "/metadata/annotations/cert-manager.io~1issuer",
];
/// The peers and ports of the NetworkPolicy: a narrowed peer must narrow
/// the live policy too.
pub const NETWORK_POLICY_OWNED_FIELDS: &[&str] = &["/spec/ingress"];
/// The Gateways and host names of the HTTPRoute (with every default the API
/// server would add written out, so equal means equal).
pub const HTTP_ROUTE_OWNED_FIELDS: &[&str] = &["/spec/parentRefs", "/spec/hostnames"];

/// Gateway API group; k8s-openapi has no Gateway API types, so HTTPRoutes
/// are DynamicObjects of this resource.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// `gateway.networking.k8s.io/v1` HTTPRoute.
pub fn http_route_resource() -> ApiResource {
    ApiResource {
        group: GATEWAY_GROUP.into(),
        version: "v1".into(),
        api_version: format!("{GATEWAY_GROUP}/v1"),
        kind: "HTTPRoute".into(),
        plural: "httproutes".into(),
    }
}

/// Everything a WebCluster becomes. Applying destructures this without `..`,
/// so a child that is built but never applied is a compile error.
#[derive(Clone, Debug, PartialEq)]
pub struct WebClusterChildren {
    pub deployment: Deployment,
    pub service: Service,
    pub pod_disruption_budget: PodDisruptionBudget,
    /// Present when `spec.autoscaling` is set; otherwise any existing one is deleted.
    pub autoscaler: Option<HorizontalPodAutoscaler>,
    /// Present when `spec.hosts` is non-empty and `spec.gateway` unset;
    /// otherwise any existing one is deleted.
    pub ingress: Option<Ingress>,
    /// A `gateway.networking.k8s.io/v1` HTTPRoute, present when `spec.hosts`
    /// is non-empty and `spec.gateway` set; otherwise any existing one is deleted.
    pub http_route: Option<DynamicObject>,
    /// Present when `spec.networkPolicy` is set; otherwise any existing one is deleted.
    pub network_policy: Option<NetworkPolicy>,
}

/// Build every child of `wc`.
pub fn build(wc: &WebCluster, wiring: &Wiring) -> Result<WebClusterChildren, BuildError> {
    Ok(WebClusterChildren {
        deployment: deployment(wc, wiring)?,
        service: service(wc)?,
        pod_disruption_budget: pod_disruption_budget(wc)?,
        autoscaler: autoscaler(wc)?,
        ingress: ingress(wc)?,
        http_route: http_route(wc)?,
        network_policy: network_policy(wc)?,
    })
}

/// Labels selecting this WebCluster's pods (also its status.selector).
pub fn selector_labels(wc: &WebCluster) -> BTreeMap<String, String> {
    labels::selector(APP_NAME, &wc.name_any())
}

/// Node failures to survive: `spec.tolerate`, or all but one server.
pub fn tolerated_failures(wc: &WebCluster) -> i32 {
    wc.spec.tolerate.unwrap_or(wc.spec.replicas - 1).max(0)
}

fn metadata(wc: &WebCluster) -> Result<ObjectMeta, BuildError> {
    let namespace = wc.namespace().ok_or_else(|| BuildError::MissingMetadata {
        kind: "WebCluster".into(),
        field: "metadata.namespace",
    })?;
    Ok(ObjectMeta {
        name: Some(wc.name_any()),
        namespace: Some(namespace),
        labels: Some(labels::common(APP_NAME, &wc.name_any(), "web")),
        owner_references: Some(vec![controller_ref(wc)?]),
        ..ObjectMeta::default()
    })
}

fn deployment(wc: &WebCluster, wiring: &Wiring) -> Result<Deployment, BuildError> {
    let rollout = wc.spec.rollout.clone().unwrap_or_default();
    let drain = rollout.drain_seconds.unwrap_or(DEFAULT_DRAIN_SECONDS);
    let selector = selector_labels(wc);
    let mut pod_labels = labels::common(APP_NAME, &wc.name_any(), "web");
    pod_labels.extend(selector.clone());

    let container = Container {
        name: CONTAINER.into(),
        image: Some(wc.spec.image.clone()),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.into()),
            container_port: wc.spec.port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env: non_empty(env(wc, wiring)),
        volume_mounts: non_empty(ca_mounts(wiring).into_iter().map(|(_, mount)| mount).collect()),
        resources: Some(resources(wc)),
        readiness_probe: Some(probe(
            wc.spec.probes.as_ref().and_then(|p| p.readiness.as_ref()),
            ProbeDefaults { period: 5, timeout: 2, failure: 3, initial_delay: 0 },
        )),
        liveness_probe: Some(probe(
            wc.spec.probes.as_ref().and_then(|p| p.liveness.as_ref()),
            ProbeDefaults { period: 10, timeout: 2, failure: 3, initial_delay: 10 },
        )),
        // Keep serving in-flight requests while endpoints drop the pod.
        lifecycle: (drain > 0).then(|| Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction { seconds: i64::from(drain) }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
            run_as_non_root: Some(true),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };

    let pod_spec = PodSpec {
        containers: vec![container],
        volumes: non_empty(ca_mounts(wiring).into_iter().map(|(volume, _)| volume).collect()),
        termination_grace_period_seconds: Some(i64::from(drain) + SHUTDOWN_MARGIN_SECONDS),
        // Web pods do not talk to the Kubernetes API.
        automount_service_account_token: Some(false),
        // Many sites share a namespace; service links would flood the env.
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        topology_spread_constraints: Some(spread(&selector)),
        ..PodSpec::default()
    };

    Ok(Deployment {
        metadata: metadata(wc)?,
        spec: Some(DeploymentSpec {
            replicas: Some(wc.spec.replicas),
            selector: LabelSelector { match_labels: Some(selector), ..LabelSelector::default() },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            min_ready_seconds: Some(rollout.min_ready_seconds.unwrap_or(DEFAULT_MIN_READY_SECONDS)),
            progress_deadline_seconds: Some(
                rollout.progress_deadline_seconds.unwrap_or(DEFAULT_PROGRESS_DEADLINE_SECONDS),
            ),
            revision_history_limit: Some(5),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(pod_labels), ..ObjectMeta::default() }),
                spec: Some(pod_spec),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

/// Hard spread over nodes, soft over zones. Tainted (failed) nodes drop out of
/// the count so replacements can land on the survivors, and each ReplicaSet
/// (pod-template-hash) spreads on its own so a rollout's surge pods spread too.
fn spread(selector: &BTreeMap<String, String>) -> Vec<TopologySpreadConstraint> {
    let constraint = |key: &str, when: &str| TopologySpreadConstraint {
        max_skew: 1,
        topology_key: key.into(),
        when_unsatisfiable: when.into(),
        label_selector: Some(LabelSelector {
            match_labels: Some(selector.clone()),
            ..LabelSelector::default()
        }),
        match_label_keys: Some(vec!["pod-template-hash".into()]),
        node_taints_policy: Some("Honor".into()),
        ..TopologySpreadConstraint::default()
    };
    vec![
        constraint("kubernetes.io/hostname", "DoNotSchedule"),
        constraint("topology.kubernetes.io/zone", "ScheduleAnyway"),
    ]
}

fn env(wc: &WebCluster, wiring: &Wiring) -> Vec<EnvVar> {
    let from_secret = |name: &str, secret: &str, key: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let mut env = wc.spec.env.clone();
    if let Some(secret) = &wiring.session_secret {
        env.push(from_secret("SESSION_STORE_URL", secret, secret_keys::SESSION_URL));
    }
    if let Some(secret) = &wiring.database_secret {
        env.push(from_secret("DATABASE_URL", secret, secret_keys::DATABASE_URL));
        env.push(from_secret("DATABASE_RO_URL", secret, secret_keys::DATABASE_RO_URL));
    }
    env
}

/// The `ca.crt` of each referenced store's Secret, mounted read-only where
/// the store's URLs expect it (`sslrootcert=...`), so TLS to the stores
/// verifies the server. Only that key is projected, and the volume is
/// optional: an external session store may publish no CA, and a store that
/// does not publish one yet must not keep web pods from starting.
fn ca_mounts(wiring: &Wiring) -> Vec<(Volume, VolumeMount)> {
    let mount = |volume: &str, secret: &str, path: &str| {
        let (dir, file) = path.rsplit_once('/').unwrap_or(("", path));
        (
            Volume {
                name: volume.into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.into()),
                    items: Some(vec![KeyToPath {
                        key: secret_keys::CA_CERT.into(),
                        path: file.into(),
                        ..KeyToPath::default()
                    }]),
                    optional: Some(true),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            },
            VolumeMount {
                name: volume.into(),
                mount_path: dir.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        )
    };
    let mut mounts = Vec::new();
    if let Some(secret) = &wiring.session_secret {
        mounts.push(mount("session-store-ca", secret, secret_keys::SESSION_STORE_CA_PATH));
    }
    if let Some(secret) = &wiring.database_secret {
        mounts.push(mount("database-ca", secret, secret_keys::DATABASE_CA_PATH));
    }
    mounts
}

/// The user's resources, or the tier's defaults. CPU requests are always set
/// because the autoscaler measures utilisation against them.
fn resources(wc: &WebCluster) -> ResourceRequirements {
    if let Some(r) = &wc.spec.resources {
        return r.clone();
    }
    let (cpu, memory, limit) = match wc.spec.tier {
        Tier::Production => ("100m", "128Mi", "256Mi"),
        Tier::Staging => ("25m", "64Mi", "128Mi"),
    };
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), Quantity(limit.into()))])),
        ..ResourceRequirements::default()
    }
}

struct ProbeDefaults {
    period: i32,
    timeout: i32,
    failure: i32,
    initial_delay: i32,
}

fn probe(spec: Option<&HttpProbe>, d: ProbeDefaults) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(spec.map_or_else(|| "/".to_string(), |p| p.path.clone())),
            port: IntOrString::String(PORT_NAME.into()),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(spec.and_then(|p| p.period_seconds).unwrap_or(d.period)),
        timeout_seconds: Some(spec.and_then(|p| p.timeout_seconds).unwrap_or(d.timeout)),
        failure_threshold: Some(spec.and_then(|p| p.failure_threshold).unwrap_or(d.failure)),
        // Zero is omitted by the API server; leaving it out keeps idle reconciles write-free.
        initial_delay_seconds: Some(spec.and_then(|p| p.initial_delay_seconds).unwrap_or(d.initial_delay))
            .filter(|delay| *delay != 0),
        success_threshold: Some(1),
        ..Probe::default()
    }
}

fn service(wc: &WebCluster) -> Result<Service, BuildError> {
    Ok(Service {
        metadata: metadata(wc)?,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(wc)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.into()),
                port: SERVICE_PORT,
                target_port: Some(IntOrString::String(PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// Drains take one pod at a time, so ready servers never drop below
/// `replicas - 1 >= replicas - tolerate`; with `tolerate: 0` nothing may be
/// evicted. Pods that never became healthy may always be evicted, so a broken
/// rollout cannot block node maintenance.
fn pod_disruption_budget(wc: &WebCluster) -> Result<PodDisruptionBudget, BuildError> {
    Ok(PodDisruptionBudget {
        metadata: metadata(wc)?,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(tolerated_failures(wc).min(1))),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(wc)),
                ..LabelSelector::default()
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

/// The autoscaler scales the WebCluster itself through its scale subresource,
/// so `spec.replicas` stays the one source of truth and the operator never
/// fights the autoscaler over the Deployment.
fn autoscaler(wc: &WebCluster) -> Result<Option<HorizontalPodAutoscaler>, BuildError> {
    let Some(a) = &wc.spec.autoscaling else {
        return Ok(None);
    };
    Ok(Some(HorizontalPodAutoscaler {
        metadata: metadata(wc)?,
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("hostwright.io/v1alpha1".into()),
                kind: "WebCluster".into(),
                name: wc.name_any(),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(a.target_cpu_utilization_percentage),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        },
        status: None,
    }))
}

/// The Ingress for the hosts: HTTPS for all of them with `tls`, the issuer
/// annotation cert-manager acts on, and the IngressClass when given.
fn ingress(wc: &WebCluster) -> Result<Option<Ingress>, BuildError> {
    if wc.spec.hosts.is_empty() || wc.spec.gateway.is_some() {
        return Ok(None);
    }
    let backend = IngressBackend {
        service: Some(IngressServiceBackend {
            name: wc.name_any(),
            port: Some(ServiceBackendPort { name: Some(PORT_NAME.into()), ..ServiceBackendPort::default() }),
        }),
        ..IngressBackend::default()
    };
    let rules = wc
        .spec
        .hosts
        .iter()
        .map(|host| IngressRule {
            host: Some(host.clone()),
            http: Some(HTTPIngressRuleValue {
                paths: vec![HTTPIngressPath {
                    path: Some("/".into()),
                    path_type: "Prefix".into(),
                    backend: backend.clone(),
                }],
            }),
        })
        .collect();
    let tls = wc.spec.tls.as_ref();
    let annotations: BTreeMap<String, String> = tls
        .into_iter()
        .flat_map(|t| {
            [(cert_manager::CLUSTER_ISSUER, &t.cluster_issuer), (cert_manager::ISSUER, &t.issuer)]
                .into_iter()
                .filter_map(|(key, name)| Some((key.to_string(), name.clone()?)))
        })
        .collect();
    let mut meta = metadata(wc)?;
    meta.annotations = non_empty_map(annotations);
    Ok(Some(Ingress {
        metadata: meta,
        spec: Some(IngressSpec {
            ingress_class_name: wc.spec.ingress.as_ref().and_then(|i| i.class_name.clone()),
            tls: tls.map(|t| {
                vec![IngressTLS {
                    hosts: Some(wc.spec.hosts.clone()),
                    secret_name: Some(tls_secret_name(wc, t)),
                }]
            }),
            rules: Some(rules),
            ..IngressSpec::default()
        }),
        status: None,
    }))
}

/// The Secret holding the certificate: `tls.secretName`, or `<name>-tls`.
pub fn tls_secret_name(wc: &WebCluster, tls: &crate::api::webcluster::WebTls) -> String {
    tls.secret_name.clone().unwrap_or_else(|| format!("{}-tls", wc.name_any()))
}

/// The HTTPRoute for the hosts, attached to the Gateways in `spec.gateway`,
/// sending every path to the Service. Defaults the API server would fill
/// in (parent group and kind, backend group, kind and weight, the match)
/// are written out, so the live route equals what was built.
fn http_route(wc: &WebCluster) -> Result<Option<DynamicObject>, BuildError> {
    let Some(gateway) = wc.spec.gateway.as_ref().filter(|_| !wc.spec.hosts.is_empty()) else {
        return Ok(None);
    };
    let parent_refs: Vec<serde_json::Value> = gateway
        .parent_refs
        .iter()
        .map(|p| {
            let mut parent = serde_json::json!({"group": GATEWAY_GROUP, "kind": "Gateway", "name": p.name});
            if let Some(namespace) = &p.namespace {
                parent["namespace"] = namespace.as_str().into();
            }
            if let Some(section) = &p.section_name {
                parent["sectionName"] = section.as_str().into();
            }
            if let Some(port) = p.port {
                parent["port"] = port.into();
            }
            parent
        })
        .collect();
    let resource = http_route_resource();
    let mut route = DynamicObject::new(&wc.name_any(), &resource).data(serde_json::json!({
        "spec": {
            "parentRefs": parent_refs,
            "hostnames": wc.spec.hosts,
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [{
                    "group": "", "kind": "Service", "name": wc.name_any(), "port": SERVICE_PORT, "weight": 1,
                }],
            }],
        },
    }));
    route.metadata = metadata(wc)?;
    Ok(Some(route))
}

/// With `networkPolicy`, the web pods accept connections on their port from
/// the listed peers and from nothing else. No rule allows an empty `from`
/// (which NetworkPolicy reads as "everyone"): without peers nothing is allowed.
fn network_policy(wc: &WebCluster) -> Result<Option<NetworkPolicy>, BuildError> {
    let Some(policy) = &wc.spec.network_policy else {
        return Ok(None);
    };
    let ingress = (!policy.allow_from.is_empty()).then(|| {
        vec![NetworkPolicyIngressRule {
            from: Some(policy.allow_from.clone()),
            ports: Some(vec![NetworkPolicyPort {
                protocol: Some("TCP".into()),
                port: Some(IntOrString::Int(wc.spec.port)),
                ..NetworkPolicyPort::default()
            }]),
        }]
    });
    Ok(Some(NetworkPolicy {
        metadata: metadata(wc)?,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(wc)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress,
            ..NetworkPolicySpec::default()
        }),
    }))
}

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

fn non_empty_map(m: BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!m.is_empty()).then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::webcluster::WebClusterSpec;

    fn web(spec_yaml: &str) -> WebCluster {
        let spec: WebClusterSpec = serde_yaml::from_str(spec_yaml).unwrap();
        let mut wc = WebCluster::new("shop", spec);
        wc.metadata.namespace = Some("customer-a".into());
        wc.metadata.uid = Some("uid-1".into());
        wc
    }

    fn pod_spec(d: &Deployment) -> &PodSpec {
        d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    #[test]
    fn rollouts_surge_first_and_never_drop_ready_capacity() {
        let d = build(&web("image: nginx:1.27"), &Wiring::default()).unwrap().deployment;
        let spec = d.spec.as_ref().unwrap();
        let rolling = spec.strategy.as_ref().unwrap().rolling_update.as_ref().unwrap();
        assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
        assert_eq!(spec.min_ready_seconds, Some(5));
        let container = &pod_spec(&d).containers[0];
        assert!(container.readiness_probe.is_some());
        let drain =
            container.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap().sleep.as_ref().unwrap().seconds;
        assert!(
            drain < pod_spec(&d).termination_grace_period_seconds.unwrap(),
            "the drain fits in the grace period"
        );
    }

    #[test]
    fn pods_spread_hard_over_nodes_and_soft_over_zones_ignoring_failed_nodes() {
        let d = build(&web("image: nginx:1.27"), &Wiring::default()).unwrap().deployment;
        let spread = pod_spec(&d).topology_spread_constraints.as_ref().unwrap();
        let by_key: Vec<_> = spread
            .iter()
            .map(|c| {
                (c.topology_key.as_str(), c.when_unsatisfiable.as_str(), c.node_taints_policy.as_deref())
            })
            .collect();
        assert_eq!(
            by_key,
            [
                ("kubernetes.io/hostname", "DoNotSchedule", Some("Honor")),
                ("topology.kubernetes.io/zone", "ScheduleAnyway", Some("Honor")),
            ]
        );
    }

    #[test]
    fn drains_go_one_pod_at_a_time_and_not_at_all_with_tolerate_zero() {
        let pdb = |yaml| {
            build(&web(yaml), &Wiring::default())
                .unwrap()
                .pod_disruption_budget
                .spec
                .unwrap()
                .max_unavailable
                .unwrap()
        };
        assert_eq!(pdb("image: a\nreplicas: 5"), IntOrString::Int(1));
        assert_eq!(pdb("image: a\nreplicas: 3\ntolerate: 2"), IntOrString::Int(1));
        assert_eq!(pdb("image: a\nreplicas: 3\ntolerate: 0"), IntOrString::Int(0));
        assert_eq!(pdb("image: a\nreplicas: 1"), IntOrString::Int(0), "one server, nothing to spare");
    }

    #[test]
    fn pods_meet_the_restricted_pod_security_profile() {
        let d = build(&web("image: nginx:1.27"), &Wiring::default()).unwrap().deployment;
        let pod = pod_spec(&d);
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        let sc = pod.containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_string()][..]));
    }

    #[test]
    fn staging_is_the_same_shape_with_smaller_requests_and_no_autoscaler_unless_asked() {
        let prod = build(&web("image: a"), &Wiring::default()).unwrap();
        let staging = build(&web("image: a\ntier: staging"), &Wiring::default()).unwrap();
        let cpu = |c: &WebClusterChildren| {
            pod_spec(&c.deployment).containers[0]
                .resources
                .as_ref()
                .unwrap()
                .requests
                .as_ref()
                .unwrap()["cpu"]
                .clone()
        };
        assert_eq!(cpu(&prod), Quantity("100m".into()));
        assert_eq!(cpu(&staging), Quantity("25m".into()));
        assert!(staging.autoscaler.is_none());
        assert_eq!(
            pod_spec(&prod.deployment).topology_spread_constraints,
            pod_spec(&staging.deployment).topology_spread_constraints
        );
        assert_eq!(prod.pod_disruption_budget.spec, staging.pod_disruption_budget.spec);
    }

    #[test]
    fn optional_children_follow_the_spec() {
        let plain = build(&web("image: a"), &Wiring::default()).unwrap();
        assert!(plain.autoscaler.is_none() && plain.ingress.is_none());
        let full = build(
            &web("image: a\nhosts: [a.example.com]\nautoscaling: {minReplicas: 3, maxReplicas: 9}"),
            &Wiring::default(),
        )
        .unwrap();
        let hpa = full.autoscaler.unwrap();
        assert_eq!(
            hpa.spec.scale_target_ref.kind, "WebCluster",
            "the autoscaler scales the WebCluster, not the Deployment"
        );
        assert_eq!(hpa.spec.max_replicas, 9);
        let rules = full.ingress.unwrap().spec.unwrap().rules.unwrap();
        assert_eq!(rules[0].host.as_deref(), Some("a.example.com"));
    }

    #[test]
    fn connection_details_come_from_secrets_never_inline() {
        let wiring = Wiring {
            session_secret: Some("s-connection".into()),
            database_secret: Some("db-credentials".into()),
        };
        let d = build(&web("image: a"), &wiring).unwrap().deployment;
        let env = pod_spec(&d).containers[0].env.clone().unwrap();
        let names: Vec<_> = env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["SESSION_STORE_URL", "DATABASE_URL", "DATABASE_RO_URL"]);
        assert!(
            env.iter().all(|e| e.value.is_none() && e.value_from.as_ref().unwrap().secret_key_ref.is_some())
        );
    }

    fn ingress_of(yaml: &str) -> Ingress {
        build(&web(yaml), &Wiring::default()).unwrap().ingress.unwrap()
    }

    #[test]
    fn an_ingress_without_tls_settings_is_what_it_was() {
        let ingress = ingress_of("image: a\nhosts: [a.example.com]");
        assert_eq!(ingress.metadata.annotations, None);
        let spec = ingress.spec.unwrap();
        assert_eq!((spec.tls, spec.ingress_class_name), (None, None));
    }

    #[test]
    fn tls_covers_every_host_with_one_secret_named_after_the_cluster_by_default() {
        let spec = ingress_of("image: a\nhosts: [a.example.com, b.example.com]\ntls: {}").spec.unwrap();
        let tls = spec.tls.unwrap();
        assert_eq!(tls.len(), 1);
        assert_eq!(
            tls[0].hosts.as_deref(),
            Some(&["a.example.com".to_string(), "b.example.com".to_string()][..])
        );
        assert_eq!(tls[0].secret_name.as_deref(), Some("shop-tls"));
        let named = ingress_of("image: a\nhosts: [a.example.com]\ntls: {secretName: shop-cert}");
        assert_eq!(named.spec.unwrap().tls.unwrap()[0].secret_name.as_deref(), Some("shop-cert"));
    }

    #[test]
    fn the_issuer_becomes_cert_managers_annotation_and_the_class_the_ingress_class_name() {
        let cluster = ingress_of(
            "image: a\nhosts: [a.example.com]\ntls: {clusterIssuer: letsencrypt}\ningress: {className: nginx}",
        );
        assert_eq!(
            cluster.metadata.annotations,
            Some(BTreeMap::from([(cert_manager::CLUSTER_ISSUER.to_string(), "letsencrypt".to_string())]))
        );
        assert_eq!(cluster.spec.unwrap().ingress_class_name.as_deref(), Some("nginx"));
        let local = ingress_of("image: a\nhosts: [a.example.com]\ntls: {issuer: site-ca}");
        assert_eq!(
            local.metadata.annotations,
            Some(BTreeMap::from([(cert_manager::ISSUER.to_string(), "site-ca".to_string())]))
        );
    }

    #[test]
    fn the_owned_ingress_fields_name_fields_the_builder_sets() {
        let mut ingress = serde_json::to_value(ingress_of(
            "image: a\nhosts: [a.example.com]\ntls: {clusterIssuer: x}\ningress: {className: nginx}",
        ))
        .unwrap();
        ingress["metadata"]["annotations"][cert_manager::ISSUER] = "y".into();
        for pointer in INGRESS_OWNED_FIELDS {
            assert!(ingress.pointer(pointer).is_some(), "{pointer} names no field of the Ingress");
        }
        let policy =
            build(&web("image: a\nnetworkPolicy: {allowFrom: [{podSelector: {}}]}"), &Wiring::default())
                .unwrap()
                .network_policy;
        let policy = serde_json::to_value(policy.unwrap()).unwrap();
        assert!(NETWORK_POLICY_OWNED_FIELDS.iter().all(|p| policy.pointer(p).is_some()));
        let route = build(
            &web("image: a\nhosts: [a.example.com]\ngateway: {parentRefs: [{name: g}]}"),
            &Wiring::default(),
        )
        .unwrap()
        .http_route;
        let route = serde_json::to_value(route.unwrap()).unwrap();
        assert!(HTTP_ROUTE_OWNED_FIELDS.iter().all(|p| route.pointer(p).is_some()));
    }

    #[test]
    fn a_gateway_routes_the_hosts_by_an_http_route_to_the_service_instead_of_an_ingress() {
        let children = build(
            &web(
                "image: a\nhosts: [a.example.com, '*.b.example.com']\n\
                 gateway: {parentRefs: [{name: public, namespace: gw, sectionName: https, port: 443}, {name: local}]}",
            ),
            &Wiring::default(),
        )
        .unwrap();
        assert!(children.ingress.is_none(), "one way of routing at a time");
        let route = children.http_route.unwrap();
        let types = route.types.clone().unwrap();
        assert_eq!(
            (types.api_version.as_str(), types.kind.as_str()),
            ("gateway.networking.k8s.io/v1", "HTTPRoute")
        );
        assert_eq!(route.metadata.name.as_deref(), Some("shop"));
        assert_eq!(route.metadata.namespace.as_deref(), Some("customer-a"));
        assert_eq!(route.metadata.owner_references.as_ref().unwrap()[0].kind, "WebCluster");
        let spec = &route.data["spec"];
        assert_eq!(spec["hostnames"], serde_json::json!(["a.example.com", "*.b.example.com"]));
        assert_eq!(
            spec["parentRefs"],
            serde_json::json!([
                {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "namespace": "gw",
                 "sectionName": "https", "port": 443},
                {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "local"},
            ])
        );
        assert_eq!(
            spec["rules"][0]["backendRefs"],
            serde_json::json!([{"group": "", "kind": "Service", "name": "shop", "port": 80, "weight": 1}])
        );
        let plain = build(&web("image: a\nhosts: [a.example.com]"), &Wiring::default()).unwrap();
        assert!(plain.http_route.is_none() && plain.ingress.is_some());
    }

    #[test]
    fn a_network_policy_admits_only_the_listed_peers_on_the_web_port() {
        let plain = build(&web("image: a"), &Wiring::default()).unwrap();
        assert!(plain.network_policy.is_none(), "no policy unless asked for");
        let policy = build(
            &web("image: a\nport: 8443\nnetworkPolicy: {allowFrom: [\
                 {namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ingress-nginx}}}]}"),
            &Wiring::default(),
        )
        .unwrap()
        .network_policy
        .unwrap();
        let spec = policy.spec.unwrap();
        assert_eq!(spec.pod_selector.unwrap().match_labels, Some(selector_labels(&web("image: a"))));
        assert_eq!(spec.policy_types.as_deref(), Some(&["Ingress".to_string()][..]), "egress untouched");
        let rules = spec.ingress.unwrap();
        assert_eq!(rules.len(), 1);
        let from = rules[0].from.as_ref().unwrap();
        assert_eq!(from.len(), 1);
        let labels = from[0].namespace_selector.as_ref().unwrap().match_labels.as_ref().unwrap();
        assert_eq!(labels["kubernetes.io/metadata.name"], "ingress-nginx");
        let ports = rules[0].ports.as_ref().unwrap();
        assert_eq!(
            (ports[0].port.clone(), ports[0].protocol.as_deref()),
            (Some(IntOrString::Int(8443)), Some("TCP"))
        );
    }

    #[test]
    fn a_network_policy_without_peers_admits_nothing_rather_than_everyone() {
        let mut wc = web("image: a");
        wc.spec.network_policy = Some(crate::api::webcluster::WebNetworkPolicy::default());
        let spec = build(&wc, &Wiring::default()).unwrap().network_policy.unwrap().spec.unwrap();
        assert_eq!(spec.ingress, None, "a rule with an empty `from` would admit every source");
        assert_eq!(spec.policy_types.as_deref(), Some(&["Ingress".to_string()][..]));
    }

    #[test]
    fn the_stores_cas_are_mounted_read_only_where_their_urls_expect_them() {
        let wiring = Wiring {
            session_secret: Some("s-connection".into()),
            database_secret: Some("db-credentials".into()),
        };
        let d = build(&web("image: a"), &wiring).unwrap().deployment;
        let pod = pod_spec(&d);
        let mounts = pod.containers[0].volume_mounts.clone().unwrap();
        let volumes = pod.volumes.clone().unwrap();
        let mut found = Vec::new();
        for mount in &mounts {
            assert_eq!(mount.read_only, Some(true));
            let volume = volumes.iter().find(|v| v.name == mount.name).unwrap();
            let secret = volume.secret.as_ref().unwrap();
            assert_eq!(secret.optional, Some(true), "a store that publishes no CA does not stop the pod");
            let items = secret.items.as_ref().unwrap();
            assert_eq!(items.len(), 1, "only the CA, never the URLs or passwords");
            assert_eq!(items[0].key, secret_keys::CA_CERT);
            found.push((
                secret.secret_name.clone().unwrap(),
                format!("{}/{}", mount.mount_path, items[0].path),
            ));
        }
        assert_eq!(
            found,
            [
                ("s-connection".to_string(), secret_keys::SESSION_STORE_CA_PATH.to_string()),
                ("db-credentials".to_string(), secret_keys::DATABASE_CA_PATH.to_string()),
            ]
        );
        let plain = build(&web("image: a"), &Wiring::default()).unwrap().deployment;
        assert_eq!(
            (pod_spec(&plain).volumes.as_ref(), pod_spec(&plain).containers[0].volume_mounts.as_ref()),
            (None, None)
        );
    }

    #[test]
    fn web_pods_reference_no_secret_but_the_stores_connection_secrets() {
        let wiring = Wiring {
            session_secret: Some("s-connection".into()),
            database_secret: Some("db-credentials".into()),
        };
        let d = build(&web("image: a\nhosts: [a.example.com]\ntls: {}"), &wiring).unwrap().deployment;
        let pod = serde_json::to_value(pod_spec(&d)).unwrap();
        let mut secrets = std::collections::BTreeSet::new();
        collect_secret_names(&pod, &mut secrets);
        let wanted: std::collections::BTreeSet<String> =
            ["s-connection".to_string(), "db-credentials".to_string()].into();
        assert_eq!(secrets, wanted);
    }

    /// Every Secret a pod spec names: `secretName` of volumes, `name` of
    /// `secretKeyRef` / `secretRef`.
    fn collect_secret_names(v: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, child) in map {
                    match (k.as_str(), child) {
                        ("secretName", serde_json::Value::String(name)) => {
                            out.insert(name.clone());
                        }
                        ("secretKeyRef" | "secretRef", serde_json::Value::Object(r)) => {
                            out.insert(r["name"].as_str().unwrap().to_string());
                        }
                        _ => collect_secret_names(child, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| collect_secret_names(i, out)),
            _ => {}
        }
    }

    #[test]
    fn children_are_owned_and_labelled() {
        let children = build(&web("image: a"), &Wiring::default()).unwrap();
        let meta = &children.service.metadata;
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.controller), ("WebCluster", Some(true)));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "hostwright");
        assert_eq!(labels["app.kubernetes.io/instance"], "shop");
    }
}

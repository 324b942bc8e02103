//! Builders shared by every replicated store (DatabaseMirror, SessionStore):
//! one Pod and, with storage, one PersistentVolumeClaim per member, all from
//! one template; Services and PodDisruptionBudgets that route and protect by
//! role; the agents' ServiceAccount and least-privilege Role; and the pod
//! metadata that carries the failover engine's decision.
//!
//! Members are managed as individual Pods (not a StatefulSet) so the operator,
//! not a rollout controller, decides which member restarts when: a primary is
//! only ever replaced after a switchover.
//!
//! Inside each pod an init container copies the operator's static binary
//! into a shared volume, and the server container runs `hostwright agent`,
//! which supervises the server as its child: it can stop, promote, rewind and
//! restart it, and a dead agent means a dead server.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, Probe, ResourceRequirements,
    SeccompProfile, SecretVolumeSource, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec,
    TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::labels;
use crate::api::common::StorageSpec;
pub use crate::contract::keys::{INSTANCE_LABEL, INSTRUCTION_ANNOTATION, MEMBER_LABEL};
use crate::contract::{Instruction, keys, probes};
use crate::failover::{Decision, Route};

/// Label the Services route on: `primary`, `mirror` or `none`.
pub const ROLE_LABEL: &str = "hostwright.io/role";
/// Annotation with the hash of the template a pod was built from.
pub const TEMPLATE_HASH_ANNOTATION: &str = "hostwright.io/template-hash";
/// Annotation on a store that asks for its members to be restarted: each
/// new value changes every member's revision, so the members roll exactly
/// as on a template change (mirrors one at a time, then the primary as
/// `updateStrategy.primary` says). Like `kubectl rollout restart`, the value
/// stays; removing it later rolls the members once more.
pub const RESTART_ANNOTATION: &str = "hostwright.io/restart-request";
const CONTROLLER_DIR: &str = "/controller";
/// Where the credentials Secret is mounted; the agents read their passwords here.
pub const CREDENTIALS_DIR: &str = "/etc/hostwright/credentials";
/// Where the settings ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/etc/hostwright";
/// Where the TLS Secret (server certificate, key, CA) is mounted.
pub const TLS_DIR: &str = "/etc/hostwright/tls";
/// Secret files in member pods: the server's user (their group, through
/// `fsGroup`) reads them, nobody else in the pod.
const SECRET_FILE_MODE: i32 = 0o440;

/// What differs between the engines' member pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Engine {
    /// `--engine` of the agent: `postgres` or `redis`.
    pub name: &'static str,
    /// Name of the server container and of its port.
    pub container: &'static str,
    pub port: i32,
    /// Where the data volume is mounted.
    pub data_dir: &'static str,
    /// A writable emptyDir for sockets and lock files.
    pub run_dir: &'static str,
    /// UID and GID of the server's user in the official images.
    pub uid: i64,
    /// Seconds a clean shutdown may take.
    pub grace_seconds: i64,
}

/// A Secret mounted read-only into the server container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretMount {
    /// The pod's volume name.
    pub volume: &'static str,
    pub secret: String,
    pub path: &'static str,
}

/// Everything the shared builders need to know about one store object: its
/// identity, members, engine and the one template every member is built from.
#[derive(Clone, Debug, PartialEq)]
pub struct Blueprint {
    /// `app.kubernetes.io/name` of the store's objects.
    pub app: &'static str,
    /// `app.kubernetes.io/component`.
    pub component: &'static str,
    /// What the non-primary members are called in names (`mirror`, `replica`).
    pub mirror_word: &'static str,
    pub name: String,
    pub namespace: String,
    pub owner: OwnerReference,
    /// Member names, the first the initial primary.
    pub members: Vec<String>,
    pub engine: Engine,
    pub image: String,
    pub resources: Option<ResourceRequirements>,
    /// None: members keep their data in an emptyDir (lost with the pod).
    pub storage: Option<StorageSpec>,
    /// Secret mounted at [`CREDENTIALS_DIR`]: the members' own passwords
    /// (`<name>-agent`), never the application's Secret.
    pub credentials_secret: String,
    /// The store's Services, whose DNS names its certificate carries.
    pub service_names: Vec<String>,
    /// The cert-manager issuer that signs the server certificate (None: the
    /// operator's CA for the store).
    pub tls_issuer: Option<crate::api::common::IssuerRef>,
    /// Secrets beyond the store's own that member pods mount (the backup
    /// object store's keys and CA).
    pub secret_mounts: Vec<SecretMount>,
    /// ConfigMap mounted at [`CONFIG_DIR`].
    pub config_map: String,
    /// Agent arguments beyond the common ones (the object's name, settings file).
    pub agent_args: Vec<String>,
    /// The settings ConfigMap key members run with now (a pod's
    /// `hostwright.io/settings`); see [`settings_key`].
    pub settings_key: String,
    /// Hash of the template ([`template_hash`]); with the agent's image it
    /// makes the revision on every pod ([`Blueprint::revision`]).
    pub template_hash: String,
    /// The store's [`RESTART_ANNOTATION`], part of the revision.
    pub restart_request: Option<String>,
}

impl Blueprint {
    /// The revision a member pod built now carries: the template and the
    /// agent that runs it (an operator upgrade rolls members like a template
    /// change does), and the restart asked for, if any (so a store never
    /// asked keeps the revision it had before restarts existed).
    pub fn revision(&self, agent_image: &str) -> String {
        let mut text = format!("{}|{agent_image}", self.template_hash);
        if let Some(restart) = &self.restart_request {
            text.push_str(&format!("|restart {restart}"));
        }
        template_hash(&text)
    }

    /// Metadata of a child: the common labels and a controller reference.
    pub fn metadata(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels::common(self.app, &self.name, self.component)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    fn role_selector(&self, role: &str) -> BTreeMap<String, String> {
        let mut selector = labels::selector(self.app, &self.name);
        selector.insert(ROLE_LABEL.into(), role.into());
        selector
    }

    /// A Service following the members labelled `role` (`primary` or
    /// `mirror`). Names never change, so promotions never touch clients'
    /// settings.
    pub fn service(&self, name: String, role: &str) -> Service {
        Service {
            metadata: self.metadata(name),
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                selector: Some(self.role_selector(role)),
                ports: Some(vec![ServicePort {
                    name: Some(self.engine.container.into()),
                    port: self.engine.port,
                    target_port: Some(IntOrString::String(self.engine.container.into())),
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }

    /// The primary may not be evicted (a drain waits for the switchover
    /// the operator starts when it sees the node cordoned); the others may
    /// go one at a time. Named `<name>-primary` and `<name>-<mirror_word>`.
    ///
    /// Both say `minAvailable` as a number: the disruption controller
    /// counts the selected pods for that. With `maxUnavailable` it would
    /// look for a scale subresource on the pods' owner, which a store does
    /// not have, and allow no eviction at all.
    pub fn budgets(&self) -> [PodDisruptionBudget; 2] {
        let mirrors = i32::try_from(self.members.len()).unwrap_or(i32::MAX).saturating_sub(1);
        let budget = |suffix: &str, role: &str, min_available: i32| PodDisruptionBudget {
            metadata: self.metadata(format!("{}-{suffix}", self.name)),
            spec: Some(PodDisruptionBudgetSpec {
                min_available: Some(IntOrString::Int(min_available)),
                selector: Some(LabelSelector {
                    match_labels: Some(self.role_selector(role)),
                    ..LabelSelector::default()
                }),
                unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
                ..PodDisruptionBudgetSpec::default()
            }),
            status: None,
        };
        [budget("primary", "primary", 1), budget(self.mirror_word, "mirror", (mirrors - 1).max(0))]
    }

    /// Name of the ServiceAccount, Role and RoleBinding of the members' agents.
    pub fn agent_account_name(&self) -> String {
        format!("{}-agent", self.name)
    }

    /// The agents' identity and the least they need: read their own pod (the
    /// operator's instructions) and keep their own member Lease.
    pub fn agent_rbac(&self) -> (ServiceAccount, Role, RoleBinding) {
        let name = self.agent_account_name();
        let rule = |resource: &str, verbs: &[&str], names: Option<&Vec<String>>| PolicyRule {
            api_groups: Some(vec![if resource == "pods" { "" } else { "coordination.k8s.io" }.into()]),
            resources: Some(vec![resource.into()]),
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
            resource_names: names.cloned(),
            ..PolicyRule::default()
        };
        let account = ServiceAccount {
            metadata: self.metadata(name.clone()),
            automount_service_account_token: Some(true),
            ..ServiceAccount::default()
        };
        let role = Role {
            metadata: self.metadata(name.clone()),
            rules: Some(vec![
                rule("pods", &["get"], Some(&self.members)),
                rule("leases", &["get", "patch", "update"], Some(&self.members)),
                // `create` cannot be limited by name: the API knows no name yet.
                rule("leases", &["create"], None),
            ]),
        };
        let binding = RoleBinding {
            metadata: self.metadata(name.clone()),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "Role".into(),
                name: name.clone(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name,
                namespace: Some(self.namespace.clone()),
                ..Subject::default()
            }]),
        };
        (account, role, binding)
    }

    /// Metadata of what is kept with the data (volumes, and the Secret
    /// whose passwords open it): owned by the store, and so deleted with it,
    /// only without storage or when `storage.deleteOnRemoval` is set, as
    /// customer data outlives the object.
    pub fn kept_metadata(&self, name: String) -> ObjectMeta {
        let mut meta = self.metadata(name);
        if self.storage.as_ref().is_some_and(|s| !s.delete_on_removal) {
            meta.owner_references = None;
        }
        meta
    }

    /// The data volume of `member`, when the template asks for storage
    /// (kept: see [`Blueprint::kept_metadata`]).
    pub fn member_volume(&self, member: &str) -> Option<PersistentVolumeClaim> {
        let storage = self.storage.as_ref()?;
        let mut meta = self.kept_metadata(member.to_string());
        meta.labels.get_or_insert_default().insert(MEMBER_LABEL.into(), member.into());
        Some(PersistentVolumeClaim {
            metadata: meta,
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: storage.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".to_string(), storage.size.clone())])),
                    ..VolumeResourceRequirements::default()
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            status: None,
        })
    }

    /// The pod of `member`, built from the template. `agent_image` is the
    /// operator's own image (it carries `hostwright agent`).
    pub fn member_pod(&self, member: &str, agent_image: &str) -> Pod {
        let engine = &self.engine;
        let mut meta = self.metadata(member.to_string());
        let pod_labels = meta.labels.get_or_insert_default();
        pod_labels.insert(MEMBER_LABEL.into(), member.into());
        pod_labels.insert(ROLE_LABEL.into(), "none".into());
        meta.annotations = Some(BTreeMap::from([
            (TEMPLATE_HASH_ANNOTATION.to_string(), self.revision(agent_image)),
            (keys::SETTINGS_ANNOTATION.to_string(), self.settings_key.clone()),
        ]));

        let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            read_only: read_only.then_some(true),
            ..VolumeMount::default()
        };
        let field = |path: &str| EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        };
        let env = |name: &str, path: &str| EnvVar {
            name: name.into(),
            value_from: Some(field(path)),
            ..EnvVar::default()
        };
        let restricted = SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
            run_as_non_root: Some(true),
            ..SecurityContext::default()
        };
        let install_agent = Container {
            name: "install-agent".into(),
            image: Some(agent_image.into()),
            args: Some(vec!["agent".into(), "install".into(), format!("{CONTROLLER_DIR}/hostwright")]),
            volume_mounts: Some(vec![mount("controller", CONTROLLER_DIR, false)]),
            security_context: Some(restricted.clone()),
            ..Container::default()
        };
        let mut args = vec![
            "agent".to_string(),
            "run".into(),
            format!("--engine={}", engine.name),
            format!("--port={}", engine.port),
            format!("--credentials-dir={CREDENTIALS_DIR}"),
            format!("--tls-dir={TLS_DIR}"),
            format!("--socket-dir={}", engine.run_dir),
        ];
        args.extend(self.agent_args.iter().cloned());
        let server = Container {
            name: engine.container.into(),
            image: Some(self.image.clone()),
            command: Some(vec![format!("{CONTROLLER_DIR}/hostwright")]),
            args: Some(args),
            env: Some(vec![
                env("POD_NAME", "metadata.name"),
                env("POD_NAMESPACE", "metadata.namespace"),
                env(keys::POD_UID_ENV, "metadata.uid"),
                env("POD_IP", "status.podIP"),
            ]),
            ports: Some(vec![
                ContainerPort {
                    name: Some(engine.container.into()),
                    container_port: engine.port,
                    ..ContainerPort::default()
                },
                ContainerPort {
                    name: Some("agent".into()),
                    container_port: i32::from(probes::PORT),
                    ..ContainerPort::default()
                },
            ]),
            liveness_probe: Some(Probe {
                termination_grace_period_seconds: Some(probes::LIVENESS_GRACE_SECONDS),
                ..agent_probe(probes::LIVENESS_PATH, probes::PERIOD_SECONDS, probes::FAILURE_THRESHOLD)
            }),
            readiness_probe: Some(agent_probe(
                probes::READINESS_PATH,
                probes::READINESS_PERIOD_SECONDS,
                probes::READINESS_FAILURE_THRESHOLD,
            )),
            resources: self.resources.clone(),
            volume_mounts: Some(
                [
                    mount("data", engine.data_dir, false),
                    mount("controller", CONTROLLER_DIR, true),
                    mount("config", CONFIG_DIR, true),
                    mount("credentials", CREDENTIALS_DIR, true),
                    mount("tls", TLS_DIR, true),
                    mount("run", engine.run_dir, false),
                ]
                .into_iter()
                .chain(self.secret_mounts.iter().map(|m| mount(m.volume, m.path, true)))
                .collect(),
            ),
            security_context: Some(restricted),
            ..Container::default()
        };
        let empty_dir = |name: &str| Volume {
            name: name.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        };
        let data = match &self.storage {
            Some(_) => Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: member.into(),
                    ..PersistentVolumeClaimVolumeSource::default()
                }),
                ..Volume::default()
            },
            None => empty_dir("data"),
        };
        let volumes = vec![
            data,
            empty_dir("controller"),
            empty_dir("run"),
            Volume {
                name: "config".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: self.config_map.clone(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            secret_volume("credentials", &self.credentials_secret),
            secret_volume("tls", &self.tls_secret_name()),
        ]
        .into_iter()
        .chain(self.secret_mounts.iter().map(|m| secret_volume(m.volume, &m.secret)))
        .collect();
        Pod {
            metadata: meta,
            spec: Some(PodSpec {
                init_containers: Some(vec![install_agent]),
                containers: vec![server],
                volumes: Some(volumes),
                service_account_name: Some(self.agent_account_name()),
                termination_grace_period_seconds: Some(engine.grace_seconds),
                enable_service_links: Some(false),
                security_context: Some(PodSecurityContext {
                    run_as_non_root: Some(true),
                    run_as_user: Some(engine.uid),
                    run_as_group: Some(engine.uid),
                    fs_group: Some(engine.uid),
                    seccomp_profile: Some(SeccompProfile {
                        type_: "RuntimeDefault".into(),
                        ..SeccompProfile::default()
                    }),
                    ..PodSecurityContext::default()
                }),
                // Members of one store never share a node.
                topology_spread_constraints: Some(vec![TopologySpreadConstraint {
                    max_skew: 1,
                    topology_key: "kubernetes.io/hostname".into(),
                    when_unsatisfiable: "DoNotSchedule".into(),
                    label_selector: Some(LabelSelector {
                        match_labels: Some(labels::selector(self.app, &self.name)),
                        ..LabelSelector::default()
                    }),
                    node_taints_policy: Some("Honor".into()),
                    ..TopologySpreadConstraint::default()
                }]),
                ..PodSpec::default()
            }),
            status: None,
        }
    }
}

/// A Secret as files only the server's group reads.
fn secret_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode: Some(SECRET_FILE_MODE),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// A probe of the agent's HTTP endpoint (see [`probes`] for what it
/// guarantees). No initial delay: the agent answers from its first moment,
/// and a long first step (initdb, a clone) does not stop its lease loop.
fn agent_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("agent".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(probes::TIMEOUT_SECONDS),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

/// Member names: `<name>-1` … `<name>-<count>`.
pub fn member_names(name: &str, count: i32) -> Vec<String> {
    (1..=count.max(1)).map(|i| format!("{name}-{i}")).collect()
}

/// What the failover engine's decision means for one member's pod: the
/// instruction its agent reads, and the role label the Services route on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    pub instruction: Instruction,
    pub route: Route,
}

impl Routing {
    /// `hostwright.io/role` label value: what the Services select on.
    pub fn role_label(&self) -> &'static str {
        match self.route {
            Route::ReadWrite => "primary",
            Route::ReadOnly => "mirror",
            Route::None => "none",
        }
    }

    /// The labels and annotations on a member's pod that carry this routing.
    pub fn metadata(&self) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let labels = BTreeMap::from([(ROLE_LABEL.to_string(), self.role_label().to_string())]);
        let annotations = BTreeMap::from([(INSTRUCTION_ANNOTATION.to_string(), self.instruction.encode())]);
        (labels, annotations)
    }

    /// The routing of `member` under `decision` (None: not a member).
    pub fn of(decision: &Decision, member: &str) -> Option<Self> {
        Some(Self {
            instruction: decision.instructions.get(member)?.clone(),
            route: decision.routes.get(member).copied().unwrap_or(Route::None),
        })
    }
}

/// The settings file a member pod reads: the ConfigMap key its server's
/// `--config` argument names. Each settings text has a key of its own
/// ([`settings_key`]), so a pod keeps the settings it was built with until
/// the rollout replaces it, and a change reaches no member early.
pub fn settings_key_of(pod: &Pod) -> Option<String> {
    let prefix = format!("--config={CONFIG_DIR}/");
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.args.iter().flatten())
        .find_map(|a| a.strip_prefix(&prefix))
        .map(str::to_string)
}

/// Every settings key a member pod may read: the one it was built with and
/// the one it was told to load since ([`keys::SETTINGS_ANNOTATION`]).
pub fn settings_keys_of(pod: &Pod) -> impl Iterator<Item = String> {
    let told = pod.metadata.annotations.as_ref().and_then(|a| a.get(keys::SETTINGS_ANNOTATION)).cloned();
    settings_key_of(pod).into_iter().chain(told)
}

/// The ConfigMap key of a settings text: `<stem>-<hash>.conf`.
pub fn settings_key(stem: &str, text: &str) -> String {
    format!("{stem}-{}.conf", template_hash(text))
}

/// `desired` (the current settings) plus the keys of `live` that pods
/// still read (`in_use`): older settings stay until no pod needs them.
pub fn keep_settings_in_use(
    desired: &mut k8s_openapi::api::core::v1::ConfigMap,
    live: Option<&k8s_openapi::api::core::v1::ConfigMap>,
    in_use: &std::collections::BTreeSet<String>,
) {
    let Some(old) = live.and_then(|l| l.data.as_ref()) else { return };
    let data = desired.data.get_or_insert_default();
    for key in in_use {
        if let Some(text) = old.get(key).filter(|_| !data.contains_key(key)) {
            data.insert(key.clone(), text.clone());
        }
    }
}

/// The restart a store's metadata asks for ([`RESTART_ANNOTATION`]).
pub fn restart_request(meta: &ObjectMeta) -> Option<String> {
    meta.annotations.as_ref()?.get(RESTART_ANNOTATION).cloned()
}

/// A short, stable hash of the text of a template. Members carrying another
/// hash were built from another template (or changed by hand): the spec is
/// no longer equal.
pub fn template_hash(template: &str) -> String {
    format!("{:016x}", fnv1a(template.as_bytes()))
}

/// FNV-1a: tiny, stable across builds and platforms (std's hasher is not).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

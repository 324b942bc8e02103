//! DatabaseMirror → one Pod and one PersistentVolumeClaim per member, all
//! from the one instance template; Services `<name>-rw` and `<name>-ro`;
//! PodDisruptionBudgets; the PostgreSQL configuration; the credentials Secret.
//!
//! Members are managed as individual Pods (not a StatefulSet) so the operator,
//! not a rollout controller, decides which member restarts when: a primary is
//! only ever replaced after a switchover.
//!
//! Inside each pod an init container copies the operator's static binary
//! into a shared volume, and the database container runs `hostwright agent`,
//! which supervises PostgreSQL as its child: it can stop, promote, rewind and
//! restart the server, and a dead agent means a dead server.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, SeccompProfile, Secret,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::labels;
use super::webcluster::secret_keys;
use super::{BuildError, controller_ref};
use crate::agent::report::desired_annotation;
use crate::agent::run::PRIMARY_ANNOTATION;
use crate::api::DatabaseMirror;
use crate::api::databasemirror::Replication;
use crate::failover::{Decision, Desired, Route};

/// `app.kubernetes.io/name` of database pods.
pub const APP_NAME: &str = "databasemirror";
/// Label naming the member a pod or volume belongs to.
pub const MEMBER_LABEL: &str = "hostwright.io/member";
/// Label the Services route on: `primary`, `mirror` or `none`.
pub const ROLE_LABEL: &str = "hostwright.io/role";
/// Annotation telling a member's agent what to make its server.
pub const DESIRED_ROLE_ANNOTATION: &str = "hostwright.io/desired-role";
/// Annotation with the hash of the instance template a pod was built from.
pub const TEMPLATE_HASH_ANNOTATION: &str = "hostwright.io/template-hash";
const PORT: i32 = 5432;
const AGENT_PORT: i32 = 8000;
const DATA_DIR: &str = "/var/lib/postgresql/data";
const CONTROLLER_DIR: &str = "/controller";
/// UID and GID of the `postgres` user in the official images.
const POSTGRES_UID: i64 = 999;

/// Secrets a DatabaseMirror owns, generated once by the reconciler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Passwords {
    /// Password of the owner role the web tier connects as.
    pub owner: String,
    /// Password of the `replication` role mirrors stream with.
    pub replication: String,
    /// Password of the `postgres` superuser (used by the agents only).
    pub superuser: String,
}

impl Passwords {
    /// The passwords kept in an existing credentials Secret, or the first key
    /// missing from it.
    pub fn from_secret(secret: &Secret) -> Result<Self, &'static str> {
        let data = secret.data.clone().unwrap_or_default();
        let get = |key: &'static str| {
            data.get(key)
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .filter(|v| !v.is_empty())
                .ok_or(key)
        };
        Ok(Self {
            owner: get("password")?,
            replication: get("replication-password")?,
            superuser: get("superuser-password")?,
        })
    }
}

/// What the failover engine's decision means for one member's pod: the
/// instruction its agent reads, the member it should stream from, and the
/// role label the Services route on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    pub desired: Desired,
    /// The member told to be primary, if any.
    pub primary: Option<String>,
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
        let annotations = BTreeMap::from([
            (DESIRED_ROLE_ANNOTATION.to_string(), desired_annotation(self.desired).to_string()),
            (PRIMARY_ANNOTATION.to_string(), self.primary.clone().unwrap_or_default()),
        ]);
        (labels, annotations)
    }

    /// The routing of `member` under `decision`.
    pub fn of(decision: &Decision, member: &str) -> Self {
        Self {
            desired: decision.desired.get(member).copied().unwrap_or(Desired::Mirror),
            primary: decision
                .desired
                .iter()
                .find(|(_, d)| **d == Desired::Primary)
                .map(|(name, _)| name.clone()),
            route: decision.routes.get(member).copied().unwrap_or(Route::None),
        }
    }
}

/// Everything a DatabaseMirror becomes, besides its member pods.
#[derive(Clone, Debug, PartialEq)]
pub struct DatabaseMirrorChildren {
    pub read_write: Service,
    pub read_only: Service,
    pub primary_budget: PodDisruptionBudget,
    pub mirror_budget: PodDisruptionBudget,
    pub config: ConfigMap,
}

/// Member names: `<name>-1` … `<name>-<mirrors + 1>`.
pub fn member_names(dbm: &DatabaseMirror) -> Vec<String> {
    let count = dbm.spec.mirrors.max(0) + 1;
    (1..=count).map(|i| format!("{}-{i}", dbm.name_any())).collect()
}

/// Name of the Secret the web tier reads (`uri`, `ro-uri`, …).
pub fn credentials_name(dbm: &DatabaseMirror) -> String {
    format!("{}-credentials", dbm.name_any())
}

/// Build the shared children of `dbm` (the credentials Secret is built on
/// its own by [`credentials`]: its passwords are generated only once).
pub fn build(dbm: &DatabaseMirror) -> Result<DatabaseMirrorChildren, BuildError> {
    Ok(DatabaseMirrorChildren {
        read_write: service(dbm, "rw", "primary")?,
        read_only: service(dbm, "ro", "mirror")?,
        primary_budget: budget(dbm, "primary", 0)?,
        mirror_budget: budget(dbm, "mirror", 1)?,
        config: config(dbm)?,
    })
}

fn namespace(dbm: &DatabaseMirror) -> Result<String, BuildError> {
    dbm.namespace().ok_or_else(|| BuildError::MissingMetadata {
        kind: "DatabaseMirror".into(),
        field: "metadata.namespace",
    })
}

fn metadata(dbm: &DatabaseMirror, name: String) -> Result<ObjectMeta, BuildError> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(namespace(dbm)?),
        labels: Some(labels::common(APP_NAME, &dbm.name_any(), "database")),
        owner_references: Some(vec![controller_ref(dbm)?]),
        ..ObjectMeta::default()
    })
}

fn role_selector(dbm: &DatabaseMirror, role: &str) -> BTreeMap<String, String> {
    let mut selector = labels::selector(APP_NAME, &dbm.name_any());
    selector.insert(ROLE_LABEL.into(), role.into());
    selector
}

/// `<name>-rw` follows the member labelled primary, `<name>-ro` the healthy
/// mirrors. Names never change, so promotions never touch clients' settings.
fn service(dbm: &DatabaseMirror, suffix: &str, role: &str) -> Result<Service, BuildError> {
    Ok(Service {
        metadata: metadata(dbm, format!("{}-{suffix}", dbm.name_any()))?,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(role_selector(dbm, role)),
            ports: Some(vec![ServicePort {
                name: Some("postgres".into()),
                port: PORT,
                target_port: Some(IntOrString::String("postgres".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// The primary may not be evicted (a drain waits for a switchover the
/// operator performs when the primary's node is cordoned); mirrors may go one
/// at a time.
fn budget(dbm: &DatabaseMirror, role: &str, max_unavailable: i32) -> Result<PodDisruptionBudget, BuildError> {
    Ok(PodDisruptionBudget {
        metadata: metadata(dbm, format!("{}-{role}", dbm.name_any()))?,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(max_unavailable)),
            selector: Some(LabelSelector {
                match_labels: Some(role_selector(dbm, role)),
                ..LabelSelector::default()
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

/// `postgresql.conf` settings of every member: the user's parameters, then
/// the ones replication and failover rely on (the API refuses user values
/// for those). Per-role settings (`primary_conninfo`) are the agent's.
pub fn postgresql_conf(dbm: &DatabaseMirror) -> String {
    let mut settings: BTreeMap<String, String> = dbm.spec.instance.parameters.clone();
    // Every member is listed, the primary included (it is never its own
    // standby), so the list stays right when a mirror is promoted.
    let members: Vec<String> =
        member_names(dbm).iter().map(|m| format!("\"{}\"", m.replace('-', "_"))).collect();
    let managed = [
        ("listen_addresses", "'*'".to_string()),
        ("port", PORT.to_string()),
        ("wal_level", "replica".into()),
        ("hot_standby", "on".into()),
        ("wal_log_hints", "on".into()),
        ("max_wal_senders", "10".into()),
        ("max_replication_slots", "10".into()),
        ("archive_mode", "off".into()),
        (
            "synchronous_standby_names",
            match dbm.spec.replication {
                Replication::Sync => format!("'ANY 1 ({})'", members.join(", ")),
                Replication::Async => "''".into(),
            },
        ),
        ("synchronous_commit", if dbm.spec.replication == Replication::Sync { "on" } else { "local" }.into()),
    ];
    for (key, value) in managed {
        settings.insert(key.into(), value);
    }
    let mut out = String::from("# Rendered by hostwright from the DatabaseMirror's instance template.\n");
    for (key, value) in settings {
        let quoted = if value.starts_with('\'') || value.parse::<f64>().is_ok() || is_bare_word(&value) {
            value
        } else {
            format!("'{}'", value.replace('\'', "''"))
        };
        out.push_str(&format!("{key} = {quoted}\n"));
    }
    out
}

fn is_bare_word(v: &str) -> bool {
    matches!(v, "on" | "off" | "true" | "false") || v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn config(dbm: &DatabaseMirror) -> Result<ConfigMap, BuildError> {
    Ok(ConfigMap {
        metadata: metadata(dbm, format!("{}-postgresql", dbm.name_any()))?,
        data: Some(BTreeMap::from([("postgresql.conf".to_string(), postgresql_conf(dbm))])),
        ..ConfigMap::default()
    })
}

/// The Secret the web tier and the agents read. Host names are the stable
/// Services, so a promotion changes nothing here.
pub fn credentials(dbm: &DatabaseMirror, passwords: &Passwords) -> Result<Secret, BuildError> {
    let ns = namespace(dbm)?;
    let name = dbm.name_any();
    let (db, user) = (&dbm.spec.database, &dbm.spec.owner);
    let host = |suffix: &str| format!("{name}-{suffix}.{ns}.svc");
    let uri = |suffix: &str| format!("postgresql://{user}:{}@{}:{PORT}/{db}", passwords.owner, host(suffix));
    let data: BTreeMap<String, ByteString> = [
        ("username", user.clone()),
        ("password", passwords.owner.clone()),
        ("database", db.clone()),
        ("host", host("rw")),
        ("ro-host", host("ro")),
        ("port", PORT.to_string()),
        (secret_keys::DATABASE_URL, uri("rw")),
        (secret_keys::DATABASE_RO_URL, uri("ro")),
        ("replication-password", passwords.replication.clone()),
        ("superuser-password", passwords.superuser.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect();
    let mut meta = metadata(dbm, credentials_name(dbm))?;
    // The members' data only opens with these passwords: the Secret is kept
    // with the volumes, and a DatabaseMirror re-created over them adopts it.
    if !dbm.spec.instance.storage.delete_on_removal {
        meta.owner_references = None;
    }
    Ok(Secret { metadata: meta, type_: Some("Opaque".into()), data: Some(data), ..Secret::default() })
}

/// Name of the ServiceAccount, Role and RoleBinding of the members' agents.
pub fn agent_account_name(dbm: &DatabaseMirror) -> String {
    format!("{}-agent", dbm.name_any())
}

/// The agents' identity and the least they need: read their own pod (the
/// operator's instructions) and keep their own member Lease.
pub fn agent_rbac(dbm: &DatabaseMirror) -> Result<(ServiceAccount, Role, RoleBinding), BuildError> {
    let name = agent_account_name(dbm);
    let members = member_names(dbm);
    let rule = |resource: &str, verbs: &[&str], names: Option<&Vec<String>>| PolicyRule {
        api_groups: Some(vec![if resource == "pods" { "" } else { "coordination.k8s.io" }.into()]),
        resources: Some(vec![resource.into()]),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        resource_names: names.cloned(),
        ..PolicyRule::default()
    };
    let account = ServiceAccount {
        metadata: metadata(dbm, name.clone())?,
        automount_service_account_token: Some(true),
        ..ServiceAccount::default()
    };
    let role = Role {
        metadata: metadata(dbm, name.clone())?,
        rules: Some(vec![
            rule("pods", &["get"], Some(&members)),
            rule("leases", &["get", "patch", "update"], Some(&members)),
            // `create` cannot be limited by name: the API knows no name yet.
            rule("leases", &["create"], None),
        ]),
    };
    let binding = RoleBinding {
        metadata: metadata(dbm, name.clone())?,
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: Some(namespace(dbm)?),
            ..Subject::default()
        }]),
    };
    Ok((account, role, binding))
}

/// The data volume of `member`. Owned by the DatabaseMirror (and so deleted
/// with it) only when `instance.storage.deleteOnRemoval` is set.
pub fn member_volume(dbm: &DatabaseMirror, member: &str) -> Result<PersistentVolumeClaim, BuildError> {
    let storage = &dbm.spec.instance.storage;
    let mut meta = metadata(dbm, member.to_string())?;
    meta.labels.get_or_insert_default().insert(MEMBER_LABEL.into(), member.into());
    if !storage.delete_on_removal {
        meta.owner_references = None;
    }
    Ok(PersistentVolumeClaim {
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

/// The pod of `member`, built from the instance template. `agent_image` is
/// the operator's own image (it carries `hostwright agent`).
pub fn member_pod(dbm: &DatabaseMirror, member: &str, agent_image: &str) -> Result<Pod, BuildError> {
    let template = &dbm.spec.instance;
    let mut meta = metadata(dbm, member.to_string())?;
    let pod_labels = meta.labels.get_or_insert_default();
    pod_labels.insert(MEMBER_LABEL.into(), member.into());
    pod_labels.insert(ROLE_LABEL.into(), "none".into());
    meta.annotations = Some(BTreeMap::from([(TEMPLATE_HASH_ANNOTATION.to_string(), template_hash(dbm))]));

    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    };
    let field = |path: &str| EnvVarSource {
        field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..ObjectFieldSelector::default() }),
        ..EnvVarSource::default()
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
    let database = Container {
        name: "postgres".into(),
        image: Some(template.image.clone()),
        command: Some(vec![format!("{CONTROLLER_DIR}/hostwright")]),
        args: Some(vec![
            "agent".into(),
            "run".into(),
            "--engine=postgres".into(),
            format!("--database-mirror={}", dbm.name_any()),
            format!("--data-dir={DATA_DIR}/pgdata"),
            "--config=/etc/hostwright/postgresql.conf".into(),
        ]),
        env: Some(vec![
            EnvVar { name: "POD_NAME".into(), value_from: Some(field("metadata.name")), ..EnvVar::default() },
            EnvVar {
                name: "POD_NAMESPACE".into(),
                value_from: Some(field("metadata.namespace")),
                ..EnvVar::default()
            },
            EnvVar { name: "POD_IP".into(), value_from: Some(field("status.podIP")), ..EnvVar::default() },
        ]),
        ports: Some(vec![
            ContainerPort { name: Some("postgres".into()), container_port: PORT, ..ContainerPort::default() },
            ContainerPort {
                name: Some("agent".into()),
                container_port: AGENT_PORT,
                ..ContainerPort::default()
            },
        ]),
        resources: template.resources.clone(),
        volume_mounts: Some(vec![
            mount("data", DATA_DIR, false),
            mount("controller", CONTROLLER_DIR, true),
            mount("config", "/etc/hostwright", true),
            mount("credentials", "/etc/hostwright/credentials", true),
            mount("run", "/var/run/postgresql", false),
        ]),
        security_context: Some(restricted),
        ..Container::default()
    };
    let volumes = vec![
        Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: member.into(),
                ..PersistentVolumeClaimVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "controller".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
        Volume { name: "run".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Volume::default() },
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: format!("{}-postgresql", dbm.name_any()),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "credentials".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(credentials_name(dbm)),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    Ok(Pod {
        metadata: meta,
        spec: Some(PodSpec {
            init_containers: Some(vec![install_agent]),
            containers: vec![database],
            volumes: Some(volumes),
            service_account_name: Some(agent_account_name(dbm)),
            // Fast shutdown is clean (a checkpoint); give it room.
            termination_grace_period_seconds: Some(60),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(POSTGRES_UID),
                run_as_group: Some(POSTGRES_UID),
                fs_group: Some(POSTGRES_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            // Members of one DatabaseMirror never share a node.
            topology_spread_constraints: Some(vec![k8s_openapi::api::core::v1::TopologySpreadConstraint {
                max_skew: 1,
                topology_key: "kubernetes.io/hostname".into(),
                when_unsatisfiable: "DoNotSchedule".into(),
                label_selector: Some(LabelSelector {
                    match_labels: Some(labels::selector(APP_NAME, &dbm.name_any())),
                    ..LabelSelector::default()
                }),
                node_taints_policy: Some("Honor".into()),
                ..k8s_openapi::api::core::v1::TopologySpreadConstraint::default()
            }]),
            ..PodSpec::default()
        }),
        status: None,
    })
}

/// A short, stable hash of everything in the instance template that shapes a
/// member pod. Members carrying another hash were built from another template
/// (or changed by hand): the spec is no longer equal.
pub fn template_hash(dbm: &DatabaseMirror) -> String {
    let t = &dbm.spec.instance;
    let text = format!(
        "{}|{}|{:?}|{}|{:?}",
        t.image,
        serde_json::to_string(&t.resources).unwrap_or_default(),
        t.storage.size,
        t.storage.storage_class_name.clone().unwrap_or_default(),
        t.parameters
    );
    format!("{:016x}", fnv1a(text.as_bytes()))
}

/// FNV-1a: tiny, stable across builds and platforms (std's hasher is not).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DatabaseMirrorSpec;

    fn dbm(yaml: &str) -> DatabaseMirror {
        let spec: DatabaseMirrorSpec = serde_yaml::from_str(yaml).unwrap();
        let mut d = DatabaseMirror::new("shop-db", spec);
        d.metadata.namespace = Some("customer-a".into());
        d.metadata.uid = Some("uid-db".into());
        d
    }

    fn passwords() -> Passwords {
        Passwords { owner: "o".into(), replication: "r".into(), superuser: "s".into() }
    }

    #[test]
    fn members_are_the_primary_plus_the_mirrors() {
        let d = dbm("instance: {storage: {size: 1Gi}}\nmirrors: 2");
        assert_eq!(member_names(&d), ["shop-db-1", "shop-db-2", "shop-db-3"]);
    }

    #[test]
    fn every_member_pod_is_built_from_the_one_template() {
        let d = dbm(
            "instance: {image: 'postgres:15.6', storage: {size: 1Gi}, resources: {requests: {cpu: '2'}}}\nmirrors: 2",
        );
        let pods: Vec<Pod> =
            member_names(&d).iter().map(|m| member_pod(&d, m, "hostwright:0.1").unwrap()).collect();
        let shape = |p: &Pod| {
            let c = &p.spec.as_ref().unwrap().containers[0];
            (c.image.clone(), c.resources.clone(), p.metadata.annotations.clone())
        };
        assert!(pods.iter().all(|p| shape(p) == shape(&pods[0])), "equal spec by construction");
        assert_eq!(pods[1].labels()[MEMBER_LABEL], "shop-db-2");
    }

    #[test]
    fn a_changed_template_changes_the_hash() {
        let a = dbm("instance: {storage: {size: 1Gi}}");
        let b = dbm("instance: {storage: {size: 1Gi}, parameters: {shared_buffers: 1GB}}");
        assert_ne!(template_hash(&a), template_hash(&b));
        assert_eq!(template_hash(&a), template_hash(&a.clone()));
    }

    #[test]
    fn services_route_by_role_and_budgets_protect_the_primary() {
        let c = build(&dbm("instance: {storage: {size: 1Gi}}")).unwrap();
        assert_eq!(c.read_write.metadata.name.as_deref(), Some("shop-db-rw"));
        assert_eq!(c.read_write.spec.as_ref().unwrap().selector.as_ref().unwrap()[ROLE_LABEL], "primary");
        assert_eq!(c.read_only.spec.as_ref().unwrap().selector.as_ref().unwrap()[ROLE_LABEL], "mirror");
        assert_eq!(c.primary_budget.spec.unwrap().max_unavailable, Some(IntOrString::Int(0)));
        assert_eq!(c.mirror_budget.spec.unwrap().max_unavailable, Some(IntOrString::Int(1)));
    }

    #[test]
    fn sync_replication_waits_for_any_one_mirror() {
        let conf = postgresql_conf(&dbm(
            "instance: {storage: {size: 1Gi}, parameters: {shared_buffers: 512MB}}\nmirrors: 2\nreplication: sync",
        ));
        assert!(
            conf.contains(
                "synchronous_standby_names = 'ANY 1 (\"shop_db_1\", \"shop_db_2\", \"shop_db_3\")'"
            ),
            "{conf}"
        );
        assert!(conf.contains("synchronous_commit = on"));
        assert!(conf.contains("shared_buffers = 512MB"));
        let async_conf = postgresql_conf(&dbm("instance: {storage: {size: 1Gi}}"));
        assert!(async_conf.contains("synchronous_standby_names = ''"));
    }

    #[test]
    fn volumes_outlive_the_object_unless_asked() {
        let kept = member_volume(&dbm("instance: {storage: {size: 1Gi}}"), "shop-db-1").unwrap();
        assert!(kept.metadata.owner_references.is_none());
        let owned =
            member_volume(&dbm("instance: {storage: {size: 1Gi, deleteOnRemoval: true}}"), "shop-db-1")
                .unwrap();
        assert!(owned.metadata.owner_references.is_some());
    }

    #[test]
    fn credentials_point_at_the_stable_services() {
        let secret =
            credentials(&dbm("instance: {storage: {size: 1Gi}}\ndatabase: shop\nowner: shop"), &passwords())
                .unwrap();
        assert!(secret.metadata.owner_references.is_none(), "kept with the volumes");
        assert_eq!(Passwords::from_secret(&secret), Ok(passwords()));
        let data = secret.data.unwrap();
        let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
        assert_eq!(text("uri"), "postgresql://shop:o@shop-db-rw.customer-a.svc:5432/shop");
        assert_eq!(text("ro-uri"), "postgresql://shop:o@shop-db-ro.customer-a.svc:5432/shop");
    }

    #[test]
    fn member_pods_meet_the_restricted_profile() {
        let pod =
            member_pod(&dbm("instance: {storage: {size: 1Gi}}"), "shop-db-1", "hostwright:0.1").unwrap();
        let spec = pod.spec.unwrap();
        assert_eq!(spec.security_context.as_ref().unwrap().run_as_non_root, Some(true));
        for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_string()][..]));
        }
    }
}

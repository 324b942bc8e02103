//! DatabaseMirror → the PostgreSQL side of a replicated store: its
//! [`Blueprint`] (the members' engine and template), Services `<name>-rw`
//! and `<name>-ro`, the PostgreSQL configuration and the credentials Secret.
//! Pods, volumes, budgets and the agents' RBAC come from [`super::members`].

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;

use super::members::{self, Blueprint, Engine};
use super::webcluster::secret_keys;
use super::{BuildError, controller_ref, namespace_of};
use crate::api::DatabaseMirror;
use crate::api::databasemirror::{MAX_MIRRORS, Replication, is_parameter_name, is_reserved_parameter};
use crate::contract::keys::credentials as credential_files;

/// `app.kubernetes.io/name` of database pods.
pub const APP_NAME: &str = "databasemirror";
const PORT: i32 = 5432;
const DATA_DIR: &str = "/var/lib/postgresql/data";

/// How PostgreSQL members run: the official image's `postgres` user (999),
/// and room for a fast shutdown's checkpoint.
const POSTGRES: Engine = Engine {
    name: "postgres",
    container: "postgres",
    port: PORT,
    data_dir: DATA_DIR,
    run_dir: "/var/run/postgresql",
    uid: 999,
    grace_seconds: 60,
};

/// Secrets a DatabaseMirror owns, generated once by the reconciler.
#[derive(Clone, PartialEq, Eq)]
pub struct Passwords {
    /// Password of the owner role the web tier connects as.
    pub owner: String,
    /// Password of the `replication` role mirrors stream with.
    pub replication: String,
    /// Password of the `postgres` superuser (used by the agents only).
    pub superuser: String,
}

// Passwords print redacted: a log line or an error never carries one.
impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passwords { <redacted> }")
    }
}

impl Passwords {
    /// The passwords kept in the members' Secret (or, for a store made
    /// before it existed, the credentials Secret that then held them all),
    /// or the first key missing from it.
    pub fn from_secret(secret: &Secret) -> Result<Self, &'static str> {
        let data = secret.data.clone().unwrap_or_default();
        let get = |key: &'static str| {
            data.get(key)
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .filter(|v| !v.is_empty())
                .ok_or(key)
        };
        Ok(Self {
            owner: get(credential_files::APP_PASSWORD)?,
            replication: get(credential_files::REPLICATION_PASSWORD)?,
            superuser: get(credential_files::SUPERUSER_PASSWORD)?,
        })
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
    members::member_names(&dbm.name_any(), dbm.spec.mirrors.max(0) + 1)
}

/// Name of the Secret the web tier reads (`uri`, `ro-uri`, `ca.crt`, …):
/// the application's user alone.
pub fn credentials_name(dbm: &DatabaseMirror) -> String {
    format!("{}-credentials", dbm.name_any())
}

/// Name of the members' own Secret: every password, the superuser's and
/// the replication user's among them. Only member pods mount it.
pub fn agent_credentials_name(dbm: &DatabaseMirror) -> String {
    format!("{}-agent", dbm.name_any())
}

fn config_name(dbm: &DatabaseMirror) -> String {
    format!("{}-postgresql", dbm.name_any())
}

/// The members' engine, identity and the one instance template. Refuses
/// parameters that cannot be written into postgresql.conf (see
/// [`postgresql_conf`]), so such an object fails alone, with the reason.
pub fn blueprint(dbm: &DatabaseMirror) -> Result<Blueprint, BuildError> {
    let settings = postgresql_conf(dbm)?;
    let template = &dbm.spec.instance;
    Ok(Blueprint {
        app: APP_NAME,
        component: "database",
        mirror_word: "mirror",
        name: dbm.name_any(),
        namespace: namespace_of(dbm)?,
        owner: controller_ref(dbm)?,
        members: member_names(dbm),
        engine: POSTGRES,
        image: template.image.clone(),
        resources: template.resources.clone(),
        storage: Some(template.storage.clone()),
        credentials_secret: agent_credentials_name(dbm),
        service_names: vec![format!("{}-rw", dbm.name_any()), format!("{}-ro", dbm.name_any())],
        tls_issuer: dbm.spec.tls.as_ref().and_then(|t| t.issuer_ref.clone()),
        secret_mounts: archive_mounts(dbm).into_iter().chain(recovery_mounts(dbm)).collect(),
        config_map: config_name(dbm),
        agent_args: [
            format!("--database-mirror={}", dbm.name_any()),
            format!("--data-dir={DATA_DIR}/pgdata"),
            format!("--config={}/{}", members::CONFIG_DIR, settings_key(&settings)),
        ]
        .into_iter()
        .chain(archive_args(dbm))
        .chain(recovery_args(dbm))
        .collect(),
        settings_key: settings_key(&settings),
        template_hash: template_hash(dbm),
        restart_request: members::restart_request(&dbm.metadata),
    })
}

/// Where member pods find the backup object store's keys and CA.
pub const BACKUP_CREDENTIALS_DIR: &str = "/etc/hostwright/backup-credentials";
pub const BACKUP_CA_DIR: &str = "/etc/hostwright/backup-ca";

/// The key prefix of `dbm`'s backups: `spec.backup.objectStore.path`, or
/// `<namespace>/<name>`.
pub fn backup_prefix(dbm: &DatabaseMirror, store: &crate::api::backup::ObjectStore) -> String {
    let default = format!("{}/{}", dbm.namespace().unwrap_or_default(), dbm.name_any());
    store.path.clone().unwrap_or(default).trim_matches('/').to_string()
}

/// How member pods reach one object store: the agent's flags for it and
/// where its Secrets are mounted.
struct StoreUse {
    /// `--<flag>-endpoint`, `--<flag>-bucket`, ...
    flag: &'static str,
    credentials_volume: &'static str,
    credentials_dir: &'static str,
    ca_volume: &'static str,
    ca_dir: &'static str,
}

/// The store every member archives to.
const ARCHIVE: StoreUse = StoreUse {
    flag: "archive",
    credentials_volume: "backup-credentials",
    credentials_dir: BACKUP_CREDENTIALS_DIR,
    ca_volume: "backup-ca",
    ca_dir: BACKUP_CA_DIR,
};

/// Where the recovery source's keys and CA are mounted.
pub const RECOVERY_CREDENTIALS_DIR: &str = "/etc/hostwright/recovery-credentials";
pub const RECOVERY_CA_DIR: &str = "/etc/hostwright/recovery-ca";

/// The store the first primary is recovered from.
const RECOVERY: StoreUse = StoreUse {
    flag: "recovery",
    credentials_volume: "recovery-credentials",
    credentials_dir: RECOVERY_CREDENTIALS_DIR,
    ca_volume: "recovery-ca",
    ca_dir: RECOVERY_CA_DIR,
};

impl StoreUse {
    /// The agent's arguments for `store` under `prefix`.
    fn args(&self, store: &crate::api::backup::ObjectStore, prefix: &str) -> Vec<String> {
        let flag = self.flag;
        let mut args = vec![
            format!("--{flag}-endpoint={}", store.endpoint),
            format!("--{flag}-bucket={}", store.bucket),
            format!("--{flag}-prefix={prefix}"),
            format!("--{flag}-region={}", store.region),
            format!("--{flag}-credentials-dir={}", self.credentials_dir),
        ];
        if store.ca.is_some() {
            args.push(format!("--{flag}-ca-file={}/ca.crt", self.ca_dir));
        }
        args
    }

    /// `store`'s Secrets, mounted into member pods.
    fn mounts(&self, store: &crate::api::backup::ObjectStore) -> Vec<members::SecretMount> {
        let credentials = members::SecretMount {
            volume: self.credentials_volume,
            secret: store.credentials.secret_name.clone(),
            path: self.credentials_dir,
        };
        let ca = store.ca.as_ref().map(|ca| members::SecretMount {
            volume: self.ca_volume,
            secret: ca.secret_name.clone(),
            path: self.ca_dir,
        });
        std::iter::once(credentials).chain(ca).collect()
    }
}

/// The agent's archiving arguments (none without `spec.backup`): every
/// member archives (see `agent::archive`).
fn archive_args(dbm: &DatabaseMirror) -> Vec<String> {
    let Some(backup) = &dbm.spec.backup else { return Vec::new() };
    let store = &backup.object_store;
    let mut args = ARCHIVE.args(store, &backup_prefix(dbm, store));
    if let Some(bytes) = max_pending_wal(dbm, backup) {
        args.push(format!("--archive-max-pending-bytes={bytes}"));
    }
    args
}

/// The most unarchived WAL a member keeps: `maxPendingWal`, or half the
/// volume (None when neither can be read: PostgreSQL keeps it all).
fn max_pending_wal(dbm: &DatabaseMirror, backup: &crate::api::backup::BackupSpec) -> Option<u128> {
    use crate::resources::quantity::bytes;
    match &backup.max_pending_wal {
        Some(limit) => bytes(limit),
        None => bytes(&dbm.spec.instance.storage.size).map(|b| b / 2),
    }
}

/// The backup store's Secrets, mounted into member pods.
fn archive_mounts(dbm: &DatabaseMirror) -> Vec<members::SecretMount> {
    dbm.spec.backup.as_ref().map(|b| ARCHIVE.mounts(&b.object_store)).unwrap_or_default()
}

/// The agent's recovery arguments (none without `bootstrap.recovery`): the
/// member that makes the first primary restores it from the source.
fn recovery_args(dbm: &DatabaseMirror) -> Vec<String> {
    let Some(bootstrap) = &dbm.spec.bootstrap else { return Vec::new() };
    let recovery = &bootstrap.recovery;
    let prefix = recovery.source.path.as_deref().unwrap_or_default().trim_matches('/');
    let mut args = RECOVERY.args(&recovery.source, prefix);
    if let Some(target) = &recovery.target_time {
        args.push(format!("--recovery-target-time={}", target.0));
    }
    args
}

/// The recovery source's Secrets, mounted into member pods.
fn recovery_mounts(dbm: &DatabaseMirror) -> Vec<members::SecretMount> {
    dbm.spec.bootstrap.as_ref().map(|b| RECOVERY.mounts(&b.recovery.source)).unwrap_or_default()
}

/// Build the shared children of `dbm` (the credentials Secret is built on
/// its own by [`credentials`]: its passwords are generated only once).
pub fn build(dbm: &DatabaseMirror) -> Result<DatabaseMirrorChildren, BuildError> {
    Ok(children(dbm, &blueprint(dbm)?))
}

/// [`build`] from the blueprint the reconciler already has.
pub fn children(dbm: &DatabaseMirror, blueprint: &Blueprint) -> DatabaseMirrorChildren {
    let [primary_budget, mirror_budget] = blueprint.budgets();
    // `blueprint` refused parameters that cannot be rendered, so this is the
    // full file; a caller that skipped it gets the managed settings alone,
    // never a smuggled line.
    let conf = postgresql_conf(dbm).unwrap_or_else(|_| render_conf(managed_settings(dbm)));
    let key = settings_key(&conf);
    DatabaseMirrorChildren {
        read_write: blueprint.service(format!("{}-rw", dbm.name_any()), "primary"),
        read_only: blueprint.service(format!("{}-ro", dbm.name_any()), "mirror"),
        primary_budget,
        mirror_budget,
        config: ConfigMap {
            metadata: blueprint.metadata(config_name(dbm)),
            data: Some(BTreeMap::from([(key, conf)])),
            ..ConfigMap::default()
        },
    }
}

/// PostgreSQL 15's settings that only a restart applies (context
/// `postmaster`, from `postgres --describe-config`). A change to any of them,
/// or to a setting of an extension (`name.setting`, which PostgreSQL cannot
/// describe before the extension loads), rolls the members; every other
/// change is loaded with a reload.
pub const RESTART_SETTINGS: &[&str] = &[
    "archive_mode",
    "autovacuum_freeze_max_age",
    "autovacuum_max_workers",
    "autovacuum_multixact_freeze_max_age",
    "bonjour",
    "bonjour_name",
    "cluster_name",
    "data_directory",
    "data_sync_retry",
    "dynamic_shared_memory_type",
    "event_source",
    "external_pid_file",
    "hba_file",
    "hot_standby",
    "huge_page_size",
    "huge_pages",
    "ident_file",
    "jit_provider",
    "listen_addresses",
    "logging_collector",
    "max_connections",
    "max_files_per_process",
    "max_locks_per_transaction",
    "max_logical_replication_workers",
    "max_pred_locks_per_transaction",
    "max_prepared_transactions",
    "max_replication_slots",
    "max_wal_senders",
    "max_worker_processes",
    "min_dynamic_shared_memory",
    "old_snapshot_threshold",
    "port",
    "recovery_target",
    "recovery_target_action",
    "recovery_target_inclusive",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_timeline",
    "recovery_target_xid",
    "shared_buffers",
    "shared_memory_type",
    "shared_preload_libraries",
    "superuser_reserved_connections",
    "track_activity_query_size",
    "track_commit_timestamp",
    "unix_socket_directories",
    "unix_socket_group",
    "unix_socket_permissions",
    "wal_buffers",
    "wal_decode_buffer_size",
    "wal_level",
    "wal_log_hints",
];

/// Only a restart applies `name` (see [`RESTART_SETTINGS`]).
pub fn needs_restart(name: &str) -> bool {
    name.contains('.') || RESTART_SETTINGS.contains(&name)
}

/// The ConfigMap key of a rendered settings text.
fn settings_key(conf: &str) -> String {
    members::settings_key("postgresql", conf)
}

/// `postgresql.conf` settings of every member: the user's parameters, then
/// the ones replication and failover rely on (the API refuses user values
/// for those). Per-role settings (`primary_conninfo`) are the agent's.
///
/// Every user value is written as a quoted string ([`quote_conf_value`]),
/// which PostgreSQL accepts for settings of every type, so no value can end
/// its line or start another setting. Names are lower-cased, as PostgreSQL
/// reads them, so a managed setting always overrides a user's spelling of it.
pub fn postgresql_conf(dbm: &DatabaseMirror) -> Result<String, BuildError> {
    check_parameters(dbm)?;
    let mut settings: BTreeMap<String, String> = dbm
        .spec
        .instance
        .parameters
        .iter()
        .map(|(key, value)| (key.to_ascii_lowercase(), quote_conf_value(value)))
        .collect();
    settings.extend(managed_settings(dbm));
    Ok(render_conf(settings))
}

/// The settings replication and failover rely on, as postgresql.conf values.
fn managed_settings(dbm: &DatabaseMirror) -> BTreeMap<String, String> {
    // Every member there can ever be is listed, the primary included (it is
    // never its own standby), so the list stays right when a mirror is
    // promoted, and adding or removing a mirror changes no member's settings.
    let most = members::member_names(&dbm.name_any(), MAX_MIRRORS + 1);
    let members: Vec<String> = most.iter().map(|m| format!("\"{}\"", m.replace('-', "_"))).collect();
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
    managed.into_iter().map(|(key, value)| (key.to_string(), value)).collect()
}

fn render_conf(settings: BTreeMap<String, String>) -> String {
    let mut out = String::from("# Rendered by hostwright from the DatabaseMirror's instance template.\n");
    for (key, value) in settings {
        out.push_str(&format!("{key} = {value}\n"));
    }
    out
}

/// A postgresql.conf string literal: quotes doubled and backslashes escaped
/// (PostgreSQL reads `\\` as one backslash and `\n` as a newline inside
/// quotes). Control characters are refused before this, not escaped.
pub fn quote_conf_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Every parameter of `dbm` can be written into postgresql.conf as itself:
/// its name is a setting name and not one the operator manages, and neither
/// holds a control character. The API refuses all of these already; this is
/// the same check where the file is written, for objects stored before the
/// schema did.
fn check_parameters(dbm: &DatabaseMirror) -> Result<(), BuildError> {
    for (key, value) in &dbm.spec.instance.parameters {
        let refuse = |reason| Err(BuildError::InvalidParameter { key: key.clone(), reason });
        if key.chars().any(char::is_control) || value.chars().any(char::is_control) {
            return refuse("a name or value holds a control character (newline, carriage return, NUL, …)");
        }
        if !is_parameter_name(&key.to_ascii_lowercase()) {
            return refuse("not a PostgreSQL setting name");
        }
        if is_reserved_parameter(key) {
            return refuse("a setting the operator manages for replication");
        }
    }
    Ok(())
}

/// The PostgreSQL major version an image's tag names (`postgres:15.4` → 15,
/// `…/postgres:16-alpine` → 16); None when the tag does not say (none,
/// `latest`, a digest alone).
pub fn postgres_major(image: &str) -> Option<u32> {
    let name = image.split('@').next()?;
    let last = name.rsplit('/').next()?;
    let (_, tag) = last.split_once(':')?;
    let digits: String = tag.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Why members running `running` may not be rolled onto the template's
/// image: a major version change, which streaming replication and
/// `pg_rewind` cannot cross.
pub fn major_change(dbm: &DatabaseMirror, running: &[String]) -> Option<String> {
    let wanted = postgres_major(&dbm.spec.instance.image)?;
    let old = running.iter().filter_map(|i| postgres_major(i)).find(|m| *m != wanted)?;
    Some(format!(
        "instance.image asks for PostgreSQL {wanted} but the members run PostgreSQL {old}: a major version \
         change needs pg_upgrade, which Hostwright does not do yet; set instance.image back to a {old}.x image \
         (minor versions roll as usual)"
    ))
}

/// The Secret the web tier reads: the application's user, its URLs and the
/// CA that signed the server's certificate. The URLs verify the server
/// (`sslmode=verify-full`) against the CA where a web pod finds it. Host
/// names are the stable Services, so a promotion changes nothing here.
pub fn credentials(dbm: &DatabaseMirror, blueprint: &Blueprint, password: &str, ca_pem: &str) -> Secret {
    let (name, ns) = (&blueprint.name, &blueprint.namespace);
    let (db, user) = (&dbm.spec.database, &dbm.spec.owner);
    let host = |suffix: &str| format!("{name}-{suffix}.{ns}.svc");
    let tls = format!("sslmode=verify-full&sslrootcert={}", secret_keys::DATABASE_CA_PATH);
    let uri = |suffix: &str| format!("postgresql://{user}:{password}@{}:{PORT}/{db}?{tls}", host(suffix));
    let data = secret_data([
        ("username", user.clone()),
        ("password", password.to_string()),
        ("database", db.clone()),
        ("host", host("rw")),
        ("ro-host", host("ro")),
        ("port", PORT.to_string()),
        ("sslmode", "verify-full".into()),
        (secret_keys::CA_CERT, ca_pem.to_string()),
        (secret_keys::DATABASE_URL, uri("rw")),
        (secret_keys::DATABASE_RO_URL, uri("ro")),
    ]);
    let metadata = blueprint.metadata(credentials_name(dbm));
    Secret { metadata, type_: Some("Opaque".into()), data: Some(data), ..Secret::default() }
}

/// The members' Secret: every password, generated once. The members' data
/// only opens with these: the Secret is kept with the volumes, and a
/// DatabaseMirror re-created over them adopts it.
pub fn agent_credentials(dbm: &DatabaseMirror, blueprint: &Blueprint, passwords: &Passwords) -> Secret {
    let data = secret_data([
        (credential_files::USERNAME, dbm.spec.owner.clone()),
        (credential_files::DATABASE, dbm.spec.database.clone()),
        (credential_files::APP_PASSWORD, passwords.owner.clone()),
        (credential_files::REPLICATION_PASSWORD, passwords.replication.clone()),
        (credential_files::SUPERUSER_PASSWORD, passwords.superuser.clone()),
    ]);
    let metadata = blueprint.kept_metadata(agent_credentials_name(dbm));
    Secret { metadata, type_: Some("Opaque".into()), data: Some(data), ..Secret::default() }
}

fn secret_data<K: ToString>(pairs: impl IntoIterator<Item = (K, String)>) -> BTreeMap<String, ByteString> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), ByteString(v.into_bytes()))).collect()
}

/// A short, stable hash of everything in the instance template that shapes a
/// member pod. Members carrying another hash were built from another template
/// (or changed by hand): the spec is no longer equal.
///
/// The volumes are not in it: a rollout replaces pods over the same
/// volumes, so a new size is an expansion of the volumes, not a rollout.
///
/// Only the settings a restart applies are in it: the others are loaded
/// into running members (see [`needs_restart`]).
pub fn template_hash(dbm: &DatabaseMirror) -> String {
    let t = &dbm.spec.instance;
    let restart_only: BTreeMap<&String, &String> =
        t.parameters.iter().filter(|(k, _)| needs_restart(&k.to_ascii_lowercase())).collect();
    let mut text =
        format!("{}|{}|{:?}", t.image, serde_json::to_string(&t.resources).unwrap_or_default(), restart_only);
    // Archiving is set up when the server starts (archive_mode needs a
    // restart), so a change of it rolls the members; no backup, no change
    // to the hash of a store made before backups existed.
    if let Some(backup) = &dbm.spec.backup {
        text.push_str(&format!("|{:?}", (archive_args(dbm), archive_mounts(dbm), &backup.object_store)));
    }
    // Set at creation only (the schema refuses a change).
    if dbm.spec.bootstrap.is_some() {
        text.push_str(&format!("|{:?}", (recovery_args(dbm), recovery_mounts(dbm))));
    }
    members::template_hash(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DatabaseMirrorSpec;
    use crate::resources::members::{MEMBER_LABEL, ROLE_LABEL};
    use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn member_pod(d: &DatabaseMirror, member: &str, image: &str) -> Result<Pod, BuildError> {
        Ok(blueprint(d)?.member_pod(member, image))
    }

    fn member_volume(d: &DatabaseMirror, member: &str) -> Option<PersistentVolumeClaim> {
        blueprint(d).unwrap().member_volume(member)
    }

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
    fn each_restart_request_is_a_new_revision_and_none_keeps_the_old_one() {
        let revision = |restart: Option<&str>| {
            let mut d = dbm("instance: {storage: {size: 1Gi}}");
            if let Some(value) = restart {
                d.annotations_mut().insert(members::RESTART_ANNOTATION.into(), value.into());
            }
            blueprint(&d).unwrap().revision("hostwright:0.1")
        };
        let never = revision(None);
        let before_restarts_existed = members::template_hash(&format!(
            "{}|hostwright:0.1",
            template_hash(&dbm("instance: {storage: {size: 1Gi}}"))
        ));
        assert_eq!(never, before_restarts_existed, "no request, no roll on upgrade");
        let first = revision(Some("2026-11-30T13:00:00Z"));
        assert_ne!(first, never);
        assert_ne!(first, revision(Some("2026-11-30T14:00:00Z")));
        assert_eq!(first, revision(Some("2026-11-30T13:00:00Z")), "the same request, the same revision");
    }

    #[test]
    fn services_route_by_role_and_budgets_protect_the_primary() {
        let c = build(&dbm("instance: {storage: {size: 1Gi}}")).unwrap();
        assert_eq!(c.read_write.metadata.name.as_deref(), Some("shop-db-rw"));
        assert_eq!(c.read_write.spec.as_ref().unwrap().selector.as_ref().unwrap()[ROLE_LABEL], "primary");
        assert_eq!(c.read_only.spec.as_ref().unwrap().selector.as_ref().unwrap()[ROLE_LABEL], "mirror");
        assert_eq!(c.primary_budget.spec.unwrap().min_available, Some(IntOrString::Int(1)));
        assert_eq!(
            c.mirror_budget.spec.unwrap().min_available,
            Some(IntOrString::Int(0)),
            "one mirror may go"
        );
        let three = build(&dbm("instance: {storage: {size: 1Gi}}\nmirrors: 3")).unwrap();
        assert_eq!(three.mirror_budget.spec.unwrap().min_available, Some(IntOrString::Int(2)));
    }

    #[test]
    fn each_settings_text_has_a_key_of_its_own_and_the_volume_size_rolls_nothing() {
        let a = dbm("instance: {storage: {size: 1Gi}, parameters: {work_mem: 4MB}}");
        let b = dbm("instance: {storage: {size: 1Gi}, parameters: {work_mem: 8MB}}");
        let key = |d: &DatabaseMirror| {
            children(d, &blueprint(d).unwrap()).config.data.unwrap().into_keys().next().unwrap()
        };
        assert_ne!(key(&a), key(&b));
        assert!(key(&a).starts_with("postgresql-") && key(&a).ends_with(".conf"), "{}", key(&a));
        let arg = format!("--config={}/{}", members::CONFIG_DIR, key(&a));
        assert!(blueprint(&a).unwrap().agent_args.contains(&arg));
        let bigger = dbm("instance: {storage: {size: 5Gi}, parameters: {work_mem: 4MB}}");
        assert_eq!(template_hash(&a), template_hash(&bigger), "a new size expands volumes, it does not roll");
        assert_eq!(template_hash(&a), template_hash(&b), "work_mem is reloaded, not rolled");
        let restart =
            dbm("instance: {storage: {size: 1Gi}, parameters: {work_mem: 4MB, max_connections: '200'}}");
        assert_ne!(template_hash(&a), template_hash(&restart), "max_connections needs a restart");
        let extension = dbm(
            "instance: {storage: {size: 1Gi}, parameters: {work_mem: 4MB, pg_stat_statements.max: '500'}}",
        );
        assert_ne!(
            template_hash(&a),
            template_hash(&extension),
            "an extension's setting is taken to need one"
        );
        assert_eq!(blueprint(&a).unwrap().settings_key, key(&a));
    }

    #[test]
    fn a_major_version_change_is_refused_and_a_minor_one_is_not() {
        assert_eq!(postgres_major("postgres:15.4"), Some(15));
        assert_eq!(postgres_major("registry.local:5000/postgres:16-alpine"), Some(16));
        assert_eq!(postgres_major("postgres:15@sha256:abc"), Some(15));
        assert_eq!(postgres_major("postgres@sha256:abc"), None);
        assert_eq!(postgres_major("postgres:latest"), None);
        let to_16 = dbm("instance: {image: 'postgres:16.1', storage: {size: 1Gi}}");
        let why = major_change(&to_16, &["postgres:15.4".into()]).unwrap();
        assert!(why.contains("PostgreSQL 16") && why.contains("PostgreSQL 15"), "{why}");
        let minor = dbm("instance: {image: 'postgres:15.5', storage: {size: 1Gi}}");
        assert_eq!(major_change(&minor, &["postgres:15.4".into()]), None);
    }

    #[test]
    fn sync_replication_waits_for_any_one_mirror() {
        let conf = postgresql_conf(&dbm(
            "instance: {storage: {size: 1Gi}, parameters: {shared_buffers: 512MB}}\nmirrors: 2\nreplication: sync",
        ))
        .unwrap();
        let every_member: Vec<String> = (1..=9).map(|i| format!("\"shop_db_{i}\"")).collect();
        let line = format!("synchronous_standby_names = 'ANY 1 ({})'", every_member.join(", "));
        assert!(conf.contains(&line), "{conf}");
        let grown = dbm(
            "instance: {storage: {size: 1Gi}, parameters: {shared_buffers: 512MB}}\nmirrors: 4\nreplication: sync",
        );
        assert_eq!(postgresql_conf(&grown).unwrap(), conf, "a new mirror changes no member's settings");
        assert!(conf.contains("synchronous_commit = on"));
        assert!(conf.contains("shared_buffers = '512MB'"));
        let async_conf = postgresql_conf(&dbm("instance: {storage: {size: 1Gi}}")).unwrap();
        assert!(async_conf.contains("synchronous_standby_names = ''"));
    }

    /// A DatabaseMirror whose parameters are exactly `parameters` (the YAML
    /// reader would not let every control character through).
    fn with_parameters(parameters: &[(&str, &str)]) -> DatabaseMirror {
        let mut d = dbm("instance: {storage: {size: 1Gi}}");
        d.spec.instance.parameters = parameters.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        d
    }

    /// The settings lines of a rendered postgresql.conf, comments left out.
    fn setting_lines(conf: &str) -> Vec<&str> {
        conf.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn every_user_value_is_one_quoted_string_of_any_type() {
        let conf = postgresql_conf(&with_parameters(&[
            ("shared_buffers", "512MB"),
            ("max_connections", "200"),
            ("jit", "off"),
            ("search_path", "\"$user\", public"),
        ]))
        .unwrap();
        for line in ["shared_buffers = '512MB'", "max_connections = '200'", "jit = 'off'"] {
            assert!(setting_lines(&conf).contains(&line), "{line} in\n{conf}");
        }
        assert!(conf.contains("search_path = '\"$user\", public'\n"), "{conf}");
    }

    #[test]
    fn an_already_quoted_value_is_quoted_again_safely() {
        let conf = postgresql_conf(&with_parameters(&[("application_name", "'x'")])).unwrap();
        assert!(setting_lines(&conf).contains(&"application_name = '''x'''"), "{conf}");
    }

    #[test]
    fn quotes_are_doubled_and_backslashes_escaped() {
        assert_eq!(quote_conf_value("it's"), "'it''s'");
        assert_eq!(quote_conf_value(r"C:\dir\"), r"'C:\\dir\\'");
        // A trailing backslash cannot escape the closing quote.
        let conf = postgresql_conf(&with_parameters(&[("log_line_prefix", r"x\' ; port = 1")])).unwrap();
        assert!(setting_lines(&conf).contains(&r"log_line_prefix = 'x\\'' ; port = 1'"), "{conf}");
        assert_eq!(setting_lines(&conf).iter().filter(|l| l.starts_with("port")).count(), 1);
    }

    #[test]
    fn a_newline_in_a_value_is_refused() {
        let d = with_parameters(&[("work_mem", "64MB\nsynchronous_commit = off")]);
        let err = postgresql_conf(&d).unwrap_err();
        assert!(matches!(&err, BuildError::InvalidParameter { key, .. } if key == "work_mem"), "{err}");
        assert!(err.to_string().contains("control character"), "{err}");
        assert!(blueprint(&d).is_err(), "the reconciler stops at the blueprint, for this object only");
    }

    #[test]
    fn a_quote_then_newline_cannot_smuggle_a_reserved_setting() {
        let d = with_parameters(&[("application_name", "'x'\nsynchronous_commit = off")]);
        assert!(matches!(postgresql_conf(&d), Err(BuildError::InvalidParameter { .. })));
        // Even a caller that skips the check gets the managed settings alone.
        let b = blueprint(&dbm("instance: {storage: {size: 1Gi}}")).unwrap();
        let conf = children(&d, &b).config.data.unwrap().into_values().next().unwrap();
        assert!(!conf.contains("synchronous_commit = off"), "{conf}");
        assert!(conf.contains("synchronous_commit = local"), "{conf}");
        assert!(!conf.contains("application_name"), "{conf}");
    }

    #[test]
    fn control_characters_in_names_and_odd_names_are_refused() {
        for key in ["work_mem\n", "a\rb", "a\0", "port = 1 #", "1abc", "a.b.c", ""] {
            let err = postgresql_conf(&with_parameters(&[(key, "1")])).unwrap_err();
            assert!(matches!(err, BuildError::InvalidParameter { .. }), "{key:?}");
        }
        for value in ["a\rb", "a\0b", "a\tb", "\u{7f}", "\u{85}"] {
            assert!(postgresql_conf(&with_parameters(&[("work_mem", value)])).is_err(), "{value:?}");
        }
    }

    #[test]
    fn an_upper_case_reserved_name_is_refused_and_other_names_are_lower_cased() {
        for key in ["WAL_LEVEL", "Primary_Conninfo", "port", "Include"] {
            let err = postgresql_conf(&with_parameters(&[(key, "x")])).unwrap_err();
            assert!(err.to_string().contains("manages for replication"), "{key}: {err}");
        }
        // PostgreSQL reads names case-insensitively; the managed value wins.
        let conf =
            postgresql_conf(&with_parameters(&[("Max_Wal_Senders", "99"), ("Work_Mem", "8MB")])).unwrap();
        assert!(setting_lines(&conf).contains(&"max_wal_senders = 10"), "{conf}");
        assert!(setting_lines(&conf).contains(&"work_mem = '8MB'"), "{conf}");
        assert!(!conf.contains("99"), "{conf}");
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
    fn credentials_point_at_the_stable_services_and_verify_them() {
        let d = dbm("instance: {storage: {size: 1Gi}}\ndatabase: shop\nowner: shop");
        let b = blueprint(&d).unwrap();
        let secret = credentials(&d, &b, "o", "CA PEM");
        assert!(secret.metadata.owner_references.is_some(), "rebuilt from the members' Secret: owned");
        let data = secret.data.unwrap();
        let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
        let tls = "sslmode=verify-full&sslrootcert=/etc/hostwright/database/ca.crt";
        assert_eq!(text("uri"), format!("postgresql://shop:o@shop-db-rw.customer-a.svc:5432/shop?{tls}"));
        assert_eq!(text("ro-uri"), format!("postgresql://shop:o@shop-db-ro.customer-a.svc:5432/shop?{tls}"));
        assert_eq!(text("ca.crt"), "CA PEM");
        for key in ["replication-password", "superuser-password"] {
            assert!(!data.contains_key(key), "the application's Secret holds no {key}");
        }
    }

    #[test]
    fn the_members_secret_holds_every_password_and_stays_with_the_data() {
        let d = dbm("instance: {storage: {size: 1Gi}}\ndatabase: shop\nowner: shop");
        let secret = agent_credentials(&d, &blueprint(&d).unwrap(), &passwords());
        assert_eq!(secret.metadata.name.as_deref(), Some("shop-db-agent"));
        assert!(secret.metadata.owner_references.is_none(), "kept with the volumes");
        assert_eq!(Passwords::from_secret(&secret), Ok(passwords()));
        assert_eq!(format!("{:?}", passwords()), "Passwords { <redacted> }");
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

    #[test]
    fn the_kubelet_probes_the_agent_as_the_contract_says() {
        use crate::contract::probes;
        let pod =
            member_pod(&dbm("instance: {storage: {size: 1Gi}}\nmirrors: 1"), "shop-db-1", "hostwright:0.1")
                .unwrap();
        let server = &pod.spec.unwrap().containers[0];
        let agent_port = server.ports.iter().flatten().find(|p| p.name.as_deref() == Some("agent")).unwrap();
        assert_eq!(agent_port.container_port, i32::from(probes::PORT));
        let live = server.liveness_probe.as_ref().unwrap();
        let get = live.http_get.as_ref().unwrap();
        assert_eq!(
            (get.path.as_deref(), &get.port),
            (Some(probes::LIVENESS_PATH), &IntOrString::String("agent".into()))
        );
        assert_eq!(live.period_seconds, Some(probes::PERIOD_SECONDS));
        assert_eq!(live.failure_threshold, Some(probes::FAILURE_THRESHOLD));
        // A stuck agent cannot stop its server cleanly: a short grace, not the pod's.
        assert_eq!(live.termination_grace_period_seconds, Some(probes::LIVENESS_GRACE_SECONDS));
        let ready = server.readiness_probe.as_ref().unwrap();
        assert_eq!(ready.http_get.as_ref().unwrap().path.as_deref(), Some(probes::READINESS_PATH));
        assert_eq!(ready.period_seconds, Some(probes::READINESS_PERIOD_SECONDS));
    }
}

//! SessionStore → the Redis side of a replicated store: its [`Blueprint`],
//! Services `<name>` (primary) and `<name>-replicas`, the Redis settings and
//! the connection Secret `<name>-connection` the web tier and the agents read.
//! Pods, volumes, budgets and the agents' RBAC come from [`super::members`].

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::ResourceExt;

use super::members::{self, Blueprint, Engine};
use super::webcluster::secret_keys;
use super::{BuildError, controller_ref, namespace_of};
use crate::api::SessionStore;
use crate::api::sessionstore::Durability;
use crate::contract::keys::credentials as credential_files;

/// `app.kubernetes.io/name` of session store pods.
pub const APP_NAME: &str = "sessionstore";
pub const PORT: i32 = 6379;
const DATA_DIR: &str = "/data";
/// Keys of the connection Secret.
pub mod keys {
    pub const URL: &str = super::secret_keys::SESSION_URL;
    pub const HOST: &str = "host";
    pub const PORT: &str = "port";
    pub const PASSWORD: &str = "password";
    pub const USERNAME: &str = "username";
}

/// How Redis members run: the official image's `redis` user (999).
const REDIS: Engine = Engine {
    name: "redis",
    container: "redis",
    port: PORT,
    data_dir: DATA_DIR,
    run_dir: "/var/run/redis",
    uid: 999,
    grace_seconds: 30,
};

/// Member names: `<name>-1` … `<name>-<replicas + 1>`.
pub fn member_names(store: &SessionStore) -> Vec<String> {
    members::member_names(&store.name_any(), store.spec.replicas.max(0) + 1)
}

/// The Secret with the URL, host, port and password: stable across
/// promotions, since the host is the primary's Service.
pub fn connection_name(store: &SessionStore) -> String {
    format!("{}-connection", store.name_any())
}

/// Name of the members' own Secret: the passwords of the ACL users (the
/// application's, the replicas', the agent's). Only member pods mount it.
pub fn agent_credentials_name(store: &SessionStore) -> String {
    format!("{}-agent", store.name_any())
}

/// Passwords of a deployed store's ACL users, generated once.
#[derive(Clone, PartialEq, Eq)]
pub struct Passwords {
    /// User `app`: data commands only (the web tier).
    pub app: String,
    /// User `replicator`: what replicas sync as.
    pub replication: String,
    /// User `hostwright`: the agent, over a unix socket in its own pod.
    pub admin: String,
}

// Passwords print redacted: a log line or an error never carries one.
impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passwords { <redacted> }")
    }
}

impl Passwords {
    /// The passwords in the members' Secret, or the first key it lacks.
    pub fn from_secret(secret: &Secret) -> Result<Self, &'static str> {
        let get = |key: &'static str| secret_text(secret, key).ok_or(key);
        Ok(Self {
            app: get(credential_files::APP_PASSWORD)?,
            replication: get(credential_files::REPLICATION_PASSWORD)?,
            admin: get(credential_files::SUPERUSER_PASSWORD)?,
        })
    }

    /// A store made before the members had a Secret of their own kept one
    /// password in its connection Secret: it stays the application's (the
    /// web tier has it), the others are new.
    /// A connection Secret of this version (it has the CA) is no such
    /// store's: its members' Secret was deleted, and new passwords would
    /// lock the agents out of their running servers, so none are made.
    pub fn adopt(connection: &Secret, generate: impl Fn() -> String) -> Option<Self> {
        if secret_text(connection, secret_keys::CA_CERT).is_some() {
            return None;
        }
        let app = secret_text(connection, keys::PASSWORD)?;
        Some(Self { app, replication: generate(), admin: generate() })
    }
}

fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    let value = secret.data.as_ref()?.get(key)?;
    String::from_utf8(value.0.clone()).ok().filter(|v| !v.is_empty())
}

/// The members' Secret. Kept with the volumes unless they go with the
/// object, like a DatabaseMirror's.
pub fn agent_credentials(store: &SessionStore, blueprint: &Blueprint, passwords: &Passwords) -> Secret {
    let data: BTreeMap<String, ByteString> = [
        (credential_files::APP_PASSWORD, &passwords.app),
        (credential_files::REPLICATION_PASSWORD, &passwords.replication),
        (credential_files::SUPERUSER_PASSWORD, &passwords.admin),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.clone().into_bytes())))
    .collect();
    let metadata = blueprint.kept_metadata(agent_credentials_name(store));
    Secret { metadata, type_: Some("Opaque".into()), data: Some(data), ..Secret::default() }
}

fn config_name(store: &SessionStore) -> String {
    format!("{}-redis", store.name_any())
}

/// The members' engine, identity and template.
pub fn blueprint(store: &SessionStore) -> Result<Blueprint, BuildError> {
    let spec = &store.spec;
    Ok(Blueprint {
        app: APP_NAME,
        component: "session-store",
        mirror_word: "replica",
        name: store.name_any(),
        namespace: namespace_of(store)?,
        owner: controller_ref(store)?,
        members: member_names(store),
        engine: REDIS,
        image: spec.image.clone(),
        resources: spec.resources.clone(),
        storage: spec.storage.clone(),
        credentials_secret: agent_credentials_name(store),
        service_names: vec![store.name_any(), format!("{}-replicas", store.name_any())],
        tls_issuer: store.spec.tls.as_ref().and_then(|t| t.issuer_ref.clone()),
        secret_mounts: Vec::new(),
        config_map: config_name(store),
        agent_args: vec![
            format!("--session-store={}", store.name_any()),
            format!("--data-dir={DATA_DIR}"),
            format!(
                "--config={}/{}",
                members::CONFIG_DIR,
                members::settings_key("redis", &redis_conf(store))
            ),
        ],
        settings_key: members::settings_key("redis", &redis_conf(store)),
        template_hash: template_hash(store),
        restart_request: members::restart_request(&store.metadata),
    })
}

/// The Services: `<name>` follows the primary (the connection Secret names
/// it, so promotions change nothing for clients), `<name>-replicas` the
/// replicas.
pub fn services(store: &SessionStore, blueprint: &Blueprint) -> [Service; 2] {
    [
        blueprint.service(store.name_any(), "primary"),
        blueprint.service(format!("{}-replicas", store.name_any()), "mirror"),
    ]
}

/// Settings of every member. The agent adds what is per member or secret
/// (address, `replicaof`, passwords).
pub fn redis_conf(store: &SessionStore) -> String {
    let mut out = String::from("# Rendered by hostwright from the SessionStore's spec.\n");
    if store.spec.storage.is_some() {
        // Every write reaches the volume within a second; no RDB snapshots
        // competing for the disk.
        out.push_str("appendonly yes\nappendfsync everysec\nsave \"\"\n");
    } else {
        out.push_str("appendonly no\nsave \"\"\n");
    }
    // Sessions are never evicted to make room: a full store refuses writes
    // (an error the site sees) instead of logging users out silently.
    out.push_str("maxmemory-policy noeviction\n");
    if store.spec.durability == Durability::Wait && store.spec.replicas > 0 {
        // A primary cut off from every replica stops taking writes within
        // 10 s, so a partitioned old primary cannot confirm what a promoted
        // replica will never see.
        out.push_str("min-replicas-to-write 1\nmin-replicas-max-lag 10\n");
    }
    out
}

/// The settings ConfigMap.
pub fn config(store: &SessionStore, blueprint: &Blueprint) -> ConfigMap {
    let conf = redis_conf(store);
    ConfigMap {
        metadata: blueprint.metadata(config_name(store)),
        data: Some(BTreeMap::from([(members::settings_key("redis", &conf), conf)])),
        ..ConfigMap::default()
    }
}

/// The connection Secret of a deployed store, what the web pods read: a
/// `rediss://` URL as the ACL user `app`, and the CA that signed the
/// server's certificate (a web pod finds it at
/// [`secret_keys::SESSION_STORE_CA_PATH`]). Nothing the members need.
pub fn connection(store: &SessionStore, blueprint: &Blueprint, password: &str, ca_pem: &str) -> Secret {
    let host = format!("{}.{}.svc", blueprint.name, blueprint.namespace);
    let app = crate::contract::keys::redis_users::APP;
    let data: BTreeMap<String, ByteString> = [
        (keys::URL, format!("rediss://{app}:{password}@{host}:{PORT}/0")),
        (keys::HOST, host.clone()),
        (keys::PORT, PORT.to_string()),
        (keys::USERNAME, app.to_string()),
        (keys::PASSWORD, password.to_string()),
        (secret_keys::CA_CERT, ca_pem.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect();
    let metadata = blueprint.metadata(connection_name(store));
    Secret { metadata, type_: Some("Opaque".into()), data: Some(data), ..Secret::default() }
}

/// The connection Secret from its parts (also what an external store is
/// published as).
pub fn connection_secret(
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    host: &str,
    port: i32,
    password: Option<&str>,
) -> Secret {
    let url = match password {
        Some(p) if !p.is_empty() => format!("redis://:{p}@{host}:{port}/0"),
        _ => format!("redis://{host}:{port}/0"),
    };
    let data: BTreeMap<String, ByteString> = [
        (keys::URL, url),
        (keys::HOST, host.to_string()),
        (keys::PORT, port.to_string()),
        (keys::PASSWORD, password.unwrap_or_default().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect();
    Secret { metadata, type_: Some("Opaque".into()), data: Some(data), ..Secret::default() }
}

/// Where an external store is, from its Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalEndpoint {
    pub host: String,
    pub port: u16,
    pub password: Option<String>,
}

/// Read an external store's Secret: `url` (`redis://[:password@]host[:port][/db]`),
/// or `host` and `port` with an optional `password`. The error says what is
/// missing or wrong.
pub fn external_endpoint(secret: &Secret) -> Result<ExternalEndpoint, String> {
    let data = secret.data.clone().unwrap_or_default();
    let text = |key: &str| {
        data.get(key).and_then(|v| String::from_utf8(v.0.clone()).ok()).map(|v| v.trim().to_string())
    };
    if let Some(url) = text(keys::URL).filter(|u| !u.is_empty()) {
        return parse_url(&url);
    }
    let host = text(keys::HOST).filter(|h| !h.is_empty());
    let port = text(keys::PORT).filter(|p| !p.is_empty());
    match (host, port) {
        (Some(host), Some(port)) => Ok(ExternalEndpoint {
            host,
            port: parse_port(&port)?,
            password: text(keys::PASSWORD).filter(|p| !p.is_empty()),
        }),
        (None, _) => Err("has neither url nor host (give url, or host and port)".into()),
        (Some(_), None) => Err("has host but no port".into()),
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    text.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("port {text:?} is not a TCP port"))
}

fn parse_url(url: &str) -> Result<ExternalEndpoint, String> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| "url must start with redis:// (rediss:// is not supported yet)".to_string())?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (credentials, address) = match authority.rsplit_once('@') {
        Some((c, a)) => (Some(c), a),
        None => (None, authority),
    };
    // `:password` or `user:password`; the user is not used (ACL users are not supported yet).
    let password =
        credentials.map(|c| c.rsplit_once(':').map_or(c, |(_, p)| p).to_string()).filter(|p| !p.is_empty());
    let (host, port) = match address.rsplit_once(':') {
        Some((h, p)) => (h, parse_port(p)?),
        None => (address, PORT as u16),
    };
    if host.is_empty() {
        return Err("url has no host".into());
    }
    Ok(ExternalEndpoint { host: host.to_string(), port, password })
}

/// Hash of what shapes a member pod (see [`members::template_hash`]):
/// whether members keep a volume, but not its size (a new size expands the
/// volumes; it does not roll the members).
pub fn template_hash(store: &SessionStore) -> String {
    let s = &store.spec;
    let text = format!(
        "{}|{}|{}|{}",
        s.image,
        serde_json::to_string(&s.resources).unwrap_or_default(),
        s.storage.is_some(),
        members::settings_key("redis", &redis_conf(store)),
    );
    members::template_hash(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SessionStoreSpec;
    use crate::resources::members::ROLE_LABEL;

    fn store(yaml: &str) -> SessionStore {
        let spec: SessionStoreSpec = serde_yaml::from_str(yaml).unwrap();
        let mut s = SessionStore::new("sessions", spec);
        s.metadata.namespace = Some("customer-a".into());
        s.metadata.uid = Some("uid-s".into());
        s
    }

    #[test]
    fn members_are_the_primary_plus_the_replicas() {
        assert_eq!(member_names(&store("replicas: 2")), ["sessions-1", "sessions-2", "sessions-3"]);
        assert_eq!(member_names(&store("replicas: 0")), ["sessions-1"]);
    }

    #[test]
    fn without_storage_members_keep_data_in_memory_and_an_empty_dir() {
        let b = blueprint(&store("{}")).unwrap();
        assert!(b.member_volume("sessions-1").is_none());
        let pod = b.member_pod("sessions-1", "hostwright:0.1");
        let data = pod.spec.unwrap().volumes.unwrap().into_iter().find(|v| v.name == "data").unwrap();
        assert!(data.empty_dir.is_some());
        assert!(redis_conf(&store("{}")).contains("appendonly no"));
    }

    #[test]
    fn storage_turns_on_the_append_only_file_on_a_kept_volume() {
        let s = store("storage: {size: 1Gi}");
        assert!(redis_conf(&s).contains("appendonly yes"));
        let volume = blueprint(&s).unwrap().member_volume("sessions-1").unwrap();
        assert!(volume.metadata.owner_references.is_none());
        let members = Passwords { app: "a".into(), replication: "r".into(), admin: "s".into() };
        assert!(agent_credentials(&s, &blueprint(&s).unwrap(), &members).metadata.owner_references.is_none());
    }

    #[test]
    fn wait_durability_stops_a_primary_cut_off_from_its_replicas() {
        assert!(redis_conf(&store("durability: wait")).contains("min-replicas-to-write 1"));
        assert!(!redis_conf(&store("durability: wait\nreplicas: 0")).contains("min-replicas-to-write"));
        assert!(!redis_conf(&store("{}")).contains("min-replicas-to-write"));
    }

    #[test]
    fn the_connection_names_the_primary_service_not_a_member() {
        let s = store("{}");
        let secret = connection(&s, &blueprint(&s).unwrap(), "s3cret", "CA PEM");
        assert!(secret.metadata.owner_references.is_some(), "rebuilt from the members' Secret: owned");
        let data = secret.data.unwrap();
        let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
        assert_eq!(text("url"), "rediss://app:s3cret@sessions.customer-a.svc:6379/0");
        assert_eq!(text("username"), "app");
        assert_eq!(text("ca.crt"), "CA PEM");
        assert_eq!(text("host"), "sessions.customer-a.svc");
        assert_eq!(text("port"), "6379");
        assert_eq!(text("password"), "s3cret");
    }

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                pairs.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn an_external_store_is_read_from_a_url_or_host_and_port() {
        let e = external_endpoint(&secret(&[("url", "redis://:pw@cache.example:6380/0")])).unwrap();
        assert_eq!(
            e,
            ExternalEndpoint { host: "cache.example".into(), port: 6380, password: Some("pw".into()) }
        );
        let e = external_endpoint(&secret(&[("url", "redis://cache.example")])).unwrap();
        assert_eq!((e.port, e.password), (6379, None));
        let e = external_endpoint(&secret(&[("host", "10.0.0.5"), ("port", "6379")])).unwrap();
        assert_eq!(e.host, "10.0.0.5");
    }

    #[test]
    fn an_external_secret_missing_a_key_says_which() {
        assert!(external_endpoint(&secret(&[])).unwrap_err().contains("neither url nor host"));
        assert!(external_endpoint(&secret(&[("host", "h")])).unwrap_err().contains("no port"));
        assert!(
            external_endpoint(&secret(&[("host", "h"), ("port", "x")]))
                .unwrap_err()
                .contains("not a TCP port")
        );
        assert!(external_endpoint(&secret(&[("url", "http://h")])).unwrap_err().contains("redis://"));
    }

    #[test]
    fn services_follow_the_role_labels() {
        let s = store("{}");
        let b = blueprint(&s).unwrap();
        let primary = b.service("sessions".into(), "primary");
        assert_eq!(primary.spec.unwrap().selector.unwrap()[ROLE_LABEL], "primary");
        let [_, replicas] = b.budgets();
        assert_eq!(replicas.metadata.name.as_deref(), Some("sessions-replica"));
    }
}

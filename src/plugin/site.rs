//! `kubectl hostwright site <name>`: the YAML of a new site in all three
//! kinds, wired together, for the user to edit and apply. Production: three
//! web servers that keep serving with two gone, sessions on a SessionStore
//! with a mirror that waits for it, a DatabaseMirror with one mirror in
//! sync. Staging (`--staging`): the same shape, smaller.
//!
//! Every object is built through its typed spec, so what is printed is
//! what the CRDs accept, and the names leave room for every child.

use serde_json::{Value, json};

use crate::api::names::is_allowed_name;
use crate::api::{DatabaseMirror, SessionStore, WebCluster, databasemirror, sessionstore, webcluster};

/// Why no YAML could be printed.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error(
        "{name:?} cannot name a site: it must be a DNS-1035 label (lower-case letters, digits and '-', a \
         letter first) of at most {max} characters, so that its stores <name>-sessions and <name>-db and \
         every object they create keep valid names"
    )]
    BadName { name: String, max: usize },
    #[error("the {kind} of the site does not fit its schema: {source}")]
    Spec {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing the site as YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// What the user chose for the new site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteShape {
    pub name: String,
    pub image: String,
    pub hosts: Vec<String>,
    pub staging: bool,
}

/// The suffixes of the stores' names.
const SESSIONS: &str = "-sessions";
const DATABASE: &str = "-db";

/// Longest site name whose three objects all keep valid names.
pub fn max_site_name() -> usize {
    [
        webcluster::MAX_NAME_LENGTH,
        sessionstore::MAX_NAME_LENGTH - SESSIONS.len(),
        databasemirror::MAX_NAME_LENGTH - DATABASE.len(),
    ]
    .into_iter()
    .min()
    .unwrap_or(0)
}

/// The site's three objects as one YAML stream: stores first, so the web
/// tier finds them when it is applied in one go.
pub fn manifests(shape: &SiteShape) -> Result<String, SiteError> {
    let max = max_site_name();
    if !is_allowed_name(&shape.name, max) {
        return Err(SiteError::BadName { name: shape.name.clone(), max });
    }
    let sessions = format!("{}{SESSIONS}", shape.name);
    let database = format!("{}{DATABASE}", shape.name);
    let session_store = SessionStore::new(&sessions, typed("SessionStore", session_spec(shape.staging))?);
    let database_mirror = DatabaseMirror::new(&database, typed("DatabaseMirror", database_spec(shape))?);
    let web_cluster =
        WebCluster::new(&shape.name, typed("WebCluster", web_spec(shape, &sessions, &database))?);
    let documents = [
        serde_yaml::to_string(&session_store)?,
        serde_yaml::to_string(&database_mirror)?,
        serde_yaml::to_string(&web_cluster)?,
    ];
    Ok(documents.join("---\n"))
}

fn typed<T: serde::de::DeserializeOwned>(kind: &'static str, spec: Value) -> Result<T, SiteError> {
    serde_json::from_value(spec).map_err(|source| SiteError::Spec { kind, source })
}

fn session_spec(staging: bool) -> Value {
    if staging {
        json!({"replicas": 1, "storage": {"size": "1Gi"}})
    } else {
        json!({
            "replicas": 2,
            "durability": "wait",
            "storage": {"size": "2Gi"},
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "256Mi"}},
        })
    }
}

fn database_spec(shape: &SiteShape) -> Value {
    let owner = shape.name.replace('-', "_");
    let (storage, resources) = if shape.staging {
        ("2Gi", json!({"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "512Mi"}}))
    } else {
        ("20Gi", json!({"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}))
    };
    json!({
        "instance": {"storage": {"size": storage}, "resources": resources},
        "mirrors": 1,
        "replication": if shape.staging { "async" } else { "sync" },
        "database": owner,
        "owner": owner,
    })
}

fn web_spec(shape: &SiteShape, sessions: &str, database: &str) -> Value {
    let mut spec = json!({
        "image": shape.image,
        "hosts": shape.hosts,
        "sessionStoreRef": {"name": sessions},
        "databaseRef": {"name": database},
    });
    let shape_of_tier = if shape.staging {
        json!({"replicas": 2, "tier": "staging"})
    } else {
        json!({"replicas": 3, "tolerate": 2, "tier": "production"})
    };
    if let (Some(spec), Value::Object(tier)) = (spec.as_object_mut(), shape_of_tier) {
        spec.extend(tier);
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(name: &str, staging: bool) -> SiteShape {
        SiteShape {
            name: name.into(),
            image: "nginxinc/nginx-unprivileged:1.27".into(),
            hosts: vec!["shop.example.com".into()],
            staging,
        }
    }

    fn parse(yaml: &str) -> (SessionStore, DatabaseMirror, WebCluster) {
        let docs: Vec<&str> = yaml.split("---\n").collect();
        assert_eq!(docs.len(), 3, "{yaml}");
        (
            serde_yaml::from_str(docs[0]).unwrap(),
            serde_yaml::from_str(docs[1]).unwrap(),
            serde_yaml::from_str(docs[2]).unwrap(),
        )
    }

    #[test]
    fn a_production_site_is_wired_and_survives_two_lost_servers() {
        let (sessions, db, web) = parse(&manifests(&shape("shop", false)).unwrap());
        assert_eq!(sessions.metadata.name.as_deref(), Some("shop-sessions"));
        assert_eq!(db.metadata.name.as_deref(), Some("shop-db"));
        assert_eq!(web.spec.session_store_ref.unwrap().name, "shop-sessions");
        assert_eq!(web.spec.database_ref.unwrap().name, "shop-db");
        assert_eq!((web.spec.replicas, web.spec.tolerate), (3, Some(2)));
        assert_eq!(sessions.spec.replicas, 2);
        assert_eq!(db.spec.mirrors, 1);
        assert_eq!(web.spec.hosts, vec!["shop.example.com"]);
    }

    #[test]
    fn staging_has_the_same_shape_smaller() {
        let (sessions, db, web) = parse(&manifests(&shape("shop-staging", true)).unwrap());
        assert_eq!(web.spec.tier, crate::api::webcluster::Tier::Staging);
        assert!(web.spec.replicas < 3);
        assert_eq!(sessions.spec.replicas, 1);
        assert_eq!(db.spec.mirrors, 1, "staging keeps a mirror: failover is rehearsed there");
        assert_eq!(db.spec.database, "shop_staging");
    }

    #[test]
    fn a_name_too_long_for_a_child_or_not_a_label_is_refused() {
        let longest = "a".repeat(max_site_name());
        assert!(manifests(&shape(&longest, false)).is_ok());
        let too_long = "a".repeat(max_site_name() + 1);
        assert!(matches!(manifests(&shape(&too_long, false)), Err(SiteError::BadName { .. })));
        assert!(matches!(manifests(&shape("Shop", false)), Err(SiteError::BadName { .. })));
        assert!(matches!(manifests(&shape("9shop", false)), Err(SiteError::BadName { .. })));
    }
}

//! Every child a maximum-length name produces fits Kubernetes' limits, and
//! one character more would not: each kind's `MAX_NAME_LENGTH` in
//! `crate::api` is exactly what its builders need, and its CRD rule says so.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResourceExt;
use serde::Serialize;
use serde_json::{Value, json};

use super::{databasemirror, sessionstore, webcluster};
use crate::api::names::{DNS_LABEL_MAX, is_allowed_name, is_dns1035_label, is_label_value};
use crate::api::{
    DatabaseMirror, DatabaseMirrorSpec, SessionStore, SessionStoreSpec, WebCluster, WebClusterSpec,
    databasemirror as dbm_api, sessionstore as sst_api, webcluster as wc_api,
};

/// A child as JSON, with its kind (Services have the strictest names).
type Child = (&'static str, Value);

fn child(kind: &'static str, object: &impl Serialize) -> Child {
    (kind, serde_json::to_value(object).unwrap())
}

/// A Lease the member's agent creates, named after the member (no builder:
/// the agent applies it under the member's name).
fn lease(member: &str) -> Child {
    ("Lease", json!({"metadata": {"name": member}}))
}

/// A valid-looking name of `len` characters: a letter first, DNS-1035.
fn name_of(len: usize) -> String {
    format!("s{}", "x".repeat(len - 1))
}

fn owned<K>(mut object: K, name: &str) -> K
where
    K: kube::Resource,
{
    let meta: &mut ObjectMeta = object.meta_mut();
    meta.name = Some(name.into());
    meta.namespace = Some("customer-a".into());
    meta.uid = Some("uid-1".into());
    object
}

fn database_children(name: &str) -> Vec<Child> {
    let spec: DatabaseMirrorSpec =
        serde_yaml::from_str("instance: {storage: {size: 1Gi}}\nmirrors: 8\nreplication: sync").unwrap();
    let d = owned(DatabaseMirror::new(name, spec), name);
    let blueprint = databasemirror::blueprint(&d).unwrap();
    let c = databasemirror::children(&d, &blueprint);
    let passwords =
        databasemirror::Passwords { owner: "o".into(), replication: "r".into(), superuser: "s".into() };
    let mut out = vec![
        child("Service", &c.read_write),
        child("Service", &c.read_only),
        child("PodDisruptionBudget", &c.primary_budget),
        child("PodDisruptionBudget", &c.mirror_budget),
        child("ConfigMap", &c.config),
        child("Secret", &databasemirror::credentials(&d, &blueprint, &passwords.owner, "ca")),
        child("Secret", &databasemirror::agent_credentials(&d, &blueprint, &passwords)),
        child("Secret", &blueprint.ca_secret(&ca())),
        child("Secret", &blueprint.tls_secret(&issued(), "ca")),
    ];
    out.extend(member_children(&blueprint));
    out
}

fn session_children(name: &str) -> Vec<Child> {
    let spec: SessionStoreSpec = serde_yaml::from_str("replicas: 8\nstorage: {size: 1Gi}").unwrap();
    let s = owned(SessionStore::new(name, spec), name);
    let blueprint = sessionstore::blueprint(&s).unwrap();
    let [primary, replicas] = sessionstore::services(&s, &blueprint);
    let [primary_budget, replica_budget] = blueprint.budgets();
    let mut out = vec![
        child("Service", &primary),
        child("Service", &replicas),
        child("PodDisruptionBudget", &primary_budget),
        child("PodDisruptionBudget", &replica_budget),
        child("ConfigMap", &sessionstore::config(&s, &blueprint)),
        child("Secret", &sessionstore::connection(&s, &blueprint, "pw", "ca")),
        child("Secret", &sessionstore::agent_credentials(&s, &blueprint, &session_passwords())),
        child("Secret", &blueprint.ca_secret(&ca())),
        child("Secret", &blueprint.tls_secret(&issued(), "ca")),
    ];
    out.extend(member_children(&blueprint));
    out
}

fn ca() -> crate::tls::Authority {
    crate::tls::Authority { cert_pem: "ca".into(), key_pem: "key".into() }
}

fn issued() -> crate::tls::Issued {
    crate::tls::Issued { cert_pem: "cert".into(), key_pem: "key".into() }
}

fn session_passwords() -> sessionstore::Passwords {
    sessionstore::Passwords { app: "a".into(), replication: "r".into(), admin: "s".into() }
}

/// Pods, volumes, Leases and the agents' RBAC of every member.
fn member_children(blueprint: &super::members::Blueprint) -> Vec<Child> {
    let (account, role, binding) = blueprint.agent_rbac();
    let mut out =
        vec![child("ServiceAccount", &account), child("Role", &role), child("RoleBinding", &binding)];
    assert_eq!(blueprint.members.len(), 9, "the most members a store can have");
    for member in &blueprint.members {
        out.push(child("Pod", &blueprint.member_pod(member, "hostwright:0.1")));
        out.push(child("PersistentVolumeClaim", &blueprint.member_volume(member).unwrap()));
        out.push(lease(member));
    }
    out
}

fn web_children(name: &str) -> Vec<Child> {
    let spec: WebClusterSpec = serde_yaml::from_str(
        "image: nginx:1.27\nautoscaling: {minReplicas: 2, maxReplicas: 6}\nhosts: [shop.example.com]",
    )
    .unwrap();
    let wc = owned(WebCluster::new(name, spec), name);
    let wiring = webcluster::Wiring {
        session_secret: Some("sessions-connection".into()),
        database_secret: Some("db-credentials".into()),
    };
    let c = webcluster::build(&wc, &wiring).unwrap();
    vec![
        child("Deployment", &c.deployment),
        child("Service", &c.service),
        child("PodDisruptionBudget", &c.pod_disruption_budget),
        child("HorizontalPodAutoscaler", &c.autoscaler.unwrap()),
        child("Ingress", &c.ingress.unwrap()),
    ]
}

/// Every label value anywhere in `value`: labels, selectors, pod templates.
fn label_values(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                let is_label_map = matches!(key.as_str(), "labels" | "matchLabels" | "selector");
                match inner {
                    Value::Object(labels) if is_label_map => {
                        out.extend(labels.values().filter_map(Value::as_str).map(str::to_string));
                        label_values(inner, out);
                    }
                    _ => label_values(inner, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| label_values(i, out)),
        _ => {}
    }
}

/// What is wrong with the children's names and label values, if anything.
fn problems(children: &[Child]) -> Vec<String> {
    let mut out = Vec::new();
    for (kind, object) in children {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        if name.len() > DNS_LABEL_MAX {
            out.push(format!("{kind} {name}: {} characters", name.len()));
        }
        // Services must be DNS-1035 labels; member pods' names are their
        // host names. Every child name is one, as the object's name is.
        if !is_dns1035_label(name) {
            out.push(format!("{kind} {name}: not a DNS-1035 label"));
        }
        let mut values = Vec::new();
        label_values(object, &mut values);
        out.extend(
            values.iter().filter(|v| !is_label_value(v)).map(|v| format!("{kind} {name}: label value {v}")),
        );
    }
    out
}

/// The longest child name is the name plus the kind's declared suffix.
fn longest_suffix(children: &[Child], name: &str) -> String {
    let names = children.iter().filter_map(|(_, o)| o["metadata"]["name"].as_str());
    let longest = names.max_by_key(|n| n.len()).unwrap();
    longest.strip_prefix(name).unwrap().to_string()
}

/// The root-level rule on `metadata.name` of a CRD, and its message.
fn name_rule_of(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> (String, String) {
    let schema = crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap();
    let rule = schema
        .x_kubernetes_validations
        .as_ref()
        .unwrap()
        .iter()
        .find(|r| r.rule.starts_with("self.metadata.name.matches("))
        .expect("a root-level rule on metadata.name");
    (rule.rule.clone(), rule.message.clone().unwrap_or_default())
}

struct Kind {
    name: &'static str,
    max: usize,
    suffix: &'static str,
    children: fn(&str) -> Vec<Child>,
    crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
}

fn kinds() -> [Kind; 3] {
    [
        Kind {
            name: "WebCluster",
            max: wc_api::MAX_NAME_LENGTH,
            suffix: wc_api::LONGEST_CHILD_SUFFIX,
            children: web_children,
            crd: WebCluster::crd(),
        },
        Kind {
            name: "SessionStore",
            max: sst_api::MAX_NAME_LENGTH,
            suffix: sst_api::LONGEST_CHILD_SUFFIX,
            children: session_children,
            crd: SessionStore::crd(),
        },
        Kind {
            name: "DatabaseMirror",
            max: dbm_api::MAX_NAME_LENGTH,
            suffix: dbm_api::LONGEST_CHILD_SUFFIX,
            children: database_children,
            crd: DatabaseMirror::crd(),
        },
    ]
}

#[test]
fn the_limits_are_63_less_each_kinds_longest_suffix() {
    let limits: Vec<(&str, usize)> = kinds().iter().map(|k| (k.name, k.max)).collect();
    assert_eq!(limits, [("WebCluster", 63), ("SessionStore", 52), ("DatabaseMirror", 51)]);
}

#[test]
fn every_child_of_a_maximum_length_name_fits() {
    for kind in kinds() {
        let name = name_of(kind.max);
        let children = (kind.children)(&name);
        assert_eq!(problems(&children), Vec::<String>::new(), "{} named {name}", kind.name);
        assert_eq!(longest_suffix(&children, &name), kind.suffix, "{}'s longest child", kind.name);
    }
}

#[test]
fn one_character_more_and_a_child_would_not_fit_so_the_rule_refuses_it() {
    for kind in kinds() {
        let name = name_of(kind.max + 1);
        assert!(!problems(&(kind.children)(&name)).is_empty(), "{}: the limit is tight", kind.name);
        assert!(!is_allowed_name(&name, kind.max));
        assert!(is_allowed_name(&name_of(kind.max), kind.max));
    }
}

#[test]
fn each_crd_rule_checks_and_states_its_kinds_limit() {
    for kind in kinds() {
        let (rule, message) = name_rule_of(&kind.crd);
        assert!(
            rule.ends_with(&format!("size(self.metadata.name) <= {}", kind.max)),
            "{}: {rule}",
            kind.name
        );
        assert!(message.contains(&format!("at most {} characters", kind.max)), "{}: {message}", kind.name);
        assert!(message.contains(&format!("<name>{}", kind.suffix)), "{}: {message}", kind.name);
    }
}

#[test]
fn the_name_pattern_of_the_rule_is_dns_1035() {
    let (rule, _) = name_rule_of(&WebCluster::crd());
    let pattern = rule.split('\'').nth(1).unwrap();
    let re = regex::Regex::new(pattern).unwrap();
    for name in ["a", "shop", "shop-db-2", "a1"] {
        assert!(re.is_match(name) && is_dns1035_label(name), "{name}");
    }
    for name in ["1shop", "shop-", "Shop", "shop.db", "shop_db", ""] {
        assert!(!re.is_match(name) && !is_dns1035_label(name), "{name}");
    }
}

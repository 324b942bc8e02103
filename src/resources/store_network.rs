//! The NetworkPolicy of a store: who may open a connection to its members.
//! Its own members (replication, `pg_rewind`), and the pods of the
//! WebClusters of the same namespace that reference it, on the server's
//! port; nobody else. Pods of another site, or of a WebCluster that does
//! not reference the store, cannot even try a password.
//!
//! Only ingress is limited: agents reach out to the API server, and the
//! operator never connects to a member. Probes come from the node's kubelet,
//! which NetworkPolicy implementations let through. Metrics scrapers
//! (Prometheus) come from pods elsewhere: when the operator is told which
//! namespaces they run in (`--metrics-scrapers`), those reach the agent's
//! port, and only that port.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::labels;
use super::members::Blueprint;
use crate::contract::probes;

/// Why a label selector could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("label selector {selector:?}: {why}")]
pub struct SelectorError {
    pub selector: String,
    pub why: String,
}

/// A label selector written as `kubectl -l` takes it: requirements
/// separated by commas, each `key`, `!key`, `key=value` (or `==`),
/// `key!=value`, `key in (a,b)` or `key notin (a,b)`.
pub fn parse_selector(text: &str) -> Result<LabelSelector, SelectorError> {
    let error = |why: &str| SelectorError { selector: text.to_string(), why: why.to_string() };
    let mut selector = LabelSelector::default();
    let requirements = split_requirements(text).ok_or_else(|| error("unbalanced parentheses"))?;
    if requirements.iter().all(|r| r.trim().is_empty()) {
        return Err(error("empty"));
    }
    for requirement in requirements {
        match requirement_of(requirement.trim())
            .ok_or_else(|| error(&format!("cannot read {requirement:?}")))?
        {
            Requirement::Equals(key, value) => {
                selector.match_labels.get_or_insert_default().insert(key, value);
            }
            Requirement::Expression(expression) => {
                selector.match_expressions.get_or_insert_default().push(expression);
            }
        }
    }
    Ok(selector)
}

enum Requirement {
    Equals(String, String),
    Expression(LabelSelectorRequirement),
}

/// The requirements of a selector: split at commas outside parentheses.
fn split_requirements(text: &str) -> Option<Vec<&str>> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (at, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..at]);
                start = at + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return None;
        }
    }
    (depth == 0).then(|| {
        parts.push(&text[start..]);
        parts
    })
}

fn requirement_of(text: &str) -> Option<Requirement> {
    let key_ok = |k: &str| !k.is_empty() && !k.contains(|c: char| c.is_whitespace() || "=!(),".contains(c));
    let expression = |key: &str, operator: &str, values: Option<Vec<String>>| {
        key_ok(key).then(|| {
            Requirement::Expression(LabelSelectorRequirement {
                key: key.to_string(),
                operator: operator.to_string(),
                values,
            })
        })
    };
    if let Some((key, value)) = text.split_once("!=") {
        return expression(key.trim(), "NotIn", Some(vec![value.trim().to_string()]));
    }
    if let Some((key, value)) = text.split_once('=') {
        let (key, value) = (key.trim(), value.strip_prefix('=').unwrap_or(value).trim());
        return (key_ok(key) && !value.contains(char::is_whitespace))
            .then(|| Requirement::Equals(key.to_string(), value.to_string()));
    }
    if let Some(open) = text.find('(') {
        let list = text[open..].strip_prefix('(')?.strip_suffix(')')?;
        let values = list.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect();
        let mut words = text[..open].split_whitespace();
        let (key, operator) = (words.next()?, words.next()?);
        let operator = match operator {
            "in" => "In",
            "notin" => "NotIn",
            _ => return None,
        };
        return if words.next().is_none() { expression(key, operator, Some(values)) } else { None };
    }
    match text.strip_prefix('!') {
        Some(key) => expression(key.trim(), "DoesNotExist", None),
        None => expression(text, "Exists", None),
    }
}

impl Blueprint {
    /// The store's NetworkPolicy (named like the store). `clients`: the
    /// selector labels of the pods of each WebCluster that references it;
    /// `admin_networks`: CIDRs the operator's settings admit to every store;
    /// `metrics_scrapers`: the namespaces whose pods may scrape the agents'
    /// metrics (on the agent's port alone).
    pub fn network_policy(
        &self,
        clients: &[BTreeMap<String, String>],
        admin_networks: &[String],
        metrics_scrapers: Option<&LabelSelector>,
    ) -> NetworkPolicy {
        let peer = |labels: &BTreeMap<String, String>| NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        };
        let members = labels::selector(self.app, &self.name);
        let server_port = NetworkPolicyPort {
            port: Some(IntOrString::Int(self.engine.port)),
            protocol: Some("TCP".into()),
            ..NetworkPolicyPort::default()
        };
        let mut ingress = vec![NetworkPolicyIngressRule {
            from: Some(vec![peer(&members)]),
            ports: Some(vec![server_port.clone()]),
        }];
        let admins = admin_networks.iter().map(|cidr| NetworkPolicyPeer {
            ip_block: Some(IPBlock { cidr: cidr.clone(), except: None }),
            ..NetworkPolicyPeer::default()
        });
        let others: Vec<NetworkPolicyPeer> = clients.iter().map(peer).chain(admins).collect();
        if !others.is_empty() {
            ingress.push(NetworkPolicyIngressRule { from: Some(others), ports: Some(vec![server_port]) });
        }
        if let Some(namespaces) = metrics_scrapers {
            ingress.push(NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(namespaces.clone()),
                    ..NetworkPolicyPeer::default()
                }]),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(i32::from(probes::PORT))),
                    protocol: Some("TCP".into()),
                    ..NetworkPolicyPort::default()
                }]),
            });
        }
        NetworkPolicy {
            metadata: self.metadata(self.name.clone()),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector { match_labels: Some(members), ..LabelSelector::default() }),
                policy_types: Some(vec!["Ingress".into()]),
                ingress: Some(ingress),
                ..NetworkPolicySpec::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blueprint() -> Blueprint {
        crate::resources::fixtures::shop_db()
    }

    #[test]
    fn members_and_the_referencing_web_tiers_reach_the_server_port_and_nobody_else() {
        let web = labels::selector("webcluster", "shop");
        let policy = blueprint().network_policy(std::slice::from_ref(&web), &[], None);
        let spec = policy.spec.unwrap();
        assert_eq!(spec.policy_types.as_deref(), Some(&["Ingress".to_string()][..]));
        let selects = spec.pod_selector.unwrap().match_labels.unwrap();
        assert_eq!(selects, labels::selector("databasemirror", "shop-db"));
        let rules = spec.ingress.unwrap();
        let from: Vec<BTreeMap<String, String>> = rules
            .iter()
            .flat_map(|r| r.from.iter().flatten())
            .map(|p| p.pod_selector.clone().unwrap().match_labels.unwrap())
            .collect();
        assert_eq!(from, [selects.clone(), web]);
        for rule in &rules {
            let ports = rule.ports.as_ref().unwrap();
            assert_eq!(ports[0].port, Some(IntOrString::Int(5432)));
            assert!(
                rule.from.iter().flatten().all(|p| p.namespace_selector.is_none()),
                "this namespace only"
            );
        }
    }

    #[test]
    fn without_a_referencing_web_tier_only_the_members_reach_each_other() {
        let rules = blueprint().network_policy(&[], &[], None).spec.unwrap().ingress.unwrap();
        assert_eq!(rules.len(), 1);
    }

    #[test]
    fn admin_networks_reach_the_server_port_of_every_store() {
        let rules =
            blueprint().network_policy(&[], &["10.8.0.0/24".into()], None).spec.unwrap().ingress.unwrap();
        let block = rules[1].from.as_ref().unwrap()[0].ip_block.as_ref().unwrap();
        assert_eq!(block.cidr, "10.8.0.0/24");
    }

    #[test]
    fn metrics_scrapers_reach_the_agents_port_from_their_namespaces_and_nothing_else() {
        let monitoring = parse_selector("kubernetes.io/metadata.name=monitoring").unwrap();
        let web = labels::selector("webcluster", "shop");
        let policy = blueprint().network_policy(std::slice::from_ref(&web), &[], Some(&monitoring));
        let rules = policy.spec.unwrap().ingress.unwrap();
        assert_eq!(rules.len(), 3, "members, web tier, scrapers");
        let scrapers = &rules[2];
        let from = scrapers.from.as_ref().unwrap();
        assert_eq!(from.len(), 1);
        assert_eq!(from[0].namespace_selector.as_ref(), Some(&monitoring));
        assert!(from[0].pod_selector.is_none(), "any pod of those namespaces");
        let ports = scrapers.ports.as_ref().unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].port, Some(IntOrString::Int(8000)));
        assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
        for rule in &rules[..2] {
            assert_eq!(rule.ports.as_ref().unwrap()[0].port, Some(IntOrString::Int(5432)));
            assert!(rule.from.iter().flatten().all(|p| p.namespace_selector.is_none()));
        }
    }

    #[test]
    fn without_metrics_scrapers_nothing_reaches_the_agents_port() {
        let rules =
            blueprint().network_policy(&[], &["10.8.0.0/24".into()], None).spec.unwrap().ingress.unwrap();
        let ports: Vec<_> =
            rules.iter().flat_map(|r| r.ports.iter().flatten()).map(|p| p.port.clone()).collect();
        assert!(ports.iter().all(|p| *p == Some(IntOrString::Int(5432))), "{ports:?}");
    }

    #[test]
    fn selectors_read_as_kubectl_writes_them() {
        let s = parse_selector("team=monitoring, env==prod,tier!=dev").unwrap();
        let labels = s.match_labels.unwrap();
        assert_eq!(labels.get("team").map(String::as_str), Some("monitoring"));
        assert_eq!(labels.get("env").map(String::as_str), Some("prod"));
        let expressions = s.match_expressions.unwrap();
        assert_eq!(expressions.len(), 1);
        assert_eq!((expressions[0].key.as_str(), expressions[0].operator.as_str()), ("tier", "NotIn"));
        assert_eq!(expressions[0].values.as_deref(), Some(&["dev".to_string()][..]));

        let s = parse_selector("kubernetes.io/metadata.name in (monitoring, observability),!sandbox,owner")
            .unwrap();
        assert!(s.match_labels.is_none());
        let ops: Vec<(String, String, Option<Vec<String>>)> =
            s.match_expressions.unwrap().into_iter().map(|e| (e.key, e.operator, e.values)).collect();
        assert_eq!(
            ops,
            [
                (
                    "kubernetes.io/metadata.name".into(),
                    "In".into(),
                    Some(vec!["monitoring".into(), "observability".into()])
                ),
                ("sandbox".into(), "DoesNotExist".into(), None),
                ("owner".into(), "Exists".into(), None),
            ]
        );
        let notin = parse_selector("env notin (dev)").unwrap().match_expressions.unwrap();
        assert_eq!(notin[0].operator, "NotIn");
    }

    #[test]
    fn unreadable_selectors_are_refused() {
        for bad in
            ["", " , ", "env in (a", "env in a)", "env in ((a))", "env within (a)", "a b", "=x", "x=y z"]
        {
            assert!(parse_selector(bad).is_err(), "{bad:?} was read");
        }
        let error = parse_selector("env in (a").unwrap_err();
        assert!(error.to_string().contains("env in (a"), "{error}");
    }
}

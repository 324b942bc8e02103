//! The NetworkPolicy of a store: who may open a connection to its members.
//! Its own members (replication, `pg_rewind`), and the pods of the
//! WebClusters of the same namespace that reference it, on the server's
//! port; nobody else. Pods of another site, or of a WebCluster that does
//! not reference the store, cannot even try a password.
//!
//! Only ingress is limited: agents reach out to the API server, and the
//! operator never connects to a member. Probes come from the node's kubelet,
//! which NetworkPolicy implementations let through.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::labels;
use super::members::Blueprint;

impl Blueprint {
    /// The store's NetworkPolicy (named like the store). `clients`: the
    /// selector labels of the pods of each WebCluster that references it;
    /// `admin_networks`: CIDRs the operator's settings admit to every store.
    pub fn network_policy(
        &self,
        clients: &[BTreeMap<String, String>],
        admin_networks: &[String],
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
        let policy = blueprint().network_policy(std::slice::from_ref(&web), &[]);
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
        let rules = blueprint().network_policy(&[], &[]).spec.unwrap().ingress.unwrap();
        assert_eq!(rules.len(), 1);
    }

    #[test]
    fn admin_networks_reach_the_server_port_of_every_store() {
        let rules = blueprint().network_policy(&[], &["10.8.0.0/24".into()]).spec.unwrap().ingress.unwrap();
        let block = rules[1].from.as_ref().unwrap()[0].ip_block.as_ref().unwrap();
        assert_eq!(block.cidr, "10.8.0.0/24");
    }
}

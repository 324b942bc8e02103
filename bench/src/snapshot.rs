//! resourceVersions and managedFields of every object of the fleet, to see
//! who changed what while the fleet was idle. The operator's own metric
//! counts its writes; this counts what actually changed on the server, and
//! tells the operator's changes (field manager `hostwright`) from other
//! writers' (e.g. the Deployment or disruption controllers updating status).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams};
use kube::{Client, Resource};

use hostwright::api::WebCluster;
use hostwright::resources::FIELD_MANAGER as OPERATOR_MANAGER;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Version {
    resource_version: String,
    /// manager -> "operation|subresource|time" of each managedFields entry.
    managers: BTreeMap<String, Vec<String>>,
}

pub struct Snapshot {
    /// (kind, name) -> version
    objects: BTreeMap<(&'static str, String), Version>,
    pub ready_web_clusters: usize,
}

impl Snapshot {
    pub fn len(&self) -> usize {
        self.objects.len()
    }
}

#[derive(Default)]
pub struct Diff {
    /// kind -> objects whose resourceVersion changed (or that appeared/vanished)
    pub rv_changed: BTreeMap<&'static str, usize>,
    /// kind -> objects whose `hostwright` managedFields entries changed
    pub hostwright_changed: BTreeMap<&'static str, usize>,
    /// manager -> objects whose entries of that manager changed
    pub by_manager: BTreeMap<String, usize>,
}

fn version(meta: &ObjectMeta) -> Version {
    let mut managers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in meta.managed_fields.iter().flatten() {
        let time = entry.time.as_ref().map(|t| t.0.to_string()).unwrap_or_default();
        managers.entry(entry.manager.clone().unwrap_or_default()).or_default().push(format!(
            "{}|{}|{time}",
            entry.operation.clone().unwrap_or_default(),
            entry.subresource.clone().unwrap_or_default()
        ));
    }
    Version { resource_version: meta.resource_version.clone().unwrap_or_default(), managers }
}

async fn list<K>(client: &Client, ns: &str, kind: &'static str, out: &mut Snapshot) -> Result<Vec<K>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let items = api.list(&ListParams::default()).await.with_context(|| format!("listing {kind}"))?.items;
    for item in &items {
        let meta = item.meta();
        out.objects.insert((kind, meta.name.clone().unwrap_or_default()), version(meta));
    }
    Ok(items)
}

pub async fn take(client: &Client, ns: &str) -> Result<Snapshot> {
    let mut s = Snapshot { objects: BTreeMap::new(), ready_web_clusters: 0 };
    let wcs = list::<WebCluster>(client, ns, "webclusters", &mut s).await?;
    s.ready_web_clusters = wcs.iter().filter(|wc| crate::track::web_cluster_ready(wc)).count();
    list::<Deployment>(client, ns, "deployments", &mut s).await?;
    list::<Service>(client, ns, "services", &mut s).await?;
    list::<PodDisruptionBudget>(client, ns, "poddisruptionbudgets", &mut s).await?;
    Ok(s)
}

pub fn diff(before: &Snapshot, after: &Snapshot) -> Diff {
    let mut d = Diff::default();
    for kind in ["webclusters", "deployments", "services", "poddisruptionbudgets"] {
        d.rv_changed.insert(kind, 0);
        d.hostwright_changed.insert(kind, 0);
    }
    let keys: std::collections::BTreeSet<_> = before.objects.keys().chain(after.objects.keys()).collect();
    for key in keys {
        let (b, a) = (before.objects.get(key), after.objects.get(key));
        if b.map(|v| &v.resource_version) == a.map(|v| &v.resource_version) {
            continue;
        }
        *d.rv_changed.entry(key.0).or_default() += 1;
        let empty = BTreeMap::new();
        let (bm, am) = (b.map_or(&empty, |v| &v.managers), a.map_or(&empty, |v| &v.managers));
        let managers: std::collections::BTreeSet<_> = bm.keys().chain(am.keys()).collect();
        for m in managers {
            if bm.get(m) != am.get(m) {
                *d.by_manager.entry(m.clone()).or_default() += 1;
                if m == OPERATOR_MANAGER {
                    *d.hostwright_changed.entry(key.0).or_default() += 1;
                }
            }
        }
    }
    d
}

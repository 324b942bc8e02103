//! Growing member volumes when the template asks for more storage: each
//! claim's request is raised where its StorageClass allows expansion, and
//! the store says so where it does not. A smaller size is refused by the
//! API (a volume never shrinks).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Client, ResourceExt};

use super::{Context, Replicated};
use crate::controllers::Error;
use crate::resources::FIELD_MANAGER;
use crate::resources::members::Blueprint;
pub use crate::resources::quantity::bytes;

/// A member volume smaller than the template asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct Resize {
    pub member: String,
    pub from: String,
    pub to: Quantity,
    pub expansion: Expansion,
}

/// Whether a volume may grow, as far as the operator can tell.
#[derive(Clone, Debug, PartialEq)]
pub enum Expansion {
    /// Its StorageClass allows expansion.
    Allowed,
    /// Not looked at: the operator may not read StorageClasses
    /// (`--cluster-reads=false`). The resize is asked for, and a refusal
    /// by the API server is reported like a refusal found here.
    Unchecked,
    /// Why it cannot grow.
    Refused(String),
}

fn requested(claim: &PersistentVolumeClaim) -> Option<&Quantity> {
    claim.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?.get("storage")
}

/// The volumes smaller than the template's size, each with whether it can
/// grow. Reads a StorageClass only when a volume is too small (rare), and
/// only with `cluster_reads`.
pub async fn resizes(
    client: &Client,
    cluster_reads: bool,
    blueprint: &Blueprint,
    volumes: &BTreeMap<String, Arc<PersistentVolumeClaim>>,
) -> Result<Vec<Resize>, Error> {
    let Some(wanted) = blueprint.storage.as_ref().map(|s| s.size.clone()) else { return Ok(Vec::new()) };
    let Some(wanted_bytes) = bytes(&wanted) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for (member, claim) in volumes {
        let Some(have) = requested(claim) else { continue };
        if bytes(have).is_none_or(|b| b >= wanted_bytes) {
            continue;
        }
        let class = claim.spec.as_ref().and_then(|s| s.storage_class_name.clone());
        let expansion = match class {
            None => {
                Expansion::Refused("its volume has no StorageClass, so it cannot be expanded".to_string())
            }
            Some(_) if !cluster_reads => Expansion::Unchecked,
            Some(class) => expandable(client, &class).await?,
        };
        out.push(Resize { member: member.clone(), from: have.0.clone(), to: wanted.clone(), expansion });
    }
    Ok(out)
}

async fn expandable(client: &Client, class: &str) -> Result<Expansion, Error> {
    let api: Api<StorageClass> = Api::all(client.clone());
    let found = api.get_opt(class).await.map_err(|source| Error::Read {
        resource: "storageclasses",
        object: class.to_string(),
        source,
    })?;
    Ok(match found {
        Some(c) if c.allow_volume_expansion == Some(true) => Expansion::Allowed,
        Some(_) => Expansion::Refused(format!(
            "StorageClass {class} does not allow volume expansion (allowVolumeExpansion)"
        )),
        None => Expansion::Refused(format!("StorageClass {class} does not exist")),
    })
}

/// Raise the request of every volume that can grow; an Event for each,
/// and one for each that cannot.
pub async fn expand<K: Replicated>(store: &K, ctx: &Context<K>, resizes: &[Resize]) -> Result<(), Error> {
    let namespace = store.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.shared.client.clone(), &namespace);
    for resize in resizes {
        let Resize { member, from, to, expansion } = resize;
        let key = format!("{}/{member}/{}", store.uid().unwrap_or_default(), to.0);
        let refuse = |why: &str| {
            let new = ctx.resize_refusals.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone());
            new.then(|| format!("volume {member} stays at {from} (asked for {}): {why}", to.0))
        };
        match expansion {
            Expansion::Refused(why) => {
                if let Some(note) = refuse(why) {
                    ctx.shared.event(store, EventType::Warning, "ResizeUnsupported", "Resize", note).await;
                }
                continue;
            }
            // Asked for once per size: the API server's answer does not change.
            Expansion::Unchecked
                if ctx.resize_refusals.lock().unwrap_or_else(|p| p.into_inner()).contains(&key) =>
            {
                continue;
            }
            Expansion::Allowed | Expansion::Unchecked => {}
        }
        let patch = serde_json::json!({ "spec": { "resources": { "requests": { "storage": to } } } });
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
        match api.patch(member, &params, &Patch::Merge(&patch)).await {
            Ok(_) => {}
            // Admission refuses a resize its StorageClass does not allow
            // (403) or a claim that cannot grow (422).
            Err(kube::Error::Api(e))
                if *expansion == Expansion::Unchecked && (e.code == 403 || e.code == 422) =>
            {
                let why = format!("the API server refused the expansion: {}", e.message);
                if let Some(note) = refuse(&why) {
                    ctx.shared.event(store, EventType::Warning, "ResizeUnsupported", "Resize", note).await;
                }
                continue;
            }
            Err(source) => {
                return Err(Error::Apply {
                    resource: "persistentvolumeclaims",
                    object: format!("{namespace}/{member}"),
                    source,
                });
            }
        }
        ctx.shared.metrics.write(K::CONTROLLER, "persistentvolumeclaims", "patch");
        let note = format!("expanding volume {member} from {from} to {}", to.0);
        ctx.shared.event(store, EventType::Normal, "ResizingVolume", "Resize", note).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_in_the_usual_forms_are_read_as_bytes() {
        let q = |s: &str| bytes(&Quantity(s.into()));
        assert_eq!(q("1Gi"), Some(1 << 30));
        assert_eq!(q("500M"), Some(500_000_000));
        assert_eq!(q("1073741824"), Some(1 << 30));
        assert!(q("2Gi") > q("1Gi"));
        assert_eq!(q("1.5Gi"), None, "a decimal is not guessed");
        assert_eq!(q("1Qi"), None);
    }
}

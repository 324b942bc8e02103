//! A cached object kept small: its metadata as a struct (what owner lookups,
//! claims and the controller's triggers read) and the rest as the JSON text
//! it serializes to, decoded again only by the reconcile that reads it.
//!
//! A typed Deployment takes about 11 KiB of heap in a cache: every field of
//! its pod template is an allocation of its own, or inline space for one. As
//! text it is about 3 KiB. With a thousand sites that is most of what the
//! operator holds, and a reconcile turns the live object into JSON for its
//! "already applied?" check anyway, so decoding costs little more.

use std::borrow::Cow;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// `K` as its metadata and the JSON text of everything else.
pub struct Compact<K> {
    metadata: ObjectMeta,
    body: Box<str>,
    kind: PhantomData<fn() -> K>,
}

impl<K: Resource + Serialize> Compact<K> {
    /// Keep `obj` compactly. Serializing a Kubernetes object cannot fail in
    /// practice; if it did, the body is left empty and the next reconcile
    /// finds the object differs and applies it again.
    pub fn new(mut obj: K) -> Self {
        let metadata = std::mem::take(obj.meta_mut());
        let body = serde_json::to_string(&obj).unwrap_or_else(|err| {
            tracing::warn!(name = ?metadata.name, %err, "could not keep a cached object as JSON");
            String::new()
        });
        Compact { metadata, body: body.into_boxed_str(), kind: PhantomData }
    }
}

impl<K: Resource + DeserializeOwned> Compact<K> {
    /// The whole object again.
    pub fn decode(&self) -> Result<K, serde_json::Error> {
        let mut obj: K = serde_json::from_str(&self.body)?;
        *obj.meta_mut() = self.metadata.clone();
        Ok(obj)
    }
}

impl<K> Clone for Compact<K> {
    fn clone(&self) -> Self {
        Compact { metadata: self.metadata.clone(), body: self.body.clone(), kind: PhantomData }
    }
}

impl<K> std::fmt::Debug for Compact<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compact").field("metadata", &self.metadata).field("bytes", &self.body.len()).finish()
    }
}

impl<K: Resource<DynamicType = ()>> Resource for Compact<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::ResourceExt;

    use super::*;

    fn deployment() -> Deployment {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "site", "namespace": "n", "uid": "u1",
                "ownerReferences": [{"apiVersion": "hostwright.io/v1alpha1", "kind": "WebCluster",
                    "name": "site", "uid": "w1", "controller": true}]},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}},
                    "spec": {"containers": [{"name": "web", "image": "site:1",
                        "resources": {"requests": {"cpu": "100m"}}}]}}},
            "status": {"readyReplicas": 2, "observedGeneration": 4}
        }))
        .unwrap()
    }

    #[test]
    fn decodes_to_the_object_it_was_made_from() {
        let compact = Compact::new(deployment());
        assert_eq!(compact.decode().unwrap(), deployment());
    }

    #[test]
    fn metadata_is_read_without_decoding() {
        let compact = Compact::new(deployment());
        assert_eq!(compact.name_any(), "site");
        assert_eq!(compact.owner_references()[0].uid, "w1");
        assert_eq!(Compact::<Deployment>::kind(&()), "Deployment");
        assert_eq!(Compact::<Deployment>::plural(&()), "deployments");
        // The body holds no second copy of the metadata.
        assert!(!compact.body.contains("ownerReferences"), "{}", compact.body);
    }
}

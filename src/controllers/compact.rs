//! A cached object kept small: what identifies it and its owners as a
//! struct (what the cache, the controller's triggers and owner lookups read)
//! and everything else, labels and annotations too, as the JSON text it
//! serializes to, decoded again only by the reconcile that reads it.
//!
//! A typed Deployment takes about 11 KiB of heap in a cache: every field of
//! its pod template is an allocation of its own, or inline space for one,
//! and its labels a tree of strings. As text it is about 3 KiB. With a
//! thousand sites that is most of what the operator holds, and a reconcile
//! turns the live object into JSON for its "already applied?" check anyway,
//! so decoding costs little more.

use std::borrow::Cow;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// `K` as its identity and owners, and the JSON text of everything else.
pub struct Compact<K> {
    /// Name, namespace, uid, resourceVersion and ownerReferences only.
    identity: ObjectMeta,
    body: Box<str>,
    kind: PhantomData<fn() -> K>,
}

impl<K: Resource + Serialize> Compact<K> {
    /// Keep `obj` compactly. Serializing a Kubernetes object cannot fail in
    /// practice; if it did, the body is left empty and the next reconcile
    /// finds the object differs and applies it again.
    pub fn new(mut obj: K) -> Self {
        let meta = obj.meta_mut();
        let identity = ObjectMeta {
            name: meta.name.take(),
            namespace: meta.namespace.take(),
            uid: meta.uid.take(),
            resource_version: meta.resource_version.take(),
            owner_references: meta.owner_references.take(),
            ..ObjectMeta::default()
        };
        let body = serde_json::to_string(&obj).unwrap_or_else(|err| {
            tracing::warn!(name = ?identity.name, %err, "could not keep a cached object as JSON");
            String::new()
        });
        Compact { identity, body: body.into_boxed_str(), kind: PhantomData }
    }
}

impl<K: Resource + DeserializeOwned> Compact<K> {
    /// The whole object again.
    pub fn decode(&self) -> Result<K, serde_json::Error> {
        let mut obj: K = serde_json::from_str(&self.body)?;
        let meta = obj.meta_mut();
        let identity = self.identity.clone();
        meta.name = identity.name;
        meta.namespace = identity.namespace;
        meta.uid = identity.uid;
        meta.resource_version = identity.resource_version;
        meta.owner_references = identity.owner_references;
        Ok(obj)
    }

    /// The whole metadata again (labels, annotations, ...). One that cannot
    /// be decoded is the identity alone.
    pub fn metadata(&self) -> ObjectMeta {
        self.decode().map(|mut obj| std::mem::take(obj.meta_mut())).unwrap_or_else(|err| {
            tracing::warn!(name = ?self.identity.name, %err, "a cached object does not decode");
            self.identity.clone()
        })
    }
}

impl<K> Clone for Compact<K> {
    fn clone(&self) -> Self {
        Compact { identity: self.identity.clone(), body: self.body.clone(), kind: PhantomData }
    }
}

impl<K> std::fmt::Debug for Compact<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compact").field("identity", &self.identity).field("bytes", &self.body.len()).finish()
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

    /// The identity and owners only: see [`Compact::metadata`] for the rest.
    fn meta(&self) -> &ObjectMeta {
        &self.identity
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.identity
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
            "metadata": {"name": "site", "namespace": "n", "uid": "u1", "resourceVersion": "7",
                "labels": {"app": "site"}, "generation": 4,
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
    fn identity_and_owners_are_read_without_decoding() {
        let compact = Compact::new(deployment());
        assert_eq!(compact.name_any(), "site");
        assert_eq!(compact.namespace().as_deref(), Some("n"));
        assert_eq!(compact.uid().as_deref(), Some("u1"));
        assert_eq!(compact.resource_version().as_deref(), Some("7"));
        assert_eq!(compact.owner_references()[0].uid, "w1");
        assert_eq!(Compact::<Deployment>::kind(&()), "Deployment");
        assert_eq!(Compact::<Deployment>::plural(&()), "deployments");
        // The body holds no second copy of them; the labels live there only.
        assert!(!compact.body.contains("ownerReferences"), "{}", compact.body);
        assert!(compact.labels().is_empty());
        assert!(compact.body.contains(r#""labels":{"app":"site"}"#), "{}", compact.body);
    }

    #[test]
    fn the_whole_metadata_is_decoded_on_demand() {
        let compact = Compact::new(deployment());
        assert_eq!(compact.metadata(), deployment().metadata);
    }

    #[test]
    fn an_undecodable_body_leaves_the_identity() {
        let mut compact = Compact::new(deployment());
        compact.body = "{".into();
        assert!(compact.decode().is_err());
        assert_eq!(compact.metadata().owner_references, deployment().metadata.owner_references);
        assert_eq!(compact.metadata().labels, None);
    }
}

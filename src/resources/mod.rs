//! Pure builders: a custom resource's spec in, the Kubernetes objects that
//! realise it out. No I/O here, so every rule about the shape of a child is a
//! unit test (and a golden file) away.

#[cfg(test)]
mod child_names;
pub mod databasemirror;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod labels;
pub mod members;
pub mod quantity;
pub mod sessionstore;
pub mod store_network;
pub mod store_tls;
pub mod subset;
pub mod webcluster;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;

/// Field manager of every write the operator makes (server-side apply).
pub const FIELD_MANAGER: &str = "hostwright";

/// A controller ownerReference to `owner`, so children are garbage-collected
/// with it and their events wake its reconciler.
pub fn controller_ref<K>(owner: &K) -> Result<OwnerReference, BuildError>
where
    K: Resource<DynamicType = ()>,
{
    owner.controller_owner_ref(&()).ok_or_else(|| BuildError::MissingMetadata {
        kind: K::kind(&()).into_owned(),
        field: "metadata.name/uid",
    })
}

/// The namespace of a namespaced owner; objects read from the API have one.
pub fn namespace_of<K>(owner: &K) -> Result<String, BuildError>
where
    K: Resource<DynamicType = ()>,
{
    owner.meta().namespace.clone().ok_or_else(|| BuildError::MissingMetadata {
        kind: K::kind(&()).into_owned(),
        field: "metadata.namespace",
    })
}

/// Why a spec could not be turned into objects.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The owner came without the metadata every child needs (name, uid,
    /// namespace). Objects read from the API always have them.
    #[error("{kind} has no {field}")]
    MissingMetadata { kind: String, field: &'static str },
    /// A DatabaseMirror parameter cannot be written into postgresql.conf as
    /// itself (the API refuses these; objects stored before it did may not).
    #[error("parameter {key:?}: {reason}")]
    InvalidParameter { key: String, reason: &'static str },
    /// A child could not be represented (serialisation of a typed object).
    #[error("building {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

//! The Hostwright API: group `hostwright.io`, version `v1alpha1`.
//!
//! Schemas (and so `kubectl explain` text and server-side validation) come
//! from these types; `hostwright crds` prints them and `crds/` holds that output.

// kube-derive repeats `printcolumn(type_ = ..)` spans, which clippy reads as
// duplicated attributes on the generated items.
#![allow(clippy::duplicated_attributes)]

pub mod backup;
pub mod common;
pub mod databasemirror;
pub mod duration;
pub mod names;
pub mod sessionstore;
pub mod webcluster;

pub use databasemirror::{DatabaseMirror, DatabaseMirrorSpec, DatabaseMirrorStatus};
pub use duration::GoDuration;
pub use sessionstore::{SessionStore, SessionStoreSpec, SessionStoreStatus};
pub use webcluster::{WebCluster, WebClusterSpec, WebClusterStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Every CRD Hostwright serves, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![WebCluster::crd(), SessionStore::crd(), DatabaseMirror::crd()]
}

/// The CRDs as one multi-document YAML stream, exactly as checked in under `crds/`.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

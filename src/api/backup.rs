//! Backups of a DatabaseMirror: the S3-compatible object store its WAL
//! goes to. Mirrors protect against a failed server; only a backup
//! protects against a `DELETE` without a `WHERE`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Keys of the Secret [`ObjectStore::credentials`] names.
pub mod credential_keys {
    pub const ACCESS_KEY_ID: &str = "access-key-id";
    pub const SECRET_ACCESS_KEY: &str = "secret-access-key";
}

/// Where backups go: one prefix of one bucket of an S3-compatible store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStore {
    /// URL of the S3 endpoint, e.g. `https://s3.eu-west-1.amazonaws.com` or
    /// `http://minio.backups.svc:9000`. Requests are path-style. `http://`
    /// sends the WAL unencrypted: only for a store on the cluster's own
    /// network.
    #[schemars(length(min = 8, max = 2048), regex(pattern = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"))]
    pub endpoint: String,
    /// Bucket name (S3 rules: 3–63 lower-case letters, digits, `.` and `-`).
    #[schemars(length(min = 3, max = 63), regex(pattern = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"))]
    pub bucket: String,
    /// Key prefix of this database's WAL and backups; `<namespace>/<name>`
    /// when unset. Two databases must never share one: the second would
    /// find the first's WAL in its way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 512),
        regex(pattern = r"^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*$")
    )]
    pub path: Option<String>,
    /// Region the requests are signed for.
    #[serde(default = "default_region")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[a-z0-9-]+$"))]
    pub region: String,
    /// Secret in this namespace with `access-key-id` and `secret-access-key`.
    pub credentials: SecretName,
    /// Secret in this namespace whose `ca.crt` verifies an `https` endpoint
    /// signed by a private CA (the system's roots otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<SecretName>,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// A Secret in the object's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretName {
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub secret_name: String,
}

/// Continuous WAL archiving (base backups, retention and recovery come
/// next; see docs/backups.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// The object store every member archives each WAL segment to.
    pub object_store: ObjectStore,
}

/// How far the archive is behind, and whether archiving works.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// The last WAL segment the primary archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_wal: Option<String>,
    /// When it was archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_time: Option<Time>,
    /// Seconds since the last segment was archived, while WAL written
    /// since is not archived yet (0 when the archive has it all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_lag_seconds: Option<i64>,
    /// Bytes of WAL the primary wrote past the last archived segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_lag_bytes: Option<i64>,
    /// While archiving fails: the segment it failed on last, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
}

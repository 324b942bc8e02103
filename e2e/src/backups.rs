//! The test bed's S3 server (e2e/cluster runs s3s-fs) as the backup tests
//! use it: its address and keys, a Secret holding them, a client to read
//! what the agents archived, and the server going away and coming back.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::TryStreamExt;
use hostwright::api::DatabaseMirror;
use hostwright::api::backup::{BackupRecord, BackupStatus, credential_keys};
use hostwright::backup::object_store::aws::AmazonS3Builder;
use hostwright::backup::object_store::path::Path;
use hostwright::backup::object_store::{ClientOptions, ObjectStore};
use hostwright::controllers::members::base_backups::REQUEST_ANNOTATION;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use serde_json::json;

use crate::{cluster, wait_for};

/// The S3 server of the running local control plane.
#[derive(Clone)]
pub struct TestStore {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    access_key: String,
    secret_key: String,
}

impl TestStore {
    /// As `e2e/cluster env` describes it (the cluster must be up).
    pub fn from_cluster() -> Result<Self> {
        let exports = crate::cluster_env()?;
        let get = |key: &str| {
            exports.get(key).map(|v| v.to_string()).with_context(|| {
                format!("e2e/cluster env printed no {key}: is the cluster up, with its S3 server?")
            })
        };
        let read = |key: &str| -> Result<String> {
            let path = get(key)?;
            Ok(std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?.trim().to_string())
        };
        Ok(Self {
            endpoint: get("HOSTWRIGHT_S3_ENDPOINT")?,
            region: get("HOSTWRIGHT_S3_REGION")?,
            bucket: get("HOSTWRIGHT_S3_BUCKET")?,
            access_key: read("HOSTWRIGHT_S3_ACCESS_KEY_FILE")?,
            secret_key: read("HOSTWRIGHT_S3_SECRET_KEY_FILE")?,
        })
    }

    /// A Secret `name` with the keys, as `spec.backup.objectStore.credentials` names one.
    pub fn secret(&self, name: &str) -> Secret {
        let data = [
            (credential_keys::ACCESS_KEY_ID, &self.access_key),
            (credential_keys::SECRET_ACCESS_KEY, &self.secret_key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect();
        Secret {
            metadata: ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() },
            data: Some(data),
            ..Secret::default()
        }
    }

    /// A client of the bucket.
    pub fn client(&self) -> Result<Arc<dyn ObjectStore>> {
        let store = AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_bucket_name(&self.bucket)
            .with_region(&self.region)
            .with_access_key_id(&self.access_key)
            .with_secret_access_key(&self.secret_key)
            .with_virtual_hosted_style_request(false)
            .with_client_options(ClientOptions::new().with_allow_http(true))
            .build()?;
        Ok(Arc::new(store))
    }

    /// Every key under `prefix`, sorted.
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let client = self.client()?;
        let prefix = Path::from(prefix);
        let mut keys: Vec<String> =
            client.list(Some(&prefix)).map_ok(|meta| meta.location.to_string()).try_collect().await?;
        keys.sort();
        Ok(keys)
    }

    /// The server goes away (killed; its data is kept).
    pub async fn stop(&self) -> Result<()> {
        cluster(&["s3-stop"]).await
    }

    /// And comes back, with the same keys and data.
    pub async fn start(&self) -> Result<()> {
        cluster(&["s3-start"]).await
    }
}

/// What the status says of archiving and base backups.
pub fn backup_status(d: &DatabaseMirror) -> Option<&BackupStatus> {
    d.status.as_ref()?.backup.as_ref()
}

/// Ask DatabaseMirror `name` for a base backup (the request annotation set
/// to `request`) and wait up to `within` for it; its record, or why it failed.
pub async fn back_up(
    api: &Api<DatabaseMirror>,
    name: &str,
    request: &str,
    within: Duration,
) -> Result<BackupRecord> {
    let before = backup_status(&api.get(name).await?).cloned().unwrap_or_default();
    // A failure already reported was an earlier backup's (each names its id).
    let (earlier_backup, earlier_failure) = (before.last_backup.map(|b| b.id), before.last_backup_failure);
    let news = move |b: &BackupStatus| {
        let done = b.last_backup.as_ref().is_some_and(|l| Some(&l.id) != earlier_backup.as_ref());
        let failed = b.last_backup_failure.is_some() && b.last_backup_failure != earlier_failure;
        (done, failed)
    };
    let patch = json!({"metadata": {"annotations": {REQUEST_ANNOTATION: request}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    let check = news.clone();
    let done =
        wait_for(api, name, within, &format!("base backup {request}"), move |d: Option<&DatabaseMirror>| {
            d.and_then(backup_status).is_some_and(|b| check(b) != (false, false))
        })
        .await?;
    let status = backup_status(&done).context("status.backup")?;
    if let (_, true) = news(status) {
        anyhow::bail!(
            "base backup {request} failed: {}",
            status.last_backup_failure.as_deref().unwrap_or_default()
        );
    }
    status.last_backup.clone().context("the backup's record")
}

//! How an agent reaches the object store: a small JSON file the agent
//! writes from its settings and hands to the `wal-push` and `wal-fetch`
//! processes PostgreSQL starts (they get no environment of their own), and
//! the client built from it. Keys are read from the mounted Secret's files
//! at each use, so a rotated key is used without a restart; they are never
//! in the file, an argument or a log.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::{Certificate, ClientOptions, RetryConfig};
use serde::{Deserialize, Serialize};

use super::BackupError;
use crate::api::backup::{ObjectStore as ObjectStoreSpec, credential_keys};

/// Everything a `wal-push` or `wal-fetch` process needs to reach the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreConfig {
    pub endpoint: String,
    pub bucket: String,
    /// Key prefix of this database's files (no leading or trailing `/`).
    pub prefix: String,
    pub region: String,
    /// Directory of the mounted credentials Secret.
    pub credentials_dir: PathBuf,
    /// The CA that verifies an `https` endpoint, if not a public one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Past this much unarchived WAL a failed push lets its segment go
    /// (see [`super::gap`]); None: PostgreSQL keeps it all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_bytes: Option<u64>,
    /// Where a gap is recorded (on the member's volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_file: Option<PathBuf>,
}

impl StoreConfig {
    /// The configuration for `spec`, with `default_prefix` when it names
    /// none, the credentials and CA at the given mount points.
    pub fn from_spec(
        spec: &ObjectStoreSpec,
        default_prefix: &str,
        credentials_dir: &Path,
        ca_file: Option<&Path>,
    ) -> Self {
        let prefix = spec.path.as_deref().unwrap_or(default_prefix).trim_matches('/').to_string();
        Self {
            endpoint: spec.endpoint.trim_end_matches('/').to_string(),
            bucket: spec.bucket.clone(),
            prefix,
            region: spec.region.clone(),
            credentials_dir: credentials_dir.to_path_buf(),
            ca_file: spec.ca.as_ref().and(ca_file).map(Path::to_path_buf),
            max_pending_bytes: None,
            gap_file: None,
        }
    }

    /// Read a configuration file.
    pub fn load(path: &Path) -> Result<Self, BackupError> {
        let text = read(path)?;
        serde_json::from_slice(&text)
            .map_err(|source| BackupError::Config { path: path.display().to_string(), source })
    }

    /// The client for this store (failed requests retried with backoff).
    pub fn open(&self) -> Result<Arc<dyn ObjectStore>, BackupError> {
        self.open_with(RetryConfig::default())
    }

    /// The client for one WAL push: PostgreSQL retries a failed push
    /// itself, so a push gives up within seconds (two retries at most, none
    /// when `once`: past the bound a segment that cannot go now is let go,
    /// and the backlog drains at once). A push that hung for minutes would
    /// let WAL pile up past the bound meanwhile.
    pub fn open_for_push(&self, once: bool) -> Result<Arc<dyn ObjectStore>, BackupError> {
        let retries = if once { 0 } else { 2 };
        self.open_with(RetryConfig {
            max_retries: retries,
            retry_timeout: std::time::Duration::from_secs(10),
            ..RetryConfig::default()
        })
    }

    fn open_with(&self, retry: RetryConfig) -> Result<Arc<dyn ObjectStore>, BackupError> {
        let key = |name: &str| -> Result<String, BackupError> {
            let path = self.credentials_dir.join(name);
            Ok(String::from_utf8_lossy(&read(&path)?).trim().to_string())
        };
        let mut options = ClientOptions::new()
            .with_allow_http(self.endpoint.starts_with("http://"))
            .with_connect_timeout(std::time::Duration::from_secs(5));
        if let Some(ca_file) = &self.ca_file {
            let pem = read(ca_file)?;
            let certificate = Certificate::from_pem(&pem).map_err(|source| self.open_error(source))?;
            options = options.with_root_certificate(certificate);
        }
        let store = AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_bucket_name(&self.bucket)
            .with_region(&self.region)
            .with_access_key_id(key(credential_keys::ACCESS_KEY_ID)?)
            .with_secret_access_key(key(credential_keys::SECRET_ACCESS_KEY)?)
            .with_virtual_hosted_style_request(false)
            .with_client_options(options)
            .with_retry(retry)
            .build()
            .map_err(|source| self.open_error(source))?;
        Ok(Arc::new(store))
    }

    fn open_error(&self, source: object_store::Error) -> BackupError {
        BackupError::Open { endpoint: self.endpoint.clone(), source }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, BackupError> {
    std::fs::read(path).map_err(|source| BackupError::Read { path: path.display().to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> ObjectStoreSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn the_prefix_defaults_to_the_database_and_loses_stray_slashes() {
        let creds = Path::new("/etc/hostwright/backup");
        let plain = spec("endpoint: http://s3.local:9000/\nbucket: backups\ncredentials: {secretName: s3}");
        let config = StoreConfig::from_spec(&plain, "shop/db", creds, Some(Path::new("/ca.crt")));
        assert_eq!(config.prefix, "shop/db");
        assert_eq!(config.endpoint, "http://s3.local:9000");
        assert_eq!(config.region, "us-east-1");
        assert_eq!(config.ca_file, None, "no CA Secret named: the system's roots");
        let named = spec(
            "endpoint: https://s3.example\nbucket: backups\npath: /sites/shop/\ncredentials: {secretName: s3}\n\
             ca: {secretName: s3-ca}",
        );
        let config = StoreConfig::from_spec(&named, "shop/db", creds, Some(Path::new("/ca.crt")));
        assert_eq!(config.prefix, "sites/shop");
        assert_eq!(config.ca_file.as_deref(), Some(Path::new("/ca.crt")));
        let text = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<StoreConfig>(&text).unwrap(), config);
    }
}

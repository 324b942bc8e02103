//! Clients that verify a store's server against the store's CA: what the
//! tests, the benchmarks and a Rust web tier connect with. The certificate
//! names the store's Services; `server_name` is the name checked, whatever
//! address the connection is opened to (a test reaching a member by its pod
//! address still verifies the Service name it would have used).

use std::sync::Arc;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisConnectionInfo};
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject as _;

use super::TlsError;

/// Make `ring` the process's default rustls provider, once, before any
/// TLS client is built. The Kubernetes client and the object store's HTTP
/// client build theirs from the process default, and with both `ring`
/// (ours) and `aws-lc-rs` (the object store's) compiled in, rustls cannot
/// pick one by itself. Every entry point calls this first; later calls do
/// nothing.
pub fn install_default_provider() {
    // Err: a provider is installed already (this one, by an earlier call).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A rustls client trusting `ca_pem` alone (no system roots: a store's
/// server is vouched for by its own CA and no other).
pub fn client_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| TlsError::Unreadable(e.to_string()))?;
        roots.add(cert).map_err(|e| TlsError::Unreadable(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Unreadable(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A tokio-postgres connector verifying the server against `ca_pem` and
/// the host name of the connection's config (`host`; the address may be
/// given apart with `hostaddr`).
pub fn postgres(ca_pem: &str) -> Result<tokio_postgres_rustls::MakeRustlsConnect, TlsError> {
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new((*client_config(ca_pem)?).clone()))
}

/// Why a TLS connection to Redis failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisTlsError {
    #[error("{0}")]
    Config(#[from] TlsError),
    #[error("{server_name:?} is not a host name")]
    Name { server_name: String },
    #[error("connecting to {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
}

/// A Redis connection over TLS to `address` (`host:port`), the server's
/// certificate verified for `server_name` against `ca_pem`, then
/// authenticated as `info` says.
pub async fn redis(
    address: &str,
    server_name: &str,
    ca_pem: &str,
    info: &RedisConnectionInfo,
    config: AsyncConnectionConfig,
) -> Result<MultiplexedConnection, RedisTlsError> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|_| RedisTlsError::Name { server_name: server_name.into() })?;
    let connector = tokio_rustls::TlsConnector::from(client_config(ca_pem)?);
    let connect_err = |source| RedisTlsError::Connect { address: address.into(), source };
    let tcp = tokio::net::TcpStream::connect(address).await.map_err(connect_err)?;
    let _ = tcp.set_nodelay(true);
    let stream = connector.connect(name, tcp).await.map_err(connect_err)?;
    let (connection, driver) = MultiplexedConnection::new_with_config(info, stream, config).await?;
    tokio::spawn(driver);
    Ok(connection)
}

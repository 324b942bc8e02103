//! TLS to the stores, as the operator hands them out: URLs that name the
//! server by its Service and a CA file (mounted by the WebCluster) that
//! signed its certificate. The server is verified for that name against
//! that CA and no other; nothing is sent in plain text.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};

/// Where the WebCluster mounts the stores' CAs (a deployment may point
/// elsewhere with `DATABASE_CA_FILE` / `SESSION_STORE_CA_FILE`).
pub const DATABASE_CA: &str = "/etc/hostwright/database/ca.crt";
pub const SESSION_STORE_CA: &str = "/etc/hostwright/session-store/ca.crt";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the CA {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the CA {path} is not PEM certificates: {why}")]
    Pem { path: String, why: String },
    #[error("{0:?} is not a host name")]
    Name(String),
}

/// A client configuration trusting the CA in `path` alone.
pub fn client_config(path: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read { path: path.into(), source })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| TlsError::Pem { path: path.into(), why: e.to_string() })?;
        roots.add(cert).map_err(|e| TlsError::Pem { path: path.into(), why: e.to_string() })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Pem { path: path.into(), why: e.to_string() })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The CA file of a store: the environment's choice, else the mount.
pub fn ca_file(variable: &str, default: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| default.to_string())
}

/// `name` as rustls checks it against the certificate.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string()).map_err(|_| TlsError::Name(name.into()))
}

/// A `postgresql://` URL split into what tokio-postgres reads and what it
/// does not (`sslmode=verify-full`, `sslrootcert`): the connection then
/// always verifies, whatever the URL asks.
pub fn postgres_url(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else { return (url.to_string(), None) };
    let mut root_cert = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some(("sslrootcert", path)) => {
                root_cert = Some(path.to_string());
                false
            }
            Some(("sslmode", _)) => false,
            _ => true,
        })
        .collect();
    let base = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
    (base, root_cert)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_keeps_what_tokio_postgres_reads() {
        let (url, ca) = postgres_url(
            "postgresql://u:p@db-rw.ns.svc:5432/shop?sslmode=verify-full&sslrootcert=/etc/hostwright/database/ca.crt",
        );
        assert_eq!(url, "postgresql://u:p@db-rw.ns.svc:5432/shop");
        assert_eq!(ca.as_deref(), Some("/etc/hostwright/database/ca.crt"));
        assert_eq!(
            postgres_url("postgresql://h/db?application_name=x&sslmode=require").0,
            "postgresql://h/db?application_name=x"
        );
    }
}

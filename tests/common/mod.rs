//! What the driver tests share: the store's certificates as the operator
//! issues them.

use std::path::Path;

use hostwright::contract::keys::tls as tls_files;

/// The store's CA (made once per `root`) and a server certificate for
/// `server_name`, written where a pod has its TLS Secret mounted
/// (`<root>/tls`). Called again, it renews the certificate under the same
/// CA, as the operator does. Returns the CA's PEM.
pub fn issue_certificates(root: &Path, server_name: &str) -> String {
    let dir = root.join("tls");
    let now = std::time::SystemTime::now();
    let ca = match std::fs::read_to_string(root.join("ca.key")) {
        Ok(key_pem) => hostwright::tls::Authority {
            cert_pem: std::fs::read_to_string(dir.join(tls_files::CA)).unwrap(),
            key_pem,
        },
        Err(_) => hostwright::tls::new_authority("customer-a/store CA", now).unwrap(),
    };
    let issued =
        hostwright::tls::issue_server(&ca, &[server_name.to_string()], now, hostwright::tls::SERVER_LIFETIME)
            .unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(root.join("ca.key"), &ca.key_pem).unwrap();
    std::fs::write(dir.join(tls_files::CA), &ca.cert_pem).unwrap();
    std::fs::write(dir.join(tls_files::CERT), &issued.cert_pem).unwrap();
    std::fs::write(dir.join(tls_files::KEY), &issued.key_pem).unwrap();
    ca.cert_pem
}

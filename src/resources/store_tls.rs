//! The Secrets of a store's TLS: its certificate authority (`<name>-ca`,
//! read by the operator alone) and the server certificate its members
//! present (`<name>-tls`, `kubernetes.io/tls`, mounted into member pods),
//! issued for the DNS names of the store's Services.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::members::Blueprint;
use crate::contract::keys::tls as files;
use crate::tls::{Authority, Issued};

/// Key of the CA's private key in `<name>-ca` (its certificate is `ca.crt`).
const CA_KEY: &str = "ca.key";

impl Blueprint {
    /// Secret holding the store's CA, certificate and key.
    pub fn ca_secret_name(&self) -> String {
        format!("{}-ca", self.name)
    }

    /// Secret holding the members' server certificate.
    pub fn tls_secret_name(&self) -> String {
        format!("{}-tls", self.name)
    }

    /// Every name a client may reach the store's Services by, short to
    /// fully qualified, so `sslmode=verify-full` holds whichever it uses.
    pub fn dns_names(&self) -> Vec<String> {
        let ns = &self.namespace;
        self.service_names
            .iter()
            .flat_map(|s| {
                [
                    s.clone(),
                    format!("{s}.{ns}"),
                    format!("{s}.{ns}.svc"),
                    format!("{s}.{ns}.svc.cluster.local"),
                ]
            })
            .collect()
    }

    /// The CA's common name: which store it vouches for.
    pub fn ca_common_name(&self) -> String {
        format!("{}/{} CA", self.namespace, self.name)
    }

    /// `<name>-ca`: the CA, owned by the store (a store re-created over its
    /// kept volumes gets a new CA and new certificates, nothing else).
    pub fn ca_secret(&self, authority: &Authority) -> Secret {
        secret(
            self.metadata(self.ca_secret_name()),
            "Opaque",
            [(files::CA, &authority.cert_pem), (CA_KEY, &authority.key_pem)],
        )
    }

    /// `<name>-tls`: the server certificate and key, with the CA that
    /// members verify each other against.
    pub fn tls_secret(&self, issued: &Issued, ca_pem: &str) -> Secret {
        secret(
            self.metadata(self.tls_secret_name()),
            "kubernetes.io/tls",
            [
                (files::CERT, &issued.cert_pem),
                (files::KEY, &issued.key_pem),
                (files::CA, &ca_pem.to_string()),
            ],
        )
    }
}

fn secret<'a>(
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    type_: &str,
    data: impl IntoIterator<Item = (&'a str, &'a String)>,
) -> Secret {
    let data: BTreeMap<String, ByteString> =
        data.into_iter().map(|(k, v)| (k.to_string(), ByteString(v.clone().into_bytes()))).collect();
    Secret { metadata, type_: Some(type_.into()), data: Some(data), ..Secret::default() }
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    let value = secret.data.as_ref()?.get(key)?;
    String::from_utf8(value.0.clone()).ok().filter(|v| !v.is_empty())
}

/// The CA kept in `<name>-ca` (None: missing keys).
pub fn read_authority(secret: &Secret) -> Option<Authority> {
    Some(Authority { cert_pem: text(secret, files::CA)?, key_pem: text(secret, CA_KEY)? })
}

/// The certificate in `<name>-tls` (None: missing).
pub fn read_certificate(secret: &Secret) -> Option<String> {
    text(secret, files::KEY)?;
    text(secret, files::CERT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blueprint() -> Blueprint {
        crate::resources::fixtures::shop_db()
    }

    #[test]
    fn certificates_name_every_spelling_of_every_service() {
        let names = blueprint().dns_names();
        assert_eq!(names.len(), 8);
        for wanted in ["shop-db-rw", "shop-db-rw.customer-a.svc", "shop-db-ro.customer-a.svc.cluster.local"] {
            assert!(names.iter().any(|n| n == wanted), "{wanted} missing from {names:?}");
        }
    }

    #[test]
    fn the_secrets_read_back_what_they_hold() {
        let b = blueprint();
        let ca = crate::tls::new_authority(&b.ca_common_name(), std::time::SystemTime::now()).unwrap();
        assert_eq!(read_authority(&b.ca_secret(&ca)), Some(ca.clone()));
        let issued = crate::tls::issue_server(
            &ca,
            &b.dns_names(),
            std::time::SystemTime::now(),
            crate::tls::SERVER_LIFETIME,
        )
        .unwrap();
        let tls = b.tls_secret(&issued, &ca.cert_pem);
        assert_eq!(tls.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(read_certificate(&tls), Some(issued.cert_pem));
        assert!(tls.metadata.owner_references.is_some(), "owned by the store");
    }
}

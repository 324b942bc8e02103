//! The Secrets of a store's TLS: its certificate authority (`<name>-ca`,
//! read by the operator alone) and the server certificate its members
//! present (`<name>-tls`, `kubernetes.io/tls`, mounted into member pods),
//! issued for the DNS names of the store's Services. When the spec names a
//! cert-manager issuer, the operator keeps no CA: it asks for `<name>-tls`
//! with a cert-manager `Certificate` of the same name instead.

use std::collections::BTreeMap;

use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::core::{ApiResource, DynamicObject};
use serde_json::json;

use super::labels;
use super::members::Blueprint;
use crate::contract::keys::tls as files;
use crate::tls::{Authority, Issued};
use kube::ResourceExt;

/// Key of the CA's private key in `<name>-ca` (its certificate is `ca.crt`).
const CA_KEY: &str = "ca.key";

/// cert-manager's API group; k8s-openapi has no cert-manager types, so
/// Certificates are DynamicObjects of this resource.
pub const CERT_MANAGER_GROUP: &str = "cert-manager.io";
/// The annotation cert-manager puts on every Secret it writes.
pub const CERT_MANAGER_CERTIFICATE_ANNOTATION: &str = "cert-manager.io/certificate-name";
/// cert-manager refuses a certificate duration under an hour.
pub const CERT_MANAGER_MIN_DURATION: Duration = Duration::from_secs(3600);
/// Fields of the Certificate the operator sets whole: a DNS name the store
/// no longer has, or another issuer, is a difference to apply.
pub const CERTIFICATE_OWNED_FIELDS: &[&str] = &["/spec/dnsNames", "/spec/issuerRef"];

/// cert-manager's `Certificate` kind.
pub fn certificate_resource() -> ApiResource {
    ApiResource {
        group: CERT_MANAGER_GROUP.into(),
        version: "v1".into(),
        api_version: format!("{CERT_MANAGER_GROUP}/v1"),
        kind: "Certificate".into(),
        plural: "certificates".into(),
    }
}

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

    /// The cert-manager `Certificate` asking the spec's issuer for
    /// `<name>-tls` (None: the operator's own CA signs). It carries the same
    /// names, labels and lifetime as a certificate of the operator's own
    /// (cert-manager's shortest, an hour, at least), renewed with a third
    /// of its life left, with a new key each time; the Secret gets the
    /// store's labels, so the operator sees it like its own.
    pub fn certificate_request(&self, lifetime: Duration) -> Option<DynamicObject> {
        let issuer = self.tls_issuer.as_ref()?;
        let duration = lifetime.max(CERT_MANAGER_MIN_DURATION).as_secs();
        let mut certificate = DynamicObject::new(&self.tls_secret_name(), &certificate_resource());
        certificate.metadata = self.metadata(self.tls_secret_name());
        certificate.data = json!({"spec": {
            "secretName": self.tls_secret_name(),
            "secretTemplate": {"labels": labels::common(self.app, &self.name, self.component)},
            "dnsNames": self.dns_names(),
            "duration": format!("{duration}s"),
            "renewBefore": format!("{}s", duration / 3),
            "privateKey": {"algorithm": "ECDSA", "size": 256, "encoding": "PKCS8", "rotationPolicy": "Always"},
            "usages": ["server auth", "digital signature", "key encipherment"],
            "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
        }});
        Some(certificate)
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

/// The CA in `<name>-tls` (None: not written yet, or the issuer gives none).
pub fn read_ca(secret: &Secret) -> Option<String> {
    text(secret, files::CA)
}

/// Whether cert-manager wrote this Secret.
pub fn written_by_cert_manager(secret: &Secret) -> bool {
    secret.annotations().contains_key(CERT_MANAGER_CERTIFICATE_ANNOTATION)
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
    fn a_named_issuer_gets_a_certificate_request_for_the_same_names_and_secret() {
        let lifetime = Duration::from_secs(90 * 24 * 3600);
        assert!(blueprint().certificate_request(lifetime).is_none(), "no issuer: the operator's CA");
        let mut b = blueprint();
        b.tls_issuer = Some(crate::api::common::IssuerRef {
            name: "site-ca".into(),
            kind: "ClusterIssuer".into(),
            group: CERT_MANAGER_GROUP.into(),
        });
        let request = b.certificate_request(lifetime).unwrap();
        let value = serde_json::to_value(&request).unwrap();
        assert_eq!(value["apiVersion"], "cert-manager.io/v1");
        assert_eq!(value["kind"], "Certificate");
        assert_eq!(value["metadata"]["name"], "shop-db-tls");
        assert_eq!(value["metadata"]["ownerReferences"][0]["uid"], "uid-db");
        let spec = &value["spec"];
        assert_eq!(spec["secretName"], "shop-db-tls");
        assert_eq!(spec["dnsNames"], json!(b.dns_names()));
        assert_eq!(
            spec["issuerRef"],
            json!({"name": "site-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
        );
        assert_eq!(spec["secretTemplate"]["labels"]["app.kubernetes.io/instance"], "shop-db");
        assert_eq!(
            (spec["duration"].as_str(), spec["renewBefore"].as_str()),
            (Some("7776000s"), Some("2592000s"))
        );
        assert!(CERTIFICATE_OWNED_FIELDS.iter().all(|p| value.pointer(p).is_some()));
        // cert-manager's floor: an hour.
        let short = serde_json::to_value(b.certificate_request(Duration::from_secs(60)).unwrap()).unwrap();
        assert_eq!(short["spec"]["duration"], "3600s");
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

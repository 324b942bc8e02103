//! The certificates of a store's TLS: one certificate authority per store,
//! and the server certificate its members present, issued for the names of
//! the store's Services and renewed well before it expires.
//!
//! One CA per store, not one per operator: a certificate signed by it proves
//! its holder is a member of that store and of no other site's, so members
//! verify each other (replication) by the CA alone, and a key leaked from
//! one site opens nothing of another.
//!
//! Pure: key generation, signing and reading certificates back; no I/O.
//! [`client`] connects to a store the way its users should: verifying it.

pub mod client;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;

/// How long a store's CA is valid: long enough never to need renewing in
/// the life of a site (renewing it would mean trusting two CAs at once).
pub const AUTHORITY_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a server certificate is valid by default.
pub const SERVER_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// Slack for clocks a little behind ours.
const BACKDATE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating a key: {0}")]
    Key(#[source] rcgen::Error),
    #[error("signing the certificate of {subject}: {source}")]
    Sign {
        subject: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("reading the certificate authority: {0}")]
    Authority(#[source] rcgen::Error),
    #[error("a certificate that is not PEM X.509: {0}")]
    Unreadable(String),
}

/// A certificate authority: its certificate and private key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Authority {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A key and the certificate issued for it, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

// Keys print redacted: a log line or an error never carries one.
impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

fn offset(at: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(at)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Hostwright");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A new CA named `common_name`, valid from (about) `now` for
/// [`AUTHORITY_LIFETIME`].
pub fn new_authority(common_name: &str, now: SystemTime) -> Result<Authority, TlsError> {
    let key = KeyPair::generate().map_err(TlsError::Key)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = offset(now - BACKDATE);
    params.not_after = offset(now + AUTHORITY_LIFETIME);
    let cert =
        params.self_signed(&key).map_err(|source| TlsError::Sign { subject: common_name.into(), source })?;
    Ok(Authority { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A server certificate for `dns_names` (the first is also its common
/// name), signed by `authority`, valid from (about) `now` for `lifetime`.
pub fn issue_server(
    authority: &Authority,
    dns_names: &[String],
    now: SystemTime,
    lifetime: Duration,
) -> Result<Issued, TlsError> {
    let subject = dns_names.first().cloned().unwrap_or_default();
    let signing_key = KeyPair::from_pem(&authority.key_pem).map_err(TlsError::Authority)?;
    let issuer = Issuer::from_ca_cert_pem(&authority.cert_pem, signing_key).map_err(TlsError::Authority)?;
    let key = KeyPair::generate().map_err(TlsError::Key)?;
    let sign_err = |source| TlsError::Sign { subject: subject.clone(), source };
    let mut params = CertificateParams::new(dns_names.to_vec()).map_err(sign_err)?;
    params.distinguished_name = name(&subject);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    // Members also connect to each other (replication) with it.
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = offset(now - BACKDATE);
    params.not_after = offset(now + lifetime);
    let cert = params.signed_by(&key, &issuer).map_err(sign_err)?;
    Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// What the operator needs to know of a certificate it issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// Seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    pub dns_names: Vec<String>,
    /// Signed by the authority it was checked against.
    pub signed_by_authority: bool,
}

fn unreadable(what: impl std::fmt::Display) -> TlsError {
    TlsError::Unreadable(what.to_string())
}

/// Read `cert_pem` back, checking its signature against `authority_pem`.
pub fn inspect(cert_pem: &str, authority_pem: &str) -> Result<Facts, TlsError> {
    let (_, pem) = parse_x509_pem(cert_pem.as_bytes()).map_err(unreadable)?;
    let cert = pem.parse_x509().map_err(unreadable)?;
    let (_, ca_pem) = parse_x509_pem(authority_pem.as_bytes()).map_err(unreadable)?;
    let ca = ca_pem.parse_x509().map_err(unreadable)?;
    let dns_names = cert
        .subject_alternative_name()
        .map_err(unreadable)?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Facts {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        dns_names,
        signed_by_authority: cert.verify_signature(Some(ca.public_key())).is_ok(),
    })
}

/// Why a server certificate must be issued anew (None: it is good): it is
/// for other names, was signed by another authority, or has less than a
/// third of `lifetime` left (or more than `lifetime`: the lifetime was
/// shortened). Renewing at two thirds leaves a month of a 90-day
/// certificate to notice a renewal that keeps failing.
pub fn renewal_due(
    facts: &Facts,
    dns_names: &[String],
    now: SystemTime,
    lifetime: Duration,
) -> Option<&'static str> {
    let now = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default();
    let lifetime = lifetime.as_secs() as i64;
    let mut have = facts.dns_names.clone();
    let mut want = dns_names.to_vec();
    have.sort();
    want.sort();
    if have != want {
        return Some("NamesChanged");
    }
    if !facts.signed_by_authority {
        return Some("AuthorityChanged");
    }
    if facts.not_after - now < lifetime / 3 {
        return Some("Expiring");
    }
    if facts.not_after - facts.not_before > lifetime + BACKDATE.as_secs() as i64 {
        return Some("LifetimeShortened");
    }
    None
}

/// When `facts`' certificate is due for renewal (see [`renewal_due`]).
pub fn renew_at(facts: &Facts, lifetime: Duration) -> SystemTime {
    let at = facts.not_after - (lifetime.as_secs() / 3) as i64;
    UNIX_EPOCH + Duration::from_secs(at.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["db-rw.shop.svc".into(), "db-ro.shop.svc".into()]
    }

    #[test]
    fn an_issued_certificate_reads_back_with_its_names_and_issuer() {
        let now = SystemTime::now();
        let ca = new_authority("shop/db", now).unwrap();
        let cert = issue_server(&ca, &names(), now, SERVER_LIFETIME).unwrap();
        let facts = inspect(&cert.cert_pem, &ca.cert_pem).unwrap();
        assert_eq!(facts.dns_names, names());
        assert!(facts.signed_by_authority);
        assert_eq!(renewal_due(&facts, &names(), now, SERVER_LIFETIME), None);
        let other = new_authority("shop/db", now).unwrap();
        assert!(!inspect(&cert.cert_pem, &other.cert_pem).unwrap().signed_by_authority);
    }

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_lifetime_or_for_new_names() {
        let now = SystemTime::now();
        let ca = new_authority("shop/db", now).unwrap();
        let cert = issue_server(&ca, &names(), now, SERVER_LIFETIME).unwrap();
        let facts = inspect(&cert.cert_pem, &ca.cert_pem).unwrap();
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(renewal_due(&facts, &names(), now + 59 * day, SERVER_LIFETIME), None);
        assert_eq!(renewal_due(&facts, &names(), now + 61 * day, SERVER_LIFETIME), Some("Expiring"));
        let renew = renew_at(&facts, SERVER_LIFETIME).duration_since(now).unwrap();
        assert!(renew > 59 * day && renew < 61 * day, "{renew:?}");
        let fewer = vec![names()[0].clone()];
        assert_eq!(renewal_due(&facts, &fewer, now, SERVER_LIFETIME), Some("NamesChanged"));
        assert_eq!(renewal_due(&facts, &names(), now, day), Some("LifetimeShortened"));
    }

    #[test]
    fn keys_print_redacted() {
        let ca = new_authority("shop/db", SystemTime::now()).unwrap();
        let printed = format!("{ca:?}");
        assert!(printed.contains("<redacted>") && !printed.contains("PRIVATE KEY"), "{printed}");
    }
}

//! A store's TLS, kept by its reconcile: the CA Secret made once, and the
//! server certificate issued anew when it is missing, names other Services
//! than the store has, was signed by another CA, or has a third of its
//! lifetime left. Members load a renewed certificate without a restart
//! (the agent watches its mounted files), so renewal is only a Secret write.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use tracing::info;

use super::reconcile::{labelled, read_labelled};
use super::{Context, Replicated};
use crate::controllers::Error;
use crate::resources::members::Blueprint;
use crate::resources::store_tls::{read_authority, read_certificate};
use crate::tls::{self, Authority};

/// What the rest of the reconcile needs of the store's TLS.
pub(super) struct Kept {
    /// PEM of the CA the web tier verifies the server against.
    pub ca_pem: String,
    /// When the certificate in use is due for renewal.
    pub renew_at: SystemTime,
}

/// Make sure the store has its CA and a good server certificate.
pub(super) async fn keep<K: Replicated>(
    store: &K,
    ctx: &Context<K>,
    blueprint: &Blueprint,
) -> Result<Kept, Error> {
    let authority = keep_authority(store, ctx, blueprint).await?;
    let lifetime = ctx.certificate_lifetime;
    let names = blueprint.dns_names();
    let live = find(ctx, blueprint, &blueprint.tls_secret_name()).await?;
    let facts = live
        .as_deref()
        .and_then(read_certificate)
        .and_then(|pem| tls::inspect(&pem, &authority.cert_pem).ok());
    let now = SystemTime::now();
    let due = match &facts {
        None => Some("Missing"),
        Some(f) => tls::renewal_due(f, &names, now, lifetime),
    };
    let Some(why) = due else {
        let renew_at = facts.as_ref().map_or(now, |f| tls::renew_at(f, lifetime));
        return Ok(Kept { ca_pem: authority.cert_pem, renew_at });
    };
    let issued = tls::issue_server(&authority, &names, now, lifetime)
        .map_err(|source| certificate_error(blueprint, source))?;
    let desired = blueprint.tls_secret(&issued, &authority.cert_pem);
    // Issued anew on purpose: written whatever the cache shows.
    ctx.shared.apply(&desired, None).await?;
    info!(reason = why, secret = %desired.name_any(), "issued a server certificate");
    let note = format!("issued the server certificate in Secret {} ({why})", desired.name_any());
    ctx.shared.event(store, EventType::Normal, "CertificateIssued", "Issue", note).await;
    let renew_at = now + lifetime - lifetime / 3;
    Ok(Kept { ca_pem: authority.cert_pem, renew_at })
}

/// The store's CA: read back, or made once.
async fn keep_authority<K: Replicated>(
    store: &K,
    ctx: &Context<K>,
    blueprint: &Blueprint,
) -> Result<Authority, Error> {
    let live = find(ctx, blueprint, &blueprint.ca_secret_name()).await?;
    if let Some(authority) = live.as_deref().and_then(read_authority) {
        return Ok(authority);
    }
    let authority = tls::new_authority(&blueprint.ca_common_name(), SystemTime::now())
        .map_err(|source| certificate_error(blueprint, source))?;
    ctx.shared.apply(&blueprint.ca_secret(&authority), None).await?;
    let note = format!("made the store's certificate authority, Secret {}", blueprint.ca_secret_name());
    ctx.shared.event(store, EventType::Normal, "AuthorityCreated", "Create", note).await;
    Ok(authority)
}

/// One of the store's Secrets, from the cache or, when the watch has not
/// shown it (yet), from the API: a CA is never made twice on a guess.
async fn find<K: Replicated>(
    ctx: &Context<K>,
    blueprint: &Blueprint,
    name: &str,
) -> Result<Option<Arc<Secret>>, Error> {
    let (namespace, instance) = (&blueprint.namespace, &blueprint.name);
    match labelled(&ctx.caches.secrets, namespace, name, instance) {
        Some(cached) => Ok(Some(cached)),
        None => read_labelled(&ctx.shared.client, "secrets", namespace, name, instance).await,
    }
}

fn certificate_error(blueprint: &Blueprint, source: tls::TlsError) -> Error {
    Error::Certificate { object: format!("{}/{}", blueprint.namespace, blueprint.name), source }
}

/// How soon to look again so the renewal is not late.
pub(super) fn until_renewal(kept: &Kept) -> Duration {
    kept.renew_at.duration_since(SystemTime::now()).unwrap_or_default()
}

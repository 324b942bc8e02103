//! A store's TLS, kept by its reconcile: the CA Secret made once, and the
//! server certificate issued anew when it is missing, names other Services
//! than the store has, was signed by another CA, or has a third of its
//! lifetime left. Members load a renewed certificate without a restart
//! (the agent watches its mounted files), so renewal is only a Secret write.
//!
//! When the spec names a cert-manager issuer, cert-manager writes that
//! Secret instead: the reconcile keeps a `Certificate` asking for it (same
//! names) and reads the CA clients verify against from what cert-manager
//! wrote. Going back to the operator's CA deletes the Certificate and its
//! Secret, and the next certificate is the operator's again.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::core::DynamicObject;
use kube::runtime::events::EventType;
use serde_json::json;
use tracing::info;

use super::reconcile::{labelled, read_labelled};
use super::{Context, Replicated};
use crate::controllers::Error;
use crate::resources::FIELD_MANAGER;
use crate::resources::members::Blueprint;
use crate::resources::store_tls::{
    CERT_MANAGER_GROUP, CERTIFICATE_OWNED_FIELDS, certificate_resource, read_authority, read_ca,
    read_certificate, written_by_cert_manager,
};
use crate::resources::subset::first_difference_owning;
use crate::tls::{self, Authority};

/// Plural of cert-manager's kind, for messages and metric labels.
const CERTIFICATES: &str = "certificates";
/// How soon to look again while cert-manager has not issued.
const PENDING_INTERVAL: Duration = Duration::from_secs(5);

/// What the rest of the reconcile needs of the store's TLS.
pub(super) struct Kept {
    /// PEM of the CA the web tier verifies the server against (None: the
    /// issuer has not written it yet).
    pub ca_pem: Option<String>,
    /// When to look again for the certificate's sake: its renewal, or an
    /// issue still pending.
    pub look_again: Duration,
}

/// Make sure the store has a good server certificate, from its own CA or
/// from the issuer its spec names.
pub(super) async fn keep<K: Replicated>(
    store: &K,
    ctx: &Context<K>,
    blueprint: &Blueprint,
) -> Result<Kept, Error> {
    match blueprint.certificate_request(ctx.certificate_lifetime) {
        Some(request) => keep_requested(store, ctx, blueprint, &request).await,
        None => keep_issued(store, ctx, blueprint).await,
    }
}

/// Why the members have no server certificate yet, when its issuer has
/// not written it (None: they have one, or the operator issues it).
pub(super) fn pending(blueprint: &Blueprint, tls_secret: Option<&Secret>) -> Option<String> {
    let issuer = blueprint.tls_issuer.as_ref()?;
    let issued = tls_secret.is_some_and(|s| read_certificate(s).is_some() && read_ca(s).is_some());
    let name = blueprint.tls_secret_name();
    (!issued).then(|| {
        format!(
            "waiting for cert-manager to issue Certificate {name} ({} {}) into Secret {name} with its ca.crt; \
             kubectl describe certificate {name} says what it waits for",
            issuer.kind, issuer.name
        )
    })
}

/// The operator's own CA and a certificate it issued.
async fn keep_issued<K: Replicated>(
    store: &K,
    ctx: &Context<K>,
    blueprint: &Blueprint,
) -> Result<Kept, Error> {
    forget_requested(ctx, blueprint).await?;
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
        let look_again = renew_at.duration_since(now).unwrap_or_default();
        return Ok(Kept { ca_pem: Some(authority.cert_pem), look_again });
    };
    let issued = tls::issue_server(&authority, &names, now, lifetime)
        .map_err(|source| certificate_error(blueprint, source))?;
    let desired = blueprint.tls_secret(&issued, &authority.cert_pem);
    // Issued anew on purpose: written whatever the cache shows.
    ctx.shared.apply(&desired, None).await?;
    info!(reason = why, secret = %desired.name_any(), "issued a server certificate");
    let note = format!("issued the server certificate in Secret {} ({why})", desired.name_any());
    ctx.shared.event(store, EventType::Normal, "CertificateIssued", "Issue", note).await;
    Ok(Kept { ca_pem: Some(authority.cert_pem), look_again: lifetime - lifetime / 3 })
}

/// The Certificate asking the spec's issuer for the members' Secret,
/// applied when it differs from the live one; the CA from what the issuer
/// wrote. A cluster without cert-manager gets a Warning, not an error loop.
async fn keep_requested<K: Replicated>(
    store: &K,
    ctx: &Context<K>,
    blueprint: &Blueprint,
    request: &DynamicObject,
) -> Result<Kept, Error> {
    let name = blueprint.tls_secret_name();
    let object = format!("{}/{name}", blueprint.namespace);
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.shared.client.clone(), &blueprint.namespace, &certificate_resource());
    let encode = |v: &DynamicObject| {
        serde_json::to_value(v)
            .map_err(|source| Error::Encode { what: format!("certificate {object}"), source })
    };
    let desired = encode(request)?;
    let live = match api.get_opt(&name).await {
        Ok(live) => live,
        Err(kube::Error::Api(e)) if e.code == 403 => return Ok(unavailable(store, ctx, e.code).await),
        Err(source) => return Err(Error::Read { resource: CERTIFICATES, object, source }),
    };
    let differs = match &live {
        Some(live) => first_difference_owning(&desired, &encode(live)?, CERTIFICATE_OWNED_FIELDS),
        None => Some("absent".into()),
    };
    if let Some(path) = differs {
        match api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&desired)).await {
            Ok(_) => {
                ctx.shared.metrics.write(ctx.shared.controller, CERTIFICATES, "apply");
                info!(certificate = %object, differs_at = %path, "requested the server certificate");
                let note = format!("asked cert-manager for the server certificate: Certificate {name}");
                ctx.shared.event(store, EventType::Normal, "CertificateRequested", "Request", note).await;
            }
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 403 => {
                return Ok(unavailable(store, ctx, e.code).await);
            }
            Err(source) => return Err(Error::Apply { resource: CERTIFICATES, object, source }),
        }
    }
    let secret = find(ctx, blueprint, &name).await?;
    if let Some(secret) = &secret {
        keep_secret_owned(ctx, blueprint, secret).await?;
    }
    let ca_pem = secret.as_deref().filter(|s| read_certificate(s).is_some()).and_then(read_ca);
    let look_again = if ca_pem.is_some() { crate::controllers::RESYNC } else { PENDING_INTERVAL };
    Ok(Kept { ca_pem, look_again })
}

/// The issuer cannot be asked: cert-manager's kind is not served (404) or
/// not permitted (403). Said in a Warning, and looked at again later.
async fn unavailable<K: Replicated>(store: &K, ctx: &Context<K>, code: u16) -> Kept {
    let why = match code {
        404 => "cert-manager is not installed in this cluster (no cert-manager.io/v1 Certificate kind)",
        _ => "the operator may not read and write certificates.cert-manager.io (its role lacks them)",
    };
    let note = format!("spec.tls.issuerRef names a cert-manager issuer, but {why}");
    ctx.shared.event(store, EventType::Warning, "CertManagerUnavailable", "Request", note).await;
    Kept { ca_pem: None, look_again: PENDING_INTERVAL * 6 }
}

/// cert-manager writes the Secret without an owner: it gets the store's,
/// so it goes with the store like the rest of the store's TLS.
async fn keep_secret_owned(
    ctx: &Context<impl Replicated>,
    blueprint: &Blueprint,
    secret: &Secret,
) -> Result<(), Error> {
    let uid = &blueprint.owner.uid;
    if secret.owner_references().iter().any(|o| &o.uid == uid) {
        return Ok(());
    }
    let name = secret.name_any();
    let patch = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": blueprint.namespace, "ownerReferences": [blueprint.owner]},
    });
    let api: Api<Secret> = Api::namespaced(ctx.shared.client.clone(), &blueprint.namespace);
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&patch)).await.map_err(|source| {
        Error::Apply { resource: "secrets", object: format!("{}/{name}", blueprint.namespace), source }
    })?;
    ctx.shared.metrics.write(ctx.shared.controller, "secrets", "apply");
    Ok(())
}

/// Back to the operator's CA after an issuer: the Certificate goes (or
/// cert-manager would write over the operator's certificate), and the
/// Secret loses cert-manager's annotations; the operator then issues a
/// certificate of its own into it (signed by another CA, so it is due).
async fn forget_requested<K: Replicated>(ctx: &Context<K>, blueprint: &Blueprint) -> Result<(), Error> {
    let name = blueprint.tls_secret_name();
    let Some(secret) = find(ctx, blueprint, &name).await? else { return Ok(()) };
    if !written_by_cert_manager(&secret) {
        return Ok(());
    }
    let object = format!("{}/{name}", blueprint.namespace);
    let certificates: Api<DynamicObject> =
        Api::namespaced_with(ctx.shared.client.clone(), &blueprint.namespace, &certificate_resource());
    // Gone already (404), or cert-manager was uninstalled with its kind.
    let certificate = kube::api::ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(blueprint.namespace.clone()),
        ..Default::default()
    };
    ctx.shared.delete_exactly(&certificates, CERTIFICATES, &certificate).await?;
    // cert-manager wrote them by update, so an apply cannot drop them.
    let unannotated: serde_json::Map<String, serde_json::Value> = secret
        .annotations()
        .keys()
        .filter(|k| k.starts_with(CERT_MANAGER_GROUP))
        .map(|k| (k.clone(), serde_json::Value::Null))
        .collect();
    let secrets: Api<Secret> = Api::namespaced(ctx.shared.client.clone(), &blueprint.namespace);
    let patch = json!({"metadata": {"annotations": unannotated}});
    secrets
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| Error::Apply { resource: "secrets", object: object.clone(), source })?;
    ctx.shared.metrics.write(ctx.shared.controller, "secrets", "patch");
    info!(secret = %object, "left cert-manager's certificate for one of the operator's own CA");
    Ok(())
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

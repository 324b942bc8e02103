//! Stores whose server certificates come from a cert-manager issuer: the
//! real cert-manager controller of the local control plane (e2e/cluster),
//! a CA Issuer of the site's own, and behind every member a real
//! PostgreSQL or Redis with a real agent.
//!
//! Shown: the operator keeps no CA of its own; cert-manager's Secret
//! carries every Service name and is owned by the store; clients verify the
//! server against the issuer's CA, which the application Secrets carry;
//! renewals cert-manager makes (two per store, forced as `cmctl renew`
//! does) are loaded under write load with no acknowledged write lost and no
//! server restarted; and dropping the issuer goes back to the operator's CA.
//! An issuer that does not exist leaves the store `CertificatePending`.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hostwright::api::common::condition_type::READY;
use hostwright::api::{DatabaseMirror, SessionStore};
use hostwright::resources::store_tls::{CERT_MANAGER_CERTIFICATE_ANNOTATION, certificate_resource};
use hostwright_e2e::database::connect_rw;
use hostwright_e2e::site::{SERIAL, Site, StoreLoad, TIMEOUT, condition, ready_reason};
use hostwright_e2e::{eventually, wait_deleted};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject};
use serde_json::json;

/// The site's CA: a self-signed bootstrap issuer signs it, and an Issuer of
/// kind CA signs the stores' certificates with it.
const SITE_CA: &str = "site-ca";

fn issuer_resource() -> ApiResource {
    ApiResource {
        group: "cert-manager.io".into(),
        version: "v1".into(),
        api_version: "cert-manager.io/v1".into(),
        kind: "Issuer".into(),
        plural: "issuers".into(),
    }
}

async fn create(site: &Site, resource: &ApiResource, object: serde_json::Value) -> Result<()> {
    let object: DynamicObject = serde_json::from_value(object)?;
    Api::<DynamicObject>::namespaced_with(site.client.clone(), &site.ns.name, resource)
        .create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("creating {} {}", resource.kind, object.name_any()))?;
    Ok(())
}

/// The bootstrap issuer, the site's CA certificate, and the CA Issuer.
async fn site_issuer(site: &Site) -> Result<()> {
    let certificate = certificate_resource();
    create(
        site,
        &issuer_resource(),
        json!({
            "apiVersion": "cert-manager.io/v1", "kind": "Issuer", "metadata": {"name": "bootstrap"},
            "spec": {"selfSigned": {}},
        }),
    )
    .await?;
    create(
        site,
        &certificate,
        json!({
            "apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": SITE_CA},
            "spec": {
                "isCA": true, "commonName": "the site's CA", "secretName": SITE_CA,
                "privateKey": {"algorithm": "ECDSA", "size": 256},
                "issuerRef": {"name": "bootstrap", "kind": "Issuer", "group": "cert-manager.io"},
            },
        }),
    )
    .await?;
    create(
        site,
        &issuer_resource(),
        json!({
            "apiVersion": "cert-manager.io/v1", "kind": "Issuer", "metadata": {"name": SITE_CA},
            "spec": {"ca": {"secretName": SITE_CA}},
        }),
    )
    .await
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    secret.data.as_ref()?.get(key).and_then(|v| String::from_utf8(v.0.clone()).ok())
}

/// The store's certificate is cert-manager's, owned by the store, and its
/// CA is the one the application Secret gives the web tier.
async fn issued_by_the_site_ca(site: &Site, store: &str, app_secret: &str) -> Result<()> {
    let secrets = site.api::<Secret>();
    let tls = secrets.get(&format!("{store}-tls")).await?;
    ensure!(
        tls.annotations().get(CERT_MANAGER_CERTIFICATE_ANNOTATION).map(String::as_str)
            == Some(&format!("{store}-tls")),
        "{store}-tls was not written by cert-manager: {:?}",
        tls.annotations()
    );
    ensure!(
        tls.owner_references().iter().any(|o| o.name == store && o.controller == Some(true)),
        "{store}-tls is not owned by the store: {:?}",
        tls.owner_references()
    );
    let site_ca = text(&secrets.get(SITE_CA).await?, "tls.crt").context("the site CA's certificate")?;
    ensure!(
        text(&tls, "ca.crt").as_deref() == Some(site_ca.as_str()),
        "{store}-tls: ca.crt is not the site CA"
    );
    let app = secrets.get(app_secret).await?;
    ensure!(
        text(&app, "ca.crt").as_deref() == Some(site_ca.as_str()),
        "{app_secret}: ca.crt is not the site CA"
    );
    ensure!(secrets.get_opt(&format!("{store}-ca")).await?.is_none(), "the operator made a CA for {store}");
    Ok(())
}

/// Ask cert-manager to renew now, as `cmctl renew` does (an Issuing
/// condition on the Certificate's status); wait for the next revision.
async fn renew(site: &Site, name: &str) -> Result<i64> {
    let api =
        Api::<DynamicObject>::namespaced_with(site.client.clone(), &site.ns.name, &certificate_resource());
    let revision = |c: &DynamicObject| c.data["status"]["revision"].as_i64().unwrap_or(0);
    let before = api.get(name).await?;
    let mut conditions = before.data["status"]["conditions"].as_array().cloned().unwrap_or_default();
    conditions.push(json!({
        "type": "Issuing", "status": "True", "reason": "ManuallyTriggered",
        "message": "renewal asked for by the e2e test", "lastTransitionTime": jiff_now(),
    }));
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": conditions}})),
    )
    .await?;
    let was = revision(&before);
    eventually(TIMEOUT, "cert-manager to renew", || async {
        let now = revision(&api.get(name).await?);
        Ok((now > was).then_some(now))
    })
    .await
}

fn jiff_now() -> String {
    k8s_openapi::jiff::Timestamp::now().round(k8s_openapi::jiff::Unit::Second).unwrap_or_default().to_string()
}

#[tokio::test]
async fn store_certificates_from_a_cert_manager_issuer_renew_under_load_and_can_go_back() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let site = Site::start("issuer").await?;
    // An issuer that does not exist: the store says what it waits for.
    site.sessions("nowhere", "replicas: 1\ntls: {issuerRef: {name: no-such-issuer}}").await?;
    let waiting = site
        .wait::<SessionStore>("nowhere", "Ready False: CertificatePending", |s| {
            ready_reason(s).as_deref() == Some("CertificatePending")
        })
        .await?;
    println!("an issuer that does not exist: {:?}", condition(&waiting, READY));
    site.api::<SessionStore>().delete("nowhere", &Default::default()).await?;
    site_issuer(&site).await?;
    let tls = format!("tls: {{issuerRef: {{name: {SITE_CA}}}}}");
    site.database(
        "db",
        &format!("instance: {{storage: {{size: 1Gi}}}}\nmirrors: 1\nreplication: sync\nfailover: {{delay: 1s}}\n{tls}"),
    )
    .await?;
    site.sessions("sessions", &format!("replicas: 1\ndurability: wait\nfailover: {{delay: 1s}}\n{tls}"))
        .await?;
    site.healthy::<DatabaseMirror>("db").await?;
    site.healthy::<SessionStore>("sessions").await?;
    issued_by_the_site_ca(&site, "db", "db-credentials").await?;
    issued_by_the_site_ca(&site, "sessions", "sessions-connection").await?;
    println!(
        "db and sessions serve certificates of the site's cert-manager CA Issuer; no CA of the operator's"
    );

    // Renewals under load: rows through db-rw, sessions confirmed by a replica.
    let load = StoreLoad::start(&site, "db", "sessions").await?;
    let members = ["db-1", "db-2", "sessions-1", "sessions-2"];
    let servers: Vec<Option<u32>> = members.iter().map(|m| site.testbed.server_pid(m)).collect();
    let loaded = || -> Vec<usize> {
        members
            .iter()
            .map(|m| site.testbed.log(m).matches("loaded a renewed server certificate").count())
            .collect()
    };
    let mut revisions = Vec::new();
    for round in 1..=2 {
        revisions.push((renew(&site, "db-tls").await?, renew(&site, "sessions-tls").await?));
        eventually(TIMEOUT, "every member to load the renewed certificate", || async {
            let counts = loaded();
            Ok(counts.iter().all(|n| *n >= round).then_some(counts))
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let tally = load.stop(&site).await?;
    let after: Vec<Option<u32>> = members.iter().map(|m| site.testbed.server_pid(m)).collect();
    println!(
        "cert-manager renewals (revisions db, sessions): {revisions:?}; loaded by {members:?}: {:?}; {tally}; \
         servers {servers:?} → {after:?}",
        loaded(),
    );
    tally.ensure_nothing_lost()?;
    ensure!(after == servers, "a server restarted: {servers:?} → {after:?}");
    let creds = site.credentials("db").await?;
    eventually(Duration::from_secs(10), "a new TLS connection verifying the renewed certificate", || async {
        Ok(connect_rw(&site.client, &site.ns.name, "db", &creds).await.ok().map(drop))
    })
    .await?;

    // Dropping the issuer: the Certificate goes, the operator's CA signs.
    site.patch_spec::<DatabaseMirror>("db", json!({"tls": null})).await?;
    let certificates =
        Api::<DynamicObject>::namespaced_with(site.client.clone(), &site.ns.name, &certificate_resource());
    wait_deleted(&certificates, "db-tls", TIMEOUT, "the Certificate of db once its issuer is dropped")
        .await?;
    let secrets = site.api::<Secret>();
    let own_ca = eventually(TIMEOUT, "the operator's CA for db, in the application Secret", || async {
        let Some(ca) = secrets.get_opt("db-ca").await? else { return Ok(None) };
        let ca = text(&ca, "ca.crt");
        let app = text(&secrets.get("db-credentials").await?, "ca.crt");
        let tls = secrets.get("db-tls").await?;
        let mine = !tls.annotations().contains_key(CERT_MANAGER_CERTIFICATE_ANNOTATION)
            && text(&tls, "ca.crt") == ca;
        Ok((mine && app == ca).then_some(ca))
    })
    .await?;
    ensure!(own_ca.is_some(), "db-ca holds no certificate");
    let creds = site.credentials("db").await?;
    eventually(TIMEOUT, "a connection verifying the operator's certificate", || async {
        Ok(connect_rw(&site.client, &site.ns.name, "db", &creds).await.ok().map(drop))
    })
    .await?;
    site.healthy::<DatabaseMirror>("db").await?;
    println!(
        "issuer dropped: Certificate db-tls deleted, db-tls issued by the operator's CA, clients verify it"
    );
    site.testbed.stop().await?;
    Ok(())
}

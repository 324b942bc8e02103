//! Guarantee 8: one bad object cannot take the operator down, nor one
//! tenant's object take another's names.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hostwright::api::common::condition_type::READY;
use hostwright::api::{DatabaseMirror, SessionStore, WebCluster};
use hostwright_e2e::site::{SERIAL, Site, TIMEOUT, ready_reason};
use hostwright_e2e::{ensure_crds, eventually, wait_for};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use serde_json::json;

/// The Ready reason of a WebCluster.
fn web_reason(wc: &WebCluster) -> Option<String> {
    let status = wc.status.as_ref()?;
    hostwright::conditions::find(&status.conditions, READY).map(|c| c.reason.clone())
}

/// Store a SessionStore the current schema refuses, as one stored before a
/// rule existed would be: the rule is lifted for the write, then restored.
async fn store_bypassing_the_schema(site: &Site, name: &str, delay: &str) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(site.client.clone());
    let mut crd = crds.get("sessionstores.hostwright.io").await?;
    for version in crd.spec.versions.iter_mut() {
        let schema =
            version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()).context("a schema")?;
        let spec = schema.properties.as_mut().and_then(|p| p.get_mut("spec")).context("spec")?;
        let failover = spec.properties.as_mut().and_then(|p| p.get_mut("failover")).context("failover")?;
        let delay_schema = failover.properties.as_mut().and_then(|p| p.get_mut("delay")).context("delay")?;
        delay_schema.pattern = None;
        delay_schema.max_length = None;
        delay_schema.x_kubernetes_validations = None;
    }
    crds.replace("sessionstores.hostwright.io", &PostParams::default(), &crd).await?;
    let gvk = GroupVersionKind::gvk("hostwright.io", "v1alpha1", "SessionStore");
    let resource = ApiResource::from_gvk(&gvk);
    let api: Api<DynamicObject> = Api::namespaced_with(site.client.clone(), &site.ns.name, &resource);
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "hostwright.io/v1alpha1",
        "kind": "SessionStore",
        "metadata": { "name": name },
        "spec": { "failover": { "delay": delay } },
    }))?;
    // The API server may take a moment to serve the lifted schema.
    let created = eventually(Duration::from_secs(30), "the lifted schema to accept the object", || async {
        Ok(api.create(&PostParams::default(), &object).await.ok())
    })
    .await;
    ensure_crds(&site.client).await?;
    created.map(drop)
}

#[tokio::test]
async fn an_object_the_operator_cannot_read_stops_nobody_else() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let site = Site::start("ch-bad").await?;
    store_bypassing_the_schema(&site, "broken", "99999999999999999999h").await?;
    // Another tenant's store, and sites with and without a reference to it.
    site.sessions("healthy", "replicas: 1").await?;
    let webs: Api<WebCluster> = site.api();
    for (name, reference) in [("plain", None), ("uses-broken", Some("broken"))] {
        let mut spec = json!({ "image": "nginx:1.27", "replicas": 2 });
        if let Some(r) = reference {
            spec["sessionStoreRef"] = json!({ "name": r });
        }
        let wc: WebCluster = serde_json::from_value(json!({
            "apiVersion": "hostwright.io/v1alpha1", "kind": "WebCluster",
            "metadata": { "name": name }, "spec": spec,
        }))?;
        webs.create(&PostParams::default(), &wc).await?;
    }

    let stores: Api<DynamicObject> =
        Api::namespaced_with(site.client.clone(), &site.ns.name, &ApiResource::erase::<SessionStore>(&()));
    let broken = eventually(TIMEOUT, "the broken store's InvalidSpec condition", || async {
        let object = stores.get("broken").await?;
        let reason = object.data.pointer("/status/conditions").and_then(|c| c.as_array()).and_then(|cs| {
            cs.iter()
                .find(|c| c["type"] == "Ready")
                .map(|c| c["reason"].as_str().unwrap_or_default().to_string())
        });
        Ok((reason.as_deref() == Some("InvalidSpec")).then_some(object))
    })
    .await?;
    println!("broken: {}", broken.data.pointer("/status/conditions/0/message").cloned().unwrap_or_default());
    site.healthy::<SessionStore>("healthy").await.context("another store of the same kind reconciles")?;
    hostwright_e2e::wait_web_ready(&webs, "plain", TIMEOUT).await.context("a site without references")?;
    let uses = wait_for(
        &webs,
        "uses-broken",
        TIMEOUT,
        "a reason naming the unreadable store",
        |w: Option<&WebCluster>| w.is_some_and(|w| web_reason(w).as_deref() == Some("SessionStoreNotReady")),
    )
    .await?;
    let message = uses
        .status
        .as_ref()
        .and_then(|s| hostwright::conditions::find(&s.conditions, READY))
        .map(|c| c.message.clone());
    println!("uses-broken: {message:?}");
    ensure!(site.operator.get("/healthz").is_ok(), "the operator still answers");
    ensure!(!site.operator.log().contains("panicked"), "the operator panicked:\n{}", site.operator.log());
    site.testbed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_name_another_object_holds_is_refused_not_taken() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let site = Site::start("ch-names").await?;
    // A SessionStore and a DatabaseMirror of one name would share pods,
    // Leases, a budget and the agents' account: the second is refused.
    site.sessions("twin", "replicas: 1").await?;
    site.healthy::<SessionStore>("twin").await?;
    site.database("twin", "instance: {storage: {size: 1Gi}}\nmirrors: 1").await?;
    let dbm: DatabaseMirror = site
        .wait("twin", "NameConflict", |d: &DatabaseMirror| ready_reason(d).as_deref() == Some("NameConflict"))
        .await?;
    println!("{:?}", dbm.status.as_ref().map(|s| &s.replication.conditions));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let store: SessionStore = site.healthy("twin").await.context("the first keeps running untouched")?;
    ensure!(
        store.status.is_some_and(|s| s.replication.failover.failover_count == 0),
        "no failover of the first"
    );

    // A WebCluster and a SessionStore of one name would share a Service.
    let webs: Api<WebCluster> = site.api();
    let wc: WebCluster = serde_json::from_value(json!({
        "apiVersion": "hostwright.io/v1alpha1", "kind": "WebCluster",
        "metadata": { "name": "front" }, "spec": { "image": "nginx:1.27", "replicas": 2 },
    }))?;
    webs.create(&PostParams::default(), &wc).await?;
    hostwright_e2e::wait_web_ready(&webs, "front", TIMEOUT).await?;
    site.sessions("front", "replicas: 1").await?;
    site.wait("front", "NameConflict", |s: &SessionStore| ready_reason(s).as_deref() == Some("NameConflict"))
        .await?;
    hostwright_e2e::wait_web_ready(&webs, "front", TIMEOUT)
        .await
        .context("the WebCluster keeps its Service")?;
    site.testbed.stop().await?;
    Ok(())
}

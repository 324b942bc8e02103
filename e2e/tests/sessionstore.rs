//! SessionStore end to end: the operator, the API server, and behind every
//! member pod a real Redis 7 with a real `hostwright agent` (run by the test
//! bed). Sites reach sessions only through the `<name>` Service's
//! EndpointSlices, with the password from `<name>-connection`.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hostwright::api::common::condition_type::READY;
use hostwright::api::{DatabaseMirror, DatabaseMirrorSpec, SessionStore, SessionStoreSpec, WebCluster};
use hostwright_e2e::operator::Operator;
use hostwright_e2e::sessions::{Sessions, Writer, all_healthy, current_primary};
use hostwright_e2e::site::{SERIAL, Site, TIMEOUT, ready_reason};
use hostwright_e2e::trials::{Loss, session_failover_trials, summary};
use hostwright_e2e::{EndpointWatch, TestNamespace, client, eventually, wait_for, wait_web_ready};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// A session writer for the store `name` (confirming each write with
/// `WAIT 1` when `confirm`).
async fn writer_of(site: &Site, name: &str, confirm: bool) -> Result<Sessions> {
    Ok(Sessions {
        client: site.client.clone(),
        namespace: site.ns.name.clone(),
        name: name.into(),
        login: hostwright_e2e::sessions::login(&site.client, &site.ns.name, name).await?,
        confirm,
    })
}

#[tokio::test]
async fn primary_loss_under_session_load_loses_no_confirmed_session() -> Result<()> {
    let _serial = SERIAL.lock().await;
    // Ten alternating trials (five of each loss) keep `make test` within its
    // time; `make bench` runs twenty of each kind in each mode.
    let trials: usize =
        std::env::var("HOSTWRIGHT_E2E_FAILOVER_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let site = Site::start("sst-failover").await?;
    site.sessions("sessions", "replicas: 2\ndurability: wait\nfailover: {delay: 1s}").await?;
    let store = site.wait::<SessionStore>("sessions", "every member healthy", all_healthy).await?;
    let status = store.status.context("status")?;
    ensure!(status.connection_secret.as_deref() == Some("sessions-connection"));
    ensure!(status.replication.members.iter().filter(|m| m.position.is_some()).count() == 3, "{status:?}");

    let report = session_failover_trials(
        &site.client,
        &site.ns.name,
        "sessions",
        &site.testbed,
        &Loss::alternating(trials),
        true,
        TIMEOUT,
        |i, t| {
            println!(
                "trial {i}: {} loss of {}: sessions resumed on {} after {:.2} s",
                t.loss, t.old_primary, t.new_primary, t.seconds
            )
        },
    )
    .await?;
    for line in summary(&report.trials) {
        println!("{line}");
    }
    println!("{} confirmed session writes, {} lost", report.confirmed_writes, report.lost.len());
    assert!(report.lost.is_empty(), "confirmed sessions lost with durability: wait: {:?}", report.lost);
    assert_eq!(report.failovers_after - report.failovers_before, trials as i64, "one failover per trial");
    assert!(report.confirmed_writes > trials * 10, "the writer kept writing");
    site.testbed.stop().await?;
    Ok(())
}

/// The pod template of the web tier's Deployment, as JSON.
async fn web_template(client: &Client, namespace: &str, name: &str) -> Result<serde_json::Value> {
    let deployment = Api::<Deployment>::namespaced(client.clone(), namespace).get(name).await?;
    Ok(serde_json::to_value(deployment.spec.context("Deployment without spec")?.template)?)
}

#[tokio::test]
async fn sessions_outlive_a_web_rollout_and_store_promotions_never_restart_the_web_tier() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let site = Site::start("sst-web").await?;
    site.sessions("sessions", "replicas: 1\ndurability: wait\nfailover: {delay: 1s}").await?;
    let databases: Api<DatabaseMirror> = site.ns.api();
    let db: DatabaseMirrorSpec = serde_yaml::from_str(
        "instance: {storage: {size: 1Gi}}\nmirrors: 1\nreplication: sync\nfailover: {delay: 1s}",
    )?;
    databases.create(&PostParams::default(), &DatabaseMirror::new("db", db)).await?;
    site.wait::<SessionStore>("sessions", "every member healthy", all_healthy).await?;
    let database_healthy = |what: &'static str| {
        let databases = databases.clone();
        async move {
            wait_for(&databases, "db", TIMEOUT, what, |o: Option<&DatabaseMirror>| o.is_some_and(all_healthy))
                .await
        }
    };
    database_healthy("every database member healthy").await?;
    let webs: Api<WebCluster> = site.ns.api();
    let web: WebCluster = serde_json::from_value(json!({
        "apiVersion": "hostwright.io/v1alpha1", "kind": "WebCluster", "metadata": {"name": "shop"},
        "spec": {"image": "shop:1", "replicas": 3, "sessionStoreRef": {"name": "sessions"}, "databaseRef": {"name": "db"}},
    }))?;
    webs.create(&PostParams::default(), &web).await?;
    wait_web_ready(&webs, "shop", TIMEOUT).await?;
    let template = web_template(&site.client, &site.ns.name, "shop").await?;
    let env = template.pointer("/spec/containers/0/env").cloned().unwrap_or_default().to_string();
    ensure!(env.contains("SESSION_STORE_URL") && env.contains("sessions-connection"), "{env}");
    ensure!(
        env.contains("DATABASE_URL") && env.contains("DATABASE_RO_URL") && env.contains("db-credentials"),
        "{env}"
    );
    ensure!(
        !env.contains(&writer_of(&site, "sessions", true).await?.login.password),
        "a password in the Deployment"
    );

    let sessions = writer_of(&site, "sessions", true).await?;
    let writer = Writer::run(sessions.clone());
    eventually(TIMEOUT, "sessions being written", || async { Ok((writer.acked().len() > 20).then_some(())) })
        .await?;

    // (a) The web tier rolls to a new image; sessions are not touched.
    let endpoints = EndpointWatch::start(&site.client, &site.ns.name, "shop").await?;
    eventually(Duration::from_secs(30), "3 ready web endpoints", || async {
        Ok((endpoints.current() == 3).then_some(()))
    })
    .await?;
    webs.patch("shop", &PatchParams::default(), &Patch::Merge(json!({"spec": {"image": "shop:2"}}))).await?;
    wait_web_ready(&webs, "shop", TIMEOUT).await?;
    let floor = endpoints.finish().await?;
    ensure!(floor >= 3, "ready web endpoints fell to {floor} during the rollout");
    let rolled = web_template(&site.client, &site.ns.name, "shop").await?;

    // (b) The store's primary dies; a replica is promoted; the web tier's
    // pod template does not change (no restart of any web server).
    let store = site.wait::<SessionStore>("sessions", "every member healthy", all_healthy).await?;
    let old = current_primary(&store).context("a primary")?;
    site.testbed.kill_server(&old).await?;
    let lost_primary = old.clone();
    site.wait("sessions", "a promoted replica", move |s: &SessionStore| {
        current_primary(s).is_some_and(|p| p != lost_primary) && all_healthy(s)
    })
    .await?;
    let before = writer.acked().len();
    eventually(TIMEOUT, "sessions written after the promotion", || async {
        Ok((writer.acked().len() > before + 20).then_some(()))
    })
    .await?;
    let confirmed = writer.stop().await;
    let lost = sessions.lost(&confirmed).await?;
    ensure!(lost.is_empty(), "confirmed sessions lost: {lost:?}");
    let after = web_template(&site.client, &site.ns.name, "shop").await?;
    ensure!(after == rolled, "the session store's promotion changed the web pod template");

    // The database's primary dies too; its mirror is promoted; still no change.
    let dbm = database_healthy("every database member healthy").await?;
    let old_db = current_primary(&dbm).context("a database primary")?;
    site.testbed.kill_server(&old_db).await?;
    let lost_db = old_db.clone();
    wait_for(&databases, "db", TIMEOUT, "a promoted mirror", move |o: Option<&DatabaseMirror>| {
        o.is_some_and(|d| current_primary(d).is_some_and(|p| p != lost_db) && all_healthy(d))
    })
    .await?;
    let after_db = web_template(&site.client, &site.ns.name, "shop").await?;
    ensure!(after_db == rolled, "the database's promotion changed the web pod template");
    let wc = wait_web_ready(&webs, "shop", TIMEOUT).await?;
    ensure!(wc.status.and_then(|s| s.image).as_deref() == Some("shop:2"));
    println!(
        "{} confirmed sessions across a rollout and promotions of {old} and {old_db}; web floor {floor}",
        confirmed.len()
    );
    site.testbed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn external_stores_and_bad_references_end_in_clear_conditions() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "sst-external", &[]).await?;
    let _operator = Operator::start(&client, &ns.name, "solo").await?;
    let stores: Api<SessionStore> = ns.api();
    let secrets: Api<Secret> = ns.api();
    let secret = |name: &str, data: serde_json::Value| -> Result<Secret> {
        Ok(serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}),
        )?)
    };
    let external = |name: &str, secret: &str| -> Result<SessionStore> {
        let spec: SessionStoreSpec =
            serde_yaml::from_str(&format!("external: {{secretRef: {{name: {secret}}}}}"))?;
        Ok(SessionStore::new(name, spec))
    };
    let reason_of = |name: &'static str, reason: &'static str| {
        let stores = stores.clone();
        async move {
            wait_for(&stores, name, TIMEOUT, reason, move |o: Option<&SessionStore>| {
                o.and_then(ready_reason).as_deref() == Some(reason)
            })
            .await
        }
    };

    // A Secret without url or host.
    secrets.create(&PostParams::default(), &secret("partial", json!({"password": "x"}))?).await?;
    stores.create(&PostParams::default(), &external("partial", "partial")?).await?;
    let s = reason_of("partial", "ExternalSecretInvalid").await?;
    let message = hostwright::conditions::find(&s.status.context("status")?.replication.conditions, READY)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    ensure!(message.contains("neither url nor host"), "{message}");

    // A Secret naming a port nobody listens on (loopback only).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    secrets
        .create(
            &PostParams::default(),
            &secret("gone", json!({"host": "127.0.0.1", "port": closed.to_string()}))?,
        )
        .await?;
    stores.create(&PostParams::default(), &external("gone", "gone")?).await?;
    reason_of("gone", "ExternalUnreachable").await?;

    // A Secret that does not exist.
    stores.create(&PostParams::default(), &external("missing", "nope")?).await?;
    reason_of("missing", "ExternalSecretNotFound").await?;

    // A real Redis answering on loopback: Ready, published, usable by a site.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = tempdir(&ns.name)?;
    let mut redis = tokio::process::Command::new("/usr/bin/redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--requirepass",
            "provider-pw",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(&dir)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting redis-server")?;
    secrets
        .create(
            &PostParams::default(),
            &secret("provider", json!({"url": format!("redis://:provider-pw@127.0.0.1:{port}/0")}))?,
        )
        .await?;
    stores.create(&PostParams::default(), &external("provided", "provider")?).await?;
    reason_of("provided", "ExternalAnswers").await?;
    let published = secrets.get("provided-connection").await?;
    let url = published.data.and_then(|d| d.get("url").cloned()).context("a url")?;
    ensure!(String::from_utf8(url.0)? == format!("redis://:provider-pw@127.0.0.1:{port}/0"));
    let webs: Api<WebCluster> = ns.api();
    let web: WebCluster = serde_json::from_value(json!({
        "apiVersion": "hostwright.io/v1alpha1", "kind": "WebCluster", "metadata": {"name": "blog"},
        "spec": {"image": "blog:1", "replicas": 2, "sessionStoreRef": {"name": "provided"}},
    }))?;
    webs.create(&PostParams::default(), &web).await?;
    wait_web_ready(&webs, "blog", TIMEOUT).await?;

    // A reference to another namespace is refused by the API server.
    let across: WebCluster = serde_json::from_value(json!({
        "apiVersion": "hostwright.io/v1alpha1", "kind": "WebCluster", "metadata": {"name": "across"},
        "spec": {"image": "blog:1", "sessionStoreRef": {"name": "provided", "namespace": "elsewhere"}},
    }))?;
    let refused = webs.create(&PostParams::default(), &across).await;
    let error = refused.err().context("a cross-namespace reference was accepted")?.to_string();
    ensure!(error.contains("references are same-namespace"), "{error}");
    let _ = redis.kill().await;
    Ok(())
}

fn tempdir(name: &str) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join("hostwright-e2e").join(name).join("external-redis");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

//! Security of the data path, end to end on the test bed: the operator,
//! the API server, and behind every member a real PostgreSQL or Redis with a
//! real agent. The operator issues certificates of a one-minute lifetime
//! here, so they are renewed (at two thirds) while the test writes.
//!
//! Shown: TLS on client and replication connections, plaintext refused, the
//! application's user confined to data, web pods that reference the
//! application's Secrets alone, renewal under write load with no
//! acknowledged write lost and no server restarted, and no password in any
//! command line or log.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hostwright::api::{DatabaseMirror, SessionStore, WebCluster};
use hostwright_e2e::database::{Credentials, connect_rw, member_host};
use hostwright_e2e::sessions;
use hostwright_e2e::site::{SERIAL, Site, StoreLoad, TIMEOUT};
use hostwright_e2e::{eventually, wait_web_ready};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ListParams, PostParams};
use serde_json::json;

/// Certificates live a minute: renewed every forty seconds.
const LIFETIME: &str = "60";
/// How long the load runs: at least two renewals of each store's certificate.
const LOAD: Duration = Duration::from_secs(100);

#[tokio::test]
async fn tls_separate_identities_and_renewal_under_load() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let site = Site::start_with("security", &[("HOSTWRIGHT_CERTIFICATE_LIFETIME_SECONDS", LIFETIME)]).await?;
    site.database(
        "db",
        "instance: {storage: {size: 1Gi}}\nmirrors: 1\nreplication: sync\nfailover: {delay: 1s}",
    )
    .await?;
    site.sessions("sessions", "replicas: 1\ndurability: wait\nfailover: {delay: 1s}").await?;
    site.healthy::<DatabaseMirror>("db").await?;
    site.healthy::<SessionStore>("sessions").await?;

    web_pods_reference_the_application_secrets_alone(&site).await?;
    postgres_is_tls_only_and_the_app_user_is_confined(&site).await?;
    redis_is_tls_only_and_the_app_user_runs_data_commands_only(&site).await?;
    renewal_under_load_loses_nothing_and_restarts_nothing(&site).await?;
    no_password_in_command_lines_or_logs(&site).await?;
    site.testbed.stop().await?;
    Ok(())
}

/// Every Secret a web pod of a WebCluster referencing both stores names.
async fn web_pods_reference_the_application_secrets_alone(site: &Site) -> Result<()> {
    let web: WebCluster = serde_json::from_value(json!({
        "apiVersion": "hostwright.io/v1alpha1", "kind": "WebCluster", "metadata": {"name": "shop"},
        "spec": {"image": "shop:1", "replicas": 2, "sessionStoreRef": {"name": "sessions"}, "databaseRef": {"name": "db"}},
    }))?;
    site.api::<WebCluster>().create(&PostParams::default(), &web).await?;
    wait_web_ready(&site.api(), "shop", TIMEOUT).await?;
    let deployment = site.api::<Deployment>().get("shop").await?;
    let template = serde_json::to_value(deployment.spec.context("spec")?.template)?;
    let mut named = BTreeSet::new();
    collect_secret_names(&template, &mut named);
    let wanted: BTreeSet<String> = ["db-credentials", "sessions-connection"].map(String::from).into();
    ensure!(named == wanted, "the web pods reference Secrets {named:?}, not only {wanted:?}");
    println!("web pods reference {named:?}");

    // Each store lets in its own members and the web tier that references it.
    for store in ["db", "sessions"] {
        let shop = hostwright::resources::labels::selector("webcluster", "shop");
        eventually(TIMEOUT, "the store's NetworkPolicy to admit the web tier", || async {
            let policy = site.api::<NetworkPolicy>().get_opt(store).await?;
            let peers: Vec<_> = policy
                .and_then(|p| p.spec)
                .and_then(|s| s.ingress)
                .unwrap_or_default()
                .into_iter()
                .flat_map(|rule| rule.from.unwrap_or_default())
                .filter_map(|peer| peer.pod_selector.and_then(|s| s.match_labels))
                .collect();
            Ok(peers.contains(&shop).then_some(peers))
        })
        .await
        .with_context(|| format!("NetworkPolicy {store}"))?;
    }
    Ok(())
}

/// `secretName` of volumes, `name` of `secretKeyRef`s and `secretRef`s.
fn collect_secret_names(value: &serde_json::Value, into: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("secretName", serde_json::Value::String(name)) => drop(into.insert(name.clone())),
                    ("secretKeyRef" | "secretRef", serde_json::Value::Object(r)) => {
                        if let Some(serde_json::Value::String(name)) = r.get("name") {
                            into.insert(name.clone());
                        }
                    }
                    _ => collect_secret_names(v, into),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_secret_names(v, into)),
        _ => {}
    }
}

async fn postgres_is_tls_only_and_the_app_user_is_confined(site: &Site) -> Result<()> {
    let creds = site.credentials("db").await?;
    let db = connect_rw(&site.client, &site.ns.name, "db", &creds).await?;
    let ssl: bool =
        db.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await?.get(0);
    ensure!(ssl, "the application's connection is not TLS");

    let primary = hostwright_e2e::database::current_primary(&site.api::<DatabaseMirror>().get("db").await?)
        .context("a primary")?;
    let rows = site
        .superuser(&primary)
        .await?
        .query("SELECT s.ssl, s.version FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)", &[])
        .await?;
    ensure!(!rows.is_empty(), "no mirror streams");
    for row in &rows {
        let (ssl, version): (bool, Option<String>) = (row.get(0), row.get(1));
        ensure!(ssl, "a mirror streams without TLS");
        println!("replication over {}", version.unwrap_or_default());
    }

    let host = member_host(&site.client, &site.ns.name, &primary).await?;
    let mut plain = tokio_postgres::Config::new();
    plain.host(&host).port(5432).user(&creds.user).password(&creds.password).dbname(&creds.database);
    plain.ssl_mode(tokio_postgres::config::SslMode::Disable).connect_timeout(Duration::from_secs(2));
    let refused =
        plain.connect(tokio_postgres::NoTls).await.err().context("a plaintext connection was accepted")?;
    println!("plaintext: {}", refused.as_db_error().map_or(refused.to_string(), |e| e.message().to_string()));

    let other_database = Credentials { database: "postgres".into(), ..creds.clone() };
    ensure!(other_database.connect(&host).await.is_err(), "the application's user reached database postgres");
    let superuser_login = Credentials { user: "postgres".into(), ..creds.clone() };
    ensure!(superuser_login.connect(&host).await.is_err(), "a superuser login over the network");
    ensure!(
        db.batch_execute("CREATE ROLE intruder LOGIN").await.is_err(),
        "the application's user created a role"
    );
    ensure!(
        db.batch_execute("CREATE DATABASE other").await.is_err(),
        "the application's user created a database"
    );
    Ok(())
}

async fn redis_is_tls_only_and_the_app_user_runs_data_commands_only(site: &Site) -> Result<()> {
    let login = sessions::login(&site.client, &site.ns.name, "sessions").await?;
    let mut app = sessions::connect_primary(&site.client, &site.ns.name, "sessions", &login).await?;
    let () = redis::cmd("SET").arg("session:probe").arg("ok").query_async(&mut app).await?;
    for command in [
        &["CONFIG", "GET", "*"][..],
        &["REPLICAOF", "NO", "ONE"],
        &["SHUTDOWN"],
        &["ACL", "LIST"],
        &["FLUSHALL"],
        &["KEYS", "*"],
    ] {
        let refused = redis::cmd(command[0]).arg(&command[1..]).query_async::<redis::Value>(&mut app).await;
        let error = refused.err().with_context(|| format!("the application's user ran {command:?}"))?;
        ensure!(error.to_string().to_lowercase().contains("noperm"), "{command:?}: {error}");
    }

    let store = site.api::<SessionStore>().get("sessions").await?;
    let primary = hostwright_e2e::database::current_primary(&store).context("a primary")?;
    let host = member_host(&site.client, &site.ns.name, &primary).await?;
    let plain = redis::Client::open(format!("redis://app:{}@{host}:6379/0", login.password))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    let answered = async {
        let mut c = plain.get_multiplexed_async_connection_with_config(&config).await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    };
    ensure!(answered.await.is_err(), "a plaintext connection was answered");

    // The agent's view over its unix socket: TLS the only port, the replica's link up.
    let admin = agent_password(site, "sessions-agent").await?;
    for member in store.status.as_ref().map(|s| s.replication.members.clone()).unwrap_or_default() {
        let socket = site.testbed.run_dir(&member.name).context("run directory")?.join("redis.sock");
        let info = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Unix(socket))?
            .set_redis_settings(
                redis::RedisConnectionInfo::default().set_username("hostwright").set_password(&admin),
            );
        let mut c = redis::Client::open(info)?.get_multiplexed_async_connection().await?;
        let ports: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("*port").query_async(&mut c).await?;
        let replication: String = redis::cmd("INFO").arg("replication").query_async(&mut c).await?;
        let link = replication.lines().find(|l| l.starts_with("master_link_status")).unwrap_or("role:master");
        println!("{}: {ports:?}; {link}", member.name);
        ensure!(
            ports.windows(2).any(|p| p == ["port", "0"]),
            "{}: a plaintext port is open: {ports:?}",
            member.name
        );
        ensure!(!link.contains("down"), "{}: {link}", member.name);
    }
    Ok(())
}

async fn agent_password(site: &Site, secret: &str) -> Result<String> {
    let secret = site.api::<Secret>().get(secret).await?;
    let value =
        secret.data.and_then(|d| d.get("superuser-password").cloned()).context("superuser-password")?;
    Ok(String::from_utf8(value.0)?)
}

/// Writes to both stores through their Services while both certificates
/// are renewed at least twice; then count what was lost.
async fn renewal_under_load_loses_nothing_and_restarts_nothing(site: &Site) -> Result<()> {
    let load = StoreLoad::start(site, "db", "sessions").await?;
    let members = ["db-1", "db-2", "sessions-1", "sessions-2"];
    let servers: Vec<Option<u32>> = members.iter().map(|m| site.testbed.server_pid(m)).collect();
    tokio::time::sleep(LOAD).await;
    let issued = issued(site).await?;
    let tally = load.stop(site).await?;
    let reloaded: Vec<usize> = members
        .iter()
        .map(|m| site.testbed.log(m).matches("loaded a renewed server certificate").count())
        .collect();
    println!(
        "certificates issued (first and renewals) in {:.0} s: db {}, sessions {}; renewals loaded by {members:?}: {reloaded:?}; {tally}",
        LOAD.as_secs_f64(),
        issued.0,
        issued.1,
    );
    ensure!(issued.0 >= 3 && issued.1 >= 3, "fewer than two renewals of each certificate: {issued:?}");
    ensure!(reloaded.iter().all(|n| *n >= 1), "a member never loaded a renewed certificate: {reloaded:?}");
    tally.ensure_nothing_lost()?;
    let after: Vec<Option<u32>> = members.iter().map(|m| site.testbed.server_pid(m)).collect();
    ensure!(after == servers, "a server restarted: {servers:?} → {after:?}");
    // A client that connects now verifies the renewed certificate.
    let creds = site.credentials("db").await?;
    eventually(Duration::from_secs(10), "a new TLS connection", || async {
        Ok(connect_rw(&site.client, &site.ns.name, "db", &creds).await.ok().map(drop))
    })
    .await?;
    Ok(())
}

/// Certificates issued per store, as the CertificateIssued Events count
/// them (a repeated Event is one object with a series count): the first
/// issue and every renewal.
async fn issued(site: &Site) -> Result<(usize, usize)> {
    let events = site.api::<Event>().list(&ListParams::default()).await?;
    let count = |store: &str| {
        events
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("CertificateIssued"))
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(store))
            .map(|e| e.series.as_ref().map_or(1, |s| s.count.max(1) as usize))
            .sum::<usize>()
    };
    Ok((count("db"), count("sessions")))
}

/// Every password of both stores, looked for in every process's command
/// line, the operator's log and every agent's.
async fn no_password_in_command_lines_or_logs(site: &Site) -> Result<()> {
    let mut passwords = Vec::new();
    for name in ["db-agent", "sessions-agent", "db-credentials", "sessions-connection"] {
        let secret = site.api::<Secret>().get(name).await?;
        for (key, value) in secret.data.unwrap_or_default() {
            if key.contains("password") {
                passwords.push(String::from_utf8(value.0)?);
            }
        }
    }
    ensure!(passwords.len() >= 6, "found {} passwords", passwords.len());
    let ps = std::process::Command::new("ps").args(["-eww", "-o", "args"]).output()?;
    let command_lines = String::from_utf8_lossy(&ps.stdout).into_owned();
    let mut places = vec![("ps", command_lines), ("operator log", site.operator.log())];
    for member in ["db-1", "db-2", "sessions-1", "sessions-2"] {
        places.push((member, site.testbed.log(member)));
    }
    for (place, text) in &places {
        for password in &passwords {
            ensure!(!text.contains(password.as_str()), "a password appears in the {place}");
        }
    }
    println!("no password in ps output ({} lines) or {} logs", places[0].1.lines().count(), places.len() - 1);
    Ok(())
}

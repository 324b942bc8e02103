//! DatabaseMirror end to end: the operator, the API server, and behind every
//! member pod a real PostgreSQL 15 with a real `hostwright agent` (run by the
//! test bed, which plays kubelet and the storage driver). Clients reach the
//! servers only through the Services' EndpointSlices.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hostwright::api::DatabaseMirror;
use hostwright::api::common::condition_type::READY;
use hostwright::api::common::{MemberRole, StorePhase};
use hostwright_e2e::database::{Credentials, all_healthy, connect_rw, current_primary, member_host};
use hostwright_e2e::site::{SERIAL, Site, TIMEOUT, ready_reason};
use hostwright_e2e::trials::{Loss, failover_trials, summary};
use hostwright_e2e::{eventually, kubectl};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

async fn count_on(creds: &Credentials, host: &str, table: &str) -> Result<i64> {
    let db = creds.connect(host).await?;
    Ok(db.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await?.get(0))
}

#[tokio::test]
async fn a_new_database_streams_to_its_mirrors_grows_and_keeps_its_data() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let site = Site::start("dbm-grow").await?;
    site.database("grow", "instance: {storage: {size: 1Gi}}\nmirrors: 1").await?;
    let dbm = site.healthy::<DatabaseMirror>("grow").await?;
    assert_eq!(current_primary(&dbm).as_deref(), Some("grow-1"));

    site.sql("grow", "CREATE TABLE items (id int)").await?;
    site.sql("grow", "INSERT INTO items SELECT generate_series(1, 500)").await?;
    let creds = site.credentials("grow").await?;
    let ro = hostwright_e2e::testbed::ready_endpoints(&site.client, &site.ns.name, "grow-ro").await?;
    ensure!(ro.len() == 1, "one mirror behind grow-ro: {ro:?}");
    eventually(TIMEOUT, "the rows on the mirror behind grow-ro", || async {
        Ok(count_on(&creds, &ro[0], "items").await.ok().filter(|n| *n == 500))
    })
    .await?;

    // Lag is reported per member and in the printer columns.
    let dbm = site
        .wait("grow", "lag reported", |d: &DatabaseMirror| {
            d.status.as_ref().is_some_and(|s| {
                s.replication.members.iter().any(|m| m.role == MemberRole::Mirror && m.lag_bytes.is_some())
            })
        })
        .await?;
    assert_eq!(dbm.status.as_ref().and_then(|s| s.equal_spec), Some(true));
    let table = kubectl(&["get", "databasemirrors", "-n", &site.ns.name])?;
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "PRIMARY", "MIRRORS", "READY", "LAG", "PHASE", "LAST-FAILOVER", "AGE"]);
    let row: Vec<&str> = table.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    assert_eq!(&row[..4], ["grow", "grow-1", "1", "2/2"], "{table}");
    assert!(row.contains(&"Ready"), "{table}");

    // Growing adds a member that copies the primary and streams from it.
    site.patch_spec::<DatabaseMirror>("grow", json!({"mirrors": 2})).await?;
    site.healthy::<DatabaseMirror>("grow").await?;
    let host = member_host(&site.client, &site.ns.name, "grow-3").await?;
    eventually(TIMEOUT, "the rows on the new mirror", || async {
        Ok(count_on(&creds, &host, "items").await.ok().filter(|n| *n == 500))
    })
    .await?;

    // Deleting the DatabaseMirror keeps the data volumes and the members'
    // Secret (whose passwords open the data); the application's Secret is
    // rebuilt from it when the store is made again.
    site.api::<DatabaseMirror>().delete("grow", &DeleteParams::foreground()).await?;
    hostwright_e2e::wait_deleted(&site.api::<DatabaseMirror>(), "grow", TIMEOUT, "the DatabaseMirror")
        .await?;
    let volumes: Api<PersistentVolumeClaim> = site.ns.api();
    for m in ["grow-1", "grow-2", "grow-3"] {
        let pvc = volumes.get(m).await.with_context(|| format!("volume {m} kept"))?;
        assert_eq!(pvc.status.and_then(|s| s.phase).as_deref(), Some("Bound"));
    }
    site.ns.api::<Secret>().get("grow-agent").await.context("the members' Secret kept with the data")?;
    site.testbed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn failover_under_write_load_loses_no_acknowledged_write_in_sync_mode() -> Result<()> {
    let _serial = SERIAL.lock().await;
    // Ten alternating trials (five of each loss) keep `make test` within its
    // time; `make bench` runs twenty of each kind in each mode.
    let trials: usize =
        std::env::var("HOSTWRIGHT_E2E_FAILOVER_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let site = Site::start("dbm-failover").await?;
    site.database(
        "load",
        "instance: {storage: {size: 1Gi}}\nmirrors: 2\nreplication: sync\nfailover: {delay: 1s}",
    )
    .await?;
    let report = failover_trials(
        &site.client,
        &site.ns.name,
        "load",
        &site.testbed,
        &Loss::alternating(trials),
        TIMEOUT,
        |i, t| {
            println!(
                "trial {i}: {:?} loss of {}: writes resumed on {} after {:.2} s",
                t.loss, t.old_primary, t.new_primary, t.seconds
            )
        },
    )
    .await?;

    for line in summary(&report.trials) {
        println!("{line}");
    }
    let overlaps = &report.overlaps;
    println!(
        "{} acknowledged writes, {} lost; {} probe writes accepted, {} overlapping",
        report.acked_writes,
        report.lost.len(),
        report.probe_accepted,
        overlaps.len()
    );
    assert!(
        overlaps.is_empty(),
        "two members accepted writes at the same moment: {:?}",
        &overlaps[..overlaps.len().min(3)]
    );
    assert!(report.lost.is_empty(), "acknowledged writes lost in sync mode: {:?}", report.lost);
    assert_eq!(report.failovers_after, trials as i64, "one failover per trial");
    assert!(report.acked_writes > trials * 10, "the writer kept writing");
    site.testbed.stop().await?;
    Ok(())
}

#[tokio::test]
async fn switchover_credentials_and_a_mirror_too_far_behind() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let site = Site::start("dbm-ops").await?;
    site.database("ops", "instance: {storage: {size: 1Gi}}\nmirrors: 1\nfailover: {delay: 1s}").await?;
    site.healthy::<DatabaseMirror>("ops").await?;
    site.sql("ops", "CREATE TABLE items (id int, pad text)").await?;
    site.sql("ops", "INSERT INTO items SELECT generate_series(1, 1000), ''").await?;

    // A planned switchover: clean demotion, nothing lost, the old primary a mirror.
    site.patch_spec::<DatabaseMirror>("ops", json!({"primary": "ops-2"})).await?;
    let dbm = site
        .wait("ops", "ops-2 primary after the switchover", |d: &DatabaseMirror| {
            current_primary(d).as_deref() == Some("ops-2") && all_healthy(d)
        })
        .await?;
    let status = dbm.status.clone().unwrap_or_default();
    assert_eq!(status.replication.failover.failover_count, 1);
    assert_eq!(
        status.replication.members.iter().find(|m| m.name == "ops-1").map(|m| m.role),
        Some(MemberRole::Mirror)
    );
    let n: i64 = site.sql("ops", "SELECT count(*) FROM items").await?[0].get(0);
    assert_eq!(n, 1000, "a switchover loses nothing");
    let events = kubectl(&[
        "get",
        "events",
        "-n",
        &site.ns.name,
        "--field-selector",
        "reason=SwitchoverStarted",
        "-o",
        "name",
    ])?;
    assert!(!events.trim().is_empty(), "a SwitchoverStarted event");

    // The members' Secret deleted by hand is refused, not regenerated: the
    // data opens only with the old passwords. The application's Secret
    // holds none of them, and keeps serving meanwhile.
    let secrets: Api<Secret> = site.ns.api();
    let saved = secrets.get("ops-agent").await?;
    secrets.delete("ops-agent", &DeleteParams::default()).await?;
    site.wait("ops", "Ready=False CredentialsMissing", |d: &DatabaseMirror| {
        ready_reason(d).as_deref() == Some("CredentialsMissing")
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(secrets.get_opt("ops-agent").await?.is_none(), "the operator does not invent new passwords");
    let creds = site.credentials("ops").await?;
    let db = connect_rw(&site.client, &site.ns.name, "ops", &creds).await?;
    db.execute("INSERT INTO items VALUES (1001, '')", &[]).await.context("the primary keeps serving")?;
    let mut restored = Secret { data: saved.data.clone(), type_: saved.type_.clone(), ..Secret::default() };
    restored.metadata.name = Some("ops-agent".into());
    restored.metadata.labels = Some(saved.labels().clone());
    secrets.create(&PostParams::default(), &restored).await?;
    site.wait("ops", "Ready again once the Secret is restored", |d: &DatabaseMirror| {
        ready_reason(d).as_deref() == Some("PrimaryServing")
    })
    .await?;

    // Every mirror too far behind: no promotion, and a condition says why.
    site.patch_spec::<DatabaseMirror>("ops", json!({"failover": {"maxLagBytes": 1024}})).await?;
    site.healthy::<DatabaseMirror>("ops").await?;
    let receiver = walreceiver_pid("ops_1")?;
    signal(receiver, "STOP")?;
    site.sql("ops", "INSERT INTO items SELECT generate_series(2001, 4000), repeat('x', 200)").await?;
    site.wait("ops", "the mirror's lag above maxLagBytes", |d: &DatabaseMirror| {
        d.status.as_ref().is_some_and(|s| {
            s.replication.members.iter().any(|m| m.name == "ops-1" && m.lag_bytes.unwrap_or(0) > 1024)
        })
    })
    .await?;
    site.testbed.kill_member("ops-2").await?;
    let dbm = site
        .wait("ops", "FailoverBlocked", |d: &DatabaseMirror| {
            ready_reason(d).as_deref() == Some("FailoverBlocked")
        })
        .await?;
    let status = dbm.status.clone().unwrap_or_default();
    let message = hostwright::conditions::find(&status.replication.conditions, READY)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("maxLagBytes"), "{message}");
    assert_eq!(status.replication.phase, Some(StorePhase::Failed));
    assert_eq!(status.replication.failover.failover_count, 1, "no promotion");
    // The primary returns: nobody was promoted, so it simply serves again,
    // and the mirror (its receiver resumed) catches up.
    site.testbed.revive("ops-2")?;
    site.wait("ops", "ops-2 serving again", |d: &DatabaseMirror| {
        current_primary(d).as_deref() == Some("ops-2")
    })
    .await?;
    signal(receiver, "CONT")?;
    let dbm = site.healthy::<DatabaseMirror>("ops").await?;
    assert_eq!(dbm.status.map(|s| s.replication.failover.failover_count), Some(1));
    let n: i64 = site.sql("ops", "SELECT count(*) FROM items").await?[0].get(0);
    assert_eq!(n, 3001);
    site.testbed.stop().await?;
    Ok(())
}

/// The walreceiver of the server whose cluster_name is `cluster`.
fn walreceiver_pid(cluster: &str) -> Result<u32> {
    let out = std::process::Command::new("pgrep")
        .args(["-f", &format!("postgres: {cluster}: walreceiver")])
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    text.lines().next().context("a walreceiver process")?.trim().parse().context("pid")
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = std::process::Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status()?;
    ensure!(status.success(), "kill -{sig} {pid}");
    Ok(())
}

//! WAL archiving of a DatabaseMirror to a real S3-compatible server (the
//! local control plane's s3s-fs), end to end on the test bed: the operator,
//! the API server, and behind every member a real PostgreSQL and agent.
//!
//! Shown, while rows are written without pause:
//! 1. WAL segments reach the bucket under `<namespace>/<name>/wal/`, and
//!    the status says which was archived last and how far behind it is;
//! 2. the object store goes away: the store turns `Degraded` with reason
//!    `ArchivingFailing` within the bound (`FAILING_FOR` plus PostgreSQL's
//!    retry wait), the primary keeps taking writes, and when the store
//!    returns archiving resumes by itself and the condition clears;
//! 3. the primary's machine fails: the new primary archives its timeline's
//!    history and segments into the same prefix, and the old timeline has no
//!    gap up to the fork;
//! 4. no acknowledged row is lost through all of it.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use hostwright::api::DatabaseMirror;
use hostwright::api::common::condition_type::DEGRADED;
use hostwright::controllers::members::archiving::FAILING_FOR;
use hostwright_e2e::backups::TestStore;
use hostwright_e2e::database::{Writer, connect_rw, current_primary, lost_writes};
use hostwright_e2e::eventually;
use hostwright_e2e::site::{SERIAL, Site, condition};
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;

/// How long archiving may fail before the condition must show: the bound
/// the status promises, plus PostgreSQL's wait between rounds of retries
/// (60 s) and a reconcile.
const DEGRADED_WITHIN: Duration = Duration::from_millis(FAILING_FOR + 75_000);

async fn db(site: &Site) -> Result<DatabaseMirror> {
    Ok(site.api::<DatabaseMirror>().get("db").await?)
}

fn last_archived(db: &DatabaseMirror) -> Option<String> {
    db.status.as_ref()?.backup.as_ref()?.last_archived_wal.clone()
}

/// Wait until the status reports `wal` (or a later segment) archived.
async fn archived(site: &Site, wal: &str, what: &str) -> Result<DatabaseMirror> {
    let wal = wal.to_string();
    site.wait::<DatabaseMirror>("db", what, move |d| {
        last_archived(d).is_some_and(|a| a.as_str() >= wal.as_str())
    })
    .await
}

#[tokio::test]
async fn wal_is_archived_through_an_outage_of_the_store_and_a_failover_without_a_gap() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let store = TestStore::from_cluster()?;
    let site = Site::start("backup").await?;
    site.api::<Secret>().create(&PostParams::default(), &store.secret("s3")).await?;
    let prefix = format!("{}/db", site.ns.name);
    site.database(
        "db",
        &format!(
            "instance: {{storage: {{size: 1Gi}}}}\nmirrors: 1\nreplication: sync\nfailover: {{delay: 1s}}\n\
             backup: {{objectStore: {{endpoint: '{}', bucket: {}, credentials: {{secretName: s3}}}}}}",
            store.endpoint, store.bucket
        ),
    )
    .await?;
    let healthy = site.healthy::<DatabaseMirror>("db").await?;
    let primary = current_primary(&healthy).context("a primary")?;
    let creds = site.credentials("db").await?;
    connect_rw(&site.client, &site.ns.name, "db", &creds)
        .await?
        .batch_execute("CREATE TABLE acked (id bigint PRIMARY KEY)")
        .await?;
    let rows = Writer::start(site.client.clone(), site.ns.name.clone(), "db".into(), creds.clone(), "acked");

    // 1. Segments reach the bucket; the status follows.
    let closed = site.switch_wal(&primary).await?;
    let seen = archived(&site, &closed, "the closed segment archived").await?;
    let key = format!("{prefix}/wal/00000001/{closed}");
    let keys = store.keys(&format!("{prefix}/wal")).await?;
    ensure!(keys.contains(&key), "{key} is not in the bucket: {keys:?}");
    let backup = seen.status.as_ref().and_then(|s| s.backup.clone()).context("status.backup")?;
    println!(
        "archived {closed} ({} keys under {prefix}/wal); status: lag {:?} bytes, {:?} s",
        keys.len(),
        backup.archive_lag_bytes,
        backup.archive_lag_seconds
    );

    // 2. The object store goes away, and comes back.
    store.stop().await?;
    let stopped = Instant::now();
    let acked_before = rows.acked().len();
    let failing = site.switch_wal(&primary).await?;
    let degraded = eventually(DEGRADED_WITHIN, "Degraded: ArchivingFailing", || async {
        let d = db(&site).await?;
        Ok((condition(&d, DEGRADED) == Some(("True".into(), "ArchivingFailing".into()))).then_some(d))
    })
    .await;
    let degraded_after = stopped.elapsed();
    let acked_during = rows.acked().len() - acked_before;
    store.start().await?;
    let degraded = degraded?;
    let message = degraded
        .status
        .as_ref()
        .and_then(|s| hostwright::conditions::find(&s.replication.conditions, DEGRADED))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    println!(
        "object store down: Degraded ArchivingFailing after {:.0} s (bound {:.0} s), {acked_during} rows acknowledged \
         meanwhile; {message}",
        degraded_after.as_secs_f64(),
        DEGRADED_WITHIN.as_secs_f64()
    );
    ensure!(acked_during > 0, "the primary took no writes while the object store was away");
    let resumed = Instant::now();
    archived(&site, &failing, "archiving to resume once the store is back").await?;
    site.wait::<DatabaseMirror>("db", "the ArchivingFailing condition to clear", |d| {
        condition(d, DEGRADED).is_some_and(|(_, reason)| reason != "ArchivingFailing")
    })
    .await?;
    println!(
        "object store back: {failing} archived and the condition cleared {:.0} s later",
        resumed.elapsed().as_secs_f64()
    );

    // 3. The primary's machine fails; the new primary archives timeline 2.
    let before_failover = site.switch_wal(&primary).await?;
    archived(&site, &before_failover, "the last segment before the failover").await?;
    let new_primary = site.lose_primary_machine("db", &primary).await?;
    let on_new_timeline = site.switch_wal(&new_primary).await?;
    ensure!(on_new_timeline.starts_with("00000002"), "the new primary writes timeline 2: {on_new_timeline}");
    archived(&site, &on_new_timeline, "a segment of timeline 2 archived").await?;
    let keys = store.keys(&format!("{prefix}/wal")).await?;
    ensure!(keys.contains(&format!("{prefix}/wal/00000002.history")), "no history file: {keys:?}");
    let gaps = gaps(&keys, &format!("{prefix}/wal/00000001/"));
    println!(
        "failover {primary} → {new_primary}: {} keys, timeline 2 from {on_new_timeline}; gaps in timeline 1: {gaps:?}",
        keys.len()
    );
    ensure!(gaps.is_empty(), "timeline 1 has gaps in the archive: {gaps:?}");

    // 4. Nothing acknowledged was lost.
    let acked = rows.stop().await;
    let lost = lost_writes(&site.client, &site.ns.name, "db", &creds, "acked", &acked).await?;
    println!("{} rows acknowledged, {} lost", acked.len(), lost.len());
    ensure!(lost.is_empty(), "acknowledged rows lost: {lost:?}");
    site.testbed.stop().await?;
    Ok(())
}

/// Segments missing between the first and the last archived segment of
/// one timeline (the 24-hex names under `dir`, `.partial` aside).
fn gaps(keys: &[String], dir: &str) -> Vec<String> {
    let numbers: Vec<u64> = keys
        .iter()
        .filter_map(|k| k.strip_prefix(dir))
        .filter(|name| name.len() == 24)
        .filter_map(|name| {
            let log = u64::from_str_radix(&name[8..16], 16).ok()?;
            let segment = u64::from_str_radix(&name[16..24], 16).ok()?;
            Some(log * 256 + segment)
        })
        .collect();
    let (Some(first), Some(last)) = (numbers.iter().min(), numbers.iter().max()) else { return Vec::new() };
    (*first..=*last)
        .filter(|n| !numbers.contains(n))
        .map(|n| format!("{:08X}{:08X}", n / 256, n % 256))
        .collect()
}

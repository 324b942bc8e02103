//! Base backups and point-in-time recovery of a DatabaseMirror, end to end
//! on the test bed (the operator, the API server, behind every member a
//! real PostgreSQL and agent, the test bed's real S3 server):
//!
//! 1. a base backup asked for by annotation is taken from the mirror, not
//!    the primary, and the status records it and the recoverability points;
//! 2. rows are written, the primary's machine fails (a failover to
//!    timeline 2), more rows are written, the time T is noted, more rows
//!    follow, then the table is dropped;
//! 3. a new DatabaseMirror recovers to T from the backups: exactly the rows
//!    acknowledged before T are there, across the failover, and it serves
//!    as a normal primary with a streaming mirror, with its own passwords;
//! 4. retention: with `backups: 2`, a third backup leaves two in the store
//!    and the WAL before the oldest kept one is gone.

use std::collections::BTreeSet;

use anyhow::{Context, Result, ensure};
use hostwright::api::DatabaseMirror;
use hostwright_e2e::backups::{self, TestStore, backup_status};
use hostwright_e2e::database::{connect_rw, current_primary};
use hostwright_e2e::site::{SERIAL, Site, TIMEOUT};
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;

/// Ask for a base backup and wait for it; its record.
async fn back_up(site: &Site, name: &str, request: &str) -> Result<hostwright::api::backup::BackupRecord> {
    backups::back_up(&site.api::<DatabaseMirror>(), name, request, TIMEOUT).await
}

/// Insert `n` rows through `<name>-rw`; their ids.
async fn insert(site: &Site, name: &str, n: i64) -> Result<Vec<i64>> {
    let creds = site.credentials(name).await?;
    let db = connect_rw(&site.client, &site.ns.name, name, &creds).await?;
    let rows = db
        .query(
            "INSERT INTO orders (amount) SELECT g FROM generate_series(1, $1::bigint) g RETURNING id",
            &[&n],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[tokio::test]
async fn a_dropped_table_comes_back_to_the_second_from_backups_taken_on_a_mirror() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let store = TestStore::from_cluster()?;
    let site = Site::start("recovery").await?;
    site.api::<Secret>().create(&PostParams::default(), &store.secret("s3")).await?;
    let prefix = format!("{}/db", site.ns.name);
    let object_store = format!(
        "{{endpoint: '{}', bucket: {}, path: '{prefix}', credentials: {{secretName: s3}}}}",
        store.endpoint, store.bucket
    );
    site.database(
        "db",
        &format!(
            "instance: {{storage: {{size: 1Gi}}}}\nmirrors: 1\nreplication: sync\nfailover: {{delay: 1s}}\n\
             backup: {{objectStore: {object_store}, retention: {{backups: 2}}}}"
        ),
    )
    .await?;
    let healthy = site.healthy::<DatabaseMirror>("db").await?;
    let primary = current_primary(&healthy).context("a primary")?;
    site.sql("db", "CREATE TABLE orders (id bigserial PRIMARY KEY, amount int, at timestamptz DEFAULT clock_timestamp())").await?;
    let mut before_t: Vec<i64> = insert(&site, "db", 500).await?;

    // 1. A backup on request, from the mirror.
    let first = back_up(&site, "db", "first").await?;
    println!("backup {} from {} ({} bytes); the primary is {primary}", first.id, first.member, first.bytes);
    ensure!(first.member != primary, "the backup was taken from the primary {primary}, not a mirror");
    let d = site.api::<DatabaseMirror>().get("db").await?;
    let status = backup_status(&d).context("status.backup")?;
    ensure!(status.first_recoverability_point.is_some(), "no first recoverability point: {status:?}");

    // 2. Rows, a failover, rows, T, rows, then the mistake.
    before_t.extend(insert(&site, "db", 300).await?);
    let new_primary = site.lose_primary_machine("db", &primary).await?;
    before_t.extend(insert(&site, "db", 200).await?);
    // T is a whole second (targetTime's precision), after every row above.
    let now =
        site.sql("db", "SELECT extract(epoch FROM clock_timestamp())::float8").await?[0].get::<_, f64>(0);
    let target_rfc3339 = k8s_openapi::jiff::Timestamp::from_second(now.ceil() as i64)?;
    let target = target_rfc3339.to_string();
    tokio::time::sleep(std::time::Duration::from_secs_f64(now.ceil() - now + 1.0)).await;
    let after_t = insert(&site, "db", 250).await?;
    site.sql("db", "DROP TABLE orders").await?;
    let last = site.switch_wal(&new_primary).await?;
    ensure!(last.starts_with("00000002"), "the new primary writes timeline 2: {last}");
    site.wait::<DatabaseMirror>("db", "the segment with the DROP archived", move |d| {
        backup_status(d).and_then(|b| b.last_archived_wal.as_deref()).is_some_and(|a| a >= last.as_str())
    })
    .await?;
    println!(
        "{} rows before T = {target} (failover {primary} → {new_primary} among them), {} after, then DROP TABLE",
        before_t.len(),
        after_t.len()
    );

    // 3. Recover to T in a new DatabaseMirror.
    site.database(
        "restored",
        &format!(
            "instance: {{storage: {{size: 1Gi}}}}\nmirrors: 1\nreplication: sync\n\
             bootstrap: {{recovery: {{source: {object_store}, targetTime: '{target_rfc3339}'}}}}"
        ),
    )
    .await?;
    let restored = site.healthy::<DatabaseMirror>("restored").await?;
    let ids: BTreeSet<i64> =
        site.sql("restored", "SELECT id FROM orders").await?.iter().map(|r| r.get(0)).collect();
    let expected: BTreeSet<i64> = before_t.iter().copied().collect();
    let missing = expected.difference(&ids).count();
    let extra = ids.difference(&expected).count();
    println!(
        "recovered to {target_rfc3339}: {} rows ({missing} of {} before T missing, {extra} from after T); primary {:?}",
        ids.len(),
        expected.len(),
        current_primary(&restored)
    );
    ensure!(missing == 0 && extra == 0, "the recovery is not exactly the rows before T");
    // A normal primary: it takes writes, and its mirror streams them.
    insert(&site, "restored", 10).await?;

    // 4. Retention: two more backups, two kept.
    back_up(&site, "db", "second").await?;
    let third = back_up(&site, "db", "third").await?;
    let keys = store.keys(&format!("{prefix}/base")).await?;
    let manifests: Vec<&String> = keys.iter().filter(|k| k.ends_with("/backup.json")).collect();
    let wal = store.keys(&format!("{prefix}/wal")).await?;
    let oldest_wal = wal.iter().filter(|k| !k.ends_with(".history")).min().cloned().unwrap_or_default();
    println!("retention: {} backups kept ({:?}), oldest WAL kept {oldest_wal}", third.kept, manifests);
    ensure!(
        third.kept == 2 && manifests.len() == 2,
        "retention kept {} backups: {manifests:?}",
        manifests.len()
    );
    ensure!(
        !manifests.iter().any(|k| k.contains(&first.id)),
        "the oldest backup {} is still there: {manifests:?}",
        first.id
    );
    ensure!(
        !wal.iter().any(|k| k.ends_with("/000000010000000000000001")),
        "WAL from before the oldest kept backup is still there"
    );
    site.testbed.stop().await?;
    Ok(())
}

/// Unarchived WAL waiting in `member`'s `pg_wal`, in segments.
async fn ready_segments(site: &Site, member: &str) -> Result<i64> {
    let row = site
        .superuser(member)
        .await?
        .query_one("SELECT count(*) FROM pg_ls_dir('pg_wal/archive_status') f WHERE f LIKE '%.ready'", &[])
        .await?;
    Ok(row.get(0))
}

/// The object store stays away while the primary writes: past
/// `maxPendingWal` (64Mi, four segments) segments are let go unarchived
/// instead of filling the volume; the primary keeps taking writes, the
/// status names the gap (Degraded, `ArchiveGap`), and when the store
/// returns a base backup is taken by itself and the condition clears.
#[tokio::test]
async fn an_unreachable_store_costs_the_archive_a_gap_not_the_volume() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let store = TestStore::from_cluster()?;
    let site = Site::start("walbound").await?;
    site.api::<Secret>().create(&PostParams::default(), &store.secret("s3")).await?;
    site.database(
        "db",
        &format!(
            "instance: {{storage: {{size: 1Gi}}}}\nmirrors: 1\n\
             backup: {{objectStore: {{endpoint: '{}', bucket: {}, credentials: {{secretName: s3}}}}, maxPendingWal: 64Mi}}",
            store.endpoint, store.bucket
        ),
    )
    .await?;
    let healthy = site.healthy::<DatabaseMirror>("db").await?;
    let primary = current_primary(&healthy).context("a primary")?;
    site.sql("db", "CREATE TABLE orders (id bigserial PRIMARY KEY, amount int)").await?;

    store.stop().await?;
    let outcome = async {
        let mut most_ready = 0;
        let mut written = 0;
        for _ in 0..12 {
            written += insert(&site, "db", 100).await?.len();
            site.switch_wal(&primary).await?;
            most_ready = most_ready.max(ready_segments(&site, &primary).await?);
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        let gapped = site
            .wait::<DatabaseMirror>("db", "Degraded: ArchiveGap", |d| {
                hostwright_e2e::site::condition(d, hostwright::api::common::condition_type::DEGRADED)
                    == Some(("True".into(), "ArchiveGap".into()))
            })
            .await?;
        most_ready = most_ready.max(ready_segments(&site, &primary).await?);
        anyhow::Ok((written, most_ready, gapped))
    }
    .await;
    store.start().await?;
    let (written, most_ready, gapped) = outcome?;
    let gap = backup_status(&gapped).and_then(|b| b.archive_gap.clone()).unwrap_or_default();
    println!("store away: {written} rows written, at most {most_ready} segments waiting in pg_wal; {gap}");
    // The bound, plus the segment being pushed and the one just closed.
    ensure!(
        most_ready <= 6,
        "{most_ready} segments waited for the store: more than maxPendingWal (4) allows"
    );
    ensure!(gap.contains("let go unarchived"), "the status names no gap: {gap:?}");

    let closed = site
        .wait::<DatabaseMirror>("db", "a base backup after the gap, and the condition cleared", |d| {
            let b = backup_status(d);
            b.is_some_and(|b| b.archive_gap.is_none() && b.last_backup.is_some())
                && hostwright_e2e::site::condition(d, hostwright::api::common::condition_type::DEGRADED)
                    .is_some_and(|(_, reason)| reason != "ArchiveGap")
        })
        .await?;
    let last = backup_status(&closed).and_then(|b| b.last_backup.clone()).context("the backup")?;
    println!("store back: base backup {} from {} closed the gap", last.id, last.member);
    insert(&site, "db", 10).await?;
    site.testbed.stop().await?;
    Ok(())
}

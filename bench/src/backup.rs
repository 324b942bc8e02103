//! The backup suite: how far behind the archive is, how fast base backups
//! and restores go, and what a backup costs the primary. One DatabaseMirror
//! (one mirror, `replication: sync`) on the test bed's real PostgreSQL 15,
//! archiving to the cluster's real S3 server (s3s-fs):
//!
//! 1. filled to `BENCH_BACKUP_DATABASE_MIB` (default 1 GiB), then vacuumed;
//! 2. archive lag: a writer adds WAL at a steady `BENCH_BACKUP_WAL_KIB_S`
//!    for `BENCH_BACKUP_LOAD_SECONDS`, then a trickle (one small row a
//!    second) for the same time. Every [`SAMPLE`] the primary's WAL position
//!    is noted, and the bucket is listed every [`LIST`]: a sample's lag is
//!    the time until the segment holding it is in the bucket, that is how
//!    much of the newest writes a lost volume could cost;
//! 3. a base backup asked for on demand, under the same steady writer:
//!    its duration and throughput from its manifest, and the CPU of the
//!    primary's server (every one of its processes) against the same figure
//!    over the steady window before it; the mirror's beside it;
//! 4. a new DatabaseMirror bootstraps from the backups to the latest point:
//!    the time from its creation until it takes writes (and until its
//!    fresh mirror streams), and every acknowledged row is in it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use hostwright::api::DatabaseMirror;
use hostwright::backup::base;
use hostwright::backup::object_store::ObjectStore;
use hostwright_e2e::backups::{TestStore, back_up, backup_status};
use hostwright_e2e::database::{Credentials, all_healthy, connect_rw, current_primary};
use hostwright_e2e::testbed::Testbed;
use hostwright_e2e::wait_for;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Map, Value, json};

use crate::failover::in_namespace;
use crate::report::{missed_markdown, num, targets_missed};
use crate::{Config, Suite, log, percentile, round};

const NAMESPACE: &str = "bench-backup";
const SOURCE: &str = "db";
const RESTORED: &str = "restored";
const STORAGE: &str = "8Gi";
/// How often the primary's WAL position is noted.
const SAMPLE: Duration = Duration::from_secs(2);
/// How often the bucket is listed (the lag's resolution).
const LIST: Duration = Duration::from_secs(1);
/// The writer's statement interval.
const TICK: Duration = Duration::from_millis(100);
/// Bytes a row of the writers' tables takes in the WAL, about.
const ROW_BYTES: u64 = 1100;
/// Rows the database is filled with per statement (about 55 MB).
const FILL_ROWS: i64 = 50_000;
const MIB: f64 = 1024.0 * 1024.0;

/// (key, target, unit); every figure is better lower.
const TARGETS: [(&str, f64, &str); 2] =
    [("archive_lag_max_s", 60.0, "s"), ("restored_rows_missing", 0.0, "rows")];

/// Ok(false) when the run could not be completed (what was measured is written).
pub async fn run(cfg: &Config, client: &Client) -> Result<bool> {
    let started = Instant::now();
    let outcome =
        in_namespace(cfg, client, NAMESPACE, "backup", async |testbed| measure(cfg, client, testbed).await)
            .await;
    let (mut keys, complete) = match outcome {
        Ok(figures) => (figures, true),
        Err(err) => {
            log(format!("backup: failed: {err:#}"));
            let mut out = Map::new();
            out.insert("backup.error".into(), json!(format!("{err:#}")));
            (out, false)
        }
    };
    let missed = targets_missed(&keys, "backup", &TARGETS);
    for line in &missed {
        log(format!("backup: target missed: {line}"));
    }
    keys.insert("backup.targets_missed".into(), json!(missed));
    keys.insert(
        "backup.settings".into(),
        json!({
            "database_mib": cfg.backup.database_mib,
            "wal_kib_s": cfg.backup.wal_kib_s,
            "load_seconds": cfg.backup.load.as_secs(),
            "sample_s": SAMPLE.as_secs(),
            "list_s": LIST.as_secs(),
            "mirrors": 1,
            "replication": "sync",
            "elapsed_s": round(started.elapsed().as_secs_f64(), 1),
            "git_commit": std::env::var("BENCH_GIT_COMMIT").ok(),
            "started_at": std::env::var("BENCH_STARTED_AT").ok(),
        }),
    );
    crate::report::merge(&cfg.results, Suite::Backup, keys)?;
    Ok(complete)
}

/// The suite's settings (bench/run documents them).
#[derive(Clone, Debug)]
pub struct BackupSettings {
    pub database_mib: u64,
    pub wal_kib_s: u64,
    pub load: Duration,
}

async fn measure(cfg: &Config, client: &Client, testbed: &Testbed) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    let mut put = |key: &str, value: Value| {
        out.insert(format!("backup.{key}"), value);
    };
    let store = TestStore::from_cluster()?;
    let api = Api::<DatabaseMirror>::namespaced(client.clone(), NAMESPACE);
    Api::<Secret>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &store.secret("s3"))
        .await?;
    let prefix = format!("{NAMESPACE}/{SOURCE}");
    let object_store = json!({
        "endpoint": store.endpoint, "bucket": store.bucket, "path": prefix, "credentials": {"secretName": "s3"},
    });
    create(&api, SOURCE, json!({"mirrors": 1, "backup": {"objectStore": object_store}})).await?;
    let db = healthy(&api, SOURCE, cfg.ready_timeout).await?;
    let primary = current_primary(&db).context("a primary")?;
    let creds = Credentials::read(client, NAMESPACE, SOURCE).await?;
    let sql = connect_rw(client, NAMESPACE, SOURCE, &creds).await?;
    sql.batch_execute(
        "CREATE TABLE bulk (id bigint, pad text); CREATE TABLE steady (id bigserial PRIMARY KEY, pad text)",
    )
    .await?;

    // 1. The database, filled.
    let filling = Instant::now();
    let size = fill(&sql, cfg.backup.database_mib).await?;
    log(format!(
        "backup: filled to {:.0} MiB in {:.0} s",
        size as f64 / MIB,
        filling.elapsed().as_secs_f64()
    ));
    put("database_mib", json!(round(size as f64 / MIB, 1)));
    // As after any bulk load: otherwise autovacuum's first pass over the
    // new table (its WAL and CPU) lands in the steady window.
    sql.batch_execute("VACUUM (FREEZE, ANALYZE) bulk").await?;
    let closed = testbed.switch_wal(&primary).await?;
    archived(&api, &closed, cfg.ready_timeout).await?;

    // 2. Archive lag under a steady writer, then a trickle.
    let bucket = Bucket::watch(store.client()?, format!("{prefix}/wal/"));
    let steady = Writer::start(client, &creds, rows_per_tick(cfg.backup.wal_kib_s)).await?;
    let cpu_from = (Instant::now(), cpu(testbed, &primary)?);
    let steady_samples = sample(&sql, &api, cfg.backup.load).await?;
    let load_cpu = (cpu_from, (Instant::now(), cpu(testbed, &primary)?));

    // 3. A base backup under the same writer.
    let before = (Instant::now(), cpu(testbed, &primary)?);
    let asked = Instant::now();
    let record = back_up(&api, SOURCE, "bench", cfg.ready_timeout).await?;
    let backup_wall = asked.elapsed();
    let after = (Instant::now(), cpu(testbed, &primary)?);
    let mirror = record.member.clone();
    let steady_rows = steady.stop().await?;

    let trickle = Writer::start(client, &creds, 0).await?;
    let trickle_samples = sample(&sql, &api, cfg.backup.load).await?;
    let trickle_rows = trickle.stop().await?;
    let last = testbed.switch_wal(&primary).await?;
    let seen = bucket.until_seen(&last, cfg.ready_timeout).await?;
    lag_figures(&mut put, "archive_lag", &steady_samples.positions, &seen);
    lag_figures(&mut put, "trickle_archive_lag", &trickle_samples.positions, &seen);
    put("status_lag_max_s", json!(steady_samples.status_lag_max.max(trickle_samples.status_lag_max)));
    put("wal_kib_s", json!(round(steady_samples.wal_rate() / 1024.0, 0)));

    let manifest = base::list(store.client()?.as_ref(), &prefix)
        .await?
        .into_iter()
        .find(|m| m.id == record.id)
        .context("the backup's manifest")?;
    let took = manifest.finished.saturating_sub(manifest.started) as f64 / 1000.0;
    put("base_backup_s", json!(round(took, 1)));
    put("base_backup_wall_s", json!(round(backup_wall.as_secs_f64(), 1)));
    put("base_backup_mib", json!(round(record.bytes as f64 / MIB, 1)));
    put("base_backup_mib_s", json!(round(record.bytes as f64 / MIB / took, 1)));
    put("source", json!(mirror));
    put("primary", json!(primary));
    put("from_mirror", json!(mirror != primary));
    let rate = |(from, to): ((Instant, f64), (Instant, f64))| (to.1 - from.1) / (to.0 - from.0).as_secs_f64();
    let (load_cores, backup_cores) = (rate(load_cpu), rate((before, after)));
    put("primary_cpu_load_cores", json!(round(load_cores, 3)));
    put("primary_cpu_backup_cores", json!(round(backup_cores, 3)));
    put("primary_cpu_extra_cores", json!(round(backup_cores - load_cores, 3)));
    put("primary_cpu_extra_percent", json!(round((backup_cores - load_cores) / load_cores * 100.0, 1)));
    log(format!(
        "backup: {} from {mirror} ({:.0} MiB in {took:.1} s); primary CPU {load_cores:.3} cores under load, \
         {backup_cores:.3} during the backup",
        record.id,
        record.bytes as f64 / MIB
    ));

    // 4. A restore to the latest point.
    let restoring = Instant::now();
    let source = json!({"source": object_store});
    create(&api, RESTORED, json!({"mirrors": 1, "bootstrap": {"recovery": source}})).await?;
    let restored = first_write(client, cfg.ready_timeout).await?;
    let restore_s = restoring.elapsed().as_secs_f64();
    healthy(&api, RESTORED, cfg.ready_timeout).await?;
    put("restore_healthy_s", json!(round(restoring.elapsed().as_secs_f64(), 1)));
    let count = |table: &str| format!("SELECT count(*) FROM {table}");
    let rows =
        restored.query_one(&count("steady WHERE pad <> 'after the restore'"), &[]).await?.get::<_, i64>(0);
    let acked = steady_rows + trickle_rows;
    let bulk = sql.query_one(&count("bulk"), &[]).await?.get::<_, i64>(0);
    let bulk_restored = restored.query_one(&count("bulk"), &[]).await?.get::<_, i64>(0);
    put("restore_s", json!(round(restore_s, 1)));
    put("restore_mib_s", json!(round(size as f64 / MIB / restore_s, 1)));
    put("acknowledged_rows", json!(acked));
    put("restored_rows_missing", json!((acked - rows).max(0) + (bulk - bulk_restored).max(0)));
    log(format!(
        "backup: restored in {restore_s:.0} s: {rows} of {acked} acknowledged rows, {bulk_restored} of {bulk} bulk rows"
    ));
    Ok(out)
}

/// Wait until the restored DatabaseMirror takes a write (its primary
/// promoted, before its mirror is cloned); a session on it.
async fn first_write(client: &Client, within: Duration) -> Result<tokio_postgres::Client> {
    let deadline = Instant::now() + within;
    loop {
        let attempt = async {
            let creds = Credentials::read(client, NAMESPACE, RESTORED).await?;
            let sql = connect_rw(client, NAMESPACE, RESTORED, &creds).await?;
            sql.execute("INSERT INTO steady (pad) VALUES ('after the restore')", &[]).await?;
            anyhow::Ok(sql)
        };
        match attempt.await {
            Ok(sql) => return Ok(sql),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context("the restored store never took a write"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Create DatabaseMirror `name`: `extra` merged into the suite's instance.
async fn create(api: &Api<DatabaseMirror>, name: &str, extra: Value) -> Result<()> {
    let mut spec = json!({"instance": {"storage": {"size": STORAGE}}, "replication": "sync", "failover": {"delay": "1s"}});
    if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), extra) {
        spec.extend(extra);
    }
    let spec = serde_json::from_value(spec).context("the benchmark's DatabaseMirror spec")?;
    api.create(&PostParams::default(), &DatabaseMirror::new(name, spec))
        .await
        .with_context(|| format!("creating {name}"))?;
    Ok(())
}

async fn healthy(api: &Api<DatabaseMirror>, name: &str, within: Duration) -> Result<DatabaseMirror> {
    wait_for(api, name, within, "every member healthy", |d: Option<&DatabaseMirror>| {
        d.is_some_and(all_healthy)
    })
    .await
}

/// Wait until the status reports `wal` (or a later segment) archived.
async fn archived(api: &Api<DatabaseMirror>, wal: &str, within: Duration) -> Result<()> {
    let wal = wal.to_string();
    wait_for(api, SOURCE, within, "the segment archived", move |d: Option<&DatabaseMirror>| {
        d.and_then(backup_status)
            .and_then(|b| b.last_archived_wal.as_deref())
            .is_some_and(|a| a >= wal.as_str())
    })
    .await?;
    Ok(())
}

/// Add rows of about a KiB until the database holds `mib`; its size.
async fn fill(sql: &tokio_postgres::Client, mib: u64) -> Result<i64> {
    let target = (mib as f64 * MIB) as i64;
    let mut next = 0;
    loop {
        let size: i64 = sql.query_one("SELECT pg_database_size(current_database())", &[]).await?.get(0);
        if size >= target {
            return Ok(size);
        }
        sql.execute(
            "INSERT INTO bulk SELECT g, repeat(md5(g::text), 30) FROM generate_series($1::bigint, $2::bigint) g",
            &[&next, &(next + FILL_ROWS - 1)],
        )
        .await?;
        next += FILL_ROWS;
    }
}

/// Rows per [`TICK`] for about `kib_s` KiB of WAL a second.
fn rows_per_tick(kib_s: u64) -> i32 {
    let per_tick = kib_s * 1024 * TICK.as_millis() as u64 / 1000 / ROW_BYTES;
    i32::try_from(per_tick).unwrap_or(i32::MAX)
}

/// A writer through `<SOURCE>-rw`: every [`TICK`] `rows` rows of a KiB, or
/// with `rows` 0 one small row a second.
struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<i64>>,
}

impl Writer {
    async fn start(client: &Client, creds: &Credentials, rows: i32) -> Result<Self> {
        let sql = connect_rw(client, NAMESPACE, SOURCE, creds).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let (every, statement, n) = if rows > 0 {
                (
                    TICK,
                    "INSERT INTO steady (pad) SELECT repeat(md5(random()::text), 32) FROM generate_series(1, $1)",
                    rows,
                )
            } else {
                (
                    Duration::from_secs(1),
                    "INSERT INTO steady (pad) SELECT 'trickle' FROM generate_series(1, $1)",
                    1,
                )
            };
            let mut ticks = tokio::time::interval(every);
            let mut acked = 0i64;
            while !stopped.load(Ordering::SeqCst) {
                ticks.tick().await;
                acked += i64::try_from(sql.execute(statement, &[&n]).await?)?;
            }
            Ok(acked)
        });
        Ok(Writer { stop, task })
    }

    /// Stop; the rows acknowledged.
    async fn stop(self) -> Result<i64> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.context("the writer")?.context("a write failed")
    }
}

/// The primary's WAL position over a window, and the largest lag the
/// status showed meanwhile.
struct Samples {
    /// (when, segment, byte position).
    positions: Vec<(Instant, String, f64)>,
    status_lag_max: i64,
}

impl Samples {
    /// Bytes of WAL a second over the window.
    fn wal_rate(&self) -> f64 {
        match (self.positions.first(), self.positions.last()) {
            (Some(first), Some(last)) if last.0 > first.0 => {
                (last.2 - first.2) / (last.0 - first.0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

async fn sample(
    sql: &tokio_postgres::Client,
    api: &Api<DatabaseMirror>,
    window: Duration,
) -> Result<Samples> {
    let until = Instant::now() + window;
    let mut samples = Samples { positions: Vec::new(), status_lag_max: 0 };
    let mut ticks = tokio::time::interval(SAMPLE);
    while Instant::now() < until {
        ticks.tick().await;
        let row = sql
            .query_one(
                "SELECT pg_walfile_name(pg_current_wal_lsn()), (pg_current_wal_lsn() - '0/0'::pg_lsn)::float8",
                &[],
            )
            .await?;
        samples.positions.push((Instant::now(), row.get(0), row.get(1)));
        let lag = backup_status(&api.get(SOURCE).await?).and_then(|b| b.archive_lag_seconds).unwrap_or(0);
        samples.status_lag_max = samples.status_lag_max.max(lag);
    }
    Ok(samples)
}

/// `<key>_p50_s`, `_p99_s`, `_max_s` and `_samples` of the samples' lags;
/// a sample whose segment never reached the bucket is counted in
/// `<key>_unarchived` and left out.
fn lag_figures(
    put: &mut impl FnMut(&str, Value),
    key: &str,
    positions: &[(Instant, String, f64)],
    seen: &HashMap<String, Instant>,
) {
    let (lags, unarchived) = lags(positions, seen);
    put(&format!("{key}_p50_s"), json!(round(percentile(&lags, 0.50), 1)));
    put(&format!("{key}_p99_s"), json!(round(percentile(&lags, 0.99), 1)));
    put(&format!("{key}_max_s"), json!(round(percentile(&lags, 1.0), 1)));
    put(&format!("{key}_samples"), json!(lags.len()));
    put(&format!("{key}_unarchived"), json!(unarchived));
}

/// Seconds from each position to its segment first seen in the bucket,
/// and how many were never seen.
fn lags(positions: &[(Instant, String, f64)], seen: &HashMap<String, Instant>) -> (Vec<f64>, usize) {
    let mut lags = Vec::new();
    let mut unarchived = 0;
    for (at, segment, _) in positions {
        match seen.get(segment) {
            Some(archived) => lags.push(archived.saturating_duration_since(*at).as_secs_f64()),
            None => unarchived += 1,
        }
    }
    (lags, unarchived)
}

/// The WAL segments in the bucket under a prefix, with when each was
/// first listed.
struct Bucket {
    seen: Arc<std::sync::Mutex<HashMap<String, Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Bucket {
    fn watch(store: Arc<dyn ObjectStore>, prefix: String) -> Self {
        let seen = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let found = seen.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(LIST);
            loop {
                ticks.tick().await;
                let Ok(keys) = list(store.as_ref(), &prefix).await else { continue };
                let now = Instant::now();
                let mut found = found.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                for key in keys {
                    found.entry(key).or_insert(now);
                }
            }
        });
        Bucket { seen, task }
    }

    /// Wait until `segment` was listed; every segment seen so far, and stop.
    async fn until_seen(self, segment: &str, within: Duration) -> Result<HashMap<String, Instant>> {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            if seen.contains_key(segment) {
                self.task.abort();
                return Ok(seen);
            }
            ensure!(Instant::now() < deadline, "{segment} did not reach the bucket in {within:?}");
            tokio::time::sleep(LIST).await;
        }
    }
}

/// The names (last part) of every key under `prefix`.
async fn list(store: &dyn ObjectStore, prefix: &str) -> Result<Vec<String>> {
    use futures::TryStreamExt;
    let prefix = hostwright::backup::object_store::path::Path::from(prefix);
    let keys: Vec<String> = store
        .list(Some(&prefix))
        .map_ok(|meta| meta.location.filename().unwrap_or_default().to_string())
        .try_collect()
        .await?;
    Ok(keys)
}

/// CPU seconds of `member`'s server so far.
fn cpu(testbed: &Testbed, member: &str) -> Result<f64> {
    let postmaster = testbed.server_pid(member).with_context(|| format!("{member}'s server"))?;
    crate::cpu::server_seconds(postmaster)
}

/// The backup section of `latest.md`, from the `backup.*` keys alone.
pub fn markdown(all: &Map<String, Value>) -> String {
    let get = |key: &str| all.get(&format!("backup.{key}")).cloned().unwrap_or(Value::Null);
    let settings = get("settings");
    let mut md = String::new();
    let _ = writeln!(md, "# Backup benchmark (WAL archiving, base backups, restores)\n");
    let _ = writeln!(
        md,
        "Generated by `make bench` (suite `backup`), commit {}, started {}; one DatabaseMirror with one mirror, \
         `replication: sync`, on the test bed's real PostgreSQL 15, archiving to the cluster's S3 server \
         (s3s-fs on this machine).\n",
        num(&settings["git_commit"]),
        num(&settings["started_at"])
    );
    if let Some(error) = all.get("backup.error") {
        let _ = writeln!(md, "The run failed: {}\n", num(error));
    }
    let _ = writeln!(md, "| figure | measured | target |\n|---|---|---|");
    let _ = writeln!(
        md,
        "| archive lag under a steady writer ({} KiB/s of WAL), p50 / p99 / max over {} samples | {} / {} / {} s | max ≤ 60 s (anchor: about 300 s) |",
        num(&get("wal_kib_s")),
        num(&get("archive_lag_samples")),
        num(&get("archive_lag_p50_s")),
        num(&get("archive_lag_p99_s")),
        num(&get("archive_lag_max_s"))
    );
    let _ = writeln!(
        md,
        "| archive lag under a trickle (a row a second), p50 / p99 / max over {} samples | {} / {} / {} s | bound: `archive_timeout` 60 s and the upload |",
        num(&get("trickle_archive_lag_samples")),
        num(&get("trickle_archive_lag_p50_s")),
        num(&get("trickle_archive_lag_p99_s")),
        num(&get("trickle_archive_lag_max_s"))
    );
    let _ = writeln!(
        md,
        "| largest `status.backup.archiveLagSeconds` seen | {} s | |",
        num(&get("status_lag_max_s"))
    );
    let _ = writeln!(
        md,
        "| base backup of a {} MiB database from mirror {} (primary {}): {} MiB in | {} s ({} MiB/s; {} s from the request) | |",
        num(&get("database_mib")),
        num(&get("source")),
        num(&get("primary")),
        num(&get("base_backup_mib")),
        num(&get("base_backup_s")),
        num(&get("base_backup_mib_s")),
        num(&get("base_backup_wall_s"))
    );
    let _ = writeln!(
        md,
        "| primary's CPU, steady writer alone → with the backup running | {} → {} cores ({} cores, {} %) | |",
        num(&get("primary_cpu_load_cores")),
        num(&get("primary_cpu_backup_cores")),
        num(&get("primary_cpu_extra_cores")),
        num(&get("primary_cpu_extra_percent"))
    );
    let _ = writeln!(
        md,
        "| restore to the latest point into a new DatabaseMirror, creation to first write (to its mirror streaming) | {} s ({} MiB/s; {} s) | |",
        num(&get("restore_s")),
        num(&get("restore_mib_s")),
        num(&get("restore_healthy_s"))
    );
    let _ = writeln!(
        md,
        "| acknowledged rows missing after the restore (of {}) | {} | 0 |\n",
        num(&get("acknowledged_rows")),
        num(&get("restored_rows_missing"))
    );
    let _ = writeln!(
        md,
        "Method: the lag of a write is the time from noting the primary's WAL position (every {} s) until \
         the segment holding it is first listed in the bucket (listed every {} s). The backup's duration \
         is its manifest's (pg_basebackup start to the last upload); taken on a mirror it starts at the \
         primary's last checkpoint, so it carries the WAL written since (up to `checkpoint_timeout`'s \
         worth). The primary's CPU counts every process of its server, over the steady window before the backup and over the backup, both \
         under the same writer. Same two shared cores as the rest of the bench.\n",
        num(&settings["sample_s"]),
        num(&settings["list_s"])
    );
    missed_markdown(&mut md, &get("targets_missed"));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lag_runs_from_the_position_to_its_segment_in_the_bucket() {
        let t0 = Instant::now();
        let positions = vec![
            (t0, "A".to_string(), 0.0),
            (t0 + Duration::from_secs(2), "A".to_string(), 10.0),
            (t0 + Duration::from_secs(4), "B".to_string(), 20.0),
        ];
        let seen = HashMap::from([("A".to_string(), t0 + Duration::from_secs(3))]);
        let (lags, unarchived) = lags(&positions, &seen);
        assert_eq!(lags, vec![3.0, 1.0]);
        assert_eq!(unarchived, 1);
    }

    #[test]
    fn the_writer_rate_becomes_rows_per_tick() {
        assert_eq!(rows_per_tick(512), 47);
        assert_eq!(rows_per_tick(0), 0);
    }
}

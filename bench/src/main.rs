//! `hostwright-bench`: the benchmarks behind `make bench`, run as suites
//! (`BENCH_SUITES`, default `webcluster failover sessionstore chaos lifecycle site backup`).
//!
//! **webcluster** — for each fleet size N (3-replica sites), on the cluster in KUBECONFIG:
//! 1. direct: apply the Deployments, Services and PDBs the operator would
//!    build, and time until every Deployment is ready (the control plane's
//!    own pace);
//! 2. operator: start a fresh `hostwright run`, apply N WebClusters, time
//!    until every one is Ready;
//! 3. change: patch the image of a sample of sites and time, from a
//!    Deployment watch, how long the Deployment takes to carry it;
//! 4. idle: once the operator's write counter is still, count its writes and
//!    the objects that changed during BENCH_IDLE_SECONDS;
//! 5. memory: the operator's peak RSS (VmHWM);
//! 6. restart: a second fresh operator on the Ready fleet (as after a leader
//!    handover or an upgrade): its peak RSS and its writes, which should be none.
//!
//! **failover** — DatabaseMirror failover under write load, in sync and in
//! async mode: see [`failover`].
//!
//! **sessionstore** — the same for a SessionStore: see [`sessionstore`].
//!
//! **chaos** — a DatabaseMirror primary whose agent is frozen while its
//! server runs on, in sync and in async mode: see [`chaos`].
//!
//! **lifecycle** — planned switchovers and a rolling update of a
//! DatabaseMirror under a confirming writer: see [`lifecycle`].
//!
//! **site** — the demo site on real nodes under a few hundred visitors
//! through a rollout, a lost node, a drain and the loss of each store's
//! primary and of the operator's leader: see [`site`].
//!
//! **backup** — archive lag, base backup and restore throughput, and what
//! a backup from a mirror costs the primary: see [`backup`].
//!
//! Each suite's figures are merged into `$BENCH_RESULTS/latest.json` (its own
//! key prefix replaced, the other suites' keys kept) and `latest.md` is
//! rendered from that file; the curves for the plot go to `$BENCH_WORK`.
//! See bench/README.md.

mod backup;
mod chaos;
mod cpu;
mod failover;
mod fleet;
mod lifecycle;
mod operator;
mod report;
mod sessionstore;
mod site;
mod snapshot;
mod track;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use hostwright::api::WebCluster;
use operator::{Operator, count};
use track::Tracker;

/// A group of measurements that runs on its own and owns one key prefix
/// of `latest.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    WebCluster,
    Failover,
    SessionStore,
    Chaos,
    Lifecycle,
    Site,
    Backup,
}

impl Suite {
    /// Its name in `BENCH_SUITES` and the prefix of its keys.
    pub fn name(self) -> &'static str {
        match self {
            Suite::WebCluster => "webcluster",
            Suite::Failover => "failover",
            Suite::SessionStore => "sessionstore",
            Suite::Chaos => "chaos",
            Suite::Lifecycle => "lifecycle",
            Suite::Site => "site",
            Suite::Backup => "backup",
        }
    }

    /// What a suite that runs modes calls them in its report (`each_mode`).
    pub fn mode_key(self) -> &'static str {
        match self {
            Suite::WebCluster => "size",
            Suite::Failover | Suite::Chaos | Suite::Lifecycle | Suite::Backup => "replication",
            Suite::SessionStore => "durability",
            Suite::Site => "event",
        }
    }

    const ALL: [Suite; 7] = [
        Suite::WebCluster,
        Suite::Failover,
        Suite::SessionStore,
        Suite::Chaos,
        Suite::Lifecycle,
        Suite::Site,
        Suite::Backup,
    ];
}

/// The suites `BENCH_SUITES` runs when it is unset: all of them.
const DEFAULT_SUITES: &str = "webcluster failover sessionstore chaos lifecycle site backup";

/// `BENCH_SUITES`: names separated by spaces or commas, run in the order
/// given, each once.
fn parse_suites(list: &str) -> Result<Vec<Suite>> {
    let mut suites = Vec::new();
    for name in list.split([' ', ',']).filter(|s| !s.is_empty()) {
        let suite = Suite::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .with_context(|| format!("BENCH_SUITES: unknown suite {name:?} ({DEFAULT_SUITES})"))?;
        if !suites.contains(&suite) {
            suites.push(suite);
        }
    }
    if suites.is_empty() {
        bail!("BENCH_SUITES names no suite ({DEFAULT_SUITES})");
    }
    Ok(suites)
}

/// Settings, all from the environment (bench/run documents them).
#[derive(Clone, Debug)]
pub struct Config {
    pub suites: Vec<Suite>,
    /// Failover trials of each kind (process, member) in each replication mode.
    pub failover_trials: usize,
    /// Stalled-agent trials in each replication mode (the chaos suite).
    pub chaos_trials: usize,
    /// Planned switchovers of the lifecycle suite.
    pub switchovers: usize,
    pub backup: backup::BackupSettings,
    pub sizes: Vec<usize>,
    pub idle: Duration,
    pub change_sample: usize,
    pub change_interval: Duration,
    pub concurrency: usize,
    pub ready_timeout: Duration,
    pub binary: PathBuf,
    /// An earlier build of the operator, measured beside `binary` on the
    /// same Ready fleet (before and after, in one run).
    pub baseline: Option<PathBuf>,
    /// Restarts of each build in that comparison, alternating.
    pub memory_rounds: usize,
    pub kubeconfig: PathBuf,
    pub results: PathBuf,
    pub work: PathBuf,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map_err(|e| anyhow::anyhow!("{name}={v:?}: {e}")),
        _ => Ok(default),
    }
}

impl Config {
    /// Trials of each kind in each mode of `suite`.
    pub fn trials(&self, suite: Suite) -> usize {
        match suite {
            Suite::Chaos => self.chaos_trials,
            _ => self.failover_trials,
        }
    }

    /// Settings for the suites' unit tests: one of everything, no waiting.
    #[cfg(test)]
    pub fn for_tests(suite: Suite) -> Self {
        Config {
            suites: vec![suite],
            failover_trials: 2,
            chaos_trials: 2,
            switchovers: 2,
            backup: backup::BackupSettings { database_mib: 1, wal_kib_s: 64, load: Duration::ZERO },
            sizes: vec![1],
            idle: Duration::ZERO,
            change_sample: 1,
            change_interval: Duration::ZERO,
            concurrency: 1,
            ready_timeout: Duration::ZERO,
            binary: PathBuf::new(),
            baseline: None,
            memory_rounds: 1,
            kubeconfig: PathBuf::new(),
            results: PathBuf::new(),
            work: PathBuf::new(),
        }
    }

    fn from_env() -> Result<Self> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let sizes = std::env::var("BENCH_SIZES").unwrap_or_else(|_| "100 1000".into());
        let sizes = sizes
            .split_whitespace()
            .map(|s| s.parse::<usize>().with_context(|| format!("BENCH_SIZES: {s:?}")))
            .collect::<Result<Vec<_>>>()?;
        if sizes.is_empty() || sizes.contains(&0) {
            bail!("BENCH_SIZES must list fleet sizes above 0");
        }
        let failover_trials = env_or("BENCH_FAILOVER_TRIALS", 20)?;
        if failover_trials == 0 {
            bail!("BENCH_FAILOVER_TRIALS must be above 0");
        }
        let chaos_trials = env_or("BENCH_CHAOS_TRIALS", 10)?;
        if chaos_trials == 0 {
            bail!("BENCH_CHAOS_TRIALS must be above 0");
        }
        let switchovers = env_or("BENCH_SWITCHOVERS", 20)?;
        if switchovers == 0 {
            bail!("BENCH_SWITCHOVERS must be above 0");
        }
        let backup = backup::BackupSettings {
            database_mib: env_or("BENCH_BACKUP_DATABASE_MIB", 1024)?,
            wal_kib_s: env_or("BENCH_BACKUP_WAL_KIB_S", 512)?,
            load: Duration::from_secs(env_or("BENCH_BACKUP_LOAD_SECONDS", 180)?),
        };
        if backup.database_mib == 0 || backup.wal_kib_s < 11 || backup.load < Duration::from_secs(10) {
            bail!(
                "the backup suite needs BENCH_BACKUP_DATABASE_MIB > 0, BENCH_BACKUP_WAL_KIB_S ≥ 11 and BENCH_BACKUP_LOAD_SECONDS ≥ 10"
            );
        }
        Ok(Config {
            switchovers,
            backup,
            suites: parse_suites(&std::env::var("BENCH_SUITES").unwrap_or_else(|_| DEFAULT_SUITES.into()))?,
            failover_trials,
            chaos_trials,
            sizes,
            idle: Duration::from_secs(env_or("BENCH_IDLE_SECONDS", 300)?),
            change_sample: env_or("BENCH_CHANGE_SAMPLE", 100)?,
            change_interval: Duration::from_millis(env_or("BENCH_CHANGE_INTERVAL_MS", 200)?),
            concurrency: env_or("BENCH_CONCURRENCY", 4)?,
            ready_timeout: Duration::from_secs(env_or("BENCH_READY_TIMEOUT_SECONDS", 1800)?),
            binary: std::env::var_os("HOSTWRIGHT_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target/release/hostwright")),
            baseline: std::env::var_os("BENCH_BASELINE_BIN").filter(|v| !v.is_empty()).map(PathBuf::from),
            memory_rounds: env_or("BENCH_MEMORY_ROUNDS", 3)?.max(1),
            kubeconfig: std::env::var_os("KUBECONFIG")
                .map(PathBuf::from)
                .context("KUBECONFIG is not set: run the benchmark through bench/run")?,
            results: std::env::var_os("BENCH_RESULTS")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("bench/results")),
            work: std::env::var_os("BENCH_WORK")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target/bench")),
        })
    }
}

pub fn log(msg: impl AsRef<str>) {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let (h, m, s) = ((t / 3600) % 24, (t / 60) % 60, t % 60);
    eprintln!("{h:02}:{m:02}:{s:02} bench: {}", msg.as_ref());
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    // On a signal the run is dropped, and with it the operators and the
    // failover suite's test bed, which stops its agents and servers.
    let outcome = tokio::select! {
        outcome = run() => outcome,
        signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}")),
    };
    match outcome {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(err) => {
            log(format!("error: {err:#}"));
            std::process::ExitCode::from(2)
        }
    }
}

/// Resolves on SIGINT or SIGTERM (never, if they cannot be watched).
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        _ => std::future::pending().await,
    }
}

/// Ok(false) when something could not be measured (what was measured is written anyway).
async fn run() -> Result<bool> {
    let cfg = Config::from_env()?;
    std::fs::create_dir_all(&cfg.results).with_context(|| format!("creating {}", cfg.results.display()))?;
    std::fs::create_dir_all(&cfg.work).with_context(|| format!("creating {}", cfg.work.display()))?;
    anyhow::ensure!(
        cfg.binary.exists(),
        "{} not found: cargo build --release --bin hostwright",
        cfg.binary.display()
    );
    hostwright::tls::client::install_default_provider();
    let client = Client::try_default().await.context("connecting to KUBECONFIG")?;
    log(format!("config: {cfg:?}"));
    let mut complete = true;
    for (i, suite) in cfg.suites.iter().enumerate() {
        let more_follow = i + 1 < cfg.suites.len();
        log(format!("=== suite {} ===", suite.name()));
        complete &= match suite {
            Suite::WebCluster => run_webcluster(&cfg, &client, more_follow).await?,
            Suite::Failover => failover::run(&cfg, &client).await?,
            Suite::SessionStore => sessionstore::run(&cfg, &client).await?,
            Suite::Chaos => chaos::run(&cfg, &client).await?,
            Suite::Lifecycle => lifecycle::run(&cfg, &client).await?,
            Suite::Site => site::run(&cfg, &client).await?,
            Suite::Backup => backup::run(&cfg, &client).await?,
        };
    }
    Ok(complete)
}

/// Every fleet size; Ok(false) when one could not be measured. With
/// `more_follow`, the last size's namespace is also deleted before returning,
/// so the next suite starts on a quiet cluster.
async fn run_webcluster(cfg: &Config, client: &Client, more_follow: bool) -> Result<bool> {
    let started = Instant::now();
    let mut runs = Vec::new();
    let mut complete = true;
    for (i, &n) in cfg.sizes.iter().enumerate() {
        let last = i + 1 == cfg.sizes.len() && !more_follow;
        let load = LoadSampler::start();
        let t = Instant::now();
        log(format!("=== N = {n} ==="));
        let mut result = match run_size(cfg, client, n, last).await {
            Ok(r) => r,
            Err(err) => {
                log(format!("N = {n} failed: {err:#}"));
                complete = false;
                // Leave a clean cluster for the next size.
                for ns in [namespace("direct", n), namespace("operator", n)] {
                    let _ = delete_namespace(client, &ns, !last).await;
                }
                json!({"n": n, "error": format!("{err:#}")})
            }
        };
        result["wall_s"] = json!(round(t.elapsed().as_secs_f64(), 1));
        result["host"] = load.finish();
        runs.push(result);
        report::write(cfg, &runs, started.elapsed())?;
    }
    let missed = report::write(cfg, &runs, started.elapsed())?;
    log_suite_end(Suite::WebCluster, &missed, started, &cfg.results);
    Ok(complete)
}

/// The closing lines of a suite: its targets, its time, where it wrote.
pub fn log_suite_end(suite: Suite, missed: &[String], started: Instant, results: &std::path::Path) {
    let name = suite.name();
    if missed.is_empty() {
        log(format!("{name}: every target met"));
    } else {
        log(format!("{name}: targets missed: {}", missed.join("; ")));
    }
    log(format!(
        "{name}: done in {:.0} s; results in {}",
        started.elapsed().as_secs_f64(),
        results.display()
    ));
}

fn namespace(phase: &str, n: usize) -> String {
    format!("bench-{phase}-{n}")
}

pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

pub fn secs(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64()
}

async fn run_size(cfg: &Config, client: &Client, n: usize, last: bool) -> Result<Value> {
    let names = fleet::names(n);

    // --- 1. direct baseline ---------------------------------------------------
    let ns = namespace("direct", n);
    create_namespace(client, &ns).await?;
    let deployments = Tracker::start::<Deployment>(
        client,
        &ns,
        "Deployments",
        track::deployment_predicates(),
        Some(track::deployment_image),
    );
    let mut objects = Vec::with_capacity(3 * n);
    for name in &names {
        objects.extend(fleet::direct_children(&ns, name)?);
    }
    log(format!("direct: applying {} objects ({} at a time)", objects.len(), cfg.concurrency));
    let t0 = Instant::now();
    let applied = fleet::apply_all(client, objects, cfg.concurrency).await?;
    let ready =
        deployments.wait_first(track::DEPLOYMENT_READY, n, cfg.ready_timeout, "direct: ready").await?;
    let available = deployments
        .wait_first(track::DEPLOYMENT_AVAILABLE, n, cfg.ready_timeout, "direct: available")
        .await?;
    let direct_curve = relative(&deployments.first_times(track::DEPLOYMENT_READY), t0);
    let direct = json!({
        "namespace": ns,
        "objects": 3 * n,
        "apply_s": round(applied.as_secs_f64(), 2),
        "ready_s": round(secs(t0, ready), 2),
        "available_s": round(secs(t0, available), 2),
        "watch_errors": deployments.watch_errors(),
    });
    log(format!("direct: {direct}"));
    drop(deployments);
    let deleted = delete_namespace(client, &ns, true).await?;
    log(format!("direct: namespace deleted in {deleted:.0} s"));

    // --- 2. operator ---------------------------------------------------------
    let ns = namespace("operator", n);
    let mut op = Operator::start(
        &cfg.binary,
        &cfg.kubeconfig,
        &cfg.work.join(format!("operator-{n}.log")),
        &cfg.work.join("operator.pid"),
        &[],
    )
    .await?;
    create_namespace(client, &ns).await?;
    let web_clusters =
        Tracker::start::<WebCluster>(client, &ns, "WebClusters", vec![track::web_cluster_ready], None);
    let deployments = Tracker::start::<Deployment>(
        client,
        &ns,
        "Deployments",
        track::deployment_predicates(),
        Some(track::deployment_image),
    );
    let m_start = op.metrics()?;
    let cpu_start = op.cpu_seconds()?;
    let wcs: Vec<Value> = names.iter().map(|name| fleet::web_cluster(&ns, name)).collect();
    log(format!("operator: applying {n} WebClusters ({} at a time)", cfg.concurrency));
    let t0 = Instant::now();
    let applied = fleet::apply_all(client, wcs, cfg.concurrency).await?;
    let ready = web_clusters
        .wait_first(track::WEB_CLUSTER_READY, n, cfg.ready_timeout, "operator: WebClusters Ready")
        .await?;
    let dep_ready_times = deployments.first_times(track::DEPLOYMENT_READY);
    let dep_available_times = deployments.first_times(track::DEPLOYMENT_AVAILABLE);
    let m_ready = op.metrics()?;
    let cpu_ready = op.cpu_seconds()?;
    let operator_curve = relative(&web_clusters.first_times(track::WEB_CLUSTER_READY), t0);
    let op_deploy_curve = relative(&dep_ready_times, t0);
    let last_of = |times: &[Instant]| times.iter().max().map(|t| round(secs(t0, *t), 2));
    let reconcile_ready = m_ready.reconciles - m_start.reconciles;
    let operator_phase = json!({
        "namespace": ns,
        "apply_s": round(applied.as_secs_f64(), 2),
        "ready_s": round(secs(t0, ready), 2),
        "deployments_ready_s": last_of(&dep_ready_times),
        "deployments_available_s": last_of(&dep_available_times),
        "writes": count(m_ready.total_writes() - m_start.total_writes()),
        "writes_by_resource": m_ready.writes_since(&m_start),
        "reconciles": count(reconcile_ready),
        "reconcile_mean_ms": round(
            1000.0 * (m_ready.reconcile_seconds_sum - m_start.reconcile_seconds_sum) / reconcile_ready.max(1.0), 2),
        "reconcile_errors": count(m_ready.reconcile_errors - m_start.reconcile_errors),
        "cpu_s": round(cpu_ready - cpu_start, 2),
    });
    log(format!("operator: {operator_phase}"));

    // --- 3. change latency ---------------------------------------------------
    let sample = sample(&names, cfg.change_sample);
    let wc_api: Api<WebCluster> = Api::namespaced(client.clone(), &ns);
    let patch = json!({"spec": {"image": fleet::CHANGED_IMAGE}});
    let mut sent = Vec::with_capacity(sample.len());
    log(format!("change: patching the image of {} sites, one every {:?}", sample.len(), cfg.change_interval));
    let m_before_change = op.metrics()?;
    for name in &sample {
        let slot = Instant::now();
        wc_api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        sent.push((name.clone(), slot, Instant::now()));
        tokio::time::sleep(cfg.change_interval.saturating_sub(slot.elapsed())).await;
    }
    deployments
        .wait_all(&sample, Duration::from_secs(300), "change: Deployment carries the new image", |s| {
            s.images.contains_key(fleet::CHANGED_IMAGE)
        })
        .await?;
    let mut latencies = Vec::with_capacity(sent.len());
    let mut from_request = Vec::with_capacity(sent.len());
    let mut early = 0;
    for (name, request, response) in &sent {
        let seen = deployments.get(name).and_then(|s| s.images.get(fleet::CHANGED_IMAGE).copied());
        let seen = seen.context("lost track of a changed Deployment")?;
        if seen < *response {
            early += 1;
        }
        latencies.push(secs(*response, seen));
        from_request.push(secs(*request, seen));
    }
    let m_changed = op.metrics()?;
    log("change: waiting for the changed sites to roll out and be Ready again");
    let rolled = Instant::now();
    web_clusters
        .wait_all(&sample, cfg.ready_timeout, "change: Ready at the new generation", |s| {
            s.generation >= 2 && s.now.first() == Some(&true)
        })
        .await?;
    let rollout_s = secs(rolled, Instant::now());
    let change = json!({
        "sample": sample.len(),
        "interval_ms": cfg.change_interval.as_millis() as u64,
        "p50_s": round(percentile(&latencies, 0.50), 4),
        "p90_s": round(percentile(&latencies, 0.90), 4),
        "p99_s": round(percentile(&latencies, 0.99), 4),
        "max_s": round(percentile(&latencies, 1.0), 4),
        "p99_from_request_s": round(percentile(&from_request, 0.99), 4),
        "seen_before_patch_response": early,
        "writes_until_all_updated": count(m_changed.total_writes() - m_before_change.total_writes()),
        "rollouts_ready_s": round(rollout_s, 1),
        "latencies_s": latencies.iter().map(|l| round(*l, 4)).collect::<Vec<_>>(),
    });
    log(format!(
        "change: p50 {} s, p99 {} s, rollouts Ready {rollout_s:.0} s later",
        change["p50_s"], change["p99_s"]
    ));

    // --- 4. idle -------------------------------------------------------------
    let settled = settle(&op, Duration::from_secs(10), Duration::from_secs(300)).await?;
    log(format!("idle: write counter still for 10 s after {settled:.0} s; idling {:?}", cfg.idle));
    let snap_before = snapshot::take(client, &ns).await?;
    let m_idle0 = op.metrics()?;
    let cpu_idle0 = op.cpu_seconds()?;
    tokio::time::sleep(cfg.idle).await;
    let m_idle1 = op.metrics()?;
    let cpu_idle1 = op.cpu_seconds()?;
    let snap_after = snapshot::take(client, &ns).await?;
    let diff = snapshot::diff(&snap_before, &snap_after);
    let still_ready = snap_after.ready_web_clusters;
    let idle = json!({
        "seconds": cfg.idle.as_secs(),
        "settle_s": round(settled, 1),
        "writes": count(m_idle1.total_writes() - m_idle0.total_writes()),
        "writes_by_resource": m_idle1.writes_since(&m_idle0),
        "reconciles": count(m_idle1.reconciles - m_idle0.reconciles),
        "reconcile_errors": count(m_idle1.reconcile_errors - m_idle0.reconcile_errors),
        "cpu_s": round(cpu_idle1 - cpu_idle0, 2),
        "objects": snap_after.len(),
        "resource_versions_changed": diff.rv_changed,
        "changed_by_hostwright": diff.hostwright_changed,
        "changed_by_manager": diff.by_manager,
        "web_clusters_ready_at_end": still_ready,
    });
    log(format!("idle: {idle}"));

    // --- 5. memory -----------------------------------------------------------
    let (hwm, rss) = op.memory_mib()?;
    let cpu_total = op.cpu_seconds()?;
    let m_end = op.metrics()?;
    op.stop()?;
    log(format!("memory: VmHWM {hwm:.1} MiB, VmRSS {rss:.1} MiB"));

    // --- 6. restart ----------------------------------------------------------
    let restart = restart(cfg, n, &cfg.binary, "restart").await?;
    log(format!("restart: {restart}"));
    let memory = compare_memory(cfg, n).await?;
    write_curves(cfg, n, &direct_curve, &operator_curve, &op_deploy_curve, &latencies)?;
    drop(web_clusters);
    drop(deployments);
    let deleted = delete_namespace(client, &ns, !last).await?;
    if !last {
        log(format!("operator: namespace deleted in {deleted:.0} s"));
    }

    let ratio = secs_of(&operator_phase, "ready_s") / secs_of(&direct, "ready_s");
    let ratio_available = secs_of(&operator_phase, "ready_s") / secs_of(&direct, "available_s");
    Ok(json!({
        "n": n,
        "replicas": fleet::REPLICAS,
        "ready_ratio_vs_direct": round(ratio, 3),
        "ready_ratio_vs_direct_available": round(ratio_available, 3),
        "change_p50_s": change["p50_s"],
        "change_p99_s": change["p99_s"],
        "idle_writes": idle["writes"],
        "idle_objects_changed_by_hostwright": diff.hostwright_changed.values().sum::<usize>(),
        "idle_resource_versions_changed": diff.rv_changed.values().sum::<usize>(),
        "rss_mib": round(hwm, 1),
        "rss_end_mib": round(rss, 1),
        "rss_restart_mib": restart["rss_mib"],
        "rss_restart_end_mib": restart["rss_end_mib"],
        "operator_cpu_s": round(cpu_total, 1),
        "operator_writes_total": count(m_end.total_writes()),
        "operator_reconciles_total": count(m_end.reconciles),
        "reconcile_duration_buckets": m_end.reconcile_buckets.iter()
            .map(|(le, c)| json!([if le.is_finite() { json!(le) } else { json!("+Inf") }, c]))
            .collect::<Vec<_>>(),
        "direct": direct,
        "operator": operator_phase,
        "change": change,
        "idle": idle,
        "restart": restart,
        "memory": memory,
    }))
}

/// A fresh operator (`binary`) on the Ready fleet: caches filled from a full
/// list, every WebCluster reconciled once. Nothing should be written.
async fn restart(cfg: &Config, n: usize, binary: &Path, label: &str) -> Result<Value> {
    let t0 = Instant::now();
    let mut op = Operator::start(
        binary,
        &cfg.kubeconfig,
        &cfg.work.join(format!("operator-{n}-{label}.log")),
        &cfg.work.join("operator.pid"),
        &[],
    )
    .await?;
    let ready_s = secs(t0, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(300);
    while op.metrics()?.reconciles < n as f64 {
        if Instant::now() >= deadline {
            bail!("restart: the fresh operator did not reconcile all {n} WebClusters within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let reconciled_s = secs(t0, Instant::now());
    settle(&op, Duration::from_secs(10), Duration::from_secs(120)).await?;
    let (hwm, rss) = op.memory_mib()?;
    let m = op.metrics()?;
    let cpu = op.cpu_seconds()?;
    op.stop()?;
    Ok(json!({
        "caches_filled_s": round(ready_s, 2),
        "all_reconciled_s": round(reconciled_s, 2),
        "rss_mib": round(hwm, 1),
        "rss_end_mib": round(rss, 1),
        "writes": count(m.total_writes()),
        "writes_by_resource": m.writes_since(&operator::Metrics::default()),
        "reconciles": count(m.reconciles),
        "cpu_s": round(cpu, 2),
    }))
}

/// Fresh operators of the baseline build and of this one, restarted in turn
/// on the same Ready fleet, `memory_rounds` times each: peak (VmHWM) and
/// settled (VmRSS) memory side by side, so a change is judged against the
/// same cluster, load and machine. Null without `BENCH_BASELINE_BIN`.
async fn compare_memory(cfg: &Config, n: usize) -> Result<Value> {
    let Some(baseline) = &cfg.baseline else { return Ok(Value::Null) };
    let (mut base, mut this) = (Vec::new(), Vec::new());
    for round in 0..cfg.memory_rounds {
        base.push(restart(cfg, n, baseline, &format!("baseline-{round}")).await?);
        this.push(restart(cfg, n, &cfg.binary, &format!("candidate-{round}")).await?);
    }
    let median_of = |runs: &[Value], key: &str| {
        let values: Vec<f64> = runs.iter().filter_map(|r| r[key].as_f64()).collect();
        percentile(&values, 0.5)
    };
    let summary = |runs: &[Value]| {
        json!({
            "peak_mib": median_of(runs, "rss_mib"),
            "settled_mib": median_of(runs, "rss_end_mib"),
            "writes": runs.iter().filter_map(|r| r["writes"].as_u64()).sum::<u64>(),
            "runs": runs,
        })
    };
    let result = json!({
        "rounds": cfg.memory_rounds,
        "baseline_binary": baseline.display().to_string(),
        "baseline": summary(&base),
        "candidate": summary(&this),
        "peak_ratio": round(median_of(&this, "rss_mib") / median_of(&base, "rss_mib"), 3),
        "settled_ratio": round(median_of(&this, "rss_end_mib") / median_of(&base, "rss_end_mib"), 3),
    });
    log(format!(
        "memory: baseline peak {} / settled {} MiB, this build peak {} / settled {} MiB",
        result["baseline"]["peak_mib"],
        result["baseline"]["settled_mib"],
        result["candidate"]["peak_mib"],
        result["candidate"]["settled_mib"]
    ));
    Ok(result)
}

fn secs_of(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

/// `size` names spread evenly over the fleet.
fn sample(names: &[String], size: usize) -> Vec<String> {
    let size = size.min(names.len()).max(1);
    (0..size).map(|k| names[k * names.len() / size].clone()).collect()
}

/// Nearest-rank percentile (p in 0..=1).
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn relative(times: &[Instant], t0: Instant) -> Vec<f64> {
    let mut out: Vec<f64> = times.iter().map(|t| secs(t0, *t)).collect();
    out.sort_by(f64::total_cmp);
    out
}

/// Wait until the operator's write counter has not moved for `still`.
async fn settle(op: &Operator, still: Duration, max: Duration) -> Result<f64> {
    let started = Instant::now();
    let mut last = op.metrics()?.total_writes();
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = op.metrics()?.total_writes();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= still {
            return Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed() >= max {
            log(format!("idle: the operator kept writing for {max:?}; measuring anyway"));
            return Ok(started.elapsed().as_secs_f64());
        }
    }
}

fn write_curves(
    cfg: &Config,
    n: usize,
    direct: &[f64],
    operator: &[f64],
    operator_deployments: &[f64],
    latencies: &[f64],
) -> Result<()> {
    let cumulative = |times: &[f64]| {
        let total = n as f64;
        let mut s = String::from("0 0\n");
        for (i, t) in times.iter().enumerate() {
            s.push_str(&format!("{t:.3} {:.5}\n", (i + 1) as f64 / total));
        }
        s
    };
    std::fs::write(cfg.work.join(format!("ready-{n}-direct.tsv")), cumulative(direct))?;
    std::fs::write(cfg.work.join(format!("ready-{n}-operator.tsv")), cumulative(operator))?;
    std::fs::write(
        cfg.work.join(format!("ready-{n}-operator-deployments.tsv")),
        cumulative(operator_deployments),
    )?;
    let mut sorted = latencies.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut s = String::new();
    for (i, l) in sorted.iter().enumerate() {
        s.push_str(&format!("{:.2} {:.5}\n", l * 1000.0, (i + 1) as f64 / sorted.len() as f64));
    }
    std::fs::write(cfg.work.join(format!("change-{n}.tsv")), s)?;
    Ok(())
}

pub async fn create_namespace(client: &Client, name: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(name).await?.is_some() {
        log(format!("namespace {name} exists from an earlier run; deleting it first"));
        delete_namespace(client, name, true).await?;
    }
    let ns: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"hostwright.io/bench": "true"}},
    }))?;
    api.create(&PostParams::default(), &ns).await.with_context(|| format!("creating namespace {name}"))?;
    // Pods are refused until the namespace's default ServiceAccount exists.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    let deadline = Instant::now() + Duration::from_secs(60);
    while sas.get_opt("default").await?.is_none() {
        if Instant::now() >= deadline {
            bail!("namespace {name} has no default ServiceAccount after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Delete a namespace; with `wait`, until it is gone (seconds taken).
pub async fn delete_namespace(client: &Client, name: &str, wait: bool) -> Result<f64> {
    let api: Api<Namespace> = Api::all(client.clone());
    let started = Instant::now();
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(0.0),
        Err(e) => return Err(e).with_context(|| format!("deleting namespace {name}")),
    }
    if !wait {
        return Ok(0.0);
    }
    let deadline = started + Duration::from_secs(1800);
    while let Some(ns) = api.get_opt(name).await? {
        if Instant::now() >= deadline {
            bail!("namespace {} still there after 30 min", ns.name_any());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Samples the host's 1-minute load average while one fleet size runs, and
/// notes whether the default (test) cluster was running beside the bench.
pub struct LoadSampler {
    samples: Arc<Mutex<Vec<f64>>>,
    other_cluster_at_start: bool,
    task: tokio::task::JoinHandle<()>,
}

impl LoadSampler {
    pub fn start() -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let shared = samples.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Some(l) = loadavg() {
                    shared.lock().unwrap_or_else(|p| p.into_inner()).push(l);
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        LoadSampler { samples, other_cluster_at_start: other_cluster_running(), task }
    }

    pub fn finish(self) -> Value {
        self.task.abort();
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mean = if s.is_empty() { f64::NAN } else { s.iter().sum::<f64>() / s.len() as f64 };
        json!({
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "loadavg1_mean": round(mean, 2),
            "loadavg1_max": round(s.iter().copied().fold(0.0, f64::max), 2),
            "test_cluster_running": self.other_cluster_at_start || other_cluster_running(),
        })
    }
}

fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// Whether the default e2e cluster (another user of this machine's CPUs) runs.
fn other_cluster_running() -> bool {
    let home = std::env::var("HOME").unwrap_or_default();
    let pid = std::fs::read_to_string(format!("{home}/.cache/hostwright/cluster/pids/kube-apiserver.pid"));
    pid.ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some_and(|p| PathBuf::from(format!("/proc/{p}")).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
    }

    #[test]
    fn suites_are_named_once_in_order() {
        assert_eq!(parse_suites("webcluster failover").unwrap(), [Suite::WebCluster, Suite::Failover]);
        assert_eq!(
            parse_suites(" failover,webcluster failover ").unwrap(),
            [Suite::Failover, Suite::WebCluster]
        );
        assert_eq!(parse_suites("failover").unwrap(), [Suite::Failover]);
        assert_eq!(parse_suites(DEFAULT_SUITES).unwrap(), Suite::ALL);
        assert_eq!(parse_suites("chaos,chaos").unwrap(), [Suite::Chaos]);
        assert!(parse_suites("").is_err());
        assert!(parse_suites("webclusters").is_err());
    }

    #[test]
    fn the_sample_spreads_over_the_fleet() {
        let names = fleet::names(1000);
        let s = sample(&names, 100);
        assert_eq!(s.len(), 100);
        assert_eq!(s[0], "s-1");
        assert_eq!(s[1], "s-11");
        assert_eq!(s[99], "s-991");
        assert_eq!(sample(&fleet::names(5), 100).len(), 5);
    }

    #[test]
    fn direct_children_are_the_operators_without_owner() {
        let children = fleet::direct_children("ns", "s-1").unwrap();
        let kinds: Vec<&str> = children.iter().map(|c| c["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["Deployment", "Service", "PodDisruptionBudget"]);
        for c in &children {
            assert!(c["metadata"].get("ownerReferences").is_none());
            assert_eq!(c["metadata"]["namespace"], "ns");
        }
        assert_eq!(children[0]["spec"]["replicas"], 3);
        assert_eq!(children[0]["spec"]["template"]["spec"]["containers"][0]["image"], fleet::IMAGE);
    }
}

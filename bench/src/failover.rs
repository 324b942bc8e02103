//! The failover suite: how long a DatabaseMirror refuses writes when its
//! primary is lost, and what it loses, in sync and in async mode.
//!
//! Per mode, in a namespace of its own with a fresh operator and a test bed
//! of its own (real PostgreSQL 15 servers with real agents beside them): one
//! DatabaseMirror with two mirrors and `failover.delay: 1s`, then
//! `BENCH_FAILOVER_TRIALS` trials of each kind of loss, alternating, run by
//! the same code as the e2e test ([`hostwright_e2e::trials`]).
//!
//! Keys: `failover.*` in `latest.json` (headline figures pool both modes;
//! each mode under `failover.runs`), a section in `latest.md`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hostwright::api::{DatabaseMirror, DatabaseMirrorSpec};
use hostwright::contract::timing::LEASE;
use hostwright_e2e::testbed::Testbed;
use hostwright_e2e::trials::{Loss, Trial, TrialReport, failover_trials, seconds_of};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Map, Value, json};

use crate::operator::Operator;
use crate::report::{missed_markdown, num, targets_missed};
use crate::{
    Config, LoadSampler, Suite, create_namespace, delete_namespace, log, log_suite_end, percentile, round,
};

/// Replication modes, measured in this order.
const MODES: [&str; 2] = ["sync", "async"];
/// The DatabaseMirror in each mode's namespace (the chaos suite's too).
pub const NAME: &str = "db";
pub const MIRRORS: i32 = 2;
pub const FAILOVER_DELAY: &str = "1s";
pub const STORAGE: &str = "1Gi";
/// Bound on each wait within a trial, as in the e2e test.
pub const TRIAL_TIMEOUT: Duration = Duration::from_secs(120);
/// Test bed roots. The servers run as the `postgres` user, which must reach
/// them: not under root's 0700 home.
const ROOT: &str = "/tmp/hostwright-bench";
const POSTGRES: &str = "/usr/lib/postgresql/15/bin/postgres";

/// (key, target, unit); every figure is better lower.
const TARGETS: [(&str, f64, &str); 5] = [
    ("process_p50_s", 3.0, "s"),
    ("process_p99_s", 5.0, "s"),
    ("member_p99_s", 10.0, "s"),
    ("lost_acked_writes_sync", 0.0, "writes"),
    ("overlapping_writers", 0.0, "pairs"),
];

/// Both modes; Ok(false) when one could not be measured completely (what
/// was measured is written anyway).
pub async fn run(cfg: &Config, client: &Client) -> Result<bool> {
    database_bed_ready(cfg, Suite::Failover)?;
    each_mode(
        cfg,
        client,
        Suite::Failover,
        &MODES,
        run_mode,
        |mode, trials| mode_figures("replication", mode, trials),
        |runs, elapsed| write(cfg, runs, elapsed),
    )
    .await
}

/// What a suite that runs DatabaseMirrors on the test bed needs: PostgreSQL
/// 15, and HOSTWRIGHT_BIN naming the binary under test.
pub fn database_bed_ready(cfg: &Config, suite: Suite) -> Result<()> {
    if !Path::new(POSTGRES).exists() {
        bail!(
            "{POSTGRES} is missing: the {} suite runs real PostgreSQL 15 servers (e2e/install-deps)",
            suite.name()
        );
    }
    // The test bed starts each member's agent from HOSTWRIGHT_BIN.
    if std::env::var_os("HOSTWRIGHT_BIN").map(PathBuf::from).as_deref() != Some(cfg.binary.as_path()) {
        bail!(
            "set HOSTWRIGHT_BIN={} (bench/run does): the test bed's agents must be the binary under test",
            cfg.binary.display()
        );
    }
    Ok(())
}

/// Create the benchmark's DatabaseMirror [`NAME`] in `ns`: [`MIRRORS`]
/// mirrors, `replication: <mode>`, `failover.delay` [`FAILOVER_DELAY`],
/// [`STORAGE`] of storage.
pub async fn create_database(client: &Client, ns: &str, mode: &str) -> Result<()> {
    let spec: DatabaseMirrorSpec = serde_json::from_value(json!({
        "instance": {"storage": {"size": STORAGE}},
        "mirrors": MIRRORS,
        "replication": mode,
        "failover": {"delay": FAILOVER_DELAY},
    }))
    .context("the benchmark's DatabaseMirror spec")?;
    Api::<DatabaseMirror>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &DatabaseMirror::new(NAME, spec))
        .await
        .with_context(|| format!("creating DatabaseMirror {ns}/{NAME}"))?;
    Ok(())
}

/// Run `run_mode` for each mode in turn, recording what a failed mode
/// measured before it failed (its `partial` figures, from the trials it
/// completed), and `write` the report after each; Ok(false) when a mode
/// could not be measured completely.
pub async fn each_mode(
    cfg: &Config,
    client: &Client,
    suite: Suite,
    modes: &[&str],
    run_mode: impl AsyncFn(&Config, &Client, &str, &mut Vec<Trial>) -> Result<Value>,
    partial: impl Fn(&str, &[Trial]) -> Map<String, Value>,
    write: impl Fn(&[Value], Duration) -> Result<Vec<String>>,
) -> Result<bool> {
    let name = suite.name();
    let started = Instant::now();
    let mut runs = Vec::new();
    let mut complete = true;
    for &mode in modes {
        let load = LoadSampler::start();
        let t = Instant::now();
        log(format!("{name}: {} {mode}, {} trials of each kind", suite.mode_key(), cfg.trials(suite)));
        let mut recorded = Vec::new();
        let mut result = match run_mode(cfg, client, mode, &mut recorded).await {
            Ok(r) => r,
            Err(err) => {
                log(format!("{name}: {mode} failed: {err:#}"));
                complete = false;
                let mut figures = partial(mode, &recorded);
                figures.insert("error".into(), json!(format!("{err:#}")));
                Value::Object(figures)
            }
        };
        result["wall_s"] = json!(round(t.elapsed().as_secs_f64(), 1));
        result["host"] = load.finish();
        runs.push(result);
        write(&runs, started.elapsed())?;
    }
    let missed = write(&runs, started.elapsed())?;
    log_suite_end(suite, &missed, started, &cfg.results);
    Ok(complete)
}

/// One mode, start to finish, cleaning up after itself also on failure.
/// Trials are added to `recorded` as they complete.
async fn run_mode(cfg: &Config, client: &Client, mode: &str, recorded: &mut Vec<Trial>) -> Result<Value> {
    let ns = format!("bench-failover-{mode}");
    let report = in_namespace(cfg, client, &ns, &format!("failover-{mode}"), async |testbed| {
        measure(cfg, client, &ns, testbed, mode, recorded).await
    })
    .await?;
    let mut figures = mode_figures("replication", mode, &report.trials);
    figures.extend([
        ("namespace".into(), json!(ns)),
        ("trials_per_kind".into(), json!(cfg.failover_trials)),
        ("acked_writes".into(), json!(report.acked_writes)),
        ("lost_acked_writes".into(), json!(report.lost.len())),
        ("lost_ids_sample".into(), json!(report.lost.iter().take(20).collect::<Vec<_>>())),
        ("probe_writes_accepted".into(), json!(report.probe_accepted)),
        ("overlapping_writers".into(), json!(report.overlaps.len())),
        (
            "overlaps_sample".into(),
            json!(
                report
                    .overlaps
                    .iter()
                    .take(3)
                    .map(|(a, b)| format!("{} and {}", a.member, b.member))
                    .collect::<Vec<_>>()
            ),
        ),
        ("failovers".into(), json!(report.failovers_after - report.failovers_before)),
    ]);
    Ok(Value::Object(figures))
}

/// What every mode reports, also one that failed part way: its name, each
/// kind's figures and every trial.
pub fn mode_figures(mode_key: &str, mode: &str, trials: &[Trial]) -> Map<String, Value> {
    let mut figures = Map::new();
    figures.insert(mode_key.into(), json!(mode));
    figures.insert("process".into(), kind_figures(&seconds_of(trials, Loss::Process)));
    figures.insert("member".into(), kind_figures(&seconds_of(trials, Loss::Member)));
    figures.insert("trials".into(), json!(trials_json(trials)));
    figures
}

/// Run `measure` in namespace `ns` with a fresh operator and a test bed of
/// its own, and clean up after it also when it fails: the test bed stopped
/// (servers down), the namespace deleted, the members' logs kept in the
/// work directory as `<label>-<member>.log`.
pub async fn in_namespace<T>(
    cfg: &Config,
    client: &Client,
    ns: &str,
    label: &str,
    measure: impl AsyncFnOnce(&Testbed) -> Result<T>,
) -> Result<T> {
    let root = Path::new(ROOT).join(ns);
    // What a killed earlier run left; its cluster is gone.
    remove_dir(&root)?;
    create_namespace(client, ns).await?;
    let mut op = Operator::start(
        &cfg.binary,
        &cfg.kubeconfig,
        &cfg.work.join(format!("operator-{label}.log")),
        &cfg.work.join("operator.pid"),
        &["--namespace", ns],
    )
    .await?;
    let testbed = Testbed::start(client.clone(), Some(ns.to_string()), root.clone())
        .await
        .with_context(|| format!("starting the test bed in {}", root.display()))?;
    let outcome = measure(&testbed).await;

    let stopped = testbed.stop().await;
    match tokio::time::timeout(Duration::from_secs(120), delete_namespace(client, ns, true)).await {
        Ok(Ok(s)) => log(format!("{label}: namespace {ns} deleted in {s:.0} s")),
        Ok(Err(e)) => log(format!("{label}: deleting namespace {ns}: {e:#}")),
        Err(_) => log(format!("{label}: namespace {ns} still terminating after 120 s; going on")),
    }
    op.stop()?;
    keep_pod_logs(&root.join("pods").join(ns), &cfg.work, label);
    remove_dir(&root)?;
    let result = outcome?;
    stopped.context("stopping the test bed")?;
    Ok(result)
}

async fn measure(
    cfg: &Config,
    client: &Client,
    ns: &str,
    testbed: &Testbed,
    mode: &str,
    recorded: &mut Vec<Trial>,
) -> Result<TrialReport> {
    create_database(client, ns, mode).await?;
    let losses = Loss::alternating(2 * cfg.failover_trials);
    let total = losses.len();
    failover_trials(client, ns, NAME, testbed, &losses, TRIAL_TIMEOUT, |i, t| {
        log(format!(
            "failover: {mode} trial {}/{total}: {} loss of {}, writes resumed on {} after {:.2} s",
            i + 1,
            t.loss,
            t.old_primary,
            t.new_primary,
            t.seconds
        ));
        recorded.push(t.clone());
    })
    .await
}

/// Copy the members' logs (agent and test bed lines) to `work` as
/// `<label>-<member>.log`, before their directory goes.
fn keep_pod_logs(pods: &Path, work: &Path, label: &str) {
    let Ok(entries) = std::fs::read_dir(pods) else { return };
    for path in entries.flatten().map(|e| e.path()) {
        if path.extension().is_some_and(|e| e == "log")
            && let Some(file) = path.file_name().and_then(|f| f.to_str())
        {
            let kept = work.join(format!("{label}-{file}"));
            if let Err(e) = std::fs::copy(&path, &kept) {
                log(format!("failover: keeping {}: {e}", path.display()));
            }
        }
    }
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Count, nearest-rank p50 and p99, and max of one kind's seconds.
pub fn kind_figures(seconds: &[f64]) -> Value {
    json!({
        "trials": seconds.len(),
        "p50_s": round(percentile(seconds, 0.50), 3),
        "p99_s": round(percentile(seconds, 0.99), 3),
        "max_s": round(percentile(seconds, 1.0), 3),
    })
}

/// Every trial: its loss, old and new primary, seconds to the first write
/// on the new primary, seconds to the old primary's fence (where a probe
/// wrote to every member) and the loss bound the store reported.
pub fn trials_json(trials: &[Trial]) -> Vec<Value> {
    trials
        .iter()
        .map(|t| {
            json!({
                "loss": t.loss.as_str(),
                "old_primary": t.old_primary,
                "new_primary": t.new_primary,
                "seconds": round(t.seconds, 3),
                "fenced_after": t.fenced_after.map(|f| round(f, 3)),
                "lag_bytes": t.lag_bytes,
            })
        })
        .collect()
}

/// Merge the suite's figures into `latest.json` / `latest.md`; returns the
/// targets missed.
fn write(cfg: &Config, runs: &[Value], elapsed: Duration) -> Result<Vec<String>> {
    let (keys, missed) = keys(cfg, runs, elapsed);
    crate::report::merge(&cfg.results, Suite::Failover, keys)?;
    Ok(missed)
}

/// Seconds of every recorded trial of `loss`, in any mode.
pub fn pooled(runs: &[Value], loss: Loss) -> Vec<f64> {
    runs.iter()
        .filter_map(|r| r["trials"].as_array())
        .flatten()
        .filter(|t| t["loss"] == loss.as_str())
        .filter_map(|t| t["seconds"].as_f64())
        .collect()
}

/// The `failover.*` keys, and the targets missed.
fn keys(cfg: &Config, runs: &[Value], elapsed: Duration) -> (Map<String, Value>, Vec<String>) {
    let mut out = Map::new();
    let mut put = |key: &str, value: Value| {
        out.insert(format!("failover.{key}"), value);
    };
    put("trials", json!(cfg.failover_trials));
    for loss in [Loss::Process, Loss::Member] {
        let figures = kind_figures(&pooled(runs, loss));
        for f in ["trials", "p50_s", "p99_s", "max_s"] {
            put(&format!("{loss}_{f}"), figures[f].clone());
        }
    }
    let complete: Vec<&Value> = runs.iter().filter(|r| r.get("error").is_none()).collect();
    for mode in MODES {
        let lost = complete.iter().find(|r| r["replication"] == mode).map(|r| r["lost_acked_writes"].clone());
        put(&format!("lost_acked_writes_{mode}"), lost.unwrap_or(Value::Null));
    }
    let overlaps = complete.iter().filter_map(|r| r["overlapping_writers"].as_u64()).reduce(|a, b| a + b);
    put("overlapping_writers", json!(overlaps));
    put(
        "targets",
        json!({
            "process_p50_s": 3, "process_p99_s": 5, "member_p99_s": 10,
            "lost_acked_writes_sync": 0, "overlapping_writers": 0,
        }),
    );
    put(
        "anchors",
        json!({
            // CloudNativePG documents 40–55 s to detect the loss of a node.
            "cloudnativepg_node_loss_s": [40, 55],
            "patroni_detection_s": [30, 40],
        }),
    );
    let missed = targets_missed(&out, "failover", &TARGETS);
    let mut put = |key: &str, value: Value| {
        out.insert(format!("failover.{key}"), value);
    };
    put("targets_missed", json!(missed));
    put("runs", json!(runs));
    put(
        "settings",
        json!({
            "trials_per_kind": cfg.failover_trials,
            "modes": MODES,
            "mirrors": MIRRORS,
            "failover_delay": FAILOVER_DELAY,
            "storage": STORAGE,
            "lease_seconds": LEASE.as_secs_f64(),
            "trial_timeout_s": TRIAL_TIMEOUT.as_secs(),
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "pod_net": std::env::var("HOSTWRIGHT_POD_NET").ok(),
            "git_commit": std::env::var("BENCH_GIT_COMMIT").ok(),
            "src_uncommitted_changes": std::env::var("BENCH_GIT_DIRTY").ok().map(|v| v == "1"),
            "started_at": std::env::var("BENCH_STARTED_AT").ok(),
        }),
    );
    put("wall_s", json!(elapsed.as_secs()));
    (out, missed)
}

/// One line per replication mode on how loaded the host was while it ran.
pub fn host_paragraphs(md: &mut String, runs: &[Value]) {
    for r in runs {
        let _ = writeln!(
            md,
            "Host during {}: mean / max 1-min load average {} / {} on {} CPUs; the e2e test cluster ran beside \
             the bench: {}.\n",
            r["replication"].as_str().unwrap_or("?"),
            num(&r["host"]["loadavg1_mean"]),
            num(&r["host"]["loadavg1_max"]),
            num(&r["host"]["cpus"]),
            num(&r["host"]["test_cluster_running"]),
        );
    }
}

/// Trials, p50, p99 and max of one kind, both modes pooled, as printed.
fn pooled_figures(all: &Map<String, Value>, loss: Loss) -> [String; 4] {
    ["trials", "p50_s", "p99_s", "max_s"]
        .map(|f| num(all.get(&format!("failover.{loss}_{f}")).unwrap_or(&Value::Null)))
}

/// The failover section of `latest.md`, from the `failover.*` keys alone.
pub fn markdown(all: &Map<String, Value>) -> String {
    let get = |key: &str| all.get(&format!("failover.{key}")).cloned().unwrap_or(Value::Null);
    let settings = get("settings");
    let runs = get("runs");
    let runs: &[Value] = runs.as_array().map_or(&[], |r| r.as_slice());
    let mut md = String::new();
    let _ = writeln!(md, "# DatabaseMirror failover benchmark\n");
    let _ = writeln!(
        md,
        "Generated by `make bench` (`bench/run`, suite `failover`) on the bench's local control plane; \
         every DatabaseMirror member is a real PostgreSQL 15 server with a real `hostwright agent` beside \
         it (the e2e test bed plays kubelet and storage driver). Commit `{}`{}; wall time {} s; {} trials \
         of each kind per replication mode.\n",
        settings["git_commit"].as_str().unwrap_or("?"),
        if settings["src_uncommitted_changes"] == json!(true) {
            " with uncommitted changes in src/"
        } else {
            ""
        },
        num(&get("wall_s")),
        num(&get("trials")),
    );

    let _ = writeln!(md, "## From the kill to the first acknowledged write on the new primary\n");
    let _ = writeln!(md, "| loss | replication | trials | p50 (s) | p99 (s) | max (s) | target |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for (loss, what, target) in [
        (Loss::Process, "process: kill -9 of the primary's PostgreSQL", "p50 ≤ 3 s, p99 ≤ 5 s"),
        (Loss::Member, "member: kill -9 of its server and agent (node loss)", "p99 ≤ 10 s"),
    ] {
        for r in runs {
            let f = &r[loss.as_str()];
            let _ = writeln!(
                md,
                "| {what} | {} | {} | {} | {} | {} | |",
                r["replication"].as_str().unwrap_or("?"),
                num(&f["trials"]),
                num(&f["p50_s"]),
                num(&f["p99_s"]),
                num(&f["max_s"]),
            );
        }
        let [n, p50, p99, max] = pooled_figures(all, loss);
        let _ = writeln!(md, "| {what} | **both** | {n} | **{p50}** | **{p99}** | {max} | {target} |");
    }
    md.push('\n');

    let _ = writeln!(md, "## Writes\n");
    let _ = writeln!(
        md,
        "| replication | acknowledged writes | acknowledged writes lost | probe writes accepted | \
         accepted by two members at once | failovers |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for r in runs {
        let mode = r["replication"].as_str().unwrap_or("?");
        let lost_target = if mode == "sync" { " (target 0)" } else { "" };
        let _ = writeln!(
            md,
            "| {mode} | {} | {}{lost_target} | {} | {} (target 0) | {} |",
            num(&r["acked_writes"]),
            num(&r["lost_acked_writes"]),
            num(&r["probe_writes_accepted"]),
            num(&r["overlapping_writers"]),
            num(&r["failovers"]),
        );
    }
    md.push('\n');

    let _ = writeln!(md, "## Beside the published anchors\n");
    let _ = writeln!(md, "| system | what | seconds |");
    let _ = writeln!(md, "|---|---|---|");
    for loss in [Loss::Process, Loss::Member] {
        let [_, p50, p99, max] = pooled_figures(all, loss);
        let _ = writeln!(
            md,
            "| Hostwright (this run) | {loss} loss → first acknowledged write, p50 / p99 / max | {p50} / {p99} / {max} |",
        );
    }
    let _ = writeln!(md, "| CloudNativePG | failure detection after node loss, as documented | 40–55 |");
    let _ = writeln!(md, "| Patroni | failure detection alone, default settings | 30–40 |\n");

    missed_markdown(&mut md, &get("targets_missed"));
    for r in runs.iter().filter(|r| r.get("error").is_some()) {
        let _ = writeln!(
            md,
            "**{} replication could not be measured completely** (its trials so far are in the tables; \
             its writes are not): {}\n",
            r["replication"].as_str().unwrap_or("?"),
            r["error"].as_str().unwrap_or("?"),
        );
    }
    let _ = writeln!(md, "Every trial, in order (seconds):\n");
    for r in runs {
        for loss in [Loss::Process, Loss::Member] {
            let seconds: Vec<String> = r["trials"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| t["loss"] == loss.as_str())
                .map(|t| num(&t["seconds"]))
                .collect();
            let _ = writeln!(
                md,
                "- {}, {loss} loss: {}",
                r["replication"].as_str().unwrap_or("?"),
                if seconds.is_empty() { "–".into() } else { seconds.join(", ") }
            );
        }
    }
    md.push('\n');
    host_paragraphs(&mut md, runs);

    let _ = writeln!(md, "## Method\n");
    let _ = writeln!(
        md,
        "For each replication mode (sync, then async), in a fresh namespace `bench-failover-<mode>` with a \
         fresh operator (the release build, `hostwright run --leader-elect=false --namespace …`) and a test \
         bed of its own: one DatabaseMirror with `mirrors: {mirrors}` (so {members} members), `replication: \
         <mode>`, `failover: {{delay: {delay}}}` and `instance: {{storage: {{size: {storage}}}}}`. A writer \
         inserts sequence numbers through the `-rw` Service one after another, reconnecting (and re-reading the \
         Service's EndpointSlice, as a client's resolver would) after any error, and records every write \
         the server acknowledged; a probe tries to insert on every member directly, all the time, with \
         `synchronous_commit = local`. Then {trials2} trials alternating the two kinds of loss. **Process \
         loss** is kill -9 of the primary's PostgreSQL server (the postmaster); its agent lives and reports \
         the crash. **Member loss** is kill -9 of the primary's agent and server together, as a machine \
         that lost power; the member stays down until a new primary is in place and then comes back. \
         **Timed**: from the kill to the acknowledgement of the first write on a connection the writer \
         opened after the kill. Before each kill every member is healthy and streaming and writes are \
         flowing; after it the old primary has rejoined as a mirror. At the end of a mode, acknowledged ids \
         missing on the primary are lost writes, and two probe writes accepted by different members at \
         overlapping moments count as overlapping writers (split brain).\n\n\
         Agents renew a {lease} s member Lease and fence their own server before it can expire; the \
         operator fails over once the primary has been unhealthy for longer than `failover.delay` \
         ({delay}): after process loss the agent reports the crash at once, after member loss the Lease \
         must expire first. Percentiles are nearest-rank (below 100 trials the p99 is the maximum); the \
         **both** rows pool the two modes and are the ones held against the targets. The control plane, \
         the operator, the three servers and their agents, the writer and the probe all share this \
         machine's {cpus} CPUs.\n",
        mirrors = num(&settings["mirrors"]),
        members = settings["mirrors"].as_i64().map_or_else(|| "?".into(), |m| (m + 1).to_string()),
        delay = settings["failover_delay"].as_str().unwrap_or("?"),
        storage = settings["storage"].as_str().unwrap_or("?"),
        trials2 = settings["trials_per_kind"].as_u64().map_or_else(|| "?".into(), |n| (2 * n).to_string()),
        lease = num(&settings["lease_seconds"]),
        cpus = num(&settings["cpus"]),
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_of(mode: &str, seconds: &[(Loss, f64)], lost: u64, overlaps: u64) -> Value {
        let trials: Vec<Value> =
            seconds.iter().map(|(l, s)| json!({"loss": l.as_str(), "seconds": s})).collect();
        json!({"replication": mode, "trials": trials, "lost_acked_writes": lost, "overlapping_writers": overlaps})
    }

    fn config() -> Config {
        Config::for_tests(Suite::Failover)
    }

    #[test]
    fn headline_figures_pool_both_modes_and_are_held_against_the_targets() {
        let sync = run_of("sync", &[(Loss::Process, 2.0), (Loss::Member, 7.0), (Loss::Process, 2.5)], 0, 0);
        let failed = json!({"replication": "async", "error": "boom", "trials": [
            {"loss": "process", "seconds": 6.0}, {"loss": "member", "seconds": 6.5}]});
        let (keys, missed) = keys(&config(), &[sync, failed], Duration::from_secs(9));
        assert_eq!(keys["failover.trials"], 2);
        assert_eq!(keys["failover.process_trials"], 3);
        assert_eq!(keys["failover.process_p50_s"], 2.5);
        assert_eq!(keys["failover.process_p99_s"], 6.0);
        assert_eq!(keys["failover.process_max_s"], 6.0);
        assert_eq!(keys["failover.member_p50_s"], 6.5);
        assert_eq!(keys["failover.member_p99_s"], 7.0);
        assert_eq!(keys["failover.lost_acked_writes_sync"], 0);
        assert_eq!(keys["failover.lost_acked_writes_async"], Value::Null, "unknown: async failed");
        assert_eq!(keys["failover.overlapping_writers"], 0);
        assert!(keys.keys().all(|k| k.starts_with("failover.")));
        assert_eq!(missed, ["failover.process_p99_s = 6 s (target ≤ 5)"]);
        let md = markdown(&keys);
        assert!(md.contains(
            "| process: kill -9 of the primary's PostgreSQL | **both** | 3 | **2.5** | **6.0** | 6.0 |"
        ));
        assert!(md.contains("**async replication could not be measured completely**"));
        assert!(md.contains("- sync, member loss: 7.0\n"));
        assert!(md.contains("CloudNativePG | failure detection after node loss, as documented | 40–55"));
    }

    #[test]
    fn lost_writes_in_sync_mode_miss_the_target() {
        let sync = run_of("sync", &[(Loss::Process, 1.0), (Loss::Member, 1.0)], 2, 1);
        let (keys, missed) = keys(&config(), &[sync], Duration::ZERO);
        assert_eq!(keys["failover.lost_acked_writes_sync"], 2);
        assert_eq!(
            missed,
            [
                "failover.lost_acked_writes_sync = 2 writes (target ≤ 0)",
                "failover.overlapping_writers = 1 pairs (target ≤ 0)"
            ]
        );
    }
}

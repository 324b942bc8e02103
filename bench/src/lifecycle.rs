//! The lifecycle suite: what planned day-2 moves cost a site's writes. One
//! DatabaseMirror (two mirrors, `replication: sync`, on the test bed's real
//! PostgreSQL servers) under a writer that commits one row after another:
//! `BENCH_SWITCHOVERS` planned switchovers (`spec.primary` set to the next
//! member), then a rolling update of every member (a changed setting), run by
//! the e2e suite's own code ([`hostwright_e2e::lifecycle::measure`]).
//!
//! A switchover's figure is the longest pause between two acknowledged
//! writes around it; the rolling update's is the sum of its pauses longer
//! than [`PAUSE`], and its longest.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hostwright::api::{DatabaseMirror, DatabaseMirrorSpec};
use hostwright_e2e::lifecycle::{LifecycleReport, PAUSE, measure};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Map, Value, json};

use crate::failover::in_namespace;
use crate::report::{missed_markdown, num, targets_missed};
use crate::{Config, Suite, log, percentile, round};

const NAME: &str = "life";
const NAMESPACE: &str = "bench-lifecycle";
const TIMEOUT: Duration = Duration::from_secs(120);

/// (key, target, unit); every figure is better lower.
const TARGETS: [(&str, f64, &str); 3] = [
    ("switchover_p99_s", 1.0, "s"),
    ("rolling_update_unavailable_s", 2.0, "s"),
    ("lost_acknowledged_writes", 0.0, "writes"),
];

/// Ok(false) when the run could not be completed (what was measured is written).
pub async fn run(cfg: &Config, client: &Client) -> Result<bool> {
    let started = Instant::now();
    let outcome = in_namespace(cfg, client, NAMESPACE, "lifecycle", async |_testbed| {
        let spec: DatabaseMirrorSpec = serde_json::from_value(json!({
            "instance": {"storage": {"size": "1Gi"}},
            "mirrors": 2,
            "replication": "sync",
            "failover": {"delay": "1s"},
        }))
        .context("the benchmark's DatabaseMirror spec")?;
        Api::<DatabaseMirror>::namespaced(client.clone(), NAMESPACE)
            .create(&PostParams::default(), &DatabaseMirror::new(NAME, spec))
            .await
            .context("creating the DatabaseMirror")?;
        measure(client, NAMESPACE, NAME, cfg.switchovers, TIMEOUT, |line| log(format!("lifecycle: {line}")))
            .await
    })
    .await;
    let (keys, complete) = match outcome {
        Ok(report) => (keys(cfg, &report, started.elapsed()), true),
        Err(err) => {
            log(format!("lifecycle: failed: {err:#}"));
            let mut out = Map::new();
            out.insert("lifecycle.error".into(), json!(format!("{err:#}")));
            (out, false)
        }
    };
    let missed = keys.get("lifecycle.targets_missed").cloned();
    crate::report::merge(&cfg.results, Suite::Lifecycle, keys)?;
    for line in missed.iter().filter_map(Value::as_array).flatten() {
        log(format!("lifecycle: target missed: {}", num(line)));
    }
    Ok(complete)
}

fn keys(cfg: &Config, r: &LifecycleReport, elapsed: Duration) -> Map<String, Value> {
    let pauses = &r.switchover_pauses;
    let figures = [
        ("switchovers", json!(pauses.len())),
        ("switchover_p50_s", json!(round(percentile(pauses, 0.50), 3))),
        ("switchover_p99_s", json!(round(percentile(pauses, 0.99), 3))),
        ("switchover_max_s", json!(round(percentile(pauses, 1.0), 3))),
        ("rolling_update_s", json!(round(r.rollout_seconds, 1))),
        ("rolling_update_unavailable_s", json!(round(r.rollout_unavailable, 3))),
        ("rolling_update_longest_pause_s", json!(round(r.rollout_longest_pause, 3))),
        ("acknowledged_writes", json!(r.acked_writes)),
        ("lost_acknowledged_writes", json!(r.lost.len())),
        ("probe_writes", json!(r.probe_accepted)),
        ("overlapping_writes", json!(r.overlapping)),
        ("switchover_pauses_s", json!(pauses.iter().map(|p| round(*p, 3)).collect::<Vec<_>>())),
        (
            "targets",
            json!({"switchover_p99_s": 1, "rolling_update_unavailable_s": 2, "lost_acknowledged_writes": 0}),
        ),
    ];
    let mut out: Map<String, Value> =
        figures.into_iter().map(|(k, v)| (format!("lifecycle.{k}"), v)).collect();
    let missed = targets_missed(&out, "lifecycle", &TARGETS);
    out.insert("lifecycle.targets_missed".into(), json!(missed));
    out.insert(
        "lifecycle.settings".into(),
        json!({
            "switchovers": cfg.switchovers,
            "mirrors": 2,
            "replication": "sync",
            "pause_threshold_ms": PAUSE.as_millis() as u64,
            "elapsed_s": round(elapsed.as_secs_f64(), 1),
            "git_commit": std::env::var("BENCH_GIT_COMMIT").ok(),
            "started_at": std::env::var("BENCH_STARTED_AT").ok(),
        }),
    );
    out
}

/// The lifecycle section of `latest.md`, from the `lifecycle.*` keys alone.
pub fn markdown(all: &Map<String, Value>) -> String {
    let get = |key: &str| all.get(&format!("lifecycle.{key}")).cloned().unwrap_or(Value::Null);
    let settings = get("settings");
    let mut md = String::new();
    let _ = writeln!(md, "# Lifecycle benchmark (planned switchovers and rolling updates)\n");
    let _ = writeln!(
        md,
        "Generated by `make bench` (suite `lifecycle`), commit {}, started {}; one DatabaseMirror with two \
         mirrors, `replication: sync`, on the test bed's real PostgreSQL 15.\n",
        num(&settings["git_commit"]),
        num(&settings["started_at"])
    );
    let _ = writeln!(md, "| figure | measured | target |\n|---|---|---|");
    let _ = writeln!(
        md,
        "| write pause at a planned switchover, p50 / p99 / max over {} | {} / {} / {} s | p99 ≤ 1 s |",
        num(&get("switchovers")),
        num(&get("switchover_p50_s")),
        num(&get("switchover_p99_s")),
        num(&get("switchover_max_s"))
    );
    let _ = writeln!(
        md,
        "| rolling update of 3 members: writes unavailable in total (longest pause) | {} s ({} s), over {} s | ≤ 2 s |",
        num(&get("rolling_update_unavailable_s")),
        num(&get("rolling_update_longest_pause_s")),
        num(&get("rolling_update_s"))
    );
    let _ = writeln!(
        md,
        "| acknowledged writes lost (of {}) | {} | 0 |",
        num(&get("acknowledged_writes")),
        num(&get("lost_acknowledged_writes"))
    );
    let _ = writeln!(
        md,
        "| moments two members accepted writes (of {} probe writes) | {} | 0 |\n",
        num(&get("probe_writes")),
        num(&get("overlapping_writes"))
    );
    let _ = writeln!(
        md,
        "Method: a writer inserts sequence numbers through the `-rw` Service, one commit after another, and \
         records each acknowledgement; a probe tries to write on every member directly all the time. A \
         switchover's figure is the longest gap between two acknowledgements from `spec.primary` being set \
         until the store is healthy on the new primary; the rolling update's is the sum of the gaps longer \
         than {} ms from the template change until every member runs it. Afterwards every acknowledged row \
         is looked up on the primary. Same two shared cores as the rest of the bench.\n",
        num(&settings["pause_threshold_ms"])
    );
    missed_markdown(&mut md, &get("targets_missed"));
    md
}

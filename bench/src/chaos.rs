//! The chaos suite: a DatabaseMirror primary whose agent stalls. The agent
//! is frozen (SIGSTOP) while its PostgreSQL server runs on and clients keep
//! their connections, so nothing but the agent's watchdog stops the server
//! from taking writes. Measured: how long the old primary still accepts
//! writes (its fence), how long until a write is acknowledged on the new
//! primary, and what the promotion lost.
//!
//! Per replication mode (sync, then async), like the failover suite: a
//! namespace, operator and test bed of its own, the same DatabaseMirror
//! (two mirrors, `failover.delay: 1s`, 1Gi), and `BENCH_CHAOS_TRIALS`
//! trials of [`Loss::StalledAgent`] run by the e2e tests' code
//! ([`hostwright_e2e::trials::failover_trials`]).
//!
//! Keys: `chaos.*` in `latest.json` (headline figures pool both modes;
//! each mode under `chaos.runs`), and a "Stalled agent" section in
//! `latest.md` that sets them beside the failover suite's kill -9 figures.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use hostwright::contract::timing::{FENCE_AFTER, LEASE, RENEW_INTERVAL, RENEW_TIMEOUT, WATCHDOG_POLL};
use hostwright_e2e::trials::{Loss, Trial, failover_trials};
use kube::Client;
use serde_json::{Map, Value, json};

use crate::failover::{
    FAILOVER_DELAY, MIRRORS, NAME, STORAGE, TRIAL_TIMEOUT, create_database, database_bed_ready, each_mode,
    host_paragraphs, in_namespace, kind_figures, pooled, trials_json,
};
use crate::report::{missed_markdown, num, targets_missed};
use crate::{Config, Suite, log, percentile};

/// Replication modes, measured in this order.
const MODES: [&str; 2] = ["sync", "async"];
/// The fault every trial inflicts.
const LOSS: Loss = Loss::StalledAgent;
/// A lost write acknowledged at most this long before a fence was in
/// flight there (`TrialReport::lost_outside_fences`).
const IN_FLIGHT_WINDOW: Duration = Duration::from_secs(1);
/// Slack of the design bound on the fence beyond `FENCE_AFTER`: the
/// watchdog's poll, the kill, and the renewal in flight at the fault.
const FENCE_SLACK: Duration = Duration::from_secs(1);

/// (key, target, unit); every figure is better lower.
const TARGETS: [(&str, f64, &str); 3] = [
    ("lost_acked_writes_sync", 0.0, "writes"),
    ("overlapping_writers", 0.0, "pairs"),
    ("lost_outside_fences_async", 0.0, "writes"),
];

/// The anchors, described and not quantified: neither project publishes a
/// figure for a stalled manager that the repository can cite.
const PATRONI: &str = "Patroni demotes a primary whose leader key it cannot renew before the key's TTL runs \
     out; against a Patroni that stalls itself, a watchdog device (the kernel's softdog) it keeps alive \
     resets the machine shortly before the TTL expires";
const CLOUDNATIVEPG: &str = "the instance manager (PID 1 of each pod) answers the liveness probe, so a \
     stalled one fails it and the kubelet restarts the container; its isolation check also fails the \
     probe of a primary that can reach neither the API server nor the other instances";

/// The design bound on the fence, from the fault: `FENCE_AFTER` plus slack.
fn fence_bound_s() -> f64 {
    (FENCE_AFTER + FENCE_SLACK).as_secs_f64()
}

/// Both modes; Ok(false) when one could not be measured completely (what
/// was measured is written anyway).
pub async fn run(cfg: &Config, client: &Client) -> Result<bool> {
    database_bed_ready(cfg, Suite::Chaos)?;
    each_mode(cfg, client, Suite::Chaos, &MODES, run_mode, mode_figures, |runs, elapsed| {
        write(cfg, runs, elapsed)
    })
    .await
}

async fn run_mode(cfg: &Config, client: &Client, mode: &str, recorded: &mut Vec<Trial>) -> Result<Value> {
    let ns = format!("bench-chaos-{mode}");
    let report = in_namespace(cfg, client, &ns, &format!("chaos-{mode}"), async |testbed| {
        create_database(client, &ns, mode).await?;
        let losses = Loss::cycle(&[LOSS], cfg.chaos_trials);
        let total = losses.len();
        failover_trials(client, &ns, NAME, testbed, &losses, TRIAL_TIMEOUT, |i, t| {
            log(format!(
                "chaos: {mode} trial {}/{total}: agent of {} stalled, fenced after {}, writes resumed on {} \
                 after {:.2} s, loss bound {} bytes",
                i + 1,
                t.old_primary,
                t.fenced_after.map_or("?".into(), |f| format!("{f:.2} s")),
                t.new_primary,
                t.seconds,
                t.lag_bytes.map_or("?".into(), |b| b.to_string()),
            ));
            recorded.push(t.clone());
        })
        .await
    })
    .await?;
    let mut figures = mode_figures(mode, &report.trials);
    figures.extend([
        ("namespace".into(), json!(ns)),
        ("trials_per_mode".into(), json!(cfg.chaos_trials)),
        ("acked_writes".into(), json!(report.acked_writes)),
        ("lost_acked_writes".into(), json!(report.lost.len())),
        ("lost_outside_fences".into(), json!(report.lost_outside_fences(IN_FLIGHT_WINDOW))),
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
    log(format!(
        "chaos: {mode}: fence p99 {} s (design bound {} s), first write p99 {} s, {} of {} acknowledged \
         writes lost ({} outside the fences), {} overlapping writers",
        num(&figures["fence_p99_s"]),
        fence_bound_s(),
        num(&figures["first_write_p99_s"]),
        report.lost.len(),
        report.acked_writes,
        figures["lost_outside_fences"],
        report.overlaps.len(),
    ));
    Ok(Value::Object(figures))
}

/// The seconds to the fence of every stalled-agent trial that has one.
fn fences(trials: &[Value]) -> Vec<f64> {
    trials.iter().filter(|t| t["loss"] == LOSS.as_str()).filter_map(|t| t["fenced_after"].as_f64()).collect()
}

/// Fence, first write and loss bounds of one mode's trials, and every
/// trial: what a mode reports also when it failed part way.
fn mode_figures(mode: &str, trials: &[Trial]) -> Map<String, Value> {
    let listed = trials_json(trials);
    let fence = kind_figures(&fences(&listed));
    let first_write = kind_figures(&pooled(&[json!({"trials": listed})], LOSS));
    let lag: Vec<Option<i64>> = trials.iter().map(|t| t.lag_bytes).collect();
    let mut figures = Map::new();
    figures.insert("replication".into(), json!(mode));
    figures.insert("stalled_trials".into(), json!(trials.len()));
    for f in ["p50_s", "p99_s", "max_s"] {
        figures.insert(format!("fence_{f}"), fence[f].clone());
        figures.insert(format!("first_write_{f}"), first_write[f].clone());
    }
    figures.insert("lag_bytes".into(), json!(lag));
    figures.insert("lag_bytes_sum".into(), json!(lag.iter().flatten().sum::<i64>()));
    figures.insert("trials".into(), json!(listed));
    figures
}

/// Merge the suite's figures into `latest.json` / `latest.md`; returns the
/// targets missed.
fn write(cfg: &Config, runs: &[Value], elapsed: Duration) -> Result<Vec<String>> {
    let (keys, missed) = keys(cfg, runs, elapsed);
    crate::report::merge(&cfg.results, Suite::Chaos, keys)?;
    Ok(missed)
}

/// The `chaos.*` keys, and the targets missed.
fn keys(cfg: &Config, runs: &[Value], elapsed: Duration) -> (Map<String, Value>, Vec<String>) {
    let mut out = Map::new();
    let mut put = |key: &str, value: Value| {
        out.insert(format!("chaos.{key}"), value);
    };
    put("trials", json!(cfg.chaos_trials));
    let all_trials: Vec<Value> =
        runs.iter().filter_map(|r| r["trials"].as_array()).flatten().cloned().collect();
    let fence = fences(&all_trials);
    let first_write = pooled(runs, LOSS);
    put("stalled_trials", json!(first_write.len()));
    for (what, seconds) in [("fence", &fence), ("first_write", &first_write)] {
        let figures = kind_figures(seconds);
        for f in ["p50_s", "p99_s", "max_s"] {
            put(&format!("stalled_{what}_{f}"), figures[f].clone());
        }
    }
    put("fence_bound_s", json!(fence_bound_s()));
    put(
        "stalled_fence_p99_within_bound",
        if fence.is_empty() { Value::Null } else { json!(percentile(&fence, 0.99) <= fence_bound_s()) },
    );
    // Writes: only from modes that completed (a failed mode's writes are unknown).
    let complete: Vec<&Value> = runs.iter().filter(|r| r.get("error").is_none()).collect();
    let of_mode = |mode: &str, key: &str| {
        complete.iter().find(|r| r["replication"] == mode).map_or(Value::Null, |r| r[key].clone())
    };
    for mode in MODES {
        put(&format!("acked_writes_{mode}"), of_mode(mode, "acked_writes"));
        put(&format!("lost_acked_writes_{mode}"), of_mode(mode, "lost_acked_writes"));
    }
    put("lost_outside_fences_async", of_mode("async", "lost_outside_fences"));
    // Loss bounds: every trial that completed, also in a failed mode.
    for mode in MODES {
        let run = runs.iter().find(|r| r["replication"] == mode);
        put(&format!("lag_bytes_{mode}"), run.map_or(Value::Null, |r| r["lag_bytes"].clone()));
        put(&format!("lag_bytes_sum_{mode}"), run.map_or(Value::Null, |r| r["lag_bytes_sum"].clone()));
    }
    let overlaps = complete.iter().filter_map(|r| r["overlapping_writers"].as_u64()).reduce(|a, b| a + b);
    put("overlapping_writers", json!(overlaps));
    put(
        "targets",
        json!({"lost_acked_writes_sync": 0, "overlapping_writers": 0, "lost_outside_fences_async": 0}),
    );
    put("anchors", json!({"patroni": PATRONI, "cloudnativepg": CLOUDNATIVEPG}));
    let missed = targets_missed(&out, "chaos", &TARGETS);
    let mut put = |key: &str, value: Value| {
        out.insert(format!("chaos.{key}"), value);
    };
    put("targets_missed", json!(missed));
    put("runs", json!(runs));
    put(
        "settings",
        json!({
            "trials_per_mode": cfg.chaos_trials,
            "loss": LOSS.as_str(),
            "modes": MODES,
            "mirrors": MIRRORS,
            "failover_delay": FAILOVER_DELAY,
            "storage": STORAGE,
            "lease_seconds": LEASE.as_secs_f64(),
            "fence_after_seconds": FENCE_AFTER.as_secs_f64(),
            "renew_interval_seconds": RENEW_INTERVAL.as_secs_f64(),
            "renew_timeout_seconds": RENEW_TIMEOUT.as_secs_f64(),
            "watchdog_poll_seconds": WATCHDOG_POLL.as_secs_f64(),
            "in_flight_window_seconds": IN_FLIGHT_WINDOW.as_secs(),
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

/// "p50 / p99 / max" of three values.
fn triple(values: [&Value; 3]) -> String {
    values.map(num).join(" / ")
}

/// The "Stalled agent" section of `latest.md`, from the `chaos.*` keys and,
/// where present, the failover suite's kill -9 figures beside them.
pub fn markdown(all: &Map<String, Value>) -> String {
    let get = |key: &str| all.get(key).cloned().unwrap_or(Value::Null);
    let chaos = |key: &str| get(&format!("chaos.{key}"));
    let settings = chaos("settings");
    let runs = chaos("runs");
    let runs: &[Value] = runs.as_array().map_or(&[], |r| r.as_slice());
    let pooled = |what: &str| {
        let [a, b, c] = ["p50_s", "p99_s", "max_s"].map(|f| chaos(&format!("stalled_{what}_{f}")));
        triple([&a, &b, &c])
    };
    let mut md = String::new();
    let _ = writeln!(md, "# Stalled agent\n");
    let _ = writeln!(
        md,
        "Generated by `make bench` (`bench/run`, suite `chaos`) on the bench's local control plane, on the \
         failover suite's test bed (real PostgreSQL 15 servers, each with a real `hostwright agent`). Commit \
         `{}`{}; wall time {} s; {} trials per replication mode. The primary's agent is frozen with SIGSTOP \
         while its server runs on and its clients keep their connections.\n",
        settings["git_commit"].as_str().unwrap_or("?"),
        if settings["src_uncommitted_changes"] == json!(true) {
            " with uncommitted changes in src/"
        } else {
            ""
        },
        num(&chaos("wall_s")),
        num(&chaos("trials")),
    );

    let _ = writeln!(md, "## Fence and first write, beside kill -9\n");
    let _ = writeln!(
        md,
        "Fence: from the fault to the last write the old primary accepted (a probe writes on every member). \
         First write: from the fault to the first write acknowledged on a connection opened after it, on \
         the new primary.\n"
    );
    let _ = writeln!(
        md,
        "| fault | replication | trials | fence p50 / p99 / max (s) | first write p50 / p99 / max (s) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    let stalled = "stalled agent (SIGSTOP, server runs on)";
    for r in runs {
        let _ = writeln!(
            md,
            "| {stalled} | {} | {} | {} | {} |",
            r["replication"].as_str().unwrap_or("?"),
            num(&r["stalled_trials"]),
            triple([&r["fence_p50_s"], &r["fence_p99_s"], &r["fence_max_s"]]),
            triple([&r["first_write_p50_s"], &r["first_write_p99_s"], &r["first_write_max_s"]]),
        );
    }
    let _ = writeln!(
        md,
        "| {stalled} | **both** | {} | **{}** | **{}** |",
        num(&chaos("stalled_trials")),
        pooled("fence"),
        pooled("first_write")
    );
    let failover_commit = get("failover.settings")["git_commit"].as_str().map(str::to_owned);
    if all.contains_key("failover.process_p50_s") {
        let from = format!("failover suite, commit `{}`", failover_commit.as_deref().unwrap_or("?"));
        for (loss, what) in [
            ("process", "kill -9 of the primary's PostgreSQL"),
            ("member", "kill -9 of its server and agent, node loss"),
        ] {
            let f = |s: &str| get(&format!("failover.{loss}_{s}"));
            let _ = writeln!(
                md,
                "| {what} ({from}) | both | {} | 0 (the kill stops it) | {} |",
                num(&f("trials")),
                triple([&f("p50_s"), &f("p99_s"), &f("max_s")]),
            );
        }
    } else {
        let _ = writeln!(md, "| kill -9 (failover suite) | – | – | – | not measured in this run |");
    }
    md.push('\n');
    let bound = chaos("fence_bound_s");
    let within = match chaos("stalled_fence_p99_within_bound") {
        Value::Bool(true) => "within it".to_string(),
        Value::Bool(false) => "**beyond it**".to_string(),
        _ => "not measured".to_string(),
    };
    let _ = writeln!(
        md,
        "Design bound: the watchdog kills the server {} s (`FENCE_AFTER`) after the last successful \
         renewal was sent, which was before the fault, so the fence comes at most {} s after the fault \
         (`FENCE_AFTER` + 1 s for the watchdog's {} s poll and the kill). Fence p99, both modes: {} s, {within}. \
         The operator may revoke the member's Lease only after {} s (`LEASE`) without a renewal, and \
         promotes no one before.\n",
        num(&settings["fence_after_seconds"]),
        num(&bound),
        num(&settings["watchdog_poll_seconds"]),
        num(&chaos("stalled_fence_p99_s")),
        num(&settings["lease_seconds"]),
    );

    let _ = writeln!(md, "## Writes\n");
    let _ = writeln!(
        md,
        "| replication | acknowledged writes | acknowledged writes lost | lost outside the fences ({} s window) | \
         loss bound reported per trial (bytes) | sum (bytes) | probe writes accepted | accepted by two \
         members at once | failovers |",
        num(&settings["in_flight_window_seconds"]),
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for r in runs {
        let mode = r["replication"].as_str().unwrap_or("?");
        let lag: Vec<String> = r["lag_bytes"].as_array().into_iter().flatten().map(num).collect();
        let _ = writeln!(
            md,
            "| {mode} | {} | {}{} | {}{} | {} | {} | {} | {} (target 0) | {} |",
            num(&r["acked_writes"]),
            num(&r["lost_acked_writes"]),
            if mode == "sync" { " (target 0)" } else { "" },
            num(&r["lost_outside_fences"]),
            if mode == "async" { " (target 0)" } else { "" },
            if lag.is_empty() { "–".into() } else { lag.join(", ") },
            num(&r["lag_bytes_sum"]),
            num(&r["probe_writes_accepted"]),
            num(&r["overlapping_writers"]),
            num(&r["failovers"]),
        );
    }
    md.push('\n');
    if all.contains_key("failover.process_p50_s") {
        let _ = writeln!(
            md,
            "Beside them, kill -9 (failover suite, commit `{}`): acknowledged writes lost {} in sync and {} in \
             async mode, {} probe writes accepted by two members at once.\n",
            failover_commit.as_deref().unwrap_or("?"),
            num(&get("failover.lost_acked_writes_sync")),
            num(&get("failover.lost_acked_writes_async")),
            num(&get("failover.overlapping_writers")),
        );
    } else {
        let _ = writeln!(md, "Kill -9 (failover suite): not measured in this run.\n");
    }

    let _ = writeln!(md, "## Beside the published anchors\n");
    let _ = writeln!(md, "| system | what stops a primary whose manager stalls | how long |");
    let _ = writeln!(md, "|---|---|---|");
    let _ = writeln!(
        md,
        "| Hostwright (this run) | a watchdog process beside the agent kills the server {} s after the last \
         renewal sent; the operator revokes the Lease after {} s and then promotes | fence p50 / p99 / max {} s; \
         first write {} s |",
        num(&settings["fence_after_seconds"]),
        num(&settings["lease_seconds"]),
        pooled("fence"),
        pooled("first_write"),
    );
    let _ = writeln!(
        md,
        "| Patroni | {PATRONI} | within the leader key's TTL (its setting); not measured here |"
    );
    let _ = writeln!(
        md,
        "| CloudNativePG | {CLOUDNATIVEPG} | the liveness probe's period × failure threshold (its settings); not \
         measured here |\n"
    );

    missed_markdown(&mut md, &chaos("targets_missed"));
    for r in runs.iter().filter(|r| r.get("error").is_some()) {
        let _ = writeln!(
            md,
            "**{} replication could not be measured completely** (its trials so far are in the tables; \
             its writes are not): {}\n",
            r["replication"].as_str().unwrap_or("?"),
            r["error"].as_str().unwrap_or("?"),
        );
    }
    let _ = writeln!(md, "Every trial, in order:\n");
    for r in runs {
        let mode = r["replication"].as_str().unwrap_or("?");
        for t in r["trials"].as_array().into_iter().flatten() {
            let _ = writeln!(
                md,
                "- {mode}: agent of {} stalled, fenced after {} s, first write on {} after {} s, loss bound {} bytes",
                t["old_primary"].as_str().unwrap_or("?"),
                num(&t["fenced_after"]),
                t["new_primary"].as_str().unwrap_or("?"),
                num(&t["seconds"]),
                num(&t["lag_bytes"]),
            );
        }
    }
    md.push('\n');
    host_paragraphs(&mut md, runs);

    let _ = writeln!(md, "## Method\n");
    let _ = writeln!(
        md,
        "For each replication mode (sync, then async), in a fresh namespace `bench-chaos-<mode>` with a fresh \
         operator and a test bed of its own: one DatabaseMirror with `mirrors: {}`, `replication: <mode>`, \
         `failover: {{delay: {}}}` and `instance: {{storage: {{size: {}}}}}`, the failover suite's. The same \
         writer (through the `-rw` Service, reconnecting after any error) and probe (on every member \
         directly, `synchronous_commit = local`) run throughout. Each trial waits until every member is \
         healthy and writes flow, then freezes the primary's agent with SIGSTOP; its server and its \
         watchdog run on and established connections stay open. Once a write was acknowledged on the new \
         primary the agent is resumed and the old primary must rejoin as a mirror before the next trial. \
         At the end of a mode, acknowledged ids missing on the primary are lost writes; a lost write \
         acknowledged more than {} s before every fence (or after it) was not in flight there and counts \
         as lost outside the fences; two probe writes accepted by different members at overlapping \
         moments count as overlapping writers. The loss bound is what the DatabaseMirror's status \
         reported the promotion may have lost (`lastFailoverLagBytes`). Percentiles are nearest-rank \
         (below 100 trials the p99 is the maximum); the **both** rows pool the two modes. Everything \
         shares this machine's {} CPUs.\n",
        num(&settings["mirrors"]),
        settings["failover_delay"].as_str().unwrap_or("?"),
        settings["storage"].as_str().unwrap_or("?"),
        num(&settings["in_flight_window_seconds"]),
        num(&settings["cpus"]),
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::for_tests(Suite::Chaos)
    }

    /// A mode's run as `run_mode` reports it: trials of (fence, first write, lag).
    fn run_of(
        mode: &str,
        trials: &[(f64, f64, Option<i64>)],
        lost: u64,
        outside: u64,
        overlaps: u64,
    ) -> Value {
        let listed: Vec<Value> = trials
            .iter()
            .map(|(fence, seconds, lag)| {
                json!({"loss": "stalled_agent", "old_primary": "db-0", "new_primary": "db-1",
                       "seconds": seconds, "fenced_after": fence, "lag_bytes": lag})
            })
            .collect();
        let lag: Vec<Option<i64>> = trials.iter().map(|t| t.2).collect();
        json!({
            "replication": mode, "trials": listed, "stalled_trials": trials.len(),
            "lag_bytes": lag, "lag_bytes_sum": lag.iter().flatten().sum::<i64>(),
            "acked_writes": 100, "lost_acked_writes": lost, "lost_outside_fences": outside,
            "overlapping_writers": overlaps,
        })
    }

    #[test]
    fn headline_figures_pool_both_modes_and_keep_the_loss_bounds() {
        let sync = run_of("sync", &[(4.0, 8.0, Some(0)), (4.4, 8.5, Some(0))], 0, 0, 0);
        let async_ = run_of("async", &[(3.9, 7.9, Some(120)), (6.0, 9.0, None)], 3, 0, 0);
        let (keys, missed) = keys(&config(), &[sync, async_], Duration::from_secs(7));
        assert!(keys.keys().all(|k| k.starts_with("chaos.")));
        assert_eq!(keys["chaos.trials"], 2);
        assert_eq!(keys["chaos.stalled_trials"], 4);
        assert_eq!(keys["chaos.stalled_fence_p50_s"], 4.0);
        assert_eq!(keys["chaos.stalled_fence_p99_s"], 6.0);
        assert_eq!(keys["chaos.stalled_fence_max_s"], 6.0);
        assert_eq!(keys["chaos.stalled_first_write_p50_s"], 8.0);
        assert_eq!(keys["chaos.stalled_first_write_p99_s"], 9.0);
        assert_eq!(keys["chaos.fence_bound_s"], 5.5);
        assert_eq!(keys["chaos.stalled_fence_p99_within_bound"], false, "reported, not a target");
        assert_eq!(keys["chaos.lost_acked_writes_sync"], 0);
        assert_eq!(keys["chaos.lost_acked_writes_async"], 3);
        assert_eq!(keys["chaos.acked_writes_async"], 100);
        assert_eq!(keys["chaos.lost_outside_fences_async"], 0);
        assert_eq!(keys["chaos.lag_bytes_async"], json!([120, null]));
        assert_eq!(keys["chaos.lag_bytes_sum_async"], 120);
        assert_eq!(keys["chaos.overlapping_writers"], 0);
        assert_eq!(keys["chaos.settings"]["fence_after_seconds"], 4.5);
        assert_eq!(keys["chaos.settings"]["lease_seconds"], 6.0);
        assert!(missed.is_empty(), "{missed:?}");

        let md = markdown(&keys);
        assert!(md.starts_with("# Stalled agent\n"));
        assert!(
            md.contains("| stalled agent (SIGSTOP, server runs on) | **both** | 4 | **4.0 / 6.0 / 6.0** |")
        );
        assert!(md.contains("Fence p99, both modes: 6.0 s, **beyond it**."));
        assert!(md.contains("| kill -9 (failover suite) | – | – | – | not measured in this run |"));
        assert!(md.contains("| async | 100 | 3 | 0 (target 0) | 120, – | 120 |"));
        assert!(md.contains("Every target met."));
    }

    #[test]
    fn the_kill_9_figures_of_the_failover_suite_stand_beside_them() {
        let sync = run_of("sync", &[(4.0, 8.0, Some(0))], 0, 0, 0);
        let (mut all, _) = keys(&config(), &[sync], Duration::ZERO);
        all.extend(
            json!({
                "failover.process_trials": 40, "failover.process_p50_s": 1.9,
                "failover.process_p99_s": 2.4, "failover.process_max_s": 2.5,
                "failover.member_trials": 40, "failover.member_p50_s": 6.6,
                "failover.member_p99_s": 7.0, "failover.member_max_s": 7.1,
                "failover.lost_acked_writes_sync": 0, "failover.lost_acked_writes_async": 4,
                "failover.overlapping_writers": 0,
                "failover.settings": {"git_commit": "abc1234"},
            })
            .as_object()
            .unwrap()
            .clone(),
        );
        let md = markdown(&all);
        assert!(md.contains(
            "| kill -9 of the primary's PostgreSQL (failover suite, commit `abc1234`) | both | 40 | \
             0 (the kill stops it) | 1.9 / 2.4 / 2.5 |"
        ));
        assert!(
            md.contains("| kill -9 of its server and agent, node loss (failover suite, commit `abc1234`)")
        );
        assert!(md.contains("acknowledged writes lost 0 in sync and 4 in async mode"));
        assert!(!md.contains("not measured in this run"));
        assert!(md.contains("Fence p99, both modes: 4.0 s, within it."));
    }

    #[test]
    fn lost_writes_and_overlaps_miss_the_targets() {
        let sync = run_of("sync", &[(4.0, 8.0, Some(0))], 2, 2, 1);
        let async_ = run_of("async", &[(4.0, 8.0, Some(64))], 5, 1, 0);
        let failed = json!({"replication": "async", "error": "boom", "trials": []});
        let (all, missed) = keys(&config(), &[sync, async_], Duration::ZERO);
        assert_eq!(
            missed,
            [
                "chaos.lost_acked_writes_sync = 2 writes (target ≤ 0)",
                "chaos.overlapping_writers = 1 pairs (target ≤ 0)",
                "chaos.lost_outside_fences_async = 1 writes (target ≤ 0)",
            ]
        );
        assert_eq!(all["chaos.stalled_fence_p99_within_bound"], true);
        // A mode that failed reports its trials but no writes.
        let sync = run_of("sync", &[(4.0, 8.0, Some(0))], 0, 0, 0);
        let (keys, missed) = keys(&config(), &[sync, failed], Duration::ZERO);
        assert_eq!(keys["chaos.lost_acked_writes_async"], Value::Null);
        assert_eq!(keys["chaos.lost_outside_fences_async"], Value::Null);
        assert!(missed.is_empty());
        assert!(markdown(&keys).contains("**async replication could not be measured completely**"));
    }
}

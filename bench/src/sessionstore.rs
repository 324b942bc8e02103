//! The sessionstore suite: how long a SessionStore refuses session writes
//! when its primary is lost, and what it loses, with `durability: wait`
//! (every write confirmed by `WAIT 1`) and `async`.
//!
//! Per mode, like the failover suite: a namespace, operator and test bed of
//! its own (real Redis 7 servers with real agents), one SessionStore with two
//! replicas and `failover.delay: 1s`, and `BENCH_FAILOVER_TRIALS` trials of
//! each kind of loss run by the e2e test's code
//! ([`hostwright_e2e::trials::session_failover_trials`]).
//!
//! Headline keys `sessionstore.failover_p50_s`/`_p99_s` are process loss
//! (kill -9 of the primary's redis-server), both modes pooled; member loss
//! (server and agent gone, detected by lease expiry) is reported beside them.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hostwright::api::{SessionStore, SessionStoreSpec};
use hostwright::contract::timing::LEASE;
use hostwright_e2e::trials::{Loss, Trial, session_failover_trials};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Map, Value, json};

use crate::failover::{each_mode, in_namespace, kind_figures, mode_figures, pooled};
use crate::report::{missed_markdown, num, targets_missed};
use crate::{Config, Suite, log};

/// Durability modes, measured in this order.
const MODES: [&str; 2] = ["wait", "async"];
const NAME: &str = "sessions";
const REPLICAS: i32 = 2;
const FAILOVER_DELAY: &str = "1s";
const TRIAL_TIMEOUT: Duration = Duration::from_secs(120);
const REDIS: &str = "/usr/bin/redis-server";
/// Redis Sentinel's upstream default `down-after-milliseconds` (30000 in
/// its sentinel.conf): how long a primary must be unreachable before
/// Sentinel even starts a failover. (5 s appears only in some charts'
/// configurations, not upstream.)
const SENTINEL_DOWN_AFTER_S: f64 = 30.0;

/// (key, target, unit); every figure is better lower.
const TARGETS: [(&str, f64, &str); 2] =
    [("failover_p99_s", 5.0, "s"), ("lost_confirmed_writes", 0.0, "writes")];

/// Both modes; Ok(false) when one could not be measured completely.
pub async fn run(cfg: &Config, client: &Client) -> Result<bool> {
    if !Path::new(REDIS).exists() {
        bail!("{REDIS} is missing: the sessionstore suite runs real Redis servers (e2e/install-deps)");
    }
    each_mode(
        cfg,
        client,
        Suite::SessionStore,
        &MODES,
        run_mode,
        |mode, trials| mode_figures("durability", mode, trials),
        |runs, elapsed| write(cfg, runs, elapsed),
    )
    .await
}

async fn run_mode(cfg: &Config, client: &Client, mode: &str, recorded: &mut Vec<Trial>) -> Result<Value> {
    let ns = format!("bench-sessions-{mode}");
    let label = format!("sessionstore-{mode}");
    let report = in_namespace(cfg, client, &ns, &label, async |testbed| {
        let spec: SessionStoreSpec = serde_json::from_value(json!({
            "replicas": REPLICAS,
            "durability": mode,
            "failover": {"delay": FAILOVER_DELAY},
        }))
        .context("the benchmark's SessionStore spec")?;
        Api::<SessionStore>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &SessionStore::new(NAME, spec))
            .await
            .with_context(|| format!("creating SessionStore {ns}/{NAME}"))?;
        let losses = Loss::alternating(2 * cfg.failover_trials);
        let total = losses.len();
        session_failover_trials(client, &ns, NAME, testbed, &losses, mode == "wait", TRIAL_TIMEOUT, |i, t| {
            log(format!(
                "sessionstore: {mode} trial {}/{total}: {} loss of {}, sessions resumed on {} after {:.2} s",
                i + 1,
                t.loss,
                t.old_primary,
                t.new_primary,
                t.seconds
            ));
            recorded.push(t.clone());
        })
        .await
    })
    .await?;
    let mut figures = mode_figures("durability", mode, &report.trials);
    figures.extend([
        ("namespace".into(), json!(ns)),
        ("trials_per_kind".into(), json!(cfg.failover_trials)),
        ("confirmed_writes".into(), json!(report.confirmed_writes)),
        ("lost_writes".into(), json!(report.lost.len())),
        ("lost_ids_sample".into(), json!(report.lost.iter().take(20).collect::<Vec<_>>())),
        ("failovers".into(), json!(report.failovers_after - report.failovers_before)),
    ]);
    Ok(Value::Object(figures))
}

fn write(cfg: &Config, runs: &[Value], elapsed: Duration) -> Result<Vec<String>> {
    let (keys, missed) = keys(cfg, runs, elapsed);
    crate::report::merge(&cfg.results, Suite::SessionStore, keys)?;
    Ok(missed)
}

/// The `sessionstore.*` keys, and the targets missed.
fn keys(cfg: &Config, runs: &[Value], elapsed: Duration) -> (Map<String, Value>, Vec<String>) {
    let mut out = Map::new();
    let process = kind_figures(&pooled(runs, Loss::Process));
    let member = kind_figures(&pooled(runs, Loss::Member));
    let lost = |mode: &str| {
        runs.iter()
            .filter(|r| r.get("error").is_none() && r["durability"] == mode)
            .find_map(|r| r["lost_writes"].as_u64())
            .map_or(Value::Null, |n| json!(n))
    };
    let figures = [
        ("trials", json!(cfg.failover_trials)),
        ("failover_p50_s", process["p50_s"].clone()),
        ("failover_p99_s", process["p99_s"].clone()),
        ("failover_max_s", process["max_s"].clone()),
        ("member_p50_s", member["p50_s"].clone()),
        ("member_p99_s", member["p99_s"].clone()),
        ("member_max_s", member["max_s"].clone()),
        ("lost_confirmed_writes", lost("wait")),
        ("lost_writes_async", lost("async")),
        ("targets", json!({"failover_p99_s": 5, "lost_confirmed_writes": 0})),
        ("anchors", json!({"redis_sentinel_down_after_s": SENTINEL_DOWN_AFTER_S})),
    ];
    for (key, value) in figures {
        out.insert(format!("sessionstore.{key}"), value);
    }
    let missed = targets_missed(&out, "sessionstore", &TARGETS);
    out.insert("sessionstore.targets_missed".into(), json!(missed));
    out.insert("sessionstore.runs".into(), json!(runs));
    out.insert(
        "sessionstore.settings".into(),
        json!({
            "trials_per_kind": cfg.failover_trials,
            "modes": MODES,
            "replicas": REPLICAS,
            "failover_delay": FAILOVER_DELAY,
            "lease_seconds": LEASE.as_secs_f64(),
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "git_commit": std::env::var("BENCH_GIT_COMMIT").ok(),
            "started_at": std::env::var("BENCH_STARTED_AT").ok(),
        }),
    );
    out.insert("sessionstore.wall_s".into(), json!(elapsed.as_secs()));
    (out, missed)
}

/// The sessionstore section of `latest.md`, from the `sessionstore.*` keys alone.
pub fn markdown(all: &Map<String, Value>) -> String {
    let get = |key: &str| all.get(&format!("sessionstore.{key}")).cloned().unwrap_or(Value::Null);
    let runs = get("runs");
    let runs: &[Value] = runs.as_array().map_or(&[], |r| r.as_slice());
    let settings = get("settings");
    let mut md = String::new();
    let _ = writeln!(md, "# SessionStore failover benchmark\n");
    let _ = writeln!(
        md,
        "Generated by `make bench` (suite `sessionstore`), commit {}, started {}; {} trials of each kind per mode.\n",
        num(&settings["git_commit"]),
        num(&settings["started_at"]),
        num(&get("trials"))
    );
    let _ = writeln!(md, "| figure | measured | target | anchor |\n|---|---|---|---|");
    let _ = writeln!(
        md,
        "| primary process killed: p50 / p99 / max | {} / {} / {} s | p99 ≤ 5 s | Redis Sentinel waits {SENTINEL_DOWN_AFTER_S} s (upstream default `down-after-milliseconds`, 30000 ms) before it starts a failover |",
        num(&get("failover_p50_s")),
        num(&get("failover_p99_s")),
        num(&get("failover_max_s"))
    );
    let _ = writeln!(
        md,
        "| member lost (server and agent): p50 / p99 / max | {} / {} / {} s | – | bounded below by the {} s member lease |",
        num(&get("member_p50_s")),
        num(&get("member_p99_s")),
        num(&get("member_max_s")),
        LEASE.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "| confirmed (`WAIT 1`) sessions lost, durability wait | {} | 0 | – |",
        num(&get("lost_confirmed_writes"))
    );
    let _ =
        writeln!(md, "| sessions lost, durability async | {} | – | – |\n", num(&get("lost_writes_async")));
    let _ = writeln!(
        md,
        "| mode | process p50 / p99 / max (s) | member p50 / p99 / max (s) | writes | lost | failovers |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for r in runs {
        let f = |kind: &str| {
            format!("{} / {} / {}", num(&r[kind]["p50_s"]), num(&r[kind]["p99_s"]), num(&r[kind]["max_s"]))
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            num(&r["durability"]),
            f("process"),
            f("member"),
            num(&r["confirmed_writes"]),
            num(&r["lost_writes"]),
            num(&r["failovers"])
        );
    }
    let _ = writeln!(
        md,
        "\nMethod: a writer sets `session:<n>` through the `{NAME}` Service (its EndpointSlice, as a site's \
         client), every ~10 ms, and with durability wait counts a write only after `WAIT 1 1000` returns 1. \
         Each trial kills the primary (alternately its redis-server alone, or server and agent) and times \
         the kill → the first confirmed write on a new connection. Afterwards every confirmed session is \
         looked up on the promoted primary. Same two shared cores as the rest of the bench.\n"
    );
    missed_markdown(&mut md, &get("targets_missed"));
    md
}

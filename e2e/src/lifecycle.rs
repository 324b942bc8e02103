//! Planned moves of a DatabaseMirror under a confirming writer, measured
//! the same way by the e2e suite and `make bench` (suite `lifecycle`):
//! how long writes pause at each planned switchover, how long in total
//! during a full rolling update, and what was lost or written twice.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hostwright::api::DatabaseMirror;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::database::{current_primary, lost_writes};
use crate::trials::{healthy, start_load};
use crate::wait_for;

/// A pause longer than this counts as the store not taking writes (the
/// writer commits one row after another, a few milliseconds apart).
pub const PAUSE: Duration = Duration::from_millis(100);

const ACKED_TABLE: &str = "life_acked";
const PROBE_TABLE: &str = "life_probe";

/// What the planned moves cost the writer.
#[derive(Clone, Debug, Default)]
pub struct LifecycleReport {
    /// Per switchover, the longest pause between two acknowledged writes
    /// around it, in seconds.
    pub switchover_pauses: Vec<f64>,
    /// The rolling update: its duration, the sum of its pauses longer than
    /// [`PAUSE`] and the longest, in seconds.
    pub rollout_seconds: f64,
    pub rollout_unavailable: f64,
    pub rollout_longest_pause: f64,
    pub acked_writes: usize,
    pub lost: Vec<i64>,
    pub probe_accepted: usize,
    /// Moments two members accepted writes at once.
    pub overlapping: usize,
}

/// Pauses between consecutive acknowledgements that overlap `window`.
fn pauses(acked: &[Instant], (from, to): (Instant, Instant)) -> Vec<Duration> {
    acked.windows(2).filter(|w| w[1] >= from && w[0] <= to).map(|w| w[1] - w[0]).collect()
}

/// `switchovers` planned switchovers (each to the next member round the
/// store), then one rolling update of every member (a changed setting);
/// DatabaseMirror `name` must exist with two mirrors.
pub async fn measure(
    client: &Client,
    namespace: &str,
    name: &str,
    switchovers: usize,
    timeout: Duration,
    mut log: impl FnMut(String),
) -> Result<LifecycleReport> {
    let api: Api<DatabaseMirror> = Api::namespaced(client.clone(), namespace);
    let dbm = healthy(&api, name, timeout).await?;
    let (creds, members, probe, writer) =
        start_load(&api, name, &dbm, (ACKED_TABLE, PROBE_TABLE), timeout).await?;
    let moves = run_moves(&api, name, &members, switchovers, timeout, &mut log).await;
    let acked_at = writer.acked_at();
    let acked = writer.stop().await;
    let (probe_accepted, overlaps) = probe.stop().await;
    let (switchover_windows, rollout_window) = moves?;

    let mut at: Vec<Instant> = acked_at.values().copied().collect();
    at.sort();
    let longest = |w| pauses(&at, w).into_iter().max().unwrap_or_default().as_secs_f64();
    let rollout = pauses(&at, rollout_window);
    let lost = lost_writes(client, namespace, name, &creds, ACKED_TABLE, &acked).await?;
    Ok(LifecycleReport {
        switchover_pauses: switchover_windows.into_iter().map(longest).collect(),
        rollout_seconds: (rollout_window.1 - rollout_window.0).as_secs_f64(),
        rollout_unavailable: rollout.iter().filter(|p| **p > PAUSE).map(Duration::as_secs_f64).sum(),
        rollout_longest_pause: longest(rollout_window),
        acked_writes: acked.len(),
        lost,
        probe_accepted,
        overlapping: overlaps.len(),
    })
}

type Window = (Instant, Instant);

async fn run_moves(
    api: &Api<DatabaseMirror>,
    name: &str,
    members: &[String],
    switchovers: usize,
    timeout: Duration,
    log: &mut impl FnMut(String),
) -> Result<(Vec<Window>, Window)> {
    let patch = |spec: serde_json::Value| async move {
        api.patch(name, &PatchParams::default(), &Patch::Merge(json!({ "spec": spec }))).await
    };
    let mut windows = Vec::with_capacity(switchovers);
    for i in 0..switchovers {
        let dbm = healthy(api, name, timeout).await?;
        let primary = current_primary(&dbm).context("a primary")?;
        let at = members.iter().position(|m| *m == primary).unwrap_or(0);
        let target = members[(at + 1) % members.len()].clone();
        let started = Instant::now();
        patch(json!({ "primary": target })).await?;
        wait_for(api, name, timeout, "the switchover", |d: Option<&DatabaseMirror>| {
            d.is_some_and(|d| {
                current_primary(d).as_deref() == Some(target.as_str()) && crate::database::all_healthy(d)
            })
        })
        .await?;
        // Let the writer show it writes again before the window closes.
        tokio::time::sleep(Duration::from_millis(500)).await;
        windows.push((started, Instant::now()));
        log(format!(
            "switchover {}/{switchovers}: {primary} → {target} in {:.2} s",
            i + 1,
            started.elapsed().as_secs_f64()
        ));
    }
    // The rolling update keeps whichever member is primary.
    patch(json!({ "primary": null })).await?;
    let dbm = healthy(api, name, timeout).await?;
    let old: Vec<String> = dbm
        .status
        .as_ref()
        .map(|s| s.replication.members.iter().map(|m| m.name.clone()).collect())
        .unwrap_or_default();
    let started = Instant::now();
    let changed = patch(json!({ "instance": { "parameters": { "max_connections": "110" } } })).await?;
    let generation = changed.metadata.generation;
    wait_for(api, name, timeout * 3, "the rolling update", move |d: Option<&DatabaseMirror>| {
        d.is_some_and(|d| {
            let status = d.status.as_ref();
            crate::database::all_healthy(d)
                && status.is_some_and(|s| s.replication.observed_generation >= generation)
                && status.is_some_and(|s| s.replication.rollout.is_none())
                && status.is_some_and(|s| s.equal_spec == Some(true))
        })
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let window = (started, Instant::now());
    log(format!("rolling update of {} took {:.1} s", old.join(", "), started.elapsed().as_secs_f64()));
    Ok((windows, window))
}

/// Wait until the DatabaseMirror's rollout for the generation it has now is
/// over and every member streams.
pub async fn settled(api: &Api<DatabaseMirror>, name: &str, timeout: Duration) -> Result<DatabaseMirror> {
    let generation = api.get(name).await?.metadata.generation;
    wait_for(api, name, timeout, "the rollout to finish", move |d: Option<&DatabaseMirror>| {
        d.is_some_and(|d| {
            crate::database::all_healthy(d)
                && d.status.as_ref().is_some_and(|s| {
                    s.replication.rollout.is_none() && s.replication.observed_generation >= generation
                })
        })
    })
    .await
}

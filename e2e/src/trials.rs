//! Failover trials under write load, the one implementation behind both the
//! e2e test (`e2e/tests/databasemirror.rs`, which asserts on the outcome) and
//! the failover benchmark (`bench/`, which reports it).
//!
//! A [`Writer`] keeps writing through the `-rw` Service and a
//! [`SplitBrainProbe`] keeps trying to write on every member directly while
//! each trial kills the primary one way or another ([`Loss`]) and times, from
//! the kill, the first write acknowledged on a connection opened after it:
//! what a reconnecting client of the Service experiences.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hostwright::api::{DatabaseMirror, SessionStore};
use hostwright::controllers::members::{Replicated, StoreStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, DeleteParams};

use crate::database::{
    Accepted, Credentials, SplitBrainProbe, all_healthy, connect_rw, current_primary, lost_writes,
};
use crate::sessions::{self, Sessions};
use crate::testbed::Testbed;
use crate::writer::Writer;
use crate::{eventually, wait_for};

/// Table the writer fills (`id bigint primary key`).
const ACKED_TABLE: &str = "acked";
/// Table the split-brain probe writes to on every member.
const PROBE_TABLE: &str = "probe";

/// What kind of loss a trial inflicts on the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// kill -9 of the server; the agent lives.
    Process,
    /// kill -9 of server and agent, as if the node died; the member stays
    /// down until the new primary is in place, then comes back.
    Member,
    /// The agent frozen (SIGSTOP) while its server runs and clients keep
    /// their connections; resumed once a new primary took writes.
    StalledAgent,
    /// The agent cut off from the API server (its connections hang) while
    /// its server runs; restored once a new primary took writes.
    CutFromApi,
    /// The agent and its watchdog frozen while the server runs: a fault
    /// past the design, to show what the engine's own rules still hold
    /// (with synchronous replication, no acknowledged write is lost).
    StalledWatchdog,
    /// `kubectl delete pod` of the primary: its agent stops it cleanly,
    /// and the operator creates the pod again.
    DeletedPod,
}

impl Loss {
    /// `total` trials alternating process and member loss, process first.
    pub fn alternating(total: usize) -> Vec<Loss> {
        Self::cycle(&[Loss::Process, Loss::Member], total)
    }

    /// `total` trials going round `kinds`.
    pub fn cycle(kinds: &[Loss], total: usize) -> Vec<Loss> {
        (0..total).map(|i| kinds[i % kinds.len()]).collect()
    }

    /// Lower-case name, as the bench's keys use it.
    pub fn as_str(self) -> &'static str {
        match self {
            Loss::Process => "process",
            Loss::Member => "member",
            Loss::StalledAgent => "stalled_agent",
            Loss::CutFromApi => "cut_from_api",
            Loss::StalledWatchdog => "stalled_watchdog",
            Loss::DeletedPod => "deleted_pod",
        }
    }

    /// Inflict this loss on `member`.
    async fn inflict(self, testbed: &Testbed, client: &Client, namespace: &str, member: &str) -> Result<()> {
        match self {
            Loss::Process => testbed.kill_server(member).await,
            Loss::Member => testbed.kill_member(member).await,
            Loss::StalledAgent => testbed.stall_agent(member).await,
            Loss::CutFromApi => testbed.cut_api(member),
            Loss::StalledWatchdog => testbed.stall_agent_and_watchdog(member).await,
            Loss::DeletedPod => {
                let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
                pods.delete(member, &DeleteParams::default())
                    .await
                    .map(drop)
                    .context("deleting the primary's pod")
            }
        }
    }

    /// Undo this loss once the new primary is in place.
    async fn heal(self, testbed: &Testbed, member: &str) -> Result<()> {
        match self {
            Loss::Member => testbed.revive(member),
            Loss::StalledAgent => testbed.resume_agent(member).await,
            Loss::CutFromApi => testbed.restore_api(member),
            Loss::StalledWatchdog => testbed.resume_agent_and_watchdog(member).await,
            Loss::Process | Loss::DeletedPod => Ok(()),
        }
    }
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One trial: which primary was lost how, who took over, and how long
/// writes were refused.
#[derive(Clone, Debug)]
pub struct Trial {
    pub loss: Loss,
    pub old_primary: String,
    pub new_primary: String,
    /// From the fault to the first write acknowledged on a new connection.
    pub seconds: f64,
    /// From the fault to the last write the old primary accepted (its
    /// fence), where a probe writes to every member; 0 when it took none.
    pub fenced_after: Option<f64>,
    /// When the fault struck, and when the old primary last accepted a write.
    pub struck: Instant,
    pub fenced_at: Option<Instant>,
    /// What the store reported the promotion may have lost, in bytes.
    pub lag_bytes: Option<i64>,
}

/// What a run of trials observed.
#[derive(Debug)]
pub struct TrialReport {
    pub trials: Vec<Trial>,
    /// Writes the servers acknowledged to the writer, over the whole run.
    pub acked_writes: usize,
    /// Acknowledged ids missing from the primary at the end.
    pub lost: Vec<i64>,
    /// When each lost write was acknowledged.
    pub lost_at: Vec<Instant>,
    /// Writes a member accepted from the split-brain probe.
    pub probe_accepted: usize,
    /// Pairs of probe writes two different members accepted at overlapping moments.
    pub overlaps: Vec<(Accepted, Accepted)>,
    /// `status.replication.failover.failoverCount` before the first and after the last trial.
    pub failovers_before: i64,
    pub failovers_after: i64,
}

impl TrialReport {
    /// Seconds of the trials of one kind, in trial order.
    pub fn seconds(&self, loss: Loss) -> Vec<f64> {
        seconds_of(&self.trials, loss)
    }

    /// Lost writes that were not in flight at a fence: acknowledged more
    /// than `window` before the old primary of some trial last accepted a
    /// write (or after it). With async replication a failover may lose what
    /// the mirrors had not received yet, and nothing else.
    pub fn lost_outside_fences(&self, window: Duration) -> usize {
        self.lost_at
            .iter()
            .filter(|at| {
                !self.trials.iter().any(|t| {
                    let fence = t.fenced_at.unwrap_or(t.struck);
                    **at + window >= fence && **at <= fence + Duration::from_millis(50)
                })
            })
            .count()
    }

    /// For each lost write, how long before the nearest following fence it
    /// was acknowledged, in seconds (what "in flight" meant in this run).
    pub fn lost_before_fence(&self) -> Vec<f64> {
        self.lost_at
            .iter()
            .filter_map(|at| {
                self.trials
                    .iter()
                    .map(|t| t.fenced_at.unwrap_or(t.struck))
                    .filter(|fence| *fence + Duration::from_millis(50) >= *at)
                    .map(|fence| fence.saturating_duration_since(*at).as_secs_f64())
                    .reduce(f64::min)
            })
            .collect()
    }
}

/// Where trials run: the cluster, the test bed and, for a database, the
/// probe that tells when the old primary last took a write.
struct Bed<'a> {
    client: &'a Client,
    namespace: &'a str,
    testbed: &'a Testbed,
    probe: Option<&'a SplitBrainProbe>,
}

/// Seconds of the trials of one kind, in trial order.
pub fn seconds_of(trials: &[Trial], loss: Loss) -> Vec<f64> {
    trials.iter().filter(|t| t.loss == loss).map(|t| t.seconds).collect()
}

/// One line per kind of loss: count, median and worst, for test output.
pub fn summary(trials: &[Trial]) -> Vec<String> {
    [
        Loss::Process,
        Loss::Member,
        Loss::StalledAgent,
        Loss::CutFromApi,
        Loss::StalledWatchdog,
        Loss::DeletedPod,
    ]
    .into_iter()
    .filter_map(|loss| {
        let mut t = seconds_of(trials, loss);
        t.sort_by(f64::total_cmp);
        let (p50, max) = (t.get(t.len() / 2)?, t.last()?);
        Some(format!("{loss} loss: {} trials, p50 {p50:.2} s, max {max:.2} s", t.len()))
    })
    .collect()
}

/// Run one trial per entry of `losses` on the DatabaseMirror `name`, which
/// must exist and be served by `testbed`. Creates the writer's and the
/// probe's tables, waits for every member to be healthy before each kill and
/// for the old primary to rejoin after it; `timeout` bounds each wait.
/// `on_trial` sees each trial as it completes (for progress output).
///
/// The writer and the probe are stopped also when a trial fails.
pub async fn failover_trials(
    client: &Client,
    namespace: &str,
    name: &str,
    testbed: &Testbed,
    losses: &[Loss],
    timeout: Duration,
    on_trial: impl FnMut(usize, &Trial),
) -> Result<TrialReport> {
    let api: Api<DatabaseMirror> = Api::namespaced(client.clone(), namespace);
    let dbm = healthy(&api, name, timeout).await?;
    let failovers_before = failover_count(&dbm);
    let (creds, members, probe, writer) =
        start_load(&api, name, &dbm, (ACKED_TABLE, PROBE_TABLE), timeout).await?;

    let bed = Bed { client, namespace, testbed, probe: Some(&probe) };
    let run = run_trials(&api, name, &bed, &writer, &members, losses, timeout, on_trial).await;
    let acked_at = writer.acked_at();
    let acked = writer.stop().await;
    let (probe_accepted, overlaps) = probe.stop().await;
    let trials = run?;

    let lost = lost_writes(client, namespace, name, &creds, ACKED_TABLE, &acked).await?;
    let dbm = healthy(&api, name, timeout).await?;
    let lost_at = lost.iter().filter_map(|id| acked_at.get(id).copied()).collect();
    Ok(TrialReport {
        trials,
        acked_writes: acked.len(),
        lost,
        lost_at,
        probe_accepted,
        overlaps,
        failovers_before,
        failovers_after: failover_count(&dbm),
    })
}

/// Create the writer's table (`id bigint primary key`) and the probe's on
/// the primary of `dbm`, let them reach every mirror, then start writing
/// through `<name>-rw` and probing every member. Returns the owner's login
/// and the members besides.
pub async fn start_load(
    api: &Api<DatabaseMirror>,
    name: &str,
    dbm: &DatabaseMirror,
    (acked_table, probe_table): (&str, &str),
    timeout: Duration,
) -> Result<(Credentials, Vec<String>, SplitBrainProbe, Writer)> {
    let client = api.clone().into_client();
    let namespace = kube::ResourceExt::namespace(dbm).unwrap_or_default();
    let creds = Credentials::read(&client, &namespace, name).await?;
    connect_rw(&client, &namespace, name, &creds)
        .await?
        .batch_execute(&format!(
            "CREATE TABLE {acked_table} (id bigint PRIMARY KEY); \
             CREATE TABLE {probe_table} (member text, at timestamptz DEFAULT now())"
        ))
        .await
        .context("creating the writer's and the probe's tables")?;
    let members = hostwright::resources::databasemirror::member_names(dbm);
    // Let the tables reach every mirror before probing them.
    healthy(api, name, timeout).await?;
    let probe = SplitBrainProbe::start(&client, &namespace, &members, &creds, probe_table).await?;
    let writer = Writer::start(client, namespace, name.into(), creds.clone(), acked_table);
    Ok((creds, members, probe, writer))
}

#[allow(clippy::too_many_arguments)]
async fn run_trials<K: Replicated>(
    api: &Api<K>,
    name: &str,
    bed: &Bed<'_>,
    writer: &Writer,
    members: &[String],
    losses: &[Loss],
    timeout: Duration,
    mut on_trial: impl FnMut(usize, &Trial),
) -> Result<Vec<Trial>> {
    let mut trials = Vec::with_capacity(losses.len());
    for (i, &loss) in losses.iter().enumerate() {
        let store = healthy(api, name, timeout).await?;
        let old = current_primary(&store).context("a primary")?;
        let count = failover_count(&store);
        eventually(timeout, "writes flowing before the fault", || async {
            Ok(writer.first_ack_after(Instant::now() - Duration::from_millis(500)).map(|_| ()))
        })
        .await?;
        let struck = Instant::now();
        loss.inflict(bed.testbed, bed.client, bed.namespace, &old).await?;
        let resumed = eventually(timeout, "a write acknowledged by the new primary", || async {
            Ok(writer.first_ack_reconnected_after(struck))
        })
        .await
        .with_context(|| format!("trial {i} ({loss} loss of {old})"))?;
        let seconds = resumed.duration_since(struck).as_secs_f64();
        let lost_primary = old.clone();
        let store = wait_for(api, name, timeout, "a new primary", move |d: Option<&K>| {
            d.is_some_and(|d| {
                current_primary(d).is_some_and(|p| p != lost_primary) && failover_count(d) > count
            })
        })
        .await?;
        let fenced_at = bed.probe.map(|p| p.last_accepted_by(&old, struck).unwrap_or(struck));
        let trial = Trial {
            loss,
            old_primary: old.clone(),
            new_primary: current_primary(&store).unwrap_or_default(),
            seconds,
            fenced_after: fenced_at.map(|f| f.duration_since(struck).as_secs_f64()),
            struck,
            fenced_at,
            lag_bytes: store.current_status().and_then(|s| s.replication().failover.last_failover_lag_bytes),
        };
        on_trial(i, &trial);
        trials.push(trial);
        loss.heal(bed.testbed, &old).await?;
        if loss == Loss::Member {
            for m in members {
                bed.testbed.revive(m)?;
            }
        }
        // The old primary comes back as a mirror before the next trial.
        healthy(api, name, timeout).await.with_context(|| format!("rejoin after trial {i}"))?;
    }
    Ok(trials)
}

pub async fn healthy<K: Replicated>(api: &Api<K>, name: &str, timeout: Duration) -> Result<K> {
    wait_for(api, name, timeout, "every member healthy and streaming", |o: Option<&K>| {
        o.is_some_and(all_healthy)
    })
    .await
}

fn failover_count<K: Replicated>(store: &K) -> i64 {
    store.current_status().map_or(0, |s| s.replication().failover.failover_count)
}

/// What a run of session-store trials observed.
#[derive(Debug)]
pub struct SessionTrialReport {
    pub trials: Vec<Trial>,
    /// Session writes the store confirmed (with `WAIT 1` when `confirm`).
    pub confirmed_writes: usize,
    /// Confirmed sessions missing from the primary at the end.
    pub lost: Vec<i64>,
    pub failovers_before: i64,
    pub failovers_after: i64,
}

impl SessionTrialReport {
    /// Seconds of the trials of one kind, in trial order.
    pub fn seconds(&self, loss: Loss) -> Vec<f64> {
        seconds_of(&self.trials, loss)
    }
}

/// [`failover_trials`] for the SessionStore `name`: a session writer
/// (confirming each write with `WAIT 1` when `confirm`) instead of rows.
#[allow(clippy::too_many_arguments)]
pub async fn session_failover_trials(
    client: &Client,
    namespace: &str,
    name: &str,
    testbed: &Testbed,
    losses: &[Loss],
    confirm: bool,
    timeout: Duration,
    on_trial: impl FnMut(usize, &Trial),
) -> Result<SessionTrialReport> {
    let api: Api<SessionStore> = Api::namespaced(client.clone(), namespace);
    let store = healthy(&api, name, timeout).await?;
    let failovers_before = failover_count(&store);
    let members = store.blueprint()?.members;
    let sessions = Sessions {
        client: client.clone(),
        namespace: namespace.into(),
        name: name.into(),
        login: sessions::login(client, namespace, name).await?,
        confirm,
    };
    let writer = Writer::run(sessions.clone());
    let bed = Bed { client, namespace, testbed, probe: None };
    let run = run_trials(&api, name, &bed, &writer, &members, losses, timeout, on_trial).await;
    let confirmed = writer.stop().await;
    let trials = run?;
    let lost = sessions.lost(&confirmed).await?;
    let store = healthy(&api, name, timeout).await?;
    Ok(SessionTrialReport {
        trials,
        confirmed_writes: confirmed.len(),
        lost,
        failovers_before,
        failovers_after: failover_count(&store),
    })
}

#[cfg(test)]
mod tests {
    use super::Loss;

    #[test]
    fn trials_alternate_starting_with_process_loss() {
        assert_eq!(Loss::alternating(3), [Loss::Process, Loss::Member, Loss::Process]);
        assert!(Loss::alternating(0).is_empty());
        assert_eq!(Loss::alternating(40).iter().filter(|l| **l == Loss::Member).count(), 20);
    }
}

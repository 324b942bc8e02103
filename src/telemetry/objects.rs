//! Per-object gauges: what each WebCluster's and store's status says, as
//! Prometheus series (`hostwright_object_condition`, `hostwright_store_*`,
//! `hostwright_webcluster_*`).
//!
//! Every reconcile turns the status it computed into a list of [`Sample`]s
//! (pure functions below) and replaces the object's whole set with it, so a
//! condition or member that disappears takes its series along, and a
//! restarted operator has the gauges right after one reconcile even when no
//! status is written. A deleted object's set is removed. Only the leader
//! reconciles, so only the leader publishes.
//!
//! The samples are kept as they are and rendered at scrape time by a
//! [`Collector`]: one small boxed slice per object, labels borrowed
//! (`&'static str`) wherever the value is one of a known few.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Mutex;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::api::backup::BackupStatus;
use crate::api::common::{MemberRole, ReplicationStatus, condition_type};
use crate::api::webcluster::{WebCluster, WebClusterStatus};

/// The per-object metric families (names without the `hostwright_` prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Condition,
    MemberHealthy,
    MemberLagBytes,
    FailoverMaxLagBytes,
    FailoverCount,
    RolloutHalted,
    BackupLastSuccess,
    BackupFailing,
    WebReplicas,
    WebInfo,
}

impl Metric {
    /// Every family, in the order they are rendered.
    const ALL: [Metric; 10] = [
        Metric::Condition,
        Metric::MemberHealthy,
        Metric::MemberLagBytes,
        Metric::FailoverMaxLagBytes,
        Metric::FailoverCount,
        Metric::RolloutHalted,
        Metric::BackupLastSuccess,
        Metric::BackupFailing,
        Metric::WebReplicas,
        Metric::WebInfo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Condition => "object_condition",
            Metric::MemberHealthy => "store_member_healthy",
            Metric::MemberLagBytes => "store_member_lag_bytes",
            Metric::FailoverMaxLagBytes => "store_failover_max_lag_bytes",
            Metric::FailoverCount => "store_failover_count",
            Metric::RolloutHalted => "store_rollout_halted",
            Metric::BackupLastSuccess => "store_backup_last_success_timestamp_seconds",
            Metric::BackupFailing => "store_backup_failing",
            Metric::WebReplicas => "webcluster_replicas",
            Metric::WebInfo => "webcluster_info",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Metric::Condition => "1 if the object's condition is True, 0 otherwise; one series per condition",
            Metric::MemberHealthy => "1 while the store reports the member healthy",
            Metric::MemberLagBytes => "Bytes the member is behind the primary, as the store reports it",
            Metric::FailoverMaxLagBytes => "failover.maxLagBytes: a mirror further behind is never promoted",
            Metric::FailoverCount => "Failovers and switchovers the store has completed (status.failover)",
            Metric::RolloutHalted => "1 while a rolling update of the members is halted",
            Metric::BackupLastSuccess => "When the newest base backup finished (Unix seconds)",
            Metric::BackupFailing => "1 when the last base backup attempt failed",
            Metric::WebReplicas => "Web server pods of a WebCluster, by state",
            Metric::WebInfo => "1 per WebCluster; names the stores it references (empty when none)",
        }
    }

    /// The `webcluster_*` families are of one kind and carry no `kind` label.
    fn has_kind(self) -> bool {
        !matches!(self, Metric::WebReplicas | Metric::WebInfo)
    }
}

/// The labels of a sample beyond the object's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Labels {
    None,
    Condition {
        type_: Cow<'static, str>,
        reason: Box<str>,
    },
    /// `role` is set on `store_member_healthy` only.
    Member {
        member: Box<str>,
        role: Option<&'static str>,
    },
    /// `webcluster_replicas`: desired, ready, updated or available.
    State(&'static str),
    Refs {
        session_store: Box<str>,
        database: Box<str>,
    },
}

/// One series of one object: the family, its extra labels, the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub metric: Metric,
    pub labels: Labels,
    pub value: i64,
}

impl Sample {
    fn new(metric: Metric, labels: Labels, value: i64) -> Self {
        Self { metric, labels, value }
    }

    /// The extra labels as (name, value) pairs.
    fn pairs(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let pairs: [Option<(&'static str, &str)>; 2] = match &self.labels {
            Labels::None => [None, None],
            Labels::Condition { type_, reason } => [Some(("type", type_)), Some(("reason", reason))],
            Labels::Member { member, role } => [Some(("member", member)), role.map(|r| ("role", r))],
            Labels::State(state) => [Some(("state", state)), None],
            Labels::Refs { session_store, database } => {
                [Some(("session_store", session_store)), Some(("database", database))]
            }
        };
        pairs.into_iter().flatten()
    }
}

/// Which object a set of samples belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ObjectKey {
    kind: Cow<'static, str>,
    namespace: Box<str>,
    name: Box<str>,
}

impl ObjectKey {
    fn new(kind: Cow<'static, str>, namespace: &str, name: &str) -> Self {
        Self { kind, namespace: namespace.into(), name: name.into() }
    }
}

/// The current samples of every object this process reconciles.
#[derive(Debug, Default)]
pub struct ObjectMetrics {
    objects: Mutex<BTreeMap<ObjectKey, Box<[Sample]>>>,
}

impl ObjectMetrics {
    /// Replace every series of the object with `samples`.
    pub fn publish(&self, kind: Cow<'static, str>, namespace: &str, name: &str, samples: Vec<Sample>) {
        let key = ObjectKey::new(kind, namespace, name);
        self.lock().insert(key, samples.into_boxed_slice());
    }

    /// Drop every series of a deleted object.
    pub fn remove(&self, kind: &str, namespace: &str, name: &str) {
        self.lock().retain(|k, _| !(k.kind == kind && &*k.namespace == namespace && &*k.name == name));
    }

    /// Drop every series: this process no longer reconciles (leadership lost).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ObjectKey, Box<[Sample]>>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Collector for ObjectMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let objects = self.lock();
        for metric in Metric::ALL {
            let mut series = objects
                .iter()
                .flat_map(|(key, samples)| samples.iter().map(move |s| (key, s)))
                .filter(|(_, s)| s.metric == metric)
                .peekable();
            if series.peek().is_none() {
                continue;
            }
            let mut family =
                encoder.encode_descriptor(metric.name(), metric.help(), None, MetricType::Gauge)?;
            for (key, sample) in series {
                let kind = metric.has_kind().then_some(("kind", &*key.kind));
                let labels: Vec<(&str, &str)> = kind
                    .into_iter()
                    .chain([("namespace", &*key.namespace), ("name", &*key.name)])
                    .chain(sample.pairs())
                    .collect();
                ConstGauge::new(sample.value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// One sample per condition present: 1 when True, 0 otherwise.
pub fn conditions(conditions: &[Condition]) -> impl Iterator<Item = Sample> + '_ {
    conditions.iter().map(|c| {
        let labels =
            Labels::Condition { type_: condition_type_label(&c.type_), reason: c.reason.as_str().into() };
        Sample::new(Metric::Condition, labels, i64::from(c.status == "True"))
    })
}

/// The well-known condition types borrowed, any other copied.
fn condition_type_label(type_: &str) -> Cow<'static, str> {
    use condition_type::{DEGRADED, DRAIN_BLOCKED, PROGRESSING, READY};
    match [READY, PROGRESSING, DEGRADED, DRAIN_BLOCKED].into_iter().find(|known| *known == type_) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(type_.to_string()),
    }
}

/// A WebCluster's samples from the status its reconcile computed.
pub fn web_cluster(wc: &WebCluster, status: &WebClusterStatus) -> Vec<Sample> {
    let reference = |r: Option<&crate::api::common::LocalObjectReference>| -> Box<str> {
        r.map_or("", |r| r.name.as_str()).into()
    };
    let refs = Labels::Refs {
        session_store: reference(wc.spec.session_store_ref.as_ref()),
        database: reference(wc.spec.database_ref.as_ref()),
    };
    let replicas = [
        ("desired", wc.spec.replicas),
        ("ready", status.ready_replicas),
        ("updated", status.updated_replicas),
        ("available", status.available_replicas),
    ];
    conditions(&status.conditions)
        .chain(replicas.map(|(state, n)| Sample::new(Metric::WebReplicas, Labels::State(state), n.into())))
        .chain([Sample::new(Metric::WebInfo, refs, 1)])
        .collect()
}

/// A replicated store's samples from the status its reconcile computed:
/// `max_lag_bytes` is the spec's promotion limit, `backup` the backup status
/// of a store that takes backups.
pub fn store(status: &ReplicationStatus, max_lag_bytes: i64, backup: Option<&BackupStatus>) -> Vec<Sample> {
    let mut samples: Vec<Sample> = conditions(&status.conditions).collect();
    for m in &status.members {
        let member = |role| Labels::Member { member: m.name.as_str().into(), role };
        samples.push(Sample::new(Metric::MemberHealthy, member(Some(role_label(m.role))), m.healthy.into()));
        if let Some(lag) = m.lag_bytes {
            samples.push(Sample::new(Metric::MemberLagBytes, member(None), lag));
        }
    }
    let halted = status.rollout.as_ref().is_some_and(|r| r.halted_on.is_some());
    samples.extend([
        Sample::new(Metric::FailoverMaxLagBytes, Labels::None, max_lag_bytes),
        Sample::new(Metric::FailoverCount, Labels::None, status.failover.failover_count),
        Sample::new(Metric::RolloutHalted, Labels::None, halted.into()),
    ]);
    if let Some(backup) = backup {
        if let Some(last) = &backup.last_backup {
            let finished = last.finished.0.as_second();
            samples.push(Sample::new(Metric::BackupLastSuccess, Labels::None, finished));
        }
        let failing = backup.last_backup_failure.is_some();
        samples.push(Sample::new(Metric::BackupFailing, Labels::None, failing.into()));
    }
    samples
}

/// A member's role as a label value: lower case, like the agent's `role`.
fn role_label(role: MemberRole) -> &'static str {
    match role {
        MemberRole::Primary => "primary",
        MemberRole::Mirror => "mirror",
        MemberRole::Fenced => "fenced",
        MemberRole::Pending => "pending",
    }
}

#[cfg(test)]
mod tests;

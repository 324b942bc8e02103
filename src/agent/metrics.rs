//! The agent's Prometheus metrics, served beside the probes at
//! [`METRICS_PATH`](crate::contract::probes::METRICS_PATH) on the agent's
//! port (container port `agent`).
//!
//! Two sources feed them, and neither is a scrape:
//!
//! - The step loop hands over, on every tick, what it observes anyway
//!   ([`Status`]: whether the server answered, its role, epoch, position,
//!   archiving). Nothing more is asked of the server on that path.
//! - The figures only metrics want ([`Stats`]: commits, connections, lag,
//!   memory, keys…) are asked by a loop of their own, [`keep_stats`],
//!   every [`STATS_INTERVAL`], each attempt bounded by [`STATS_TIMEOUT`],
//!   on a connection of its own. A slow or failing query delays nothing
//!   the lease and step loops do; its figures are then left out.
//!
//! Not at scrape time: scrapes come at a rate the agent does not choose
//! (two Prometheus replicas, a curious human), and a scrape that waited on
//! a hung server would time out instead of reporting `up 0`. A scrape reads
//! the last figures, at most [`STATS_INTERVAL`] old.
//!
//! Every series carries the labels `store`, `member` and `kind`; the
//! mapping from observations to series ([`series`]) is pure.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tracing::{debug, warn};

use super::server::Server;
use crate::contract::{ArchiveReport, Epoch, ServerRole};

/// How often the extra figures are asked of the server.
pub const STATS_INTERVAL: Duration = Duration::from_secs(5);
/// Bound of one round of them (a Redis round is two calls).
pub const STATS_TIMEOUT: Duration = Duration::from_secs(3);

/// `kind` of a DatabaseMirror's members.
pub const DATABASE_MIRROR: &str = "DatabaseMirror";
/// `kind` of a SessionStore's members.
pub const SESSION_STORE: &str = "SessionStore";

/// The labels on every series: whose metrics these are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub store: String,
    pub member: String,
    pub kind: &'static str,
}

/// What the step loop saw at its last report.
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    /// The server answered.
    pub up: bool,
    pub role: ServerRole,
    /// The epoch of the instruction acted on.
    pub epoch: Epoch,
    /// Replication position (bytes), while the server answers.
    pub position: Option<u64>,
    /// The newest instruction says "primary".
    pub told_primary: bool,
    /// How WAL archiving goes; None where the server does not archive.
    pub archive: Option<ArchiveReport>,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            up: false,
            role: ServerRole::Stopped,
            epoch: 0,
            position: None,
            told_primary: false,
            archive: None,
        }
    }
}

/// Figures a driver reads for metrics alone ([`Server::stats`]). None:
/// this engine or role has no such figure.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Client connections.
    pub connections: Option<u64>,
    /// PostgreSQL: transactions committed, over the clients' databases
    /// (read-only ones too: PostgreSQL counts every transaction).
    pub commits: Option<u64>,
    /// Redis: commands processed (the agent's own few a second included).
    pub commands: Option<u64>,
    /// A mirror: bytes it has heard of but not yet applied.
    pub lag_bytes: Option<u64>,
    /// A mirror: seconds behind, 0 when caught up.
    pub lag_seconds: Option<f64>,
    /// A primary whose writes wait for replicas it does not have:
    /// synchronous standbys (PostgreSQL) or `min-replicas-to-write`
    /// (Redis) not met.
    pub short_of_replicas: bool,
    /// notAfter (unix seconds) of the serving certificate, where TLS is on.
    pub certificate_expiry: Option<i64>,
    pub redis: Option<RedisStats>,
}

/// What a Redis server says of its memory, clients and keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedisStats {
    pub memory_bytes: u64,
    pub clients: u64,
    pub keys: u64,
}

/// One sample's value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
}

/// One metric: its name after `hostwright_`, and its samples, each with
/// at most one label of its own.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: &'static str,
    pub help: &'static str,
    pub counter: bool,
    pub samples: Vec<(Option<(&'static str, &'static str)>, Value)>,
}

fn gauge(name: &'static str, help: &'static str, value: Value) -> Series {
    Series { name, help, counter: false, samples: vec![(None, value)] }
}

fn flag(on: bool) -> Value {
    Value::Int(i64::from(on))
}

/// A byte count or position; Prometheus keeps floats anyway.
fn bytes(n: u64) -> Value {
    i64::try_from(n).map_or(Value::Float(n as f64), Value::Int)
}

const ROLES: [ServerRole; 3] = [ServerRole::Primary, ServerRole::Mirror, ServerRole::Stopped];

/// The series the last observations make. `stats` count only while the
/// server answers, and lag only while it is a mirror.
pub fn series(status: &Status, stats: Option<&Stats>) -> Vec<Series> {
    let stats = stats.filter(|_| status.up);
    let blocked = status.told_primary
        && (status.role != ServerRole::Primary || stats.is_some_and(|s| s.short_of_replicas));
    let mut out = vec![
        gauge("member_up", "1 when the agent's last look at its server succeeded", flag(status.up)),
        Series {
            name: "member_role",
            help: "1 for the role the server has now, 0 for the others",
            counter: false,
            samples: ROLES.iter().map(|r| (Some(("role", r.as_str())), flag(*r == status.role))).collect(),
        },
        gauge("member_epoch", "The epoch of the instruction the agent acts on", bytes(status.epoch)),
        gauge(
            "member_writes_blocked",
            "1 when told to be the primary but writes cannot complete (not serving as primary, or too few replicas)",
            flag(blocked),
        ),
    ];
    if let Some(position) = status.position {
        out.push(gauge(
            "member_position_bytes",
            "Replication position: PostgreSQL LSN in bytes, Redis replication offset",
            bytes(position),
        ));
    }
    if let Some(archive) = &status.archive {
        out.push(gauge("member_archive_failing", "1 while WAL archiving fails", flag(archive.failing())));
        if let Some((_, at)) = &archive.archived {
            out.push(gauge(
                "member_archive_last_success_timestamp_seconds",
                "When the last WAL file was archived",
                Value::Float(*at as f64 / 1000.0),
            ));
        }
    }
    if let Some(stats) = stats {
        out.extend(stats_series(stats, status.role == ServerRole::Mirror));
    }
    out
}

fn stats_series(stats: &Stats, mirror: bool) -> Vec<Series> {
    let counter = |name, help, n: u64| Series { counter: true, ..gauge(name, help, bytes(n)) };
    let redis = stats.redis.as_ref();
    let lag_bytes = stats.lag_bytes.filter(|_| mirror);
    let lag_seconds = stats.lag_seconds.filter(|_| mirror);
    [
        stats.connections.map(|n| gauge("member_connections", "Client connections", bytes(n))),
        stats
            .commits
            .map(|n| counter("member_commits", "Transactions committed in the clients' databases", n)),
        stats.commands.map(|n| counter("member_commands", "Commands processed", n)),
        lag_bytes
            .map(|n| gauge("member_lag_bytes", "A mirror's bytes heard of but not yet applied", bytes(n))),
        lag_seconds.map(|s| {
            gauge(
                "member_lag_seconds",
                "How far behind a mirror is in seconds, 0 when caught up",
                Value::Float(s),
            )
        }),
        stats.certificate_expiry.map(|t| {
            gauge(
                "member_certificate_expiry_timestamp_seconds",
                "notAfter of the server's certificate",
                Value::Int(t),
            )
        }),
        redis.map(|r| {
            gauge("member_redis_memory_bytes", "Memory Redis uses (used_memory)", bytes(r.memory_bytes))
        }),
        redis.map(|r| gauge("member_redis_clients", "Redis client connections", bytes(r.clients))),
        redis.map(|r| gauge("member_redis_keys", "Keys over all databases", bytes(r.keys))),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The last observations, encoded at each scrape.
#[derive(Debug, Default)]
struct Latest {
    status: Mutex<Status>,
    stats: Mutex<Option<Stats>>,
}

impl Latest {
    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, Option<Stats>> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn encode_value(encoder: MetricEncoder<'_>, counter: bool, value: Value) -> Result<(), std::fmt::Error> {
    match (counter, value) {
        (true, Value::Int(n)) => ConstCounter::new(u64::try_from(n).unwrap_or(0)).encode(encoder),
        (true, Value::Float(f)) => ConstCounter::new(f.max(0.0)).encode(encoder),
        (false, Value::Int(n)) => ConstGauge::new(n).encode(encoder),
        (false, Value::Float(f)) => ConstGauge::new(f).encode(encoder),
    }
}

impl Collector for Latest {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.status().clone();
        let stats = self.stats().clone();
        for s in series(&status, stats.as_ref()) {
            let kind = if s.counter { MetricType::Counter } else { MetricType::Gauge };
            let mut metric = encoder.encode_descriptor(s.name, s.help, None, kind)?;
            if let [(None, value)] = s.samples.as_slice() {
                encode_value(metric, s.counter, *value)?;
                continue;
            }
            for (label, value) in &s.samples {
                let labels: Vec<(&str, &str)> = label.iter().copied().collect();
                encode_value(metric.encode_family(&labels)?, s.counter, *value)?;
            }
        }
        Ok(())
    }
}

/// The agent's metrics: the last observations, and the registry that
/// encodes them with the member's labels.
#[derive(Debug)]
pub struct Metrics {
    latest: Arc<Latest>,
    registry: Registry,
}

impl Metrics {
    pub fn new(identity: Identity) -> Self {
        let labels =
            [("store", identity.store), ("member", identity.member), ("kind", identity.kind.to_string())]
                .into_iter()
                .map(|(k, v)| (Cow::Borrowed(k), Cow::Owned(v)));
        let mut registry = Registry::with_prefix_and_labels("hostwright", labels);
        let latest = Arc::new(Latest::default());
        registry.register_collector(Box::new(latest.clone()));
        Metrics { latest, registry }
    }

    /// What the step loop saw at its last report.
    pub fn set_status(&self, status: Status) {
        *self.latest.status() = status;
    }

    /// The extra figures (None: not read this round).
    pub fn set_stats(&self, stats: Option<Stats>) {
        *self.latest.stats() = stats;
    }

    /// The server answered at the step loop's last look.
    pub fn up(&self) -> bool {
        self.latest.status().up
    }

    /// The OpenMetrics text of every series.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        crate::telemetry::render(&self.registry)
    }
}

/// Read the extra figures every [`STATS_INTERVAL`] while the server
/// answers. Runs beside the agent's loops and touches nothing of theirs:
/// a failure leaves the figures out and is logged once per streak.
pub async fn keep_stats<S: Server>(driver: Arc<S>, metrics: Arc<Metrics>) {
    let mut failing = false;
    loop {
        tokio::time::sleep(STATS_INTERVAL).await;
        if !metrics.up() {
            metrics.set_stats(None);
            continue;
        }
        let stats = match tokio::time::timeout(STATS_TIMEOUT, driver.stats()).await {
            Ok(Ok(stats)) => Ok(stats),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!("no answer within {STATS_TIMEOUT:?}")),
        };
        match stats {
            Ok(stats) => {
                failing = false;
                metrics.set_stats(Some(stats));
            }
            Err(why) => {
                if failing {
                    debug!(%why, "could not read the server's figures for metrics");
                } else {
                    warn!(%why, "could not read the server's figures for metrics; leaving them out");
                }
                failing = true;
                metrics.set_stats(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(all: &'a [Series], name: &str) -> Option<&'a Series> {
        all.iter().find(|s| s.name == name)
    }

    fn value(all: &[Series], name: &str) -> Option<Value> {
        find(all, name).map(|s| s.samples[0].1)
    }

    fn primary() -> Status {
        Status {
            up: true,
            role: ServerRole::Primary,
            epoch: 7,
            position: Some(0x0300_0060),
            told_primary: true,
            archive: None,
        }
    }

    fn figures() -> Stats {
        Stats {
            connections: Some(4),
            commits: Some(120),
            lag_bytes: Some(16),
            lag_seconds: Some(1.5),
            certificate_expiry: Some(1_900_000_000),
            ..Stats::default()
        }
    }

    #[test]
    fn a_primary_reports_its_role_epoch_position_and_figures_without_lag() {
        let all = series(&primary(), Some(&figures()));
        assert_eq!(value(&all, "member_up"), Some(Value::Int(1)));
        let roles = &find(&all, "member_role").unwrap().samples;
        assert_eq!(
            roles,
            &[
                (Some(("role", "primary")), Value::Int(1)),
                (Some(("role", "mirror")), Value::Int(0)),
                (Some(("role", "stopped")), Value::Int(0)),
            ]
        );
        assert_eq!(value(&all, "member_epoch"), Some(Value::Int(7)));
        assert_eq!(value(&all, "member_position_bytes"), Some(Value::Int(0x0300_0060)));
        assert_eq!(value(&all, "member_connections"), Some(Value::Int(4)));
        assert_eq!(value(&all, "member_commits"), Some(Value::Int(120)));
        assert!(find(&all, "member_commits").unwrap().counter);
        assert_eq!(
            value(&all, "member_certificate_expiry_timestamp_seconds"),
            Some(Value::Int(1_900_000_000))
        );
        assert_eq!(value(&all, "member_writes_blocked"), Some(Value::Int(0)));
        for absent in ["member_lag_bytes", "member_lag_seconds", "member_commands", "member_redis_keys"] {
            assert!(find(&all, absent).is_none(), "{absent} on a PostgreSQL primary");
        }
        assert!(find(&all, "member_archive_failing").is_none(), "no archiving, no archive series");
    }

    #[test]
    fn a_mirror_reports_its_lag() {
        let mirror = Status { role: ServerRole::Mirror, told_primary: false, ..primary() };
        let all = series(&mirror, Some(&figures()));
        assert_eq!(value(&all, "member_lag_bytes"), Some(Value::Int(16)));
        assert_eq!(value(&all, "member_lag_seconds"), Some(Value::Float(1.5)));
        assert_eq!(value(&all, "member_writes_blocked"), Some(Value::Int(0)), "nobody asked it for writes");
    }

    #[test]
    fn a_server_that_does_not_answer_is_down_and_its_old_figures_are_left_out() {
        let down = Status { up: false, role: ServerRole::Stopped, position: None, ..primary() };
        let all = series(&down, Some(&figures()));
        assert_eq!(value(&all, "member_up"), Some(Value::Int(0)));
        assert!(find(&all, "member_connections").is_none());
        assert!(find(&all, "member_position_bytes").is_none());
        assert_eq!(value(&all, "member_writes_blocked"), Some(Value::Int(1)), "told primary, not serving");
    }

    #[test]
    fn writes_are_blocked_on_a_primary_short_of_replicas_and_only_when_told_primary() {
        let short = Stats { short_of_replicas: true, ..Stats::default() };
        assert_eq!(value(&series(&primary(), Some(&short)), "member_writes_blocked"), Some(Value::Int(1)));
        assert_eq!(value(&series(&primary(), None), "member_writes_blocked"), Some(Value::Int(0)));
        let fenced = Status { told_primary: false, ..primary() };
        assert_eq!(value(&series(&fenced, Some(&short)), "member_writes_blocked"), Some(Value::Int(0)));
    }

    #[test]
    fn archiving_reports_failing_and_the_last_success() {
        let archive = ArchiveReport {
            archived: Some(("000000010000000000000003".into(), 1_700_000_000_500)),
            failed: Some(("000000010000000000000004".into(), 1_700_000_001_000)),
            ..ArchiveReport::default()
        };
        let all = series(&Status { archive: Some(archive), ..primary() }, None);
        assert_eq!(value(&all, "member_archive_failing"), Some(Value::Int(1)));
        assert_eq!(
            value(&all, "member_archive_last_success_timestamp_seconds"),
            Some(Value::Float(1_700_000_000.5))
        );
        let none_yet = series(&Status { archive: Some(ArchiveReport::default()), ..primary() }, None);
        assert_eq!(value(&none_yet, "member_archive_failing"), Some(Value::Int(0)));
        assert!(find(&none_yet, "member_archive_last_success_timestamp_seconds").is_none());
    }

    #[test]
    fn redis_reports_commands_memory_clients_and_keys() {
        let stats = Stats {
            connections: Some(3),
            commands: Some(900),
            redis: Some(RedisStats { memory_bytes: 1 << 20, clients: 3, keys: 42 }),
            ..Stats::default()
        };
        let all = series(&primary(), Some(&stats));
        assert_eq!(value(&all, "member_commands"), Some(Value::Int(900)));
        assert!(find(&all, "member_commits").is_none());
        assert_eq!(value(&all, "member_redis_memory_bytes"), Some(Value::Int(1 << 20)));
        assert_eq!(value(&all, "member_redis_clients"), Some(Value::Int(3)));
        assert_eq!(value(&all, "member_redis_keys"), Some(Value::Int(42)));
    }

    #[test]
    fn the_text_names_every_series_hostwright_member_with_the_members_labels() {
        let metrics = Metrics::new(Identity {
            store: "shop-db".into(),
            member: "shop-db-1".into(),
            kind: DATABASE_MIRROR,
        });
        metrics.set_status(primary());
        metrics.set_stats(Some(figures()));
        let text = metrics.render().unwrap();
        let labels = r#"store="shop-db",member="shop-db-1",kind="DatabaseMirror""#;
        for line in [
            format!("hostwright_member_up{{{labels}}} 1"),
            format!("hostwright_member_role{{{labels},role=\"primary\"}} 1"),
            format!("hostwright_member_role{{{labels},role=\"stopped\"}} 0"),
            format!("hostwright_member_commits_total{{{labels}}} 120"),
            format!("hostwright_member_position_bytes{{{labels}}} 50331744"),
            "# TYPE hostwright_member_commits counter".to_string(),
            "# TYPE hostwright_member_up gauge".to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}

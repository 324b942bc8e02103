//! The contract between the operator and the agent in every member pod:
//! the keys both sides read and write, how an instruction is encoded on a
//! pod (with its fencing token, the epoch), how an agent's report is
//! encoded on its member Lease, and the timings the fencing argument rests
//! on. Both sides import this module and nothing of each other, so a change
//! of protocol is one reviewed diff here. It depends on nothing else in the
//! crate.
//!
//! The timing argument (why a stalled agent cannot leave a live primary
//! behind) is spelled out on [`timing`] and in `docs/data-safety.md`.

use std::collections::BTreeMap;
use std::fmt;

/// Milliseconds since the Unix epoch (wall clock; for humans only, never
/// compared across machines).
pub type Millis = u64;

/// The fencing token. The failover engine raises it whenever what it tells
/// the members changes; an agent never acts on an instruction older than
/// one it has already seen, and reports the epoch it acts on, so "after the
/// fence" is a comparison of epochs rather than of two machines' clocks.
pub type Epoch = u64;

/// Label and annotation keys shared by the operator and the agents.
pub mod keys {
    /// `app.kubernetes.io/name`: the kind a member belongs to.
    pub const NAME_LABEL: &str = "app.kubernetes.io/name";
    /// `app.kubernetes.io/instance`: maps kept volumes, Secrets and the
    /// agents' Leases (which may carry no owner) back to their object.
    pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
    /// The member a pod, volume or Lease belongs to.
    pub const MEMBER_LABEL: &str = "hostwright.io/member";
    /// The encoded [`super::Instruction`] on a member's pod.
    pub const INSTRUCTION_ANNOTATION: &str = "hostwright.io/instruction";
    /// On a member's pod: the key (file name) in the settings ConfigMap of
    /// the settings its server should run with. Changed on a running pod
    /// when only settings PostgreSQL reloads changed; the agent then loads
    /// them without a restart (see [`super::SettingsReport`]).
    pub const SETTINGS_ANNOTATION: &str = "hostwright.io/settings";
    /// On a member's pod: the encoded [`super::BackupOrder`], a base backup
    /// the agent is to take of its server. Removed once its report is in.
    pub const BACKUP_ANNOTATION: &str = "hostwright.io/backup";
    /// Pod labels an agent copies onto its Lease: the operator watches
    /// member Leases by these.
    pub const LEASE_LABELS: &[&str] = &[NAME_LABEL, INSTANCE_LABEL, MEMBER_LABEL];
    /// Environment variable carrying the uid of the agent's own pod (from
    /// the downward API): an agent acts only on the pod it was started for.
    pub const POD_UID_ENV: &str = "POD_UID";

    /// Files of the members' own Secret (`<name>-agent-credentials`),
    /// mounted into member pods only: no web pod references it.
    pub mod credentials {
        /// Password of the application's user (PostgreSQL: the owner role;
        /// Redis: the ACL user `app`), which the agent creates.
        pub const APP_PASSWORD: &str = "password";
        /// Password of the user the mirrors/replicas stream as.
        pub const REPLICATION_PASSWORD: &str = "replication-password";
        /// Password of the administrator (PostgreSQL `postgres`; Redis the
        /// agent's ACL user): reachable only inside the member's pod.
        pub const SUPERUSER_PASSWORD: &str = "superuser-password";
        /// PostgreSQL: the database and owner the first primary creates.
        pub const DATABASE: &str = "database";
        pub const USERNAME: &str = "username";
    }

    /// Files of a store's TLS Secret (`<name>-tls`, the `kubernetes.io/tls`
    /// type's keys), mounted into member pods.
    pub mod tls {
        pub const CERT: &str = "tls.crt";
        pub const KEY: &str = "tls.key";
        pub const CA: &str = "ca.crt";
    }

    /// Redis ACL users of a session store.
    pub mod redis_users {
        /// What the web tier connects as: data commands only.
        pub const APP: &str = "app";
        /// What replicas sync as: PSYNC, REPLCONF and PING only.
        pub const REPLICATION: &str = "replicator";
        /// What the agent administers its own server as (over a unix
        /// socket inside the pod).
        pub const AGENT: &str = "hostwright";
    }

    /// Annotations of a member Lease carrying the agent's [`super::Report`].
    pub mod report {
        pub const ROLE: &str = "hostwright.io/role";
        pub const POSITION: &str = "hostwright.io/position";
        pub const LAST_POSITION: &str = "hostwright.io/last-position";
        pub const ACTING_ON: &str = "hostwright.io/acting-on";
        pub const EPOCH: &str = "hostwright.io/epoch";
        pub const STREAMING_FROM: &str = "hostwright.io/streaming-from";
        pub const DATA: &str = "hostwright.io/data";
        pub const LINEAGE: &str = "hostwright.io/lineage";
        pub const REPORTED_AT: &str = "hostwright.io/reported-at";
        pub const ADDRESS: &str = "hostwright.io/address";
        /// The settings key the server runs with.
        pub const SETTINGS: &str = "hostwright.io/settings";
        /// `<key>: <why>`: settings the server refused (and does not keep).
        pub const SETTINGS_ERROR: &str = "hostwright.io/settings-error";
        /// `<segment> <unix ms>`: the last WAL file archived, and when.
        pub const ARCHIVED: &str = "hostwright.io/archived";
        /// `<segment> <unix ms>`: the last WAL file archiving failed on.
        pub const ARCHIVE_FAILED: &str = "hostwright.io/archive-failed";
        /// `<segment> <unix ms>`: the first WAL file of the last run let go
        /// unarchived (the archive's gap), and when.
        pub const ARCHIVE_GAP: &str = "hostwright.io/archive-gap";
        /// `true` once a segment was archived after that gap: the store
        /// answers again.
        pub const ARCHIVE_GAP_CLOSED: &str = "hostwright.io/archive-gap-closed";
        /// The encoded [`super::super::BackupReport`] of the last base
        /// backup asked of this member.
        pub const BACKUP: &str = "hostwright.io/backup";
    }
}

/// The timings both sides rely on. The fencing argument:
///
/// 1. An agent renews its Lease every [`RENEW_INTERVAL`](timing::RENEW_INTERVAL),
///    each attempt bounded by [`RENEW_TIMEOUT`](timing::RENEW_TIMEOUT). A
///    renewal *sent* at `t` (the agent's monotonic clock) that succeeds moves
///    the watchdog's deadline to `t + FENCE_AFTER`. The watchdog is a
///    separate process: when the deadline passes it kills the server's whole
///    process group, whatever the agent is doing (frozen, starved, cut off).
/// 2. The operator never reads the agent's clock. It notes, on its own
///    monotonic clock, when it first saw the Lease's current
///    resourceVersion; after [`LEASE`](timing::LEASE) without a newer one it
///    may revoke the Lease: a delete conditional on that resourceVersion.
///    Success proves no renewal committed after the one it saw, which was
///    sent before the operator saw it, so the server was killed at most
///    `FENCE_AFTER` after that and before the revocation. Only a revoked
///    Lease, or the agent's own report that it acts on the fence, lets the
///    engine promote anyone else.
/// 3. `LEASE - FENCE_AFTER` is the margin for the watchdog's poll interval,
///    signal delivery and the drift between two monotonic clocks (parts per
///    million). Wall-clock skew between machines does not enter: the only
///    cross-machine order is the API server's resourceVersion.
/// 4. `FENCE_AFTER > RENEW_INTERVAL + RENEW_TIMEOUT`, with a second to
///    spare, so one slow or failed renewal never fences a healthy primary;
///    two in a row (an API server unreachable for about three seconds) do.
pub mod timing {
    use std::time::Duration;

    /// How long the operator waits, on its own clock, without seeing a
    /// renewal before it may revoke a member's Lease.
    pub const LEASE: Duration = Duration::from_millis(6_000);
    /// How often an agent renews its Lease (and sooner when its report changes).
    pub const RENEW_INTERVAL: Duration = Duration::from_millis(1_000);
    /// Bound of one renewal (and of every other API call of the agent).
    pub const RENEW_TIMEOUT: Duration = Duration::from_millis(1_500);
    /// After the last successful renewal was sent, the watchdog kills the
    /// server this much later unless a newer renewal succeeded.
    pub const FENCE_AFTER: Duration = Duration::from_millis(4_500);
    /// How often the watchdog looks at its deadline.
    pub const WATCHDOG_POLL: Duration = Duration::from_millis(50);
    /// How often the agent observes its server and reads its instruction.
    pub const TICK: Duration = Duration::from_millis(300);

    const _: () = assert!(FENCE_AFTER.as_millis() + 1_000 < LEASE.as_millis());
    const _: () =
        assert!(RENEW_INTERVAL.as_millis() + RENEW_TIMEOUT.as_millis() + 1_000 < FENCE_AFTER.as_millis() + 1);
}

/// The agent's HTTP endpoint, which the kubelet probes. The operator builds
/// the probes from these; the agent serves them.
///
/// Liveness carries the fencing argument into a real kubelet for the case
/// the watchdog cannot cover: when the agent *and* its watchdog stop (a
/// frozen container, a starved node), the agent answers no probe, and the
/// kubelet kills the whole container, server included, within
/// `PERIOD_SECONDS * FAILURE_THRESHOLD + TIMEOUT_SECONDS +
/// LIVENESS_GRACE_SECONDS` (22 s). An agent
/// that answers but whose lease loop has not come round for
/// [`STALE_AFTER`](probes::STALE_AFTER) answers 503, with the same result.
/// Readiness says the server answers its agent, so a Service sends clients
/// only to a server that takes them.
pub mod probes {
    use std::time::Duration;

    use super::timing::{RENEW_INTERVAL, RENEW_TIMEOUT};

    /// The port the agent answers on (container port `agent`).
    pub const PORT: u16 = 8000;
    /// 200 while the agent makes progress.
    pub const LIVENESS_PATH: &str = "/healthz";
    /// 200 while the server answers.
    pub const READINESS_PATH: &str = "/readyz";
    /// The member's metrics in Prometheus text (what a PodMonitor scrapes).
    pub const METRICS_PATH: &str = "/metrics";
    /// The lease loop comes round every `RENEW_INTERVAL`, each time bounded by
    /// `RENEW_TIMEOUT`; this long without a round means it has stopped.
    pub const STALE_AFTER: Duration = Duration::from_millis(10_000);
    /// Liveness: every 5 s, each answer within 2 s, restart after 3 misses.
    pub const PERIOD_SECONDS: i32 = 5;
    pub const TIMEOUT_SECONDS: i32 = 2;
    pub const FAILURE_THRESHOLD: i32 = 3;
    /// A container killed for failed liveness gets this long, not the pod's
    /// grace period: its agent is stuck and cannot stop the server cleanly.
    pub const LIVENESS_GRACE_SECONDS: i64 = 5;
    /// Readiness is asked more often, so a server that starts (or a new
    /// primary) gets clients within 2 s, and two misses in a row take it out.
    pub const READINESS_PERIOD_SECONDS: i32 = 2;
    pub const READINESS_FAILURE_THRESHOLD: i32 = 2;

    const _: () =
        assert!(RENEW_INTERVAL.as_millis() + RENEW_TIMEOUT.as_millis() * 2 < STALE_AFTER.as_millis());
}

/// What the engine tells a member's agent to make its server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Desired {
    /// Accept writes.
    Primary,
    /// Stream from the instruction's upstream, read-only; with no upstream,
    /// run read-only and receive from nobody.
    Mirror,
    /// Accept no writes: a primary stops; anything else stays as it is.
    Fenced,
}

impl Desired {
    pub fn as_str(self) -> &'static str {
        match self {
            Desired::Primary => "primary",
            Desired::Mirror => "mirror",
            Desired::Fenced => "fenced",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "primary" => Some(Desired::Primary),
            "mirror" => Some(Desired::Mirror),
            "fenced" => Some(Desired::Fenced),
            _ => None,
        }
    }
}

/// What a member's server actually is, as its agent reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerRole {
    /// Running and accepting writes.
    Primary,
    /// Running read-only (streaming, or detached).
    Mirror,
    /// Not running, or not answering while not known to be a primary.
    Stopped,
}

impl ServerRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerRole::Primary => "primary",
            ServerRole::Mirror => "mirror",
            ServerRole::Stopped => "stopped",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "primary" => Some(ServerRole::Primary),
            "mirror" => Some(ServerRole::Mirror),
            "stopped" => Some(ServerRole::Stopped),
            _ => None,
        }
    }
}

/// What a member's volume holds, as the agent's marker beside the data says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataState {
    /// No data: a new member, or one whose data did not survive.
    Empty,
    /// Last written as a primary: its history may have diverged from the
    /// current primary's, so it is rewound before it follows anyone.
    Primary,
    /// A copy of some primary's history.
    Standby,
}

impl DataState {
    pub fn as_str(self) -> &'static str {
        match self {
            DataState::Empty => "empty",
            DataState::Primary => "primary",
            DataState::Standby => "standby",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "empty" => Some(DataState::Empty),
            "primary" => Some(DataState::Primary),
            "standby" => Some(DataState::Standby),
            _ => None,
        }
    }
}

/// What the engine tells one member, written on its pod as
/// [`keys::INSTRUCTION_ANNOTATION`], e.g. `mirror epoch=12 upstream=shop-db-2`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instruction {
    pub desired: Desired,
    /// The fencing token: agents ignore anything older than what they saw.
    pub epoch: Epoch,
    /// The member to stream from (mirrors). None: receive from nobody.
    pub upstream: Option<String>,
    /// A primary may create a new, empty data set. Only ever set when the
    /// engine knows no member holds data (a new store).
    pub initialize: bool,
    /// A primary need not wait for a mirror's acknowledgement
    /// (`durability: preferred` while no mirror is healthy).
    pub relaxed: bool,
}

/// Why an instruction annotation could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unreadable instruction {text:?}: {why}")]
pub struct InstructionError {
    pub text: String,
    pub why: &'static str,
}

impl Instruction {
    pub fn new(desired: Desired, epoch: Epoch) -> Self {
        Self { desired, epoch, upstream: None, initialize: false, relaxed: false }
    }

    pub fn upstream(mut self, upstream: Option<String>) -> Self {
        self.upstream = upstream;
        self
    }

    pub fn encode(&self) -> String {
        self.to_string()
    }

    pub fn parse(text: &str) -> Result<Self, InstructionError> {
        let bad = |why| InstructionError { text: text.to_string(), why };
        let mut words = text.split_whitespace();
        let desired = words.next().and_then(Desired::parse).ok_or_else(|| bad("no role"))?;
        let mut instruction = Instruction::new(desired, 0);
        let mut epoch = None;
        for word in words {
            match word.split_once('=') {
                Some(("epoch", n)) => epoch = Some(n.parse().map_err(|_| bad("epoch is not a number"))?),
                Some(("upstream", m)) if !m.is_empty() => instruction.upstream = Some(m.to_string()),
                None if word == "initialize" => instruction.initialize = true,
                None if word == "relaxed" => instruction.relaxed = true,
                _ => return Err(bad("unknown word")),
            }
        }
        instruction.epoch = epoch.ok_or_else(|| bad("no epoch"))?;
        Ok(instruction)
    }
}

impl fmt::Display for Instruction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} epoch={}", self.desired.as_str(), self.epoch)?;
        if let Some(upstream) = &self.upstream {
            write!(f, " upstream={upstream}")?;
        }
        if self.initialize {
            f.write_str(" initialize")?;
        }
        if self.relaxed {
            f.write_str(" relaxed")?;
        }
        Ok(())
    }
}

/// An agent's report, carried by its member Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// When the agent observed what it reports (its wall clock; for status
    /// only: the engine orders reports by [`Report::epoch`]).
    pub at: Millis,
    pub role: ServerRole,
    /// Replication position in bytes (LSN or offset) while the server
    /// answers: for a primary what it has written, for a mirror what a
    /// promotion would keep.
    pub position: Option<u64>,
    /// The highest position this member's data is known to have reached,
    /// kept while the server is down: a stopped server reports no
    /// position, yet must never look caught up.
    pub last_position: Option<u64>,
    /// The instruction acted on, and its epoch. A report made while acting
    /// on epoch `e` was observed after the instruction of epoch `e` existed.
    pub acting_on: Desired,
    pub epoch: Epoch,
    /// The member the server receives its stream from right now (a mirror
    /// whose link is up); None for a primary, a detached or waiting mirror.
    pub streaming_from: Option<String>,
    pub data: DataState,
    /// The epoch at which the history on this member's volume began (its
    /// primary's promotion); with the position it orders members' data.
    pub lineage: Option<Epoch>,
}

impl Report {
    /// The best known position of this member's data.
    pub fn known_position(&self) -> Option<u64> {
        self.position.max(self.last_position)
    }
}

/// The Lease annotations carrying `report` and the address other members
/// reach the server at.
pub fn encode_report(report: &Report, address: &str) -> BTreeMap<String, String> {
    use keys::report as k;
    let mut a = BTreeMap::from([
        (k::ROLE.to_string(), report.role.as_str().to_string()),
        (k::ACTING_ON.to_string(), report.acting_on.as_str().to_string()),
        (k::EPOCH.to_string(), report.epoch.to_string()),
        (k::DATA.to_string(), report.data.as_str().to_string()),
        (k::REPORTED_AT.to_string(), report.at.to_string()),
        (k::ADDRESS.to_string(), address.to_string()),
    ]);
    let mut optional = |key: &str, value: Option<String>| {
        if let Some(value) = value {
            a.insert(key.to_string(), value);
        }
    };
    optional(k::POSITION, report.position.map(|p| p.to_string()));
    optional(k::LAST_POSITION, report.last_position.map(|p| p.to_string()));
    optional(k::STREAMING_FROM, report.streaming_from.clone());
    optional(k::LINEAGE, report.lineage.map(|l| l.to_string()));
    a
}

/// A report and address from Lease annotations; None when a required key
/// is missing or unreadable (a report that cannot be read reports nothing).
pub fn decode_report(annotations: &BTreeMap<String, String>) -> Option<(Report, String)> {
    use keys::report as k;
    let number = |key: &str| annotations.get(key).map(|v| v.parse::<u64>()).transpose().ok();
    let report = Report {
        at: annotations.get(k::REPORTED_AT)?.parse().ok()?,
        role: ServerRole::parse(annotations.get(k::ROLE)?)?,
        position: number(k::POSITION)?,
        last_position: number(k::LAST_POSITION)?,
        acting_on: Desired::parse(annotations.get(k::ACTING_ON)?)?,
        epoch: annotations.get(k::EPOCH)?.parse().ok()?,
        streaming_from: annotations.get(k::STREAMING_FROM).filter(|s| !s.is_empty()).cloned(),
        data: DataState::parse(annotations.get(k::DATA)?)?,
        lineage: number(k::LINEAGE)?,
    };
    Some((report, annotations.get(k::ADDRESS).cloned().unwrap_or_default()))
}

/// How a member's WAL archiving goes (PostgreSQL's `pg_stat_archiver`),
/// reported on its Lease beside the [`Report`] when it archives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveReport {
    /// The last WAL file archived, and when (unix ms).
    pub archived: Option<(String, Millis)>,
    /// The last WAL file archiving failed on, and when.
    pub failed: Option<(String, Millis)>,
    /// The first WAL file of the last run let go unarchived, and when.
    pub gap: Option<(String, Millis)>,
    /// A segment was archived after that gap.
    pub gap_closed: bool,
}

impl ArchiveReport {
    /// Archiving fails now: the last attempt failed.
    pub fn failing(&self) -> bool {
        match (&self.failed, &self.archived) {
            (Some((_, failed)), Some((_, archived))) => failed > archived,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// The Lease annotations carrying `archive`.
pub fn encode_archive(archive: &ArchiveReport) -> BTreeMap<String, String> {
    use keys::report as k;
    let entry = |key: &str, value: &Option<(String, Millis)>| {
        value.as_ref().map(|(wal, at)| (key.to_string(), format!("{wal} {at}")))
    };
    [
        entry(k::ARCHIVED, &archive.archived),
        entry(k::ARCHIVE_FAILED, &archive.failed),
        entry(k::ARCHIVE_GAP, &archive.gap),
        archive.gap_closed.then(|| (k::ARCHIVE_GAP_CLOSED.to_string(), "true".to_string())),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// [`encode_archive`] read back; what is missing or unreadable is None.
pub fn decode_archive(annotations: &BTreeMap<String, String>) -> ArchiveReport {
    use keys::report as k;
    let entry = |key: &str| {
        let (wal, at) = annotations.get(key)?.split_once(' ')?;
        Some((wal.to_string(), at.parse().ok()?))
    };
    ArchiveReport {
        archived: entry(k::ARCHIVED),
        failed: entry(k::ARCHIVE_FAILED),
        gap: entry(k::ARCHIVE_GAP),
        gap_closed: annotations.get(k::ARCHIVE_GAP_CLOSED).is_some_and(|v| v == "true"),
    }
}

/// What settings a member's server runs with, reported on its Lease beside
/// the [`Report`]: the settings key in effect, and the last key it refused
/// with the reason (a refused text is not kept, so a restart never picks it up).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SettingsReport {
    pub applied: Option<String>,
    pub refused: Option<(String, String)>,
}

/// The longest reason for refused settings carried on a Lease.
const MAX_SETTINGS_ERROR: usize = 512;

/// The Lease annotations carrying `settings`.
pub fn encode_settings(settings: &SettingsReport) -> BTreeMap<String, String> {
    use keys::report as k;
    let mut out = BTreeMap::new();
    if let Some(key) = &settings.applied {
        out.insert(k::SETTINGS.to_string(), key.clone());
    }
    if let Some((key, why)) = &settings.refused {
        let why: String = why.chars().take(MAX_SETTINGS_ERROR).collect();
        out.insert(k::SETTINGS_ERROR.to_string(), format!("{key}: {why}"));
    }
    out
}

/// [`encode_settings`] read back; what is missing or unreadable is None.
pub fn decode_settings(annotations: &BTreeMap<String, String>) -> SettingsReport {
    use keys::report as k;
    SettingsReport {
        applied: annotations.get(k::SETTINGS).filter(|s| !s.is_empty()).cloned(),
        refused: annotations
            .get(k::SETTINGS_ERROR)
            .and_then(|e| e.split_once(": "))
            .map(|(key, why)| (key.to_string(), why.to_string())),
    }
}

/// A base backup the operator asks one member's agent to take (a healthy
/// mirror's, so the primary carries no extra load), with the retention to
/// apply to the store once it is complete.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupOrder {
    /// Its name under `<prefix>/base/`: the UTC time it was asked for,
    /// `YYYYMMDDTHHMMSSZ`, so names sort by age.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_backups: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_days: Option<u32>,
}

/// How a member's agent fares with the last [`BackupOrder`] it was given.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupReport {
    pub id: String,
    #[serde(flatten)]
    pub state: BackupState,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum BackupState {
    Running,
    /// Complete in the store, retention applied.
    Done {
        /// When it finished: a recovery can reach any time from here on.
        finished: Millis,
        bytes: u64,
        /// Base backups in the store after retention, and when the oldest
        /// of them finished (the first recoverability point).
        kept: u32,
        oldest_finished: Millis,
    },
    Failed {
        why: String,
    },
}

/// The longest failure reason carried on a Lease.
const MAX_BACKUP_ERROR: usize = 512;

/// A [`BackupOrder`] as the pod annotation carries it.
pub fn encode_backup_order(order: &BackupOrder) -> String {
    serde_json::to_string(order).unwrap_or_default()
}

/// [`encode_backup_order`] read back; None when unreadable.
pub fn decode_backup_order(text: &str) -> Option<BackupOrder> {
    serde_json::from_str(text).ok().filter(|o: &BackupOrder| !o.id.is_empty())
}

/// The Lease annotation carrying `report` (a failure reason is cut short).
pub fn encode_backup(report: &BackupReport) -> BTreeMap<String, String> {
    let mut report = report.clone();
    if let BackupState::Failed { why } = &mut report.state
        && why.len() > MAX_BACKUP_ERROR
    {
        let mut end = MAX_BACKUP_ERROR;
        while !why.is_char_boundary(end) {
            end -= 1;
        }
        why.truncate(end);
    }
    let text = serde_json::to_string(&report).unwrap_or_default();
    BTreeMap::from([(keys::report::BACKUP.to_string(), text)])
}

/// [`encode_backup`] read back.
pub fn decode_backup(annotations: &BTreeMap<String, String>) -> Option<BackupReport> {
    serde_json::from_str(annotations.get(keys::report::BACKUP)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_reports_survive_the_round_trip() {
        let report = SettingsReport {
            applied: Some("postgresql-00aa.conf".into()),
            refused: Some(("postgresql-00bb.conf".into(), "work_mem: invalid value: \"banana\"".into())),
        };
        assert_eq!(decode_settings(&encode_settings(&report)), report);
        assert_eq!(decode_settings(&BTreeMap::new()), SettingsReport::default());
        let long = SettingsReport { applied: None, refused: Some(("k".into(), "x".repeat(5000))) };
        assert!(encode_settings(&long)[keys::report::SETTINGS_ERROR].len() < 600);
    }

    #[test]
    fn instructions_survive_the_round_trip_and_read_well() {
        let cases = [
            Instruction::new(Desired::Mirror, 12).upstream(Some("shop-db-2".into())),
            Instruction { initialize: true, ..Instruction::new(Desired::Primary, 1) },
            Instruction { relaxed: true, ..Instruction::new(Desired::Primary, 7) },
            Instruction::new(Desired::Fenced, 9),
            Instruction::new(Desired::Mirror, 3),
        ];
        for instruction in cases {
            assert_eq!(Instruction::parse(&instruction.encode()), Ok(instruction.clone()));
        }
        assert_eq!(
            Instruction::new(Desired::Mirror, 12).upstream(Some("db-2".into())).encode(),
            "mirror epoch=12 upstream=db-2"
        );
    }

    #[test]
    fn an_instruction_without_an_epoch_or_with_garbage_is_refused() {
        for text in
            ["", "primary", "leader epoch=1", "primary epoch=x", "primary epoch=1 force", "mirror epoch=-1"]
        {
            assert!(Instruction::parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn a_report_survives_the_round_trip_through_the_lease() {
        let report = Report {
            at: 1_000,
            role: ServerRole::Mirror,
            position: Some(0x0300_0060),
            last_position: Some(0x0300_0060),
            acting_on: Desired::Mirror,
            epoch: 4,
            streaming_from: Some("db-1".into()),
            data: DataState::Standby,
            lineage: Some(2),
        };
        let annotations = encode_report(&report, "10.244.1.5:5432");
        assert_eq!(decode_report(&annotations), Some((report.clone(), "10.244.1.5:5432".to_string())));
        let stopped = Report {
            role: ServerRole::Stopped,
            position: None,
            streaming_from: None,
            lineage: None,
            ..report
        };
        assert_eq!(decode_report(&encode_report(&stopped, "a")).map(|(r, _)| r), Some(stopped));
    }

    #[test]
    fn garbage_annotations_report_nothing() {
        let mut a = BTreeMap::from([(keys::report::ROLE.to_string(), "leader".to_string())]);
        assert_eq!(decode_report(&a), None);
        let good = Report {
            at: 1,
            role: ServerRole::Primary,
            position: None,
            last_position: None,
            acting_on: Desired::Primary,
            epoch: 1,
            streaming_from: None,
            data: DataState::Primary,
            lineage: None,
        };
        a = encode_report(&good, "a");
        a.insert(keys::report::POSITION.into(), "lots".into());
        assert_eq!(decode_report(&a), None, "an unreadable position is not read as none");
    }

    #[test]
    fn the_known_position_survives_a_stopped_server() {
        let r = Report {
            at: 1,
            role: ServerRole::Stopped,
            position: None,
            last_position: Some(500),
            acting_on: Desired::Primary,
            epoch: 1,
            streaming_from: None,
            data: DataState::Primary,
            lineage: Some(1),
        };
        assert_eq!(r.known_position(), Some(500));
    }

    #[test]
    fn backup_orders_and_reports_survive_their_annotations() {
        let order = BackupOrder { id: "20261130T062100Z".into(), keep_backups: Some(3), keep_days: None };
        assert_eq!(decode_backup_order(&encode_backup_order(&order)), Some(order));
        assert_eq!(decode_backup_order("{\"id\":\"\"}"), None);
        assert_eq!(decode_backup_order("banana"), None);
        let done = BackupReport {
            id: "20261130T062100Z".into(),
            state: BackupState::Done { finished: 5, bytes: 7, kept: 2, oldest_finished: 3 },
        };
        assert_eq!(decode_backup(&encode_backup(&done)), Some(done));
        let failed = BackupReport { id: "x".into(), state: BackupState::Failed { why: "é".repeat(400) } };
        let Some(BackupReport { state: BackupState::Failed { why }, .. }) =
            decode_backup(&encode_backup(&failed))
        else {
            panic!("a failure reads back");
        };
        assert!(why.len() <= MAX_BACKUP_ERROR && why.starts_with('é'));
    }
}

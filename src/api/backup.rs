//! Backups of a DatabaseMirror: the S3-compatible object store its WAL
//! goes to. Mirrors protect against a failed server; only a backup
//! protects against a `DELETE` without a `WHERE`.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Keys of the Secret [`ObjectStore::credentials`] names.
pub mod credential_keys {
    pub const ACCESS_KEY_ID: &str = "access-key-id";
    pub const SECRET_ACCESS_KEY: &str = "secret-access-key";
}

/// Where backups go: one prefix of one bucket of an S3-compatible store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStore {
    /// URL of the S3 endpoint, e.g. `https://s3.eu-west-1.amazonaws.com` or
    /// `http://minio.backups.svc:9000`. Requests are path-style. `http://`
    /// sends the WAL unencrypted: only for a store on the cluster's own
    /// network.
    #[schemars(length(min = 8, max = 2048), regex(pattern = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"))]
    pub endpoint: String,
    /// Bucket name (S3 rules: 3–63 lower-case letters, digits, `.` and `-`).
    #[schemars(length(min = 3, max = 63), regex(pattern = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"))]
    pub bucket: String,
    /// Key prefix of this database's WAL and backups; `<namespace>/<name>`
    /// when unset. Two databases must never share one: the second would
    /// find the first's WAL in its way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 512),
        regex(pattern = r"^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*$")
    )]
    pub path: Option<String>,
    /// Region the requests are signed for.
    #[serde(default = "default_region")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[a-z0-9-]+$"))]
    pub region: String,
    /// Secret in this namespace with `access-key-id` and `secret-access-key`.
    pub credentials: SecretName,
    /// Secret in this namespace whose `ca.crt` verifies an `https` endpoint
    /// signed by a private CA (the system's roots otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<SecretName>,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// A Secret in the object's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretName {
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub secret_name: String,
}

/// Continuous WAL archiving, and base backups on a schedule or on demand
/// (annotation `hostwright.io/backup-request`), with their retention.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// The object store every member archives each WAL segment to, and base
    /// backups go to.
    pub object_store: ObjectStore,
    /// When to take a base backup: cron syntax, five fields (minute hour
    /// day-of-month month day-of-week), in UTC, e.g. `0 3 * * *`. None: on
    /// demand only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 128), regex(pattern = r"^\S+( \S+){4}$"))]
    pub schedule: Option<String>,
    /// Which base backups to keep (and the WAL they need); every backup
    /// when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// The most WAL a member keeps for an object store that does not take
    /// it (half the volume when unset). Past it, segments are let go
    /// unarchived: the primary keeps serving, the archive has a gap no
    /// recovery can pass, the store turns `Degraded` (reason `ArchiveGap`)
    /// and a base backup is taken as soon as the store answers again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_wal: Option<Quantity>,
}

/// Base backups to keep: a backup goes when neither rule keeps it. The
/// newest is always kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.backups) || has(self.days)").message("retention needs backups, days or both"))]
pub struct Retention {
    /// Keep the newest N backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub backups: Option<i32>,
    /// Keep the backups of the last D days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3650))]
    pub days: Option<i32>,
}

/// Where a new DatabaseMirror's first data comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapSpec {
    /// Restore a base backup and replay archived WAL, instead of starting
    /// empty.
    pub recovery: RecoverySpec,
}

/// A recovery from another database's backups: the newest base backup
/// that finished before the target, then its archived WAL up to the target
/// (the end of the archive when no target is given). The recovered server
/// is promoted on a new timeline and becomes this DatabaseMirror's primary;
/// its mirrors copy it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.source.path)").message("recovery.source.path must name the prefix the backups are under").field_path(".source.path"))]
pub struct RecoverySpec {
    /// The object store and prefix the backups were written to (the
    /// source DatabaseMirror's `backup.objectStore`, with its `path`,
    /// which defaults to `<namespace>/<name>` there).
    pub source: ObjectStore,
    /// Recover up to this time (RFC 3339, to the second: transactions
    /// committed by then are kept, later ones are not); the last archived
    /// transaction when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_time: Option<Time>,
}

/// How far the archive is behind, and whether archiving works.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// The last WAL segment the primary archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_wal: Option<String>,
    /// When it was archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_time: Option<Time>,
    /// Seconds since the last segment was archived, while WAL written
    /// since is not archived yet (0 when the archive has it all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_lag_seconds: Option<i64>,
    /// Bytes of WAL the primary wrote past the last archived segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_lag_bytes: Option<i64>,
    /// While archiving fails: the segment it failed on last, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// The newest base backup that completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<BackupRecord>,
    /// The base backup under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_backup: Option<RunningBackup>,
    /// Why the last base backup failed (cleared by the next success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_failure: Option<String>,
    /// The earliest time a recovery can reach: the end of the oldest base
    /// backup kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_recoverability_point: Option<Time>,
    /// The latest: the last archived segment's time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_recoverability_point: Option<Time>,
    /// The last scheduled time a backup was started for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// The last `hostwright.io/backup-request` annotation value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request: Option<String>,
    /// WAL let go unarchived since the last base backup (the store was
    /// unreachable past `maxPendingWal`): no recovery passes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_gap: Option<String>,
}

/// A base backup that completed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRecord {
    /// Its name under `<path>/base/`.
    pub id: String,
    /// The member it was taken from.
    pub member: String,
    /// When it finished: a recovery can reach any time from here on.
    pub finished: Time,
    /// Bytes uploaded.
    pub bytes: i64,
    /// Base backups kept in the store after retention.
    pub kept: i32,
}

/// A base backup asked of a member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunningBackup {
    pub id: String,
    pub member: String,
    pub started: Time,
}

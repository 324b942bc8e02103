//! `kubectl hostwright status <site>`: a site's whole tree in one view. The
//! WebCluster and the two stores it names, each store's members with their
//! roles and lag, the last failover, base backups and archiving, and every
//! condition. It reads the status the operator wrote and changes nothing.
//! Colours only where stdout is a terminal and `NO_COLOR` is unset.

use std::fmt::Write as _;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::{Client, ResourceExt};

use crate::api::backup::BackupStatus;
use crate::api::common::{Condition, MemberRole, ReplicationStatus, condition_type};
use crate::api::{DatabaseMirror, SessionStore, WebCluster};
use crate::controllers::members::{Replicated, StoreStatus};

/// Why the tree could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("no WebCluster {name:?} in namespace {namespace:?}")]
    NoSite { namespace: String, name: String },
    #[error("reading {what} in namespace {namespace:?}: {source}")]
    Read {
        what: String,
        namespace: String,
        #[source]
        source: kube::Error,
    },
}

/// A store the web tier names: not named, named but absent, or found.
#[derive(Clone, Debug)]
pub enum Store<K> {
    NotNamed,
    Missing(String),
    Found(Box<K>),
}

/// What the view is drawn from.
#[derive(Clone, Debug)]
pub struct SiteTree {
    pub namespace: String,
    pub web: WebCluster,
    pub sessions: Store<SessionStore>,
    pub database: Store<DatabaseMirror>,
}

/// Read the site's WebCluster `name` and the stores it names.
pub async fn fetch(client: &Client, namespace: &str, name: &str) -> Result<SiteTree, StatusError> {
    let read = |what: String| {
        let namespace = namespace.to_string();
        move |source: kube::Error| StatusError::Read { what, namespace, source }
    };
    let web = Api::<WebCluster>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(read(format!("WebCluster {name}")))?
        .ok_or_else(|| StatusError::NoSite { namespace: namespace.into(), name: name.into() })?;
    let sessions_name = web.spec.session_store_ref.as_ref().map(|r| r.name.clone());
    let database_name = web.spec.database_ref.as_ref().map(|r| r.name.clone());
    Ok(SiteTree {
        namespace: namespace.into(),
        sessions: store(client, namespace, sessions_name).await.map_err(read("its SessionStore".into()))?,
        database: store(client, namespace, database_name).await.map_err(read("its DatabaseMirror".into()))?,
        web,
    })
}

async fn store<K: Replicated>(
    client: &Client,
    namespace: &str,
    name: Option<String>,
) -> kube::Result<Store<K>> {
    let Some(name) = name else { return Ok(Store::NotNamed) };
    Ok(match Api::<K>::namespaced(client.clone(), namespace).get_opt(&name).await? {
        Some(found) => Store::Found(Box::new(found)),
        None => Store::Missing(name),
    })
}

/// How text is coloured: not at all, or with ANSI escapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paint {
    Plain,
    Ansi,
}

impl Paint {
    /// Colours where a person reads a terminal that did not opt out.
    pub fn for_stdout() -> Self {
        use std::io::IsTerminal;
        if std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
            Paint::Ansi
        } else {
            Paint::Plain
        }
    }

    fn paint(self, text: &str, health: Health) -> String {
        let code = match health {
            Health::Good => "32",
            Health::Warn => "33",
            Health::Bad => "31",
            Health::Plain => return text.to_string(),
        };
        match self {
            Paint::Plain => text.to_string(),
            Paint::Ansi => format!("\x1b[{code}m{text}\x1b[0m"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    Good,
    Warn,
    Bad,
    Plain,
}

/// The whole view, as printed.
pub fn render(tree: &SiteTree, paint: Paint) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Site {} (namespace {})", tree.web.name_any(), tree.namespace);
    web_section(&mut out, &tree.web, paint);
    store_section(&mut out, "Sessions", "SessionStore", &tree.sessions, None, paint);
    let backup = match &tree.database {
        Store::Found(db) => db.status.as_ref().and_then(|s| s.backup()),
        _ => None,
    };
    store_section(&mut out, "Database", "DatabaseMirror", &tree.database, backup, paint);
    out
}

fn web_section(out: &mut String, web: &WebCluster, paint: Paint) {
    let status = web.status.clone().unwrap_or_default();
    let phase = status.phase.map(|p| format!("{p:?}")).unwrap_or_else(|| "Unknown".into());
    let health = if status.ready_replicas >= web.spec.replicas { Health::Good } else { Health::Warn };
    let _ = writeln!(
        out,
        "\nWeb tier    WebCluster {}  {}  {}/{} ready, {} up to date  image {}",
        web.name_any(),
        paint.paint(&phase, phase_health(&phase)),
        paint.paint(&status.ready_replicas.to_string(), health),
        web.spec.replicas,
        status.updated_replicas,
        status.image.as_deref().unwrap_or(&web.spec.image)
    );
    conditions(out, &status.conditions, paint);
}

fn store_section<K: Replicated>(
    out: &mut String,
    title: &str,
    kind: &str,
    store: &Store<K>,
    backup: Option<&BackupStatus>,
    paint: Paint,
) {
    let found = match store {
        Store::NotNamed => {
            let _ = writeln!(out, "\n{title:<11} none named");
            return;
        }
        Store::Missing(name) => {
            let _ = writeln!(out, "\n{title:<11} {kind} {name}  {}", paint.paint("not found", Health::Bad));
            return;
        }
        Store::Found(found) => found,
    };
    let replication = found.current_status().map(|s| s.replication().clone()).unwrap_or_default();
    let phase = replication.phase.map(|p| format!("{p:?}")).unwrap_or_else(|| "Unknown".into());
    let _ = writeln!(
        out,
        "\n{title:<11} {kind} {}  {}  primary {}",
        found.name_any(),
        paint.paint(&phase, phase_health(&phase)),
        replication.current_primary.as_deref().unwrap_or("none")
    );
    members(out, &replication, paint);
    last_failover(out, &replication);
    if let Some(backup) = backup {
        backups(out, backup, paint);
    }
    conditions(out, &replication.conditions, paint);
}

fn members(out: &mut String, replication: &ReplicationStatus, paint: Paint) {
    let _ = writeln!(out, "  {:<28} {:<8} {:<8} LAG", "MEMBER", "ROLE", "HEALTHY");
    for member in &replication.members {
        let role = format!("{:?}", member.role).to_lowercase();
        let role_health = match member.role {
            MemberRole::Primary | MemberRole::Mirror => Health::Plain,
            MemberRole::Fenced => Health::Bad,
            MemberRole::Pending => Health::Warn,
        };
        let (healthy, health) = if member.healthy { ("yes", Health::Good) } else { ("no", Health::Bad) };
        let lag = match (member.role, member.lag_bytes) {
            (MemberRole::Primary, _) => "-".to_string(),
            (_, Some(bytes)) => bytes_text(bytes),
            (_, None) => "unknown".to_string(),
        };
        let _ = writeln!(
            out,
            "  {:<28} {} {} {lag}",
            member.name,
            paint.paint(&format!("{role:<8}"), role_health),
            paint.paint(&format!("{healthy:<8}"), health)
        );
    }
}

fn last_failover(out: &mut String, replication: &ReplicationStatus) {
    let failover = &replication.failover;
    match &failover.last_failover_time {
        None => {
            let _ = writeln!(out, "  failovers: none");
        }
        Some(at) => {
            let _ = writeln!(
                out,
                "  failovers: {}, the last at {} (took {}, {} behind)",
                failover.failover_count,
                time_text(at),
                failover.last_failover_duration.as_deref().map(duration_text).unwrap_or_else(|| "?".into()),
                failover.last_failover_lag_bytes.map(bytes_text).unwrap_or_else(|| "?".into())
            );
        }
    }
}

fn backups(out: &mut String, backup: &BackupStatus, paint: Paint) {
    let last = match &backup.last_backup {
        Some(b) => format!("{} from {} at {}", b.id, b.member, time_text(&b.finished)),
        None => "none yet".into(),
    };
    let _ = writeln!(out, "  base backup: {last}");
    if let Some(why) = &backup.last_backup_failure {
        let _ = writeln!(out, "  base backup failed: {}", paint.paint(why, Health::Bad));
    }
    let archived = backup.last_archived_wal.as_deref().unwrap_or("nothing yet");
    let lag = backup.archive_lag_seconds.map(|s| format!(", {s} s behind")).unwrap_or_default();
    let _ = writeln!(out, "  archive: {archived}{lag}");
    if let Some(failure) = &backup.last_failure {
        let _ = writeln!(out, "  archiving fails: {}", paint.paint(failure, Health::Bad));
    }
}

fn conditions(out: &mut String, conditions: &[Condition], paint: Paint) {
    for c in conditions {
        let health = condition_health(&c.type_, &c.status);
        let state = paint.paint(&format!("{}={}", c.type_, c.status), health);
        let why =
            if c.message.is_empty() { c.reason.clone() } else { format!("{}: {}", c.reason, c.message) };
        let _ = writeln!(out, "  {state}  {why}");
    }
}

/// Ready is good when True; Progressing is news either way; the others
/// (Degraded, DrainBlocked, …) are bad when True.
fn condition_health(kind: &str, status: &str) -> Health {
    match (kind, status) {
        (condition_type::READY, "True") => Health::Good,
        (condition_type::READY, _) => Health::Bad,
        (condition_type::PROGRESSING, "True") => Health::Warn,
        (condition_type::PROGRESSING, _) => Health::Plain,
        (_, "True") => Health::Bad,
        (_, "False") => Health::Good,
        _ => Health::Warn,
    }
}

fn phase_health(phase: &str) -> Health {
    match phase {
        "Ready" => Health::Good,
        "Failed" | "Unknown" => Health::Bad,
        _ => Health::Warn,
    }
}

fn bytes_text(bytes: i64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// The status writes a failover's duration in seconds, bare.
fn duration_text(seconds: &str) -> String {
    if seconds.parse::<f64>().is_ok() { format!("{seconds} s") } else { seconds.to_string() }
}

fn time_text(time: &Time) -> String {
    time.0.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tree() -> SiteTree {
        let web: WebCluster = serde_json::from_value(json!({
            "apiVersion": "hostwright.io/v1alpha1", "kind": "WebCluster",
            "metadata": {"name": "shop", "namespace": "hosting"},
            "spec": {"image": "site:2", "replicas": 3, "sessionStoreRef": {"name": "shop-sessions"},
                     "databaseRef": {"name": "shop-db"}},
            "status": {"replicas": 3, "readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2,
                       "image": "site:2", "phase": "Degraded",
                       "conditions": [{"type": "Ready", "status": "False", "reason": "ServersMissing",
                                       "message": "2 of 3 ready", "lastTransitionTime": "2026-11-30T10:00:00Z"}]}
        }))
        .unwrap();
        let db: DatabaseMirror = serde_json::from_value(json!({
            "apiVersion": "hostwright.io/v1alpha1", "kind": "DatabaseMirror",
            "metadata": {"name": "shop-db", "namespace": "hosting"},
            "spec": {"instance": {"storage": {"size": "1Gi"}}, "mirrors": 1},
            "status": {"phase": "Ready", "currentPrimary": "shop-db-2",
                       "members": [{"name": "shop-db-1", "role": "Mirror", "healthy": true, "lagBytes": 2048},
                                   {"name": "shop-db-2", "role": "Primary", "healthy": true}],
                       "failover": {"lastFailoverTime": "2026-11-30T09:00:00Z", "lastFailoverDuration": "2.1",
                                    "lastFailoverLagBytes": 0, "failoverCount": 1},
                       "backup": {"lastArchivedWal": "000000020000000000000005", "archiveLagSeconds": 3,
                                  "lastBackup": {"id": "20261130T080000Z", "member": "shop-db-1",
                                                 "finished": "2026-11-30T08:01:00Z", "bytes": 1024, "kept": 1}}}
        }))
        .unwrap();
        SiteTree {
            namespace: "hosting".into(),
            web,
            sessions: Store::Missing("shop-sessions".into()),
            database: Store::Found(Box::new(db)),
        }
    }

    #[test]
    fn the_view_shows_every_part_of_the_site() {
        let view = render(&tree(), Paint::Plain);
        for expected in [
            "Site shop (namespace hosting)",
            "WebCluster shop  Degraded  2/3 ready, 3 up to date  image site:2",
            "Ready=False  ServersMissing: 2 of 3 ready",
            "SessionStore shop-sessions  not found",
            "DatabaseMirror shop-db  Ready  primary shop-db-2",
            "shop-db-1                    mirror   yes      2.0 KiB",
            "shop-db-2                    primary  yes      -",
            "failovers: 1, the last at 2026-11-30 09:00:00 UTC (took 2.1 s, 0 B behind)",
            "base backup: 20261130T080000Z from shop-db-1 at 2026-11-30 08:01:00 UTC",
            "archive: 000000020000000000000005, 3 s behind",
        ] {
            assert!(view.contains(expected), "missing {expected:?} in:\n{view}");
        }
        assert!(!view.contains('\x1b'), "plain text has no escapes");
    }

    #[test]
    fn colours_mark_what_is_wrong() {
        let view = render(&tree(), Paint::Ansi);
        assert!(view.contains("\x1b[31mReady=False\x1b[0m"), "{view}");
        assert!(view.contains("\x1b[31mnot found\x1b[0m"), "{view}");
        assert!(view.contains("\x1b[32mReady\x1b[0m"), "{view}");
    }

    #[test]
    fn conditions_are_judged_by_their_meaning() {
        assert_eq!(condition_health("Ready", "True"), Health::Good);
        assert_eq!(condition_health("Degraded", "True"), Health::Bad);
        assert_eq!(condition_health("Degraded", "False"), Health::Good);
        assert_eq!(condition_health("Progressing", "True"), Health::Warn);
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(bytes_text(0), "0 B");
        assert_eq!(bytes_text(16 * 1024 * 1024), "16.0 MiB");
    }
}

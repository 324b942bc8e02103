//! The first primary of a DatabaseMirror with `bootstrap.recovery`: instead
//! of `initdb`, the newest base backup that finished by the target is
//! restored from the source's object store, its archived WAL replayed up to
//! the target (`restore_command` is `hostwright agent wal-fetch` against
//! the source), and the server promoted on a new timeline. Then the roles
//! get this DatabaseMirror's passwords, and the server is stopped: from
//! there on it is a primary like one `initdb` made, and its mirrors copy it.
//!
//! A restore cut short (the pod deleted, the agent killed) leaves a marker
//! beside the data directory: the data counts as empty and the next
//! attempt starts over.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Bootstrap, Postgres, PostgresError, quote_ident, quote_sql_literal};
use crate::backup::base;
use crate::backup::store::StoreConfig;

/// Where the first primary's data comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// The agent binary PostgreSQL runs as `restore_command`.
    pub agent: PathBuf,
    /// The source store's configuration file (see [`StoreConfig`]).
    pub config_file: PathBuf,
    /// Recover up to this time; the end of the archive when None.
    pub target: Option<Target>,
}

/// A recovery target time, as PostgreSQL reads it and in unix ms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub text: String,
    pub ms: u64,
}

impl Target {
    /// From RFC 3339 (the DatabaseMirror's `targetTime`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let at: k8s_openapi::jiff::Timestamp =
            text.parse().map_err(|err| format!("recovery target time {text:?}: {err}"))?;
        let ms = u64::try_from(at.as_millisecond())
            .map_err(|_| format!("recovery target time {text:?}: before 1970"))?;
        // PostgreSQL reads `recovery_target_time` in its own format, not
        // RFC 3339's `T` and `Z`.
        Ok(Self { text: at.strftime("%Y-%m-%d %H:%M:%S%.f+00").to_string(), ms })
    }
}

/// `hostwright.conf` lines for archive recovery.
pub fn settings(restore_command: &str, target_time: Option<&str>) -> String {
    let mut conf = format!("restore_command = {}\n", quote_sql_literal(restore_command));
    if let Some(target) = target_time {
        conf.push_str(&format!("recovery_target_time = {}\n", quote_sql_literal(target)));
    }
    // Follow the archive across the source's failovers; promote at the end.
    conf.push_str("recovery_target_timeline = 'latest'\nrecovery_target_action = 'promote'\n");
    conf
}

/// The marker of a restore under way for `data_dir`.
fn marker(data_dir: &Path) -> PathBuf {
    data_dir.with_extension("restoring")
}

/// A restore into `data_dir` was cut short.
pub fn interrupted(data_dir: &Path) -> bool {
    marker(data_dir).exists()
}

impl Postgres {
    /// Restore, replay, promote, then take on `bootstrap`'s passwords.
    pub async fn recover(&self, recovery: &Recovery, bootstrap: &Bootstrap) -> Result<(), PostgresError> {
        let marker = marker(&self.data_dir);
        tokio::fs::write(&marker, b"")
            .await
            .map_err(|source| PostgresError::Write { path: marker.clone(), source })?;
        let result = self.recover_steps(recovery, bootstrap).await;
        if result.is_err() {
            let _ = tokio::fs::remove_dir_all(&self.data_dir).await;
        }
        let _ = tokio::fs::remove_file(&marker).await;
        result
    }

    async fn recover_steps(&self, recovery: &Recovery, bootstrap: &Bootstrap) -> Result<(), PostgresError> {
        let config = StoreConfig::load(&recovery.config_file)?;
        let store = config.open()?;
        let backups = base::list(store.as_ref(), &config.prefix).await?;
        let target_ms = recovery.target.as_ref().map(|t| t.ms);
        let Some(chosen) = base::for_recovery(&backups, target_ms) else {
            return Err(PostgresError::Recovery(format!(
                "no base backup under {}/{} finished by {}",
                config.bucket,
                config.prefix,
                recovery.target.as_ref().map_or("now", |t| t.text.as_str())
            )));
        };
        tracing::info!(backup = %chosen.id, target = ?recovery.target, "restoring a base backup");
        self.empty_data_dir().await?;
        base::download(store.as_ref(), &config.prefix, &chosen.id, &self.data_dir, self.run_as).await?;
        let restore_command = crate::agent::archive::restore_command(&recovery.agent, &recovery.config_file);
        let target_time = recovery.target.as_ref().map(|t| t.text.clone());
        let role = super::StartAs::Recovering { restore_command, target_time };
        let mut server = self.start(&role).await?;
        let promoted = self.until_promoted(&mut server).await;
        let adopted = match promoted {
            Ok(()) => self.adopt(bootstrap).await,
            Err(err) => Err(err),
        };
        let stopped = self.stop(&mut server).await;
        adopted?;
        stopped.map(drop)
    }

    /// A fresh data directory, the server's own (0700).
    async fn empty_data_dir(&self) -> Result<(), PostgresError> {
        let dir = &self.data_dir;
        let error = |source| PostgresError::Write { path: dir.clone(), source };
        if dir.exists() {
            tokio::fs::remove_dir_all(dir).await.map_err(error)?;
        }
        tokio::fs::create_dir_all(dir).await.map_err(error)?;
        use std::os::unix::fs::PermissionsExt;
        tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).await.map_err(error)?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(error)?;
        }
        Ok(())
    }

    /// Wait while the server replays; it promotes itself at the target.
    async fn until_promoted(&self, server: &mut tokio::process::Child) -> Result<(), PostgresError> {
        loop {
            if let Ok(Some(status)) = server.try_wait() {
                // E.g. "recovery ended before configured recovery target
                // was reached": the server's log says which.
                return Err(PostgresError::Exited { status });
            }
            if let Ok(client) = self.connect().await
                && let Ok(row) = client.query_one("SELECT pg_is_in_recovery()", &[]).await
                && !row.get::<_, bool>(0)
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The restored roles take this DatabaseMirror's passwords (a backup
    /// carries the source's), and those it lacks are made.
    async fn adopt(&self, bootstrap: &Bootstrap) -> Result<(), PostgresError> {
        let client = self.connect().await?;
        client.simple_query("SET synchronous_commit = local").await?;
        let exists = client
            .query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&bootstrap.database])
            .await?
            .get::<_, i64>(0)
            > 0;
        if !exists {
            return Err(PostgresError::Recovery(format!(
                "the backup has no database {:?}: spec.database must name the source's",
                bootstrap.database
            )));
        }
        let roles = [
            ("postgres", &bootstrap.superuser_password, "SUPERUSER LOGIN"),
            ("replication", &bootstrap.replication_password, "REPLICATION LOGIN"),
            (bootstrap.owner.as_str(), &bootstrap.owner_password, "LOGIN"),
        ];
        for (role, password, options) in roles {
            let found =
                client.query_one("SELECT count(*) FROM pg_roles WHERE rolname = $1", &[&role]).await?;
            let verb = if found.get::<_, i64>(0) > 0 { "ALTER" } else { "CREATE" };
            let statement = format!(
                "{verb} ROLE {} WITH {options} PASSWORD {}",
                quote_ident(role),
                quote_sql_literal(password)
            );
            client.simple_query(&statement).await?;
        }
        client.simple_query("CHECKPOINT").await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_follows_the_latest_timeline_to_the_target_and_promotes() {
        let conf = settings(
            "'/c/hostwright' agent wal-fetch --config '/r/recovery.json' %f %p",
            Some("2026-11-30 06:00:00+00"),
        );
        assert!(conf.starts_with("restore_command = '''/c/hostwright'' agent wal-fetch"), "{conf}");
        assert!(conf.contains("recovery_target_time = '2026-11-30 06:00:00+00'\n"), "{conf}");
        assert!(conf.contains("recovery_target_timeline = 'latest'\n"));
        assert!(conf.contains("recovery_target_action = 'promote'\n"));
        assert!(!settings("x", None).contains("recovery_target_time ="));
        let target = Target::parse("2026-11-30T06:00:00.5Z").unwrap();
        assert_eq!(target.ms, 1_796_018_400_500);
        assert_eq!(target.text, "2026-11-30 06:00:00.5+00");
        assert_eq!(Target::parse("2026-11-30T06:00:00Z").unwrap().text, "2026-11-30 06:00:00+00");
        assert_eq!(target.text, "2026-11-30 06:00:00.5+00");
        assert_eq!(Target::parse("2026-11-30T06:00:00Z").unwrap().text, "2026-11-30 06:00:00+00");
        assert!(Target::parse("yesterday").is_err());
    }

    #[test]
    fn a_restore_cut_short_is_seen_from_its_marker() {
        let dir = std::env::temp_dir().join(format!("hostwright-recovery-{}", rand::random::<u64>()));
        let data = dir.join("pgdata");
        std::fs::create_dir_all(&data).unwrap();
        assert!(!interrupted(&data));
        std::fs::write(marker(&data), b"").unwrap();
        assert!(interrupted(&data));
        assert_eq!(marker(&data), dir.join("pgdata.restoring"));
    }
}

//! Base backups: a tar of a member's data directory (`pg_basebackup` with
//! the WAL it needs inside) streamed to `<prefix>/base/<id>/data.tar`, then
//! `<prefix>/base/<id>/backup.json` written last, so a backup with its
//! manifest is complete and one without is not a backup. What to keep
//! ([`retention`]), which backup a recovery starts from ([`for_recovery`])
//! and which WAL no kept backup needs ([`wal_needed`]) are pure.

use std::process::Stdio;

use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::BackupError;
use crate::contract::Millis;

/// Bytes in a WAL segment (PostgreSQL's default, which the operator keeps).
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// Size of one part of the multipart upload (S3 wants at least 5 MiB).
const PART_BYTES: usize = 16 * 1024 * 1024;
/// Parts uploaded at once: memory is about this many parts.
const PARTS_IN_FLIGHT: usize = 2;
const DAY_MS: Millis = 24 * 3600 * 1000;

/// What `backup.json` says of a complete base backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub id: String,
    /// The member it was taken from.
    pub member: String,
    pub started: Millis,
    /// When `pg_basebackup` returned: the backup is consistent at a point
    /// before this, so a recovery can reach any time from here on.
    pub finished: Millis,
    pub timeline: u32,
    /// The first WAL segment a recovery from it needs.
    pub start_wal: String,
    pub bytes: u64,
}

/// Which backups to keep (see `api::backup::Retention`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Keep {
    pub backups: Option<u32>,
    pub days: Option<u32>,
}

pub fn data_key(prefix: &str, id: &str) -> Path {
    Path::from(format!("{prefix}/base/{id}/data.tar"))
}

pub fn manifest_key(prefix: &str, id: &str) -> Path {
    Path::from(format!("{prefix}/base/{id}/backup.json"))
}

/// The WAL segment holding position `lsn` on `timeline`.
pub fn segment_name(timeline: u32, lsn: u64) -> String {
    let segment = lsn / SEGMENT_BYTES;
    let per_log = 0x1_0000_0000 / SEGMENT_BYTES;
    format!("{timeline:08X}{:08X}{:08X}", segment / per_log, segment % per_log)
}

/// From `pg_basebackup --verbose`'s stderr: the timeline and the position
/// WAL replay starts from ("write-ahead log start point: 0/2000028 on
/// timeline 1").
pub fn start_point(stderr: &str) -> Option<(u32, u64)> {
    let line = stderr.lines().find_map(|l| l.split_once("write-ahead log start point: ").map(|(_, r)| r))?;
    let (lsn, timeline) = line.split_once(" on timeline ")?;
    let (high, low) = lsn.trim().split_once('/')?;
    let lsn = (u64::from_str_radix(high, 16).ok()? << 32) + u64::from_str_radix(low, 16).ok()?;
    Some((timeline.trim().parse().ok()?, lsn))
}

/// Of `backups` (any order), the ids `keep` lets go, oldest first. The
/// newest is always kept: a retention rule never leaves no backup.
pub fn retention(backups: &[Manifest], keep: Keep, now: Millis) -> Vec<String> {
    let mut newest_first: Vec<&Manifest> = backups.iter().collect();
    newest_first.sort_by(|a, b| b.id.cmp(&a.id));
    let mut gone: Vec<String> = newest_first
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(rank, m)| {
            let by_count = keep.backups.is_some_and(|n| *rank < n as usize);
            let by_age = keep.days.is_some_and(|d| m.finished >= now.saturating_sub(u64::from(d) * DAY_MS));
            let ruled = keep.backups.is_some() || keep.days.is_some();
            ruled && !by_count && !by_age
        })
        .map(|(_, m)| m.id.clone())
        .collect();
    gone.reverse();
    gone
}

/// The backup a recovery to `target` starts from: the newest that finished
/// by then (the newest of all without a target).
pub fn for_recovery(backups: &[Manifest], target: Option<Millis>) -> Option<&Manifest> {
    backups.iter().filter(|m| target.is_none_or(|t| m.finished <= t)).max_by(|a, b| a.id.cmp(&b.id))
}

/// Whether archived WAL file `name` (under `wal/`) may still be needed
/// when the oldest kept backup starts at segment `oldest_start`: timeline
/// history files always; WAL positions from that segment's on, whatever
/// the timeline (every kept backup starts there or later).
pub fn wal_needed(name: &str, oldest_start: &str) -> bool {
    match (name.get(8..24), oldest_start.get(8..24)) {
        (Some(position), Some(start)) if !name.ends_with(".history") => position >= start,
        _ => true,
    }
}

/// Upload the tar stream `tar` as backup `id`'s data; its size.
pub async fn upload(
    store: &dyn ObjectStore,
    prefix: &str,
    id: &str,
    mut tar: impl AsyncRead + Unpin,
) -> Result<u64, BackupError> {
    let key = data_key(prefix, id);
    let store_error = |source| BackupError::Store { operation: "uploading", key: key.to_string(), source };
    let upload = store.put_multipart(&key).await.map_err(store_error)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    let mut buffer = vec![0; 1024 * 1024];
    let mut bytes = 0u64;
    loop {
        let read = match tar.read(&mut buffer).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(source) => {
                let _ = writer.abort().await;
                return Err(BackupError::Read { path: "pg_basebackup's output".into(), source });
            }
        };
        writer.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(store_error)?;
        writer.write(&buffer[..read]);
        bytes += read as u64;
    }
    writer.finish().await.map_err(store_error)?;
    Ok(bytes)
}

/// Write the manifest: from now on the backup exists.
pub async fn complete(store: &dyn ObjectStore, prefix: &str, manifest: &Manifest) -> Result<(), BackupError> {
    let key = manifest_key(prefix, &manifest.id);
    let text = serde_json::to_vec_pretty(manifest)
        .map_err(|source| BackupError::Config { path: key.to_string(), source })?;
    store.put(&key, PutPayload::from(text)).await.map_err(|source| BackupError::Store {
        operation: "uploading",
        key: key.to_string(),
        source,
    })?;
    Ok(())
}

/// Every complete backup under `prefix`.
pub async fn list(store: &dyn ObjectStore, prefix: &str) -> Result<Vec<Manifest>, BackupError> {
    let base = Path::from(format!("{prefix}/base"));
    let listing = |source| BackupError::Store { operation: "listing", key: base.to_string(), source };
    let metas: Vec<_> = store.list(Some(&base)).collect().await;
    let mut manifests = Vec::new();
    for meta in metas {
        let meta = meta.map_err(listing)?;
        if meta.location.filename() != Some("backup.json") {
            continue;
        }
        let key = meta.location;
        let found = store.get(&key).await.map_err(|source| BackupError::Store {
            operation: "downloading",
            key: key.to_string(),
            source,
        })?;
        let text = found.bytes().await.map_err(|source| BackupError::Store {
            operation: "downloading",
            key: key.to_string(),
            source,
        })?;
        let manifest = serde_json::from_slice(&text)
            .map_err(|source| BackupError::Config { path: key.to_string(), source })?;
        manifests.push(manifest);
    }
    Ok(manifests)
}

/// Apply `keep`: remove the backups it lets go (manifest first, so a
/// half-removed backup is never taken for a whole one), then the WAL no
/// kept backup needs. The backups kept.
pub async fn prune(
    store: &dyn ObjectStore,
    prefix: &str,
    keep: Keep,
    now: Millis,
) -> Result<Vec<Manifest>, BackupError> {
    let mut backups = list(store, prefix).await?;
    let gone = retention(&backups, keep, now);
    for id in &gone {
        delete(store, &manifest_key(prefix, id)).await?;
        delete(store, &data_key(prefix, id)).await?;
    }
    backups.retain(|m| !gone.contains(&m.id));
    let Some(oldest) = backups.iter().min_by(|a, b| a.id.cmp(&b.id)) else { return Ok(backups) };
    let wal = Path::from(format!("{prefix}/wal"));
    let metas: Vec<_> = store.list(Some(&wal)).collect().await;
    for meta in metas {
        let meta =
            meta.map_err(|source| BackupError::Store { operation: "listing", key: wal.to_string(), source })?;
        let needed = meta.location.filename().is_none_or(|name| wal_needed(name, &oldest.start_wal));
        if !needed {
            delete(store, &meta.location).await?;
        }
    }
    Ok(backups)
}

async fn delete(store: &dyn ObjectStore, key: &Path) -> Result<(), BackupError> {
    match store.delete(key).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(source) => Err(BackupError::Store { operation: "deleting", key: key.to_string(), source }),
    }
}

/// Stream backup `id`'s data into `tar -x` run in `into` (as `run_as`
/// when given, so the files belong to the server's user).
pub async fn download(
    store: &dyn ObjectStore,
    prefix: &str,
    id: &str,
    into: &std::path::Path,
    run_as: Option<(u32, u32)>,
) -> Result<u64, BackupError> {
    let key = data_key(prefix, id);
    let store_error = |source| BackupError::Store { operation: "downloading", key: key.to_string(), source };
    let tar_error = |source| BackupError::Write { path: into.display().to_string(), source };
    let mut command = tokio::process::Command::new("tar");
    command.args(["-x", "-f", "-", "-C"]).arg(into).stdin(Stdio::piped()).stderr(Stdio::piped());
    if let Some((uid, gid)) = run_as {
        command.uid(uid).gid(gid);
    }
    let mut tar = command.spawn().map_err(tar_error)?;
    let mut stdin = tar.stdin.take().ok_or_else(|| tar_error(std::io::Error::other("no stdin")))?;
    let mut stream = store.get(&key).await.map_err(store_error)?.into_stream();
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(store_error)?;
        stdin.write_all(&chunk).await.map_err(tar_error)?;
        bytes += chunk.len() as u64;
    }
    drop(stdin);
    let out = tar.wait_with_output().await.map_err(tar_error)?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(tar_error(std::io::Error::other(format!("tar -x: {why}"))));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn manifest(id: &str, finished: Millis, start_wal: &str) -> Manifest {
        Manifest {
            id: id.into(),
            member: "db-2".into(),
            started: finished.saturating_sub(10),
            finished,
            timeline: 1,
            start_wal: start_wal.into(),
            bytes: 1,
        }
    }

    #[test]
    fn positions_name_their_segments_and_the_verbose_output_gives_the_start() {
        assert_eq!(segment_name(1, 0x2000028), "000000010000000000000002");
        assert_eq!(segment_name(3, (1 << 32) + 5 * SEGMENT_BYTES), "000000030000000100000005");
        let stderr = "pg_basebackup: initiating base backup, waiting for checkpoint to complete\n\
                      pg_basebackup: checkpoint completed\n\
                      pg_basebackup: write-ahead log start point: 1/5000028 on timeline 3\n\
                      pg_basebackup: write-ahead log end point: 1/5000100\n";
        assert_eq!(start_point(stderr), Some((3, (1 << 32) + 0x5000028)));
        assert_eq!(start_point("nothing"), None);
    }

    #[test]
    fn retention_keeps_the_newest_n_or_the_last_d_days_and_always_one() {
        let now = 100 * DAY_MS;
        let backups: Vec<Manifest> = (1..=5)
            .map(|d| {
                manifest(&format!("2026110{d}T000000Z"), now - (6 - d) * DAY_MS, "000000010000000000000001")
            })
            .collect();
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(retention(&backups, Keep::default(), now), Vec::<String>::new(), "no rule, keep all");
        assert_eq!(
            retention(&backups, Keep { backups: Some(2), days: None }, now),
            ids(&["20261101T000000Z", "20261102T000000Z", "20261103T000000Z"])
        );
        // Finished 5, 4, 3, 2, 1 days ago; the last 3 days keep three.
        assert_eq!(
            retention(&backups, Keep { backups: None, days: Some(3) }, now),
            ids(&["20261101T000000Z", "20261102T000000Z"])
        );
        // Either rule keeps a backup.
        assert_eq!(
            retention(&backups, Keep { backups: Some(4), days: Some(1) }, now),
            ids(&["20261101T000000Z"])
        );
        let old = [manifest("20260101T000000Z", 0, "000000010000000000000001")];
        assert!(retention(&old, Keep { backups: None, days: Some(1) }, now).is_empty(), "the newest stays");
    }

    #[test]
    fn a_recovery_starts_from_the_newest_backup_finished_by_its_target() {
        let backups = [
            manifest("20261101T000000Z", 1_000, "000000010000000000000001"),
            manifest("20261102T000000Z", 2_000, "000000010000000000000005"),
        ];
        assert_eq!(for_recovery(&backups, None).map(|m| m.finished), Some(2_000));
        assert_eq!(for_recovery(&backups, Some(1_999)).map(|m| m.finished), Some(1_000));
        assert_eq!(for_recovery(&backups, Some(999)), None);
    }

    #[test]
    fn wal_before_the_oldest_kept_backup_goes_on_every_timeline_and_history_stays() {
        let start = "000000010000000000000005";
        assert!(!wal_needed("000000010000000000000004", start));
        assert!(!wal_needed("000000010000000000000004.00000028.backup", start));
        assert!(wal_needed("000000010000000000000005", start));
        assert!(wal_needed("000000020000000000000006.partial", start));
        assert!(!wal_needed("000000020000000000000003", start), "an older branch");
        assert!(wal_needed("00000002.history", start));
    }

    #[tokio::test]
    async fn an_uploaded_backup_is_listed_once_complete_and_pruned_with_its_wal() {
        let store = InMemory::new();
        let data = vec![7u8; PART_BYTES + 1234];
        let bytes = upload(&store, "ns/db", "20261101T000000Z", data.as_slice()).await.unwrap();
        assert_eq!(bytes, data.len() as u64);
        assert!(list(&store, "ns/db").await.unwrap().is_empty(), "no manifest, no backup");
        complete(&store, "ns/db", &manifest("20261101T000000Z", 1_000, "000000010000000000000001"))
            .await
            .unwrap();
        upload(&store, "ns/db", "20261102T000000Z", &b"tar"[..]).await.unwrap();
        complete(&store, "ns/db", &manifest("20261102T000000Z", 2_000, "000000010000000000000003"))
            .await
            .unwrap();
        for name in ["000000010000000000000001", "000000010000000000000003"] {
            store
                .put(&Path::from(format!("ns/db/wal/00000001/{name}")), PutPayload::from(vec![1]))
                .await
                .unwrap();
        }
        let kept = prune(&store, "ns/db", Keep { backups: Some(1), days: None }, 3_000).await.unwrap();
        assert_eq!(kept.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["20261102T000000Z"]);
        let left: Vec<String> =
            store.list(None).map(|m| m.unwrap().location.to_string()).collect::<Vec<_>>().await;
        assert_eq!(
            left,
            [
                "ns/db/base/20261102T000000Z/backup.json",
                "ns/db/base/20261102T000000Z/data.tar",
                "ns/db/wal/00000001/000000010000000000000003"
            ]
        );
    }
}

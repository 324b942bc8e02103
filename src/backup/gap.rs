//! The bound on WAL kept for an object store that does not take it.
//!
//! PostgreSQL keeps every segment `archive_command` has not archived, so an
//! object store that stays unreachable fills `pg_wal` and then stops the
//! primary. Past `maxPendingWal` of unarchived WAL, a push that fails lets
//! the segment go instead (it reports success without uploading): the
//! primary keeps serving, and the archive has a gap no recovery can pass.
//! The gap is recorded on the member's volume, reported on its Lease, shown
//! in the status (`Degraded`, reason `ArchiveGap`), and closed by the next
//! base backup, which the operator takes as soon as the store answers.
//! Serving beats an archive that is broken already.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::base::SEGMENT_BYTES;
use crate::contract::Millis;

/// A run of segments let go unarchived.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Gap {
    /// The first segment let go, and when.
    pub first: String,
    pub at: Millis,
    /// The last segment let go so far.
    pub last: String,
    /// A push succeeded since: a later let-go starts a new gap.
    #[serde(default)]
    pub closed: bool,
}

/// Unarchived WAL waiting in `pg_wal`: the segments PostgreSQL marked
/// ready for archiving (`archive_status/*.ready` beside `segment`).
pub fn pending_bytes(segment: &Path) -> u64 {
    let Some(status) = segment.parent().map(|wal| wal.join("archive_status")) else { return 0 };
    let Ok(entries) = std::fs::read_dir(status) else { return 0 };
    let ready = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ready"))
        .count() as u64;
    ready * SEGMENT_BYTES
}

/// Whether a segment whose push failed is let go: more than `limit` bytes
/// of WAL wait for the store.
pub fn let_go(pending: u64, limit: Option<u64>) -> bool {
    limit.is_some_and(|limit| pending > limit)
}

/// The gap after letting `segment` go at `now`, given the recorded one.
pub fn widen(recorded: Option<Gap>, segment: &str, now: Millis) -> Gap {
    match recorded {
        Some(gap) if !gap.closed => Gap { last: segment.to_string(), ..gap },
        _ => Gap { first: segment.to_string(), at: now, last: segment.to_string(), closed: false },
    }
}

/// The gap recorded in `file`, if any.
pub fn read(file: &Path) -> Option<Gap> {
    serde_json::from_slice(&std::fs::read(file).ok()?).ok()
}

/// Record `gap` in `file` (whole, under a temporary name first).
pub fn write(file: &Path, gap: &Gap) -> std::io::Result<()> {
    let text = serde_json::to_vec(gap).map_err(std::io::Error::other)?;
    let partial = file.with_extension("partial");
    std::fs::write(&partial, text)?;
    std::fs::rename(partial, file)
}

/// After a successful push: an open gap is closed.
pub fn close(file: &Path) -> std::io::Result<()> {
    match read(file) {
        Some(gap) if !gap.closed => write(file, &Gap { closed: true, ..gap }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_let_go_only_past_the_limit() {
        assert!(!let_go(10 * SEGMENT_BYTES, None), "no limit: PostgreSQL keeps everything");
        assert!(!let_go(4 * SEGMENT_BYTES, Some(4 * SEGMENT_BYTES)));
        assert!(let_go(5 * SEGMENT_BYTES, Some(4 * SEGMENT_BYTES)));
    }

    #[test]
    fn a_gap_widens_until_a_push_succeeds_then_a_new_one_starts() {
        let dir = std::env::temp_dir().join(format!("hostwright-gap-{}", rand::random::<u64>()));
        let wal = dir.join("pg_wal");
        std::fs::create_dir_all(wal.join("archive_status")).unwrap();
        for n in 1..=3 {
            std::fs::write(wal.join(format!("archive_status/00000001000000000000000{n}.ready")), b"")
                .unwrap();
        }
        std::fs::write(wal.join("archive_status/000000010000000000000000.done"), b"").unwrap();
        assert_eq!(pending_bytes(&wal.join("000000010000000000000001")), 3 * SEGMENT_BYTES);

        let file = dir.join("gap.json");
        let first = widen(read(&file), "000000010000000000000001", 10);
        write(&file, &first).unwrap();
        let wider = widen(read(&file), "000000010000000000000002", 20);
        assert_eq!(
            (wider.first.as_str(), wider.at, wider.last.as_str()),
            ("000000010000000000000001", 10, "000000010000000000000002")
        );
        write(&file, &wider).unwrap();
        close(&file).unwrap();
        assert!(read(&file).unwrap().closed);
        let next = widen(read(&file), "000000010000000000000009", 30);
        assert_eq!((next.first.as_str(), next.at, next.closed), ("000000010000000000000009", 30, false));
    }
}

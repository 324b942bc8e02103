//! What the status says about WAL archiving, from the primary's report of
//! `pg_stat_archiver`: how far the archive is behind, and whether it has
//! been failing long enough to call the store Degraded. Pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::backup::BackupStatus;
use crate::backup::base::SEGMENT_BYTES;
use crate::contract::{ArchiveReport, Millis};

/// Archiving that has archived nothing for this long while failing makes
/// the store Degraded. PostgreSQL retries a failed segment three times,
/// then waits a minute: two minutes is two rounds of retries, so one blip
/// of the object store does not page anyone.
pub const FAILING_FOR: Millis = 120_000;

/// The WAL position just past segment `name` (24 hex digits: timeline,
/// log, segment), or None for another name.
pub fn segment_end(name: &str) -> Option<u64> {
    let name = name.get(..24).filter(|_| name.len() == 24)?;
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let segment = u64::from_str_radix(&name[16..24], 16).ok()?;
    Some((log << 32) + (segment + 1) * SEGMENT_BYTES)
}

/// The archive's part of the status: the primary's report, its position,
/// and the time now.
pub fn status(report: &ArchiveReport, primary_position: Option<u64>, now: Millis) -> BackupStatus {
    let archived_end = report.archived.as_ref().and_then(|(wal, _)| segment_end(wal));
    let lag_bytes = match (primary_position, archived_end) {
        (Some(position), Some(end)) => Some(position.saturating_sub(end)),
        (Some(position), None) => Some(position),
        _ => None,
    };
    let lag_seconds = match (&report.archived, lag_bytes) {
        (_, Some(0)) => Some(0),
        (Some((_, at)), Some(_)) => Some(now.saturating_sub(*at) / 1000),
        _ => None,
    };
    BackupStatus {
        last_archived_wal: report.archived.as_ref().map(|(wal, _)| wal.clone()),
        last_archived_time: report.archived.as_ref().and_then(|(_, at)| time(*at)),
        archive_lag_seconds: lag_seconds.and_then(|s| i64::try_from(s).ok()),
        archive_lag_bytes: lag_bytes.and_then(|b| i64::try_from(b).ok()),
        last_failure: report.failing().then(|| failure(report)).flatten(),
        last_recoverability_point: report.archived.as_ref().and_then(|(_, at)| time(*at)),
        ..BackupStatus::default()
    }
}

/// Why the store is Degraded for its archiving, if it is: the last
/// attempt failed and nothing was archived for [`FAILING_FOR`].
pub fn degraded(report: &ArchiveReport, now: Millis) -> Option<String> {
    if !report.failing() {
        return None;
    }
    let stalled = match &report.archived {
        Some((_, at)) => now.saturating_sub(*at) >= FAILING_FOR,
        None => true,
    };
    let since = match &report.archived {
        Some((wal, at)) => format!("nothing archived since {wal} {}s ago", now.saturating_sub(*at) / 1000),
        None => "nothing archived yet".to_string(),
    };
    stalled.then(|| {
        format!(
            "WAL archiving fails ({}; {since}): the primary keeps serving and keeps the WAL until the \
             object store takes it; the member's log says why",
            failure(report).unwrap_or_default()
        )
    })
}

fn failure(report: &ArchiveReport) -> Option<String> {
    let (wal, at) = report.failed.as_ref()?;
    let when = time(*at).map(|t| t.0.to_string()).unwrap_or_default();
    Some(format!("last failed on {wal} at {when}"))
}

/// A unix-ms instant as a Kubernetes time.
pub(super) fn time(ms: Millis) -> Option<Time> {
    Timestamp::from_millisecond(i64::try_from(ms).ok()?).ok().map(Time)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEGMENT: &str = "000000010000000000000003";

    #[test]
    fn a_segments_end_is_where_the_next_begins() {
        assert_eq!(segment_end(SEGMENT), Some(4 * SEGMENT_BYTES));
        assert_eq!(segment_end("0000000200000001000000FF"), Some((1 << 32) + 256 * SEGMENT_BYTES));
        assert_eq!(segment_end("00000002.history"), None);
        assert_eq!(segment_end("000000010000000000000003.partial"), None);
    }

    #[test]
    fn the_lag_is_what_the_primary_wrote_past_the_last_archived_segment() {
        let report = ArchiveReport {
            archived: Some((SEGMENT.into(), 1_000_000)),
            failed: None,
            gap: None,
            gap_closed: false,
        };
        let caught_up = status(&report, Some(4 * SEGMENT_BYTES), 1_030_000);
        assert_eq!((caught_up.archive_lag_bytes, caught_up.archive_lag_seconds), (Some(0), Some(0)));
        let behind = status(&report, Some(4 * SEGMENT_BYTES + 500), 1_030_000);
        assert_eq!((behind.archive_lag_bytes, behind.archive_lag_seconds), (Some(500), Some(30)));
        assert_eq!(behind.last_archived_wal.as_deref(), Some(SEGMENT));
        assert_eq!(behind.last_failure, None);
    }

    #[test]
    fn failing_archiving_is_degraded_after_two_minutes_without_progress_not_at_the_first_error() {
        let report = ArchiveReport {
            archived: Some((SEGMENT.into(), 1_000_000)),
            failed: Some(("000000010000000000000004".into(), 1_010_000)),
            gap: None,
            gap_closed: false,
        };
        assert!(report.failing());
        assert_eq!(degraded(&report, 1_000_000 + FAILING_FOR - 1), None, "a blip");
        let why = degraded(&report, 1_000_000 + FAILING_FOR).unwrap();
        assert!(why.contains("000000010000000000000004") && why.contains("keeps serving"), "{why}");
        assert!(status(&report, None, 1_100_000).last_failure.is_some());
        // Archived again since: not failing any more.
        let recovered =
            ArchiveReport { archived: Some(("000000010000000000000004".into(), 1_200_000)), ..report };
        assert_eq!(degraded(&recovered, 2_000_000), None);
        assert_eq!(status(&recovered, None, 2_000_000).last_failure, None);
    }
}

//! When a DatabaseMirror takes a base backup, and from which member: on its
//! cron schedule and whenever the annotation `hostwright.io/backup-request`
//! takes a new value; from the healthy mirror least behind (the primary
//! carries no extra load), the primary only when no mirror is healthy. One
//! backup at a time. Pure: the status says which backup runs where, and
//! the reconcile puts the order on that member's pod (see
//! [`super::reconcile`]).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;

use super::archiving::time;
use crate::api::backup::{BackupRecord, BackupSpec, BackupStatus, RunningBackup};
use crate::api::common::{MemberRole, MemberStatus};
use crate::contract::{ArchiveReport, BackupOrder, BackupReport, BackupState, Millis};

/// The annotation on a DatabaseMirror that asks for a base backup now: each
/// new value is one backup.
pub const REQUEST_ANNOTATION: &str = "hostwright.io/backup-request";
/// A member that has not taken up an order after this long has failed it.
pub const START_WITHIN: Millis = 5 * 60 * 1000;
/// A backup still running after this long has failed.
pub const FINISH_WITHIN: Millis = 12 * 3600 * 1000;

/// What the planner sees.
pub struct Input<'a> {
    pub spec: &'a BackupSpec,
    pub previous: Option<&'a BackupStatus>,
    /// The request annotation's value.
    pub request: Option<&'a str>,
    /// Each member's report of the last backup asked of it.
    pub reports: &'a BTreeMap<String, BackupReport>,
    /// Each archiving member's report (any member's may carry a gap).
    pub archives: &'a BTreeMap<String, ArchiveReport>,
    pub members: &'a [MemberStatus],
    /// When the DatabaseMirror was made: the schedule counts from there.
    pub created: Millis,
    pub now: Millis,
}

/// Step the base backups: carry `status`'s backup fields over from the
/// previous status, close a backup whose member reported, start one that is
/// due (see [`events`] for what is said about it).
pub fn step(input: &Input<'_>, status: &mut BackupStatus) {
    carry_over(input.previous, status);
    status.archive_gap = open_gap(input, status).map(|(first, at, _)| gap_message(first, at));
    if let Some(running) = status.running_backup.clone() {
        match finished(input, &running) {
            Some(Ok(record)) => {
                status.last_backup = Some(record);
                status.first_recoverability_point = first_recoverability_point(input.reports, &running.id);
                status.last_backup_failure = None;
                status.running_backup = None;
            }
            Some(Err(why)) => {
                status.last_backup_failure = Some(why);
                status.running_backup = None;
            }
            None => return,
        }
    }
    // A schedule the API server let through but cron cannot read is said
    // (Event BackupFailed), never silently never run.
    if let Some(Err(why)) = next_scheduled(input.spec, status, input.created) {
        status.last_backup_failure = Some(why);
    }
    let Some(trigger) = due(input, status) else { return };
    let Some(member) = source(input.members) else { return };
    match trigger {
        Trigger::Requested(value) | Trigger::Gap(value) => status.last_request = Some(value),
        Trigger::Scheduled(at) => status.last_schedule_time = time(at),
    }
    let id = backup_id(input.now);
    status.running_backup =
        Some(RunningBackup { id, member, started: time(input.now).unwrap_or(now_time()) });
}

/// The Events for what changed between two statuses: a backup started,
/// completed or failed.
pub fn events(old: Option<&BackupStatus>, new: &BackupStatus) -> Vec<(EventType, &'static str, String)> {
    let old = old.cloned().unwrap_or_default();
    let mut events = Vec::new();
    if let Some(run) = new.running_backup.as_ref().filter(|r| old.running_backup.as_ref() != Some(*r)) {
        events.push((
            EventType::Normal,
            "BackupStarted",
            format!("base backup {} from {}", run.id, run.member),
        ));
    }
    if let Some(done) = new.last_backup.as_ref().filter(|b| old.last_backup.as_ref() != Some(*b)) {
        let note =
            format!("base backup {} from {}: {} bytes, {} kept", done.id, done.member, done.bytes, done.kept);
        events.push((EventType::Normal, "BackupCompleted", note));
    }
    if let Some(why) =
        new.last_backup_failure.as_ref().filter(|w| old.last_backup_failure.as_ref() != Some(*w))
    {
        events.push((EventType::Warning, "BackupFailed", why.clone()));
    }
    events
}

/// The fields only this planner writes, from the previous status.
fn carry_over(previous: Option<&BackupStatus>, status: &mut BackupStatus) {
    let Some(p) = previous else { return };
    status.last_backup = p.last_backup.clone();
    status.running_backup = p.running_backup.clone();
    status.last_backup_failure = p.last_backup_failure.clone();
    status.first_recoverability_point = p.first_recoverability_point.clone();
    status.last_schedule_time = p.last_schedule_time.clone();
    status.last_request = p.last_request.clone();
}

/// The running backup's outcome, once there is one.
fn finished(input: &Input<'_>, running: &RunningBackup) -> Option<Result<BackupRecord, String>> {
    let started = millis(&running.started);
    let report = input.reports.get(&running.member).filter(|r| r.id == running.id);
    let waited = input.now.saturating_sub(started);
    match report.map(|r| &r.state) {
        Some(BackupState::Done { finished, bytes, kept, .. }) => Some(Ok(BackupRecord {
            id: running.id.clone(),
            member: running.member.clone(),
            finished: time(*finished).unwrap_or(now_time()),
            bytes: i64::try_from(*bytes).unwrap_or(i64::MAX),
            kept: i32::try_from(*kept).unwrap_or(i32::MAX),
        })),
        Some(BackupState::Failed { why }) => {
            Some(Err(format!("base backup {} from {} failed: {why}", running.id, running.member)))
        }
        Some(BackupState::Running) if waited > FINISH_WITHIN => Some(Err(format!(
            "base backup {} from {} still running after {} hours: given up",
            running.id,
            running.member,
            FINISH_WITHIN / 3_600_000
        ))),
        None if waited > START_WITHIN => Some(Err(format!(
            "base backup {}: {} did not take it up within {} minutes",
            running.id,
            running.member,
            START_WITHIN / 60_000
        ))),
        _ => None,
    }
}

/// The oldest kept backup's end, from a member's report of a completed one.
pub fn first_recoverability_point(reports: &BTreeMap<String, BackupReport>, id: &str) -> Option<Time> {
    reports.values().filter(|r| r.id == id).find_map(|r| match r.state {
        BackupState::Done { oldest_finished, .. } => time(oldest_finished),
        _ => None,
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Trigger {
    Requested(String),
    Scheduled(Millis),
    /// WAL was let go since the last backup and the store answers again.
    Gap(String),
}

/// The newest gap any member let into the archive after the last
/// completed base backup (which makes earlier ones irrelevant), and whether
/// that member archived a segment since (the store answers again).
fn open_gap<'a>(input: &'a Input<'_>, status: &BackupStatus) -> Option<(&'a str, Millis, bool)> {
    let since = status.last_backup.as_ref().map_or(0, |b| millis(&b.finished));
    input
        .archives
        .values()
        .filter_map(|r| r.gap.as_ref().map(|(first, at)| (first.as_str(), *at, r.gap_closed)))
        .filter(|(_, at, _)| *at > since)
        .max_by_key(|(_, at, _)| *at)
}

fn gap_message(first: &str, at: Millis) -> String {
    let when = time(at).map(|t| t.0.to_string()).unwrap_or_default();
    format!(
        "WAL from {first} on was let go unarchived at {when} (the object store was unreachable and more WAL \
         waited than backup.maxPendingWal): no recovery passes it until the next base backup, which is taken \
         as soon as the store answers"
    )
}

/// Why a backup is due now, if one is.
fn due(input: &Input<'_>, status: &BackupStatus) -> Option<Trigger> {
    if let Some(value) = input.request.filter(|v| !v.is_empty())
        && status.last_request.as_deref() != Some(value)
    {
        return Some(Trigger::Requested(value.to_string()));
    }
    // Only once a segment went to the store after the gap: a push that
    // lets its segment go counts as archived to PostgreSQL, so "not
    // failing" does not mean the store answers.
    if let Some((first, _, true)) = open_gap(input, status) {
        let request = format!("archive-gap:{first}");
        if status.last_request.as_deref() != Some(request.as_str()) {
            return Some(Trigger::Gap(request));
        }
    }
    let at = next_scheduled(input.spec, status, input.created)?.ok()?;
    (at <= input.now).then_some(Trigger::Scheduled(at))
}

/// When `meta`'s object was made, in unix ms (`now` when unknown): the
/// schedule counts from there.
pub fn created(meta: &ObjectMeta, now: Millis) -> Millis {
    meta.creation_timestamp.as_ref().map_or(now, millis)
}

/// When the next scheduled backup is due (missed runs fold into one), or
/// why the schedule cannot be read; None without a schedule.
pub fn next_scheduled(
    spec: &BackupSpec,
    status: &BackupStatus,
    created: Millis,
) -> Option<Result<Millis, String>> {
    let schedule = spec.schedule.as_deref()?;
    let cron = match croner::Cron::new(schedule).parse() {
        Ok(cron) => cron,
        Err(err) => return Some(Err(format!("backup.schedule {schedule:?}: {err}"))),
    };
    let after = status.last_schedule_time.as_ref().map_or(created, millis);
    let after = chrono::DateTime::from_timestamp_millis(i64::try_from(after).ok()?)?;
    let next = cron
        .find_next_occurrence(&after, false)
        .map_err(|err| format!("backup.schedule {schedule:?}: {err}"));
    Some(next.map(|at| u64::try_from(at.timestamp_millis()).unwrap_or(0)))
}

/// The member to take the backup from: the healthy mirror least behind,
/// else a healthy primary.
fn source(members: &[MemberStatus]) -> Option<String> {
    let mirror = members
        .iter()
        .filter(|m| m.healthy && m.role == MemberRole::Mirror)
        .min_by_key(|m| (m.lag_bytes.unwrap_or(i64::MAX), m.name.clone()));
    let primary = || members.iter().find(|m| m.healthy && m.role == MemberRole::Primary);
    mirror.or_else(primary).map(|m| m.name.clone())
}

/// The order the running backup's member is given.
pub fn order(spec: &BackupSpec, running: &RunningBackup) -> BackupOrder {
    let retention = spec.retention.clone().unwrap_or_default();
    let positive = |n: Option<i32>| n.and_then(|n| u32::try_from(n).ok());
    BackupOrder {
        id: running.id.clone(),
        keep_backups: positive(retention.backups),
        keep_days: positive(retention.days),
    }
}

/// `YYYYMMDDTHHMMSSZ`: names that sort by age.
fn backup_id(now: Millis) -> String {
    let at = Timestamp::from_millisecond(i64::try_from(now).unwrap_or(0)).unwrap_or(Timestamp::UNIX_EPOCH);
    at.strftime("%Y%m%dT%H%M%SZ").to_string()
}

fn now_time() -> Time {
    Time(Timestamp::now())
}

fn millis(t: &Time) -> Millis {
    u64::try_from(t.0.as_millisecond()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::backup::{ObjectStore, Retention, SecretName};

    const MINUTE: Millis = 60_000;
    /// 2026-11-30T00:00:00Z
    const MIDNIGHT: Millis = 1_795_996_800_000;

    fn spec(schedule: Option<&str>) -> BackupSpec {
        BackupSpec {
            object_store: ObjectStore {
                endpoint: "http://s3:9000".into(),
                bucket: "backups".into(),
                path: None,
                region: "us-east-1".into(),
                credentials: SecretName { secret_name: "s3".into() },
                ca: None,
            },
            schedule: schedule.map(str::to_string),
            retention: Some(Retention { backups: Some(3), days: None }),
            max_pending_wal: None,
        }
    }

    fn member(name: &str, role: MemberRole, healthy: bool, lag: Option<i64>) -> MemberStatus {
        MemberStatus::sample(name, role, healthy, lag)
    }

    fn members() -> Vec<MemberStatus> {
        vec![
            member("db-1", MemberRole::Primary, true, None),
            member("db-2", MemberRole::Mirror, true, Some(900)),
            member("db-3", MemberRole::Mirror, true, Some(10)),
        ]
    }

    fn input<'a>(
        spec: &'a BackupSpec,
        previous: Option<&'a BackupStatus>,
        request: Option<&'a str>,
        reports: &'a BTreeMap<String, BackupReport>,
        members: &'a [MemberStatus],
        now: Millis,
    ) -> Input<'a> {
        static NO_ARCHIVES: BTreeMap<String, ArchiveReport> = BTreeMap::new();
        Input { spec, previous, request, reports, archives: &NO_ARCHIVES, members, created: MIDNIGHT, now }
    }

    #[test]
    fn a_request_starts_one_backup_on_the_mirror_least_behind_and_its_report_closes_it() {
        let spec = spec(None);
        let (members, none) = (members(), BTreeMap::new());
        let mut status = BackupStatus::default();
        step(&input(&spec, None, Some("now"), &none, &members, MIDNIGHT + MINUTE), &mut status);
        let running = status.running_backup.clone().expect("started");
        assert_eq!((running.id.as_str(), running.member.as_str()), ("20261130T000100Z", "db-3"));
        assert_eq!(status.last_request.as_deref(), Some("now"));
        assert_eq!(events(None, &status)[0].1, "BackupStarted");
        assert_eq!(order(&spec, &running).keep_backups, Some(3));

        // The same request again starts nothing; the report closes it.
        let previous = status.clone();
        let reports = BTreeMap::from([(
            "db-3".to_string(),
            BackupReport {
                id: running.id.clone(),
                state: BackupState::Done {
                    finished: MIDNIGHT + 2 * MINUTE,
                    bytes: 42,
                    kept: 2,
                    oldest_finished: 7,
                },
            },
        )]);
        let mut status = BackupStatus::default();
        step(
            &input(&spec, Some(&previous), Some("now"), &reports, &members, MIDNIGHT + 3 * MINUTE),
            &mut status,
        );
        assert_eq!(status.running_backup, None);
        let last = status.last_backup.clone().expect("recorded");
        assert_eq!((last.bytes, last.kept, last.member.as_str()), (42, 2, "db-3"));
        let said: Vec<&str> = events(Some(&previous), &status).iter().map(|e| e.1).collect();
        assert_eq!(said, ["BackupCompleted"]);
        assert_eq!(first_recoverability_point(&reports, &running.id).map(|t| millis(&t)), Some(7));
    }

    #[test]
    fn the_primary_backs_up_only_when_no_mirror_is_healthy_and_nobody_when_it_is_not() {
        let all_down = [member("db-1", MemberRole::Primary, false, None)];
        assert_eq!(source(&all_down), None);
        let alone = [
            member("db-1", MemberRole::Primary, true, None),
            member("db-2", MemberRole::Mirror, false, Some(1)),
        ];
        assert_eq!(source(&alone).as_deref(), Some("db-1"));
        assert_eq!(source(&members()).as_deref(), Some("db-3"));
    }

    #[test]
    fn a_schedule_is_due_once_per_time_missed_runs_folding_into_one() {
        let spec = spec(Some("0 3 * * *"));
        let (members, none) = (members(), BTreeMap::new());
        let mut status = BackupStatus::default();
        step(&input(&spec, None, None, &none, &members, MIDNIGHT + 2 * 60 * MINUTE), &mut status);
        assert_eq!(status.running_backup, None, "not yet 03:00");
        // Past 03:00: one backup, recorded for 03:00.
        step(&input(&spec, None, None, &none, &members, MIDNIGHT + 4 * 60 * MINUTE), &mut status);
        assert!(status.running_backup.is_some());
        assert_eq!(status.last_schedule_time.as_ref().map(millis), Some(MIDNIGHT + 3 * 60 * MINUTE));
        let next = next_scheduled(&spec, &status, MIDNIGHT).unwrap().unwrap();
        assert_eq!(next, MIDNIGHT + 27 * 60 * MINUTE);
        let bad = self::spec(Some("61 * * * *"));
        assert!(next_scheduled(&bad, &BackupStatus::default(), MIDNIGHT).unwrap().is_err());
        let mut status = BackupStatus::default();
        step(&input(&bad, None, None, &none, &members, MIDNIGHT), &mut status);
        assert!(
            status.last_backup_failure.as_deref().is_some_and(|w| w.contains("61 * * * *")),
            "{status:?}"
        );
    }

    #[test]
    fn wal_let_go_since_the_last_backup_degrades_and_a_backup_follows_once_the_store_answers() {
        let spec = spec(None);
        let (members, none) = (members(), BTreeMap::new());
        let gap = ("000000010000000000000007".to_string(), MIDNIGHT + MINUTE);
        let failing = ArchiveReport {
            archived: Some(("000000010000000000000003".into(), MIDNIGHT)),
            failed: None,
            gap: Some(gap.clone()),
            gap_closed: false,
        };
        let down = BTreeMap::from([("db-1".to_string(), failing)]);
        let at = |now, archives| Input { archives, ..input(&spec, None, None, &none, &members, now) };
        let mut status = BackupStatus::default();
        step(&at(MIDNIGHT + 3 * MINUTE, &down), &mut status);
        assert!(status.archive_gap.as_deref().is_some_and(|g| g.contains("000000010000000000000007")));
        assert_eq!(status.running_backup, None, "no backup while the store does not answer");

        let up = BTreeMap::from([(
            "db-1".to_string(),
            ArchiveReport {
                archived: Some(("000000010000000000000009".into(), MIDNIGHT + 4 * MINUTE)),
                failed: None,
                gap: Some(gap),
                gap_closed: true,
            },
        )]);
        step(&at(MIDNIGHT + 5 * MINUTE, &up), &mut status);
        assert!(status.running_backup.is_some(), "the store answers: a backup closes the gap");
        // Once a backup finished after the gap, the gap is history.
        status.running_backup = None;
        status.last_backup = Some(BackupRecord {
            id: "x".into(),
            member: "db-3".into(),
            finished: time(MIDNIGHT + 6 * MINUTE).unwrap(),
            bytes: 1,
            kept: 1,
        });
        let previous = status.clone();
        let mut status = BackupStatus::default();
        step(&Input { previous: Some(&previous), ..at(MIDNIGHT + 7 * MINUTE, &up) }, &mut status);
        assert_eq!((status.archive_gap, status.running_backup), (None, None));
    }

    #[test]
    fn a_member_that_never_takes_up_the_order_or_fails_it_fails_the_backup_loudly() {
        let spec = spec(None);
        let members = members();
        let previous = BackupStatus {
            running_backup: Some(RunningBackup {
                id: "20261130T000000Z".into(),
                member: "db-2".into(),
                started: time(MIDNIGHT).unwrap(),
            }),
            ..BackupStatus::default()
        };
        let none = BTreeMap::new();
        let mut status = BackupStatus::default();
        step(&input(&spec, Some(&previous), None, &none, &members, MIDNIGHT + MINUTE), &mut status);
        assert!(status.running_backup.is_some(), "still waiting");
        let mut status = BackupStatus::default();
        step(&input(&spec, Some(&previous), None, &none, &members, MIDNIGHT + START_WITHIN + 1), &mut status);
        assert_eq!(status.running_backup, None);
        assert!(status.last_backup_failure.as_deref().is_some_and(|w| w.contains("did not take it up")));
        assert_eq!(events(Some(&previous), &status)[0].0, EventType::Warning);
        let failed = BTreeMap::from([(
            "db-2".to_string(),
            BackupReport { id: "20261130T000000Z".into(), state: BackupState::Failed { why: "disk".into() } },
        )]);
        let mut status = BackupStatus::default();
        step(&input(&spec, Some(&previous), None, &failed, &members, MIDNIGHT + MINUTE), &mut status);
        assert!(status.last_backup_failure.as_deref().is_some_and(|w| w.contains("disk")));
    }
}

//! Where each file lives under a database's prefix. WAL goes under
//! `wal/<timeline>/` by the name PostgreSQL gives it (timeline history files
//! under `wal/`), so a listing of one timeline is one prefix and a name
//! never means two files. Names are checked: `%f` reaches object keys only
//! as one of PostgreSQL's own WAL file names.

use object_store::path::Path;

use super::BackupError;

/// A file PostgreSQL asks the archive to keep, by its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalFile {
    /// A 16 MB segment: timeline, then the segment's position.
    Segment { timeline: u32 },
    /// The last, partial segment of a timeline a promotion ended.
    Partial { timeline: u32 },
    /// The backup history file `pg_basebackup` leaves.
    BackupHistory { timeline: u32 },
    /// A timeline's history file (`00000002.history`).
    TimelineHistory { timeline: u32 },
}

/// Parse one of PostgreSQL's WAL file names.
pub fn parse(name: &str) -> Result<WalFile, BackupError> {
    let refuse = || BackupError::NotWalName { name: name.to_string() };
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase());
    let timeline = |s: &str| u32::from_str_radix(s, 16).ok().filter(|t| *t > 0);
    if let Some(tli) = name.strip_suffix(".history") {
        return match tli.len() == 8 && hex(tli) {
            true => timeline(tli).map(|timeline| WalFile::TimelineHistory { timeline }).ok_or_else(refuse),
            false => Err(refuse()),
        };
    }
    let (segment, suffix) = match name.split_once('.') {
        Some((segment, suffix)) => (segment, Some(suffix)),
        None => (name, None),
    };
    if segment.len() != 24 || !hex(segment) {
        return Err(refuse());
    }
    let timeline = timeline(&segment[..8]).ok_or_else(refuse)?;
    match suffix {
        None => Ok(WalFile::Segment { timeline }),
        Some("partial") => Ok(WalFile::Partial { timeline }),
        // `<segment>.<offset 8 hex>.backup`
        Some(rest) if rest.len() == 15 && rest.ends_with(".backup") && hex(&rest[..8]) => {
            Ok(WalFile::BackupHistory { timeline })
        }
        Some(_) => Err(refuse()),
    }
}

/// The object key of WAL file `name` under `prefix`.
pub fn wal_key(prefix: &str, name: &str) -> Result<Path, BackupError> {
    let key = match parse(name)? {
        WalFile::TimelineHistory { .. } => format!("{prefix}/wal/{name}"),
        WalFile::Segment { timeline }
        | WalFile::Partial { timeline }
        | WalFile::BackupHistory { timeline } => format!("{prefix}/wal/{timeline:08X}/{name}"),
    };
    Ok(Path::from(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_wal_file_has_its_place() {
        let cases = [
            ("000000010000000000000003", "db/wal/00000001/000000010000000000000003"),
            ("000000020000000A000000FF.partial", "db/wal/00000002/000000020000000A000000FF.partial"),
            (
                "000000010000000000000002.00000028.backup",
                "db/wal/00000001/000000010000000000000002.00000028.backup",
            ),
            ("00000002.history", "db/wal/00000002.history"),
        ];
        for (name, key) in cases {
            assert_eq!(wal_key("db", name).unwrap().as_ref(), key, "{name}");
        }
        assert_eq!(parse("0000000A.history").unwrap(), WalFile::TimelineHistory { timeline: 10 });
    }

    #[test]
    fn anything_else_is_refused_before_it_reaches_a_key() {
        for name in [
            "",
            "../../etc/passwd",
            "00000001000000000000000",
            "0000000100000000000000030",
            "000000010000000000000003/x",
            "00000000000000000000000A",
            "000000010000000000000003.tmp",
            "000000010000000000000003.0000002.backup",
            "00000000.history",
            "0000001.history",
            "000000010000000000000abc",
        ] {
            assert!(parse(name).is_err(), "{name:?} accepted");
        }
    }
}

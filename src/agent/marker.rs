//! The agent's marker beside a member's data, on the same volume: what the
//! engine's own files cannot say, and what must outlive the agent process.
//!
//! - `role`: whether the data was last written as a primary (its history may
//!   then have diverged, so it is rewound before following anyone);
//! - `lineage`: the epoch at which the history it holds began, which orders
//!   members' data when a store is re-created over kept volumes;
//! - `served`: the epoch under which this member last started as primary,
//!   cleared by the next fence: a primary that stopped (and a restarted
//!   agent) never comes back before the engine fenced it;
//! - `seen`: the highest instruction epoch any agent of this member saw;
//! - `ran`: a server has run on this data since it was prepared (initialised,
//!   cloned or rewound): a server that keeps nothing on disk lost it then.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use crate::contract::Epoch;

/// Why the marker could not be written.
#[derive(Debug, thiserror::Error)]
#[error("writing the marker {path}: {source}")]
pub struct MarkerError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The marker's contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Marker {
    /// Last written as a primary.
    pub primary: bool,
    pub lineage: Option<Epoch>,
    pub served: Option<Epoch>,
    pub seen: Option<Epoch>,
    pub ran: bool,
}

impl Marker {
    /// `role=primary lineage=7 served=9 seen=9`.
    pub fn encode(&self) -> String {
        let mut out = format!("role={}", if self.primary { "primary" } else { "standby" });
        for (key, value) in [("lineage", self.lineage), ("served", self.served), ("seen", self.seen)] {
            if let Some(value) = value {
                out.push_str(&format!(" {key}={value}"));
            }
        }
        if self.ran {
            out.push_str(" ran");
        }
        out.push('\n');
        out
    }

    /// Unreadable parts read as unknown; an unknown role as primary (the
    /// cautious answer: a rewind is harmless, a missed one is not).
    pub fn parse(text: &str) -> Self {
        let mut marker = Marker { primary: true, ..Marker::default() };
        for word in text.split_whitespace() {
            match word.split_once('=') {
                Some(("role", role)) => marker.primary = role != "standby",
                Some(("lineage", n)) => marker.lineage = n.parse().ok(),
                Some(("served", n)) => marker.served = n.parse().ok(),
                Some(("seen", n)) => marker.seen = n.parse().ok(),
                None if word == "ran" => marker.ran = true,
                _ => {}
            }
        }
        marker
    }

    /// The marker at `path`, if there is one.
    pub fn read(path: &Path) -> Option<Self> {
        std::fs::read_to_string(path).ok().map(|text| Self::parse(&text))
    }

    /// Replace the marker at `path` atomically (write, flush, rename), owned
    /// by `owner` when the agent runs as root.
    pub fn write(&self, path: &Path, owner: Option<(u32, u32)>) -> Result<(), MarkerError> {
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let _ = std::fs::remove_file(&tmp);
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            file.write_all(self.encode().as_bytes())?;
            file.sync_all()?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))?;
            }
            std::fs::rename(&tmp, path)
        };
        write().map_err(|source| MarkerError { path: path.to_path_buf(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_survives_the_round_trip() {
        let marker = Marker { primary: false, lineage: Some(7), served: Some(3), seen: Some(9), ran: true };
        assert_eq!(Marker::parse(&marker.encode()), marker);
        assert_eq!(Marker::parse("role=standby"), Marker { primary: false, ..Marker::default() });
    }

    #[test]
    fn an_unreadable_marker_is_read_cautiously() {
        assert!(Marker::parse("garbage").primary);
        assert_eq!(Marker::parse("role=primary lineage=x").lineage, None);
    }
}

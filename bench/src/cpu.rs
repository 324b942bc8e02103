//! CPU time of processes on this machine, from /proc: the operator's, and a
//! PostgreSQL server's with all its processes (the backup suite's figure of
//! what a backup costs the primary).

use std::process::Command;

use anyhow::{Context, Result};

/// The CPU seconds in one `/proc/<pid>/stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Times {
    parent: u32,
    /// user + system of the process itself.
    own: f64,
    /// user + system of the children it has waited for.
    reaped: f64,
}

fn parse_stat(stat: &str, ticks: f64) -> Result<Times> {
    // Fields after the command name (which may hold spaces and parentheses).
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize, name: &str| -> Result<f64> {
        fields.get(i).with_context(|| format!("no {name}"))?.parse::<f64>().with_context(|| name.to_string())
    };
    Ok(Times {
        parent: fields.get(1).context("no ppid")?.parse()?,
        own: (field(11, "utime")? + field(12, "stime")?) / ticks,
        reaped: (field(13, "cutime")? + field(14, "cstime")?) / ticks,
    })
}

fn times(pid: u32, ticks: f64) -> Result<Times> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("process {pid}"))?;
    parse_stat(&stat, ticks)
}

/// CPU seconds (user + system) process `pid` used so far.
pub fn process_seconds(pid: u32) -> Result<f64> {
    Ok(times(pid, clock_ticks())?.own)
}

/// CPU seconds a PostgreSQL server used so far: its postmaster, the
/// backends it has reaped, and every live child with what each of those
/// reaped (an archiver's `archive_command`, for one). A backend that exits
/// between two readings is counted at the second, through its parent.
pub fn server_seconds(postmaster: u32) -> Result<f64> {
    let ticks = clock_ticks();
    let root = times(postmaster, ticks)?;
    let mut total = root.own + root.reaped;
    for entry in std::fs::read_dir("/proc").context("listing /proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        // A process may exit between the listing and the reading.
        match times(pid, ticks) {
            Ok(child) if child.parent == postmaster => total += child.own + child.reaped,
            _ => {}
        }
    }
    Ok(total)
}

fn clock_ticks() -> f64 {
    // getconf is in every Debian base image; 100 is the Linux default.
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_parent_own_and_reaped_seconds() {
        let stat =
            "4242 (postgres: archiver (x)) S 4200 4200 4200 0 -1 4194560 10 0 0 0 150 50 30 20 20 0 1 0";
        let t = parse_stat(stat, 100.0).unwrap();
        assert_eq!(t, Times { parent: 4200, own: 2.0, reaped: 0.5 });
    }

    #[test]
    fn a_child_that_exited_is_counted_through_its_parent() {
        let me = std::process::id();
        let before = server_seconds(me).unwrap() - process_seconds(me).unwrap();
        let busy = "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done";
        assert!(Command::new("sh").args(["-c", busy]).status().unwrap().success());
        let after = server_seconds(me).unwrap() - process_seconds(me).unwrap();
        assert!(after - before > 0.05, "the child's CPU was not counted: {before} → {after}");
    }
}

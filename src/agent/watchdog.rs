//! The agent's watchdog: a separate, tiny process that kills the server's
//! whole process group once the agent has not renewed its Lease in time.
//!
//! The agent can stop making progress while its server keeps running (a
//! frozen or starved process, a lost connection to the API server). The
//! fencing argument (see [`crate::contract::timing`]) needs the server dead
//! by `FENCE_AFTER` after the last successful renewal was sent, whatever the
//! agent is doing, so it cannot rest on the agent's own loop. The watchdog
//! runs `hostwright agent watchdog` beside it, reads one-line commands from
//! its stdin and kills the server's process group:
//!
//! - when the deadline (`CLOCK_BOOTTIME`, shared by every process on the
//!   machine and running through suspends) passes;
//! - when told to fence at once (the agent lost its Lease);
//! - when its stdin closes: the agent died, and a server without its agent
//!   is a server nobody fences.
//!
//! Killing the group closes every client connection, so clients reconnect
//! through the Service to whichever member takes writes next.

use std::io::{BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::contract::timing::WATCHDOG_POLL;

/// Milliseconds on `CLOCK_BOOTTIME`.
pub fn boottime_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000 + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000_000
}

/// A command on the watchdog's stdin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Order {
    /// Kill the guarded group once `CLOCK_BOOTTIME` passes this (ms).
    Deadline(u64),
    /// The server's process group to guard; 0: none.
    Guard(u32),
    /// Kill the guarded group now, and every group guarded until the next
    /// deadline.
    Fence,
}

impl Order {
    fn encode(&self) -> String {
        match self {
            Order::Deadline(at) => format!("deadline {at}\n"),
            Order::Guard(group) => format!("guard {group}\n"),
            Order::Fence => "fence\n".into(),
        }
    }

    fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        match (words.next()?, words.next()) {
            ("deadline", Some(at)) => at.parse().ok().map(Order::Deadline),
            ("guard", Some(group)) => group.parse().ok().map(Order::Guard),
            ("fence", None) => Some(Order::Fence),
            _ => None,
        }
    }
}

/// What the watchdog knows. Pure, so its rules are unit tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Watch {
    pub deadline: u64,
    pub group: u32,
    pub agent_gone: bool,
}

impl Watch {
    pub fn apply(&mut self, command: &Order) {
        match command {
            Order::Deadline(at) => self.deadline = *at,
            Order::Guard(group) => self.group = *group,
            Order::Fence => self.deadline = 0,
        }
    }

    /// The group to kill now, if any.
    pub fn due(&self, now: u64) -> Option<u32> {
        (self.group != 0 && (self.agent_gone || now >= self.deadline)).then_some(self.group)
    }
}

/// The watchdog process: `hostwright agent watchdog`. Returns when its
/// agent is gone (and the server with it).
pub fn run() {
    let watch = Arc::new(Mutex::new(Watch::default()));
    let reader = {
        let watch = watch.clone();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if let Some(command) = Order::parse(&line) {
                    watch.lock().unwrap_or_else(|p| p.into_inner()).apply(&command);
                }
            }
            watch.lock().unwrap_or_else(|p| p.into_inner()).agent_gone = true;
        })
    };
    loop {
        let (due, gone) = {
            let mut w = watch.lock().unwrap_or_else(|p| p.into_inner());
            let due = w.due(boottime_ms());
            if due.is_some() {
                w.group = 0;
            }
            (due, w.agent_gone)
        };
        if let Some(group) = due {
            let why = if gone { "the agent is gone" } else { "the lease deadline passed" };
            // SAFETY: kill(2) with plain integers.
            let rc = unsafe { libc::kill(-(group as i32), libc::SIGKILL) };
            eprintln!("hostwright watchdog: {why}: killed the server's process group {group} (rc {rc})");
        }
        if gone {
            break;
        }
        std::thread::sleep(WATCHDOG_POLL);
    }
    drop(reader);
}

/// The agent's handle on its watchdog process.
pub struct Watchdog {
    child: Child,
    stdin: ChildStdin,
    /// The last group and deadline sent, to send them again to a new watchdog.
    state: Watch,
}

/// Why the watchdog could not be started.
#[derive(Debug, thiserror::Error)]
#[error("starting the watchdog ({program}): {source}")]
pub struct WatchdogError {
    pub program: String,
    #[source]
    pub source: std::io::Error,
}

impl Watchdog {
    /// Start `binary agent watchdog` (the agent's own executable).
    pub fn spawn(binary: &std::path::Path) -> Result<Self, WatchdogError> {
        let err = |source| WatchdogError { program: binary.display().to_string(), source };
        let mut child = Command::new(binary)
            .args(["agent", "watchdog"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(err)?;
        let stdin = child.stdin.take().ok_or_else(|| err(std::io::Error::other("no stdin pipe")))?;
        Ok(Self { child, stdin, state: Watch::default() })
    }

    fn send(&mut self, command: Order) {
        self.state.apply(&command);
        // A pipe the watchdog drains all the time never fills; a failed
        // write means a dead watchdog, which `alive` reports.
        let _ = self.stdin.write_all(command.encode().as_bytes());
        let _ = self.stdin.flush();
    }

    /// Kill the server at `at` (`CLOCK_BOOTTIME` ms) unless moved again.
    pub fn deadline(&mut self, at: u64) {
        if at != self.state.deadline {
            self.send(Order::Deadline(at));
        }
    }

    /// Guard the server whose process group is `group` (None: no server).
    pub fn guard(&mut self, group: Option<u32>) {
        let group = group.unwrap_or(0);
        if group != self.state.group {
            self.send(Order::Guard(group));
        }
    }

    /// Kill the guarded server now; any server guarded later dies at once
    /// too, until a new deadline.
    pub fn fence(&mut self) {
        self.send(Order::Fence);
    }

    /// The deadline now in force (0: none).
    pub fn current_deadline(&self) -> u64 {
        self.state.deadline
    }

    /// Whether the watchdog process still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A watchdog that died is replaced, told what the old one knew.
    pub fn respawn(&mut self, binary: &std::path::Path) -> Result<(), WatchdogError> {
        let state = self.state.clone();
        *self = Self::spawn(binary)?;
        self.send(Order::Deadline(state.deadline));
        self.send(Order::Guard(state.group));
        Ok(())
    }

    /// Wait a little for the watchdog to notice its agent is going.
    pub fn wait_briefly(&mut self) {
        for _ in 0..20 {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_survive_the_pipe() {
        for c in [Order::Deadline(123_456), Order::Guard(4321), Order::Fence] {
            assert_eq!(Order::parse(c.encode().trim()), Some(c));
        }
        assert_eq!(Order::parse("deadline soon"), None);
        assert_eq!(Order::parse("reboot"), None);
    }

    #[test]
    fn the_group_dies_at_the_deadline_on_a_fence_or_with_the_agent() {
        let mut w = Watch::default();
        assert_eq!(w.due(10), None, "nothing guarded, nothing to kill");
        w.apply(&Order::Guard(77));
        assert_eq!(w.due(0), Some(77), "no renewal yet: no deadline to live by");
        w.apply(&Order::Deadline(1_000));
        assert_eq!(w.due(999), None);
        assert_eq!(w.due(1_000), Some(77));
        w.apply(&Order::Deadline(5_000));
        w.apply(&Order::Fence);
        assert_eq!(w.due(1_001), Some(77), "a fence does not wait for the deadline");
        w.apply(&Order::Deadline(9_000));
        w.agent_gone = true;
        assert_eq!(w.due(1_002), Some(77), "a server outlives its agent by one poll at most");
    }

    #[test]
    fn boottime_moves_forward() {
        let a = boottime_ms();
        std::thread::sleep(Duration::from_millis(5));
        assert!(boottime_ms() >= a + 5);
    }
}

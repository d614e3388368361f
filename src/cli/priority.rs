//! The CPU priority of a CLI's process group: full while a client waits for it (starting, in
//! a turn), lowered while it is idle.
//!
//! Why: after its answer an idle CLI goes on with housekeeping of its own (about 0.2 s of CPU
//! in the next 1.5 s with 2.1.330: config backups, plugin sync, cleanup). On 2 cores a burst
//! of creates then starts its last CLIs behind the first ones' housekeeping: 20 CLIs kept
//! alive after their answer took 6.6 s in all against 5.6 s when each exits, and 5.7 s with
//! the idle ones niced (`bench --real-cli --only cli-floor`, `BENCH_FLOOR_KEEP_MS`,
//! `BENCH_FLOOR_IDLE_NICE`).
//!
//! Raising a priority back needs `CAP_SYS_NICE` (root has it) or an `RLIMIT_NICE` that
//! allows niceness 0; without either, lowering would be for good, so it is not done at all.

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether this process may give a CLI its full priority back (probed once).
fn can_raise() -> bool {
    static PROBED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PROBED.get_or_init(|| {
        let cap = caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SYS_NICE).unwrap_or(false);
        // SAFETY: getrlimit fills the struct it is given.
        let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
        let rlimit_ok = unsafe { libc::getrlimit(libc::RLIMIT_NICE, &mut limit) } == 0 && limit.rlim_cur >= 20;
        cap || rlimit_ok
    })
}

/// Set once a call failed: the CLIs stay as they are from then on.
static BROKEN: AtomicBool = AtomicBool::new(false);

/// The niceness for a CLI's process group (its pid: each CLI leads a group of its own).
#[derive(Debug, Clone, Copy)]
pub struct CliPriority {
    /// `cli.idle_nice`: 0 turns lowering off.
    idle_nice: i32,
}

impl CliPriority {
    pub fn new(idle_nice: i32) -> Self {
        Self { idle_nice: idle_nice.clamp(0, 19) }
    }

    fn active(&self) -> bool {
        self.idle_nice > 0 && !BROKEN.load(Ordering::Relaxed) && can_raise()
    }

    /// Nothing waits for the CLI: its group runs after those a client waits for.
    pub fn idle(&self, pgid: u32) {
        if self.active() {
            set(pgid, self.idle_nice);
        }
    }

    /// A client waits for the CLI (a turn is written to it): full priority.
    pub fn busy(&self, pgid: u32) {
        if self.active() {
            set(pgid, 0);
        }
    }
}

/// One `setpriority` on the group: a few microseconds, it never blocks.
fn set(pgid: u32, nice: i32) {
    // SAFETY: setpriority has no memory preconditions; a group that is gone is ESRCH.
    let failed = unsafe { libc::setpriority(libc::PRIO_PGRP, pgid, nice) } != 0;
    if failed {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) && !BROKEN.swap(true, Ordering::Relaxed) {
            log::warn!("cannot set a CLI's priority ({e}); cli.idle_nice is off from now on");
        }
    }
}

/// The niceness of a process (for tests: of every process in a group alike).
pub fn nice_of(pid: u32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the name: state(0) … priority(15) nice(16).
    stat[stat.rfind(')')? + 2..].split_whitespace().nth(16)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    #[test]
    fn an_idle_group_is_lowered_and_a_busy_one_raised_back_children_too() {
        if !can_raise() {
            eprintln!("skipped: this process may not raise priorities");
            return;
        }
        let mut child =
            std::process::Command::new("sh").args(["-c", "sleep 30 & wait"]).process_group(0).spawn().expect("sh");
        let pid = child.id();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let sleeper = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse::<u32>().ok()))
            .expect("the shell's child");
        let priority = CliPriority::new(10);
        priority.idle(pid);
        assert_eq!((nice_of(pid), nice_of(sleeper)), (Some(10), Some(10)));
        priority.busy(pid);
        assert_eq!((nice_of(pid), nice_of(sleeper)), (Some(0), Some(0)));
        CliPriority::new(0).idle(pid);
        assert_eq!(nice_of(pid), Some(0), "0 turns it off");
        let _ = child.kill();
        let _ = child.wait();
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
    }
}

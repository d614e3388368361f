//! Process groups of the CLIs, recorded in `<data dir>/cli-groups` so that a service killed
//! with SIGKILL (which skips every shutdown step) has its leftovers reaped at the next start.
//! The CLIs themselves die with the service (parent-death signal); their tools and MCP
//! servers, in the same process groups, would otherwise live on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const FILE: &str = "cli-groups";

/// The groups of this run: process group id → when it was spawned (epoch ms).
pub struct GroupRecord {
    path: PathBuf,
    groups: Mutex<HashMap<i32, i64>>,
}

impl GroupRecord {
    pub fn new(data_dir: &Path) -> Self {
        GroupRecord { path: data_dir.join(FILE), groups: Mutex::new(HashMap::new()) }
    }

    pub fn add(&self, pgid: i32, spawned_at_ms: i64) {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups.insert(pgid, spawned_at_ms);
        self.write(&groups);
    }

    pub fn remove(&self, pgid: i32) {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups.remove(&pgid);
        self.write(&groups);
    }

    fn write(&self, groups: &HashMap<i32, i64>) {
        let text: String = groups.iter().map(|(g, t)| format!("{g} {t}\n")).collect();
        let tmp = self.path.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &self.path)) {
            log::warn!("cannot record CLI process groups in {}: {e}", self.path.display());
        }
    }

    /// Kills what a previous run left in its recorded groups, then starts a fresh record.
    /// A process is killed only if it is in a recorded group *and* started after that group
    /// was spawned, so a group id the system has since reused is left alone.
    pub fn reap_previous_run(&self) -> usize {
        let recorded: Vec<(i32, i64)> = std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (g, t) = l.split_once(' ')?;
                Some((g.parse().ok()?, t.parse().ok()?))
            })
            .collect();
        let mut killed = 0;
        if !recorded.is_empty() {
            let me = std::process::id() as i32;
            for (pid, pgrp, started_ms) in processes() {
                let leftover = recorded.iter().any(|(g, spawned)| *g == pgrp && started_ms + 1000 >= *spawned);
                if leftover && pid != me && ours(pid) {
                    // SAFETY: plain syscall on a pid we just checked.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                    killed += 1;
                }
            }
        }
        self.write(&HashMap::new());
        killed
    }
}

/// A CLI's tools inherit its environment, whose TMPDIR names this service: a process without
/// it is not ours, whatever its group id.
fn ours(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| {
            env.split(|b| *b == 0).any(|var| var.starts_with(b"TMPDIR=") && contains(var, b"/claude-agent-http/"))
        })
        .unwrap_or(false)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every process: (pid, process group, start time in epoch ms).
fn processes() -> Vec<(i32, i32, i64)> {
    let boot_ms = boot_time_ms();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as i64;
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
            // After the name: state(0) ppid(1) pgrp(2) … starttime(19).
            let pgrp = fields.get(2)?.parse().ok()?;
            let start_ticks: i64 = fields.get(19)?.parse().ok()?;
            Some((pid, pgrp, boot_ms + start_ticks * 1000 / ticks))
        })
        .collect()
}

fn boot_time_ms() -> i64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse::<i64>().ok()))
        .map(|secs| secs * 1000)
        .unwrap_or(0)
}

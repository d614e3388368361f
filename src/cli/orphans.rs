//! Process groups of the CLIs, recorded in `<data dir>/cli-groups` so that a service killed
//! with SIGKILL (which skips every shutdown step) has its leftovers reaped at the next start.
//! The CLIs themselves die with the service (parent-death signal); their tools and MCP
//! servers would otherwise live on. Most stay in the CLI's process group; one that left it
//! (`setsid`, a daemonising server) still carries the session's `TMPDIR` in its environment,
//! so it is found by that, both when its CLI exits ([`kill_escapees`]) and at the next start.
//!
//! A child subreaper would not help here: once the service is killed its orphans go to init,
//! the subreaper's own parent chain, with nothing left to kill them. A process that leaves the
//! group *and* clears its environment is out of reach; the systemd unit's cgroup is the
//! backstop for that one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const FILE: &str = "cli-groups";

/// One CLI of this run: when it was spawned (epoch ms) and its session's temp dir (`TMPDIR`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spawned {
    at_ms: i64,
    tmp_dir: String,
}

/// The groups of this run, by process group id.
pub struct GroupRecord {
    path: PathBuf,
    groups: Mutex<HashMap<i32, Spawned>>,
}

impl GroupRecord {
    pub fn new(data_dir: &Path) -> Self {
        GroupRecord { path: data_dir.join(FILE), groups: Mutex::new(HashMap::new()) }
    }

    /// The record of one instance of a cluster (`cli-groups.<instance id>`): instances that
    /// share a data dir reap only what they started themselves.
    pub fn for_instance(data_dir: &Path, instance_id: &str) -> Self {
        let safe: String =
            instance_id.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
        GroupRecord { path: data_dir.join(format!("{FILE}.{safe}")), groups: Mutex::new(HashMap::new()) }
    }

    pub fn add(&self, pgid: i32, tmp_dir: &Path, spawned_at_ms: i64) {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups.insert(pgid, Spawned { at_ms: spawned_at_ms, tmp_dir: tmp_dir.display().to_string() });
        self.write(&groups);
    }

    pub fn remove(&self, pgid: i32) {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups.remove(&pgid);
        self.write(&groups);
    }

    fn write(&self, groups: &HashMap<i32, Spawned>) {
        let text: String = groups.iter().map(|(g, s)| format!("{g} {} {}\n", s.at_ms, s.tmp_dir)).collect();
        let tmp = self.path.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &self.path)) {
            log::warn!("cannot record CLI process groups in {}: {e}", self.path.display());
        }
    }

    /// Kills what a previous run left, then starts a fresh record: every process in a recorded
    /// group, and every process that carries a recorded session's `TMPDIR` (it left the
    /// group). A process is killed only if it started after its CLI was spawned, so a group
    /// id the system has since reused is left alone. Returns once the killed are gone (or
    /// after a bound), so nothing of the old run overlaps the new one.
    pub fn reap_previous_run(&self) -> usize {
        let recorded = parse_record(&std::fs::read_to_string(&self.path).unwrap_or_default());
        let mut killed = Vec::new();
        if !recorded.is_empty() {
            let me = std::process::id() as i32;
            for p in processes() {
                if p.pid == me {
                    continue;
                }
                let in_group = || recorded.iter().any(|(g, s)| *g == p.pgrp && started_since(&p, s));
                let escaped = || {
                    let env = environ(p.pid);
                    recorded.iter().any(|(_, s)| started_since(&p, s) && has_tmpdir(&env, &s.tmp_dir))
                };
                if (in_group() && ours(p.pid)) || escaped() {
                    kill(p.pid);
                    killed.push(p.pid);
                }
            }
        }
        self.write(&HashMap::new());
        wait_gone(&killed, std::time::Duration::from_secs(2));
        killed.len()
    }
}

/// Kills every process that still carries `tmp_dir` as its `TMPDIR` and started since
/// `since_ms`: what a CLI left running outside its process group. Blocking (a `/proc` scan).
pub fn kill_escapees(tmp_dir: &Path, since_ms: i64) -> usize {
    let spawned = Spawned { at_ms: since_ms, tmp_dir: tmp_dir.display().to_string() };
    let mut killed = 0;
    for p in processes() {
        if started_since(&p, &spawned) && has_tmpdir(&environ(p.pid), &spawned.tmp_dir) {
            kill(p.pid);
            killed += 1;
        }
    }
    killed
}

fn parse_record(text: &str) -> Vec<(i32, Spawned)> {
    text.lines()
        .filter_map(|l| {
            let mut fields = l.splitn(3, ' ');
            let pgid = fields.next()?.parse().ok()?;
            let at_ms = fields.next()?.parse().ok()?;
            // A record from before the temp dir was kept has none: groups only.
            let tmp_dir = fields.next().unwrap_or("").to_string();
            Some((pgid, Spawned { at_ms, tmp_dir }))
        })
        .collect()
}

/// A process's start time is the boot time, which `/proc/stat` gives in whole seconds (up to
/// 1 s early), plus clock ticks: two seconds of slack. With one, a process started a few ms
/// after its CLI was missed on a machine booted late in its second.
fn started_since(p: &Proc, spawned: &Spawned) -> bool {
    p.started_ms + 2000 >= spawned.at_ms
}

fn kill(pid: i32) {
    // SAFETY: plain syscall on a pid we just checked.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// Waits until none of `pids` runs (gone or a zombie), at most `limit`.
fn wait_gone(pids: &[i32], limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    let running = |pid: &i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"))
    };
    while pids.iter().any(running) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn environ(pid: i32) -> Vec<u8> {
    std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default()
}

/// Whether the environment block has `TMPDIR` at `dir` or below it.
fn has_tmpdir(env: &[u8], dir: &str) -> bool {
    !dir.is_empty()
        && env.split(|b| *b == 0).any(|var| {
            var.strip_prefix(b"TMPDIR=")
                .and_then(|v| v.strip_prefix(dir.as_bytes()))
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"))
        })
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

struct Proc {
    pid: i32,
    pgrp: i32,
    started_ms: i64,
}

/// Every process, with its group and start time.
fn processes() -> Vec<Proc> {
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
            Some(Proc { pid, pgrp, started_ms: boot_ms + start_ticks * 1000 / ticks })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmpdir_matches_the_dir_and_below_only() {
        let env = b"HOME=/root\0TMPDIR=/tmp/claude-agent-http/abc\0".to_vec();
        assert!(has_tmpdir(&env, "/tmp/claude-agent-http/abc"));
        assert!(!has_tmpdir(&env, "/tmp/claude-agent-http/ab"));
        assert!(!has_tmpdir(&env, ""));
        assert!(has_tmpdir(b"TMPDIR=/tmp/claude-agent-http/abc/sub", "/tmp/claude-agent-http/abc"));
        assert!(!has_tmpdir(b"XTMPDIR=/tmp/claude-agent-http/abc", "/tmp/claude-agent-http/abc"));
    }

    #[test]
    fn the_record_reads_old_and_new_lines() {
        let recorded = parse_record("12 1000 /tmp/claude-agent-http/a b\n13 2000\nbroken\n");
        assert_eq!(recorded.len(), 2);
        assert_eq!(recorded[0], (12, Spawned { at_ms: 1000, tmp_dir: "/tmp/claude-agent-http/a b".into() }));
        assert_eq!(recorded[1], (13, Spawned { at_ms: 2000, tmp_dir: String::new() }));
    }
}

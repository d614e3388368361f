//! Memory sampling: the service's own RSS (`memory-stats`) plus the RSS of every descendant
//! process (CLIs, their shells, MCP servers), read from `/proc`.

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemorySample {
    pub service_bytes: u64,
    pub children_bytes: u64,
    pub children: u32,
}

impl MemorySample {
    pub fn total_bytes(&self) -> u64 {
        self.service_bytes + self.children_bytes
    }

    pub fn total_mb(&self) -> u64 {
        self.total_bytes() / (1024 * 1024)
    }
}

/// Takes one sample now. Cost: one pass over `/proc/*/stat` (a few ms with thousands of processes).
pub fn sample() -> MemorySample {
    let service_bytes = memory_stats::memory_stats().map(|m| m.physical_mem as u64).unwrap_or(0);
    let (children_bytes, children) = descendants_rss(std::process::id());
    MemorySample { service_bytes, children_bytes, children }
}

/// Sum of VmRSS over every descendant of `root`, and how many there are.
pub fn descendants_rss(root: u32) -> (u64, u32) {
    let pids = descendants(root);
    let bytes = pids.iter().filter_map(|pid| rss_bytes(*pid)).sum();
    (bytes, pids.len() as u32)
}

/// Every process whose chain of parents leads to `root` (not `root` itself).
pub fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(ppid) = parent_pid(pid) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut found = Vec::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        if let Some(kids) = children.get(&pid) {
            for &kid in kids {
                found.push(kid);
                stack.push(kid);
            }
        }
    }
    found
}

/// The parent pid from `/proc/<pid>/stat` (the field after the parenthesised command name).
pub fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// Resident set size of one process, from `/proc/<pid>/status` (`VmRSS: N kB`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_spawned_child_and_its_memory() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let pid = child.id();
        let found = descendants(std::process::id());
        let rss = rss_bytes(pid);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found.contains(&pid));
        assert!(rss.unwrap() > 0);
        assert!(sample().service_bytes > 0);
    }
}

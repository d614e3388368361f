//! Memory sampling: the service's own RSS (`memory-stats`) plus the RSS of every descendant
//! process (CLIs, their shells, MCP servers), read from `/proc` once per sample.

use std::collections::HashMap;

/// One pass over `/proc`: every process's parent and resident set size.
#[derive(Debug, Clone, Default)]
pub struct ProcessTable {
    children: HashMap<u32, Vec<u32>>,
    rss: HashMap<u32, u64>,
}

impl ProcessTable {
    /// Reads `/proc` (a few ms with thousands of processes).
    pub fn read() -> ProcessTable {
        let mut table = ProcessTable::default();
        let Ok(entries) = std::fs::read_dir("/proc") else { return table };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            if let Some((ppid, rss)) = parent_and_rss(pid) {
                table.children.entry(ppid).or_default().push(pid);
                table.rss.insert(pid, rss);
            }
        }
        table
    }

    /// Every process whose chain of parents leads to `root` (not `root` itself).
    pub fn descendants(&self, root: u32) -> Vec<u32> {
        let mut found = Vec::new();
        let mut stack = vec![root];
        while let Some(pid) = stack.pop() {
            if let Some(kids) = self.children.get(&pid) {
                found.extend(kids);
                stack.extend(kids);
            }
        }
        found
    }

    /// Whether `pid` was alive when the table was read.
    pub fn has(&self, pid: u32) -> bool {
        self.rss.contains_key(&pid)
    }

    /// RSS of `root` and all its descendants.
    pub fn tree_rss(&self, root: u32) -> u64 {
        let own = self.rss.get(&root).copied().unwrap_or(0);
        own + self.descendants(root).iter().filter_map(|p| self.rss.get(p)).sum::<u64>()
    }
}

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

/// Takes one sample now, with the process table it was computed from (for per-session figures).
pub fn sample() -> (MemorySample, ProcessTable) {
    let service_bytes = memory_stats::memory_stats().map(|m| m.physical_mem as u64).unwrap_or(0);
    let table = ProcessTable::read();
    let descendants = table.descendants(std::process::id());
    let children_bytes = descendants.iter().filter_map(|p| table.rss.get(p)).sum();
    (MemorySample { service_bytes, children_bytes, children: descendants.len() as u32 }, table)
}

/// [`sample`] on the blocking pool: a pass over `/proc` reads two files per host process,
/// which must not hold up an actor thread.
pub async fn sample_off_thread() -> (MemorySample, ProcessTable) {
    tokio::task::spawn_blocking(sample).await.unwrap_or_default()
}

/// Parent pid (from `/proc/<pid>/stat`, after the parenthesised command name) and VmRSS.
fn parent_and_rss(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let ppid = after_name.split_whitespace().nth(1)?.parse().ok()?;
    Some((ppid, rss_bytes(pid).unwrap_or(0)))
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
        let (sample, table) = sample();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(table.descendants(std::process::id()).contains(&pid));
        assert!(table.tree_rss(pid) > 0);
        assert!(sample.service_bytes > 0 && sample.children >= 1);
    }
}

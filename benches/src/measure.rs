//! CPU time and memory of processes, from /proc.

use anyhow::{Context, Result};

/// user+system seconds of a process (all its threads).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// user+system seconds from a `/proc/…/stat` file (a process's, or `/proc/thread-self/stat`).
pub fn stat_cpu_seconds(path: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // Fields counted from the state (field 3): utime is 14, stime 15. /proc uses USER_HZ = 100.
    Ok((ticks(11) + ticks(12)) as f64 / 100.0)
}

pub fn cpu_of(pids: &[u32]) -> Result<f64> {
    pids.iter().map(|p| cpu_seconds(*p)).sum()
}

/// Resident set size in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

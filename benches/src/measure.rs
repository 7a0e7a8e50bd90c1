//! CPU time and memory of processes, from /proc.
//!
//! A tunnel end is a process and everything it forks (socat forks one child per connection):
//! CPU is the process's own time plus the time of its children, both the ones already reaped
//! (`cutime`/`cstime`) and the ones still alive; memory is the proportional set size (PSS) of
//! the whole tree, so that pages the children share are counted once.

use anyhow::{Context, Result};

/// user+system seconds of a process (all its threads), with its reaped children's.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let f = stat_fields(&format!("/proc/{pid}/stat"))?;
    // Fields counted from the state (field 3): utime 14, stime 15, cutime 16, cstime 17.
    Ok(f[11..15].iter().sum::<u64>() as f64 / USER_HZ)
}

/// /proc uses USER_HZ = 100.
const USER_HZ: f64 = 100.0;

/// The fields of a `/proc/…/stat` file after the command name, from the state on.
fn stat_fields(path: &str) -> Result<Vec<u64>> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|v| v.parse::<u64>().unwrap_or(0))
        .collect();
    if f.len() < 15 {
        anyhow::bail!("{path}: too few fields");
    }
    Ok(f)
}

/// user+system seconds from a `/proc/…/stat` file (a process's, or `/proc/thread-self/stat`).
pub fn stat_cpu_seconds(path: &str) -> Result<f64> {
    let f = stat_fields(path)?;
    Ok((f[11] + f[12]) as f64 / USER_HZ)
}

/// The live descendants of `pid` (children, their children, …), from each process's ppid.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            // The ppid is field 4, the second after the command name.
            if let Ok(f) = stat_fields(&format!("/proc/{p}/stat")) {
                parent_of.push((p, f[1] as u32));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, pp) in &parent_of {
            if pp == parent {
                out.push(p);
                frontier.push(p);
            }
        }
    }
    out
}

/// CPU seconds of each process of `pids` and of all its descendants, alive or reaped. A child
/// that exits between the two reads is missed (its time moves to the parent's `cutime` only once
/// reaped): measurements leave the tunnel quiet a moment before reading.
pub fn cpu_of(pids: &[u32]) -> Result<f64> {
    let mut total = 0.0;
    for &p in pids {
        total += cpu_seconds(p)?;
        total += descendants(p)
            .into_iter()
            .filter_map(|c| cpu_seconds(c).ok())
            .sum::<f64>();
    }
    Ok(total)
}

/// Proportional set size in KiB of `pid` and all its descendants.
pub fn pss_tree_kib(pid: u32) -> Result<u64> {
    let mut total = pss_kib(pid)?;
    total += descendants(pid)
        .into_iter()
        .filter_map(|c| pss_kib(c).ok())
        .sum::<u64>();
    Ok(total)
}

fn pss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no Pss in {path}"))
}

/// Number of processes in the tree of `pid` (itself included).
pub fn tree_size(pid: u32) -> usize {
    1 + descendants(pid).len()
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

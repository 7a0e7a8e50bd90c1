//! The bulk payload: WAL captured from a real `pgbench -T` run when PostgreSQL is installed
//! (bulk COPY from `pgbench -i` alone is unrealistically compressible), else the demo's
//! synthetic WAL-like sample. Cached under target/bench-corpus/.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub struct Corpus {
    pub bytes: Vec<u8>,
    pub source: String,
}

fn pg_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .collect();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .find(|d| d.join("pg_ctl").exists() && d.join("pgbench").exists())
}

fn sh(cmd: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {}", cmd.display()))?;
    if !out.status.success() {
        bail!(
            "{} {:?} failed: {}",
            cmd.display(),
            args,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs initdb, `pgbench -i -s 8`, then `pgbench -T 20 -c 4` and keeps the WAL segments written
/// during the -T run. PostgreSQL refuses to run as root, so as root this runs as `nobody`.
fn capture_wal(bin: &Path, dir: &Path) -> Result<Vec<u8>> {
    let data = dir.join("pgdata");
    std::fs::create_dir_all(dir)?;
    let as_root = rlimit_is_root();
    if as_root {
        sh(
            Path::new("chown"),
            &["-R", "nobody", &dir.display().to_string()],
        )?;
    }
    let run = |tool: &str, args: &[&str]| -> Result<()> {
        let exe = bin.join(tool).display().to_string();
        if as_root {
            let mut a = vec!["-u", "nobody", "--", exe.as_str()];
            a.extend_from_slice(args);
            sh(Path::new("runuser"), &a)
        } else {
            sh(Path::new(&exe), args)
        }
    };
    let d = data.display().to_string();
    let port = crate::tunnel::free_port()?.to_string();
    run("initdb", &["-D", &d, "-A", "trust", "-U", "postgres"])?;
    let opts = format!(
        "-p {port} -k {} -c listen_addresses='' -c max_wal_size=4GB -c checkpoint_timeout=1h",
        dir.display()
    );
    run(
        "pg_ctl",
        &[
            "-D",
            &d,
            "-o",
            &opts,
            "-w",
            "-l",
            &format!("{}/pg.log", dir.display()),
            "start",
        ],
    )?;
    let host = dir.display().to_string();
    let result = (|| -> Result<Vec<u8>> {
        run(
            "pgbench",
            &[
                "-h", &host, "-p", &port, "-U", "postgres", "-i", "-s", "8", "postgres",
            ],
        )?;
        let start = wal_lsn(&host, &port)?;
        run(
            "pgbench",
            &[
                "-h", &host, "-p", &port, "-U", "postgres", "-T", "20", "-c", "4", "postgres",
            ],
        )?;
        let end = wal_lsn(&host, &port)?;
        read_wal(&data.join("pg_wal"), start, end)
    })();
    let _ = run("pg_ctl", &["-D", &d, "-m", "immediate", "stop"]);
    result
}

fn rlimit_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// The current WAL insert position, as a byte offset.
fn wal_lsn(host: &str, port: &str) -> Result<u64> {
    let out = Command::new("psql")
        .args([
            "-h",
            host,
            "-p",
            port,
            "-U",
            "postgres",
            "-Atc",
            "SELECT pg_current_wal_insert_lsn()",
            "postgres",
        ])
        .output()
        .context("running psql")?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (hi, lo) = text
        .split_once('/')
        .with_context(|| format!("bad LSN {text:?}"))?;
    Ok((u64::from_str_radix(hi, 16)? << 32) | u64::from_str_radix(lo, 16)?)
}

/// The WAL bytes between two positions, read across 16 MiB segment files (timeline 1).
fn read_wal(wal: &Path, start: u64, end: u64) -> Result<Vec<u8>> {
    const SEG: u64 = 16 << 20;
    let mut out = Vec::with_capacity((end - start) as usize);
    let mut pos = start;
    while pos < end {
        let segno = pos / SEG;
        let name = format!("{:08X}{:08X}{:08X}", 1, segno / 256, segno % 256);
        let bytes = std::fs::read(wal.join(&name))
            .with_context(|| format!("reading WAL segment {name}"))?;
        let from = (pos % SEG) as usize;
        let to = ((end - segno * SEG).min(SEG)) as usize;
        out.extend_from_slice(bytes.get(from..to).context("short WAL segment")?);
        pos = segno * SEG + to as u64;
    }
    Ok(out)
}

pub fn load(workspace: &Path, replink: &Path) -> Result<Corpus> {
    let cache_dir = workspace.join("target/bench-corpus");
    std::fs::create_dir_all(&cache_dir)?;
    let cached = cache_dir.join("pgbench-T-wal.bin");
    if let Ok(bytes) = std::fs::read(&cached) {
        if bytes.len() > 4 << 20 {
            return Ok(Corpus {
                bytes,
                source: "WAL of pgbench -T 20 -c 4 (cached)".into(),
            });
        }
    }
    if let Some(bin) = pg_bin() {
        eprintln!("capturing WAL from pgbench -T (about 40 s, once)...");
        let tmp = tempfile::tempdir()?;
        match capture_wal(&bin, &tmp.path().join("pg")) {
            Ok(bytes) if bytes.len() > 4 << 20 => {
                std::fs::write(&cached, &bytes)?;
                return Ok(Corpus {
                    bytes,
                    source: "WAL of pgbench -T 20 -c 4".into(),
                });
            }
            Ok(bytes) => eprintln!(
                "pgbench produced only {} bytes of WAL; using the synthetic sample",
                bytes.len()
            ),
            Err(e) => eprintln!("WAL capture failed ({e:#}); using the synthetic sample"),
        }
    }
    let path = cache_dir.join("synthetic.bin");
    sh(
        replink,
        &[
            "demo",
            "--size-mib",
            "64",
            "--write-sample",
            &path.display().to_string(),
        ],
    )?;
    Ok(Corpus {
        bytes: std::fs::read(&path)?,
        source: "synthetic WAL-like sample (no PostgreSQL)".into(),
    })
}

/// zstd's own cost on the corpus at `level` (compress + decompress, CPU-s per GiB, from
/// `zstd -b`), and its compressed size.
pub fn zstd_codec(corpus: &[u8], level: i32) -> Result<(f64, u64)> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("corpus");
    std::fs::write(&file, corpus)?;
    let level_args: Vec<String> = if level < 0 {
        vec!["-b".into(), format!("--fast={}", -level)]
    } else {
        vec![format!("-b{level}")]
    };
    let out = Command::new("zstd")
        .args(&level_args)
        .arg("-i3")
        .arg(&file)
        .output()
        .context("running zstd -b (Debian package zstd)")?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let re = regex::Regex::new(r"->\s*(\d+) \(x[\d.]+\),\s*([\d.]+) MB/s,\s*([\d.]+) MB/s")
        .context("regex")?;
    let caps = re
        .captures_iter(&text)
        .last()
        .with_context(|| format!("cannot parse zstd -b output: {text}"))?;
    let size: u64 = caps[1].parse()?;
    let c: f64 = caps[2].parse()?;
    let d: f64 = caps[3].parse()?;
    let gib = (1u64 << 30) as f64;
    Ok((gib / (c * 1e6) + gib / (d * 1e6), size))
}

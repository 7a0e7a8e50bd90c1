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

/// CPU-s/GiB of the zstd CLI streaming the same bytes: `zstd -N | zstd -d` fed `total` bytes of
/// the corpus through a pipe, timed with the shell's `times` (user+system of both). Unlike
/// `zstd -b` (speed of one thread, in memory), this counts CPU the way the tunnels' figures do,
/// so it can sit in the same rotation and see the same noise.
pub fn zstd_stream_cpu(corpus: &[u8], level: i32, total: u64) -> Result<f64> {
    let lvl = if level < 0 {
        format!("--fast={}", -level)
    } else {
        format!("-{level}")
    };
    let script = format!("zstd -q -c {lvl} | zstd -q -d -c >/dev/null; times");
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running zstd (Debian package zstd)")?;
    let mut stdin = child.stdin.take().context("zstd stdin")?;
    crate::load::write_repeated(&mut stdin, corpus, total)?;
    drop(stdin);
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // `times`: the shell's own user/system on line 1, its children's on line 2 ("0m1.23s 0m0.45s").
    let children = text
        .lines()
        .nth(1)
        .with_context(|| format!("no `times` output: {text}"))?;
    let re = regex::Regex::new(r"(\d+)m([\d.]+)s").context("regex")?;
    let secs: f64 = re
        .captures_iter(children)
        .filter_map(|c| Some(c[1].parse::<f64>().ok()? * 60.0 + c[2].parse::<f64>().ok()?))
        .sum();
    Ok(secs / (total as f64 / (1u64 << 30) as f64))
}

/// CPU-s/GiB of zstd as replink drives it, in this process: the same library build, level,
/// window and input per frame (replink's own constants), streamed in 256 KiB pieces, then streamed
/// back through a decoder. This is the codec's share of a replink pair; the rest is the tunnel.
pub fn zstd_inprocess_cpu(corpus: &[u8], level: i32, total: u64) -> Result<f64> {
    use zstd_safe::{
        zstd_sys::ZSTD_EndDirective as D, CCtx, CParameter, DCtx, InBuffer, OutBuffer,
    };
    let err = |e: usize| anyhow::anyhow!("zstd: {}", zstd_safe::get_error_name(e));
    const FRAME: usize = replink::ZSTD_FRAME_INPUT;
    const PIECE: usize = 256 << 10;
    let before = crate::measure::stat_cpu_seconds("/proc/thread-self/stat")?;
    let mut cctx = CCtx::create();
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .map_err(err)?;
    cctx.set_parameter(CParameter::WindowLog(replink::ZSTD_WINDOW_LOG))
        .map_err(err)?;
    let mut dctx = DCtx::create();
    let mut wire = vec![0u8; PIECE + (64 << 10)];
    let mut plain = vec![0u8; PIECE];
    let (mut done, mut pos, mut in_frame, mut check) = (0u64, 0usize, 0usize, 0u64);
    while done < total {
        let n = PIECE
            .min(corpus.len() - pos)
            .min((total - done) as usize)
            .min(FRAME - in_frame);
        let mut src = InBuffer::around(&corpus[pos..pos + n]);
        let end = in_frame + n == FRAME || done + n as u64 == total;
        loop {
            let mut out = OutBuffer::around(&mut wire[..]);
            let directive = if end {
                D::ZSTD_e_end
            } else {
                D::ZSTD_e_continue
            };
            let left = cctx
                .compress_stream2(&mut out, &mut src, directive)
                .map_err(err)?;
            let produced = out.pos();
            // Decode what was produced, as the far end would.
            let mut zin = InBuffer::around(&wire[..produced]);
            loop {
                let mut pout = OutBuffer::around(&mut plain[..]);
                dctx.decompress_stream(&mut pout, &mut zin).map_err(err)?;
                let full = pout.pos() == PIECE;
                check += pout.pos() as u64;
                // A full output buffer may leave decoded bytes inside the decoder: call again.
                if zin.pos() == produced && !full {
                    break;
                }
            }
            if src.pos() == n && (!end || left == 0) {
                break;
            }
        }
        in_frame = if end { 0 } else { in_frame + n };
        pos = (pos + n) % corpus.len();
        done += n as u64;
    }
    let used = crate::measure::stat_cpu_seconds("/proc/thread-self/stat")? - before;
    // Every frame was ended and the decoder drained, so every byte must have come out.
    if check != total {
        anyhow::bail!("in-process zstd round trip gave {check} bytes for {total}");
    }
    Ok(used / (total as f64 / (1u64 << 30) as f64))
}

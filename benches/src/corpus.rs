//! The bulk payloads, generated here and cached under target/bench-corpus/: WAL captured from
//! a real `pgbench -T` run when PostgreSQL is installed (bulk COPY from `pgbench -i` alone is
//! unrealistically compressible), else the demo's synthetic WAL-like sample; and a Redis RDB
//! snapshot of a populated `redis-server` (`redis.rdb`, which the criterion benches read too).

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

/// The RDB corpus: `target/bench-corpus/redis.rdb`, made once by `capture_rdb`.
pub fn load_rdb(workspace: &Path) -> Result<Corpus> {
    let cached = workspace.join("target/bench-corpus/redis.rdb");
    if let Ok(bytes) = std::fs::read(&cached) {
        if bytes.len() > 4 << 20 {
            return Ok(Corpus {
                bytes,
                source: "Redis RDB (cached)".into(),
            });
        }
    }
    eprintln!("capturing a Redis RDB (a few seconds, once)...");
    let bytes = capture_rdb()?;
    std::fs::create_dir_all(workspace.join("target/bench-corpus"))?;
    std::fs::write(&cached, &bytes)?;
    Ok(Corpus {
        bytes,
        source: "Redis RDB".into(),
    })
}

/// A mix of Redis types as a cache and a session store hold them, as RESP commands for
/// `redis-cli --pipe`: user hashes, session strings (JSON with random tokens), sets, lists,
/// a sorted set. Deterministic (a fixed xorshift seed).
fn redis_commands(users: u64) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    const COUNTRIES: [&str; 8] = ["DE", "FR", "US", "BR", "JP", "IN", "NG", "SE"];
    const PLANS: [&str; 3] = ["free", "pro", "enterprise"];
    let mut out = Vec::new();
    let mut cmd = |args: &[&str]| {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
    };
    for i in 0..users {
        let (r1, r2, r3) = (rnd(), rnd(), rnd());
        let key = format!("user:{i}");
        let age = (18 + r1 % 60).to_string();
        let created = (1_600_000_000 + r1 % 100_000_000).to_string();
        let score = format!("{:.2}", (r2 % 100_000) as f64 / 100.0);
        cmd(&[
            "HSET",
            &key,
            "name",
            &format!("user{i}"),
            "email",
            &format!("user{i}@example{}.com", r1 % 97),
            "age",
            &age,
            "country",
            COUNTRIES[(r2 % 8) as usize],
            "plan",
            PLANS[(r3 % 3) as usize],
            "created",
            &created,
            "score",
            &score,
        ]);
        let session = format!(
            "{{\"user\":{i},\"token\":\"{r1:016x}{r2:016x}\",\"ip\":\"10.{}.{}.{}\",\"ua\":\"Mozilla/5.0 (X11; Linux x86_64)\",\"expires\":{}}}",
            r3 % 256,
            (r3 >> 8) % 256,
            (r3 >> 16) % 256,
            1_700_000_000 + r2 % 1_000_000
        );
        cmd(&["SET", &format!("session:{r1:012x}"), &session]);
        cmd(&["SADD", &format!("tags:{}", r2 % 2000), &key]);
        cmd(&[
            "RPUSH",
            &format!("events:{}", r3 % 1000),
            &format!("{created}|login|{key}|{}", r1 % 65536),
        ]);
        cmd(&["ZADD", "leaderboard", &score, &key]);
    }
    out
}

/// Starts a `redis-server` in a temporary directory, fills it (`redis_commands` plus
/// `DEBUG POPULATE` for plain cache strings), `SAVE`s, and returns the RDB file's bytes.
fn capture_rdb() -> Result<Vec<u8>> {
    let redis = crate::load::redis()?;
    let port = redis.1.port().to_string();
    let mut pipe = Command::new("redis-cli")
        .args(["-p", &port, "--pipe"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("running redis-cli (Debian package redis-tools)")?;
    {
        use std::io::Write;
        let mut stdin = pipe.stdin.take().context("redis-cli stdin")?;
        stdin.write_all(&redis_commands(150_000))?;
    }
    if !pipe.wait()?.success() {
        bail!("redis-cli --pipe failed");
    }
    let cli = |args: &[&str]| -> Result<()> {
        let mut a = vec!["-p", port.as_str()];
        a.extend_from_slice(args);
        sh(Path::new("redis-cli"), &a)
    };
    cli(&["DEBUG", "POPULATE", "100000", "cache", "64"])?;
    cli(&["SAVE"])?;
    let bytes = std::fs::read(redis.2.path().join("dump.rdb")).context("reading dump.rdb")?;
    if bytes.len() < 4 << 20 {
        bail!("the RDB is only {} bytes", bytes.len());
    }
    Ok(bytes)
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

//! Load generators and upstreams: bulk streams, held idle connections, redis-benchmark.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Accepts connections and reads them to the end with 256 KiB reads.
pub fn sink() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    Ok(addr)
}

/// Writes `total` bytes, the corpus repeated, in writes of at most 256 KiB.
pub fn write_repeated(w: &mut impl Write, corpus: &[u8], total: u64) -> std::io::Result<()> {
    let mut sent = 0u64;
    let mut pos = 0usize;
    while sent < total {
        let n = (256 * 1024)
            .min(corpus.len() - pos)
            .min((total - sent) as usize);
        w.write_all(&corpus[pos..pos + n])?;
        pos = (pos + n) % corpus.len();
        sent += n as u64;
    }
    Ok(())
}

/// Sends `total` bytes (the corpus, repeated) with 256 KiB writes, half-closes, waits for EOF.
fn upload(addr: SocketAddr, corpus: &[u8], total: u64) -> Result<()> {
    let mut c = TcpStream::connect(addr)?;
    write_repeated(&mut c, corpus, total)?;
    c.shutdown(Shutdown::Write)?;
    let mut rest = [0u8; 64];
    c.set_read_timeout(Some(Duration::from_secs(60)))?;
    while matches!(c.read(&mut rest), Ok(n) if n > 0) {}
    Ok(())
}

/// Which way the bulk bytes go.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Direction {
    /// Client → upstream (into the forward end: what replink compresses on the forward end).
    Up,
    /// Upstream → client (the upstream writes, as a primary streaming WAL to a replica).
    Down,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// `streams` concurrent connections moving `total` bytes between them (each `total/streams`),
/// in `dir`. Up goes to a `sink`, down comes from a `source`, whose address `addr` leads to.
/// Returns the wall-clock seconds until the last one finished.
pub fn bulk_streams(
    addr: SocketAddr,
    corpus: &Arc<Vec<u8>>,
    total: u64,
    streams: usize,
    dir: Direction,
) -> Result<f64> {
    let each = total / streams as u64;
    let start = Instant::now();
    let workers: Vec<_> = (0..streams)
        .map(|_| {
            let corpus = corpus.clone();
            std::thread::spawn(move || match dir {
                Direction::Up => upload(addr, &corpus, each),
                Direction::Down => download(addr, each),
            })
        })
        .collect();
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("bulk thread panicked"))??;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Asks a `source` for `n` bytes and reads them to the end; fewer or more is an error.
fn download(addr: SocketAddr, n: u64) -> Result<()> {
    let mut c = TcpStream::connect(addr)?;
    c.set_read_timeout(Some(Duration::from_secs(60)))?;
    c.write_all(&n.to_le_bytes())?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => got += k as u64,
            Err(e) => return Err(e).context("reading the download"),
        }
    }
    if got != n {
        bail!("download: {got} bytes for {n}");
    }
    Ok(())
}

/// An upstream that reads an 8-byte length from each connection, writes that many bytes of
/// `corpus` (repeated) with 256 KiB writes, and closes.
pub fn source(corpus: Arc<Vec<u8>>) -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let corpus = corpus.clone();
            std::thread::spawn(move || {
                let mut len = [0u8; 8];
                if c.read_exact(&mut len).is_ok() {
                    let _ = write_repeated(&mut c, &corpus, u64::from_le_bytes(len));
                }
                let _ = c.shutdown(Shutdown::Write);
                let mut rest = [0u8; 64];
                while matches!(c.read(&mut rest), Ok(n) if n > 0) {}
            });
        }
    });
    Ok(addr)
}

/// An upstream that keeps every connection, answers its first message, and counts them.
pub struct Holder {
    pub addr: SocketAddr,
    pub held: Arc<Mutex<Vec<TcpStream>>>,
}

pub fn holder() -> Result<Holder> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { return };
            // Each connection answers its own first request, so a connection that closes
            // early (a warm-up one) cannot leave another unanswered.
            if let Ok(mut answerer) = c.try_clone() {
                let _ = std::thread::Builder::new()
                    .stack_size(64 << 10)
                    .spawn(move || {
                        let mut b = [0u8; 256];
                        if matches!(answerer.read(&mut b), Ok(n) if n > 0) {
                            let _ = answerer.write_all(b"ok, and a small answer");
                        }
                    });
            }
            if let Ok(mut v) = h.lock() {
                v.push(c);
            }
        }
    });
    Ok(Holder { addr, held })
}

/// Opens `n` connections through `listen`, exchanges one small message each way on each, and
/// returns them (held open).
pub fn open_idle(listen: SocketAddr, holder: &Holder, n: usize) -> Result<Vec<TcpStream>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let c = TcpStream::connect(listen)?;
        c.set_read_timeout(Some(Duration::from_secs(30)))?;
        clients.push(c);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while holder.held.lock().map(|v| v.len()).unwrap_or(0) < n {
        if Instant::now() > deadline {
            bail!("only some connections reached the upstream");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for c in &mut clients {
        c.write_all(b"SELECT 1; -- a small request on an idle link")?;
    }
    for c in &mut clients {
        let mut b = [0u8; 256];
        c.read(&mut b).context("reading the answer")?;
    }
    Ok(clients)
}

/// A `redis-server` (killed on drop), its address and its directory (where `SAVE` writes).
pub struct Redis(Child, pub SocketAddr, pub tempfile::TempDir);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn redis() -> Result<Redis> {
    let dir = tempfile::tempdir()?;
    let port = crate::tunnel::free_port()?;
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .context("starting redis-server (Debian package redis-server)")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("redis-server did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Redis(child, addr, dir))
}

pub struct PingFigures {
    pub rps: f64,
    /// Mean latency: redis-benchmark prints it to the microsecond, while its percentiles come
    /// from histogram buckets 8 µs wide in this range.
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// `redis-benchmark -t ping` (PING_MBULK row of --csv) at concurrency `c`.
pub fn ping(addr: SocketAddr, c: u32, n: u32) -> Result<PingFigures> {
    let out = Command::new("timeout")
        .args([
            "120",
            "redis-benchmark",
            "-h",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-t",
            "ping",
            "-n",
            &n.to_string(),
            "-c",
            &c.to_string(),
            "--csv",
        ])
        .output()
        .context("running redis-benchmark (Debian package redis-tools)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with("\"PING_MBULK\""))
        .with_context(|| format!("no PING_MBULK row in redis-benchmark output: {text}"))?;
    let f: Vec<f64> = row
        .split(',')
        .skip(1)
        .filter_map(|v| v.trim_matches('"').parse().ok())
        .collect();
    if f.len() < 6 {
        bail!("unexpected redis-benchmark row: {row}");
    }
    // "rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms",…
    Ok(PingFigures {
        rps: f[0],
        mean_us: f[1] * 1000.0,
        p50_us: f[3] * 1000.0,
        p99_us: f[5] * 1000.0,
    })
}

/// For `secs`, `threads` clients each loop: connect to `addr`, send a Redis PING, read the
/// PONG, close. Returns how many such connections completed; any failure is an error.
pub fn connections(addr: SocketAddr, secs: f64, threads: usize) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || -> Result<u64> {
                let mut made = 0u64;
                while Instant::now() < deadline {
                    let mut c = TcpStream::connect(addr).context("connect")?;
                    c.set_read_timeout(Some(Duration::from_secs(10)))?;
                    c.write_all(b"PING\r\n")?;
                    let mut got = [0u8; 7];
                    c.read_exact(&mut got).context("reading +PONG")?;
                    if &got != b"+PONG\r\n" {
                        bail!("unexpected answer {:?}", String::from_utf8_lossy(&got));
                    }
                    made += 1;
                }
                Ok(made)
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    }
    Ok(total)
}

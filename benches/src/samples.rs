//! Payloads for the micro-benchmarks: a captured corpus from `target/bench-corpus/` when an
//! earlier run left one there, else a synthetic one made here (deterministic, no download).
//!
//! - WAL: `pgbench-T-wal.bin`, captured by the end-to-end runner (`replink-bench`) from a real
//!   `pgbench -T` run; else the demo's WAL-like sample (`replink demo --write-sample`, the same
//!   generator the runner falls back to).
//! - Redis: `redis.rdb`, a dump of a populated redis-server; else [`rdb_like`].

use std::path::{Path, PathBuf};

/// One payload and where it came from (printed with the results).
pub struct Sample {
    pub bytes: Vec<u8>,
    pub source: String,
}

/// `target/bench-corpus/` of this workspace (or of `$CARGO_TARGET_DIR`), where the runner
/// caches its captures.
pub fn corpus_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let benches = Path::new(env!("CARGO_MANIFEST_DIR"));
            benches.parent().unwrap_or(benches).join("target")
        });
    target.join("bench-corpus")
}

/// A captured file's first `len` bytes, if the file exists and holds at least `min` bytes.
fn captured(name: &str, len: usize, min: usize) -> Option<Sample> {
    let path = corpus_dir().join(name);
    let mut bytes = std::fs::read(&path).ok()?;
    if bytes.len() < min {
        return None;
    }
    let total = bytes.len();
    bytes.truncate(len);
    Some(Sample {
        source: format!(
            "{} (first {} of {} bytes)",
            path.display(),
            bytes.len(),
            total
        ),
        bytes,
    })
}

/// `len` bytes of Postgres WAL: captured pgbench WAL if there is some, else the demo's sample.
pub fn wal(len: usize) -> Sample {
    captured("pgbench-T-wal.bin", len, 1 << 20).unwrap_or_else(|| Sample {
        bytes: replink::bench_api::wal_like_sample(len),
        source: format!(
            "synthetic WAL-like sample, {len} bytes (no {}; `replink-bench` captures it where PostgreSQL is installed)",
            corpus_dir().join("pgbench-T-wal.bin").display()
        ),
    })
}

/// Up to `len` bytes of a Redis RDB dump: a captured one if there is one, else [`rdb_like`].
pub fn rdb(len: usize) -> Sample {
    captured("redis.rdb", len, 1 << 20).unwrap_or_else(|| Sample {
        bytes: rdb_like(len),
        source: format!(
            "synthetic RDB-like dump, {len} bytes (no {})",
            corpus_dir().join("redis.rdb").display()
        ),
    })
}

/// xorshift64: deterministic, so every run measures the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// RDB's length encoding: 6, 14 or 32 bits.
fn put_len(out: &mut Vec<u8>, n: usize) {
    if n < 1 << 6 {
        out.push(n as u8);
    } else if n < 1 << 14 {
        out.extend_from_slice(&[0x40 | (n >> 8) as u8, n as u8]);
    } else {
        out.push(0x80);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

/// A string object: integers that fit 32 bits use RDB's integer encodings, as Redis does.
fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    let int = std::str::from_utf8(s)
        .ok()
        .and_then(|t| t.parse::<i32>().ok());
    match int {
        Some(v) if v.to_string().as_bytes() == s => {
            if let Ok(b) = i8::try_from(v) {
                out.push(0xc0);
                out.extend_from_slice(&b.to_le_bytes());
            } else if let Ok(h) = i16::try_from(v) {
                out.push(0xc1);
                out.extend_from_slice(&h.to_le_bytes());
            } else {
                out.push(0xc2);
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        _ => {
            put_len(out, s.len());
            out.extend_from_slice(s);
        }
    }
}

/// A small hash as Redis 7 stores it: a listpack of field, value, field, value… in one string.
fn listpack(entries: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    for e in entries {
        // Strings under 64 bytes: 0b10xxxxxx length, the bytes, then the entry's back-length.
        let len = e.len().min(63);
        body.push(0x80 | len as u8);
        body.extend_from_slice(&e[..len]);
        body.push(1 + len as u8);
    }
    body.push(0xff);
    let mut lp = Vec::with_capacity(body.len() + 6);
    lp.extend_from_slice(&((body.len() + 6) as u32).to_le_bytes());
    lp.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    lp.extend_from_slice(&body);
    lp
}

const FIRST: [&str; 12] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "oscar",
];
const CITY: [&str; 6] = ["paris", "berlin", "madrid", "rome", "lisbon", "vienna"];

/// Deterministic bytes framed like a Redis 7 RDB dump of an application cache: the header and
/// aux fields, then keys such as `user:000123` (listpack hashes with the same field names each
/// time), `session:<hex>` strings with expiry times, `counter:N` integers and `page:N` cached
/// fragments; lengths and integers in RDB's encodings. zstd -1 shrinks it about as much as a
/// real dump of such data (×5 to ×30, depending on how much of it is random tokens).
pub fn rdb_like(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 4096);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    out.extend_from_slice(b"REDIS0011");
    for (k, v) in [
        ("redis-ver", "7.2.4"),
        ("redis-bits", "64"),
        ("ctime", "1764121200"),
        ("used-mem", "104857600"),
        ("aof-base", "0"),
    ] {
        out.push(0xfa);
        put_str(&mut out, k.as_bytes());
        put_str(&mut out, v.as_bytes());
    }
    out.extend_from_slice(&[0xfe, 0x00, 0xfb]);
    put_len(&mut out, 1_000_000);
    put_len(&mut out, 250_000);
    let now_ms: u64 = 1_764_121_200_000;
    let mut n = 0u64;
    while out.len() < len {
        n += 1;
        match rng.below(10) {
            0..=3 => {
                let id = rng.below(1_000_000);
                let first = FIRST[rng.below(FIRST.len() as u64) as usize];
                let email = format!("{first}.{id}@example.com");
                let age = (18 + rng.below(60)).to_string();
                let city = CITY[rng.below(CITY.len() as u64) as usize];
                // Accounts were created in id order.
                let created = (1_700_000_000 + id * 60).to_string();
                out.push(16); // RDB_TYPE_HASH_LISTPACK
                put_str(&mut out, format!("user:{id:06}").as_bytes());
                let lp = listpack(&[
                    b"name",
                    first.as_bytes(),
                    b"email",
                    email.as_bytes(),
                    b"age",
                    age.as_bytes(),
                    b"city",
                    city.as_bytes(),
                    b"created_at",
                    created.as_bytes(),
                ]);
                put_str(&mut out, &lp);
            }
            4 => {
                out.push(0xfc); // expiry in milliseconds
                out.extend_from_slice(&(now_ms + rng.below(86_400_000)).to_le_bytes());
                out.push(0); // RDB_TYPE_STRING
                let token = format!("{:016x}", rng.next());
                put_str(&mut out, format!("session:{token}").as_bytes());
                let user = rng.below(1_000_000);
                let value = format!(
                    "{{\"user\":\"user:{user:06}\",\"role\":\"reader\",\"csrf\":\"{:016x}\"}}",
                    rng.next()
                );
                put_str(&mut out, value.as_bytes());
            }
            5 | 6 => {
                out.push(0);
                put_str(&mut out, format!("counter:{}", n % 50_000).as_bytes());
                put_str(&mut out, rng.below(1000).to_string().as_bytes());
            }
            _ => {
                out.push(0);
                let page = rng.below(5_000);
                put_str(&mut out, format!("page:/articles/{page}").as_bytes());
                let mut html = String::from("<div class=\"article\"><h1>Article ");
                html.push_str(&page.to_string());
                html.push_str("</h1><p class=\"meta\">by ");
                html.push_str(FIRST[(page % 12) as usize]);
                html.push_str(
                    "</p><ul class=\"tags\"><li>replication</li><li>postgres</li></ul></div>",
                );
                put_str(&mut out, html.as_bytes());
            }
        }
    }
    out.truncate(len.saturating_sub(9));
    out.push(0xff);
    out.extend_from_slice(&[0u8; 8]); // checksum 0: not computed, as Redis allows
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdb_like_is_framed_and_compresses_like_a_dump() {
        let rdb = rdb_like(4 << 20);
        assert_eq!(rdb.len(), 4 << 20);
        assert!(rdb.starts_with(b"REDIS0011\xfa"));
        assert_eq!(rdb[rdb.len() - 9], 0xff);
        assert_eq!(rdb, rdb_like(4 << 20), "deterministic");
        let z = zstd_safe::compress(&mut vec![0u8; rdb.len()][..], &rdb, 1)
            .unwrap_or_else(|e| panic!("{}", zstd_safe::get_error_name(e)));
        let ratio = rdb.len() as f64 / z as f64;
        println!("zstd -1 ratio {ratio:.1}");
        assert!((5.0..=30.0).contains(&ratio), "zstd -1 ratio {ratio:.1}");
    }
}

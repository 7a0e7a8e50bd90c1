//! Deterministic payloads and random write sizes.

use std::io::Write;

use rand::Rng;

/// A deterministic byte stream from a seed: random (incompressible) or text-like
/// (compressible, like WAL or a SQL dump). The stream does not depend on how it is cut into
/// [`Gen::fill`] calls, so a receiver can regenerate and compare chunk by chunk.
pub struct Gen {
    state: u64,
    compressible: bool,
    pending: Vec<u8>,
    pos: usize,
}

impl Gen {
    pub fn new(seed: u64, compressible: bool) -> Gen {
        // splitmix64 of the seed, so that nearby seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Gen {
            state: z | 1,
            compressible,
            pending: Vec::with_capacity(160),
            pos: 0,
        }
    }

    fn next_u64(&mut self) -> u64 {
        // xorshift64
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    fn refill(&mut self) {
        self.pending.clear();
        self.pos = 0;
        let r = self.next_u64();
        if self.compressible {
            let _ = writeln!(
                self.pending,
                "INSERT INTO pgbench_accounts (aid, bid, abalance, filler) VALUES ({}, {}, {}, '{:>24}'); -- lsn {:X}/{:08X}",
                r % 10_000_000,
                (r >> 24) % 100,
                ((r >> 32) % 200_001) as i64 - 100_000,
                "",
                (r >> 56) & 0xf,
                r & 0xffff_ffff,
            );
        } else {
            self.pending.extend_from_slice(&r.to_le_bytes());
        }
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() {
            if self.pos == self.pending.len() {
                if !self.compressible {
                    // Whole words straight into the buffer: same bytes as through `pending`.
                    while buf.len() - i >= 8 {
                        let w = self.next_u64();
                        buf[i..i + 8].copy_from_slice(&w.to_le_bytes());
                        i += 8;
                    }
                    if i == buf.len() {
                        return;
                    }
                }
                self.refill();
            }
            let n = (self.pending.len() - self.pos).min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
            self.pos += n;
            i += n;
        }
    }
}

/// A write (or read) size drawn log-uniformly from 1 B to `max`.
pub fn chunk_len(rng: &mut impl Rng, max: usize) -> usize {
    let max = max.max(1);
    let e: f64 = rng.gen_range(0.0..=(max as f64).log2());
    (e.exp2() as usize).clamp(1, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_does_not_depend_on_chunking() {
        for compressible in [false, true] {
            let mut whole = vec![0u8; 100_003];
            Gen::new(7, compressible).fill(&mut whole);
            let mut g = Gen::new(7, compressible);
            let mut pieces = Vec::new();
            let mut rng = rand::thread_rng();
            while pieces.len() < whole.len() {
                let n = chunk_len(&mut rng, 5000).min(whole.len() - pieces.len());
                let mut b = vec![0u8; n];
                g.fill(&mut b);
                pieces.extend_from_slice(&b);
            }
            assert!(pieces == whole, "compressible={compressible}");
            assert_ne!(whole, {
                let mut other = vec![0u8; whole.len()];
                Gen::new(8, compressible).fill(&mut other);
                other
            });
        }
    }
}

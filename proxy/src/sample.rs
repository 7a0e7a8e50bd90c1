//! The demo's synthetic WAL-like sample, also the micro-benchmarks' stand-in when no real
//! pgbench WAL was captured. Compiled into the `replink` binary (for `replink demo`) and, with
//! the `bench` feature, into the library (`bench_api`): one generator, so the end-to-end runner
//! (`replink demo --write-sample`) and `cargo bench` measure the same bytes.

/// Deterministic bytes shaped like Postgres WAL from a pgbench run: 8 KiB pages of XLOG records
/// (headers with rising LSNs and xids, relation and block numbers, pgbench_accounts tuples with
/// random balances and blank-padded filler), compressible about as real WAL is.
pub fn wal_like(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8192);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut lsn: u64 = 0x0100_0000;
    let mut xid: u32 = 1000;
    while out.len() < len {
        // Page header: magic, info, timeline, page address.
        out.extend_from_slice(&0xD110u16.to_le_bytes());
        out.extend_from_slice(&[0, 0, 1, 0, 0, 0]);
        out.extend_from_slice(&(out.len() as u64 + 0x0100_0000).to_le_bytes());
        out.extend_from_slice(&[0u8; 8]);
        let page_end = out.len() + 8192 - 24;
        while out.len() + 160 < page_end {
            let r = next();
            xid += (r & 3) as u32;
            let prev = lsn;
            lsn += 160 + (r >> 60);
            // XLogRecord header: total length, xid, prev LSN, info, rmgr, crc.
            out.extend_from_slice(&159u32.to_le_bytes());
            out.extend_from_slice(&xid.to_le_bytes());
            out.extend_from_slice(&prev.to_le_bytes());
            out.extend_from_slice(&[0x10, 10, 0, 0]);
            out.extend_from_slice(&((r >> 8) as u32).to_le_bytes());
            // Block reference: tablespace, database, relation, block number.
            out.extend_from_slice(&[0, 0x20, 0x40, 0]);
            out.extend_from_slice(&1663u32.to_le_bytes());
            out.extend_from_slice(&16384u32.to_le_bytes());
            out.extend_from_slice(&(16397 + (r >> 62) as u32).to_le_bytes());
            out.extend_from_slice(&(((r >> 20) % 16_000) as u32).to_le_bytes());
            // Heap tuple: aid, bid, abalance, then the 84-byte blank filler.
            let aid = ((r >> 24) % 800_000) as u32 + 1;
            out.extend_from_slice(&aid.to_le_bytes());
            out.extend_from_slice(&(aid / 100_000 + 1).to_le_bytes());
            out.extend_from_slice(&(((r >> 40) % 10_000) as i32 - 5000).to_le_bytes());
            out.extend_from_slice(&[b' '; 84]);
            out.extend_from_slice(&[0u8; 7]);
        }
        out.resize(page_end, 0);
    }
    out.truncate(len);
    out
}

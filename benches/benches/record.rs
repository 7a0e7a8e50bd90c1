//! The userspace TLS record path after the handshake: `Sealer::seal_in_place` and
//! `Opener::open_in_place` on full 16 KiB application-data records, as the relay seals and opens
//! them when kernel TLS is not in use (this host has none).
//!
//! The keys are the real thing: replink's own client and server configs (built from a throwaway
//! PKI by `replink::tls::client_config` / `server_configs`, one AEAD allowed at a time through
//! `TlsFiles::ciphers`, as `--ciphers` does) handshake in memory, then the client's send
//! secrets go to a `Sealer` and the server's receive secrets to an `Opener`, as replink does
//! after its handshake. Throughput is in plaintext bytes (16384 per record).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use replink::config::{Cipher, TlsFiles};
use replink::tls::record::{Opener, Sealer, MAX_PLAINTEXT};
use rustls::{
    ClientConnection, Connection, ConnectionTrafficSecrets, ContentType, ServerConnection,
};
use rustls_pki_types::ServerName;

const SNI: &str = "pg.repl.test";
/// Records sealed back to back before a timed batch of opens (1 MiB of plaintext).
const OPEN_BATCH: u64 = 64;

/// Moves all pending TLS bytes from `from` to `to`, which processes them.
fn pump(from: &mut Connection, to: &mut Connection) {
    let mut buf = Vec::new();
    while from.wants_write() {
        if let Err(e) = from.write_tls(&mut buf) {
            panic!("write_tls: {e}");
        }
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        if let Err(e) = to.read_tls(&mut rd) {
            panic!("read_tls: {e}");
        }
        if let Err(e) = to.process_new_packets() {
            panic!("handshake: {e}");
        }
    }
}

/// A replink client/server pair handshaken in memory with only `cipher` allowed; returns the
/// negotiated suite's name, the client's send key as a `Sealer` and the server's receive key as
/// an `Opener`.
fn negotiated(cipher: Cipher) -> (String, Sealer, Opener) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let pki = replink_pki::ThrowawayPki::mint(dir.path(), &[SNI])
        .unwrap_or_else(|e| panic!("minting a PKI: {e}"));
    let files = |cert: &std::path::Path, key: &std::path::Path| TlsFiles {
        cert: cert.to_owned(),
        key: key.to_owned(),
        ca: pki.ca_pem.clone(),
        tls12: false,
        ciphers: vec![cipher],
        crls: Vec::new(),
        allow_expired_crl: false,
    };
    let server_cfg = replink::tls::server_configs(&files(&pki.server_cert, &pki.server_key))
        .unwrap_or_else(|e| panic!("server config: {e}"))
        .with_zstd;
    let client_cfg =
        replink::tls::client_config(&files(&pki.client_cert, &pki.client_key), true, None, true)
            .unwrap_or_else(|e| panic!("client config: {e}"));
    let name = ServerName::try_from(SNI).unwrap_or_else(|e| panic!("{e}"));
    let mut client = Connection::from(
        ClientConnection::new(client_cfg, name).unwrap_or_else(|e| panic!("client: {e}")),
    );
    let mut server = Connection::from(
        ServerConnection::new(server_cfg).unwrap_or_else(|e| panic!("server: {e}")),
    );
    while client.is_handshaking() || server.is_handshaking() {
        pump(&mut client, &mut server);
        pump(&mut server, &mut client);
    }
    let suite = format!(
        "{:?} {:?}",
        client
            .protocol_version()
            .unwrap_or_else(|| panic!("no version")),
        client
            .negotiated_cipher_suite()
            .unwrap_or_else(|| panic!("no suite"))
            .suite()
    );
    let version = client
        .protocol_version()
        .unwrap_or_else(|| panic!("no version"));
    let c = client
        .dangerous_extract_secrets()
        .unwrap_or_else(|e| panic!("client secrets: {e}"));
    let s = server
        .dangerous_extract_secrets()
        .unwrap_or_else(|e| panic!("server secrets: {e}"));
    let (seq, secrets) = c.tx;
    let sealer = Sealer::new(version, seq, secrets).unwrap_or_else(|e| panic!("sealer: {e}"));
    let (seq, secrets): (u64, ConnectionTrafficSecrets) = s.rx;
    let opener = Opener::new(version, seq, secrets).unwrap_or_else(|e| panic!("opener: {e}"));
    (suite, sealer, opener)
}

/// Seals `n` full records back to back into `wire` (cleared first), payload `plain`.
fn seal_batch(sealer: &mut Sealer, plain: &[u8], n: u64, wire: &mut Vec<u8>) {
    let prefix = sealer.prefix_len();
    let slot = prefix + MAX_PLAINTEXT + sealer.suffix_len();
    wire.clear();
    wire.resize(slot * n as usize, 0);
    let mut pos = 0;
    for _ in 0..n {
        wire[pos + prefix..pos + prefix + MAX_PLAINTEXT].copy_from_slice(plain);
        match sealer.seal_in_place(
            ContentType::ApplicationData,
            &mut wire[pos..],
            MAX_PLAINTEXT,
        ) {
            Ok(len) => pos += len,
            Err(e) => panic!("seal: {e}"),
        }
    }
    wire.truncate(pos);
}

/// Opens every record of `wire` in place; returns the plaintext bytes.
fn open_all(opener: &mut Opener, wire: &mut [u8]) -> usize {
    let mut pos = 0;
    let mut plain = 0;
    while pos < wire.len() {
        match opener.open_in_place(&mut wire[pos..]) {
            Ok(Some(r)) => {
                plain += r.payload.len();
                pos += r.record_len;
            }
            Ok(None) => panic!("incomplete record at {pos}"),
            Err(e) => panic!("open: {e}"),
        }
    }
    plain
}

fn record(c: &mut Criterion) {
    // Plaintext as the relay would carry it: compressed bytes look random; use the SHA-like
    // output of a xorshift.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let plain: Vec<u8> = (0..MAX_PLAINTEXT)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut g = c.benchmark_group("tls-record");
    g.throughput(Throughput::Bytes(MAX_PLAINTEXT as u64));
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(3));
    for (label, cipher) in [
        ("aes128gcm", Cipher::Aes128Gcm),
        ("chacha20poly1305", Cipher::Chacha20Poly1305),
    ] {
        let (suite, mut sealer, mut opener) = negotiated(cipher);
        // The pair's keys match, byte-exact, before anything is timed.
        let mut wire = Vec::new();
        seal_batch(&mut sealer, &plain, 2, &mut wire);
        let mut pos = 0;
        for _ in 0..2 {
            match opener.open_in_place(&mut wire[pos..]) {
                Ok(Some(r)) => {
                    assert!(wire[pos + r.payload.start..pos + r.payload.end] == plain[..]);
                    pos += r.record_len;
                }
                other => panic!("first records did not open: {other:?}"),
            }
        }
        println!("tls-record/{label}: negotiated {suite} (replink's configs, in memory)");
        // Records must be opened in the order they were sealed: seal a batch (untimed), then time
        // the opens. Before the seal bench, which moves the sealer on alone.
        g.bench_function(BenchmarkId::new("open-16KiB", label), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(OPEN_BATCH);
                    seal_batch(&mut sealer, &plain, n, &mut wire);
                    let t = Instant::now();
                    let got = open_all(&mut opener, &mut wire);
                    spent += t.elapsed();
                    assert_eq!(got, n as usize * MAX_PLAINTEXT);
                    left -= n;
                }
                spent
            })
        });
        let prefix = sealer.prefix_len();
        let mut slot = vec![0u8; prefix + MAX_PLAINTEXT + sealer.suffix_len()];
        slot[prefix..prefix + MAX_PLAINTEXT].copy_from_slice(&plain);
        g.bench_function(BenchmarkId::new("seal-16KiB", label), |b| {
            b.iter(|| {
                // Seals whatever the slot holds (the last round's ciphertext): same cost.
                match sealer.seal_in_place(ContentType::ApplicationData, &mut slot, MAX_PLAINTEXT) {
                    Ok(len) => len,
                    Err(e) => panic!("seal: {e}"),
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, record);
criterion_main!(benches);

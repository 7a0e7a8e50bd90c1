//! Many concurrent two-way transfers through a reverse+forward pair, byte-exact, for each
//! compression setting and io driver; the log lines must account for every byte.

use std::collections::BTreeMap;
use std::time::Instant;

use rand::{rngs::StdRng, Rng, SeedableRng};
use replink_tests::*;

const MIB: u64 = 1 << 20;

/// 0 B .. 64 MiB - 1, log-uniform.
fn log_uniform_size(rng: &mut StdRng) -> u64 {
    let e: f64 = rng.gen_range(0.0..=26.0);
    e.exp2() as u64 - 1
}

fn transfers(tag: u64, big_compressible: bool) -> Vec<Transfer> {
    let seed = run_seed() ^ tag;
    eprintln!("sizes from REPLINK_TEST_SEED={} (tag {tag})", run_seed());
    let mut rng = StdRng::seed_from_u64(seed);
    let base = rng.gen::<u64>() & !0xffff;
    let mut sizes: Vec<(u64, u64, bool)> = vec![
        // Empty both ways, and empty one way.
        (0, 0, false),
        (0, 0, true),
        (0, 0, false),
        (0, 3 * MIB, true),
        (2 * MIB + 5, 0, false),
        (1, 0, false),
        (0, 1, true),
        // The long one (downstream, like WAL from the primary) and a big upload.
        (MIB + 7, 256 * MIB, big_compressible),
        (64 * MIB, 333, !big_compressible),
    ];
    for i in 0..16 {
        let up = log_uniform_size(&mut rng);
        let down = log_uniform_size(&mut rng);
        sizes.push((up, down, i % 2 == 1));
    }
    sizes
        .into_iter()
        .enumerate()
        .map(|(i, (up, down, c))| Transfer::new(base + i as u64, up, down).compressible(c))
        .collect()
}

fn data_paths(
    compression: &'static str,
    io_driver: &'static str,
    tag: u64,
    big_compressible: bool,
) {
    let started = Instant::now();
    let pki = Pki::new();
    let server = StreamServer::start();
    let (mut reverse, mut forward) = start_pair_on(&pki, server.addr(), compression, io_driver);

    let plan = transfers(tag, big_compressible);
    let handles: Vec<_> = plan
        .iter()
        .map(|&t| {
            let addr = forward.addr();
            std::thread::spawn(move || run_transfer(addr, t))
        })
        .collect();
    let reports: Vec<ClientReport> = handles
        .into_iter()
        .map(|h| h.join().expect("transfer thread"))
        .collect();
    let errors: Vec<String> = reports
        .iter()
        .filter_map(|r| verify_transfer(&server, r).err())
        .collect();
    assert!(
        errors.is_empty(),
        "{} of {} transfers failed:\n{}",
        errors.len(),
        plan.len(),
        errors.join("\n")
    );
    let bytes: u64 = plan.iter().map(|t| t.up + t.down).sum();
    eprintln!(
        "{} transfers, {} MiB, in {:?}",
        plan.len(),
        bytes / MIB,
        started.elapsed()
    );

    // Logs: one clean `closed` line per connection on each end, with exact byte counts.
    forward.wait_count(r#"closed.*reason="?done"#, plan.len());
    reverse.wait_count(r#"closed.*reason="?done"#, plan.len());
    assert_eq!(forward.count("refused|WARN|ERROR"), 0, "{}", forward.log());
    assert_eq!(reverse.count("refused|WARN|ERROR"), 0, "{}", reverse.log());

    let zstd = compression == "zstd";
    let lines = forward.conn_lines();
    let mut problems = Vec::new();
    for r in &reports {
        let t = r.transfer;
        let peer = r.local_addr.expect("connected").to_string();
        let Some(l) = lines.iter().find(|l| l.get("peer") == Some(peer.as_str())) else {
            problems.push(format!(
                "no forward log line for peer={peer} (seed {})",
                t.seed
            ));
            continue;
        };
        let (plain_out, wire_out) = (l.num("plain_to_tls"), l.num("wire_out"));
        let (plain_in, wire_in) = (l.num("tls_to_plain"), l.num("wire_in"));
        let mut bad = |what: &str| problems.push(format!("{what}: {}", l.raw));
        if l.get("zstd") != Some(if zstd { "true" } else { "false" }) {
            bad("compression not as configured");
        }
        if plain_out != HEADER_LEN as u64 + t.up {
            bad(&format!("plain_to_tls != {} + {}", HEADER_LEN, t.up));
        }
        if plain_in != t.down {
            bad(&format!("tls_to_plain != {}", t.down));
        }
        let shrinks = |plain: u64, wire: u64| wire * 2 < plain;
        let no_blowup = |plain: u64, wire: u64| wire <= plain + plain / 50 + 4096;
        if zstd && t.is_compressible() {
            if t.up >= MIB && !shrinks(plain_out, wire_out) {
                bad("compressible upload not compressed (wire_out*2 >= plain_to_tls)");
            }
            if t.down >= MIB && !shrinks(plain_in, wire_in) {
                bad("compressible download not compressed (wire_in*2 >= tls_to_plain)");
            }
        }
        if !no_blowup(plain_out, wire_out) || !no_blowup(plain_in, wire_in) {
            bad("wire bytes exceed plaintext by more than 2%");
        }
        if !zstd && (wire_out < plain_out || wire_in < plain_in) {
            bad("fewer wire bytes than plaintext with compression off");
        }
    }
    // The reverse end does not know the client's port: compare byte counts as multisets.
    let mut want: BTreeMap<(u64, u64), usize> = BTreeMap::new();
    for t in &plan {
        *want.entry((HEADER_LEN as u64 + t.up, t.down)).or_default() += 1;
    }
    let mut have: BTreeMap<(u64, u64), usize> = BTreeMap::new();
    for l in reverse.conn_lines() {
        if l.get("route") != Some(ROUTE) {
            problems.push(format!("reverse line without route={ROUTE}: {}", l.raw));
        }
        *have
            .entry((l.num("tls_to_plain"), l.num("plain_to_tls")))
            .or_default() += 1;
    }
    if want != have {
        problems.push(format!(
            "reverse (tls_to_plain, plain_to_tls) counts {have:?} != expected {want:?}"
        ));
    }
    assert!(
        problems.is_empty(),
        "log problems:\n{}",
        problems.join("\n")
    );
    reverse.assert_running();
    forward.assert_running();
    eprintln!("done in {:?}", started.elapsed());
}

#[test]
fn zstd_io_uring() {
    data_paths("zstd", "io-uring", 1, true);
}

#[test]
fn zstd_epoll() {
    data_paths("zstd", "epoll", 2, false);
}

#[test]
fn off_io_uring() {
    data_paths("off", "io-uring", 3, false);
}

#[test]
fn off_epoll() {
    data_paths("off", "epoll", 4, true);
}

/// A client that reconnects resumes its TLS 1.3 session: the first connection through the pair
/// is a full handshake, the ones after it resume (whichever worker accepts them), and both ends
/// say so in their log lines.
#[test]
fn reconnects_resume_the_tls_session() {
    reconnects(&[], true);
}

/// With `--session-resumption off` on the forward end, every connection is a full handshake
/// (the reverse end still issues tickets; the forward end keeps none).
#[test]
fn reconnects_without_session_resumption_are_full_handshakes() {
    reconnects(&["--session-resumption", "off"], false);
}

fn reconnects(extra_forward: &[&str], resume: bool) {
    let pki = Pki::new();
    let server = StreamServer::start();
    let opts = PairOptions {
        extra_forward: strings(extra_forward),
        ..PairOptions::default()
    };
    let (reverse, forward) = start_pair(&pki, server.addr(), &opts);
    const ROUNDS: usize = 4;
    for i in 0..ROUNDS {
        let t = Transfer::new(run_seed() ^ (0x5e55 + i as u64), 1000, 1000);
        let report = run_transfer(forward.addr(), t);
        verify_transfer(&server, &report).expect("exact bytes both ways");
        forward.wait_count(r#"closed.*reason="?done"#, i + 1);
        reverse.wait_count(r#"closed.*reason="?done"#, i + 1);
    }
    let mut want = vec![Some("false".to_string())];
    want.extend(std::iter::repeat_n(Some(resume.to_string()), ROUNDS - 1));
    for p in [&forward, &reverse] {
        let got: Vec<Option<String>> = p
            .conn_lines()
            .iter()
            .map(|l| l.get("resumed").map(str::to_owned))
            .collect();
        assert_eq!(got, want, "resumed= per connection:\n{}", p.log());
    }
}

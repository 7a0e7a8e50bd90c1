use replink_tests::*;

/// ~20 concurrent transfers, sizes from 0 B to `big`, both directions at once, random write
/// chunking, half-closes; every byte checked with SHA-256 on both sides.
fn many_transfers(compression: &'static str, io_driver: &'static str, big: u64) {
    let pki = Pki::new();
    let server = StreamServer::start();
    let opts = PairOptions {
        compression,
        io_driver,
        ..PairOptions::default()
    };
    let (reverse, forward) = start_pair(&pki, server.addr, &opts);
    let mut sizes: Vec<(u64, u64)> = vec![(0, 0), (0, 1), (1, 0), (big, 3), (5, big / 4)];
    let mut r = 0x1234_5678_u64 ^ big;
    for _ in 0..15 {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        // Log-uniform sizes up to 16 MiB.
        let up = (1u64 << (r % 25)) + (r >> 40) % 1000;
        let down = (1u64 << ((r >> 8) % 25)) + (r >> 50) % 777;
        sizes.push((up, down));
    }
    let handles: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, &(up, down))| {
            let addr = forward.addr;
            let seed = 1000 + i as u64;
            let compressible = i % 2 == 1;
            std::thread::spawn(move || transfer(addr, seed, up, down, compressible))
        })
        .collect();
    let mut errors = Vec::new();
    for h in handles {
        if let Err(e) = h.join().expect("transfer thread") {
            errors.push(e);
        }
    }
    for (i, &(up, _)) in sizes.iter().enumerate() {
        if let Err(e) = check_upstream(&server, 1000 + i as u64, up, i % 2 == 1) {
            errors.push(e);
        }
    }
    assert!(errors.is_empty(), "transfers failed: {errors:#?}");
    // One clean `closed` line per connection on both ends.
    eventually("every connection logged as done", || {
        forward.count(r#"closed.*reason="?done"#) == sizes.len()
            && reverse.count(r#"closed.*reason="?done"#) == sizes.len()
    });
    if compression == "zstd" {
        assert!(
            forward.count("zstd=true") == sizes.len(),
            "compression was not negotiated"
        );
        // The big compressible upload must shrink on the wire.
        let re = regex::Regex::new(r"plain_to_tls=(\d+) wire_out=(\d+)").unwrap();
        let shrunk = forward
            .log()
            .lines()
            .filter_map(|l| re.captures(l))
            .any(|c| {
                let plain: u64 = c[1].parse().unwrap();
                let wire: u64 = c[2].parse().unwrap();
                plain >= big && wire * 3 < plain
            });
        assert!(shrunk, "no large compressible transfer was compressed");
    } else {
        assert_eq!(forward.count("zstd=false"), sizes.len());
    }
}

#[test]
fn zstd_io_uring() {
    many_transfers("zstd", "io-uring", 256 << 20);
}

#[test]
fn zstd_epoll() {
    many_transfers("zstd", "epoll", 64 << 20);
}

#[test]
fn off_io_uring() {
    many_transfers("off", "io-uring", 64 << 20);
}

#[test]
fn off_epoll() {
    many_transfers("off", "epoll", 64 << 20);
}

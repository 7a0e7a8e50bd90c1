//! The ClientHello parser replink routes by (`replink_ebpf::parse_client_hello`: the reverse
//! end's router, and the userspace side of the in-kernel classifier's check), on real
//! ClientHellos: rustls ones from the shared corpus (`ebpf/corpus`, what a replink forward end
//! sends), one from `openssl s_client` (OpenSSL 3.0, as libpq sends; `benches/data`), one split
//! across two records and one with 40 extensions. Time per whole ClientHello.

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use replink_ebpf::{parse_client_hello, Parse};

fn hellos() -> Vec<(&'static str, Vec<u8>, Option<&'static str>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    [
        (
            "rustls",
            "ebpf/corpus/routed-rustls-exact.bin",
            Some("pg.repl.test"),
        ),
        (
            "openssl-s_client",
            "benches/data/clienthello-openssl-s_client.bin",
            Some("pg.repl.test"),
        ),
        (
            "two-records",
            "ebpf/corpus/fragmented-two-records.bin",
            None,
        ),
        (
            "forty-extensions",
            "ebpf/corpus/limit-forty-extensions.bin",
            None,
        ),
    ]
    .into_iter()
    .map(|(label, path, sni)| {
        let bytes = std::fs::read(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        (label, bytes, sni)
    })
    .collect()
}

fn sni(c: &mut Criterion) {
    let mut g = c.benchmark_group("sni-parse");
    g.warm_up_time(Duration::from_millis(300));
    g.measurement_time(Duration::from_secs(2));
    for (label, bytes, want) in hellos() {
        // What it parses to, checked before it is timed.
        let hello = match parse_client_hello(&bytes) {
            Ok(Parse::Complete(h)) => h,
            other => panic!("{label}: {other:?}"),
        };
        assert_eq!(
            hello.record_bytes,
            bytes.len(),
            "{label}: one whole ClientHello"
        );
        if let Some(want) = want {
            assert_eq!(hello.server_name.as_deref(), Some(want), "{label}");
        }
        println!(
            "sni-parse/{label}: {} bytes, server_name {:?}, ALPN {:?}",
            bytes.len(),
            hello.server_name,
            hello
                .alpn
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect::<Vec<_>>()
        );
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| parse_client_hello(std::hint::black_box(&bytes)))
        });
    }
    g.finish();
}

criterion_group!(benches, sni);
criterion_main!(benches);

//! zstd encode/decode through replink's per-connection codec (`ZstdEncoder`/`ZstdDecoder`),
//! fed as the relay feeds it, on a WAL corpus and a Redis-RDB corpus at the default level.
//!
//! Encode: a fresh encoder (one connection's context), the corpus in reads of the relay's bulk
//! read size (256 KiB), the output in 16 KiB record payloads closed after each read, as the
//! relay's record writer does (sealing is left to the `record` bench); frames end every
//! `ZSTD_FRAME_INPUT` bytes by themselves, the last one when the connection ends. `bulk` never
//! flushes (the relay's case while more input is waiting); `flush-per-read` flushes after each
//! read (an interactive link). Decode: a fresh decoder fed those record payloads one by one into
//! a 256 KiB output buffer emptied when full, as the relay's open side does. Throughput is in
//! plaintext bytes.

use std::ops::Range;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use replink::bench_api::{
    CodecError, Sink, ZstdDecoder, ZstdEncoder, DEFAULT_ZSTD_LEVEL, RELAY_READ,
};
use replink_benches::samples::{self, Sample};

/// The TLS record payload limit (the relay fills records up to it).
const RECORD: usize = replink::tls::record::MAX_PLAINTEXT;
/// Corpus bytes per iteration: eight 2 MiB frames.
const CORPUS_LEN: usize = 16 << 20;

/// The relay's record buffer without the sealing: zstd writes straight into 16 KiB record
/// payloads laid out back to back; `close` ends the open record (the relay does after each read).
struct Records {
    buf: Vec<u8>,
    used: usize,
    fill: usize,
    records: Vec<Range<usize>>,
}

impl Records {
    fn new(capacity: usize) -> Records {
        Records {
            buf: vec![0; capacity],
            used: 0,
            fill: 0,
            records: Vec::new(),
        }
    }

    fn reset(&mut self) {
        self.used = 0;
        self.fill = 0;
        self.records.clear();
    }

    fn close(&mut self) {
        if self.fill > 0 {
            self.records.push(self.used..self.used + self.fill);
            self.used += self.fill;
            self.fill = 0;
        }
    }

    fn wire_len(&self) -> usize {
        self.used + self.fill
    }
}

impl Sink for Records {
    type Error = CodecError;

    fn space(&mut self) -> Result<&mut [u8], CodecError> {
        let end = self.used + RECORD;
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        Ok(&mut self.buf[self.used + self.fill..end])
    }

    fn advance(&mut self, n: usize) -> Result<(), CodecError> {
        self.fill += n;
        if self.fill >= RECORD {
            self.close();
        }
        Ok(())
    }
}

/// One connection's worth: the corpus in relay-sized reads through a fresh encoder.
fn encode(corpus: &[u8], flush_each_read: bool, out: &mut Records) -> Result<(), CodecError> {
    out.reset();
    let mut enc = ZstdEncoder::new(DEFAULT_ZSTD_LEVEL);
    for read in corpus.chunks(RELAY_READ) {
        enc.compress(read, out)?;
        if flush_each_read {
            enc.flush(out)?;
        }
        out.close();
    }
    enc.end_frame(out)?;
    out.close();
    Ok(())
}

/// Decodes the record payloads into a relay-sized buffer; `sink` sees each full buffer (the
/// relay writes it to the plaintext side). Returns the plaintext length.
fn decode(wire: &Records, out: &mut Vec<u8>, mut sink: impl FnMut(&[u8])) -> usize {
    let mut dec = ZstdDecoder::new();
    let mut total = 0;
    for r in &wire.records {
        let mut input = &wire.buf[r.clone()];
        loop {
            let used = match dec.decompress(input, out) {
                Ok(n) => n,
                Err(e) => panic!("decoding our own stream: {e}"),
            };
            input = &input[used..];
            if out.len() == out.capacity() {
                total += out.len();
                sink(out);
                out.clear();
                continue;
            }
            if input.is_empty() {
                break;
            }
        }
    }
    total += out.len();
    sink(out);
    out.clear();
    assert!(!dec.in_frame(), "stream ended inside a frame");
    total
}

fn corpus_group(c: &mut Criterion, name: &str, sample: Sample) {
    let corpus = &sample.bytes;
    let mut wire = Records::new(corpus.len() + corpus.len() / 8 + (1 << 20));
    if let Err(e) = encode(corpus, false, &mut wire) {
        panic!("encoding the {name} corpus: {e}");
    }
    // Byte-exact round trip before anything is timed.
    let mut out = Vec::with_capacity(RELAY_READ);
    let mut back = Vec::with_capacity(corpus.len());
    decode(&wire, &mut out, |b| back.extend_from_slice(b));
    assert!(back == *corpus, "{name}: round trip differs");
    println!(
        "zstd/{name}: corpus {}\n  {} -> {} bytes (x{:.2}) at level {DEFAULT_ZSTD_LEVEL}, window 2^{}, \
         {} MiB frames, {} KiB reads, {} records",
        sample.source,
        corpus.len(),
        wire.wire_len(),
        corpus.len() as f64 / wire.wire_len() as f64,
        replink::ZSTD_WINDOW_LOG,
        replink::ZSTD_FRAME_INPUT >> 20,
        RELAY_READ >> 10,
        wire.records.len(),
    );

    let mut g = c.benchmark_group(format!("zstd/{name}"));
    g.throughput(Throughput::Bytes(corpus.len() as u64));
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(4));
    let mut scratch = Records::new(wire.buf.len());
    for (label, flush) in [("encode/bulk", false), ("encode/flush-per-read", true)] {
        g.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| {
                if let Err(e) = encode(corpus, flush, &mut scratch) {
                    panic!("encoding: {e}");
                }
                scratch.wire_len()
            })
        });
    }
    g.bench_function(BenchmarkId::from_parameter("decode"), |b| {
        b.iter(|| {
            decode(&wire, &mut out, |b| {
                std::hint::black_box(b);
            })
        })
    });
    g.finish();
}

fn codec(c: &mut Criterion) {
    corpus_group(c, "wal", samples::wal(CORPUS_LEN));
    corpus_group(c, "rdb", samples::rdb(CORPUS_LEN));
}

criterion_group!(benches, codec);
criterion_main!(benches);

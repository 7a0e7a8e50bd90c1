//! `ZstdDecoder` (proxy/src/codec.rs) fed arbitrary bytes by a peer, driven as the relay's
//! `OpenPump::inflate` drives it (input in TLS-record-sized pieces, a fixed output buffer
//! drained whenever it fills): an error or output, never a panic, never a loop without
//! progress, never output past the buffer's capacity, and never more heap than the peer window
//! cap (`WINDOW_LOG_MAX`, 8 MiB) plus zstd's blocks allows, whatever window or legacy format a
//! frame declares. A decompression bomb is only output: the buffer bounds it (the run stops
//! after `MAX_OUTPUT` bytes to keep executions fast).
//!
//! The heap is read with glibc's `mallinfo2`, which counts libzstd's own `malloc`s too (a
//! Rust allocator hook would not see them).
#![no_main]

use libfuzzer_sys::fuzz_target;
use replink::fuzz_api::{ZstdDecoder, WINDOW_LOG_MAX};

/// Stop decoding a bomb after this much output.
const MAX_OUTPUT: usize = 64 << 20;
/// The window the peer may make us hold, plus zstd's block buffers and context (measured
/// around 0.3 MiB) and slack.
const HEAP_LIMIT: usize = (1 << WINDOW_LOG_MAX) + (2 << 20);

fuzz_target!(|data: &[u8]| {
    // The first byte picks the output buffer and the input piece sizes, the rest is the
    // stream. A raw zstd frame as a seed still starts a frame one byte in, and the magic
    // number is easy to find for the fuzzer.
    let Some((&shape, stream)) = data.split_first() else {
        return;
    };
    let out_cap = [1, 7, 4096, 16384, 65536, 256 * 1024][usize::from(shape % 6)];
    let piece = [1, 5, 4096, 16384, 16384, usize::MAX][usize::from(shape / 6 % 6)];
    let mut out = Vec::with_capacity(out_cap);
    let base = heap_in_use();
    let mut dec = ZstdDecoder::new();
    let mut total = 0usize;
    for mut input in stream.chunks(piece.min(stream.len().max(1))) {
        loop {
            let before = (input.len(), out.len());
            if input.is_empty() && !dec.in_frame() {
                break;
            }
            let used = match dec.decompress(input, &mut out) {
                Ok(used) => used,
                Err(_) => return,
            };
            assert!(used <= input.len());
            assert!(out.capacity() == out_cap, "the output buffer grew");
            let heap = heap_in_use().saturating_sub(base);
            assert!(heap <= HEAP_LIMIT, "decoder holds {heap} bytes of heap");
            input = &input[used..];
            let full = out.len() == out.capacity();
            if !full && !input.is_empty() {
                panic!("decompress returned early: {used} used, {} out", out.len());
            }
            // Given input and room, a call takes input or gives output.
            assert!(
                before.0 == 0 || used > 0 || out.len() > before.1,
                "no progress"
            );
            if full {
                total += out.len();
                if total >= MAX_OUTPUT {
                    return;
                }
                out.clear();
                continue;
            }
            break;
        }
    }
});

fn heap_in_use() -> usize {
    // SAFETY: mallinfo2 takes no arguments and only reads glibc's allocator statistics.
    let m = unsafe { libc::mallinfo2() };
    m.uordblks + m.hblkhd
}

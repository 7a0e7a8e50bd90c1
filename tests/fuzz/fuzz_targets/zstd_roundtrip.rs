//! Round trip through our own codec: `ZstdEncoder` with arbitrary writes, flushes, frame ends
//! and output slot sizes, then `ZstdDecoder` with an arbitrary output buffer, releasing its
//! context between frames as the relay does when the link goes quiet. The bytes must come
//! back exactly, and the decoder must be out of a frame exactly where the encoder ended one.
//!
//! Input: a control byte (level, slot size, output buffer), then the plaintext; each byte of
//! the plaintext also says, in its low bits, what the encoder does after it (nothing most of
//! the time; a write ends there; a write and a flush; a write and a frame end).
#![no_main]

use libfuzzer_sys::fuzz_target;
use replink::fuzz_api::{CodecError, Sink, ZstdDecoder, ZstdEncoder};

struct VecSink {
    buf: Vec<u8>,
    slot: usize,
}

impl Sink for VecSink {
    type Error = CodecError;
    fn space(&mut self) -> Result<&mut [u8], CodecError> {
        let used = self.buf.len();
        self.buf.resize(used + self.slot, 0);
        Ok(&mut self.buf[used..])
    }
    fn advance(&mut self, n: usize) -> Result<(), CodecError> {
        assert!(n <= self.slot);
        let keep = self.buf.len() - self.slot + n;
        self.buf.truncate(keep);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, plain)) = data.split_first() else {
        return;
    };
    let level = [1, 3, -5][usize::from(control % 3)];
    let slot = [1, 13, 16384][usize::from(control / 3 % 3)];
    let out_cap = [1, 100, 65536][usize::from(control / 9 % 3)];

    let mut enc = ZstdEncoder::new(level);
    let mut sink = VecSink {
        buf: Vec::new(),
        slot,
    };
    // Where each complete frame ends in the compressed stream.
    let mut frame_ends = Vec::new();
    let mut start = 0;
    for (i, &b) in plain.iter().enumerate() {
        let action = if b & 0x0f == 0 { b >> 4 & 3 } else { 0 };
        if action == 0 && i + 1 < plain.len() {
            continue;
        }
        enc.compress(&plain[start..=i], &mut sink)
            .expect("compress");
        start = i + 1;
        match action {
            2 => enc.flush(&mut sink).expect("flush"),
            3 => {
                enc.end_frame(&mut sink).expect("end_frame");
                assert!(!enc.holds_context());
                frame_ends.push(sink.buf.len());
            }
            _ => {}
        }
    }
    enc.end_frame(&mut sink).expect("end_frame");
    frame_ends.push(sink.buf.len());

    let mut dec = ZstdDecoder::new();
    let mut got = Vec::new();
    let mut out = Vec::with_capacity(out_cap);
    let mut pos = 0;
    for end in frame_ends {
        while pos < end {
            let used = dec
                .decompress(&sink.buf[pos..end], &mut out)
                .expect("our own stream decodes");
            pos += used;
            got.extend_from_slice(&out);
            out.clear();
        }
        // Drain what the last call left in zstd's buffers.
        while dec.in_frame() {
            let before = got.len();
            dec.decompress(&[], &mut out).expect("drain");
            got.extend_from_slice(&out);
            out.clear();
            assert!(
                got.len() > before || !dec.in_frame(),
                "stuck inside a frame"
            );
        }
        // A frame boundary: the relay frees the context here when the link is quiet.
        if pos > 0 {
            assert!(dec.release() || !dec.holds_context());
        }
    }
    assert!(
        got == plain,
        "round trip changed {} bytes into {}",
        plain.len(),
        got.len()
    );
});

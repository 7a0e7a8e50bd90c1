//! zstd stream compression, one encoder and one decoder per direction per connection.
//!
//! The compressed stream is a sequence of zstd frames carried as TLS application data. The
//! encoder flushes when its input side has nothing more ready (full blocks under bulk load, no
//! latency added to a lone request). Contexts are given back when the link goes quiet (the
//! relay's timer calls [`ZstdEncoder::end_frame`] and [`ZstdDecoder::release`]), so an idle
//! compressed link holds no zstd state at all.
//!
//! Frames end every [`FRAME_INPUT`] bytes of input, with a window of the same size. zstd's
//! streaming compressor copies input into a buffer of window + one block; when that buffer
//! wraps, matches cross the wrap and zstd switches to its "external dictionary" match finder,
//! about half as fast (measured: 25% of the forward end's CPU on pgbench WAL). A frame that
//! never outgrows the buffer never wraps, and its average usable history (1 MiB) is still
//! larger than level 1's default 512 KiB window.
//!
//! A context given back goes to a small per-core pool ([`POOL_KEEP`] of each kind) that the
//! next connection on that core takes from: creating one costs about a tenth of a resumed
//! connection's CPU (allocation, zeroing, page faults). A pool unused for [`POOL_IDLE`] is
//! emptied, so a quiet process still holds no zstd state.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use zstd_safe::zstd_sys::ZSTD_EndDirective;
use zstd_safe::{CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer, ResetDirective};

/// Largest window a peer may make us allocate: 2^23 = 8 MiB per decoding connection. Our own
/// encoder uses 2^ENCODER_WINDOW_LOG.
pub const WINDOW_LOG_MAX: u32 = 23;
/// Our encoder's window: 2 MiB.
pub const ENCODER_WINDOW_LOG: u32 = 21;
/// Input bytes per frame: one window, so zstd's input buffer never wraps inside a frame.
pub const FRAME_INPUT: usize = 1 << ENCODER_WINDOW_LOG;

/// Contexts of each kind a core keeps for its next connections.
pub const POOL_KEEP: usize = 4;
/// A core's pools are emptied after this long without a context taken from them.
pub const POOL_IDLE: Duration = Duration::from_secs(5);

thread_local! {
    static CCTX_POOL: RefCell<Vec<CCtx<'static>>> = const { RefCell::new(Vec::new()) };
    static DCTX_POOL: RefCell<Vec<DCtx<'static>>> = const { RefCell::new(Vec::new()) };
    static POOL_TAKEN: Cell<bool> = const { Cell::new(false) };
}

// `try_with` throughout: a context dropped while the thread is being torn down is just freed.

/// A context from this core's pool, if it has one; counts as a use of the pools.
fn pooled<T: 'static>(pool: &'static std::thread::LocalKey<RefCell<Vec<T>>>) -> Option<T> {
    let _ = POOL_TAKEN.try_with(|t| t.set(true));
    pool.try_with(|p| p.borrow_mut().pop()).ok().flatten()
}

/// Gives a context back to this core's pool, once `reset` cleared its stream and parameters,
/// or frees it when the pool is full (or zstd refuses the reset).
fn give_back<T: 'static>(
    pool: &'static std::thread::LocalKey<RefCell<Vec<T>>>,
    mut ctx: T,
    reset: impl FnOnce(&mut T) -> bool,
) {
    if reset(&mut ctx) {
        let mut slot = Some(ctx);
        let _ = pool.try_with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_KEEP {
                p.extend(slot.take());
            }
        });
        if slot.is_none() {
            return;
        }
    }
    crate::buffers::note_released();
}

fn give_back_cctx(c: CCtx<'static>) {
    give_back(&CCTX_POOL, c, |c| {
        c.reset(ResetDirective::SessionAndParameters).is_ok()
    });
}

fn give_back_dctx(d: DCtx<'static>) {
    give_back(&DCTX_POOL, d, |d| {
        d.reset(ResetDirective::SessionAndParameters).is_ok()
    });
}

/// Empties this core's pools if no context was taken from them since the last call (the
/// worker calls it every [`POOL_IDLE`]). Returns whether anything was freed.
pub fn drain_idle_pools() -> bool {
    if POOL_TAKEN.try_with(|t| t.replace(false)).unwrap_or(true) {
        return false;
    }
    let freed = CCTX_POOL
        .try_with(|p| std::mem::take(&mut *p.borrow_mut()).len())
        .unwrap_or(0)
        + DCTX_POOL
            .try_with(|p| std::mem::take(&mut *p.borrow_mut()).len())
            .unwrap_or(0);
    freed > 0
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("zstd compression failed: {0}")]
    Compress(&'static str),
    #[error("zstd stream from peer is corrupt or exceeds limits: {0}")]
    Decompress(&'static str),
    #[error("zstd stream from peer ended inside a frame")]
    Truncated,
}

/// Where compressed bytes go: free space to write into, then how much was written.
pub trait Sink {
    type Error: From<CodecError>;
    fn space(&mut self) -> Result<&mut [u8], Self::Error>;
    fn advance(&mut self, n: usize) -> Result<(), Self::Error>;
}

pub struct ZstdEncoder {
    level: i32,
    cctx: Option<CCtx<'static>>,
    /// Input was given since the last flush.
    dirty: bool,
    /// Input bytes in the current frame (0: no frame open).
    frame_in: usize,
}

impl ZstdEncoder {
    pub fn new(level: i32) -> Self {
        ZstdEncoder {
            level,
            cctx: None,
            dirty: false,
            frame_in: 0,
        }
    }

    /// True while the encoder holds a context (and maybe an open frame).
    pub fn holds_context(&self) -> bool {
        self.cctx.is_some()
    }

    fn context(&mut self) -> Result<&mut CCtx<'static>, CodecError> {
        if self.cctx.is_none() {
            let mut c = match pooled(&CCTX_POOL) {
                Some(c) => c,
                None => CCtx::try_create().ok_or(CodecError::Compress("out of memory"))?,
            };
            c.set_parameter(CParameter::CompressionLevel(self.level))
                .map_err(|e| CodecError::Compress(zstd_safe::get_error_name(e)))?;
            c.set_parameter(CParameter::WindowLog(ENCODER_WINDOW_LOG))
                .map_err(|e| CodecError::Compress(zstd_safe::get_error_name(e)))?;
            self.cctx = Some(c);
        }
        // Just created above when it was missing.
        self.cctx.as_mut().ok_or(CodecError::Compress("no context"))
    }

    fn run<S: Sink>(
        &mut self,
        input: &[u8],
        directive: ZSTD_EndDirective,
        sink: &mut S,
    ) -> Result<(), S::Error> {
        let mut inbuf = InBuffer::around(input);
        loop {
            let cctx = self.context()?;
            let space = sink.space()?;
            let mut out = OutBuffer::around(space);
            let remaining = cctx
                .compress_stream2(&mut out, &mut inbuf, directive)
                .map_err(|e| CodecError::Compress(zstd_safe::get_error_name(e)))?;
            let written = out.pos();
            sink.advance(written)?;
            let input_done = inbuf.pos() == input.len();
            let finished = match directive {
                ZSTD_EndDirective::ZSTD_e_continue => input_done,
                _ => input_done && remaining == 0,
            };
            if finished {
                return Ok(());
            }
        }
    }

    /// Compresses `input`; zstd may keep some of it buffered until [`flush`](Self::flush).
    pub fn compress<S: Sink>(&mut self, mut input: &[u8], sink: &mut S) -> Result<(), S::Error> {
        while !input.is_empty() {
            let take = input.len().min(FRAME_INPUT - self.frame_in);
            self.dirty = true;
            self.run(&input[..take], ZSTD_EndDirective::ZSTD_e_continue, sink)?;
            self.frame_in += take;
            input = &input[take..];
            if self.frame_in == FRAME_INPUT {
                // Keep the context: under bulk load the next frame follows at once.
                self.run(&[], ZSTD_EndDirective::ZSTD_e_end, sink)?;
                self.frame_in = 0;
                self.dirty = false;
            }
        }
        Ok(())
    }

    /// Emits everything given so far as complete blocks the peer can decode now.
    pub fn flush<S: Sink>(&mut self, sink: &mut S) -> Result<(), S::Error> {
        if !self.dirty {
            return Ok(());
        }
        self.dirty = false;
        self.run(&[], ZSTD_EndDirective::ZSTD_e_flush, sink)
    }

    /// Ends the open frame, if any, and frees the context (the link went quiet or is closing).
    pub fn end_frame<S: Sink>(&mut self, sink: &mut S) -> Result<(), S::Error> {
        if self.cctx.is_none() {
            return Ok(());
        }
        if self.frame_in > 0 {
            self.run(&[], ZSTD_EndDirective::ZSTD_e_end, sink)?;
        }
        if let Some(c) = self.cctx.take() {
            give_back_cctx(c);
        }
        self.dirty = false;
        self.frame_in = 0;
        Ok(())
    }
}

impl Drop for ZstdEncoder {
    fn drop(&mut self) {
        if let Some(c) = self.cctx.take() {
            give_back_cctx(c);
        }
    }
}

impl Drop for ZstdDecoder {
    fn drop(&mut self) {
        if let Some(d) = self.dctx.take() {
            give_back_dctx(d);
        }
    }
}

#[derive(Default)]
pub struct ZstdDecoder {
    dctx: Option<DCtx<'static>>,
    in_frame: bool,
}

impl ZstdDecoder {
    pub fn new() -> Self {
        ZstdDecoder::default()
    }

    /// True while inside a frame (a stream that ends now is truncated).
    pub fn in_frame(&self) -> bool {
        self.in_frame
    }

    /// Frees the context between frames (the link went quiet); false if a frame is open.
    pub fn release(&mut self) -> bool {
        if self.in_frame || self.dctx.is_none() {
            return false;
        }
        if let Some(d) = self.dctx.take() {
            give_back_dctx(d);
        }
        true
    }

    pub fn holds_context(&self) -> bool {
        self.dctx.is_some()
    }

    /// Decompresses from `input` into the spare capacity of `out` until either the input is
    /// consumed or `out` is full; returns the input bytes consumed. Call again after draining
    /// `out` when it returned less than `input.len()` or filled `out`.
    pub fn decompress(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, CodecError> {
        let mut inbuf = InBuffer::around(input);
        loop {
            if inbuf.pos() == input.len() && !self.in_frame {
                return Ok(inbuf.pos());
            }
            if self.dctx.is_none() {
                let mut d = match pooled(&DCTX_POOL) {
                    Some(d) => d,
                    None => DCtx::try_create().ok_or(CodecError::Decompress("out of memory"))?,
                };
                d.set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX))
                    .map_err(|e| CodecError::Decompress(zstd_safe::get_error_name(e)))?;
                self.dctx = Some(d);
            }
            let Some(dctx) = self.dctx.as_mut() else {
                return Err(CodecError::Decompress("no context"));
            };
            let start = out.len();
            let mut outbuf = OutBuffer::around_pos(out, start);
            let hint = dctx
                .decompress_stream(&mut outbuf, &mut inbuf)
                .map_err(|e| CodecError::Decompress(zstd_safe::get_error_name(e)))?;
            let full = outbuf.pos() == outbuf.capacity();
            // hint 0: the frame is complete and fully flushed.
            self.in_frame = hint != 0;
            if full || inbuf.pos() == input.len() {
                return Ok(inbuf.pos());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct VecSink(Vec<u8>, usize);
    impl Sink for VecSink {
        type Error = CodecError;
        fn space(&mut self) -> Result<&mut [u8], CodecError> {
            let used = self.0.len();
            self.0.resize(used + self.1, 0);
            Ok(&mut self.0[used..])
        }
        fn advance(&mut self, n: usize) -> Result<(), CodecError> {
            let cap = self.0.len() - self.1;
            self.0.truncate(cap + n);
            Ok(())
        }
    }

    fn decode_all(dec: &mut ZstdDecoder, mut input: &[u8], out_cap: usize) -> Vec<u8> {
        let mut all = Vec::new();
        loop {
            let mut out = Vec::with_capacity(out_cap);
            let used = dec.decompress(input, &mut out).unwrap();
            input = &input[used..];
            all.extend_from_slice(&out);
            if input.is_empty() && out.len() < out_cap {
                return all;
            }
        }
    }

    #[test]
    fn flush_makes_everything_decodable_and_frames_release_contexts() {
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut enc = ZstdEncoder::new(1);
        let mut sink = VecSink(Vec::new(), 7000); // odd slot size: exercises partial outputs
        enc.compress(&data[..100_000], &mut sink).unwrap();
        enc.flush(&mut sink).unwrap();
        let mut dec = ZstdDecoder::new();
        let first = decode_all(&mut dec, &sink.0, 4096);
        assert_eq!(first, &data[..100_000], "flushed data decodes fully");
        assert!(dec.in_frame());
        let mark = sink.0.len();
        enc.compress(&data[100_000..], &mut sink).unwrap();
        enc.end_frame(&mut sink).unwrap();
        assert!(!enc.holds_context());
        let rest = decode_all(&mut dec, &sink.0[mark..], 100_000);
        assert_eq!(rest, &data[100_000..]);
        assert!(!dec.in_frame(), "frame complete");
        assert!(dec.release(), "context released between frames");
        assert!(sink.0.len() < data.len() / 4);
    }

    #[test]
    fn frames_end_every_frame_input_bytes_and_decode_across() {
        let data: Vec<u8> = (0..(FRAME_INPUT as u32 * 2 + 12345) / 4)
            .flat_map(|i| (i % 1013).to_le_bytes())
            .collect();
        let mut enc = ZstdEncoder::new(1);
        let mut sink = VecSink(Vec::new(), 16384);
        for chunk in data.chunks(300_000) {
            enc.compress(chunk, &mut sink).unwrap();
        }
        enc.end_frame(&mut sink).unwrap();
        // Three frames: two full ones and the rest.
        let magic = [0x28, 0xb5, 0x2f, 0xfd];
        assert_eq!(sink.0.windows(4).filter(|w| *w == magic).count(), 3);
        let mut dec = ZstdDecoder::new();
        assert_eq!(decode_all(&mut dec, &sink.0, 1 << 20), data);
        assert!(!dec.in_frame());
    }

    #[test]
    fn contexts_are_pooled_per_core_reused_and_drained_when_idle() {
        // A fresh thread: its own (empty) pools.
        std::thread::spawn(|| {
            let pooled = || CCTX_POOL.with(|p| p.borrow().len());
            let sample: Vec<u8> = (0..200_000u32)
                .flat_map(|i| (i % 251).to_le_bytes())
                .collect();
            let mut packed = VecSink(Vec::new(), 64 * 1024);
            let mut enc = ZstdEncoder::new(1);
            enc.compress(&sample, &mut packed).unwrap();
            enc.end_frame(&mut packed).unwrap();
            assert_eq!(pooled(), 1, "a released context goes to the pool");
            // The next encoder takes it, with a different level, and still makes a valid stream.
            let mut enc = ZstdEncoder::new(-5);
            enc.compress(&sample, &mut packed).unwrap();
            assert_eq!(pooled(), 0);
            enc.end_frame(&mut packed).unwrap();
            let mut dec = ZstdDecoder::new();
            let out = decode_all(&mut dec, &packed.0, 1 << 20);
            assert_eq!(out.len(), 2 * sample.len());
            assert!(out[..sample.len()] == sample[..] && out[sample.len()..] == sample[..]);
            drop(dec);
            assert_eq!(
                DCTX_POOL.with(|p| p.borrow().len()),
                1,
                "a dropped decoder's context too"
            );
            // Taken from since the last look: kept; then untouched for a period: emptied.
            assert!(!drain_idle_pools());
            assert!(drain_idle_pools());
            assert_eq!(pooled(), 0);
            assert_eq!(DCTX_POOL.with(|p| p.borrow().len()), 0);
            let encoders: Vec<_> = (0..POOL_KEEP + 2)
                .map(|_| {
                    let mut e = ZstdEncoder::new(1);
                    e.compress(b"x", &mut VecSink(Vec::new(), 1024)).unwrap();
                    e
                })
                .collect();
            drop(encoders);
            assert_eq!(pooled(), POOL_KEEP, "the pool keeps at most POOL_KEEP");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn garbage_is_an_error() {
        let mut dec = ZstdDecoder::new();
        let mut out = Vec::with_capacity(1024);
        assert!(dec
            .decompress(b"this is not zstd at all", &mut out)
            .is_err());
    }

    /// Writes the seeds of the zstd fuzz targets (`tests/fuzz/seeds/zstd_*`), made by this
    /// encoder: `cargo test -p replink --lib -- --ignored regenerate_fuzz_seeds`.
    #[test]
    #[ignore]
    fn regenerate_fuzz_seeds() {
        let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz/seeds");
        let wal: Vec<u8> = (0..40u32)
            .flat_map(|i| {
                format!(
                    "INSERT INTO pgbench_history VALUES ({i}, 1, {}, -4123, now());\n",
                    i * 7
                )
                .into_bytes()
            })
            .collect();
        // Each write is followed by a flush (true) or a frame end (false).
        let encode = |level: i32, writes: &[(std::ops::Range<usize>, bool)]| {
            let mut enc = ZstdEncoder::new(level);
            let mut sink = VecSink(Vec::new(), 16384);
            for (range, flush) in writes {
                enc.compress(&wal[range.clone()], &mut sink).unwrap();
                if *flush {
                    enc.flush(&mut sink).unwrap();
                } else {
                    enc.end_frame(&mut sink).unwrap();
                }
            }
            sink.0
        };
        let n = wal.len();
        // zstd_decoder: a shape byte (output buffer and input pieces), then the stream.
        let decoder: [(&str, u8, Vec<u8>); 4] = [
            ("level1-one-frame", 3, encode(1, &[(0..n, false)])),
            (
                "level1-flush-then-end",
                10,
                encode(1, &[(0..n / 2, true), (n / 2..n, false)]),
            ),
            (
                "level-5-two-frames",
                0,
                encode(-5, &[(0..n / 3, false), (n / 3..n, false)]),
            ),
            // The frame header of `huge_window_is_refused`: a 2 GiB window.
            (
                "huge-window",
                4,
                vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xa8, 0, 0, 0, 0, 0, 0],
            ),
        ];
        for (name, shape, stream) in decoder {
            let path = seeds.join(format!("zstd_decoder/{name}.bin"));
            std::fs::write(path, [&[shape][..], &stream].concat()).unwrap();
        }
        // zstd_roundtrip: a control byte, then plaintext (spaces flush, '0' ends a frame).
        for (name, control) in [("level1-wal", 0u8), ("level-5-small-slots", 5)] {
            let path = seeds.join(format!("zstd_roundtrip/{name}.bin"));
            std::fs::write(path, [&[control][..], &wal[..600]].concat()).unwrap();
        }
    }

    /// Found with the zstd_decoder fuzz target's heap check: a 23-byte zstd v0.7 (legacy)
    /// frame declaring a 128 MiB window decoded fine after the decoder malloc'ed 128 MiB, as
    /// zstd's legacy decoders ignore `WindowLogMax`; then by the fuzzer itself (below). Legacy support is compiled out now
    /// (zstd-safe without default features); this fails if a feature brings it back.
    #[test]
    fn fuzz_zstd_decoder_legacy_frame_window() {
        let frame = [
            &[0x27, 0xb5, 0x2f, 0xfd, 0x00, 0x88][..], // v0.7 magic, window log 27
            &[0x40, 0x00, 0x0a],                       // a raw block of 10 bytes
            b"0123456789",
            &[0xc0, 0x00, 0x00], // end of frame
        ]
        .concat();
        let mut dec = ZstdDecoder::new();
        let mut out = Vec::with_capacity(1024);
        assert!(dec.decompress(&frame, &mut out).is_err());
        assert!(out.is_empty());
        // The fuzzer's own find (with libzstd coverage-instrumented, in about 10 s): a v0.7
        // header with a 13 MiB window, 14 MB of heap held after these 9 bytes.
        let found = [0x27, 0xb5, 0x2f, 0xfd, 0x00, 0x6d, 0x24, 0x68, 0xff];
        let mut dec = ZstdDecoder::new();
        assert!(dec.decompress(&found, &mut out).is_err());
    }

    #[test]
    fn huge_window_is_refused() {
        // A frame header declaring a 2 GiB window (Window_Descriptor exponent 21 + 10 = 31).
        let frame = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xa8, 0, 0, 0, 0, 0, 0];
        let mut dec = ZstdDecoder::new();
        let mut out = Vec::with_capacity(1024);
        assert!(dec.decompress(&frame, &mut out).is_err());
    }
}

//! zstd stream compression, one encoder and one decoder per direction per connection.
//!
//! The compressed stream is a sequence of zstd frames carried as TLS application data. The
//! encoder flushes when its input side has nothing more ready (full blocks under bulk load, no
//! latency added to a lone request) and ends its frame when the link goes idle, giving its
//! context back; the decoder drops its context at each frame end. An idle compressed link
//! therefore holds no zstd state at all.

use zstd_safe::zstd_sys::ZSTD_EndDirective;
use zstd_safe::{CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer};

/// Largest window a peer may make us allocate: 2^23 = 8 MiB per decoding connection. Our own
/// encoder stays far below it (level 1 uses a 512 KiB window).
pub const WINDOW_LOG_MAX: u32 = 23;

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
}

impl ZstdEncoder {
    pub fn new(level: i32) -> Self {
        ZstdEncoder {
            level,
            cctx: None,
            dirty: false,
        }
    }

    /// True while a frame is open (the context is held).
    pub fn has_open_frame(&self) -> bool {
        self.cctx.is_some()
    }

    fn context(&mut self) -> Result<&mut CCtx<'static>, CodecError> {
        if self.cctx.is_none() {
            let mut c = CCtx::try_create().ok_or(CodecError::Compress("out of memory"))?;
            c.set_parameter(CParameter::CompressionLevel(self.level))
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
    pub fn compress<S: Sink>(&mut self, input: &[u8], sink: &mut S) -> Result<(), S::Error> {
        if input.is_empty() {
            return Ok(());
        }
        self.dirty = true;
        self.run(input, ZSTD_EndDirective::ZSTD_e_continue, sink)
    }

    /// Emits everything given so far as complete blocks the peer can decode now.
    pub fn flush<S: Sink>(&mut self, sink: &mut S) -> Result<(), S::Error> {
        if !self.dirty {
            return Ok(());
        }
        self.dirty = false;
        self.run(&[], ZSTD_EndDirective::ZSTD_e_flush, sink)
    }

    /// Ends the frame and frees the context (the link went idle or is closing).
    pub fn end_frame<S: Sink>(&mut self, sink: &mut S) -> Result<(), S::Error> {
        if self.cctx.is_none() {
            return Ok(());
        }
        self.run(&[], ZSTD_EndDirective::ZSTD_e_end, sink)?;
        self.cctx = None;
        self.dirty = false;
        crate::buffers::note_released();
        Ok(())
    }
}

#[derive(Default)]
pub struct ZstdDecoder {
    dctx: Option<DCtx<'static>>,
}

impl ZstdDecoder {
    pub fn new() -> Self {
        ZstdDecoder::default()
    }

    /// True while inside a frame (a stream that ends now is truncated).
    pub fn in_frame(&self) -> bool {
        self.dctx.is_some()
    }

    /// Decompresses from `input` into the spare capacity of `out` until either the input is
    /// consumed or `out` is full; returns the input bytes consumed. Call again after draining
    /// `out` when it returned less than `input.len()` or filled `out`.
    pub fn decompress(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, CodecError> {
        let mut inbuf = InBuffer::around(input);
        loop {
            if self.dctx.is_none() {
                if inbuf.pos() == input.len() {
                    return Ok(inbuf.pos());
                }
                let mut d = DCtx::try_create().ok_or(CodecError::Decompress("out of memory"))?;
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
            if hint == 0 {
                // Frame complete and fully flushed: give the context back.
                self.dctx = None;
                crate::buffers::note_released();
            }
            if full {
                return Ok(inbuf.pos());
            }
            if inbuf.pos() == input.len() && (hint != 0 || self.dctx.is_none()) {
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
        assert!(!enc.has_open_frame());
        let rest = decode_all(&mut dec, &sink.0[mark..], 100_000);
        assert_eq!(rest, &data[100_000..]);
        assert!(!dec.in_frame(), "context released at frame end");
        assert!(sink.0.len() < data.len() / 4);
    }

    #[test]
    fn garbage_is_an_error() {
        let mut dec = ZstdDecoder::new();
        let mut out = Vec::with_capacity(1024);
        assert!(dec
            .decompress(b"this is not zstd at all", &mut out)
            .is_err());
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

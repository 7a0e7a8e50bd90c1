//! Per-core buffer pool and the owned-buffer read helper.
//!
//! io_uring owns a buffer while a read is in flight, so an idle connection pins whatever buffer
//! its pending read holds. Connections therefore wait with a small buffer and take a large one
//! from this core's pool only while data is flowing; a short read gives it back. The pool is
//! thread-local: data-plane state never crosses cores.

use std::cell::RefCell;

use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;

/// Bulk reads: big enough that syscalls and io_uring submissions are a small cost per byte.
pub const BIG: usize = 256 * 1024;
/// What an idle direction's pending read holds (and the first read of a new connection).
pub const SMALL: usize = 16 * 1024 + 512;
/// Free big buffers a core keeps for reuse; more are freed.
const POOL_KEEP: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static RELEASED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Notes that a large allocation (a zstd context) was freed on this core.
pub fn note_released() {
    RELEASED.with(|r| r.set(true));
}

/// Whether anything was released since the last call.
pub fn take_released_flag() -> bool {
    RELEASED.with(|r| r.replace(false))
}

/// A cleared buffer with at least `BIG` bytes of capacity, from this core's pool when it has one.
pub fn take_big() -> Vec<u8> {
    POOL.with(|p| p.borrow_mut().pop())
        .map(|mut b| {
            b.clear();
            b
        })
        .unwrap_or_else(|| Vec::with_capacity(BIG))
}

/// Returns a buffer to this core's pool (small or oversized ones are just freed).
pub fn give_back(buf: Vec<u8>) {
    if buf.capacity() < BIG || buf.capacity() > 4 * BIG {
        return;
    }
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_KEEP {
            p.push(buf);
        }
    });
}

/// Reads into the spare capacity of `buf` (after its current contents), first making sure at
/// least `min_spare` bytes are free. Returns the byte count (0 at end of stream) and the buffer.
pub async fn read_more<R: AsyncReadRent>(
    reader: &mut R,
    mut buf: Vec<u8>,
    min_spare: usize,
) -> (std::io::Result<usize>, Vec<u8>) {
    if buf.capacity() - buf.len() < min_spare {
        buf.reserve(min_spare);
    }
    let len = buf.len();
    // `len` is within the initialised part and the end is the capacity, as slice_mut requires.
    let (res, slice) = reader.read(buf.slice_mut(len..)).await;
    (res, slice.into_inner())
}

/// Reads at most `max` bytes, appended to `buf`'s contents: for reading up to a record
/// boundary and not past it. Returns the byte count (0 at end of stream) and the buffer.
pub async fn read_at_most<R: AsyncReadRent>(
    reader: &mut R,
    mut buf: Vec<u8>,
    max: usize,
) -> (std::io::Result<usize>, Vec<u8>) {
    buf.reserve(max);
    let len = buf.len();
    // `len` is within the initialised part and `len + max` within the capacity just reserved.
    let (res, slice) = reader.read(buf.slice_mut(len..len + max)).await;
    (res, slice.into_inner())
}

//! The BPF maps' key and value layouts, mirroring `bpf/classifier.h` field for field, and the
//! only unsafe code of the crate: the `aya::Pod` impls these layouts need to cross into maps.

/// `MAX_ROUTES`: route ids are `0..MAX_ROUTES`.
pub const MAX_ROUTES: u32 = 1024;
/// `ROUTE_UNKNOWN` in `struct classification`.
pub(crate) const ROUTE_UNKNOWN: u32 = u32::MAX;
/// `SNI_NAME_BUF`.
pub(crate) const SNI_NAME_BUF: usize = 256;
/// `COUNTERS`: per route id, then per reason at `MAX_ROUTES + reason`.
pub(crate) const REASON_COUNT: u32 = 7;

/// `struct sni_key`: key of the `routes` map.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SniKey {
    pub wildcard: u8,
    pub len: u8,
    pub pad: [u8; 2],
    pub name: [u8; SNI_NAME_BUF],
}

/// `struct classification`: value of the `classifications` map.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawClassification {
    pub route: u32,
    pub sni_len: u16,
    pub reason: u8,
    pub pad: u8,
}

/// `struct listen_key`: key of the `listen_ports` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ListenKey {
    /// Host byte order.
    pub port: u16,
    pub family: u16,
    /// Network byte order (IPv4 in `addr[0]`); all zero for any address.
    pub addr: [u32; 4],
}

/// `struct passthrough_pair`: value of the `pairs` map.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct PassthroughPair {
    pub peer: u64,
    pub bytes: u64,
    pub route: u32,
    pub pad: u32,
}

// SAFETY: `repr(C)`, only integer fields and arrays of them, no padding the compiler adds
// (1 + 1 + 2 + 256 bytes, alignment 1): every bit pattern is a valid value and every byte is
// initialized, which is what `Pod` requires to copy it to and from map memory.
#[allow(unsafe_code)]
unsafe impl aya::Pod for SniKey {}

// SAFETY: `repr(C)`, only integers laid out 4 + 2 + 1 + 1 bytes with alignment 4: no
// compiler padding, every bit pattern valid.
#[allow(unsafe_code)]
unsafe impl aya::Pod for RawClassification {}

// SAFETY: `repr(C)`, integers laid out 2 + 2 + 16 bytes with alignment 4: no compiler padding,
// every bit pattern valid.
#[allow(unsafe_code)]
unsafe impl aya::Pod for ListenKey {}

// SAFETY: `repr(C)`, integers laid out 8 + 8 + 4 + 4 bytes with alignment 8: no compiler
// padding, every bit pattern valid.
#[allow(unsafe_code)]
unsafe impl aya::Pod for PassthroughPair {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_c_layouts() {
        assert_eq!(std::mem::size_of::<SniKey>(), 260);
        assert_eq!(std::mem::size_of::<RawClassification>(), 8);
        assert_eq!(std::mem::size_of::<ListenKey>(), 20);
        assert_eq!(std::mem::size_of::<PassthroughPair>(), 24);
    }
}

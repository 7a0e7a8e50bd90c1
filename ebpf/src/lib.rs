//! SNI classification for replink.
//!
//! Today: the userspace ClientHello parser ([`parse_client_hello`]) that the data plane routes
//! with, and the route matcher ([`SniPattern`], [`SniTable`]). Later this crate also carries the
//! BPF classifier (C programs under `ebpf/`, loaded with aya); this parser stays its fallback
//! and its test oracle, and `corpus/` is the ClientHello corpus both must agree on.
//!
//! Not here: TLS itself. The parser reads only what routing needs (SNI, ALPN, whether TLS 1.3
//! is offered), never allocates beyond the result, never panics, and does bounded work.

#![forbid(unsafe_code)]

mod client_hello;
mod sni;

pub use client_hello::{parse_client_hello, ClientHello, HelloError, Parse, MAX_CLIENT_HELLO};
pub use sni::{DuplicatePattern, SniPattern, SniPatternError, SniTable};

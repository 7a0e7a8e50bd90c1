//! SNI classification for replink.
//!
//! The userspace ClientHello parser ([`parse_client_hello`]) that the data plane routes with,
//! the route matcher ([`SniPattern`], [`SniTable`]), and the in-kernel classifier
//! ([`Classifier`]: sk_skb programs in C under `bpf/`, loaded with aya) that reads the SNI of a
//! socket's ClientHello before userspace does. The parser is the classifier's fallback and its
//! test oracle; `corpus/` is the ClientHello corpus both must agree on. The proxy loads the
//! classifier under `--bpf-classifier` and checks it against the parser (routing stays in
//! userspace).
//!
//! Not here: TLS itself. The parser reads only what routing needs (SNI, ALPN, whether TLS 1.3
//! is offered), never allocates beyond the result, never panics, and does bounded work.

// The exceptions: the `aya::Pod` impls in `layout`, two socket calls in `sockopt`.
#![deny(unsafe_code)]

mod classifier;
mod client_hello;
mod layout;
mod sni;
#[allow(unsafe_code)]
mod sockopt;

pub use classifier::{
    own_cgroup, program_loaded, socket_cookie, Classification, Classifier, ClassifierError,
    Counters, Reason,
};
pub use client_hello::{parse_client_hello, ClientHello, HelloError, Parse, MAX_CLIENT_HELLO};
pub use layout::MAX_ROUTES;
pub use sni::{DuplicatePattern, SniPattern, SniPatternError, SniTable};

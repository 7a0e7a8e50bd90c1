//! What the end-to-end runner and the criterion micro-benchmarks (`benches/benches`) share: the
//! payloads they push through replink's codec.

#![forbid(unsafe_code)]

pub mod samples;

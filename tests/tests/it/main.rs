//! End-to-end suite: the real `replink` binary between real clients and servers.
//!
//! - `data_paths`: many concurrent two-way transfers with half-closes, byte-exact, for
//!   compression on/off × io_uring/epoll.
//! - `refusals`: bad certificates, unknown SNI, garbage — refused with the right alert and
//!   logged, while a transfer carries on.
//! - `interop`: `openssl s_client` without the forward end, real Redis, wildcard routes,
//!   combined PEM files, an absent upstream.
//! - `config_errors`: bad files make the process refuse to start with a clear message.
//!
//! Run one: `cargo test -p replink-tests --test it refusals`.

mod config_errors;
mod data_paths;
mod interop;
mod refusals;

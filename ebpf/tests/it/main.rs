//! Integration tests of replink-ebpf: the shared ClientHello corpus against the userspace
//! parser, and the in-kernel classifier against that parser on real sockets.

mod classifier;
mod corpus;
mod in_kernel;

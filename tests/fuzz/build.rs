//! Compiles the BPF classifier's ClientHello walk (ebpf/bpf/client_hello.h) for the host, for
//! the `client_hello_vs_bpf` target: `bpf_walk/walk.c` over `bpf_walk/shim/` (the helpers).

fn main() {
    println!("cargo:rerun-if-changed=bpf_walk");
    println!("cargo:rerun-if-changed=../../ebpf/bpf/client_hello.h");
    println!("cargo:rerun-if-changed=../../ebpf/bpf/classifier.h");
    cc::Build::new()
        .file("bpf_walk/walk.c")
        // First, so <bpf/bpf_helpers.h> is the shim, not libbpf's.
        .include("bpf_walk/shim")
        .include("../../ebpf/bpf")
        .warnings(true)
        .compile("bpf_walk");
}

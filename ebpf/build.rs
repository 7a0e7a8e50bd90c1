//! Compiles the BPF programs under `bpf/` with clang into `OUT_DIR` and sets `cfg(replink_bpf)`
//! so the classifier embeds them. Without clang the crate still builds: a cargo warning, and
//! `Classifier::load` reports itself unavailable; the same without libbpf's and the kernel's
//! headers. With both, a program that does not compile fails the build.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One object for both programs (they share maps): `bpf/classifier.c` includes them.
const OBJECTS: [&str; 1] = ["classifier"];

fn main() {
    println!("cargo:rustc-check-cfg=cfg(replink_bpf)");
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=CLANG");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    if Command::new(&clang).arg("--version").output().is_err() {
        println!(
            "cargo:warning=replink-ebpf: `{clang}` not found, building without the BPF classifier"
        );
        return;
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86_64",
        Ok("aarch64") => "aarch64",
        Ok(other) => panic!("replink-ebpf: no multiarch include directory known for {other}"),
        Err(e) => panic!("CARGO_CFG_TARGET_ARCH: {e}"),
    };
    // libbpf-dev and linux-libc-dev: without them clang alone cannot build the programs.
    let include = [
        PathBuf::from("/usr/include"),
        PathBuf::from(format!("/usr/include/{arch}-linux-gnu")),
    ];
    for header in ["bpf/bpf_helpers.h", "linux/bpf.h", "asm/types.h"] {
        if !include.iter().any(|dir| dir.join(header).exists()) {
            println!(
                "cargo:warning=replink-ebpf: <{header}> not found (libbpf-dev, linux-libc-dev), \
                 building without the BPF classifier"
            );
            return;
        }
    }
    for object in OBJECTS {
        compile(&clang, arch, object, &out);
    }
    println!("cargo:rustc-cfg=replink_bpf");
}

fn compile(clang: &str, arch: &str, name: &str, out: &Path) {
    let source = Path::new("bpf").join(format!("{name}.c"));
    let object = out.join(format!("{name}.o"));
    let status = Command::new(clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I/usr/include/{arch}-linux-gnu"))
        .arg("-c")
        .arg(&source)
        .arg("-o")
        .arg(&object)
        .status()
        .unwrap_or_else(|e| panic!("running {clang}: {e}"));
    assert!(
        status.success(),
        "{clang} failed on {} ({status})",
        source.display()
    );
}

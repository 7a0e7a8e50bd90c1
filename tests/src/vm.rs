//! A VM whose kernel has TLS (`scripts/ktls-vm.sh`), for the tests of kernel TLS: this host's
//! kernel may have none.
//!
//! [`run_in_ktls_vm`] boots Debian's kernel under QEMU TCG with a busybox initramfs, the
//! tls/crypto modules and the given static binaries in `/bin`, runs a shell script there and
//! returns the console. [`static_replink_bin`] builds the `replink` to put in it (musl, into
//! its own target dir so the tests' normal build is left alone).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crate::bin::{nested_cargo, run_build, target_dir, workspace_root};
use crate::{run_cmd, Input};

const MUSL: &str = "x86_64-unknown-linux-musl";

/// What a script did in the VM.
#[derive(Debug)]
pub struct VmRun {
    /// Everything the VM printed on its serial console (firmware, `ktls-vm: …` markers, the
    /// script's stdout and stderr), `\r` removed.
    pub console: String,
    /// The script's exit status.
    pub exit: i32,
}

impl VmRun {
    /// Panics with the console unless the script exited 0.
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert_eq!(
            self.exit, 0,
            "the script in the VM failed:\n{}",
            self.console
        );
        self
    }

    /// Panics with the console unless every needle occurs in it.
    #[track_caller]
    pub fn assert_says(&self, needles: &[&str]) -> &Self {
        for needle in needles {
            assert!(
                self.console.contains(needle),
                "the VM's console lacks {needle:?}:\n{}",
                self.console
            );
        }
        self
    }
}

fn script() -> PathBuf {
    workspace_root().join("scripts/ktls-vm.sh")
}

/// Installs what the VM and the static build need (Debian packages, the musl target) and
/// fetches the kernel, once per test process.
fn prepare() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let out = run_cmd(
            crate::s(&script()),
            &["prepare"],
            Input::Null,
            Duration::from_secs(600),
        );
        assert!(out.success(), "`{}` failed:\n{}", out.command, out.text());
    });
}

/// A static `replink` (debug profile, musl) for the VM, built once per test process into
/// `<target>/ktls-vm/cargo`.
pub fn static_replink_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| static_bin("replink", "replink"))
}

/// The VM's plaintext peers (`tests/vm-peer`: an echo server and a sending client), static.
pub fn static_vm_peer_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| static_bin("replink-vm-peer", "replink-vm-peer"))
}

fn static_bin(package: &str, bin: &str) -> PathBuf {
    prepare();
    let target = target_dir().join("ktls-vm/cargo");
    let mut cargo = nested_cargo(&["build", "-p", package, "--bin", bin]);
    cargo
        .args(["--target", MUSL, "--target-dir"])
        .arg(&target)
        // ring's C parts: musl-tools' gcc wrapper, not the host's glibc gcc.
        .env(format!("CC_{}", MUSL.replace('-', "_")), "musl-gcc");
    run_build(cargo, target.join(MUSL).join("debug").join(bin))
}

/// Boots the kTLS VM, runs `script_text` (busybox sh, as root, cwd `/tmp`) with `binaries`
/// (static) in `/bin`, and returns the console and the script's status once the VM has
/// powered off. Panics when the VM does not get that far (no boot, or a hang past
/// `KTLS_VM_TIMEOUT`, 180 s by default).
pub fn run_in_ktls_vm(script_text: &str, binaries: &[&Path]) -> VmRun {
    prepare();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("test.sh");
    std::fs::write(&path, script_text).expect("write the VM's script");
    let mut args = vec!["run".to_string(), crate::s(&path).to_string()];
    args.extend(binaries.iter().map(|b| crate::s(b).to_string()));
    let out = run_cmd(
        crate::s(&script()),
        &args,
        Input::Null,
        Duration::from_secs(300),
    );
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    let exit = console
        .lines()
        .filter_map(|l| l.strip_prefix("ktls-vm: exit="))
        .next_back()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "`{}` did not finish: no exit marker (status {:?}):\n{console}\n{}",
                out.command, out.status, out.stderr
            )
        });
    VmRun { console, exit }
}

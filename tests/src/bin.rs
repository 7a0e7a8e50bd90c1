//! Finding (and building) the `replink` binary under test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits inside the workspace")
        .to_owned()
}

pub(crate) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// Variables that `cargo test` (or `cargo run`) sets for its binary and that would leak into a nested
/// `cargo build`. Build scripts (ring's) declare `rerun-if-env-changed` on some of them, so
/// inheriting them would rebuild those crates on every run, and again on the next plain
/// `cargo build`.
fn is_per_crate_cargo_var(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    EXACT.contains(&name) || name.starts_with("CARGO_PKG_") || name.starts_with("CARGO_BIN_EXE_")
}

/// `cargo ARGS…` run in the workspace root, without the per-crate variables this process got
/// from `cargo test` or `cargo run`: for a nested build of the `replink` binary (the tests and
/// the benchmark runner both use it).
pub fn nested_cargo(args: &[&str]) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(args).current_dir(workspace_root());
    for (name, _) in std::env::vars_os() {
        if let Some(name) = name.to_str() {
            if is_per_crate_cargo_var(name) {
                cmd.env_remove(name);
            }
        }
    }
    cmd
}

/// The `replink` binary of this checkout: `cargo build -p replink --bin replink` (debug, the
/// tests' profile) runs once per test process, then `<target>/debug/replink`.
pub fn replink_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_bin("replink", "replink"))
}

/// The `replink-pki` binary of this checkout, built like [`replink_bin`].
pub fn replink_pki_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_bin("replink-pki", "replink-pki"))
}

/// The `replink-pg` binary of this checkout, built like [`replink_bin`].
pub fn replink_pg_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_bin("replink-pg", "replink-pg"))
}

fn build_bin(package: &str, bin: &str) -> PathBuf {
    let target = target_dir();
    let mut cargo = nested_cargo(&["build", "-p", package, "--bin", bin, "--target-dir"]);
    cargo.arg(&target);
    run_build(cargo, target.join("debug").join(bin))
}

/// Runs a `cargo build` command, panicking with its stderr when it fails or when `path`, the
/// binary it should have made, is not there; returns `path`.
pub(crate) fn run_build(mut cargo: Command, path: PathBuf) -> PathBuf {
    let out = cargo
        .output()
        .unwrap_or_else(|e| panic!("running cargo: {e}"));
    assert!(
        out.status.success(),
        "`{cargo:?}` failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(path.exists(), "{} missing after the build", path.display());
    path
}

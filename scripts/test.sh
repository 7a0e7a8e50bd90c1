#!/usr/bin/env bash
# Runs every test of the workspace against real peers.
# Installs the Debian packages the tests start (openssl, redis, rsync, postgresql; qemu, busybox-static,
# kmod and musl-tools for the kTLS VM) when missing, then runs
# `cargo test --workspace`, then a short run of every fuzz target (scripts/fuzz.sh: FUZZ_SECONDS
# each, default 20; FUZZ_SECONDS=0 skips it). Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/debian-deps.sh
need_debian openssl openssl redis-server redis-server redis-cli redis-tools rsync rsync
need_debian '/usr/lib/postgresql/*/bin/initdb' postgresql psql postgresql-client
# The BPF classifier (replink-ebpf): clang builds it, the headers are libbpf's and the kernel's.
need_debian clang clang llvm-objdump llvm /usr/include/bpf/bpf_helpers.h libbpf-dev \
    '/usr/include/linux/bpf.h' linux-libc-dev
# The kTLS VM (scripts/ktls-vm.sh, which checks these again) and its static replink.
need_debian qemu-system-x86_64 qemu-system-x86 /usr/share/doc/busybox-static busybox-static \
    depmod kmod musl-gcc musl-tools

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole workspace (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "workspace: %d passed, %d failed\n", p, f }' "$log"

if [ "${FUZZ_SECONDS:-20}" != 0 ]; then
    scripts/fuzz.sh || status=1
fi
exit "$status"

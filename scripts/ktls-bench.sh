#!/usr/bin/env bash
# kTLS on vs off, side by side in the kTLS VM (scripts/ktls-vm.sh): `replink demo` with
# `--ktls off` then `--ktls on`, alternating, ROUNDS times each, same boot. QEMU TCG emulates
# the CPU, so only the ratio of the two means anything, not MB/s. See BENCHMARKING.md.
#
#   scripts/ktls-bench.sh [SIZE_MIB] [ROUNDS]     (defaults: 32 MiB, 2 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."

size=${1:-32}
rounds=${2:-2}
bash scripts/ktls-vm.sh prepare
musl=x86_64-unknown-linux-musl
target=target/ktls-vm/cargo
CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release -p replink --bin replink \
    --target $musl --target-dir $target
script=$(mktemp)
trap 'rm -f "$script"' EXIT
cat >"$script" <<SCRIPT
modprobe tls
i=0
while [ \$i -lt $rounds ]; do
    for mode in off on; do
        echo "=== ktls \$mode"
        replink demo --ktls \$mode --size-mib $size 2>&1 | grep -E '^compression'
    done
    i=\$((i + 1))
done
grep -E '^Tls(TxSw|RxSw) ' /proc/net/tls_stat
SCRIPT
bash scripts/ktls-vm.sh run "$script" "$target/$musl/release/replink" | awk '
    /^=== ktls/ { mode = $3; next }
    /^compression/ { cpu[mode " " $2] += $4; n[mode " " $2]++ }
    /^Tls/ { print }
    END {
        printf "%-12s %14s %14s %8s\n", "compression", "off CPU-s/GiB", "on CPU-s/GiB", "on/off"
        for (c in cpu) { split(c, k, " "); if (k[1] == "off") {
            off = cpu["off " k[2]] / n["off " k[2]]; on = cpu["on " k[2]] / n["on " k[2]]
            printf "%-12s %14.2f %14.2f %8.2f\n", k[2], off, on, on / off } }
    }'

#!/usr/bin/env bash
# Static release binaries: replink, replink-pki and replink-pg for x86_64 Linux, fully static
# (musl), stripped, with shell completions and man pages, in dist/ (or $1).
#
#   scripts/release.sh [OUT_DIR]
#
# Installs what it needs when missing: the Rust musl target (rustup) and Debian's musl-tools
# (ring's C and assembly are built with musl-gcc). Each binary is checked with `ldd`: the
# musl target links static-pie executables (no interpreter, no shared library, and still
# ASLR for the binary itself), for which glibc's ldd prints "statically linked"; a non-PIE
# static binary would print "not a dynamic executable". Either passes; anything else fails.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/debian-deps.sh

out=${1:-dist}
target=x86_64-unknown-linux-musl
need_debian musl-gcc musl-tools
if ! rustup target list --installed | grep -qx $target; then
    rustup target add $target
fi
CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --target $target \
    -p replink -p replink-pki -p replink-pg --bins
mkdir -p "$out/completions" "$out/man"
for bin in replink replink-pki replink-pg; do
    cp "target/$target/release/$bin" "$out/$bin"
    strip "$out/$bin"
    if ! ldd "$out/$bin" 2>&1 | grep -Eq "not a dynamic executable|statically linked"; then
        echo "release: $bin is not static:" >&2
        ldd "$out/$bin" >&2 || true
        exit 1
    fi
    REPLINK_GENERATE_DOCS="$out/completions" "$out/$bin"
done
mv "$out"/completions/*.1 "$out/man/"
(cd "$out" && sha256sum replink replink-pki replink-pg >SHA256SUMS)
echo "release: $(cd "$out" && ls -1 replink replink-pki replink-pg | tr '\n' ' ')in $out"
for bin in replink replink-pki replink-pg; do
    printf '%s: ldd: %s; file: %s; %s\n' "$bin" "$(ldd "$out/$bin" 2>&1 | tr -d '\t')" \
        "$(file -b "$out/$bin" | cut -d, -f1-2)" "$(du -h "$out/$bin" | cut -f1)"
done

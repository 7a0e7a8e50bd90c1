#!/usr/bin/env bash
# Runs the cargo-fuzz targets of tests/fuzz (see tests/fuzz/README.md), each for a bounded time.
#
#   scripts/fuzz.sh                 every target, FUZZ_SECONDS each (default 20)
#   scripts/fuzz.sh TARGET [SECS]   one target (e.g. client_hello 600)
#
# FUZZ_SANITIZER: none (default, stable Rust) or address (AddressSanitizer; needs nightly).
# cargo-fuzz needs nightly only for -Zsanitizer; the code fuzzed here is safe Rust
# (#![deny(unsafe_code)]) plus C (libzstd, the BPF walk) that cc builds with coverage but
# without ASan either way, so stable with `-s none` loses little. Each run starts from the
# seeds and the minimized corpus kept in the repository (tests/fuzz/corpus/TARGET), both only
# read: new finds go to a temporary directory, deleted afterwards, and crashes to
# tests/fuzz/artifacts/TARGET (ignored by git). Installs g++, linux-libc-dev, clang and
# cargo-fuzz when missing.
#
# FUZZ_UPDATE_CORPUS=1 (by hand, not in CI): after a clean run, fold its finds into
# tests/fuzz/corpus/TARGET, minimized with libFuzzer's -set_cover_merge=1 (a small set of
# inputs that covers what the seeds do not, from the entries kept so far and the new finds);
# review and commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/debian-deps.sh
# libFuzzer is C++; client_hello_vs_bpf compiles the BPF walk for the host (<linux/bpf.h>);
# clang gives the C code coverage instrumentation (below).
need_debian g++ g++ /usr/include/linux/bpf.h linux-libc-dev clang clang

CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -qF "cargo-fuzz $CARGO_FUZZ_VERSION"; then
    echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
    cargo install --quiet --locked cargo-fuzz --version "=$CARGO_FUZZ_VERSION"
fi

sanitizer=${FUZZ_SANITIZER:-none}
toolchain=()
if [ "$sanitizer" != none ]; then
    if ! rustup run nightly rustc --version >/dev/null 2>&1; then
        echo "fuzz.sh: FUZZ_SANITIZER=$sanitizer needs a nightly toolchain (rustup toolchain" \
            "install nightly); the default, FUZZ_SANITIZER=none, runs on stable" >&2
        exit 2
    fi
    toolchain=(+nightly)
fi

# cargo-fuzz instruments only Rust. The C that the targets run (libzstd, the BPF walk) is built
# by the cc crate; clang with -fsanitize=fuzzer-no-link gives libFuzzer its coverage too
# (measured on zstd_decoder, 30 s: 56 edges without, 1116 with).
triple=$(rustc -vV | sed -n 's/^host: //p')
export "CC_${triple//-/_}=clang" "CFLAGS_${triple//-/_}=-fsanitize=fuzzer-no-link"

target_dir=target/fuzz
[ "$sanitizer" = none ] || target_dir=target/fuzz-$sanitizer
fuzz=(cargo "${toolchain[@]}" fuzz)
opts=(--fuzz-dir tests/fuzz --sanitizer "$sanitizer" --target-dir "$target_dir")

# The read-only seeds of each target.
seeds() {
    case $1 in
    client_hello*) echo ebpf/corpus ;;
    *) echo "tests/fuzz/seeds/$1" ;;
    esac
}

all=(client_hello client_hello_vs_bpf client_hello_vs_rustls pg_preamble zstd_decoder zstd_roundtrip config)
if (($#)); then
    targets=("$1")
    seconds=${2:-${FUZZ_SECONDS:-20}}
else
    targets=("${all[@]}")
    seconds=${FUZZ_SECONDS:-20}
fi

start=$SECONDS
"${fuzz[@]}" build "${opts[@]}" >&2
echo "fuzz.sh: built in $((SECONDS - start)) s" >&2

# libFuzzer writes new inputs to the first corpus directory it is given: a temporary one.
finds=$(mktemp -d)
trap 'rm -rf "$finds"' EXIT

# Folds $finds/TARGET into tests/fuzz/corpus/TARGET: a merge into a copy of the seeds keeps a
# small set of inputs covering what they do not, then the seed copies are taken out again.
update_corpus() {
    local t=$1 kept="tests/fuzz/corpus/$1" merged="$finds/$1.merged"
    mkdir -p "$merged" "$kept"
    cp "$(seeds "$t")"/* "$merged/"
    local seed_names
    seed_names=$(ls "$merged")
    "${fuzz[@]}" run "${opts[@]}" "$t" "$merged" "$kept" "$finds/$t" -- -set_cover_merge=1 \
        -timeout=10 -rss_limit_mb=1024 >"$target_dir/$t.merge.log" 2>&1
    (cd "$merged" && echo "$seed_names" | xargs rm -f --)
    rm -rf "$kept"
    mv "$merged" "$kept"
    echo "fuzz $t: corpus kept in $kept: $(ls "$kept" | wc -l) files, $(du -sh "$kept" | cut -f1)"
}

failed=()
for t in "${targets[@]}"; do
    mkdir -p "$finds/$t"
    kept="tests/fuzz/corpus/$t"
    [ -d "$kept" ] || kept=$(mktemp -d -p "$finds")
    log="$target_dir/$t.log"
    # -rss_limit_mb: zstd_decoder checks the heap itself; this catches the rest.
    if "${fuzz[@]}" run "${opts[@]}" "$t" "$finds/$t" "$kept" "$(seeds "$t")" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 -print_final_stats=1 \
        >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        echo "fuzz $t: ${seconds} s, ${runs:-?} runs, from $(ls "$kept" | wc -l) kept inputs," \
            "$(ls "$finds/$t" | wc -l) new, no failure"
        if [ "${FUZZ_UPDATE_CORPUS:-0}" = 1 ]; then
            update_corpus "$t"
        fi
    else
        failed+=("$t")
        tail -n 40 "$log"
        echo "fuzz $t: FAILED (log: $log; the input is in tests/fuzz/artifacts/$t/)"
    fi
done
if ((${#failed[@]})); then
    echo "fuzz: ${#failed[@]} target(s) failed: ${failed[*]}"
    exit 1
fi

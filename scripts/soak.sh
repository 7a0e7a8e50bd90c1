#!/usr/bin/env bash
# Runs the soak test (tests/tests/it/soak.rs) for a chosen time: four reverse+forward pairs
# (zstd/off x io_uring/epoll) under ~100 concurrent connections with random sizes, resets and
# half-closes; zero mismatches, resets seen as resets, RSS and fd counts flat. In CI it runs
# as part of `cargo test` with its default (120 s of load, about 2.5 min in all).
#
#   scripts/soak.sh            120 s of load
#   scripts/soak.sh 4h         four hours (a number of seconds, or with s, m or h)
#
# REPLINK_SOAK_CONNS (default 24) sets the connections in flight per pair;
# REPLINK_TEST_SEED=N replays a run's sizes (the test prints the seed it used). Extra
# arguments go to cargo test. replink runs as the harness builds it (debug profile), as in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:-120}
shift || true
case $duration in
*h) seconds=$((${duration%h} * 3600)) ;;
*m) seconds=$((${duration%m} * 60)) ;;
*s) seconds=${duration%s} ;;
*) seconds=$duration ;;
esac
if ! [[ $seconds =~ ^[0-9]+$ ]] || ((seconds < 12)); then
    echo "soak.sh: duration must be at least 12 s (a number of seconds, or with s, m or h): $duration" >&2
    exit 2
fi

export REPLINK_SOAK_SECONDS=$seconds
exec cargo test -p replink-tests --test it "$@" -- --exact soak::soak --nocapture

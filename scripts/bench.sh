#!/usr/bin/env bash
# Runs the side-by-side benchmark (replink vs HAProxy), see BENCHMARKING.md.
# Installs the Debian packages it starts (haproxy, redis, zstd, PostgreSQL for the WAL corpus)
# when missing, then `cargo run --release -p replink-benches`. Extra arguments go to the
# runner (e.g. --quick).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/debian-deps.sh
need_debian haproxy haproxy redis-server redis-server redis-benchmark redis-tools zstd zstd \
    "/usr/lib/postgresql/*/bin/pgbench" postgresql

exec cargo run --release -p replink-benches -- "$@"

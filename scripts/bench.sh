#!/usr/bin/env bash
# Runs the side-by-side benchmark (replink vs HAProxy, nginx, stunnel and socat), see
# BENCHMARKING.md. Installs the Debian packages it starts (haproxy, nginx, stunnel4, socat, redis,
# zstd, PostgreSQL for the WAL corpus)
# when missing, then `cargo run --release -p replink-benches`. Extra arguments go to the
# runner (e.g. --quick).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/debian-deps.sh
need_debian haproxy haproxy nginx nginx /usr/lib/nginx/modules/ngx_stream_module.so libnginx-mod-stream \
    stunnel stunnel4 socat socat redis-server redis-server redis-benchmark redis-tools zstd zstd \
    "/usr/lib/postgresql/*/bin/pgbench" postgresql

exec cargo run --release -p replink-benches --bin replink-bench -- "$@"

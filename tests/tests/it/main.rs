//! End-to-end suite: the real `replink` binary between real clients and servers, on loopback.
//!
//! - `authz`: per-route `--allow` rules (cn, ou, dns, uri, spki-sha256 pinned by OpenSSL's
//!   hash): a table of three client certificates × rules; matches carry exact bytes, others
//!   get `access_denied` and never reach the upstream; bad `--allow` flags stop start-up.
//! - `bpf_classifier`: `--bpf-classifier on` with an exact and a wildcard route: forward ends
//!   through both and `s_client` with an unknown SNI and without SNI; `bpf=` on each line
//!   matches userspace's decision, no `bpf_classifier_mismatch`.
//! - `config_file`: `replink run --config` with a reverse and a forward listener in one
//!   process carries exact bytes; `replink check` reports every error of a bad file with its
//!   line, column and key (a table of bad files), refuses a group-readable key with the
//!   `chmod`; a quick mode's `--print-config` output runs as a config file.
//! - `data_paths`: ~20 concurrent two-way transfers (0 B .. 64 MiB, plus one of 256 MiB),
//!   random write sizes, half-closes, byte-exact on both ends, for compression zstd/off ×
//!   io driver io_uring/epoll; the per-connection log lines account for every byte.
//! - `faults`: the fault matrix of issue 7 (its module doc maps each fault to its test):
//!   stalled, silent, slow and resetting peers, slowloris, 5000 half-open connections, fd
//!   exhaustion, zstd bombs and cut frames, a bad record MAC, kill -9 of either end; each while
//!   an unrelated transfer through the same reverse end stays byte-exact.
//! - `metrics`: `--admin` on both ends: `/metrics` parsed by the prometheus-parse crate equals the
//!   connection lines and the client's byte counts; `/healthz`, `/readyz` (503 naming a dead
//!   route), `replink status` exit codes.
//! - `openssl_interop`: `openssl s_client` (no ALPN, no forward end) gets the exact bytes.
//! - `refusals`: no/foreign/expired client certificate, unknown SNI, garbage, silence — each
//!   refused with the right alert and one `refused` line while a transfer carries on; bad key
//!   modes and missing files stop the process with a clear message.
//! - `pki_cli`: `replink-pki`'s outputs checked by OpenSSL (verify, x509/req/crl -text,
//!   pkey with the password), CSRs from `openssl req` signed, prompts on a pty, bad input.
//! - `revocation`: `--crl` on both ends: a revoked client is refused (`certificate_revoked`)
//!   while another client of the same CA transfers; a revoked server certificate is refused by
//!   the forward end; expired, foreign and corrupt CRLs stop start-up; a CRL that expires while
//!   running fails closed.
//! - `pg_setup`: `replink-pg` between two real PostgreSQL clusters: publication, role,
//!   subscription with `--copy-schema`, data and sequences equal, status, `--dry-run`, bad input.
//! - `pg_listener`: routes marked `:postgres` take psql 15 itself (`sslmode=verify-full`, client
//!   certificate, SSLRequest; COPY both ways with checksums) and direct TLS with ALPN
//!   `postgresql` (s_client); no certificate, plaintext (ErrorResponse), GSSENC, cancel,
//!   garbage and a stream route are refused, and the server never sees them; forward ends
//!   still use the route with zstd.
//! - `ktls`: `--ktls` on this host (`on` refuses to start without kernel TLS, `auto` logs
//!   `ktls=unavailable` with the reason; `ktls=available` on a kernel with TLS), and in a QEMU
//!   VM with Debian's kernel (`scripts/ktls-vm.sh`): separate reverse and forward ends with
//!   `--ktls on` carry exact bytes for each cipher, zstd on/off, with KeyUpdates both ways and
//!   a resumed connection, and `/proc/net/tls_stat` proves the kernel did the records.
//! - `reload`: 200 SIGHUPs to both ends during four transfers (all exact, all `reloaded`); in
//!   service mode a rotated server certificate is served to new handshakes while an older
//!   connection finishes, a CRL added by reload refuses that client, a failed reload keeps the
//!   old state and shows in `/metrics`.
//! - `redis`: a real redis-server through the pair (redis-cli, redis-benchmark, digests).
//! - `wildcard_and_combined_pem`: `*.repl.test` routes, a key+cert PEM without `--key`, a CA
//!   bundle.
//! - `replication`: a Redis replica (full sync, live writes), a PostgreSQL standby
//!   (pg_basebackup + WAL streaming under pgbench) and an rsync daemon through the pair;
//!   each converges byte-for-byte and survives SIGKILL + restart of either end (and of the
//!   upstream); an rsync cut by a killed tunnel fails loudly and a re-run completes.
//! - `resets`: a reset on either side reaches the other side as a reset, not a clean EOF.
//! - `shutdown`: SIGTERM mid-transfer: new connections refused, the transfer finishes exact, exit
//!   0 with `drained`; `--shutdown-timeout 1s` with a stalled connection exits on time and the
//!   cut transfer does not pass as complete.
//! - `soak`: four pairs (zstd/off × io_uring/epoll) under ~100 concurrent connections for
//!   `REPLINK_SOAK_SECONDS` (default 120; `scripts/soak.sh 4h` for hours): random sizes and
//!   writes, half-closes, one in ten reset by the client or the upstream; clean ones byte-exact,
//!   resets seen as resets, every connection in both ends' logs, RSS and fds flat, fds back to
//!   the baseline after the load.
//! - `upstream_down`: a route to a closed port closes the client at once and is logged;
//!   other connections carry on.
//!
//! Run everything: `cargo test -p replink-tests`. One module or test:
//! `cargo test -p replink-tests --test it refusals` (a name filter). The harness builds the
//! `replink` binary itself. `REPLINK_TEST_SEED=N` replays the random sizes of a failed run
//! (`data_paths` prints the seed it used); `REPLINK_TEST_PATIENCE_MS` (default 20000) bounds every wait.

mod authz;
mod bpf_classifier;
mod config_file;
mod data_paths;
mod faults;
mod ktls;
mod metrics;
mod openssl_interop;
mod passthrough;
mod pg_listener;
mod pg_setup;
mod pki_cli;
mod redis;
mod refusals;
mod reload;
mod replication;
mod resets;
mod revocation;
mod shutdown;
mod soak;
mod upstream_down;
mod wildcard_and_combined_pem;

//! `replink-pg`: sets up and watches PostgreSQL logical replication, typically across a
//! replink tunnel (the subscriber reaches the publisher through the local end of a
//! `replink forward-proxy`).
//!
//! What it is: a small sync client (the `postgres` crate, with libpq's TLS parameters read as
//! libpq reads them: it talks to local servers, through the tunnel, or straight to a replink
//! `:postgres` route) that runs the SQL a DBA would run by hand, with the checks first,
//! idempotently, and with messages that say what to fix. What it is not: a replication engine
//! (PostgreSQL's built-in publications and subscriptions do the work) or a tunnel.
//!
//! - [`publisher`]: `CREATE`/`ALTER PUBLICATION` ([`publisher::setup`],
//!   [`publisher::drop_tables`]) and the replication role ([`publisher::create_role`]).
//! - [`subscriber`]: `CREATE SUBSCRIPTION` with the optional schema copy ([`schema`]: pg_dump
//!   found and run) and [`subscriber::sync_sequences`].
//! - [`report`]: `status` (text or `--json`); [`status`]: `--watch` over the initial table
//!   sync.
//! - [`Db`]: a connection, its errors turned into fixes, and `--dry-run` ([`Db::change`]
//!   prints instead of running). [`Endpoint`]: a connection string and where its password
//!   comes from. [`quote`]: identifiers, literals, `schema.table` names.
//! - [`tls`]: `sslmode`, `sslrootcert`, `sslcert`, `sslkey`, `sslsni` with libpq's meaning,
//!   over rustls; failed handshakes explained.
//! - [`Error`]: every refusal and failure; the binary exits 1 on any of them.

#![forbid(unsafe_code)]

pub mod conninfo;
pub mod db;
mod error;
pub mod publisher;
pub mod quote;
pub mod report;
pub mod schema;
pub mod status;
pub mod subscriber;
pub mod tls;

pub use conninfo::Endpoint;
pub use db::Db;
pub use error::Error;

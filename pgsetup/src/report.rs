//! `status`: what a server publishes and subscribes to and how far behind each link is, read
//! once into a [`Report`] and printed as text or (`--json`) as JSON.

use serde::Serialize;

use crate::db::Db;
use crate::quote::quote_ident;
use crate::status::{bytes, seconds, state_name, sync_tables, Progress, SyncTable, THIS_DATABASE};
use crate::Error;

/// Everything `status` shows about one server (and its current database).
#[derive(Debug, Serialize)]
pub struct Report {
    /// `host:port/db`.
    pub server: String,
    pub version: String,
    pub wal_level: String,
    pub standby: bool,
    pub user: String,
    pub publications: Vec<PublicationInfo>,
    pub replication_slots: Vec<SlotInfo>,
    pub subscriptions: Vec<SubscriptionInfo>,
}

#[derive(Debug, Serialize)]
pub struct PublicationInfo {
    pub name: String,
    pub all_tables: bool,
    pub tables: i64,
    /// `insert`, `update`, `delete`, `truncate`: what it publishes.
    pub operations: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct SlotInfo {
    pub name: String,
    /// `logical` or `physical`.
    pub kind: String,
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub active: bool,
    /// `confirmed_flush_lsn` (logical) or `restart_lsn` (physical).
    pub confirmed_lsn: Option<String>,
    /// WAL written since then (none on a standby).
    pub lag_bytes: Option<i64>,
    /// From pg_stat_replication while a walsender serves the slot.
    pub write_lag_seconds: Option<f64>,
    pub replay_lag_seconds: Option<f64>,
    pub client: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SubscriptionInfo {
    pub name: String,
    pub enabled: bool,
    pub publications: Vec<String>,
    pub worker_running: bool,
    pub received_lsn: Option<String>,
    pub last_message_seconds_ago: Option<f64>,
    pub latest_end_lsn: Option<String>,
    /// Since the position last reported to the publisher: an upper bound on how far behind.
    pub seconds_behind: Option<f64>,
    pub tables: Vec<SyncTable>,
}

/// Reads the report from `db`.
pub fn read(db: &mut Db) -> Result<Report, Error> {
    let row = db.query_one(
        "SELECT current_setting('server_version'), current_setting('wal_level'), \
                pg_catalog.pg_is_in_recovery()",
        &[],
    )?;
    let standby: bool = row.get(2);
    Ok(Report {
        server: db.server.clone(),
        version: row.get(0),
        wal_level: row.get(1),
        standby,
        user: db.user.clone(),
        publications: publications(db)?,
        replication_slots: slots(db, standby)?,
        subscriptions: subscriptions(db)?,
    })
}

fn publications(db: &mut Db) -> Result<Vec<PublicationInfo>, Error> {
    let rows = db.query(
        "SELECT p.pubname::text, p.puballtables, p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate, \
                (SELECT count(*) FROM pg_catalog.pg_publication_tables t WHERE t.pubname = p.pubname) \
         FROM pg_catalog.pg_publication p ORDER BY 1",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|r| PublicationInfo {
            name: r.get(0),
            all_tables: r.get(1),
            operations: [(2, "insert"), (3, "update"), (4, "delete"), (5, "truncate")]
                .into_iter()
                .filter(|(i, _)| r.get::<_, bool>(*i))
                .map(|(_, op)| op)
                .collect(),
            tables: r.get(6),
        })
        .collect())
}

fn slots(db: &mut Db, standby: bool) -> Result<Vec<SlotInfo>, Error> {
    let lag = if standby {
        "NULL::int8"
    } else {
        "pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), \
         coalesce(s.confirmed_flush_lsn, s.restart_lsn))::int8"
    };
    let rows = db.query(
        &format!(
            "SELECT s.slot_name::text, s.slot_type, s.plugin::text, s.database::text, s.active, \
                    coalesce(s.confirmed_flush_lsn, s.restart_lsn)::text, {lag}, \
                    extract(epoch FROM r.write_lag)::float8, extract(epoch FROM r.replay_lag)::float8, \
                    nullif(r.application_name, '') \
             FROM pg_catalog.pg_replication_slots s \
             LEFT JOIN pg_catalog.pg_stat_replication r ON r.pid = s.active_pid ORDER BY 1"
        ),
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|r| SlotInfo {
            name: r.get(0),
            kind: r.get(1),
            plugin: r.get(2),
            database: r.get(3),
            active: r.get(4),
            confirmed_lsn: r.get(5),
            lag_bytes: r.get(6),
            write_lag_seconds: r.get(7),
            replay_lag_seconds: r.get(8),
            client: r.get(9),
        })
        .collect())
}

fn subscriptions(db: &mut Db) -> Result<Vec<SubscriptionInfo>, Error> {
    let rows = db.query(
        &format!(
            "SELECT s.subname::text, s.subenabled, s.subpublications::text[], st.pid IS NOT NULL, \
                    st.received_lsn::text, extract(epoch FROM now() - st.last_msg_receipt_time)::float8, \
                    st.latest_end_lsn::text, extract(epoch FROM now() - st.latest_end_time)::float8 \
             FROM pg_catalog.pg_subscription s \
             LEFT JOIN LATERAL (SELECT * FROM pg_catalog.pg_stat_subscription x \
                                WHERE x.subid = s.oid AND x.relid IS NULL \
                                ORDER BY x.received_lsn DESC NULLS LAST LIMIT 1) st ON true \
             WHERE s.subdbid = {THIS_DATABASE} ORDER BY 1"
        ),
        &[],
    )?;
    let (_, tables) = sync_tables(db)?;
    Ok(rows
        .iter()
        .map(|r| {
            let name: String = r.get(0);
            SubscriptionInfo {
                tables: tables
                    .iter()
                    .filter(|t| t.subscription == name)
                    .cloned()
                    .collect(),
                name,
                enabled: r.get(1),
                publications: r.get(2),
                worker_running: r.get(3),
                received_lsn: r.get(4),
                last_message_seconds_ago: r.get(5),
                latest_end_lsn: r.get(6),
                seconds_behind: r.get(7),
            }
        })
        .collect())
}

/// `title (n):`, or `title: none`.
fn heading(out: &mut String, title: &str, n: usize) {
    if n == 0 {
        out.push_str(&format!("{title}: none\n"));
    } else {
        out.push_str(&format!("{title} ({n}):\n"));
    }
}

impl Report {
    /// The report as `status` prints it.
    pub fn text(&self) -> String {
        let mut out = format!(
            "server {}: PostgreSQL {}, wal_level {}, {}, connected as {}\n",
            self.server,
            self.version,
            self.wal_level,
            if self.standby { "standby" } else { "primary" },
            quote_ident(&self.user)
        );
        heading(&mut out, "publications", self.publications.len());
        for p in &self.publications {
            out.push_str(&format!(
                "  {}: {}{} table(s), publishes {}\n",
                quote_ident(&p.name),
                if p.all_tables { "FOR ALL TABLES, " } else { "" },
                p.tables,
                if p.operations.is_empty() {
                    "nothing".into()
                } else {
                    p.operations.join(", ")
                }
            ));
        }
        heading(&mut out, "replication slots", self.replication_slots.len());
        for s in &self.replication_slots {
            out.push_str(&s.line());
        }
        heading(&mut out, "subscriptions", self.subscriptions.len());
        for s in &self.subscriptions {
            out.push_str(&s.text());
        }
        out
    }
}

impl SlotInfo {
    fn line(&self) -> String {
        let what = match &self.plugin {
            Some(plugin) => format!(
                "{} ({plugin}, database {})",
                self.kind,
                self.database.as_deref().unwrap_or("?")
            ),
            None => self.kind.clone(),
        };
        let mut line = format!(
            "  {}: {what}, {}",
            quote_ident(&self.name),
            if self.active { "active" } else { "inactive" }
        );
        if let Some(lag) = self.lag_bytes {
            line.push_str(&format!(", {} behind", bytes(lag)));
        }
        if let Some(lsn) = &self.confirmed_lsn {
            line.push_str(&format!(" (confirmed {lsn})"));
        }
        if self.active {
            line.push_str(&format!(
                "; write lag {}, replay lag {}",
                seconds(self.write_lag_seconds),
                seconds(self.replay_lag_seconds)
            ));
            if let Some(client) = &self.client {
                line.push_str(&format!(", client {client}"));
            }
        }
        line.push('\n');
        line
    }
}

impl SubscriptionInfo {
    fn text(&self) -> String {
        let publications: Vec<String> = self.publications.iter().map(|p| quote_ident(p)).collect();
        let mut out = format!(
            "  {}: {}, apply worker {}, publication(s) {}\n",
            quote_ident(&self.name),
            if self.enabled { "enabled" } else { "disabled" },
            if self.worker_running {
                "running"
            } else {
                "not running"
            },
            publications.join(", ")
        );
        if self.worker_running {
            out.push_str(&format!(
                "    received up to {}, last message {} ago; reported {} to the publisher {} ago \
                 (seconds behind, at most)\n",
                self.received_lsn.as_deref().unwrap_or("n/a"),
                seconds(self.last_message_seconds_ago),
                self.latest_end_lsn.as_deref().unwrap_or("n/a"),
                seconds(self.seconds_behind)
            ));
        }
        let tables = &self.tables;
        out.push_str(&format!("    {}\n", Progress::of(tables).line()));
        for t in tables {
            out.push_str(&format!(
                "      {} {:<13} {:>10}  {}\n",
                t.state,
                state_name(&t.state),
                bytes(t.size),
                t.table
            ));
        }
        out
    }
}

/// `status`: the report, as text or JSON.
pub fn status(db: &mut Db, json: bool) -> Result<(), Error> {
    let report = read(db)?;
    if json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        println!("{text}");
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

//! `status --watch`: a subscription's initial table sync followed until every table is
//! ready, and the pieces the report ([`crate::report`]) shares with it.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::db::Db;
use crate::quote::QualifiedName;
use crate::Error;

pub(crate) const THIS_DATABASE: &str =
    "(SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())";

/// `1.5 MiB`, `312 B`.
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub(crate) fn seconds(s: Option<f64>) -> String {
    match s {
        Some(s) => format!("{s:.1} s"),
        None => "n/a".into(),
    }
}

/// pg_subscription_rel's `srsubstate` letters.
pub fn state_name(state: &str) -> &'static str {
    match state {
        "i" => "init",
        "d" => "data copy",
        "f" => "finished copy",
        "s" => "synchronized",
        "r" => "ready",
        _ => "unknown",
    }
}

/// One table of a subscription and its sync state.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SyncTable {
    #[serde(skip)]
    pub subscription: String,
    #[serde(flatten)]
    pub table: QualifiedName,
    /// pg_subscription_rel's letter: i (init), d (data copy), f (finished copy),
    /// s (synchronized), r (ready).
    pub state: String,
    /// `pg_table_size` here, on the subscriber.
    #[serde(rename = "size_bytes")]
    pub size: i64,
}

/// The subscriptions of this database, and the tables of each with their sync state.
pub(crate) fn sync_tables(db: &mut Db) -> Result<(usize, Vec<SyncTable>), Error> {
    let subscriptions: i64 = db
        .query_one(
            &format!(
                "SELECT count(*) FROM pg_catalog.pg_subscription WHERE subdbid = {THIS_DATABASE}"
            ),
            &[],
        )?
        .get(0);
    let rows = db.query(
        &format!(
            "SELECT s.subname::text, n.nspname::text, c.relname::text, r.srsubstate::text, \
                    pg_catalog.pg_table_size(c.oid) \
             FROM pg_catalog.pg_subscription_rel r \
             JOIN pg_catalog.pg_subscription s ON s.oid = r.srsubid \
             JOIN pg_catalog.pg_class c ON c.oid = r.srrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE s.subdbid = {THIS_DATABASE} ORDER BY 1, 2, 3"
        ),
        &[],
    )?;
    let tables = rows
        .iter()
        .map(|r| SyncTable {
            subscription: r.get(0),
            table: QualifiedName::new(r.get(1), r.get(2)),
            state: r.get(3),
            size: r.get::<_, Option<i64>>(4).unwrap_or(0),
        })
        .collect();
    Ok((usize::try_from(subscriptions).unwrap_or(0), tables))
}

/// A summary of the initial sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub total: usize,
    pub ready: usize,
    /// Tables per state letter.
    pub states: BTreeMap<String, usize>,
    /// Bytes in the subscribed tables here so far.
    pub bytes: i64,
    /// The same tables' size on the publisher, when it was asked (`--publisher-url`).
    pub publisher_bytes: Option<i64>,
    /// Tables whose data is being copied now.
    pub copying: Vec<String>,
}

impl Progress {
    pub fn of(tables: &[SyncTable]) -> Progress {
        let mut states = BTreeMap::new();
        for t in tables {
            *states.entry(t.state.clone()).or_insert(0) += 1;
        }
        Progress {
            total: tables.len(),
            ready: states.get("r").copied().unwrap_or(0),
            states,
            bytes: tables.iter().map(|t| t.size).sum(),
            publisher_bytes: None,
            copying: tables
                .iter()
                .filter(|t| t.state == "d")
                .map(|t| t.table.to_string())
                .collect(),
        }
    }

    pub fn done(&self) -> bool {
        self.ready == self.total
    }

    /// "3/5 tables ready (d data copy 1, i init 1), 12.0 MiB here; copying public.big"
    pub fn line(&self) -> String {
        let others: Vec<String> = self
            .states
            .iter()
            .filter(|(s, _)| s.as_str() != "r")
            .map(|(s, n)| format!("{s} {} {n}", state_name(s)))
            .collect();
        let mut line = format!("{}/{} tables ready", self.ready, self.total);
        if !others.is_empty() {
            line.push_str(&format!(" ({})", others.join(", ")));
        }
        match self.publisher_bytes {
            // Sizes on disk differ between two servers (free space, TOAST), so "of" is
            // approximate: the copy is done when every table is ready, not at 100 %.
            Some(total) if total > 0 => line.push_str(&format!(
                ", {} of ~{} copied",
                bytes(self.bytes),
                bytes(total)
            )),
            _ => line.push_str(&format!(", {} copied", bytes(self.bytes))),
        }
        if !self.copying.is_empty() {
            line.push_str(&format!("; copying {}", self.copying.join(", ")));
        }
        line
    }

    /// `[##########··········]`
    fn bar(&self, width: usize) -> String {
        let filled = match self.publisher_bytes {
            Some(total) if total > 0 && !self.done() => {
                let ratio = (self.bytes as f64 / total as f64).clamp(0.0, 0.99);
                (ratio * width as f64) as usize
            }
            _ => (self.ready * width)
                .checked_div(self.total)
                .unwrap_or(width),
        };
        format!("[{}{}]", "#".repeat(filled), "·".repeat(width - filled))
    }
}

/// `status --watch`: follows the initial sync of this database's subscriptions until every
/// table is ready (`r`). On a terminal, one redrawn progress line; otherwise a plain line
/// whenever the summary changes. `timeout`: give up with an error after that long.
///
/// With `publisher`, the subscribed tables' size there is the total the bytes copied are
/// shown against (and the terminal bar follows bytes rather than tables).
pub fn watch(
    db: &mut Db,
    mut publisher: Option<&mut Db>,
    interval: Duration,
    timeout: Option<Duration>,
) -> Result<(), Error> {
    let tty = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut last = String::new();
    let mut totals: Option<(usize, i64)> = None;
    loop {
        let (subscriptions, tables) = sync_tables(db)?;
        if subscriptions == 0 {
            return Err(Error::Watch(format!(
                "{} has no subscription in this database: status --watch follows a subscriber's \
                 initial table sync, so point --database-url at the subscriber",
                db.server
            )));
        }
        let mut progress = Progress::of(&tables);
        if let Some(publ) = publisher.as_deref_mut() {
            // Once per set of tables: their size there hardly moves during the copy.
            if totals.is_none_or(|(n, _)| n != tables.len()) {
                totals = Some((tables.len(), size_on(publ, &tables)?));
            }
            progress.publisher_bytes = totals.map(|(_, b)| b);
        }
        let line = progress.line();
        let elapsed = started.elapsed().as_secs_f64();
        if tty {
            print!("\r\x1b[2K{} {line}", progress.bar(24));
            std::io::stdout().flush()?;
        } else if line != last {
            println!("[{elapsed:6.1}s] {line}");
        }
        last = line;
        if progress.done() {
            if tty {
                println!();
            }
            println!(
                "initial sync done: {} table(s) ready, {} here, after {elapsed:.1} s",
                progress.total,
                bytes(progress.bytes)
            );
            return Ok(());
        }
        let remaining = match timeout {
            Some(t) if started.elapsed() >= t => {
                if tty {
                    println!();
                }
                return Err(Error::Watch(format!(
                    "initial table sync on {} not finished after {}: {last}",
                    db.server,
                    humantime::format_duration(t)
                )));
            }
            Some(t) => t - started.elapsed(),
            None => interval,
        };
        std::thread::sleep(interval.min(remaining));
    }
}

/// The total size of `tables` on `publ` (tables it does not have count 0).
fn size_on(publ: &mut Db, tables: &[SyncTable]) -> Result<i64, Error> {
    let names: Vec<String> = tables.iter().map(|t| t.table.quoted()).collect();
    Ok(publ
        .query_one(
            "SELECT coalesce(sum(pg_catalog.pg_table_size(pg_catalog.to_regclass(n))), 0)::int8 \
             FROM unnest($1::text[]) n",
            &[&names],
        )?
        .get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(state: &str, size: i64) -> SyncTable {
        SyncTable {
            subscription: "s".into(),
            table: QualifiedName::new("public", &format!("t_{state}_{size}")),
            state: state.into(),
            size,
        }
    }

    #[test]
    fn sizes_read_like_a_dba_expects() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(8 * 1024 * 1024), "8.0 MiB");
    }

    #[test]
    fn progress_lines() {
        let p = Progress::of(&[t("r", 1024), t("d", 2048), t("i", 0)]);
        assert!(!p.done());
        assert_eq!(
            p.line(),
            "1/3 tables ready (d data copy 1, i init 1), 3.0 KiB copied; copying public.t_d_2048"
        );
        assert_eq!(p.bar(6), "[##····]");
        let done = Progress::of(&[t("r", 1), t("r", 2)]);
        assert!(done.done());
        assert_eq!(done.line(), "2/2 tables ready, 3 B copied");
        assert!(Progress::of(&[]).done());
        let mut p = Progress::of(&[t("r", 1024), t("d", 1024)]);
        p.publisher_bytes = Some(4096);
        assert_eq!(
            p.line(),
            "1/2 tables ready (d data copy 1), 2.0 KiB of ~4.0 KiB copied; copying public.t_d_1024"
        );
        assert_eq!(p.bar(8), "[####····]");
    }
}

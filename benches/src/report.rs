//! The report: every figure as it is measured, then a table of all tunnels side by side, the
//! ratios replink/peer, the targets met or not, and the same as JSON.

use std::fmt::Write as _;

use crate::tunnel::{Kind, PEERS};

pub struct Row {
    pub figure: String,
    pub tunnel: String,
    /// None: the tunnel cannot do this figure; `note` says why.
    pub value: Option<f64>,
    pub unit: String,
    pub note: String,
}

#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    targets: Vec<Target>,
}

/// One of the targets and where the run stands.
struct Target {
    what: String,
    figure: String,
    tunnel: String,
    value: Option<f64>,
    limit: f64,
    at_most: bool,
}

impl Report {
    pub fn add(&mut self, figure: &str, tunnel: &str, value: f64, unit: &str) {
        println!("  {figure:<38} {tunnel:<22} {value:>10.2} {unit}");
        self.rows.push(Row {
            figure: figure.into(),
            tunnel: tunnel.into(),
            value: Some(value),
            unit: unit.into(),
            note: String::new(),
        });
    }

    /// A figure the tunnel cannot do, with the reason.
    pub fn na(&mut self, figure: &str, tunnel: &str, unit: &str, why: &str) {
        println!("  {figure:<38} {tunnel:<22} {:>10} ({why})", "n/a");
        self.rows.push(Row {
            figure: figure.into(),
            tunnel: tunnel.into(),
            value: None,
            unit: unit.into(),
            note: why.into(),
        });
    }

    pub fn get(&self, figure: &str, tunnel: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.figure == figure && r.tunnel == tunnel)
            .and_then(|r| r.value)
    }

    /// Records a target: `figure` of `tunnel` must be at most (or at least) `limit`.
    pub fn target(&mut self, what: &str, figure: &str, tunnel: &str, limit: f64, at_most: bool) {
        let value = self.get(figure, tunnel);
        self.targets.push(Target {
            what: what.into(),
            figure: figure.into(),
            tunnel: tunnel.into(),
            value,
            limit,
            at_most,
        });
    }

    /// Figures in the order they were first measured.
    fn figures(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for r in &self.rows {
            if !out.iter().any(|(f, _)| *f == r.figure) {
                out.push((r.figure.clone(), r.unit.clone()));
            }
        }
        out
    }

    /// Every figure, one column per tunnel; then replink/peer for every figure that a peer has
    /// (not for shares and wire/plain ratios, which are read as they are).
    pub fn print_tables(&self, tunnels: &[Kind]) {
        let names: Vec<String> = tunnels.iter().map(Kind::name).collect();
        println!("\n== all figures (n/a: see the line above for why)");
        let mut head = format!("  {:<38} {:<10}", "figure", "unit");
        for n in std::iter::once("direct".to_string()).chain(names.iter().cloned()) {
            let _ = write!(head, " {:>13}", short(&n));
        }
        println!("{head}");
        for (figure, unit) in self.figures() {
            let mut line = format!("  {figure:<38} {unit:<10}");
            for n in std::iter::once("direct").chain(names.iter().map(String::as_str)) {
                let cell = match self
                    .rows
                    .iter()
                    .find(|r| r.figure == figure && r.tunnel == n)
                {
                    Some(Row { value: Some(v), .. }) => format!("{v:.2}"),
                    Some(Row { value: None, .. }) => "n/a".into(),
                    None => "".into(),
                };
                let _ = write!(line, " {cell:>13}");
            }
            println!("{line}");
        }
        println!("\n== ratios replink/peer (lower is better for CPU, latency, memory; higher for MB/s, req/s, conn/s)");
        let mut head = format!("  {:<38} {:<22}", "figure", "replink");
        for p in PEERS {
            let _ = write!(head, " {:>9}", p.name());
        }
        println!("{head}");
        for (figure, unit) in self.figures() {
            if unit == "ratio" || PEERS.iter().all(|p| self.get(&figure, &p.name()).is_none()) {
                continue;
            }
            for k in tunnels.iter().filter(|k| k.is_replink()) {
                let Some(v) = self.get(&figure, &k.name()) else {
                    continue;
                };
                let mut line = format!("  {figure:<38} {:<22}", k.name());
                for p in PEERS {
                    let cell = match self.get(&figure, &p.name()) {
                        Some(h) if h != 0.0 => format!("{:.2}x", v / h),
                        _ => "n/a".into(),
                    };
                    let _ = write!(line, " {cell:>9}");
                }
                println!("{line}");
            }
        }
        println!("\n== targets (issue 7)");
        for t in &self.targets {
            let (op, met) = match t.value {
                Some(v) if t.at_most => ("≤", v <= t.limit),
                Some(v) => ("≥", v >= t.limit),
                None => ("", false),
            };
            println!(
                "  {:<58} {:>9} (want {op} {}) {}   [{} / {}]",
                t.what,
                t.value.map_or("n/a".into(), |v| format!("{v:.2}")),
                t.limit,
                if met { "met" } else { "NOT met" },
                t.tunnel,
                t.figure
            );
        }
    }

    /// The whole report as JSON: header fields, every row, every target.
    pub fn json(&self, header: &[(&str, String)]) -> String {
        let mut out = String::from("{");
        for (k, v) in header {
            let _ = write!(out, "\"{k}\":\"{}\",", escape(v));
        }
        out.push_str("\"rows\":[");
        for (i, r) in self.rows.iter().enumerate() {
            let value = r.value.map_or("null".into(), |v| format!("{v:.4}"));
            let _ = write!(
                out,
                "{}{{\"figure\":\"{}\",\"tunnel\":\"{}\",\"value\":{value},\"unit\":\"{}\",\"note\":\"{}\"}}",
                if i > 0 { "," } else { "" },
                escape(&r.figure),
                escape(&r.tunnel),
                escape(&r.unit),
                escape(&r.note)
            );
        }
        out.push_str("],\"ratios\":[");
        let mut first = true;
        for r in self
            .rows
            .iter()
            .filter(|r| r.tunnel.starts_with("replink") && r.unit != "ratio")
        {
            for p in PEERS {
                if let (Some(v), Some(h)) = (r.value, self.get(&r.figure, &p.name())) {
                    let _ = write!(
                        out,
                        "{}{{\"figure\":\"{}\",\"replink\":\"{}\",\"peer\":\"{}\",\"ratio\":{:.4}}}",
                        if first { "" } else { "," },
                        escape(&r.figure),
                        escape(&r.tunnel),
                        p.name(),
                        v / h
                    );
                    first = false;
                }
            }
        }
        out.push_str("],\"targets\":[");
        for (i, t) in self.targets.iter().enumerate() {
            let met = t.value.is_some_and(|v| {
                if t.at_most {
                    v <= t.limit
                } else {
                    v >= t.limit
                }
            });
            let _ = write!(
                out,
                "{}{{\"target\":\"{}\",\"figure\":\"{}\",\"tunnel\":\"{}\",\"value\":{},\"limit\":{},\"at_most\":{},\"met\":{met}}}",
                if i > 0 { "," } else { "" },
                escape(&t.what),
                escape(&t.figure),
                escape(&t.tunnel),
                t.value.map_or("null".into(), |v| format!("{v:.4}")),
                t.limit,
                t.at_most
            );
        }
        out.push_str("]}\n");
        out
    }
}

/// Column headers: `replink-zstd-131072` is too wide for a column.
fn short(name: &str) -> String {
    name.replace("replink-", "rl-")
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

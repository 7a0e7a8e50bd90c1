//! `replink status`: reads a running replink's `/metrics` and `/readyz` and prints, per
//! listener, its links, bytes, compression ratio, kernel offloads, certificate expiry and the
//! reasons connections failed.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

fn get(admin: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut conn = TcpStream::connect_timeout(&admin, Duration::from_secs(3))
        .with_context(|| format!("connecting to the admin listener at {admin}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{admin}{path}: not an HTTP answer"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("{admin}{path}: no status code"))?;
    Ok((code, body.to_owned()))
}

/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let mut labels = BTreeMap::new();
                for pair in rest.trim_end_matches('}').split("\",") {
                    if let Some((k, v)) = pair.split_once("=\"") {
                        labels.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
                    }
                }
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), BTreeMap::new()),
        };
        out.push((name, labels, value));
    }
    out
}

fn bytes(n: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", units[u])
    } else {
        format!("{v:.1} {}", units[u])
    }
}

pub fn print(admin: SocketAddr) -> anyhow::Result<()> {
    let (code, text) = get(admin, "/metrics")?;
    if code != 200 {
        bail!("{admin}/metrics answered {code}");
    }
    let samples = parse(&text);
    let value = |name: &str, listener: &str, extra: Option<(&str, &str)>| -> f64 {
        samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && l.get("listener").map(String::as_str) == Some(listener)
                    && extra.is_none_or(|(k, v)| l.get(k).map(String::as_str) == Some(v))
            })
            .map(|(_, _, v)| v)
            .sum()
    };
    let mut listeners: Vec<&str> = samples
        .iter()
        .filter(|(n, _, _)| n == "replink_connections_open")
        .filter_map(|(_, l, _)| l.get("listener").map(String::as_str))
        .collect();
    listeners.dedup();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    for name in listeners {
        let v = |metric: &str, extra| value(metric, name, extra);
        println!("listener {name}");
        println!(
            "  links: {} open; closed {} done, {} failed, {} refused",
            v("replink_connections_open", None),
            v("replink_connections_total", Some(("outcome", "done"))),
            v("replink_connections_total", Some(("outcome", "failed"))),
            v("replink_connections_total", Some(("outcome", "refused"))),
        );
        let dir = |d| v("replink_bytes_total", Some(("direction", d)));
        println!(
            "  bytes: plaintext in {} / out {}; TLS out {} / in {}; compression {:.2}x",
            bytes(dir("plain_in")),
            bytes(dir("plain_out")),
            bytes(dir("wire_out")),
            bytes(dir("wire_in")),
            v("replink_compression_ratio", None),
        );
        println!(
            "  kernel: kTLS {} ({} connections), BPF classifier {}",
            if v("replink_ktls_enabled", None) > 0.0 {
                "on"
            } else {
                "off"
            },
            v("replink_ktls_connections_total", None),
            if v("replink_bpf_classifier_loaded", None) > 0.0 {
                "loaded"
            } else {
                "off"
            },
        );
        let expiry = v("replink_certificate_expiry_timestamp_seconds", None);
        if expiry > 0.0 {
            println!(
                "  certificate expires in {:.0} days",
                (expiry - now) / 86400.0
            );
        }
        for (_, l, _) in samples.iter().filter(|(n, l, _)| {
            n == "replink_route_upstream_info"
                && l.get("listener").map(String::as_str) == Some(name)
        }) {
            let route = l.get("route").map_or("?", String::as_str);
            let rv = |metric: &str, k: &str, val: &str| -> f64 {
                samples
                    .iter()
                    .filter(|(n, rl, _)| {
                        n == metric
                            && rl.get("listener").map(String::as_str) == Some(name)
                            && rl.get("route").map(String::as_str) == Some(route)
                            && rl.get(k).map(String::as_str) == Some(val)
                    })
                    .map(|(_, _, v)| v)
                    .sum()
            };
            println!(
                "  route {route} -> {}: {} done, {} failed; plaintext {} in, {} out",
                l.get("upstream").map_or("?", String::as_str),
                rv("replink_route_connections_total", "outcome", "done"),
                rv("replink_route_connections_total", "outcome", "failed"),
                bytes(rv("replink_route_bytes_total", "direction", "plain_in")),
                bytes(rv("replink_route_bytes_total", "direction", "plain_out")),
            );
        }
        let reasons: Vec<String> = samples
            .iter()
            .filter(|(n, l, _)| {
                n == "replink_connection_errors_total"
                    && l.get("listener").map(String::as_str) == Some(name)
            })
            .map(|(_, l, v)| format!("{} {}", l.get("reason").map_or("?", String::as_str), v))
            .collect();
        if !reasons.is_empty() {
            println!("  errors: {}", reasons.join(", "));
        }
    }
    let (code, body) = get(admin, "/readyz")?;
    if code == 200 {
        println!("ready");
        Ok(())
    } else {
        bail!("not ready:\n{}", body.trim_end())
    }
}

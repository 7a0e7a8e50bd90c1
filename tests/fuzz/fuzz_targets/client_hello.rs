//! `parse_client_hello` on arbitrary bytes: never panics, and its answers hold up as the proxy
//! uses them. The proxy reads a connection's first bytes and calls the parser again after
//! every read, so:
//!
//! - an answer about the bytes is final: once `Complete` or an error, more bytes behind the
//!   input change nothing;
//! - `Incomplete { needed_at_least: n }` is honest: n is past the input, and any input of
//!   fewer than n bytes that starts the same way gets the same answer (the proxy may read
//!   exactly up to n without missing a decision);
//! - a `Complete` hello uses only `record_bytes` of the input, its server_name is a valid,
//!   lower-cased host name that appears (up to case and one trailing dot) in those bytes, and
//!   each ALPN protocol appears there too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replink_ebpf::{parse_client_hello, HelloError, Parse};

fuzz_target!(|data: &[u8]| {
    let full = parse_client_hello(data);
    if let Ok(Parse::Complete(hello)) = &full {
        let used = &data[..hello.record_bytes];
        if let Some(name) = &hello.server_name {
            assert!(!name.is_empty() && name.len() <= 253, "{name:?}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)),
                "{name:?}"
            );
            assert!(contains_ignoring_case(used, name.as_bytes()), "{name:?}");
        }
        for protocol in &hello.alpn {
            assert!(!protocol.is_empty());
            assert!(used
                .windows(protocol.len())
                .any(|w| w == protocol.as_slice()));
        }
        // The same hello from exactly its records.
        assert_eq!(parse_client_hello(used), full);
    }

    // Prefix consistency over a sample of cut points (all of them would be quadratic).
    let mut cuts: Vec<usize> = (0..=data.len().min(48)).collect();
    cuts.extend([
        data.len() / 4,
        data.len() / 2,
        data.len() * 3 / 4,
        data.len(),
    ]);
    cuts.extend(data.len().checked_sub(1));
    if let Ok(Parse::Complete(h)) = &full {
        cuts.extend([h.record_bytes.saturating_sub(1), h.record_bytes]);
    }
    cuts.retain(|&c| c <= data.len());
    cuts.sort_unstable();
    cuts.dedup();
    let answers: Vec<(usize, Result<Parse, HelloError>)> = cuts
        .iter()
        .map(|&c| (c, parse_client_hello(&data[..c])))
        .collect();
    for (i, (short, a)) in answers.iter().enumerate() {
        if let Ok(Parse::Incomplete { needed_at_least }) = a {
            assert!(*needed_at_least > *short, "{short} bytes: {a:?}");
        }
        for (long, b) in &answers[i + 1..] {
            match a {
                Ok(Parse::Incomplete { needed_at_least }) => {
                    if long < needed_at_least {
                        assert_eq!(a, b, "cut at {short} then at {long} (< {needed_at_least})");
                    }
                }
                _ => assert_eq!(a, b, "decided at {short} bytes, changed at {long}"),
            }
        }
    }
});

fn contains_ignoring_case(haystack: &[u8], lower: &[u8]) -> bool {
    haystack
        .windows(lower.len())
        .any(|w| w.eq_ignore_ascii_case(lower))
}

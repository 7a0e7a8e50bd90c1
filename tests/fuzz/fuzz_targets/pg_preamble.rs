//! libpq's plaintext preamble (`Preamble::next`, proxy/src/pg.rs) on arbitrary bytes cut
//! into arbitrary reads, driven as `conn::read_pg_preamble` drives it: never panics, and
//!
//! - it decides from at most 8 bytes past what it consumed (`Read` only with fewer), and
//!   consumes only whole 8-byte requests, two at most;
//! - the decisions do not depend on how the bytes were cut into reads (compared with one byte
//!   per read), except the one the protocol requires: bytes that arrive together with an
//!   SSLRequest, before its answer, are refused (`DataAfterSslRequest`) where one byte per
//!   read starts TLS;
//! - the log value agrees with the decisions.
//!
//! The input is the client's byte stream as is (seeds are real packets); the cut points come
//! from a hash of it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replink::fuzz_api::{Next, Plaintext, Preamble, PreambleError};

type Decision = Result<Next, PreambleError>;

fuzz_target!(|data: &[u8]| {
    let bytewise = drive(data, (1..=data.len()).collect());
    let mut h = data
        .iter()
        .fold(data.len() as u64 ^ 0x9e37_79b9_7f4a_7c15, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let mut ends = Vec::new();
    let mut end = 0;
    while end < data.len() {
        h = h.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        end = (end + 1 + (h >> 59) as usize).min(data.len());
        ends.push(end);
    }
    for cut in [ends, vec![data.len()]] {
        let chunked = drive(data, cut);
        match (chunked.split_last(), bytewise.split_last()) {
            (Some((Err(PreambleError::DataAfterSslRequest), a)), Some((Ok(Next::StartTls), b)))
                if a == b => {}
            _ => assert_eq!(chunked, bytewise),
        }
    }
});

/// Feeds `data` up to each of `ends` in turn, answering like the listener; the decisions
/// other than `Read`, up to the first final one.
fn drive(data: &[u8], ends: Vec<usize>) -> Vec<Decision> {
    let mut p = Preamble::new();
    let mut decisions = Vec::new();
    for end in std::iter::once(0).chain(ends) {
        let received = &data[..end];
        loop {
            let d = p.next(received);
            let consumed = p.consumed();
            assert!(
                consumed <= end && consumed <= 16 && consumed.is_multiple_of(8),
                "{consumed}"
            );
            let log = p.log_value().to_string();
            let gssenc = decisions.contains(&Ok(Next::RefuseGssEnc)) || d == Ok(Next::RefuseGssEnc);
            assert_eq!(log.starts_with("gssenc_then_"), gssenc, "{log}");
            match d {
                Ok(Next::Read) => {
                    let rest = &received[consumed..];
                    assert!(rest.len() < 8 && rest.first() != Some(&0x16), "{rest:?}");
                    assert!(log.ends_with("incomplete"), "{log}");
                    break;
                }
                Ok(Next::RefuseGssEnc) => {
                    assert!(!decisions.contains(&d), "a second GSSENCRequest answered");
                    assert!(p.is_libpq());
                    decisions.push(d);
                }
                _ => {
                    let want = match &d {
                        Ok(Next::StartTls) => "ssl_request",
                        Ok(Next::DirectTls) => "direct_tls",
                        Ok(Next::RefusePlaintext(Plaintext::Startup)) => "startup",
                        Ok(Next::RefusePlaintext(Plaintext::Cancel)) => "cancel_request",
                        Err(_) => "bad",
                        Ok(Next::Read | Next::RefuseGssEnc) => unreachable!(),
                    };
                    assert!(log.ends_with(want), "{d:?} {log}");
                    decisions.push(d);
                    return decisions;
                }
            }
        }
    }
    decisions
}

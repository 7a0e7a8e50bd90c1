//! libpq's plaintext preamble, read by a reverse listener with a `postgres` route before TLS,
//! so a PostgreSQL client can connect to replink itself with its own TLS and client
//! certificate (no forward end).
//!
//! How libpq opens a connection (PostgreSQL protocol, "Message Flow" and "SSL Session
//! Encryption"), and what the listener does:
//!
//! ```text
//! SSLRequest     len 8, code 80877103   -> answer `S`; the TLS handshake follows
//! GSSENCRequest  len 8, code 80877104   -> answer `N`; the client's next message follows
//! TLS record     first byte 0x16        -> direct TLS (PostgreSQL 17, ALPN `postgresql`)
//! StartupMessage len, version 3.x       -> plaintext: an ErrorResponse, then close
//! CancelRequest  len, code 80877102     -> plaintext: the same
//! anything else                         -> close
//! ```
//!
//! A TLS record cannot be mistaken for a message: its first byte, 0x16, would make a length of
//! at least 0x1600_0000, far above any message accepted here.
//!
//! This module does no I/O: [`Preamble::next`] looks at the bytes received so far and says
//! what to do; `conn` reads and writes. It decides from at most 8 bytes past what it consumed,
//! and consumes at most two 8-byte requests, so nothing a client sends makes it wait for or
//! hold more than one read buffer.

use std::fmt;

/// SSLRequest's code: 1234 in the high 16 bits, 5679 in the low.
pub const SSL_REQUEST: u32 = 80_877_103;
/// GSSENCRequest's code (1234, 5680).
pub const GSSENC_REQUEST: u32 = 80_877_104;
/// CancelRequest's code (1234, 5678).
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// The major number of request codes, where a StartupMessage has its protocol's major version.
const REQUEST_MAJOR: u32 = 1234;
/// Largest StartupMessage accepted, length word included: PostgreSQL's own limit
/// (`MAX_STARTUP_PACKET_LENGTH`, 10000 bytes after the length word).
pub const MAX_STARTUP_LEN: u32 = 10_004;
/// CancelRequest lengths: a 4-byte key (protocol 3.0) up to a 256-byte key (3.2).
const CANCEL_LENS: std::ops::RangeInclusive<u32> = 16..=268;
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;
/// Length word and code (or protocol version): what every decision needs.
const HEADER: usize = 8;

/// The answer to a request the listener does not grant (GSSENCRequest).
pub const ANSWER_NO: &[u8] = b"N";
/// The answer to an SSLRequest: TLS follows.
pub const ANSWER_TLS: &[u8] = b"S";

/// What the listener does next with the bytes received so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Not enough bytes to decide: read more.
    Read,
    /// Write [`ANSWER_NO`] and keep going: the client's next message follows.
    RefuseGssEnc,
    /// Write [`ANSWER_TLS`]; what the client sends next is its TLS ClientHello.
    StartTls,
    /// The bytes from [`Preamble::consumed`] on are a TLS record: direct TLS.
    DirectTls,
    /// A message in plaintext: write [`plaintext_refusal`] and close, never forward it.
    RefusePlaintext(Plaintext),
}

/// The plaintext messages a client may send instead of asking for TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plaintext {
    Startup,
    Cancel,
}

impl fmt::Display for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Plaintext::Startup => "StartupMessage",
            Plaintext::Cancel => "CancelRequest",
        })
    }
}

/// A preamble no PostgreSQL client sends: the connection is closed without an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreambleError {
    #[error("message length {0} (a startup message is 8..={MAX_STARTUP_LEN} bytes)")]
    BadLength(u32),
    #[error("{what} of length {len} (want {want})")]
    RequestLength {
        what: &'static str,
        len: u32,
        want: &'static str,
    },
    #[error("unknown request code {0}")]
    UnknownRequest(u32),
    #[error("unsupported protocol version {major}.{minor}")]
    Version { major: u32, minor: u32 },
    #[error("data behind the SSLRequest before its answer")]
    DataAfterSslRequest,
    #[error("a second GSSENCRequest")]
    RepeatedGssEnc,
}

/// How far a connection's preamble got, for the log field `pg_preamble`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Arrival {
    /// Not looked for: the listener has no `postgres` route, so TLS starts at the first byte.
    #[default]
    NotSniffed,
    /// The client closed or stalled before its first message was complete.
    Incomplete,
    DirectTls,
    SslRequest,
    Startup,
    CancelRequest,
    /// Something no PostgreSQL client sends.
    Bad,
}

/// The state of one connection's preamble.
#[derive(Debug, Default)]
pub struct Preamble {
    consumed: usize,
    gssenc_refused: bool,
    arrival: Option<Arrival>,
}

impl Preamble {
    pub fn new() -> Preamble {
        Preamble::default()
    }

    /// Bytes of the input taken by requests answered so far (a GSSENCRequest, an SSLRequest).
    pub fn consumed(&self) -> usize {
        self.consumed
    }

    /// Decides from `received`, all bytes the client sent so far (from its first), what to do
    /// next. Call again after each read and after each answer written.
    pub fn next(&mut self, received: &[u8]) -> Result<Next, PreambleError> {
        let result = self.step(received);
        self.arrival = match &result {
            Ok(Next::Read | Next::RefuseGssEnc) => None,
            Ok(Next::StartTls) => Some(Arrival::SslRequest),
            Ok(Next::DirectTls) => Some(Arrival::DirectTls),
            Ok(Next::RefusePlaintext(Plaintext::Startup)) => Some(Arrival::Startup),
            Ok(Next::RefusePlaintext(Plaintext::Cancel)) => Some(Arrival::CancelRequest),
            Err(_) => Some(Arrival::Bad),
        };
        result
    }

    fn step(&mut self, received: &[u8]) -> Result<Next, PreambleError> {
        let rest = received.get(self.consumed..).unwrap_or_default();
        let Some(&first) = rest.first() else {
            return Ok(Next::Read);
        };
        if first == TLS_HANDSHAKE {
            return Ok(Next::DirectTls);
        }
        // The length alone can rule a client out as soon as its 4 bytes are in.
        if let Some(len) = rest.get(..4) {
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            if !(HEADER as u32..=MAX_STARTUP_LEN).contains(&len) {
                return Err(PreambleError::BadLength(len));
            }
        }
        let Some(head) = rest.get(..HEADER) else {
            return Ok(Next::Read);
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        let eight_bytes = |what| {
            if len == 8 {
                Ok(())
            } else {
                Err(PreambleError::RequestLength {
                    what,
                    len,
                    want: "8",
                })
            }
        };
        match code {
            SSL_REQUEST => {
                eight_bytes("SSLRequest")?;
                // The client must wait for the answer; bytes behind the request would be taken
                // as the start of TLS without it (PostgreSQL refuses them too, CVE-2021-23214).
                if rest.len() > HEADER {
                    return Err(PreambleError::DataAfterSslRequest);
                }
                self.consumed += HEADER;
                Ok(Next::StartTls)
            }
            GSSENC_REQUEST => {
                eight_bytes("GSSENCRequest")?;
                if self.gssenc_refused {
                    return Err(PreambleError::RepeatedGssEnc);
                }
                self.gssenc_refused = true;
                self.consumed += HEADER;
                Ok(Next::RefuseGssEnc)
            }
            CANCEL_REQUEST if CANCEL_LENS.contains(&len) => {
                Ok(Next::RefusePlaintext(Plaintext::Cancel))
            }
            CANCEL_REQUEST => Err(PreambleError::RequestLength {
                what: "CancelRequest",
                len,
                want: "16..=268",
            }),
            _ if code >> 16 == 3 => Ok(Next::RefusePlaintext(Plaintext::Startup)),
            _ if code >> 16 == REQUEST_MAJOR => Err(PreambleError::UnknownRequest(code)),
            _ => Err(PreambleError::Version {
                major: code >> 16,
                minor: code & 0xffff,
            }),
        }
    }

    /// How far the preamble got (the last decision, or [`Arrival::Incomplete`] before one).
    pub fn arrival(&self) -> Arrival {
        self.arrival.unwrap_or(Arrival::Incomplete)
    }

    /// The client sent libpq's own requests (SSLRequest, GSSENCRequest): it speaks the
    /// PostgreSQL protocol, not replink's.
    pub fn is_libpq(&self) -> bool {
        self.gssenc_refused || self.arrival == Some(Arrival::SslRequest)
    }

    /// The value of the log field `pg_preamble`: the arrival, after `gssenc_then_` when a
    /// GSSENCRequest was answered `N` first.
    pub fn log_value(&self) -> PreambleLog {
        PreambleLog {
            gssenc_refused: self.gssenc_refused,
            arrival: self.arrival(),
        }
    }
}

/// The log field of a listener that did not read a preamble.
pub const NOT_SNIFFED: PreambleLog = PreambleLog {
    gssenc_refused: false,
    arrival: Arrival::NotSniffed,
};

/// `pg_preamble=` in the connection log: `none`, `direct_tls`, `ssl_request`, `startup`,
/// `cancel_request`, `incomplete`, `bad`, each possibly after `gssenc_then_`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreambleLog {
    gssenc_refused: bool,
    arrival: Arrival,
}

impl fmt::Display for PreambleLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.gssenc_refused {
            f.write_str("gssenc_then_")?;
        }
        f.write_str(match self.arrival {
            Arrival::NotSniffed => "none",
            Arrival::Incomplete => "incomplete",
            Arrival::DirectTls => "direct_tls",
            Arrival::SslRequest => "ssl_request",
            Arrival::Startup => "startup",
            Arrival::CancelRequest => "cancel_request",
            Arrival::Bad => "bad",
        })
    }
}

/// What a plaintext StartupMessage (or CancelRequest) is told before the connection closes.
pub const REFUSAL_MESSAGE: &str = "replink: this server requires TLS with a client certificate \
     (sslmode=verify-full with sslcert/sslkey)";
const REFUSAL_HINT: &str = "Connect with sslmode=verify-full sslrootcert=CA sslcert=CERT \
     sslkey=KEY and host set to the route's name (libpq sends it as SNI).";

/// The ErrorResponse for a plaintext client: FATAL, SQLSTATE 28000
/// (invalid_authorization_specification, as PostgreSQL's own "no pg_hba.conf entry … no
/// encryption"), [`REFUSAL_MESSAGE`] and a hint.
pub fn plaintext_refusal() -> Vec<u8> {
    error_response(&[
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "28000"),
        (b'M', REFUSAL_MESSAGE),
        (b'H', REFUSAL_HINT),
    ])
}

/// An ErrorResponse ('E', length, then each field as a code byte and a NUL-terminated string,
/// then a NUL).
fn error_response(fields: &[(u8, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (code, text) in fields {
        body.push(*code);
        body.extend_from_slice(text.as_bytes());
        body.push(0);
    }
    body.push(0);
    // The fields are this module's constants, a few hundred bytes: far from u32::MAX.
    let len = (body.len() + 4) as u32;
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(b'E');
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(len: u32, code: u32) -> Vec<u8> {
        let mut m = len.to_be_bytes().to_vec();
        m.extend_from_slice(&code.to_be_bytes());
        m
    }

    fn ssl_request() -> Vec<u8> {
        msg(8, SSL_REQUEST)
    }

    fn gssenc_request() -> Vec<u8> {
        msg(8, GSSENC_REQUEST)
    }

    /// A StartupMessage as libpq 15 sends it (protocol 3.0, user and database).
    fn startup() -> Vec<u8> {
        let params = b"user\0postgres\0database\0postgres\0\0";
        let mut m = msg(8 + params.len() as u32, 196_608);
        m.extend_from_slice(params);
        m
    }

    fn cancel() -> Vec<u8> {
        let mut m = msg(16, CANCEL_REQUEST);
        m.extend_from_slice(&[0, 0, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef]);
        m
    }

    /// The start of a TLS 1.3 ClientHello record.
    fn client_hello() -> Vec<u8> {
        vec![
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ]
    }

    type Decisions = Vec<Result<Next, PreambleError>>;

    /// Feeds `input` one byte at a time, like a client whose bytes arrive in separate
    /// segments, answering as a listener would; returns the decisions other than `Read`.
    fn drive_bytewise(input: &[u8]) -> (Decisions, Preamble) {
        let mut p = Preamble::new();
        let mut decisions = Vec::new();
        for end in 0..=input.len() {
            loop {
                let d = p.next(&input[..end]);
                match d {
                    Ok(Next::Read) => break,
                    Ok(Next::RefuseGssEnc) => decisions.push(d),
                    _ => {
                        decisions.push(d);
                        return (decisions, p);
                    }
                }
            }
        }
        (decisions, p)
    }

    #[test]
    fn ssl_request_starts_tls() {
        let mut p = Preamble::new();
        assert_eq!(p.next(&ssl_request()), Ok(Next::StartTls));
        assert_eq!(p.consumed(), 8);
        assert!(p.is_libpq());
        assert_eq!(p.arrival(), Arrival::SslRequest);
        assert_eq!(p.log_value().to_string(), "ssl_request");
    }

    #[test]
    fn direct_tls_is_decided_on_the_first_byte() {
        let mut p = Preamble::new();
        assert_eq!(p.next(&[0x16]), Ok(Next::DirectTls));
        assert_eq!(p.consumed(), 0);
        assert!(!p.is_libpq());
        assert_eq!(p.log_value().to_string(), "direct_tls");
        let mut p = Preamble::new();
        assert_eq!(p.next(&client_hello()), Ok(Next::DirectTls));
    }

    #[test]
    fn plaintext_startup_and_cancel_are_refused() {
        let mut p = Preamble::new();
        assert_eq!(
            p.next(&startup()),
            Ok(Next::RefusePlaintext(Plaintext::Startup))
        );
        assert_eq!(p.log_value().to_string(), "startup");
        assert!(!p.is_libpq());
        // Protocol 3.2 (PostgreSQL 18) is a StartupMessage too.
        let mut p = Preamble::new();
        assert_eq!(
            p.next(&msg(40, 196_610)),
            Ok(Next::RefusePlaintext(Plaintext::Startup))
        );
        let mut p = Preamble::new();
        assert_eq!(
            p.next(&cancel()),
            Ok(Next::RefusePlaintext(Plaintext::Cancel))
        );
        assert_eq!(p.log_value().to_string(), "cancel_request");
        let mut p = Preamble::new();
        assert_eq!(
            p.next(&msg(268, CANCEL_REQUEST)),
            Ok(Next::RefusePlaintext(Plaintext::Cancel))
        );
    }

    #[test]
    fn gssenc_then_ssl_request() {
        let mut p = Preamble::new();
        let mut input = gssenc_request();
        assert_eq!(p.next(&input), Ok(Next::RefuseGssEnc));
        assert_eq!(p.consumed(), 8);
        assert_eq!(p.next(&input), Ok(Next::Read));
        assert_eq!(p.arrival(), Arrival::Incomplete);
        assert_eq!(p.log_value().to_string(), "gssenc_then_incomplete");
        assert!(p.is_libpq());
        input.extend_from_slice(&ssl_request());
        assert_eq!(p.next(&input), Ok(Next::StartTls));
        assert_eq!(p.consumed(), 16);
        assert_eq!(p.log_value().to_string(), "gssenc_then_ssl_request");
    }

    #[test]
    fn gssenc_then_startup_or_direct_tls() {
        let mut input = gssenc_request();
        input.extend_from_slice(&startup());
        let mut p = Preamble::new();
        assert_eq!(p.next(&input), Ok(Next::RefuseGssEnc));
        assert_eq!(
            p.next(&input),
            Ok(Next::RefusePlaintext(Plaintext::Startup))
        );
        assert_eq!(p.log_value().to_string(), "gssenc_then_startup");

        let mut input = gssenc_request();
        input.extend_from_slice(&client_hello());
        let mut p = Preamble::new();
        assert_eq!(p.next(&input), Ok(Next::RefuseGssEnc));
        assert_eq!(p.next(&input), Ok(Next::DirectTls));
        assert_eq!(p.consumed(), 8);
        assert!(p.is_libpq(), "only libpq sends GSSENCRequest");
    }

    #[test]
    fn every_message_split_byte_by_byte() {
        let cases: Vec<(Vec<u8>, Decisions, &str)> = vec![
            (ssl_request(), vec![Ok(Next::StartTls)], "ssl_request"),
            (
                startup(),
                vec![Ok(Next::RefusePlaintext(Plaintext::Startup))],
                "startup",
            ),
            (
                cancel(),
                vec![Ok(Next::RefusePlaintext(Plaintext::Cancel))],
                "cancel_request",
            ),
            (client_hello(), vec![Ok(Next::DirectTls)], "direct_tls"),
            (
                [gssenc_request(), ssl_request()].concat(),
                vec![Ok(Next::RefuseGssEnc), Ok(Next::StartTls)],
                "gssenc_then_ssl_request",
            ),
            (
                [gssenc_request(), startup()].concat(),
                vec![
                    Ok(Next::RefuseGssEnc),
                    Ok(Next::RefusePlaintext(Plaintext::Startup)),
                ],
                "gssenc_then_startup",
            ),
        ];
        for (input, want, log) in cases {
            let (got, p) = drive_bytewise(&input);
            assert_eq!(got, want, "{input:02x?}");
            assert_eq!(p.log_value().to_string(), log, "{input:02x?}");
        }
    }

    #[test]
    fn a_message_cut_short_waits_for_more() {
        let mut p = Preamble::new();
        for end in 0..8 {
            assert_eq!(p.next(&ssl_request()[..end]), Ok(Next::Read), "{end} bytes");
        }
        assert_eq!(p.arrival(), Arrival::Incomplete);
        assert_eq!(p.log_value().to_string(), "incomplete");
    }

    #[test]
    fn bad_lengths_are_refused() {
        for len in [0, 4, 7] {
            let mut p = Preamble::new();
            assert_eq!(
                p.next(&msg(len, 196_608)),
                Err(PreambleError::BadLength(len))
            );
            assert_eq!(p.log_value().to_string(), "bad");
        }
        let err = |len, code| Preamble::new().next(&msg(len, code)).unwrap_err();
        assert!(matches!(
            err(16, SSL_REQUEST),
            PreambleError::RequestLength { len: 16, .. }
        ));
        assert!(matches!(
            err(12, GSSENC_REQUEST),
            PreambleError::RequestLength { len: 12, .. }
        ));
        assert!(matches!(
            err(8, CANCEL_REQUEST),
            PreambleError::RequestLength { len: 8, .. }
        ));
        assert!(matches!(
            err(300, CANCEL_REQUEST),
            PreambleError::RequestLength { len: 300, .. }
        ));
    }

    #[test]
    fn oversized_is_refused_from_the_length_alone() {
        // 10004 is PostgreSQL's limit; one more is refused before the code arrives.
        assert_eq!(
            Preamble::new().next(&msg(MAX_STARTUP_LEN, 196_608)),
            Ok(Next::RefusePlaintext(Plaintext::Startup))
        );
        let over = (MAX_STARTUP_LEN + 1).to_be_bytes();
        assert_eq!(
            Preamble::new().next(&over),
            Err(PreambleError::BadLength(MAX_STARTUP_LEN + 1))
        );
        assert_eq!(
            Preamble::new().next(&u32::MAX.to_be_bytes()),
            Err(PreambleError::BadLength(u32::MAX))
        );
        // Text is a huge length: an HTTP request or a banner is refused at its fourth byte.
        assert!(matches!(
            Preamble::new().next(b"GET "),
            Err(PreambleError::BadLength(_))
        ));
        assert_eq!(Preamble::new().next(b"GET"), Ok(Next::Read));
    }

    #[test]
    fn unknown_codes_and_versions_are_refused() {
        assert_eq!(
            Preamble::new().next(&msg(8, (1234 << 16) | 5681)),
            Err(PreambleError::UnknownRequest((1234 << 16) | 5681))
        );
        assert_eq!(
            Preamble::new().next(&msg(40, 2 << 16)),
            Err(PreambleError::Version { major: 2, minor: 0 })
        );
        assert_eq!(
            Preamble::new().next(&msg(40, 0xdead_beef)),
            Err(PreambleError::Version {
                major: 0xdead,
                minor: 0xbeef
            })
        );
    }

    #[test]
    fn data_behind_an_ssl_request_is_refused() {
        let mut input = ssl_request();
        input.extend_from_slice(&client_hello());
        let mut p = Preamble::new();
        assert_eq!(p.next(&input), Err(PreambleError::DataAfterSslRequest));
        assert_eq!(p.log_value().to_string(), "bad");
    }

    #[test]
    fn a_second_gssenc_request_is_refused() {
        let input = [gssenc_request(), gssenc_request()].concat();
        let mut p = Preamble::new();
        assert_eq!(p.next(&input), Ok(Next::RefuseGssEnc));
        assert_eq!(p.next(&input), Err(PreambleError::RepeatedGssEnc));
        assert_eq!(p.log_value().to_string(), "gssenc_then_bad");
    }

    #[test]
    fn not_sniffed_logs_none() {
        assert_eq!(NOT_SNIFFED.to_string(), "none");
    }

    #[test]
    fn error_response_is_well_formed() {
        let e = plaintext_refusal();
        assert_eq!(e[0], b'E');
        let len = u32::from_be_bytes([e[1], e[2], e[3], e[4]]) as usize;
        assert_eq!(
            len,
            e.len() - 1,
            "the length counts itself, not the type byte"
        );
        // libpq takes an ErrorResponse during start-up only up to 30000 bytes.
        assert!(len < 30_000);
        assert_eq!(e.last(), Some(&0));
        let fields: Vec<(u8, String)> = e[5..e.len() - 1]
            .split(|&b| b == 0)
            .filter(|f| !f.is_empty())
            .map(|f| (f[0], String::from_utf8(f[1..].to_vec()).unwrap()))
            .collect();
        let field = |code| {
            fields
                .iter()
                .find(|(c, _)| *c == code)
                .map(|(_, t)| t.as_str())
        };
        assert_eq!(field(b'S'), Some("FATAL"));
        assert_eq!(field(b'V'), Some("FATAL"));
        assert_eq!(field(b'C'), Some("28000"));
        assert!(field(b'M').is_some_and(|m| m.contains("requires TLS")));
        assert!(field(b'H').is_some());
    }
}

//! tokio-postgres' TLS traits over tokio-rustls: [`LibpqTls`] makes one connector per host,
//! [`LibpqTlsStream`] carries the connection and its `tls-server-end-point` channel binding,
//! and every TLS error becomes a [`TlsFailure`]: a sentence that names the file, host or route
//! to fix. A server that refuses our client certificate under TLS 1.3 says so only after the
//! client's side of the handshake is done, in the first read; the stream maps those errors too.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::SslMode;

/// What the messages of a failed handshake refer to.
#[derive(Debug)]
pub struct Context {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub sni: bool,
}

/// libpq's TLS for tokio-postgres: one rustls config per connection string.
#[derive(Clone)]
pub struct LibpqTls {
    config: Arc<ClientConfig>,
    context: Arc<Context>,
}

impl LibpqTls {
    pub(super) fn new(config: Arc<ClientConfig>, context: Context) -> LibpqTls {
        LibpqTls {
            config,
            context: Arc::new(context),
        }
    }
}

impl std::fmt::Debug for LibpqTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibpqTls")
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

/// A TLS failure, phrased as what to fix.
#[derive(Debug)]
pub struct TlsFailure(String);

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsFailure {}

impl TlsFailure {
    /// The failure inside a tokio-postgres error, wherever in its chain it sits (directly, or
    /// inside an I/O error of the stream).
    pub fn find<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a TlsFailure> {
        let mut next = Some(e);
        while let Some(e) = next {
            if let Some(failure) = e.downcast_ref::<TlsFailure>() {
                return Some(failure);
            }
            // io::Error's `source` skips the error it wraps: look inside it by hand.
            if let Some(inner) = e
                .downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<TlsFailure>())
            {
                return Some(inner);
            }
            next = e.source();
        }
        None
    }
}

impl<S> MakeTlsConnect<S> for LibpqTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = LibpqTlsStream<S>;
    type TlsConnect = LibpqTlsConnect;
    type Error = TlsFailure;

    fn make_tls_connect(&mut self, host: &str) -> Result<LibpqTlsConnect, TlsFailure> {
        let name = ServerName::try_from(host.to_owned()).map_err(|e| {
            TlsFailure(format!(
                "host {host:?} cannot be used as a TLS server name ({e}): give the server's \
                 DNS name or IP address in host="
            ))
        })?;
        Ok(LibpqTlsConnect {
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
            name,
            diagnosis: Diagnosis {
                context: self.context.clone(),
                host: host.to_owned(),
            },
        })
    }
}

/// The connector for one host.
pub struct LibpqTlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    diagnosis: Diagnosis,
}

impl<S> TlsConnect<S> for LibpqTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = LibpqTlsStream<S>;
    type Error = TlsFailure;
    type Future = Pin<Box<dyn Future<Output = Result<LibpqTlsStream<S>, TlsFailure>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let LibpqTlsConnect {
            connector,
            name,
            diagnosis,
        } = self;
        Box::pin(async move {
            match connector.connect(name, stream).await {
                Ok(inner) => Ok(LibpqTlsStream { inner, diagnosis }),
                Err(e) => Err(diagnosis.of_io(&e).unwrap_or_else(|| {
                    TlsFailure(format!(
                        "the connection to {} failed during the TLS handshake ({e}): is it a \
                         PostgreSQL server or a replink :postgres route?",
                        diagnosis.host
                    ))
                })),
            }
        })
    }
}

/// A TLS connection to the server.
pub struct LibpqTlsStream<S> {
    inner: tokio_rustls::client::TlsStream<S>,
    diagnosis: Diagnosis,
}

impl<S> LibpqTlsStream<S> {
    /// An I/O error, with a TLS error inside it replaced by its [`TlsFailure`].
    fn explain(&self, e: io::Error) -> io::Error {
        match self.diagnosis.of_io(&e) {
            Some(failure) => io::Error::new(e.kind(), failure),
            None => e,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for LibpqTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.explain(e))),
            other => other,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for LibpqTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.explain(e))),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.explain(e))),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for LibpqTlsStream<S> {
    /// `tls-server-end-point` (RFC 5929), for SCRAM-SHA-256-PLUS: the hash of the server's
    /// certificate, with the hash of its signature algorithm (SHA-256 for MD5 and SHA-1).
    fn channel_binding(&self) -> ChannelBinding {
        let (_, connection) = self.inner.get_ref();
        let Some(cert) = connection.peer_certificates().and_then(|c| c.first()) else {
            return ChannelBinding::none();
        };
        match end_point_digest(cert.as_ref()) {
            Some(algorithm) => ChannelBinding::tls_server_end_point(
                ring::digest::digest(algorithm, cert.as_ref())
                    .as_ref()
                    .to_vec(),
            ),
            None => ChannelBinding::none(),
        }
    }
}

/// The digest `tls-server-end-point` uses for a certificate, from its signature algorithm;
/// `None` for algorithms without one of their own (Ed25519, RSA-PSS), as libpq's server
/// side also has no binding for them.
fn end_point_digest(cert: &[u8]) -> Option<&'static ring::digest::Algorithm> {
    use x509_parser::oid_registry as oid;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let alg = &parsed.signature_algorithm.algorithm;
    let sha256 = [
        oid::OID_PKCS1_MD5WITHRSAENC,
        oid::OID_PKCS1_SHA1WITHRSA,
        oid::OID_PKCS1_SHA256WITHRSA,
        oid::OID_SIG_ECDSA_WITH_SHA256,
    ];
    if sha256.contains(alg) {
        Some(&ring::digest::SHA256)
    } else if [oid::OID_PKCS1_SHA384WITHRSA, oid::OID_SIG_ECDSA_WITH_SHA384].contains(alg) {
        Some(&ring::digest::SHA384)
    } else if [oid::OID_PKCS1_SHA512WITHRSA, oid::OID_SIG_ECDSA_WITH_SHA512].contains(alg) {
        Some(&ring::digest::SHA512)
    } else {
        None
    }
}

/// Turns TLS errors into sentences, knowing the host, the mode and the files.
struct Diagnosis {
    context: Arc<Context>,
    host: String,
}

impl Diagnosis {
    /// The failure for an I/O error that carries a rustls error (as tokio-rustls reports them).
    fn of_io(&self, e: &io::Error) -> Option<TlsFailure> {
        let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
        Some(TlsFailure(self.explain(tls)))
    }

    fn explain(&self, e: &rustls::Error) -> String {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        let host = &self.host;
        let ctx = &self.context;
        let root = ctx
            .root_cert
            .as_ref()
            .map_or_else(|| "(none)".into(), |p| p.display().to_string());
        let our_cert = match &ctx.cert {
            Some(p) => format!("our client certificate (sslcert {})", p.display()),
            None => "our client certificate".into(),
        };
        match e {
            E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => format!(
                "the server's certificate is not signed by a CA in sslrootcert {root}: put the \
                 CA that issued the server's certificate there (for a replink reverse end: the \
                 CA of its --cert){}",
                match ctx.mode {
                    SslMode::VerifyCa | SslMode::VerifyFull => "",
                    _ => " (with a CA file, libpq and replink-pg check the chain under every sslmode)",
                }
            ),
            E::InvalidCertificate(C::NotValidForNameContext { presented, .. }) => format!(
                "the server's certificate is not valid for the host name {host} (it is for {}): \
                 set host= to a name the certificate holds (for a replink :postgres route: the \
                 route's name, with hostaddr= for the address), or use sslmode=verify-ca to \
                 check the CA only",
                presented
                    .iter()
                    .map(|name| plain_name(name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            E::InvalidCertificate(C::NotValidForName) => format!(
                "the server's certificate is not valid for the host name {host}: set host= to a \
                 name the certificate holds (for a replink :postgres route: the route's name, \
                 with hostaddr= for the address), or use sslmode=verify-ca to check the CA only"
            ),
            E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
                "the server's certificate has expired: renew it on the server".into()
            }
            E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
                "the server's certificate is not valid yet: check the clocks of both hosts".into()
            }
            E::InvalidCertificate(other) => format!(
                "the server's certificate was rejected ({other:?}) when checked against \
                 sslrootcert {root}"
            ),
            E::AlertReceived(A::CertificateRequired) if ctx.cert.is_none() => format!(
                "the server at {host} requires a client certificate and the connection string \
                 gives none: add sslcert=FILE and sslkey=FILE (a client certificate issued by the \
                 CA the server trusts; for replink: the reverse end's --ca)"
            ),
            E::AlertReceived(A::CertificateRequired) => format!(
                "the server at {host} requires a client certificate and did not get {our_cert}"
            ),
            E::AlertReceived(A::UnknownCA) => format!(
                "the server does not trust {our_cert}: it was not issued by a CA the server \
                 trusts (for replink: the reverse end's --ca); use a certificate from that CA"
            ),
            E::AlertReceived(A::CertificateRevoked) => format!(
                "the server refused {our_cert}: it has been revoked (it is on the server's CRL); \
                 have a new client certificate issued"
            ),
            E::AlertReceived(A::CertificateExpired) => format!(
                "the server refused {our_cert}: it has expired (or is not valid yet); have it \
                 renewed"
            ),
            E::AlertReceived(A::BadCertificate | A::UnsupportedCertificate) => format!(
                "the server refused {our_cert} (alert bad_certificate): it must be a client \
                 certificate (extended key usage clientAuth) from the CA the server trusts"
            ),
            E::AlertReceived(A::UnrecognisedName) if !ctx.sni => format!(
                "the server needs the host name as SNI (alert unrecognized_name) and sslsni=0 \
                 turned it off: remove sslsni=0 (a replink reverse end routes by the name {host})"
            ),
            E::AlertReceived(A::UnrecognisedName) => format!(
                "the server has no route for the name {host} (alert unrecognized_name): host= \
                 must be the name of a route of the replink reverse end (it routes by SNI), with \
                 hostaddr= for the address when the name does not resolve to it"
            ),
            E::AlertReceived(A::NoApplicationProtocol) => format!(
                "the server refused ALPN postgresql (alert no_application_protocol): the replink \
                 route for {host} is not a :postgres route; mark it :postgres (--route \
                 {host}=HOST:PORT:postgres) or connect through a replink forward end"
            ),
            E::AlertReceived(
                A::HandshakeFailure | A::ProtocolVersion | A::InsufficientSecurity,
            ) => format!(
                "the server and replink-pg have no TLS version or cipher suite in common \
                 (alert {e}); replink-pg offers TLS 1.3 and 1.2"
            ),
            E::AlertReceived(alert) => {
                format!("the server ended the TLS connection with alert {alert:?}")
            }
            E::NoCertificatesPresented => "the server sent no certificate".into(),
            other => format!("TLS with the server failed: {other}"),
        }
    }
}

/// `pg.repl.test` for rustls' `DnsName("pg.repl.test")`, `127.0.0.1` for `IpAddress(127.0.0.1)`.
fn plain_name(presented: &str) -> &str {
    let inner = presented
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or(presented);
    inner.trim_matches('"')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diagnosis(cert: Option<&str>, sni: bool) -> Diagnosis {
        Diagnosis {
            context: Arc::new(Context {
                mode: SslMode::VerifyFull,
                root_cert: Some("/x/ca.pem".into()),
                cert: cert.map(PathBuf::from),
                sni,
            }),
            host: "pg.repl.test".into(),
        }
    }

    #[test]
    fn failures_say_what_to_fix() {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        let d = diagnosis(Some("/x/client.pem"), true);
        let says = |e: E, words: &[&str]| {
            let text = d.explain(&e);
            for w in words {
                assert!(text.contains(w), "{e:?}: {text:?} lacks {w:?}");
            }
        };
        says(
            E::InvalidCertificate(C::UnknownIssuer),
            &["sslrootcert /x/ca.pem"],
        );
        says(
            E::InvalidCertificate(C::NotValidForName),
            &["pg.repl.test", "verify-ca", "hostaddr="],
        );
        says(
            E::AlertReceived(A::UnknownCA),
            &["sslcert /x/client.pem", "--ca"],
        );
        says(E::AlertReceived(A::CertificateRevoked), &["revoked"]);
        says(
            E::AlertReceived(A::UnrecognisedName),
            &["route", "pg.repl.test"],
        );
        says(E::AlertReceived(A::NoApplicationProtocol), &[":postgres"]);
        let none = diagnosis(None, false);
        assert!(none
            .explain(&E::AlertReceived(A::CertificateRequired))
            .contains("add sslcert=FILE and sslkey=FILE"));
        assert!(none
            .explain(&E::AlertReceived(A::UnrecognisedName))
            .contains("sslsni=0"));
    }

    #[test]
    fn presented_names_are_printed_plain() {
        assert_eq!(plain_name(r#"DnsName("pg.repl.test")"#), "pg.repl.test");
        assert_eq!(plain_name("IpAddress(127.0.0.1)"), "127.0.0.1");
        assert_eq!(plain_name("other"), "other");
    }

    #[test]
    fn failures_are_found_inside_io_errors() {
        let io = io::Error::new(io::ErrorKind::InvalidData, TlsFailure("fix it".into()));
        let found = TlsFailure::find(&io).map(|f| f.to_string());
        assert_eq!(found.as_deref(), Some("fix it"));
        let plain = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        assert!(TlsFailure::find(&plain).is_none());
    }
}

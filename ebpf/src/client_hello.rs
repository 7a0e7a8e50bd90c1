//! ClientHello parsing across records and TCP segments.

/// Largest ClientHello handshake message accepted (it may span several records).
pub const MAX_CLIENT_HELLO: usize = 64 * 1024;
const RECORD_HEADER: usize = 5;
const MAX_RECORD: usize = 16384;

/// Facts the router needs from a ClientHello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientHello {
    /// Lower-cased host_name from the SNI extension, one trailing dot removed.
    pub server_name: Option<String>,
    /// ALPN protocols offered, in the client's order.
    pub alpn: Vec<Vec<u8>>,
    /// TLS 1.3 is in supported_versions.
    pub supported_versions_tls13: bool,
    /// Bytes of input the records carrying the ClientHello occupy.
    pub record_bytes: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    Complete(ClientHello),
    /// Call again once the input is at least this long.
    Incomplete {
        needed_at_least: usize,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HelloError {
    #[error("not a TLS handshake")]
    NotTls,
    #[error("first handshake message is not a ClientHello")]
    NotClientHello,
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    #[error("ClientHello larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
    #[error("bad server_name: {0}")]
    BadServerName(&'static str),
}

/// Parses the ClientHello at the start of `input` (raw bytes as received).
pub fn parse_client_hello(input: &[u8]) -> Result<Parse, HelloError> {
    // Gather the handshake bytes from as many records as it takes.
    let mut hs: Vec<u8> = Vec::new();
    let mut pos = 0;
    let mut needed_msg = None;
    loop {
        let Some(header) = input.get(pos..pos + RECORD_HEADER) else {
            return Ok(Parse::Incomplete {
                needed_at_least: pos + RECORD_HEADER,
            });
        };
        if header[0] != 0x16 {
            return Err(if pos == 0 {
                HelloError::NotTls
            } else {
                HelloError::Malformed("non-handshake record inside the ClientHello")
            });
        }
        if header[1] != 3 {
            return Err(HelloError::NotTls);
        }
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        if len == 0 {
            return Err(HelloError::Malformed("empty handshake record"));
        }
        if len > MAX_RECORD {
            return Err(HelloError::Malformed("record too long"));
        }
        let body_start = pos + RECORD_HEADER;
        let Some(body) = input.get(body_start..body_start + len) else {
            return Ok(Parse::Incomplete {
                needed_at_least: body_start + len,
            });
        };
        hs.extend_from_slice(body);
        pos = body_start + len;
        if needed_msg.is_none() && hs.len() >= 4 {
            if hs[0] != 1 {
                return Err(HelloError::NotClientHello);
            }
            let msg_len = u32::from_be_bytes([0, hs[1], hs[2], hs[3]]) as usize;
            if msg_len > MAX_CLIENT_HELLO {
                return Err(HelloError::TooLarge);
            }
            needed_msg = Some(4 + msg_len);
        }
        if let Some(n) = needed_msg {
            if hs.len() >= n {
                let mut hello = parse_body(&hs[4..n])?;
                hello.record_bytes = pos;
                return Ok(Parse::Complete(hello));
            }
        }
    }
}

/// A bounds-checked reader over a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        if self.0.len() < n {
            return Err(HelloError::Malformed(what));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self, what: &'static str) -> Result<usize, HelloError> {
        Ok(self.take(1, what)?[0] as usize)
    }
    fn u16(&mut self, what: &'static str) -> Result<usize, HelloError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]) as usize)
    }
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u8(what)?;
        self.take(n, what)
    }
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u16(what)?;
        self.take(n, what)
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn parse_body(body: &[u8]) -> Result<ClientHello, HelloError> {
    let mut r = Reader(body);
    r.take(2, "legacy_version")?;
    r.take(32, "random")?;
    if r.vec8("session_id")?.len() > 32 {
        return Err(HelloError::Malformed("session_id longer than 32 bytes"));
    }
    let suites = r.vec16("cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(HelloError::Malformed("cipher_suites"));
    }
    if r.vec8("compression_methods")?.is_empty() {
        return Err(HelloError::Malformed("compression_methods"));
    }
    let mut hello = ClientHello {
        server_name: None,
        alpn: Vec::new(),
        supported_versions_tls13: false,
        record_bytes: 0,
    };
    if r.is_empty() {
        return Ok(hello); // no extensions at all (old clients)
    }
    let mut exts = Reader(r.vec16("extensions")?);
    if !r.is_empty() {
        return Err(HelloError::Malformed("bytes after extensions"));
    }
    let mut seen: Vec<u16> = Vec::new();
    while !exts.is_empty() {
        let typ = exts.u16("extension type")? as u16;
        let data = exts.vec16("extension data")?;
        if seen.contains(&typ) {
            return Err(HelloError::Malformed("duplicate extension"));
        }
        seen.push(typ);
        match typ {
            0 => hello.server_name = parse_sni(data)?,
            16 => hello.alpn = parse_alpn(data)?,
            43 => {
                let mut v = Reader(Reader(data).vec8("supported_versions")?);
                while !v.is_empty() {
                    if v.u16("supported_versions")? == 0x0304 {
                        hello.supported_versions_tls13 = true;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(hello)
}

fn parse_sni(data: &[u8]) -> Result<Option<String>, HelloError> {
    let mut outer = Reader(data);
    let mut list = Reader(outer.vec16("server_name list")?);
    if !outer.is_empty() {
        return Err(HelloError::Malformed("bytes after server_name list"));
    }
    let mut name = None;
    while !list.is_empty() {
        let kind = list.u8("server_name type")?;
        let value = list.vec16("server_name")?;
        if kind != 0 {
            continue; // unknown name types are skipped
        }
        if name.is_some() {
            return Err(HelloError::BadServerName("two host_name entries"));
        }
        name = Some(validate_host(value)?);
    }
    Ok(name)
}

fn validate_host(value: &[u8]) -> Result<String, HelloError> {
    let value = value.strip_suffix(b".").unwrap_or(value);
    if value.is_empty() {
        return Err(HelloError::BadServerName("empty"));
    }
    if value.len() > 253 {
        return Err(HelloError::BadServerName("longer than 253 bytes"));
    }
    for label in value.split(|&b| b == b'.') {
        if label.is_empty() || label.len() > 63 {
            return Err(HelloError::BadServerName("empty or overlong label"));
        }
        if !label
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return Err(HelloError::BadServerName("not a DNS name"));
        }
    }
    // Only ASCII bytes remain, so this conversion cannot fail.
    Ok(String::from_utf8_lossy(value).to_ascii_lowercase())
}

fn parse_alpn(data: &[u8]) -> Result<Vec<Vec<u8>>, HelloError> {
    let mut outer = Reader(data);
    let mut list = Reader(outer.vec16("ALPN list")?);
    if !outer.is_empty() {
        return Err(HelloError::Malformed("bytes after ALPN list"));
    }
    let mut protocols = Vec::new();
    while !list.is_empty() {
        let p = list.vec8("ALPN protocol")?;
        if p.is_empty() {
            return Err(HelloError::Malformed("empty ALPN protocol"));
        }
        protocols.push(p.to_vec());
    }
    Ok(protocols)
}

//! The TLS record layer after the handshake: what kernel TLS does, done in userspace.
//!
//! rustls hands over the traffic secrets (`dangerous_into_kernel_connection`); [`Sealer`] and
//! [`Opener`] protect records with them, byte-for-byte as rustls would (TLS 1.3: nonce = IV xor
//! sequence number, AAD = record header, inner content type; TLS 1.2 AES-GCM: 8-byte explicit
//! nonce, AAD = seq ‖ type ‖ version ‖ length).
//!
//! Records are sealed in place in a caller-provided slot `[prefix][payload][suffix]` and opened
//! in place, so the data path copies plaintext once at most.

use std::ops::Range;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use rustls::{
    AlertDescription, ConnectionTrafficSecrets, ContentType, HandshakeType, ProtocolVersion,
};

/// Largest plaintext of one record.
pub const MAX_PLAINTEXT: usize = 16384;
/// Largest ciphertext fragment a peer may send (RFC 8446 5.2: 2^14 + 256).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
const HEADER_LEN: usize = 5;
const TAG_LEN: usize = 16;
const EXPLICIT_NONCE_LEN: usize = 8;
/// Records sealed under one key before we ask for a KeyUpdate: well under AES-GCM's
/// confidentiality limit of 2^24.5 records (RFC 8446 5.5).
pub const KEY_UPDATE_AFTER: u64 = 1 << 23;
/// TLS 1.2 has no KeyUpdate: refuse to go past the AES-GCM limit instead.
pub const TLS12_RECORD_LIMIT: u64 = 1 << 24;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record failed authentication (bad_record_mac)")]
    BadRecordMac,
    #[error("record longer than TLS allows")]
    RecordOverflow,
    #[error("unexpected record content type {0}")]
    UnexpectedContentType(u8),
    #[error("malformed record: {0}")]
    Malformed(&'static str),
    #[error("cipher or protocol version not supported by the record layer")]
    UnsupportedCipher,
    #[error("record sequence exhausted for this key")]
    Exhausted,
}

impl RecordError {
    /// The alert a peer should get for this error.
    pub fn alert(&self) -> AlertDescription {
        match self {
            RecordError::BadRecordMac => AlertDescription::BadRecordMac,
            RecordError::RecordOverflow => AlertDescription::RecordOverflow,
            RecordError::UnexpectedContentType(_) => AlertDescription::UnexpectedMessage,
            RecordError::Malformed(_) => AlertDescription::DecodeError,
            RecordError::UnsupportedCipher | RecordError::Exhausted => {
                AlertDescription::InternalError
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Tls13,
    /// TLS 1.2 AES-GCM: explicit nonce on the wire.
    Tls12Gcm,
    /// TLS 1.2 ChaCha20-Poly1305: implicit nonce.
    Tls12Chacha,
}

/// One direction's AEAD state.
struct Keys {
    flavor: Flavor,
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
}

impl Keys {
    fn new(
        version: ProtocolVersion,
        seq: u64,
        secrets: ConnectionTrafficSecrets,
    ) -> Result<Keys, RecordError> {
        let (alg, key, iv, gcm) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv, true),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv, true),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv, false)
            }
            _ => return Err(RecordError::UnsupportedCipher),
        };
        let flavor = match (version, gcm) {
            (ProtocolVersion::TLSv1_3, _) => Flavor::Tls13,
            (ProtocolVersion::TLSv1_2, true) => Flavor::Tls12Gcm,
            (ProtocolVersion::TLSv1_2, false) => Flavor::Tls12Chacha,
            _ => return Err(RecordError::UnsupportedCipher),
        };
        let unbound =
            UnboundKey::new(alg, key.as_ref()).map_err(|_| RecordError::UnsupportedCipher)?;
        let iv: [u8; NONCE_LEN] = iv
            .as_ref()
            .try_into()
            .map_err(|_| RecordError::UnsupportedCipher)?;
        Ok(Keys {
            flavor,
            key: LessSafeKey::new(unbound),
            iv,
            seq,
        })
    }

    /// IV xor the sequence number (right-aligned), as every TLS 1.3 and TLS 1.2 suite here does.
    fn nonce(&self, seq: u64) -> [u8; NONCE_LEN] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    fn next_seq(&mut self) -> Result<u64, RecordError> {
        let seq = self.seq;
        if self.flavor != Flavor::Tls13 && seq >= TLS12_RECORD_LIMIT {
            return Err(RecordError::Exhausted);
        }
        self.seq = seq.checked_add(1).ok_or(RecordError::Exhausted)?;
        Ok(seq)
    }
}

fn tls12_aad(seq: u64, typ: u8, len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = typ;
    aad[9] = 3;
    aad[10] = 3;
    aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
    aad
}

/// Seals records for one direction.
pub struct Sealer {
    keys: Keys,
    /// Records sealed under the current key.
    sealed: u64,
}

impl Sealer {
    pub fn new(
        version: ProtocolVersion,
        seq: u64,
        secrets: ConnectionTrafficSecrets,
    ) -> Result<Sealer, RecordError> {
        Ok(Sealer {
            keys: Keys::new(version, seq, secrets)?,
            sealed: 0,
        })
    }

    pub fn prefix_len(&self) -> usize {
        match self.keys.flavor {
            Flavor::Tls12Gcm => HEADER_LEN + EXPLICIT_NONCE_LEN,
            _ => HEADER_LEN,
        }
    }

    pub fn suffix_len(&self) -> usize {
        match self.keys.flavor {
            Flavor::Tls13 => 1 + TAG_LEN,
            _ => TAG_LEN,
        }
    }

    /// Seals the payload at `slot[prefix_len()..][..payload_len]` in place: writes the header,
    /// (TLS 1.3) the inner content type, encrypts, appends the tag. Returns the record length.
    pub fn seal_in_place(
        &mut self,
        content_type: ContentType,
        slot: &mut [u8],
        payload_len: usize,
    ) -> Result<usize, RecordError> {
        if payload_len > MAX_PLAINTEXT {
            return Err(RecordError::RecordOverflow);
        }
        let prefix = self.prefix_len();
        let total = prefix + payload_len + self.suffix_len();
        if slot.len() < total {
            return Err(RecordError::Malformed("record slot too small"));
        }
        let seq = self.keys.next_seq()?;
        let nonce_bytes = self.keys.nonce(seq);
        let nonce = Nonce::assume_unique_for_key(nonce_bytes);
        let typ = u8::from(content_type);
        let body_len = (total - HEADER_LEN) as u16;
        match self.keys.flavor {
            Flavor::Tls13 => {
                let header = [0x17, 0x03, 0x03, (body_len >> 8) as u8, body_len as u8];
                slot[..HEADER_LEN].copy_from_slice(&header);
                slot[prefix + payload_len] = typ;
                let inner = &mut slot[prefix..prefix + payload_len + 1];
                let tag = self
                    .keys
                    .key
                    .seal_in_place_separate_tag(nonce, Aad::from(header), inner)
                    .map_err(|_| RecordError::Exhausted)?;
                slot[prefix + payload_len + 1..total].copy_from_slice(tag.as_ref());
            }
            Flavor::Tls12Gcm | Flavor::Tls12Chacha => {
                slot[..HEADER_LEN].copy_from_slice(&[
                    typ,
                    0x03,
                    0x03,
                    (body_len >> 8) as u8,
                    body_len as u8,
                ]);
                if self.keys.flavor == Flavor::Tls12Gcm {
                    slot[HEADER_LEN..prefix].copy_from_slice(&nonce_bytes[4..]);
                }
                let aad = tls12_aad(seq, typ, payload_len);
                let tag = self
                    .keys
                    .key
                    .seal_in_place_separate_tag(
                        nonce,
                        Aad::from(aad),
                        &mut slot[prefix..prefix + payload_len],
                    )
                    .map_err(|_| RecordError::Exhausted)?;
                slot[prefix + payload_len..total].copy_from_slice(tag.as_ref());
            }
        }
        self.sealed += 1;
        Ok(total)
    }

    /// Appends `payload` to `out` as records of at most `MAX_PLAINTEXT` bytes (at least one).
    pub fn seal_append(
        &mut self,
        content_type: ContentType,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        let mut chunks = payload.chunks(MAX_PLAINTEXT).peekable();
        let empty: &[u8] = &[];
        if chunks.peek().is_none() {
            return self.seal_one_append(content_type, empty, out);
        }
        for chunk in chunks {
            self.seal_one_append(content_type, chunk, out)?;
        }
        Ok(())
    }

    fn seal_one_append(
        &mut self,
        content_type: ContentType,
        chunk: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        let start = out.len();
        let prefix = self.prefix_len();
        out.resize(start + prefix + chunk.len() + self.suffix_len(), 0);
        out[start + prefix..start + prefix + chunk.len()].copy_from_slice(chunk);
        let len = self.seal_in_place(content_type, &mut out[start..], chunk.len())?;
        out.truncate(start + len);
        Ok(())
    }

    /// Time to send a KeyUpdate (TLS 1.3): far enough from the AEAD limits to be safe.
    pub fn wants_key_update(&self) -> bool {
        self.keys.flavor == Flavor::Tls13 && self.sealed >= KEY_UPDATE_AFTER
    }

    pub fn rekey(
        &mut self,
        seq: u64,
        secrets: ConnectionTrafficSecrets,
    ) -> Result<(), RecordError> {
        self.keys = Keys::new(ProtocolVersion::TLSv1_3, seq, secrets)?;
        self.sealed = 0;
        Ok(())
    }
}

/// One opened record: its (inner) content type and where its plaintext now lies.
#[derive(Debug)]
pub struct Opened {
    pub content_type: ContentType,
    /// The plaintext, within the buffer given to `open_in_place`.
    pub payload: Range<usize>,
    /// Bytes the record occupied (header included).
    pub record_len: usize,
}

/// Opens records for one direction.
pub struct Opener {
    keys: Keys,
    /// A record has been opened: TLS 1.3's compatibility ChangeCipherSpec is over.
    opened_any: bool,
}

impl Opener {
    pub fn new(
        version: ProtocolVersion,
        seq: u64,
        secrets: ConnectionTrafficSecrets,
    ) -> Result<Opener, RecordError> {
        Ok(Opener {
            keys: Keys::new(version, seq, secrets)?,
            opened_any: false,
        })
    }

    /// Sequence number of the next record to open.
    pub fn seq(&self) -> u64 {
        self.keys.seq
    }

    /// Total length of the first record of `buf`, once its header is there.
    pub fn record_len_hint(buf: &[u8]) -> Option<usize> {
        match buf {
            [_, _, _, hi, lo, ..] => Some(HEADER_LEN + u16::from_be_bytes([*hi, *lo]) as usize),
            _ => None,
        }
    }

    /// Opens the first record of `buf` in place, or returns `None` while it is incomplete.
    pub fn open_in_place(&mut self, buf: &mut [u8]) -> Result<Option<Opened>, RecordError> {
        let Some(record_len) = Self::record_len_hint(buf) else {
            return Ok(None);
        };
        let outer = buf[0];
        if buf[1] != 3 {
            return Err(RecordError::Malformed("record version"));
        }
        let body_len = record_len - HEADER_LEN;
        if body_len > MAX_CIPHERTEXT + EXPLICIT_NONCE_LEN {
            return Err(RecordError::RecordOverflow);
        }
        if buf.len() < record_len {
            return Ok(None);
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&buf[..HEADER_LEN]);
        let body = &mut buf[HEADER_LEN..record_len];
        match self.keys.flavor {
            Flavor::Tls13 => {
                if outer == u8::from(ContentType::ChangeCipherSpec) && !self.opened_any {
                    if body != [1] {
                        return Err(RecordError::Malformed("change_cipher_spec"));
                    }
                    return Ok(Some(Opened {
                        content_type: ContentType::ChangeCipherSpec,
                        payload: HEADER_LEN..HEADER_LEN,
                        record_len,
                    }));
                }
                if outer != 0x17 {
                    return Err(RecordError::UnexpectedContentType(outer));
                }
                if body_len < TAG_LEN + 1 {
                    return Err(RecordError::Malformed("record shorter than its tag"));
                }
                if body_len > MAX_CIPHERTEXT {
                    return Err(RecordError::RecordOverflow);
                }
                let seq = self.keys.next_seq()?;
                let nonce = Nonce::assume_unique_for_key(self.keys.nonce(seq));
                let plain = self
                    .keys
                    .key
                    .open_in_place(nonce, Aad::from(header), body)
                    .map_err(|_| RecordError::BadRecordMac)?;
                // Strip zero padding: the real content type is the last non-zero byte.
                let Some(type_at) = plain.iter().rposition(|&b| b != 0) else {
                    return Err(RecordError::UnexpectedContentType(0));
                };
                if type_at > MAX_PLAINTEXT {
                    return Err(RecordError::RecordOverflow);
                }
                let typ = ContentType::from(plain[type_at]);
                self.opened_any = true;
                Ok(Some(Opened {
                    content_type: typ,
                    payload: HEADER_LEN..HEADER_LEN + type_at,
                    record_len,
                }))
            }
            Flavor::Tls12Gcm | Flavor::Tls12Chacha => {
                let explicit = if self.keys.flavor == Flavor::Tls12Gcm {
                    EXPLICIT_NONCE_LEN
                } else {
                    0
                };
                if body_len < explicit + TAG_LEN {
                    return Err(RecordError::Malformed("record shorter than its tag"));
                }
                let plain_len = body_len - explicit - TAG_LEN;
                if plain_len > MAX_PLAINTEXT + 2048 {
                    return Err(RecordError::RecordOverflow);
                }
                let seq = self.keys.next_seq()?;
                let mut nonce = self.keys.nonce(seq);
                if explicit > 0 {
                    nonce[4..].copy_from_slice(&body[..EXPLICIT_NONCE_LEN]);
                }
                let aad = tls12_aad(seq, outer, plain_len);
                let plain = self
                    .keys
                    .key
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad),
                        &mut body[explicit..],
                    )
                    .map_err(|_| RecordError::BadRecordMac)?;
                let len = plain.len();
                self.opened_any = true;
                Ok(Some(Opened {
                    content_type: ContentType::from(outer),
                    payload: HEADER_LEN + explicit..HEADER_LEN + explicit + len,
                    record_len,
                }))
            }
        }
    }

    pub fn rekey(
        &mut self,
        seq: u64,
        secrets: ConnectionTrafficSecrets,
    ) -> Result<(), RecordError> {
        self.keys = Keys::new(ProtocolVersion::TLSv1_3, seq, secrets)?;
        self.opened_any = true;
        Ok(())
    }
}

/// A TLS 1.3 KeyUpdate handshake message.
pub fn key_update_message(update_requested: bool) -> [u8; 5] {
    [
        u8::from(HandshakeType::KeyUpdate),
        0,
        0,
        1,
        u8::from(update_requested),
    ]
}

/// Splits the payload of a Handshake record into (type, body) messages. Post-handshake
/// messages (KeyUpdate, NewSessionTicket) are small and, from rustls and OpenSSL, never span
/// records; one that does is reported as malformed rather than reassembled.
pub fn handshake_messages(
    payload: &[u8],
) -> impl Iterator<Item = Result<(HandshakeType, &[u8]), RecordError>> {
    let mut rest = payload;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let [typ, a, b, c, tail @ ..] = rest else {
            rest = &[];
            return Some(Err(RecordError::Malformed("truncated handshake header")));
        };
        let len = u32::from_be_bytes([0, *a, *b, *c]) as usize;
        if tail.len() < len {
            rest = &[];
            return Some(Err(RecordError::Malformed(
                "handshake message spans records",
            )));
        }
        let (body, after) = tail.split_at(len);
        let typ = HandshakeType::from(*typ);
        rest = after;
        Some(Ok((typ, body)))
    })
}

/// The two bytes of an alert record.
pub fn alert_payload(fatal: bool, desc: AlertDescription) -> [u8; 2] {
    [if fatal { 2 } else { 1 }, u8::from(desc)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(key_byte: u8) -> ConnectionTrafficSecrets {
        ConnectionTrafficSecrets::Aes256Gcm {
            key: rustls::crypto::cipher::AeadKey::from([key_byte; 32]),
            iv: rustls::crypto::cipher::Iv::new([7; 12]),
        }
    }

    #[test]
    fn seal_open_round_trip_and_tamper() {
        for version in [ProtocolVersion::TLSv1_3, ProtocolVersion::TLSv1_2] {
            let mut s = Sealer::new(version, 0, secrets(1)).unwrap();
            let mut o = Opener::new(version, 0, secrets(1)).unwrap();
            let mut wire = Vec::new();
            let data: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
            s.seal_append(ContentType::ApplicationData, &data, &mut wire)
                .unwrap();
            let mut got = Vec::new();
            let mut pos = 0;
            while let Some(r) = o.open_in_place(&mut wire[pos..]).unwrap() {
                assert_eq!(r.content_type, ContentType::ApplicationData);
                got.extend_from_slice(&wire[pos + r.payload.start..pos + r.payload.end]);
                pos += r.record_len;
            }
            assert_eq!(pos, wire.len());
            assert_eq!(got, data);

            let mut wire = Vec::new();
            s.seal_append(ContentType::ApplicationData, b"hello", &mut wire)
                .unwrap();
            let last = wire.len() - 3;
            wire[last] ^= 1;
            assert_eq!(
                o.open_in_place(&mut wire).unwrap_err(),
                RecordError::BadRecordMac
            );
        }
    }

    #[test]
    fn incomplete_and_oversized_records() {
        let mut o = Opener::new(ProtocolVersion::TLSv1_3, 0, secrets(1)).unwrap();
        assert!(o.open_in_place(&mut [0x17, 3, 3]).unwrap().is_none());
        assert!(o
            .open_in_place(&mut [0x17, 3, 3, 0, 40, 1, 2])
            .unwrap()
            .is_none());
        let mut big = vec![0x17, 3, 3, 0x50, 0];
        big.resize(5 + 0x5000, 0);
        assert_eq!(
            o.open_in_place(&mut big).unwrap_err(),
            RecordError::RecordOverflow
        );
    }

    #[test]
    fn handshake_message_split() {
        let mut p = key_update_message(true).to_vec();
        p.extend_from_slice(&[4, 0, 0, 2, 9, 9]);
        let msgs: Vec<_> = handshake_messages(&p).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs[0], (HandshakeType::KeyUpdate, &[1u8][..]));
        assert_eq!(msgs[1], (HandshakeType::NewSessionTicket, &[9u8, 9][..]));
        assert!(handshake_messages(&[24, 0, 0, 5, 1])
            .next()
            .unwrap()
            .is_err());
    }
}

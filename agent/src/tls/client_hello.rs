//! Reading the server name and ALPN offer out of a TLS ClientHello without consuming it, so the
//! proxy can decide between interception and passthrough before any TLS state exists.
//!
//! Pure parsing over the bytes peeked from the socket: the first TLS record (a handshake record
//! holding the ClientHello; a ClientHello split across records is read across them up to
//! [`MAX_HELLO`]). Anything that is not TLS is reported as such, never guessed.

/// Most bytes of records the parser reads to find a whole ClientHello.
pub const MAX_HELLO: usize = 16 * 1024 + 5 * 4;

/// What the first bytes of a connection are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peeked {
    /// Not enough bytes yet to tell; read more (up to [`MAX_HELLO`]).
    Incomplete,
    /// The bytes are not a TLS handshake.
    NotTls,
    /// A TLS handshake whose ClientHello is longer than [`MAX_HELLO`]: the agent will not read
    /// that far to find out where the connection goes.
    Oversized,
    /// A ClientHello.
    Hello(HelloInfo),
}

/// What the proxy needs from a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HelloInfo {
    /// The `server_name` extension's host name, lower-cased.
    pub sni: Option<String>,
    /// ALPN protocols offered, in order.
    pub alpn: Vec<Vec<u8>>,
}

/// Looks at the bytes received so far.
pub fn peek(buf: &[u8]) -> Peeked {
    // Reassemble the handshake bytes from consecutive handshake records.
    let mut handshake = Vec::new();
    let mut pos = 0;
    loop {
        if buf.len() < pos + 5 {
            return if pos == 0 && !buf.is_empty() && buf[0] != 0x16 {
                Peeked::NotTls
            } else {
                Peeked::Incomplete
            };
        }
        let header = &buf[pos..pos + 5];
        if header[0] != 0x16 || header[1] != 0x03 {
            return Peeked::NotTls;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > 16 * 1024 + 256 {
            return Peeked::NotTls;
        }
        if buf.len() < pos + 5 + len {
            return Peeked::Incomplete;
        }
        handshake.extend_from_slice(&buf[pos + 5..pos + 5 + len]);
        pos += 5 + len;
        if handshake.len() >= 4 {
            if handshake[0] != 0x01 {
                return Peeked::NotTls;
            }
            let body_len = usize::from(handshake[1]) << 16
                | usize::from(handshake[2]) << 8
                | usize::from(handshake[3]);
            if handshake.len() >= 4 + body_len {
                return match parse_hello(&handshake[4..4 + body_len]) {
                    Some(info) => Peeked::Hello(info),
                    None => Peeked::NotTls,
                };
            }
            if 4 + body_len > MAX_HELLO {
                return Peeked::Oversized;
            }
        }
    }
}

/// A cursor over a byte slice whose reads fail (None) past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

fn parse_hello(body: &[u8]) -> Option<HelloInfo> {
    let mut r = Reader(body);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    r.vec8()?; // session id
    r.vec16()?; // cipher suites
    r.vec8()?; // compression methods
    let mut info = HelloInfo::default();
    if r.0.is_empty() {
        return Some(info);
    }
    let mut exts = Reader(r.vec16()?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let mut data = Reader(exts.vec16()?);
        match kind {
            0 => {
                let mut list = Reader(data.vec16()?);
                while !list.0.is_empty() {
                    let name_type = list.u8()?;
                    let name = list.vec16()?;
                    if name_type == 0 && info.sni.is_none() {
                        let s = std::str::from_utf8(name).ok()?;
                        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic()) {
                            return None;
                        }
                        info.sni = Some(s.trim_end_matches('.').to_ascii_lowercase());
                    }
                }
            }
            16 => {
                let mut list = Reader(data.vec16()?);
                while !list.0.is_empty() {
                    info.alpn.push(list.vec8()?.to_vec());
                }
            }
            _ => {}
        }
    }
    Some(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A real ClientHello from rustls for `name` offering `alpn`.
    fn hello(name: &str, alpn: &[&[u8]]) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let mut cfg = rustls::ClientConfig::builder_with_provider(super::super::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        let server = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(cfg), server).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_sni_and_alpn_from_a_real_hello() {
        let bytes = hello("XY12345.snowflakecomputing.com", &[b"h2", b"http/1.1"]);
        match peek(&bytes) {
            Peeked::Hello(h) => {
                assert_eq!(h.sni.as_deref(), Some("xy12345.snowflakecomputing.com"));
                assert_eq!(h.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn partial_hello_asks_for_more_and_every_prefix_is_safe() {
        let bytes = hello("a.example.com", &[]);
        for n in 0..bytes.len() {
            assert_eq!(peek(&bytes[..n]), Peeked::Incomplete, "prefix {n}");
        }
    }

    #[test]
    fn an_ip_literal_hello_has_no_sni() {
        let bytes = hello("127.0.0.1", &[]);
        assert_eq!(peek(&bytes), Peeked::Hello(HelloInfo::default()));
    }

    #[test]
    fn a_hello_longer_than_the_agent_reads_is_oversized_from_its_first_record() {
        // A handshake header announcing a ClientHello of 20,000 bytes, in a first record of 4.
        let body_len: u32 = 20_000;
        let mut v = vec![0x16, 0x03, 0x01, 0x00, 0x04, 0x01];
        v.extend_from_slice(&body_len.to_be_bytes()[1..]);
        assert_eq!(peek(&v), Peeked::Oversized);
        assert_eq!(peek(&v[..8]), Peeked::Incomplete);
    }

    #[test]
    fn plain_http_is_not_tls() {
        assert_eq!(peek(b"GET / HTTP/1.1\r\n"), Peeked::NotTls);
        assert_eq!(peek(b"\x16\x01\x00\x00\x05hello"), Peeked::NotTls);
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed: u32 = 0x1234_5678;
        for len in 0..2000usize {
            let mut v = vec![0x16, 0x03, 0x01];
            for _ in 0..(len % 300) {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                v.push(seed as u8);
            }
            let _ = peek(&v);
        }
    }
}

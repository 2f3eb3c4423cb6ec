//! Request and response bodies: identity or gzip, decoded under a hard size limit.
//!
//! Connector 4.x gzips every request body, 5.x gzips telemetry, Node sends identity (docs/protocol.md,
//! "Body encoding"). The limit applies to the *decoded* size (docs/decisions.md §2): a gzip bomb stops at
//! the limit with [`BodyError::TooLarge`], and the output buffer never grows past the limit.
//! Concatenated gzip members are decoded as one stream, as Snowflake's server and Python's gzip
//! do, so the proxy never reads less of a body than upstream does; bytes after the last member
//! that are not another member are an error.

use std::borrow::Cow;
use std::io::{Read, Write};

/// How a body is encoded, from its `Content-Encoding` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContentEncoding {
    /// No header, an empty one, or `identity`.
    Identity,
    /// `gzip` or `x-gzip`.
    Gzip,
}

impl ContentEncoding {
    /// Reads a `Content-Encoding` header value (absent means identity).
    ///
    /// Anything but identity and gzip (deflate, br, a list of codings) is refused: drivers do not
    /// send it, and a body the agent cannot read must not pass as inspected.
    pub fn from_header(value: Option<&[u8]>) -> Result<Self, BodyError> {
        let Some(raw) = value else {
            return Ok(ContentEncoding::Identity);
        };
        let text = std::str::from_utf8(raw).map_err(|_| BodyError::UnsupportedEncoding {
            value: String::from_utf8_lossy(raw).into_owned(),
        })?;
        match text.trim().to_ascii_lowercase().as_str() {
            "" | "identity" => Ok(ContentEncoding::Identity),
            "gzip" | "x-gzip" => Ok(ContentEncoding::Gzip),
            _ => Err(BodyError::UnsupportedEncoding {
                value: text.trim().chars().take(64).collect(),
            }),
        }
    }
}

impl std::fmt::Display for ContentEncoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ContentEncoding::Identity => "identity",
            ContentEncoding::Gzip => "gzip",
        })
    }
}

/// Why a body could not be decoded; "too large" and "malformed" are kept apart because the agent
/// answers them differently (a limit versus a broken or hostile client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The decoded body is larger than the limit; decoding stopped there.
    #[error("{encoding} body exceeds the {limit}-byte limit once decoded")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
        /// The body's encoding.
        encoding: ContentEncoding,
    },
    /// The compressed stream is broken (bad header, bad checksum, truncated, trailing bytes).
    #[error("malformed {encoding} body: {reason}")]
    Malformed {
        /// The body's encoding.
        encoding: ContentEncoding,
        /// The decoder's description (it never quotes the body).
        reason: String,
    },
    /// The `Content-Encoding` header names a coding the agent does not decode.
    #[error("unsupported Content-Encoding {value:?}")]
    UnsupportedEncoding {
        /// The header value, cut to 64 characters.
        value: String,
    },
}

/// Decodes `body` as `encoding`, refusing to produce more than `limit` bytes.
///
/// Identity bodies are borrowed; gzip bodies are decoded into a buffer whose capacity never
/// exceeds `limit`.
pub fn decode(
    encoding: ContentEncoding,
    body: &[u8],
    limit: usize,
) -> Result<Cow<'_, [u8]>, BodyError> {
    match encoding {
        ContentEncoding::Identity => {
            if body.len() > limit {
                Err(BodyError::TooLarge { limit, encoding })
            } else {
                Ok(Cow::Borrowed(body))
            }
        }
        ContentEncoding::Gzip => gunzip(body, limit).map(Cow::Owned),
    }
}

/// Decodes a body given its raw `Content-Encoding` header value: [`ContentEncoding::from_header`]
/// then [`decode`].
pub fn decode_body<'a>(
    content_encoding: Option<&[u8]>,
    body: &'a [u8],
    limit: usize,
) -> Result<Cow<'a, [u8]>, BodyError> {
    decode(ContentEncoding::from_header(content_encoding)?, body, limit)
}

/// Decodes a request or response body given its headers: more than one `Content-Encoding`
/// header is refused, since a peer could read them as a chain of codings.
pub fn decode_with_headers<'a>(
    headers: &http::HeaderMap,
    body: &'a [u8],
    limit: usize,
) -> Result<Cow<'a, [u8]>, BodyError> {
    let mut values = headers.get_all(http::header::CONTENT_ENCODING).iter();
    let first = values.next();
    if let Some(second) = values.next() {
        return Err(BodyError::UnsupportedEncoding {
            value: String::from_utf8_lossy(second.as_bytes())
                .chars()
                .take(64)
                .collect(),
        });
    }
    decode_body(first.map(http::HeaderValue::as_bytes), body, limit)
}

/// How many bytes decoding `body` will most likely produce, capped at `limit`: the body's own
/// length for identity, the gzip trailer's ISIZE for gzip (exact for a single member under
/// 4 GiB; a sender can lie, so callers treat it as a first estimate), 0 when unknown. It lets
/// a caller pay for the decoded copy before making it.
pub fn decoded_size_hint(headers: &http::HeaderMap, body: &[u8], limit: usize) -> usize {
    let encoding = headers
        .get(http::header::CONTENT_ENCODING)
        .map(http::HeaderValue::as_bytes);
    match ContentEncoding::from_header(encoding) {
        Ok(ContentEncoding::Identity) => body.len().min(limit),
        Ok(ContentEncoding::Gzip) if body.len() >= 18 => {
            let mut trailer = [0u8; 4];
            trailer.copy_from_slice(&body[body.len() - 4..]);
            usize::try_from(u32::from_le_bytes(trailer))
                .unwrap_or(usize::MAX)
                .min(limit)
        }
        _ => 0,
    }
}

/// Gzips `data`, for re-encoding a rewritten request body the way the driver sent it.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail; should it, the empty result fails to parse downstream.
    if enc.write_all(data).is_err() {
        return Vec::new();
    }
    enc.finish().unwrap_or_default()
}

const READ_STEP: usize = 16 * 1024;

fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, BodyError> {
    let encoding = ContentEncoding::Gzip;
    let mut decoder = flate2::read::MultiGzDecoder::new(body);
    // A first guess from the compressed size, capped by the limit; growth below is capped too.
    let mut out: Vec<u8> = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    let mut buf = [0u8; READ_STEP];
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(BodyError::Malformed {
                    encoding,
                    reason: e.to_string(),
                });
            }
        };
        let new_len = out.len().saturating_add(n);
        if new_len > limit {
            return Err(BodyError::TooLarge { limit, encoding });
        }
        if new_len > out.capacity() {
            let target = out.capacity().saturating_mul(2).max(new_len).min(limit);
            out.reserve_exact(target - out.len());
        }
        out.extend_from_slice(&buf[..n]);
    }
    if body.is_empty() {
        return Err(BodyError::Malformed {
            encoding,
            reason: "empty gzip stream".to_owned(),
        });
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn header_values() {
        assert_eq!(
            ContentEncoding::from_header(None),
            Ok(ContentEncoding::Identity)
        );
        assert_eq!(
            ContentEncoding::from_header(Some(b"")),
            Ok(ContentEncoding::Identity)
        );
        assert_eq!(
            ContentEncoding::from_header(Some(b" GZip ")),
            Ok(ContentEncoding::Gzip)
        );
        assert_eq!(
            ContentEncoding::from_header(Some(b"x-gzip")),
            Ok(ContentEncoding::Gzip)
        );
        assert!(matches!(
            ContentEncoding::from_header(Some(b"br")),
            Err(BodyError::UnsupportedEncoding { .. })
        ));
        assert!(ContentEncoding::from_header(Some(b"gzip, gzip")).is_err());
    }

    #[test]
    fn identity_and_gzip_round_trip() {
        let data = br#"{"sqlText":"select 1"}"#;
        assert_eq!(decode_body(None, data, 1024).unwrap().as_ref(), data);
        let gz = gzip(data);
        assert_eq!(
            decode_body(Some(b"gzip"), &gz, 1024).unwrap().as_ref(),
            data
        );
        assert_eq!(
            decode(ContentEncoding::Identity, data, 3),
            Err(BodyError::TooLarge {
                limit: 3,
                encoding: ContentEncoding::Identity
            })
        );
    }

    #[test]
    fn from_headers() {
        let gz = gzip(b"{}");
        let mut h = http::HeaderMap::new();
        assert_eq!(decode_with_headers(&h, b"{}", 10).unwrap().as_ref(), b"{}");
        h.insert(
            http::header::CONTENT_ENCODING,
            http::HeaderValue::from_static("gzip"),
        );
        assert_eq!(decode_with_headers(&h, &gz, 10).unwrap().as_ref(), b"{}");
        h.append(
            http::header::CONTENT_ENCODING,
            http::HeaderValue::from_static("gzip"),
        );
        assert!(matches!(
            decode_with_headers(&h, &gz, 10),
            Err(BodyError::UnsupportedEncoding { .. })
        ));
    }

    #[test]
    fn concatenated_members_are_one_body() {
        let mut two = gzip(b"{\"a\":");
        two.extend(gzip(b"1}"));
        assert_eq!(
            decode(ContentEncoding::Gzip, &two, 100).unwrap().as_ref(),
            b"{\"a\":1}"
        );
    }

    #[test]
    fn gzip_bomb_stops_at_the_limit() {
        // 64 MiB of zeros compress to about 64 KiB.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 1 << 20);
        let limit = 1 << 20;
        match decode(ContentEncoding::Gzip, &bomb, limit) {
            Err(BodyError::TooLarge { limit: l, .. }) => assert_eq!(l, limit),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // Exactly at the limit is fine.
        let exact = gzip(&vec![7u8; 1000]);
        assert_eq!(
            decode(ContentEncoding::Gzip, &exact, 1000).unwrap().len(),
            1000
        );
        assert!(matches!(
            decode(ContentEncoding::Gzip, &exact, 999),
            Err(BodyError::TooLarge { .. })
        ));
    }

    #[test]
    fn capacity_never_exceeds_the_limit() {
        let data = vec![1u8; 300_000];
        let gz = gzip(&data);
        let out = gunzip(&gz, 300_000).unwrap();
        assert!(out.capacity() <= 300_000);
    }

    #[test]
    fn malformed_gzip_is_not_too_large() {
        for bad in [&b"not gzip at all"[..], &b""[..]] {
            assert!(
                matches!(
                    decode(ContentEncoding::Gzip, bad, 1 << 20),
                    Err(BodyError::Malformed { .. })
                ),
                "{bad:?}"
            );
        }
        let mut gz = gzip(b"{\"sqlText\":\"select 1\"}");
        let n = gz.len();
        gz.truncate(n - 3);
        assert!(matches!(
            decode(ContentEncoding::Gzip, &gz, 1 << 20),
            Err(BodyError::Malformed { .. })
        ));
        let mut gz = gzip(b"{}");
        gz.extend_from_slice(b"trailing");
        assert!(matches!(
            decode(ContentEncoding::Gzip, &gz, 1 << 20),
            Err(BodyError::Malformed { .. })
        ));
        let mut gz = gzip(b"{\"a\":1}");
        let n = gz.len();
        gz[n - 6] ^= 0xff; // the CRC
        assert!(matches!(
            decode(ContentEncoding::Gzip, &gz, 1 << 20),
            Err(BodyError::Malformed { .. })
        ));
    }

    #[test]
    fn size_hints() {
        let mut h = http::HeaderMap::new();
        assert_eq!(decoded_size_hint(&h, b"abcdef", 4), 4);
        assert_eq!(decoded_size_hint(&h, b"abc", 100), 3);
        h.insert(
            http::header::CONTENT_ENCODING,
            http::HeaderValue::from_static("gzip"),
        );
        let z = gzip(&vec![b'x'; 100_000]);
        assert_eq!(decoded_size_hint(&h, &z, 1 << 20), 100_000);
        assert_eq!(decoded_size_hint(&h, &z, 10), 10);
        assert_eq!(decoded_size_hint(&h, b"short", 100), 0);
        h.insert(
            http::header::CONTENT_ENCODING,
            http::HeaderValue::from_static("br"),
        );
        assert_eq!(decoded_size_hint(&h, &z, 100), 0);
    }
}

//! The frame both append-only files of the agent are made of, the audit journal's segments and
//! the recordings' spools: `len u32 LE | crc32 u32 LE | head | body`, where `len` counts the body's
//! bytes, `head` is a fixed number of bytes each file chooses (the journal's sequence number; none
//! in a spool), and the CRC (CRC-32, IEEE) covers head and body.
//!
//! A file is read frame by frame up to its end or to the first frame that is torn (a partial
//! header or body: a crash while appending), out of range (`len` outside the file's bounds) or
//! damaged (a CRC mismatch); what follows is never read. Only frames never acknowledged can be
//! there, because each file acknowledges a frame only after the fdatasync that covers it.
//!
//! Each file keeps its own layout parameters ([`Framing`]), so the bytes on disk stay those each
//! wrote before they shared this code. No I/O beyond the reader handed in; when to sync and what a
//! body holds are the files' business.

use std::io::{self, ErrorKind, Read};

/// Bytes of the length and the CRC that start every frame.
const PREFIX: usize = 8;

/// The layout parameters of one kind of file's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// Bytes of the head after the CRC (covered by it, not counted by `len`).
    pub head_len: usize,
    /// The smallest `len` an intact frame has.
    pub min_len: u32,
    /// The largest `len` an intact frame has; a longer one is taken for garbage.
    pub max_len: u32,
}

/// A frame's body is longer than its file allows; the frame was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame body of {0} bytes exceeds the limit")]
pub struct TooLarge(pub usize);

/// What [`Framing::read`] found next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// An intact frame, now in the buffer.
    Frame,
    /// The end of the file, exactly after the last intact frame.
    End,
    /// A torn, out-of-range or damaged frame: reading stops here.
    Torn,
}

impl Framing {
    /// Bytes before the body: length, CRC and head.
    pub const fn header_len(&self) -> usize {
        PREFIX + self.head_len
    }

    /// Starts a frame at the end of `buf` with `head` (of [`head_len`](Self::head_len) bytes);
    /// the caller appends the body, then calls [`finish`](Self::finish) with the returned start.
    pub fn begin(&self, buf: &mut Vec<u8>, head: &[u8]) -> usize {
        debug_assert_eq!(head.len(), self.head_len);
        let start = buf.len();
        buf.extend_from_slice(&[0u8; PREFIX]);
        buf.extend_from_slice(head);
        start
    }

    /// Fills in the length and CRC of the frame that starts at `start` and runs to the end of
    /// `buf`; a body too long is removed again.
    pub fn finish(&self, buf: &mut Vec<u8>, start: usize) -> Result<(), TooLarge> {
        let body_len = buf.len() - start - self.header_len();
        let len = match u32::try_from(body_len) {
            Ok(len) if len <= self.max_len => len,
            _ => {
                buf.truncate(start);
                return Err(TooLarge(body_len));
            }
        };
        let crc = crc32fast::hash(&buf[start + PREFIX..]);
        buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }

    /// The body length a frame header (at least [`header_len`](Self::header_len) bytes) gives,
    /// if it is within the file's bounds.
    pub fn body_len(&self, header: &[u8]) -> Option<usize> {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        (self.min_len..=self.max_len)
            .contains(&len)
            .then_some(len as usize)
    }

    /// Whether `body` is intact for the frame header `header` (its CRC matches).
    pub fn intact(&self, header: &[u8], body: &[u8]) -> bool {
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let mut h = crc32fast::Hasher::new();
        h.update(&header[PREFIX..self.header_len()]);
        h.update(body);
        h.finalize() == crc
    }

    /// The head of a frame read by [`read`](Self::read).
    pub fn head<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        &frame[PREFIX..self.header_len()]
    }

    /// The body of a frame read by [`read`](Self::read).
    pub fn body<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        &frame[self.header_len()..]
    }

    /// Reads the next frame of `r` into `frame` (header and body; see [`head`](Self::head) and
    /// [`body`](Self::body)). Errors are those of the reader, never the frame's.
    pub fn read(&self, r: &mut impl Read, frame: &mut Vec<u8>) -> io::Result<Next> {
        let header_len = self.header_len();
        frame.resize(header_len, 0);
        match read_full(r, frame)? {
            0 => return Ok(Next::End),
            n if n < header_len => return Ok(Next::Torn),
            _ => {}
        }
        let Some(len) = self.body_len(frame) else {
            return Ok(Next::Torn);
        };
        frame.resize(header_len + len, 0);
        if read_full(r, &mut frame[header_len..])? < len {
            return Ok(Next::Torn);
        }
        let (header, body) = frame.split_at(header_len);
        Ok(if self.intact(header, body) {
            Next::Frame
        } else {
            Next::Torn
        })
    }
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const WITH_HEAD: Framing = Framing {
        head_len: 8,
        min_len: 0,
        max_len: 64,
    };
    const BARE: Framing = Framing {
        head_len: 0,
        min_len: 4,
        max_len: 64,
    };

    fn frame(f: &Framing, buf: &mut Vec<u8>, head: &[u8], body: &[u8]) {
        let start = f.begin(buf, head);
        buf.extend_from_slice(body);
        f.finish(buf, start).unwrap();
    }

    /// A frame's head and body, as read back.
    type HeadBody = (Vec<u8>, Vec<u8>);

    fn read_all(f: &Framing, bytes: &[u8]) -> (Vec<HeadBody>, Next) {
        let mut r = bytes;
        let mut out = Vec::new();
        let mut buf = Vec::new();
        loop {
            match f.read(&mut r, &mut buf).unwrap() {
                Next::Frame => out.push((f.head(&buf).to_vec(), f.body(&buf).to_vec())),
                end => return (out, end),
            }
        }
    }

    #[test]
    fn frames_round_trip_in_the_layout_each_file_writes() {
        let mut buf = Vec::new();
        frame(&WITH_HEAD, &mut buf, &7u64.to_le_bytes(), b"hello");
        frame(&WITH_HEAD, &mut buf, &8u64.to_le_bytes(), b"");
        // The journal's layout: len (body only) | crc (head and body) | seq | body.
        assert_eq!(&buf[..4], &5u32.to_le_bytes());
        let mut covered = 7u64.to_le_bytes().to_vec();
        covered.extend_from_slice(b"hello");
        assert_eq!(&buf[4..8], &crc32fast::hash(&covered).to_le_bytes());
        assert_eq!(&buf[8..16], &7u64.to_le_bytes());
        assert_eq!(&buf[16..21], b"hello");
        let (got, end) = read_all(&WITH_HEAD, &buf);
        assert_eq!(end, Next::End);
        assert_eq!(
            got,
            vec![
                (7u64.to_le_bytes().to_vec(), b"hello".to_vec()),
                (8u64.to_le_bytes().to_vec(), Vec::new())
            ]
        );

        // The spool's layout: len | crc | body.
        let mut buf = Vec::new();
        frame(&BARE, &mut buf, &[], b"\x01\0\0\0{x");
        assert_eq!(&buf[..4], &6u32.to_le_bytes());
        assert_eq!(&buf[4..8], &crc32fast::hash(b"\x01\0\0\0{x").to_le_bytes());
        assert_eq!(&buf[8..], b"\x01\0\0\0{x");
        assert_eq!(
            read_all(&BARE, &buf).0,
            vec![(Vec::new(), b"\x01\0\0\0{x".to_vec())]
        );
    }

    #[test]
    fn a_torn_tail_ends_reading_after_the_last_whole_frame() {
        let mut buf = Vec::new();
        frame(&WITH_HEAD, &mut buf, &1u64.to_le_bytes(), b"one");
        let whole = buf.len();
        frame(&WITH_HEAD, &mut buf, &2u64.to_le_bytes(), b"two");
        for cut in [whole + 3, whole + 16, buf.len() - 1] {
            let (got, end) = read_all(&WITH_HEAD, &buf[..cut]);
            assert_eq!(end, Next::Torn, "cut at {cut}");
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].1, b"one");
        }
        assert_eq!(read_all(&WITH_HEAD, &buf[..whole]).1, Next::End);
    }

    #[test]
    fn a_corrupt_checksum_or_length_stops_reading() {
        let mut buf = Vec::new();
        frame(&WITH_HEAD, &mut buf, &1u64.to_le_bytes(), b"one");
        let second = buf.len();
        frame(&WITH_HEAD, &mut buf, &2u64.to_le_bytes(), b"two");
        frame(&WITH_HEAD, &mut buf, &3u64.to_le_bytes(), b"three");
        // A flipped bit in the second frame's head (covered by the CRC) and in its body.
        for at in [second + 9, second + 17] {
            let mut bad = buf.clone();
            bad[at] ^= 0x01;
            let (got, end) = read_all(&WITH_HEAD, &bad);
            assert_eq!((got.len(), end), (1, Next::Torn), "flip at {at}");
        }
        // A length beyond the limit is garbage, not a reason to allocate.
        let mut bad = buf.clone();
        bad[second..second + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(read_all(&WITH_HEAD, &bad).0.len(), 1);
        // A body shorter than the file's minimum is damage too.
        let mut short = Vec::new();
        frame(&WITH_HEAD, &mut short, &[0; 8], b"ab");
        short.drain(8..16);
        assert_eq!(read_all(&BARE, &short), (Vec::new(), Next::Torn));
    }

    #[test]
    fn a_body_over_the_limit_is_refused_and_removed() {
        let mut buf = b"keep".to_vec();
        let start = BARE.begin(&mut buf, &[]);
        buf.extend_from_slice(&[0u8; 65]);
        assert_eq!(BARE.finish(&mut buf, start), Err(TooLarge(65)));
        assert_eq!(buf, b"keep");
    }
}

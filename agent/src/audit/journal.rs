//! The write-ahead journal: where an event is made durable before it is acknowledged.
//!
//! Layout under `<state_dir>/journal/`:
//! - `id`: a UUID naming this journal, written once. Parquet files record it with the journal
//!   sequence numbers they hold, so a recreated journal (state directory wiped) can never be confused
//!   with an older one whose sequence numbers overlap.
//! - `<first_seq, 20 digits>.wal`: segments, in sequence order. Each starts with a 16-byte header
//!   (`SEGMENT_MAGIC`, then the first sequence number, little-endian) followed by records:
//!   `len: u32 LE | crc32: u32 LE | seq: u64 LE | payload (len bytes)`, the CRC covering `seq` and
//!   `payload` (the frame of [`super::frame`], with the sequence number as its head). Sequence numbers increase by one per record, across segments and restarts (a
//!   segment's name carries the counter even when it is empty).
//! - A payload is the event in the binary encoding of [`codec`] (record format 2: it starts with
//!   [`FORMAT_BINARY`], then says whether it is a complete event or a statement's intent,
//!   [`RecordKind`]). Agents before it wrote format 1, JSON: the event as JSON (it starts with `{`)
//!   for a complete event, or the byte [`INTENT_TAG`] followed by the event as JSON for an intent.
//!   Both read the same, so a journal left by an older agent is recovered at upgrade.
//!
//! Segment headers say which agents may read them: the last byte of [`SEGMENT_MAGIC`] is the
//! segment format, 2 for segments this build writes (whose records may be of format 2), 1 for
//! those of older agents (format 1 records only). This build reads both; an older agent refuses a
//! segment of format 2 as "not a journal segment" at start, rather than taking its records for
//! damage and dropping them (a downgrade must first let this build shut down cleanly, which
//! empties the journal).
//!
//! A crash can leave a torn tail: a partial header or payload, or a CRC mismatch. Reading stops at
//! the first such record of a segment; only records that were never acknowledged can be there,
//! because an acknowledgement waits for the fdatasync that covers the whole record.
//!
//! This module only encodes, appends and reads; when to sync, rotate and delete is the writer's
//! business, and turning records into Parquet is recovery's.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use uuid::Uuid;

use super::event::Event;
use super::frame::{Framing, Next};

pub mod codec;

pub use super::publish::sync_dir;
pub use codec::{CodecError, FORMAT_BINARY};

/// The first eight bytes of every segment this build writes; the last byte is the segment format.
pub const SEGMENT_MAGIC: [u8; 8] = *b"STJRNL\0\x02";
/// The first eight bytes of a segment written by an agent before record format 2 (JSON records
/// only); still read.
pub const SEGMENT_MAGIC_V1: [u8; 8] = *b"STJRNL\0\x01";
/// Bytes of a segment header.
pub const HEADER_LEN: u64 = 16;
/// Bytes of a record header (length, CRC, sequence number).
pub const RECORD_HEADER_LEN: usize = FRAMING.header_len();
/// A record longer than this is taken for garbage (SQL text is capped at 1 MB by Snowflake).
pub const MAX_RECORD_LEN: u32 = 64 * 1024 * 1024;
/// A record's frame: the shared layout with the sequence number (u64 LE) as its head.
pub const FRAMING: Framing = Framing {
    head_len: 8,
    min_len: 0,
    max_len: MAX_RECORD_LEN,
};
/// A segment is sealed and a new one started once it grows past this (the default of
/// `audit.segment_bytes`).
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// The first byte of an intent record's payload in record format 1 (JSON); a complete event's
/// payload there starts with `{`.
pub const INTENT_TAG: u8 = b'I';

/// What a journal record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A complete event: a row of its own, or the row of the pending intent with its `event_id`.
    Event,
    /// A statement's intent: no row of its own while it waits for the complete event with its
    /// `event_id`; written with the flag `outcome_unknown` if that never comes.
    Intent,
}

/// Why a record's payload could not be decoded into an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A record of format 1 is not an event's JSON.
    #[error("record (format 1, JSON): {0}")]
    Json(#[from] serde_json::Error),
    /// A record of format 2 is damaged or from a newer agent.
    #[error("record (format 2): {0}")]
    Binary(#[from] CodecError),
    /// The payload starts with a byte no known format starts with: a newer agent wrote it.
    #[error("record of unknown format (first byte {0:#04x}): written by a newer agent?")]
    Format(u8),
    /// The payload is empty.
    #[error("empty record")]
    Empty,
}

/// A payload's format.
enum Payload<'a> {
    /// Format 1: the kind and the event's JSON.
    Json(RecordKind, &'a [u8]),
    /// Format 2.
    Binary(&'a [u8]),
}

fn payload_format(payload: &[u8]) -> Result<Payload<'_>, DecodeError> {
    match payload.first() {
        Some(&FORMAT_BINARY) => Ok(Payload::Binary(payload)),
        Some(&INTENT_TAG) => Ok(Payload::Json(RecordKind::Intent, &payload[1..])),
        Some(b'{') => Ok(Payload::Json(RecordKind::Event, payload)),
        Some(&b) => Err(DecodeError::Format(b)),
        None => Err(DecodeError::Empty),
    }
}

/// The kind of a record's payload, of either format.
pub fn record_kind(payload: &[u8]) -> Result<RecordKind, DecodeError> {
    match payload_format(payload)? {
        Payload::Json(kind, _) => Ok(kind),
        Payload::Binary(p) => Ok(if codec::is_intent(p)? {
            RecordKind::Intent
        } else {
            RecordKind::Event
        }),
    }
}

/// The `event_time` and `event_id` of a record's payload, of either format, without decoding
/// the whole event (recovery reads them for every record).
pub fn peek_time_and_id(payload: &[u8]) -> Result<(std::time::SystemTime, Uuid), DecodeError> {
    #[derive(Deserialize)]
    struct Head {
        event_time: std::time::SystemTime,
        event_id: Uuid,
    }
    match payload_format(payload)? {
        Payload::Json(_, json) => {
            let h: Head = serde_json::from_slice(json)?;
            Ok((h.event_time, h.event_id))
        }
        Payload::Binary(p) => Ok(codec::peek(p)?),
    }
}

/// Why the journal could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The journal's `id` file does not hold a UUID.
    #[error("journal id file {0} is not a UUID")]
    BadId(PathBuf),
    /// A segment does not start with the journal's magic.
    #[error("{0} is not a journal segment")]
    BadSegment(PathBuf),
    /// An event's encoding is longer than [`MAX_RECORD_LEN`].
    #[error("event of {0} bytes is too large for the journal")]
    TooLarge(usize),
    /// An event could not be encoded as JSON (a bug; format 1 only).
    #[error("event could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
    /// The record expected at a position is not there intact.
    #[error("{path}: no intact record {seq} at byte {pos}")]
    BadRecord {
        /// The segment.
        path: PathBuf,
        /// The expected sequence number.
        seq: u64,
        /// The byte offset in the segment.
        pos: u64,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> JournalError + 'a {
    move |source| JournalError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The journal directory and its identity.
#[derive(Debug, Clone)]
pub struct JournalDir {
    /// `<state_dir>/journal`.
    pub path: PathBuf,
    /// This journal's id, recorded in every Parquet file made from it.
    pub id: Uuid,
}

impl JournalDir {
    /// Opens the journal under `state_dir`, creating the directory and its id on first use.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        let path = state_dir.join("journal");
        if !path.is_dir() {
            fs::create_dir_all(&path).map_err(io_err("create", &path))?;
            sync_dir(state_dir).map_err(io_err("sync", state_dir))?;
        }
        let id_path = path.join("id");
        let id = match fs::read_to_string(&id_path) {
            Ok(s) => Uuid::parse_str(s.trim()).map_err(|_| JournalError::BadId(id_path.clone()))?,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let id = Uuid::now_v7();
                let tmp = path.join(".id.tmp");
                let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
                f.write_all(format!("{id}\n").as_bytes())
                    .map_err(io_err("write", &tmp))?;
                f.sync_all().map_err(io_err("sync", &tmp))?;
                fs::rename(&tmp, &id_path).map_err(io_err("rename", &id_path))?;
                sync_dir(&path).map_err(io_err("sync", &path))?;
                id
            }
            Err(e) => return Err(io_err("read", &id_path)(e)),
        };
        Ok(JournalDir { path, id })
    }

    /// The segments present, in sequence order, as (first sequence number, path).
    pub fn segments(&self) -> Result<Vec<(u64, PathBuf)>, JournalError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.path).map_err(io_err("list", &self.path))? {
            let entry = entry.map_err(io_err("list", &self.path))?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".wal")) else {
                continue;
            };
            if let Ok(first) = stem.parse::<u64>() {
                out.push((first, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The path of the segment whose first record has sequence number `first_seq`.
    pub fn segment_path(&self, first_seq: u64) -> PathBuf {
        self.path.join(format!("{first_seq:020}.wal"))
    }

    /// Creates a new, durable, empty segment (header written, file and directory synced).
    pub fn create_segment(&self, first_seq: u64) -> Result<(PathBuf, File), JournalError> {
        let path = self.segment_path(first_seq);
        let mut f = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(&SEGMENT_MAGIC);
        header[8..].copy_from_slice(&first_seq.to_le_bytes());
        let written = f.write_all(&header).and_then(|()| f.sync_data());
        if let Err(e) = written {
            drop(f);
            let _ = fs::remove_file(&path);
            return Err(io_err("write", &path)(e));
        }
        sync_dir(&self.path).map_err(io_err("sync", &self.path))?;
        Ok((path, f))
    }
}

/// Appends one record for `event` with sequence number `seq` to `buf` (reused across calls, so the
/// hot path allocates only when the buffer must grow).
pub fn encode_record(buf: &mut Vec<u8>, seq: u64, event: &Event) -> Result<(), JournalError> {
    encode_kind(buf, seq, RecordKind::Event, event)
}

/// Appends one record of `kind` for `event` with sequence number `seq` to `buf`.
pub fn encode_kind(
    buf: &mut Vec<u8>,
    seq: u64,
    kind: RecordKind,
    event: &Event,
) -> Result<(), JournalError> {
    let start = FRAMING.begin(buf, &seq.to_le_bytes());
    codec::encode(buf, kind == RecordKind::Intent, event);
    finish_record(buf, start)
}

/// Appends one record of `kind` for `event` in record format 1 (JSON), as agents before format 2
/// wrote them: for tests of reading a journal an older agent left.
pub fn encode_kind_v1(
    buf: &mut Vec<u8>,
    seq: u64,
    kind: RecordKind,
    event: &Event,
) -> Result<(), JournalError> {
    let start = FRAMING.begin(buf, &seq.to_le_bytes());
    if kind == RecordKind::Intent {
        buf.push(INTENT_TAG);
    }
    if let Err(e) = serde_json::to_writer(&mut *buf, event) {
        buf.truncate(start);
        return Err(e.into());
    }
    finish_record(buf, start)
}

/// Appends a record with sequence number `seq` holding `payload` as it is (a record's payload
/// copied forward under a new number).
pub fn encode_payload(buf: &mut Vec<u8>, seq: u64, payload: &[u8]) -> Result<(), JournalError> {
    let start = FRAMING.begin(buf, &seq.to_le_bytes());
    buf.extend_from_slice(payload);
    finish_record(buf, start)
}

/// Fills in the header of the record that starts at `start` and runs to the end of `buf`.
fn finish_record(buf: &mut Vec<u8>, start: usize) -> Result<(), JournalError> {
    FRAMING
        .finish(buf, start)
        .map_err(|e| JournalError::TooLarge(e.0))
}

/// Reads the record `seq` that starts at byte `pos` of the segment `file` (at `path`) into
/// `payload`, checking its number and CRC.
pub fn read_record_at(
    file: &File,
    path: &Path,
    pos: u64,
    seq: u64,
    payload: &mut Vec<u8>,
) -> Result<(), JournalError> {
    use std::os::unix::fs::FileExt;
    let bad = || JournalError::BadRecord {
        path: path.to_owned(),
        seq,
        pos,
    };
    let mut rh = [0u8; RECORD_HEADER_LEN];
    file.read_exact_at(&mut rh, pos)
        .map_err(|e| match e.kind() {
            ErrorKind::UnexpectedEof => bad(),
            _ => io_err("read", path)(e),
        })?;
    let len = match FRAMING.body_len(&rh) {
        Some(len) if rh[8..] == seq.to_le_bytes() => len,
        _ => return Err(bad()),
    };
    payload.clear();
    payload.resize(len, 0);
    file.read_exact_at(payload, pos + RECORD_HEADER_LEN as u64)
        .map_err(|e| match e.kind() {
            ErrorKind::UnexpectedEof => bad(),
            _ => io_err("read", path)(e),
        })?;
    if !FRAMING.intact(&rh, payload) {
        return Err(bad());
    }
    Ok(())
}

/// What reading a segment found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SegmentEnd {
    /// Records read intact.
    pub records: u64,
    /// Whether reading stopped at a torn or corrupt record rather than at the end of the file.
    pub torn: bool,
    /// Bytes of the intact prefix (header included).
    pub valid_len: u64,
    /// The sequence number after the last intact record (the header's first one if there is none).
    pub next_seq: u64,
}

/// Reads a segment's intact records in order, calling `f(seq, payload)` for each; stops at the first
/// torn or corrupt record.
pub fn read_segment(
    path: &Path,
    mut f: impl FnMut(u64, &[u8]) -> Result<(), JournalError>,
) -> Result<SegmentEnd, JournalError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; HEADER_LEN as usize];
    match r.read_exact(&mut header) {
        Ok(()) => {}
        // A segment whose header never reached the disk holds nothing.
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
            return Ok(SegmentEnd {
                torn: true,
                ..SegmentEnd::default()
            });
        }
        Err(e) => return Err(io_err("read", path)(e)),
    }
    if header[..8] != SEGMENT_MAGIC && header[..8] != SEGMENT_MAGIC_V1 {
        return Err(JournalError::BadSegment(path.to_owned()));
    }
    let mut first = [0u8; 8];
    first.copy_from_slice(&header[8..]);
    let mut end = SegmentEnd {
        valid_len: HEADER_LEN,
        next_seq: u64::from_le_bytes(first),
        ..SegmentEnd::default()
    };
    let mut frame = Vec::new();
    loop {
        match FRAMING
            .read(&mut r, &mut frame)
            .map_err(io_err("read", path))?
        {
            Next::Frame => {}
            Next::End => return Ok(end),
            Next::Torn => {
                end.torn = true;
                return Ok(end);
            }
        }
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(FRAMING.head(&frame));
        let seq = u64::from_le_bytes(seq_bytes);
        f(seq, FRAMING.body(&frame))?;
        end.records += 1;
        end.valid_len += frame.len() as u64;
        end.next_seq = seq + 1;
    }
}

/// Decodes the event of a record's payload, of either kind and either format.
pub fn decode_event(payload: &[u8]) -> Result<Event, DecodeError> {
    match payload_format(payload)? {
        Payload::Json(_, json) => Ok(serde_json::from_slice(json)?),
        Payload::Binary(p) => Ok(codec::decode(p)?),
    }
}

/// A set of journal sequence numbers kept as sorted, disjoint, inclusive ranges; what a Parquet file
/// records about the journal records it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqRanges(Vec<(u64, u64)>);

impl SeqRanges {
    /// Adds `seq`; cheap when sequence numbers come in increasing order, as they mostly do (an
    /// intent's number comes in late, with the row that completes it).
    pub fn insert(&mut self, seq: u64) {
        // The first range that ends at or after `seq`: every range before it ends before `seq`.
        let i = self.0.partition_point(|r| r.1 < seq);
        if self.0.get(i).is_some_and(|r| r.0 <= seq) {
            return;
        }
        let joins_prev = i > 0 && self.0[i - 1].1.checked_add(1) == Some(seq);
        let joins_next = self.0.get(i).is_some_and(|r| r.0 == seq + 1);
        match (joins_prev, joins_next) {
            (true, true) => {
                self.0[i - 1].1 = self.0[i].1;
                self.0.remove(i);
            }
            (true, false) => self.0[i - 1].1 = seq,
            (false, true) => self.0[i].0 = seq,
            (false, false) => self.0.insert(i, (seq, seq)),
        }
    }

    /// Adds every number of `other`.
    pub fn extend(&mut self, other: &SeqRanges) {
        self.0.extend_from_slice(&other.0);
        self.normalize();
    }

    fn normalize(&mut self) {
        self.0.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(self.0.len());
        for &(a, b) in &self.0 {
            match out.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => out.push((a, b)),
            }
        }
        self.0 = out;
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        let i = self.0.partition_point(|r| r.1 < seq);
        self.0.get(i).is_some_and(|r| r.0 <= seq)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many numbers the set holds.
    pub fn count(&self) -> u64 {
        self.0.iter().map(|(a, b)| b - a + 1).sum()
    }

    /// The ranges, sorted.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// Parses the form written by `Display` (`1-5,9-9`).
    pub fn parse(s: &str) -> Option<Self> {
        let mut out = SeqRanges::default();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (a, b) = part.split_once('-')?;
            let (a, b) = (a.parse().ok()?, b.parse().ok()?);
            if a > b {
                return None;
            }
            out.0.push((a, b));
        }
        out.normalize();
        Some(out)
    }
}

impl std::fmt::Display for SeqRanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (a, b)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{a}-{b}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::audit::EventKind;
    use std::time::SystemTime;

    #[test]
    fn records_round_trip_and_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let j = JournalDir::open(dir.path()).unwrap();
        assert_eq!(JournalDir::open(dir.path()).unwrap().id, j.id);
        let (path, mut f) = j.create_segment(10).unwrap();
        let mut buf = Vec::new();
        let events: Vec<Event> = (0..3)
            .map(|_| Event::new(EventKind::Query, SystemTime::now(), "h"))
            .collect();
        for (i, e) in events.iter().enumerate() {
            encode_record(&mut buf, 10 + i as u64, e).unwrap();
        }
        f.write_all(&buf).unwrap();
        // A torn tail: half of a fourth record.
        let mut tail = Vec::new();
        encode_record(&mut tail, 13, &events[0]).unwrap();
        f.write_all(&tail[..tail.len() / 2]).unwrap();
        let mut got = Vec::new();
        let end = read_segment(&path, |seq, p| {
            got.push((seq, decode_event(p).unwrap()));
            Ok(())
        })
        .unwrap();
        assert!(end.torn);
        assert_eq!(end.records, 3);
        assert_eq!(end.next_seq, 13);
        assert_eq!(end.valid_len, HEADER_LEN + buf.len() as u64);
        assert_eq!(got.into_iter().map(|g| g.1).collect::<Vec<_>>(), events);
        assert_eq!(j.segments().unwrap(), vec![(10, path.clone())]);

        // A flipped byte in the second record stops reading after the first.
        let mut bytes = fs::read(&path).unwrap();
        let second = HEADER_LEN as usize + (buf.len() / 3) + RECORD_HEADER_LEN + 3;
        bytes[second] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let end = read_segment(&path, |_, _| Ok(())).unwrap();
        assert!(end.torn);
        assert!(end.records >= 1 && end.records < 3);
    }

    #[test]
    fn intent_records_and_copies() {
        let dir = tempfile::tempdir().unwrap();
        let j = JournalDir::open(dir.path()).unwrap();
        let (path, mut f) = j.create_segment(1).unwrap();
        let e = Event::new(EventKind::Query, SystemTime::now(), "h");
        let mut buf = Vec::new();
        encode_kind(&mut buf, 1, RecordKind::Intent, &e).unwrap();
        let second = buf.len() as u64;
        encode_record(&mut buf, 2, &e).unwrap();
        f.write_all(&buf).unwrap();
        let mut kinds = Vec::new();
        read_segment(&path, |seq, p| {
            let kind = record_kind(p).unwrap();
            assert_eq!(decode_event(p).unwrap(), e);
            kinds.push((seq, kind));
            Ok(())
        })
        .unwrap();
        assert_eq!(kinds, vec![(1, RecordKind::Intent), (2, RecordKind::Event)]);

        // Read back by position, then copied forward under a new number.
        let file = File::open(&path).unwrap();
        let mut payload = Vec::new();
        read_record_at(&file, &path, HEADER_LEN, 1, &mut payload).unwrap();
        assert_eq!(record_kind(&payload).unwrap(), RecordKind::Intent);
        assert!(matches!(
            read_record_at(&file, &path, HEADER_LEN, 7, &mut payload),
            Err(JournalError::BadRecord { seq: 7, .. })
        ));
        assert!(read_record_at(&file, &path, HEADER_LEN + second, 2, &mut payload).is_ok());
        assert!(read_record_at(&file, &path, 1 << 20, 3, &mut payload).is_err());
        read_record_at(&file, &path, HEADER_LEN, 1, &mut payload).unwrap();
        let mut copy = Vec::new();
        encode_payload(&mut copy, 3, &payload).unwrap();
        f.write_all(&copy).unwrap();
        let mut last = None;
        read_segment(&path, |seq, p| {
            last = Some((seq, record_kind(p).unwrap(), decode_event(p).unwrap()));
            Ok(())
        })
        .unwrap();
        assert_eq!(last, Some((3, RecordKind::Intent, e)));
    }

    #[test]
    fn segments_of_the_json_format_still_read() {
        // A segment an agent before record format 2 left: its own magic, JSON records.
        let dir = tempfile::tempdir().unwrap();
        let j = JournalDir::open(dir.path()).unwrap();
        let path = j.segment_path(1);
        let e = Event::new(EventKind::Query, SystemTime::now(), "h");
        let mut bytes = SEGMENT_MAGIC_V1.to_vec();
        bytes.extend_from_slice(&1u64.to_le_bytes());
        encode_kind_v1(&mut bytes, 1, RecordKind::Intent, &e).unwrap();
        encode_kind_v1(&mut bytes, 2, RecordKind::Event, &e).unwrap();
        // Then a binary record, as a copy made after the upgrade would be.
        encode_kind(&mut bytes, 3, RecordKind::Intent, &e).unwrap();
        fs::write(&path, &bytes).unwrap();
        let mut got = Vec::new();
        let end = read_segment(&path, |seq, p| {
            assert_eq!(peek_time_and_id(p).unwrap(), (e.event_time, e.event_id));
            got.push((seq, record_kind(p).unwrap(), decode_event(p).unwrap()));
            Ok(())
        })
        .unwrap();
        assert!(!end.torn);
        assert_eq!(
            got,
            vec![
                (1, RecordKind::Intent, e.clone()),
                (2, RecordKind::Event, e.clone()),
                (3, RecordKind::Intent, e.clone())
            ]
        );
        // The binary form is far smaller than the JSON one.
        let (mut json, mut bin) = (Vec::new(), Vec::new());
        encode_kind_v1(&mut json, 1, RecordKind::Event, &e).unwrap();
        encode_kind(&mut bin, 1, RecordKind::Event, &e).unwrap();
        assert!(
            bin.len() * 4 < json.len(),
            "{} vs {}",
            bin.len(),
            json.len()
        );

        // A segment of a format this build does not know is refused, not read as damage.
        bytes[7] = 3;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            read_segment(&path, |_, _| Ok(())),
            Err(JournalError::BadSegment(_))
        ));
        // And so is a record of an unknown format.
        assert!(matches!(
            decode_event(b"\x07abc"),
            Err(DecodeError::Format(7))
        ));
        assert!(matches!(record_kind(b""), Err(DecodeError::Empty)));
    }

    #[test]
    fn seq_ranges_out_of_order() {
        let mut r = SeqRanges::default();
        for s in [10, 12, 14, 11, 13, 1, 3, 2, 20, 19, 21] {
            r.insert(s);
        }
        assert_eq!(r.to_string(), "1-3,10-14,19-21");
        r.insert(12);
        assert_eq!(r.count(), 11);
    }

    #[test]
    fn seq_ranges() {
        let mut r = SeqRanges::default();
        for s in [1, 2, 3, 7, 8, 5, 4] {
            r.insert(s);
        }
        assert_eq!(r.to_string(), "1-5,7-8");
        assert!(r.contains(4) && !r.contains(6) && r.contains(8) && !r.contains(0));
        assert_eq!(r.count(), 7);
        assert_eq!(SeqRanges::parse("1-5,7-8"), Some(r.clone()));
        assert_eq!(SeqRanges::parse(""), Some(SeqRanges::default()));
        assert_eq!(SeqRanges::parse("5-1"), None);
        let mut o = SeqRanges::parse("6-6,100-101").unwrap();
        o.extend(&r);
        assert_eq!(o.to_string(), "1-8,100-101");
    }
}

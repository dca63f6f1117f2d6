//! The journal file beside the store file: a header, then length-prefixed, checksummed
//! records, each with a sequence number, each holding the changes of one group commit.
//!
//! Layout (all integers little-endian; details and versioning rules in `docs/FORMAT.md`):
//!
//! ```text
//! header (32 bytes)
//! 0   8  magic      89 54 4B 4A 0D 0A 1A 0A  ("\x89TKJ\r\n\x1a\n")
//! 8   4  version    u32, currently 4 (3: no usage counts; 2: no credits changes either;
//!                   1: no extras, owner or prefix changes either; all still read)
//! 12  4  flags      u32, must be 0
//! 16  8  base       u64, the sequence number the first record follows
//! 24  4  reserved   u32, must be 0
//! 28  4  header_crc u32, CRC32 (IEEE) of bytes 0..28
//!
//! each record
//! 0   4  len        u32, payload bytes
//! 4   4  crc        u32, CRC32 of bytes 0..4, then 8..16+len
//! 8   8  seq        u64, the previous record's + 1 (the first: base + 1)
//! 16  …  payload    bincode 2 (standard config, serde) of `Vec<Change>`
//! ```
//!
//! A record's changes are replayed in order onto the snapshot; replay skips records the
//! snapshot covers (its `seq`), and each change is idempotent, so a crash between any two
//! steps of a compaction applies nothing twice.

use std::fs::File;
use std::io;

use crate::change::{Change, ChangeRef};
use crate::snapshot::{self, u32_at, u64_at, DecodeError, Problem, MAX_SEQ};

/// The first eight bytes of every journal file.
pub(crate) const MAGIC: [u8; 8] = *b"\x89TKJ\r\n\x1a\n";
/// The journal format version this build writes, and the newest it reads.
pub(crate) const VERSION: u32 = 4;
/// The size of the journal's header in bytes.
pub(crate) const HEADER_LEN: usize = 32;
/// The size of a record's frame before its payload.
pub(crate) const FRAME_LEN: usize = 16;

/// The header of a journal whose first record will be `base + 1`.
pub(crate) fn header(base: u64) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[0..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out[16..24].copy_from_slice(&base.to_le_bytes());
    let crc = crc32fast::hash(&out[..28]);
    out[28..32].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The largest record payload this build writes. A batch whose changes take more (an
/// `issue_many` of thousands of tokens with long names and many scopes) is written as a
/// snapshot instead, so a record, and so a torn tail after a crash, stays small enough to
/// read and check quickly. Readers accept any length the frame can hold (4 GiB).
pub(crate) const MAX_RECORD_LEN: usize = 64 << 20;

/// Why a batch was not appended: its record would exceed [`MAX_RECORD_LEN`]. Nothing was
/// written; the caller writes the batch in a snapshot.
#[derive(Debug, thiserror::Error)]
#[error("a journal record of {len} bytes is over the {MAX_RECORD_LEN}-byte limit")]
pub(crate) struct RecordTooLarge {
    len: usize,
}

impl RecordTooLarge {
    /// Whether `error` is this refusal (nothing written), not a failed write.
    pub(crate) fn is(error: &std::io::Error) -> bool {
        error
            .get_ref()
            .is_some_and(|inner| inner.is::<RecordTooLarge>())
    }
}

/// Appends record `seq` holding `changes` to `out`, framed and checksummed. Refused with
/// [`RecordTooLarge`] (and `out` as it was) if the changes take more than
/// [`MAX_RECORD_LEN`] bytes: write them in a snapshot instead.
pub(crate) fn encode_record(
    seq: u64,
    changes: &[ChangeRef<'_>],
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_LEN]);
    snapshot::encode_into(&changes, out);
    let payload = out.len() - start - FRAME_LEN;
    let len = match u32::try_from(payload) {
        Ok(len) if payload <= MAX_RECORD_LEN => len,
        _ => {
            out.truncate(start);
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                RecordTooLarge { len: payload },
            ));
        }
    };
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 8..start + 16].copy_from_slice(&seq.to_le_bytes());
    let crc = record_crc(&out[start..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// A journal (header, base 0) holding one record 1 whose payload is `payload`, framed and
/// checksummed (for fuzzing the record decoder).
pub(crate) fn frame_record(payload: &[u8]) -> Vec<u8> {
    let mut out = header(0).to_vec();
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&1u64.to_le_bytes());
    out.extend_from_slice(&payload[..len as usize]);
    let crc = record_crc(&out[HEADER_LEN..]);
    out[HEADER_LEN + 4..HEADER_LEN + 8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The checksum of a whole framed record (its `crc` field is not covered).
fn record_crc(record: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&record[..4]);
    hasher.update(&record[8..]);
    hasher.finalize()
}

/// Where a journal is read from: its bytes in memory, or the file itself, read a piece at
/// a time so that a reader never holds more than the pieces it is checking.
pub(crate) trait Source {
    /// The size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` with the bytes from `at` on. Callers read only within [`size`](Self::size).
    fn read_at(&self, at: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl Source for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, at: u64, buf: &mut [u8]) -> io::Result<()> {
        let piece = usize::try_from(at)
            .ok()
            .and_then(|at| self.get(at..at.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(piece);
        Ok(())
    }
}

/// A journal file, read as it was `len` bytes long (its size when opened: a record a live
/// service appends meanwhile is not read, or, cut by `len`, reads as a torn tail).
pub(crate) struct FileSource<'f> {
    pub(crate) file: &'f File,
    pub(crate) len: u64,
}

impl Source for FileSource<'_> {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_at(&self, at: u64, buf: &mut [u8]) -> io::Result<()> {
        #[cfg(unix)]
        {
            std::os::unix::fs::FileExt::read_exact_at(self.file, buf, at)
        }
        #[cfg(not(unix))]
        {
            use std::io::{Read, Seek};
            let mut file = self.file;
            file.seek(io::SeekFrom::Start(at))?;
            file.read_exact(buf)
        }
    }
}

/// A record's payload up to this size is read whole and then checksummed; a larger one is
/// checksummed a [`CHUNK`] at a time first, and read whole only if it is what its frame
/// says (so a damaged length costs no allocation).
const SMALL_RECORD: u64 = 1 << 20;
/// The piece read at a time when checksumming a large record or looking past a damaged one.
const CHUNK: usize = 64 * 1024;
/// All zeros, to skip pieces of a damaged tail that cannot hold a frame (a memcmp).
static ZEROS: [u8; CHUNK + FRAME_LEN] = [0; CHUNK + FRAME_LEN];
/// The most bytes that may follow the start of a torn record: one whole record. The
/// journal is appended one record at a time, each made durable before the next is written
/// (and after a failed write the journal is never appended to again), so a crash cuts
/// short at most the one record in flight. More after a damaged record is damage, refused
/// without reading it (a sparse file of a terabyte is refused at once).
const MAX_TAIL: u64 = FRAME_LEN as u64 + u32::MAX as u64;
/// What looking past a damaged record may cost, in bytes checksummed: this many times the
/// bytes after it, plus [`TAIL_SLACK`]. An honest torn tail costs about nothing (the
/// prefilter in [`valid_record_after`] rejects the would-be frames inside a real record
/// in O(1) each); a tail crafted to pass the prefilter at many offsets is refused as
/// damaged once it has cost this much, rather than costing the square of its length.
const TAIL_FACTOR: u64 = 4;
/// See [`TAIL_FACTOR`].
const TAIL_SLACK: u64 = 1 << 20;
/// How much is read at a time after would-be records (see [`Lookahead`]); each such read
/// counts in that budget as the bytes it read.
const PROBE_LEN: u64 = 4096;

/// A journal as read: the records in order and where the valid part ends.
#[derive(Debug)]
pub(crate) struct Scanned {
    /// The format version its header states (0: the header is cut short).
    pub(crate) version: u32,
    /// The sequence number the first record follows (from the header).
    pub(crate) base: u64,
    /// The records, in file order.
    pub(crate) records: Vec<Logged>,
    /// Bytes up to the end of the last valid record: where the next record goes.
    pub(crate) valid_len: u64,
    /// The file ends in a torn record (cut short, or failing its checksum with nothing
    /// valid after it) starting at `valid_len`: to be set aside and cut off.
    pub(crate) torn: bool,
    /// The file's size as read.
    pub(crate) file_len: u64,
    /// Bytes checksummed in all (each record's once, and any would-be record after a damaged
    /// one), and bytes read to look past would-be records: at most the file's size plus
    /// [`TAIL_FACTOR`] times its tail, plus [`TAIL_SLACK`]. (Read by tests and fuzzing,
    /// which a loom build leaves out.)
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) checked: u64,
}

/// One record as read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Logged {
    pub(crate) seq: u64,
    /// Where the record starts in the file (for errors).
    pub(crate) offset: u64,
    pub(crate) changes: Vec<Change>,
}

/// Why a journal cannot be replayed, and at which byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JournalError {
    pub(crate) offset: u64,
    pub(crate) error: DecodeError,
}

/// Why a journal could not be read: what is wrong in it, or the error reading it.
#[derive(Debug)]
pub(crate) enum ScanError {
    Bad(JournalError),
    Io(io::Error),
}

impl From<io::Error> for ScanError {
    fn from(e: io::Error) -> Self {
        ScanError::Io(e)
    }
}

impl From<JournalError> for ScanError {
    fn from(e: JournalError) -> Self {
        ScanError::Bad(e)
    }
}

/// [`scan_from`] a whole journal's bytes in memory (for tests and fuzzing, which a loom
/// build leaves out).
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn scan(bytes: &[u8]) -> Result<Scanned, JournalError> {
    scan_from(bytes).map_err(|e| match e {
        ScanError::Bad(e) => e,
        // Reads within a slice's length cannot fail; should one, it is no valid journal.
        ScanError::Io(e) => JournalError {
            offset: 0,
            error: Problem::Undecodable(e.to_string()).into(),
        },
    })
}

/// Reads a journal.
///
/// A torn tail is reported in [`Scanned::torn`], not as an error: it is what a crash during
/// an append leaves, and it was never acknowledged. Anything else wrong (a damaged record
/// with a valid one after it, a gap in sequence numbers, a record that does not decode, a
/// sequence number above [`MAX_SEQ`]) is an error naming the offset. A file cut inside its
/// header (only possible by hand: a journal is created whole) reads as an empty torn
/// journal, `base` 0.
///
/// What it holds in memory at once is bounded by what it checks: the header, then each
/// record once its length was checked against the bytes the file has left (a record over
/// [`SMALL_RECORD`] only once its checksum matched, reading it a [`CHUNK`] at a time), then
/// a [`CHUNK`] at a time of a torn tail. Its work is bounded by the file's size (see
/// [`valid_record_after`]).
pub(crate) fn scan_from<S: Source + ?Sized>(source: &S) -> Result<Scanned, ScanError> {
    let at = |offset: u64, error: DecodeError| ScanError::Bad(JournalError { offset, error });
    let file_len = source.size();
    let mut header = [0u8; HEADER_LEN];
    let header_len = usize::try_from(file_len).map_or(HEADER_LEN, |n| n.min(HEADER_LEN));
    source.read_at(0, &mut header[..header_len])?;
    let read = snapshot::read_header(&header[..header_len], &MAGIC, VERSION);
    let Some(header) = read.map_err(|(offset, error)| at(offset, error))? else {
        return Ok(Scanned {
            version: 0,
            base: 0,
            records: Vec::new(),
            valid_len: 0,
            torn: true,
            file_len,
            checked: 0,
        });
    };
    let flags = header.flags | header.tail;
    if flags != 0 {
        return Err(at(12, Problem::UnknownFlags(flags).into()));
    }
    let base = header.word;
    if base > MAX_SEQ {
        return Err(at(16, Problem::SeqTooLarge(base).into()));
    }
    let mut records = Vec::new();
    let mut checked = 0;
    let mut offset = HEADER_LEN as u64;
    // No overflow: `base` is at most `MAX_SEQ`, and each record adds one.
    let mut expected = base + 1;
    while offset < file_len {
        let Some(record) = read_record(source, offset, &mut checked)? else {
            if valid_record_after(source, offset, expected, &mut checked)? {
                return Err(at(offset, Problem::BodyChecksum.into()));
            }
            return Ok(Scanned {
                version: header.version,
                base,
                records,
                valid_len: offset,
                torn: true,
                file_len,
                checked,
            });
        };
        if record.seq != expected {
            let seq = record.seq;
            return Err(at(
                offset,
                Problem::Undecodable(format!(
                    "record has sequence number {seq}, but {expected} was expected (a gap)"
                ))
                .into(),
            ));
        }
        let changes = snapshot::decode_body::<Vec<Change>>(&record.payload)
            .map_err(|problem| at(offset, problem.into()))?;
        drop(record.payload);
        records.push(Logged {
            seq: record.seq,
            offset,
            changes,
        });
        expected = expected
            .checked_add(1)
            .ok_or_else(|| at(offset, Problem::SeqTooLarge(record.seq).into()))?;
        offset = record.end;
    }
    Ok(Scanned {
        version: header.version,
        base,
        records,
        valid_len: offset,
        torn: false,
        file_len,
        checked,
    })
}

/// A whole record whose checksum matched.
struct Framed {
    seq: u64,
    payload: Vec<u8>,
    /// Where it ends (the next record's offset).
    end: u64,
}

/// The record framed at `offset` if it is whole and its checksum matches. Adds the bytes
/// checksummed to `checked`.
fn read_record<S: Source + ?Sized>(
    source: &S,
    offset: u64,
    checked: &mut u64,
) -> io::Result<Option<Framed>> {
    let Some(frame) = frame_at(source, offset)? else {
        return Ok(None);
    };
    let len = u64::from(u32_at(&frame, 0));
    let Some(end) = record_end(source, offset, len) else {
        return Ok(None);
    };
    // `len` is within the file (`record_end`) and at most 4 GiB (a `u32`).
    let Ok(size) = usize::try_from(len) else {
        return Ok(None);
    };
    let payload_at = offset + FRAME_LEN as u64;
    if len > SMALL_RECORD && !checksum_matches(source, offset, &frame, len, checked)? {
        return Ok(None);
    }
    let mut payload = vec![0u8; size];
    source.read_at(payload_at, &mut payload)?;
    if len <= SMALL_RECORD {
        *checked += 12 + len;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&frame[..4]);
        hasher.update(&frame[8..]);
        hasher.update(&payload);
        if hasher.finalize() != u32_at(&frame, 4) {
            return Ok(None);
        }
    }
    Ok(Some(Framed {
        seq: u64_at(&frame, 8),
        payload,
        end,
    }))
}

/// The frame at `offset`, if the file holds all of it.
fn frame_at<S: Source + ?Sized>(source: &S, offset: u64) -> io::Result<Option<[u8; FRAME_LEN]>> {
    if source.size().saturating_sub(offset) < FRAME_LEN as u64 {
        return Ok(None);
    }
    let mut frame = [0u8; FRAME_LEN];
    source.read_at(offset, &mut frame)?;
    Ok(Some(frame))
}

/// Where a record of payload `len` framed at `offset` ends, if the file holds all of it.
fn record_end<S: Source + ?Sized>(source: &S, offset: u64, len: u64) -> Option<u64> {
    let end = offset.checked_add(FRAME_LEN as u64)?.checked_add(len)?;
    (end <= source.size()).then_some(end)
}

/// Whether the record framed by `frame` at `offset`, of payload `len` (within the file),
/// has the checksum its frame gives: read a [`CHUNK`] at a time. Adds the bytes checksummed
/// to `checked`.
fn checksum_matches<S: Source + ?Sized>(
    source: &S,
    offset: u64,
    frame: &[u8; FRAME_LEN],
    len: u64,
    checked: &mut u64,
) -> io::Result<bool> {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&frame[..4]);
    hasher.update(&frame[8..]);
    let mut buf = vec![0u8; CHUNK.min(usize::try_from(len).unwrap_or(CHUNK))];
    let mut at = offset + FRAME_LEN as u64;
    let mut left = len;
    while left > 0 {
        let n = buf.len().min(usize::try_from(left).unwrap_or(buf.len()));
        source.read_at(at, &mut buf[..n])?;
        hasher.update(&buf[..n]);
        at += n as u64;
        left -= n as u64;
    }
    *checked += 12 + len;
    Ok(hasher.finalize() == u32_at(frame, 4))
}

/// Whether a valid record starts anywhere after the bad or cut record at `offset` (whose
/// sequence number would be `expected`): if so, the bad record is damage in the middle of
/// the journal, not a torn tail.
///
/// Checksumming every would-be frame after `offset` would cost the square of the tail (a
/// big record holds many bytes that read as a plausible frame), so a would-be frame at `at`
/// is checksummed only if it passes an O(1) prefilter that every real record passes:
/// - its `seq` is plausible: from `expected` to `expected` plus one per frame that fits;
/// - its payload ends within the file;
/// - it is followed as a real record is: by the end of the file, a frame cut short by it,
///   the next record's frame (whose `seq` is this one's + 1), or 16 zero bytes (the next
///   record's frame never reached the disk: a crash in the next append). Inside an honest
///   record neither is likely: its bytes never hold 16 zeros in a row (no name or scope
///   holds a NUL), and an exact `seq + 1` right after a would-be record is chance.
///
/// What the prefilter lets through is budgeted ([`TAIL_FACTOR`]): a tail that exceeds the
/// budget is refused as damaged (no honest one comes near it). A tail longer than any
/// record ([`MAX_TAIL`]) is refused at once. Pieces of the tail whose would-be `seq` bytes
/// are all zero (a sparse file's holes, a torn write's unwritten pages) cannot hold a
/// plausible `seq` (`expected` is at least 1) and are skipped with one comparison.
fn valid_record_after<S: Source + ?Sized>(
    source: &S,
    offset: u64,
    expected: u64,
    checked: &mut u64,
) -> Result<bool, ScanError> {
    let at_offset = |error: Problem| {
        ScanError::Bad(JournalError {
            offset,
            error: error.into(),
        })
    };
    let size = source.size();
    let tail = size - offset;
    if tail > MAX_TAIL {
        return Err(at_offset(Problem::TailTooLong { tail }));
    }
    let budget = checked.saturating_add(tail.saturating_mul(TAIL_FACTOR) + TAIL_SLACK);
    let most = expected.saturating_add(tail / FRAME_LEN as u64);
    let Some(last) = size.checked_sub(FRAME_LEN as u64) else {
        return Ok(false);
    };
    let mut window = vec![0u8; CHUNK + FRAME_LEN - 1];
    let mut after = Lookahead::default();
    let mut start = offset + 1;
    while start <= last {
        // The would-be frames at `start..start + n`: the bytes up to the last one's end.
        let n = usize::try_from(last - start + 1).map_or(CHUNK, |left| left.min(CHUNK));
        let bytes = &mut window[..n + FRAME_LEN - 1];
        source.read_at(start, bytes)?;
        if bytes[8..] == ZEROS[..bytes.len() - 8] {
            start += n as u64;
            continue;
        }
        for i in 0..n {
            let seq = u64_at(bytes, i + 8);
            if seq < expected || seq > most {
                continue;
            }
            let at = start + i as u64;
            let len = u64::from(u32_at(bytes, i));
            let Some(end) = record_end(source, at, len) else {
                continue;
            };
            if !after.followed_as_a_record(source, end, seq, checked)? {
                continue;
            }
            let mut frame = [0u8; FRAME_LEN];
            frame.copy_from_slice(&bytes[i..i + FRAME_LEN]);
            if checked.saturating_add(12 + len) > budget {
                return Err(at_offset(Problem::TailTooCostly { checked: *checked }));
            }
            if checksum_matches(source, at, &frame, len, checked)? {
                return Ok(true);
            }
        }
        if *checked > budget {
            return Err(at_offset(Problem::TailTooCostly { checked: *checked }));
        }
        start += n as u64;
    }
    Ok(false)
}

/// The bytes last read after a would-be record, kept for the next one: the would-be
/// frames inside a real record are alike (each token's record holds the same shape), so
/// their ends advance together, and one read serves hundreds of them.
#[derive(Default)]
struct Lookahead {
    start: u64,
    bytes: Vec<u8>,
}

impl Lookahead {
    /// Whether what follows a would-be record of sequence number `seq` ending at `end` is
    /// what follows a real one (see [`valid_record_after`]). A read of [`PROBE_LEN`] bytes
    /// it needs adds that many to `checked`.
    fn followed_as_a_record<S: Source + ?Sized>(
        &mut self,
        source: &S,
        end: u64,
        seq: u64,
        checked: &mut u64,
    ) -> io::Result<bool> {
        let size = source.size();
        if size - end < FRAME_LEN as u64 {
            return Ok(true);
        }
        let held = self.start + self.bytes.len() as u64;
        if end < self.start || end + FRAME_LEN as u64 > held {
            let len = (size - end).min(PROBE_LEN);
            self.bytes.resize(len as usize, 0);
            source.read_at(end, &mut self.bytes)?;
            self.start = end;
            *checked = checked.saturating_add(len);
        }
        let from = (end - self.start) as usize;
        let next = &self.bytes[from..from + FRAME_LEN];
        Ok(u64_at(next, 8) == seq.wrapping_add(1) || next == &ZEROS[..FRAME_LEN])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end of the record framed at `offset` if it is whole and its checksum matches.
    fn framed_end(bytes: &[u8], offset: usize) -> Option<usize> {
        let framed = read_record(bytes, offset as u64, &mut 0).unwrap()?;
        Some(framed.end as usize)
    }

    fn journal(records: &[Vec<ChangeRef<'_>>]) -> Vec<u8> {
        let mut out = header(4).to_vec();
        for (n, changes) in records.iter().enumerate() {
            encode_record(5 + n as u64, changes, &mut out).unwrap();
        }
        out
    }

    fn sample() -> Vec<u8> {
        journal(&[
            vec![ChangeRef::Revoke {
                id: *b"abcd1234",
                at: 7,
            }],
            vec![
                ChangeRef::Used {
                    id: *b"abcd1234",
                    at: 9,
                },
                ChangeRef::Delete { id: *b"abcd1234" },
            ],
            vec![ChangeRef::Expire {
                id: *b"efgh5678",
                at: 11,
            }],
        ])
    }

    #[test]
    fn records_round_trip_in_order() {
        let scanned = scan(&sample()).unwrap();
        assert_eq!(scanned.base, 4);
        assert!(!scanned.torn);
        assert_eq!(scanned.valid_len, sample().len() as u64);
        let seqs: Vec<u64> = scanned.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [5, 6, 7]);
        assert_eq!(
            scanned.records[1].changes,
            [
                Change::Used {
                    id: *b"abcd1234",
                    at: 9
                },
                Change::Delete { id: *b"abcd1234" }
            ]
        );
    }

    #[test]
    fn every_truncation_keeps_every_record_before_the_cut() {
        let image = sample();
        let whole = scan(&image).unwrap();
        for len in 0..image.len() {
            let scanned = scan(&image[..len]).unwrap_or_else(|e| panic!("cut at {len}: {e:?}"));
            let kept = scanned.records.len();
            assert_eq!(scanned.records[..], whole.records[..kept], "cut at {len}");
            let ends_on_record = len >= HEADER_LEN && scanned.valid_len == len as u64;
            assert_eq!(scanned.torn, !ends_on_record, "cut at {len}");
            // Every record that ends at or before the cut is kept.
            let mut end = HEADER_LEN;
            let mut whole_before = 0;
            while let Some(next) = framed_end(&image, end).filter(|&e| e <= len) {
                end = next;
                whole_before += 1;
            }
            assert_eq!(kept, whole_before, "cut at {len}");
        }
    }

    #[test]
    fn a_bit_flip_before_the_last_record_is_refused_and_one_in_it_is_a_torn_tail() {
        let image = sample();
        let last = {
            let mut at = HEADER_LEN;
            let mut last = at;
            while let Some(end) = framed_end(&image, at) {
                last = at;
                at = end;
            }
            last
        };
        for byte in 0..image.len() {
            for bit in 0..8 {
                let mut flipped = image.clone();
                flipped[byte] ^= 1 << bit;
                let scanned = scan(&flipped);
                if byte < last {
                    assert!(
                        scanned.is_err(),
                        "accepted a flip of bit {bit} of byte {byte}"
                    );
                } else {
                    let scanned = scanned.unwrap();
                    assert!(scanned.torn, "byte {byte} bit {bit}");
                    assert_eq!(scanned.records.len(), 2);
                }
            }
        }
    }

    #[test]
    fn a_gap_in_sequence_numbers_is_refused_naming_its_offset() {
        let mut image = header(0).to_vec();
        encode_record(1, &[ChangeRef::Delete { id: *b"abcd1234" }], &mut image).unwrap();
        let second = image.len();
        encode_record(3, &[ChangeRef::Delete { id: *b"abcd1234" }], &mut image).unwrap();
        let err = scan(&image).unwrap_err();
        assert_eq!(err.offset, second as u64);
    }

    #[test]
    fn a_framed_payload_is_one_valid_record() {
        let mut payload = Vec::new();
        snapshot::encode_into(&vec![ChangeRef::Delete { id: *b"abcd1234" }], &mut payload);
        let scanned = scan(&frame_record(&payload)).unwrap();
        assert_eq!(scanned.records.len(), 1);
        assert_eq!(
            scanned.records[0].changes,
            [Change::Delete { id: *b"abcd1234" }]
        );
    }

    #[test]
    fn zeros_after_the_last_record_are_a_torn_tail() {
        let mut image = sample();
        let len = image.len();
        image.extend_from_slice(&[0; 100]);
        let scanned = scan(&image).unwrap();
        assert!(scanned.torn);
        assert_eq!(scanned.valid_len, len as u64);
        assert_eq!(scanned.records.len(), 3);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = scan(&bytes);
            }

            /// A payload behind a valid frame reaches the change decoder and the replay.
            #[test]
            fn arbitrary_payloads_behind_a_valid_frame_never_panic(
                payload in proptest::collection::vec(any::<u8>(), 0..512),
            ) {
                if let Ok(scanned) = scan(&frame_record(&payload)) {
                    let map = crate::map::Map::with_capacity(0);
                    let _ = crate::recover::replay_after(&map, scanned.records, 0);
                }
            }

            #[test]
            fn arbitrary_bytes_after_a_valid_header_never_panic(
                tail in proptest::collection::vec(any::<u8>(), 0..512),
            ) {
                let mut image = header(0).to_vec();
                image.extend_from_slice(&tail);
                let _ = scan(&image);
            }
        }
    }
}

//! The journal file beside the store file: a header, then length-prefixed, checksummed
//! records, each with a sequence number, each holding the changes of one group commit.
//!
//! Layout (all integers little-endian; details and versioning rules in `docs/FORMAT.md`):
//!
//! ```text
//! header (32 bytes)
//! 0   8  magic      89 54 4B 4A 0D 0A 1A 0A  ("\x89TKJ\r\n\x1a\n")
//! 8   4  version    u32, currently 1
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

use serde::{Deserialize, Serialize};

use crate::snapshot::{self, DecodeError, Problem, RateLimitRecord, Record, RecordRef};

/// The first eight bytes of every journal file.
pub(crate) const MAGIC: [u8; 8] = *b"\x89TKJ\r\n\x1a\n";
/// The journal format version this build writes, and the newest it reads.
pub(crate) const VERSION: u32 = 1;
/// The size of the journal's header in bytes.
pub(crate) const HEADER_LEN: usize = 32;
/// The size of a record's frame before its payload.
pub(crate) const FRAME_LEN: usize = 16;

/// One change to the store, as replayed from the journal. Times are Unix ms.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub(crate) enum Change {
    /// A new token (from `issue`, or the replacement `rotate` made).
    Issue(Record),
    /// The token was revoked at `at` (a token already revoked keeps its first time).
    Revoke { id: [u8; 8], at: u64 },
    /// The token was deleted (`delete`, `purge`, retention); unknown ids are ignored.
    Delete { id: [u8; 8] },
    /// The token's rate limit was set or removed.
    SetRateLimit {
        id: [u8; 8],
        limit: Option<RateLimitRecord>,
    },
    /// The token expires at `at` if it would expire later (`rotate`'s grace).
    Expire { id: [u8; 8], at: u64 },
    /// The token was last used at `at` (replayed with max).
    Used { id: [u8; 8], at: u64 },
}

/// What a record is written from: a [`Change`] whose new token borrows its entry's text.
/// Encodes to exactly the bytes the owned form decodes.
#[derive(Debug, Serialize)]
pub(crate) enum ChangeRef<'a> {
    Issue(RecordRef<'a>),
    Revoke {
        id: [u8; 8],
        at: u64,
    },
    Delete {
        id: [u8; 8],
    },
    SetRateLimit {
        id: [u8; 8],
        limit: Option<RateLimitRecord>,
    },
    Expire {
        id: [u8; 8],
        at: u64,
    },
    Used {
        id: [u8; 8],
        at: u64,
    },
}

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

/// A journal as read: the records in order and where the valid part ends.
#[derive(Debug)]
pub(crate) struct Scanned {
    /// The sequence number the first record follows (from the header).
    pub(crate) base: u64,
    /// The records, in file order.
    pub(crate) records: Vec<Logged>,
    /// Bytes up to the end of the last valid record: where the next record goes.
    pub(crate) valid_len: u64,
    /// The file ends in a torn record (cut short, or failing its checksum with nothing
    /// valid after it) starting at `valid_len`: to be set aside and cut off.
    pub(crate) torn: bool,
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

/// Reads a whole journal file's bytes.
///
/// A torn tail is reported in [`Scanned::torn`], not as an error: it is what a crash during
/// an append leaves, and it was never acknowledged. Anything else wrong (a damaged record
/// with a valid one after it, a gap in sequence numbers, a record that does not decode) is
/// an error naming the offset. A file cut inside its header (only possible by hand: a
/// journal is created whole) reads as an empty torn journal, `base` 0.
pub(crate) fn scan(bytes: &[u8]) -> Result<Scanned, JournalError> {
    let at = |offset: usize, error: DecodeError| JournalError {
        offset: offset as u64,
        error,
    };
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(at(0, Problem::Foreign.into()));
    }
    if bytes.len() < HEADER_LEN {
        return Ok(Scanned {
            base: 0,
            records: Vec::new(),
            valid_len: 0,
            torn: true,
        });
    }
    if crc32fast::hash(&bytes[..28]) != u32_at(bytes, 28) {
        return Err(at(0, Problem::HeaderChecksum.into()));
    }
    match u32_at(bytes, 8) {
        0 => return Err(at(8, Problem::BadVersion(0).into())),
        v if v > VERSION => return Err(at(8, DecodeError::FutureVersion(v))),
        _ => {}
    }
    let flags = u32_at(bytes, 12) | u32_at(bytes, 24);
    if flags != 0 {
        return Err(at(12, Problem::UnknownFlags(flags).into()));
    }
    let base = u64_at(bytes, 16);
    let mut records = Vec::new();
    let mut offset = HEADER_LEN;
    let mut expected = base.wrapping_add(1);
    while offset < bytes.len() {
        let Some(end) = framed_end(bytes, offset) else {
            if valid_record_after(bytes, offset, expected) {
                return Err(at(offset, Problem::BodyChecksum.into()));
            }
            return Ok(Scanned {
                base,
                records,
                valid_len: offset as u64,
                torn: true,
            });
        };
        let seq = u64_at(bytes, offset + 8);
        if seq != expected {
            return Err(at(
                offset,
                Problem::Undecodable(format!(
                    "record has sequence number {seq}, but {expected} was expected (a gap)"
                ))
                .into(),
            ));
        }
        let changes = snapshot::decode_body::<Vec<Change>>(&bytes[offset + FRAME_LEN..end])
            .map_err(|problem| at(offset, problem.into()))?;
        records.push(Logged {
            seq,
            offset: offset as u64,
            changes,
        });
        expected = seq.wrapping_add(1);
        offset = end;
    }
    Ok(Scanned {
        base,
        records,
        valid_len: offset as u64,
        torn: false,
    })
}

/// The end of the record framed at `offset` if it is whole and its checksum matches.
fn framed_end(bytes: &[u8], offset: usize) -> Option<usize> {
    let frame = bytes.get(offset..offset + FRAME_LEN)?;
    let len = u32_at(frame, 0) as usize;
    let end = offset.checked_add(FRAME_LEN)?.checked_add(len)?;
    let record = bytes.get(offset..end)?;
    (record_crc(record) == u32_at(frame, 4)).then_some(end)
}

/// Whether a valid record starts anywhere after `offset`: if so, the bad record at
/// `offset` is damage in the middle of the journal, not a torn tail. Only offsets holding
/// a plausible sequence number (after `expected`, no further on than one per frame) are
/// checksummed, so a long damaged tail is scanned in one cheap pass.
fn valid_record_after(bytes: &[u8], offset: usize, expected: u64) -> bool {
    let last = bytes.len().saturating_sub(FRAME_LEN);
    (offset + 1..=last).any(|at| {
        let seq = u64_at(bytes, at + 8);
        let most = expected.saturating_add(((bytes.len() - offset) / FRAME_LEN) as u64);
        seq >= expected && seq <= most && framed_end(bytes, at).is_some()
    })
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

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

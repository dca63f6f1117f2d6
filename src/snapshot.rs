//! The store file: a checked header, a `bincode` body, replaced atomically.
//!
//! Layout (all integers little-endian; details and versioning rules in `docs/FORMAT.md`):
//!
//! ```text
//! 0   8  magic      89 54 4B 43 0D 0A 1A 0A  ("\x89TKC\r\n\x1a\n")
//! 8   4  version    u32, currently 5 (4: no usage counts; 3: no credits either; 2: no
//!                   extras, owners or prefixes either; 1: no `seq` either; all still read)
//! 12  4  flags      u32, must be 0
//! 16  8  body_len   u64, bytes after the header
//! 24  4  body_crc   u32, CRC32 (IEEE) of the body
//! 28  4  header_crc u32, CRC32 of bytes 0..28
//! 32  …  body       bincode 2 (standard config, serde) of `Body`
//! ```
//!
//! A file is trusted only when every field checks out; otherwise `open` fails naming the
//! problem and the file is left exactly as it was.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

pub(crate) use crate::credits::CreditsRecord;
pub(crate) use crate::usage::UsageRecord;

/// The first eight bytes of every store file.
pub const MAGIC: [u8; 8] = *b"\x89TKC\r\n\x1a\n";
/// The format version this build writes, and the newest it reads.
pub const FORMAT_VERSION: u32 = 5;
/// The size of the fixed header in bytes.
pub const HEADER_LEN: usize = 32;

const BINCODE: bincode::config::Configuration = bincode::config::standard();

/// The largest sequence number a file may give (a snapshot's `seq`, a journal's `base`):
/// 2^63 - 1, so every sequence number computed from one (the next record's, the number
/// after the last of a journal's records) fits in a `u64` with room to spare. A store
/// writing a record every microsecond would take 290,000 years to reach it.
pub(crate) const MAX_SEQ: u64 = u64::MAX / 2;

/// The body of a snapshot.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Body {
    /// When the snapshot was taken, Unix ms.
    pub(crate) written_at: u64,
    /// The sequence number of the last journal record this snapshot covers: replay skips
    /// records up to it (0: none).
    pub(crate) seq: u64,
    pub(crate) records: Vec<Record>,
    /// The owners, tokens' metadata and import marks of the tokens that have any (most
    /// have none, and pay nothing for them here).
    pub(crate) extras: Vec<ExtrasRecord>,
    /// The owners with a shared rate limit.
    pub(crate) owners: Vec<OwnerRecord>,
    /// Every prefix the store has issued tokens under (without the `_` that follows it).
    pub(crate) prefixes: Vec<String>,
    /// The credits of the tokens that have any, as last spent.
    pub(crate) credits: Vec<CreditsRecord>,
    /// The usage counts of the tokens ever used.
    pub(crate) usage: Vec<UsageRecord>,
}

/// The body of a version 4 snapshot: no usage counts.
#[derive(Deserialize)]
struct BodyV4 {
    written_at: u64,
    seq: u64,
    records: Vec<Record>,
    extras: Vec<ExtrasRecord>,
    owners: Vec<OwnerRecord>,
    prefixes: Vec<String>,
    credits: Vec<CreditsRecord>,
}

/// The body of a version 3 snapshot: no credits.
#[derive(Deserialize)]
struct BodyV3 {
    written_at: u64,
    seq: u64,
    records: Vec<Record>,
    extras: Vec<ExtrasRecord>,
    owners: Vec<OwnerRecord>,
    prefixes: Vec<String>,
}

/// What a snapshot holds besides its token records, loaded once the tokens are in.
#[derive(Debug, Default)]
pub(crate) struct Beside {
    pub(crate) extras: Vec<ExtrasRecord>,
    pub(crate) owners: Vec<OwnerRecord>,
    pub(crate) prefixes: Vec<String>,
    pub(crate) credits: Vec<CreditsRecord>,
    pub(crate) usage: Vec<UsageRecord>,
}

impl Body {
    /// Takes what the body holds besides its token records.
    pub(crate) fn take_beside(&mut self) -> Beside {
        Beside {
            extras: std::mem::take(&mut self.extras),
            owners: std::mem::take(&mut self.owners),
            prefixes: std::mem::take(&mut self.prefixes),
            credits: std::mem::take(&mut self.credits),
            usage: std::mem::take(&mut self.usage),
        }
    }

    /// A body of tokens only: no extras, no owner limits, no recorded prefix (as every
    /// version 1 or 2 file is).
    pub(crate) fn tokens(written_at: u64, seq: u64, records: Vec<Record>) -> Body {
        Body {
            written_at,
            seq,
            records,
            extras: Vec::new(),
            owners: Vec::new(),
            prefixes: Vec::new(),
            credits: Vec::new(),
            usage: Vec::new(),
        }
    }
}

/// The body of a version 2 snapshot: the tokens only.
#[derive(Deserialize)]
struct BodyV2 {
    written_at: u64,
    seq: u64,
    records: Vec<Record>,
}

/// The body of a version 1 snapshot, written before the journal existed: no `seq`.
#[derive(Deserialize)]
struct BodyV1 {
    written_at: u64,
    records: Vec<Record>,
}

/// A token's extras as stored: its owner, metadata (key-value pairs in order) and whether
/// it was imported (its digest is of a key minted elsewhere).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ExtrasRecord {
    pub(crate) id: [u8; 8],
    pub(crate) owner: Option<String>,
    pub(crate) meta: Vec<(String, String)>,
    pub(crate) imported: bool,
}

/// An [`ExtrasRecord`] borrowing its text, or owning it where the record outlives the
/// token's extras (encodes to the same bytes either way).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ExtrasRef<'a> {
    pub(crate) id: [u8; 8],
    pub(crate) owner: Option<Cow<'a, str>>,
    pub(crate) meta: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    pub(crate) imported: bool,
}

impl ExtrasRef<'_> {
    /// The same record, owning its text.
    pub(crate) fn into_owned(self) -> ExtrasRef<'static> {
        let own = |text: Cow<'_, str>| Cow::Owned(text.into_owned());
        ExtrasRef {
            id: self.id,
            owner: self.owner.map(own),
            meta: self
                .meta
                .into_iter()
                .map(|(k, v)| (own(k), own(v)))
                .collect(),
            imported: self.imported,
        }
    }
}

/// An owner's shared rate limit, as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct OwnerRecord {
    pub(crate) owner: String,
    pub(crate) rate_limit: RateLimitRecord,
}

/// One token as stored on disk. Times are Unix ms.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Record {
    pub(crate) id: [u8; 8],
    pub(crate) name: String,
    pub(crate) digest: [u8; 32],
    pub(crate) scopes: Vec<String>,
    pub(crate) created_at: u64,
    pub(crate) expires_at: Option<u64>,
    pub(crate) revoked_at: Option<u64>,
    pub(crate) last_used: Option<u64>,
    /// The token's rate limit, if it has one.
    pub(crate) rate_limit: Option<RateLimitRecord>,
}

/// What a snapshot is written from: the [`Body`] layout, with each record borrowing its
/// entry's text instead of owning copies, so writing a snapshot allocates no name or scope.
/// Encodes to exactly the bytes the owned form does (`Body` decodes it).
#[derive(Debug, Serialize)]
pub(crate) struct BodyRef<'r, 'a> {
    pub(crate) written_at: u64,
    pub(crate) seq: u64,
    pub(crate) records: &'r [RecordRef<'a>],
    pub(crate) extras: &'r [ExtrasRef<'a>],
    pub(crate) owners: &'r [OwnerRecord],
    pub(crate) prefixes: &'r [&'a str],
    pub(crate) credits: &'r [CreditsRecord],
    pub(crate) usage: &'r [UsageRecord],
}

/// A [`Record`] borrowing its name and scopes.
#[derive(Debug, Serialize)]
pub(crate) struct RecordRef<'a> {
    pub(crate) id: [u8; 8],
    pub(crate) name: &'a str,
    pub(crate) digest: [u8; 32],
    pub(crate) scopes: Scopes<'a>,
    pub(crate) created_at: u64,
    pub(crate) expires_at: Option<u64>,
    pub(crate) revoked_at: Option<u64>,
    pub(crate) last_used: Option<u64>,
    pub(crate) rate_limit: Option<RateLimitRecord>,
}

/// The scopes of an entry's packed text: the name, then each scope after a `separator`
/// (see `entry::pack_text`). Serializes as the `Vec<String>` of a [`Record`] would.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scopes<'a> {
    pub(crate) text: &'a str,
    pub(crate) separator: char,
}

impl<'a> Scopes<'a> {
    /// Each scope, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        self.text.split(self.separator).skip(1)
    }
}

impl Serialize for Scopes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.iter().count()))?;
        for scope in self.iter() {
            seq.serialize_element(scope)?;
        }
        seq.end()
    }
}

/// A rate limit as stored: `count` per `period_ms`, bursts of up to `burst`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct RateLimitRecord {
    pub(crate) period_ms: u64,
    pub(crate) count: u32,
    pub(crate) burst: u32,
}

/// Encodes a body ([`Body`] or [`BodyRef`]) into a complete file image (header + body).
pub(crate) fn encode(body: &impl Serialize) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    encode_into(body, &mut out);
    write_header(&mut out);
    out
}

/// Raw body bytes behind a valid header (for fuzzing the body decoder).
pub(crate) fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    out.extend_from_slice(body);
    write_header(&mut out);
    out
}

/// Fills in the header of `out` (header space followed by the body).
fn write_header(out: &mut [u8]) {
    let body_len = (out.len() - HEADER_LEN) as u64;
    let body_crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[0..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&0u32.to_le_bytes());
    out[16..24].copy_from_slice(&body_len.to_le_bytes());
    out[24..28].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&out[..28]);
    out[28..32].copy_from_slice(&header_crc.to_le_bytes());
}

/// Why a file is not a snapshot this build can trust. Shown inside [`Error`](crate::Error) messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Problem {
    #[error("it is not a tokencache store (its first bytes are not the tokencache magic number)")]
    Foreign,
    #[error("it is truncated: {len} bytes, but {expected} were expected")]
    Truncated { len: u64, expected: u64 },
    #[error("it has {extra} unexpected bytes after the snapshot body")]
    TrailingBytes { extra: u64 },
    #[error("its header checksum does not match (the header is damaged)")]
    HeaderChecksum,
    #[error("its body checksum does not match (the file is damaged)")]
    BodyChecksum,
    #[error("it has format version {0}, which no tokencache version writes")]
    BadVersion(u32),
    #[error("it sets header flags {0:#x}, which this version does not understand")]
    UnknownFlags(u32),
    #[error("its body does not decode: {0}")]
    Undecodable(String),
    #[error("it holds an invalid token id {0:?}")]
    BadId(String),
    #[error("it holds token id {0} twice")]
    DuplicateId(String),
    #[error("token {0} has a rate limit this version cannot enforce")]
    BadRateLimit(String),
    #[error("token {0} has a name or scope holding a NUL character")]
    BadText(String),
    #[error("token {0} has a time past the year 292 million")]
    BadTime(String),
    #[error("token {id} has extras this version refuses: {why}")]
    BadExtras { id: String, why: String },
    #[error("the file counts uses of token {0}, which it does not hold")]
    BadUsage(String),
    #[error("token {id} has credits this version refuses: {why}")]
    BadCredits { id: String, why: String },
    #[error("it records prefix {0:?}, which is not 1 to 16 letters, digits or underscores")]
    BadPrefix(String),
    #[error("it gives sequence number {0}, above 2^63 - 1, which leaves no room for the records after it (no store counts that far: the file is damaged or was made by hand)")]
    SeqTooLarge(u64),
    #[error("a damaged record is followed by {tail} bytes, more than one record can hold (a write cut short leaves at most one record): the journal is damaged")]
    TailTooLong { tail: u64 },
    #[error("a damaged record is followed by bytes that look like records too often to check them all ({checked} bytes checksummed): the journal is damaged")]
    TailTooCostly { checked: u64 },
}

/// Checks a header (the first [`HEADER_LEN`] bytes, or fewer if the file is shorter) of a
/// file of `file_len` bytes: magic, header checksum, version, flags, and that the body
/// length it gives is exactly what the file holds. So a reader knows the file's true size
/// before it reads (or allocates for) the body.
pub(crate) fn check_header(bytes: &[u8], file_len: u64) -> Result<(), DecodeError> {
    let Some(header) = read_header(bytes, &MAGIC, FORMAT_VERSION).map_err(|(_, e)| e)? else {
        return Err(Problem::Truncated {
            len: file_len,
            expected: HEADER_LEN as u64,
        }
        .into());
    };
    if header.flags != 0 {
        return Err(Problem::UnknownFlags(header.flags).into());
    }
    let body_len = header.word;
    let expected = (HEADER_LEN as u64).saturating_add(body_len);
    if file_len < expected {
        return Err(Problem::Truncated {
            len: file_len,
            expected,
        }
        .into());
    }
    if file_len > expected {
        return Err(Problem::TrailingBytes {
            extra: file_len - expected,
        }
        .into());
    }
    Ok(())
}

/// The fields of a header that [`read_header`] checked (its version is between 1 and the
/// newest this build reads).
pub(crate) struct Header {
    /// The format version (bytes 8..12).
    pub(crate) version: u32,
    /// The flags (bytes 12..16).
    pub(crate) flags: u32,
    /// Bytes 16..24: the body's length (store file) or the first record's base (journal).
    pub(crate) word: u64,
    /// Bytes 24..28: the body's CRC32 (store file) or more flags (journal).
    pub(crate) tail: u32,
}

/// The header reader the store file and the journal share. Both headers are
/// [`HEADER_LEN`] bytes: an 8-byte magic, the version, flags, a `u64`, a `u32`, and a
/// CRC32 of the first 28 bytes. Checks the magic (of as many bytes as `bytes` has: a short
/// file must still start like one of ours), the checksum and that the version is between 1
/// and `newest`. `Ok(None)`: the magic matches but the header is cut short. An error comes
/// with the offset of the field it is about.
pub(crate) fn read_header(
    bytes: &[u8],
    magic: &[u8; 8],
    newest: u32,
) -> Result<Option<Header>, (u64, DecodeError)> {
    let magic_len = bytes.len().min(magic.len());
    if bytes[..magic_len] != magic[..magic_len] {
        return Err((0, Problem::Foreign.into()));
    }
    if bytes.len() < HEADER_LEN {
        return Ok(None);
    }
    if crc32fast::hash(&bytes[..28]) != u32_at(bytes, 28) {
        return Err((0, Problem::HeaderChecksum.into()));
    }
    let version = u32_at(bytes, 8);
    if version > newest {
        return Err((8, DecodeError::FutureVersion(version)));
    }
    if version == 0 {
        return Err((8, Problem::BadVersion(version).into()));
    }
    Ok(Some(Header {
        version,
        flags: u32_at(bytes, 12),
        word: u64_at(bytes, 16),
        tail: u32_at(bytes, 24),
    }))
}

/// The little-endian `u32` at `at` of a checked-length slice.
pub(crate) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// The little-endian `u64` at `at` of a checked-length slice.
pub(crate) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// The body CRC32 a file image's header states (its bytes 24..28), if it has them.
pub(crate) fn body_crc_of(bytes: &[u8]) -> Option<u32> {
    (bytes.len() >= HEADER_LEN).then(|| u32_at(bytes, 24))
}

/// The format version a file image's header states (its bytes 8..12), if it has them.
pub(crate) fn version_of(bytes: &[u8]) -> Option<u32> {
    (bytes.len() >= HEADER_LEN).then(|| u32_at(bytes, 8))
}

/// Decodes and checks a file image. Errors say what is wrong; the caller names the file.
pub(crate) fn decode(bytes: &[u8]) -> Result<Body, DecodeError> {
    check_header(bytes, bytes.len() as u64)?;
    let body = &bytes[HEADER_LEN..];
    if crc32fast::hash(body) != u32_at(bytes, 24) {
        return Err(Problem::BodyChecksum.into());
    }
    let decoded = match u32_at(bytes, 8) {
        1 => decode_body::<BodyV1>(body).map(|v1| Body::tokens(v1.written_at, 0, v1.records)),
        2 => decode_body::<BodyV2>(body).map(|v2| Body::tokens(v2.written_at, v2.seq, v2.records)),
        3 => decode_body::<BodyV3>(body).map(|v3| Body {
            extras: v3.extras,
            owners: v3.owners,
            prefixes: v3.prefixes,
            ..Body::tokens(v3.written_at, v3.seq, v3.records)
        }),
        4 => decode_body::<BodyV4>(body).map(|v4| Body {
            extras: v4.extras,
            owners: v4.owners,
            prefixes: v4.prefixes,
            credits: v4.credits,
            ..Body::tokens(v4.written_at, v4.seq, v4.records)
        }),
        _ => decode_body::<Body>(body),
    };
    let body = decoded?;
    if body.seq > MAX_SEQ {
        return Err(Problem::SeqTooLarge(body.seq).into());
    }
    Ok(body)
}

/// Decodes `body` whole into a `T` (trailing bytes refused), with [`bounded_decode`].
pub(crate) fn decode_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    let (decoded, used) =
        bounded_decode::<T>(body).map_err(|e| Problem::Undecodable(e.to_string()))?;
    if used != body.len() {
        return Err(Problem::TrailingBytes {
            extra: (body.len() - used) as u64,
        });
    }
    Ok(decoded)
}

/// Decodes a body with bincode under a limit scaled to its size.
///
/// Without a limit, bincode allocates a string's claimed length before reading it, so a
/// body with valid checksums and a length prefix of 2^62 would abort the process ("memory
/// allocation failed") instead of being refused (the property
/// `arbitrary_bodies_behind_a_valid_header_never_panic` checks it). bincode counts every
/// byte it claims (at most 8 per byte read: a one-byte varint `u64` claims 8), so a limit
/// of 16× the body never refuses an honest file, and bounds what a hostile one can make us
/// allocate. The limit is a const generic, hence the ladder.
fn bounded_decode<T: serde::de::DeserializeOwned>(
    body: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    fn limited<T: serde::de::DeserializeOwned, const LIMIT: usize>(
        body: &[u8],
    ) -> Result<(T, usize), bincode::error::DecodeError> {
        bincode::serde::decode_from_slice(body, BINCODE.with_limit::<LIMIT>())
    }
    let need = body.len().saturating_mul(16).saturating_add(4096);
    match need {
        n if n <= 1 << 20 => limited::<T, { 1 << 20 }>(body),
        n if n <= 1 << 24 => limited::<T, { 1 << 24 }>(body),
        n if n <= 1 << 28 => limited::<T, { 1 << 28 }>(body),
        n if n <= 1 << 32 => limited::<T, { 1 << 32 }>(body),
        _ => limited::<T, { usize::MAX }>(body),
    }
}

/// Encodes `value` with the store's bincode configuration, appending to `out`.
pub(crate) fn encode_into(value: &impl Serialize, out: &mut Vec<u8>) {
    // Encoding into a Vec only fails for types serde cannot describe; ours are plain data.
    bincode::serde::encode_into_std_write(value, out, BINCODE)
        .expect("plain data, and a Vec never fails to grow");
}

/// The two ways a file can be refused: it is damaged or foreign, or it is newer than us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    Problem(Problem),
    FutureVersion(u32),
}

impl From<Problem> for DecodeError {
    fn from(p: Problem) -> Self {
        DecodeError::Problem(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gives `image` header version `version`, its header checksum made to match.
    fn restamp(image: &mut [u8], version: u32) {
        image[8..12].copy_from_slice(&version.to_le_bytes());
        let crc = crc32fast::hash(&image[..28]);
        image[28..32].copy_from_slice(&crc.to_le_bytes());
    }

    fn sample() -> Body {
        Body {
            extras: vec![ExtrasRecord {
                id: *b"abcd1234",
                owner: Some("acme".into()),
                meta: vec![("plan".into(), "pro".into())],
                imported: true,
            }],
            owners: vec![OwnerRecord {
                owner: "acme".into(),
                rate_limit: RateLimitRecord {
                    period_ms: 1000,
                    count: 5,
                    burst: 5,
                },
            }],
            prefixes: vec!["sk_live".into()],
            credits: vec![CreditsRecord {
                id: *b"abcd1234",
                remaining: 7,
                period: 3,
                refill: Some(crate::credits::RefillRecord::Monthly { day: 1, amount: 10 }),
                alert_below: Some(2),
                anchor: 5,
            }],
            usage: vec![UsageRecord {
                id: *b"abcd1234",
                total: 12,
                days: vec![(20_000, 5), (20_001, 7)],
            }],
            written_at: 42,
            seq: 9,
            records: vec![Record {
                id: *b"abcd1234",
                name: "ci-bot".into(),
                digest: [7; 32],
                scopes: vec!["read".into(), "write".into()],
                created_at: 1,
                expires_at: Some(2),
                revoked_at: None,
                last_used: Some(3),
                rate_limit: Some(RateLimitRecord {
                    period_ms: 60_000,
                    count: 600,
                    burst: 600,
                }),
            }],
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let image = encode(&sample());
        assert_eq!(&image[..8], &MAGIC);
        assert_eq!(decode(&image), Ok(sample()));
    }

    #[test]
    fn every_truncation_is_refused() {
        let image = encode(&sample());
        for len in 0..image.len() {
            assert!(
                decode(&image[..len]).is_err(),
                "accepted a truncation to {len} bytes"
            );
        }
    }

    #[test]
    fn every_bit_flip_is_refused() {
        let image = encode(&sample());
        for byte in 0..image.len() {
            for bit in 0..8 {
                let mut flipped = image.clone();
                flipped[byte] ^= 1 << bit;
                assert!(
                    decode(&flipped).is_err(),
                    "accepted a flip of bit {bit} of byte {byte}"
                );
            }
        }
    }

    #[test]
    fn future_version_is_named() {
        let mut image = encode(&sample());
        let next = FORMAT_VERSION + 1;
        restamp(&mut image, next);
        assert_eq!(decode(&image), Err(DecodeError::FutureVersion(next)));
    }

    #[test]
    fn a_version_1_file_reads_as_covering_no_journal_record() {
        #[derive(Serialize)]
        struct V1<'a> {
            written_at: u64,
            records: &'a [Record],
        }
        let sample = sample();
        let mut image = encode(&V1 {
            written_at: sample.written_at,
            records: &sample.records,
        });
        restamp(&mut image, 1);
        let body = decode(&image).unwrap();
        assert_eq!((body.seq, body.records), (0, sample.records));
    }

    #[test]
    fn a_version_2_file_reads_as_tokens_without_extras_owners_or_prefixes() {
        #[derive(Serialize)]
        struct V2<'a> {
            written_at: u64,
            seq: u64,
            records: &'a [Record],
        }
        let sample = sample();
        let mut image = encode(&V2 {
            written_at: sample.written_at,
            seq: sample.seq,
            records: &sample.records,
        });
        restamp(&mut image, 2);
        let body = decode(&image).unwrap();
        let expected = Body::tokens(sample.written_at, sample.seq, sample.records);
        assert_eq!(body, expected);
    }

    #[test]
    fn a_version_3_file_reads_as_tokens_without_credits() {
        #[derive(Serialize)]
        struct V3<'a> {
            written_at: u64,
            seq: u64,
            records: &'a [Record],
            extras: &'a [ExtrasRecord],
            owners: &'a [OwnerRecord],
            prefixes: &'a [String],
        }
        let sample = sample();
        let mut image = encode(&V3 {
            written_at: sample.written_at,
            seq: sample.seq,
            records: &sample.records,
            extras: &sample.extras,
            owners: &sample.owners,
            prefixes: &sample.prefixes,
        });
        restamp(&mut image, 3);
        let body = decode(&image).unwrap();
        assert_eq!(body.credits, []);
        assert_eq!(
            (body.extras, body.prefixes),
            (sample.extras, sample.prefixes)
        );
    }

    #[test]
    fn foreign_bytes_are_foreign() {
        assert_eq!(decode(b"{\"tokens\": []}"), Err(Problem::Foreign.into()));
        assert_eq!(
            decode(b""),
            Err(Problem::Truncated {
                len: 0,
                expected: 32
            }
            .into())
        );
    }

    #[test]
    fn a_huge_length_prefix_is_refused_without_allocating_it() {
        // written_at 0, one record, id "aaaaaaaa", then a name claiming 2^60 bytes.
        let mut body = vec![0u8, 1];
        body.extend_from_slice(b"aaaaaaaa");
        body.push(253); // bincode varint marker: a u64 follows
        body.extend_from_slice(&(1u64 << 60).to_le_bytes());
        let err = decode(&frame(&body)).unwrap_err();
        assert!(
            matches!(err, DecodeError::Problem(Problem::Undecodable(_))),
            "{err:?}"
        );
    }

    #[test]
    fn the_decode_limit_never_refuses_an_honest_file() {
        // Small values are the worst case for the limit: one-byte varints that bincode
        // counts as 8 bytes each.
        let record = Record {
            id: *b"abcd1234",
            name: String::new(),
            digest: [0; 32],
            scopes: vec![String::new(); 3],
            created_at: 0,
            expires_at: Some(0),
            revoked_at: Some(0),
            last_used: Some(0),
            rate_limit: Some(RateLimitRecord {
                period_ms: 0,
                count: 0,
                burst: 0,
            }),
        };
        for n in [1, 100, 20_000] {
            let body = Body::tokens(0, 0, vec![record.clone(); n]);
            assert_eq!(decode(&encode(&body)), Ok(body), "{n} records");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn record() -> impl Strategy<Value = Record> {
            (
                (any::<[u8; 8]>(), ".{0,20}", any::<[u8; 32]>()),
                proptest::collection::vec("[a-z:]{1,10}", 0..4),
                (
                    any::<u64>(),
                    any::<Option<u64>>(),
                    any::<Option<u64>>(),
                    any::<Option<u64>>(),
                ),
                any::<Option<(u64, u32, u32)>>(),
            )
                .prop_map(|((id, name, digest), scopes, times, limit)| Record {
                    id,
                    name,
                    digest,
                    scopes,
                    created_at: times.0,
                    expires_at: times.1,
                    revoked_at: times.2,
                    last_used: times.3,
                    rate_limit: limit.map(|(period_ms, count, burst)| RateLimitRecord {
                        period_ms,
                        count,
                        burst,
                    }),
                })
        }

        fn extras() -> impl Strategy<Value = ExtrasRecord> {
            (
                any::<[u8; 8]>(),
                proptest::option::of(".{0,12}"),
                proptest::collection::vec((".{0,8}", ".{0,8}"), 0..3),
                any::<bool>(),
            )
                .prop_map(|(id, owner, meta, imported)| ExtrasRecord {
                    id,
                    owner,
                    meta,
                    imported,
                })
        }

        fn owner() -> impl Strategy<Value = OwnerRecord> {
            (".{0,12}", any::<(u64, u32, u32)>()).prop_map(|(owner, (period_ms, count, burst))| {
                OwnerRecord {
                    owner,
                    rate_limit: RateLimitRecord {
                        period_ms,
                        count,
                        burst,
                    },
                }
            })
        }

        fn credits() -> impl Strategy<Value = CreditsRecord> {
            use crate::credits::RefillRecord;
            let refill = prop_oneof![
                Just(None),
                any::<(u64, u64)>().prop_map(|(period_ms, amount)| Some(RefillRecord::Every {
                    period_ms,
                    amount
                })),
                any::<(u8, u64)>()
                    .prop_map(|(day, amount)| Some(RefillRecord::Monthly { day, amount })),
            ];
            (any::<([u8; 8], u64, u64, Option<u64>, u64)>(), refill).prop_map(
                |((id, remaining, period, alert_below, anchor), refill)| CreditsRecord {
                    id,
                    remaining,
                    period,
                    refill,
                    alert_below,
                    anchor,
                },
            )
        }

        proptest! {
            #[test]
            fn any_body_round_trips(
                written_at in any::<u64>(),
                seq in 0..=MAX_SEQ,
                records in proptest::collection::vec(record(), 0..8),
                extras in proptest::collection::vec(extras(), 0..4),
                owners in proptest::collection::vec(owner(), 0..3),
                prefixes in proptest::collection::vec("[a-z_]{1,16}", 0..3),
                credits in proptest::collection::vec(credits(), 0..3),
                usage in proptest::collection::vec(
                    any::<([u8; 8], u64, Vec<(u32, u64)>)>()
                        .prop_map(|(id, total, days)| UsageRecord { id, total, days }),
                    0..3,
                ),
            ) {
                let body = Body { written_at, seq, records, extras, owners, prefixes, credits, usage };
                prop_assert_eq!(decode(&encode(&body)), Ok(body));
            }

            /// The path `open` takes from a decoded record to a live entry (id, uniqueness,
            /// rate limit with any period, count and burst) refuses or accepts, never panics.
            #[test]
            fn any_decoded_record_loads_or_is_refused(
                records in proptest::collection::vec(record(), 0..8),
            ) {
                let body = decode(&encode(&Body::tokens(0, 0, records))).unwrap();
                let _ = crate::entry::load(body.records);
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = decode(&bytes);
            }

            #[test]
            fn arbitrary_bodies_behind_a_valid_header_never_panic(
                body in proptest::collection::vec(any::<u8>(), 0..512),
            ) {
                // Passes every header and CRC check, so the bincode decoder sees raw bytes.
                let _ = decode(&frame(&body));
            }

            #[test]
            fn a_changed_image_is_refused(
                records in proptest::collection::vec(record(), 1..4),
                at in any::<proptest::sample::Index>(),
                xor in 1u8..=255,
            ) {
                let mut image = encode(&Body::tokens(7, 7, records));
                let at = at.index(image.len());
                image[at] ^= xor;
                prop_assert!(decode(&image).is_err());
            }
        }
    }
}

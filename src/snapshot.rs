//! The store file: a checked header, a `bincode` body, replaced atomically.
//!
//! Layout (all integers little-endian; details and versioning rules in `docs/FORMAT.md`):
//!
//! ```text
//! 0   8  magic      89 54 4B 43 0D 0A 1A 0A  ("\x89TKC\r\n\x1a\n")
//! 8   4  version    u32, currently 1
//! 12  4  flags      u32, must be 0
//! 16  8  body_len   u64, bytes after the header
//! 24  4  body_crc   u32, CRC32 (IEEE) of the body
//! 28  4  header_crc u32, CRC32 of bytes 0..28
//! 32  …  body       bincode 2 (standard config, serde) of `Body`
//! ```
//!
//! A file is trusted only when every field checks out; otherwise `open` fails naming the
//! problem and the file is left exactly as it was.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The first eight bytes of every store file.
pub const MAGIC: [u8; 8] = *b"\x89TKC\r\n\x1a\n";
/// The format version this build writes, and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// The size of the fixed header in bytes.
pub const HEADER_LEN: usize = 32;

const BINCODE: bincode::config::Configuration = bincode::config::standard();

/// The body of a snapshot.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Body {
    /// When the snapshot was taken, Unix ms.
    pub(crate) written_at: u64,
    pub(crate) records: Vec<Record>,
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

/// A rate limit as stored: `count` per `period_ms`, bursts of up to `burst`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct RateLimitRecord {
    pub(crate) period_ms: u64,
    pub(crate) count: u32,
    pub(crate) burst: u32,
}

/// What [`inspect`](crate::inspect) reads from a store file's header and body.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotInfo {
    /// The file's format version.
    pub version: u32,
    /// The whole file's size in bytes.
    pub file_len: u64,
    /// The body's size in bytes.
    pub body_len: u64,
    /// The body's CRC32.
    pub body_crc: u32,
    /// When the snapshot was written, Unix ms.
    pub written_at_ms: u64,
    /// Tokens in the file, revoked ones included.
    pub tokens: usize,
    /// Revoked tokens in the file.
    pub revoked: usize,
}

/// Encodes a body into a complete file image (header + body).
pub(crate) fn encode(body: &Body) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    // Encoding into a Vec only fails for types serde cannot describe; ours are plain data.
    bincode::serde::encode_into_std_write(body, &mut out, BINCODE)
        .expect("snapshot body is plain data and a Vec never fails to grow");
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

/// Why a file is not a snapshot this build can trust. Shown inside [`Error`] messages.
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
}

/// Decodes and checks a file image. Errors say what is wrong; the caller names the file.
pub(crate) fn decode(bytes: &[u8]) -> Result<Body, DecodeError> {
    let len = bytes.len() as u64;
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(Problem::Foreign.into());
    }
    if bytes.len() < HEADER_LEN {
        return Err(Problem::Truncated {
            len,
            expected: HEADER_LEN as u64,
        }
        .into());
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[..28]) != u32_at(28) {
        return Err(Problem::HeaderChecksum.into());
    }
    let version = u32_at(8);
    if version > FORMAT_VERSION {
        return Err(DecodeError::FutureVersion(version));
    }
    if version == 0 {
        return Err(Problem::BadVersion(version).into());
    }
    let flags = u32_at(12);
    if flags != 0 {
        return Err(Problem::UnknownFlags(flags).into());
    }
    let body_len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    let expected = (HEADER_LEN as u64).saturating_add(body_len);
    if len < expected {
        return Err(Problem::Truncated { len, expected }.into());
    }
    if len > expected {
        return Err(Problem::TrailingBytes {
            extra: len - expected,
        }
        .into());
    }
    let body = &bytes[HEADER_LEN..];
    if crc32fast::hash(body) != u32_at(24) {
        return Err(Problem::BodyChecksum.into());
    }
    let (decoded, used) = decode_body(body).map_err(|e| Problem::Undecodable(e.to_string()))?;
    if used != body.len() {
        return Err(Problem::TrailingBytes {
            extra: (body.len() - used) as u64,
        }
        .into());
    }
    Ok(decoded)
}

/// Decodes a body with bincode under a limit scaled to its size.
///
/// Bug fixed (found by the `arbitrary_bodies_behind_a_valid_header_never_panic` property):
/// without a limit, bincode allocates a string's claimed length before reading it, so a
/// body with valid checksums and a length prefix of 2^62 aborted the process ("memory
/// allocation failed") instead of refusing the file. bincode counts every byte it claims
/// (at most 8 per byte read: a one-byte varint `u64` claims 8), so a limit of 16× the body
/// never refuses an honest file, and bounds what a hostile one can make us allocate. The
/// limit is a const generic, hence the ladder.
fn decode_body(body: &[u8]) -> Result<(Body, usize), bincode::error::DecodeError> {
    fn limited<const LIMIT: usize>(
        body: &[u8],
    ) -> Result<(Body, usize), bincode::error::DecodeError> {
        bincode::serde::decode_from_slice(body, BINCODE.with_limit::<LIMIT>())
    }
    let need = body.len().saturating_mul(16).saturating_add(4096);
    match need {
        n if n <= 1 << 20 => limited::<{ 1 << 20 }>(body),
        n if n <= 1 << 24 => limited::<{ 1 << 24 }>(body),
        n if n <= 1 << 28 => limited::<{ 1 << 28 }>(body),
        n if n <= 1 << 32 => limited::<{ 1 << 32 }>(body),
        _ => limited::<{ usize::MAX }>(body),
    }
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

impl DecodeError {
    /// The public error for this problem in file `path`.
    pub(crate) fn at(self, path: &Path) -> Error {
        match self {
            DecodeError::Problem(problem) => Error::Corrupt {
                path: path.to_path_buf(),
                problem: problem.to_string(),
            },
            DecodeError::FutureVersion(found) => Error::FutureVersion {
                path: path.to_path_buf(),
                found,
                supported: FORMAT_VERSION,
            },
        }
    }
}

/// Reads and checks the store file at `path`. `Ok(None)` if there is no file.
pub(crate) fn read(path: &Path) -> Result<Option<(Body, u64)>, Error> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read the store file", path, e)),
    };
    let body = decode(&bytes).map_err(|e| e.at(path))?;
    Ok(Some((body, bytes.len() as u64)))
}

/// Reads a store file's header and counts its tokens, without opening the store (and so
/// without taking its lock): safe to run beside a live service.
pub fn inspect(path: impl AsRef<Path>) -> Result<SnapshotInfo, Error> {
    let path = path.as_ref();
    let bytes = fs::read(path).map_err(|e| Error::io("read the store file", path, e))?;
    let body = decode(&bytes).map_err(|e| e.at(path))?;
    Ok(SnapshotInfo {
        version: FORMAT_VERSION,
        file_len: bytes.len() as u64,
        body_len: (bytes.len() - HEADER_LEN) as u64,
        body_crc: crc32fast::hash(&bytes[HEADER_LEN..]),
        written_at_ms: body.written_at,
        tokens: body.records.len(),
        revoked: body
            .records
            .iter()
            .filter(|r| r.revoked_at.is_some())
            .count(),
    })
}

/// The temp-file name prefix for `path`, so that leftovers of a crash can be found.
fn temp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map_or_else(|| "store".into(), |n| n.to_string_lossy());
    format!(".{name}.")
}

const TEMP_SUFFIX: &str = ".tmp";

/// The directory a store file lives in (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Replaces the file at `path` with `image` atomically: a temp file in the same directory,
/// written and fsynced, renamed over the target, then the directory fsynced. A reader or a
/// crash sees the old file or the new one, never a mix. The file is created mode 0600.
///
/// `faults` is the test seam (see [`FaultPlan`]); production passes `None`.
pub(crate) fn write_atomic(
    path: &Path,
    image: &[u8],
    faults: Option<&FaultPlan>,
) -> io::Result<()> {
    let inject = |step| faults.map_or(Ok(()), |plan| plan.check(step));
    let dir = parent_dir(path);
    // On any error below, dropping `temp` deletes the temp file: the store file is untouched.
    let mut temp = tempfile::Builder::new()
        .prefix(&temp_prefix(path))
        .suffix(TEMP_SUFFIX)
        .tempfile_in(dir)?;
    inject(FaultStep::Write)?;
    temp.write_all(image)?;
    inject(FaultStep::Fsync)?;
    temp.as_file().sync_all()?;
    inject(FaultStep::Rename)?;
    temp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// A step of the atomic file replace where a [`FaultPlan`] can make the write fail.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultStep {
    /// Writing the snapshot bytes to the temp file.
    Write,
    /// `fsync` of the temp file.
    Fsync,
    /// Renaming the temp file over the store file.
    Rename,
}

/// Tests only: makes the store's file writes fail at one step with an OS error, to produce
/// faults that cannot be produced for real on demand (a full disk, a failing device). Given
/// to `Builder::fault_plan`; without one (production) no check runs at all.
///
/// The fault stays until [`clear`](Self::clear)ed, as a full disk stays full. Clones share
/// the plan, so a test keeps one to switch the fault while the store runs.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    inner: std::sync::Arc<std::sync::Mutex<FaultState>>,
}

#[derive(Debug, Default)]
struct FaultState {
    fault: Option<(FaultStep, i32)>,
    injected: u64,
}

impl FaultPlan {
    /// From now on, fail every write at `step` with OS error `errno` (e.g. 28, `ENOSPC`).
    pub fn fail(&self, step: FaultStep, errno: i32) {
        self.state().fault = Some((step, errno));
    }

    /// From now on, let writes through.
    pub fn clear(&self) {
        self.state().fault = None;
    }

    /// How many faults were injected so far (each one is a failed write attempt).
    pub fn injected(&self) -> u64 {
        self.state().injected
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FaultState> {
        // The state is two plain fields, valid even if a holder panicked.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self, step: FaultStep) -> io::Result<()> {
        let mut state = self.state();
        match state.fault {
            Some((at, errno)) if at == step => {
                state.injected += 1;
                Err(io::Error::from_raw_os_error(errno))
            }
            _ => Ok(()),
        }
    }
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Removes temp files a crashed writer left beside `path`. Called with the store locked,
/// so no live writer owns them. Returns how many were removed.
pub(crate) fn remove_stale_temps(path: &Path) -> usize {
    let prefix = temp_prefix(path);
    let Ok(entries) = fs::read_dir(parent_dir(path)) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(TEMP_SUFFIX) {
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "could not remove stale temp file")
                }
            }
        }
    }
    removed
}

/// The path of the sidecar lock file for store `path`.
pub(crate) fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Body {
        Body {
            written_at: 42,
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
        image[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32fast::hash(&image[..28]);
        image[28..32].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&image), Err(DecodeError::FutureVersion(2)));
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
            let body = Body {
                written_at: 0,
                records: vec![record.clone(); n],
            };
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

        proptest! {
            #[test]
            fn any_body_round_trips(
                written_at in any::<u64>(),
                records in proptest::collection::vec(record(), 0..8),
            ) {
                let body = Body { written_at, records };
                prop_assert_eq!(decode(&encode(&body)), Ok(body));
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
                let mut image = encode(&Body { written_at: 7, records });
                let at = at.index(image.len());
                image[at] ^= xor;
                prop_assert!(decode(&image).is_err());
            }
        }
    }
}

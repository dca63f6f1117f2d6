//! The store's files on disk: which file a path means, what may be read from it, the OS
//! lock, and the atomic replace. The byte layout is `snapshot`'s; this module owns every
//! `open`, `rename` and `unlink` the store does.
//!
//! The rules, each a promise in `docs/GUARANTEES.md`:
//! - a symlinked store path is the file it points to (lock and writes go there);
//! - only a regular file is read, never more than its header says, and never one that
//!   group or others may write;
//! - a write keeps the file's owner, group and mode;
//! - only this store's own leftover temp files are ever removed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::snapshot::{self, DecodeError, HEADER_LEN, MAGIC};

/// Mode bits that let someone other than the owner change the file.
#[cfg(unix)]
const LOOSE_MODE: u32 = 0o022;

/// What goes between the store's name and [`TEMP_SUFFIX`] in a temp file's name: this
/// marker, then [`TEMP_RANDOM_LEN`] random ASCII letters and digits (tempfile's alphabet).
const TEMP_MARKER: &str = "tc";
const TEMP_RANDOM_LEN: usize = 8;
const TEMP_SUFFIX: &str = ".tmp";

/// The file `path` names: symlinks resolved (a dangling one refused), and for a file that
/// does not exist yet, its directory resolved. Two paths to one file resolve alike, so they
/// share one lock.
pub(crate) fn resolve(path: &Path) -> Result<PathBuf, Error> {
    let Some(name) = path.file_name() else {
        return Err(Error::BadPath {
            path: path.to_path_buf(),
            reason: "it does not name a file",
        });
    };
    match fs::symlink_metadata(path) {
        Ok(_) => fs::canonicalize(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::DanglingLink {
                path: path.to_path_buf(),
                target: fs::read_link(path).unwrap_or_default(),
            },
            _ => Error::io("resolve the store path", path, e),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let dir = fs::canonicalize(parent_dir(path)).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => Error::BadPath {
                    path: path.to_path_buf(),
                    reason: "its directory does not exist; create the directory first",
                },
                _ => Error::io("resolve the directory of", path, e),
            })?;
            Ok(dir.join(name))
        }
        Err(e) => Err(Error::io("look at the store path", path, e)),
    }
}

/// The directory a store file lives in (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Opens `path` for reading without following a final symlink and without blocking (a FIFO
/// would otherwise wait for a writer forever), and only if it is a regular file.
/// `Ok(None)` if nothing is there.
fn open_regular(path: &Path, what: &'static str) -> Result<Option<(File, fs::Metadata)>, Error> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(
        &mut options,
        libc::O_NOFOLLOW | libc::O_NONBLOCK,
    );
    let file = match options.open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(what, path, e)),
    };
    let meta = file.metadata().map_err(|e| Error::io(what, path, e))?;
    if !meta.is_file() {
        return Err(Error::BadPath {
            path: path.to_path_buf(),
            reason: not_regular(&meta.file_type()),
        });
    }
    Ok(Some((file, meta)))
}

/// Why a non-regular file cannot be a store file.
fn not_regular(kind: &fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "it is a FIFO (named pipe), not a regular file";
        }
        if kind.is_char_device() || kind.is_block_device() {
            return "it is a device, not a regular file";
        }
        if kind.is_socket() {
            return "it is a socket, not a regular file";
        }
    }
    if kind.is_dir() {
        return "it is a directory; give a file path inside it";
    }
    if kind.is_symlink() {
        return "it is a symlink; give the path it points to";
    }
    "it is not a regular file"
}

/// Refuses a store file that group or others may write: anyone who can write it can add a
/// token (its checksums are no signature), so it is not trusted, as OpenSSH refuses a key
/// file with loose permissions.
fn check_mode(path: &Path, meta: &fs::Metadata) -> Result<(), Error> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & LOOSE_MODE != 0 {
            return Err(Error::LoosePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = (path, meta);
    Ok(())
}

/// Reads the store file at `path` (already [`resolve`]d): a regular file only, not writable
/// by group or others, and never more bytes than its header says it holds (checked against
/// the file's size before the body is read). `Ok(None)` if there is no file.
pub(crate) fn read_store(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    let Some((file, meta)) = open_regular(path, "read the store file")? else {
        return Ok(None);
    };
    check_mode(path, &meta)?;
    let len = meta.len();
    let mut bytes = Vec::new();
    let mut reader = file.take(HEADER_LEN as u64);
    reader
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read the store file", path, e))?;
    snapshot::check_header(&bytes, len).map_err(|e| e.at(path))?;
    // `len` is now the header's own total, so this allocation is what the file claims and
    // the disk holds; `take` stops at it even if the file grows meanwhile.
    bytes.reserve_exact(
        usize::try_from(len)
            .unwrap_or(0)
            .saturating_sub(bytes.len()),
    );
    let mut reader = reader.into_inner().take(len - bytes.len() as u64);
    reader
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read the store file", path, e))?;
    if bytes.len() as u64 != len {
        let problem = snapshot::Problem::Truncated {
            len: bytes.len() as u64,
            expected: len,
        };
        return Err(DecodeError::from(problem).at(path));
    }
    Ok(Some(bytes))
}

/// The path of the sidecar lock file for store `path`.
pub(crate) fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the OS lock for store `path` (already [`resolve`]d) on its sidecar lock file, so a
/// second opener, in this process or another, fails cleanly. The lock file is opened
/// without following a symlink and without blocking, and must be a regular file. The lock
/// is released when the returned file is dropped (or the process dies).
///
/// Local filesystems only: on NFS a lock may exclude only processes on the same host.
pub(crate) fn lock(path: &Path) -> Result<File, Error> {
    let lock_path = lock_path(path);
    let file = match open_regular(&lock_path, "open the lock file")? {
        Some((file, _)) => file,
        None => create_lock(path, &lock_path)?,
    };
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(Error::Locked {
            path: path.to_path_buf(),
            lock: lock_path,
        }),
        Err(fs::TryLockError::Error(e)) => Err(Error::io("lock", &lock_path, e)),
    }
}

/// Creates the lock file (mode 0600, never through a symlink), owned like the store file
/// if there is one, so the store's owner can open it after root created it.
fn create_lock(path: &Path, lock_path: &Path) -> Result<File, Error> {
    let mut options = OpenOptions::new();
    options.create_new(true).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let file = match options.open(lock_path) {
        Ok(file) => file,
        // Another opener created it first: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return open_regular(lock_path, "open the lock file")?
                .map(|(file, _)| file)
                .ok_or_else(|| Error::io("open the lock file", lock_path, e));
        }
        Err(e) => return Err(Error::io("create the lock file", lock_path, e)),
    };
    #[cfg(unix)]
    if let Ok(store) = fs::metadata(path) {
        copy_owner(&file, &store).map_err(|e| Error::io("set the owner of", lock_path, e))?;
    }
    Ok(file)
}

/// Gives `file` the owner and group of `like`, if they differ (only root may give a file
/// away; anyone else already owns what they write).
#[cfg(unix)]
fn copy_owner(file: &File, like: &fs::Metadata) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mine = file.metadata()?;
    if (mine.uid(), mine.gid()) != (like.uid(), like.gid()) {
        std::os::unix::fs::fchown(file, Some(like.uid()), Some(like.gid()))?;
    }
    Ok(())
}

/// How a replace failed: before the rename nothing changed; after it, the new file is the
/// store file but the rename may not survive a power loss.
#[derive(Debug)]
pub(crate) struct WriteError {
    pub(crate) error: io::Error,
    /// `Some(bytes)` if the new image (of that size) replaced the store file and only the
    /// directory fsync failed.
    pub(crate) replaced: Option<u64>,
}

impl From<io::Error> for WriteError {
    fn from(error: io::Error) -> Self {
        WriteError {
            error,
            replaced: None,
        }
    }
}

/// Replaces the file at `path` (already [`resolve`]d) with `image` atomically: a temp file
/// in the same directory, written and fsynced, renamed over the target, then the directory
/// fsynced. A reader or a crash sees the old file or the new one, never a mix. The new file
/// keeps the old one's owner, group and mode (less group and other write, which `open`
/// refuses); a first file is created mode 0600.
///
/// A filesystem that cannot fsync a directory (`EINVAL`) is taken at its word: the rename
/// is as durable as it can make it.
///
/// `faults` is the test seam (see [`FaultPlan`]); production passes `None`.
pub(crate) fn write_atomic(
    path: &Path,
    image: &[u8],
    faults: Option<&FaultPlan>,
    steps: &Steps,
) -> Result<(), WriteError> {
    write_atomic_like(path, None, image, faults, steps)
}

/// [`write_atomic`], where a first file at `path` (none there yet) takes the owner, group
/// and mode of the file at `like` if there is one, as if it had always been there.
fn write_atomic_like(
    path: &Path,
    like: Option<&Path>,
    image: &[u8],
    faults: Option<&FaultPlan>,
    steps: &Steps,
) -> Result<(), WriteError> {
    let inject = |step| faults.map_or(Ok(()), |plan| plan.check(step));
    let dir = parent_dir(path);
    // On any error before the rename, dropping `temp` deletes the temp file: the store file
    // is untouched.
    let mut temp = tempfile::Builder::new()
        .prefix(&temp_prefix(path))
        .rand_bytes(TEMP_RANDOM_LEN)
        .suffix(TEMP_SUFFIX)
        .tempfile_in(dir)?;
    #[cfg(unix)]
    let old = fs::metadata(path).or_else(|e| like.map_or(Err(e), fs::metadata));
    #[cfg(not(unix))]
    let _ = like;
    #[cfg(unix)]
    if let Ok(old) = old {
        use std::os::unix::fs::PermissionsExt;
        copy_owner(temp.as_file(), &old)?;
        let mode = old.permissions().mode() & 0o7777 & !LOOSE_MODE;
        temp.as_file()
            .set_permissions(fs::Permissions::from_mode(mode))?;
    }
    inject(steps.write)?;
    temp.write_all(image)?;
    inject(steps.fsync)?;
    temp.as_file().sync_all()?;
    inject(steps.rename)?;
    temp.persist(path).map_err(|e| e.error)?;
    let synced = inject(steps.sync_dir).and_then(|()| sync_dir(dir));
    match synced {
        Err(e) if e.raw_os_error() != Some(libc::EINVAL) => Err(WriteError {
            error: e,
            replaced: Some(image.len() as u64),
        }),
        _ => Ok(()),
    }
}

/// The fault-seam names of the four steps of one kind of [`write_atomic`].
pub(crate) struct Steps {
    write: FaultStep,
    fsync: FaultStep,
    rename: FaultStep,
    sync_dir: FaultStep,
}

/// The steps of writing a snapshot (the first half of a compaction).
pub(crate) const SNAPSHOT_STEPS: Steps = Steps {
    write: FaultStep::Write,
    fsync: FaultStep::Fsync,
    rename: FaultStep::Rename,
    sync_dir: FaultStep::SyncDir,
};

/// The steps of replacing the journal with an empty one (the second half).
pub(crate) const RESET_STEPS: Steps = Steps {
    write: FaultStep::ResetWrite,
    fsync: FaultStep::ResetFsync,
    rename: FaultStep::ResetRename,
    sync_dir: FaultStep::ResetSyncDir,
};

/// The journal file beside store `path`.
pub(crate) fn journal_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".journal");
    PathBuf::from(name)
}

/// Opens the journal at `path` (beside a [`resolve`]d store path) for reading, with the
/// store file's rules: a regular file, not a symlink, not writable by group or others.
/// Returns it with its size; `Ok(None)` if there is none. Nothing is read yet: the reader
/// (`journal::scan_from`) reads a piece at a time, never more than it checked the file holds.
pub(crate) fn open_journal(path: &Path) -> Result<Option<(File, u64)>, Error> {
    let Some((file, meta)) = open_regular(path, "read the journal")? else {
        return Ok(None);
    };
    check_mode(path, &meta)?;
    Ok(Some((file, meta.len())))
}

/// The store file a journal path is beside (the inverse of [`journal_path`]).
fn store_of_journal(journal: &Path) -> Option<PathBuf> {
    let name = journal.as_os_str().to_str()?;
    name.strip_suffix(".journal").map(PathBuf::from)
}

/// The journal, open for appending records.
#[derive(Debug)]
pub(crate) struct Appender {
    file: File,
    len: u64,
}

impl Appender {
    /// Opens the journal at `path` for appending after its first `len` bytes (the valid
    /// part: whatever follows was set aside by [`cut_torn_tail`]).
    pub(crate) fn open(path: &Path, len: u64) -> io::Result<Appender> {
        let mut options = OpenOptions::new();
        options.write(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
        let mut file = options.open(path)?;
        io::Seek::seek(&mut file, io::SeekFrom::Start(len))?;
        Ok(Appender { file, len })
    }

    /// Replaces the journal at `path` with an empty one whose first record will be
    /// `base + 1`, atomically (as [`write_atomic`]), and opens it for appending. The new
    /// journal keeps the old one's owner, group and mode; a first one (none there, as for a
    /// store written before journals existed, or one whose journal was lost) takes the
    /// store file's, so a journal root's `tokencache` command creates still belongs to the
    /// service that owns the store.
    pub(crate) fn reset(
        path: &Path,
        base: u64,
        faults: Option<&FaultPlan>,
    ) -> Result<Appender, WriteError> {
        let header = crate::journal::header(base);
        let store = store_of_journal(path);
        write_atomic_like(path, store.as_deref(), &header, faults, &RESET_STEPS)?;
        Ok(Appender::open(path, header.len() as u64)?)
    }

    /// Appends `record` and makes it durable (`fdatasync`). After an error the file's
    /// state is unknown (a failed fsync may have dropped pages the kernel no longer
    /// reports): do not append to it again.
    pub(crate) fn append(&mut self, record: &[u8], faults: Option<&FaultPlan>) -> io::Result<()> {
        let inject = |step| faults.map_or(Ok(()), |plan| plan.check(step));
        inject(FaultStep::Append)?;
        self.file.write_all(record)?;
        self.len += record.len() as u64;
        inject(FaultStep::AppendSync)?;
        self.file.sync_data()
    }

    /// The journal's length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }
}

/// How many numbered names (`.1`, `.2`...) [`cut_torn_tail`] tries before a random one.
const TORN_NUMBERED: u32 = 1000;

/// Sets aside the torn tail of the journal of store `path` (its bytes from `valid_len` to
/// `file_len`, as scanned) in a new file named for it, `<journal>.torn-<valid_len>`
/// (`.1`, `.2`... up to `.1000` if that exists, then a random suffix, so leftovers never
/// stop an `open`), owned like the store file (mode 0600), then cuts the journal to
/// `valid_len`. The bytes are copied a piece at a time. Both files are synced before this
/// returns. Returns the file the bytes went to.
pub(crate) fn cut_torn_tail(path: &Path, valid_len: u64, file_len: u64) -> Result<PathBuf, Error> {
    let journal_path = journal_path(path);
    let what = "set aside the torn journal tail in";
    let (mut file, aside) = create_torn_file(&journal_path, valid_len)?;
    #[cfg(unix)]
    if let Ok(store) = fs::metadata(path) {
        copy_owner(&file, &store).map_err(|e| Error::io(what, &aside, e))?;
    }
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
    let mut journal = options
        .open(&journal_path)
        .map_err(|e| Error::io("cut the torn tail off", &journal_path, e))?;
    let tail = file_len.saturating_sub(valid_len);
    let copied = io::Seek::seek(&mut journal, io::SeekFrom::Start(valid_len))
        .and_then(|_| io::copy(&mut (&journal).take(tail), &mut file))
        .map_err(|e| Error::io("read the torn tail of", &journal_path, e))?;
    if copied != tail {
        let e = io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "the journal shrank while its torn tail was set aside ({copied} of {tail} bytes)"
            ),
        );
        return Err(Error::io("read the torn tail of", &journal_path, e));
    }
    file.sync_all().map_err(|e| Error::io(what, &aside, e))?;
    journal
        .set_len(valid_len)
        .and_then(|()| journal.sync_all())
        .and_then(|()| sync_dir(parent_dir(&journal_path)))
        .map_err(|e| Error::io("cut the torn tail off", &journal_path, e))?;
    Ok(aside)
}

/// Creates the file a torn tail at `valid_len` of `journal` goes to (see [`cut_torn_tail`]).
fn create_torn_file(journal: &Path, valid_len: u64) -> Result<(File, PathBuf), Error> {
    let what = "set aside the torn journal tail in";
    let mut name = journal.as_os_str().to_owned();
    name.push(format!(".torn-{valid_len}"));
    let first = PathBuf::from(name);
    let mut options = OpenOptions::new();
    options.create_new(true).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    for n in 0..=TORN_NUMBERED {
        let mut name = first.as_os_str().to_owned();
        if n > 0 {
            name.push(format!(".{n}"));
        }
        let aside = PathBuf::from(name);
        match options.open(&aside) {
            Ok(file) => return Ok((file, aside)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(what, &aside, e)),
        }
    }
    // Every numbered name is taken: a random one (created exclusively, mode 0600), kept.
    let prefix = format!(
        "{}.",
        first
            .file_name()
            .map_or_else(Default::default, |n| n.to_string_lossy())
    );
    tempfile::Builder::new()
        .prefix(&prefix)
        .rand_bytes(TEMP_RANDOM_LEN)
        .tempfile_in(parent_dir(journal))
        .and_then(|temp| temp.keep().map_err(|e| e.error))
        .map_err(|e| Error::io(what, &first, e))
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The start of every temp file name this store's writer makes for `path`.
fn temp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map_or_else(|| "store".into(), |n| n.to_string_lossy());
    format!(".{name}.{TEMP_MARKER}")
}

/// Whether `name` is exactly a name [`write_atomic`] makes for `path`: the prefix, the
/// random part of its exact length and alphabet, the suffix. Another store's temp files
/// (a longer name) and a user's files (another shape) never match.
fn is_own_temp_name(path: &Path, name: &str) -> bool {
    name.strip_prefix(&temp_prefix(path))
        .and_then(|rest| rest.strip_suffix(TEMP_SUFFIX))
        .is_some_and(|random| {
            random.len() == TEMP_RANDOM_LEN && random.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

/// Whether the file at `path` holds what a cut-short write of ours holds: a regular file
/// (not a link) whose bytes start as a store file or a journal does (empty included).
fn looks_like_own_temp(path: &Path) -> bool {
    let Ok(Some((file, _))) = open_regular(path, "read a temp file") else {
        return false;
    };
    let mut start = Vec::with_capacity(MAGIC.len());
    if file
        .take(MAGIC.len() as u64)
        .read_to_end(&mut start)
        .is_err()
    {
        return false;
    }
    MAGIC.starts_with(&start) || crate::journal::MAGIC.starts_with(&start)
}

/// Removes temp files a crashed writer of this store left beside `path` (the store file's
/// and the journal's). Call it with the store locked (so no live writer owns them) and
/// only after the store and journal were read and checked (so a store `open` refuses loses
/// nothing). Returns how many were removed.
pub(crate) fn remove_stale_temps(path: &Path) -> usize {
    remove_stale_temps_of(path) + remove_stale_temps_of(&journal_path(path))
}

fn remove_stale_temps_of(path: &Path) -> usize {
    let Ok(entries) = fs::read_dir(parent_dir(path)) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let temp = entry.path();
        if !is_own_temp_name(path, &name.to_string_lossy()) || !looks_like_own_temp(&temp) {
            continue;
        }
        match fs::remove_file(&temp) {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(file = %temp.display(), error = %e, "could not remove stale temp file")
            }
        }
    }
    removed
}

/// A step of a file write where a [`FaultPlan`] can make the write fail, or the process
/// crash.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultStep {
    /// Writing a journal record.
    Append,
    /// `fdatasync` of the journal after a record was written.
    AppendSync,
    /// Compaction: writing the snapshot bytes to the temp file.
    Write,
    /// Compaction: `fsync` of the snapshot's temp file.
    Fsync,
    /// Compaction: renaming the temp file over the store file.
    Rename,
    /// Compaction: `fsync` of the directory, after the rename: the new file is already the
    /// store file.
    SyncDir,
    /// Compaction, once the snapshot is durable: writing the fresh journal's temp file.
    ResetWrite,
    /// `fsync` of the fresh journal's temp file.
    ResetFsync,
    /// Renaming the fresh journal over the old one.
    ResetRename,
    /// `fsync` of the directory after that rename.
    ResetSyncDir,
}

impl FaultStep {
    /// The steps of a compaction, in order.
    pub const COMPACTION: [FaultStep; 8] = [
        FaultStep::Write,
        FaultStep::Fsync,
        FaultStep::Rename,
        FaultStep::SyncDir,
        FaultStep::ResetWrite,
        FaultStep::ResetFsync,
        FaultStep::ResetRename,
        FaultStep::ResetSyncDir,
    ];
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
    faults: Vec<(FaultStep, i32)>,
    crash: Option<FaultStep>,
    injected: u64,
}

impl FaultPlan {
    /// From now on, fail every write at `step` with OS error `errno` (e.g. 28, `ENOSPC`),
    /// as well as at the steps failed before (a full disk fails appends and snapshots).
    pub fn fail(&self, step: FaultStep, errno: i32) {
        let mut state = self.state();
        state.faults.retain(|(at, _)| *at != step);
        state.faults.push((step, errno));
    }

    /// From now on, end the process (`abort`, as abrupt as SIGKILL: no destructor, no
    /// flush) when a write reaches `step`, before the step runs: a crash at an exact point
    /// that a timed kill would hit only by chance.
    pub fn crash(&self, step: FaultStep) {
        self.state().crash = Some(step);
    }

    /// From now on, let writes through.
    pub fn clear(&self) {
        let mut state = self.state();
        state.faults.clear();
        state.crash = None;
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
        if state.crash == Some(step) {
            std::process::abort();
        }
        match state.faults.iter().find(|(at, _)| *at == step) {
            Some(&(_, errno)) => {
                state.injected += 1;
                Err(io::Error::from_raw_os_error(errno))
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_temp_names_are_exactly_the_writers() {
        let store = Path::new("/d/t.snap");
        assert!(is_own_temp_name(store, ".t.snap.tcAb12Cd34.tmp"));
        for other in [
            ".t.snap.bak.tcAb12Cd34.tmp",
            ".t.snap.tcAb12Cd3.tmp",
            ".t.snap.tcAb12Cd345.tmp",
            ".t.snap.tcAb12 d34.tmp",
            ".t.snap.my notes.tmp",
            ".t.snap.Ab12Cd.tmp",
            "t.snap.tcAb12Cd34.tmp",
            ".t.snap.tcAb12Cd34.tmp.x",
        ] {
            assert!(!is_own_temp_name(store, other), "{other}");
        }
    }

    #[test]
    fn the_writer_makes_names_the_cleanup_recognizes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.snap");
        let temp = tempfile::Builder::new()
            .prefix(&temp_prefix(&path))
            .rand_bytes(TEMP_RANDOM_LEN)
            .suffix(TEMP_SUFFIX)
            .tempfile_in(dir.path())
            .unwrap();
        let name = temp.path().file_name().unwrap().to_string_lossy();
        assert!(is_own_temp_name(&path, &name), "{name}");
    }
}

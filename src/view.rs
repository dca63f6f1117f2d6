//! A read-only view of a store's files: the tokens `open` would load, read without the lock
//! and without writing anything, so it can be read beside the service that has the store
//! open (the CLI's `list`, `inspect` and a locked `validate` read through it).

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Rejection};
use crate::file;
use crate::map::Map;
use crate::recover;
use crate::request::TokenInfo;
use crate::token::TokenId;
use crate::validate::{self, ValidToken};

/// How many times a read is tried while the service keeps replacing the store file under it.
const ATTEMPTS: usize = 5;

/// The tokens a store's files hold, read without opening the store: no lock is taken and
/// nothing is written, so it works while a service has the store open (where
/// [`TokenStore::open`] fails with [`Error::Locked`]).
///
/// It shows the store as its files stood at the moment of [`read`](Self::read), after every
/// check `open` runs:
/// - every change to a token's definition (issue, revoke, delete, rotate, rate limit) that
///   the service acknowledged before the read: each is in the journal before it returns;
/// - `last_used` as last written: a use still waiting for the service's next write-behind
///   interval ([`Builder::flush_interval`]) is not shown;
/// - a torn journal tail (a write a crash or a write in progress cut short, never
///   acknowledged) is ignored, as `open` would drop it; any other damage is an error naming
///   the file and the offset.
///
/// A view does not follow later changes: read again for a newer one.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("tokens.snap");
/// use tokencache::{NewToken, StoreView, TokenStore};
///
/// let store = TokenStore::open(&path)?;               // a service holds the lock...
/// let issued = store.issue(NewToken::new("ci-bot"))?; // ...and this is in its journal
/// let view = StoreView::read(&path)?;                 // no lock, nothing written
/// assert_eq!(view.len(), 1);
/// assert_eq!(view.get(&issued.id()), store.get(&issued.id()));
/// assert_eq!(view.list(), store.list());
/// assert!(view.validate(issued.secret()).is_ok());    // records no use
/// store.close()?;
/// # Ok(()) }
/// ```
///
/// [`TokenStore::open`]: crate::TokenStore::open
/// [`Builder::flush_interval`]: crate::Builder::flush_interval
pub struct StoreView {
    path: PathBuf,
    map: Map,
}

impl StoreView {
    /// Reads the store at `path` (a symlink means the file it points to): its snapshot, then
    /// its journal replayed onto it, with every check [`TokenStore::open`] runs. Takes no
    /// lock and writes nothing. A store that does not exist is an error naming the path.
    ///
    /// [`TokenStore::open`]: crate::TokenStore::open
    pub fn read(path: impl AsRef<Path>) -> Result<StoreView, Error> {
        let path = file::resolve(path.as_ref())?;
        let recovered = settled(&path, || recover::read(&path))?;
        if recovered.snapshot.is_none() {
            return Err(Error::missing(path));
        }
        Ok(StoreView {
            path,
            map: recovered.map,
        })
    }

    /// Every token's details, oldest first (revoked and expired ones included), as
    /// [`TokenStore::list`](crate::TokenStore::list) shows them.
    pub fn list(&self) -> Vec<TokenInfo> {
        TokenInfo::all(&self.map, SystemClock.now_ms())
    }

    /// A token's details, without its secret.
    pub fn get(&self, id: &TokenId) -> Option<TokenInfo> {
        TokenInfo::get(&self.map, id, SystemClock.now_ms())
    }

    /// A token's accepted validations as last written to the files, with the days within
    /// the default 30 up to today (see [`TokenStore::usage`](crate::TokenStore::usage)).
    pub fn usage(&self, id: &TokenId) -> Option<crate::Usage> {
        let counts = self.map.usage.lock();
        self.map
            .with(id, |e| counts.usage(&e.id, &e.uses, SystemClock.now_ms()))
    }

    /// How many tokens the files hold, revoked and expired ones included.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the files hold no token.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The store file's path, resolved.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks a token against the files as read: shape and checksum, digest, revocation, and
    /// expiry at the system clock's time. Unlike
    /// [`TokenStore::validate`](crate::TokenStore::validate) it records nothing (no
    /// `last_used`, no count) and does not check the rate limit: a token's quota lives in the
    /// memory of the process that has the store open.
    pub fn validate(&self, token: &str) -> Result<ValidToken<'_>, Rejection> {
        validate::admit(&self.map, &SystemClock, token, None).map(|a| a.valid)
    }

    /// Like [`validate`](Self::validate), and also requires the token to grant `scope`
    /// (otherwise [`Rejection::MissingScope`]).
    pub fn validate_scope(&self, token: &str, scope: &str) -> Result<ValidToken<'_>, Rejection> {
        validate::admit(&self.map, &SystemClock, token, Some(scope)).map(|a| a.valid)
    }
}

impl fmt::Debug for StoreView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreView")
            .field("path", &self.path)
            .field("tokens", &self.map.len())
            .finish()
    }
}

/// Runs `read` on the files of store `path` until the store file stayed the same
/// throughout. A live service's compaction replaces the store file and then starts a fresh
/// journal; a reader between the two reads the old snapshot and the new journal, which lacks
/// the records between them (`recover::read` refuses that), so a read during which the store
/// file was replaced is read again. Records appended meanwhile need no second read: one the
/// read cut short is a torn tail, which is ignored.
pub(crate) fn settled<T>(
    path: &Path,
    mut read: impl FnMut() -> Result<T, Error>,
) -> Result<T, Error> {
    for _ in 1..ATTEMPTS {
        let before = stamp(path);
        let result = read();
        if stamp(path) == before {
            return result;
        }
    }
    read()
}

/// What tells a store file from its replacement: an atomic replace makes a new inode (and a
/// new modification time, where there are no inodes).
fn stamp(path: &Path) -> Option<(u64, Option<SystemTime>)> {
    let meta = fs::metadata(path).ok()?;
    #[cfg(unix)]
    let id = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let id = meta.len();
    Some((id, meta.modified().ok()))
}

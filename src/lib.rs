//! # tokencache
//!
//! An embeddable API-token store. Tokens live in memory and are validated on every request
//! with no lock, no allocation and no I/O (a lock-free map lends the token's entry, one
//! cache line of it, so one token validated from many threads scales); everything persists
//! to a snapshot file and a journal beside it, written by one persister thread fed by a
//! `crossbeam-channel`:
//!
//! - [`issue`](TokenStore::issue), [`revoke`](TokenStore::revoke),
//!   [`delete`](TokenStore::delete), [`purge`](TokenStore::purge) and
//!   [`rotate`](TokenStore::rotate) are durable before they return: each appends one
//!   checksummed journal record and fsyncs it, whatever the store's size (concurrent
//!   callers share one record: group commit); a deleted token's memory is freed. Each has
//!   an async twin (`issue_async`...) that parks no executor thread;
//! - `last_used` times reach disk with write-behind: at most one journal record per
//!   [`flush_interval`](Builder::flush_interval), holding only the tokens used, none while
//!   idle;
//! - the journal is compacted into a new atomic snapshot when it outgrows the snapshot (on
//!   a timer, never on the validation path) and on close.
//!
//! A token may carry a [`RateLimit`], checked inside `validate` with no lock (GCRA, one
//! atomic word of state per token). With the `tower` feature, `TokenLayer` checks bearer
//! tokens on any `http` service; with `axum`, handlers take the accepted token
//! ([`OwnedToken`]) as an extractor (see `docs/LAYER.md`).
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! use tokencache::{NewToken, Rejection, TokenStore};
//!
//! let store = TokenStore::open(dir.path().join("tokens.snap"))?;
//! let issued = store.issue(NewToken::new("ci-bot").scopes(["read", "write"]))?;
//! let token = store.validate_scope(issued.secret(), "write")?;      // lends the entry
//! assert_eq!(token.name(), "ci-bot");
//! drop(token);
//! assert_eq!(store.validate("tc_not_a_token").unwrap_err(), Rejection::Malformed);
//! store.close()?;
//! # Ok(()) }
//! ```
//!
//! One process owns a file store (an OS lock). Beside it, [`StoreView::read`] and
//! [`inspect`] read the store's files without the lock and without writing, e.g. to list the
//! tokens a running service holds.
//!
//! With the `postgres` feature, a PostgreSQL URL in place of the path
//! (`TokenStore::open("postgres://user@host/db")`) opens a store shared by any number of
//! replicas, each validating from its own memory; see `docs/REPLICAS.md`.
//!
//! The design (hot path, dirty protocol, persister, atomic orderings) is in `docs/DESIGN.md`;
//! the file format in `docs/FORMAT.md`.

mod change;
mod clock;
mod credits;
mod entry;
mod error;
mod extras;
mod feed;
mod file;
mod inbox;
mod inspect;
mod journal;
#[cfg(feature = "tower")]
mod layer;
mod location;
mod map;
mod observe;
mod owner;
mod persist;
#[cfg(all(feature = "postgres", not(loom)))]
mod pg;
mod rate_limit;
mod recover;
mod request;
mod snapshot;
mod stats;
mod store;
mod sync;
mod tls;
mod token;
mod usage;
mod validate;
mod view;

pub use clock::{Clock, ManualClock, SystemClock};
pub use credits::{Credits, Refill, MAX_CREDITS, MIN_REFILL_PERIOD};
pub use error::{Error, Rejection};
pub use feed::{
    ChangeEvent, ChangeKind, Changes, Feed, FeedError, Origin, DEFAULT_FEED_CAPACITY,
    MAX_FEED_CAPACITY,
};
pub use inbox::Timer;
pub use inspect::{inspect, SnapshotInfo};
#[cfg(feature = "axum")]
pub use layer::MissingTokenLayer;
#[cfg(feature = "tower")]
pub use layer::{ResponseFuture, TokenLayer, TokenService};
pub use location::{redacted_path, Location};
pub use rate_limit::{RateLimit, RateLimitError, MAX_BURST, MAX_BURST_SPAN};
pub use request::{ImportedToken, NewToken, TokenInfo};
pub use snapshot::FORMAT_VERSION;
pub use stats::{Rejections, Stats};
pub use store::{Builder, TokenStore, DEFAULT_FLUSH_INTERVAL};
pub use tls::SslMode;
pub use token::{IssuedToken, ParseIdError, TokenId, PREFIX, TOKEN_LEN};
pub use usage::Usage;
pub use validate::{OwnedToken, ValidToken};
pub use view::StoreView;

/// The README's Rust blocks as doctests, compiled (and run, but for the `no_run` ones) by
/// `cargo test --all-features` so they cannot drift from the API. Its HTTP block needs the
/// `axum` feature (and the `axum` and `tokio` dev-dependencies), hence the gate.
#[cfg(all(doctest, feature = "axum"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// Fault injection for tests of the write-failure paths (not a public API): a narrow seam
/// in the file-writing code, inert unless a test passes a plan to `Builder::fault_plan`.
#[doc(hidden)]
pub mod __fault {
    pub use crate::file::{FaultPlan, FaultStep};
}

/// Entry points for `fuzz/` (cargo-fuzz targets); not a public API.
#[doc(hidden)]
pub mod __fuzz {
    use crate::entry;
    use crate::snapshot;
    use crate::token::{self, TokenId};

    /// The first step of `validate`: shape, prefix and checksum, with the default prefix
    /// and `sk_live` accepted. `Some(id)` if all pass.
    pub fn parse_token(candidate: &str) -> Option<TokenId> {
        let prefixes = token::Prefixes::default();
        let _ = prefixes.add("sk_live");
        token::parse(candidate, &prefixes)
    }

    /// `body` behind a valid header (magic, version, length and both checksums), so a
    /// fuzzer reaches the body decoder.
    pub fn frame_body(body: &[u8]) -> Vec<u8> {
        snapshot::frame(body)
    }

    /// Checks a store file image as `open` does (header, checksums, body, every record's id,
    /// uniqueness and rate limit, then each token's extras, owners' limits and recorded
    /// prefixes loaded onto the tokens). `Ok(tokens)` if it would open; `Err` says why not.
    pub fn check_snapshot(bytes: &[u8]) -> Result<usize, String> {
        let mut body = snapshot::decode(bytes).map_err(|e| format!("{e:?}"))?;
        let beside = body.take_beside();
        let entries = entry::load(body.records).map_err(|e| e.to_string())?;
        let map = crate::map::Map::with_capacity(entries.len());
        map.insert_new(entries)
            .map_err(|e| format!("token {} twice", e.0))?;
        crate::recover::load_shared(&map, beside).map_err(|e| e.to_string())?;
        Ok(map.len())
    }

    /// `payload` as the one record of a journal with a valid header and frame (length,
    /// sequence number, checksum), so a fuzzer reaches the record decoder.
    pub fn frame_journal_record(payload: &[u8]) -> Vec<u8> {
        crate::journal::frame_record(payload)
    }

    /// Checks a journal image as `open` does (header, framing, checksums, sequence numbers,
    /// each change decoded and replayed onto an empty store). `Ok(tokens)` left after the
    /// replay; `Err` says why it would be refused.
    #[cfg(not(loom))]
    pub fn check_journal(bytes: &[u8]) -> Result<usize, String> {
        let scanned = crate::journal::scan(bytes).map_err(|e| format!("{e:?}"))?;
        let map = crate::map::Map::with_capacity(0);
        crate::recover::replay_after(&map, scanned.records, 0).map_err(|e| format!("{e:?}"))?;
        Ok(map.len())
    }
}

/// The journal reader's work, for tests of its cost (not a public API).
#[cfg(not(loom))]
#[doc(hidden)]
pub mod __journal {
    /// What reading a journal file found, and what it cost.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct JournalScan {
        /// Valid records.
        pub records: usize,
        /// Where the valid part ends.
        pub valid_len: u64,
        /// Whether a torn tail follows it.
        pub torn: bool,
        /// Bytes checksummed, and bytes read to look past would-be records after a damaged one.
        pub checked: u64,
    }

    /// Reads the journal file at `path` as `open` does (without replaying it). `Err` says
    /// why `open` would refuse it.
    pub fn scan(path: &std::path::Path) -> Result<JournalScan, String> {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        let source = crate::journal::FileSource { file: &file, len };
        let scanned = crate::journal::scan_from(&source).map_err(|e| format!("{e:?}"))?;
        Ok(JournalScan {
            records: scanned.records.len(),
            valid_len: scanned.valid_len,
            torn: scanned.torn,
            checked: scanned.checked,
        })
    }
}

/// The token map alone, for the churn test (`tests/churn.rs`): issuing and deleting through
/// the store writes a snapshot each time, so a million cycles drive the map the store uses,
/// with entries shaped like the store's. Not a public API.
#[cfg(not(loom))]
#[doc(hidden)]
pub mod __churn {
    use crate::entry::{pack_text, Entry};
    use crate::map::Map;
    use crate::token::TokenId;

    /// A token map.
    pub struct Churn(Map);

    impl Churn {
        /// An empty map.
        pub fn new() -> Churn {
            Churn(Map::with_capacity(0))
        }

        /// Adds a token with id `id`, as `issue` does once its write succeeded.
        pub fn issue(&self, id: TokenId) {
            let entry = Entry::new(id, [0; 32], pack_text("churn", &["read"]), 0, None, None);
            let _ = self.0.insert_new([entry]);
        }

        /// Removes token `id`, as `delete` does.
        pub fn delete(&self, id: &TokenId) -> bool {
            self.0.remove(id)
        }

        /// How many tokens the map holds.
        pub fn len(&self) -> usize {
            self.0.len()
        }

        /// Whether the map is empty.
        pub fn is_empty(&self) -> bool {
            self.len() == 0
        }
    }

    impl Default for Churn {
        fn default() -> Self {
            Churn::new()
        }
    }
}

/// Model-checking hooks for `loom-tests/` (only under `--cfg loom`; not a public API).
#[cfg(loom)]
#[doc(hidden)]
pub mod __loom {
    pub use crate::credits::{Meter, Spent, Taken};
    pub use crate::persist::{Recorded, Recorder};
    pub use crate::rate_limit::Gcra;
    pub use crate::store::{open_recorded, open_recorded_owned};
    pub use crate::sync::bug::{plant, Bug, Planted};
    pub use crate::usage::model as usage;
}

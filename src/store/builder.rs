//! Opening a store: the [`Builder`]'s settings, reading and checking the files (or, with
//! the `postgres` feature, the database), and starting the persister.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::handle::{Handle, Shutdown};
use super::TokenStore;
use crate::clock::{millis, Clock, SystemClock};
use crate::error::Error;
use crate::file::{self, Appender, FaultPlan};
use crate::inbox::{Inbox, Timer};
use crate::location::{database_url, Location};
use crate::persist::{FileSink, Persister, Sink, Start};
use crate::recover::{self, Recovered};
#[cfg(loom)]
use crate::snapshot::{self, DecodeError};
use crate::stats::Counters;
use crate::sync::channel;
use crate::sync::thread;
use crate::sync::{Arc, AtomicBool, Mutex};
#[cfg(loom)]
use crate::token::{self, IssuedToken};
use crate::validate::Shared;

/// How often a PostgreSQL replica polls for changes it was not notified of.
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// PostgreSQL stores: how long a change waits for a row another writer holds. Longer than
/// [`DEFAULT_IDLE_IN_TRANSACTION`], so a change stuck behind a frozen writer waits for the
/// database to end that writer's session and then goes through.
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// PostgreSQL stores: how long the database keeps a session that sits in a transaction.
const DEFAULT_IDLE_IN_TRANSACTION: Duration = Duration::from_secs(5);
/// PostgreSQL stores: how long a tombstone is kept before a replica removes it.
const DEFAULT_TOMBSTONE_HORIZON: Duration = Duration::from_secs(7 * 24 * 3600);
/// The default write-behind period for `last_used`.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(60);
/// The name of every store's persister thread (in panics, debuggers and `top -H`).
pub(crate) const PERSISTER_THREAD: &str = "tokencache-persister";
/// The journal size below which no compaction runs (it also waits for the journal to
/// outgrow the snapshot).
const DEFAULT_COMPACTION_FLOOR: u64 = 4 << 20;
/// The default capacity of the persister's channel.
const DEFAULT_CHANNEL_CAPACITY: usize = 4096;

/// Settings for opening a [`TokenStore`]; from [`TokenStore::builder`].
#[must_use]
pub struct Builder {
    path: PathBuf,
    flush_interval: Duration,
    clock: std::sync::Arc<dyn Clock>,
    channel_capacity: usize,
    retention: Option<Duration>,
    compaction_floor: u64,
    faults: Option<FaultPlan>,
    max_staleness: Option<Duration>,
    #[cfg_attr(not(all(feature = "postgres", not(loom))), allow(dead_code))]
    poll_interval: Duration,
    #[cfg_attr(not(all(feature = "postgres", not(loom))), allow(dead_code))]
    lock_timeout: Duration,
    #[cfg_attr(not(all(feature = "postgres", not(loom))), allow(dead_code))]
    idle_in_transaction_timeout: Duration,
    #[cfg_attr(not(all(feature = "postgres", not(loom))), allow(dead_code))]
    migrate_schema: bool,
    /// TLS settings (`crate::tls`; their builder methods are at the end of this file).
    #[cfg_attr(not(all(feature = "postgres", not(loom))), allow(dead_code))]
    pub(crate) tls: crate::tls::TlsOptions,
    #[cfg_attr(not(all(feature = "postgres", not(loom))), allow(dead_code))]
    tombstone_horizon: Duration,
    /// The prefix new tokens get (checked at `open`).
    prefix: String,
    /// Days of usage counts kept (0: none counted).
    usage_days: u32,
}

impl Builder {
    /// Default settings for the store at `path`.
    pub(super) fn new(path: PathBuf) -> Builder {
        Builder {
            path,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            clock: std::sync::Arc::new(SystemClock),
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            retention: None,
            compaction_floor: DEFAULT_COMPACTION_FLOOR,
            faults: None,
            max_staleness: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            idle_in_transaction_timeout: DEFAULT_IDLE_IN_TRANSACTION,
            migrate_schema: true,
            tls: Default::default(),
            tombstone_horizon: DEFAULT_TOMBSTONE_HORIZON,
            prefix: crate::token::DEFAULT_PREFIX.to_string(),
            usage_days: crate::usage::DEFAULT_DAYS,
        }
    }

    /// The write-behind period: `last_used` changes reach disk at most once per interval
    /// (default 60 s). Issues and revocations are written at once regardless.
    pub fn flush_interval(mut self, interval: Duration) -> Builder {
        self.flush_interval = interval;
        self
    }

    /// How many UTC days of usage counts [`TokenStore::usage`] keeps per token (default
    /// 30); the total is kept whatever this says. 0 counts nothing, and saves validation
    /// the few nanoseconds counting costs. A file store only: a PostgreSQL store does not
    /// count yet.
    pub fn usage_days(mut self, days: u32) -> Builder {
        self.usage_days = days;
        self
    }

    /// The clock for timestamps and deadlines (default [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Builder {
        self.clock = std::sync::Arc::new(clock);
        self
    }

    /// Capacity of the channel that carries dirty token ids to the persister (default
    /// 4096). When it is full, validations set a flag instead of blocking, and the next
    /// snapshot scans every token.
    pub fn channel_capacity(mut self, capacity: usize) -> Builder {
        self.channel_capacity = capacity.max(1);
        self
    }

    /// Makes the persister delete tokens revoked or expired more than `age` ago, checking on
    /// each timed tick (once per [`flush_interval`](Self::flush_interval)). Default: keep
    /// every token until [`TokenStore::delete`] or [`TokenStore::purge`].
    pub fn retention(mut self, age: Duration) -> Builder {
        self.retention = Some(age);
        self
    }

    /// Tests only: inject write faults into this store's file writes (see
    /// [`FaultPlan`](crate::__fault::FaultPlan)). Not for production use.
    #[doc(hidden)]
    pub fn fault_plan(mut self, plan: crate::__fault::FaultPlan) -> Builder {
        self.faults = Some(plan);
        self
    }

    /// Compacts (writes a full snapshot and starts an empty journal) once the journal is
    /// larger than both the snapshot and `bytes` (default 4 MiB), checking once per
    /// [`flush_interval`](Self::flush_interval). Compaction also runs on close.
    pub fn compaction_floor(mut self, bytes: u64) -> Builder {
        self.compaction_floor = bytes;
        self
    }

    /// PostgreSQL stores only (a file store ignores it): refuse every validation with
    /// [`Rejection::Unavailable`](crate::Rejection::Unavailable) once this replica's last successful catch-up with the
    /// database is older than `staleness` (it is back as soon as a catch-up succeeds).
    /// Default: keep serving from memory however stale it gets; [`TokenStore::stats`]
    /// (`replica_lag`) and the log say how stale. See `docs/REPLICAS.md`.
    ///
    /// A healthy idle replica catches up once per [`poll_interval`](Self::poll_interval),
    /// so `staleness` must be at least twice the poll interval: `open` refuses a smaller
    /// one with [`Error::InvalidSetting`] (it would refuse good tokens on a healthy database).
    pub fn max_staleness(mut self, staleness: Duration) -> Builder {
        self.max_staleness = Some(staleness);
        self
    }

    /// PostgreSQL stores only (a file store ignores it): how often a replica reads the
    /// changes committed since its last look even when no notification came (default 1 s).
    /// A lost notification delays a change by at most this.
    pub fn poll_interval(mut self, interval: Duration) -> Builder {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// PostgreSQL stores only (a file store ignores it): how long a change waits for a row
    /// lock another writer holds (PostgreSQL's `lock_timeout`; default 10 s) before it fails
    /// with an error, as with the database down. Writers of definitions take the version
    /// counter's row one at a time, so a writer stuck in its transaction (a paused VM, a
    /// partition) would otherwise block every change on every replica. Keep it above
    /// [`idle_in_transaction_timeout`](Self::idle_in_transaction_timeout): then a change
    /// behind a frozen writer waits for the database to end that writer's session and goes
    /// through. `Duration::ZERO` waits forever.
    pub fn lock_timeout(mut self, timeout: Duration) -> Builder {
        self.lock_timeout = timeout;
        self
    }

    /// PostgreSQL stores only (a file store ignores it): the database ends this replica's
    /// session when it sits inside a transaction this long (PostgreSQL's
    /// `idle_in_transaction_session_timeout`; default 5 s), releasing its locks, so a
    /// replica frozen between its `UPDATE` of the counter and its `COMMIT` blocks the
    /// others for at most this long. Its transaction then fails (its callers hear an
    /// error, and a revoke, delete or rate limit is written again). `Duration::ZERO`: never.
    pub fn idle_in_transaction_timeout(mut self, timeout: Duration) -> Builder {
        self.idle_in_transaction_timeout = timeout;
        self
    }

    /// PostgreSQL stores only (a file store ignores it): whether `open` may create the
    /// schema or upgrade an older one (default `true`). With `false` (a read-only tool
    /// such as the CLI's `list`) no DDL runs: a database without the schema, or with an
    /// older one, is refused with an error saying how to migrate it.
    pub fn migrate_schema(mut self, migrate: bool) -> Builder {
        self.migrate_schema = migrate;
        self
    }

    /// The prefix of new tokens: `<prefix>_<id>_<secret><checksum>`, e.g. `sk_live` for
    /// `sk_live_a1B2c3D4_...` (1 to 16 ASCII letters, digits or underscores; default `tc`).
    /// A prefix per product or environment lets people and secret scanners tell keys apart.
    ///
    /// The store records every prefix it issues under (in its files, or its database), and
    /// keeps accepting tokens of each after the prefix changes: a key in a client's hands
    /// never stops working because the store was reopened with another prefix. A token
    /// with a prefix the store never issued under is [`Rejection::Malformed`](crate::Rejection::Malformed)
    /// before any lookup. A prefix that breaks the rules is refused at `open` with
    /// [`Error::InvalidSetting`]; so is a 33rd prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Builder {
        self.prefix = prefix.into();
        self
    }

    /// PostgreSQL stores only (a file store ignores it): how long the row of a deleted (or
    /// purged) token stays in the table as a tombstone (default 7 days). Older tombstones
    /// are removed by one replica at a time, so the table stays bounded. A replica that
    /// had not read a removed tombstone (it was stopped or cut off longer than this)
    /// reloads the whole table at its next catch-up instead of replaying changes, so it
    /// still drops the deleted token. Give every replica the same horizon; their clocks must
    /// agree to well within it.
    ///
    /// It must not be shorter than [`max_staleness`](Self::max_staleness) where one is
    /// set: `open` refuses a shorter one with [`Error::InvalidSetting`]. See
    /// `docs/REPLICAS.md`.
    pub fn tombstone_horizon(mut self, horizon: Duration) -> Builder {
        self.tombstone_horizon = horizon;
        self
    }

    /// Opens the store: resolves the path (a symlink means the file it points to), takes
    /// the lock, reads and checks the store file and its journal and replays the journal
    /// (refusing, with every file untouched, anything damaged but a torn last record),
    /// then sets a torn tail aside, removes temp files a crash of this store left, and
    /// starts the persister. A new store gets an empty store file and journal.
    ///
    /// A path that is a PostgreSQL URL (`postgres://` or `postgresql://`) opens a store
    /// whose system of record is that database instead (feature `postgres`; see
    /// `docs/REPLICAS.md`). No file is touched, and any number of stores may open it.
    pub fn open(mut self) -> Result<TokenStore, Error> {
        crate::token::check_prefix(&self.prefix).map_err(Error::InvalidSetting)?;
        if let Some(url) = database_url(&self.path).map(str::to_owned) {
            return self.open_database(url);
        }
        self.max_staleness = None;
        let path = file::resolve(&self.path)?;
        let lock = file::lock(&path)?;
        let recovered = recover::read(&path)?;
        // Only now that every file was read and checked, and under the lock, so no live
        // writer of this store owns a temp file and a refused store loses no byte.
        let journal_path = file::journal_path(&path);
        let mut journal = None;
        if let Some(read) = &recovered.journal {
            if read.torn {
                let aside = file::cut_torn_tail(&path, read.valid_len, read.file_len)?;
                tracing::warn!(journal = %journal_path.display(), kept = read.valid_len, set_aside = %aside.display(), "the journal ended in a torn record (a crash during a write that was never acknowledged); its bytes were set aside and cut off");
            }
            if !read.stale {
                journal = Some(
                    Appender::open(&journal_path, read.valid_len)
                        .map_err(|e| Error::io("open the journal", &journal_path, e))?,
                );
            }
        }
        let removed = file::remove_stale_temps(&path);
        if removed > 0 {
            tracing::info!(file = %path.display(), removed, "removed temp files left by a crash");
        }
        if recovered.replayed > 0 {
            tracing::info!(file = %path.display(), records = recovered.replayed, "replayed the journal");
        }
        let sink = Box::new(FileSink::new(path.clone(), journal, self.faults.clone()));
        self.start(Location::File(path), recovered, sink, Some(lock), None)
    }

    /// Opens the PostgreSQL store at `url`.
    #[cfg(all(feature = "postgres", not(loom)))]
    fn open_database(self, url: String) -> Result<TokenStore, Error> {
        if crate::location::password_spills_into_parameters(&url) {
            return Err(Error::BadPath {
                path: crate::location::redact_url(&url).into(),
                reason: "its `password` parameter is followed by `&`-pieces that are no parameter of the PostgreSQL client (an `&` or `=` in the password?); percent-encode the password (`%26` for `&`, `%3D` for `=`)",
            });
        }
        let settings = crate::pg::Settings {
            clock: self.clock.clone(),
            max_staleness: self.max_staleness,
            poll_interval: self.poll_interval,
            lock_timeout: self.lock_timeout,
            idle_in_transaction_timeout: self.idle_in_transaction_timeout,
            migrate_schema: self.migrate_schema,
            tls: self.tls.clone(),
            tombstone_horizon: self.tombstone_horizon,
        };
        let opened = crate::pg::open(settings, url)?;
        let store = self.start(
            Location::Database(opened.name.display().to_string()),
            opened.recovered,
            opened.sink,
            None,
            Some(opened.synced_at),
        )?;
        opened.listener.start(store.handle.shared.clone())?;
        Ok(store)
    }

    /// Without the `postgres` feature, a database URL is refused (it is no file path).
    #[cfg(not(all(feature = "postgres", not(loom))))]
    fn open_database(self, url: String) -> Result<TokenStore, Error> {
        Err(Error::BadPath {
            path: crate::location::redact_url(&url).into(),
            reason: "a PostgreSQL URL needs tokencache built with the `postgres` feature",
        })
    }

    /// Builds the in-memory store from `recovered`, writes a snapshot first if the store
    /// file or a usable journal is missing, and spawns the persister.
    fn start(
        self,
        location: Location,
        recovered: Recovered,
        mut sink: Box<dyn Sink>,
        lock: Option<File>,
        synced_at: Option<u64>,
    ) -> Result<TokenStore, Error> {
        let path = location.as_path().to_path_buf();
        let (tx, rx) = channel::bounded(self.channel_capacity);
        let Recovered {
            map, snapshot, seq, ..
        } = recovered;
        let new_prefix = map
            .prefixes
            .add(&self.prefix)
            .map_err(Error::InvalidSetting)?;
        let counted = matches!(location, Location::File(_));
        map.usage
            .keep_days(if counted { self.usage_days } else { 0 });
        let shared = Arc::new(Shared {
            map,
            clock: self.clock,
            inbox: Arc::new(Inbox::new(tx)),
            overflow: AtomicBool::new(false),
            counters: Counters::default(),
            max_staleness_ms: self.max_staleness.map_or(0, |d| millis(d).max(1)),
        });
        if let Some(synced) = synced_at {
            // Relaxed: see `too_stale`.
            let relaxed = std::sync::atomic::Ordering::Relaxed;
            shared.counters.last_sync_at.store(synced, relaxed);
        }
        let mut snapshot_len = snapshot.map_or(0, |s| s.len);
        if sink.snapshot_at_open(snapshot_len) {
            snapshot_len = first_snapshot(&shared, sink.as_mut(), seq, &path)?;
        }
        let feed = std::sync::Arc::new(crate::feed::Hub::default());
        let persister = Persister::new(
            shared.clone(),
            rx,
            sink,
            Start {
                interval: self.flush_interval,
                retention: self.retention,
                compaction_floor: self.compaction_floor,
                snapshot_len,
                seq,
                feed: feed.clone(),
                unrecorded_prefix: new_prefix.then(|| self.prefix.clone()),
            },
        );
        let thread = thread::Builder::new()
            .name(PERSISTER_THREAD.into())
            .spawn(move || persister.run())
            .map_err(|e| Error::io("start the persister thread for", &path, e))?;
        shared.clock.attach(Timer::new(shared.inbox.clone()));
        Ok(TokenStore {
            handle: Arc::new(Handle {
                shared,
                path,
                location,
                prefix: self.prefix,
                shutdown: Mutex::new(Shutdown::Running(thread)),
                lock: Mutex::new(lock),
                feed,
            }),
        })
    }
}

/// Writes a snapshot of everything `shared` holds as covering record `seq`, with a fresh
/// journal after it: a new store's first files, or a journal that could not take the next
/// record. Returns the snapshot's size.
fn first_snapshot(
    shared: &Shared,
    sink: &mut dyn Sink,
    seq: u64,
    path: &Path,
) -> Result<u64, Error> {
    let now = shared.clock.now_ms();
    let compacted = shared.map.with_all(|entries| {
        let records: Vec<_> = entries
            .iter()
            .map(|e| e.record(e.persisted_last_used()))
            .collect();
        let credits: Vec<_> = entries
            .iter()
            .filter_map(|e| Some(e.meter()?.record(e.id.to_bytes(), e.meter()?.persisted())))
            .collect();
        let usage = shared.map.usage.lock().book().take_all(|_| true);
        crate::persist::compact(
            sink,
            &shared.map,
            entries.iter().copied(),
            &records,
            crate::persist::Behind {
                credits: &credits,
                usage: &usage,
            },
            now,
            seq,
        )
    });
    let action = if shared.map.len() == 0 && seq == 0 {
        "create the store file"
    } else {
        "write a snapshot to"
    };
    let compacted = compacted.map_err(|e| Error::io(action, path, e.error))?;
    let journal = compacted
        .journal
        .map_err(|e| Error::io("create the journal", file::journal_path(path), e))?;
    shared
        .counters
        .record_compaction(compacted.snapshot_bytes, now);
    shared.counters.record_compaction_bytes(journal);
    Ok(compacted.snapshot_bytes)
}

/// Model checks only: opens a store with no file, holding `tokens` clean tokens (as if
/// just loaded from a snapshot), whose snapshots go to `recorder`. Returns the tokens too.
#[cfg(loom)]
pub fn open_recorded(
    builder: Builder,
    tokens: usize,
    recorder: crate::persist::Recorder,
) -> Result<(TokenStore, Vec<IssuedToken>), Error> {
    open_recorded_owned(builder, tokens, None, recorder)
}

/// Model checks only: [`open_recorded`], with every token belonging to `owner` if given.
#[cfg(loom)]
pub fn open_recorded_owned(
    builder: Builder,
    tokens: usize,
    owner: Option<&str>,
    recorder: crate::persist::Recorder,
) -> Result<(TokenStore, Vec<IssuedToken>), Error> {
    let now = builder.clock.now_ms();
    let mut issued = Vec::with_capacity(tokens);
    let mut records = Vec::with_capacity(tokens);
    for n in 0..tokens {
        let (secret, id) =
            token::generate(token::DEFAULT_PREFIX).map_err(|e| Error::Random(e.to_string()))?;
        records.push(snapshot::Record {
            id: id.to_bytes(),
            name: format!("loom-{n}"),
            digest: token::digest(&secret),
            scopes: Vec::new(),
            created_at: now,
            expires_at: None,
            revoked_at: None,
            last_used: None,
            rate_limit: None,
        });
        issued.push(IssuedToken { secret, id });
    }
    let entries =
        crate::entry::load(records).map_err(|p| DecodeError::from(p).at(&builder.path))?;
    // No snapshot yet: `start` writes the first one, so the recorder holds the tokens.
    let recovered = Recovered::fresh(entries);
    if let Some(owner) = owner {
        let map = &recovered.map;
        let ids = map.with_all(|entries| entries.iter().map(|e| e.id).collect::<Vec<_>>());
        for id in ids {
            let owner = Some(map.owners.get_or_add(owner));
            map.set_extras(&id, crate::extras::Extras::new(owner, "".into(), false));
        }
    }
    let location = Location::File(builder.path.clone());
    let store = builder.start(location, recovered, Box::new(recorder), None, None)?;
    Ok((store, issued))
}

/// The TLS settings of a PostgreSQL store (feature `postgres`; a file store ignores them).
/// Each is also a URL parameter (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`, as libpq
/// names them); a setting given both here and in the URL with different values is refused
/// by `open`. See `docs/REPLICAS.md`, section "TLS".
impl Builder {
    /// How connections use TLS (URL parameter `sslmode`). Default: none for a loopback
    /// host or Unix socket, [`SslMode::VerifyFull`](crate::tls::SslMode::VerifyFull) for any other host (see [`SslMode`](crate::tls::SslMode)).
    pub fn ssl_mode(mut self, mode: crate::tls::SslMode) -> Builder {
        self.tls.mode = Some(mode);
        self
    }

    /// The CA certificates (a PEM file, e.g. a cloud provider's bundle) the server's
    /// certificate must be signed by under `verify-ca` and `verify-full` (URL parameter
    /// `sslrootcert`; the path `system` means the system's trust store, also used when none
    /// is given). With `require`, giving one makes the chain checked as under `verify-ca`.
    pub fn ssl_root_cert(mut self, path: impl Into<PathBuf>) -> Builder {
        self.tls.root_cert = Some(path.into());
        self
    }

    /// A client certificate chain and its private key (PEM files; URL parameters `sslcert`
    /// and `sslkey`), for servers whose `pg_hba.conf` asks for one (`cert` authentication,
    /// or `clientcert=verify-full`). The key must not be encrypted.
    pub fn ssl_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Builder {
        self.tls.client_cert = Some(cert.into());
        self.tls.client_key = Some(key.into());
        self
    }
}

//! Opening a PostgreSQL store: connect, bring the schema up to date (or, for a read-only
//! open, check it), load every token that is not a tombstone (with the position in the
//! database's history they are current to), and hand the store's builder its parts: the
//! loaded tokens, a [`PgSink`] for the persister and a listener to start once the store runs.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use postgres::{Client, Config, IsolationLevel};

use super::listen::{Listener, Position};
use super::prune::Horizon;
use super::rows::{self, COLUMNS, OWNER_COLUMNS};
use super::sink::{ListenerSlot, PgSink};
use super::tls::Target;
use super::{describe, schema, LISTENER_NAME, WRITER_NAME};
use crate::change::{self, Change};
use crate::clock::Clock;
use crate::entry::{self, Entry};
use crate::error::Error;
use crate::location::redact_url;
use crate::persist::Sink;
use crate::recover::Recovered;
use crate::sync::Arc;
use crate::tls::TlsOptions;
use crate::validate::Shared;

/// How long a connection attempt may take, unless the URL says (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a silent connection is trusted (unacknowledged data, or idle before keepalive
/// probes), unless the URL says (`tcp_user_timeout`).
const SILENT_PEER: Duration = Duration::from_secs(10);

/// The builder's settings a PostgreSQL store uses.
pub(crate) struct Settings {
    pub(crate) clock: std::sync::Arc<dyn Clock>,
    pub(crate) max_staleness: Option<Duration>,
    pub(crate) poll_interval: Duration,
    pub(crate) lock_timeout: Duration,
    pub(crate) idle_in_transaction_timeout: Duration,
    pub(crate) migrate_schema: bool,
    /// The builder's TLS settings (the URL's take their place where it names them).
    pub(crate) tls: TlsOptions,
    /// Tombstones older than this are removed (`Builder::tombstone_horizon`).
    pub(crate) tombstone_horizon: Duration,
}

/// An opened database, in the parts the store's builder assembles: it starts the persister
/// with `sink` over `recovered`, then the listener with the store's shared state.
pub(crate) struct Opened {
    /// The URL with its password redacted: the store's name in errors, logs and `path`.
    pub(crate) name: PathBuf,
    /// Every token loaded.
    pub(crate) recovered: Recovered,
    /// The persister's backend: one transaction per batch.
    pub(crate) sink: Box<dyn Sink>,
    /// When the tokens were read (Unix ms): memory's first catch-up.
    pub(crate) synced_at: u64,
    /// The listener, to start once the store runs.
    pub(crate) listener: PendingListener,
}

/// A listener not yet started: it needs the running store's shared state.
pub(crate) struct PendingListener {
    config: Target,
    position: Position,
    tombstones: HashSet<[u8; 8]>,
    poll: Duration,
    horizon: Horizon,
    name: PathBuf,
    slot: ListenerSlot,
}

impl PendingListener {
    /// Starts the listener thread over `shared`, and hands its handle to the sink (which
    /// stops it on close).
    pub(crate) fn start(self, shared: Arc<Shared>) -> Result<(), Error> {
        let PendingListener {
            mut config,
            position,
            tombstones,
            poll,
            horizon,
            name,
            slot,
        } = self;
        config.config.application_name(LISTENER_NAME);
        let handle = Listener::new(
            config,
            shared,
            position,
            tombstones,
            poll,
            horizon,
            name.clone(),
        )
        .spawn()
        .map_err(|e| Error::io("start the listener thread for", name, e))?;
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(())
    }
}

/// Opens the store whose system of record is the database at `url`.
///
/// The sync client runs its own runtime, which panics on a thread already running one (a
/// service's async `main`), so every database call here runs on a thread of its own; the
/// persister's sink connects on the persister thread.
pub(crate) fn open(builder: Settings, url: String) -> Result<Opened, Error> {
    let name = PathBuf::from(redact_url(&url));
    let fail = |action: &'static str, message: String| Error::database(action, &name, message);
    if let Some(staleness) = builder.max_staleness {
        let poll = builder.poll_interval;
        if staleness < poll.saturating_mul(2) {
            return Err(Error::InvalidSetting(format!(
                "max_staleness ({staleness:?}) must be at least twice poll_interval ({poll:?}): a healthy idle replica catches up once per poll interval, so a smaller bound refuses good tokens; raise max_staleness or lower poll_interval"
            )));
        }
        let horizon = builder.tombstone_horizon;
        if horizon < staleness {
            return Err(Error::InvalidSetting(format!(
                "tombstone_horizon ({horizon:?}) must not be shorter than max_staleness ({staleness:?}): a replica may serve from memory that old, and its deletes must stay readable as tombstones that long; raise tombstone_horizon or lower max_staleness"
            )));
        }
    }
    // The TLS parameters out first: the client refuses `verify-ca`, `verify-full` and the
    // file parameters.
    let (url, tls) = TlsOptions::split_url(&url)?;
    let tls = tls.merge(&builder.tls)?;
    let mut config: Config = url
        .parse()
        .map_err(|e: postgres::Error| fail("parse the database URL", describe(&e)))?;
    drop(url);
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    // A connection whose peer vanished (no RST: a partition, a dead host) fails within
    // seconds instead of the kernel's minutes, so the writer fails its callers and the
    // listener reconnects.
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(SILENT_PEER);
    }
    config.keepalives(true).keepalives_idle(SILENT_PEER);
    // A session that waits for a lock, or sits inside a transaction, too long fails instead
    // of blocking every writer on every replica (a frozen writer holds the counter row).
    let mut options = config.get_options().unwrap_or_default().to_owned();
    for (setting, value) in [
        ("lock_timeout", builder.lock_timeout),
        (
            "idle_in_transaction_session_timeout",
            builder.idle_in_transaction_timeout,
        ),
    ] {
        options.push_str(&format!(" -c {setting}={}", value.as_millis()));
    }
    config.options(options.trim_start());
    let config = Target::new(config, &tls).map_err(|e| fail("set up TLS for", e))?;
    let mut writer = config.clone();
    writer.config.application_name(WRITER_NAME);
    let synced_at = builder.clock.now_ms();
    let migrate = builder.migrate_schema;
    let loaded = std::thread::scope(|s| {
        let loading = s.spawn(|| -> Result<_, Error> {
            let mut client = writer
                .connect()
                .map_err(|e| fail("connect to", describe(&e)))?;
            match migrate {
                true => schema::migrate(&mut client).map_err(|e| fail("set up the schema of", e)),
                false => schema::check(&mut client).map_err(|e| fail("open", e)),
            }?;
            load(&mut client, &name).map_err(|e| fail("load the tokens of", e))
        });
        loading.join()
    });
    let Loaded {
        entries,
        shared,
        position,
        tombstones,
        skipped,
    } = loaded.map_err(|_| fail("open", "the thread opening the database panicked".into()))??;
    // The id is the table's primary key: no id twice.
    let recovered = Recovered::fresh(entries);
    // Then what the tokens share and carry beside their records, as a snapshot's are
    // loaded: each token's extras, owners' limits, prefixes (all checked while read).
    for change in shared {
        if let Err(problem) = change::apply(&recovered.map, change) {
            tracing::error!(store = %name.display(), %problem, "a row in the database cannot be loaded; skipped");
        }
    }
    tracing::info!(store = %name.display(), tokens = recovered.map.len(), skipped, version = position.version, "opened a PostgreSQL store");
    let slot = ListenerSlot::default();
    let sink = Box::new(PgSink::new(
        writer,
        name.clone(),
        builder.clock.clone(),
        slot.clone(),
    ));
    Ok(Opened {
        name: name.clone(),
        recovered,
        sink,
        synced_at,
        listener: PendingListener {
            config,
            position,
            tombstones,
            poll: builder.poll_interval,
            horizon: Horizon {
                age: builder.tombstone_horizon,
                prunes: migrate,
            },
            name,
            slot,
        },
    })
}

/// What `open` reads from the database.
struct Loaded {
    /// Every token that is not a tombstone and loads.
    entries: Vec<Entry>,
    /// What to apply once they are in the map: their extras (the tokens that have any),
    /// owners' limits, prefixes.
    shared: Vec<Change>,
    /// Where in the database's history they are current to.
    position: Position,
    /// The ids of every tombstone.
    tombstones: HashSet<[u8; 8]>,
    /// How many rows did not load (each is logged).
    skipped: usize,
}

/// Every token that is not a tombstone, the position they are current to, and the
/// tombstones, read in one snapshot of the database. A row that does not load (a
/// hand-made UPDATE) is logged and skipped, not the whole database refused: the token is
/// unknown to this replica, so it is refused, and the other rows serve.
fn load(client: &mut Client, name: &std::path::Path) -> Result<Loaded, String> {
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(|e| describe(&e))?;
    let history = tx
        .query_one(
            "SELECT v.version, c.stamp, \
             pg_snapshot_xmin(pg_current_snapshot())::text::bigint FROM tokencache_version v \
             LEFT JOIN tokencache_commits c ON c.version = v.version",
            &[],
        )
        .map_err(|e| describe(&e))?;
    let position = Position {
        version: history.get(0),
        stamp: history.get(1),
        used_since: history.get(2),
    };
    let query = format!("SELECT {COLUMNS} FROM tokencache_tokens WHERE NOT deleted");
    let found = tx.query(&query, &[]).map_err(|e| describe(&e))?;
    let mut entries = Vec::with_capacity(found.len());
    let mut shared = Vec::new();
    let mut skipped = 0;
    for row in &found {
        let loaded = rows::record(row).and_then(|(record, _, _)| {
            let extras = rows::extras(row)?;
            Ok((entry::load_one(record).map_err(|p| p.to_string())?, extras))
        });
        match loaded {
            Ok((entry, extras)) => {
                entries.push(entry);
                if rows::has_extras(&extras) {
                    shared.push(Change::Extras(extras));
                }
            }
            Err(problem) => {
                skipped += 1;
                tracing::error!(store = %name.display(), %problem, "a row in the database cannot be loaded; skipped (its token is refused until the row is fixed)");
            }
        }
    }
    let limits = tx
        .query(
            &format!(
                "SELECT {OWNER_COLUMNS} FROM tokencache_owners WHERE rate_period_ms IS NOT NULL"
            ),
            &[],
        )
        .map_err(|e| describe(&e))?;
    for row in &limits {
        match rows::owner_limit(row) {
            Ok(change) => shared.push(change),
            Err(problem) => {
                tracing::error!(store = %name.display(), %problem, "an owner's rate limit in the database cannot be loaded; skipped (the owner's tokens are not limited together until it is fixed)");
            }
        }
    }
    let prefixes = tx
        .query(
            "SELECT prefix FROM tokencache_prefixes ORDER BY version, prefix",
            &[],
        )
        .map_err(|e| describe(&e))?;
    shared.extend(
        prefixes
            .iter()
            .filter_map(|row| row.try_get::<_, String>(0).ok())
            .map(Change::Prefix),
    );
    let tombstones = tx
        .query("SELECT id FROM tokencache_tokens WHERE deleted", &[])
        .map_err(|e| describe(&e))?
        .iter()
        .filter_map(|row| row.try_get::<_, String>(0).ok())
        .filter_map(|id| <[u8; 8]>::try_from(id.as_bytes()).ok())
        .collect();
    tx.commit().map_err(|e| describe(&e))?;
    Ok(Loaded {
        entries,
        shared,
        position,
        tombstones,
        skipped,
    })
}

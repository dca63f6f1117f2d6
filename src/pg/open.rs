//! Opening a PostgreSQL store: connect, bring the schema up to date, load every token that
//! is not a tombstone (with the version they are current to), start the persister with a
//! [`PgSink`] and the listener.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use postgres::{Client, Config, IsolationLevel, NoTls};

use super::listen::Listener;
use super::rows::{self, COLUMNS};
use super::sink::PgSink;
use super::{describe, schema, LISTENER_NAME, WRITER_NAME};
use crate::entry;
use crate::error::Error;
use crate::recover::Recovered;
use crate::snapshot::Record;
use crate::store::{redact_url, Builder, TokenStore};

/// How long a connection attempt may take, unless the URL says (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a silent connection is trusted (unacknowledged data, or idle before keepalive
/// probes), unless the URL says (`tcp_user_timeout`).
const SILENT_PEER: Duration = Duration::from_secs(10);

/// Opens the store whose system of record is the database at `url`.
///
/// The sync client runs its own runtime, which panics on a thread already running one (a
/// service's async `main`), so every database call here runs on a thread of its own; the
/// persister's sink connects on the persister thread.
pub(crate) fn open(builder: Builder, url: String) -> Result<TokenStore, Error> {
    let name = PathBuf::from(redact_url(&url));
    let fail = |action: &'static str, message: String| {
        Error::io(action, name.clone(), io::Error::other(message))
    };
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
    let mut writer = config.clone();
    writer.application_name(WRITER_NAME);
    let synced_at = builder.clock.now_ms();
    let loaded = std::thread::scope(|s| {
        let loading = s.spawn(|| -> Result<_, Error> {
            let mut client = writer
                .connect(NoTls)
                .map_err(|e| fail("connect to", describe(&e)))?;
            schema::migrate(&mut client).map_err(|e| fail("set up the schema of", e))?;
            load(&mut client).map_err(|e| fail("load the tokens of", e))
        });
        loading.join()
    });
    let (records, version) =
        loaded.map_err(|_| fail("open", "the thread opening the database panicked".into()))??;
    let entries =
        entry::load(records).map_err(|problem| fail("load the tokens of", problem.to_string()))?;
    // The id is the table's primary key: no id twice.
    let recovered = Recovered::fresh(entries);
    tracing::info!(store = %name.display(), tokens = recovered.map.len(), version, "opened a PostgreSQL store");
    let poll = builder.poll_interval;
    let sink = Box::new(PgSink::new(writer, name.clone()));
    let store = builder.start(name.clone(), recovered, sink, None, Some(synced_at))?;
    let mut listener = config;
    listener.application_name(LISTENER_NAME);
    Listener::new(listener, store.shared(), version, poll, name.clone())
        .spawn()
        .map_err(|e| Error::io("start the listener thread for", name, e))?;
    Ok(store)
}

/// Every token that is not a tombstone, and the version they are current to, read in one
/// snapshot of the database.
fn load(client: &mut Client) -> Result<(Vec<Record>, i64), String> {
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(|e| describe(&e))?;
    let version: i64 = tx
        .query_one("SELECT version FROM tokencache_version", &[])
        .map_err(|e| describe(&e))?
        .get(0);
    let query = format!("SELECT {COLUMNS} FROM tokencache_tokens WHERE NOT deleted");
    let found = tx.query(&query, &[]).map_err(|e| describe(&e))?;
    let records = found
        .iter()
        .map(|row| rows::record(row).map(|(record, _, _)| record))
        .collect::<Result<Vec<_>, _>>()?;
    tx.commit().map_err(|e| describe(&e))?;
    Ok((records, version))
}

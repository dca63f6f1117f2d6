//! A replica's listener thread: its own connection, `LISTEN`, and a catch-up query
//! (`version > last_seen`) on each notification, on a poll timer, and after each
//! (re)connect, LISTEN first so no commit falls between the two. A lost notification
//! delays a change by at most one poll interval and never loses it. What it reads goes to
//! the persister (`Message::Remote`), the one thread that changes the map.

use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, Config, NoTls, Statement};

use super::rows::{self, COLUMNS};
use super::CHANNEL;
use crate::inbox::Message;
use crate::store::Shared;
use crate::sync::Arc;

/// The name of every listener thread.
const THREAD: &str = "tokencache-listener";
/// Reconnect backoff: doubles from the first to the last.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const LAST_BACKOFF: Duration = Duration::from_secs(2);

pub(super) struct Listener {
    config: Config,
    shared: Arc<Shared>,
    /// The newest version read; the next catch-up reads the rows changed after it.
    last_seen: i64,
    poll: Duration,
    /// The URL with its password redacted, for the log.
    name: PathBuf,
    /// Whether the connection is lost (logged once per outage, then at each retry).
    lost: bool,
    /// The catch-up query.
    query: String,
}

impl Listener {
    pub(super) fn new(
        config: Config,
        shared: Arc<Shared>,
        last_seen: i64,
        poll: Duration,
        name: PathBuf,
    ) -> Listener {
        Listener {
            config,
            shared,
            last_seen,
            poll,
            name,
            lost: false,
            query: format!(
                "SELECT {COLUMNS} FROM tokencache_tokens WHERE version > $1 ORDER BY version"
            ),
        }
    }

    pub(super) fn spawn(self) -> std::io::Result<()> {
        thread::Builder::new()
            .name(THREAD.into())
            .spawn(move || self.run())
            .map(drop)
    }

    /// Until the store closes: a session, and after each lost one a reconnect with backoff.
    fn run(mut self) {
        let mut backoff = FIRST_BACKOFF;
        while self.shared.inbox.is_open() {
            match self.session(&mut backoff) {
                Ok(()) => return,
                Err(error) => {
                    let error = super::describe(&error);
                    let stale_ms = self.stale_ms();
                    tracing::warn!(store = %self.name.display(), %error, stale_ms, retry_in_ms = backoff.as_millis() as u64, "lost the database; validating from memory (stale by stale_ms) and reconnecting");
                    self.lost = true;
                    self.sleep(backoff);
                    backoff = (backoff * 2).min(LAST_BACKOFF);
                }
            }
        }
    }

    /// How long ago memory last caught up.
    fn stale_ms(&self) -> u64 {
        let synced = self
            .shared
            .counters
            .last_sync_at
            .load(std::sync::atomic::Ordering::Relaxed);
        self.shared.clock.now_ms().saturating_sub(synced)
    }

    /// Sleeps `total`, waking early if the store closes.
    fn sleep(&self, total: Duration) {
        let step = Duration::from_millis(20);
        let mut left = total;
        while !left.is_zero() && self.shared.inbox.is_open() {
            let nap = left.min(step);
            thread::sleep(nap);
            left -= nap;
        }
    }

    /// One connection's life: LISTEN, catch up, then wait for a notification or the poll
    /// timer and catch up again. `Ok` once the store closed; `Err` when the connection
    /// failed.
    fn session(&mut self, backoff: &mut Duration) -> Result<(), postgres::Error> {
        let mut client = self.config.connect(NoTls)?;
        client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
        let query = client.prepare(&self.query)?;
        if !self.catch_up(&mut client, &query)? {
            return Ok(());
        }
        if self.lost {
            tracing::info!(store = %self.name.display(), "reconnected to the database and caught up");
            self.lost = false;
        }
        *backoff = FIRST_BACKOFF;
        loop {
            let notified = client
                .notifications()
                .timeout_iter(self.poll)
                .next()?
                .is_some();
            if notified {
                // One catch-up covers every notification already here.
                let mut notifications = client.notifications();
                let mut pending = notifications.iter();
                while pending.next()?.is_some() {}
            }
            if !self.shared.inbox.is_open() || !self.catch_up(&mut client, &query)? {
                return Ok(());
            }
        }
    }

    /// Reads every row changed since `last_seen` and hands it to the persister (an empty
    /// batch too: it tells how current memory is). `false` if the store is closed.
    fn catch_up(
        &mut self,
        client: &mut Client,
        query: &Statement,
    ) -> Result<bool, postgres::Error> {
        let at = self.shared.clock.now_ms();
        let found = client.query(query, &[&self.last_seen])?;
        let mut seen = self.last_seen;
        let mut changes = Vec::new();
        for row in &found {
            match rows::record(row) {
                Ok((record, deleted, version)) => {
                    seen = seen.max(version);
                    rows::changes(record, deleted, &mut changes);
                }
                Err(problem) => {
                    seen = seen.max(row.try_get(12).unwrap_or(seen));
                    tracing::error!(store = %self.name.display(), %problem, "a row in the database cannot be loaded; skipped");
                }
            }
        }
        if self
            .shared
            .inbox
            .request(Message::Remote(changes, at))
            .is_err()
        {
            return Ok(false);
        }
        self.last_seen = seen;
        Ok(true)
    }
}

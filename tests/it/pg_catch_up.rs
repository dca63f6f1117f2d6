//! A catch-up races this replica's own writes: the listener reads the database in one
//! snapshot, and the persister applies what it read later, maybe after this replica wrote
//! some of those rows again. A row read before the replica's own later write must not undo
//! that write in memory, not even for a moment: a rate limit coming back with a full quota,
//! metadata going back, a deleted token validating again, an owner's limit going back.
//!
//! The race is made to happen: an `ACCESS EXCLUSIVE` lock on `tokencache_prefixes` (which
//! none of the writes here touch: each store recorded its prefix, and connected its writer,
//! which prepares an insert into that table, before) stops the listener inside its
//! catch-up, after it read the token rows and before it hands them over; the writes go
//! through meanwhile; the lock is released; the stale catch-up is applied, then the one
//! that reads the writes.

use crate::common;

use std::thread;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::pg;
use tokencache::{ChangeEvent, Feed, NewToken, Origin, RateLimit, Rejection, TokenStore};

/// The bound every propagation is held to (generous: a loaded CI machine).
const BOUND: Duration = Duration::from_secs(5);

/// A store whose listener catches up on notifications only (its poll is far away), so
/// each catch-up here is the one a write's notification started.
fn open(url: &str) -> TokenStore {
    TokenStore::builder(url)
        .poll_interval(Duration::from_secs(60))
        .open()
        .expect("open the PostgreSQL store")
}

/// Holds `tokencache_prefixes` locked until dropped (the transaction rolls back).
struct Held {
    _admin: postgres::Client,
}

impl Held {
    /// Locks the prefixes table, so the next catch-up of any replica stops at it.
    fn prefixes(url: &str) -> Held {
        let mut admin = pg::connect(url);
        admin
            .batch_execute("BEGIN; LOCK TABLE tokencache_prefixes IN ACCESS EXCLUSIVE MODE")
            .unwrap();
        Held { _admin: admin }
    }
}

impl Held {
    /// Waits until `listeners` catch-ups wait for the lock: they read their token rows.
    /// Returns when they were seen waiting (each catch-up started before).
    fn stopping(&self, url: &str, listeners: i64) -> DateTime<Utc> {
        let mut watch = pg::connect(url);
        let waiting = "SELECT count(*) FROM pg_stat_activity \
                       WHERE datname = current_database() AND wait_event_type = 'Lock' \
                       AND query LIKE '%FROM tokencache_prefixes%'";
        pg::within(BOUND, || {
            watch.query_one(waiting, &[]).unwrap().get::<_, i64>(0) == listeners
        })
        .expect("the listeners' catch-ups wait for the prefixes table");
        Utc::now()
    }

    /// Releases the lock, a few milliseconds after the last look at the clock: the store's
    /// clock reads whole milliseconds, and a catch-up that starts from now on must read a
    /// later time than any taken before.
    fn release(self) {
        thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until `store` applied a catch-up that started after `since`.
fn caught_up_since(store: &TokenStore, since: DateTime<Utc>) {
    pg::within(BOUND, || {
        store.stats().last_catch_up_at.is_some_and(|at| at > since)
    })
    .expect("a catch-up after the lock was released");
}

/// Runs `write` (a change committed through one of `stores`), then waits until each of
/// `stores` applied a catch-up that started after it: their listeners are idle again. The
/// pause first lets the stores' whole-millisecond clock move past the time noted.
fn settled<T>(stores: &[&TokenStore], write: impl FnOnce() -> T) -> T {
    let before = Utc::now();
    thread::sleep(Duration::from_millis(5));
    let written = write();
    for store in stores {
        caught_up_since(store, before);
    }
    written
}

/// Issues `request` on `store` and waits until its catch-up of its own issue is over: the
/// store's writer is connected, its prefix recorded, and its listener idle.
fn issue_settled(store: &TokenStore, request: NewToken) -> tokencache::IssuedToken {
    settled(&[store], || store.issue(request).unwrap())
}

/// Every event another replica's rows made in `store`: none may come from this replica's
/// own rows, read before or after its writes.
fn replica_events(changes: &tokencache::Changes) -> Vec<ChangeEvent> {
    let mut seen = Vec::new();
    while let Ok(item) = changes.try_recv() {
        match item {
            Feed::Event(event) if event.origin == Origin::Replica => seen.push(event),
            Feed::Event(_) => {}
            Feed::Missed(n) => panic!("missed {n} events with a queue that has room"),
        }
    }
    seen
}

#[test]
fn a_catch_up_read_before_this_replicas_own_writes_does_not_undo_them() {
    let url = pg::fresh_db();
    let a = open(&url);
    issue_settled(&a, NewToken::new("first"));
    let changes = a.subscribe();

    // The catch-up of A's own issue stops after reading the three rows as issued.
    let held = Held::prefixes(&url);
    let issued = a
        .issue_many(["limited", "deleted", "described"].map(NewToken::new))
        .unwrap();
    let [limited, deleted, described] = &issued[..] else {
        unreachable!()
    };
    let stopped = held.stopping(&url, 1);

    a.set_rate_limit(&limited.id(), Some(RateLimit::per_minute(1)))
        .unwrap();
    assert!(
        a.validate(limited.secret()).is_ok(),
        "the one request a minute"
    );
    a.delete(&deleted.id()).unwrap();
    a.set_meta(&described.id(), &[("plan", "pro")]).unwrap();
    held.release();
    caught_up_since(&a, stopped);

    assert!(
        matches!(
            a.validate(limited.secret()),
            Err(Rejection::RateLimited { .. })
        ),
        "the quota spent after the write is still spent"
    );
    assert_eq!(a.validate(deleted.secret()).err(), Some(Rejection::Unknown));
    assert_eq!(
        a.get(&described.id()).unwrap().meta,
        vec![("plan".to_owned(), "pro".to_owned())]
    );
    assert_eq!(
        replica_events(&changes),
        [],
        "no row of A's own changed A's memory, not even for a moment (a deleted token \
         issued again, a limit or metadata set back and forth)"
    );

    // The same for an owner's shared limit: the stopped catch-up holds the first one
    // (once the issue's catch-up is over, so that it is the one that stops).
    let owned = issue_settled(&a, NewToken::new("owned").owner("acme"));
    let held = Held::prefixes(&url);
    a.set_owner_rate_limit("acme", Some(RateLimit::per_second(100)))
        .unwrap();
    let stopped = held.stopping(&url, 1);
    a.set_owner_rate_limit("acme", Some(RateLimit::per_minute(1)))
        .unwrap();
    assert!(
        a.validate(owned.secret()).is_ok(),
        "the owner's one request"
    );
    held.release();
    caught_up_since(&a, stopped);

    assert!(
        matches!(
            a.validate(owned.secret()),
            Err(Rejection::RateLimited { .. })
        ),
        "the owner's quota spent after the write is still spent"
    );
    assert_eq!(replica_events(&changes), []);
}

#[test]
fn another_replicas_change_read_in_the_same_stopped_catch_up_still_arrives() {
    // A row skipped because this replica wrote it later is read again by the next
    // catch-up, with what the other replica changed in it.
    let url = pg::fresh_db();
    let a = open(&url);
    let b = open(&url);
    let token = issue_settled(&a, NewToken::new("shared"));
    pg::within(BOUND, || b.get(&token.id()).is_some()).expect("B has the token");
    settled(&[&a, &b], || {
        b.set_meta(&token.id(), &[("plan", "free")]).unwrap();
    });

    let held = Held::prefixes(&url);
    b.set_meta(&token.id(), &[("plan", "pro")]).unwrap();
    // A's catch-up and B's own stop, both after reading the row with B's metadata.
    let stopped = held.stopping(&url, 2);
    a.set_rate_limit(&token.id(), Some(RateLimit::per_minute(1)))
        .unwrap();
    held.release();
    caught_up_since(&a, stopped);

    let seen = a.get(&token.id()).unwrap();
    assert_eq!(seen.meta, vec![("plan".to_owned(), "pro".to_owned())]);
    assert_eq!(seen.rate_limit, Some(RateLimit::per_minute(1)));
}

/// What the test knows of one token: A's and B's writes, in commit order.
struct Model {
    token: tokencache::IssuedToken,
    limit: Option<RateLimit>,
    meta: Vec<(String, String)>,
    revoked: bool,
    deleted: bool,
    /// B set metadata this round that no later write of A replaced: its arrival in A is a
    /// replica event, the only kind this round may bring.
    meta_from_b: bool,
}

/// Rounds of writes on both replicas around a stopped catch-up of A: B changes some rows
/// (which the stopped catch-up reads), then A writes rate limits, metadata, revocations and
/// deletions at random. After each release A holds exactly what the model says (its own
/// later writes over the rows read before them, B's writes it did not overwrite), B agrees,
/// and no row set A's memory back even for a moment: the only replica events are B's
/// metadata arriving. `TOKENCACHE_CATCH_UP_SEED` replays a run.
#[test]
fn random_writes_around_a_stopped_catch_up_end_as_the_model_says() {
    let seed: u64 = std::env::var("TOKENCACHE_CATCH_UP_SEED")
        .map(|s| s.parse().expect("a number"))
        .unwrap_or_else(|_| Utc::now().timestamp_micros() as u64);
    println!("seed {seed} (TOKENCACHE_CATCH_UP_SEED={seed} replays it)");
    let mut rng = seed | 1;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    let url = pg::fresh_db();
    let a = open(&url);
    let b = open(&url);
    let first = issue_settled(&a, NewToken::new("first"));
    // B's writer connects now.
    settled(&[&a, &b], || {
        b.set_meta(&first.id(), &[("by", "b")]).unwrap()
    });
    let changes = a.subscribe();
    let mut tokens: Vec<Model> = Vec::new();
    let limits = [
        None,
        Some(RateLimit::per_minute(1)),
        Some(RateLimit::per_second(50).burst(5)),
    ];

    for round in 0..6 {
        let names = (0..4).map(|i| NewToken::new(format!("r{round}-{i}")));
        for token in settled(&[&a, &b], || a.issue_many(names).unwrap()) {
            tokens.push(Model {
                token,
                limit: None,
                meta: Vec::new(),
                revoked: false,
                deleted: false,
                meta_from_b: false,
            });
        }
        let live: Vec<usize> = (0..tokens.len()).filter(|&i| !tokens[i].deleted).collect();

        let held = Held::prefixes(&url);
        for _ in 0..1 + next(3) {
            let t = &mut tokens[live[next(live.len())]];
            let meta = vec![("by".to_owned(), format!("b{round}"))];
            b.set_meta(&t.token.id(), &meta).unwrap();
            (t.meta, t.meta_from_b) = (meta, true);
        }
        let stopped = held.stopping(&url, 2);
        for _ in 0..6 {
            let live: Vec<usize> = (0..tokens.len()).filter(|&i| !tokens[i].deleted).collect();
            let t = &mut tokens[live[next(live.len())]];
            let id = t.token.id();
            match next(4) {
                0 => {
                    let limit = limits[next(limits.len())];
                    a.set_rate_limit(&id, limit).unwrap();
                    t.limit = limit;
                }
                1 => {
                    let meta = vec![("by".to_owned(), format!("a{round}"))];
                    a.set_meta(&id, &meta).unwrap();
                    (t.meta, t.meta_from_b) = (meta, false);
                }
                2 => {
                    a.revoke(&id).unwrap();
                    t.revoked = true;
                }
                _ => {
                    a.delete(&id).unwrap();
                    (t.deleted, t.meta_from_b) = (true, false);
                }
            }
        }
        held.release();
        caught_up_since(&a, stopped);

        for t in &tokens {
            let id = t.token.id();
            let held = a.get(&id);
            let context = format!("round {round}, token {id} (seed {seed})");
            match (&held, t.deleted) {
                (None, true) => continue,
                (Some(_), true) => panic!("{context}: deleted, but A holds it"),
                (None, false) => panic!("{context}: A lost it"),
                (Some(_), false) => {}
            }
            let held = held.unwrap();
            assert_eq!(held.rate_limit, t.limit, "{context}");
            assert_eq!(held.meta, t.meta, "{context}");
            assert_eq!(held.revoked_at.is_some(), t.revoked, "{context}");
        }
        for event in replica_events(&changes) {
            let from_b = tokens
                .iter()
                .any(|t| Some(t.token.id()) == event.id && t.meta_from_b);
            assert!(
                event.kind == tokencache::ChangeKind::MetaSet && from_b,
                "round {round} (seed {seed}): a row of A's own changed A's memory: {event:?}"
            );
        }
        tokens.iter_mut().for_each(|t| t.meta_from_b = false);
        pg::within(BOUND, || pg::definitions(&a) == pg::definitions(&b))
            .unwrap_or_else(|| panic!("round {round} (seed {seed}): B disagrees with A"));
    }
}

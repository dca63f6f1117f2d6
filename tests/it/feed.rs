//! The change feed (`TokenStore::subscribe`): every durable change once, in order, when its
//! call returns; nothing for a failed write; a subscriber that never reads blocks nothing
//! and is told exactly how many events it missed; the feed ends after close. (Replica
//! origins, with the `postgres` feature:
//! `a_revoke_on_another_replica_arrives_with_origin_replica_and_a_local_one_once`.)

use crate::common;

use std::time::Duration;

use common::{faulty_store, manual_store, scratch, INTERVAL};
use tokencache::__fault::FaultStep;
use tokencache::{
    ChangeEvent, ChangeKind, Changes, Clock, Error, Feed, FeedError, ImportedToken, NewToken,
    Origin, RateLimit, TokenId,
};

const EIO: i32 = 5;

/// Every item queued right now, without waiting.
fn queued(changes: &Changes) -> Vec<Feed> {
    let mut items = Vec::new();
    loop {
        match changes.try_recv() {
            Ok(item) => items.push(item),
            Err(FeedError::Empty) => return items,
            Err(FeedError::Closed) => panic!("the feed ended while the store is open"),
        }
    }
}

/// The queued items, each an event: `(kind, id)`.
fn queued_events(changes: &Changes) -> Vec<(ChangeKind, TokenId)> {
    queued(changes)
        .into_iter()
        .map(|item| match item {
            Feed::Event(event) => (event.kind, token(&event)),
            Feed::Missed(n) => panic!("missed {n} events with a queue that has room"),
        })
        .collect()
}

/// The token an event is about (every kind but an owner's limit has one).
fn token(event: &ChangeEvent) -> TokenId {
    event
        .id
        .unwrap_or_else(|| panic!("an event about no token: {event:?}"))
}

/// One event as the keys tests compare it: kind, token, owner, owner-wide.
type Keyed = (ChangeKind, Option<TokenId>, Option<String>, bool);

/// The queued items, each an event, as [`Keyed`], in order.
fn queued_keyed(changes: &Changes) -> Vec<Keyed> {
    queued(changes)
        .into_iter()
        .map(|item| {
            let e = event(item);
            (e.kind, e.id, e.owner, e.owner_wide)
        })
        .collect()
}

/// `(kind, Some(id), owner, owner_wide)`.
fn keyed(kind: ChangeKind, id: TokenId, owner: Option<&str>, owner_wide: bool) -> Keyed {
    (kind, Some(id), owner.map(String::from), owner_wide)
}

fn event(item: Feed) -> ChangeEvent {
    match item {
        Feed::Event(event) => event,
        Feed::Missed(n) => panic!("expected an event, got Missed({n})"),
    }
}

#[test]
fn every_change_arrives_once_in_order_when_its_call_returns() {
    let s = scratch();
    let (store, clock) = manual_store(&s.path);
    let before = store.issue(NewToken::new("before")).unwrap();
    let changes = store.subscribe();
    assert_eq!(
        queued(&changes),
        [],
        "a change before subscribe is not sent"
    );

    clock.advance(Duration::from_secs(5));
    let a = store.issue(NewToken::new("a")).unwrap();
    // Queued before `issue` returned: read without waiting.
    let issued = event(changes.try_recv().unwrap());
    assert_eq!(issued.kind, ChangeKind::Issued);
    assert_eq!(issued.id, Some(a.id()));
    assert_eq!(issued.origin, Origin::Local);
    assert_eq!(issued.owner, None);
    assert_eq!(issued.at.timestamp_millis() as u64, clock.now_ms());
    assert_eq!(changes.try_recv(), Err(FeedError::Empty));

    let many = store
        .issue_many([NewToken::new("m1"), NewToken::new("m2")])
        .unwrap();
    assert_eq!(
        queued_events(&changes),
        [
            (ChangeKind::Issued, many[0].id()),
            (ChangeKind::Issued, many[1].id())
        ]
    );

    store
        .set_rate_limit(&a.id(), Some(RateLimit::per_second(5)))
        .unwrap();
    assert_eq!(
        queued_events(&changes),
        [(ChangeKind::RateLimitSet, a.id())]
    );

    let new = store.rotate(&a.id(), Duration::from_secs(60)).unwrap();
    assert_eq!(
        queued_events(&changes),
        [
            (ChangeKind::Rotated { old: a.id() }, new.id()),
            (ChangeKind::ExpiryShortened, a.id())
        ]
    );

    store.revoke(&many[0].id()).unwrap();
    assert_eq!(
        queued_events(&changes),
        [(ChangeKind::Revoked, many[0].id())]
    );
    // A token already revoked keeps its time: no change, no event.
    store.revoke(&many[0].id()).unwrap();
    assert_eq!(queued_events(&changes), []);

    store.delete(&many[1].id()).unwrap();
    assert_eq!(
        queued_events(&changes),
        [(ChangeKind::Deleted, many[1].id())]
    );

    store.revoke(&before.id()).unwrap();
    assert_eq!(
        queued_events(&changes),
        [(ChangeKind::Revoked, before.id())]
    );
    assert_eq!(store.purge(Duration::ZERO).unwrap(), 2);
    let mut purged = queued_events(&changes);
    purged.sort_by_key(|&(_, id)| id);
    let mut expected = vec![
        (ChangeKind::Purged, before.id()),
        (ChangeKind::Purged, many[0].id()),
    ];
    expected.sort_by_key(|&(_, id)| id);
    assert_eq!(purged, expected);

    // `last_used` is no event, nor is a flush.
    store.validate(new.secret()).unwrap();
    store.flush().unwrap();
    assert_eq!(queued_events(&changes), []);
    store.close().unwrap();
}

/// Issue 21's keys changes: each arrives once, with the owner the token had; an owner's
/// shared limit is one event without a token (also for an owner with no token yet).
#[test]
fn keys_changes_arrive_once_each_with_the_tokens_owner() {
    let s = scratch();
    let (store, clock) = manual_store(&s.path);
    let changes = store.subscribe();
    let acme = Some("acme");

    let a = store
        .issue(NewToken::new("a").owner("acme").meta("plan", "pro"))
        .unwrap();
    let plain = store.issue(NewToken::new("plain")).unwrap();
    assert_eq!(
        queued_keyed(&changes),
        [
            keyed(ChangeKind::Issued, a.id(), acme, false),
            keyed(ChangeKind::Issued, plain.id(), None, false),
        ],
        "metadata given at issue is part of the issue's event"
    );

    // SHA-256 of "test": a key minted elsewhere.
    let digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let imported = store
        .import(ImportedToken::sha256(digest).unwrap().owner("acme"))
        .unwrap();
    assert_eq!(
        queued_keyed(&changes),
        [keyed(ChangeKind::Imported, imported, acme, false)]
    );
    assert!(store.validate("test").is_ok());
    assert_eq!(queued(&changes), [], "a validation is no event");

    store.set_meta(&a.id(), &[("plan", "free")]).unwrap();
    store.set_meta(&plain.id(), &[("team", "ops")]).unwrap();
    assert_eq!(
        queued_keyed(&changes),
        [
            keyed(ChangeKind::MetaSet, a.id(), acme, false),
            keyed(ChangeKind::MetaSet, plain.id(), None, false),
        ]
    );

    clock.advance(Duration::from_secs(3));
    store
        .set_owner_rate_limit("acme", Some(RateLimit::per_second(5)))
        .unwrap();
    store
        .set_owner_rate_limit("no-token-yet", Some(RateLimit::per_minute(60)))
        .unwrap();
    store.set_owner_rate_limit("acme", None).unwrap();
    let limits: Vec<ChangeEvent> = queued(&changes).into_iter().map(event).collect();
    let owners: Vec<(ChangeKind, Option<TokenId>, Option<&str>, bool)> = limits
        .iter()
        .map(|e| (e.kind, e.id, e.owner.as_deref(), e.owner_wide))
        .collect();
    let limit_set = (ChangeKind::OwnerRateLimitSet, None, acme, true);
    assert_eq!(
        owners,
        [
            limit_set,
            (
                ChangeKind::OwnerRateLimitSet,
                None,
                Some("no-token-yet"),
                true
            ),
            limit_set,
        ],
        "one event per call, set or removed, about no token"
    );
    assert_eq!(limits[0].at.timestamp_millis() as u64, clock.now_ms());

    // A rotation keeps the owner: both of its events carry it.
    let next = store.rotate(&a.id(), Duration::from_secs(60)).unwrap();
    assert_eq!(
        queued_keyed(&changes),
        [
            keyed(ChangeKind::Rotated { old: a.id() }, next.id(), acme, false),
            keyed(ChangeKind::ExpiryShortened, a.id(), acme, false),
        ]
    );

    // A delete and a purge carry the owner the token had before it went.
    let gone = store.issue(NewToken::new("gone").owner("globex")).unwrap();
    let old = store.issue(NewToken::new("old").owner("initech")).unwrap();
    store.delete(&gone.id()).unwrap();
    store.revoke(&old.id()).unwrap();
    assert_eq!(store.purge(Duration::ZERO).unwrap(), 1);
    assert_eq!(
        queued_keyed(&changes),
        [
            keyed(ChangeKind::Issued, gone.id(), Some("globex"), false),
            keyed(ChangeKind::Issued, old.id(), Some("initech"), false),
            keyed(ChangeKind::Deleted, gone.id(), Some("globex"), false),
            keyed(ChangeKind::Revoked, old.id(), Some("initech"), false),
            keyed(ChangeKind::Purged, old.id(), Some("initech"), false),
        ]
    );
    store.close().unwrap();
}

/// `revoke_owner` and `delete_owner` are one event per token they changed, each marked
/// owner-wide, all at one time: a reader following a token sees every change to it, and a
/// reader of the log sees which changes one call made. A token already revoked is no event,
/// and a call that changes nothing makes none.
#[test]
fn an_owner_wide_revoke_or_delete_is_one_event_per_token_it_changed() {
    let s = scratch();
    let (store, clock) = manual_store(&s.path);
    let owned: Vec<TokenId> = store
        .issue_many((0..3).map(|n| NewToken::new(format!("acme-{n}")).owner("acme")))
        .unwrap()
        .iter()
        .map(|t| t.id())
        .collect();
    let other = store.issue(NewToken::new("other").owner("globex")).unwrap();
    store.revoke(&owned[0]).unwrap();
    let changes = store.subscribe();

    clock.advance(Duration::from_secs(7));
    assert_eq!(store.revoke_owner("acme").unwrap(), 2);
    let revoked: Vec<ChangeEvent> = queued(&changes).into_iter().map(event).collect();
    let mut ids: Vec<TokenId> = revoked.iter().map(token).collect();
    ids.sort();
    let mut expected = owned[1..].to_vec();
    expected.sort();
    assert_eq!(ids, expected, "the token revoked before is no event");
    for e in &revoked {
        assert_eq!(e.kind, ChangeKind::Revoked, "{e:?}");
        assert_eq!(e.owner.as_deref(), Some("acme"), "{e:?}");
        assert!(e.owner_wide, "{e:?}");
        assert_eq!(e.origin, Origin::Local);
        assert_eq!(e.at.timestamp_millis() as u64, clock.now_ms());
    }
    assert_eq!(store.revoke_owner("acme").unwrap(), 0);
    assert_eq!(queued(&changes), [], "nothing changed, nothing published");

    assert_eq!(store.delete_owner("acme").unwrap(), 3);
    let deleted: Vec<ChangeEvent> = queued(&changes).into_iter().map(event).collect();
    let mut ids: Vec<TokenId> = deleted.iter().map(token).collect();
    ids.sort();
    let mut expected = owned.clone();
    expected.sort();
    assert_eq!(ids, expected);
    assert!(
        deleted.iter().all(|e| e.kind == ChangeKind::Deleted
            && e.owner.as_deref() == Some("acme")
            && e.owner_wide),
        "{deleted:?}"
    );
    assert!(
        store.get(&other.id()).is_some(),
        "another owner's token stays"
    );
    assert_eq!(store.delete_owner("acme").unwrap(), 0);
    assert_eq!(queued(&changes), []);
    store.close().unwrap();
}

/// An owner-wide revoke whose write failed holds in memory but is not durable: its events
/// come with the next write that succeeds, once, before that write's own.
#[test]
fn an_owner_wide_revoke_whose_write_failed_is_published_once_it_is_durable() {
    let s = scratch();
    let (store, _clock, plan) = faulty_store(&s.path);
    let owned: Vec<TokenId> = store
        .issue_many((0..2).map(|n| NewToken::new(format!("acme-{n}")).owner("acme")))
        .unwrap()
        .iter()
        .map(|t| t.id())
        .collect();
    let changes = store.subscribe();
    plan.fail(FaultStep::Append, EIO);
    plan.fail(FaultStep::Write, EIO);
    store.revoke_owner("acme").unwrap_err();
    store.set_meta(&owned[0], &[("plan", "pro")]).unwrap_err();
    assert_eq!(queued(&changes), []);

    plan.clear();
    let later = store.issue(NewToken::new("later")).unwrap();
    let mut got = queued_keyed(&changes);
    assert_eq!(
        got.pop(),
        Some(keyed(ChangeKind::Issued, later.id(), None, false))
    );
    let meta = keyed(ChangeKind::MetaSet, owned[0], Some("acme"), false);
    assert_eq!(got.pop(), Some(meta), "in the order they were made");
    got.sort_by_key(|e| e.1);
    let mut expected: Vec<Keyed> = owned
        .iter()
        .map(|&id| keyed(ChangeKind::Revoked, id, Some("acme"), true))
        .collect();
    expected.sort_by_key(|e| e.1);
    assert_eq!(got, expected);
    store.flush().unwrap();
    assert_eq!(queued(&changes), []);
    store.close().unwrap();
}

#[test]
fn the_retention_purge_is_published_as_purged() {
    let s = scratch();
    let (builder, clock) = common::manual_builder(&s.path);
    let store = builder.retention(Duration::from_secs(1)).open().unwrap();
    let changes = store.subscribe();
    let old = store.issue(NewToken::new("old")).unwrap();
    store.revoke(&old.id()).unwrap();
    assert_eq!(queued(&changes).len(), 2);
    // `advance` returns once the persister's timed tick (which purges) is done.
    clock.advance(INTERVAL * 2);
    assert!(store.get(&old.id()).is_none(), "purged by the tick");
    assert_eq!(queued_events(&changes), [(ChangeKind::Purged, old.id())]);
    store.close().unwrap();
}

#[test]
fn a_failed_write_publishes_nothing_for_its_change() {
    let s = scratch();
    let (store, _clock, plan) = faulty_store(&s.path);
    let kept = store.issue(NewToken::new("kept")).unwrap();
    let changes = store.subscribe();

    // A failed issue: no token, and no event, ever.
    plan.fail(FaultStep::Append, EIO);
    plan.fail(FaultStep::Write, EIO);
    store.issue(NewToken::new("never")).unwrap_err();
    assert_eq!(queued(&changes), []);

    // A failed revoke: revoked in memory (the safe side), but not durable: no event yet.
    store.revoke(&kept.id()).unwrap_err();
    assert_eq!(queued(&changes), []);

    // The next write that succeeds makes the revoke durable: its event comes then, once,
    // before the new change's; the failed issue's never does.
    plan.clear();
    let later = store.issue(NewToken::new("later")).unwrap();
    assert_eq!(
        queued_events(&changes),
        [
            (ChangeKind::Revoked, kept.id()),
            (ChangeKind::Issued, later.id())
        ]
    );
    store.flush().unwrap();
    assert_eq!(queued(&changes), []);
    store.close().unwrap();
}

#[test]
fn a_subscriber_that_never_reads_blocks_nothing_and_learns_exactly_what_it_missed() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let changes = store.subscribe_with_capacity(16).unwrap();
    // 10,000 tokens in 100 calls, none read meanwhile: every call returns.
    let mut ids = Vec::new();
    for chunk in 0..100 {
        let requests = (0..100).map(|n| NewToken::new(format!("t{chunk}-{n}")));
        ids.extend(store.issue_many(requests).unwrap().iter().map(|t| t.id()));
    }
    assert_eq!(store.list().len(), 10_000);

    // The first 16 fit; the rest were counted.
    let first: Vec<TokenId> = (0..16)
        .map(|_| token(&event(changes.try_recv().unwrap())))
        .collect();
    assert_eq!(first, ids[..16]);
    // Room again: the persister's next batch queues the count.
    store.flush().unwrap();
    assert_eq!(changes.try_recv(), Ok(Feed::Missed(10_000 - 16)));
    assert_eq!(changes.try_recv(), Err(FeedError::Empty));

    // Later events follow as usual.
    store.revoke(&ids[0]).unwrap();
    assert_eq!(queued_events(&changes), [(ChangeKind::Revoked, ids[0])]);
    store.close().unwrap();
}

#[test]
fn a_missed_count_comes_before_the_next_event_and_at_close_comes_last() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let changes = store.subscribe_with_capacity(2).unwrap();
    let three = store
        .issue_many((0..3).map(|n| NewToken::new(format!("t{n}"))))
        .unwrap();
    let first = event(changes.try_recv().unwrap());
    assert_eq!(first.id, Some(three[0].id()));
    // One slot free: the count takes it; the revoke does not fit and is counted too.
    store.revoke(&three[0].id()).unwrap();
    let second = event(changes.try_recv().unwrap());
    assert_eq!(second.id, Some(three[1].id()));
    assert_eq!(changes.try_recv(), Ok(Feed::Missed(1)));
    assert_eq!(changes.try_recv(), Err(FeedError::Empty));
    // Nothing read while the store closes: the count owed comes after the queue, last.
    store.revoke(&three[1].id()).unwrap(); // queued (Missed(1) first: 2 slots)
    store.revoke(&three[2].id()).unwrap(); // full: counted
    store.close().unwrap();
    let rest: Vec<Feed> = changes.collect();
    assert_eq!(rest.len(), 3, "{rest:?}");
    assert_eq!(rest[0], Feed::Missed(1));
    assert_eq!(event(rest[1].clone()).id, Some(three[1].id()));
    assert_eq!(rest[2], Feed::Missed(1));
}

#[test]
fn dropping_a_subscriber_leaves_the_store_and_the_others_working() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let kept = store.subscribe();
    let dropped = store.subscribe_with_capacity(1).unwrap();
    let a = store.issue(NewToken::new("a")).unwrap();
    drop(dropped);
    let b = store.issue(NewToken::new("b")).unwrap();
    store.revoke(&a.id()).unwrap();
    assert_eq!(
        queued_events(&kept),
        [
            (ChangeKind::Issued, a.id()),
            (ChangeKind::Issued, b.id()),
            (ChangeKind::Revoked, a.id())
        ]
    );
    drop(kept);
    // With no subscriber left, changes go on.
    store.delete(&b.id()).unwrap();
    store.close().unwrap();
}

#[test]
fn the_feed_ends_after_close_and_a_late_subscriber_gets_an_ended_feed() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let changes = store.subscribe();
    let reader = std::thread::spawn(move || changes.collect::<Vec<Feed>>());
    let a = store.issue(NewToken::new("a")).unwrap();
    let clone = store.clone();
    store.close().unwrap();
    let read = reader.join().unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(event(read[0].clone()).id, Some(a.id()));

    let late = clone.subscribe();
    assert_eq!(late.try_recv(), Err(FeedError::Closed));
    assert_eq!(late.recv(), None);
    assert_eq!(
        late.recv_timeout(Duration::from_secs(1)),
        Err(FeedError::Closed)
    );
}

#[test]
fn a_feed_capacity_of_zero_or_too_many_is_refused() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    for capacity in [0, tokencache::MAX_FEED_CAPACITY + 1] {
        let error = store.subscribe_with_capacity(capacity).unwrap_err();
        assert!(matches!(error, Error::InvalidRequest(_)), "{error}");
        assert!(error.to_string().contains("1 to"), "{error}");
    }
    store.close().unwrap();
}

/// Two replicas, A and B, of one fresh PostgreSQL store in this process.
#[cfg(feature = "postgres")]
fn two_replicas() -> (tokencache::TokenStore, tokencache::TokenStore) {
    let url = common::pg::fresh_db();
    let open = || {
        tokencache::TokenStore::builder(&url)
            .poll_interval(Duration::from_secs(1))
            .open()
            .expect("open the PostgreSQL store")
    };
    (open(), open())
}

/// A's events up to and including the one about `marker` (committed by B after everything
/// the test looks at: versions are read in commit order, so once A has read the marker it
/// has read its own commits back too), then whatever A published with that catch-up.
#[cfg(feature = "postgres")]
fn through_marker(a: &tokencache::TokenStore, feed: &Changes, marker: TokenId) -> Vec<ChangeEvent> {
    /// Far above what a catch-up takes; it only turns a hang into a failure.
    const HANG: Duration = Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let item = feed
            .recv_timeout(HANG)
            .expect("the marker reaches A's feed");
        let event = event(item);
        let last = event.id == Some(marker);
        seen.push(event);
        if last {
            break;
        }
    }
    // Anything A published with the marker's catch-up is queued by now.
    a.flush().unwrap();
    seen.extend(queued(feed).into_iter().map(event));
    seen
}

/// Two replicas of one PostgreSQL store in this process: B's issue and revoke reach A's
/// feed with origin `Replica`; A's own issue and revoke arrive once each, with origin
/// `Local`, and not again when A reads its own commits back from the database.
#[cfg(feature = "postgres")]
#[test]
fn a_revoke_on_another_replica_arrives_with_origin_replica_and_a_local_one_once() {
    let (a, b) = two_replicas();
    let feed = a.subscribe();
    let theirs = b.issue(NewToken::new("theirs")).unwrap();
    let mine = a.issue(NewToken::new("mine")).unwrap();
    b.revoke(&theirs.id()).unwrap();
    a.revoke(&mine.id()).unwrap();
    // Committed after all of the above: versions are read in commit order, so once A has
    // read the marker it has read its own commits back too.
    let marker = b.issue(NewToken::new("marker")).unwrap();
    let seen: Vec<_> = through_marker(&a, &feed, marker.id())
        .iter()
        .map(|event| (event.kind, token(event), event.origin))
        .collect();
    let about = |id: TokenId| -> Vec<(ChangeKind, Origin)> {
        seen.iter()
            .filter(|(_, of, _)| *of == id)
            .map(|&(kind, _, origin)| (kind, origin))
            .collect()
    };
    assert_eq!(
        about(theirs.id()),
        [
            (ChangeKind::Issued, Origin::Replica),
            (ChangeKind::Revoked, Origin::Replica)
        ],
        "{seen:?}"
    );
    assert_eq!(
        about(mine.id()),
        [
            (ChangeKind::Issued, Origin::Local),
            (ChangeKind::Revoked, Origin::Local)
        ],
        "{seen:?}"
    );
    assert_eq!(about(marker.id()), [(ChangeKind::Issued, Origin::Replica)]);
    assert_eq!(seen.len(), 5, "{seen:?}");
}

/// The keys changes across two replicas of one PostgreSQL store. A replica sees rows, not
/// calls: B's issue with an owner, `set_meta`, import and owner limit reach A's feed as
/// `Issued` (with the owner), `MetaSet`, `Imported` and `OwnerRateLimitSet` (no id), and
/// B's `revoke_owner` as one `Revoked` per token, with the owner, origin `Replica`. A's own
/// owner-wide revoke arrives once, `Local` and marked owner-wide, and A's own changes read
/// back from the database are not published again.
#[cfg(feature = "postgres")]
#[test]
fn keys_changes_on_another_replica_arrive_with_their_owner_and_origin_replica() {
    let (a, b) = two_replicas();
    let feed = a.subscribe();
    let theirs = b
        .issue(NewToken::new("theirs").owner("acme").meta("plan", "pro"))
        .unwrap();
    b.set_meta(&theirs.id(), &[("plan", "team")]).unwrap();
    // SHA-256 of "test".
    let digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let imported = b
        .import(ImportedToken::sha256(digest).unwrap().owner("acme"))
        .unwrap();
    b.set_owner_rate_limit("acme", Some(RateLimit::per_second(5)))
        .unwrap();
    assert_eq!(b.revoke_owner("acme").unwrap(), 2);
    let mine = a.issue(NewToken::new("mine").owner("globex")).unwrap();
    assert_eq!(a.revoke_owner("globex").unwrap(), 1);
    // Committed after all of the above (see the test before).
    let marker = b.issue(NewToken::new("marker")).unwrap();
    let seen = through_marker(&a, &feed, marker.id());
    let about = |id: Option<TokenId>| -> Vec<(ChangeKind, Option<&str>, bool, Origin)> {
        seen.iter()
            .filter(|e| e.id == id && e.kind != ChangeKind::OwnerRateLimitSet)
            .map(|e| (e.kind, e.owner.as_deref(), e.owner_wide, e.origin))
            .collect()
    };
    let acme = Some("acme");
    let replica = Origin::Replica;
    // One read may hold the issue and the later metadata of `theirs` together (a row is
    // its latest state): then the issue's event carries it and there is no `MetaSet`.
    let mut of_theirs = about(Some(theirs.id()));
    of_theirs.retain(|e| e.0 != ChangeKind::MetaSet);
    assert_eq!(
        of_theirs,
        [
            (ChangeKind::Issued, acme, false, replica),
            (ChangeKind::Revoked, acme, false, replica),
        ],
        "{seen:#?}"
    );
    assert_eq!(
        about(Some(imported)),
        [
            (ChangeKind::Imported, acme, false, replica),
            (ChangeKind::Revoked, acme, false, replica),
        ],
        "{seen:#?}"
    );
    let limits: Vec<&ChangeEvent> = seen
        .iter()
        .filter(|e| e.kind == ChangeKind::OwnerRateLimitSet)
        .collect();
    assert_eq!(limits.len(), 1, "{seen:#?}");
    assert_eq!(
        (limits[0].id, limits[0].owner.as_deref(), limits[0].origin),
        (None, acme, replica)
    );
    assert_eq!(
        about(Some(mine.id())),
        [
            (ChangeKind::Issued, Some("globex"), false, Origin::Local),
            (ChangeKind::Revoked, Some("globex"), true, Origin::Local),
        ],
        "{seen:#?}"
    );
    let metas = seen
        .iter()
        .filter(|e| e.kind == ChangeKind::MetaSet)
        .count();
    assert!(metas <= 1, "{seen:#?}");
    assert_eq!(seen.len(), 8 + metas, "{seen:#?}");
}

//! The async twins of the calls that change the store: the same results and errors as the
//! blocking calls, on any executor (here tokio's current-thread runtime, and futures polled
//! by hand with a counting waker), never blocking the polling thread: a future is woken by
//! the persister's reply, or by the persister taking a message when the channel was full.
//! Dropping a future after it queued its change does not cancel the change.

use crate::common;

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use common::{manual_store, scratch, Scratch};
use tokencache::{
    Clock, Error, IssuedToken, ManualClock, NewToken, RateLimit, Rejection, TokenId, TokenStore,
};

/// How long a test waits for the persister before it fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "current_thread")]
async fn every_async_call_works_on_a_current_thread_runtime() {
    let s = scratch();
    let (store, clock) = manual_store(&s.path);

    let issued = store
        .issue_async(NewToken::new("ci-bot").scopes(["read"]))
        .await
        .unwrap();
    assert!(store.validate_scope(issued.secret(), "read").is_ok());
    let many = store
        .issue_many_async([NewToken::new("a"), NewToken::new("b")])
        .await
        .unwrap();
    assert_eq!(many.len(), 2);
    assert!(store.issue_many_async([]).await.unwrap().is_empty());

    let limit = RateLimit::per_second(10);
    store
        .set_rate_limit_async(&issued.id(), Some(limit))
        .await
        .unwrap();
    assert_eq!(store.get(&issued.id()).unwrap().rate_limit, Some(limit));

    let next = store
        .rotate_async(&issued.id(), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(store.validate(next.secret()).is_ok());
    assert_eq!(store.get(&next.id()).unwrap().rate_limit, Some(limit));

    store.revoke_async(&issued.id()).await.unwrap();
    assert_eq!(
        store.validate(issued.secret()).unwrap_err(),
        Rejection::Revoked
    );
    store.delete_async(&many[0].id()).await.unwrap();
    assert_eq!(
        store.validate(many[0].secret()).unwrap_err(),
        Rejection::Unknown
    );
    store.revoke_async(&many[1].id()).await.unwrap();
    clock.advance(Duration::from_secs(10));
    assert_eq!(store.purge_async(Duration::ZERO).await.unwrap(), 2);
    assert!(store.get(&issued.id()).is_none());

    assert!(store.validate(next.secret()).is_ok()); // a `last_used` for the flush to write
    let written = store.stats().journal_records_written;
    store.flush_async().await.unwrap();
    assert_eq!(store.stats().journal_records_written, written + 1);
    store.close_async().await.unwrap();

    // Everything above is on disk, and the close released the lock.
    let reopened = TokenStore::open(&s.path).unwrap();
    let ids: Vec<TokenId> = reopened.list().iter().map(|t| t.id).collect();
    assert_eq!(ids, [next.id()]);
    let info = reopened.get(&next.id()).unwrap();
    assert_eq!(info.rate_limit, Some(limit));
    assert!(info.last_used.is_some());
    reopened.close().unwrap();
}

#[test]
fn an_async_revoke_is_pending_until_the_persister_replies_and_its_reply_wakes_it() {
    let (_s, store, hold, issued, waker) = held();
    hold.hold();

    {
        let mut revoke = pin!(store.revoke_async(&issued.id()));
        // Queued for the persister, which is held: the poll returns at once.
        assert!(waker.poll(revoke.as_mut()).is_pending());
        hold.until_persister_waits();
        thread::sleep(Duration::from_millis(50));
        assert_eq!(waker.wakes(), 0, "woken before the persister replied");
        assert!(waker.poll(revoke.as_mut()).is_pending());
        assert!(store.get(&issued.id()).unwrap().revoked_at.is_none());

        hold.release();
        waker.until_woken(1);
        // The reply came once the revoke was durable, and the poll after it is ready.
        assert!(store.get(&issued.id()).unwrap().revoked_at.is_some());
        assert!(matches!(waker.poll(revoke.as_mut()), Poll::Ready(Ok(()))));
        assert_eq!(waker.wakes(), 1, "woken more than once");
    }
    store.close().unwrap();
}

#[test]
fn an_async_call_that_finds_the_channel_full_waits_for_room_without_blocking() {
    let s = scratch();
    let (builder, hold) = held_builder(&s.path);
    let store = builder.channel_capacity(1).open().unwrap();
    let used = store.issue(NewToken::new("used")).unwrap();
    let doomed = store.issue(NewToken::new("doomed")).unwrap();
    let waker = Counter::new();
    hold.hold();

    thread::scope(|scope| {
        // The persister takes this flush and is held; a validation's dirty id then fills the
        // one-message channel.
        let flushing = scope.spawn(|| store.flush());
        hold.until_persister_waits();
        let sent = store.stats().dirty_sends;
        assert!(store.validate(used.secret()).is_ok());
        assert_eq!(store.stats().dirty_sends, sent + 1);

        let mut revoke = pin!(store.revoke_async(&doomed.id()));
        assert!(waker.poll(revoke.as_mut()).is_pending());
        thread::sleep(Duration::from_millis(50));
        assert_eq!(waker.wakes(), 0, "woken while the channel was full");

        hold.release();
        // Woken when the persister takes the dirty id, then by the revoke's reply.
        let result = waker.until_ready(revoke.as_mut());
        assert!(matches!(result, Ok(())));
        assert!(waker.wakes() >= 2);
        flushing.join().unwrap().unwrap();
    });
    assert_eq!(
        store.validate(doomed.secret()).unwrap_err(),
        Rejection::Revoked
    );
    store.close().unwrap();
}

#[test]
fn dropping_a_queued_async_revoke_still_revokes() {
    let (s, store, hold, issued, waker) = held();
    hold.hold();

    let mut revoke = Box::pin(store.revoke_async(&issued.id()));
    assert!(waker.poll(revoke.as_mut()).is_pending());
    drop(revoke);
    hold.release();
    store.flush().unwrap();

    assert_eq!(
        store.validate(issued.secret()).unwrap_err(),
        Rejection::Revoked
    );
    store.close().unwrap();
    let reopened = TokenStore::open(&s.path).unwrap();
    assert!(reopened.get(&issued.id()).unwrap().revoked_at.is_some());
    reopened.close().unwrap();
}

#[test]
fn dropping_an_async_revoke_before_its_first_poll_queues_nothing() {
    let (_s, store, issued) = store_with_token();
    drop(store.revoke_async(&issued.id()));
    store.flush().unwrap();
    assert!(store.validate(issued.secret()).is_ok());
    store.close().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn async_calls_on_an_unknown_id_say_unknown_id() {
    let (_s, store, issued) = store_with_token();
    store.delete(&issued.id()).unwrap();
    let id = issued.id();
    let unknown = |result: Result<(), Error>| matches!(result, Err(Error::UnknownId(i)) if i == id);

    assert!(unknown(store.revoke_async(&id).await));
    assert!(unknown(store.delete_async(&id).await));
    let limit = Some(RateLimit::per_second(1));
    assert!(unknown(store.set_rate_limit_async(&id, limit).await));
    let rotated = store.rotate_async(&id, Duration::ZERO).await;
    assert!(unknown(rotated.map(drop)));
    store.close_async().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn async_calls_refuse_bad_input_as_the_blocking_calls_do() {
    let (_s, store, issued) = store_with_token();
    let nameless = store.issue_async(NewToken::new(" ")).await;
    assert!(matches!(nameless, Err(Error::InvalidRequest(_))));
    let broken = RateLimit::per_second(0);
    let limited = store.set_rate_limit_async(&issued.id(), Some(broken)).await;
    assert!(matches!(limited, Err(Error::InvalidRateLimit(_))));
    store.revoke(&issued.id()).unwrap();
    let rotated = store.rotate_async(&issued.id(), Duration::ZERO).await;
    assert!(matches!(rotated, Err(Error::InvalidRequest(_))));
    store.close_async().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn async_calls_after_close_say_closed() {
    let (_s, store, issued) = store_with_token();
    let other = store.clone();
    store.close_async().await.unwrap();

    let id = issued.id();
    let closed = |result: Result<(), Error>| matches!(result, Err(Error::Closed { .. }));
    assert!(closed(
        other.issue_async(NewToken::new("late")).await.map(drop)
    ));
    assert!(closed(other.revoke_async(&id).await));
    assert!(closed(other.delete_async(&id).await));
    assert!(closed(other.purge_async(Duration::ZERO).await.map(drop)));
    assert!(closed(
        other.rotate_async(&id, Duration::ZERO).await.map(drop)
    ));
    assert!(closed(other.set_rate_limit_async(&id, None).await));
    assert!(closed(other.flush_async().await));
    // A second close reports the outcome of the one that ran.
    other.clone().close_async().await.unwrap();
    other.close().unwrap();
}

#[test]
fn close_async_waits_for_a_close_under_way_without_blocking() {
    let (_s, store, hold, issued, waker) = held();
    hold.hold();
    thread::scope(|scope| {
        let closing = store.clone();
        let first = scope.spawn(move || closing.close());
        hold.until_persister_waits();
        let mut second = pin!(store.clone().close_async());
        assert!(waker.poll(second.as_mut()).is_pending());
        assert_eq!(waker.wakes(), 0);
        hold.release();
        assert!(waker.until_ready(second.as_mut()).is_ok());
        first.join().unwrap().unwrap();
    });
    assert!(matches!(
        store.revoke(&issued.id()),
        Err(Error::Closed { .. })
    ));
}

#[test]
fn a_close_async_dropped_midway_finishes_the_close() {
    let (s, store, hold, issued, waker) = held();
    assert!(store.validate(issued.secret()).is_ok()); // a `last_used` for the final write
    hold.hold();

    let mut close = Box::pin(store.clone().close_async());
    assert!(waker.poll(close.as_mut()).is_pending());
    thread::scope(|scope| {
        scope.spawn(|| {
            thread::sleep(Duration::from_millis(50));
            hold.release();
        });
        drop(close); // finishes the close here, waiting for the final write
    });

    assert!(matches!(store.flush(), Err(Error::Closed { .. })));
    assert!(store.clone().close().is_ok());
    // The lock is released and the final write holds the validation.
    let reopened = TokenStore::open(&s.path).unwrap();
    assert!(reopened.get(&issued.id()).unwrap().last_used.is_some());
    reopened.close().unwrap();
}

#[test]
fn the_async_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let (_s, store, issued) = store_with_token();
    let id = issued.id();
    send(&store.issue_async(NewToken::new("x")));
    send(&store.issue_many_async(vec![NewToken::new("x")]));
    send(&store.revoke_async(&id));
    send(&store.delete_async(&id));
    send(&store.purge_async(Duration::ZERO));
    send(&store.rotate_async(&id, Duration::ZERO));
    send(&store.set_rate_limit_async(&id, None));
    send(&store.flush_async());
    send(&store.clone().close_async());
}

// ---- helpers ----------------------------------------------------------------------------

/// A manual clock whose persister thread, while held, waits at its next reading (the start
/// of its next batch): the test decides when the persister answers.
#[derive(Debug, Clone, Default)]
struct Hold {
    clock: ManualClock,
    state: Arc<(Mutex<HoldState>, Condvar)>,
}

#[derive(Debug, Default)]
struct HoldState {
    held: bool,
    /// The persister is waiting in `now_ms`.
    waiting: bool,
}

impl Clock for Hold {
    fn now_ms(&self) -> u64 {
        if thread::current().name() == Some("tokencache-persister") {
            let (state, changed) = &*self.state;
            let mut state = state.lock().unwrap();
            while state.held {
                state.waiting = true;
                changed.notify_all();
                state = changed.wait(state).unwrap();
            }
            state.waiting = false;
        }
        self.clock.now_ms()
    }
}

impl Hold {
    fn hold(&self) {
        self.state.0.lock().unwrap().held = true;
    }

    fn release(&self) {
        self.state.0.lock().unwrap().held = false;
        self.state.1.notify_all();
    }

    /// Waits until the persister has taken a batch and waits to handle it.
    fn until_persister_waits(&self) {
        let (state, changed) = &*self.state;
        let state = state.lock().unwrap();
        let (state, timeout) = changed
            .wait_timeout_while(state, PATIENCE, |s| !s.waiting)
            .unwrap();
        assert!(
            !timeout.timed_out() && state.waiting,
            "the persister never waited"
        );
    }
}

fn held_builder(path: &std::path::Path) -> (tokencache::Builder, Hold) {
    let hold = Hold::default();
    let builder = TokenStore::builder(path)
        .clock(hold.clone())
        .flush_interval(common::INTERVAL);
    (builder, hold)
}

/// A store on a manual clock holding one token.
fn store_with_token() -> (Scratch, TokenStore, IssuedToken) {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let issued = store.issue(NewToken::new("svc")).unwrap();
    (s, store, issued)
}

/// A store on a [`Hold`] clock holding one token, and a counting waker.
fn held() -> (Scratch, TokenStore, Hold, IssuedToken, Counter) {
    let s = scratch();
    let (builder, hold) = held_builder(&s.path);
    let store = builder.open().unwrap();
    let issued = store.issue(NewToken::new("svc")).unwrap();
    (s, store, hold, issued, Counter::new())
}

/// A waker that counts its wakes and unparks the test thread.
struct CountingWaker {
    wakes: AtomicUsize,
    test: thread::Thread,
}

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, SeqCst);
        self.test.unpark();
    }
}

/// The counting waker, as a test holds it.
struct Counter(Arc<CountingWaker>);

impl Counter {
    /// A counter whose wakes unpark the calling (test) thread.
    fn new() -> Counter {
        Counter(Arc::new(CountingWaker {
            wakes: AtomicUsize::new(0),
            test: thread::current(),
        }))
    }

    fn wakes(&self) -> usize {
        self.0.wakes.load(SeqCst)
    }

    /// Polls `future` once with this waker; fails the test if the poll itself takes long
    /// (it must never block).
    fn poll<F: Future>(&self, future: Pin<&mut F>) -> Poll<F::Output> {
        let waker = Waker::from(self.0.clone());
        let started = Instant::now();
        let polled = future.poll(&mut Context::from_waker(&waker));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a poll blocked for {:?}",
            started.elapsed()
        );
        polled
    }

    /// Parks this thread (it polls nothing meanwhile) until the waker was woken `n` times.
    fn until_woken(&self, n: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.wakes() < n {
            assert!(Instant::now() < deadline, "never woken");
            thread::park_timeout(Duration::from_millis(100));
        }
    }

    /// Polls `future` each time it wakes its waker, until it is ready.
    fn until_ready<F: Future>(&self, mut future: Pin<&mut F>) -> F::Output {
        loop {
            let seen = self.wakes();
            if let Poll::Ready(output) = self.poll(future.as_mut()) {
                return output;
            }
            self.until_woken(seen + 1);
        }
    }
}

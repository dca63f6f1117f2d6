//! A PostgreSQL replica's metrics and spans: `tokencache_replica_lag_seconds` on the
//! store's clock, `tokencache_replica_reconnects_total`, and the `catch_up` and `reconnect`
//! spans.

use std::time::{Duration, Instant};

use tokencache::{ManualClock, NewToken, TokenStore};

use crate::metrics::read;
use crate::traces::{capture, spans};
use crate::{one_at_a_time, pg};

/// Far above what a replica takes to see a change; it only turns a hang into a failure.
const HANG: Duration = Duration::from_secs(30);

/// Polls `check` until it holds, failing after [`HANG`].
fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < HANG, "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issue 20: a replica publishes its lag (the time since its last catch-up, on the store's
/// clock), counts the listener's reconnections, and leaves a `catch_up` span per catch-up
/// (with the rows it read) and a `reconnect` span per reconnection.
#[test]
fn replica_lag_reconnects_and_catch_up_spans_are_published() {
    let _turn = one_at_a_time();
    capture();
    let url = pg::fresh_db();
    let writer = TokenStore::open(&url).unwrap();
    let clock = ManualClock::default();
    // No poll while the test looks: only a notification or a reconnection catches up.
    let replica = TokenStore::builder(&url)
        .clock(clock.clone())
        .poll_interval(Duration::from_secs(3600))
        .open()
        .unwrap();
    let issued = writer.issue(NewToken::new("from the writer")).unwrap();
    wait_for("the replica reads the writer's token", || {
        replica.get(&issued.id()).is_some()
    });
    // Only the replica publishes from here on (a gauge is the process's: each store sets it).
    writer.close().unwrap();
    let caught_up = spans("catch_up");
    assert!(
        caught_up.iter().any(|s| s.field("records") == Some("1")),
        "{caught_up:#?}"
    );
    assert!(caught_up.iter().all(|s| s.field("duration").is_some()));

    replica.flush().unwrap();
    assert_eq!(read().gauge("tokencache_replica_lag_seconds"), Some(0.0));
    clock.advance(Duration::from_secs(10));
    replica.flush().unwrap();
    assert_eq!(read().gauge("tokencache_replica_lag_seconds"), Some(10.0));

    let reconnects = "tokencache_replica_reconnects_total";
    let before = read().counter(reconnects, &[]);
    let mut admin = pg::connect(&url);
    let ended = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'tokencache-listener' AND datname = current_database()",
            &[],
        )
        .unwrap()
        .len() as u64;
    assert_eq!(ended, 1, "the replica's listener");
    wait_for("the listener reconnects", || {
        read().counter(reconnects, &[]) == before + ended
    });
    assert_eq!(spans("reconnect").len() as u64, ended);
    // The reconnection caught up at the replica's clock's time: no lag.
    replica.flush().unwrap();
    assert_eq!(read().gauge("tokencache_replica_lag_seconds"), Some(0.0));
    replica.close().unwrap();
}

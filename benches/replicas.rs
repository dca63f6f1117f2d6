//! Propagation between replicas of a PostgreSQL store, on loopback:
//!
//! - `revoke`: 1,000 revokes on replica A; for each, the time from calling `revoke` on A
//!   until a validation on replica B (another `TokenStore` on its own connections, polled
//!   in a tight loop) says `Revoked`. Reports p50, p99 and max (target: p99 <= 100 ms).
//! - `revoke_listener_killed`: 20 revokes, each made right after B's LISTEN connection is
//!   killed (`pg_terminate_backend`): the time until B rejects (target: within B's poll
//!   interval plus a reconnect).
//!
//! Starts a throwaway cluster (as `tests/pg.rs` does: Debian's `postgresql` binaries, run as
//! the `postgres` user when root), with `fsync=on` as in production (the tests run theirs
//! with it off), or uses `TOKENCACHE_PG_URL`. Each revoke's time includes its COMMIT.
//!
//! `cargo bench --features postgres --bench replicas`

#[path = "../tests/common/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::time::{Duration, Instant};

use tokencache::{NewToken, Rejection, TokenStore};

const REVOKES: usize = 1_000;
const KILLED: usize = 20;
const POLL: Duration = Duration::from_millis(500);

fn open(url: &str) -> TokenStore {
    TokenStore::builder(url)
        .poll_interval(POLL)
        .open()
        .expect("open the PostgreSQL store")
}

/// How long until `secret` is revoked on `b`, polling without sleeping.
fn until_revoked(b: &TokenStore, secret: &str, start: Instant) -> Duration {
    loop {
        if b.validate(secret).err() == Some(Rejection::Revoked) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never revoked on B"
        );
        std::hint::spin_loop();
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn report(what: &str, mut took: Vec<Duration>) {
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{what}: {} revokes, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        took.len(),
        ms(quantile(&took, 0.5)),
        ms(quantile(&took, 0.99)),
        ms(*took.last().unwrap())
    );
}

fn main() {
    // Commits flushed to disk, as in production (see `pg::Cluster::start_again`).
    std::env::set_var("TOKENCACHE_PG_FSYNC", "on");
    let url = pg::fresh_db();
    let a = open(&url);
    let b = open(&url);
    let issued = a
        .issue_many((0..REVOKES + KILLED).map(|i| NewToken::new(format!("t{i}"))))
        .unwrap();
    let last = issued.last().unwrap().secret().to_owned();
    let start = Instant::now();
    while b.validate(&last).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "B never caught up"
        );
        std::thread::sleep(Duration::from_millis(1));
    }

    let took = issued[..REVOKES]
        .iter()
        .map(|token| {
            let start = Instant::now();
            a.revoke(&token.id()).unwrap();
            until_revoked(&b, token.secret(), start)
        })
        .collect();
    report("revoke A -> rejected on B", took);

    let mut admin = pg::connect(&url);
    let took = issued[REVOKES..]
        .iter()
        .map(|token| {
            admin
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = 'tokencache-listener' AND datname = current_database()",
                    &[],
                )
                .unwrap();
            let start = Instant::now();
            a.revoke(&token.id()).unwrap();
            until_revoked(&b, token.secret(), start)
        })
        .collect();
    report(
        &format!("revoke with both LISTEN connections just killed (poll {POLL:?})"),
        took,
    );
    drop((a, b));
}

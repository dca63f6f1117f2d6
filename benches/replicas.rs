//! Propagation between replicas of a PostgreSQL store, on loopback:
//!
//! - `revoke`: 1,000 revokes on replica A; for each, the time from calling `revoke` on A
//!   until a validation on replica B (another `TokenStore` on its own connections, polled
//!   in a tight loop) says `Revoked`. Reports p50, p99 and max (target: p99 <= 100 ms).
//! - `revoke_listener_killed`: 20 revokes, each made right after B's LISTEN connection is
//!   killed (`pg_terminate_backend`): the time until B rejects (target: within B's poll
//!   interval plus a reconnect).
//!
//! - `validate`: the hot path on a PostgreSQL store against a file store of the same 10,000
//!   tokens, in one process, taking turns (10 rounds of 1M validations of each, cycling
//!   1,024 tokens): the median of the per-round ratios. Validation reads memory only, so
//!   the target is 1x.
//!
//! Starts a throwaway cluster (as `tests/it/pg.rs` does: Debian's `postgresql` binaries, run as
//! the `postgres` user when root), with `fsync=on` as in production (the tests run theirs
//! with it off), or uses `TOKENCACHE_PG_URL`. Each revoke's time includes its COMMIT.
//!
//! `cargo bench --features postgres --bench replicas`

// The one test helper a bench includes: the same throwaway cluster as the tests.
#[path = "../tests/it/common/pg.rs"]
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

/// Nanoseconds per validation of `secrets` (cycled) on `store`, over `n` validations.
fn validate_ns(store: &TokenStore, secrets: &[String], n: usize) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        let ok = store.validate(&secrets[i % secrets.len()]).is_ok();
        std::hint::black_box(ok);
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

/// The hot path on a database store against a file store, taking turns.
fn compare_validate(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = TokenStore::builder(dir.path().join("tokens.snap"))
        .flush_interval(Duration::from_secs(86_400))
        .open()
        .unwrap();
    let db = TokenStore::builder(url)
        .flush_interval(Duration::from_secs(86_400))
        .open()
        .unwrap();
    let secrets = |store: &TokenStore| -> Vec<String> {
        let issued = store
            .issue_many((0..10_000).map(|i| NewToken::new(format!("v{i}"))))
            .unwrap();
        issued
            .iter()
            .step_by(10)
            .map(|t| t.secret().to_owned())
            .collect()
    };
    let (on_file, on_db) = (secrets(&file), secrets(&db));
    let mut ratios = Vec::new();
    let (mut file_ns, mut db_ns) = (Vec::new(), Vec::new());
    for round in 0..10 {
        let (f, d) = if round % 2 == 0 {
            let f = validate_ns(&file, &on_file, 1_000_000);
            (f, validate_ns(&db, &on_db, 1_000_000))
        } else {
            let d = validate_ns(&db, &on_db, 1_000_000);
            (validate_ns(&file, &on_file, 1_000_000), d)
        };
        ratios.push(d / f);
        file_ns.push(f);
        db_ns.push(d);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    println!(
        "validate: file store {:.1} ns, PostgreSQL store {:.1} ns (medians of 10 rounds); PostgreSQL over file {:.3}x (median round)",
        median(file_ns),
        median(db_ns),
        median(ratios)
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

    compare_validate(&pg::fresh_db());
}

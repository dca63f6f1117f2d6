//! The store's costs, each next to the baseline that bounds it, in one run:
//!
//! - `validate/{hit,miss,malformed}/{100k,1M}`: the hot path on a store of that size; a hit
//!   cycles through 1,024 tokens spread over the store (so caches are not all warm).
//! - `validate/floor/{100k,1M}`: SHA-256 of a token plus one probe of a plain hash map
//!   (std `HashMap`, the same seeded foldhash as the store), the least any digest-keyed
//!   store can do; `validate/hit` is compared to it.
//! - `hot_token/{same,distinct}/{1,2}`: validations per second from 1 and 2 threads, all on
//!   one token (`same`) or one token per thread (`distinct`).
//! - `clock/*`: `SystemTime::now` against `SystemClock`'s word.
//! - `snapshot/{100k,1M}`: one dirty token, then `flush` (a full snapshot, fsync, rename).
//! - `open/1M`: open a 1M-token store (closing it is not timed).
//! - `issue/{1,8}_callers`: `issue` from 1 and from 8 concurrent callers (group commit).
//!
//! `cargo bench --bench store` (about 5 minutes); one group: `cargo bench --bench store -- hot_token`.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokencache::{IssuedToken, NewToken, Rejection, TokenStore};

const SIZES: [(usize, &str); 2] = [(100_000, "100k"), (1_000_000, "1M")];
/// How many tokens a `hit` cycles through.
const HIT_SET: usize = 1024;

/// A store of `count` tokens (issued in one durable write) and every secret.
fn filled_store(dir: &Path, count: usize) -> (TokenStore, Vec<IssuedToken>) {
    let store = TokenStore::open(dir.join("tokens.snap")).expect("open store");
    let issued = store
        .issue_many((0..count).map(|i| NewToken::new(format!("token-{i}")).scope("read")))
        .expect("issue tokens");
    (store, issued)
}

/// `HIT_SET` secrets evenly spread over `issued`.
fn spread(issued: &[IssuedToken]) -> Vec<String> {
    let step = (issued.len() / HIT_SET).max(1);
    issued
        .iter()
        .step_by(step)
        .take(HIT_SET)
        .map(|t| t.secret().to_owned())
        .collect()
}

fn validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate");
    for (count, label) in SIZES {
        let dir = TempDir::new().expect("temp dir");
        let (store, issued) = filled_store(dir.path(), count);
        let hits = spread(&issued);
        // A well-formed token (right shape and checksum) that this store never issued.
        let other = TempDir::new().expect("temp dir");
        let stranger = TokenStore::open(other.path().join("other.snap"))
            .and_then(|s| s.issue(NewToken::new("stranger")))
            .expect("issue elsewhere");
        assert_eq!(
            store.validate(stranger.secret()).err(),
            Some(Rejection::Unknown)
        );

        let mut next = 0;
        group.bench_function(BenchmarkId::new("hit", label), |b| {
            b.iter(|| {
                next = (next + 1) % hits.len();
                store.validate(black_box(&hits[next])).is_ok()
            })
        });
        group.bench_function(BenchmarkId::new("miss", label), |b| {
            b.iter(|| store.validate(black_box(stranger.secret())).is_err())
        });
        group.bench_function(BenchmarkId::new("malformed", label), |b| {
            b.iter(|| store.validate(black_box("tc_this-is-not-a-token")).is_err())
        });

        // The floor: a map from digest to a small record, as large as the store.
        let mut floor: HashMap<[u8; 32], u64, foldhash::fast::RandomState> =
            HashMap::with_capacity_and_hasher(count, Default::default());
        for (i, token) in issued.iter().enumerate() {
            floor.insert(Sha256::digest(token.secret().as_bytes()).into(), i as u64);
        }
        drop(issued);
        group.bench_function(BenchmarkId::new("floor", label), |b| {
            b.iter(|| {
                next = (next + 1) % hits.len();
                let digest: [u8; 32] = Sha256::digest(black_box(&hits[next]).as_bytes()).into();
                floor.get(&digest).copied()
            })
        });
        store.close().expect("close");
    }
    group.finish();
}

/// Runs `work(i, iters)` on threads `i = 0..threads` at once; the wall time until all end.
fn in_parallel(threads: usize, iters: u64, work: impl Fn(usize, u64) + Sync) -> Duration {
    let start = Barrier::new(threads + 1);
    thread::scope(|s| {
        for i in 0..threads {
            let (start, work) = (&start, &work);
            s.spawn(move || {
                start.wait();
                work(i, iters);
            });
        }
        start.wait();
        // The scope joins every thread before it returns.
        Instant::now()
    })
    .elapsed()
}

fn validations(store: &TokenStore, token: &str, n: u64) {
    for _ in 0..n {
        assert!(store.validate(black_box(token)).is_ok());
    }
}

fn hot_token(c: &mut Criterion) {
    let dir = TempDir::new().expect("temp dir");
    let (store, issued) = filled_store(dir.path(), 100_000);
    let mut group = c.benchmark_group("hot_token");
    for threads in [1usize, 2] {
        group.throughput(Throughput::Elements(threads as u64));
        let same: Vec<&str> = vec![issued[0].secret(); threads];
        group.bench_function(BenchmarkId::new("same", threads), |b| {
            b.iter_custom(|iters| {
                in_parallel(threads, iters, |i, n| validations(&store, same[i], n))
            })
        });
        let distinct: Vec<&str> = issued[..threads].iter().map(|t| t.secret()).collect();
        group.bench_function(BenchmarkId::new("distinct", threads), |b| {
            b.iter_custom(|iters| {
                in_parallel(threads, iters, |i, n| validations(&store, distinct[i], n))
            })
        });
    }
    group.finish();
    store.close().expect("close");
}

/// What `validate`'s clock read costs: `SystemTime::now` against `SystemClock` (one load of
/// the word its thread refreshes every millisecond; a store is open, so the thread runs).
fn clock(c: &mut Criterion) {
    use tokencache::{Clock, SystemClock};
    let dir = TempDir::new().expect("temp dir");
    let store = TokenStore::open(dir.path().join("tokens.snap")).expect("open store");
    let mut group = c.benchmark_group("clock");
    group.bench_function("system_time_now", |b| {
        b.iter(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        })
    });
    group.bench_function("system_clock_word", |b| b.iter(|| SystemClock.now_ms()));
    group.finish();
    store.close().expect("close");
}

fn snapshot(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot");
    group.sample_size(10);
    for (count, label) in SIZES {
        let dir = TempDir::new().expect("temp dir");
        let (store, issued) = filled_store(dir.path(), count);
        let token = issued[0].secret();
        group.bench_function(label, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // `last_used` has millisecond resolution: wait for a new millisecond so
                    // the validation really dirties the token and `flush` really writes.
                    thread::sleep(Duration::from_millis(2));
                    let began = Instant::now();
                    assert!(store.validate(token).is_ok());
                    store.flush().expect("flush");
                    total += began.elapsed();
                }
                total
            })
        });
        let written = store.stats().snapshots_written;
        store.close().expect("close");
        assert!(
            written > 1,
            "flush wrote no snapshot; the bench measured nothing"
        );
    }
    group.finish();
}

fn open(c: &mut Criterion) {
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("tokens.snap");
    let (store, _) = filled_store(dir.path(), 1_000_000);
    store.close().expect("close");
    let mut group = c.benchmark_group("open");
    group.sample_size(10);
    group.bench_function("1M", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let began = Instant::now();
                let store = TokenStore::open(&path).expect("open");
                total += began.elapsed();
                // Checking and closing (freeing a million entries) are not part of `open`.
                assert_eq!(store.stats().tokens, 1_000_000);
                store.close().expect("close");
            }
            total
        })
    });
    group.finish();
}

fn issue(c: &mut Criterion) {
    let mut group = c.benchmark_group("issue");
    group.sample_size(10);
    for callers in [1usize, 8] {
        // A fresh 1,000-token store each time, so both runs write snapshots of similar size.
        let dir = TempDir::new().expect("temp dir");
        let (store, _) = filled_store(dir.path(), 1_000);
        group.throughput(Throughput::Elements(callers as u64));
        group.bench_function(format!("{callers}_callers"), |b| {
            b.iter_custom(|iters| {
                in_parallel(callers, iters, |_, n| {
                    for _ in 0..n {
                        store.issue(NewToken::new("bench")).expect("issue");
                    }
                })
            })
        });
        store.close().expect("close");
    }
    group.finish();
}

criterion_group!(benches, validate, hot_token, clock, snapshot, open, issue);
criterion_main!(benches);

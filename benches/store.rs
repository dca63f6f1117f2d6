//! The store's costs, each next to the baseline that bounds it, in one run:
//!
//! - `validate/{hit,miss,malformed}/{100k,1M}`: the hot path on a store of that size; a hit
//!   cycles through 1,024 tokens spread over the store (so caches are not all warm).
//! - `validate/floor/{100k,1M}`: SHA-256 of a token plus one probe of a plain hash map
//!   (std `HashMap`, the same seeded foldhash as the store), the least any digest-keyed
//!   store can do; `validate/hit` is compared to it.
//! - `keys/{plain,owner,owner_limit,meta,imported,credits}`: on one store of 100,000 plain tokens
//!   plus 1,024 of each kind, a hit cycling through 1,024 tokens of that kind: without
//!   owner or metadata; with an owner (no limit); with an owner holding a shared limit
//!   (each its own owner, so no quota runs out); plain, reading `meta("plan")` of a token
//!   with three pairs; an imported key (a string not in our format, found by digest); a
//!   token with credits (each validation spends one).
//! - `hot_token/{same,same_credits,distinct}/{1,2}`: validations per second from 1 and 2
//!   threads, all on one token (`same`), all on one token with credits (`same_credits`:
//!   every validation a compare-exchange on its credits word), or one token per thread
//!   (`distinct`).
//! - `clock/*`: `SystemTime::now` against `SystemClock`'s word.
//! - `flush/{100k,1M}`: one token used, then `flush`: a scan of every token for unsaved
//!   `last_used` and one journal record (write, fdatasync).
//! - `compaction/{100k,1M}`: `close` after one token was used: a full snapshot (encode,
//!   write, fsync, rename) and a fresh journal. Opening the store again is not timed.
//! - `open/1M`: open a compacted 1M-token store (closing it is not timed).
//! - `open_journal/{records_100k,compacted}`: open a 1M-token snapshot plus 100,000
//!   journal records (50,000 issues alternating with 50,000 revokes, one durable call and
//!   so one record each), against the same store compacted (1,050,000 tokens, no records).
//!   Both fixtures live on `/dev/shm` (built there: 100,000 fsyncs), both opens read from
//!   it; the uncompacted copy is restored before each open, untimed.
//! - `open_torn/18MB`: open a store whose journal ends in an 18 MB torn record (an
//!   `issue_many` of 250,000 tokens at the manual clock's start, cut one byte short, as a
//!   crash leaves it): the check
//!   that nothing valid follows the cut, and setting the tail aside. On `/dev/shm`; the
//!   torn journal is restored before each open, untimed.
//! - `issue/{1,8}_callers/1k`: issues per second from 1 and from 8 concurrent callers (group
//!   commit: waiting callers share one record and one fdatasync).
//! - `issue/1_callers/1M`: one caller issuing into a 1M-token store, against `1_callers/1k`.
//!
//! The ratios that the targets name are printed after their group, from the compared cases
//! taking turns in rounds (`take_turns`), since the disk drifts between one criterion bench
//! and the next: `issue` prints 1M over 1k and 8 callers over 1, with per-call percentiles
//! and issues per journal record; `open_journal` prints records over compacted. Each is the
//! median of the rounds' ratios, with their quartiles.
//!
//! Every store here is opened with a flush interval of a day and a compaction floor of
//! `u64::MAX`, so no timed write, journal size check or compaction runs while a bench
//! measures: the stores write only what a bench asks for, and `close` compacts. The
//! benches check that.
//! Stores live in the default temp dir (the real disk, since fsync is the cost), except
//! `open_journal`'s.
//!
//! The groups from `flush` on build their stores inside the bench on first call, so a bench
//! that the command line filters out builds nothing.
//!
//! `cargo bench --bench store` (about 8 minutes); one group: `cargo bench --bench store -- hot_token`.
//! `TOKENCACHE_BENCH_USAGE_DAYS=0 cargo bench --bench store -- validate`: the same stores
//! without usage counting (`Builder::usage_days(0)`).
//! `TOKENCACHE_BENCH_RECORDER=1 cargo bench --features metrics --bench store -- validate`:
//! the same with a metrics recorder installed.

use std::cell::{Cell, OnceCell};
use std::collections::HashMap;
use std::fs;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokencache::{
    Builder, Credits, ImportedToken, IssuedToken, NewToken, RateLimit, Rejection, TokenId,
    TokenStore, MAX_CREDITS,
};

const SIZES: [(usize, &str); 2] = [(100_000, "100k"), (1_000_000, "1M")];
/// How many tokens a `hit` cycles through.
const HIT_SET: usize = 1024;

/// A flush interval no bench reaches: no timed write, retention pass or journal size check
/// runs while a bench measures.
const NEVER: Duration = Duration::from_secs(24 * 3600);

/// The store file in `dir`; its journal is beside it.
const STORE: &str = "tokens.snap";
const JOURNAL: &str = "tokens.snap.journal";

/// The store in `dir`, quiet: it writes only when asked (an issue, a flush, close), and
/// compacts only on close.
fn quiet(dir: &Path) -> Builder {
    TokenStore::builder(dir.join(STORE))
        .flush_interval(NEVER)
        .compaction_floor(u64::MAX)
        .usage_days(usage_days())
}

/// `TOKENCACHE_BENCH_USAGE_DAYS` (default 30, the store's default; 0: no counting), to
/// measure what counting costs against the same build without it.
fn usage_days() -> u32 {
    std::env::var("TOKENCACHE_BENCH_USAGE_DAYS")
        .ok()
        .and_then(|days| days.parse().ok())
        .unwrap_or(30)
}

/// A quiet store of `count` tokens (issued in one journal record) and every secret.
fn filled_store(dir: &Path, count: usize) -> (TokenStore, Vec<IssuedToken>) {
    let store = quiet(dir).open().expect("open store");
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

/// What keys as a product cost a validation (see the top of this file).
fn keys(c: &mut Criterion) {
    let dir = TempDir::new().expect("temp dir");
    let (store, _plain) = filled_store(dir.path(), 100_000);
    let kind = |f: &dyn Fn(usize) -> NewToken| {
        let issued = store.issue_many((0..HIT_SET).map(f)).expect("issue tokens");
        issued
            .iter()
            .map(|t| t.secret().to_owned())
            .collect::<Vec<_>>()
    };
    let plain = kind(&|i| NewToken::new(format!("plain-{i}")).scope("read"));
    let owned = kind(&|i| NewToken::new(format!("owned-{i}")).owner(format!("o-{}", i % 64)));
    let limited = kind(&|i| NewToken::new(format!("limited-{i}")).owner(format!("lim-{i}")));
    let metered =
        kind(&|i| NewToken::new(format!("metered-{i}")).credits(Credits::new(MAX_CREDITS)));
    for i in 0..HIT_SET {
        let limit = RateLimit::per_second(1_000_000);
        store
            .set_owner_rate_limit(&format!("lim-{i}"), Some(limit))
            .expect("owner limit");
    }
    let meta = kind(&|i| {
        NewToken::new(format!("meta-{i}"))
            .meta("tenant", format!("t-{i}"))
            .meta("region", "eu")
            .meta("plan", "pro")
    });
    let imported: Vec<String> = (0..HIT_SET).map(|i| format!("legacy_key_{i:06}")).collect();
    let keys = imported.iter().map(|key| {
        let hex: String = Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        ImportedToken::sha256(&hex).expect("digest")
    });
    store.import_many(keys).expect("import");
    let mut group = c.benchmark_group("keys");
    let mut next = 0;
    for (label, secrets) in [
        ("plain", &plain),
        ("owner", &owned),
        ("owner_limit", &limited),
        ("imported", &imported),
        ("credits", &metered),
    ] {
        assert!(secrets.iter().all(|s| store.validate(s).is_ok()), "{label}");
        group.bench_function(label, |b| {
            b.iter(|| {
                next = (next + 1) % secrets.len();
                store.validate(black_box(&secrets[next])).is_ok()
            })
        });
    }
    group.bench_function("meta", |b| {
        b.iter(|| {
            next = (next + 1) % meta.len();
            let token = store.validate(black_box(&meta[next])).expect("valid");
            token.meta("plan").map(str::len)
        })
    });
    group.finish();
    store.close().expect("close");
}

fn validate(c: &mut Criterion) {
    // `TOKENCACHE_BENCH_RECORDER=1` with `--features metrics`: a Prometheus recorder is
    // installed before the stores open, as in a service that exports metrics, so the
    // persisters publish to it every second while validations run (docs/BENCHMARKS.md
    // compares the two, taking turns).
    #[cfg(feature = "metrics")]
    if std::env::var_os("TOKENCACHE_BENCH_RECORDER").is_some() {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("install the Prometheus recorder");
        eprintln!("validate: a Prometheus recorder is installed");
    }
    let mut group = c.benchmark_group("validate");
    for (count, label) in SIZES {
        let dir = TempDir::new().expect("temp dir");
        let (store, issued) = filled_store(dir.path(), count);
        let hits = spread(&issued);
        // A well-formed token (right shape and checksum) that this store never issued.
        let other = TempDir::new().expect("temp dir");
        let stranger = quiet(other.path())
            .open()
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
    // A token with credits that never run out: each validation spends one with a
    // compare-exchange on its credits word, the one write shared by the threads.
    let credited = store
        .issue(NewToken::new("credited").credits(Credits::new(MAX_CREDITS)))
        .expect("issue");
    let mut group = c.benchmark_group("hot_token");
    for threads in [1usize, 2] {
        group.throughput(Throughput::Elements(threads as u64));
        let same: Vec<&str> = vec![issued[0].secret(); threads];
        group.bench_function(BenchmarkId::new("same", threads), |b| {
            b.iter_custom(|iters| {
                in_parallel(threads, iters, |i, n| validations(&store, same[i], n))
            })
        });
        let metered = vec![credited.secret(); threads];
        group.bench_function(BenchmarkId::new("same_credits", threads), |b| {
            b.iter_custom(|iters| {
                in_parallel(threads, iters, |i, n| validations(&store, metered[i], n))
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
    let store = quiet(dir.path()).open().expect("open store");
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

/// A store of `count` tokens in `dir`, compacted (closed); returns one token's secret.
fn compacted_store(dir: &Path, count: usize) -> String {
    let (store, issued) = filled_store(dir, count);
    let token = issued[0].secret().to_owned();
    drop(issued);
    store.close().expect("close");
    token
}

fn flush(c: &mut Criterion) {
    let mut group = c.benchmark_group("flush");
    group.sample_size(10);
    for (count, label) in SIZES {
        let dir = TempDir::new().expect("temp dir");
        let fixture = OnceCell::new();
        group.bench_function(label, |b| {
            let (store, token) = fixture.get_or_init(|| {
                let token = compacted_store(dir.path(), count);
                (quiet(dir.path()).open().expect("open"), token)
            });
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
        let Some((store, _)) = fixture.into_inner() else {
            continue;
        };
        let stats = store.stats();
        store.close().expect("close");
        assert!(
            stats.journal_records_written > 1 && stats.snapshots_written == 0,
            "flush appended no record, or compacted: the bench measured something else"
        );
    }
    group.finish();
}

fn compaction(c: &mut Criterion) {
    let mut group = c.benchmark_group("compaction");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(500));
    for (count, label) in SIZES {
        let dir = TempDir::new().expect("temp dir");
        let fixture = OnceCell::new();
        group.bench_function(label, |b| {
            let token = fixture.get_or_init(|| compacted_store(dir.path(), count));
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let store = quiet(dir.path()).open().expect("open");
                    // A new millisecond, so the validation changes `last_used` and close has
                    // something to write.
                    thread::sleep(Duration::from_millis(2));
                    assert!(store.validate(token).is_ok());
                    // The clone keeps the entries alive: freeing them is not the compaction.
                    let entries = store.clone();
                    let began = Instant::now();
                    store.close().expect("close");
                    total += began.elapsed();
                    let stats = entries.stats();
                    assert_eq!(
                        (stats.snapshots_written, stats.journal_records_written),
                        (1, 0),
                        "close did not compact; the bench measured something else"
                    );
                }
                total
            })
        });
    }
    group.finish();
}

fn open(c: &mut Criterion) {
    let dir = TempDir::new().expect("temp dir");
    let fixture = OnceCell::new();
    let mut group = c.benchmark_group("open");
    group.sample_size(10);
    group.bench_function("1M", |b| {
        fixture.get_or_init(|| compacted_store(dir.path(), 1_000_000));
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let began = Instant::now();
                let store = quiet(dir.path()).open().expect("open");
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

/// Tokens in `open_journal`'s snapshot, and the durable calls that follow it (half issues,
/// half revokes).
const JOURNAL_BASE: usize = 1_000_000;
const JOURNAL_RECORDS: usize = 100_000;

/// A temp dir on tmpfs (`/dev/shm`), where an fsync costs microseconds; the default temp
/// dir where there is none.
fn tmpfs_dir() -> TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).expect("temp dir in /dev/shm")
    } else {
        TempDir::new().expect("temp dir")
    }
}

/// Copies the store file and journal in `from` to `to` (created if missing).
fn copy_store(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create dir");
    for name in [STORE, JOURNAL] {
        fs::copy(from.join(name), to.join(name)).expect("copy store file");
    }
}

/// Builds `open_journal`'s two fixtures under `root`: `journal/`, a snapshot of
/// `JOURNAL_BASE` tokens plus `JOURNAL_RECORDS` records (an issue, then a revoke of a
/// distinct snapshot token, and so on: each call its own record), and `compacted/`, the
/// same store compacted. Returns both directories.
fn journal_fixtures(root: &Path) -> (PathBuf, PathBuf) {
    let built = root.join("built");
    fs::create_dir(&built).expect("create dir");
    let (store, issued) = filled_store(&built, JOURNAL_BASE);
    let revoked: Vec<TokenId> = issued
        .iter()
        .step_by(JOURNAL_BASE / (JOURNAL_RECORDS / 2))
        .map(IssuedToken::id)
        .collect();
    drop(issued);
    // Closing compacts: the tokens go to the snapshot, the journal starts empty.
    store.close().expect("close");
    let store = quiet(&built).open().expect("open");
    for (i, id) in revoked.iter().enumerate() {
        store
            .issue(NewToken::new(format!("later-{i}")).scope("read"))
            .expect("issue");
        store.revoke(id).expect("revoke");
    }
    let stats = store.stats();
    assert_eq!(
        (stats.journal_records_written, stats.snapshots_written),
        (JOURNAL_RECORDS as u64, 0),
        "each call should append one record and nothing should compact"
    );
    // Copied while the store is open, since closing would compact the journal away. Every
    // call above has returned and no timer fires, so the persister is idle.
    let journal = root.join("journal");
    copy_store(&built, &journal);
    let copied = fs::metadata(journal.join(JOURNAL)).expect("journal").len();
    assert!(
        copied >= stats.journal_bytes_written,
        "the journal copy is short"
    );
    store.close().expect("close");

    let compacted = root.join("compacted");
    copy_store(&journal, &compacted);
    quiet(&compacted)
        .open()
        .expect("open")
        .close()
        .expect("close");
    let left = fs::metadata(compacted.join(JOURNAL))
        .expect("journal")
        .len();
    assert!(
        left < 1024,
        "close did not compact the journal ({left} bytes left)"
    );
    let check = quiet(&compacted).open().expect("open");
    let entries = check.clone();
    check.close().expect("close");
    let stats = entries.stats();
    assert_eq!(stats.tokens, JOURNAL_BASE + JOURNAL_RECORDS / 2);
    assert_eq!(
        stats.bytes_written, 0,
        "opening and closing the compacted store must write nothing"
    );
    let mb = |dir: &Path, name| fs::metadata(dir.join(name)).expect("file").len() as f64 / 1e6;
    println!(
        "open_journal fixtures: snapshot {:.1} MB + journal {:.1} MB ({JOURNAL_RECORDS} records); \
         compacted: snapshot {:.1} MB",
        mb(&journal, STORE),
        mb(&journal, JOURNAL),
        mb(&compacted, STORE)
    );
    (journal, compacted)
}

/// `iters` opens of the store in `dir`, each after `restore`; only `open` is timed.
fn timed_opens(iters: u64, dir: &Path, restore: impl Fn()) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        restore();
        let began = Instant::now();
        let store = quiet(dir).open().expect("open");
        total += began.elapsed();
        assert_eq!(store.stats().tokens, JOURNAL_BASE + JOURNAL_RECORDS / 2);
        // Closing the uncompacted store compacts it, which is why `restore` exists.
        store.close().expect("close");
    }
    total
}

fn open_journal(c: &mut Criterion) {
    let root = tmpfs_dir();
    let built = OnceCell::new();
    let fixtures = || built.get_or_init(|| journal_fixtures(root.path()));
    let run = root.path().join("run");
    let mut group = c.benchmark_group("open_journal");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(500));
    group.bench_function("records_100k", |b| {
        let (journal, _) = fixtures();
        b.iter_custom(|iters| timed_opens(iters, &run, || copy_store(journal, &run)))
    });
    group.bench_function("compacted", |b| {
        let (_, compacted) = fixtures();
        b.iter_custom(|iters| timed_opens(iters, compacted, || {}))
    });
    group.finish();
    if let Some((journal, compacted)) = built.get() {
        open_turns(journal, compacted, &run);
    }
}

/// Tokens in `open_torn`'s `issue_many`: one journal record of about 18 MB.
const TORN_BATCH: usize = 250_000;

/// Builds `open_torn`'s fixture under `root`: a store whose journal holds one record of
/// [`TORN_BATCH`] tokens, cut one byte short (copied while the store is open). Returns its
/// directory.
fn torn_fixture(root: &Path) -> PathBuf {
    let built = root.join("torn-built");
    fs::create_dir(&built).expect("create dir");
    // Issued at the manual clock's start (a round millisecond count), as the review's
    // batch was: each token's record then holds a would-be frame whose length lands inside
    // the file, the worst case for the old check.
    let store = quiet(&built)
        .clock(tokencache::ManualClock::default())
        .open()
        .expect("open");
    store
        .issue_many((0..TORN_BATCH).map(|i| NewToken::new(format!("batch-{i}")).scope("read")))
        .expect("issue_many");
    let torn = root.join("torn");
    copy_store(&built, &torn);
    drop(store);
    let journal = torn.join(JOURNAL);
    let len = fs::metadata(&journal).expect("journal").len();
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .expect("open journal");
    file.set_len(len - 1).expect("cut the journal");
    println!(
        "open_torn fixture: a torn tail of {:.1} MB",
        (len - 33) as f64 / 1e6
    );
    torn
}

fn open_torn(c: &mut Criterion) {
    let root = tmpfs_dir();
    let built = OnceCell::new();
    let run = root.path().join("run-torn");
    let mut group = c.benchmark_group("open_torn");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(500));
    group.bench_function("18MB", |b| {
        let torn = built.get_or_init(|| torn_fixture(root.path()));
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let _ = fs::remove_dir_all(&run);
                copy_store(torn, &run);
                let began = Instant::now();
                let store = quiet(&run).open().expect("open");
                total += began.elapsed();
                assert_eq!(store.stats().tokens, 0, "the torn record was replayed");
                drop(store);
            }
            total
        })
    });
    group.finish();
}

/// Rounds of `open_turns`.
const OPEN_ROUNDS: usize = 6;

/// The `open_journal` ratio with the two stores taking turns (see [`take_turns`]).
fn open_turns(journal: &Path, compacted: &Path, run: &Path) {
    let records = || timed_opens(1, run, || copy_store(journal, run));
    let snapshot = || timed_opens(1, compacted, || {});
    let times = take_turns(OPEN_ROUNDS, &[&records, &snapshot]);
    println!("open_journal turns: {OPEN_ROUNDS} rounds of one open per store, stores taking turns");
    for (name, times) in ["records_100k", "compacted"].iter().zip(&times) {
        let [_, median, _] = quartiles(times.clone());
        println!(
            "open_journal/{name:<14} {:8.1} ms (median round)",
            median * 1e3
        );
    }
    print_ratio(
        "100,000 records over compacted, open time",
        ratios(&times[0], &times[1]),
        "<= 1.5x",
    );
}

/// Runs every turn once per round for `rounds` rounds after one unrecorded round, rotating
/// which goes first, and returns each turn's times (seconds) by round. On a shared machine
/// the disk and the CPUs drift by several times within minutes, more than some of the
/// differences measured; cases that take turns see the same drift, so the ratio of their
/// times in one round measures the store and not the drift, and a ratio of two criterion
/// medians taken one after the other does not.
fn take_turns(rounds: usize, turns: &[&dyn Fn() -> Duration]) -> Vec<Vec<f64>> {
    for turn in turns {
        turn();
    }
    let mut times = vec![Vec::with_capacity(rounds); turns.len()];
    for round in 0..rounds {
        for k in 0..turns.len() {
            let i = (round + k) % turns.len();
            times[i].push(turns[i]().as_secs_f64());
        }
    }
    times
}

/// Round by round, `over`'s time divided by `under`'s.
fn ratios(over: &[f64], under: &[f64]) -> Vec<f64> {
    over.iter().zip(under).map(|(o, u)| o / u).collect()
}

/// The 25th, 50th and 75th percentiles of `values`, interpolated.
fn quartiles(mut values: Vec<f64>) -> [f64; 3] {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let pos = (values.len() - 1) as f64 * q;
        let (low, high) = (pos.floor() as usize, pos.ceil() as usize);
        values[low] + (values[high] - values[low]) * (pos - low as f64)
    };
    [at(0.25), at(0.5), at(0.75)]
}

/// "what: 1.02x (rounds' quartiles 0.95-1.10x; target <= 2x)".
fn print_ratio(what: &str, ratios: Vec<f64>, target: &str) {
    let [q1, median, q3] = quartiles(ratios);
    println!("{what}: {median:.2}x (rounds' quartiles {q1:.2}-{q3:.2}x; target {target})");
}

/// Every call's latency, for the percentiles that per-sample means hide: an fdatasync on
/// this disk is bimodal.
#[derive(Default)]
struct Latencies(Mutex<Vec<Duration>>);

impl Latencies {
    fn add(&self, calls: Vec<Duration>) {
        self.0.lock().expect("latencies").extend(calls);
    }

    /// "p50 …, p90 …, p99 … over N calls".
    fn summary(&self) -> String {
        let mut calls = self.0.lock().expect("latencies").clone();
        calls.sort_unstable();
        let at = |q: f64| calls[((calls.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
        format!(
            "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms over {} calls",
            at(0.5),
            at(0.9),
            at(0.99),
            calls.len()
        )
    }
}

/// `n` issues, one after another, each timed into `latencies` if given.
fn issues(store: &TokenStore, n: u64, latencies: Option<&Latencies>) {
    let mut calls = Vec::with_capacity(if latencies.is_some() { n as usize } else { 0 });
    for _ in 0..n {
        let began = Instant::now();
        store
            .issue(NewToken::new("bench").scope("read"))
            .expect("issue");
        if latencies.is_some() {
            calls.push(began.elapsed());
        }
    }
    if let Some(latencies) = latencies {
        latencies.add(calls);
    }
}

/// The `issue` cases: callers, and the store's size.
const ISSUE_CASES: [(usize, &str); 3] = [(1, "1k"), (8, "1k"), (1, "1M")];

fn issue(c: &mut Criterion) {
    let (small_dir, large_dir) = (TempDir::new(), TempDir::new());
    let (small_dir, large_dir) = (small_dir.expect("temp dir"), large_dir.expect("temp dir"));
    let (small, large) = (OnceCell::new(), OnceCell::new());
    let mut group = c.benchmark_group("issue");
    group.sample_size(30);
    for (callers, size) in ISSUE_CASES {
        let store = || match size {
            "1k" => small.get_or_init(|| filled_store(small_dir.path(), 1_000).0),
            _ => large.get_or_init(|| filled_store(large_dir.path(), 1_000_000).0),
        };
        group.throughput(Throughput::Elements(callers as u64));
        group.bench_function(BenchmarkId::new(format!("{callers}_callers"), size), |b| {
            let store = store();
            b.iter_custom(|iters| in_parallel(callers, iters, |_, n| issues(store, n, None)))
        });
    }
    group.finish();
    if let (Some(small), Some(large)) = (small.get(), large.get()) {
        issue_turns(small, large);
    }
    for store in [small.into_inner(), large.into_inner()]
        .into_iter()
        .flatten()
    {
        let stats = store.stats();
        store.close().expect("close");
        // The store's first file is its only snapshot until close.
        assert_eq!(
            stats.snapshots_written, 1,
            "a compaction ran during the bench"
        );
    }
}

/// Rounds of `issue_turns`, and issues per caller in each turn.
const ISSUE_ROUNDS: usize = 100;
const ISSUE_TURN: u64 = 64;

/// The `issue` ratios with the cases taking turns (see [`take_turns`]): each round, each
/// case issues `ISSUE_TURN` tokens per caller; a case's time is per issue.
fn issue_turns(small: &TokenStore, large: &TokenStore) {
    let latencies: [Latencies; 3] = Default::default();
    let (issued, records) = (Cell::new(0), Cell::new(0));
    let turn = |i: usize| {
        let (callers, size) = ISSUE_CASES[i];
        let store = if size == "1k" { small } else { large };
        // Counted only for 8 callers: `stats` scans every token, and the 1M store is large.
        let before = (callers > 1).then(|| store.stats());
        let took = in_parallel(callers, ISSUE_TURN, |_, n| {
            issues(store, n, Some(&latencies[i]))
        });
        if let Some(before) = before {
            let after = store.stats();
            issued.set(issued.get() + after.tokens - before.tokens);
            records.set(
                records.get() + after.journal_records_written - before.journal_records_written,
            );
        }
        took / (callers as u32 * ISSUE_TURN as u32)
    };
    let (one, eight, one_large) = (|| turn(0), || turn(1), || turn(2));
    let times = take_turns(ISSUE_ROUNDS, &[&one, &eight, &one_large]);
    println!(
        "issue turns: {ISSUE_ROUNDS} rounds of {ISSUE_TURN} issues per caller per case, \
         cases taking turns"
    );
    for (i, (callers, size)) in ISSUE_CASES.iter().enumerate() {
        let [_, median, _] = quartiles(times[i].clone());
        println!(
            "issue/{callers}_callers/{size:<3} {:7.3} ms per issue (median round); per call {}",
            median * 1e3,
            latencies[i].summary()
        );
    }
    println!(
        "8 callers: {:.2} issues per journal record",
        issued.get() as f64 / records.get() as f64
    );
    print_ratio(
        "1M over 1k, one caller, time per issue",
        ratios(&times[2], &times[0]),
        "<= 2x",
    );
    print_ratio(
        "8 callers over 1, issues per second",
        ratios(&times[0], &times[1]),
        ">= 4x",
    );
}

criterion_group!(
    benches,
    validate,
    keys,
    hot_token,
    clock,
    flush,
    compaction,
    open,
    open_journal,
    open_torn,
    issue
);
criterion_main!(benches);

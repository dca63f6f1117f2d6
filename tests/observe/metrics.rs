//! Each metric of docs/OBSERVABILITY.md moves as the store works, read through
//! `metrics-util`'s debugging recorder installed for the process; validation itself never
//! calls the facade.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokencache::__fault::{FaultPlan, FaultStep};
use tokencache::{NewToken, RateLimit, TokenStore};

use crate::{manual_builder, one_at_a_time, scratch};

const ENOSPC: i32 = 28;

/// The recorder's reader, installing the recorder on first use.
fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        if recorder.install().is_err() {
            panic!("another metrics recorder is installed in this binary");
        }
        snapshotter
    })
}

/// What the recorder holds: counters and gauges as they stand, histograms' samples since
/// the last reading, and each name's unit.
pub struct Readings {
    values: HashMap<(String, Vec<(String, String)>), Value>,
    units: HashMap<String, Option<Unit>>,
}

/// A value as read.
#[derive(Debug, Clone)]
enum Value {
    Counter(u64),
    Gauge(f64),
    Histogram(Vec<f64>),
}

impl From<DebugValue> for Value {
    fn from(value: DebugValue) -> Value {
        match value {
            DebugValue::Counter(n) => Value::Counter(n),
            DebugValue::Gauge(x) => Value::Gauge(x.into_inner()),
            DebugValue::Histogram(xs) => {
                Value::Histogram(xs.iter().map(|x| x.into_inner()).collect())
            }
        }
    }
}

/// The gauges the store sets (the others it moves by increments).
const SET_GAUGES: [&str; 1] = ["tokencache_replica_lag_seconds"];

/// Reads the recorder. Its snapshots drain what they read (counters and gauges back to 0,
/// histograms emptied), so the totals are kept here: counters and the gauges the store
/// moves by increments add up, a set gauge keeps the value set last.
pub fn read() -> Readings {
    static TOTALS: Mutex<Option<Readings>> = Mutex::new(None);
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    let totals = totals.get_or_insert_with(|| Readings {
        values: HashMap::new(),
        units: HashMap::new(),
    });
    let mut histograms = HashMap::new();
    for (key, unit, _description, value) in snapshotter().snapshot().into_vec() {
        let key = key.key();
        let name = key.name().to_string();
        let labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_string(), l.value().to_string()))
            .collect();
        totals.units.insert(name.clone(), unit);
        let id = (name, labels);
        let total = match (totals.values.remove(&id), Value::from(value)) {
            (Some(Value::Counter(a)), Value::Counter(b)) => Value::Counter(a + b),
            (Some(Value::Gauge(a)), Value::Gauge(b)) if !SET_GAUGES.contains(&id.0.as_str()) => {
                Value::Gauge(a + b)
            }
            (_, Value::Histogram(xs)) => {
                histograms.insert(id, Value::Histogram(xs));
                continue;
            }
            (_, value) => value,
        };
        totals.values.insert(id, total);
    }
    let mut values = totals.values.clone();
    values.extend(histograms);
    Readings {
        values,
        units: totals.units.clone(),
    }
}

impl Readings {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Value> {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.values.get(&(name.to_string(), labels))
    }

    /// A counter (0 until first published).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.get(name, labels) {
            Some(Value::Counter(n)) => *n,
            None => 0,
            Some(other) => panic!("{name} is no counter: {other:?}"),
        }
    }

    pub fn gauge(&self, name: &str) -> Option<f64> {
        match self.get(name, &[]) {
            Some(Value::Gauge(x)) => Some(*x),
            None => None,
            Some(other) => panic!("{name} is no gauge: {other:?}"),
        }
    }

    /// A histogram's samples since the last reading.
    pub fn samples(&self, name: &str) -> Vec<f64> {
        match self.get(name, &[]) {
            Some(Value::Histogram(xs)) => xs.clone(),
            None => Vec::new(),
            Some(other) => panic!("{name} is no histogram: {other:?}"),
        }
    }

    pub fn unit(&self, name: &str) -> Option<Unit> {
        self.units.get(name).copied().flatten()
    }
}

const OUTCOMES: [&str; 8] = [
    "accepted",
    "malformed",
    "unknown",
    "revoked",
    "expired",
    "rate_limited",
    "missing_scope",
    "unavailable",
];

fn validations(r: &Readings) -> [u64; 8] {
    OUTCOMES.map(|outcome| r.counter("tokencache_validations_total", &[("outcome", outcome)]))
}

fn changes(r: &Readings, kind: &str) -> u64 {
    r.counter("tokencache_changes_total", &[("kind", kind)])
}

/// Issue 20: `tokencache_validations_total{outcome}` counts every outcome, published by the
/// persister (here at the flush) from the striped counters, equal to `stats()`.
#[test]
fn validations_are_published_by_outcome() {
    let _turn = one_at_a_time();
    let s = scratch();
    let (builder, clock) = manual_builder(&s.path);
    let store = builder.open().unwrap();
    let good = store.issue(NewToken::new("good").scopes(["read"])).unwrap();
    let revoked = store.issue(NewToken::new("revoked")).unwrap();
    store.revoke(&revoked.id()).unwrap();
    let gone = store.issue(NewToken::new("gone")).unwrap();
    store.delete(&gone.id()).unwrap();
    let expiring = store
        .issue(NewToken::new("expiring").expires_in(Duration::from_secs(1)))
        .unwrap();
    let limited = store
        .issue(NewToken::new("limited").rate_limit(RateLimit::per_second(1)))
        .unwrap();
    clock.advance(Duration::from_secs(2));
    store.flush().unwrap();
    let before = validations(&read());

    for _ in 0..3 {
        store.validate(good.secret()).unwrap();
    }
    assert!(store.validate("tc_not-a-token").is_err());
    assert!(store.validate(gone.secret()).is_err());
    assert!(store.validate(revoked.secret()).is_err());
    assert!(store.validate(expiring.secret()).is_err());
    store.validate(limited.secret()).unwrap();
    assert!(store.validate(limited.secret()).is_err());
    assert!(store.validate_scope(good.secret(), "write").is_err());
    store.flush().unwrap();

    let after = validations(&read());
    let grown: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    assert_eq!(grown, [4, 1, 1, 1, 1, 1, 1, 0], "in the order {OUTCOMES:?}");
    let stats = store.stats();
    assert_eq!(grown[0], stats.validations);
    assert_eq!(grown[1..].iter().sum::<u64>(), stats.rejections.total());
    store.close().unwrap();
}

/// Issue 20: validations are published at least once a second with no flush or close to
/// ask (the persister's timer; the manual clock never moves here).
#[test]
fn validations_are_published_within_a_second_without_a_flush() {
    let _turn = one_at_a_time();
    let s = scratch();
    let (builder, _clock) = manual_builder(&s.path);
    let store = builder.open().unwrap();
    let good = store.issue(NewToken::new("good")).unwrap();
    store.flush().unwrap();
    let before = validations(&read())[0];
    store.validate(good.secret()).unwrap();
    // Polled; the bound only turns a publisher that never publishes into a failure.
    let start = Instant::now();
    while validations(&read())[0] == before {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the validation was never published"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(validations(&read())[0], before + 1);
    store.close().unwrap();
}

/// Issue 20: `tokencache_changes_total{kind}` counts each kind once its write succeeded.
#[test]
fn changes_are_counted_by_kind_once_written() {
    let _turn = one_at_a_time();
    let s = scratch();
    let (builder, _clock) = manual_builder(&s.path);
    let store = builder.open().unwrap();
    let kinds = ["issue", "revoke", "delete", "rotate", "rate_limit", "purge"];
    let r = read();
    let before = kinds.map(|k| changes(&r, k));

    let issued = store
        .issue_many((0..4).map(|i| NewToken::new(format!("t{i}"))))
        .unwrap();
    store.issue(NewToken::new("one more")).unwrap();
    store.revoke(&issued[0].id()).unwrap();
    store.delete(&issued[1].id()).unwrap();
    store
        .rotate(&issued[2].id(), Duration::from_secs(3600))
        .unwrap();
    store
        .set_rate_limit(&issued[3].id(), Some(RateLimit::per_second(5)))
        .unwrap();
    let purged = store.purge(Duration::ZERO).unwrap();
    assert_eq!(purged, 1, "the revoked token");
    // Refused requests change nothing and count nothing.
    assert!(store.revoke(&issued[1].id()).is_err());

    let r = read();
    let grown: Vec<u64> = kinds
        .iter()
        .zip(before)
        .map(|(k, b)| changes(&r, k) - b)
        .collect();
    assert_eq!(grown, [5, 1, 1, 1, 1, 1], "in the order {kinds:?}");
    store.close().unwrap();
}

/// Issue 20: each journal record counts once, with its bytes, and its durable write is
/// timed in `tokencache_write_seconds`: the same figures as `stats()`.
#[test]
fn journal_records_bytes_and_write_seconds_follow_each_write() {
    let _turn = one_at_a_time();
    let s = scratch();
    let (builder, _clock) = manual_builder(&s.path);
    let store = builder.open().unwrap();
    let stats_before = store.stats();
    let before = read();
    for i in 0..5 {
        store.issue(NewToken::new(format!("t{i}"))).unwrap();
    }
    let after = read();
    let stats_after = store.stats();
    let records = "tokencache_journal_records_total";
    let bytes = "tokencache_journal_bytes_total";
    assert_eq!(
        after.counter(records, &[]) - before.counter(records, &[]),
        5
    );
    assert_eq!(
        after.counter(bytes, &[]) - before.counter(bytes, &[]),
        stats_after.journal_bytes_written - stats_before.journal_bytes_written
    );
    let samples = after.samples("tokencache_write_seconds");
    assert_eq!(samples.len(), 5, "{samples:?}");
    assert!(
        samples.iter().all(|&x| x > 0.0 && x < 3600.0),
        "{samples:?}"
    );
    store.close().unwrap();
}

/// Issue 20: a compaction counts and is timed; `tokencache_tokens` holds the store's
/// tokens while it is open and lets them go when it closes.
#[test]
fn compactions_are_counted_and_tokens_leave_the_gauge_at_close() {
    let _turn = one_at_a_time();
    let s = scratch();
    let (builder, _clock) = manual_builder(&s.path);
    let store = builder.open().unwrap();
    let before = read();
    let tokens_before = before.gauge("tokencache_tokens").unwrap_or(0.0);
    for i in 0..3 {
        store.issue(NewToken::new(format!("t{i}"))).unwrap();
    }
    store.flush().unwrap();
    let open = read();
    assert_eq!(open.gauge("tokencache_tokens"), Some(tokens_before + 3.0));
    let compactions = "tokencache_compactions_total";
    assert_eq!(
        open.counter(compactions, &[]),
        before.counter(compactions, &[])
    );

    store.close().unwrap(); // The journal has records: close compacts.
    let closed = read();
    assert_eq!(
        closed.counter(compactions, &[]),
        before.counter(compactions, &[]) + 1
    );
    assert_eq!(closed.samples("tokencache_compaction_seconds").len(), 1);
    assert_eq!(closed.gauge("tokencache_tokens"), Some(tokens_before));
}

/// Issue 20: a failed write counts in `tokencache_write_failures_total`, and what it held
/// is not counted as changed; once the disk recovers, the retry counts.
#[test]
fn a_failed_write_is_counted_and_its_change_is_not() {
    let _turn = one_at_a_time();
    let s = scratch();
    let plan = FaultPlan::default();
    let (builder, _clock) = manual_builder(&s.path);
    let store = builder.fault_plan(plan.clone()).open().unwrap();
    let failures = "tokencache_write_failures_total";
    let before = read();
    plan.fail(FaultStep::Append, ENOSPC);
    assert!(store.issue(NewToken::new("refused")).is_err());
    let failed = read();
    assert_eq!(
        failed.counter(failures, &[]),
        before.counter(failures, &[]) + 1
    );
    assert_eq!(changes(&failed, "issue"), changes(&before, "issue"));
    assert_eq!(store.stats().write_errors, 1);

    plan.clear();
    store.issue(NewToken::new("accepted")).unwrap();
    let recovered = read();
    assert_eq!(changes(&recovered, "issue"), changes(&before, "issue") + 1);
    assert_eq!(
        recovered.counter(failures, &[]),
        before.counter(failures, &[]) + 1
    );
    store.close().unwrap();
}

/// Issue 20: every name is described with its unit (the replica ones in `replica.rs`).
#[test]
fn every_metric_is_described_with_its_unit() {
    let _turn = one_at_a_time();
    let s = scratch();
    let (builder, _clock) = manual_builder(&s.path);
    snapshotter();
    let store = builder.open().unwrap();
    let token = store.issue(NewToken::new("t")).unwrap();
    store.validate(token.secret()).unwrap();
    store.flush().unwrap();
    store.close().unwrap();
    let r = read();
    for (name, unit) in [
        ("tokencache_validations_total", Unit::Count),
        ("tokencache_changes_total", Unit::Count),
        ("tokencache_journal_records_total", Unit::Count),
        ("tokencache_journal_bytes_total", Unit::Bytes),
        ("tokencache_compactions_total", Unit::Count),
        ("tokencache_write_seconds", Unit::Seconds),
        ("tokencache_compaction_seconds", Unit::Seconds),
        ("tokencache_tokens", Unit::Count),
    ] {
        assert_eq!(r.unit(name), Some(unit), "{name}");
    }
}

/// A recorder that counts every call the facade makes into it.
#[derive(Default, Clone)]
struct CountingRecorder(Arc<AtomicU64>);

struct Counted(Arc<AtomicU64>);

impl CounterFn for Counted {
    fn increment(&self, _: u64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn absolute(&self, _: u64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl GaugeFn for Counted {
    fn increment(&self, _: f64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn decrement(&self, _: f64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn set(&self, _: f64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl HistogramFn for Counted {
    fn record(&self, _: f64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl CountingRecorder {
    fn calls(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn counted(&self) -> Arc<Counted> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Arc::new(Counted(self.0.clone()))
    }
}

impl Recorder for CountingRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.counted())
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.counted())
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.counted())
    }
}

/// Issue 20: the hot path never calls the facade, whatever the outcome: validation only
/// bumps its striped counters, which the persister publishes. A recorder local to this
/// thread would see any call made by `validate` (and sees one made here).
#[test]
fn the_hot_path_never_calls_the_facade() {
    let _turn = one_at_a_time();
    let s = scratch();
    let (builder, _clock) = manual_builder(&s.path);
    let store: TokenStore = builder.open().unwrap();
    let good = store.issue(NewToken::new("good").scopes(["read"])).unwrap();
    let limited = store
        .issue(NewToken::new("limited").rate_limit(RateLimit::per_second(1)))
        .unwrap();
    let revoked = store.issue(NewToken::new("revoked")).unwrap();
    store.revoke(&revoked.id()).unwrap();

    let recorder = CountingRecorder::default();
    metrics::with_local_recorder(&recorder, || metrics::counter!("probe").increment(1));
    assert_eq!(recorder.calls(), 2, "the probe registers, then increments");

    let before = recorder.calls();
    metrics::with_local_recorder(&recorder, || {
        for _ in 0..10_000 {
            let _ = std::hint::black_box(store.validate(good.secret()));
            let _ = std::hint::black_box(store.validate_scope(good.secret(), "write"));
            let _ = std::hint::black_box(store.validate(limited.secret()));
            let _ = std::hint::black_box(store.validate(revoked.secret()));
            let _ = std::hint::black_box(store.validate("tc_not-a-token"));
        }
    });
    assert_eq!(
        recorder.calls(),
        before,
        "validate called the metrics facade"
    );
    store.close().unwrap();
}

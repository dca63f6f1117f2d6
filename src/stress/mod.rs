//! `tokencache stress`: hammer a store with a realistic request mix from many threads, report
//! throughput, latency and what reached the disk, then check that the file matches memory.
//! `--compare` runs the same requests against the designs in [`baselines`].
//!
//! Timing: reading the clock costs ~20-30 ns, a tenth of a validation, so only every
//! [`SAMPLE_EVERY`]th request is timed for the latency histogram (every request for the
//! millisecond-scale `naive`); throughput counts every request.

pub mod baselines;

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tokencache::{NewToken, TokenStore};

use baselines::{Baseline, Kind, Record};

/// One request in this many is timed (see the module docs).
const SAMPLE_EVERY: usize = 16;
/// Requests in each thread's precomputed schedule (cycled).
const SCHEDULE_LEN: usize = 1 << 18;
/// `naive` fsyncs on every request; it gets at most this long.
const NAIVE_BUDGET: Duration = Duration::from_secs(5);

/// Options of `tokencache stress`.
#[derive(Debug, clap::Args)]
pub struct StressArgs {
    /// Tokens issued into the store before the run.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(10..=10_000_000))]
    tokens: u32,
    /// Validating threads (default: one per core).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    /// Seconds each design runs.
    #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
    seconds: f64,
    /// Zipf exponent of the valid requests over the tokens: 0 is uniform, 1 makes a few hot.
    #[arg(long, default_value_t = 1.0, value_parser = non_negative)]
    hot: f64,
    /// tokencache's flush interval: how often `last_used` times reach disk under load.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    flush_interval: Duration,
    /// Seed of the request mix (the same seed gives the same requests).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Also run the baselines (naive, locked-debounce, background-saver) and print ratios.
    #[arg(long)]
    compare: bool,
    /// Print a JSON array, one object per design, instead of a table.
    #[arg(long)]
    json: bool,
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 86_400.0 => Ok(s),
        _ => Err("give a number of seconds greater than 0 (at most 86400)".into()),
    }
}

fn non_negative(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if (0.0..=10.0).contains(&s) => Ok(s),
        _ => Err("give a Zipf exponent from 0 (uniform) to 10".into()),
    }
}

/// The request mix: which share of requests goes to each kind of token.
const MIX: [(Class, f64); 4] = [
    (Class::Valid, 0.95),
    (Class::Revoked, 0.02),
    (Class::Unknown, 0.015),
    (Class::Malformed, 0.015),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Valid,
    Revoked,
    Unknown,
    Malformed,
}

/// Every token string a request may carry, grouped by class.
struct Pool {
    tokens: Vec<String>,
    valid: std::ops::Range<usize>,
    revoked: std::ops::Range<usize>,
    unknown: std::ops::Range<usize>,
    malformed: std::ops::Range<usize>,
}

/// One design's measured run.
struct Report {
    design: &'static str,
    seconds: f64,
    ops: u64,
    accepted: u64,
    latency: Histogram<u64>,
    snapshots: u64,
    bytes: u64,
    verified: bool,
}

impl Report {
    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.seconds
    }
}

/// Runs `tokencache stress`.
pub fn run(args: &StressArgs) -> Result<ExitCode, String> {
    let threads = args.threads.map_or_else(
        || std::thread::available_parallelism().map_or(2, |n| n.get()),
        usize::from,
    );
    let dir = tempfile::tempdir().map_err(|e| format!("could not make a temp directory: {e}"))?;
    let path = dir.path().join("tokens.snap");
    let fail = |e: tokencache::Error| e.to_string();

    eprintln!(
        "stress: issuing {} tokens into {} ...",
        args.tokens,
        path.display()
    );
    let store = TokenStore::builder(&path)
        .flush_interval(args.flush_interval)
        .open()
        .map_err(fail)?;
    let pool = build_pool(&store, dir.path(), args.tokens as usize).map_err(fail)?;
    let schedules: Vec<Vec<u32>> = (0..threads)
        .map(|t| schedule(&pool, args.hot, args.seed.wrapping_add(t as u64)))
        .collect::<Result<_, _>>()?;
    let run_for = Duration::from_secs_f64(args.seconds);

    let mut designs: Vec<Option<Kind>> = vec![None];
    if args.compare {
        designs.extend([
            Some(Kind::LockedDebounce),
            Some(Kind::BackgroundSaver),
            Some(Kind::Naive),
        ]);
    }
    let budgets: Vec<Duration> = designs
        .iter()
        .map(|d| match d {
            Some(Kind::Naive) => run_for.min(NAIVE_BUDGET),
            _ => run_for,
        })
        .collect();
    let progress = progress_bar(budgets.iter().sum());

    let mut reports = Vec::new();
    let mut store = Some(store);
    for (design, budget) in designs.iter().zip(&budgets) {
        let report = match design {
            None => {
                let store = store.take().ok_or("the store was already closed")?;
                run_tokencache(store, &path, &pool, &schedules, *budget, &progress)?
            }
            Some(kind) => {
                let tokens = baseline_tokens(&pool);
                let file = dir.path().join(format!("{}.db", kind.name()));
                let baseline = Baseline::new(*kind, &file, tokens)
                    .map_err(|e| format!("could not set up {}: {e}", kind.name()))?;
                let now = now_ms;
                let (seconds, ops, accepted, latency) = hammer(
                    kind.name(),
                    |token| baseline.validate(token, now()),
                    &pool,
                    &schedules,
                    *budget,
                    if *kind == Kind::Naive {
                        1
                    } else {
                        SAMPLE_EVERY
                    },
                    &progress,
                );
                let closed = baseline.close();
                Report {
                    design: kind.name(),
                    seconds,
                    ops,
                    accepted,
                    latency,
                    snapshots: closed.snapshots,
                    bytes: closed.bytes,
                    verified: closed.verified,
                }
            }
        };
        reports.push(report);
    }
    progress.finish_and_clear();

    if args.json {
        let rows: Vec<Value> = reports
            .iter()
            .map(|r| report_json(r, args, threads))
            .collect();
        println!("{}", Value::Array(rows));
    } else {
        print_table(&reports, args, threads);
    }
    if reports.iter().all(|r| r.verified) {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("stress: a design's file on disk does not match its memory (see `verified`)");
        Ok(ExitCode::from(1))
    }
}

/// Issues the tokens, revokes a few, and makes unknown and malformed ones.
fn build_pool(store: &TokenStore, dir: &Path, count: usize) -> Result<Pool, tokencache::Error> {
    let mut tokens = Vec::with_capacity(count + 2_000);
    for start in (0..count).step_by(20_000) {
        let batch = (start..count.min(start + 20_000)).map(|i| NewToken::new(format!("svc-{i}")));
        tokens.extend(
            store
                .issue_many(batch)?
                .iter()
                .map(|t| t.secret().to_string()),
        );
    }
    // Revokes are durable writes of the whole store; a few suffice for 2% of the requests.
    let revoked_count = (count / 1_000).clamp(1, 100);
    let revoked_start = count - revoked_count;
    let ids: Vec<_> = tokens[revoked_start..]
        .iter()
        .map(|t| store.validate(t).map(|v| v.id()))
        .collect::<Result<_, _>>()
        .map_err(|r| tokencache::Error::InvalidRequest(format!("a fresh token was {r}")))?;
    std::thread::scope(|scope| {
        // Eight callers at once share snapshots (group commit).
        let workers: Vec<_> = ids
            .chunks(ids.len().div_ceil(8))
            .map(|chunk| scope.spawn(move || chunk.iter().try_for_each(|id| store.revoke(id))))
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().unwrap_or(Ok(())))
    })?;

    // Well-formed tokens this store never issued: issued into another store.
    let unknown_count = (count / 100).clamp(10, 1_000);
    let other = TokenStore::open(dir.join("unknown.snap"))?;
    let unknown = other.issue_many((0..unknown_count).map(|i| NewToken::new(format!("x-{i}"))))?;
    other.close()?;
    let unknown_start = tokens.len();
    tokens.extend(unknown.iter().map(|t| t.secret().to_string()));

    // Typos (one character changed: the checksum refuses them) and junk.
    let malformed_start = tokens.len();
    for i in 0..100 {
        let mut typo = tokens[i % count].clone().into_bytes();
        let at = 3 + i % (typo.len() - 3);
        typo[at] = if typo[at] == b'a' { b'b' } else { b'a' };
        tokens.push(String::from_utf8(typo).unwrap_or_default());
    }
    tokens.extend(["", "Bearer", "tc_", "not-a-token"].map(String::from));
    let end = tokens.len();
    Ok(Pool {
        tokens,
        valid: 0..revoked_start,
        revoked: revoked_start..count,
        unknown: unknown_start..malformed_start,
        malformed: malformed_start..end,
    })
}

/// A thread's requests: indexes into the pool drawn by [`MIX`], valid ones Zipf-skewed.
fn schedule(pool: &Pool, hot: f64, seed: u64) -> Result<Vec<u32>, String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let zipf = Zipf::new(pool.valid.len() as f64, hot)
        .map_err(|e| format!("cannot make a Zipf distribution with exponent {hot}: {e}"))?;
    let uniform =
        |rng: &mut SmallRng, range: &std::ops::Range<usize>| rng.random_range(range.clone()) as u32;
    Ok((0..SCHEDULE_LEN)
        .map(|_| {
            let mut pick = rng.random::<f64>();
            let class = MIX
                .iter()
                .find(|(_, share)| {
                    pick -= share;
                    pick < 0.0
                })
                .map_or(Class::Valid, |(class, _)| *class);
            match class {
                // Zipf gives ranks 1..=n; rank 1 is the hottest token.
                Class::Valid => {
                    (zipf.sample(&mut rng) as usize - 1).min(pool.valid.len() - 1) as u32
                }
                Class::Revoked => uniform(&mut rng, &pool.revoked),
                Class::Unknown => uniform(&mut rng, &pool.unknown),
                Class::Malformed => uniform(&mut rng, &pool.malformed),
            }
        })
        .collect())
}

fn run_tokencache(
    store: TokenStore,
    path: &Path,
    pool: &Pool,
    schedules: &[Vec<u32>],
    budget: Duration,
    progress: &ProgressBar,
) -> Result<Report, String> {
    let before = store.stats();
    let (seconds, ops, accepted, latency) = hammer(
        "tokencache",
        |token| store.validate(token).is_ok(),
        pool,
        schedules,
        budget,
        SAMPLE_EVERY,
        progress,
    );
    store.flush().map_err(|e| e.to_string())?;
    let after = store.stats();
    let in_memory = store.list();
    store.close().map_err(|e| e.to_string())?;
    let reopened = TokenStore::open(path).map_err(|e| e.to_string())?;
    let verified = reopened.list() == in_memory;
    reopened.close().map_err(|e| e.to_string())?;
    Ok(Report {
        design: "tokencache",
        seconds,
        ops,
        accepted,
        latency,
        snapshots: after.snapshots_written - before.snapshots_written,
        bytes: after.bytes_written - before.bytes_written,
        verified,
    })
}

/// Runs `validate` from one thread per schedule for `budget`; returns the mean thread
/// time, requests, accepted requests and the merged latency histogram (ns).
fn hammer(
    design: &'static str,
    validate: impl Fn(&str) -> bool + Sync,
    pool: &Pool,
    schedules: &[Vec<u32>],
    budget: Duration,
    sample_every: usize,
    progress: &ProgressBar,
) -> (f64, u64, u64, Histogram<u64>) {
    progress.set_message(design);
    let stop = AtomicBool::new(false);
    let start = Barrier::new(schedules.len() + 1);
    let results = std::thread::scope(|scope| {
        let workers: Vec<_> = schedules
            .iter()
            .map(|requests| {
                let (stop, start, validate) = (&stop, &start, &validate);
                scope.spawn(move || {
                    let mut latency = new_histogram();
                    let (mut ops, mut accepted) = (0u64, 0u64);
                    start.wait();
                    let began = Instant::now();
                    // Relaxed: the flag carries no data; the scope's join publishes results.
                    'run: while !stop.load(Ordering::Relaxed) {
                        for chunk in requests.chunks(sample_every) {
                            let timed = &pool.tokens[chunk[0] as usize];
                            let t0 = Instant::now();
                            let ok = validate(timed);
                            latency.saturating_record(t0.elapsed().as_nanos() as u64);
                            accepted += u64::from(ok);
                            for &index in &chunk[1..] {
                                accepted += u64::from(validate(&pool.tokens[index as usize]));
                            }
                            ops += chunk.len() as u64;
                            if stop.load(Ordering::Relaxed) {
                                break 'run;
                            }
                        }
                    }
                    (began.elapsed().as_secs_f64(), ops, accepted, latency)
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        let base = progress.position();
        while began.elapsed() < budget {
            std::thread::sleep(Duration::from_millis(50).min(budget - began.elapsed().min(budget)));
            progress.set_position(base + began.elapsed().min(budget).as_millis() as u64);
        }
        stop.store(true, Ordering::Relaxed);
        workers
            .into_iter()
            .filter_map(|w| w.join().ok())
            .collect::<Vec<_>>()
    });
    let mut latency = new_histogram();
    let (mut seconds, mut ops, mut accepted) = (0.0, 0, 0);
    for (secs, n, ok, hist) in &results {
        seconds += secs / results.len() as f64;
        ops += n;
        accepted += ok;
        let _ = latency.add(hist);
    }
    (seconds, ops, accepted, latency)
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3)
        .expect("constant bounds (1 ns to 60 s, 3 significant digits) are valid")
}

/// The baselines' token map: the valid and revoked tokens, by digest.
fn baseline_tokens(pool: &Pool) -> HashMap<baselines::Digest, Record> {
    let issued = pool.valid.start..pool.revoked.end;
    issued
        .map(|i| {
            let record = Record {
                name: format!("svc-{i}"),
                last_used: 0,
                revoked: pool.revoked.contains(&i),
            };
            (Sha256::digest(pool.tokens[i].as_bytes()).into(), record)
        })
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn progress_bar(total: Duration) -> ProgressBar {
    let bar =
        ProgressBar::with_draw_target(Some(total.as_millis() as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{msg:>16} [{bar:40}] {elapsed}/{duration}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn report_json(report: &Report, args: &StressArgs, threads: usize) -> Value {
    let quantile = |q| report.latency.value_at_quantile(q);
    json!({
        "design": report.design,
        "tokens": args.tokens,
        "threads": threads,
        "seconds": report.seconds,
        "ops": report.ops,
        "accepted": report.accepted,
        "ops_per_sec": report.ops_per_sec(),
        "latency_ns": {
            "p50": quantile(0.5),
            "p99": quantile(0.99),
            "p999": quantile(0.999),
            "max": report.latency.max(),
            "samples": report.latency.len(),
        },
        "snapshots": report.snapshots,
        "bytes_written": report.bytes,
        "verified": report.verified,
    })
}

fn print_table(reports: &[Report], args: &StressArgs, threads: usize) {
    println!(
        "{} tokens, {threads} threads, {} s per design (naive: at most {} s), Zipf exponent {}, seed {}; \
         latency sampled 1 in {SAMPLE_EVERY} (naive: every request); tokencache flushes every {}",
        args.tokens,
        args.seconds,
        NAIVE_BUDGET.as_secs(),
        args.hot,
        args.seed,
        humantime::format_duration(args.flush_interval)
    );
    println!(
        "{:<17} {:>14} {:>9} {:>9} {:>9} {:>10} {:>12} {:>9} {:>14}",
        "design",
        "ops/s",
        "p50",
        "p99",
        "p99.9",
        "snapshots",
        "written",
        "on disk",
        "tokencache is"
    );
    let ours = reports[0].ops_per_sec();
    for report in reports {
        let q = |q| format_ns(report.latency.value_at_quantile(q));
        let ratio = if report.design == "tokencache" {
            "-".to_string()
        } else {
            let ratio = ours / report.ops_per_sec().max(f64::MIN_POSITIVE);
            // Small ratios need their decimal: 1.4x is not 1x.
            let decimals = if ratio < 100.0 { 1 } else { 0 };
            format!("{ratio:.decimals$}x faster")
        };
        println!(
            "{:<17} {:>14} {:>9} {:>9} {:>9} {:>10} {:>12} {:>9} {:>14}",
            report.design,
            format!("{:.0}", report.ops_per_sec()),
            q(0.5),
            q(0.99),
            q(0.999),
            report.snapshots,
            format_bytes(report.bytes),
            if report.verified {
                "matches"
            } else {
                "DIFFERS"
            },
            ratio
        );
    }
}

fn format_ns(ns: u64) -> String {
    match ns {
        0..=9_999 => format!("{ns} ns"),
        10_000..=9_999_999 => format!("{:.1} us", ns as f64 / 1e3),
        _ => format!("{:.1} ms", ns as f64 / 1e6),
    }
}

fn format_bytes(bytes: u64) -> String {
    match bytes {
        0..=9_999 => format!("{bytes} B"),
        10_000..=9_999_999 => format!("{:.1} kB", bytes as f64 / 1e3),
        _ => format!("{:.1} MB", bytes as f64 / 1e6),
    }
}

//! `tokencache stress`: hammer a store with a realistic request mix from many threads, report
//! throughput, latency and what reached the disk, then check that the file matches memory.
//! `--compare` runs the same requests against the design card's literal design ([`card`])
//! and the designs in [`baselines`]; `--threads 1,2,8` repeats everything at each count, and
//! `--plot` draws the result ([`plot`]).
//!
//! Timing: reading the clock costs ~20-30 ns, a tenth of a validation, so only every
//! [`SAMPLE_EVERY`]th request is timed for the latency histogram (every request for the
//! millisecond-scale `naive`); throughput counts every request.

pub mod baselines;
mod card;
mod plot;
mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokencache::{NewToken, TokenStore};

use baselines::{Baseline, Kind, Record};
use card::Card;
use report::{Report, Settings};

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
    /// Validating threads (default: one per core); a list such as `1,2,8,32` runs every
    /// design at each count and ends with a summary across them.
    #[arg(
        long,
        value_name = "N[,N...]",
        value_delimiter = ',',
        value_parser = clap::value_parser!(u16).range(1..=1024)
    )]
    threads: Vec<u16>,
    /// Seconds each design runs.
    #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
    seconds: f64,
    /// Zipf exponent of the valid requests over the tokens: 0 is uniform, 1 makes a few hot.
    #[arg(long, default_value_t = 1.0, value_parser = non_negative)]
    hot: f64,
    /// tokencache's (and dashmap's) flush interval: how often `last_used` times reach disk
    /// under load.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    flush_interval: Duration,
    /// Seed of the request mix (the same seed gives the same requests).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Also run the other designs (dashmap, locked-debounce, background-saver, naive) and
    /// print how many times faster tokencache is.
    #[arg(long)]
    compare: bool,
    /// Print a JSON array, one object per design and thread count, instead of tables.
    #[arg(long)]
    json: bool,
    /// Also draw throughput and p99 latency per thread count for every design into this SVG
    /// file.
    #[arg(long, value_name = "FILE.svg", value_parser = svg_path)]
    plot: Option<PathBuf>,
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 86_400.0 => Ok(s),
        _ => Err("give a number of seconds greater than 0 (at most 86400)".into()),
    }
}

fn svg_path(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    if !path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"))
    {
        return Err("the plot is an SVG file: give a name ending in .svg".into());
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "directory {} does not exist; create it first",
            dir.display()
        ));
    }
    Ok(path)
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

/// A design `stress` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Design {
    Tokencache,
    /// The design card's literal design ([`card`]), named `dashmap`.
    Card,
    Baseline(Kind),
}

impl Design {
    fn name(self) -> &'static str {
        match self {
            Design::Tokencache => "tokencache",
            Design::Card => "dashmap",
            Design::Baseline(kind) => kind.name(),
        }
    }

    /// How long the design runs at each thread count.
    fn budget(self, run_for: Duration) -> Duration {
        match self {
            Design::Baseline(Kind::Naive) => run_for.min(NAIVE_BUDGET),
            _ => run_for,
        }
    }
}

/// The thread counts to run, in the order given, each once (default: one per core).
fn thread_counts(given: &[u16]) -> Vec<usize> {
    if given.is_empty() {
        return vec![std::thread::available_parallelism().map_or(2, |n| n.get())];
    }
    let mut counts: Vec<usize> = Vec::with_capacity(given.len());
    for &count in given {
        if !counts.contains(&usize::from(count)) {
            counts.push(usize::from(count));
        }
    }
    counts
}

/// Runs `tokencache stress` on a scratch store file, or on the PostgreSQL database `database`
/// (a URL) if given: tokencache's store is then that database (the tokens are issued into it
/// and stay), and the other designs still use scratch files.
pub fn run(args: &StressArgs, database: Option<&Path>) -> Result<ExitCode, String> {
    let counts = thread_counts(&args.threads);
    let most = counts.iter().copied().max().unwrap_or(1);
    let dir = tempfile::tempdir().map_err(|e| format!("could not make a temp directory: {e}"))?;
    let path = database.map_or_else(|| dir.path().join("tokens.snap"), Path::to_path_buf);
    let fail = |e: tokencache::Error| e.to_string();

    let mut store = TokenStore::builder(&path)
        .flush_interval(args.flush_interval)
        .open()
        .map_err(fail)?;
    eprintln!(
        "stress: issuing {} tokens into {} ...",
        args.tokens,
        store.path().display()
    );
    let pool = build_pool(&store, dir.path(), args.tokens as usize).map_err(fail)?;
    // Thread `t` replays the same schedule at every count.
    let schedules: Vec<Vec<u32>> = (0..most)
        .map(|t| schedule(&pool, args.hot, args.seed.wrapping_add(t as u64)))
        .collect::<Result<_, _>>()?;
    let run_for = Duration::from_secs_f64(args.seconds);

    let mut designs = vec![Design::Tokencache];
    if args.compare {
        designs.extend([
            Design::Card,
            Design::Baseline(Kind::LockedDebounce),
            Design::Baseline(Kind::BackgroundSaver),
            Design::Baseline(Kind::Naive),
        ]);
    }
    let per_count: Duration = designs.iter().map(|d| d.budget(run_for)).sum();
    let progress = progress_bar(per_count * counts.len() as u32);

    let mut reports = Vec::new();
    for &threads in &counts {
        let work = Workload {
            pool: &pool,
            schedules: &schedules[..threads],
            progress: &progress,
        };
        for &design in &designs {
            let budget = design.budget(run_for);
            let label = format!("{} x{threads}", design.name());
            let report = match design {
                Design::Tokencache => {
                    let (report, reopened) =
                        run_tokencache(store, &path, args.flush_interval, &work, budget, &label)?;
                    store = reopened;
                    report
                }
                Design::Card => {
                    let file = dir.path().join("dashmap.db");
                    let card = Card::new(&file, issued(&pool), args.flush_interval)
                        .map_err(|e| format!("could not set up dashmap: {e}"))?;
                    let measured = hammer(
                        &label,
                        |token| card.validate(token, now_ms()),
                        &work,
                        budget,
                        SAMPLE_EVERY,
                    );
                    measured.report(design.name(), card.close())
                }
                Design::Baseline(kind) => {
                    let file = dir.path().join(format!("{}.db", kind.name()));
                    let tokens = issued(&pool)
                        .map(|(token, record)| (Sha256::digest(token.as_bytes()).into(), record))
                        .collect();
                    let baseline = Baseline::new(kind, &file, tokens)
                        .map_err(|e| format!("could not set up {}: {e}", kind.name()))?;
                    let sample_every = if kind == Kind::Naive { 1 } else { SAMPLE_EVERY };
                    let measured = hammer(
                        &label,
                        |token| baseline.validate(token, now_ms()),
                        &work,
                        budget,
                        sample_every,
                    );
                    measured.report(design.name(), baseline.close())
                }
            };
            reports.push(report);
        }
    }
    progress.finish_and_clear();
    store.close().map_err(fail)?;

    let settings = Settings {
        tokens: args.tokens,
        seconds: args.seconds,
        naive_budget: NAIVE_BUDGET,
        hot: args.hot,
        seed: args.seed,
        sample_every: SAMPLE_EVERY,
        flush_interval: args.flush_interval,
    };
    if args.json {
        let rows = reports.iter().map(|r| report::json_row(r, &settings));
        println!("{}", Value::Array(rows.collect()));
    } else {
        for (i, table) in reports.chunk_by(|a, b| a.threads == b.threads).enumerate() {
            if i > 0 {
                println!();
            }
            report::print_table(table, &settings);
        }
        if counts.len() > 1 {
            println!();
            report::print_summary(&reports, &counts);
        }
    }
    if let Some(file) = &args.plot {
        plot::write(
            file,
            &reports,
            &plot_title(&counts),
            &plot_subtitle(&settings, args.compare),
        )?;
        eprintln!("stress: wrote {}", file.display());
    }
    if reports.iter().all(|r| r.verified) {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("stress: a design's file on disk does not match its memory (see `verified`)");
        Ok(ExitCode::from(1))
    }
}

fn plot_title(counts: &[usize]) -> String {
    let counts: Vec<String> = counts.iter().map(usize::to_string).collect();
    format!(
        "tokencache stress: validations at {} threads",
        counts.join(", ")
    )
}

fn plot_subtitle(settings: &Settings, compare: bool) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let flushing = if compare {
        "tokencache and dashmap flush"
    } else {
        "tokencache flushes"
    };
    format!(
        "{} tokens, Zipf exponent {}, seed {}; {} s per design and count (naive: at most {} s); \
         {flushing} every {}; {cpus} CPUs",
        settings.tokens,
        settings.hot,
        settings.seed,
        settings.seconds,
        settings.naive_budget.as_secs(),
        humantime::format_duration(settings.flush_interval)
    )
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
        // Eight callers at once share journal records (group commit).
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

/// Measures tokencache, then checks its file against memory by reopening it; returns the
/// report and the reopened store (the next thread count's).
fn run_tokencache(
    store: TokenStore,
    path: &Path,
    flush_interval: Duration,
    work: &Workload,
    budget: Duration,
    label: &str,
) -> Result<(Report, TokenStore), String> {
    let before = store.stats();
    let measured = hammer(
        label,
        |token| store.validate(token).is_ok(),
        work,
        budget,
        SAMPLE_EVERY,
    );
    store.flush().map_err(|e| e.to_string())?;
    let after = store.stats();
    let in_memory = store.list();
    store.close().map_err(|e| e.to_string())?;
    let reopened = TokenStore::builder(path)
        .flush_interval(flush_interval)
        .open()
        .map_err(|e| e.to_string())?;
    let written = baselines::Closed {
        writes: (after.journal_records_written + after.snapshots_written)
            - (before.journal_records_written + before.snapshots_written),
        bytes: after.bytes_written - before.bytes_written,
        verified: reopened.list() == in_memory,
    };
    Ok((measured.report("tokencache", written), reopened))
}

/// What [`hammer`] measured: the wall time from the first thread's start to the last
/// one's stop, requests, accepted requests, and the merged latency histogram (ns).
///
/// Not the threads' mean time: with more threads than cores, threads first scheduled late
/// run shorter, and their mean would overstate the rate.
struct Measured {
    threads: usize,
    seconds: f64,
    ops: u64,
    accepted: u64,
    latency: Histogram<u64>,
}

impl Measured {
    fn report(self, design: &'static str, written: baselines::Closed) -> Report {
        Report {
            design,
            threads: self.threads,
            seconds: self.seconds,
            ops: self.ops,
            accepted: self.accepted,
            latency: self.latency,
            writes: written.writes,
            bytes: written.bytes,
            verified: written.verified,
        }
    }
}

/// What the threads of one run replay: thread `t` sends `schedules[t]`, cycled.
struct Workload<'a> {
    pool: &'a Pool,
    schedules: &'a [Vec<u32>],
    progress: &'a ProgressBar,
}

/// Runs `validate` from one thread per schedule for `budget`, timing one request in
/// `sample_every`.
fn hammer(
    label: &str,
    validate: impl Fn(&str) -> bool + Sync,
    work: &Workload,
    budget: Duration,
    sample_every: usize,
) -> Measured {
    let Workload {
        pool,
        schedules,
        progress,
    } = *work;
    progress.set_message(label.to_string());
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
                    (began, Instant::now(), ops, accepted, latency)
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
    let first = results.iter().map(|r| r.0).min();
    let last = results.iter().map(|r| r.1).max();
    let seconds = match (first, last) {
        (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
        _ => 0.0,
    };
    let mut latency = new_histogram();
    let (mut ops, mut accepted) = (0, 0);
    for (_, _, n, ok, hist) in &results {
        ops += n;
        accepted += ok;
        let _ = latency.add(hist);
    }
    Measured {
        threads: schedules.len(),
        seconds,
        ops,
        accepted,
        latency,
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3)
        .expect("constant bounds (1 ns to 60 s, 3 significant digits) are valid")
}

/// The issued tokens (valid and revoked) and their records, for the other designs.
fn issued(pool: &Pool) -> impl Iterator<Item = (&str, Record)> {
    (pool.valid.start..pool.revoked.end).map(|i| {
        let record = Record {
            name: format!("svc-{i}"),
            last_used: 0,
            revoked: pool.revoked.contains(&i),
        };
        (pool.tokens[i].as_str(), record)
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn progress_bar(total: Duration) -> ProgressBar {
    let bar =
        ProgressBar::with_draw_target(Some(total.as_millis() as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{msg:>21} [{bar:40}] {elapsed}/{duration}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

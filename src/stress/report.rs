//! What one design did at one thread count, and how `stress` prints it: a table per thread
//! count, a summary across thread counts, or JSON rows.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// One design's measured run at one thread count.
pub struct Report {
    pub design: &'static str,
    pub threads: usize,
    pub seconds: f64,
    pub ops: u64,
    pub accepted: u64,
    pub latency: Histogram<u64>,
    pub writes: u64,
    pub bytes: u64,
    pub verified: bool,
}

impl Report {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.seconds
    }

    /// Latency at quantile `q`, ns.
    pub fn latency_ns(&self, q: f64) -> u64 {
        self.latency.value_at_quantile(q)
    }
}

/// The run's settings, as the tables' first line states them.
pub struct Settings {
    pub tokens: u32,
    pub seconds: f64,
    pub naive_budget: Duration,
    pub hot: f64,
    pub seed: u64,
    pub sample_every: usize,
    pub flush_interval: Duration,
}

/// `ours / theirs` as the tables print it: small ratios keep their decimal (1.4x is not 1x).
fn ratio(ours: f64, theirs: f64) -> String {
    let ratio = ours / theirs.max(f64::MIN_POSITIVE);
    let decimals = if ratio < 100.0 { 1 } else { 0 };
    format!("{ratio:.decimals$}x")
}

/// One JSON object per report.
pub fn json_row(report: &Report, settings: &Settings) -> Value {
    json!({
        "design": report.design,
        "tokens": settings.tokens,
        "threads": report.threads,
        "seconds": report.seconds,
        "ops": report.ops,
        "accepted": report.accepted,
        "ops_per_sec": report.ops_per_sec(),
        "latency_ns": {
            "p50": report.latency_ns(0.5),
            "p99": report.latency_ns(0.99),
            "p999": report.latency_ns(0.999),
            "max": report.latency.max(),
            "samples": report.latency.len(),
        },
        "writes": report.writes,
        "bytes_written": report.bytes,
        "verified": report.verified,
    })
}

/// The table of one thread count; `reports[0]` is tokencache.
pub fn print_table(reports: &[Report], settings: &Settings) {
    let threads = reports.first().map_or(0, |r| r.threads);
    let flushing = if reports.iter().any(|r| r.design == "dashmap") {
        "tokencache and dashmap flush"
    } else {
        "tokencache flushes"
    };
    println!(
        "{} tokens, {threads} threads, {} s per design (naive: at most {} s), Zipf exponent {}, seed {}; \
         latency sampled 1 in {} (naive: every request); {flushing} every {}",
        settings.tokens,
        settings.seconds,
        settings.naive_budget.as_secs(),
        settings.hot,
        settings.seed,
        settings.sample_every,
        humantime::format_duration(settings.flush_interval)
    );
    println!(
        "{:<17} {:>14} {:>9} {:>9} {:>9} {:>10} {:>12} {:>9} {:>14}",
        "design", "ops/s", "p50", "p99", "p99.9", "writes", "written", "on disk", "tokencache is"
    );
    let ours = reports.first().map_or(0.0, Report::ops_per_sec);
    for report in reports {
        let q = |q| format_ns(report.latency_ns(q));
        let faster = if report.design == "tokencache" {
            "-".to_string()
        } else {
            format!("{} faster", ratio(ours, report.ops_per_sec()))
        };
        println!(
            "{:<17} {:>14} {:>9} {:>9} {:>9} {:>10} {:>12} {:>9} {:>14}",
            report.design,
            format!("{:.0}", report.ops_per_sec()),
            q(0.5),
            q(0.99),
            q(0.999),
            report.writes,
            format_bytes(report.bytes),
            if report.verified {
                "matches"
            } else {
                "DIFFERS"
            },
            faster
        );
    }
}

/// Column widths of the summary: ops/s, ratio, p99.
const RATE_WIDTH: usize = 7;
const RATIO_WIDTH: usize = 8;
const P99_WIDTH: usize = 9;

/// One row per design, and for each thread count in `counts`: its ops/s, how many times
/// faster tokencache is than it, and its p99 latency.
pub fn print_summary(reports: &[Report], counts: &[usize]) {
    let mut designs: Vec<&str> = Vec::new();
    for report in reports {
        if !designs.contains(&report.design) {
            designs.push(report.design);
        }
    }
    let find = |design: &str, threads: usize| {
        reports
            .iter()
            .find(|r| r.design == design && r.threads == threads)
    };
    let group = |width: usize| counts.len() * (width + 1);
    println!(
        "Summary by validating threads: each design's ops/s, how many times faster tokencache \
         is (speedup), and each design's p99 latency"
    );
    let titles = format!(
        "{:<17} {:^rate$} {:^ratio$} {:^p99$}",
        "",
        "ops/s",
        "speedup",
        "p99",
        rate = group(RATE_WIDTH),
        ratio = group(RATIO_WIDTH),
        p99 = group(P99_WIDTH),
    );
    println!("{}", titles.trim_end());
    let mut header = format!("{:<17}", "design / threads");
    for width in [RATE_WIDTH, RATIO_WIDTH, P99_WIDTH] {
        header.push(' ');
        for threads in counts {
            header.push_str(&format!(" {threads:>width$}"));
        }
    }
    println!("{header}");
    for design in &designs {
        let mut line = format!("{design:<17} ");
        let cells = |cell: &dyn Fn(&Report) -> String, width: usize| {
            counts
                .iter()
                .map(|&threads| {
                    let text = find(design, threads).map_or_else(|| "?".into(), cell);
                    format!(" {text:>width$}")
                })
                .collect::<String>()
        };
        line.push_str(&cells(&|r| format_rate(r.ops_per_sec()), RATE_WIDTH));
        line.push(' ');
        line.push_str(&cells(
            &|r| match find("tokencache", r.threads) {
                Some(ours) if r.design != "tokencache" => {
                    ratio(ours.ops_per_sec(), r.ops_per_sec())
                }
                _ => "-".into(),
            },
            RATIO_WIDTH,
        ));
        line.push(' ');
        line.push_str(&cells(&|r| format_ns(r.latency_ns(0.99)), P99_WIDTH));
        println!("{line}");
    }
}

/// Nanoseconds for a table cell (at most 9 characters below 10,000 s).
fn format_ns(ns: u64) -> String {
    match ns {
        0..=9_999 => format!("{ns} ns"),
        10_000..=9_999_999 => format!("{:.1} us", ns as f64 / 1e3),
        _ => format!("{:.1} ms", ns as f64 / 1e6),
    }
}

/// Requests per second in at most 6 characters: `119`, `12.3k`, `4.96M`.
fn format_rate(per_sec: f64) -> String {
    match per_sec {
        r if r < 1e3 => format!("{r:.0}"),
        r if r < 1e5 => format!("{:.1}k", r / 1e3),
        r if r < 1e6 => format!("{:.0}k", r / 1e3),
        r if r < 1e8 => format!("{:.2}M", r / 1e6),
        r => format!("{:.0}M", r / 1e6),
    }
}

fn format_bytes(bytes: u64) -> String {
    match bytes {
        0..=9_999 => format!("{bytes} B"),
        10_000..=9_999_999 => format!("{:.1} kB", bytes as f64 / 1e3),
        _ => format!("{:.1} MB", bytes as f64 / 1e6),
    }
}

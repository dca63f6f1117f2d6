//! `tokencache stress` end to end: every design runs at every thread count asked for, the
//! JSON has its documented shape, each design's file on disk matches its memory after the
//! run, and `--plot` draws every design. Asserts no speed.

use std::process::{Command, Output};

use serde_json::Value;

/// Every design of `--compare`, in the order each thread count runs them.
const DESIGNS: [&str; 5] = [
    "tokencache",
    "dashmap",
    "locked-debounce",
    "background-saver",
    "naive",
];

/// Runs `tokencache stress` on a small store with `args`, for a short time.
fn stress(seconds: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tokencache"))
        .args(["stress", "--tokens", "1000", "--seconds", seconds])
        .args(args)
        .output()
        .expect("run tokencache stress")
}

/// The JSON rows of a successful run.
fn rows(output: &Output) -> Vec<Value> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    serde_json::from_slice(&output.stdout).expect("a JSON array")
}

fn design(row: &Value) -> &str {
    row["design"].as_str().expect("design")
}

#[test]
fn stress_compare_json_reports_every_design_and_verifies_the_files() {
    let output = stress("0.3", &["--threads", "2", "--compare", "--json"]);
    let rows = rows(&output);
    let designs: Vec<&str> = rows.iter().map(design).collect();
    assert_eq!(designs, DESIGNS);
    for row in &rows {
        let design = &row["design"];
        assert_eq!(row["verified"], true, "{design}: file differs from memory");
        assert_eq!(row["tokens"], 1000);
        assert_eq!(row["threads"], 2);
        let ops = row["ops"].as_u64().expect("ops");
        let accepted = row["accepted"].as_u64().expect("accepted");
        assert!(ops > 0 && accepted > 0 && accepted <= ops, "{design}");
        // 5% of the mix is refused: in 1,000 requests some must be (naive may do fewer).
        assert!(
            ops < 1_000 || accepted < ops,
            "{design}: mix has rejections"
        );
        assert!(row["ops_per_sec"].as_f64().expect("ops_per_sec") > 0.0);
        let latency = &row["latency_ns"];
        let p50 = latency["p50"].as_u64().expect("p50");
        let p99 = latency["p99"].as_u64().expect("p99");
        let p999 = latency["p999"].as_u64().expect("p999");
        assert!(0 < p50 && p50 <= p99 && p99 <= p999, "{design}: {latency}");
        assert!(latency["samples"].as_u64().expect("samples") > 0);
        assert!(row["bytes_written"].as_u64().is_some());
    }
    let row = |name: &str| {
        rows.iter()
            .find(|r| design(r) == name)
            .expect("every design has a row")
    };
    let writes = |name: &str| row(name)["writes"].as_u64().expect("writes");
    // naive saves the whole file on every accepted validation, the others far less often.
    let naive_accepted = row("naive")["accepted"].as_u64().expect("accepted");
    assert_eq!(writes("naive"), naive_accepted);
    assert!(
        writes("locked-debounce") <= 1 && writes("background-saver") <= 1,
        "60 s and 10 s intervals in a 0.3 s run"
    );
    // dashmap's validations dirtied tokens, so its persister saved them (at the latest when
    // the run closed it), and the file it left matches its map (`verified` above).
    assert!(writes("dashmap") >= 1, "{}", row("dashmap"));
    assert!(row("dashmap")["bytes_written"].as_u64().expect("bytes") > 0);
}

#[test]
fn stress_runs_every_thread_count_in_one_invocation() {
    let output = stress("0.1", &["--threads", "1,3", "--compare", "--json"]);
    let rows = rows(&output);
    // One row per design per count: each count runs every design, counts in the order given.
    let got: Vec<(u64, &str)> = rows
        .iter()
        .map(|r| (r["threads"].as_u64().expect("threads"), design(r)))
        .collect();
    let want: Vec<(u64, &str)> = [1, 3]
        .into_iter()
        .flat_map(|threads| DESIGNS.map(|design| (threads, design)))
        .collect();
    assert_eq!(got, want);
    for row in &rows {
        assert_eq!(row["verified"], true, "{row}");
        assert!(row["ops"].as_u64().expect("ops") > 0, "{row}");
    }
}

#[test]
fn stress_with_a_single_count_and_no_compare_keeps_one_row() {
    let rows = rows(&stress("0.1", &["--threads", "4", "--json"]));
    assert_eq!(rows.len(), 1);
    assert_eq!(design(&rows[0]), "tokencache");
    assert_eq!(rows[0]["threads"], 4);
    assert_eq!(rows[0]["verified"], true);
}

#[test]
fn stress_tables_and_plot_cover_every_count_and_design() {
    let dir = tempfile::tempdir().expect("temp dir");
    let svg = dir.path().join("scaling.svg");
    let svg_arg = svg.to_str().expect("UTF-8 temp path");
    let output = stress(
        "0.05",
        &["--threads", "1,2", "--compare", "--plot", svg_arg],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    // A table per count, then the summary with a row per design.
    assert!(stdout.contains("1000 tokens, 1 threads,"), "{stdout}");
    assert!(stdout.contains("1000 tokens, 2 threads,"), "{stdout}");
    let summary = stdout
        .split_once("Summary by validating threads")
        .map(|(_, summary)| summary)
        .expect("a summary after the tables");
    for design in DESIGNS {
        assert!(
            summary.lines().any(|l| l.starts_with(design)),
            "{design} missing from the summary:\n{summary}"
        );
    }

    let image = std::fs::read_to_string(&svg).expect("the SVG was written");
    assert!(image.trim_start().starts_with("<svg"), "{image}");
    assert!(image.trim_end().ends_with("</svg>"));
    assert!(image.contains("<polyline"), "the lines are drawn");
    // The legend names each design in a text element of its own.
    let texts: Vec<&str> = image
        .split("<text")
        .skip(1)
        .filter_map(|element| element.split_once('>')?.1.split_once("</text>"))
        .map(|(content, _)| content.trim())
        .collect();
    for design in DESIGNS {
        assert!(texts.contains(&design), "{design} missing from {texts:?}");
    }
}

#[test]
fn stress_rejects_bad_options() {
    for args in [
        &["stress", "--seconds", "0"][..],
        &["stress", "--tokens", "1"],
        &["stress", "--hot", "-1"],
        &["stress", "--threads", "0"],
        &["stress", "--threads", "1,0"],
        &["stress", "--threads", "1,,2"],
        &["stress", "--plot", "scaling.png"],
        &["stress", "--plot", "no-such-directory/scaling.svg"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_tokencache"))
            .args(args)
            .output()
            .expect("run tokencache");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
}

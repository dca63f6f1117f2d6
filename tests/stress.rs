//! `tokencache stress` end to end: every design runs, the JSON has its documented shape, and
//! each design's file on disk matches its memory after the run. Asserts no speed.
#![cfg(feature = "cli")]

use std::process::Command;

use serde_json::Value;

#[test]
fn stress_compare_json_reports_every_design_and_verifies_the_files() {
    let output = Command::new(env!("CARGO_BIN_EXE_tokencache"))
        .args([
            "stress",
            "--tokens",
            "1000",
            "--seconds",
            "0.3",
            "--threads",
            "2",
        ])
        .args(["--compare", "--json"])
        .output()
        .expect("run tokencache stress");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let rows: Vec<Value> = serde_json::from_slice(&output.stdout).expect("a JSON array");
    let designs: Vec<&str> = rows.iter().filter_map(|r| r["design"].as_str()).collect();
    assert_eq!(
        designs,
        ["tokencache", "locked-debounce", "background-saver", "naive"]
    );
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
    // naive saves the whole file on every accepted validation, the others far less often.
    let snapshots = |i: usize| rows[i]["snapshots"].as_u64().expect("snapshots");
    let naive_accepted = rows[3]["accepted"].as_u64().expect("accepted");
    assert_eq!(snapshots(3), naive_accepted);
    assert!(
        snapshots(1) <= 1 && snapshots(2) <= 1,
        "60 s and 10 s intervals in a 0.3 s run"
    );
}

#[test]
fn stress_rejects_bad_options() {
    for args in [
        &["stress", "--seconds", "0"][..],
        &["stress", "--tokens", "1"],
        &["stress", "--hot", "-1"],
        &["stress", "--threads", "0"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_tokencache"))
            .args(args)
            .output()
            .expect("run tokencache");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
}

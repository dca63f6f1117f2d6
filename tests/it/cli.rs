//! The `tokencache` binary, run as a real process: exit codes, stdout/stderr, stdin secrets.

use crate::common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokencache::{ManualClock, NewToken, RateLimit, TokenStore};

/// How long a command that must not wait for input gets before the test calls it hung. Far
/// above what any of them takes, even on a loaded machine; it only turns a hang into a failure.
const HANG: Duration = Duration::from_secs(30);

/// The CLI on `store` with `args`, stdout and stderr piped, stdin for the caller to set.
fn command(store: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokencache"));
    command
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("TOKENCACHE_STORE")
        .env_remove("TOKENCACHE_PREFIX")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Waits for `child` to exit within [`HANG`]; kills it and fails the test if it does not.
fn wait_or_kill(mut child: Child, what: &str) -> Output {
    let start = Instant::now();
    while child.try_wait().expect("poll the child").is_none() {
        if start.elapsed() > HANG {
            child.kill().expect("kill the hung child");
            let output = child.wait_with_output().expect("reap the killed child");
            panic!(
                "{what}: still running after {HANG:?}, killed; stderr: {}",
                stderr(&output)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("collect the output")
}

/// Runs the CLI on `store` with `args`, feeding `stdin`.
fn run(store: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = command(store, args)
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn tokencache");
    // The CLI reads at most 64 KiB of stdin, so a longer input may meet a closed pipe.
    match child.stdin.take().expect("stdin").write_all(stdin) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("write stdin: {e}"),
        _ => {}
    }
    child.wait_with_output().expect("wait for tokencache")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).expect("stderr is UTF-8")
}

/// Issues a token and returns it (stdout holds only the token).
fn issue(store: &Path, args: &[&str]) -> String {
    let output = run(store, &[&["issue"], args].concat(), b"");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let token = stdout(&output).trim_end().to_string();
    assert_eq!(
        stdout(&output),
        format!("{token}\n"),
        "stdout is the token alone"
    );
    token
}

#[test]
fn issue_validate_revoke_round_trip_with_exit_codes() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    let token = issue(store, &["ci-bot", "--scope", "read", "--expires-in", "30d"]);
    let id = &token[3..11];

    let valid = run(store, &["validate"], format!("{token}\n").as_bytes());
    assert_eq!(valid.status.code(), Some(0), "{}", stderr(&valid));
    assert!(stdout(&valid).contains(id));

    let scoped = run(store, &["validate", "--scope", "write"], token.as_bytes());
    assert_eq!(scoped.status.code(), Some(1));
    assert!(stderr(&scoped).contains("missing_scope"));

    let revoke = run(store, &["revoke", id], b"");
    assert_eq!(revoke.status.code(), Some(0), "{}", stderr(&revoke));

    let revoked = run(store, &["validate", "--json"], token.as_bytes());
    assert_eq!(revoked.status.code(), Some(1));
    let outcome: Value = serde_json::from_str(&stdout(&revoked)).expect("JSON outcome");
    assert_eq!(outcome["valid"], false);
    assert_eq!(outcome["reason"], "revoked");
}

#[test]
fn list_json_shows_details_without_secrets() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    let first = issue(store, &["alpha", "--scope", "read", "--scope", "write"]);
    let second = issue(store, &["beta"]);
    // A validation records last_used, which `list` then shows.
    assert_eq!(
        run(store, &["validate"], first.as_bytes()).status.code(),
        Some(0)
    );

    let output = run(store, &["list", "--json"], b"");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(!text.contains(&first[12..]) && !text.contains(&second[12..]));
    let tokens: Vec<Value> = serde_json::from_str(&text).expect("JSON array");
    assert_eq!(tokens.len(), 2);
    assert_eq!(tokens[0]["id"], &first[3..11]);
    assert_eq!(tokens[0]["name"], "alpha");
    assert_eq!(tokens[0]["scopes"], serde_json::json!(["read", "write"]));
    assert_eq!(tokens[0]["status"], "active");
    assert!(tokens[0]["last_used"].is_string());
    assert_eq!(tokens[1]["name"], "beta");
    assert!(tokens[1]["last_used"].is_null());

    let table = run(store, &["list"], b"");
    assert_eq!(table.status.code(), Some(0));
    assert!(stdout(&table).lines().count() == 3, "header + 2 rows");
}

#[test]
fn issue_json_includes_a_working_token() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    let output = run(store, &["issue", "svc", "--json"], b"");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let issued: Value = serde_json::from_str(&stdout(&output)).expect("JSON object");
    let token = issued["token"].as_str().expect("token field");
    assert_eq!(issued["id"], &token[3..11]);
    assert!(issued["expires_at"].is_null());
    let valid = run(store, &["validate"], token.as_bytes());
    assert_eq!(valid.status.code(), Some(0));
}

#[test]
fn inspect_reports_counts() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    let token = issue(store, &["a"]);
    issue(store, &["b"]);
    assert_eq!(
        run(store, &["revoke", &token[3..11]], b"").status.code(),
        Some(0)
    );
    let output = run(store, &["inspect", "--json"], b"");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let info: Value = serde_json::from_str(&stdout(&output)).expect("JSON object");
    assert_eq!(info["format_version"], tokencache::FORMAT_VERSION);
    assert_eq!(info["tokens"], 2);
    assert_eq!(info["revoked"], 1);
    let file_len = std::fs::metadata(store).expect("store file").len();
    assert_eq!(info["file_bytes"], file_len);
}

#[test]
fn missing_store_is_an_error_and_is_not_created() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    for args in [
        &["list"][..],
        &["revoke", "a1B2c3D4"],
        &["delete", "a1B2c3D4"],
        &["purge", "--older-than", "0s"],
        &["rotate", "a1B2c3D4", "--grace", "1h"],
        &["inspect"],
    ] {
        let output = run(store, args, b"");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&output).contains("does not exist") || stderr(&output).contains("could not")
        );
    }
    let output = run(store, &["validate"], b"tc_whatever");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        !store.exists(),
        "a mistyped --store must not create a store"
    );
}

#[test]
fn bad_stdin_and_bad_ids_fail_cleanly() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    issue(store, &["a"]);

    let binary = run(store, &["validate"], b"\xff\xfe\x00tc_");
    assert_eq!(
        binary.status.code(),
        Some(1),
        "non-UTF-8 is a malformed token"
    );
    assert!(stderr(&binary).contains("malformed"));

    let huge = run(store, &["validate"], &vec![b'x'; 1 << 20]);
    assert_eq!(huge.status.code(), Some(1));

    let unknown = run(store, &["revoke", "zzzzzzzz"], b"");
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains("no token has id zzzzzzzz"));

    let not_an_id = run(store, &["revoke", "tc_x"], b"");
    assert_eq!(not_an_id.status.code(), Some(2));
    assert!(stderr(&not_an_id).contains("not a token id"));

    let bad_duration = run(store, &["issue", "x", "--expires-in", "3 fortnights"], b"");
    assert_eq!(bad_duration.status.code(), Some(2));
}

/// A store in a scratch directory, held open by this test process as a running service
/// holds it (the OS lock excludes the CLI's process), with a snapshot of one token and a
/// journal of later changes: two tokens issued after opening and the first one revoked.
/// Returns the scratch directory, the open store and the tokens, oldest first.
fn live_service() -> (common::Scratch, TokenStore, Vec<String>) {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    let first = issue(store, &["from-snapshot", "--scope", "read"]);
    let service = TokenStore::open(store).expect("open the store as a service would");
    let second = service
        .issue(NewToken::new("from-journal").scope("read"))
        .expect("issue");
    let third = service
        .issue(NewToken::new("from-journal-too"))
        .expect("issue");
    let first_id = first[3..11].parse().expect("an id");
    service.revoke(&first_id).expect("revoke");
    let tokens = vec![first, second.secret().into(), third.secret().into()];
    (scratch, service, tokens)
}

#[test]
fn list_beside_a_live_service_shows_the_tokens_only_in_its_journal() {
    let (scratch, service, tokens) = live_service();
    let store = scratch.path.as_path();

    let listed = list_json(store);
    // Oldest first as the service lists them (tokens issued in one millisecond go by id).
    let expected: Vec<Value> = service
        .list()
        .iter()
        .map(|t| json!([t.id.as_str(), t.name]))
        .collect();
    let shown: Vec<Value> = listed.iter().map(|t| json!([t["id"], t["name"]])).collect();
    assert_eq!(shown, expected, "every token, oldest first");
    let status_of = |token: &str| {
        let token = listed.iter().find(|t| t["id"] == token[3..11]);
        token.expect("listed")["status"].clone()
    };
    assert_eq!(status_of(&tokens[0]), "revoked");
    assert_eq!(status_of(&tokens[1]), "active");
    assert_eq!(status_of(&tokens[2]), "active");

    let table = run(store, &["list"], b"");
    assert_eq!(table.status.code(), Some(0), "{}", stderr(&table));
    assert!(stdout(&table).contains("from-journal-too"));
    service.close().expect("close");
}

#[test]
fn inspect_beside_a_live_service_reports_the_journal() {
    let (scratch, service, _) = live_service();
    let store = scratch.path.as_path();

    let output = run(store, &["inspect", "--json"], b"");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let info: Value = serde_json::from_str(&stdout(&output)).expect("JSON object");
    assert_eq!(
        info["journal_records"], 3,
        "two issues and a revoke: {info}"
    );
    assert_eq!(info["journal_torn"], false);
    assert_eq!(info["tokens"], 3);
    assert_eq!(info["revoked"], 1);
    let journal_len = std::fs::metadata(common::journal_path(store))
        .expect("journal")
        .len();
    assert_eq!(info["journal_bytes"], journal_len);
    let snapshot_seq = info["snapshot_seq"].as_u64().expect("snapshot_seq");

    let text = run(store, &["inspect"], b"");
    assert_eq!(text.status.code(), Some(0), "{}", stderr(&text));
    let text = stdout(&text);
    assert!(
        text.contains(&format!("covers journal records up to {snapshot_seq}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("journal:        {journal_len} bytes, 3 record(s)")),
        "{text}"
    );
    service.close().expect("close");
}

#[test]
fn validate_beside_a_live_service_checks_read_only_and_says_so() {
    let (scratch, service, tokens) = live_service();
    let store = scratch.path.as_path();

    let valid = run(
        store,
        &["validate", "--json", "--scope", "read"],
        tokens[1].as_bytes(),
    );
    assert_eq!(valid.status.code(), Some(0), "{}", stderr(&valid));
    let outcome: Value = serde_json::from_str(&stdout(&valid)).expect("JSON outcome");
    assert_eq!(outcome["valid"], true);
    assert_eq!(outcome["read_only"], true);
    assert_eq!(outcome["name"], "from-journal");
    assert!(
        stderr(&valid).contains("not recorded in last_used"),
        "{}",
        stderr(&valid)
    );

    assert_eq!(verdict(store, &tokens[0]), "revoked");
    assert_eq!(
        verdict(store, &tokens[2][..tokens[2].len() - 1]),
        "malformed"
    );
    let scoped = run(
        store,
        &["validate", "--scope", "read"],
        tokens[2].as_bytes(),
    );
    assert_eq!(scoped.status.code(), Some(1));
    assert!(stderr(&scoped).contains("missing_scope"));

    let id = tokens[1][3..11].parse().expect("an id");
    service.flush().expect("flush");
    let info = service.get(&id).expect("the token");
    assert_eq!(info.last_used, None, "a read-only check records no use");
    service.close().expect("close");
}

#[test]
fn changes_to_a_store_a_live_service_holds_are_refused_with_what_to_do() {
    let (scratch, service, tokens) = live_service();
    let store = scratch.path.as_path();
    let before = list_json(store);
    let id = &tokens[1][3..11];
    for args in [
        &["issue", "another"][..],
        &["revoke", id],
        &["delete", id],
        &["purge", "--older-than", "0s"],
        &["rotate", id, "--grace", "1h"],
        &["limit", id, "--rate-limit", "5/s"],
    ] {
        let output = run(store, args, b"");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(stdout(&output).is_empty(), "{args:?}");
        let text = stderr(&output);
        for part in [
            "is open in another process (a running service holds",
            ".lock); make the change through that service, or stop it and run this command again",
        ] {
            assert!(text.contains(part), "{args:?}: {text}");
        }
    }
    assert_eq!(list_json(store), before, "nothing changed");
    service.close().expect("close");
    let revoke = run(store, &["revoke", id], b"");
    assert_eq!(revoke.status.code(), Some(0), "{}", stderr(&revoke));
}

#[test]
fn rate_limits_are_set_shown_and_removed() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    let token = issue(store, &["api", "--rate-limit", "100/s", "--burst", "10"]);
    let id = &token[3..11];
    let limit_of = || {
        let output = run(store, &["list", "--json"], b"");
        let tokens: Vec<Value> = serde_json::from_str(&stdout(&output)).expect("JSON array");
        tokens[0]["rate_limit"].clone()
    };
    assert_eq!(
        limit_of(),
        serde_json::json!({"count": 100, "period_ms": 1000, "burst": 10})
    );
    let table = stdout(&run(store, &["list"], b""));
    assert!(table.contains("100/s burst 10"), "{table}");

    let changed = run(store, &["limit", id, "--rate-limit", "5/min"], b"");
    assert_eq!(changed.status.code(), Some(0), "{}", stderr(&changed));
    assert_eq!(
        limit_of(),
        serde_json::json!({"count": 5, "period_ms": 60000, "burst": 5})
    );

    let removed = run(store, &["limit", id, "--none"], b"");
    assert_eq!(removed.status.code(), Some(0), "{}", stderr(&removed));
    assert!(limit_of().is_null());

    for bad in [
        &["limit", id, "--rate-limit", "0/s"][..],
        &["limit", id, "--rate-limit", "5/h", "--burst", "0"],
        &["limit", id, "--rate-limit", "5/fortnight"],
        &["limit", id],
        &["issue", "x", "--burst", "3"],
    ] {
        let output = run(store, bad, b"");
        assert_eq!(output.status.code(), Some(2), "{bad:?}");
        assert!(!stderr(&output).is_empty());
    }
    assert!(limit_of().is_null(), "refused changes wrote nothing");
}

#[test]
fn empty_stdin_is_a_malformed_token() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    issue(store, &["a", "--scope", "read"]);
    for input in [&b""[..], b"\n", b" \t\r\n"] {
        for args in [&["validate"][..], &["validate", "--scope", "write"]] {
            let output = run(store, args, input);
            assert_eq!(output.status.code(), Some(1), "{args:?} {input:?}");
            let text = stderr(&output);
            assert!(text.contains("rejected: malformed"), "{text}");
            assert!(text.contains("no token was given"), "{text}");
            assert!(stdout(&output).is_empty());
        }
        let json = run(store, &["validate", "--json"], input);
        assert_eq!(json.status.code(), Some(1), "{input:?}");
        let outcome: Value = serde_json::from_str(&stdout(&json)).expect("JSON outcome");
        assert_eq!(
            outcome,
            serde_json::json!({"valid": false, "read_only": false, "reason": "malformed"})
        );
    }
}

#[test]
fn validate_checks_the_store_before_reading_stdin() {
    let scratch = common::scratch();
    let missing = scratch.path.as_path();
    // A store a service holds is read without the lock: a damaged one fails that read.
    let held = scratch.dir.path().join("held.snap");
    let holder = tokencache::TokenStore::open(&held).expect("open the held store");
    std::fs::write(&held, b"damaged").expect("damage the held store");
    for (store, reason) in [
        (missing, "does not exist"),
        (held.as_path(), "cannot be used"),
    ] {
        // stdin is a pipe that stays open: a CLI that read it first would wait forever.
        let mut child = command(store, &["validate"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn tokencache");
        let stdin = child.stdin.take();
        let output = wait_or_kill(child, &format!("validate --store {}", store.display()));
        drop(stdin);
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        assert!(stderr(&output).contains(reason), "{}", stderr(&output));
    }
    assert!(!missing.exists(), "a mistyped --store is not created");
    holder.close().expect("close");
}

#[test]
fn cli_rate_limits_follow_the_library_rules() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    let limit_of = |index: usize| {
        let output = run(store, &["list", "--json"], b"");
        let tokens: Vec<Value> = serde_json::from_str(&stdout(&output)).expect("JSON array");
        tokens[index]["rate_limit"].clone()
    };

    // The library accepts this limit, so the CLI does: the burst is checked with the count.
    let token = issue(
        store,
        &["fast", "--rate-limit", "5000000/s", "--burst", "100"],
    );
    assert!(RateLimit::per_second(5_000_000).burst(100).check().is_ok());
    assert_eq!(
        limit_of(0),
        serde_json::json!({"count": 5_000_000, "period_ms": 1000, "burst": 100})
    );
    let id = &token[3..11];

    // `--rate-limit` reads every limit as `list` shows it, the burst included.
    for (text, expected) in [
        (
            "600/min burst 20",
            serde_json::json!({"count": 600, "period_ms": 60_000, "burst": 20}),
        ),
        (
            "5/250ms",
            serde_json::json!({"count": 5, "period_ms": 250, "burst": 5}),
        ),
        (
            "5000000/s burst 100",
            serde_json::json!({"count": 5_000_000, "period_ms": 1000, "burst": 100}),
        ),
    ] {
        let changed = run(store, &["limit", id, "--rate-limit", text], b"");
        assert_eq!(
            changed.status.code(),
            Some(0),
            "{text}: {}",
            stderr(&changed)
        );
        assert_eq!(limit_of(0), expected, "{text}");
        let table = stdout(&run(store, &["list"], b""));
        assert!(table.contains(text), "{table}");
    }

    // What the library refuses, the CLI refuses with the library's message.
    for (args, refused) in [
        (
            &["--rate-limit", "5000000/s"][..],
            RateLimit::per_second(5_000_000),
        ),
        (
            &["--rate-limit", "5/h", "--burst", "0"],
            RateLimit::per_hour(5).burst(0),
        ),
        (&["--rate-limit", "0/s"], RateLimit::per_second(0)),
        (
            &["--rate-limit", "1/min", "--burst", "4194304"],
            RateLimit::per_minute(1).burst(4_194_304),
        ),
        // A burst worth more than 100 years of requests (finding 16).
        (
            &["--rate-limit", "1/h", "--burst", "4194303"],
            RateLimit::per_hour(1).burst(4_194_303),
        ),
    ] {
        let message = refused
            .check()
            .expect_err("the library refuses it")
            .to_string();
        let output = run(store, &[&["limit", id][..], args].concat(), b"");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&output).contains(&message),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    let twice = run(
        store,
        &["limit", id, "--rate-limit", "100/s burst 5", "--burst", "6"],
        b"",
    );
    assert_eq!(twice.status.code(), Some(2));
    assert!(
        stderr(&twice).contains("already gives a burst"),
        "{}",
        stderr(&twice)
    );
    assert_eq!(
        limit_of(0),
        serde_json::json!({"count": 5_000_000, "period_ms": 1000, "burst": 100}),
        "refused changes wrote nothing"
    );

    // A refused limit on `issue` creates no store.
    let fresh = scratch.dir.path().join("fresh.snap");
    let refused = run(&fresh, &["issue", "x", "--rate-limit", "5000000/s"], b"");
    assert_eq!(refused.status.code(), Some(2));
    assert!(!fresh.exists(), "a refused issue creates no store");
}

/// `list --json`, parsed.
fn list_json(store: &Path) -> Vec<Value> {
    let output = run(store, &["list", "--json"], b"");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    serde_json::from_str(&stdout(&output)).expect("JSON array")
}

/// The ids `list --json` shows, oldest first.
fn listed_ids(store: &Path) -> Vec<String> {
    list_json(store)
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_string())
        .collect()
}

/// The reason `validate --json` gives for `token`, or "valid".
fn verdict(store: &Path, token: &str) -> String {
    let output = run(store, &["validate", "--json"], token.as_bytes());
    let outcome: Value = serde_json::from_str(&stdout(&output)).expect("JSON outcome");
    match outcome["valid"].as_bool() {
        Some(true) => {
            assert_eq!(output.status.code(), Some(0));
            "valid".into()
        }
        _ => {
            assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
            outcome["reason"].as_str().expect("reason").into()
        }
    }
}

fn parse_time(value: &Value) -> DateTime<Utc> {
    let text = value.as_str().expect("an RFC 3339 time");
    DateTime::parse_from_rfc3339(text)
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

#[test]
fn delete_forgets_the_token_so_validate_says_unknown() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    let kept = issue(store, &["kept"]);
    let gone = issue(store, &["gone", "--scope", "read"]);
    let (kept_id, gone_id) = (&kept[3..11], &gone[3..11]);

    let deleted = run(store, &["delete", gone_id], b"");
    assert_eq!(deleted.status.code(), Some(0), "{}", stderr(&deleted));
    assert_eq!(stdout(&deleted), format!("deleted {gone_id}\n"));

    // A new process reads the file: the delete was on disk when the command returned.
    assert_eq!(verdict(store, &gone), "unknown");
    assert_eq!(listed_ids(store), [kept_id]);
    assert_eq!(verdict(store, &kept), "valid");

    let json = run(store, &["delete", kept_id, "--json"], b"");
    assert_eq!(json.status.code(), Some(0), "{}", stderr(&json));
    let outcome: Value = serde_json::from_str(&stdout(&json)).expect("JSON object");
    assert_eq!(outcome, json!({"deleted": kept_id}));
    assert!(listed_ids(store).is_empty());
}

#[test]
fn delete_of_an_unknown_id_is_an_error_that_names_it() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    let token = issue(store, &["a"]);
    let id = &token[3..11];
    assert_eq!(run(store, &["delete", id], b"").status.code(), Some(0));

    for (unknown, message) in [
        (id, format!("no token has id {id}")),
        ("zzzzzzzz", "no token has id zzzzzzzz".to_string()),
        ("tc_x", "not a token id".to_string()),
    ] {
        for args in [&["delete", unknown][..], &["delete", unknown, "--json"]] {
            let output = run(store, args, b"");
            assert_eq!(output.status.code(), Some(2), "{args:?}");
            assert!(stdout(&output).is_empty(), "{args:?}: {}", stdout(&output));
            assert!(
                stderr(&output).contains(&message),
                "{args:?}: {}",
                stderr(&output)
            );
        }
    }
}

#[test]
fn purge_deletes_exactly_the_tokens_revoked_or_expired_longer_ago_than_the_age() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    let day = Duration::from_secs(86_400);

    // History two days long, written by the library on a clock set in the past: one token
    // revoked two days ago, one expired a day ago, two that stay active.
    let now_ms = u64::try_from(Utc::now().timestamp_millis()).expect("after 1970");
    let two_days_ago = now_ms - 2 * 86_400_000;
    let past = TokenStore::builder(store)
        .clock(ManualClock::new(two_days_ago))
        .open()
        .expect("open the store in the past");
    let old_revoked = past.issue(NewToken::new("old-revoked")).expect("issue");
    past.revoke(&old_revoked.id()).expect("revoke");
    let old_expired = past
        .issue(NewToken::new("old-expired").expires_in(day))
        .expect("issue");
    let forever = past.issue(NewToken::new("forever")).expect("issue");
    let month = past
        .issue(NewToken::new("month").expires_in(30 * day))
        .expect("issue");
    past.close().expect("close");

    // And two that ended just now: one revoked, one expired (1 ms lifetime; starting the
    // next process takes longer, and `validate` confirms it).
    let new_revoked = issue(store, &["new-revoked"]);
    let revoke = run(store, &["revoke", &new_revoked[3..11]], b"");
    assert_eq!(revoke.status.code(), Some(0), "{}", stderr(&revoke));
    let new_expired = issue(store, &["new-expired", "--expires-in", "1ms"]);
    assert_eq!(verdict(store, &new_expired), "expired");
    assert_eq!(verdict(store, old_expired.secret()), "expired");

    let purge = |age: &str, json: bool| {
        let mut args = vec!["purge", "--older-than", age];
        if json {
            args.push("--json");
        }
        let output = run(store, &args, b"");
        assert_eq!(
            output.status.code(),
            Some(0),
            "{args:?}: {}",
            stderr(&output)
        );
        stdout(&output)
    };
    let remaining = |ids: &[&str]| {
        let mut listed = listed_ids(store);
        let mut expected: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        listed.sort();
        expected.sort();
        assert_eq!(listed, expected);
    };
    let (forever_id, month_id) = (forever.id(), month.id());
    let (forever_id, month_id) = (forever_id.as_str(), month_id.as_str());
    let (new_revoked_id, new_expired_id) = (&new_revoked[3..11], &new_expired[3..11]);

    assert_eq!(purge("30d", false), "purged 0 tokens\n");
    assert_eq!(listed_ids(store).len(), 6, "nothing ended 30 days ago");

    assert_eq!(purge("36h", false), "purged 1 token\n");
    remaining(&[
        &old_expired.id().to_string(),
        forever_id,
        month_id,
        new_revoked_id,
        new_expired_id,
    ]);

    assert_eq!(purge("12h", true), "{\"purged\":1}\n");
    remaining(&[forever_id, month_id, new_revoked_id, new_expired_id]);

    assert_eq!(purge("0s", false), "purged 2 tokens\n");
    remaining(&[forever_id, month_id]);
    assert_eq!(verdict(store, forever.secret()), "valid");
    assert_eq!(verdict(store, month.secret()), "valid");

    assert_eq!(purge("0s", true), "{\"purged\":0}\n");
    remaining(&[forever_id, month_id]);
}

#[test]
fn purge_and_rotate_require_their_durations() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    let token = issue(store, &["a"]);
    let id = &token[3..11];
    assert_eq!(run(store, &["revoke", id], b"").status.code(), Some(0));

    for (args, flag) in [
        (&["purge"][..], "--older-than"),
        (&["purge", "--json"], "--older-than"),
        (&["purge", "--older-than", "3 fortnights"], "--older-than"),
        (&["rotate", id], "--grace"),
        (&["rotate", id, "--json"], "--grace"),
        (&["rotate", id, "--grace", "soon"], "--grace"),
    ] {
        let output = run(store, args, b"");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(stdout(&output).is_empty(), "{args:?}");
        assert!(
            stderr(&output).contains(flag),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    let tokens = list_json(store);
    assert_eq!(tokens.len(), 1, "the revoked token was not purged");
    assert!(tokens[0]["expires_at"].is_null(), "nothing was rotated");
}

#[test]
fn rotate_prints_only_the_new_token_and_the_old_one_works_for_the_grace() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    let old = issue(
        store,
        &[
            "deploy",
            "--scope",
            "read",
            "--scope",
            "write",
            "--rate-limit",
            "100/s",
        ],
    );
    let old_id = &old[3..11];

    let before = Utc::now();
    let output = run(store, &["rotate", old_id, "--grace", "1h"], b"");
    let after = Utc::now();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let new = stdout(&output).trim_end().to_string();
    assert_eq!(
        stdout(&output),
        format!("{new}\n"),
        "stdout is the token alone"
    );
    assert_ne!(new, old);
    let new_id = &new[3..11];

    let valid = run(store, &["validate", "--json"], new.as_bytes());
    assert_eq!(valid.status.code(), Some(0), "{}", stderr(&valid));
    let outcome: Value = serde_json::from_str(&stdout(&valid)).expect("JSON outcome");
    assert_eq!(outcome["id"], new_id);
    assert_eq!(outcome["name"], "deploy");
    assert_eq!(outcome["scopes"], json!(["read", "write"]));
    assert_eq!(
        verdict(store, &old),
        "valid",
        "the old token works within the grace"
    );

    let tokens = list_json(store);
    assert_eq!(tokens.len(), 2);
    let (old_info, new_info) = (&tokens[0], &tokens[1]);
    assert_eq!(old_info["id"], old_id);
    assert_eq!(new_info["id"], new_id);
    let grace = chrono::Duration::hours(1);
    let old_expiry = parse_time(&old_info["expires_at"]);
    // `list` shows whole seconds.
    assert!(
        before + grace - chrono::Duration::seconds(1) <= old_expiry && old_expiry <= after + grace,
        "old token expires at {old_expiry}, not within 1h of the rotation ({before}..{after})"
    );
    assert_eq!(new_info["name"], "deploy");
    assert_eq!(new_info["scopes"], json!(["read", "write"]));
    assert_eq!(new_info["rate_limit"], old_info["rate_limit"]);
    assert!(
        new_info["expires_at"].is_null(),
        "the old token had no lifetime"
    );

    let told = stderr(&output);
    let expires = old_info["expires_at"].as_str().expect("expiry");
    assert!(
        told.contains(&format!("rotated {old_id}: it expires at {expires}")),
        "{told}"
    );
    assert!(told.contains(new_id), "{told}");
    assert!(
        !told.contains(&new[12..]),
        "the secret is on stdout only: {told}"
    );
}

#[test]
fn rotate_json_reports_both_tokens_and_keeps_an_earlier_expiry() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    let old = issue(store, &["svc", "--expires-in", "2h"]);
    let old_id = &old[3..11];
    let old_expiry = list_json(store)[0]["expires_at"].clone();

    // A grace past the old token's own expiry leaves that expiry alone.
    let output = run(store, &["rotate", old_id, "--grace", "30d", "--json"], b"");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let rotated: Value = serde_json::from_str(&stdout(&output)).expect("JSON object");
    let new = rotated["token"].as_str().expect("token field");
    assert_eq!(rotated["id"], &new[3..11]);
    assert_eq!(rotated["name"], "svc");
    assert_eq!(rotated["old_id"], old_id);
    assert_eq!(rotated["old_expires_at"], old_expiry);
    let tokens = list_json(store);
    assert_eq!(tokens[0]["expires_at"], old_expiry);
    assert_eq!(tokens[1]["expires_at"], rotated["expires_at"]);
    // The new token gets the old one's lifetime, counted from now.
    let lifetime = parse_time(&rotated["expires_at"]) - parse_time(&rotated["created_at"]);
    assert_eq!(lifetime, chrono::Duration::hours(2));
    assert_eq!(verdict(store, new), "valid");
    assert_eq!(verdict(store, &old), "valid");

    // No grace: the old token stops at once.
    let output = run(
        store,
        &["rotate", &new[3..11], "--grace", "0s", "--json"],
        b"",
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let again: Value = serde_json::from_str(&stdout(&output)).expect("JSON object");
    assert_eq!(verdict(store, new), "expired");
    assert_eq!(
        verdict(store, again["token"].as_str().expect("token")),
        "valid"
    );
}

#[test]
fn rotate_of_an_unknown_id_prints_nothing_and_changes_nothing() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    let token = issue(store, &["a"]);
    let before = list_json(store);

    for (id, message) in [
        ("zzzzzzzz", "no token has id zzzzzzzz"),
        ("tc_x", "not a token id"),
    ] {
        for args in [
            &["rotate", id, "--grace", "1h"][..],
            &["rotate", id, "--grace", "1h", "--json"],
        ] {
            let output = run(store, args, b"");
            assert_eq!(output.status.code(), Some(2), "{args:?}");
            assert!(stdout(&output).is_empty(), "{args:?}: {}", stdout(&output));
            assert!(
                stderr(&output).contains(message),
                "{args:?}: {}",
                stderr(&output)
            );
        }
    }
    assert_eq!(list_json(store), before, "no token was issued or changed");
    assert_eq!(verdict(store, &token), "valid");
}

/// A pseudo-terminal for `validate` to prompt on, as a person's terminal would be.
#[cfg(target_os = "linux")]
mod terminal {
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::fd::OwnedFd;
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    use rustix::fs::{Mode, OFlags};
    use rustix::pty::OpenptFlags;
    use rustix::termios::LocalModes;

    /// The test's side (the master) and the program's side (the slave) of one pty.
    pub struct Terminal {
        master: File,
        slave: OwnedFd,
        /// Collects everything written to the terminal until the slave is closed everywhere.
        screen: JoinHandle<Vec<u8>>,
    }

    impl Terminal {
        pub fn open() -> Terminal {
            let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
            let master = rustix::pty::openpt(flags).expect("open a pty");
            rustix::pty::grantpt(&master).expect("grantpt");
            rustix::pty::unlockpt(&master).expect("unlockpt");
            let name = rustix::pty::ptsname(&master, Vec::new()).expect("ptsname");
            // NOCTTY: the pty becomes the child's controlling terminal, never the test's.
            // CLOEXEC (here and above): no other test's child holds the pty open.
            let slave = rustix::fs::open(
                name.as_c_str(),
                OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .expect("open the pty's slave");
            let master = File::from(master);
            let mut output = master.try_clone().expect("clone the master");
            // A read fails (EIO) once the slave is closed everywhere; that ends the screen.
            let screen = std::thread::spawn(move || {
                let mut screen = Vec::new();
                let mut buffer = [0u8; 4096];
                while let Ok(n @ 1..) = output.read(&mut buffer) {
                    screen.extend_from_slice(&buffer[..n]);
                }
                screen
            });
            Terminal {
                master,
                slave,
                screen,
            }
        }

        /// A handle on the program's side, for its stdin.
        pub fn slave(&self) -> OwnedFd {
            self.slave.try_clone().expect("clone the slave")
        }

        /// Whether the terminal echoes what is typed (the master reports the slave's modes).
        pub fn echoes(&self) -> bool {
            let modes = rustix::termios::tcgetattr(&self.master).expect("tcgetattr");
            modes.local_modes.contains(LocalModes::ECHO)
        }

        /// Waits until the terminal's echo is off; false if it is still on after `limit`.
        pub fn wait_for_no_echo(&self, limit: Duration) -> bool {
            let deadline = Instant::now() + limit;
            while self.echoes() {
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            true
        }

        /// Types `keys` as a person would.
        pub fn type_keys(&mut self, keys: &str) {
            self.master.write_all(keys.as_bytes()).expect("type");
        }

        /// Closes the program's side and returns everything written to the terminal.
        pub fn finish(self) -> String {
            drop(self.slave);
            let screen = self.screen.join().expect("the terminal reader");
            String::from_utf8_lossy(&screen).into_owned()
        }
    }
}

#[cfg(target_os = "linux")]
#[test]
fn validate_on_a_terminal_prompts_on_stderr_and_reads_without_echo() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    let token = issue(store, &["person"]);
    let mut terminal = terminal::Terminal::open();
    assert!(terminal.echoes(), "a fresh terminal echoes");

    // `setsid --ctty` (util-linux) makes the pty the program's controlling terminal, as a
    // login shell's terminal is.
    let mut child = Command::new("setsid")
        .args([
            "--ctty",
            "--wait",
            env!("CARGO_BIN_EXE_tokencache"),
            "--store",
        ])
        .arg(store)
        .arg("validate")
        .env_remove("TOKENCACHE_STORE")
        .stdin(terminal.slave())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn setsid (util-linux) with tokencache");

    // Type only once echo is off, as a person types after the prompt: what is typed earlier
    // is echoed by the terminal whatever the program does.
    let quiet = terminal.wait_for_no_echo(HANG);
    if quiet {
        terminal.type_keys(&format!("{token}\r"));
    } else {
        // Already failed: do not wait for a program that waits for input.
        let _ = child.kill();
    }
    let output = wait_or_kill(child, "validate on a terminal");
    let echo_restored = terminal.echoes();
    let screen = terminal.finish();
    assert!(
        quiet,
        "echo stayed on while the token was awaited; stderr: {}",
        stderr(&output)
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stderr(&output), "Token: ", "the prompt, on stderr");
    assert_eq!(
        stdout(&output),
        format!("valid: {} (person)\n", &token[3..11])
    );
    assert!(
        !screen.contains(&token[12..]),
        "the secret was shown: {screen:?}"
    );
    assert!(echo_restored, "echo is on again once validate returns");
}

/// Finding 15: the CLI printed the raw `--store` URL after `issue` and `list`, and the
/// redaction stopped at the first `/` or `?` (base64 passwords hold `/`) and missed a
/// percent-encoded `password` key. No command, succeeding or failing, may print any piece of
/// a password, however it is written. (The test server trusts every password, so each of
/// these URLs connects.)
#[cfg(feature = "postgres")]
#[test]
fn the_cli_never_prints_a_database_password() {
    const PIECES: [&str; 3] = ["Qz9", "Wk7", "Jx5"];
    let base = common::pg::fresh_db();
    let (start, rest) = base.split_once("://").expect("a URL");
    let (user, rest) = rest.split_once('@').expect("a user part");
    let user = user.split(':').next().unwrap_or(user);
    let query = if rest.contains('?') { '&' } else { '?' };
    let urls = [
        format!("{start}://{user}:Qz9/Wk7?Jx5@{rest}"),
        format!("{start}://{user}@{rest}{query}pass%77ord=Qz9/Wk7@Jx5"),
    ];
    let check = |url: &str, output: &Output, what: &str| {
        let printed = format!("{}{}", stdout(output), stderr(output));
        for piece in PIECES {
            assert!(
                !printed.contains(piece),
                "{what} with {url} printed {piece}: {printed}"
            );
        }
    };
    for url in &urls {
        let store = Path::new(url.as_str());
        let output = run(store, &["issue", "bot"], b"");
        check(url, &output, "issue");
        assert_eq!(output.status.code(), Some(0), "{url}: {}", stderr(&output));
        assert!(stderr(&output).contains("***"), "{}", stderr(&output));
        let token = stdout(&output).trim_end().to_string();
        let id = token[3..11].to_string();
        let json = run(store, &["issue", "bot2", "--json"], b"");
        check(url, &json, "issue --json");
        let listed = run(store, &["list"], b"");
        check(url, &listed, "list");
        assert_eq!(listed.status.code(), Some(0), "{}", stderr(&listed));
        assert!(stderr(&listed).contains("***"), "{}", stderr(&listed));
        for (args, stdin) in [
            (&["list", "--json"][..], &b""[..]),
            (&["validate"], token.as_bytes()),
            (&["limit", &id, "--rate-limit", "5/s"], b""),
            (&["revoke", &id], b""),
            (&["inspect"], b""),
            (&["delete", "NoSuchId"], b""),
        ] {
            check(url, &run(store, args, stdin), &format!("{args:?}"));
        }
    }
    // A database that cannot be reached, a password with an unescaped `@` (the client cuts
    // it there and takes the rest for the host), and one with `&` and `=`: the error shows
    // no piece of it.
    let unreachable = [
        "postgres://someone:Qz9/Wk7?Jx5@127.0.0.1:1/db".to_string(),
        format!("{start}://{user}:Qz9%2FWk7@Jx5@{rest}"),
        // `&` and `=` in a password parameter: the client would name the piece after the
        // `&` in its error, so `open` refuses the URL first.
        format!("{start}://{user}@{rest}{query}password=Qz9&Wk7=Jx5&sslmode=disable"),
    ];
    for url in &unreachable {
        for args in [&["list"][..], &["issue", "bot"]] {
            let output = run(Path::new(url.as_str()), args, b"");
            assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
            check(url, &output, &format!("{args:?}"));
            assert!(stderr(&output).contains("***"), "{}", stderr(&output));
        }
    }
}

// Issue 21: owners, metadata, prefixes and imported keys on the command line.

/// The SHA-256 of `key`, as `sha256sum` prints it.
fn sha256_hex(key: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The token's id: the 8 characters after its prefix and `_`.
fn id_of(token: &str) -> &str {
    let start = token.rfind('_').expect("a token") - 8;
    &token[start..start + 8]
}

/// The bytes of the store's files (store and journal), to show a command wrote nothing.
fn files_of(store: &Path) -> (Vec<u8>, Option<Vec<u8>>) {
    (
        std::fs::read(store).expect("the store file"),
        std::fs::read(common::journal_path(store)).ok(),
    )
}

#[test]
fn issue_with_owner_and_meta_shows_them_in_list_json_and_validate_json() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    let owned = issue(
        store,
        &[
            "billing",
            "--owner",
            "acme",
            "--meta",
            "plan=pro",
            "--meta",
            "tenant=t=42",
        ],
    );
    let plain = issue(store, &["plain"]);

    let tokens = list_json(store);
    assert_eq!(tokens.len(), 2);
    assert_eq!(tokens[0]["id"], id_of(&owned));
    assert_eq!(tokens[0]["owner"], "acme");
    assert_eq!(tokens[0]["meta"], json!({"plan": "pro", "tenant": "t=42"}));
    assert_eq!(tokens[0]["imported"], false);
    assert!(tokens[1]["owner"].is_null());
    assert_eq!(tokens[1]["meta"], json!({}));

    let only = run(store, &["list", "--owner", "acme", "--json"], b"");
    assert_eq!(only.status.code(), Some(0), "{}", stderr(&only));
    let only: Vec<Value> = serde_json::from_str(&stdout(&only)).expect("JSON array");
    assert_eq!(only.len(), 1, "{only:?}");
    assert_eq!(only[0]["id"], id_of(&owned));
    let table = stdout(&run(store, &["list", "--owner", "acme"], b""));
    assert!(
        table.contains("acme") && table.contains("plan=pro,tenant=t=42"),
        "{table}"
    );
    assert!(!table.contains(id_of(&plain)), "{table}");

    let valid = run(store, &["validate", "--json"], owned.as_bytes());
    assert_eq!(valid.status.code(), Some(0), "{}", stderr(&valid));
    let outcome: Value = serde_json::from_str(&stdout(&valid)).expect("JSON outcome");
    assert_eq!(outcome["owner"], "acme");
    assert_eq!(outcome["meta"]["plan"], "pro");

    for bad in [
        &["issue", "x", "--meta", "novalue"][..],
        &["issue", "x", "--meta", "=v"],
        &["issue", "x", "--meta", "k=1", "--meta", "k=2"],
        &["issue", "x", "--owner", ""],
    ] {
        let output = run(store, bad, b"");
        assert_eq!(output.status.code(), Some(2), "{bad:?}");
        assert_eq!(stdout(&output), "", "{bad:?}: nothing issued");
    }
    assert_eq!(list_json(store).len(), 2, "refused requests issued nothing");
}

#[test]
fn meta_replaces_a_tokens_pairs_and_clear_removes_them() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    let token = issue(store, &["svc", "--meta", "plan=pro", "--meta", "region=eu"]);
    let id = id_of(&token);

    let replaced = run(store, &["meta", id, "plan=team"], b"");
    assert_eq!(replaced.status.code(), Some(0), "{}", stderr(&replaced));
    assert_eq!(list_json(store)[0]["meta"], json!({"plan": "team"}));

    let refused = run(store, &["meta", id, "k=1", "k=2"], b"");
    assert_eq!(refused.status.code(), Some(2));
    assert!(stderr(&refused).contains("twice"), "{}", stderr(&refused));
    assert_eq!(list_json(store)[0]["meta"], json!({"plan": "team"}));

    assert_eq!(
        run(store, &["meta", id], b"").status.code(),
        Some(2),
        "no pairs, no --clear"
    );
    let cleared = run(store, &["meta", id, "--clear"], b"");
    assert_eq!(cleared.status.code(), Some(0), "{}", stderr(&cleared));
    assert_eq!(list_json(store)[0]["meta"], json!({}));
}

#[test]
fn revoke_owner_revokes_exactly_that_owners_tokens() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    let acme = [
        issue(store, &["a1", "--owner", "acme"]),
        issue(store, &["a2", "--owner", "acme"]),
    ];
    let globex = issue(store, &["g1", "--owner", "globex"]);
    let nobody = issue(store, &["n1"]);

    let revoked = run(store, &["revoke", "--owner", "acme"], b"");
    assert_eq!(revoked.status.code(), Some(0), "{}", stderr(&revoked));
    assert_eq!(stdout(&revoked), "revoked 2 tokens of owner acme\n");
    for token in &acme {
        assert_eq!(verdict(store, token), "revoked");
    }
    assert_eq!(verdict(store, &globex), "valid");
    assert_eq!(verdict(store, &nobody), "valid");

    // Again: nothing left to revoke, which is no error.
    let again = run(store, &["revoke", "--owner", "acme", "--json"], b"");
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    let again: Value = serde_json::from_str(&stdout(&again)).expect("JSON");
    assert_eq!(again, json!({"owner": "acme", "revoked": 0}));

    // A mistyped owner revokes nothing, and stderr says the owner has no tokens.
    let typo = run(store, &["revoke", "--owner", "acm"], b"");
    assert_eq!(typo.status.code(), Some(0));
    assert!(stderr(&typo).contains("has no tokens"), "{}", stderr(&typo));

    let both = run(store, &["revoke", id_of(&globex), "--owner", "globex"], b"");
    assert_eq!(
        both.status.code(),
        Some(2),
        "an id and --owner together are refused"
    );
    assert_eq!(run(store, &["revoke"], b"").status.code(), Some(2));
    assert_eq!(verdict(store, &globex), "valid");
}

#[test]
fn delete_owner_deletes_exactly_that_owners_tokens() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    let acme = issue(store, &["a1", "--owner", "acme"]);
    issue(store, &["a2", "--owner", "acme"]);
    let other = issue(store, &["o1", "--owner", "other"]);

    let deleted = run(store, &["delete", "--owner", "acme", "--json"], b"");
    assert_eq!(deleted.status.code(), Some(0), "{}", stderr(&deleted));
    let deleted: Value = serde_json::from_str(&stdout(&deleted)).expect("JSON");
    assert_eq!(deleted, json!({"owner": "acme", "deleted": 2}));
    assert_eq!(listed_ids(store), vec![id_of(&other).to_string()]);
    assert_eq!(verdict(store, &acme), "unknown");
}

#[test]
fn owner_limit_is_set_shown_by_the_store_and_removed() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    issue(store, &["a1", "--owner", "acme"]);
    let limit_of = |owner: &str| {
        let opened = TokenStore::open(store).expect("open");
        let limit = opened.owner_rate_limit(owner);
        opened.close().expect("close");
        limit
    };

    let set = run(
        store,
        &[
            "owner-limit",
            "acme",
            "--rate-limit",
            "100/min",
            "--burst",
            "5",
        ],
        b"",
    );
    assert_eq!(set.status.code(), Some(0), "{}", stderr(&set));
    assert_eq!(limit_of("acme"), Some(RateLimit::per_minute(100).burst(5)));

    let refused = run(store, &["owner-limit", "acme", "--rate-limit", "0/s"], b"");
    assert_eq!(refused.status.code(), Some(2));
    assert_eq!(
        run(store, &["owner-limit", "acme"], b"").status.code(),
        Some(2)
    );
    assert_eq!(limit_of("acme"), Some(RateLimit::per_minute(100).burst(5)));

    let removed = run(store, &["owner-limit", "acme", "--none"], b"");
    assert_eq!(removed.status.code(), Some(0), "{}", stderr(&removed));
    assert_eq!(limit_of("acme"), None);
}

/// Three keys minted elsewhere, as `import` lines, with their plaintexts.
fn three_legacy_keys() -> (Vec<String>, String) {
    let keys: Vec<String> = ["legacy-one", "sk_old_2f9a", "x"]
        .iter()
        .map(|k| k.to_string())
        .collect();
    let lines = [
        json!({"sha256": sha256_hex(&keys[0]), "name": "ci", "scopes": ["read", "write"],
               "owner": "acme", "meta": {"plan": "pro"}, "created_at": "2024-05-01T10:00:00Z"}),
        json!({"sha256": sha256_hex(&keys[1]).to_uppercase(), "expires_at": "2999-01-01T00:00:00Z",
               "rate_limit": "10/s burst 2"}),
        json!({"sha256": sha256_hex(&keys[2]),
               "rate_limit": {"count": 5, "period_ms": 60000, "burst": 5}}),
    ];
    let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    text.insert(text.find('\n').expect("a line") + 1, '\n'); // a blank line 2 is skipped
    (keys, text)
}

#[test]
fn import_of_three_lines_makes_keys_that_validate() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    issue(store, &["native"]);
    let (keys, input) = three_legacy_keys();

    let output = run(store, &["import", "--json"], input.as_bytes());
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let answers: Vec<Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let lines: Vec<u64> = answers
        .iter()
        .map(|a| a["line"].as_u64().expect("line"))
        .collect();
    assert_eq!(lines, [1, 3, 4], "line numbers count the blank line");

    let tokens = list_json(store);
    assert_eq!(tokens.len(), 4);
    let ci = tokens
        .iter()
        .find(|t| t["id"] == answers[0]["id"])
        .expect("the first key");
    assert_eq!(ci["name"], "ci");
    assert_eq!(ci["imported"], true);
    assert_eq!(ci["owner"], "acme");
    assert_eq!(ci["meta"], json!({"plan": "pro"}));
    assert_eq!(ci["created_at"], "2024-05-01T10:00:00Z");
    let second = tokens
        .iter()
        .find(|t| t["id"] == answers[1]["id"])
        .expect("the second key");
    assert_eq!(second["expires_at"], "2999-01-01T00:00:00Z");
    assert_eq!(
        second["rate_limit"],
        json!({"count": 10, "period_ms": 1000, "burst": 2})
    );

    for (key, answer) in keys.iter().zip(&answers) {
        let valid = run(store, &["validate", "--json"], key.as_bytes());
        assert_eq!(valid.status.code(), Some(0), "{key}: {}", stderr(&valid));
        let outcome: Value = serde_json::from_str(&stdout(&valid)).expect("JSON outcome");
        assert_eq!(outcome["id"], answer["id"]);
    }
    // Once a store holds imported keys, a foreign string is looked up by digest.
    assert_eq!(verdict(store, "legacy-two"), "unknown");
    let scoped = run(store, &["validate", "--scope", "write"], keys[0].as_bytes());
    assert_eq!(scoped.status.code(), Some(0), "{}", stderr(&scoped));
}

#[test]
fn import_with_a_bad_line_imports_nothing_and_names_the_line() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    issue(store, &["native"]);
    let good = |key: &str| json!({"sha256": sha256_hex(key)}).to_string();
    let before = files_of(store);

    // Line 2: not 64 hex characters (the key itself, by mistake: never echoed).
    let input = format!(
        "{}\n{}\n{}\n",
        good("k1"),
        json!({"sha256": "my-secret-plaintext"}),
        good("k3")
    );
    let output = run(store, &["import"], input.as_bytes());
    assert_eq!(output.status.code(), Some(2));
    let error = stderr(&output);
    assert!(
        error.contains("line 2:") && error.contains("64 hexadecimal"),
        "{error}"
    );
    assert!(error.contains("nothing was imported"), "{error}");
    assert!(
        !error.contains("line 1") && !error.contains("line 3"),
        "{error}"
    );
    assert!(!error.contains("my-secret-plaintext"), "{error}");
    assert_eq!(stdout(&output), "");

    // A plaintext key field, a misspelt field, a bad time, a digest given twice.
    let input = format!(
        "{}\n{}\n{}\n{}\n{}\n",
        json!({"sha256": sha256_hex("k1"), "key": "k1-plaintext"}),
        json!({"sha256": sha256_hex("k2"), "expires": "2030-01-01T00:00:00Z"}),
        json!({"sha256": sha256_hex("k3"), "expires_at": "tomorrow"}),
        good("k4"),
        good("k4"),
    );
    let output = run(store, &["import"], input.as_bytes());
    assert_eq!(output.status.code(), Some(2));
    let error = stderr(&output);
    for expected in [
        "line 1: field \"key\" would hold the key itself",
        "line 2: unknown field `expires`",
        "line 3: \"expires_at\" \"tomorrow\" is not an RFC 3339 time",
        "line 5: the same sha256 as line 4",
    ] {
        assert!(error.contains(expected), "{expected:?} in {error}");
    }
    assert!(!error.contains("k1-plaintext"), "{error}");

    // Line 3 breaks a rule only the library checks (an empty name): named all the same.
    let input = format!(
        "{}\n{}\n{}\n",
        good("k1"),
        good("k2"),
        json!({"sha256": sha256_hex("k3"), "name": " "})
    );
    let output = run(store, &["import"], input.as_bytes());
    assert_eq!(output.status.code(), Some(2));
    let error = stderr(&output);
    assert!(
        error.contains("line 3:") && error.contains("name is empty"),
        "{error}"
    );
    assert!(
        !error.contains("line 1") && !error.contains("line 2"),
        "{error}"
    );

    assert_eq!(files_of(store), before, "nothing was written");
    assert_eq!(list_json(store).len(), 1);
    assert_eq!(verdict(store, "k1"), "malformed");
}

#[test]
fn import_refuses_a_key_already_imported_naming_its_line() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    let first = json!({"sha256": sha256_hex("k1")}).to_string();
    let output = run(store, &["import"], format!("{first}\n").as_bytes());
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let before = files_of(store);

    let input = format!("{}\n{first}\n", json!({"sha256": sha256_hex("k2")}));
    for args in [&["import"][..], &["import", "--dry-run"]] {
        let output = run(store, args, input.as_bytes());
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let error = stderr(&output);
        assert!(
            error.contains("line 2:") && error.contains("already imported"),
            "{args:?}: {error}"
        );
    }
    assert_eq!(files_of(store), before);
    assert_eq!(verdict(store, "k2"), "unknown");
}

#[test]
fn import_dry_run_checks_and_shows_the_keys_and_writes_nothing() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    let native = issue(store, &["native"]);
    // A journal beside the snapshot, so both files are checked unchanged.
    let revoked = run(store, &["revoke", id_of(&native)], b"");
    assert_eq!(revoked.status.code(), Some(0), "{}", stderr(&revoked));
    let before = files_of(store);
    let (keys, input) = three_legacy_keys();

    let output = run(store, &["import", "--dry-run", "--json"], input.as_bytes());
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let shown: Vec<Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(shown.len(), 3);
    assert_eq!(shown[0]["line"], 1);
    assert_eq!(shown[0]["name"], "ci");
    assert_eq!(shown[0]["owner"], "acme");
    assert_eq!(shown[0]["sha256"], sha256_hex(&keys[0]));
    assert!(
        shown[0].get("id").is_none(),
        "ids are drawn when imported for real"
    );
    assert_eq!(shown[1]["sha256"], sha256_hex(&keys[1]), "lowercased");
    let text = run(store, &["import", "--dry-run"], input.as_bytes());
    assert_eq!(text.status.code(), Some(0));
    assert!(
        stdout(&text).starts_with("line 1: would import \"ci\" of owner acme"),
        "{}",
        stdout(&text)
    );
    assert!(stderr(&text).contains("nothing was written"));

    assert_eq!(files_of(store), before, "the store's bytes are unchanged");
    assert_eq!(verdict(store, &keys[0]), "malformed", "not imported");

    // On a store that does not exist: checked, and not created.
    let absent = scratch.path.with_file_name("absent.snap");
    let output = run(&absent, &["import", "--dry-run"], input.as_bytes());
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(!absent.exists());
}

#[test]
fn a_prefix_names_new_tokens_and_the_store_keeps_accepting_the_old_ones() {
    let scratch = common::scratch();
    let store = scratch.path.as_path();
    let plain = issue(store, &["old"]);
    assert!(plain.starts_with("tc_"), "{plain}");
    let live = issue(store, &["--prefix", "sk_live", "new"]);
    assert!(live.starts_with("sk_live_"), "{live}");
    assert_eq!(id_of(&live).len(), 8);
    assert_eq!(verdict(store, &live), "valid");
    assert_eq!(
        verdict(store, &plain),
        "valid",
        "the old prefix still works"
    );

    // `rotate` mints too: under $TOKENCACHE_PREFIX, as a deployment would set it.
    let output = command(store, &["rotate", id_of(&plain), "--grace", "1h"])
        .env("TOKENCACHE_PREFIX", "sk_test")
        .output()
        .expect("run rotate");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let rotated = stdout(&output).trim_end().to_string();
    assert!(rotated.starts_with("sk_test_"), "{rotated}");
    assert_eq!(verdict(store, &rotated), "valid");
    assert_eq!(verdict(store, "sk_prod_a1B2c3D4_whatever"), "malformed");

    let bad = run(store, &["--prefix", "sk-live!", "issue", "x"], b"");
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("sk-live!"), "{}", stderr(&bad));
    assert_eq!(stdout(&bad), "");
}

#[test]
fn credits_are_given_spent_shown_set_and_cleared() {
    let dir = common::scratch();
    let store = dir.path.as_path();
    let token = issue(
        store,
        &[
            "metered",
            "--credits",
            "3",
            "--refill-day",
            "1",
            "--refill-amount",
            "10",
            "--alert-below",
            "1",
        ],
    );
    let listed = &list_json(store)[0]["credits"];
    assert_eq!(listed["remaining"], 3);
    assert_eq!(listed["refill"]["monthly_day"], 1);
    assert_eq!(listed["refill"]["amount"], 10);
    assert_eq!(listed["alert_below"], 1);
    let id = listed_ids(store).remove(0);
    let output = run(store, &["validate", "--cost", "2"], token.as_bytes());
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(verdict(store, &token), "valid");
    let output = run(store, &["validate", "--json"], token.as_bytes());
    assert_eq!(output.status.code(), Some(1));
    let outcome: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(outcome["reason"], "usage_exceeded");
    assert!(
        outcome["retry_after_ms"].as_u64().unwrap() > 0,
        "until the 1st"
    );
    let shown = run(store, &["credits", &id], b"");
    assert_eq!(stdout(&shown), "0 credits left\n");
    let set = run(
        store,
        &["credits", &id, "--credits", "5", "--refill-every", "1d"],
        b"",
    );
    assert_eq!(set.status.code(), Some(0), "{}", stderr(&set));
    let shown = run(store, &["credits", &id, "--json"], b"");
    let credits: Value = serde_json::from_str(&stdout(&shown)).unwrap();
    assert_eq!(credits["remaining"], 5);
    assert_eq!(credits["refill"]["every_ms"], 86_400_000);
    let bad = run(
        store,
        &["credits", &id, "--credits", "5", "--refill-every", "10s"],
        b"",
    );
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("at least 60 s"), "{}", stderr(&bad));
    // A scope and a cost together: the scope is checked first, then the cost is spent.
    let refused = run(
        store,
        &["validate", "--scope", "admin", "--cost", "4", "--json"],
        token.as_bytes(),
    );
    let outcome: Value = serde_json::from_str(&stdout(&refused)).unwrap();
    assert_eq!(outcome["reason"], "missing_scope");
    let scoped = run(
        store,
        &["validate", "--scope", "admin", "--cost", "4"],
        issue(store, &["scoped", "--scope", "admin", "--credits", "10"]).as_bytes(),
    );
    assert_eq!(scoped.status.code(), Some(0), "{}", stderr(&scoped));
    let lefts: Vec<u64> = list_json(store)
        .iter()
        .map(|t| t["credits"]["remaining"].as_u64().unwrap())
        .collect();
    assert_eq!(
        lefts,
        [5, 6],
        "the refused check spent nothing, the scoped one 4"
    );
    let cleared = run(store, &["credits", &id, "--clear"], b"");
    assert_eq!(cleared.status.code(), Some(0), "{}", stderr(&cleared));
    assert_eq!(
        stdout(&run(store, &["credits", &id, "--json"], b"")),
        "null\n"
    );
    for _ in 0..3 {
        assert_eq!(verdict(store, &token), "valid");
    }
}

#[test]
fn usage_shows_the_accepted_validations_per_day_and_list_json_their_total() {
    let dir = common::scratch();
    let store = dir.path.as_path();
    let token = issue(store, &["counted", "--credits", "2"]);
    let id = listed_ids(store).remove(0);
    for expected in ["valid", "valid", "usage_exceeded"] {
        assert_eq!(verdict(store, &token), expected);
    }
    assert_eq!(
        list_json(store)[0]["uses"],
        2,
        "the refused one is not counted"
    );
    let shown = run(store, &["usage", &id, "--json"], b"");
    assert_eq!(shown.status.code(), Some(0), "{}", stderr(&shown));
    let usage: Value = serde_json::from_str(&stdout(&shown)).unwrap();
    assert_eq!(usage["id"], id.as_str());
    assert_eq!(usage["total"], 2);
    let today = chrono::Utc::now().date_naive().to_string();
    assert_eq!(
        usage["days"],
        serde_json::json!([{ "date": today, "count": 2 }])
    );
    let text = stdout(&run(store, &["usage", &id], b""));
    assert_eq!(text, format!("2 validations in all\n{today}  2\n"));
    let unknown = run(store, &["usage", "zzzzzzzz"], b"");
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("no token zzzzzzzz"),
        "{}",
        stderr(&unknown)
    );
}

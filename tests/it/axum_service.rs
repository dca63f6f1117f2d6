//! `examples/axum_service.rs` in a real process, stopped as a deployment stops it: SIGTERM
//! (Kubernetes, systemd, Docker), after a request it validated. The child runs the example's
//! own `serve` (this file includes the example's source), so what is tested is the example.
#![cfg(unix)]

#[allow(dead_code)]
#[path = "../../examples/axum_service.rs"]
mod example;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{in_child, scratch, spawn_child_test};
use tokencache::{NewToken, StoreView, TokenStore};

/// Far above what shutting down takes; it only turns a hang into a failure.
const HANG: Duration = Duration::from_secs(30);

/// The service process, killed if the test fails before it exits.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The child: the example's `serve` on the store in `$TC_TEST_STORE`, any free port.
#[test]
#[ignore = "run by sigterm_closes_the_store_and_keeps_last_used in a child process"]
fn child_serve_the_example() {
    assert!(
        in_child(),
        "run by sigterm_closes_the_store_and_keeps_last_used"
    );
    let path = std::env::var("TC_TEST_STORE").expect("TC_TEST_STORE");
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    if let Err(e) = runtime.block_on(example::serve(&path, "127.0.0.1:0")) {
        panic!("the service failed: {e}");
    }
}

/// One HTTP/1.1 request on its own connection; the whole response.
fn get(addr: &str, path: &str, token: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to the service");
    stream.set_read_timeout(Some(HANG)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    response
}

/// Finding 18: the example handled only Ctrl-C, so SIGTERM killed it (exit 143) before it
/// closed the store, and the `last_used` of the requests it had served was lost. Now it
/// shuts down gracefully on SIGTERM, closes the store and exits 0, and the store's files
/// show the use.
#[test]
fn sigterm_closes_the_store_and_keeps_last_used() {
    let s = scratch();
    let store = TokenStore::open(&s.path).unwrap();
    let token = store
        .issue(NewToken::new("reader").scopes(["read"]))
        .unwrap();
    store.close().unwrap();
    let path = s.path.to_str().expect("a UTF-8 temp path");

    let mut service = Service(
        spawn_child_test(
            "axum_service::child_serve_the_example",
            &[("TC_TEST_STORE", path)],
        )
        .spawn()
        .expect("start the service"),
    );
    // Its stderr, line by line, on a thread (a read would block the test on a hang).
    let stderr = service.0.stderr.take().expect("stderr");
    let (lines, said) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let addr = loop {
        let line = said
            .recv_timeout(HANG)
            .unwrap_or_else(|_| panic!("the service never said it was up: {log:?}"));
        log.push(line.clone());
        if let Some(addr) = line.split("on http://").nth(1) {
            break addr.to_string();
        }
    };

    let response = get(&addr, "/me", token.secret());
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("name reader"), "{response}");
    let refused = get(&addr, "/me", "tc_not-a-token");
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    // Issue 20: `/metrics` shows both validations, published by the store's persister
    // within a second (polled: the bound only turns a hang into a failure).
    let started = Instant::now();
    let metrics = loop {
        let metrics = get(&addr, "/metrics", "");
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        if metrics.contains("tokencache_validations_total{outcome=\"malformed\"} 1") {
            break metrics;
        }
        assert!(started.elapsed() < HANG, "never published: {metrics}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        metrics.contains("tokencache_validations_total{outcome=\"accepted\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE tokencache_validations_total counter"),
        "{metrics}"
    );
    // Nothing written yet: the use waits for the flush interval (60 s) or the close.
    let before = StoreView::read(&s.path).unwrap();
    let listed = before.list();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].last_used, None, "the test would prove nothing");

    let pid = i32::try_from(service.0.id()).expect("a pid");
    // SAFETY: kill(2) with a pid we started and have not reaped, and a valid signal.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    // Polled, so that a service that hangs is still killed by `Service`'s drop.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = service.0.try_wait().expect("wait for the service") {
            break status;
        }
        assert!(
            started.elapsed() < HANG,
            "the service did not exit after SIGTERM: {log:#?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    while let Ok(line) = said.recv_timeout(Duration::from_secs(1)) {
        log.push(line);
    }
    assert_eq!(status.code(), Some(0), "{status:?}; stderr: {log:#?}");
    assert!(log.iter().any(|l| l.starts_with("SIGTERM")), "{log:#?}");
    assert!(log.iter().any(|l| l == "closed the store"), "{log:#?}");

    let after = StoreView::read(&s.path).unwrap();
    let listed = after.list();
    let used = listed[0]
        .last_used
        .expect("last_used written on the way out");
    assert!(
        used >= listed[0].created_at,
        "{used} before {}",
        listed[0].created_at
    );
}

/// The example's audit log: each change of the store's feed, once durable, as one JSON
/// object per line, with its kind, token id, owner, time and origin (and the old id of a
/// rotation); a missed count as `{"missed": n}`.
#[test]
fn the_audit_log_prints_each_change_as_one_json_object() {
    let s = scratch();
    let store = TokenStore::open(&s.path).unwrap();
    let changes = store.subscribe();
    let old = store.issue(NewToken::new("reader")).unwrap();
    let new = store.rotate(&old.id(), Duration::from_secs(60)).unwrap();
    store
        .set_owner_rate_limit("acme", Some(tokencache::RateLimit::per_second(5)))
        .unwrap();
    store.close().unwrap();
    let lines: Vec<String> = changes.map(|item| example::audit_line(&item)).collect();
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|line| {
            assert!(!line.contains('\n'), "{line}");
            serde_json::from_str(line).expect("a JSON object")
        })
        .collect();
    assert_eq!(parsed.len(), 4, "{lines:#?}");
    let field = |n: usize, key: &str| parsed[n][key].clone();
    assert_eq!(field(0, "kind"), "issued");
    assert_eq!(field(0, "id"), old.id().as_str());
    assert_eq!(field(0, "origin"), "local");
    assert_eq!(field(0, "owner"), serde_json::Value::Null);
    let at = field(0, "at");
    assert!(
        chrono::DateTime::parse_from_rfc3339(at.as_str().unwrap()).is_ok(),
        "{at}"
    );
    assert_eq!(field(1, "kind"), "rotated");
    assert_eq!(field(1, "id"), new.id().as_str());
    assert_eq!(field(1, "old"), old.id().as_str());
    assert_eq!(field(2, "kind"), "expiry_shortened");
    assert_eq!(field(2, "id"), old.id().as_str());
    assert_eq!(field(2, "owner_wide"), false);
    assert_eq!(field(3, "kind"), "owner_rate_limit_set");
    assert_eq!(field(3, "id"), serde_json::Value::Null);
    assert_eq!(field(3, "owner"), "acme");
    assert_eq!(field(3, "owner_wide"), true);
    assert_eq!(
        example::audit_line(&tokencache::Feed::Missed(7)),
        r#"{"missed":7}"#
    );
}

/// Issue 21: a handler behind `TokenLayer` reads the caller's metadata and owner from the
/// `OwnedToken` extractor, with no lookup of its own. The example's own `/plan` handler,
/// over real loopback HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_plan_handler_reads_the_callers_meta_and_owner_from_the_extractor() {
    use axum::routing::get as route_get;
    use tokencache::TokenLayer;

    let s = scratch();
    let store = TokenStore::open(&s.path).unwrap();
    let pro = store
        .issue(NewToken::new("pro").owner("acme").meta("plan", "pro"))
        .unwrap();
    let plain = store.issue(NewToken::new("plain")).unwrap();
    let app = axum::Router::new()
        .route("/plan", route_get(example::plan))
        .route_layer(TokenLayer::new(store.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let ask = |token: String| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || get(&addr, "/plan", &token))
    };
    let answer = ask(pro.secret().to_string()).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("plan pro owner acme\n"), "{answer}");
    let answer = ask(plain.secret().to_string()).await.unwrap();
    assert!(answer.ends_with("plan none owner none\n"), "{answer}");
    // Metadata set later is what the next request reads.
    store.set_meta(&pro.id(), &[("plan", "team")]).unwrap();
    let answer = ask(pro.secret().to_string()).await.unwrap();
    assert!(answer.ends_with("plan team owner acme\n"), "{answer}");
    store.close_async().await.unwrap();
}

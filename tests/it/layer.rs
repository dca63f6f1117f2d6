//! `TokenLayer` and the `ValidToken` extractor over real loopback HTTP: an axum router
//! served on 127.0.0.1:0, requests from a hyper client. Every status code and header, a
//! store on a manual clock so rate limits and expiry are exact, and many concurrent clients.
//! What the inner service receives, the refusal future and the extractor's log are checked
//! in-process, with tower's `oneshot`.

use crate::common;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderName, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tower::{service_fn, Layer, Service, ServiceExt};

use common::{manual_store, scratch};
use tokencache::{
    Credits, MissingTokenLayer, NewToken, OwnedToken, RateLimit, Refill, TokenLayer, TokenStore,
};

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

async fn me(token: OwnedToken) -> String {
    format!("hello {}", token.name())
}

fn app(store: &TokenStore) -> Router {
    let readers = Router::new()
        .route("/me", get(me))
        .route_layer(TokenLayer::new(store.clone()).realm("test"));
    let writers = Router::new().route("/items", post(me)).route_layer(
        TokenLayer::new(store.clone())
            .realm("test")
            .require_scope("write"),
    );
    let keyed = Router::new()
        .route("/keyed", get(me))
        .route_layer(TokenLayer::new(store.clone()).header(X_API_KEY));
    let keyed_writers = Router::new().route("/keyed/items", post(me)).route_layer(
        TokenLayer::new(store.clone())
            .header(X_API_KEY)
            .require_scope("write"),
    );
    // Each report costs 5 credits of a token that has credits, and needs scope `write`.
    let reports = Router::new().route("/reports", get(me)).route_layer(
        TokenLayer::new(store.clone())
            .realm("test")
            .require_scope("write")
            .cost(5),
    );
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/unguarded", get(me))
        .merge(readers)
        .merge(writers)
        .merge(keyed)
        .merge(keyed_writers)
        .merge(reports)
}

async fn serve(store: &TokenStore) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = app(store);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

struct Answer {
    status: StatusCode,
    challenge: Option<String>,
    retry_after: Option<String>,
    head: String,
    body: String,
}

#[derive(Clone)]
struct Http {
    client: Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
}

impl Http {
    fn new(addr: SocketAddr) -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
            addr,
        }
    }

    async fn send(&self, method: &str, path: &str, header: Option<(HeaderName, &str)>) -> Answer {
        self.send_all(method, path, header.as_slice()).await
    }

    /// Sends every header in `headers`, in order (a name given twice is sent twice).
    async fn send_all(&self, method: &str, path: &str, headers: &[(HeaderName, &str)]) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(name, *value);
        }
        let response = self
            .client
            .request(request.body(Empty::new()).unwrap())
            .await
            .unwrap();
        let text = |name| {
            response
                .headers()
                .get(name)
                .map(|v: &http::HeaderValue| v.to_str().unwrap().to_string())
        };
        let challenge = text(WWW_AUTHENTICATE);
        let retry_after = text(RETRY_AFTER);
        let status = response.status();
        let head = format!("{:?}", response.headers());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            challenge,
            retry_after,
            head,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    async fn get(&self, path: &str, token: &str) -> Answer {
        let value = format!("Bearer {token}");
        self.send("GET", path, Some((AUTHORIZATION, &value))).await
    }
}

/// Asserts a refusal: status, challenge, empty body, and no trace of `token` anywhere.
fn refused(answer: &Answer, status: StatusCode, challenge: Option<&str>, token: &str) {
    assert_eq!(answer.status, status, "{}", answer.head);
    assert_eq!(answer.challenge.as_deref(), challenge);
    assert_eq!(answer.body, "", "refusals have an empty body");
    if !token.is_empty() {
        assert!(
            !answer.head.contains(token),
            "token echoed in {}",
            answer.head
        );
    }
}

const MISSING: &str = r#"Bearer realm="test""#;

fn invalid(description: &str) -> String {
    format!(
        r#"Bearer realm="test", error="invalid_token", error_description="the token {description}""#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_and_valid_requests_pass_with_the_token_in_extensions() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let reader = store.issue(NewToken::new("reader").scope("read")).unwrap();
    let writer = store.issue(NewToken::new("writer").scope("write")).unwrap();
    let http = Http::new(serve(&store).await);

    let health = http.send("GET", "/health", None).await;
    assert_eq!(
        (health.status, health.body.as_str()),
        (StatusCode::OK, "ok")
    );
    let me = http.get("/me", reader.secret()).await;
    assert_eq!(
        (me.status, me.body.as_str()),
        (StatusCode::OK, "hello reader")
    );
    // The scheme is case-insensitive (RFC 7235).
    let lower = format!("bearer {}", writer.secret());
    let me = http.send("GET", "/me", Some((AUTHORIZATION, &lower))).await;
    assert_eq!(
        (me.status, me.body.as_str()),
        (StatusCode::OK, "hello writer")
    );
    let item = http
        .send("POST", "/items", Some((AUTHORIZATION, &lower)))
        .await;
    assert_eq!(
        (item.status, item.body.as_str()),
        (StatusCode::OK, "hello writer")
    );
    let keyed = http
        .send("GET", "/keyed", Some((X_API_KEY, reader.secret())))
        .await;
    assert_eq!(keyed.status, StatusCode::OK);
    assert_eq!(store.stats().validations, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_missing_tokens_get_401_with_a_bearer_challenge() {
    let s = scratch();
    let (store, clock) = manual_store(&s.path);
    let revoked = store.issue(NewToken::new("revoked")).unwrap();
    store.revoke(&revoked.id()).unwrap();
    let expiring = store
        .issue(NewToken::new("expiring").expires_in(Duration::from_secs(1)))
        .unwrap();
    clock.advance(Duration::from_secs(2));
    let other = scratch();
    let stranger = TokenStore::open(&other.path)
        .unwrap()
        .issue(NewToken::new("stranger"))
        .unwrap();
    let http = Http::new(serve(&store).await);

    refused(
        &http.send("GET", "/me", None).await,
        StatusCode::UNAUTHORIZED,
        Some(MISSING),
        "",
    );
    let basic = http
        .send("GET", "/me", Some((AUTHORIZATION, "Basic dXNlcjpwdw==")))
        .await;
    refused(&basic, StatusCode::UNAUTHORIZED, Some(MISSING), "");
    let bare = http
        .send("GET", "/me", Some((AUTHORIZATION, "Bearer")))
        .await;
    refused(
        &bare,
        StatusCode::UNAUTHORIZED,
        Some(&invalid("is malformed")),
        "",
    );
    let junk = "tc_not_a_real_token";
    refused(
        &http.get("/me", junk).await,
        StatusCode::UNAUTHORIZED,
        Some(&invalid("is malformed")),
        junk,
    );
    let cases = [
        (stranger.secret(), "is unknown"),
        (revoked.secret(), "was revoked"),
        (expiring.secret(), "has expired"),
    ];
    for (token, description) in cases {
        let answer = http.get("/me", token).await;
        refused(
            &answer,
            StatusCode::UNAUTHORIZED,
            Some(&invalid(description)),
            token,
        );
    }
    let rejections = store.stats().rejections;
    assert_eq!(
        (
            rejections.malformed,
            rejections.unknown,
            rejections.revoked,
            rejections.expired
        ),
        (1, 1, 1, 1),
        "requests without a bearer token never reach validate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_the_scope_gets_403_insufficient_scope() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let reader = store.issue(NewToken::new("reader").scope("read")).unwrap();
    let http = Http::new(serve(&store).await);
    let value = format!("Bearer {}", reader.secret());
    let answer = http
        .send("POST", "/items", Some((AUTHORIZATION, &value)))
        .await;
    refused(
        &answer,
        StatusCode::FORBIDDEN,
        Some(r#"Bearer realm="test", error="insufficient_scope", scope="write""#),
        reader.secret(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_token_gets_429_with_retry_after_rounded_up() {
    let s = scratch();
    let (store, clock) = manual_store(&s.path);
    // 2 per minute: one every 30 s.
    let token = store
        .issue(NewToken::new("slow").rate_limit(RateLimit::per_minute(2)))
        .unwrap();
    let http = Http::new(serve(&store).await);
    for _ in 0..2 {
        assert_eq!(http.get("/me", token.secret()).await.status, StatusCode::OK);
    }
    let answer = http.get("/me", token.secret()).await;
    refused(&answer, StatusCode::TOO_MANY_REQUESTS, None, token.secret());
    assert_eq!(answer.retry_after.as_deref(), Some("30"));
    clock.advance(Duration::from_millis(100));
    // 29.9 s rounds up to 30: a client that waits that long is admitted.
    assert_eq!(
        http.get("/me", token.secret()).await.retry_after.as_deref(),
        Some("30")
    );
    clock.advance(Duration::from_millis(29_000));
    assert_eq!(
        http.get("/me", token.secret()).await.retry_after.as_deref(),
        Some("1")
    );
    clock.advance(Duration::from_millis(900));
    assert_eq!(http.get("/me", token.secret()).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spent_credits_get_429_with_the_refill_as_retry_after_or_none() {
    let s = scratch();
    let (store, clock) = manual_store(&s.path);
    let hourly = Credits::new(1).refill(Refill::every(Duration::from_secs(3600), 1));
    let refilled = store
        .issue(NewToken::new("hourly").credits(hourly))
        .unwrap();
    let once = store
        .issue(NewToken::new("once").credits(Credits::new(1)))
        .unwrap();
    let http = Http::new(serve(&store).await);
    for token in [&refilled, &once] {
        assert_eq!(http.get("/me", token.secret()).await.status, StatusCode::OK);
    }
    clock.advance(Duration::from_millis(600_500));
    let answer = http.get("/me", refilled.secret()).await;
    refused(
        &answer,
        StatusCode::TOO_MANY_REQUESTS,
        None,
        refilled.secret(),
    );
    // 2999.5 s to the refill, rounded up.
    assert_eq!(answer.retry_after.as_deref(), Some("3000"));
    let answer = http.get("/me", once.secret()).await;
    refused(&answer, StatusCode::TOO_MANY_REQUESTS, None, once.secret());
    assert_eq!(answer.retry_after, None, "no refill, no time to wait for");
    clock.advance(Duration::from_secs(3000));
    assert_eq!(
        http.get("/me", refilled.secret()).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_with_a_cost_spends_it_per_request_after_the_scope_check() {
    let s = scratch();
    let store = TokenStore::open(&s.path).unwrap();
    let writer = store
        .issue(
            NewToken::new("writer")
                .scopes(["write"])
                .credits(Credits::new(12)),
        )
        .unwrap();
    let reader = store
        .issue(NewToken::new("reader").credits(Credits::new(12)))
        .unwrap();
    let unmetered = store
        .issue(NewToken::new("unmetered").scopes(["write"]))
        .unwrap();
    let http = Http::new(serve(&store).await);
    let left = |token: &tokencache::IssuedToken| store.credits(&token.id()).unwrap().remaining();

    for expected in [7, 2] {
        assert_eq!(
            http.get("/reports", writer.secret()).await.status,
            StatusCode::OK
        );
        assert_eq!(left(&writer), expected);
    }
    let answer = http.get("/reports", writer.secret()).await;
    refused(
        &answer,
        StatusCode::TOO_MANY_REQUESTS,
        None,
        writer.secret(),
    );
    assert_eq!(left(&writer), 2, "a refused request spends nothing");
    // The other routes keep costing 1.
    assert_eq!(
        http.get("/me", writer.secret()).await.status,
        StatusCode::OK
    );
    assert_eq!(left(&writer), 1);

    // A token without the scope is refused before it spends.
    let answer = http.get("/reports", reader.secret()).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(left(&reader), 12);
    // A token without credits ignores the cost.
    for _ in 0..3 {
        assert_eq!(
            http.get("/reports", unmetered.secret()).await.status,
            StatusCode::OK
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_clients_get_the_right_answers_and_never_more_than_the_quota() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let good = store.issue(NewToken::new("good")).unwrap();
    let gone = store.issue(NewToken::new("gone")).unwrap();
    store.revoke(&gone.id()).unwrap();
    // The clock stands still, so exactly the burst is admitted however requests interleave.
    let shared = store
        .issue(NewToken::new("shared").rate_limit(RateLimit::per_hour(100).burst(37)))
        .unwrap();
    let http = Http::new(serve(&store).await);

    let clients: Vec<_> = (0..32)
        .map(|_| {
            let http = http.clone();
            let tokens = [
                good.secret().to_string(),
                gone.secret().to_string(),
                shared.secret().to_string(),
            ];
            tokio::spawn(async move {
                let mut admitted_shared = 0;
                for _ in 0..10 {
                    assert_eq!(http.get("/me", &tokens[0]).await.status, StatusCode::OK);
                    let gone = http.get("/me", &tokens[1]).await;
                    assert_eq!(gone.status, StatusCode::UNAUTHORIZED);
                    match http.get("/me", &tokens[2]).await.status {
                        StatusCode::OK => admitted_shared += 1,
                        StatusCode::TOO_MANY_REQUESTS => {}
                        other => panic!("shared token got {other}"),
                    }
                }
                admitted_shared
            })
        })
        .collect();
    let mut admitted = 0;
    for client in clients {
        admitted += client.await.unwrap();
    }
    assert_eq!(admitted, 37);
    let stats = store.stats();
    assert_eq!(stats.validations, 320 + 37);
    assert_eq!(stats.rejections.rate_limited, 320 - 37);
    assert_eq!(stats.rejections.revoked, 320);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_header_route_refuses_without_a_bearer_challenge() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let reader = store.issue(NewToken::new("reader").scope("read")).unwrap();
    let revoked = store.issue(NewToken::new("revoked")).unwrap();
    store.revoke(&revoked.id()).unwrap();
    let limited = store
        .issue(
            NewToken::new("limited")
                .scope("write")
                .rate_limit(RateLimit::per_minute(1)),
        )
        .unwrap();
    let http = Http::new(serve(&store).await);

    refused(
        &http.send("GET", "/keyed", None).await,
        StatusCode::UNAUTHORIZED,
        None,
        "",
    );
    // A bearer header does not count on a custom-header route.
    let bearer = format!("Bearer {}", reader.secret());
    refused(
        &http
            .send("GET", "/keyed", Some((AUTHORIZATION, &bearer)))
            .await,
        StatusCode::UNAUTHORIZED,
        None,
        reader.secret(),
    );
    for token in ["tc_not_a_real_token", revoked.secret()] {
        let answer = http.send("GET", "/keyed", Some((X_API_KEY, token))).await;
        refused(&answer, StatusCode::UNAUTHORIZED, None, token);
    }
    let answer = http
        .send("POST", "/keyed/items", Some((X_API_KEY, reader.secret())))
        .await;
    refused(&answer, StatusCode::FORBIDDEN, None, reader.secret());
    let answer = http
        .send("POST", "/keyed/items", Some((X_API_KEY, limited.secret())))
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let answer = http
        .send("POST", "/keyed/items", Some((X_API_KEY, limited.secret())))
        .await;
    refused(
        &answer,
        StatusCode::TOO_MANY_REQUESTS,
        None,
        limited.secret(),
    );
    assert_eq!(answer.retry_after.as_deref(), Some("60"));
}

/// Two `Authorization` headers, in either order, both `Bearer` or one of another scheme:
/// every pair is refused before `validate`, so none spends quota or shows in the stats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_authorization_headers_get_400_invalid_request_and_spend_nothing() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let alice = store.issue(NewToken::new("alice")).unwrap();
    let bob = store
        .issue(NewToken::new("bob").rate_limit(RateLimit::per_minute(1)))
        .unwrap();
    let http = Http::new(serve(&store).await);
    let alice_value = format!("Bearer {}", alice.secret());
    let bob_value = format!("Bearer {}", bob.secret());
    let challenge = r#"Bearer realm="test", error="invalid_request", error_description="the request has more than one Authorization header""#;

    let pairs = [
        [alice_value.as_str(), bob_value.as_str()],
        [bob_value.as_str(), alice_value.as_str()],
        [alice_value.as_str(), alice_value.as_str()],
        [alice_value.as_str(), "Basic dXNlcjpwdw=="],
        ["Basic dXNlcjpwdw==", alice_value.as_str()],
    ];
    for [first, second] in pairs {
        let headers = [(AUTHORIZATION, first), (AUTHORIZATION, second)];
        for (method, path) in [("GET", "/me"), ("POST", "/items")] {
            let answer = http.send_all(method, path, &headers).await;
            refused(
                &answer,
                StatusCode::BAD_REQUEST,
                Some(challenge),
                alice.secret(),
            );
            assert!(!answer.head.contains(bob.secret()), "{}", answer.head);
        }
    }
    let stats = store.stats();
    assert_eq!(
        stats.validations, 0,
        "a doubled header never reaches validate"
    );
    assert_eq!(stats.rejections, Default::default());
    // So bob's one request per minute is still unspent.
    assert_eq!(http.get("/me", bob.secret()).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_custom_token_headers_get_400_without_a_challenge() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let alice = store.issue(NewToken::new("alice")).unwrap();
    let bob = store.issue(NewToken::new("bob")).unwrap();
    let http = Http::new(serve(&store).await);

    let headers = [(X_API_KEY, alice.secret()), (X_API_KEY, bob.secret())];
    let answer = http.send_all("GET", "/keyed", &headers).await;
    refused(&answer, StatusCode::BAD_REQUEST, None, alice.secret());
    assert!(!answer.head.contains(bob.secret()), "{}", answer.head);
    assert_eq!(store.stats().validations, 0);
    // One X-Api-Key beside an Authorization header is not a duplicate: the route reads only
    // its own header.
    let bearer = format!("Bearer {}", bob.secret());
    let one_each = [
        (X_API_KEY, alice.secret()),
        (AUTHORIZATION, bearer.as_str()),
    ];
    let answer = http.send_all("GET", "/keyed", &one_each).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "hello alice")
    );
}

/// What the inner service saw of the token header.
#[derive(Clone)]
struct Seen {
    sensitive: bool,
    headers: String,
}

/// Sends one request carrying `name: value` through `layer` to a service that records
/// what it received.
async fn seen_by_the_inner_service(layer: TokenLayer, name: HeaderName, value: &str) -> Seen {
    let header = name.clone();
    let inner = service_fn(move |request: Request<()>| {
        let seen = Seen {
            sensitive: request.headers()[&header].is_sensitive(),
            headers: format!("{:?}", request.headers()),
        };
        async move {
            let mut response = Response::new(String::new());
            response.extensions_mut().insert(seen);
            Ok::<_, Infallible>(response)
        }
    });
    let request = Request::builder()
        .header(name, value)
        .header("x-request-id", "42")
        .body(())
        .unwrap();
    let response = layer.layer(inner).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.extensions().get::<Seen>().unwrap().clone()
}

#[tokio::test]
async fn the_inner_service_sees_the_token_header_marked_sensitive() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let token = store.issue(NewToken::new("bot")).unwrap();
    let bearer = format!("Bearer {}", token.secret());
    let cases = [
        (
            TokenLayer::new(store.clone()),
            AUTHORIZATION,
            bearer.as_str(),
        ),
        (
            TokenLayer::new(store.clone()).header(X_API_KEY),
            X_API_KEY,
            token.secret(),
        ),
    ];
    for (layer, name, value) in cases {
        let seen = seen_by_the_inner_service(layer, name.clone(), value).await;
        assert!(seen.sensitive, "{name} is not marked sensitive");
        assert!(
            !seen.headers.contains(token.secret()),
            "Debug of the headers shows the token: {}",
            seen.headers
        );
        // The header is still there, and other headers still show.
        assert!(seen.headers.contains(name.as_str()), "{}", seen.headers);
        assert!(seen.headers.contains("x-request-id"), "{}", seen.headers);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extractor_without_the_layer_is_a_500_not_a_pass() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let token = store.issue(NewToken::new("bot")).unwrap();
    let http = Http::new(serve(&store).await);
    let answer = http.get("/unguarded", token.secret()).await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        answer.body, "",
        "the body says nothing about how the server is built"
    );
    assert!(!answer.head.contains(token.secret()));
}

#[tokio::test]
async fn missing_token_layer_logs_its_reason_and_answers_an_empty_500() {
    let logs = common::LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // This thread only: the current-thread runtime runs the whole test here.
    let _guard = tracing::subscriber::set_default(subscriber);

    let response = MissingTokenLayer.into_response();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(body.is_empty(), "body: {body:?}");
    let logged = logs.text();
    assert!(logged.contains("ERROR"), "{logged}");
    assert!(
        logged.contains("OwnedToken extractor used on a route without TokenLayer"),
        "{logged}"
    );
}

#[test]
#[should_panic(expected = "ResponseFuture polled after completion")]
fn a_refusal_future_polled_after_completion_panics() {
    let s = scratch();
    let (store, _clock) = manual_store(&s.path);
    let mut service = TokenLayer::new(store).layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(service.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    // No token: refused without calling the inner service.
    let mut future = std::pin::pin!(service.call(Request::new(())));
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(response)) => assert_eq!(response.status(), StatusCode::UNAUTHORIZED),
        _ => panic!("a refusal is ready at its first poll"),
    }
    let _ = future.as_mut().poll(&mut cx);
}

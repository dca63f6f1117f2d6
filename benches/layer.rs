//! What `TokenLayer` adds to a request: the same axum router answering an unguarded route
//! and a guarded one, driven in-process with tower's `oneshot` on a current-thread tokio
//! runtime (no sockets, so the difference is the layer: header parsing, `validate`,
//! inserting the `ValidToken`). All requests carry the same `Authorization` header. A third
//! route behind tower's do-nothing `Identity` layer separates what axum's `route_layer`
//! costs by itself from what `TokenLayer` adds.
//!
//! Then `layer_loopback` (not a criterion bench; see its comment) sends the same requests
//! over real HTTP/1.1 on 127.0.0.1 (an axum server on a two-worker tokio runtime, a
//! keep-alive hyper client, one request at a time), where each request also pays for
//! sockets and parsing, as it does in a service.
//!
//! `layer_hot_token/{1,2}`: one hot token through `TokenService` from 1 and 2 threads.
//!
//! `cargo bench --features axum --bench layer`

use std::hint::black_box;
use std::time::Instant;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use criterion::{criterion_group, Criterion};
use http::header::AUTHORIZATION;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokencache::{NewToken, TokenLayer, TokenStore};
use tower::ServiceExt;

/// The three routes, all answering "ok": `/open`, `/identity` (behind tower's `Identity`
/// layer) and `/guarded` (behind `TokenLayer`, requiring scope `read`).
fn router(store: &TokenStore) -> Router {
    let guarded = Router::new()
        .route("/guarded", get(|| async { "ok" }))
        .route_layer(TokenLayer::new(store.clone()).require_scope("read"));
    let identity = Router::new()
        .route("/identity", get(|| async { "ok" }))
        .route_layer(tower::layer::util::Identity::new());
    Router::new()
        .route("/open", get(|| async { "ok" }))
        .merge(identity)
        .merge(guarded)
}

/// A store holding one token with scope `read`, and its `Authorization` header value.
fn store_and_bearer(dir: &std::path::Path) -> (TokenStore, String) {
    let store = TokenStore::open(dir.join("tokens.snap")).expect("open store");
    let token = store
        .issue(NewToken::new("bench").scope("read"))
        .expect("issue");
    let bearer = format!("Bearer {}", token.secret());
    (store, bearer)
}

const ROUTES: [(&str, &str); 3] = [
    ("unguarded_route", "/open"),
    ("identity_layer_route", "/identity"),
    ("guarded_route", "/guarded"),
];

fn layer(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, bearer) = store_and_bearer(dir.path());
    let app = router(&store);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let call = |path: &'static str| {
        let request = Request::get(path)
            .header(AUTHORIZATION, &bearer)
            .body(Body::empty())
            .expect("request");
        let response = runtime
            .block_on(app.clone().oneshot(request))
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        black_box(response)
    };

    let mut group = c.benchmark_group("layer");
    for (name, path) in ROUTES {
        group.bench_function(name, |b| b.iter(|| call(path)));
    }
    group.finish();
}

/// Requests per route in one round of the loopback measurement, and rounds.
const ROUND: u32 = 200;
const ROUNDS: usize = 150;

/// Over loopback, one request costs tens of microseconds and drifts by more than the layer
/// costs between criterion benches run one after the other. So the routes take turns:
/// each round sends `ROUND` requests to each route in turn (rotating which goes first), and
/// the figure is the median over rounds of each route's time relative to the unguarded
/// route's in the same round.
fn layer_loopback() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, bearer) = store_and_bearer(dir.path());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let addr = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let app = router(&store);
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        addr
    });
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let send = |path: &str| {
        let request = Request::get(format!("http://{addr}{path}"))
            .header(AUTHORIZATION, &bearer)
            .body(Empty::new())
            .expect("request");
        let client = &client;
        async move {
            let response = client.request(request).await.expect("request sent");
            assert_eq!(response.status(), StatusCode::OK);
            // Read the body so the connection goes back to the pool for the next request.
            black_box(response.into_body().collect().await.expect("body"));
        }
    };
    let round = |path: &str| {
        runtime.block_on(async {
            let began = Instant::now();
            for _ in 0..ROUND {
                send(path).await;
            }
            began.elapsed() / ROUND
        })
    };

    // Warm up: connections, caches, the runtime's threads.
    for (_, path) in ROUTES {
        round(path);
    }
    let mut unguarded = Vec::with_capacity(ROUNDS);
    let mut ratios: Vec<Vec<f64>> = vec![Vec::with_capacity(ROUNDS); ROUTES.len()];
    for r in 0..ROUNDS {
        let mut times = [0.0; ROUTES.len()];
        for k in 0..ROUTES.len() {
            let i = (r + k) % ROUTES.len();
            times[i] = round(ROUTES[i].1).as_secs_f64();
        }
        unguarded.push(times[0]);
        for (i, time) in times.iter().enumerate().skip(1) {
            ratios[i].push(time / times[0]);
        }
    }
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    println!("layer_loopback: {ROUNDS} rounds of {ROUND} requests per route, routes taking turns");
    println!(
        "{:<24} {:>9.1} µs per request (median round)",
        ROUTES[0].0,
        median(unguarded) * 1e6
    );
    for (i, ratios) in ratios.into_iter().enumerate().skip(1) {
        println!(
            "{:<24} {:>+8.1} % against {} (median of per-round ratios)",
            ROUTES[i].0,
            (median(ratios) - 1.0) * 100.0,
            ROUTES[0].0
        );
    }
    drop(runtime);
    store.close().expect("close");
}

/// One hot token through `TokenService` from 1 and 2 threads at once, in-process: each
/// thread has its own clone of the service around a do-nothing inner service and polls the
/// response futures on its own current-thread runtime, so the only memory the threads
/// share is the store's (and the layer's config, read only). Throughput per thread count;
/// the 2-thread figure over the 1-thread one is the scaling.
fn layer_hot_token(c: &mut Criterion) {
    use std::sync::Barrier;
    use tower::{Layer, Service};

    let dir = tempfile::tempdir().expect("temp dir");
    let (store, bearer) = store_and_bearer(dir.path());
    let inner = tower::service_fn(|_: Request<Body>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
    });
    let service = TokenLayer::new(store.clone())
        .require_scope("read")
        .layer(inner);
    let mut group = c.benchmark_group("layer_hot_token");
    for threads in [1usize, 2] {
        group.throughput(criterion::Throughput::Elements(threads as u64));
        group.bench_function(criterion::BenchmarkId::from_parameter(threads), |b| {
            b.iter_custom(|iters| {
                let start = Barrier::new(threads);
                let took: Vec<std::time::Duration> = std::thread::scope(|scope| {
                    let workers: Vec<_> = (0..threads)
                        .map(|_| {
                            let (mut service, bearer, start) = (service.clone(), &bearer, &start);
                            scope.spawn(move || {
                                let runtime = tokio::runtime::Builder::new_current_thread()
                                    .build()
                                    .expect("runtime");
                                start.wait();
                                let begun = Instant::now();
                                for _ in 0..iters {
                                    let request = Request::get("/")
                                        .header(AUTHORIZATION, bearer)
                                        .body(Body::empty())
                                        .expect("request");
                                    let response = runtime
                                        .block_on(service.call(request))
                                        .expect("infallible");
                                    assert_eq!(response.status(), StatusCode::OK);
                                }
                                begun.elapsed()
                            })
                        })
                        .collect();
                    workers
                        .into_iter()
                        .map(|w| w.join().expect("worker"))
                        .collect()
                });
                took.into_iter().max().unwrap_or_default()
            })
        });
    }
    group.finish();
    drop(service);
    store.close().expect("close");
}

criterion_group!(benches, layer, layer_hot_token);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and then the
    // ten-second loopback measurement is skipped.
    if std::env::args().any(|arg| arg == "--bench") {
        layer_loopback();
    }
}

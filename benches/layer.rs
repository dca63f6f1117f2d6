//! What `TokenLayer` adds to a request: the same axum router answering an unguarded route
//! and a guarded one, driven in-process with tower's `oneshot` on a current-thread tokio
//! runtime (no sockets, so the difference is the layer: header parsing, `validate`,
//! inserting the `ValidToken`). All requests carry the same `Authorization` header. A third
//! route behind tower's do-nothing `Identity` layer separates what axum's `route_layer`
//! costs by itself from what `TokenLayer` adds.
//!
//! `cargo bench --features axum --bench layer`

use std::hint::black_box;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use http::header::AUTHORIZATION;
use http::{Request, StatusCode};
use tokencache::{NewToken, TokenLayer, TokenStore};
use tower::ServiceExt;

fn layer(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = TokenStore::open(dir.path().join("tokens.snap")).expect("open store");
    let token = store
        .issue(NewToken::new("bench").scope("read"))
        .expect("issue");
    let bearer = format!("Bearer {}", token.secret());
    let guarded = Router::new()
        .route("/guarded", get(|| async { "ok" }))
        .route_layer(TokenLayer::new(store.clone()).require_scope("read"));
    let identity = Router::new()
        .route("/identity", get(|| async { "ok" }))
        .route_layer(tower::layer::util::Identity::new());
    let app = Router::new()
        .route("/open", get(|| async { "ok" }))
        .merge(identity)
        .merge(guarded);
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
    group.bench_function("unguarded_route", |b| b.iter(|| call("/open")));
    group.bench_function("identity_layer_route", |b| b.iter(|| call("/identity")));
    group.bench_function("guarded_route", |b| b.iter(|| call("/guarded")));
    group.finish();
}

criterion_group!(benches, layer);
criterion_main!(benches);

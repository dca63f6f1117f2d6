//! An axum service guarded by tokencache.
//!
//! ```sh
//! tokencache --store demo.snap issue reader --scope read            # prints a token
//! tokencache --store demo.snap issue writer --scope write           # issue before starting:
//! cargo run --example axum_service --features axum,metrics -- demo.snap  # it locks the store
//! curl -i localhost:3000/health
//! curl -i -H "Authorization: Bearer $TOKEN" localhost:3000/me
//! curl -i -H "Authorization: Bearer $TOKEN" localhost:3000/plan    # its --meta plan=...
//! curl -i -X POST -H "Authorization: Bearer $TOKEN" localhost:3000/items
//! curl -s localhost:3000/metrics | grep tokencache_validations_total
//! ```
//!
//! Every change to the store (issued, revoked, deleted, rotated...), once durable, is
//! printed on stdout as one JSON object per line: an audit log (see [`audit_line`]). The
//! store's change feed is read on a thread of its own, which ends when the store closes.
//!
//! `/metrics` is the Prometheus text of the store's metrics (docs/OBSERVABILITY.md):
//! `metrics-exporter-prometheus` records them and an axum route renders them, so the
//! service needs no second listener. The store's spans (one per durable write, compaction,
//! catch-up, reconnect) are logged to stderr by `tracing-subscriber` when they close.
//!
//! The store path is the first argument, else `$TOKENCACHE_STORE` (as the CLI), else
//! `tokens.snap`; the address is `$TOKENCACHE_ADDR`, else `127.0.0.1:3000`.
//!
//! SIGTERM (what Kubernetes, systemd and Docker send to stop a service) and SIGINT (Ctrl-C)
//! both shut it down gracefully: it stops accepting connections, lets the requests in
//! flight finish, then closes the store, which writes the pending `last_used` times, and
//! exits 0. `tests/axum_service.rs` runs it in a child process and checks that.

use std::future::Future;

use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokencache::{ChangeKind, Feed, OwnedToken, TokenLayer, TokenStore};

/// Public: no token needed.
async fn health() -> &'static str {
    "ok\n"
}

/// Any valid token.
async fn me(token: OwnedToken) -> String {
    let scopes: Vec<&str> = token.scopes().collect();
    format!(
        "id {} name {} scopes {}\n",
        token.id(),
        token.name(),
        scopes.join(",")
    )
}

/// Any valid token: the caller's plan and owner, read from the token's metadata and owner
/// (`tokencache issue NAME --owner acme --meta plan=pro`), with no lookup elsewhere.
pub async fn plan(token: OwnedToken) -> String {
    format!(
        "plan {} owner {}\n",
        token.meta("plan").unwrap_or("none"),
        token.owner().unwrap_or("none")
    )
}

/// Needs the `write` scope (checked by the layer; the handler just uses the token).
async fn create_item(token: OwnedToken) -> String {
    format!("created an item for {}\n", token.name())
}

/// The service: `/health` and `/metrics` public, `/me` and `/plan` for any valid token,
/// `POST /items` for `write`.
///
/// Each protected group gets its own `route_layer`, so no route passes two `TokenLayer`s
/// (each validation spends rate-limit quota).
fn app(store: &TokenStore, metrics: PrometheusHandle) -> Router {
    let readers = Router::new()
        .route("/me", get(me))
        .route("/plan", get(plan))
        .route_layer(TokenLayer::new(store.clone()).realm("demo"));
    let writers = Router::new()
        .route("/items", post(create_item))
        .route_layer(
            TokenLayer::new(store.clone())
                .realm("demo")
                .require_scope("write"),
        );
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(move || async move { metrics.render() }))
        .merge(readers)
        .merge(writers)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("TOKENCACHE_STORE").ok())
        .unwrap_or_else(|| "tokens.snap".into());
    let addr = std::env::var("TOKENCACHE_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    serve(&path, &addr).await
}

/// Serves the store at `path` on `addr` until SIGTERM or SIGINT, then closes the store.
///
/// The signal handlers are installed before the store is opened and before the "serving"
/// line is printed, so a SIGTERM sent as soon as the service says it is up is never the
/// default action (death, with the pending `last_used` times lost).
pub async fn serve(path: &str, addr: &str) -> Result<(), Box<dyn std::error::Error>> {
    let stop = shutdown_signal()?;
    // Spans on stderr as they close (with their fields: records, bytes, duration...).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .try_init()
        .map_err(|e| e.to_string())?;
    // Before the store opens, so it describes its metrics (with their units) to this one.
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let upkeep = metrics.clone();
    // Histograms keep their samples until upkeep drains them into the summaries.
    std::thread::spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_secs(5));
        upkeep.run_upkeep();
    });
    let store = TokenStore::open(path)?;
    // The audit log: the feed ends once the store is closed and every change was printed.
    let changes = store.subscribe();
    let audit = std::thread::spawn(move || {
        for item in changes {
            println!("{}", audit_line(&item));
        }
    });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!(
        "serving {} tokens from {path} on http://{}",
        store.list().len(),
        listener.local_addr()?
    );
    axum::serve(listener, app(&store, metrics))
        .with_graceful_shutdown(async move {
            let signal = stop.await;
            eprintln!("{signal}: finishing the requests in flight, then closing the store");
        })
        .await?;
    // The shutdown path: `close` writes the pending `last_used` times and reports whether
    // it could. (Dropping the last handle does the same, without the report.)
    store.close()?;
    if audit.join().is_err() {
        eprintln!("the audit log thread panicked");
    }
    eprintln!("closed the store");
    Ok(())
}

/// One line of the audit log: a change as a JSON object (`kind`, `id` (`null` for an
/// owner's shared limit), `owner`, `owner_wide` (one call over all of the owner's tokens),
/// `at` in RFC 3339, `origin`, and `old` for a rotation), or `{"missed": n}` when the log
/// read too slowly and `n` changes were not queued for it.
pub fn audit_line(item: &Feed) -> String {
    let event = match item {
        Feed::Event(event) => event,
        Feed::Missed(n) => return serde_json::json!({ "missed": n }).to_string(),
    };
    let mut line = serde_json::json!({
        "kind": event.kind.as_str(),
        "id": event.id.as_ref().map(|id| id.as_str()),
        "owner": event.owner,
        "owner_wide": event.owner_wide,
        "at": event.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "origin": event.origin.as_str(),
    });
    if let ChangeKind::Rotated { old } = event.kind {
        line["old"] = old.as_str().into();
    }
    line.to_string()
}

/// Installs the SIGTERM and SIGINT handlers now; the future resolves, with the signal's
/// name, when either arrives.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl Future<Output = &'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        }
    })
}

/// Elsewhere only Ctrl-C (installed on first poll).
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl Future<Output = &'static str>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    })
}

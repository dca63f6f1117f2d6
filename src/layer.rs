//! A tower layer that checks each request's bearer token against a [`TokenStore`]
//! (feature `tower`), and the axum extractor for the [`OwnedToken`] it leaves behind
//! (feature `axum`).
//!
//! The answers follow RFC 6750 (bearer tokens): 401 with a `WWW-Authenticate: Bearer`
//! challenge for a missing or bad token, 403 `insufficient_scope` for a missing scope, and
//! 429 with `Retry-After` for a rate-limited token, 400 `invalid_request` for a request
//! carrying the token header twice. A token read from a custom header
//! ([`TokenLayer::header`]) is not a bearer token, so its refusals carry no challenge.
//! Refusals have an empty body; nothing in a response ever repeats the token. See
//! `docs/LAYER.md`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderName, HeaderValue, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{Challenge, Rejection, REASONS};
use crate::store::TokenStore;
use crate::validate::{OwnedToken, ValidToken};

/// A [`Layer`] that admits only requests carrying a valid token from a [`TokenStore`].
///
/// For each request it reads `Authorization: Bearer <token>` (or the header set with
/// [`header`](Self::header)), calls [`TokenStore::validate`] (or
/// [`validate_scope`](TokenStore::validate_scope) with [`require_scope`](Self::require_scope)),
/// and on success marks the token header [sensitive](HeaderValue::set_sensitive) (so its
/// `Debug` shows no secret) and inserts the [`OwnedToken`] into the request's extensions
/// before calling the inner service. Otherwise it answers without calling the inner service:
///
/// | cause | status | headers |
/// |---|---|---|
/// | no token (no header, or another scheme) | 401 | `WWW-Authenticate: Bearer realm="…"` |
/// | malformed, unknown, revoked or expired token | 401 | `… error="invalid_token", error_description="…"` |
/// | token lacks the required scope | 403 | `… error="insufficient_scope", scope="…"` |
/// | token over its rate limit | 429 | `Retry-After: <seconds, rounded up>` |
/// | replica too stale to vouch (PostgreSQL store with `max_staleness`) | 503 | none |
/// | two or more token headers (whatever their values) | 400 | `… error="invalid_request", error_description="…"` |
///
/// A request carrying the token header twice is refused before [`TokenStore::validate`]
/// (so it spends no quota and is not counted in [`Stats`](crate::Stats)): a proxy or
/// handler reading the other copy could disagree about who calls.
///
/// With [`header`](Self::header) the statuses are the same but no refusal carries a
/// `WWW-Authenticate` challenge: the token is not a bearer token, and no standard scheme
/// describes a bare token in a custom header.
///
/// Refusals have an empty body (`ResBody::default()`).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// use tokencache::{TokenLayer, TokenStore};
///
/// let store = TokenStore::open(dir.path().join("tokens.snap"))?;
/// let layer = TokenLayer::new(store).require_scope("write").realm("example");
/// // router.route_layer(layer) with axum, or ServiceBuilder::new().layer(layer)...
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use]
pub struct TokenLayer {
    store: TokenStore,
    config: Arc<Config>,
}

#[derive(Clone)]
struct Config {
    source: Source,
    scope: Option<Box<str>>,
    /// The credits each request spends from a token that has credits.
    cost: u64,
    realm: Box<str>,
}

/// Where the token is, and so which challenges a refusal carries.
#[derive(Clone)]
enum Source {
    /// `Authorization: Bearer <token>`. Every refusal's `WWW-Authenticate` value is built
    /// once, when the layer is configured, so refusing allocates no header. Boxed: the
    /// challenges are large, and only a refusal reads them.
    Bearer(Box<Challenges>),
    /// The whole value of this header is the token; refusals carry no challenge.
    Header(HeaderName),
}

impl Source {
    /// The header holding the token.
    fn name(&self) -> &HeaderName {
        match self {
            Source::Bearer(_) => &AUTHORIZATION,
            Source::Header(name) => name,
        }
    }
}

impl Config {
    /// Rebuilds the challenges from the realm and scope, after either changed.
    fn rechallenge(&mut self) {
        if let Source::Bearer(challenges) = &mut self.source {
            **challenges = Challenges::new(&self.realm, self.scope.as_deref());
        }
    }
}

#[derive(Clone)]
struct Challenges {
    missing: HeaderValue,
    duplicate: HeaderValue,
    /// Per rejection, in [`Rejection::index`] order, from the rejection table's challenge.
    rejected: Vec<Option<HeaderValue>>,
}

impl Challenges {
    /// The `WWW-Authenticate` value answering `refusal`; none for a rate limit, whose 429
    /// says "wait" rather than "authenticate".
    fn answering(&self, refusal: &Refusal) -> Option<&HeaderValue> {
        match refusal {
            Refusal::Missing => Some(&self.missing),
            Refusal::Duplicate => Some(&self.duplicate),
            // 429 says "wait" and 503 "try again", not "authenticate": no challenge.
            Refusal::Rejected(rejection) => self.rejected[rejection.index()].as_ref(),
        }
    }

    fn new(realm: &str, scope: Option<&str>) -> Challenges {
        let realm = quotable(realm);
        let invalid = |description: &str| {
            header_value(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{description}\""
            ))
        };
        Challenges {
            missing: header_value(format!("Bearer realm=\"{realm}\"")),
            duplicate: header_value(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_request\", error_description=\"the request has more than one Authorization header\""
            )),
            rejected: REASONS
                .iter()
                .map(|reason| match reason.challenge {
                    Challenge::InvalidToken(description) => Some(invalid(description)),
                    Challenge::InsufficientScope => Some(header_value(format!(
                        "Bearer realm=\"{realm}\", error=\"insufficient_scope\", scope=\"{}\"",
                        quotable(scope.unwrap_or_default())
                    ))),
                    Challenge::None => None,
                })
                .collect(),
        }
    }
}

/// Keeps only the characters RFC 6750 allows inside a quoted attribute (printable ASCII
/// without `"` and `\`), so no realm or scope can break the header.
fn quotable(text: &str) -> String {
    text.chars()
        .filter(|c| matches!(c, ' ' | '!' | '#'..='[' | ']'..='~'))
        .collect()
}

fn header_value(text: String) -> HeaderValue {
    // Every character was filtered by `quotable` or is a literal above, all visible ASCII.
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

impl TokenLayer {
    /// A layer checking tokens against `store`, with realm `"api"` and no required scope.
    pub fn new(store: TokenStore) -> TokenLayer {
        let realm: Box<str> = "api".into();
        TokenLayer {
            store,
            config: Arc::new(Config {
                source: Source::Bearer(Box::new(Challenges::new(&realm, None))),
                scope: None,
                cost: 1,
                realm,
            }),
        }
    }

    /// Also requires the token to grant `scope`; a valid token without it gets 403.
    pub fn require_scope(mut self, scope: impl Into<String>) -> TokenLayer {
        let config = Arc::make_mut(&mut self.config);
        config.scope = Some(scope.into().into_boxed_str());
        config.rechallenge();
        self
    }

    /// Each request spends `cost` of the token's [`Credits`](crate::Credits) instead of 1
    /// (0: none), as [`TokenStore::validate_cost`] does: the price of the routes behind
    /// this layer. A token without credits ignores it; one with too few left gets 429.
    pub fn cost(mut self, cost: u64) -> TokenLayer {
        Arc::make_mut(&mut self.config).cost = cost;
        self
    }

    /// The realm named in `WWW-Authenticate` challenges (default `"api"`). Characters that
    /// cannot appear in a quoted header attribute (`"`, `\`, non-ASCII) are dropped.
    pub fn realm(mut self, realm: impl Into<String>) -> TokenLayer {
        let config = Arc::make_mut(&mut self.config);
        config.realm = realm.into().into_boxed_str();
        config.rechallenge();
        self
    }

    /// Reads the token from `header` instead of `Authorization`: the header's whole value
    /// is the token, with no `Bearer` prefix (e.g. `X-Api-Key: tc_…`). Refusals then carry
    /// no `WWW-Authenticate` challenge (the token is not a bearer token), and the realm is
    /// not used.
    pub fn header(mut self, header: HeaderName) -> TokenLayer {
        Arc::make_mut(&mut self.config).source = Source::Header(header);
        self
    }
}

impl<S> Layer<S> for TokenLayer {
    type Service = TokenService<S>;

    fn layer(&self, inner: S) -> TokenService<S> {
        TokenService {
            inner,
            store: self.store.clone(),
            config: self.config.clone(),
        }
    }
}

/// The [`Service`] made by [`TokenLayer`]: checks the token, then calls the inner service.
#[derive(Clone)]
pub struct TokenService<S> {
    inner: S,
    store: TokenStore,
    config: Arc<Config>,
}

/// Why a request was refused before reaching the inner service.
enum Refusal {
    /// No bearer token at all.
    Missing,
    /// The token header appears more than once.
    Duplicate,
    /// `validate` said no.
    Rejected(Rejection),
}

impl<S> TokenService<S> {
    /// The token from the request's headers, then the store's verdict (owned, for the
    /// request's extensions).
    fn authorize(&self, headers: &HeaderMap) -> Result<OwnedToken, Refusal> {
        let source = &self.config.source;
        let value = only_value(headers, source.name())?;
        let token = match source {
            Source::Bearer(_) => bearer(value)?,
            Source::Header(_) => value.as_bytes(),
        };
        // A header that is not UTF-8 cannot be a token.
        let token = std::str::from_utf8(token)
            .map_err(|_| Refusal::Rejected(Rejection::Malformed))?
            .trim();
        let cost = self.config.cost;
        let result = match &self.config.scope {
            Some(scope) => self.store.validate_scope_cost(token, scope, cost),
            None => self.store.validate_cost(token, cost),
        };
        result
            .map(ValidToken::into_owned)
            .map_err(Refusal::Rejected)
    }

    fn refuse<B: Default>(&self, refusal: Refusal) -> Response<B> {
        let mut response = Response::new(B::default());
        *response.status_mut() = refusal.status();
        let retry_after = match refusal {
            Refusal::Rejected(Rejection::RateLimited { retry_after }) => Some(retry_after),
            Refusal::Rejected(Rejection::UsageExceeded { retry_after }) => retry_after,
            _ => None,
        };
        if let Some(retry_after) = retry_after {
            // Whole seconds, rounded up, so a client that waits that long is admitted.
            let seconds = retry_after.as_nanos().div_ceil(1_000_000_000);
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds as u64));
        }
        if let Source::Bearer(challenges) = &self.config.source {
            if let Some(challenge) = challenges.answering(&refusal) {
                response
                    .headers_mut()
                    .insert(WWW_AUTHENTICATE, challenge.clone());
            }
        }
        response
    }
}

impl Refusal {
    /// The status answering this refusal (the table on [`TokenLayer`]).
    fn status(&self) -> StatusCode {
        match self {
            Refusal::Missing => StatusCode::UNAUTHORIZED,
            Refusal::Duplicate => StatusCode::BAD_REQUEST,
            Refusal::Rejected(rejection) => StatusCode::from_u16(rejection.reason().http_status)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}

/// The one value of header `name`. Two or more values are refused whatever they hold: the
/// layer would check one while a proxy or handler might read another. Walking the
/// header's values borrows the map and allocates nothing.
fn only_value<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<&'h HeaderValue, Refusal> {
    let mut values = headers.get_all(name).iter();
    let first = values.next().ok_or(Refusal::Missing)?;
    match values.next() {
        None => Ok(first),
        Some(_) => Err(Refusal::Duplicate),
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive, as
/// RFC 7235 says); any other scheme counts as no token.
fn bearer(value: &HeaderValue) -> Result<&[u8], Refusal> {
    let bytes = value.as_bytes();
    const SCHEME: &[u8] = b"bearer ";
    match bytes.get(..SCHEME.len()) {
        Some(scheme) if scheme.eq_ignore_ascii_case(SCHEME) => Ok(&bytes[SCHEME.len()..]),
        _ if bytes.eq_ignore_ascii_case(b"bearer") => Err(Refusal::Rejected(Rejection::Malformed)),
        _ => Err(Refusal::Missing),
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for TokenService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let kind = match self.authorize(request.headers()) {
            Ok(token) => {
                // The inner services (a trace layer logging headers with `Debug`, say) see
                // the token header as `Sensitive`, never the secret. `authorize` made sure
                // it is the header's only value; flipping the flag allocates nothing.
                if let Some(value) = request.headers_mut().get_mut(self.config.source.name()) {
                    value.set_sensitive(true);
                }
                request.extensions_mut().insert(token);
                Kind::Inner {
                    future: self.inner.call(request),
                }
            }
            Err(refusal) => Kind::Refused {
                response: Some(self.refuse(refusal)),
            },
        };
        ResponseFuture { kind }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`TokenService`]: the inner service's, or an immediate refusal.
    ///
    /// # Panics
    ///
    /// A refusal polled again after it returned [`Poll::Ready`] panics with "ResponseFuture
    /// polled after completion", as futures do by convention: it has no answer left to
    /// give, and waiting forever would hide the caller's bug. An accepted request's future
    /// does what the inner service's future does.
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Inner { #[pin] future: F },
        Refused { response: Option<Response<B>> },
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => future.poll(cx),
            KindProj::Refused { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                // The response was handed out by the poll that completed this future; a
                // second answer would be invented, and `Pending` would never wake.
                None => panic!("ResponseFuture polled after completion"),
            },
        }
    }
}

#[cfg(feature = "axum")]
mod axum_extractor {
    use axum_core::extract::FromRequestParts;
    use axum_core::response::{IntoResponse, Response};
    use http::request::Parts;
    use http::StatusCode;

    use crate::validate::OwnedToken;

    /// The [`OwnedToken`] extractor was used on a route that [`TokenLayer`](crate::TokenLayer)
    /// does not cover: a server bug. The response is 500 with an empty body; the reason (this
    /// error's message) goes to the log with `tracing::error!`, since it describes how the
    /// server is built and is of no use to the client.
    #[derive(Debug, Clone, Copy, thiserror::Error)]
    #[error("OwnedToken extractor used on a route without TokenLayer; add .route_layer(TokenLayer::new(store)) to the router")]
    pub struct MissingTokenLayer;

    impl IntoResponse for MissingTokenLayer {
        fn into_response(self) -> Response {
            tracing::error!("{self}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }

    /// In a handler behind [`TokenLayer`](crate::TokenLayer), `token: OwnedToken` is the
    /// token the layer accepted.
    impl<S: Send + Sync> FromRequestParts<S> for OwnedToken {
        type Rejection = MissingTokenLayer;

        async fn from_request_parts(
            parts: &mut Parts,
            _state: &S,
        ) -> Result<Self, Self::Rejection> {
            parts
                .extensions
                .get::<OwnedToken>()
                .cloned()
                .ok_or(MissingTokenLayer)
        }
    }
}

#[cfg(feature = "axum")]
pub use axum_extractor::MissingTokenLayer;

//! The layer stack every public response passes through, outermost first:
//! panic catcher → request id → trace span → metrics → security headers →
//! preflight status → CORS → body read (413 when too large) → body limit →
//! routes.
//!
//! The stack wraps the router once, from outside. `Router::layer` would wrap
//! every route in each layer instead, and every wrapped level clones a boxed
//! service and boxes a future on every request: with one layer per security
//! header that was 20 levels, about 40 allocations per request
//! (docs/performance.md, item 12). One small layer stays inside the router:
//! it puts the matched route template on the response, for the metrics.
//!
//! These are the gateway duties the original left to nginx and helmet (§1.5,
//! §2.5–§2.7), so a Kubernetes Ingress can route by prefix with nothing else.

use axum::Router;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderName};
use http::{HeaderValue, Method, StatusCode};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;
use uuid::Uuid;

use super::error::ApiError;
use crate::metrics::Metrics;

/// Settings of the shared layer stack.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Origins allowed to make credentialed cross-origin requests.
    pub cors_origins: Vec<String>,
    /// Send `Strict-Transport-Security` (when served over https).
    pub hsts: bool,
    /// Maximum request body in bytes.
    pub body_limit: usize,
}

/// The Content-Security-Policy sent on every response. API responses are data,
/// never documents, so nothing may load or frame them.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The request-id header (§2.7).
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request id of the current request, as a request extension.
#[derive(Debug, Clone, Copy)]
pub struct RequestId(pub Uuid);

/// Wraps `router` in the shared layer stack (module docs).
pub fn apply(router: Router, settings: &HttpSettings, metrics: Metrics) -> Router {
    let routed = router.route_layer(middleware::from_fn(keep_matched_path));
    let headers: Arc<[(HeaderName, HeaderValue)]> = security_headers(settings.hsts).into();
    let stack = ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("handler panicked").into_response()
        }))
        .layer(middleware::from_fn(request_id))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let id = request
                    .extensions()
                    .get::<RequestId>()
                    .map(|id| id.0.to_string())
                    .unwrap_or_default();
                tracing::info_span!("http", method = %request.method(), path = %request.uri().path(), request_id = %id)
            }),
        )
        .layer(middleware::from_fn_with_state(
            metrics,
            crate::metrics::track,
        ))
        .map_response(move |response| with_security_headers(response, &headers))
        .layer(middleware::from_fn(preflight_no_content))
        .layer(cors(&settings.cors_origins))
        .layer(middleware::from_fn_with_state(
            settings.body_limit,
            read_body_first,
        ))
        .layer(DefaultBodyLimit::max(settings.body_limit))
        .service(routed);
    Router::new().fallback_service(stack)
}

/// Sets every security header on `response`, replacing any a route set.
fn with_security_headers(
    mut response: Response,
    headers: &[(HeaderName, HeaderValue)],
) -> Response {
    let map = response.headers_mut();
    map.reserve(headers.len());
    for (name, value) in headers {
        map.insert(name.clone(), value.clone());
    }
    response
}

/// Largest body [`read_body_first`] reads to its end to refuse it.
const DRAIN_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// How long reading a body may take.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads every request body to its end before the route runs, at most `limit`
/// bytes of it kept; a larger one is refused with `413 {"code":413,…}` before
/// any route (as Express's `json()` did, before auth), after being read and
/// discarded (up to 16 MiB).
///
/// A response sent while the request body is unread closes the connection with
/// the body unread: the kernel resets it, and a proxy still writing the body
/// (nginx, an ingress controller) loses the answer and replies 502 instead. That
/// happened for oversized bodies, and for bodies a route ignores (logout,
/// mark-read). Read to the end, the connection stays usable.
///
/// Engine.IO requests (query `EIO=`) are left alone: the Socket.IO server reads
/// its polling bodies itself, with its own limit.
async fn read_body_first(State(limit): State<usize>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    let chunked = headers.contains_key(header::TRANSFER_ENCODING);
    let engine_io = request
        .uri()
        .query()
        .is_some_and(|query| query.split('&').any(|pair| pair.starts_with("EIO=")));
    if engine_io || (!chunked && declared.unwrap_or(0) == 0) {
        return next.run(request).await;
    }
    let too_large =
        || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large").into_response();
    let (parts, body) = request.into_parts();
    let mut stream = body.into_data_stream();
    if declared.is_some_and(|length| length > limit as u64) {
        if declared.is_some_and(|length| length <= DRAIN_MAX_BYTES) {
            let drain = async {
                use futures::StreamExt;
                while let Some(Ok(_)) = stream.next().await {}
            };
            let _ = tokio::time::timeout(BODY_READ_TIMEOUT, drain).await;
        }
        return too_large();
    }
    let read = async {
        use futures::StreamExt;
        let mut kept = bytes::BytesMut::new();
        let mut seen: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| false)?;
            seen += chunk.len() as u64;
            if seen <= limit as u64 {
                kept.extend_from_slice(&chunk);
            } else if seen > DRAIN_MAX_BYTES {
                return Err(true);
            }
        }
        if seen > limit as u64 {
            Err(true)
        } else {
            Ok(kept.freeze())
        }
    };
    match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Ok(Err(true)) => too_large(),
        Ok(Err(false)) => ApiError::bad_request("Could not read the request body").into_response(),
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "Request body not received in time",
        )
        .into_response(),
    }
}

fn security_headers(hsts: bool) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = vec![
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::X_XSS_PROTECTION, HeaderValue::from_static("0")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
        (
            HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static("same-origin"),
        ),
        (
            HeaderName::from_static("origin-agent-cluster"),
            HeaderValue::from_static("?1"),
        ),
        (
            HeaderName::from_static("permissions-policy"),
            HeaderValue::from_static("camera=(), microphone=(), geolocation=()"),
        ),
        (
            header::X_DNS_PREFETCH_CONTROL,
            HeaderValue::from_static("off"),
        ),
        (
            HeaderName::from_static("x-download-options"),
            HeaderValue::from_static("noopen"),
        ),
        (
            HeaderName::from_static("x-permitted-cross-domain-policies"),
            HeaderValue::from_static("none"),
        ),
    ];
    if hsts {
        headers.push((
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains"),
        ));
    }
    headers
}

/// CORS as §2.5: an allow-list with credentials; other origins get no
/// `Access-Control-Allow-Origin` but are still served.
pub fn cors(origins: &[String]) -> CorsLayer {
    let allowed: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|origin| HeaderValue::from_str(origin.trim()).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(allowed))
        .allow_credentials(true)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
        ])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("x-requested-with"),
        ])
        .expose_headers([header::CONTENT_LENGTH, REQUEST_ID.clone()])
        .vary([header::ORIGIN])
}

/// Preflights answer 204 No Content, as the `cors` middleware of the original.
async fn preflight_no_content(request: Request, next: Next) -> Response {
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = next.run(request).await;
    if preflight && response.status() == StatusCode::OK {
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    response
}

/// Echoes a valid v4 `X-Request-ID`, or assigns a fresh one (§2.7).
async fn request_id(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| Uuid::parse_str(value).ok())
        .filter(|id| id.get_version_num() == 4)
        .unwrap_or_else(Uuid::new_v4);
    let value = HeaderValue::from_str(&id.to_string()).expect("a uuid is a valid header");
    request
        .headers_mut()
        .insert(REQUEST_ID.clone(), value.clone());
    request.extensions_mut().insert(RequestId(id));
    let mut response = next.run(request).await;
    response.headers_mut().insert(REQUEST_ID.clone(), value);
    response
}

/// Copies the matched route template from the request to the response, where
/// the metrics middleware outside the router finds it.
async fn keep_matched_path(request: Request, next: Next) -> Response {
    let path = request.extensions().get::<MatchedPath>().cloned();
    let mut response = next.run(request).await;
    if let Some(path) = path {
        response.extensions_mut().insert(path);
    }
    response
}

/// The route template a response answered, for metric labels: `unmatched`
/// for the JSON 404 and for what the layers answered themselves (CORS
/// preflights, 413s).
pub fn route_label(response: &Response) -> &str {
    response
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
}

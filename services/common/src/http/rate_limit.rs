//! Per-client-IP rate limits (§2.4) on `governor`'s GCRA.
//!
//! A [`RateLimit`] is one counter; applying the same value (it is cheap to clone)
//! to several routes makes them share it, as the contract's shared counters
//! require. `max` requests per `window` become a burst of `max` refilled evenly
//! over the window. Rejections are 429 with the limiter's plain-text message and
//! `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` and `Retry-After`.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use http::{HeaderValue, StatusCode};

use super::client_ip;

/// Checks between two prunings of the per-client state.
const PRUNE_EVERY: u64 = 4096;

type Limiter =
    RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock, StateInformationMiddleware>;

/// The future [`enforce`] returns.
pub type EnforceFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>>;

/// Axum middleware (for `from_fn_with_state`): count the request against
/// `limit`, or answer 429.
pub fn enforce(State(limit): State<RateLimit>, request: Request, next: Next) -> EnforceFuture {
    Box::pin(limit.enforce(request, next))
}

/// The signature of [`enforce`].
pub type EnforceFn = fn(State<RateLimit>, Request, Next) -> EnforceFuture;

/// The axum layer applying one counter to the routes it wraps.
pub type RateLimitLayer =
    axum::middleware::FromFnLayer<EnforceFn, RateLimit, (State<RateLimit>, Request)>;

/// One rate-limit counter keyed by client IP.
#[derive(Clone)]
pub struct RateLimit {
    inner: Arc<Inner>,
}

struct Inner {
    limiter: Limiter,
    clock: DefaultClock,
    max: u32,
    period: Duration,
    message: &'static str,
    trust_proxy_hops: usize,
    checks: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("max", &self.inner.max)
            .field("message", &self.inner.message)
            .finish()
    }
}

impl RateLimit {
    /// `max` requests per `window` for each client; `message` is the 429 body.
    pub fn new(max: u32, window: Duration, message: &'static str, trust_proxy_hops: usize) -> Self {
        let max = max.max(1);
        let period = (window / max).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .expect("period is non-zero")
            .allow_burst(NonZeroU32::new(max).expect("max is at least 1"));
        Self {
            inner: Arc::new(Inner {
                limiter: RateLimiter::dashmap(quota)
                    .with_middleware::<StateInformationMiddleware>(),
                clock: DefaultClock::default(),
                max,
                period,
                message,
                trust_proxy_hops,
                checks: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// A layer counting every request to the routes it wraps against this counter.
    pub fn layer(&self) -> RateLimitLayer {
        axum::middleware::from_fn_with_state(self.clone(), enforce as EnforceFn)
    }

    /// Axum middleware: count the request, or answer 429.
    pub async fn enforce(self, request: Request, next: Next) -> Response {
        let (parts, body) = request.into_parts();
        let ip = client_ip::resolve(
            &parts.headers,
            client_ip::peer(&parts),
            self.inner.trust_proxy_hops,
        );
        let request = Request::from_parts(parts, body);
        let inner = &self.inner;
        // Now and then, forget clients that are back at full capacity, so the
        // per-client state stays bounded without a task of its own.
        let checks = inner
            .checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if checks % PRUNE_EVERY == PRUNE_EVERY - 1 {
            inner.limiter.retain_recent();
        }
        match inner.limiter.check_key(&ip) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let mut response = next.run(request).await;
                let reset = inner.period * (inner.max - remaining.min(inner.max));
                set_headers(&mut response, inner.max, remaining, reset, None);
                response
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(inner.clock.now());
                let mut response = (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    inner.message,
                )
                    .into_response();
                let reset = inner.period * inner.max;
                set_headers(&mut response, inner.max, 0, reset, Some(wait));
                response
            }
        }
    }
}

fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

fn set_headers(
    response: &mut Response,
    limit: u32,
    remaining: u32,
    reset: Duration,
    retry_after: Option<Duration>,
) {
    let headers = response.headers_mut();
    // An inner (more specific) limiter has already described its own counter.
    if headers.contains_key("ratelimit-limit") {
        return;
    }
    headers.insert("ratelimit-limit", HeaderValue::from(limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(ceil_secs(reset)));
    if let Some(wait) = retry_after {
        headers.insert("retry-after", HeaderValue::from(ceil_secs(wait).max(1)));
    }
}

//! Serving a router with graceful shutdown.
//!
//! SIGTERM or SIGINT cancels the shared [`CancellationToken`]: the listener stops
//! accepting, in-flight requests get the grace period to finish, then background
//! tasks (outbox relays) make their final flush and pools close.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;

use crate::http::layers::{self, HttpSettings};
use crate::metrics::Metrics;
use crate::ops::{self, HealthChecks};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Cancels `token` on SIGTERM or SIGINT.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("SIGINT received; shutting down"),
            _ = terminate => tracing::info!("SIGTERM received; shutting down"),
        }
        token.cancel();
    });
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then waits at
/// most `grace` for in-flight requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let app = router.into_make_service_with_connect_info::<SocketAddr>();
    let signal = shutdown.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        signal.cancelled().await;
    });
    let server = tokio::spawn(async move { server.await });
    shutdown.cancelled().await;
    match tokio::time::timeout(grace, server).await {
        Ok(joined) => joined.unwrap_or(Ok(())),
        Err(_) => {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "in-flight requests did not finish within the grace period"
            );
            Ok(())
        }
    }
}

/// The public application: the services' routers, the operational endpoints, a
/// JSON 404 for everything else, all inside the shared layer stack.
pub fn compose(
    services: Vec<Router>,
    health: HealthChecks,
    metrics: Metrics,
    settings: &HttpSettings,
) -> Router {
    let mut router = ops::router(health, metrics.clone());
    for service in services {
        router = router.merge(service);
    }
    let router = router
        .fallback(crate::http::error::not_found)
        .method_not_allowed_fallback(crate::http::error::not_found);
    layers::apply(router, settings, metrics)
}

//! Operational endpoints every target serves: `/health` in the contract's shape
//! (§3.11), `/livez`, `/readyz` and `/metrics`.
//!
//! `/health` and `/readyz` answer 200 only when every dependency a target needs
//! (its database pools, the broker) answers; `/livez` only says the process runs.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::StatusCode;
use serde_json::json;
use sqlx::PgPool;

use crate::events::Broker;
use crate::metrics::Metrics;

/// What a health check looks at.
#[derive(Clone, Debug, Default)]
pub struct HealthChecks {
    pools: Vec<PgPool>,
    broker: Option<Broker>,
}

impl HealthChecks {
    /// Adds a database pool to check.
    pub fn with_pool(mut self, pool: PgPool) -> Self {
        self.pools.push(pool);
        self
    }

    /// Adds the broker to check.
    pub fn with_broker(mut self, broker: Broker) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Adds every check of `other`.
    pub fn merge(mut self, other: &HealthChecks) -> Self {
        self.pools.extend(other.pools.iter().cloned());
        if self.broker.is_none() {
            self.broker = other.broker.clone();
        }
        self
    }

    /// Whether every dependency answers now.
    pub async fn healthy(&self) -> bool {
        for pool in &self.pools {
            let ping = tokio::time::timeout(
                Duration::from_secs(2),
                sqlx::query("SELECT 1").execute(pool),
            )
            .await;
            if !matches!(ping, Ok(Ok(_))) {
                return false;
            }
        }
        match &self.broker {
            Some(broker) => broker.is_connected().await,
            None => true,
        }
    }
}

/// The router with `/health`, `/livez`, `/readyz` and `/metrics`.
pub fn router(checks: HealthChecks, metrics: Metrics) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/readyz", get(health))
        .route("/livez", get(|| async { Json(json!({"status":"ok"})) }))
        .route(
            "/metrics",
            get(crate::metrics::exposition).with_state(metrics),
        )
        .with_state(Arc::new(checks))
}

/// Health route for mounting under a service prefix (e.g. `/user/health`).
pub fn health_route<S: Clone + Send + Sync + 'static>(
    checks: HealthChecks,
) -> axum::routing::MethodRouter<S> {
    let checks = Arc::new(checks);
    get(move || {
        let checks = checks.clone();
        async move { health_response(&checks).await }
    })
}

async fn health(State(checks): State<Arc<HealthChecks>>) -> Response {
    health_response(&checks).await
}

async fn health_response(checks: &HealthChecks) -> Response {
    if checks.healthy().await {
        Json(json!({"status":"ok"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status":"degraded"})),
        )
            .into_response()
    }
}

//! The Parley notification service: in-app notifications and email, driven by
//! the events of the other services.
//!
//! * REST (§5) under `/notifications/` and `/notification/` in [`rest`];
//! * events (`user.registered`, `chat.message.offline`, `auth.token_revoked`)
//!   are applied exactly once by [`consumer`], which writes notifications and
//!   queues email in one transaction;
//! * [`mailer`] sends the queue through SMTP with retries; [`templates`]
//!   renders HTML and plain-text parts.
#![forbid(unsafe_code)]

pub mod config;
pub mod consumer;
pub mod mailer;
pub mod openapi;
pub mod rest;
pub mod templates;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{delete, get, post, put};
use parley_common::auth::{Authenticator, Revocations, USER_AUTH_MESSAGES};
use parley_common::config::{CommonConfig, ConfigError};
use parley_common::consumer::consume_durable;
use parley_common::db::{self, DbError, ServiceSchema};
use parley_common::events::Broker;
use parley_common::http::rate_limit::RateLimit;
use parley_common::metrics::Metrics;
use parley_common::ops::HealthChecks;
use prometheus::IntCounterVec;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

pub use config::NotificationConfig;
use mailer::{Mailer, MailerError};
use templates::Templates;

/// The notification service's migrations, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/notification");

/// The notification service's schema.
pub const SCHEMA: ServiceSchema = ServiceSchema {
    schema: "parley_notification",
    migrator: &MIGRATOR,
};

/// Errors starting the notification service.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Mailer(#[from] MailerError),
}

impl From<sqlx::Error> for StartError {
    fn from(err: sqlx::Error) -> Self {
        Self::Db(DbError::from(err))
    }
}

/// What the event consumer needs.
#[derive(Clone)]
pub struct NotificationContext {
    pub pool: PgPool,
    pub mailer: Mailer,
    pub templates: Arc<Templates>,
    pub consumed: IntCounterVec,
}

/// State of the REST handlers.
#[derive(Clone)]
pub struct NotificationState {
    pub pool: PgPool,
    pub auth: Authenticator,
    pub page_max: i64,
    pub read_counter: IntCounterVec,
}

impl FromRef<NotificationState> for Authenticator {
    fn from_ref(state: &NotificationState) -> Self {
        state.auth.clone()
    }
}

/// A running notification service.
pub struct NotificationService {
    pub router: Router,
    pub health: HealthChecks,
    pub pool: PgPool,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl NotificationService {
    /// Connects, checks the schema, starts the consumer and the mailer.
    pub async fn start(
        common: &CommonConfig,
        config: &NotificationConfig,
        broker: Broker,
        metrics: &Metrics,
        revocations: Revocations,
        background: CancellationToken,
    ) -> Result<Self, StartError> {
        let url = common.database_url(config.notification_database_url.as_ref())?;
        let pool = db::connect(&url, SCHEMA.schema, common.db_max_connections).await?;
        db::check_schema_version(&pool, SCHEMA).await?;
        let auth = Authenticator::start(
            common.key_ring()?,
            revocations,
            USER_AUTH_MESSAGES,
            broker.clone(),
            &pool,
            background.clone(),
        )
        .await?;

        let mailer = Mailer::new(
            pool.clone(),
            config,
            metrics.counter("emails_total", "Email attempts by outcome", &["outcome"]),
        )?;
        let app_url = common
            .public_url()
            .unwrap_or_else(|| "http://localhost:8080".to_owned());
        let ctx = NotificationContext {
            pool: pool.clone(),
            mailer: mailer.clone(),
            templates: Arc::new(Templates::new(app_url, config.email_from())),
            consumed: metrics.counter(
                "notifications_consumed_total",
                "Notifications created from events, by type",
                &["type"],
            ),
        };
        let consumer_task = consume_durable(
            broker.clone(),
            consumer::queue(broker.exchange()),
            move |event| {
                let ctx = ctx.clone();
                async move { consumer::apply(&ctx, event).await }
            },
            metrics,
            background.clone(),
        )
        .await;
        let mailer_task = mailer.spawn(background);

        let secs = Duration::from_secs;
        let text = "Too many requests from this IP, please try again later";
        let service_limit = RateLimit::new(
            config.notification_rate_limit_max,
            secs(config.notification_rate_limit_window_secs),
            text,
            common.trust_proxy_hops,
        );
        let router_limit = RateLimit::new(
            config.notification_rate_limit_max,
            secs(config.notification_rate_limit_window_secs),
            text,
            common.trust_proxy_hops,
        );
        let create_limit = RateLimit::new(
            config.notification_create_rate_limit_max,
            secs(config.notification_create_rate_limit_window_secs),
            "Too many notification creation requests, please try again later",
            common.trust_proxy_hops,
        );
        let state = NotificationState {
            pool: pool.clone(),
            auth,
            page_max: config.notification_page_max.max(1),
            read_counter: metrics.counter(
                "notifications_read_total",
                "Notifications marked read",
                &[],
            ),
        };
        let health = HealthChecks::default()
            .with_pool(pool.clone())
            .with_broker(broker);
        let mut router = Router::new();
        // The original served the same routes under both prefixes (§1.2).
        for prefix in ["/notifications", "/notification"] {
            router = router
                .route(
                    &format!("{prefix}/"),
                    get(rest::list).merge(post(rest::create).route_layer(create_limit.layer())),
                )
                .route(&format!("{prefix}/unread/count"), get(rest::unread_count))
                .route(&format!("{prefix}/read-all"), put(rest::read_all))
                .route(
                    &format!("{prefix}/{{notification_id}}/read"),
                    put(rest::mark_read),
                )
                .route(
                    &format!("{prefix}/{{notification_id}}"),
                    delete(rest::delete),
                );
        }
        let router = router
            .layer(router_limit.layer())
            .layer(service_limit.layer())
            .route(
                "/notifications/health",
                parley_common::ops::health_route(health.clone()),
            )
            .route("/notifications/api-docs.json", get(openapi::document))
            .with_state(state);
        Ok(Self {
            router,
            health,
            pool,
            tasks: vec![consumer_task, mailer_task],
        })
    }
}

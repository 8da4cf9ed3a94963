//! Composition: start the services a target names, merge their routers under
//! the shared layers, and serve them until a signal arrives.

use std::time::Duration;

use axum::Router;
use parley_chat::ChatService;
use parley_common::auth::Revocations;
use parley_common::config::ConfigError;
use parley_common::events::Broker;
use parley_common::metrics::Metrics;
use parley_common::ops::HealthChecks;
use parley_common::server;
use parley_notification::NotificationService;
use parley_user::UserService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::ServeArgs;

/// A started platform, ready to serve.
pub struct Platform {
    pub router: Router,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pools: Vec<sqlx::PgPool>,
    background: CancellationToken,
    broker_shutdown: CancellationToken,
    grace: Duration,
}

/// Errors starting the platform.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("user service: {0}")]
    User(#[from] parley_user::StartError),
    #[error("chat service: {0}")]
    Chat(#[from] parley_chat::StartError),
    #[error("notification service: {0}")]
    Notification(#[from] parley_notification::StartError),
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

impl Platform {
    /// Starts every service of `args.target`.
    pub async fn start(
        args: &ServeArgs,
        shutdown: CancellationToken,
    ) -> Result<Self, PlatformError> {
        let metrics = Metrics::new();
        // Shutdown runs in three stages: the HTTP server drains (`shutdown`),
        // then background work such as outbox relays makes its final flush
        // (`background`), then the broker connection closes (`broker_shutdown`).
        let background = CancellationToken::new();
        let broker_shutdown = CancellationToken::new();
        let broker = Broker::start(
            args.common.amqp_url()?,
            args.common.events_exchange.clone(),
            broker_shutdown.clone(),
        );
        // One revocation list per process: a logout is refused by every service
        // of this process at once, and by other processes when its event arrives.
        let revocations = Revocations::default();
        let mut routers = Vec::new();
        let mut health = HealthChecks::default().with_broker(broker.clone());
        let mut tasks = Vec::new();
        let mut pools = Vec::new();
        if args.target.runs_user() {
            let user = UserService::start(
                &args.common,
                &args.user,
                broker.clone(),
                &metrics,
                revocations.clone(),
                background.clone(),
            )
            .await?;
            health = health.merge(&user.health);
            routers.push(user.router);
            tasks.push(user.relay_task);
            pools.push(user.pool);
        }
        if args.target.runs_chat() {
            let chat = ChatService::start(
                &args.common,
                &args.chat,
                broker.clone(),
                &metrics,
                revocations.clone(),
                background.clone(),
            )
            .await?;
            health = health.merge(&chat.health);
            routers.push(chat.router);
            tasks.extend(chat.tasks);
            pools.push(chat.pool);
        }
        if args.target.runs_notification() {
            let notification = NotificationService::start(
                &args.common,
                &args.notification,
                broker.clone(),
                &metrics,
                revocations.clone(),
                background.clone(),
            )
            .await?;
            health = health.merge(&notification.health);
            routers.push(notification.router);
            tasks.extend(notification.tasks);
            pools.push(notification.pool);
        }
        let router = server::compose(routers, health, metrics, &args.common.http_settings());
        Ok(Self {
            router,
            shutdown,
            tasks,
            pools,
            background,
            broker_shutdown,
            grace: Duration::from_secs(args.common.shutdown_grace_secs),
        })
    }

    /// Serves on `listener` until the shutdown token is cancelled, then flushes
    /// background work and closes the pools.
    pub async fn serve(self, listener: TcpListener) -> Result<(), PlatformError> {
        let served = server::serve(listener, self.router, self.shutdown.clone(), self.grace).await;
        self.background.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        self.broker_shutdown.cancel();
        for pool in self.pools {
            pool.close().await;
        }
        Ok(served?)
    }
}

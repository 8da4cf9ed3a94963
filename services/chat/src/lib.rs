//! The Parley chat service: messages, conversations and real-time delivery.
//!
//! * REST (`/chat/send`, `/chat/get/:id`, `/chat/conversations`,
//!   `/chat/messages/read/:id`) in [`rest`], reads in [`store`];
//! * new messages go through the group-commit [`writer`], which also emits the
//!   offline-message event through the outbox;
//! * Socket.IO at `/chat/socket.io` in [`socket`]; emits reach every replica
//!   through [`realtime`]; presence is cluster-wide in [`presence`];
//! * usernames and revocations arrive by events in [`projection`].
#![forbid(unsafe_code)]

pub mod config;
pub mod openapi;
pub mod presence;
pub mod projection;
pub mod realtime;
pub mod rest;
pub mod socket;
pub mod store;
pub mod writer;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{get, post, put};
use parley_common::auth::{AuthMessages, Authenticator, Revocations};
use parley_common::config::{CommonConfig, ConfigError};
use parley_common::consumer;
use parley_common::db::{self, DbError, ServiceSchema};
use parley_common::events::{Broker, OutboxRelay};
use parley_common::http::rate_limit::RateLimit;
use parley_common::metrics::Metrics;
use parley_common::ops::HealthChecks;
use prometheus::{IntCounterVec, IntGauge};
use socketioxide::SocketIo;
use socketioxide::handler::ConnectHandler;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

pub use config::ChatConfig;
use presence::Presence;
use realtime::Realtime;
use socket::{SocketContext, Typing};
use writer::{MessageWriter, PresenceWindow};

/// The chat service's migrations, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/chat");

/// The chat service's schema.
pub const SCHEMA: ServiceSchema = ServiceSchema {
    schema: "parley_chat",
    migrator: &MIGRATOR,
};

/// The chat service's 401 messages (§2.1).
pub const AUTH_MESSAGES: AuthMessages = AuthMessages {
    missing: "Authentication required",
    invalid: "Invalid or expired token",
};

/// Errors starting the chat service.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<sqlx::Error> for StartError {
    fn from(err: sqlx::Error) -> Self {
        Self::Db(DbError::from(err))
    }
}

/// The chat service's own metrics.
#[derive(Clone)]
pub struct ChatMetrics {
    pub sent: IntCounterVec,
    pub read: IntCounterVec,
    pub presence_changes: IntCounterVec,
    pub sockets: IntGauge,
}

impl ChatMetrics {
    fn register(metrics: &Metrics) -> Self {
        Self {
            sent: metrics.counter(
                "chat_messages_sent_total",
                "Messages stored, by channel",
                &["channel"],
            ),
            read: metrics.counter("chat_messages_read_total", "Messages marked read", &[]),
            presence_changes: metrics.counter(
                "chat_presence_changes_total",
                "Users coming online or going offline in the cluster",
                &["direction"],
            ),
            sockets: metrics.gauge(
                "socket_connections_active",
                "Socket.IO connections on this replica",
            ),
        }
    }
}

/// State of the REST handlers.
#[derive(Clone)]
pub struct ChatState {
    pub socket: Arc<SocketContext>,
}

impl FromRef<ChatState> for Authenticator {
    fn from_ref(state: &ChatState) -> Self {
        state.socket.auth.clone()
    }
}

/// A running chat service.
pub struct ChatService {
    pub router: Router,
    pub health: HealthChecks,
    pub pool: PgPool,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
    pub io: SocketIo,
}

impl ChatService {
    /// Connects, checks the schema, starts consumers, relay, writers, presence
    /// upkeep and the Socket.IO server.
    pub async fn start(
        common: &CommonConfig,
        config: &ChatConfig,
        broker: Broker,
        metrics: &Metrics,
        revocations: Revocations,
        background: CancellationToken,
    ) -> Result<Self, StartError> {
        let url = common.database_url(config.chat_database_url.as_ref())?;
        let pool = db::connect(&url, SCHEMA.schema, common.db_max_connections).await?;
        db::check_schema_version(&pool, SCHEMA).await?;

        let auth = Authenticator::start(
            common.key_ring()?,
            revocations,
            AUTH_MESSAGES,
            broker.clone(),
            &pool,
            background.clone(),
        )
        .await?;
        let projection_pool = pool.clone();
        let consumer_task = consumer::consume_durable(
            broker.clone(),
            projection::queue(broker.exchange()),
            move |event| {
                let pool = projection_pool.clone();
                async move { projection::apply(&pool, event).await }
            },
            metrics,
            background.clone(),
        )
        .await;

        let relay = OutboxRelay::new(pool.clone(), broker.clone(), Some(metrics));
        let relay_task = relay.clone().spawn(background.clone());
        let presence = Arc::new(Presence::register(pool.clone(), config.presence_ttl()).await?);
        let realtime = Realtime::new(
            broker.clone(),
            presence.replica_id(),
            config.presence_ttl() + config.heartbeat(),
        );
        let signs = realtime.peer_signs();
        if realtime
            .follow(Duration::from_secs(5), background.clone())
            .await
        {
            // Every other replica is in `replicas` already, or registers later
            // and then says hello to us (we follow): if none is there, we are alone.
            match presence.others_alive().await {
                Ok(true) => realtime.peer_alive(),
                Ok(false) => realtime.alone_since(signs),
                Err(err) => tracing::warn!(error = %err, "looking for other replicas failed"),
            }
        }
        let writer = MessageWriter::start(
            pool.clone(),
            relay,
            PresenceWindow {
                ttl: config.presence_ttl(),
            },
            config.chat_writers,
            config.chat_write_batch,
        );
        let ctx = Arc::new(SocketContext {
            pool: pool.clone(),
            auth,
            writer,
            realtime: realtime.clone(),
            presence: presence.clone(),
            typing: Typing::new(
                realtime.clone(),
                Duration::from_millis(config.typing_timeout_ms),
            ),
            metrics: ChatMetrics::register(metrics),
        });
        let (service, io) = SocketIo::builder()
            .req_path("/chat/socket.io")
            .ping_interval(Duration::from_millis(config.socket_ping_interval_ms))
            .ping_timeout(Duration::from_millis(config.socket_ping_timeout_ms))
            .max_payload(config.socket_max_payload)
            .max_buffer_size(config.socket_buffer_packets.max(16))
            .ws_read_buffer_size(config.socket_read_buffer_bytes as usize)
            .with_state(ctx.clone())
            .build_svc();
        let service = tower::ServiceBuilder::new()
            .map_request(socket::own_request_head)
            .service(service);
        io.ns("/", socket::connected.with(socket::authenticate));
        realtime.attach(io.clone());
        let upkeep = spawn_presence_upkeep(ctx.clone(), io.clone(), config.heartbeat(), background);

        let limit = RateLimit::new(
            config.chat_rate_limit_max,
            Duration::from_secs(config.chat_rate_limit_window_secs),
            "Too many requests from this IP, please try again later",
            common.trust_proxy_hops,
        );
        let health = HealthChecks::default()
            .with_pool(pool.clone())
            .with_broker(broker);
        let router = Router::new()
            .route("/chat/send", post(rest::send))
            .route("/chat/get/{receiver_id}", get(rest::history))
            .route("/chat/conversations", get(rest::conversations))
            .route("/chat/messages/read/{sender_id}", put(rest::mark_read))
            .layer(limit.layer())
            .route(
                "/chat/health",
                parley_common::ops::health_route(health.clone()),
            )
            .route("/chat/api-docs.json", get(openapi::document))
            .route_service("/chat/socket.io", service.clone())
            .route_service("/chat/socket.io/", service)
            .with_state(ChatState { socket: ctx });
        Ok(Self {
            router,
            health,
            pool,
            tasks: vec![consumer_task, relay_task, upkeep],
            io,
        })
    }
}

/// Heartbeat, reaping of dead replicas, and a clean goodbye at shutdown.
fn spawn_presence_upkeep(
    ctx: Arc<SocketContext>,
    io: SocketIo,
    every: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            match ctx.presence.heartbeat().await {
                Ok(back) => {
                    for user in back {
                        ctx.realtime
                            .to_all(
                                "presence",
                                &serde_json::json!({"userId": user, "online": true}),
                            )
                            .await;
                    }
                }
                Err(err) => tracing::warn!(error = %err, "presence heartbeat failed"),
            }
            match ctx.presence.others_alive().await {
                Ok(true) => ctx.realtime.peer_alive(),
                Ok(false) => {}
                Err(err) => {
                    // Without an answer, keep relaying: better wasted than missed.
                    tracing::warn!(error = %err, "looking for other replicas failed");
                    ctx.realtime.peer_alive();
                }
            }
            match ctx.presence.reap().await {
                Ok(gone) => {
                    for user in gone {
                        socket::announce_offline(&ctx, user).await;
                    }
                }
                Err(err) => tracing::warn!(error = %err, "reaping dead replicas failed"),
            }
        }
        io.close().await;
        match ctx.presence.deregister().await {
            Ok(gone) => {
                for user in gone {
                    socket::announce_offline(&ctx, user).await;
                }
            }
            Err(err) => tracing::warn!(error = %err, "deregistering the replica failed"),
        }
    })
}

//! The Parley user service: accounts, sessions and the Signal key directory.
//!
//! Flow of a request: shared layers (`parley_common::http::layers`) → the user
//! service's global rate limit → per-route limits → handler. Handlers live in
//! [`accounts`] (register, login, logout, me, search, users/:id) and
//! [`directory`] (prekey bundles and encrypted key backups). Every path is served
//! under both `/user` and `/api/user` (§1.2, §15.2).
#![forbid(unsafe_code)]

pub mod accounts;
pub mod config;
pub mod directory;
pub mod email;
pub mod openapi;
pub mod passwords;
pub mod xeddsa;

use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{get, post};
use parley_common::auth::{
    AuthMessages, Authenticator, CookiePolicy, Revocations, TokenIssuer, USER_AUTH_MESSAGES,
};
use parley_common::config::{CommonConfig, ConfigError, read_file};
use parley_common::db::{self, DbError, ServiceSchema};
use parley_common::events::{Broker, OutboxRelay};
use parley_common::http::rate_limit::RateLimit;
use parley_common::metrics::Metrics;
use parley_common::ops::HealthChecks;
use prometheus::IntCounterVec;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

pub use config::UserConfig;
use passwords::PasswordHasher;

/// The user service's migrations, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/user");

/// The user service's schema.
pub const SCHEMA: ServiceSchema = ServiceSchema {
    schema: "parley_user",
    migrator: &MIGRATOR,
};

/// Messages of the user service's 401s.
pub const AUTH_MESSAGES: AuthMessages = USER_AUTH_MESSAGES;

/// Routing key of the event published when an account is created.
pub const USER_REGISTERED: &str = "user.registered";
/// Routing key of the event published when a session token is revoked.
pub const TOKEN_REVOKED: &str = parley_common::auth::TOKEN_REVOKED;

/// Errors starting the user service.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Everything a handler needs.
#[derive(Clone)]
pub struct UserState {
    pub pool: PgPool,
    pub issuer: TokenIssuer,
    pub auth: Authenticator,
    pub cookies: CookiePolicy,
    pub hasher: PasswordHasher,
    pub relay: OutboxRelay,
    pub key_backup_interval: Duration,
    pub metrics: UserMetrics,
}

impl FromRef<UserState> for Authenticator {
    fn from_ref(state: &UserState) -> Self {
        state.auth.clone()
    }
}

/// The user service's own metrics.
#[derive(Clone)]
pub struct UserMetrics {
    pub registrations: IntCounterVec,
    pub logins: IntCounterVec,
    pub prekey_pool_exhausted: IntCounterVec,
}

impl UserMetrics {
    fn register(metrics: &Metrics) -> Self {
        Self {
            registrations: metrics.counter(
                "user_registrations_total",
                "Registrations by outcome",
                &["status"],
            ),
            logins: metrics.counter("user_logins_total", "Logins by outcome", &["status"]),
            prekey_pool_exhausted: metrics.counter(
                "prekey_pool_exhausted_total",
                "Bundle fetches that found no one-time prekey left",
                &[],
            ),
        }
    }
}

/// Rate-limit counters of the user service (§2.4); each is shared by the routes
/// the contract names.
#[derive(Clone, Debug)]
pub struct Limits {
    pub global: RateLimit,
    pub auth: RateLimit,
    pub prekey_publish: RateLimit,
    pub prekey_fetch: RateLimit,
}

impl Limits {
    /// Builds the counters from settings.
    pub fn from_config(config: &UserConfig, trust_proxy_hops: usize) -> Self {
        let secs = Duration::from_secs;
        Self {
            global: RateLimit::new(
                config.user_rate_limit_max,
                secs(config.user_rate_limit_window_secs),
                "Too many requests from this IP, please try again later",
                trust_proxy_hops,
            ),
            auth: RateLimit::new(
                config.auth_rate_limit_max(),
                secs(config.auth_rate_limit_window_secs),
                "Too many authentication attempts, please try again later",
                trust_proxy_hops,
            ),
            prekey_publish: RateLimit::new(
                config.prekey_publish_rate_limit_max,
                secs(config.prekey_publish_rate_limit_window_secs),
                "Too many prekey publish requests, please try again later",
                trust_proxy_hops,
            ),
            prekey_fetch: RateLimit::new(
                config.prekey_fetch_rate_limit_max,
                secs(config.prekey_fetch_rate_limit_window_secs),
                "Too many prekey requests, please slow down",
                trust_proxy_hops,
            ),
        }
    }
}

/// A running user service: its public router and health checks.
pub struct UserService {
    pub router: Router,
    pub health: HealthChecks,
    pub pool: PgPool,
    pub relay_task: tokio::task::JoinHandle<()>,
}

impl UserService {
    /// Connects, checks the schema version, loads revocations into
    /// `revocations` (shared by every service of the process) and starts the
    /// outbox relay. The returned router serves `/user/*` and `/api/user/*`.
    pub async fn start(
        common: &CommonConfig,
        config: &UserConfig,
        broker: Broker,
        metrics: &Metrics,
        revocations: Revocations,
        shutdown: CancellationToken,
    ) -> Result<Self, StartError> {
        let url = common.database_url(config.user_database_url.as_ref())?;
        let pool = db::connect(&url, SCHEMA.schema, common.db_max_connections).await?;
        db::check_schema_version(&pool, SCHEMA).await?;

        let pem = match (&config.jwt_signing_key_file, &config.jwt_signing_key) {
            (Some(path), _) => read_file(path)?,
            (None, Some(inline)) => inline.expose_secret().to_owned(),
            (None, None) => return Err(ConfigError::Missing("PARLEY_JWT_SIGNING_KEY_FILE").into()),
        };
        let issuer = TokenIssuer::from_pem(&pem).map_err(ConfigError::from)?;
        let auth = Authenticator::start(
            common.key_ring()?,
            revocations,
            AUTH_MESSAGES,
            broker.clone(),
            &pool,
            shutdown.clone(),
        )
        .await
        .map_err(DbError::from)?;
        if auth
            .key_ring
            .verify(
                &issuer
                    .issue(uuid::Uuid::nil(), "probe", "probe@parley.invalid")
                    .0,
            )
            .is_err()
        {
            tracing::warn!(
                kid = issuer.kid(),
                "the signing key is not in the JWKS; issued tokens will not verify"
            );
        }
        accounts::spawn_revocation_upkeep(pool.clone(), auth.revocations.clone(), shutdown.clone());

        let relay = OutboxRelay::new(pool.clone(), broker.clone(), Some(metrics));
        let relay_task = relay.clone().spawn(shutdown.clone());
        let state = UserState {
            pool: pool.clone(),
            issuer,
            auth,
            cookies: common.cookie_policy(),
            hasher: PasswordHasher::new(
                config.bcrypt_cost,
                config.bcrypt_concurrency(),
                config.bcrypt_queue,
            ),
            relay,
            key_backup_interval: config.key_backup_interval(),
            metrics: UserMetrics::register(metrics),
        };
        let limits = Limits::from_config(config, common.trust_proxy_hops);
        let health = HealthChecks::default()
            .with_pool(pool.clone())
            .with_broker(broker);
        Ok(Self {
            router: router(state, limits, health.clone()),
            health,
            pool,
            relay_task,
        })
    }
}

/// The public router: every route under `/user` and `/api/user`.
pub fn router(state: UserState, limits: Limits, health: HealthChecks) -> Router {
    let routes = Router::new()
        .route(
            "/register",
            post(accounts::register).route_layer(limits.auth.layer()),
        )
        .route(
            "/login",
            post(accounts::login).route_layer(limits.auth.layer()),
        )
        .route("/logout", post(accounts::logout))
        .route("/me", get(accounts::me))
        .route("/search", get(accounts::search))
        .route("/users/{user_id}", get(accounts::user_by_id))
        .route(
            "/prekeys",
            post(directory::publish_bundle).route_layer(limits.prekey_publish.layer()),
        )
        .route(
            "/prekeys/{user_id}",
            get(directory::fetch_bundle).route_layer(limits.prekey_fetch.layer()),
        )
        .route(
            "/signal-keys",
            post(directory::store_backup)
                .route_layer(limits.prekey_publish.layer())
                .merge(get(directory::fetch_backup).route_layer(limits.prekey_fetch.layer())),
        )
        .layer(limits.global.layer())
        .route("/health", parley_common::ops::health_route(health))
        .route("/api-docs.json", get(openapi::document))
        .fallback(parley_common::http::error::not_found)
        .with_state(state);
    Router::new()
        .nest("/user", routes.clone())
        .nest("/api/user", routes)
}

//! Settings of the user service (see `docs/configuration.md`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use secrecy::SecretString;

/// User-service settings.
#[derive(Debug, Clone, Args)]
pub struct UserConfig {
    /// PostgreSQL URL of the user service's runtime role (defaults to `DATABASE_URL`).
    #[arg(long, env = "PARLEY_USER_DATABASE_URL", hide_env_values = true)]
    pub user_database_url: Option<SecretString>,

    /// PKCS#8 PEM file with the Ed25519 key that signs session tokens.
    #[arg(long, env = "PARLEY_JWT_SIGNING_KEY_FILE")]
    pub jwt_signing_key_file: Option<PathBuf>,

    /// The signing key inline, as PEM (used when no file is given).
    #[arg(long, env = "PARLEY_JWT_SIGNING_KEY", hide_env_values = true)]
    pub jwt_signing_key: Option<SecretString>,

    /// bcrypt cost for new password hashes (the contract's 12; lower only in tests).
    #[arg(long, env = "PARLEY_BCRYPT_COST", default_value_t = 12, value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,

    /// Password hashes computed at once (default: CPU cores minus one, at least 1).
    #[arg(long, env = "PARLEY_BCRYPT_CONCURRENCY")]
    pub bcrypt_concurrency: Option<usize>,

    /// Sign-ins that may wait for a hashing slot before new ones get 503.
    #[arg(long, env = "PARLEY_BCRYPT_QUEUE", default_value_t = 256)]
    pub bcrypt_queue: usize,

    /// Requests per client IP per window on every user route.
    #[arg(long, env = "PARLEY_USER_RATE_LIMIT_MAX", default_value_t = 100)]
    pub user_rate_limit_max: u32,

    /// Window of the user-route limit, in seconds.
    #[arg(
        long,
        env = "PARLEY_USER_RATE_LIMIT_WINDOW_SECS",
        default_value_t = 900
    )]
    pub user_rate_limit_window_secs: u64,

    /// Register + login attempts per client IP per window (`AUTH_RATE_LIMIT_MAX` is accepted too; default 10).
    #[arg(long, env = "PARLEY_AUTH_RATE_LIMIT_MAX")]
    pub auth_rate_limit_max: Option<u32>,

    /// Window of the register/login limit, in seconds.
    #[arg(
        long,
        env = "PARLEY_AUTH_RATE_LIMIT_WINDOW_SECS",
        default_value_t = 900
    )]
    pub auth_rate_limit_window_secs: u64,

    /// Prekey publishes + key backups per client IP per window.
    #[arg(
        long,
        env = "PARLEY_PREKEY_PUBLISH_RATE_LIMIT_MAX",
        default_value_t = 10
    )]
    pub prekey_publish_rate_limit_max: u32,

    /// Window of the publish/backup limit, in seconds.
    #[arg(
        long,
        env = "PARLEY_PREKEY_PUBLISH_RATE_LIMIT_WINDOW_SECS",
        default_value_t = 60
    )]
    pub prekey_publish_rate_limit_window_secs: u64,

    /// Bundle fetches + backup fetches per client IP per window.
    #[arg(long, env = "PARLEY_PREKEY_FETCH_RATE_LIMIT_MAX", default_value_t = 60)]
    pub prekey_fetch_rate_limit_max: u32,

    /// Window of the fetch limit, in seconds.
    #[arg(
        long,
        env = "PARLEY_PREKEY_FETCH_RATE_LIMIT_WINDOW_SECS",
        default_value_t = 60
    )]
    pub prekey_fetch_rate_limit_window_secs: u64,

    /// Minimum seconds between two key backups of one device.
    #[arg(
        long,
        env = "PARLEY_KEY_BACKUP_INTERVAL_SECS",
        default_value_t = 86_400
    )]
    pub key_backup_interval_secs: u64,
}

impl UserConfig {
    /// The register/login limit, honouring the original's `AUTH_RATE_LIMIT_MAX`.
    pub fn auth_rate_limit_max(&self) -> u32 {
        self.auth_rate_limit_max
            .or_else(|| {
                parley_common::config::or_env(None, "AUTH_RATE_LIMIT_MAX")
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(10)
    }

    /// Concurrent bcrypt computations.
    pub fn bcrypt_concurrency(&self) -> usize {
        self.bcrypt_concurrency.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get().saturating_sub(1).max(1))
                .unwrap_or(1)
        })
    }

    /// Minimum time between two backups of one device.
    pub fn key_backup_interval(&self) -> Duration {
        Duration::from_secs(self.key_backup_interval_secs)
    }
}

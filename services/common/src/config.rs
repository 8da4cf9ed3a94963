//! Settings shared by every service. Each is a clap flag with an environment
//! variable; names the original backend used (`DATABASE_URL`, `CORS_ORIGINS`,
//! `PUBLIC_URL`, `MESSAGE_BROKER_URL`, …) are accepted too. The full reference
//! is `docs/configuration.md`, which a test keeps in sync with these flags.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use secrecy::{ExposeSecret, SecretString};

use crate::auth::{CookiePolicy, KeyRing};
use crate::http::layers::HttpSettings;
use crate::keys::{Jwks, KeyError};

/// The CORS origins of the original's default configuration (§2.5), plus the
/// browser's spelling of port 80.
pub const DEFAULT_CORS_ORIGINS: &str = "http://localhost:5173,http://localhost:3000,http://localhost,http://localhost:80,http://localhost:8080";

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Settings every service reads.
#[derive(Debug, Clone, Args)]
pub struct CommonConfig {
    /// PostgreSQL URL every service uses unless it has its own (`PARLEY_<SERVICE>_DATABASE_URL`).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<SecretString>,

    /// RabbitMQ URL (`MESSAGE_BROKER_URL` is accepted too).
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<SecretString>,

    /// Topic exchange carrying domain events.
    #[arg(long, env = "PARLEY_EVENTS_EXCHANGE", default_value = "parley.events")]
    pub events_exchange: String,

    /// Maximum connections of each service's database pool.
    #[arg(long, env = "PARLEY_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// JWK Set file with the public keys tokens are verified against (current and previous).
    #[arg(long, env = "PARLEY_JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<PathBuf>,

    /// The same JWK Set inline, as JSON (used when no file is given).
    #[arg(long, env = "PARLEY_JWT_JWKS", hide_env_values = true)]
    pub jwt_jwks: Option<String>,

    /// Public base URL of the platform; https turns on Secure cookies and HSTS (`PUBLIC_URL` is accepted too).
    #[arg(long, env = "PARLEY_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Comma-separated origins allowed to call the API with credentials (`CORS_ORIGINS` is accepted too).
    #[arg(long, env = "PARLEY_CORS_ORIGINS")]
    pub cors_origins: Option<String>,

    /// Number of reverse proxies in front of Parley whose X-Forwarded-For entries are trusted.
    #[arg(long, env = "PARLEY_TRUST_PROXY_HOPS", default_value_t = 0)]
    pub trust_proxy_hops: usize,

    /// Maximum request body in bytes.
    #[arg(long, env = "PARLEY_BODY_LIMIT_BYTES", default_value_t = 102_400)]
    pub body_limit_bytes: usize,

    /// Log format.
    #[arg(long, env = "PARLEY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Log filter in `tracing` syntax (`RUST_LOG` is accepted too).
    #[arg(long, env = "PARLEY_LOG", default_value = "info")]
    pub log: String,

    /// Seconds to let in-flight requests finish after SIGTERM/SIGINT.
    #[arg(long, env = "PARLEY_SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,
}

/// Errors turning settings into working parts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// `value`, or else the environment variable `alias`.
pub fn or_env(value: Option<String>, alias: &str) -> Option<String> {
    value.or_else(|| std::env::var(alias).ok().filter(|v| !v.is_empty()))
}

/// Reads a file named by a setting.
pub fn read_file(path: &PathBuf) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })
}

impl CommonConfig {
    /// The broker URL from `AMQP_URL` or `MESSAGE_BROKER_URL`.
    pub fn amqp_url(&self) -> Result<SecretString, ConfigError> {
        self.amqp_url
            .clone()
            .or_else(|| or_env(None, "MESSAGE_BROKER_URL").map(SecretString::from))
            .ok_or(ConfigError::Missing("AMQP_URL"))
    }

    /// The database URL for a service: its own override, else `DATABASE_URL`.
    pub fn database_url(&self, own: Option<&SecretString>) -> Result<SecretString, ConfigError> {
        own.or(self.database_url.as_ref())
            .cloned()
            .ok_or(ConfigError::Missing("DATABASE_URL"))
    }

    /// The public URL, from the flag or `PUBLIC_URL`.
    pub fn public_url(&self) -> Option<String> {
        or_env(self.public_url.clone(), "PUBLIC_URL")
    }

    /// Whether the platform is served over https.
    pub fn is_https(&self) -> bool {
        self.public_url()
            .is_some_and(|url| url.to_ascii_lowercase().starts_with("https://"))
    }

    /// How the session cookie is written.
    pub fn cookie_policy(&self) -> CookiePolicy {
        CookiePolicy {
            secure: self.is_https(),
        }
    }

    /// The allowed CORS origins.
    pub fn cors_origins(&self) -> Vec<String> {
        or_env(self.cors_origins.clone(), "CORS_ORIGINS")
            .unwrap_or_else(|| DEFAULT_CORS_ORIGINS.to_owned())
            .split(',')
            .map(|origin| origin.trim().to_owned())
            .filter(|origin| !origin.is_empty())
            .collect()
    }

    /// Settings of the shared HTTP layers.
    pub fn http_settings(&self) -> HttpSettings {
        HttpSettings {
            cors_origins: self.cors_origins(),
            hsts: self.is_https(),
            body_limit: self.body_limit_bytes,
        }
    }

    /// The log filter, from the flag or `RUST_LOG` when the flag is the default.
    pub fn log_filter(&self) -> String {
        if self.log == "info" {
            or_env(None, "RUST_LOG").unwrap_or_else(|| self.log.clone())
        } else {
            self.log.clone()
        }
    }

    /// The verification key ring from the JWKS file or inline JWKS.
    pub fn key_ring(&self) -> Result<KeyRing, ConfigError> {
        let text = match (&self.jwt_jwks_file, &self.jwt_jwks) {
            (Some(path), _) => read_file(path)?,
            (None, Some(inline)) => inline.clone(),
            (None, None) => return Err(ConfigError::Missing("PARLEY_JWT_JWKS_FILE")),
        };
        Ok(KeyRing::from_jwks(&Jwks::parse(&text)?)?)
    }
}

/// A URL with its password replaced, for logs.
pub fn redact_url(url: &SecretString) -> String {
    let text = url.expose_secret();
    match (text.find("://"), text.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &text[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &text[..scheme + 3], user, &text[at..])
        }
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        let url = SecretString::from("postgres://app:s3cret@db:5432/parley");
        assert_eq!(redact_url(&url), "postgres://app:***@db:5432/parley");
        let plain = SecretString::from("amqp://localhost:5672");
        assert_eq!(redact_url(&plain), "amqp://localhost:5672");
    }
}

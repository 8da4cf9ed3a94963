//! Settings of the notification service (see `docs/configuration.md`).

use std::time::Duration;

use clap::{Args, ValueEnum};
use parley_common::config::or_env;
use secrecy::SecretString;

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SmtpSecurity {
    /// Plain for a loopback host, implicit TLS on port 465, STARTTLS otherwise.
    Auto,
    /// STARTTLS (required).
    Starttls,
    /// Implicit TLS (SMTPS).
    Tls,
    /// No encryption (only sensible on loopback).
    None,
}

/// Notification-service settings.
#[derive(Debug, Clone, Args)]
pub struct NotificationConfig {
    /// PostgreSQL URL of the notification service's runtime role (defaults to `DATABASE_URL`).
    #[arg(long, env = "PARLEY_NOTIFICATION_DATABASE_URL", hide_env_values = true)]
    pub notification_database_url: Option<SecretString>,

    /// Requests per client IP per window on the notification routes.
    #[arg(
        long,
        env = "PARLEY_NOTIFICATION_RATE_LIMIT_MAX",
        default_value_t = 100
    )]
    pub notification_rate_limit_max: u32,

    /// Window of the notification-route limit, in seconds.
    #[arg(
        long,
        env = "PARLEY_NOTIFICATION_RATE_LIMIT_WINDOW_SECS",
        default_value_t = 900
    )]
    pub notification_rate_limit_window_secs: u64,

    /// Notifications a client IP may create per window.
    #[arg(
        long,
        env = "PARLEY_NOTIFICATION_CREATE_RATE_LIMIT_MAX",
        default_value_t = 30
    )]
    pub notification_create_rate_limit_max: u32,

    /// Window of the creation limit, in seconds.
    #[arg(
        long,
        env = "PARLEY_NOTIFICATION_CREATE_RATE_LIMIT_WINDOW_SECS",
        default_value_t = 3600
    )]
    pub notification_create_rate_limit_window_secs: u64,

    /// Largest page of `GET /notifications/` (the original had no cap).
    #[arg(long, env = "PARLEY_NOTIFICATION_PAGE_MAX", default_value_t = 100)]
    pub notification_page_max: i64,

    /// SMTP server; email is off when unset (`SMTP_HOST` is accepted too).
    #[arg(long, env = "PARLEY_SMTP_HOST")]
    pub smtp_host: Option<String>,

    /// SMTP port (`SMTP_PORT` is accepted too; default 587).
    #[arg(long, env = "PARLEY_SMTP_PORT")]
    pub smtp_port: Option<u16>,

    /// How the SMTP connection is secured.
    #[arg(long, env = "PARLEY_SMTP_SECURITY", value_enum, default_value_t = SmtpSecurity::Auto)]
    pub smtp_security: SmtpSecurity,

    /// SMTP user name (`SMTP_USER` is accepted too).
    #[arg(long, env = "PARLEY_SMTP_USER")]
    pub smtp_user: Option<String>,

    /// SMTP password (`SMTP_PASS` is accepted too).
    #[arg(long, env = "PARLEY_SMTP_PASSWORD", hide_env_values = true)]
    pub smtp_password: Option<SecretString>,

    /// SMTP connections kept open.
    #[arg(long, env = "PARLEY_SMTP_POOL_SIZE", default_value_t = 4)]
    pub smtp_pool_size: u32,

    /// Sender address (`EMAIL_FROM` is accepted too).
    #[arg(long, env = "PARLEY_EMAIL_FROM")]
    pub email_from: Option<String>,

    /// Sender display name.
    #[arg(long, env = "PARLEY_EMAIL_FROM_NAME", default_value = "Chat Service")]
    pub email_from_name: String,

    /// Longest wait between two attempts of a failing email, in seconds.
    #[arg(long, env = "PARLEY_EMAIL_RETRY_MAX_SECS", default_value_t = 300)]
    pub email_retry_max_secs: u64,

    /// An email still failing (temporarily) after this many hours is given up.
    #[arg(long, env = "PARLEY_EMAIL_GIVE_UP_HOURS", default_value_t = 48)]
    pub email_give_up_hours: u64,
}

impl NotificationConfig {
    /// The SMTP host, from the flag or `SMTP_HOST`.
    pub fn smtp_host(&self) -> Option<String> {
        or_env(self.smtp_host.clone(), "SMTP_HOST")
    }

    /// The SMTP port, from the flag or `SMTP_PORT`, else 587.
    pub fn smtp_port(&self) -> u16 {
        self.smtp_port
            .or_else(|| or_env(None, "SMTP_PORT").and_then(|p| p.parse().ok()))
            .unwrap_or(587)
    }

    /// SMTP credentials, when both halves are set.
    pub fn smtp_credentials(&self) -> Option<(String, SecretString)> {
        let user = or_env(self.smtp_user.clone(), "SMTP_USER")?;
        let password = self
            .smtp_password
            .clone()
            .or_else(|| or_env(None, "SMTP_PASS").map(SecretString::from))?;
        Some((user, password))
    }

    /// The sender address.
    pub fn email_from(&self) -> String {
        or_env(self.email_from.clone(), "EMAIL_FROM")
            .unwrap_or_else(|| "notifications@chat-app".to_owned())
    }

    /// The security to use for `host`, resolving `auto`.
    pub fn resolved_security(&self, host: &str) -> SmtpSecurity {
        match self.smtp_security {
            SmtpSecurity::Auto if is_loopback(host) => SmtpSecurity::None,
            SmtpSecurity::Auto if self.smtp_port() == 465 => SmtpSecurity::Tls,
            SmtpSecurity::Auto => SmtpSecurity::Starttls,
            chosen => chosen,
        }
    }

    pub fn retry_cap(&self) -> Duration {
        Duration::from_secs(self.email_retry_max_secs.max(1))
    }

    pub fn give_up_after(&self) -> Duration {
        Duration::from_secs(self.email_give_up_hours * 3600)
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        config: NotificationConfig,
    }

    fn config(args: &[&str]) -> NotificationConfig {
        let mut argv = vec!["test"];
        argv.extend_from_slice(args);
        Wrapper::parse_from(argv).config
    }

    #[test]
    fn auto_security_is_plain_on_loopback_tls_on_465_starttls_elsewhere() {
        assert_eq!(
            config(&[]).resolved_security("127.0.0.1"),
            SmtpSecurity::None
        );
        assert_eq!(
            config(&[]).resolved_security("localhost"),
            SmtpSecurity::None
        );
        assert_eq!(
            config(&["--smtp-port", "465"]).resolved_security("mail.example.com"),
            SmtpSecurity::Tls
        );
        assert_eq!(
            config(&[]).resolved_security("mail.example.com"),
            SmtpSecurity::Starttls
        );
        assert_eq!(
            config(&["--smtp-security", "tls"]).resolved_security("127.0.0.1"),
            SmtpSecurity::Tls
        );
    }
}

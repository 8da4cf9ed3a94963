//! Email delivery from the durable `emails` table.
//!
//! Emails are written in the same transaction as the notification that caused
//! them, so none is lost or doubled by a crash between the two. The mailer takes
//! due rows with `FOR UPDATE SKIP LOCKED` and a short lease (several replicas can
//! send without sending twice), sends them through a pooled lettre transport,
//! and records the outcome:
//! * accepted → `sent`;
//! * temporary failure (connection refused, 4xx, timeout) → retried with
//!   exponential backoff capped at `retry_cap`, until `give_up_after`;
//! * permanent rejection (5xx, invalid address) → `failed` at once, counted.

use std::sync::Arc;
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use prometheus::IntCounterVec;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{NotificationConfig, SmtpSecurity};

/// Errors building the SMTP transport.
#[derive(Debug, thiserror::Error)]
pub enum MailerError {
    #[error("invalid sender address {0:?}")]
    Sender(String),
    #[error("SMTP relay: {0}")]
    Relay(String),
}

/// How long a claimed email is hidden from other senders.
const LEASE_SECS: f64 = 60.0;

/// Sends queued email.
#[derive(Clone)]
pub struct Mailer {
    pool: PgPool,
    transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
    wake: Arc<Notify>,
    retry_cap: Duration,
    give_up_after: Duration,
    concurrency: usize,
    outcomes: IntCounterVec,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("enabled", &self.transport.is_some())
            .field("from", &self.from.to_string())
            .finish()
    }
}

/// The outcome of one attempt.
enum Attempt {
    Sent,
    Retry(String),
    Reject(String),
}

impl Mailer {
    /// A mailer from settings; email is off (nothing is queued) without `SMTP_HOST`.
    pub fn new(
        pool: PgPool,
        config: &NotificationConfig,
        outcomes: IntCounterVec,
    ) -> Result<Self, MailerError> {
        let from_address = config.email_from();
        let from: Mailbox = format!("{} <{}>", config.email_from_name, from_address)
            .parse()
            .map_err(|_| MailerError::Sender(from_address.clone()))?;
        let transport = match config.smtp_host() {
            None => {
                tracing::warn!(
                    "SMTP_HOST is not set: notifications are stored, but no email is sent"
                );
                None
            }
            Some(host) => {
                let security = config.resolved_security(&host);
                let builder = match security {
                    SmtpSecurity::None | SmtpSecurity::Auto => {
                        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
                    }
                    SmtpSecurity::Starttls => {
                        AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&host)
                            .map_err(|err| MailerError::Relay(err.to_string()))?
                    }
                    SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&host)
                        .map_err(|err| MailerError::Relay(err.to_string()))?,
                };
                let mut builder = builder
                    .port(config.smtp_port())
                    .timeout(Some(Duration::from_secs(15)))
                    .pool_config(PoolConfig::new().max_size(config.smtp_pool_size.max(1)));
                if let Some((user, password)) = config.smtp_credentials() {
                    builder = builder
                        .credentials(Credentials::new(user, password.expose_secret().to_owned()));
                }
                tracing::info!(%host, port = config.smtp_port(), ?security, "email through SMTP");
                Some(builder.build())
            }
        };
        Ok(Self {
            pool,
            transport,
            from,
            wake: Arc::new(Notify::new()),
            retry_cap: config.retry_cap(),
            give_up_after: config.give_up_after(),
            concurrency: config.smtp_pool_size.max(1) as usize,
            outcomes,
        })
    }

    /// Whether email is configured.
    pub fn enabled(&self) -> bool {
        self.transport.is_some()
    }

    /// Tells the mailer new email is queued (call after committing).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Sends until `shutdown`.
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            if !self.enabled() {
                return;
            }
            loop {
                match self.send_due().await {
                    Ok(n) if n > 0 => continue,
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "reading the email queue failed"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        })
    }

    /// Sends every due email once; returns how many were attempted.
    pub async fn send_due(&self) -> Result<usize, sqlx::Error> {
        let Some(transport) = &self.transport else {
            return Ok(0);
        };
        type Due = (
            Uuid,
            Option<String>,
            String,
            String,
            String,
            i32,
            OffsetDateTime,
        );
        // The address is the one queued, else the user's as known now.
        let due: Vec<Due> = sqlx::query_as(
            "WITH claimed AS ( \
               UPDATE emails SET next_attempt_at = now() + make_interval(secs => $2) \
               WHERE id IN (SELECT id FROM emails WHERE status = 'pending' AND next_attempt_at <= now() \
                            ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
               RETURNING id, user_id, recipient, subject, html_body, text_body, attempts, created_at) \
             SELECT c.id, COALESCE(c.recipient, u.email), c.subject, c.html_body, c.text_body, c.attempts, c.created_at \
             FROM claimed c LEFT JOIN users u ON u.id = c.user_id",
        )
        .bind(self.concurrency as i64 * 4)
        .bind(LEASE_SECS)
        .fetch_all(&self.pool)
        .await?;
        let count = due.len();
        let attempts = due.into_iter().map(
            |(id, to, subject, html, text, attempts, created)| async move {
                let outcome = match to {
                    Some(to) => self.attempt(transport, &to, &subject, html, text).await,
                    None => Attempt::Retry("the receiver's address is not known yet".into()),
                };
                (id, attempts, created, outcome)
            },
        );
        for (id, attempts, created, outcome) in run_bounded(attempts, self.concurrency).await {
            self.record(id, attempts, created, outcome).await?;
        }
        Ok(count)
    }

    async fn attempt(
        &self,
        transport: &AsyncSmtpTransport<Tokio1Executor>,
        to: &str,
        subject: &str,
        html: String,
        text: String,
    ) -> Attempt {
        let Ok(recipient) = to.parse::<Mailbox>() else {
            return Attempt::Reject(format!("invalid recipient address {to:?}"));
        };
        let message = match Message::builder()
            .from(self.from.clone())
            .to(recipient)
            .subject(subject)
            .multipart(MultiPart::alternative_plain_html(text, html))
        {
            Ok(message) => message,
            Err(err) => return Attempt::Reject(format!("cannot build the message: {err}")),
        };
        match transport.send(message).await {
            Ok(_) => Attempt::Sent,
            Err(err) if err.is_permanent() => Attempt::Reject(err.to_string()),
            Err(err) => Attempt::Retry(err.to_string()),
        }
    }

    async fn record(
        &self,
        id: Uuid,
        attempts: i32,
        created: OffsetDateTime,
        outcome: Attempt,
    ) -> Result<(), sqlx::Error> {
        match outcome {
            Attempt::Sent => {
                self.outcomes.with_label_values(&["sent"]).inc();
                sqlx::query("UPDATE emails SET status = 'sent', sent_at = now(), attempts = attempts + 1, last_error = NULL WHERE id = $1")
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
            }
            Attempt::Retry(error) => {
                let age = OffsetDateTime::now_utc() - created;
                if age > self.give_up_after {
                    tracing::error!(email = %id, %error, "giving up on an email after repeated temporary failures");
                    self.outcomes.with_label_values(&["gave_up"]).inc();
                    return self.fail(id, &error).await;
                }
                let delay = backoff(attempts as u32 + 1, self.retry_cap);
                tracing::warn!(email = %id, attempt = attempts + 1, retry_in_ms = delay.as_millis() as u64, %error, "email not sent; will retry");
                self.outcomes.with_label_values(&["retry"]).inc();
                sqlx::query(
                    "UPDATE emails SET attempts = attempts + 1, last_error = $2, \
                     next_attempt_at = now() + make_interval(secs => $3) WHERE id = $1",
                )
                .bind(id)
                .bind(&error)
                .bind(delay.as_secs_f64())
                .execute(&self.pool)
                .await?;
            }
            Attempt::Reject(error) => {
                tracing::error!(email = %id, %error, "email permanently rejected");
                self.outcomes.with_label_values(&["rejected"]).inc();
                self.fail(id, &error).await?;
            }
        }
        Ok(())
    }

    async fn fail(&self, id: Uuid, error: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE emails SET status = 'failed', attempts = attempts + 1, last_error = $2 WHERE id = $1")
            .bind(id)
            .bind(error)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Runs futures with at most `limit` in flight, collecting their outputs.
async fn run_bounded<F, T>(futures: impl Iterator<Item = F>, limit: usize) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    use futures::StreamExt;
    futures::stream::iter(futures)
        .buffer_unordered(limit.max(1))
        .collect()
        .await
}

/// 1 s, 2 s, 4 s, … capped at `cap`.
pub fn backoff(attempt: u32, cap: Duration) -> Duration {
    let exponent = attempt.saturating_sub(1).min(20);
    Duration::from_secs(1u64 << exponent).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let cap = Duration::from_secs(300);
        assert_eq!(backoff(1, cap), Duration::from_secs(1));
        assert_eq!(backoff(2, cap), Duration::from_secs(2));
        assert_eq!(backoff(5, cap), Duration::from_secs(16));
        assert_eq!(backoff(30, cap), cap);
    }
}

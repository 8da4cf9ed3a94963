//! Durable event consumers: one queue per consuming service, dead-lettered,
//! idempotent by event id, acknowledged only after the handler's commit.
//!
//! Topology for a queue `Q` on exchange `X`: `Q` is durable, bound to `X` with
//! the consumer's routing keys, and dead-letters to `X.dlx` (direct) with
//! routing key `Q`, where the durable `Q.dead` collects what could not be
//! handled. A handler that fails transiently (the database is down) is
//! retried in-process with capped backoff ([`RETRY`]) until it passes, the
//! message held unacknowledged, so an outage delays events and loses none; at
//! shutdown it goes back to the queue. A permanent failure (a malformed event,
//! a constraint it can never meet) is rejected into `Q.dead` at once and
//! counted in `parley_events_dead_lettered_total{queue}`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};
use prometheus::IntCounterVec;
use serde::Deserialize;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::events::{Broker, BrokerError};
use crate::metrics::Metrics;

/// How a transiently failing handler is retried: from `first`, doubling up to
/// `cap`, for as long as it takes. The message stays unacknowledged meanwhile
/// (a database outage holds events; it never loses them).
#[derive(Debug, Clone, Copy)]
pub struct RetrySchedule {
    pub first: Duration,
    pub cap: Duration,
}

/// The schedule of every durable consumer.
pub const RETRY: RetrySchedule = RetrySchedule {
    first: Duration::from_millis(200),
    cap: Duration::from_secs(5),
};

/// An event as a consumer receives it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IncomingEvent {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: serde_json::Value,
}

/// Why a handler did not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying (database down, lock timeout…).
    #[error("transient: {0}")]
    Transient(String),
    /// Will never succeed (malformed payload…): dead-letter at once.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl From<sqlx::Error> for HandlerError {
    /// Connection trouble, pool exhaustion, serialization failures, lock
    /// timeouts and an administrator's shutdown are transient (retried until
    /// they pass); any other database error would fail again the same way.
    fn from(err: sqlx::Error) -> Self {
        let transient = match &err {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                ["08", "40", "53", "57"]
                    .iter()
                    .any(|class| code.starts_with(class))
                    || code == "55P03"
            }),
            _ => false,
        };
        if transient {
            Self::Transient(err.to_string())
        } else {
            Self::Permanent(err.to_string())
        }
    }
}

/// What becomes of a delivery.
#[derive(Debug)]
enum Outcome {
    /// Applied: ack.
    Done,
    /// Can never be applied: dead-letter.
    DeadLetter(HandlerError),
    /// Still failing transiently at shutdown: back to the queue.
    Requeue,
}

/// A durable queue and what it listens to.
#[derive(Debug, Clone)]
pub struct DurableQueue {
    /// Queue name, unique per consuming service.
    pub name: String,
    /// Routing keys bound on the events exchange.
    pub routing_keys: Vec<String>,
    /// Unacknowledged messages in flight.
    pub prefetch: u16,
}

/// Records `event_id` as consumed inside the handler's transaction. Returns
/// `false` when it was consumed before (a redelivery): skip the work.
pub async fn claim_event(conn: &mut PgConnection, event_id: Uuid) -> Result<bool, sqlx::Error> {
    let inserted =
        sqlx::query("INSERT INTO consumed_events (event_id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(event_id)
            .execute(conn)
            .await?;
    Ok(inserted.rows_affected() == 1)
}

#[derive(Clone)]
struct ConsumerMetrics {
    consumed: IntCounterVec,
    dead: IntCounterVec,
}

/// Consumes `queue` until `shutdown`, re-declaring and re-subscribing after every
/// reconnect. Returns once the queue is declared and bound (or after 5 s when
/// the broker is unreachable), so events published after a service has started
/// always have somewhere to go.
pub async fn consume_durable<F, Fut>(
    broker: Broker,
    queue: DurableQueue,
    handler: F,
    metrics: &Metrics,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(IncomingEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    let counters = ConsumerMetrics {
        consumed: metrics.shared_counter(
            "events_consumed_total",
            "Events handled by durable consumers, by queue and outcome",
            &["queue", "outcome"],
        ),
        dead: metrics.shared_counter(
            "events_dead_lettered_total",
            "Events moved to a dead-letter queue",
            &["queue"],
        ),
    };
    let handler = Arc::new(handler);
    let declared = Arc::new(tokio::sync::Notify::new());
    let ready = declared.clone();
    let ready = ready.notified();
    let name = queue.name.clone();
    let task = tokio::spawn(async move {
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            if !broker.wait_connected(Duration::from_secs(1)).await {
                continue;
            }
            if let Err(err) = run(
                &broker,
                &queue,
                handler.as_ref(),
                &counters,
                &declared,
                &shutdown,
            )
            .await
            {
                tracing::warn!(queue = %queue.name, error = %err, "consumer stopped; restarting");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    });
    if tokio::time::timeout(Duration::from_secs(5), ready)
        .await
        .is_err()
    {
        tracing::warn!(queue = %name, "queue not declared yet; it will be once the broker is reachable");
    }
    task
}

/// Declares the events exchange and `queues` (with their dead-letter queues and
/// bindings) on the broker at `url`, then disconnects. `parley migrate` runs
/// this before any service starts, so no event is published into a topology
/// whose consumers do not exist yet, whatever the start-up order.
pub async fn declare_topology(
    url: &secrecy::SecretString,
    exchange: &str,
    queues: &[DurableQueue],
) -> Result<(), BrokerError> {
    use secrecy::ExposeSecret;
    let connection =
        lapin::Connection::connect(url.expose_secret(), lapin::ConnectionProperties::default())
            .await?;
    let channel = connection.create_channel().await?;
    for queue in queues {
        declare(&channel, exchange, queue).await?;
    }
    let _ = channel.close(200, "declared".into()).await;
    let _ = connection.close(200, "declared".into()).await;
    Ok(())
}

/// Declares the queue, its dead-letter exchange and queue, and the bindings.
pub async fn declare(
    channel: &Channel,
    exchange: &str,
    queue: &DurableQueue,
) -> Result<(), BrokerError> {
    let dlx = format!("{exchange}.dlx");
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            dlx.as_str().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let dead = format!("{}.dead", queue.name);
    channel
        .queue_declare(dead.as_str().into(), durable_queue, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            dead.as_str().into(),
            dlx.as_str().into(),
            queue.name.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(dlx.as_str().into()),
    );
    arguments.insert(
        ShortString::from("x-dead-letter-routing-key"),
        AMQPValue::LongString(queue.name.as_str().into()),
    );
    channel
        .queue_declare(queue.name.as_str().into(), durable_queue, arguments)
        .await?;
    for key in &queue.routing_keys {
        channel
            .queue_bind(
                queue.name.as_str().into(),
                exchange.into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

async fn run<F, Fut>(
    broker: &Broker,
    queue: &DurableQueue,
    handler: &F,
    counters: &ConsumerMetrics,
    declared: &tokio::sync::Notify,
    shutdown: &CancellationToken,
) -> Result<(), BrokerError>
where
    F: Fn(IncomingEvent) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    let channel = broker.channel().await?;
    declare(&channel, broker.exchange(), queue).await?;
    declared.notify_waiters();
    channel
        .basic_qos(queue.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.name.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %queue.name, "consuming");
    loop {
        let Some(delivery) =
            crate::events::next_delivery(&mut consumer, &channel, shutdown).await?
        else {
            return Ok(());
        };
        let outcome = match serde_json::from_slice::<IncomingEvent>(&delivery.data) {
            Ok(event) => handle_with_retries(handler, event, &queue.name, RETRY, shutdown).await,
            Err(err) => {
                Outcome::DeadLetter(HandlerError::Permanent(format!("malformed event: {err}")))
            }
        };
        match outcome {
            Outcome::Requeue => {
                tracing::info!(queue = %queue.name, "shutting down mid-retry; the event goes back to the queue");
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await?;
            }
            Outcome::Done => {
                counters
                    .consumed
                    .with_label_values(&[queue.name.as_str(), "ok"])
                    .inc();
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Outcome::DeadLetter(err) => {
                tracing::error!(queue = %queue.name, error = %err, "dead-lettering an event");
                counters
                    .consumed
                    .with_label_values(&[queue.name.as_str(), "dead"])
                    .inc();
                counters
                    .dead
                    .with_label_values(&[queue.name.as_str()])
                    .inc();
                delivery
                    .nack(BasicNackOptions {
                        requeue: false,
                        ..BasicNackOptions::default()
                    })
                    .await?;
            }
        }
    }
}

async fn handle_with_retries<F, Fut>(
    handler: &F,
    event: IncomingEvent,
    queue: &str,
    schedule: RetrySchedule,
    shutdown: &CancellationToken,
) -> Outcome
where
    F: Fn(IncomingEvent) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    let mut delay = schedule.first;
    let mut attempt = 1u64;
    loop {
        match handler(event.clone()).await {
            Ok(()) => return Outcome::Done,
            Err(HandlerError::Permanent(reason)) => {
                return Outcome::DeadLetter(HandlerError::Permanent(reason));
            }
            Err(HandlerError::Transient(reason)) => {
                tracing::warn!(queue, event_id = %event.id, attempt, error = %reason, retry_in = ?delay, "retrying an event");
                tokio::select! {
                    _ = shutdown.cancelled() => return Outcome::Requeue,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(schedule.cap);
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    const FAST: RetrySchedule = RetrySchedule {
        first: Duration::from_millis(1),
        cap: Duration::from_millis(4),
    };

    fn event() -> IncomingEvent {
        IncomingEvent {
            id: Uuid::new_v4(),
            kind: "user.registered".into(),
            data: serde_json::json!({}),
        }
    }

    #[tokio::test]
    async fn a_transient_failure_is_retried_until_it_passes_however_long_it_lasts() {
        let calls = AtomicU32::new(0);
        let handler = |_| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 20 {
                    Err(HandlerError::Transient("database is down".into()))
                } else {
                    Ok(())
                }
            }
        };
        let outcome =
            handle_with_retries(&handler, event(), "q", FAST, &CancellationToken::new()).await;
        assert!(matches!(outcome, Outcome::Done), "{outcome:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 21);
    }

    #[tokio::test]
    async fn a_permanent_failure_is_dead_lettered_at_once() {
        let calls = AtomicU32::new(0);
        let handler = |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(HandlerError::Permanent("no such user".into())) }
        };
        let outcome =
            handle_with_retries(&handler, event(), "q", FAST, &CancellationToken::new()).await;
        assert!(matches!(outcome, Outcome::DeadLetter(_)), "{outcome:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn shutdown_mid_retry_puts_the_event_back() {
        let shutdown = CancellationToken::new();
        let handler = |_| {
            shutdown.cancel();
            async { Err(HandlerError::Transient("database is down".into())) }
        };
        let outcome = handle_with_retries(&handler, event(), "q", FAST, &shutdown).await;
        assert!(matches!(outcome, Outcome::Requeue), "{outcome:?}");
    }

    #[test]
    fn connection_trouble_is_transient_and_other_database_errors_are_not() {
        assert!(matches!(
            HandlerError::from(sqlx::Error::PoolTimedOut),
            HandlerError::Transient(_)
        ));
        assert!(matches!(
            HandlerError::from(sqlx::Error::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused
            ))),
            HandlerError::Transient(_)
        ));
        assert!(matches!(
            HandlerError::from(sqlx::Error::RowNotFound),
            HandlerError::Permanent(_)
        ));
    }
}

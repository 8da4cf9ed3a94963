//! Durable event consumers: one queue per consuming service, dead-lettered,
//! idempotent by event id, acknowledged only after the handler's commit.
//!
//! Topology for a queue `Q` on exchange `X`: `Q` is durable, bound to `X` with
//! the consumer's routing keys, and dead-letters to `X.dlx` (direct) with
//! routing key `Q`, where the durable `Q.dead` collects what could not be
//! handled. A handler that fails transiently is retried in-process with
//! backoff; after `MAX_ATTEMPTS` (or at once for a permanent failure) the
//! message is rejected into `Q.dead` and counted in
//! `parley_events_dead_lettered_total{queue}`.

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

/// Attempts of a transiently failing handler before the message is dead-lettered.
pub const MAX_ATTEMPTS: u32 = 5;

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
    fn from(err: sqlx::Error) -> Self {
        Self::Transient(err.to_string())
    }
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
            Ok(event) => handle_with_retries(handler, event, &queue.name, shutdown).await,
            Err(err) => Err(HandlerError::Permanent(format!("malformed event: {err}"))),
        };
        match outcome {
            Ok(()) => {
                counters
                    .consumed
                    .with_label_values(&[queue.name.as_str(), "ok"])
                    .inc();
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Err(err) => {
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
    shutdown: &CancellationToken,
) -> Result<(), HandlerError>
where
    F: Fn(IncomingEvent) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=MAX_ATTEMPTS {
        match handler(event.clone()).await {
            Ok(()) => return Ok(()),
            Err(HandlerError::Permanent(reason)) => return Err(HandlerError::Permanent(reason)),
            Err(HandlerError::Transient(reason)) if attempt < MAX_ATTEMPTS => {
                tracing::warn!(queue, event_id = %event.id, attempt, error = %reason, "retrying an event");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(HandlerError::Transient(reason)),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay *= 4;
            }
            Err(err) => return Err(err),
        }
    }
    unreachable!("the last attempt returns")
}

//! Domain events: the transactional outbox and the RabbitMQ link.
//!
//! A service writes an event with [`enqueue`] inside the transaction that makes
//! the change, so the event exists exactly when the change does. The
//! [`OutboxRelay`] publishes pending rows to the topic exchange with publisher
//! confirms and deletes only the rows the broker confirmed; with the broker down
//! the rows wait. Delivery is at least once: consumers deduplicate by event id.
//!
//! [`Broker`] keeps one connection alive, reconnecting with capped backoff.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::Confirmation;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use tokio::sync::{Notify, RwLock};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Errors talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("the broker is not connected")]
    NotConnected,
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker refused the message")]
    Nacked,
}

/// The envelope every event travels in.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event<T: Serialize> {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    pub data: T,
}

/// Writes one event per item of `data`, all with `routing_key`, in one statement.
pub async fn enqueue_many<T: Serialize>(
    conn: &mut PgConnection,
    routing_key: &str,
    data: &[T],
) -> Result<Vec<Uuid>, sqlx::Error> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    let now = OffsetDateTime::now_utc();
    let mut ids = Vec::with_capacity(data.len());
    let mut payloads = Vec::with_capacity(data.len());
    for item in data {
        let event = Event {
            id: Uuid::new_v4(),
            kind: routing_key.to_owned(),
            occurred_at: now,
            data: item,
        };
        ids.push(event.id);
        payloads
            .push(serde_json::to_value(&event).map_err(|err| sqlx::Error::Encode(Box::new(err)))?);
    }
    sqlx::query(
        "INSERT INTO outbox (id, routing_key, payload) SELECT id, $2, payload FROM UNNEST($1::uuid[], $3::jsonb[]) AS t(id, payload)",
    )
    .bind(&ids)
    .bind(routing_key)
    .bind(&payloads)
    .execute(conn)
    .await?;
    Ok(ids)
}

/// Writes an event to the service's `outbox` table on `conn` (inside the caller's
/// transaction). Returns the event id.
pub async fn enqueue<T: Serialize>(
    conn: &mut PgConnection,
    routing_key: &str,
    data: &T,
) -> Result<Uuid, sqlx::Error> {
    let event = Event {
        id: Uuid::new_v4(),
        kind: routing_key.to_owned(),
        occurred_at: OffsetDateTime::now_utc(),
        data,
    };
    let payload = serde_json::to_value(&event).map_err(|err| sqlx::Error::Encode(Box::new(err)))?;
    sqlx::query("INSERT INTO outbox (id, routing_key, payload) VALUES ($1, $2, $3)")
        .bind(event.id)
        .bind(routing_key)
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(event.id)
}

struct Link {
    connection: Connection,
    /// Confirm-mode channel for durable events.
    publisher: Channel,
    /// Plain channel for transient realtime traffic (no confirms, not persisted).
    fast: Channel,
}

/// A supervised connection to RabbitMQ with a confirm-mode publishing channel.
#[derive(Clone)]
pub struct Broker {
    url: SecretString,
    exchange: String,
    link: Arc<RwLock<Option<Arc<Link>>>>,
    connected: Arc<Notify>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("url", &crate::config::redact_url(&self.url))
            .field("exchange", &self.exchange)
            .finish()
    }
}

impl Broker {
    /// Starts the supervisor that connects (and reconnects) in the background.
    pub fn start(url: SecretString, exchange: String, shutdown: CancellationToken) -> Self {
        let broker = Self {
            url,
            exchange,
            link: Arc::new(RwLock::new(None)),
            connected: Arc::new(Notify::new()),
        };
        tokio::spawn(broker.clone().supervise(shutdown));
        broker
    }

    /// The events exchange.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// Whether a live connection exists now.
    pub async fn is_connected(&self) -> bool {
        self.link.read().await.as_ref().is_some_and(|link| {
            link.connection.status().connected() && link.publisher.status().connected()
        })
    }

    /// Waits until connected, at most `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.is_connected().await {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            let _ =
                tokio::time::timeout(Duration::from_millis(100), self.connected.notified()).await;
        }
    }

    /// A new channel on the live connection, for consumers.
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        let link = self
            .link
            .read()
            .await
            .clone()
            .ok_or(BrokerError::NotConnected)?;
        Ok(link.connection.create_channel().await?)
    }

    async fn supervise(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(500);
        loop {
            match self.connect().await {
                Ok(link) => {
                    tracing::info!(broker = %crate::config::redact_url(&self.url), "connected to RabbitMQ");
                    backoff = Duration::from_millis(500);
                    let link = Arc::new(link);
                    *self.link.write().await = Some(link.clone());
                    self.connected.notify_waiters();
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => {
                                let _ = link.connection.close(200, "shutdown".into()).await;
                                *self.link.write().await = None;
                                return;
                            }
                            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                        }
                        if !(link.connection.status().connected()
                            && link.publisher.status().connected())
                        {
                            tracing::warn!("lost the RabbitMQ connection; reconnecting");
                            *self.link.write().await = None;
                            break;
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "cannot connect to RabbitMQ");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn connect(&self) -> Result<Link, lapin::Error> {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("parley-{}", std::process::id()).into());
        let connection = Connection::connect(self.url.expose_secret(), properties).await?;
        let publisher = connection.create_channel().await?;
        publisher
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let fast = connection.create_channel().await?;
        Ok(Link {
            connection,
            publisher,
            fast,
        })
    }

    /// Publishes a transient message (realtime fan-out): no confirm, not
    /// persisted, dropped when the broker is unreachable.
    pub async fn publish_transient(
        &self,
        routing_key: &str,
        payload: &[u8],
    ) -> Result<(), BrokerError> {
        let link = self
            .link
            .read()
            .await
            .clone()
            .ok_or(BrokerError::NotConnected)?;
        link.fast
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                payload,
                BasicProperties::default().with_delivery_mode(1),
            )
            .await?;
        Ok(())
    }

    /// Publishes a batch of `(id, routing key, payload)` persistently and waits for
    /// the broker's confirms. Returns the ids the broker acknowledged, in order,
    /// plus the first failure if any.
    pub async fn publish_confirmed(
        &self,
        messages: &[(Uuid, String, Vec<u8>)],
    ) -> (Vec<Uuid>, Option<BrokerError>) {
        let Some(link) = self.link.read().await.clone() else {
            return (Vec::new(), Some(BrokerError::NotConnected));
        };
        let mut pending = Vec::with_capacity(messages.len());
        let mut failure = None;
        for (id, routing_key, payload) in messages {
            let properties = BasicProperties::default()
                .with_message_id(id.to_string().into())
                .with_content_type("application/json".into())
                .with_type(routing_key.as_str().into())
                .with_delivery_mode(2)
                .with_timestamp(OffsetDateTime::now_utc().unix_timestamp() as u64);
            match link
                .publisher
                .basic_publish(
                    self.exchange.as_str().into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    payload,
                    properties,
                )
                .await
            {
                Ok(confirm) => pending.push((*id, confirm)),
                Err(err) => {
                    failure = Some(err.into());
                    break;
                }
            }
        }
        let mut confirmed = Vec::with_capacity(pending.len());
        for (id, confirm) in pending {
            match confirm.await {
                Ok(Confirmation::Ack(_)) => confirmed.push(id),
                Ok(_) => {
                    failure.get_or_insert(BrokerError::Nacked);
                }
                Err(err) => {
                    failure.get_or_insert(err.into());
                }
            }
        }
        (confirmed, failure)
    }
}

/// Publishes the outbox of one service schema.
#[derive(Clone)]
pub struct OutboxRelay {
    pool: PgPool,
    broker: Broker,
    wake: Arc<Notify>,
    batch_size: i64,
    published: Option<prometheus::IntCounterVec>,
}

impl std::fmt::Debug for OutboxRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelay")
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

impl OutboxRelay {
    /// A relay for the outbox reachable through `pool`.
    pub fn new(pool: PgPool, broker: Broker, metrics: Option<&crate::metrics::Metrics>) -> Self {
        Self {
            pool,
            broker,
            wake: Arc::new(Notify::new()),
            batch_size: 256,
            published: metrics.map(|m| {
                m.shared_counter(
                    "outbox_published_total",
                    "Events confirmed by the broker and removed from the outbox",
                    &["routing_key"],
                )
            }),
        }
    }

    /// Tells the relay new rows are waiting (call after committing).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Publishes one batch. Returns how many rows were confirmed and deleted.
    pub async fn relay_once(&self) -> Result<usize, RelayError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(Uuid, String, String)> = sqlx::query_as(
            "SELECT id, routing_key, payload::text FROM outbox ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(self.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let messages: Vec<(Uuid, String, Vec<u8>)> = rows
            .into_iter()
            .map(|(id, key, payload)| (id, key, payload.into_bytes()))
            .collect();
        let (confirmed, failure) = self.broker.publish_confirmed(&messages).await;
        if !confirmed.is_empty() {
            sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
                .bind(&confirmed)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        if let Some(counter) = &self.published {
            for (id, key, _) in &messages {
                if confirmed.contains(id) {
                    counter.with_label_values(&[key.as_str()]).inc();
                }
            }
        }
        match failure {
            Some(err) => Err(RelayError::Broker(err)),
            None => Ok(confirmed.len()),
        }
    }

    /// Runs until `shutdown`, then makes one last bounded attempt to flush.
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                match self.relay_once().await {
                    Ok(n) if n as i64 == self.batch_size => {
                        failing = false;
                        continue;
                    }
                    Ok(_) => {
                        if failing {
                            tracing::info!("outbox relay recovered");
                        }
                        failing = false;
                    }
                    Err(err) => {
                        if !failing {
                            tracing::warn!(error = %err, "outbox relay cannot publish; events wait in the outbox");
                        }
                        failing = true;
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            match tokio::time::timeout(Duration::from_secs(5), self.flush()).await {
                Ok(Ok(())) => tracing::info!("outbox flushed"),
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "outbox not flushed at shutdown; events stay for the next start")
                }
                Err(_) => tracing::warn!(
                    "outbox flush timed out at shutdown; events stay for the next start"
                ),
            }
        })
    }

    /// Publishes until the outbox is empty.
    pub async fn flush(&self) -> Result<(), RelayError> {
        while self.relay_once().await? > 0 {}
        Ok(())
    }
}

/// Errors of one relay pass.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Consumes events with the given routing keys on a private queue (exclusive,
/// auto-deleted, alive as long as this process's connection), calling `handler`
/// with each body. Re-subscribes after every reconnect. `subscribed` is
/// notified each time the queue is bound, so a caller can bootstrap state from
/// its database *after* the subscription exists and miss nothing in between.
pub fn subscribe_private<F>(
    broker: Broker,
    routing_keys: Vec<String>,
    handler: F,
    subscribed: Arc<Notify>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(&[u8]) + Send + Sync + 'static,
{
    tokio::spawn(async move {
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            if !broker.wait_connected(Duration::from_secs(1)).await {
                continue;
            }
            match consume_private(&broker, &routing_keys, &handler, &subscribed, &shutdown).await {
                Ok(()) => {}
                Err(err) => {
                    tracing::warn!(error = %err, keys = ?routing_keys, "event subscription lost; re-subscribing")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    })
}

async fn consume_private<F: Fn(&[u8])>(
    broker: &Broker,
    routing_keys: &[String],
    handler: &F,
    subscribed: &Notify,
    shutdown: &CancellationToken,
) -> Result<(), BrokerError> {
    let channel = broker.channel().await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    for key in routing_keys {
        channel
            .queue_bind(
                queue.name().clone(),
                broker.exchange().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    subscribed.notify_waiters();
    loop {
        let Some(delivery) = next_delivery(&mut consumer, &channel, shutdown).await? else {
            return Ok(());
        };
        handler(&delivery.data);
        delivery.ack(BasicAckOptions::default()).await?;
    }
}

/// The next delivery of `consumer`, or `None` once it ends or `shutdown` fires
/// (then the channel is closed cleanly, so closing the connection later logs
/// no error).
pub(crate) async fn next_delivery(
    consumer: &mut lapin::Consumer,
    channel: &Channel,
    shutdown: &CancellationToken,
) -> Result<Option<lapin::message::Delivery>, BrokerError> {
    tokio::select! {
        _ = shutdown.cancelled() => {
            let _ = channel.close(200, "shutdown".into()).await;
            Ok(None)
        }
        next = consumer.next() => Ok(next.transpose()?),
    }
}

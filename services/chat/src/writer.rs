//! The write path of new messages: group commit.
//!
//! Senders hand their message to a queue and wait. Each of `writers` workers
//! takes whatever is queued (up to `batch` messages), writes it in one
//! transaction — the rows, the latest message of each side of each
//! conversation (`conversations`), the presence check of the receivers and the
//! offline-message events of those with no live socket anywhere — commits,
//! and only then answers every sender. Under load one commit carries many
//! messages; alone, a message is committed at once. While one worker commits,
//! the next batch is gathered by another.

use std::sync::Arc;
use std::time::Duration;

use parley_common::events::{self, OutboxRelay};
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use crate::store::{MESSAGE_COLUMNS, Message};

/// Routing key of the event for a message to a user with no live socket.
pub const MESSAGE_OFFLINE: &str = "chat.message.offline";

/// A message to store.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub sender_id: Uuid,
    pub sender_username: String,
    pub receiver_id: Uuid,
    /// The trimmed envelope, stored verbatim.
    pub body: String,
}

/// A stored message and whether its receiver was offline everywhere.
#[derive(Debug, Clone)]
pub struct Stored {
    pub message: Message,
    pub receiver_offline: bool,
}

/// Why a message was not stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("database: {0}")]
    Database(String),
    #[error("the message writer has stopped")]
    Stopped,
}

/// Data of a `chat.message.offline` event (the notification service's input).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct OfflineMessage<'a> {
    message_id: Uuid,
    sender_id: Uuid,
    sender_username: &'a str,
    receiver_id: Uuid,
    created_at: String,
}

type Job = (NewMessage, oneshot::Sender<Result<Stored, WriteError>>);

/// Handle to the group-commit writers.
#[derive(Clone)]
pub struct MessageWriter {
    queue: mpsc::Sender<Job>,
}

/// What a writer needs to know about presence.
#[derive(Clone, Copy, Debug)]
pub struct PresenceWindow {
    /// A replica whose heartbeat is older than this is dead.
    pub ttl: Duration,
}

impl MessageWriter {
    /// Starts `writers` workers committing up to `batch` messages at a time.
    pub fn start(
        pool: PgPool,
        relay: OutboxRelay,
        presence: PresenceWindow,
        writers: usize,
        batch: usize,
    ) -> Self {
        let (queue, receiver) = mpsc::channel::<Job>(batch.max(1) * writers.max(1) * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..writers.max(1) {
            let receiver = receiver.clone();
            let pool = pool.clone();
            let relay = relay.clone();
            tokio::spawn(async move {
                loop {
                    let jobs = {
                        let mut receiver = receiver.lock().await;
                        let Some(first) = receiver.recv().await else {
                            return;
                        };
                        let mut jobs = vec![first];
                        while jobs.len() < batch.max(1) {
                            match receiver.try_recv() {
                                Ok(job) => jobs.push(job),
                                Err(_) => break,
                            }
                        }
                        jobs
                    };
                    commit(&pool, &relay, presence, jobs).await;
                }
            });
        }
        Self { queue }
    }

    /// Stores one message; returns once it is committed.
    pub async fn write(&self, message: NewMessage) -> Result<Stored, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((message, reply))
            .await
            .map_err(|_| WriteError::Stopped)?;
        answer.await.map_err(|_| WriteError::Stopped)?
    }
}

async fn commit(pool: &PgPool, relay: &OutboxRelay, presence: PresenceWindow, jobs: Vec<Job>) {
    let messages: Vec<&NewMessage> = jobs.iter().map(|(message, _)| message).collect();
    match write_batch(pool, presence, &messages).await {
        Ok(stored) => {
            if stored.iter().any(|s| s.receiver_offline) {
                relay.wake();
            }
            for ((_, reply), stored) in jobs.into_iter().zip(stored) {
                let _ = reply.send(Ok(stored));
            }
        }
        Err(err) => {
            tracing::error!(error = %err, batch = jobs.len(), "storing messages failed");
            let err = WriteError::Database(err.to_string());
            for (_, reply) in jobs {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}

async fn write_batch(
    pool: &PgPool,
    presence: PresenceWindow,
    messages: &[&NewMessage],
) -> Result<Vec<Stored>, sqlx::Error> {
    let ids: Vec<Uuid> = messages.iter().map(|_| Uuid::new_v4()).collect();
    let senders: Vec<Uuid> = messages.iter().map(|m| m.sender_id).collect();
    let receivers: Vec<Uuid> = messages.iter().map(|m| m.receiver_id).collect();
    let bodies: Vec<&str> = messages.iter().map(|m| m.body.as_str()).collect();
    let mut tx = pool.begin().await?;
    let rows: Vec<Message> = sqlx::query_as(&format!(
        "INSERT INTO messages (id, sender_id, receiver_id, body) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[]) \
         RETURNING {MESSAGE_COLUMNS}"
    ))
    .bind(&ids)
    .bind(&senders)
    .bind(&receivers)
    .bind(&bodies)
    .fetch_all(&mut *tx)
    .await?;
    let latest = latest_per_side(&rows);
    sqlx::query(
        "INSERT INTO conversations AS c \
           (owner_id, partner_id, last_message_id, last_sender_id, last_body, last_at) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::timestamptz[]) \
         ON CONFLICT (owner_id, partner_id) DO UPDATE SET \
           last_message_id = EXCLUDED.last_message_id, last_sender_id = EXCLUDED.last_sender_id, \
           last_body = EXCLUDED.last_body, last_at = EXCLUDED.last_at \
         WHERE (c.last_at, c.last_message_id) < (EXCLUDED.last_at, EXCLUDED.last_message_id)",
    )
    .bind(latest.iter().map(|l| l.owner).collect::<Vec<_>>())
    .bind(latest.iter().map(|l| l.partner).collect::<Vec<_>>())
    .bind(latest.iter().map(|l| l.message.id).collect::<Vec<_>>())
    .bind(latest.iter().map(|l| l.message.sender_id).collect::<Vec<_>>())
    .bind(latest.iter().map(|l| l.message.body.as_str()).collect::<Vec<_>>())
    .bind(latest.iter().map(|l| l.message.created_at).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    let online: Vec<Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT s.user_id FROM presence_sessions s JOIN replicas r ON r.id = s.replica_id \
         WHERE s.user_id = ANY($1) AND r.last_seen > now() - make_interval(secs => $2)",
    )
    .bind(&receivers)
    .bind(presence.ttl.as_secs_f64())
    .fetch_all(&mut *tx)
    .await?;
    let mut by_id: std::collections::HashMap<Uuid, Message> =
        rows.into_iter().map(|row| (row.id, row)).collect();
    let mut stored = Vec::with_capacity(messages.len());
    let mut offline_events = Vec::new();
    for (id, new) in ids.iter().zip(messages) {
        let message = by_id.remove(id).ok_or(sqlx::Error::RowNotFound)?;
        let receiver_offline = !online.contains(&new.receiver_id);
        stored.push(Stored {
            message,
            receiver_offline,
        });
    }
    for (s, new) in stored.iter().zip(messages) {
        if s.receiver_offline {
            offline_events.push(OfflineMessage {
                message_id: s.message.id,
                sender_id: s.message.sender_id,
                sender_username: new.sender_username.as_str(),
                receiver_id: s.message.receiver_id,
                created_at: parley_common::http::dates::js_time(s.message.created_at),
            });
        }
    }
    events::enqueue_many(&mut tx, MESSAGE_OFFLINE, &offline_events).await?;
    tx.commit().await?;
    Ok(stored)
}

/// The newest message of one side of a conversation in a batch.
#[derive(Debug)]
struct Side<'a> {
    owner: Uuid,
    partner: Uuid,
    message: &'a Message,
}

/// Each side of every conversation in `rows` (sender → receiver and back)
/// with its newest message, sorted by (owner, partner): one row per key, as
/// one upsert statement requires, and locks taken in one order by every
/// writer, so concurrent writers (replicas) cannot deadlock on them.
fn latest_per_side(rows: &[Message]) -> Vec<Side<'_>> {
    let mut latest: std::collections::BTreeMap<(Uuid, Uuid), &Message> = Default::default();
    for message in rows {
        for key in [
            (message.sender_id, message.receiver_id),
            (message.receiver_id, message.sender_id),
        ] {
            let newer =
                |kept: &&Message| (message.created_at, message.id) > (kept.created_at, kept.id);
            if latest.get(&key).is_none_or(newer) {
                latest.insert(key, message);
            }
        }
    }
    latest
        .into_iter()
        .map(|((owner, partner), message)| Side {
            owner,
            partner,
            message,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn message(from: Uuid, to: Uuid, at_ms: i64) -> Message {
        let at = OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(at_ms);
        Message {
            id: Uuid::new_v4(),
            sender_id: from,
            receiver_id: to,
            body: format!("{at_ms}"),
            is_encrypted: true,
            status: "NotDelivered".into(),
            created_at: at,
            updated_at: at,
        }
    }

    #[test]
    fn each_side_of_each_conversation_gets_its_newest_message_once_in_key_order() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        // Arrival order is not time order: the writer's rows come back in any order.
        let rows = vec![
            message(a, b, 2),
            message(b, a, 3),
            message(a, b, 1),
            message(c, a, 5),
        ];
        let sides = latest_per_side(&rows);
        let seen: Vec<(Uuid, Uuid, &str)> = sides
            .iter()
            .map(|s| (s.owner, s.partner, s.message.body.as_str()))
            .collect();
        let mut expected = vec![(a, b, "3"), (b, a, "3"), (a, c, "5"), (c, a, "5")];
        expected.sort_by_key(|(owner, partner, _)| (*owner, *partner));
        assert_eq!(seen, expected);
    }
}

//! Message storage: reads for history, conversations and receipts. New
//! messages are written by [`crate::writer`].

use parley_common::http::dates::js_time;
use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

/// A stored message.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Message {
    pub id: Uuid,
    pub sender_id: Uuid,
    pub receiver_id: Uuid,
    pub body: String,
    pub is_encrypted: bool,
    pub status: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// The columns of [`Message`], for `SELECT`s.
pub const MESSAGE_COLUMNS: &str = "id, sender_id, receiver_id, body, is_encrypted, status::text AS status, created_at, updated_at";

/// The REST shape of a message (§4.1, §4.2), borrowed from the row.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageView<'a> {
    pub id: Uuid,
    pub sender_id: Uuid,
    pub receiver_id: Uuid,
    pub message: &'a str,
    pub is_encrypted: bool,
    pub status: &'a str,
    pub created_at: String,
    pub updated_at: String,
}

impl<'a> From<&'a Message> for MessageView<'a> {
    fn from(m: &'a Message) -> Self {
        Self {
            id: m.id,
            sender_id: m.sender_id,
            receiver_id: m.receiver_id,
            message: &m.body,
            is_encrypted: m.is_encrypted,
            status: &m.status,
            created_at: js_time(m.created_at),
            updated_at: js_time(m.updated_at),
        }
    }
}

/// One page of the history between two users, chronological, and the total.
pub async fn history(
    pool: &PgPool,
    me: Uuid,
    other: Uuid,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Message>, i64), sqlx::Error> {
    // One query for the page and the total (the sort needs every matching row
    // anyway); only a page past the end needs a second one for the total.
    let rows: Vec<PageRow> = sqlx::query_as(&format!(
        "SELECT {MESSAGE_COLUMNS}, count(*) OVER () AS total FROM messages \
         WHERE (sender_id = $1 AND receiver_id = $2) OR (sender_id = $2 AND receiver_id = $1) \
         ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
    ))
    .bind(me)
    .bind(other)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    if let Some(first) = rows.first() {
        let total = first.total;
        let mut page: Vec<Message> = rows.into_iter().map(|row| row.message).collect();
        page.reverse();
        return Ok((page, total));
    }
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM messages \
         WHERE (sender_id = $1 AND receiver_id = $2) OR (sender_id = $2 AND receiver_id = $1)",
    )
    .bind(me)
    .bind(other)
    .fetch_one(pool)
    .await?;
    Ok((Vec::new(), total))
}

/// A history row with the number of messages in the whole conversation.
#[derive(sqlx::FromRow)]
struct PageRow {
    #[sqlx(flatten)]
    message: Message,
    total: i64,
}

/// One conversation of the caller, from its latest message.
#[derive(Debug, sqlx::FromRow)]
pub struct Conversation {
    pub partner: Uuid,
    pub last_sender: Uuid,
    pub last_body: String,
    pub last_at: OffsetDateTime,
    pub unread: i64,
    pub username: Option<String>,
}

/// Every conversation partner of `me`, newest first, from the
/// `conversations` table the message writer keeps.
pub async fn conversations(pool: &PgPool, me: Uuid) -> Result<Vec<Conversation>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.partner_id AS partner, c.last_sender_id AS last_sender, c.last_body, c.last_at, \
           (SELECT count(*) FROM messages m \
             WHERE m.sender_id = c.partner_id AND m.receiver_id = $1 AND m.status <> 'Seen') AS unread, \
           u.username \
         FROM conversations c LEFT JOIN users u ON u.id = c.partner_id \
         WHERE c.owner_id = $1 \
         ORDER BY c.last_at DESC",
    )
    .bind(me)
    .fetch_all(pool)
    .await
}

/// Marks every unread message from `sender` to `reader` as seen; returns how many.
pub async fn mark_read(pool: &PgPool, reader: Uuid, sender: Uuid) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE messages SET status = 'Seen', updated_at = clock_timestamp() \
         WHERE sender_id = $1 AND receiver_id = $2 AND status <> 'Seen'",
    )
    .bind(sender)
    .bind(reader)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// A message by id.
pub async fn find(pool: &PgPool, id: Uuid) -> Result<Option<Message>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Marks a message delivered if `receiver` is its receiver. Returns its sender
/// when the receiver matched (whether or not the status changed).
pub async fn mark_delivered(
    pool: &PgPool,
    id: Uuid,
    receiver: Uuid,
) -> Result<Option<Uuid>, sqlx::Error> {
    let sender: Option<Uuid> =
        sqlx::query_scalar("SELECT sender_id FROM messages WHERE id = $1 AND receiver_id = $2")
            .bind(id)
            .bind(receiver)
            .fetch_optional(pool)
            .await?;
    if sender.is_some() {
        sqlx::query(
            "UPDATE messages SET status = 'Delivered', updated_at = clock_timestamp() \
             WHERE id = $1 AND status = 'NotDelivered'",
        )
        .bind(id)
        .execute(pool)
        .await?;
    }
    Ok(sender)
}

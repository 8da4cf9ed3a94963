//! What the notification service does with other services' events, on its
//! durable queue `<exchange>.notification` (idempotent by event id,
//! acknowledged after commit, dead-lettered after repeated failure):
//!
//! * `user.registered` → the user's address (projection), a welcome
//!   notification and a welcome email;
//! * `chat.message.offline` → "New message from <name>" notification and email
//!   (the email never carries the ciphertext);
//! * `auth.token_revoked` → the service's own revocation table.

use parley_common::auth::persist_revocation;
use parley_common::consumer::{DurableQueue, HandlerError, IncomingEvent, claim_event};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::NotificationContext;
use crate::templates::Kind;

/// The notification service's durable queue on `exchange`.
pub fn queue(exchange: &str) -> DurableQueue {
    DurableQueue {
        name: format!("{exchange}.notification"),
        routing_keys: vec![
            "user.registered".into(),
            "chat.message.offline".into(),
            "auth.token_revoked".into(),
        ],
        prefetch: 32,
    }
}

/// The welcome text the original stored for `USER_REGISTERED`.
pub const WELCOME_MESSAGE: &str = "Welcome to the Chat App!";
/// The stored text of a message notification: never the ciphertext.
pub const ENCRYPTED_PLACEHOLDER: &str = "[Encrypted message]";
/// The body of the new-message email.
pub const MESSAGE_EMAIL_BODY: &str = "You have a new encrypted message. Open the app to view it.";

fn uuid_field(data: &Value, key: &str) -> Result<Uuid, HandlerError> {
    data.get(key)
        .and_then(Value::as_str)
        .and_then(|v| Uuid::parse_str(v).ok())
        .ok_or_else(|| HandlerError::Permanent(format!("event without a valid {key}")))
}

/// Applies one event, exactly once.
pub async fn apply(ctx: &NotificationContext, event: IncomingEvent) -> Result<(), HandlerError> {
    let mut tx = ctx.pool.begin().await?;
    if !claim_event(&mut tx, event.id).await? {
        return Ok(());
    }
    let mut emailed = false;
    match event.kind.as_str() {
        "user.registered" => {
            let user = uuid_field(&event.data, "userId")?;
            let text = |key: &str| {
                event
                    .data
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            };
            let (username, email) = (text("username"), text("email"));
            if email.is_empty() {
                return Err(HandlerError::Permanent(
                    "user.registered without email".into(),
                ));
            }
            sqlx::query(
                "INSERT INTO users (id, username, email) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET username = EXCLUDED.username, email = EXCLUDED.email, updated_at = now()",
            )
            .bind(user)
            .bind(&username)
            .bind(&email)
            .execute(&mut *tx)
            .await?;
            insert_notification(
                &mut tx,
                user,
                "system",
                "Welcome to Chat App",
                WELCOME_MESSAGE,
            )
            .await?;
            emailed = queue_email(
                ctx,
                &mut tx,
                Recipient::Address(user, &email),
                Kind::Welcome,
                "Welcome to Chat App",
                WELCOME_MESSAGE,
            )
            .await?;
            ctx.consumed.with_label_values(&["system"]).inc();
        }
        "chat.message.offline" => {
            let receiver = uuid_field(&event.data, "receiverId")?;
            let sender = event
                .data
                .get("senderUsername")
                .and_then(Value::as_str)
                .filter(|name| !name.is_empty())
                .unwrap_or("Unknown");
            let title = format!("New message from {sender}");
            insert_notification(&mut tx, receiver, "message", &title, ENCRYPTED_PLACEHOLDER)
                .await?;
            // The address may not be known yet (the registration event can
            // arrive after this one): the mailer resolves it when sending.
            emailed = queue_email(
                ctx,
                &mut tx,
                Recipient::User(receiver),
                Kind::Message,
                &title,
                MESSAGE_EMAIL_BODY,
            )
            .await?;
            ctx.consumed.with_label_values(&["message"]).inc();
        }
        "auth.token_revoked" => persist_revocation(&mut tx, &event.data).await?,
        _ => {}
    }
    tx.commit().await?;
    if emailed {
        ctx.mailer.wake();
    }
    Ok(())
}

async fn insert_notification(
    tx: &mut PgConnection,
    user: Uuid,
    kind: &str,
    title: &str,
    message: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO notifications (user_id, type, title, message) VALUES ($1, $2::notification_type, $3, $4)",
    )
    .bind(user)
    .bind(kind)
    .bind(title)
    .bind(message)
    .execute(tx)
    .await?;
    Ok(())
}

/// Who an email goes to.
enum Recipient<'a> {
    /// A user whose address is known now.
    Address(Uuid, &'a str),
    /// A user whose address the mailer looks up when sending.
    User(Uuid),
}

/// Queues an email in the caller's transaction; `false` when email is off.
async fn queue_email(
    ctx: &NotificationContext,
    tx: &mut PgConnection,
    to: Recipient<'_>,
    kind: Kind,
    subject: &str,
    body: &str,
) -> Result<bool, sqlx::Error> {
    if !ctx.mailer.enabled() {
        return Ok(false);
    }
    let (user, address) = match to {
        Recipient::Address(user, address) => (user, Some(address)),
        Recipient::User(user) => (user, None),
    };
    let email = ctx.templates.render(kind, subject, body);
    sqlx::query(
        "INSERT INTO emails (user_id, recipient, subject, html_body, text_body) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(user)
    .bind(address)
    .bind(&email.subject)
    .bind(&email.html)
    .bind(&email.text)
    .execute(tx)
    .await?;
    Ok(true)
}

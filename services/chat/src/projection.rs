//! What the chat service learns from other services' events, on its durable
//! queue `<exchange>.chat`: usernames (`user.registered`) for conversations, and
//! revoked tokens (`auth.token_revoked`) so a restarted replica refuses them.

use parley_common::auth::persist_revocation;
use parley_common::consumer::{DurableQueue, HandlerError, IncomingEvent, claim_event};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// The chat service's durable queue on `exchange`.
pub fn queue(exchange: &str) -> DurableQueue {
    DurableQueue {
        name: format!("{exchange}.chat"),
        routing_keys: vec!["user.registered".into(), "auth.token_revoked".into()],
        prefetch: 64,
    }
}

/// Applies one event, exactly once.
pub async fn apply(pool: &PgPool, event: IncomingEvent) -> Result<(), HandlerError> {
    let mut tx = pool.begin().await?;
    if !claim_event(&mut tx, event.id).await? {
        return Ok(());
    }
    match event.kind.as_str() {
        "user.registered" => {
            let text = |key: &str| event.data.get(key).and_then(Value::as_str);
            let (Some(id), Some(username), Some(email)) = (
                text("userId").and_then(|id| Uuid::parse_str(id).ok()),
                text("username"),
                text("email"),
            ) else {
                return Err(HandlerError::Permanent(
                    "user.registered without userId/username/email".into(),
                ));
            };
            sqlx::query(
                "INSERT INTO users (id, username, email) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET username = EXCLUDED.username, email = EXCLUDED.email, updated_at = now()",
            )
            .bind(id)
            .bind(username)
            .bind(email)
            .execute(&mut *tx)
            .await?;
        }
        "auth.token_revoked" => persist_revocation(&mut tx, &event.data).await?,
        _ => {}
    }
    tx.commit().await?;
    Ok(())
}

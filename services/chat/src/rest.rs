//! Chat REST (contract §4), served under `/chat`. Authentication comes before
//! validation on every route.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use parley_common::auth::AuthUser;
use parley_common::http::error::ok;
use parley_common::http::validate::{as_text, is_uuid, js_length, js_trim};
use parley_common::http::{ApiError, ApiResult, Body, Validator, query};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::ChatState;
use crate::store::{self, MessageView};
use crate::writer::NewMessage;
use parley_common::http::dates::js_time;

/// Body of `POST /chat/send`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct SendRequest {
    /// The receiver's user id.
    #[schema(rename = "receiverId")]
    receiver_id: String,
    /// The Signal envelope as a JSON string: `{"__encrypted":true,"type":1|3,"body":"<base64>"}`; stored verbatim.
    message: String,
}

/// Whether a parsed envelope is end-to-end encrypted (`__encrypted === true`
/// and a string `body`).
pub fn is_encrypted_envelope(envelope: &Value) -> bool {
    envelope.get("__encrypted") == Some(&Value::Bool(true))
        && envelope.get("body").is_some_and(Value::is_string)
}

fn check_id(v: &mut Validator, value: &str, field: &str, label: &str) {
    v.check(!value.is_empty(), field, &format!("{label} is required"));
    v.check(
        is_uuid(value),
        field,
        &format!("{label} must be a valid UUID"),
    );
}

/// `POST /chat/send`
#[utoipa::path(post, path = "/send", tag = "messages", request_body = SendRequest,
    security(("cookie" = []), ("bearer" = [])),
    responses((status = 200, description = "Message sent successfully"),
              (status = 400, description = "Validation failed, same user, empty, too long or not encrypted"),
              (status = 401), (status = 429)))]
pub async fn send(
    State(state): State<ChatState>,
    AuthUser(claims): AuthUser,
    body: Body,
) -> ApiResult<Response> {
    let mut v = Validator::new();
    let receiver = js_trim(&as_text(body.field("receiverId"))).to_owned();
    check_id(&mut v, &receiver, "receiverId", "Receiver ID");
    let message = body.field("message");
    let text = as_text(message);
    v.check(!text.is_empty(), "message", "Message is required");
    v.check(
        message.is_some_and(Value::is_string),
        "message",
        "Message must be a string",
    );
    v.check(
        js_length(&text) <= 5000,
        "message",
        "Message exceeds maximum length of 5000 characters",
    );
    v.finish()?;

    let receiver = Uuid::parse_str(&receiver).map_err(ApiError::internal)?;
    if receiver == claims.id {
        return Err(ApiError::bad_request(
            "Sender and receiver cannot be the same user",
        ));
    }
    let trimmed = js_trim(&text);
    if trimmed.is_empty() {
        return Err(ApiError::bad_request("Message cannot be empty"));
    }
    if js_length(trimmed) > 5000 {
        return Err(ApiError::bad_request(
            "Message exceeds maximum length of 5000 characters",
        ));
    }
    let envelope: Value = serde_json::from_str(trimmed).map_err(|_| {
        ApiError::bad_request("Messages must be end-to-end encrypted (invalid envelope)")
    })?;
    if !is_encrypted_envelope(&envelope) {
        return Err(ApiError::bad_request(
            "Messages must be end-to-end encrypted",
        ));
    }
    let stored = state
        .socket
        .writer
        .write(NewMessage {
            sender_id: claims.id,
            sender_username: claims.username.clone(),
            receiver_id: receiver,
            body: trimmed.to_owned(),
        })
        .await
        .map_err(ApiError::internal)?;
    state.socket.metrics.sent.with_label_values(&["rest"]).inc();
    let m = &stored.message;
    Ok(ok(
        "Message sent successfully",
        json!({
            "senderId": m.sender_id, "receiverId": m.receiver_id, "message": m.body,
            "isEncrypted": m.is_encrypted, "status": m.status, "id": m.id,
            "createdAt": js_time(m.created_at), "updatedAt": js_time(m.updated_at),
        }),
    ))
}

fn js_number(text: &str) -> Option<f64> {
    let text = text.trim();
    if text.is_empty() {
        return Some(0.0);
    }
    text.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// `GET /chat/get/{receiver_id}`
#[utoipa::path(get, path = "/get/{receiver_id}", tag = "messages",
    security(("cookie" = []), ("bearer" = [])),
    params(("receiver_id" = String, Path), ("limit" = Option<i64>, Query, description = "1–200, default 50"),
           ("offset" = Option<i64>, Query, description = "default 0")),
    responses((status = 200, description = "A chronological page of the conversation and its pagination"),
              (status = 400), (status = 401)))]
pub async fn history(
    State(state): State<ChatState>,
    AuthUser(claims): AuthUser,
    Path(other): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let other = js_trim(&other).to_owned();
    let mut v = Validator::new();
    check_id(&mut v, &other, "receiverId", "Receiver ID");
    v.finish()?;
    let other = Uuid::parse_str(&other).map_err(ApiError::internal)?;
    let limit = match js_number(&query::param(raw.as_deref(), "limit")) {
        Some(n) if n >= 1.0 => (n.trunc() as i64).min(200),
        _ => 50,
    };
    let offset = js_number(&query::param(raw.as_deref(), "offset"))
        .map_or(0, |n| n.trunc().max(0.0).min(i64::MAX as f64) as i64);
    let (page, total) = store::history(&state.socket.pool, claims.id, other, limit, offset).await?;
    Ok(Json(HistoryPage {
        status: 200,
        message: "Conversation fetched successfully",
        data: page.iter().map(MessageView::from).collect(),
        pagination: Pagination {
            total,
            limit,
            offset,
            has_more: offset.saturating_add(limit) < total,
        },
    })
    .into_response())
}

/// The body of `GET /chat/get/:id`, serialized straight from the rows.
#[derive(Serialize)]
struct HistoryPage<'a> {
    status: u16,
    message: &'static str,
    data: Vec<MessageView<'a>>,
    pagination: Pagination,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Pagination {
    total: i64,
    limit: i64,
    offset: i64,
    has_more: bool,
}

/// One entry of `GET /chat/conversations`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConversationView {
    user_id: Uuid,
    last_message_sender_id: Uuid,
    last_message: String,
    last_message_time: String,
    unread_count: i64,
    username: String,
}

/// `GET /chat/conversations`
#[utoipa::path(get, path = "/conversations", tag = "messages",
    security(("cookie" = []), ("bearer" = [])),
    responses((status = 200, description = "One entry per conversation partner, newest first"), (status = 401)))]
pub async fn conversations(
    State(state): State<ChatState>,
    AuthUser(claims): AuthUser,
) -> ApiResult<Response> {
    let rows = store::conversations(&state.socket.pool, claims.id).await?;
    let data: Vec<ConversationView> = rows
        .into_iter()
        .map(|c| ConversationView {
            user_id: c.partner,
            last_message_sender_id: c.last_sender,
            last_message: c.last_body,
            last_message_time: js_time(c.last_at),
            unread_count: c.unread,
            username: c.username.unwrap_or_else(|| "Unknown User".to_owned()),
        })
        .collect();
    Ok(ok("Conversations fetched successfully", data))
}

/// `PUT /chat/messages/read/{sender_id}`
#[utoipa::path(put, path = "/messages/read/{sender_id}", tag = "messages",
    security(("cookie" = []), ("bearer" = [])),
    params(("sender_id" = String, Path)),
    responses((status = 200, description = "Messages marked as read, with modifiedCount"), (status = 400), (status = 401)))]
pub async fn mark_read(
    State(state): State<ChatState>,
    AuthUser(claims): AuthUser,
    Path(sender): Path<String>,
) -> ApiResult<Response> {
    let sender = js_trim(&sender).to_owned();
    let mut v = Validator::new();
    check_id(&mut v, &sender, "senderId", "Sender ID");
    v.finish()?;
    let sender = Uuid::parse_str(&sender).map_err(ApiError::internal)?;
    let count = store::mark_read(&state.socket.pool, claims.id, sender).await?;
    state
        .socket
        .metrics
        .read
        .with_label_values(&[] as &[&str])
        .inc_by(count);
    Ok(ok(
        "Messages marked as read",
        json!({"modifiedCount": count}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_must_be_marked_encrypted_with_a_string_body() {
        assert!(is_encrypted_envelope(
            &json!({"__encrypted": true, "type": 3, "body": "QQ=="})
        ));
        assert!(!is_encrypted_envelope(
            &json!({"__encrypted": "true", "body": "QQ=="})
        ));
        assert!(!is_encrypted_envelope(
            &json!({"__encrypted": true, "body": 5})
        ));
        assert!(!is_encrypted_envelope(&json!({"body": "x"})));
    }

    #[test]
    fn numbers_parse_like_javascript() {
        assert_eq!(js_number(""), Some(0.0));
        assert_eq!(js_number(" 12 "), Some(12.0));
        assert_eq!(js_number("abc"), None);
        assert_eq!(js_number("1e2"), Some(100.0));
    }
}

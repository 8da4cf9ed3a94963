//! Notification REST (contract §5), served under `/notifications/` and
//! `/notification/`. Every route is behind the service limiter, then auth;
//! creation has its own limiter before auth.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use parley_common::auth::AuthUser;
use parley_common::http::error::{ok, ok_message};
use parley_common::http::validate::{as_text, is_uuid, js_length, js_trim};
use parley_common::http::{ApiError, ApiResult, Body, Validator, query};
use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::NotificationState;

/// A notification as the API returns it.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub id: Uuid,
    pub user_id: Uuid,
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub kind: String,
    pub title: String,
    pub message: String,
    pub read: bool,
    #[serde(serialize_with = "parley_common::http::dates::serialize")]
    #[schema(value_type = String)]
    pub created_at: OffsetDateTime,
    #[serde(serialize_with = "parley_common::http::dates::serialize")]
    #[schema(value_type = String)]
    pub updated_at: OffsetDateTime,
}

const COLUMNS: &str =
    "id, user_id, type::text AS type, title, message, read, created_at, updated_at";

/// Body of `POST /notifications/`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct CreateRequest {
    #[schema(rename = "userId")]
    user_id: String,
    /// `message`, `system` or `alert`.
    #[schema(rename = "type")]
    kind: String,
    /// ≤ 255 characters after trimming.
    title: String,
    /// ≤ 5000 characters, stored as sent.
    message: String,
}

/// `GET /notifications/`
#[utoipa::path(get, path = "/", tag = "notifications", security(("cookie" = []), ("bearer" = [])),
    params(("limit" = Option<i64>, Query, description = "default 20, capped"), ("offset" = Option<i64>, Query)),
    responses((status = 200, body = [Notification]), (status = 401)))]
pub async fn list(
    State(state): State<NotificationState>,
    AuthUser(claims): AuthUser,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let number = |name: &str, default: i64| {
        let text = query::param(raw.as_deref(), name);
        let digits: String = text
            .trim()
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '-')
            .collect();
        digits.parse::<i64>().ok().unwrap_or(default)
    };
    let limit = number("limit", 20).clamp(1, state.page_max);
    let offset = number("offset", 0).max(0);
    let rows: Vec<Notification> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM notifications WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
    ))
    .bind(claims.id)
    .bind(limit)
    .bind(offset)
    .fetch_all(&state.pool)
    .await?;
    Ok(ok("Notifications fetched successfully", rows))
}

/// `GET /notifications/unread/count`
#[utoipa::path(get, path = "/unread/count", tag = "notifications", security(("cookie" = []), ("bearer" = [])),
    responses((status = 200, description = "`{count}`"), (status = 401)))]
pub async fn unread_count(
    State(state): State<NotificationState>,
    AuthUser(claims): AuthUser,
) -> ApiResult<Response> {
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notifications WHERE user_id = $1 AND NOT read")
            .bind(claims.id)
            .fetch_one(&state.pool)
            .await?;
    Ok(ok(
        "Unread count fetched successfully",
        json!({"count": count}),
    ))
}

/// `PUT /notifications/read-all`
#[utoipa::path(put, path = "/read-all", tag = "notifications", security(("cookie" = []), ("bearer" = [])),
    responses((status = 200, description = "`{modifiedCount}`"), (status = 401)))]
pub async fn read_all(
    State(state): State<NotificationState>,
    AuthUser(claims): AuthUser,
) -> ApiResult<Response> {
    let done = sqlx::query("UPDATE notifications SET read = true, updated_at = clock_timestamp() WHERE user_id = $1 AND NOT read")
        .bind(claims.id)
        .execute(&state.pool)
        .await?;
    state
        .read_counter
        .with_label_values(&[] as &[&str])
        .inc_by(done.rows_affected());
    Ok(ok(
        "All notifications marked as read",
        json!({"modifiedCount": done.rows_affected()}),
    ))
}

fn notification_id(id: &str) -> ApiResult<Uuid> {
    let id = js_trim(id);
    let mut v = Validator::new();
    v.check(
        !id.is_empty(),
        "notificationId",
        "Notification ID is required",
    );
    v.check(
        is_uuid(id),
        "notificationId",
        "Notification ID must be a valid UUID",
    );
    v.finish()?;
    Uuid::parse_str(id).map_err(ApiError::internal)
}

fn not_found() -> ApiError {
    ApiError::not_found("Notification not found")
}

/// `PUT /notifications/{notification_id}/read`
#[utoipa::path(put, path = "/{notification_id}/read", tag = "notifications", security(("cookie" = []), ("bearer" = [])),
    params(("notification_id" = String, Path)),
    responses((status = 200, body = Notification), (status = 400), (status = 401), (status = 404, description = "Missing or someone else's")))]
pub async fn mark_read(
    State(state): State<NotificationState>,
    AuthUser(claims): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = notification_id(&id)?;
    let row: Option<Notification> = sqlx::query_as(&format!(
        "UPDATE notifications SET read = true, updated_at = clock_timestamp() WHERE id = $1 AND user_id = $2 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(claims.id)
    .fetch_optional(&state.pool)
    .await?;
    let row = row.ok_or_else(not_found)?;
    state.read_counter.with_label_values(&[] as &[&str]).inc();
    Ok(ok("Notification marked as read", row))
}

/// `DELETE /notifications/{notification_id}`
#[utoipa::path(delete, path = "/{notification_id}", tag = "notifications", security(("cookie" = []), ("bearer" = [])),
    params(("notification_id" = String, Path)),
    responses((status = 200), (status = 400), (status = 401), (status = 404, description = "Missing or someone else's")))]
pub async fn delete(
    State(state): State<NotificationState>,
    AuthUser(claims): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = notification_id(&id)?;
    let done = sqlx::query("DELETE FROM notifications WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(claims.id)
        .execute(&state.pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(not_found());
    }
    Ok(ok_message("Notification deleted successfully"))
}

const TYPES: [&str; 3] = ["message", "system", "alert"];

/// `POST /notifications/`
#[utoipa::path(post, path = "/", tag = "notifications", request_body = CreateRequest,
    security(("cookie" = []), ("bearer" = [])),
    responses((status = 201, body = Notification), (status = 400), (status = 401),
              (status = 403, description = "Cannot create notifications for other users"), (status = 429)))]
pub async fn create(
    State(state): State<NotificationState>,
    AuthUser(claims): AuthUser,
    body: Body,
) -> ApiResult<Response> {
    let mut v = Validator::new();
    let user_id = js_trim(&as_text(body.field("userId"))).to_owned();
    v.check(!user_id.is_empty(), "userId", "User ID is required");
    v.check(is_uuid(&user_id), "userId", "User ID must be a valid UUID");
    let kind_value = body.field("type");
    let kind = js_trim(&as_text(kind_value)).to_owned();
    v.check(!kind.is_empty(), "type", "Notification type is required");
    v.check(
        kind_value.is_some_and(Value::is_string),
        "type",
        "Notification type must be a string",
    );
    v.check(
        TYPES.contains(&kind.as_str()),
        "type",
        "Notification type must be: message, system, or alert",
    );
    let title_value = body.field("title");
    let title = js_trim(&as_text(title_value)).to_owned();
    v.check(!title.is_empty(), "title", "Title is required");
    v.check(
        title_value.is_some_and(Value::is_string),
        "title",
        "Title must be a string",
    );
    v.check(
        js_length(&title) <= 255,
        "title",
        "Title exceeds maximum length of 255 characters",
    );
    let message_value = body.field("message");
    let message = as_text(message_value);
    v.check(!message.is_empty(), "message", "Message is required");
    v.check(
        message_value.is_some_and(Value::is_string),
        "message",
        "Message must be a string",
    );
    v.check(
        js_length(&message) <= 5000,
        "message",
        "Message exceeds maximum length of 5000 characters",
    );
    v.finish()?;
    if Uuid::parse_str(&user_id).ok() != Some(claims.id) {
        return Err(ApiError::forbidden(
            "Forbidden: Cannot create notifications for other users",
        ));
    }
    let row: Notification = sqlx::query_as(&format!(
        "INSERT INTO notifications (user_id, type, title, message) VALUES ($1, $2::notification_type, $3, $4) RETURNING {COLUMNS}"
    ))
    .bind(claims.id)
    .bind(&kind)
    .bind(&title)
    .bind(&message)
    .fetch_one(&state.pool)
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"status": 201, "message": "Notification created successfully", "data": row})),
    )
        .into_response())
}

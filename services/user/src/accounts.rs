//! Accounts and sessions (§3.1–§3.4, §3.9, §3.10): register, login, logout, me,
//! search and user lookup, plus the revocation list that makes logout real.

use std::time::SystemTime;

use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::http::header::SET_COOKIE;
use axum::response::Response;
use parley_common::auth::{AuthUser, Revocations, token_from_headers};
use parley_common::events;
use parley_common::http::error::{ok, ok_data, ok_message};
use parley_common::http::validate::{as_text, js_length, js_trim};
use parley_common::http::{ApiError, ApiResult, Body, Validator, query};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::email::{is_email, normalize_email};
use crate::passwords::HashError;
use crate::{TOKEN_REVOKED, USER_REGISTERED, UserState};

/// Body of `POST /register`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct RegisterRequest {
    /// 3–30 of `A-Z a-z 0-9 _ -`; stored lower-cased.
    username: String,
    /// Normalized as validator.js `normalizeEmail` does.
    email: String,
    /// 8–128 characters with a lower-case and an upper-case letter, a digit and one of `@$!%*?&`; the first character must be a letter, digit or one of those.
    password: String,
}

/// Body of `POST /login`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct LoginRequest {
    email: String,
    password: String,
}

/// A user as `me`, register and `users/:id` return it.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: Uuid,
    pub username: String,
    pub email: String,
}

/// One search result (note `_id`, as the original).
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchHit {
    #[serde(rename = "_id")]
    pub id: Uuid,
    pub username: String,
    pub email: String,
}

const PASSWORD_SPECIALS: &str = "@$!%*?&";

/// The original password rule: a lower-case letter, an upper-case letter, a digit
/// and one of `@$!%*?&` somewhere on the first line (JavaScript's `.` stops at
/// line terminators), and a first character from those classes.
pub fn password_rule(password: &str) -> bool {
    let allowed_first = |c: char| c.is_ascii_alphanumeric() || PASSWORD_SPECIALS.contains(c);
    let line = password
        .split(['\n', '\r', '\u{2028}', '\u{2029}'])
        .next()
        .unwrap_or("");
    password.chars().next().is_some_and(allowed_first)
        && line.chars().any(|c| c.is_ascii_lowercase())
        && line.chars().any(|c| c.is_ascii_uppercase())
        && line.chars().any(|c| c.is_ascii_digit())
        && line.chars().any(|c| PASSWORD_SPECIALS.contains(c))
}

fn username_chars(username: &str) -> bool {
    !username.is_empty()
        && username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Validates and normalizes the email field; returns the normalized address.
fn check_email(v: &mut Validator, body: &Body) -> String {
    let email = js_trim(&as_text(body.field("email"))).to_owned();
    v.check(!email.is_empty(), "email", "Email is required");
    let valid = is_email(&email);
    v.check(valid, "email", "Must be a valid email address");
    normalize_email(&email).unwrap_or_else(|| "false".to_owned())
}

fn session_response(state: &UserState, token: &str, body: Response) -> Response {
    let cookie = state.cookies.session(token, SystemTime::now());
    let mut response = body;
    response.headers_mut().append(
        SET_COOKIE,
        cookie.parse().expect("cookie is a valid header"),
    );
    response
}

fn busy(err: HashError) -> ApiError {
    match err {
        HashError::Busy => ApiError::new(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "Too many sign-ins in progress, please retry shortly",
        ),
        HashError::Bcrypt(cause) => ApiError::internal(cause),
    }
}

/// `POST /register`
#[utoipa::path(post, path = "/register", tag = "accounts", request_body = RegisterRequest,
    responses((status = 200, description = "Registered; sets the `jwt` cookie", body = UserView),
              (status = 400, description = "Validation failed, or email/username taken"),
              (status = 429, description = "Too many authentication attempts")))]
pub async fn register(State(state): State<UserState>, body: Body) -> ApiResult<Response> {
    let mut v = Validator::new();
    let username = js_trim(&as_text(body.field("username"))).to_owned();
    v.check(!username.is_empty(), "username", "Username is required");
    let length = js_length(&username);
    v.check(
        (3..=30).contains(&length),
        "username",
        "Username must be between 3 and 30 characters",
    );
    v.check(
        username_chars(&username),
        "username",
        "Username must contain only letters, numbers, underscores (_) or hyphens (-); no spaces",
    );
    let email = check_email(&mut v, &body);
    v.check(
        js_length(&email) <= 255,
        "email",
        "Email must not exceed 255 characters",
    );
    let password = as_text(body.field("password"));
    v.check(!password.is_empty(), "password", "Password is required");
    v.check(
        (8..=128).contains(&js_length(&password)),
        "password",
        "Password must be between 8 and 128 characters",
    );
    v.check(
        password_rule(&password),
        "password",
        "Password must contain at least one uppercase letter, one lowercase letter, one number, and one special character (@$!%*?&)",
    );
    if let Err(err) = v.finish() {
        state
            .metrics
            .registrations
            .with_label_values(&["invalid"])
            .inc();
        return Err(err);
    }
    let username = username.to_lowercase();

    let clash: Option<(String, String)> = sqlx::query_as(
        "SELECT email, username FROM users WHERE email = $1 OR username = $2 LIMIT 1",
    )
    .bind(&email)
    .bind(&username)
    .fetch_optional(&state.pool)
    .await?;
    if let Some((taken_email, _)) = clash {
        state
            .metrics
            .registrations
            .with_label_values(&["conflict"])
            .inc();
        return Err(conflict(taken_email == email));
    }

    let hash = state.hasher.hash(&password).await.map_err(busy)?;
    let mut tx = state.pool.begin().await?;
    let inserted: Result<Uuid, sqlx::Error> = sqlx::query_scalar(
        "INSERT INTO users (username, email, password_hash) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(&username)
    .bind(&email)
    .bind(&hash)
    .fetch_one(&mut *tx)
    .await;
    let id = match inserted {
        Ok(id) => id,
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
            state
                .metrics
                .registrations
                .with_label_values(&["conflict"])
                .inc();
            return Err(conflict(db.constraint() == Some("users_email_key")));
        }
        Err(err) => return Err(err.into()),
    };
    events::enqueue(
        &mut tx,
        USER_REGISTERED,
        &json!({"userId": id, "username": username, "email": email}),
    )
    .await?;
    tx.commit().await?;
    state.relay.wake();
    state
        .metrics
        .registrations
        .with_label_values(&["success"])
        .inc();
    tracing::info!(user_id = %id, "user registered");

    let (token, _) = state.issuer.issue(id, &username, &email);
    let body = ok(
        "User registered successfully",
        UserView {
            id,
            username,
            email,
        },
    );
    Ok(session_response(&state, &token, body))
}

fn conflict(email_taken: bool) -> ApiError {
    if email_taken {
        ApiError::bad_request("User with this email already exists")
    } else {
        ApiError::bad_request("Username already taken")
    }
}

/// `POST /login`
#[utoipa::path(post, path = "/login", tag = "accounts", request_body = LoginRequest,
    responses((status = 200, description = "Logged in; sets the `jwt` cookie"),
              (status = 400, description = "Validation failed"),
              (status = 401, description = "Invalid email or password"),
              (status = 429, description = "Too many authentication attempts")))]
pub async fn login(State(state): State<UserState>, body: Body) -> ApiResult<Response> {
    let mut v = Validator::new();
    let email = check_email(&mut v, &body);
    let password = as_text(body.field("password"));
    v.check(!password.is_empty(), "password", "Password is required");
    v.finish()?;

    let user: Option<(Uuid, String, String, String)> =
        sqlx::query_as("SELECT id, username, email, password_hash FROM users WHERE email = $1")
            .bind(&email)
            .fetch_optional(&state.pool)
            .await?;
    let hash = user.as_ref().map(|(_, _, _, hash)| hash.clone());
    let matches = state.hasher.verify(&password, hash).await.map_err(busy)?;
    let Some((id, username, email, _)) = user.filter(|_| matches) else {
        state.metrics.logins.with_label_values(&["failure"]).inc();
        return Err(ApiError::unauthorized("Invalid email or password"));
    };
    state.metrics.logins.with_label_values(&["success"]).inc();
    let (token, _) = state.issuer.issue(id, &username, &email);
    Ok(session_response(
        &state,
        &token,
        ok_message("Login successful"),
    ))
}

/// `POST /logout`: revokes the presented token (if any and valid) everywhere,
/// clears the cookie, and always succeeds.
#[utoipa::path(post, path = "/logout", tag = "accounts",
    responses((status = 200, description = "Logged out; the token no longer works")))]
pub async fn logout(State(state): State<UserState>, headers: HeaderMap) -> ApiResult<Response> {
    if let Some(claims) =
        token_from_headers(&headers).and_then(|token| state.auth.verify(&token).ok())
    {
        let expires_at =
            OffsetDateTime::from_unix_timestamp(claims.exp).map_err(ApiError::internal)?;
        let mut tx = state.pool.begin().await?;
        sqlx::query(
            "INSERT INTO revoked_tokens (jti, user_id, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(claims.jti)
        .bind(claims.id)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        events::enqueue(
            &mut tx,
            TOKEN_REVOKED,
            &json!({"jti": claims.jti, "userId": claims.id, "expiresAt": claims.exp}),
        )
        .await?;
        tx.commit().await?;
        state.relay.wake();
        state.auth.revocations.revoke(claims.jti, claims.exp);
        tracing::info!(user_id = %claims.id, "session revoked");
    }
    let mut response = ok_message("Logged out successfully");
    response.headers_mut().append(
        SET_COOKIE,
        state.cookies.cleared().parse().expect("valid header"),
    );
    Ok(response)
}

async fn find_user(pool: &PgPool, id: Uuid) -> ApiResult<Option<UserView>> {
    let row: Option<(Uuid, String, String)> =
        sqlx::query_as("SELECT id, username, email FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(id, username, email)| UserView {
        id,
        username,
        email,
    }))
}

/// `GET /me`
#[utoipa::path(get, path = "/me", tag = "accounts", security(("cookie" = []), ("bearer" = [])),
    responses((status = 200, body = UserView), (status = 401), (status = 404, description = "User not found")))]
pub async fn me(State(state): State<UserState>, AuthUser(claims): AuthUser) -> ApiResult<Response> {
    let user = find_user(&state.pool, claims.id)
        .await?
        .ok_or_else(|| ApiError::not_found("User not found"))?;
    Ok(ok("User retrieved successfully", user))
}

/// `GET /users/{user_id}`
#[utoipa::path(get, path = "/users/{user_id}", tag = "accounts", security(("cookie" = []), ("bearer" = [])),
    params(("user_id" = String, Path, description = "User UUID")),
    responses((status = 200, body = UserView), (status = 401), (status = 404, description = "User not found")))]
pub async fn user_by_id(
    State(state): State<UserState>,
    AuthUser(_): AuthUser,
    Path(user_id): Path<String>,
) -> ApiResult<Response> {
    let id = Uuid::parse_str(user_id.trim()).map_err(|_| ApiError::not_found("User not found"))?;
    let user = find_user(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found("User not found"))?;
    Ok(ok("User retrieved successfully", user))
}

/// `GET /search?q=`: up to 20 users whose username or email contains `q`
/// (case-insensitive), never the caller. Failures answer an empty list.
#[utoipa::path(get, path = "/search", tag = "accounts", security(("cookie" = []), ("bearer" = [])),
    params(("q" = Option<String>, Query, description = "Substring of a username or email")),
    responses((status = 200, body = [SearchHit]), (status = 401)))]
pub async fn search(
    State(state): State<UserState>,
    AuthUser(claims): AuthUser,
    RawQuery(query): RawQuery,
) -> Response {
    let q = query::param(query.as_deref(), "q");
    let q = js_trim(&q);
    if q.is_empty() {
        return ok_data(Vec::<SearchHit>::new());
    }
    let rows: Result<Vec<(Uuid, String, String)>, _> = sqlx::query_as(
        "SELECT id, username, email FROM users \
         WHERE (username ILIKE '%' || $1 || '%' OR email ILIKE '%' || $1 || '%') AND id <> $2 \
         LIMIT 20",
    )
    .bind(q)
    .bind(claims.id)
    .fetch_all(&state.pool)
    .await;
    let hits = rows
        .inspect_err(|err| tracing::warn!(error = %err, "search failed"))
        .unwrap_or_default()
        .into_iter()
        .map(|(id, username, email)| SearchHit {
            id,
            username,
            email,
        })
        .collect::<Vec<_>>();
    ok_data(hits)
}

/// Hourly: forget expired revocations in memory and in the table.
pub fn spawn_revocation_upkeep(
    pool: PgPool,
    revocations: Revocations,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
            }
            revocations.purge_expired();
            if let Err(err) = sqlx::query("DELETE FROM revoked_tokens WHERE expires_at < now()")
                .execute(&pool)
                .await
            {
                tracing::warn!(error = %err, "purging expired revocations failed");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_rule_matches_the_original_regex() {
        assert!(password_rule("Abcdef1!"));
        assert!(
            password_rule("Abcdef1#!"),
            "# after the first character is fine"
        );
        assert!(
            !password_rule("#Abcdef1!"),
            "first character must be in the class"
        );
        assert!(!password_rule("abcdef1!"), "needs an upper-case letter");
        assert!(!password_rule("ABCDEF1!"), "needs a lower-case letter");
        assert!(!password_rule("Abcdefg!"), "needs a digit");
        assert!(!password_rule("Abcdefg1"), "needs a special");
        assert!(
            !password_rule("Ab1\n!cdefg"),
            "lookaheads stop at a line break"
        );
    }

    #[test]
    fn username_characters() {
        assert!(username_chars("alice_b-2"));
        assert!(!username_chars("alice b"));
        assert!(!username_chars("alicé"));
        assert!(!username_chars(""));
    }
}

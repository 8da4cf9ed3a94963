//! The error envelopes of the wire contract (§2.2).
//!
//! * handled errors: `{"code":<status>,"message":"…"}`
//! * validation errors: HTTP 400 `{"status":400,"message":"Validation failed","errors":[{"field","message"}]}`
//! * unexpected errors: logged with their cause, answered with a generic 500 that leaks nothing.

use std::borrow::Cow;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;

/// Result type of every handler.
pub type ApiResult<T> = Result<T, ApiError>;

/// One entry of the validation envelope's `errors` array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Every error a handler can return, rendered in the contract's shape.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A deliberate refusal with a client-facing message: `{"code","message"}`.
    #[error("{status}: {message}")]
    Handled {
        status: StatusCode,
        message: Cow<'static, str>,
    },
    /// Input that failed the field rules: the validation envelope.
    #[error("validation failed: {0:?}")]
    Validation(Vec<FieldError>),
    /// Anything unexpected. The cause is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A handled error with the given status and message.
    pub fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self::Handled {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// An unexpected failure; `cause` goes to the log only.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::Internal(cause.to_string())
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Handled { status, .. } => *status,
            Self::Validation(_) => StatusCode::BAD_REQUEST,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        Self::internal(format!("database: {err}"))
    }
}

#[derive(Serialize)]
struct HandledBody<'a> {
    code: u16,
    message: &'a str,
}

#[derive(Serialize)]
struct ValidationBody<'a> {
    status: u16,
    message: &'static str,
    errors: &'a [FieldError],
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Handled { status, message } => (
                *status,
                Json(HandledBody {
                    code: status.as_u16(),
                    message,
                }),
            )
                .into_response(),
            Self::Validation(errors) => (
                StatusCode::BAD_REQUEST,
                Json(ValidationBody {
                    status: 400,
                    message: "Validation failed",
                    errors,
                }),
            )
                .into_response(),
            Self::Internal(cause) => {
                tracing::error!(error = %cause, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(HandledBody {
                        code: 500,
                        message: "Internal Server Error",
                    }),
                )
                    .into_response()
            }
        }
    }
}

/// Success envelope `{"status":200,"message":…,"data":…}`; `message` and `data` are
/// omitted when `None`, as some endpoints of the contract do.
#[derive(Debug, Serialize)]
pub struct Envelope<T: Serialize> {
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
}

/// `200 {"status":200,"message":message,"data":data}`.
pub fn ok<T: Serialize>(message: &'static str, data: T) -> Response {
    Json(Envelope {
        status: 200,
        message: Some(message),
        data: Some(data),
    })
    .into_response()
}

/// `200 {"status":200,"data":data}` (no `message`).
pub fn ok_data<T: Serialize>(data: T) -> Response {
    Json(Envelope {
        status: 200,
        message: None,
        data: Some(data),
    })
    .into_response()
}

/// `200 {"status":200,"message":message}` (no `data`).
pub fn ok_message(message: &'static str) -> Response {
    Json(Envelope::<()> {
        status: 200,
        message: Some(message),
        data: None,
    })
    .into_response()
}

/// Unknown route or method: 404 in the handled-error shape (the original answered
/// Express's HTML page; JSON with `nosniff` cannot reflect markup back).
pub async fn not_found(method: http::Method, uri: http::Uri) -> ApiError {
    ApiError::not_found(format!("Cannot {} {}", method, uri.path()))
}

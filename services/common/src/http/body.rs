//! Lenient request-body extraction matching Express's `json()` + `urlencoded()`.
//!
//! * an empty body is `{}`, whatever the content type (§2.3: the web client sends
//!   `Content-Type: application/json` with no body);
//! * `application/json` (and `+json`) must be an object or array, else 400;
//! * `application/x-www-form-urlencoded` becomes an object of strings;
//! * other content types are ignored (`{}`), as Express does;
//! * the size limit is the router's `DefaultBodyLimit` (413 in the error shape).

use axum::extract::{FromRequest, Request};
use bytes::Bytes;
use http::StatusCode;
use http::header::CONTENT_TYPE;
use serde_json::{Map, Value};

use super::error::ApiError;

/// A parsed request body as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Body(pub Value);

impl Body {
    /// The value of a top-level field, if the body is an object holding it.
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.0.as_object().and_then(|object| object.get(name))
    }
}

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(|value| value.to_ascii_lowercase())
            .unwrap_or_default();
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            let status = rejection.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(status, "Request body too large")
            } else {
                ApiError::bad_request("Could not read the request body")
            }
        })?;
        parse(&content_type, &bytes).map(Body)
    }
}

/// Parses `bytes` according to `content_type` (already lower-cased).
pub fn parse(content_type: &str, bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if mime == "application/json" || mime.ends_with("+json") {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|_| ApiError::bad_request("Malformed JSON in request body"))?;
        if !(value.is_object() || value.is_array()) {
            return Err(ApiError::bad_request(
                "Request body must be a JSON object or array",
            ));
        }
        Ok(value)
    } else if mime == "application/x-www-form-urlencoded" {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(bytes)
            .map_err(|_| ApiError::bad_request("Malformed form body"))?;
        Ok(Value::Object(
            pairs
                .into_iter()
                .map(|(key, value)| (key, Value::String(value)))
                .collect(),
        ))
    } else {
        Ok(Value::Object(Map::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_json_body_is_an_empty_object() {
        assert_eq!(parse("application/json", b"").unwrap(), json!({}));
        assert_eq!(parse("application/json", b"  \n").unwrap(), json!({}));
    }

    #[test]
    fn json_scalars_and_garbage_are_refused() {
        assert!(parse("application/json", b"\"x\"").is_err());
        assert!(parse("application/json", b"{").is_err());
        assert_eq!(
            parse("application/json; charset=utf-8", br#"{"a":1}"#).unwrap(),
            json!({"a":1})
        );
    }

    #[test]
    fn urlencoded_becomes_an_object_of_strings() {
        assert_eq!(
            parse("application/x-www-form-urlencoded", b"a=1&b=x+y").unwrap(),
            json!({"a":"1","b":"x y"})
        );
    }

    #[test]
    fn unknown_content_types_are_ignored() {
        assert_eq!(parse("text/plain", b"hello").unwrap(), json!({}));
    }
}

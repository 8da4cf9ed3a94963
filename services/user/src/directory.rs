//! The Signal key directory (§3.5–§3.8): prekey bundles and encrypted key
//! backups, one row per (user, device).
//!
//! * publish shallow-merges the new bundle's top-level keys into the stored one,
//!   after checking the signed prekey's XEdDSA signature against the identity key;
//! * the public fetch hands out each one-time prekey exactly once: the user's
//!   rows are locked (`FOR UPDATE`) while the first prekey is popped;
//! * backups are opaque, stored and returned as sent, at most one per device per
//!   `key_backup_interval`.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use parley_common::auth::AuthUser;
use parley_common::http::error::{ok_data, ok_message};
use parley_common::http::validate::{as_text, js_length, js_trim, js_truthy};
use parley_common::http::{ApiError, ApiResult, Body, Validator, query};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::UserState;
use crate::xeddsa::verify_signed_prekey;

/// Largest serialized bundle accepted (§3.5).
const MAX_BUNDLE_CHARS: usize = 20_000;
/// The bundle keys a fetch returns (§3.6).
const PUBLIC_BUNDLE_KEYS: [&str; 4] = ["identityKey", "registrationId", "signedPreKey", "preKeys"];

/// Body of `POST /prekeys`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct PublishRequest {
    /// The publishing device (≤ 255 characters).
    #[schema(rename = "deviceId")]
    device_id: String,
    /// `{identityKey, registrationId, signedPreKey{id|keyId, publicKey, signature}, preKeys[]}`, stored verbatim.
    #[schema(value_type = Object)]
    bundle: Value,
}

/// Body of `POST /signal-keys`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct BackupRequest {
    #[schema(rename = "deviceId")]
    device_id: String,
    /// `{encrypted, iv, salt, version, deviceId}`, stored verbatim.
    #[schema(rename = "encryptedBundle", value_type = Object)]
    encrypted_bundle: Value,
}

/// Checks the signed prekey of a (merged) bundle.
fn verify_bundle(bundle: &Map<String, Value>) -> Result<(), ApiError> {
    let text = |value: Option<&Value>| value.and_then(Value::as_str).map(str::to_owned);
    let identity = text(bundle.get("identityKey"));
    let signed = bundle.get("signedPreKey");
    let public = text(signed.and_then(|s| s.get("publicKey")));
    let signature = text(signed.and_then(|s| s.get("signature")));
    let (Some(identity), Some(public), Some(signature)) = (identity, public, signature) else {
        return Err(ApiError::bad_request(
            "Invalid prekey bundle: identityKey, signedPreKey.publicKey and signedPreKey.signature are required",
        ));
    };
    verify_signed_prekey(&identity, &public, &signature)
        .map_err(|err| ApiError::bad_request(format!("Invalid prekey bundle: {err}")))
}

/// `POST /prekeys`
#[utoipa::path(post, path = "/prekeys", tag = "keys", request_body = PublishRequest,
    security(("cookie" = []), ("bearer" = [])),
    responses((status = 200, description = "Prekey bundle published / updated"),
              (status = 400, description = "Validation failed or the signed prekey does not verify"),
              (status = 401), (status = 429)))]
pub async fn publish_bundle(
    State(state): State<UserState>,
    AuthUser(claims): AuthUser,
    body: Body,
) -> ApiResult<Response> {
    let mut v = Validator::new();
    let device_id = js_trim(&as_text(body.field("deviceId"))).to_owned();
    v.check(!device_id.is_empty(), "deviceId", "deviceId is required");
    v.check(
        js_length(&device_id) <= 255,
        "deviceId",
        "deviceId must be at most 255 characters",
    );
    let bundle = body.field("bundle");
    v.check(!as_text(bundle).is_empty(), "bundle", "bundle is required");
    let object = bundle.and_then(Value::as_object).filter(|object| {
        serde_json::to_string(object).is_ok_and(|text| text.chars().count() <= MAX_BUNDLE_CHARS)
    });
    v.check(
        object.is_some(),
        "bundle",
        "bundle must be a JSON object and not exceed 20KB",
    );
    v.finish()?;
    let new = object.expect("validated above");

    loop {
        let mut tx = state.pool.begin().await?;
        let existing: Option<String> = sqlx::query_scalar(
            "SELECT bundle::text FROM prekey_bundles WHERE user_id = $1 AND device_id = $2 FOR UPDATE",
        )
        .bind(claims.id)
        .bind(&device_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(existing) = existing {
            let mut merged: Map<String, Value> =
                serde_json::from_str(&existing).map_err(ApiError::internal)?;
            for (key, value) in new {
                merged.insert(key.clone(), value.clone());
            }
            verify_bundle(&merged)?;
            sqlx::query(
                "UPDATE prekey_bundles SET bundle = $3::json, updated_at = now() WHERE user_id = $1 AND device_id = $2",
            )
            .bind(claims.id)
            .bind(&device_id)
            .bind(serde_json::to_string(&merged).map_err(ApiError::internal)?)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(ok_message("Prekey bundle updated"));
        }
        verify_bundle(new)?;
        let inserted = sqlx::query(
            "INSERT INTO prekey_bundles (user_id, device_id, bundle) VALUES ($1, $2, $3::json) \
             ON CONFLICT (user_id, device_id) DO NOTHING",
        )
        .bind(claims.id)
        .bind(&device_id)
        .bind(serde_json::to_string(new).map_err(ApiError::internal)?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if inserted.rows_affected() == 1 {
            return Ok(ok_message("Prekey bundle published"));
        }
        // A concurrent first publish won the insert: merge into its row.
    }
}

#[derive(Serialize)]
struct FetchedBundle {
    #[serde(rename = "userId")]
    user_id: Uuid,
    #[serde(rename = "deviceId")]
    device_id: String,
    bundle: Map<String, Value>,
}

fn no_bundle() -> ApiError {
    ApiError::not_found("No prekey bundle found for user")
}

fn pre_keys(bundle: &Map<String, Value>) -> Option<&Vec<Value>> {
    bundle.get("preKeys").and_then(Value::as_array)
}

/// `GET /prekeys/{user_id}` (public): the newest usable bundle with at most one
/// one-time prekey, which is consumed.
#[utoipa::path(get, path = "/prekeys/{user_id}", tag = "keys",
    params(("user_id" = String, Path, description = "Owner's user id")),
    responses((status = 200, description = "Bundle with 0 or 1 one-time prekey"),
              (status = 404, description = "No prekey bundle found for user"), (status = 429)))]
pub async fn fetch_bundle(
    State(state): State<UserState>,
    Path(user_id): Path<String>,
) -> ApiResult<Response> {
    let user_id = Uuid::parse_str(user_id.trim()).map_err(|_| no_bundle())?;
    let mut tx = state.pool.begin().await?;
    let rows: Vec<(Uuid, String, String)> = sqlx::query_as(
        "SELECT id, device_id, bundle::text FROM prekey_bundles WHERE user_id = $1 \
         ORDER BY created_at DESC, id FOR UPDATE",
    )
    .bind(user_id)
    .fetch_all(&mut *tx)
    .await?;
    let parsed: Vec<(Uuid, String, Map<String, Value>)> = rows
        .into_iter()
        .filter_map(|(id, device, text)| serde_json::from_str(&text).ok().map(|b| (id, device, b)))
        .collect();
    let chosen = parsed
        .iter()
        .position(|(_, _, b)| pre_keys(b).is_some_and(|keys| !keys.is_empty()))
        .or_else(|| {
            parsed
                .iter()
                .position(|(_, _, b)| b.contains_key("preKeys"))
        })
        .ok_or_else(no_bundle)?;
    let (row_id, device_id, mut stored) =
        parsed.into_iter().nth(chosen).expect("index from position");

    let handed_out = match stored.get_mut("preKeys").and_then(Value::as_array_mut) {
        Some(keys) if !keys.is_empty() => Some(keys.remove(0)),
        _ => None,
    };
    if handed_out.is_some() {
        sqlx::query(
            "UPDATE prekey_bundles SET bundle = $2::json, updated_at = now() WHERE id = $1",
        )
        .bind(row_id)
        .bind(serde_json::to_string(&stored).map_err(ApiError::internal)?)
        .execute(&mut *tx)
        .await?;
    } else {
        state
            .metrics
            .prekey_pool_exhausted
            .with_label_values(&[] as &[&str])
            .inc();
    }
    tx.commit().await?;

    let mut bundle = Map::new();
    for key in PUBLIC_BUNDLE_KEYS {
        if key == "preKeys" {
            bundle.insert(
                key.to_owned(),
                Value::Array(handed_out.clone().into_iter().collect()),
            );
        } else if let Some(value) = stored.get(key) {
            bundle.insert(key.to_owned(), value.clone());
        }
    }
    Ok(ok_data(FetchedBundle {
        user_id,
        device_id,
        bundle,
    }))
}

/// `POST /signal-keys`: store this device's encrypted key backup.
#[utoipa::path(post, path = "/signal-keys", tag = "keys", request_body = BackupRequest,
    security(("cookie" = []), ("bearer" = [])),
    responses((status = 200, description = "Encrypted keys stored / updated"),
              (status = 400, description = "Missing fields, invalid format or device mismatch"),
              (status = 401), (status = 429, description = "One backup per device per 24 h")))]
pub async fn store_backup(
    State(state): State<UserState>,
    AuthUser(claims): AuthUser,
    body: Body,
) -> ApiResult<Response> {
    let device = body.field("deviceId");
    let backup = body.field("encryptedBundle");
    let audit = |outcome: &str| {
        tracing::info!(target: "audit", user_id = %claims.id, device_id = ?device, outcome, "key backup attempt");
    };
    if !js_truthy(device) || !js_truthy(backup) {
        audit("missing fields");
        return Err(ApiError::bad_request(
            "deviceId and encryptedBundle are required",
        ));
    }
    let backup = backup.expect("truthy");
    let well_formed = ["encrypted", "iv", "salt", "version"]
        .iter()
        .all(|key| js_truthy(backup.get(key)));
    if !well_formed {
        audit("invalid format");
        return Err(ApiError::bad_request("Invalid encrypted bundle format"));
    }
    if backup.get("deviceId") != device {
        audit("device mismatch");
        return Err(ApiError::bad_request("Device ID mismatch"));
    }
    let Some(device_id) = device.and_then(Value::as_str).map(str::to_owned) else {
        audit("device id not a string");
        return Err(ApiError::bad_request("deviceId must be a string"));
    };
    if js_length(&device_id) > 255 {
        audit("device id too long");
        return Err(ApiError::bad_request(
            "deviceId must be at most 255 characters",
        ));
    }
    let backup_text = serde_json::to_string(backup).map_err(ApiError::internal)?;
    let interval =
        time::Duration::try_from(state.key_backup_interval).map_err(ApiError::internal)?;

    loop {
        let mut tx = state.pool.begin().await?;
        let existing: Option<Option<OffsetDateTime>> = sqlx::query_scalar(
            "SELECT last_backup_at FROM prekey_bundles WHERE user_id = $1 AND device_id = $2 FOR UPDATE",
        )
        .bind(claims.id)
        .bind(&device_id)
        .fetch_optional(&mut *tx)
        .await?;
        match existing {
            Some(last) => {
                if let Some(last) = last {
                    let elapsed = OffsetDateTime::now_utc() - last;
                    if elapsed < interval {
                        let hours = ((interval - elapsed).as_seconds_f64() / 3600.0).ceil() as i64;
                        audit("rate limited");
                        return Err(ApiError::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            format!(
                                "Rate limit: Please wait {hours} hours before backing up keys again"
                            ),
                        ));
                    }
                }
                sqlx::query(
                    "UPDATE prekey_bundles SET key_backup = $3::json, last_backup_at = now(), updated_at = now() \
                     WHERE user_id = $1 AND device_id = $2",
                )
                .bind(claims.id)
                .bind(&device_id)
                .bind(&backup_text)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                audit("updated");
                return Ok(ok_message("Encrypted keys updated"));
            }
            None => {
                let inserted = sqlx::query(
                    "INSERT INTO prekey_bundles (user_id, device_id, key_backup, last_backup_at) \
                     VALUES ($1, $2, $3::json, now()) ON CONFLICT (user_id, device_id) DO NOTHING",
                )
                .bind(claims.id)
                .bind(&device_id)
                .bind(&backup_text)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                if inserted.rows_affected() == 1 {
                    audit("stored");
                    return Ok(ok_message("Encrypted keys stored"));
                }
            }
        }
    }
}

#[derive(Serialize)]
struct FetchedBackup<'a> {
    #[serde(rename = "deviceId")]
    device_id: &'a str,
    #[serde(rename = "encryptedBundle")]
    encrypted_bundle: &'a RawValue,
}

/// `GET /signal-keys?deviceId=`: this device's backup, or HTTP 200 with
/// `{"status":404}` when there is none (the web client needs the 200, §15.4).
#[utoipa::path(get, path = "/signal-keys", tag = "keys", security(("cookie" = []), ("bearer" = [])),
    params(("deviceId" = String, Query)),
    responses((status = 200, description = "The backup, or `{\"status\":404,\"message\":\"Operation failed\"}`"),
              (status = 400, description = "deviceId is required"), (status = 401), (status = 429)))]
pub async fn fetch_backup(
    State(state): State<UserState>,
    AuthUser(claims): AuthUser,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let device_id = query::param(query.as_deref(), "deviceId");
    if device_id.is_empty() {
        return Err(ApiError::bad_request("deviceId is required"));
    }
    let stored: Option<Option<String>> = sqlx::query_scalar(
        "SELECT key_backup::text FROM prekey_bundles WHERE user_id = $1 AND device_id = $2",
    )
    .bind(claims.id)
    .bind(&device_id)
    .fetch_optional(&state.pool)
    .await?;
    let Some(text) = stored.flatten() else {
        return Ok(Json(json!({"status": 404, "message": "Operation failed"})).into_response());
    };
    let raw = RawValue::from_string(text).map_err(ApiError::internal)?;
    Ok(ok_data(FetchedBackup {
        device_id: &device_id,
        encrypted_bundle: &raw,
    }))
}

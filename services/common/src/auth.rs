//! Authentication: Ed25519 JWTs, the key ring every service verifies against,
//! server-side revocation, token extraction and the `jwt` cookie (§2.1).
//!
//! Only the user service holds a [`TokenIssuer`]; every service holds an
//! [`Authenticator`] (key ring + revocation list) and gets the caller through the
//! [`AuthUser`] extractor.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::extract::{FromRef, FromRequestParts};
use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};
use http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::http::ApiError;
use crate::keys::{self, Jwks, KeyError};

/// Token lifetime: 24 h (§2.1).
pub const TOKEN_TTL: Duration = Duration::from_secs(86_400);

/// The claims of a Parley session token: the contract's `{username,email,id,iat,exp}`
/// plus a token id for revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub username: String,
    pub email: String,
    pub id: Uuid,
    pub iat: i64,
    pub exp: i64,
    pub jti: Uuid,
}

/// Signs session tokens with the current Ed25519 key.
#[derive(Clone)]
pub struct TokenIssuer {
    kid: String,
    key: EncodingKey,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// From a PKCS#8 PEM private key; the `kid` is the key's JWK thumbprint.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let signing = keys::signing_key_from_pem(pem)?;
        let key = EncodingKey::from_ed_pem(pem.trim().as_bytes())
            .map_err(|_| KeyError::InvalidSigningKey)?;
        Ok(Self {
            kid: keys::public_jwk(&signing).kid,
            key,
        })
    }

    /// The key id placed in every token header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Issues a token for a user; returns the token and its claims.
    pub fn issue(&self, id: Uuid, username: &str, email: &str) -> (String, Claims) {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let claims = Claims {
            username: username.to_owned(),
            email: email.to_owned(),
            id,
            iat: now,
            exp: now + TOKEN_TTL.as_secs() as i64,
            jti: Uuid::new_v4(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .expect("EdDSA signing with a valid key cannot fail");
        (token, claims)
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token")]
    Missing,
    #[error("invalid token")]
    Invalid,
    #[error("revoked token")]
    Revoked,
}

/// Tokens verified recently, at most this many (~0.5 KiB each).
const VERIFIED_CACHE_ENTRIES: u64 = 16_384;
/// How long a verification is remembered (the token's `exp` is checked on
/// every use regardless).
const VERIFIED_CACHE_TTL: Duration = Duration::from_secs(600);

/// The public keys tokens are verified against: current and previous.
///
/// A client sends the same token with every request for up to 24 h, and an
/// Ed25519 verification costs more than the rest of a typical read, so the
/// claims of tokens verified in the last ten minutes are remembered, keyed by
/// the whole token. Only valid tokens are remembered; expiry is checked on
/// every hit, and revocation by [`Authenticator::verify`] on every request. A
/// new key ring (new keys) starts with nothing remembered.
#[derive(Clone)]
pub struct KeyRing {
    keys: Arc<HashMap<String, DecodingKey>>,
    verified: moka::sync::Cache<Box<str>, Claims>,
}

impl Default for KeyRing {
    fn default() -> Self {
        Self::with_keys(HashMap::new())
    }
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeyRing {
    /// From a JWK Set.
    pub fn from_jwks(jwks: &Jwks) -> Result<Self, KeyError> {
        let mut keys = HashMap::new();
        for jwk in &jwks.keys {
            let key = DecodingKey::from_ed_components(&jwk.x)
                .map_err(|_| KeyError::UnsupportedJwk(jwk.kid.clone()))?;
            keys.insert(jwk.kid.clone(), key);
        }
        Ok(Self::with_keys(keys))
    }

    fn with_keys(keys: HashMap<String, DecodingKey>) -> Self {
        Self {
            keys: Arc::new(keys),
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_CACHE_ENTRIES)
                .time_to_live(VERIFIED_CACHE_TTL)
                .build(),
        }
    }

    /// Number of keys in the ring.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the ring is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies signature (by `kid`), algorithm and expiry, with no leeway.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if let Some(claims) = self.verified.get(token) {
            if claims.exp >= OffsetDateTime::now_utc().unix_timestamp() {
                return Ok(claims);
            }
            self.verified.invalidate(token);
            return Err(TokenError::Invalid);
        }
        let claims = self.verify_signed(token)?;
        self.verified.insert(token.into(), claims.clone());
        Ok(claims)
    }

    fn verify_signed(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.get(kid))
            .ok_or(TokenError::Invalid)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|_| TokenError::Invalid)
    }
}

/// Token ids revoked before their expiry, kept in memory until they expire.
///
/// Each service fills it from its own source (the user service from its table and
/// from logouts), so a check is one hash lookup.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    revoked: Arc<RwLock<HashMap<Uuid, i64>>>,
}

impl Revocations {
    /// Marks `jti` revoked until `exp` (unix seconds).
    pub fn revoke(&self, jti: Uuid, exp: i64) {
        self.revoked
            .write()
            .expect("revocation lock poisoned")
            .insert(jti, exp);
    }

    /// Whether `jti` is revoked.
    pub fn is_revoked(&self, jti: &Uuid) -> bool {
        self.revoked
            .read()
            .expect("revocation lock poisoned")
            .contains_key(jti)
    }

    /// Forgets revocations of tokens that have expired anyway.
    pub fn purge_expired(&self) {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        self.revoked
            .write()
            .expect("revocation lock poisoned")
            .retain(|_, exp| *exp >= now);
    }

    /// Number of remembered revocations.
    pub fn len(&self) -> usize {
        self.revoked.read().expect("revocation lock poisoned").len()
    }

    /// Whether no revocation is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Routing key of the event that revokes a session token everywhere.
pub const TOKEN_REVOKED: &str = "auth.token_revoked";

/// Keeps `revocations` in step with `auth.token_revoked` events from every
/// replica of every service. Returns once the subscription exists (or after
/// `wait` if the broker is down), so the caller can then load what was revoked
/// before it started without a gap.
pub async fn follow_revocations(
    broker: crate::events::Broker,
    revocations: Revocations,
    wait: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Revoked {
        jti: Uuid,
        expires_at: i64,
    }
    #[derive(Deserialize)]
    struct Envelope {
        data: Revoked,
    }
    let subscribed = Arc::new(tokio::sync::Notify::new());
    let ready = subscribed.notified();
    crate::events::subscribe_private(
        broker,
        vec![TOKEN_REVOKED.to_owned()],
        move |body| match serde_json::from_slice::<Envelope>(body) {
            Ok(event) => revocations.revoke(event.data.jti, event.data.expires_at),
            Err(err) => tracing::warn!(error = %err, "ignoring a malformed revocation event"),
        },
        subscribed.clone(),
        shutdown,
    );
    if tokio::time::timeout(wait, ready).await.is_err() {
        tracing::warn!(
            "not yet subscribed to token revocations; they will apply once the broker is reachable"
        );
    }
}

/// Loads the unexpired revocations of a service's `revoked_tokens` table into
/// memory (at start-up, after [`follow_revocations`] has subscribed).
pub async fn load_revocations(
    pool: &sqlx::PgPool,
    revocations: &Revocations,
) -> Result<(), sqlx::Error> {
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT jti, extract(epoch FROM expires_at)::bigint FROM revoked_tokens WHERE expires_at > now()",
    )
    .fetch_all(pool)
    .await?;
    for (jti, exp) in rows {
        revocations.revoke(jti, exp);
    }
    Ok(())
}

/// Records a revocation event in the service's own `revoked_tokens` table, so
/// a service that cannot read the user schema still knows every revocation
/// after a restart.
pub async fn persist_revocation(
    conn: &mut sqlx::PgConnection,
    data: &serde_json::Value,
) -> Result<(), crate::consumer::HandlerError> {
    use crate::consumer::HandlerError;
    let jti = data
        .get("jti")
        .and_then(|v| v.as_str())
        .and_then(|v| Uuid::parse_str(v).ok())
        .ok_or_else(|| HandlerError::Permanent("revocation without jti".into()))?;
    let user_id = data
        .get("userId")
        .and_then(|v| v.as_str())
        .and_then(|v| Uuid::parse_str(v).ok())
        .ok_or_else(|| HandlerError::Permanent("revocation without userId".into()))?;
    let exp = data
        .get("expiresAt")
        .and_then(|v| v.as_i64())
        .ok_or_else(|| HandlerError::Permanent("revocation without expiresAt".into()))?;
    let expires_at = OffsetDateTime::from_unix_timestamp(exp)
        .map_err(|err| HandlerError::Permanent(err.to_string()))?;
    sqlx::query(
        "INSERT INTO revoked_tokens (jti, user_id, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(jti)
    .bind(user_id)
    .bind(expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

impl Authenticator {
    /// The authenticator of a service whose schema has a `revoked_tokens` table:
    /// follows revocation events into `revocations` first, then loads the
    /// table, so nothing revoked in between is missed.
    pub async fn start(
        key_ring: KeyRing,
        revocations: Revocations,
        messages: AuthMessages,
        broker: crate::events::Broker,
        pool: &sqlx::PgPool,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<Self, sqlx::Error> {
        follow_revocations(
            broker,
            revocations.clone(),
            Duration::from_secs(5),
            shutdown,
        )
        .await;
        load_revocations(pool, &revocations).await?;
        Ok(Self {
            key_ring,
            revocations,
            messages,
        })
    }
}

/// The 401 messages of a service (they differ between services, §2.1).
#[derive(Debug, Clone, Copy)]
pub struct AuthMessages {
    pub missing: &'static str,
    pub invalid: &'static str,
}

/// Messages of the user and notification services.
pub const USER_AUTH_MESSAGES: AuthMessages = AuthMessages {
    missing: "Authentication required. Please log in.",
    invalid: "Invalid token. Please log in again.",
};

/// Verifies request tokens: key ring, revocations and the service's messages.
#[derive(Debug, Clone)]
pub struct Authenticator {
    pub key_ring: KeyRing,
    pub revocations: Revocations,
    pub messages: AuthMessages,
}

impl Authenticator {
    /// Verifies `token` and checks it was not revoked.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let claims = self.key_ring.verify(token)?;
        if self.revocations.is_revoked(&claims.jti) {
            return Err(TokenError::Revoked);
        }
        Ok(claims)
    }

    /// Authenticates a REST request: `Authorization: Bearer` first, then the
    /// `jwt` cookie.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Claims, ApiError> {
        let token = token_from_headers(headers)
            .ok_or_else(|| ApiError::unauthorized(self.messages.missing))?;
        self.verify(&token)
            .map_err(|_| ApiError::unauthorized(self.messages.invalid))
    }
}

/// The token of a request: a non-empty Bearer credential, else the `jwt` cookie.
pub fn token_from_headers(headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty());
    if let Some(token) = bearer {
        return Some(token.to_owned());
    }
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(cookie_token)
}

/// The value of the `jwt` entry of a Cookie header, not URL-decoded (§7.2).
pub fn cookie_token(cookie_header: &str) -> Option<String> {
    cookie_header
        .split(';')
        .map(str::trim)
        .find_map(|pair| pair.strip_prefix("jwt="))
        .filter(|token| !token.is_empty())
        .map(str::to_owned)
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct AuthUser(pub Claims);

impl<S> FromRequestParts<S> for AuthUser
where
    S: Send + Sync,
    Authenticator: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Authenticator::from_ref(state)
            .authenticate(&parts.headers)
            .map(AuthUser)
    }
}

/// How the `jwt` cookie is written (§2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookiePolicy {
    /// `Secure; SameSite=Strict` when served over https, else `SameSite=Lax`.
    pub secure: bool,
}

impl CookiePolicy {
    fn tail(self) -> &'static str {
        if self.secure {
            "HttpOnly; Secure; SameSite=Strict"
        } else {
            "HttpOnly; SameSite=Lax"
        }
    }

    /// `Set-Cookie` value carrying a fresh token, expiring with it.
    pub fn session(self, token: &str, now: SystemTime) -> String {
        format!(
            "jwt={token}; Path=/; Expires={}; {}",
            httpdate::fmt_http_date(now + TOKEN_TTL),
            self.tail()
        )
    }

    /// `Set-Cookie` value clearing the session cookie.
    pub fn cleared(self) -> String {
        format!(
            "jwt=; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT; {}",
            self.tail()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer_and_ring() -> (TokenIssuer, KeyRing) {
        let generated = keys::generate();
        let issuer = TokenIssuer::from_pem(&generated.private_pem).unwrap();
        let ring = KeyRing::from_jwks(&Jwks {
            keys: vec![generated.jwk],
        })
        .unwrap();
        (issuer, ring)
    }

    #[test]
    fn issued_token_verifies_with_the_ring() {
        let (issuer, ring) = issuer_and_ring();
        let id = Uuid::new_v4();
        let (token, claims) = issuer.issue(id, "alice", "alice@example.com");
        let verified = ring.verify(&token).unwrap();
        assert_eq!(verified, claims);
        assert_eq!(verified.exp - verified.iat, 86_400);
    }

    #[test]
    fn token_of_an_unknown_key_is_invalid() {
        let (issuer, _) = issuer_and_ring();
        let (_, other_ring) = issuer_and_ring();
        let (token, _) = issuer.issue(Uuid::new_v4(), "a", "a@b.c");
        assert_eq!(other_ring.verify(&token), Err(TokenError::Invalid));
    }

    #[test]
    fn tampered_token_is_invalid() {
        let (issuer, ring) = issuer_and_ring();
        let (token, _) = issuer.issue(Uuid::new_v4(), "a", "a@b.c");
        // The genuine token is remembered; a copy with other claims is not it.
        assert!(ring.verify(&token).is_ok());
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            br#"{"username":"root","email":"r@x.y","id":"00000000-0000-0000-0000-000000000000","iat":1,"exp":99999999999,"jti":"00000000-0000-0000-0000-000000000000"}"#,
        );
        assert_eq!(ring.verify(&parts.join(".")), Err(TokenError::Invalid));
    }

    #[test]
    fn a_remembered_token_is_refused_once_it_expires() {
        let generated = keys::generate();
        let issuer = TokenIssuer::from_pem(&generated.private_pem).unwrap();
        let ring = KeyRing::from_jwks(&Jwks {
            keys: vec![generated.jwk],
        })
        .unwrap();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let claims = Claims {
            username: "a".into(),
            email: "a@b.c".into(),
            id: Uuid::new_v4(),
            iat: now,
            exp: now + 1,
            jti: Uuid::new_v4(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(issuer.kid().to_owned());
        let token = jsonwebtoken::encode(&header, &claims, &issuer.key).unwrap();
        assert_eq!(ring.verify(&token), Ok(claims.clone()));
        assert_eq!(ring.verify(&token), Ok(claims), "served from memory");
        std::thread::sleep(Duration::from_millis(2_100));
        assert_eq!(ring.verify(&token), Err(TokenError::Invalid));
        assert_eq!(ring.verify(&token), Err(TokenError::Invalid), "forgotten");
    }

    #[test]
    fn revoked_token_is_refused() {
        // The first verification is remembered: revocation must still apply.
        let (issuer, key_ring) = issuer_and_ring();
        let auth = Authenticator {
            key_ring,
            revocations: Revocations::default(),
            messages: USER_AUTH_MESSAGES,
        };
        let (token, claims) = issuer.issue(Uuid::new_v4(), "a", "a@b.c");
        assert!(auth.verify(&token).is_ok());
        auth.revocations.revoke(claims.jti, claims.exp);
        assert_eq!(auth.verify(&token), Err(TokenError::Revoked));
    }

    #[test]
    fn bearer_wins_over_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, "a=b; jwt=fromcookie".parse().unwrap());
        assert_eq!(token_from_headers(&headers).as_deref(), Some("fromcookie"));
        headers.insert(AUTHORIZATION, "Bearer frombearer".parse().unwrap());
        assert_eq!(token_from_headers(&headers).as_deref(), Some("frombearer"));
    }

    #[test]
    fn cookie_attributes_follow_the_contract() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            CookiePolicy { secure: false }.session("T", now),
            "jwt=T; Path=/; Expires=Wed, 15 Nov 2023 22:13:20 GMT; HttpOnly; SameSite=Lax"
        );
        assert_eq!(
            CookiePolicy { secure: true }.cleared(),
            "jwt=; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; Secure; SameSite=Strict"
        );
    }
}

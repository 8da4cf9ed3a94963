//! Tokens the platform must refuse.
//!
//! The suite cannot mint real tokens: only the user service holds the signing
//! key. It can take a real token apart and forge look-alikes: the same header
//! (`EdDSA`, the platform's `kid`) and claims signed by a random Ed25519 key; the
//! same with `exp` in the past; `alg: none`; an HMAC token. With
//! `E2E_JWT_SIGNING_KEY_FILE` (the local runner knows the key) it also signs an
//! expired token with the platform's real key, and a fresh one as a control.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

use crate::settings;

/// The decoded header and claims of a JWT (no verification).
pub fn decode_parts(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut part = || {
        let text = parts.next().expect("a JWT has three parts");
        let bytes = URL_SAFE_NO_PAD.decode(text).expect("base64url JWT part");
        serde_json::from_slice::<Value>(&bytes).expect("JSON JWT part")
    };
    let header = part();
    let claims = part();
    (header, claims)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Signs `claims` with an Ed25519 key (PKCS#8 PEM) under `kid`.
pub fn sign_eddsa(pem: &str, kid: &str, claims: &Value) -> String {
    let key = EncodingKey::from_ed_pem(pem.as_bytes()).expect("Ed25519 PEM");
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).expect("signing")
}

/// `real`'s claims with a fresh `jti` and the given times.
fn claims_at(real: &str, iat: i64, exp: i64) -> Value {
    let (_, mut claims) = decode_parts(real);
    claims["iat"] = iat.into();
    claims["exp"] = exp.into();
    claims["jti"] = uuid::Uuid::new_v4().to_string().into();
    claims
}

/// A token the platform must refuse, and what it is.
#[derive(Debug, Clone)]
pub struct BadToken {
    pub kind: &'static str,
    pub token: String,
}

/// Forged and expired look-alikes of `real` (a token the platform issued), plus
/// the properly signed expired one when the signing key is known.
pub fn bad_tokens(real: &str) -> Vec<BadToken> {
    let (header, _) = decode_parts(real);
    let kid = header["kid"].as_str().unwrap_or("").to_owned();
    let random = parley_keys::generate();
    let t = now();
    let mut tokens = vec![
        BadToken {
            kind: "forged (random key, the platform's kid)",
            token: sign_eddsa(&random.private_pem, &kid, &claims_at(real, t, t + 3600)),
        },
        BadToken {
            kind: "forged (random key, its own kid)",
            token: sign_eddsa(
                &random.private_pem,
                &random.jwk.kid,
                &claims_at(real, t, t + 3600),
            ),
        },
        BadToken {
            kind: "expired (random key)",
            token: sign_eddsa(
                &random.private_pem,
                &kid,
                &claims_at(real, t - 2 * 86_400, t - 86_400),
            ),
        },
        BadToken {
            kind: "alg none",
            token: unsigned(&kid, &claims_at(real, t, t + 3600)),
        },
        BadToken {
            kind: "HS256 keyed with the kid",
            token: jsonwebtoken::encode(
                &Header {
                    kid: Some(kid.clone()),
                    ..Header::new(Algorithm::HS256)
                },
                &claims_at(real, t, t + 3600),
                &EncodingKey::from_secret(kid.as_bytes()),
            )
            .expect("signing"),
        },
        BadToken {
            kind: "tampered claims (real signature)",
            token: tampered(real),
        },
        BadToken {
            kind: "garbage",
            token: "not.a.jwt".to_owned(),
        },
    ];
    if let Some((pem, kid)) = platform_key() {
        tokens.push(BadToken {
            kind: "expired (the platform's own key)",
            token: sign_eddsa(&pem, &kid, &claims_at(real, t - 2 * 86_400, t - 1)),
        });
    }
    tokens
}

/// The platform's signing key and its kid, from `E2E_JWT_SIGNING_KEY_FILE`.
pub fn platform_key() -> Option<(String, String)> {
    let path = settings().jwt_signing_key_file.as_ref()?;
    let pem = std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("E2E_JWT_SIGNING_KEY_FILE={path}: {err}"));
    let signing = parley_keys::signing_key_from_pem(&pem)
        .unwrap_or_else(|err| panic!("E2E_JWT_SIGNING_KEY_FILE={path}: {err}"));
    Some((pem, parley_keys::public_jwk(&signing).kid))
}

/// A fresh token signed with the platform's key for `real`'s user: the control
/// that proves the key file is right (so an expired token is refused for its
/// `exp` alone).
pub fn fresh_with_platform_key(real: &str) -> Option<String> {
    let (pem, kid) = platform_key()?;
    let t = now();
    Some(sign_eddsa(&pem, &kid, &claims_at(real, t, t + 3600)))
}

/// `header.claims.` with `alg: none`.
fn unsigned(kid: &str, claims: &Value) -> String {
    let header = serde_json::json!({"alg": "none", "typ": "JWT", "kid": kid});
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// `real` with its claims changed (a later `exp`) and its signature kept.
fn tampered(real: &str) -> String {
    let mut parts = real.split('.');
    let header = parts.next().expect("header");
    let _ = parts.next();
    let signature = parts.next().expect("signature");
    let (_, mut claims) = decode_parts(real);
    claims["exp"] = (claims["exp"].as_i64().unwrap_or(0) + 86_400).into();
    format!(
        "{header}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

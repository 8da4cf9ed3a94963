//! Ed25519 JWT signing keys and their JWKS form.
//!
//! Pure helpers shared by `parley keys generate` and the operator (which
//! generates and rotates the keys of a cluster): a signing key travels as a
//! PKCS#8 PEM, public keys as a JWK Set whose `kid` is the RFC 7638 thumbprint
//! of the key. No I/O, no runtime.
#![forbid(unsafe_code)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Errors reading or writing key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the signing key is not an Ed25519 PKCS#8 PEM")]
    InvalidSigningKey,
    #[error("the JWK Set is not valid JSON: {0}")]
    InvalidJwks(String),
    #[error("JWK {0} is not an Ed25519 (OKP) key")]
    UnsupportedJwk(String),
}

/// One public key in JWK form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub kid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

/// A JWK Set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

impl Jwks {
    /// Parses a JWK Set, keeping only what Parley can use and refusing the rest.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let jwks: Jwks =
            serde_json::from_str(text).map_err(|err| KeyError::InvalidJwks(err.to_string()))?;
        for key in &jwks.keys {
            if key.kty != "OKP" || key.crv != "Ed25519" {
                return Err(KeyError::UnsupportedJwk(key.kid.clone()));
            }
        }
        Ok(jwks)
    }
}

/// A freshly generated key pair.
#[derive(Debug)]
pub struct GeneratedKey {
    /// PKCS#8 PEM of the private key.
    pub private_pem: String,
    /// The public key as a JWK.
    pub jwk: Jwk,
}

/// Generates an Ed25519 key pair.
pub fn generate() -> GeneratedKey {
    let signing = SigningKey::generate(&mut rand::rngs::OsRng);
    let private_pem = signing
        .to_pkcs8_pem(LineEnding::LF)
        .expect("an Ed25519 key encodes")
        .to_string();
    GeneratedKey {
        private_pem,
        jwk: public_jwk(&signing),
    }
}

/// Reads a PKCS#8 PEM signing key.
pub fn signing_key_from_pem(pem: &str) -> Result<SigningKey, KeyError> {
    SigningKey::from_pkcs8_pem(pem.trim()).map_err(|_| KeyError::InvalidSigningKey)
}

/// The JWK of a signing key's public half, with its thumbprint as `kid`.
pub fn public_jwk(signing: &SigningKey) -> Jwk {
    let x = URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes());
    Jwk {
        kid: thumbprint(&x),
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        x,
        alg: Some("EdDSA".into()),
        use_: Some("sig".into()),
    }
}

/// RFC 7638 thumbprint of an Ed25519 JWK, base64url without padding.
pub fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_round_trips_through_pem() {
        let key = generate();
        let signing = signing_key_from_pem(&key.private_pem).unwrap();
        assert_eq!(public_jwk(&signing), key.jwk);
        assert_eq!(key.jwk.kid.len(), 43);
    }

    #[test]
    fn rfc8037_thumbprint_example() {
        // RFC 8037 appendix A.3.
        assert_eq!(
            thumbprint("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn jwks_refuses_other_key_types() {
        let text = r#"{"keys":[{"kty":"RSA","crv":"","x":"","kid":"a"}]}"#;
        assert!(matches!(
            Jwks::parse(text),
            Err(KeyError::UnsupportedJwk(_))
        ));
    }
}

//! Verification of Signal signed-prekey signatures.
//!
//! A Signal client signs its signed prekey with its identity key. The identity
//! key is an X25519 (Montgomery) key, so the signature is not plain Ed25519 but
//! libsignal's "XEdDSA"-style `curve25519_sign`: the signer converts its X25519
//! private key to an Ed25519 key pair, signs with Ed25519, and stores the sign
//! of the Edwards x-coordinate of its public key in the otherwise unused top
//! bit of the signature (bit 7 of byte 63).
//!
//! Verification, as libsignal's `curve25519_verify` (and
//! `@privacyresearch/libsignal-protocol-typescript`, which runs that C code
//! compiled to JavaScript) does it:
//!
//! 1. strip the `0x05` type byte from the identity key, leaving the Montgomery
//!    u-coordinate;
//! 2. map u to the Edwards point whose sign bit is the top bit of signature
//!    byte 63, and clear that bit in the signature;
//! 3. verify the signature `R || s` with Ed25519 over the signed prekey's
//!    public key **as serialized, all 33 bytes including `0x05`**.
//!
//! The check itself is cofactorless (`[s]B - [k]A` must encode to exactly
//! `R`), as in libsignal. This module is stricter than libsignal's Rust verifier in ways no
//! honest client can trip: the u-coordinate must be canonically encoded (< p,
//! top bit clear), the identity key must not be a low-order point (under one,
//! signatures can be forged with no private key), and the signature must pass
//! Ed25519 `verify_strict` (`s` reduced mod ℓ, `R` not of low order), so a
//! signature cannot be re-encoded into a second valid one.
//!
//! The test vectors in `tests/fixtures/libsignal_bundles.json` come from
//! `scripts/fixtures/gen-libsignal-vectors.mjs`, which uses the web client's
//! library.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use curve25519_dalek::montgomery::MontgomeryPoint;
use ed25519_dalek::{Signature, VerifyingKey};

/// Length of a serialized Signal public key: type byte `0x05` + 32 bytes.
const SERIALIZED_KEY_LEN: usize = 33;
/// Length of a bare Curve25519 public key (the Montgomery u-coordinate).
const RAW_KEY_LEN: usize = 32;
/// The type byte libsignal puts in front of every Curve25519 public key.
const DJB_KEY_TYPE: u8 = 0x05;
/// Length of an XEdDSA / Ed25519 signature.
const SIGNATURE_LEN: usize = 64;

/// A field of a published prekey bundle, named as in the bundle's JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleField {
    /// `identityKey`
    IdentityKey,
    /// `signedPreKey.publicKey`
    SignedPreKeyPublicKey,
    /// `signedPreKey.signature`
    SignedPreKeySignature,
}

impl std::fmt::Display for BundleField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::IdentityKey => "identityKey",
            Self::SignedPreKeyPublicKey => "signedPreKey.publicKey",
            Self::SignedPreKeySignature => "signedPreKey.signature",
        })
    }
}

/// Why a signed prekey was rejected. The messages are meant for API clients.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignedPreKeyError {
    /// The field is not standard, padded base64.
    #[error("{0} is not valid base64")]
    InvalidBase64(BundleField),
    /// A public key is not 33 bytes starting with `0x05`. (The identity key
    /// may also be a bare 32-byte key, as libsignal's verifier accepts that.)
    #[error("{0} must be 33 bytes starting with 0x05")]
    InvalidKeyFormat(BundleField),
    /// The identity key has the right shape but is not usable as a signing
    /// key: not canonically encoded, not on the curve, or of low order.
    #[error("identityKey is not a valid Curve25519 public key")]
    InvalidIdentityKey,
    /// The signature does not decode to 64 bytes.
    #[error("signedPreKey.signature must be 64 bytes")]
    InvalidSignatureLength,
    /// The signature is well formed but does not verify.
    #[error("signedPreKey.signature does not verify against identityKey")]
    SignatureMismatch,
}

/// Checks that `signature_b64` is the identity key's XEdDSA signature over the
/// signed prekey's public key, all three given as in a published bundle
/// (standard base64 with padding).
///
/// `identity_key_b64` must decode to 33 bytes starting with `0x05`, or to a
/// bare 32-byte Curve25519 key (libsignal's verifier accepts both).
/// `signed_prekey_public_b64` must decode to 33 bytes starting with `0x05`:
/// those 33 bytes are what the client signed. `signature_b64` must decode to
/// 64 bytes.
///
/// Returns `Ok(())` only if the signature verifies; never panics.
pub fn verify_signed_prekey(
    identity_key_b64: &str,
    signed_prekey_public_b64: &str,
    signature_b64: &str,
) -> Result<(), SignedPreKeyError> {
    let identity_key = decode(identity_key_b64, BundleField::IdentityKey)?;
    let signed_prekey = decode(signed_prekey_public_b64, BundleField::SignedPreKeyPublicKey)?;
    let signature = decode(signature_b64, BundleField::SignedPreKeySignature)?;

    let identity_u = match identity_key.len() {
        SERIALIZED_KEY_LEN if identity_key[0] == DJB_KEY_TYPE => &identity_key[1..],
        _ => &identity_key[..],
    };
    let identity_u: [u8; RAW_KEY_LEN] = identity_u
        .try_into()
        .map_err(|_| SignedPreKeyError::InvalidKeyFormat(BundleField::IdentityKey))?;

    if signed_prekey.len() != SERIALIZED_KEY_LEN || signed_prekey[0] != DJB_KEY_TYPE {
        return Err(SignedPreKeyError::InvalidKeyFormat(
            BundleField::SignedPreKeyPublicKey,
        ));
    }

    let signature: [u8; SIGNATURE_LEN] = signature
        .try_into()
        .map_err(|_| SignedPreKeyError::InvalidSignatureLength)?;

    xeddsa_verify(&identity_u, &signed_prekey, &signature)
}

/// Decodes standard, padded base64, naming `field` on failure.
fn decode(value: &str, field: BundleField) -> Result<Vec<u8>, SignedPreKeyError> {
    STANDARD
        .decode(value)
        .map_err(|_| SignedPreKeyError::InvalidBase64(field))
}

/// libsignal's `curve25519_verify`: verifies `signature` over `message` under
/// the Curve25519 public key whose Montgomery u-coordinate is `identity_u`.
fn xeddsa_verify(
    identity_u: &[u8; RAW_KEY_LEN],
    message: &[u8],
    signature: &[u8; SIGNATURE_LEN],
) -> Result<(), SignedPreKeyError> {
    let montgomery = MontgomeryPoint(*identity_u);
    let sign_bit = signature[SIGNATURE_LEN - 1] >> 7;

    // `to_edwards` fails for u = -1 and for points on the twist.
    let edwards = montgomery
        .to_edwards(sign_bit)
        .ok_or(SignedPreKeyError::InvalidIdentityKey)?;
    // Only a canonical u maps back to itself (this rejects u >= p and a set
    // top bit, which `to_edwards` silently reduces or ignores).
    if edwards.to_montgomery().as_bytes() != identity_u {
        return Err(SignedPreKeyError::InvalidIdentityKey);
    }
    // Under a low-order key, signatures can be forged without a private key.
    if edwards.is_small_order() {
        return Err(SignedPreKeyError::InvalidIdentityKey);
    }

    let mut ed_signature = *signature;
    ed_signature[SIGNATURE_LEN - 1] &= 0x7f;

    VerifyingKey::from(edwards)
        .verify_strict(message, &Signature::from_bytes(&ed_signature))
        .map_err(|_| SignedPreKeyError::SignatureMismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
    use curve25519_dalek::scalar::Scalar;
    use curve25519_dalek::traits::Identity as _;
    use ed25519_dalek::Verifier as _;
    use serde_json::Value;
    use sha2::{Digest, Sha512};

    const FIXTURE: &str = include_str!("../tests/fixtures/libsignal_bundles.json");

    /// One bundle's signed-prekey inputs, as published (base64).
    struct Vector {
        identity_key: String,
        signed_prekey: String,
        signature: String,
    }

    fn vectors() -> Vec<Vector> {
        let doc: Value = serde_json::from_str(FIXTURE).expect("fixture is JSON");
        assert_eq!(
            doc["generator"],
            "@privacyresearch/libsignal-protocol-typescript 0.0.16"
        );
        let text = |v: &Value| v.as_str().expect("fixture field is a string").to_owned();
        let vectors: Vec<Vector> = doc["bundles"]
            .as_array()
            .expect("bundles is an array")
            .iter()
            .map(|b| Vector {
                identity_key: text(&b["identityKey"]),
                signed_prekey: text(&b["signedPreKey"]["publicKey"]),
                signature: text(&b["signedPreKey"]["signature"]),
            })
            .collect();
        assert_eq!(vectors.len(), 5, "fixture holds 5 bundles");
        vectors
    }

    fn b64(bytes: &[u8]) -> String {
        STANDARD.encode(bytes)
    }

    fn raw(value: &str) -> Vec<u8> {
        STANDARD.decode(value).expect("fixture is base64")
    }

    fn verify_bytes(identity: &[u8], spk: &[u8], sig: &[u8]) -> Result<(), SignedPreKeyError> {
        verify_signed_prekey(&b64(identity), &b64(spk), &b64(sig))
    }

    #[test]
    fn every_real_bundle_verifies() {
        let mut sign_bits = Vec::new();
        for (i, v) in vectors().iter().enumerate() {
            let identity = raw(&v.identity_key);
            let spk = raw(&v.signed_prekey);
            assert_eq!(identity.len(), 33, "bundle {i} identityKey length");
            assert_eq!(identity[0], 0x05, "bundle {i} identityKey prefix");
            assert_eq!(spk.len(), 33, "bundle {i} signedPreKey length");
            assert_eq!(spk[0], 0x05, "bundle {i} signedPreKey prefix");
            sign_bits.push(raw(&v.signature)[63] >> 7);
            assert_eq!(
                verify_signed_prekey(&v.identity_key, &v.signed_prekey, &v.signature),
                Ok(()),
                "bundle {i}"
            );
        }
        // Both branches of the Edwards sign bit are covered by real data.
        assert!(
            sign_bits.contains(&0) && sign_bits.contains(&1),
            "{sign_bits:?}"
        );
    }

    #[test]
    fn bare_32_byte_identity_key_verifies() {
        for v in vectors() {
            let identity = raw(&v.identity_key);
            assert_eq!(
                verify_bytes(&identity[1..], &raw(&v.signed_prekey), &raw(&v.signature)),
                Ok(())
            );
        }
    }

    #[test]
    fn signature_covers_the_0x05_prefix() {
        for v in vectors() {
            let identity: [u8; 32] = raw(&v.identity_key)[1..].try_into().unwrap();
            let spk = raw(&v.signed_prekey);
            let sig: [u8; 64] = raw(&v.signature).try_into().unwrap();
            assert_eq!(xeddsa_verify(&identity, &spk, &sig), Ok(()));
            assert_eq!(
                xeddsa_verify(&identity, &spk[1..], &sig),
                Err(SignedPreKeyError::SignatureMismatch)
            );
        }
    }

    #[test]
    fn any_flipped_signature_bit_fails() {
        for v in vectors() {
            let identity = raw(&v.identity_key);
            let spk = raw(&v.signed_prekey);
            let sig = raw(&v.signature);
            for bit in 0..sig.len() * 8 {
                let mut bad = sig.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert_eq!(
                    verify_bytes(&identity, &spk, &bad),
                    Err(SignedPreKeyError::SignatureMismatch),
                    "signature bit {bit}"
                );
            }
        }
    }

    #[test]
    fn any_flipped_signed_prekey_bit_fails() {
        for v in vectors() {
            let identity = raw(&v.identity_key);
            let spk = raw(&v.signed_prekey);
            let sig = raw(&v.signature);
            for bit in 0..spk.len() * 8 {
                let mut bad = spk.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                let expected = if bit < 8 {
                    SignedPreKeyError::InvalidKeyFormat(BundleField::SignedPreKeyPublicKey)
                } else {
                    SignedPreKeyError::SignatureMismatch
                };
                assert_eq!(
                    verify_bytes(&identity, &bad, &sig),
                    Err(expected),
                    "signed prekey bit {bit}"
                );
            }
        }
    }

    #[test]
    fn any_flipped_identity_key_bit_fails() {
        for v in vectors() {
            let identity = raw(&v.identity_key);
            let spk = raw(&v.signed_prekey);
            let sig = raw(&v.signature);
            for bit in 0..identity.len() * 8 {
                let mut bad = identity.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                let result = verify_bytes(&bad, &spk, &sig);
                match bit {
                    // The type byte.
                    0..8 => assert_eq!(
                        result,
                        Err(SignedPreKeyError::InvalidKeyFormat(
                            BundleField::IdentityKey
                        )),
                        "identity key bit {bit}"
                    ),
                    // The top bit of u: a non-canonical encoding.
                    263 => assert_eq!(result, Err(SignedPreKeyError::InvalidIdentityKey)),
                    // Either off the curve (on the twist) or a different key.
                    _ => assert!(
                        matches!(
                            result,
                            Err(SignedPreKeyError::InvalidIdentityKey
                                | SignedPreKeyError::SignatureMismatch)
                        ),
                        "identity key bit {bit}: {result:?}"
                    ),
                }
            }
        }
    }

    #[test]
    fn signature_from_another_bundle_fails() {
        let vs = vectors();
        for (a, b) in (0..vs.len()).flat_map(|a| (0..vs.len()).map(move |b| (a, b))) {
            if a == b {
                continue;
            }
            // A's signature over A's prekey, checked against B's identity key.
            assert_eq!(
                verify_signed_prekey(&vs[b].identity_key, &vs[a].signed_prekey, &vs[a].signature),
                Err(SignedPreKeyError::SignatureMismatch),
                "signature {a} under identity {b}"
            );
            // A's signature presented for B's prekey, under A's identity key.
            assert_eq!(
                verify_signed_prekey(&vs[a].identity_key, &vs[b].signed_prekey, &vs[a].signature),
                Err(SignedPreKeyError::SignatureMismatch),
                "signature {a} over prekey {b}"
            );
        }
    }

    #[test]
    fn bad_base64_names_the_field() {
        let v = &vectors()[0];
        for bad in ["not base64!", "BQ", "BQ==\n", "B Q==", "BR=="] {
            assert_eq!(
                verify_signed_prekey(bad, &v.signed_prekey, &v.signature),
                Err(SignedPreKeyError::InvalidBase64(BundleField::IdentityKey)),
                "{bad:?}"
            );
            assert_eq!(
                verify_signed_prekey(&v.identity_key, bad, &v.signature),
                Err(SignedPreKeyError::InvalidBase64(
                    BundleField::SignedPreKeyPublicKey
                )),
                "{bad:?}"
            );
            assert_eq!(
                verify_signed_prekey(&v.identity_key, &v.signed_prekey, bad),
                Err(SignedPreKeyError::InvalidBase64(
                    BundleField::SignedPreKeySignature
                )),
                "{bad:?}"
            );
        }
        // URL-safe alphabet and missing padding are not what clients send.
        let url_safe = v.signature.replace('+', "-").replace('/', "_");
        if url_safe != v.signature {
            assert_eq!(
                verify_signed_prekey(&v.identity_key, &v.signed_prekey, &url_safe),
                Err(SignedPreKeyError::InvalidBase64(
                    BundleField::SignedPreKeySignature
                ))
            );
        }
        let unpadded = v.signature.trim_end_matches('=');
        assert_eq!(
            verify_signed_prekey(&v.identity_key, &v.signed_prekey, unpadded),
            Err(SignedPreKeyError::InvalidBase64(
                BundleField::SignedPreKeySignature
            ))
        );
    }

    #[test]
    fn wrong_lengths_and_prefixes_are_rejected() {
        let v = &vectors()[0];
        let identity = raw(&v.identity_key);
        let spk = raw(&v.signed_prekey);
        let sig = raw(&v.signature);
        let bad_identity = || SignedPreKeyError::InvalidKeyFormat(BundleField::IdentityKey);
        let bad_spk = || SignedPreKeyError::InvalidKeyFormat(BundleField::SignedPreKeyPublicKey);

        let mut long_identity = identity.clone();
        long_identity.push(0);
        let mut wrong_type = identity.clone();
        wrong_type[0] = 0x06;
        for bad in [&[][..], &identity[..31], &long_identity, &wrong_type] {
            assert_eq!(verify_bytes(bad, &spk, &sig), Err(bad_identity()));
        }

        let mut long_spk = spk.clone();
        long_spk.push(0);
        let mut wrong_type = spk.clone();
        wrong_type[0] = 0x06;
        // A bare 32-byte signed prekey is not what was signed.
        for bad in [&[][..], &spk[1..], &long_spk, &wrong_type] {
            assert_eq!(verify_bytes(&identity, bad, &sig), Err(bad_spk()));
        }

        let mut long_sig = sig.clone();
        long_sig.push(0);
        for bad in [&[][..], &sig[..63], &long_sig] {
            assert_eq!(
                verify_bytes(&identity, &spk, bad),
                Err(SignedPreKeyError::InvalidSignatureLength)
            );
        }
    }

    /// The Curve25519 u-coordinates of low order, plus u = -1 (no Edwards
    /// point) and non-canonical encodings, each as a 33-byte key.
    fn invalid_identity_keys() -> Vec<[u8; 33]> {
        let hex = |s: &str| -> [u8; 32] {
            let mut out = [0u8; 32];
            for (i, byte) in out.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
            }
            out
        };
        let p_plus = |k: u8| {
            let mut u = [0xffu8; 32];
            u[0] = 0xed + k;
            u[31] = 0x7f;
            u
        };
        let zero = [0u8; 32];
        let mut one = [0u8; 32];
        one[0] = 1;
        let mut zero_top_bit = zero;
        zero_top_bit[31] = 0x80;
        let us = [
            zero,                                                                    // order 2
            one,                                                                     // order 4
            hex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"), // order 8
            hex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"), // order 8
            {
                let mut m = p_plus(0);
                m[0] = 0xec; // p - 1 = -1
                m
            },
            p_plus(0),    // p, i.e. 0 non-canonically
            p_plus(1),    // p + 1, i.e. 1 non-canonically
            zero_top_bit, // 0 with the ignored top bit set
        ];
        us.iter()
            .map(|u| {
                let mut key = [0x05u8; 33];
                key[1..].copy_from_slice(u);
                key
            })
            .collect()
    }

    #[test]
    fn low_order_and_non_canonical_identity_keys_are_rejected() {
        let v = &vectors()[0];
        let spk = raw(&v.signed_prekey);
        let sig = raw(&v.signature);
        for key in invalid_identity_keys() {
            for sign in [0u8, 0x80] {
                let mut sig = sig.clone();
                sig[63] = (sig[63] & 0x7f) | sign;
                assert_eq!(
                    verify_bytes(&key, &spk, &sig),
                    Err(SignedPreKeyError::InvalidIdentityKey),
                    "u = {:02x?}, sign {sign:#x}",
                    &key[1..]
                );
            }
        }
    }

    /// A signature that plain (cofactorless, non-strict) Ed25519 accepts under
    /// the order-2 identity key u = 0 with no private key at all: R = identity
    /// point, s = 0, for a message whose challenge k is even. It must still be
    /// rejected.
    #[test]
    fn forgery_under_low_order_key_is_rejected() {
        let a = MontgomeryPoint([0u8; 32]).to_edwards(0).unwrap();
        let a_bytes = a.compress().to_bytes();
        let mut r_bytes = [0u8; 32];
        r_bytes[0] = 1; // compressed identity point, y = 1
        assert!(CompressedEdwardsY(r_bytes).decompress().is_some());

        let mut spk = [0x05u8; 33];
        let found = (0..=255u8).find(|&n| {
            spk[32] = n;
            let k = Scalar::from_bytes_mod_order_wide(
                &Sha512::new()
                    .chain_update(r_bytes)
                    .chain_update(a_bytes)
                    .chain_update(spk)
                    .finalize()
                    .into(),
            );
            k.to_bytes()[0] & 1 == 0
        });
        assert!(found.is_some());

        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&r_bytes);
        // Sanity: the forgery really passes plain Ed25519 verification.
        assert!(
            VerifyingKey::from(a)
                .verify(&spk, &Signature::from_bytes(&sig))
                .is_ok()
        );

        let mut identity = [0u8; 33];
        identity[0] = 0x05;
        assert_eq!(
            verify_bytes(&identity, &spk, &sig),
            Err(SignedPreKeyError::InvalidIdentityKey)
        );
    }

    /// libsignal only requires s < 2^253, so s + ℓ would pass there; strict
    /// verification rejects that malleated copy of a real signature.
    #[test]
    fn non_canonical_s_is_rejected() {
        // ℓ = 2^252 + 27742317777372353535851937790883648493, little-endian.
        const ELL: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x10,
        ];
        for v in vectors() {
            let identity = raw(&v.identity_key);
            let spk = raw(&v.signed_prekey);
            let mut sig = raw(&v.signature);
            let sign = sig[63] & 0x80;
            sig[63] &= 0x7f;
            let mut carry = 0u16;
            for (s, l) in sig[32..].iter_mut().zip(ELL) {
                let sum = u16::from(*s) + u16::from(l) + carry;
                *s = sum as u8;
                carry = sum >> 8;
            }
            assert_eq!(carry, 0);
            assert_eq!(sig[63] & 0xe0, 0, "s + ℓ < 2^253, so libsignal accepts it");
            sig[63] |= sign;
            assert_eq!(
                verify_bytes(&identity, &spk, &sig),
                Err(SignedPreKeyError::SignatureMismatch)
            );
        }
    }

    /// Signs like libsignal's `curve25519_sign`, but with a chosen nonce
    /// point `R = [r]B + t` (t = a low-order point, or the identity).
    fn sign_with_nonce(a: Scalar, r: Scalar, t: EdwardsPoint, msg: &[u8]) -> ([u8; 33], [u8; 64]) {
        let a_point = EdwardsPoint::mul_base(&a);
        let a_bytes = a_point.compress().to_bytes();
        let r_bytes = (EdwardsPoint::mul_base(&r) + t).compress().to_bytes();
        let k = Scalar::from_bytes_mod_order_wide(
            &Sha512::new()
                .chain_update(r_bytes)
                .chain_update(a_bytes)
                .chain_update(msg)
                .finalize()
                .into(),
        );
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&r_bytes);
        sig[32..].copy_from_slice((r + k * a).as_bytes());
        sig[63] |= a_bytes[31] & 0x80;
        let mut identity = [0x05u8; 33];
        identity[1..].copy_from_slice(a_point.to_montgomery().as_bytes());
        (identity, sig)
    }

    /// With the private key in hand, a signer can make `R` low order (r = 0,
    /// t = identity): plain Ed25519 accepts that, strict verification not.
    #[test]
    fn low_order_nonce_point_is_rejected() {
        let spk = raw(&vectors()[0].signed_prekey);
        let a = Scalar::from_bytes_mod_order([7u8; 32]);
        let r = Scalar::from_bytes_mod_order([9u8; 32]);

        // Control: the same signer with an honest nonce verifies.
        let (identity, sig) = sign_with_nonce(a, r, EdwardsPoint::identity(), &spk);
        assert_eq!(verify_bytes(&identity, &spk, &sig), Ok(()));

        let (identity, sig) = sign_with_nonce(a, Scalar::ZERO, EdwardsPoint::identity(), &spk);
        let mut ed_sig = sig;
        ed_sig[63] &= 0x7f;
        let key = VerifyingKey::from(EdwardsPoint::mul_base(&a));
        assert!(key.verify(&spk, &Signature::from_bytes(&ed_sig)).is_ok());
        assert_eq!(
            verify_bytes(&identity, &spk, &sig),
            Err(SignedPreKeyError::SignatureMismatch)
        );
    }

    #[test]
    fn messages_are_client_facing() {
        assert_eq!(
            SignedPreKeyError::SignatureMismatch.to_string(),
            "signedPreKey.signature does not verify against identityKey"
        );
        assert_eq!(
            SignedPreKeyError::InvalidBase64(BundleField::SignedPreKeyPublicKey).to_string(),
            "signedPreKey.publicKey is not valid base64"
        );
        assert_eq!(
            SignedPreKeyError::InvalidKeyFormat(BundleField::IdentityKey).to_string(),
            "identityKey must be 33 bytes starting with 0x05"
        );
        assert_eq!(
            SignedPreKeyError::InvalidSignatureLength.to_string(),
            "signedPreKey.signature must be 64 bytes"
        );
        assert_eq!(
            SignedPreKeyError::InvalidIdentityKey.to_string(),
            "identityKey is not a valid Curve25519 public key"
        );
    }
}

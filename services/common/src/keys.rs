//! Ed25519 JWT keys: re-exported from `parley-keys`, which the operator shares.

pub use parley_keys::*;

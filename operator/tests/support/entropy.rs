//! Deterministic secret material for tests.

use parley_operator::build::Entropy;

/// Passwords `password1`, `password2`, …; real Ed25519 keys (counted); a
/// placeholder certificate.
#[derive(Debug, Default)]
pub struct FakeEntropy {
    pub n: usize,
    pub keys: usize,
}

impl Entropy for FakeEntropy {
    fn password(&mut self) -> String {
        self.n += 1;
        format!("password{}", self.n)
    }
    fn signing_key(&mut self) -> parley_keys::GeneratedKey {
        self.keys += 1;
        parley_keys::generate()
    }
    fn certificate(&mut self, host: &str) -> (String, String, String) {
        ("CA".into(), format!("CERT {host}"), "KEY".into())
    }
}

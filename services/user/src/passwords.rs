//! Password hashing with bcrypt, off the async runtime.
//!
//! Hashes run on the blocking pool behind a semaphore, so a login flood occupies
//! at most `concurrency` threads and queues at most `queue` callers; the rest are
//! turned away at once instead of stalling every other request. Unknown emails
//! are checked against a dummy hash of the same cost, so a failed login costs
//! the same time whether or not the account exists.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// bcrypt reads only the first 72 bytes of a password; longer ones are truncated
/// (as bcryptjs does) rather than refused.
const BCRYPT_MAX_BYTES: usize = 72;

/// Why hashing could not be done.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("too many sign-ins are waiting")]
    Busy,
    #[error("bcrypt: {0}")]
    Bcrypt(String),
}

/// Bounded bcrypt hashing and verification.
#[derive(Clone, Debug)]
pub struct PasswordHasher {
    cost: u32,
    permits: Arc<Semaphore>,
    waiting: Arc<Semaphore>,
    dummy_hash: Arc<String>,
}

impl PasswordHasher {
    /// A hasher with the given cost, parallelism and queue bound.
    pub fn new(cost: u32, concurrency: usize, queue: usize) -> Self {
        let dummy_hash = bcrypt::hash("parley-dummy-password", cost).expect("valid bcrypt cost");
        Self {
            cost,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            waiting: Arc::new(Semaphore::new(queue.max(1) + concurrency.max(1))),
            dummy_hash: Arc::new(dummy_hash),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let _slot = self.waiting.try_acquire().map_err(|_| HashError::Busy)?;
        let _permit = self.permits.acquire().await.map_err(|_| HashError::Busy)?;
        tokio::task::spawn_blocking(job)
            .await
            .map_err(|err| HashError::Bcrypt(err.to_string()))
    }

    /// Hashes a new password.
    pub async fn hash(&self, password: &str) -> Result<String, HashError> {
        let password = truncate(password).to_vec();
        let cost = self.cost;
        self.run(move || bcrypt::hash(password, cost))
            .await?
            .map_err(|err| HashError::Bcrypt(err.to_string()))
    }

    /// Checks a password against a stored hash (`$2a$`/`$2b$`/`$2y$`); `None`
    /// checks against the dummy hash and always fails, in the same time.
    pub async fn verify(&self, password: &str, hash: Option<String>) -> Result<bool, HashError> {
        let password = truncate(password).to_vec();
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.as_str().to_owned());
        let matches = self
            .run(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await?;
        Ok(known && matches)
    }
}

fn truncate(password: &str) -> &[u8] {
    let bytes = password.as_bytes();
    &bytes[..bytes.len().min(BCRYPT_MAX_BYTES)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let hasher = PasswordHasher::new(4, 1, 4);
        let hash = hasher.hash("Secret1!").await.unwrap();
        assert!(hash.starts_with("$2b$04$"));
        assert!(hasher.verify("Secret1!", Some(hash.clone())).await.unwrap());
        assert!(!hasher.verify("Secret2!", Some(hash)).await.unwrap());
        assert!(!hasher.verify("parley-dummy-password", None).await.unwrap());
    }

    #[tokio::test]
    async fn passwords_are_truncated_at_72_bytes() {
        let hasher = PasswordHasher::new(4, 1, 4);
        let long = "A".repeat(100);
        let hash = hasher.hash(&long).await.unwrap();
        assert!(hasher.verify(&"A".repeat(72), Some(hash)).await.unwrap());
    }

    #[tokio::test]
    async fn accepts_2a_hashes_from_other_implementations() {
        let hasher = PasswordHasher::new(4, 1, 4);
        let hash = hasher
            .hash("Secret1!")
            .await
            .unwrap()
            .replacen("$2b$", "$2a$", 1);
        assert!(hasher.verify("Secret1!", Some(hash)).await.unwrap());
    }
}

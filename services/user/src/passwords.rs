//! Password hashing with bcrypt, off the async runtime.
//!
//! Hashes run on `concurrency` dedicated threads behind a semaphore, so a login
//! flood occupies at most that many threads and queues at most `queue` callers;
//! the rest are turned away at once instead of stalling every other request.
//! The threads run at a lower scheduling priority (nice 10): when the CPU is
//! contended, every other request goes first, and hashes use what is left (the
//! benchmark's login flood tripled the p99 of other requests without it).
//! Unknown emails
//! are checked against a dummy hash of the same cost, so a failed login costs
//! the same time whether or not the account exists.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, PoisonError, mpsc};

use tokio::sync::{Semaphore, oneshot};

/// Scheduling priority of the hashing threads (nice value; 0 is the default,
/// 19 the lowest).
const HASH_THREAD_NICE: i32 = 10;

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
    threads: mpsc::Sender<HashJob>,
}

type HashJob = Box<dyn FnOnce() + Send>;

/// Starts `count` hashing threads; they stop when every sender is dropped.
fn start_threads(count: usize) -> mpsc::Sender<HashJob> {
    let (sender, receiver) = mpsc::channel::<HashJob>();
    let receiver = Arc::new(Mutex::new(receiver));
    for i in 0..count {
        let receiver = receiver.clone();
        std::thread::Builder::new()
            .name(format!("bcrypt-{i}"))
            .spawn(move || {
                lower_priority();
                loop {
                    let job = {
                        let receiver = receiver.lock().unwrap_or_else(PoisonError::into_inner);
                        match receiver.recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        }
                    };
                    // A panicking job drops its reply (the caller gets an error);
                    // the thread lives on.
                    let _ = catch_unwind(AssertUnwindSafe(job));
                }
            })
            .expect("a hashing thread starts");
    }
    sender
}

/// Lowers the calling thread's scheduling priority to [`HASH_THREAD_NICE`].
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // On Linux a thread id names one thread of the process.
        let thread = rustix::thread::gettid();
        if let Err(err) = rustix::process::setpriority_process(Some(thread), HASH_THREAD_NICE) {
            tracing::warn!(error = %err, "could not lower the priority of a hashing thread");
        }
    }
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
            threads: start_threads(concurrency.max(1)),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let _slot = self.waiting.try_acquire().map_err(|_| HashError::Busy)?;
        let _permit = self.permits.acquire().await.map_err(|_| HashError::Busy)?;
        let (reply, answer) = oneshot::channel();
        self.threads
            .send(Box::new(move || {
                let _ = reply.send(job());
            }))
            .map_err(|_| HashError::Bcrypt("the hashing threads have stopped".to_owned()))?;
        answer
            .await
            .map_err(|_| HashError::Bcrypt("a hashing job failed".to_owned()))
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

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashes_run_on_threads_of_lower_priority() {
        let hasher = PasswordHasher::new(4, 2, 4);
        let nice = hasher
            .run(|| rustix::process::getpriority_process(Some(rustix::thread::gettid())))
            .await
            .unwrap()
            .unwrap();
        let mine = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        assert_eq!(nice, HASH_THREAD_NICE.max(mine), "nice of a hashing thread");
        let name = hasher
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert!(name.is_some_and(|n| n.starts_with("bcrypt-")));
    }

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

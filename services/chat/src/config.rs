//! Settings of the chat service (see `docs/configuration.md`).

use std::time::Duration;

use clap::Args;
use secrecy::SecretString;

/// Chat-service settings.
#[derive(Debug, Clone, Args)]
pub struct ChatConfig {
    /// PostgreSQL URL of the chat service's runtime role (defaults to `DATABASE_URL`).
    #[arg(long, env = "PARLEY_CHAT_DATABASE_URL", hide_env_values = true)]
    pub chat_database_url: Option<SecretString>,

    /// Requests per client IP per window on the chat REST routes.
    #[arg(long, env = "PARLEY_CHAT_RATE_LIMIT_MAX", default_value_t = 200)]
    pub chat_rate_limit_max: u32,

    /// Window of the chat REST limit, in seconds.
    #[arg(
        long,
        env = "PARLEY_CHAT_RATE_LIMIT_WINDOW_SECS",
        default_value_t = 900
    )]
    pub chat_rate_limit_window_secs: u64,

    /// How often a chat replica records that it is alive, in seconds.
    #[arg(long, env = "PARLEY_PRESENCE_HEARTBEAT_SECS", default_value_t = 5)]
    pub presence_heartbeat_secs: u64,

    /// A replica silent for this long is dead: its users go offline for everyone.
    #[arg(long, env = "PARLEY_PRESENCE_TTL_SECS", default_value_t = 15)]
    pub presence_ttl_secs: u64,

    /// Concurrent group-commit writers of new messages. One writer batches
    /// best: while it commits, the next batch gathers (docs/performance.md).
    #[arg(long, env = "PARLEY_CHAT_WRITERS", default_value_t = 1)]
    pub chat_writers: usize,

    /// Most messages one writer commits in one transaction.
    #[arg(long, env = "PARLEY_CHAT_WRITE_BATCH", default_value_t = 256)]
    pub chat_write_batch: usize,

    /// Largest Socket.IO message in bytes (the original's 1 MB).
    #[arg(long, env = "PARLEY_SOCKET_MAX_PAYLOAD", default_value_t = 1_000_000)]
    pub socket_max_payload: u64,

    /// Outgoing packets buffered per socket; a socket whose buffer is full
    /// (a stalled client) loses events instead of delaying anyone else.
    #[arg(long, env = "PARLEY_SOCKET_BUFFER_PACKETS", default_value_t = 4096)]
    pub socket_buffer_packets: usize,

    /// Initial read buffer of a WebSocket, in bytes. Every idle socket holds
    /// one; a larger message grows it as needed (the CONNECT packet, with its
    /// token, already takes about 500 bytes).
    #[arg(
        long,
        env = "PARLEY_SOCKET_READ_BUFFER_BYTES",
        default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(256..=1_048_576)
    )]
    pub socket_read_buffer_bytes: u32,

    /// Engine.IO ping interval in milliseconds.
    #[arg(long, env = "PARLEY_SOCKET_PING_INTERVAL_MS", default_value_t = 25_000)]
    pub socket_ping_interval_ms: u64,

    /// Engine.IO ping timeout in milliseconds (the original's 60 s).
    #[arg(long, env = "PARLEY_SOCKET_PING_TIMEOUT_MS", default_value_t = 60_000)]
    pub socket_ping_timeout_ms: u64,

    /// Milliseconds after which a typing indicator turns itself off.
    #[arg(long, env = "PARLEY_TYPING_TIMEOUT_MS", default_value_t = 3_000)]
    pub typing_timeout_ms: u64,
}

impl ChatConfig {
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.presence_heartbeat_secs.max(1))
    }

    pub fn presence_ttl(&self) -> Duration {
        Duration::from_secs(self.presence_ttl_secs.max(2))
    }
}

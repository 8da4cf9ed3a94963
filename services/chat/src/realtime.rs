//! Real-time delivery across chat replicas.
//!
//! Every emit to a user's room or to everyone is delivered to this replica's
//! sockets at once and published (transient, unconfirmed) on the events
//! exchange as `realtime.user` / `realtime.all`. Every replica follows those
//! keys on a private queue and re-emits what other replicas published to its
//! own sockets, in publish order. A user's sockets on any replica therefore see
//! the same events in the same order.

use std::sync::{Arc, OnceLock};

use parley_common::events::{self, Broker};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use socketioxide::SocketIo;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TO_USER: &str = "realtime.user";
const TO_ALL: &str = "realtime.all";

#[derive(Debug, Serialize, Deserialize)]
struct Relayed {
    origin: Uuid,
    room: Option<String>,
    event: String,
    data: Value,
}

/// Emits to users and everyone, on every replica.
#[derive(Clone)]
pub struct Realtime {
    io: Arc<OnceLock<SocketIo>>,
    broker: Broker,
    replica: Uuid,
}

impl std::fmt::Debug for Realtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Realtime")
            .field("replica", &self.replica)
            .finish()
    }
}

impl Realtime {
    /// A fan-out for replica `replica`; attach the Socket.IO server with [`Realtime::attach`].
    pub fn new(broker: Broker, replica: Uuid) -> Self {
        Self {
            io: Arc::new(OnceLock::new()),
            broker,
            replica,
        }
    }

    /// Connects the Socket.IO server (once, right after it is built).
    pub fn attach(&self, io: SocketIo) {
        let _ = self.io.set(io);
    }

    async fn emit_local(&self, room: Option<&str>, event: &str, data: &Value) {
        let Some(io) = self.io.get() else { return };
        let result = match room {
            Some(room) => io.to(room.to_owned()).emit(event, data).await,
            None => io.emit(event, data).await,
        };
        if let Err(err) = result {
            tracing::debug!(error = %err, event, "local emit failed");
        }
    }

    async fn publish(&self, routing_key: &str, room: Option<String>, event: &str, data: &Value) {
        let relayed = Relayed {
            origin: self.replica,
            room,
            event: event.to_owned(),
            data: data.clone(),
        };
        let payload = serde_json::to_vec(&relayed).expect("JSON values serialize");
        if let Err(err) = self.broker.publish_transient(routing_key, &payload).await {
            tracing::warn!(error = %err, event, "could not relay an event to other replicas");
        }
    }

    /// Emits `event` to every socket of `user`, on every replica.
    pub async fn to_user(&self, user: Uuid, event: &str, data: &Value) {
        let room = user.to_string();
        self.emit_local(Some(&room), event, data).await;
        self.publish(TO_USER, Some(room), event, data).await;
    }

    /// Emits `event` to every connected socket, on every replica.
    pub async fn to_all(&self, event: &str, data: &Value) {
        self.emit_local(None, event, data).await;
        self.publish(TO_ALL, None, event, data).await;
    }

    /// Follows what other replicas publish. Returns once subscribed (or after
    /// `wait` when the broker is down).
    pub async fn follow(&self, wait: std::time::Duration, shutdown: CancellationToken) {
        let (queue, mut relayed) = mpsc::unbounded_channel::<Relayed>();
        let me = self.replica;
        let subscribed = Arc::new(Notify::new());
        let ready = subscribed.notified();
        events::subscribe_private(
            self.broker.clone(),
            vec![TO_USER.to_owned(), TO_ALL.to_owned()],
            move |body| match serde_json::from_slice::<Relayed>(body) {
                Ok(message) if message.origin != me => {
                    let _ = queue.send(message);
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "ignoring a malformed realtime message"),
            },
            subscribed.clone(),
            shutdown,
        );
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(message) = relayed.recv().await {
                this.emit_local(message.room.as_deref(), &message.event, &message.data)
                    .await;
            }
        });
        if tokio::time::timeout(wait, ready).await.is_err() {
            tracing::warn!("not yet following other replicas; will once the broker is reachable");
        }
    }
}

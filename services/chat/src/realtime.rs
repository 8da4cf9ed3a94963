//! Real-time delivery across chat replicas.
//!
//! Every emit to a user's room or to everyone is delivered to this replica's
//! sockets at once and published (transient, unconfirmed) on the events
//! exchange as `realtime.user` / `realtime.all`. Every replica follows those
//! keys on a private queue and re-emits what other replicas published to its
//! own sockets, in publish order. A user's sockets on any replica therefore see
//! the same events in the same order.
//!
//! A replica alone has no one to relay to, and relaying costs as much CPU as the
//! delivery itself (the broker routes every event back to the publisher). So
//! events are published only while another replica may be alive: for
//! `ttl + heartbeat` after each sign of one (a heartbeat that finds another
//! live replica in `replicas`, or any message from another replica). A replica
//! says hello on `realtime.replica` as soon as it follows, then looks for live
//! replicas in `replicas`: every other replica is either already there or will
//! say hello to it, so if none is found (and no hello came meanwhile) it stops
//! relaying at once. Until it follows, it relays.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use parley_common::events::{self, Broker};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use socketioxide::SocketIo;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TO_USER: &str = "realtime.user";
const TO_ALL: &str = "realtime.all";
const HELLO: &str = "realtime.replica";

#[derive(Debug, Serialize, Deserialize)]
struct Relayed {
    origin: Uuid,
    room: Option<String>,
    event: String,
    data: Value,
}

/// A replica announcing itself to the others.
#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    origin: Uuid,
    hello: bool,
}

/// Until when events are relayed: another replica may be alive until then.
#[derive(Debug)]
struct PeerWindow {
    hold: Duration,
    state: Mutex<WindowState>,
}

#[derive(Debug)]
struct WindowState {
    until: Instant,
    /// Signs of other replicas so far.
    signs: u64,
}

impl PeerWindow {
    fn new(hold: Duration) -> Self {
        Self {
            hold,
            state: Mutex::new(WindowState {
                until: Instant::now() + hold,
                signs: 0,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, WindowState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A sign of another replica: relay for `hold` from now.
    fn extend(&self) {
        let mut state = self.state();
        state.until = state.until.max(Instant::now() + self.hold);
        state.signs += 1;
    }

    fn signs(&self) -> u64 {
        self.state().signs
    }

    /// No other replica, unless one gave a sign after `signs` was read.
    fn close_unless_signs_since(&self, signs: u64) {
        let mut state = self.state();
        if state.signs == signs {
            state.until = Instant::now();
        }
    }

    fn open(&self) -> bool {
        Instant::now() < self.state().until
    }
}

/// Emits to users and everyone, on every replica.
#[derive(Clone)]
pub struct Realtime {
    io: Arc<OnceLock<SocketIo>>,
    broker: Broker,
    replica: Uuid,
    peers: Arc<PeerWindow>,
}

impl std::fmt::Debug for Realtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Realtime")
            .field("replica", &self.replica)
            .finish()
    }
}

impl Realtime {
    /// A fan-out for replica `replica`; attach the Socket.IO server with
    /// [`Realtime::attach`]. `peer_hold` is how long another replica counts as
    /// possibly alive after the last sign of it (presence TTL + heartbeat).
    pub fn new(broker: Broker, replica: Uuid, peer_hold: Duration) -> Self {
        Self {
            io: Arc::new(OnceLock::new()),
            broker,
            replica,
            peers: Arc::new(PeerWindow::new(peer_hold)),
        }
    }

    /// Another replica is alive (seen in `replicas`): keep relaying.
    pub fn peer_alive(&self) {
        self.peers.extend();
    }

    /// A count of the signs of other replicas so far, for [`Realtime::alone_since`].
    pub fn peer_signs(&self) -> u64 {
        self.peers.signs()
    }

    /// No other replica was found alive (after following and saying hello):
    /// stop relaying, unless another replica gave a sign since `signs`.
    pub fn alone_since(&self, signs: u64) {
        self.peers.close_unless_signs_since(signs);
    }

    /// Connects the Socket.IO server (once, right after it is built).
    pub fn attach(&self, io: SocketIo) {
        let _ = self.io.set(io);
    }

    async fn emit_local(&self, room: Option<&str>, event: &str, data: &Value) {
        let Some(io) = self.io.get() else { return };
        // Once the server is closing, its namespace is gone while sockets are
        // still disconnecting (and announcing it): there is nobody to tell.
        let Some(namespace) = io.of("/") else { return };
        let result = match room {
            Some(room) => namespace.to(room.to_owned()).emit(event, data).await,
            None => namespace.emit(event, data).await,
        };
        if let Err(err) = result {
            tracing::debug!(error = %err, event, "local emit failed");
        }
    }

    async fn publish(&self, routing_key: &str, room: Option<String>, event: &str, data: &Value) {
        if !self.peers.open() {
            return;
        }
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

    /// Follows what other replicas publish and says hello to them. Returns
    /// `true` once subscribed and announced, `false` after `wait` when the
    /// broker is down (following starts later, when it is back).
    pub async fn follow(&self, wait: Duration, shutdown: CancellationToken) -> bool {
        let (queue, mut relayed) = mpsc::unbounded_channel::<Relayed>();
        let me = self.replica;
        let subscribed = Arc::new(Notify::new());
        let ready = subscribed.notified();
        let peers = self.peers.clone();
        events::subscribe_private(
            self.broker.clone(),
            vec![TO_USER.to_owned(), TO_ALL.to_owned(), HELLO.to_owned()],
            move |body| match serde_json::from_slice::<Relayed>(body) {
                Ok(message) if message.origin != me => {
                    peers.extend();
                    let _ = queue.send(message);
                }
                Ok(_) => {}
                Err(err) => match serde_json::from_slice::<Hello>(body) {
                    Ok(hello) if hello.origin != me => peers.extend(),
                    Ok(_) => {}
                    Err(_) => {
                        tracing::warn!(error = %err, "ignoring a malformed realtime message")
                    }
                },
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
            return false;
        }
        let hello = Hello {
            origin: me,
            hello: true,
        };
        let payload = serde_json::to_vec(&hello).expect("a hello serializes");
        if let Err(err) = self.broker.publish_transient(HELLO, &payload).await {
            tracing::warn!(error = %err, "could not announce this replica to the others");
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_window_closes_only_without_a_sign_since() {
        let window = PeerWindow::new(Duration::from_secs(3600));
        assert!(window.open(), "open from the start");
        let before = window.signs();
        window.close_unless_signs_since(before);
        assert!(!window.open(), "closed when no one gave a sign");
        window.extend();
        assert!(window.open(), "a sign opens it again");

        let before = window.signs();
        window.extend(); // a hello arrives while the table is read
        window.close_unless_signs_since(before);
        assert!(window.open(), "a sign since the reading keeps it open");
        assert!(!PeerWindow::new(Duration::ZERO).open());
    }

    #[test]
    fn hellos_and_relayed_events_are_told_apart() {
        let hello = serde_json::to_vec(&Hello {
            origin: Uuid::nil(),
            hello: true,
        })
        .unwrap();
        assert!(serde_json::from_slice::<Relayed>(&hello).is_err());
        assert!(serde_json::from_slice::<Hello>(&hello).is_ok());
        let relayed = serde_json::to_vec(&Relayed {
            origin: Uuid::nil(),
            room: None,
            event: "presence".into(),
            data: Value::Null,
        })
        .unwrap();
        assert!(serde_json::from_slice::<Relayed>(&relayed).is_ok());
    }
}

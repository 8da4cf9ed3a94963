//! Socket.IO at `/chat/socket.io` (contract §7).
//!
//! Authentication runs in the namespace middleware, inside the CONNECT
//! handshake: `auth.token`, else the `jwt` cookie of the handshake request; a
//! refusal is a CONNECT_ERROR (`connect_error` "Authentication required" /
//! "Invalid token"). The middleware also joins the user's room and registers
//! every event handler, *before* the CONNECT is confirmed, so an event sent
//! right after `connect` is never lost. Presence is announced in the connect
//! handler, which runs after the confirmation.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parley_common::auth::{Authenticator, cookie_token};
use parley_common::http::validate::{js_length, js_trim, js_truthy};
use serde_json::{Map, Value, json};
use socketioxide::extract::{AckSender, Event, Extension, SocketRef, State, TryData};
use tokio::task::AbortHandle;
use uuid::Uuid;

use crate::realtime::Realtime;
use crate::store::{self, Message};
use crate::writer::{MessageWriter, NewMessage};
use crate::{ChatMetrics, presence::Presence};
use parley_common::http::dates::js_time;

/// Shared state of the Socket.IO and REST handlers, behind one `Arc` (a handler
/// clones one pointer, not every handle).
pub struct SocketContext {
    pub pool: sqlx::PgPool,
    pub auth: Authenticator,
    pub writer: MessageWriter,
    pub realtime: Realtime,
    pub presence: Arc<Presence>,
    pub typing: Typing,
    pub metrics: ChatMetrics,
}

/// The authenticated user of a socket.
#[derive(Debug, Clone)]
pub struct SocketUser {
    pub id: Uuid,
    pub username: String,
}

/// A refused handshake; its text is the `connect_error` message.
#[derive(Debug)]
pub struct Refusal(&'static str);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Namespace middleware: authenticate, join the user's room, register handlers.
pub async fn authenticate(
    socket: SocketRef,
    TryData(auth): TryData<Value>,
    State(ctx): State<Arc<SocketContext>>,
) -> Result<(), Refusal> {
    let from_auth = auth
        .ok()
        .and_then(|auth| auth.get("token").and_then(Value::as_str).map(str::to_owned))
        .filter(|token| !token.is_empty());
    let token = from_auth.or_else(|| {
        socket
            .req_parts()
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find_map(cookie_token)
    });
    let Some(token) = token else {
        return Err(Refusal("Authentication required"));
    };
    let claims = ctx
        .auth
        .verify(&token)
        .map_err(|_| Refusal("Invalid token"))?;
    // Presence is recorded before the CONNECT is confirmed, so a message sent
    // to this user from now on sees them online; it is announced afterwards.
    let first_in_cluster = match ctx.presence.connect(claims.id).await {
        Ok(first) => first,
        Err(err) => {
            tracing::warn!(error = %err, "recording presence failed");
            false
        }
    };
    let user = SocketUser {
        id: claims.id,
        username: claims.username,
    };
    socket.extensions.insert(user.clone());
    socket.extensions.insert(CameOnline(first_in_cluster));
    socket.join(claims.id.to_string());
    socket.extensions.insert(Inbox::default());
    socket.on_fallback(on_event);
    socket.on_disconnect(disconnected);
    Ok(())
}

/// The request headers a socket keeps: the `jwt` cookie for the handshake's
/// authentication, and what engineioxide reads (the WebSocket key at upgrade,
/// the content type of polling posts). Nothing else reads them later.
const KEPT_HEADERS: [http::HeaderName; 3] = [
    http::header::COOKIE,
    http::header::SEC_WEBSOCKET_KEY,
    http::header::CONTENT_TYPE,
];

/// Gives a Socket.IO request a small head of its own before socketioxide
/// keeps it for the socket's whole life (`req_parts`).
///
/// hyper parses header values and the URI as slices of the connection's
/// 16 KiB read buffer (and axum keeps a copy of the URI as
/// [`OriginalUri`](axum::extract::OriginalUri)), so those few hundred bytes
/// would pin the whole buffer for every idle socket. The head kept holds
/// copies of the URI and of [`KEPT_HEADERS`] only; the rest of the request
/// (the layers outside this one) saw every header.
pub fn own_request_head<B>(request: http::Request<B>) -> http::Request<B> {
    let (mut parts, body) = request.into_parts();
    let kept = KEPT_HEADERS
        .iter()
        .map(|name| parts.headers.get_all(name).iter().count())
        .sum();
    // Sized exactly: a map that grows keeps room for six headers (~600 bytes).
    let mut headers = http::HeaderMap::with_capacity(kept);
    for name in &KEPT_HEADERS {
        for value in parts.headers.get_all(name) {
            // hyper's parser and `from_bytes` accept the same bytes; should they
            // ever differ, the shared value is kept rather than refused.
            let owned = match http::HeaderValue::from_bytes(value.as_bytes()) {
                Ok(mut owned) => {
                    owned.set_sensitive(value.is_sensitive());
                    owned
                }
                Err(_) => value.clone(),
            };
            headers.append(name, owned);
        }
    }
    parts.headers = headers;
    let owned_uri = |uri: &mut http::Uri| {
        if let Ok(owned) = http::Uri::try_from(uri.to_string()) {
            *uri = owned;
        }
    };
    owned_uri(&mut parts.uri);
    if let Some(axum::extract::OriginalUri(original)) = parts.extensions.get_mut() {
        owned_uri(original);
    }
    http::Request::from_parts(parts, body)
}

/// Whether this socket brought its user online in the whole cluster.
#[derive(Debug, Clone, Copy)]
pub struct CameOnline(pub bool);

/// After the CONNECT is confirmed: announce presence.
pub async fn connected(
    socket: SocketRef,
    Extension(user): Extension<SocketUser>,
    Extension(CameOnline(first)): Extension<CameOnline>,
    State(ctx): State<Arc<SocketContext>>,
) {
    ctx.metrics.sockets.inc();
    if first {
        ctx.metrics
            .presence_changes
            .with_label_values(&["online"])
            .inc();
        ctx.realtime
            .to_all("presence", &json!({"userId": user.id, "online": true}))
            .await;
    }
    match ctx.presence.online_users().await {
        Ok(online) => {
            let others: Vec<Uuid> = online.into_iter().filter(|id| *id != user.id).collect();
            if !others.is_empty() {
                let _ = socket.emit("presenceBulk", &json!({"onlineUserIds": others}));
            }
        }
        Err(err) => tracing::warn!(error = %err, "reading presence failed"),
    }
}

async fn disconnected(
    Extension(user): Extension<SocketUser>,
    State(ctx): State<Arc<SocketContext>>,
) {
    ctx.metrics.sockets.dec();
    ctx.typing.cancel(user.id);
    match ctx.presence.disconnect(user.id).await {
        Ok(true) => announce_offline(&ctx, user.id).await,
        Ok(false) => {}
        Err(err) => tracing::warn!(error = %err, "recording presence failed"),
    }
}

/// Tells everyone that `user` went offline.
pub async fn announce_offline(ctx: &SocketContext, user: Uuid) {
    ctx.metrics
        .presence_changes
        .with_label_values(&["offline"])
        .inc();
    let last_seen = js_time(time::OffsetDateTime::now_utc());
    ctx.realtime
        .to_all(
            "presence",
            &json!({"userId": user, "online": false, "lastSeen": last_seen}),
        )
        .await;
}

/// Why `sendMessage` failed: a rule with its exact ack text, or anything else.
enum SendFailure {
    Rejected(&'static str),
    Failed,
}

const FAILED: &str = "Failed to send message";

/// Events of one socket waiting to be handled, in arrival order.
const INBOX_CAPACITY: usize = 1024;

/// One socket's incoming events.
enum Job {
    Send {
        socket: SocketRef,
        payload: Option<Value>,
        ack: AckSender,
    },
    Typing(Option<Value>),
    Delivered(Option<Value>),
    MarkRead(Option<Value>),
}

/// The queue of a socket's events, handled one at a time and in order, as the
/// original's single-threaded listeners did (socketioxide would otherwise run
/// each event in its own task, and a `typing: false` could overtake the
/// `typing: true` before it, or two messages swap places).
///
/// A drain task runs only while there are events: an idle socket holds an
/// empty queue and no task (a task and a channel per socket cost about 5 KiB
/// of every idle connection).
#[derive(Clone, Default)]
struct Inbox(Arc<Mutex<InboxState>>);

#[derive(Default)]
struct InboxState {
    jobs: VecDeque<Job>,
    draining: bool,
}

impl Inbox {
    /// Queues `job` and starts a drain task unless one is running; gives the
    /// job back when [`INBOX_CAPACITY`] events are already waiting.
    fn push(&self, ctx: Arc<SocketContext>, user: SocketUser, job: Job) -> Result<(), Job> {
        let mut state = self.0.lock().expect("inbox lock poisoned");
        if state.jobs.len() >= INBOX_CAPACITY {
            return Err(job);
        }
        state.jobs.push_back(job);
        if !state.draining {
            state.draining = true;
            tokio::spawn(drain_inbox(self.clone(), ctx, user));
        }
        Ok(())
    }

    /// The next job; when there is none the drain task ends, and the queue's
    /// memory is given back.
    fn next(&self) -> Option<Job> {
        let mut state = self.0.lock().expect("inbox lock poisoned");
        let job = state.jobs.pop_front();
        if job.is_none() {
            state.draining = false;
            state.jobs = VecDeque::new();
        }
        job
    }
}

/// Handles a socket's queued events until none is left. The work of a job is
/// boxed, so the task itself stays small while it waits.
async fn drain_inbox(inbox: Inbox, ctx: Arc<SocketContext>, user: SocketUser) {
    while let Some(job) = inbox.next() {
        match job {
            Job::Send {
                socket,
                payload,
                ack,
            } => Box::pin(send_message(&ctx, &user, socket, payload, ack)).await,
            Job::Typing(payload) => Box::pin(typing(&ctx, &user, payload)).await,
            Job::Delivered(payload) => Box::pin(message_delivered(&ctx, &user, payload)).await,
            Job::MarkRead(payload) => Box::pin(mark_read(&ctx, &user, payload)).await,
        }
    }
}

/// Every event of a client, queued by name (one handler per socket rather
/// than a table of four: idle sockets are many). Other events are ignored,
/// as the original did.
async fn on_event(
    socket: SocketRef,
    Event(event): Event,
    TryData(payload): TryData<Value>,
    ack: AckSender,
    Extension(inbox): Extension<Inbox>,
    Extension(user): Extension<SocketUser>,
    State(ctx): State<Arc<SocketContext>>,
) {
    let payload = payload.ok();
    let job = match event.as_str() {
        "sendMessage" => Job::Send {
            socket,
            payload,
            ack,
        },
        "typing" => Job::Typing(payload),
        "messageDelivered" => Job::Delivered(payload),
        "markRead" => Job::MarkRead(payload),
        _ => return,
    };
    if let Err(Job::Send { ack, .. }) = inbox.push(ctx, user, job) {
        let _ = ack.send(&json!({"ok": false, "error": FAILED}));
    }
}

async fn send_message(
    ctx: &SocketContext,
    user: &SocketUser,
    socket: SocketRef,
    payload: Option<Value>,
    ack: AckSender,
) {
    let reply = match deliver(ctx, user, payload).await {
        Ok(id) => {
            ctx.metrics.sent.with_label_values(&["websocket"]).inc();
            json!({"ok": true, "id": id})
        }
        Err(SendFailure::Rejected(text)) => json!({"ok": false, "error": text}),
        Err(SendFailure::Failed) => {
            let _ = socket.emit("server:error", &json!({"message": FAILED}));
            json!({"ok": false, "error": FAILED})
        }
    };
    let _ = ack.send(&reply);
}

/// Checks, stores (new path) or loads (re-send path) and delivers a message.
async fn deliver(
    ctx: &SocketContext,
    user: &SocketUser,
    payload: Option<Value>,
) -> Result<Uuid, SendFailure> {
    let Some(Value::Object(payload)) = payload else {
        return Err(SendFailure::Failed);
    };
    let me = user.id.to_string();
    if payload.get("senderId").and_then(Value::as_str) != Some(me.as_str()) {
        return Err(SendFailure::Rejected(
            "Unauthorized: cannot send as another user",
        ));
    }
    let Some(text) = payload.get("message").and_then(Value::as_str) else {
        return Err(SendFailure::Rejected("Invalid message content"));
    };
    let trimmed = js_trim(text);
    let length = js_length(trimmed);
    if length == 0 || length > 5000 {
        return Err(SendFailure::Rejected(
            "Message must be between 1 and 5000 characters",
        ));
    }
    let receiver = payload.get("receiverId");
    if !js_truthy(receiver) || receiver.and_then(Value::as_str) == Some(me.as_str()) {
        return Err(SendFailure::Rejected("Invalid receiver"));
    }
    let receiver = receiver
        .and_then(Value::as_str)
        .and_then(|r| Uuid::parse_str(r).ok())
        .ok_or(SendFailure::Rejected("Invalid receiver"))?;

    let message = if js_truthy(payload.get("_id")) {
        resend(ctx, user.id, receiver, &payload).await?
    } else {
        let envelope: Value = serde_json::from_str(trimmed).map_err(|_| {
            SendFailure::Rejected("Messages must be end-to-end encrypted (invalid envelope)")
        })?;
        if !crate::rest::is_encrypted_envelope(&envelope) {
            return Err(SendFailure::Rejected(
                "Messages must be end-to-end encrypted",
            ));
        }
        ctx.writer
            .write(NewMessage {
                sender_id: user.id,
                sender_username: user.username.clone(),
                receiver_id: receiver,
                body: trimmed.to_owned(),
            })
            .await
            .map_err(|err| {
                tracing::error!(error = %err, "storing a socket message failed");
                SendFailure::Failed
            })?
            .message
    };
    push(ctx, &user.username, &message).await;
    Ok(message.id)
}

/// The `_id` re-send path: the stored envelope is delivered; the payload's
/// `message` (the web client sends its plaintext here) is never stored or
/// forwarded.
async fn resend(
    ctx: &SocketContext,
    me: Uuid,
    receiver: Uuid,
    payload: &Map<String, Value>,
) -> Result<Message, SendFailure> {
    let id = payload
        .get("_id")
        .and_then(Value::as_str)
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or(SendFailure::Failed)?;
    let stored = store::find(&ctx.pool, id).await.map_err(|err| {
        tracing::error!(error = %err, "loading a message failed");
        SendFailure::Failed
    })?;
    let Some(message) = stored.filter(|m| m.sender_id == me && m.receiver_id == receiver) else {
        return Err(SendFailure::Rejected("Message not found"));
    };
    if !message.is_encrypted {
        return Err(SendFailure::Rejected(
            "Server policy: plaintext messages are not allowed",
        ));
    }
    Ok(message)
}

/// `typing false` then `receiveMessage`, to every socket of the receiver.
pub async fn push(ctx: &SocketContext, sender_username: &str, message: &Message) {
    ctx.typing.cancel(message.sender_id);
    ctx.realtime
        .to_user(
            message.receiver_id,
            "typing",
            &json!({"userId": message.sender_id, "isTyping": false}),
        )
        .await;
    let at = js_time(message.created_at);
    let mut event = json!({
        "_id": message.id, "id": message.id,
        "senderId": message.sender_id,
        "receiverId": message.receiver_id,
        "content": message.body, "message": message.body,
        "timestamp": at, "createdAt": at,
        "updatedAt": js_time(message.updated_at),
        "read": false, "isRead": false,
    });
    if !sender_username.is_empty() {
        event["senderUsername"] = json!(sender_username);
        event["senderName"] = json!(sender_username);
    }
    ctx.realtime
        .to_user(message.receiver_id, "receiveMessage", &event)
        .await;
}

async fn typing(ctx: &SocketContext, user: &SocketUser, payload: Option<Value>) {
    let Some(payload) = payload else { return };
    let Some(receiver) = payload
        .get("receiverId")
        .and_then(Value::as_str)
        .and_then(|r| Uuid::parse_str(r).ok())
    else {
        return;
    };
    if js_truthy(payload.get("isTyping")) {
        ctx.realtime
            .to_user(
                receiver,
                "typing",
                &json!({"userId": user.id, "isTyping": true}),
            )
            .await;
        ctx.typing.start(user.id, receiver);
    } else {
        ctx.typing.cancel(user.id);
        ctx.realtime
            .to_user(
                receiver,
                "typing",
                &json!({"userId": user.id, "isTyping": false}),
            )
            .await;
    }
}

async fn message_delivered(ctx: &SocketContext, user: &SocketUser, payload: Option<Value>) {
    let Some(id) = payload.and_then(|p| {
        p.get("messageId")
            .and_then(Value::as_str)
            .and_then(|id| Uuid::parse_str(id).ok())
    }) else {
        return;
    };
    match store::mark_delivered(&ctx.pool, id, user.id).await {
        Ok(Some(sender)) => {
            ctx.realtime
                .to_user(
                    sender,
                    "messageDelivered",
                    &json!({"messageId": id, "by": user.id}),
                )
                .await;
        }
        Ok(None) => {}
        Err(err) => tracing::warn!(error = %err, "marking a message delivered failed"),
    }
}

async fn mark_read(ctx: &SocketContext, user: &SocketUser, payload: Option<Value>) {
    let Some(sender) = payload.and_then(|p| {
        p.get("senderId")
            .and_then(Value::as_str)
            .and_then(|id| Uuid::parse_str(id).ok())
    }) else {
        return;
    };
    match store::mark_read(&ctx.pool, user.id, sender).await {
        Ok(count) => ctx
            .metrics
            .read
            .with_label_values(&[] as &[&str])
            .inc_by(count),
        Err(err) => tracing::warn!(error = %err, "marking messages read failed"),
    }
    ctx.realtime
        .to_user(sender, "messageRead", &json!({"by": user.id}))
        .await;
}

/// Typing indicators that turn themselves off: one timer per sender.
#[derive(Clone)]
pub struct Typing {
    timers: Arc<Mutex<HashMap<Uuid, AbortHandle>>>,
    realtime: Realtime,
    timeout: Duration,
}

impl Typing {
    pub fn new(realtime: Realtime, timeout: Duration) -> Self {
        Self {
            timers: Arc::default(),
            realtime,
            timeout,
        }
    }

    /// (Re)starts `sender`'s timer; when it fires, `receiver` sees `isTyping: false`.
    pub fn start(&self, sender: Uuid, receiver: Uuid) {
        let realtime = self.realtime.clone();
        let timers = self.timers.clone();
        let timeout = self.timeout;
        let mut guard = self.timers.lock().expect("typing lock poisoned");
        if let Some(previous) = guard.remove(&sender) {
            previous.abort();
        }
        let task = tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            timers.lock().expect("typing lock poisoned").remove(&sender);
            realtime
                .to_user(
                    receiver,
                    "typing",
                    &json!({"userId": sender, "isTyping": false}),
                )
                .await;
        });
        guard.insert(sender, task.abort_handle());
    }

    /// Cancels `sender`'s timer silently.
    pub fn cancel(&self, sender: Uuid) {
        if let Some(timer) = self
            .timers
            .lock()
            .expect("typing lock poisoned")
            .remove(&sender)
        {
            timer.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::own_request_head;
    use axum::extract::OriginalUri;
    use bytes::Bytes;
    use http::header::{COOKIE, SEC_WEBSOCKET_KEY, USER_AGENT};
    use http::{HeaderValue, Request, Uri};

    /// The request head as hyper leaves it: the URI and every header value are
    /// slices of one read buffer.
    fn parsed_from(buffer: &Bytes) -> Request<()> {
        let text = std::str::from_utf8(buffer).unwrap();
        let slice = |part: &str| {
            let at = text.find(part).unwrap();
            buffer.slice(at..at + part.len())
        };
        let uri =
            Uri::from_maybe_shared(slice("/chat/socket.io/?EIO=4&transport=websocket")).unwrap();
        let mut request = Request::builder().uri(uri.clone()).body(()).unwrap();
        request.extensions_mut().insert(OriginalUri(uri));
        let mut cookie = HeaderValue::from_maybe_shared(slice("jwt=header.claims.sig")).unwrap();
        cookie.set_sensitive(true);
        request.headers_mut().insert(COOKIE, cookie);
        request.headers_mut().insert(
            SEC_WEBSOCKET_KEY,
            HeaderValue::from_maybe_shared(slice("dGhlIHNhbXBsZSBub25jZQ==")).unwrap(),
        );
        request.headers_mut().insert(
            USER_AGENT,
            HeaderValue::from_maybe_shared(slice("bench/1.0")).unwrap(),
        );
        request.extensions_mut().insert(7u8);
        request
    }

    #[test]
    fn the_kept_request_head_no_longer_points_into_the_read_buffer() {
        let mut raw = b"GET /chat/socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nuser-agent: bench/1.0\r\ncookie: jwt=header.claims.sig\r\n\r\n".to_vec();
        raw.resize(8192, 0);
        let buffer = Bytes::from(raw);
        let inside = |bytes: &[u8]| buffer.as_ptr_range().contains(&bytes.as_ptr());
        let request = parsed_from(&buffer);
        assert!(
            inside(request.headers()[COOKIE].as_bytes()),
            "precondition: shared"
        );
        assert!(
            inside(request.uri().path().as_bytes()),
            "precondition: shared"
        );

        let owned = own_request_head(request);

        for (name, value) in owned.headers() {
            assert!(
                !inside(value.as_bytes()),
                "{name} still points into the buffer"
            );
        }
        assert!(!inside(owned.uri().path().as_bytes()));
        let OriginalUri(original) = owned.extensions().get().unwrap();
        assert!(!inside(original.path().as_bytes()));
        assert_eq!(original, "/chat/socket.io/?EIO=4&transport=websocket");
        assert_eq!(owned.uri(), "/chat/socket.io/?EIO=4&transport=websocket");
        assert_eq!(owned.headers()[COOKIE], "jwt=header.claims.sig");
        assert!(owned.headers()[COOKIE].is_sensitive());
        assert_eq!(
            owned.headers()[SEC_WEBSOCKET_KEY],
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        assert!(
            owned.headers().get(USER_AGENT).is_none(),
            "only the kept headers stay"
        );
        assert_eq!(owned.extensions().get::<u8>(), Some(&7));
    }
}

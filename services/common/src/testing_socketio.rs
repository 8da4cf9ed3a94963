//! A small Socket.IO client for tests, the end-to-end suite and load generation
//! (feature `test-support`).
//!
//! It speaks Engine.IO v4 and Socket.IO v5 (what socket.io 4.x servers speak) over
//! the WebSocket transport only (no HTTP long-polling), on the main namespace `/`,
//! with the default JSON parser. Binary packets are not supported. `http://` and
//! `ws://` URLs connect in plain text; `https://` and `wss://` over TLS (rustls with
//! the ring provider and the web PKI roots, or any certificate with
//! [`ConnectOptions::insecure_tls`]).
//!
//! Each [`SocketIoClient`] owns one background task that owns the WebSocket: it
//! answers the server's Engine.IO pings, routes acknowledgements to the waiting
//! [`SocketIoClient::emit_with_ack`] calls, and queues server events for
//! [`SocketIoClient::next_event`]. Writes reach the task through a bounded channel,
//! so emitting only needs `&self`. A connection costs one task, two channels and a
//! WebSocket with a 4 KiB read buffer, so many thousands of them are cheap. Server
//! events are queued without bound until read: a long-lived client that does not
//! care about events should still drain them now and then.
//!
//! Every wait is bounded: connecting gives up after 10 seconds, an emit waiting for
//! room in a full send queue after 10 seconds, and the connection is considered dead
//! when the server stays silent for longer than its `pingInterval + pingTimeout`.
//! Malformed input from the server never panics.
//!
//! ```ignore
//! let mut client = SocketIoClient::connect(ConnectOptions::new(
//!     "http://127.0.0.1:8080",
//!     "/chat/socket.io/",
//! ))
//! .await?;
//! client.emit("message", json!({"text": "hi"})).await?;
//! let reply = client.expect_event("message", Duration::from_secs(5)).await;
//! client.disconnect().await;
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// How long [`SocketIoClient::connect`] may take in total (TCP, WebSocket upgrade,
/// Engine.IO open, Socket.IO connect).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an emit waits for room in a full send queue.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the WebSocket close handshake may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Packets queued for the connection task before emitters wait.
const SEND_QUEUE: usize = 64;
/// WebSocket read buffer per connection (tungstenite allocates it eagerly; its
/// default of 128 KiB would cost gigabytes in a load generator).
const READ_BUFFER_SIZE: usize = 4 * 1024;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// Pending acknowledgements by ack id; each resolves with the first ack argument.
type AckMap = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// Where and how to connect.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Base URL of the server, e.g. `http://127.0.0.1:8080` (`ws://` works too).
    pub url: String,
    /// Engine.IO path, e.g. `/chat/socket.io/`.
    pub path: String,
    /// Auth payload sent with the Socket.IO CONNECT packet (socket.io's `auth`
    /// option); should be a JSON object.
    pub auth: Option<Value>,
    /// Extra headers for the WebSocket upgrade request, e.g. `("Cookie", "a=b")`.
    /// A name given here replaces the client's own header of that name; a name
    /// given several times is sent several times.
    pub headers: Vec<(String, String)>,
    /// Bind the TCP socket to this source address (e.g. `127.0.0.2`) before
    /// connecting, so a load generator can open more connections than one source
    /// address has ports. Only server addresses of the same family are tried.
    pub local_addr: Option<IpAddr>,
    /// Over TLS, accept any server certificate (self-signed, wrong name, expired).
    /// Signatures in the handshake are still checked. For test deployments only.
    pub insecure_tls: bool,
}

impl ConnectOptions {
    /// Options for `url` and `path`, without auth, headers or source address.
    pub fn new(url: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            path: path.into(),
            ..Self::default()
        }
    }
}

/// Why [`SocketIoClient::connect`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The server answered the Socket.IO CONNECT with CONNECT_ERROR (packet type
    /// 4), e.g. because a connect middleware rejected the auth payload.
    #[error("connection refused by the server: {message}")]
    Refused {
        /// The `message` field of the CONNECT_ERROR payload.
        message: String,
    },
    /// The URL, a header, the TCP connection or the WebSocket upgrade failed, or
    /// the connection closed during the handshake.
    #[error("transport error: {0}")]
    Transport(String),
    /// The server sent something this client does not understand during the
    /// handshake.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The handshake did not complete within 10 seconds.
    #[error("timed out connecting")]
    Timeout,
}

/// Why an emit failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The connection is closed (by either side, or because the server went silent).
    #[error("the connection is closed")]
    Closed,
    /// The send queue stayed full, or the acknowledgement did not arrive in time.
    #[error("timed out")]
    Timeout,
}

/// One Socket.IO connection on namespace `/`.
///
/// Dropping the client aborts its connection task, which closes the TCP connection
/// without a goodbye; [`SocketIoClient::disconnect`] leaves politely.
pub struct SocketIoClient {
    sid: String,
    max_payload: Option<u64>,
    commands: mpsc::Sender<Command>,
    events: mpsc::UnboundedReceiver<(String, Value)>,
    acks: AckMap,
    next_ack_id: AtomicU64,
    task: AbortOnDrop,
}

impl fmt::Debug for SocketIoClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocketIoClient")
            .field("sid", &self.sid)
            .finish_non_exhaustive()
    }
}

impl SocketIoClient {
    /// Connects to the main namespace.
    ///
    /// Opens a WebSocket to `{url}{path}?EIO=4&transport=websocket` (with `http`
    /// turned into `ws`), reads the Engine.IO OPEN packet, sends the Socket.IO
    /// CONNECT packet with `auth` if any, and waits for the server's CONNECT (the
    /// socket is connected) or CONNECT_ERROR ([`ConnectError::Refused`]). The whole
    /// handshake is bounded by a 10 second timeout.
    pub async fn connect(options: ConnectOptions) -> Result<Self, ConnectError> {
        timeout(CONNECT_TIMEOUT, Self::connect_inner(options))
            .await
            .unwrap_or(Err(ConnectError::Timeout))
    }

    async fn connect_inner(options: ConnectOptions) -> Result<Self, ConnectError> {
        let request = build_request(&options)?;
        let stream = open_tcp(request.uri(), options.local_addr).await?;
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_SIZE)
            .write_buffer_size(0);
        let connector = if request.uri().scheme_str() == Some("wss") {
            Connector::Rustls(tls_config(options.insecure_tls))
        } else {
            Connector::Plain
        };
        let (mut ws, _response) = tokio_tungstenite::client_async_tls_with_config(
            request,
            stream,
            Some(config),
            Some(connector),
        )
        .await
        .map_err(upgrade_error)?;

        let open = read_open(&mut ws).await?;
        let connect = match &options.auth {
            Some(auth) => format!("40{auth}"),
            None => "40".to_owned(),
        };
        ws.send(Message::text(connect))
            .await
            .map_err(|e| ConnectError::Transport(e.to_string()))?;

        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let sid = match await_connect(&mut ws, &events_tx).await {
            Ok(sid) => sid,
            Err(error) => {
                // Best effort: tell the server we are leaving before dropping the socket.
                let _ = timeout(CLOSE_TIMEOUT, ws.close(None)).await;
                return Err(error);
            }
        };

        // The server is considered gone when it stays silent for longer than it
        // promised to ping (socket.io-client does the same).
        let silence_limit = Duration::from_millis(open.ping_interval)
            .saturating_add(Duration::from_millis(open.ping_timeout));
        let acks = AckMap::default();
        let (commands_tx, commands_rx) = mpsc::channel(SEND_QUEUE);
        let task = tokio::spawn(run_connection(
            ws,
            commands_rx,
            events_tx,
            Arc::clone(&acks),
            silence_limit,
        ));
        Ok(Self {
            sid,
            max_payload: open.max_payload,
            commands: commands_tx,
            events: events_rx,
            acks,
            next_ack_id: AtomicU64::new(0),
            task: AbortOnDrop(task),
        })
    }

    /// The Socket.IO session id the server assigned to this socket (`socket.id` on
    /// the server).
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// The `maxPayload` the server announced in its Engine.IO OPEN packet, if any.
    /// This client does not enforce it, so tests can exceed it on purpose.
    pub fn max_payload(&self) -> Option<u64> {
        self.max_payload
    }

    /// Emits `event` with one argument: `42["event",data]`.
    ///
    /// `Ok` means the packet was handed to the connection task, not that the server
    /// received it.
    pub async fn emit(&self, event: &str, data: Value) -> Result<(), ClientError> {
        self.send(encode_event(None, event, vec![data])).await
    }

    /// Emits `event` with any number of arguments, e.g. none at all: `42["event"]`.
    pub async fn emit_raw_args(&self, event: &str, args: Vec<Value>) -> Result<(), ClientError> {
        self.send(encode_event(None, event, args)).await
    }

    /// Sends `text` as one WebSocket text frame, as is: e.g. a malformed packet, to
    /// see how the server copes. `Ok` means it was handed to the connection task.
    pub async fn send_raw(&self, text: &str) -> Result<(), ClientError> {
        self.send(text.to_owned()).await
    }

    /// Emits `event` with one argument and asks for an acknowledgement:
    /// `42<id>["event",data]`, with ids counting up from 0. Resolves with the first
    /// argument of the server's `43<id>[...]` (`Null` if it acknowledged with no
    /// arguments).
    pub async fn emit_with_ack(
        &self,
        event: &str,
        data: Value,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        let id = self.next_ack_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.acks).insert(id, tx);
        // Removes the entry however this call ends: ack, timeout, error or being
        // dropped by the caller.
        let _pending = PendingAck {
            acks: &self.acks,
            id,
        };
        let text = encode_event(Some(id), event, vec![data]);
        let exchange = async {
            self.send(text).await?;
            // The connection task drops the sender when the connection ends.
            rx.await.map_err(|_| ClientError::Closed)
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(ClientError::Timeout))
    }

    /// The next event the server emitted: its name and first argument (`Null` if it
    /// had none). `None` when `timeout` passes first, or when the connection has
    /// closed and every event received before has been read.
    ///
    /// Events the server emitted with an ack id are delivered like any other, but
    /// this client never acknowledges them.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<(String, Value)> {
        tokio::time::timeout(timeout, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next event already received, without waiting; `None` if there is none
    /// (yet). Lets a load generator holding many idle connections drain them.
    pub fn try_next_event(&mut self) -> Option<(String, Value)> {
        self.events.try_recv().ok()
    }

    /// Whether the connection has ended (closed by either side, or the server
    /// went silent). Events received before the end can still be read.
    pub fn is_closed(&self) -> bool {
        self.commands.is_closed()
    }

    /// Waits for the event `name` and returns its first argument, discarding the
    /// other events received before it. `None` on timeout or close.
    pub async fn expect_event(&mut self, name: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let (event, data) = timeout_at(deadline, self.events.recv()).await.ok()??;
            if event == name {
                return Some(data);
            }
        }
    }

    /// Whether the event `name` did NOT arrive within `within`. Other events
    /// received meanwhile are discarded. Returns `true` early if the connection
    /// closes (the event can no longer arrive), `false` as soon as `name` arrives.
    pub async fn expect_no_event(&mut self, name: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            match timeout_at(deadline, self.events.recv()).await {
                Err(_) | Ok(None) => return true,
                Ok(Some((event, _))) if event == name => return false,
                Ok(Some(_)) => {}
            }
        }
    }

    /// Leaves politely: sends the Socket.IO DISCONNECT packet `41`, then closes the
    /// WebSocket and waits (a few seconds at most) for the close handshake.
    pub async fn disconnect(mut self) {
        if timeout(CLOSE_TIMEOUT, self.commands.send(Command::Disconnect))
            .await
            .is_ok_and(|sent| sent.is_ok())
        {
            let _ = timeout(CLOSE_TIMEOUT * 2, &mut self.task.0).await;
        }
        // Dropping `self` aborts the task if it is still running.
    }

    /// Queues a text frame for the connection task.
    async fn send(&self, text: String) -> Result<(), ClientError> {
        match self.commands.try_send(Command::Send(text)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ClientError::Closed),
            Err(mpsc::error::TrySendError::Full(command)) => {
                match timeout(SEND_TIMEOUT, self.commands.send(command)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(ClientError::Closed),
                    Err(_) => Err(ClientError::Timeout),
                }
            }
        }
    }
}

/// What the client asks of the connection task.
enum Command {
    /// Send this text frame.
    Send(String),
    /// Send `41`, close the WebSocket and stop.
    Disconnect,
}

/// Aborts the connection task when the client is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Forgets a pending acknowledgement when `emit_with_ack` ends.
struct PendingAck<'a> {
    acks: &'a AckMap,
    id: u64,
}

impl Drop for PendingAck<'_> {
    fn drop(&mut self) {
        lock(self.acks).remove(&self.id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The map stays consistent even if a holder panicked, so poisoning is ignored.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// Handshake

/// The fields of the Engine.IO OPEN packet this client uses.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OpenPacket {
    #[allow(dead_code)] // Checked for presence: an OPEN packet without a sid is invalid.
    sid: String,
    ping_interval: u64,
    ping_timeout: u64,
    #[serde(default)]
    max_payload: Option<u64>,
}

/// `{url}{path}?EIO=4&transport=websocket` with the scheme turned into `ws` (or
/// `wss`), plus the extra headers.
fn build_request(options: &ConnectOptions) -> Result<http::Request<()>, ConnectError> {
    let base = options.url.trim_end_matches('/');
    let (scheme, authority_and_path) = if let Some(rest) = base.strip_prefix("http://") {
        ("ws", rest)
    } else if let Some(rest) = base.strip_prefix("ws://") {
        ("ws", rest)
    } else if let Some(rest) = base.strip_prefix("https://") {
        ("wss", rest)
    } else if let Some(rest) = base.strip_prefix("wss://") {
        ("wss", rest)
    } else {
        return Err(ConnectError::Transport(format!(
            "the URL must start with http://, https://, ws:// or wss://: {base}"
        )));
    };
    let slash = if options.path.starts_with('/') {
        ""
    } else {
        "/"
    };
    let separator = if options.path.contains('?') { '&' } else { '?' };
    let url = format!(
        "{scheme}://{authority_and_path}{slash}{}{separator}EIO=4&transport=websocket",
        options.path
    );
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError::Transport(format!("invalid URL {url}: {e}")))?;

    let mut headers = Vec::with_capacity(options.headers.len());
    for (name, value) in &options.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| ConnectError::Transport(format!("invalid header name {name:?}: {e}")))?;
        let value = HeaderValue::from_str(value).map_err(|e| {
            ConnectError::Transport(format!("invalid value for header {name}: {e}"))
        })?;
        headers.push((name, value));
    }
    for (name, _) in &headers {
        request.headers_mut().remove(name);
    }
    for (name, value) in headers {
        request.headers_mut().append(name, value);
    }
    Ok(request)
}

/// Opens the TCP connection, from `local_addr` if given.
async fn open_tcp(uri: &http::Uri, local_addr: Option<IpAddr>) -> Result<TcpStream, ConnectError> {
    let host = uri
        .host()
        .ok_or_else(|| ConnectError::Transport(format!("no host in {uri}")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let default_port = if uri.scheme_str() == Some("wss") {
        443
    } else {
        80
    };
    let port = uri.port_u16().unwrap_or(default_port);
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| ConnectError::Transport(format!("cannot resolve {host}: {e}")))?;

    let mut last_error = None;
    for addr in addrs {
        if local_addr.is_some_and(|local| local.is_ipv4() != addr.is_ipv4()) {
            continue;
        }
        match connect_tcp(addr, local_addr).await {
            Ok(stream) => {
                // Small packets: send them at once.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last_error = Some(format!("{addr}: {e}")),
        }
    }
    Err(ConnectError::Transport(match last_error {
        Some(error) => format!("cannot connect to {error}"),
        None => format!("no address of {host} matches the source address family"),
    }))
}

async fn connect_tcp(addr: SocketAddr, local_addr: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(local) = local_addr else {
        return TcpStream::connect(addr).await;
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(local, 0))?;
    socket.connect(addr).await
}

/// The rustls client configuration for `wss://` (ring provider; web PKI roots, or
/// any certificate when `insecure`), built once per process for each mode.
fn tls_config(insecure: bool) -> Arc<rustls::ClientConfig> {
    static VERIFIED: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    static INSECURE: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let cell = if insecure { &INSECURE } else { &VERIFIED };
    Arc::clone(cell.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions");
        let config = if insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        } else {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        Arc::new(config)
    }))
}

/// Accepts any server certificate, but still checks the handshake signatures
/// (so the peer holds the key of the certificate it sent).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn upgrade_error(error: tungstenite::Error) -> ConnectError {
    match error {
        tungstenite::Error::Http(response) => {
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            ConnectError::Transport(format!(
                "WebSocket upgrade refused with HTTP {}: {body}",
                response.status()
            ))
        }
        other => ConnectError::Transport(format!("WebSocket upgrade failed: {other}")),
    }
}

/// Reads the Engine.IO OPEN packet, which must come first.
async fn read_open(ws: &mut Ws) -> Result<OpenPacket, ConnectError> {
    loop {
        let text = match ws.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None => {
                return Err(ConnectError::Transport(
                    "connection closed before the Engine.IO OPEN packet".to_owned(),
                ));
            }
            Some(Ok(_)) => continue, // WebSocket ping/pong, stray binary frames.
            Some(Err(e)) => return Err(ConnectError::Transport(e.to_string())),
        };
        return match parse_engine(&text) {
            Ok(EnginePacket::Open(json)) => serde_json::from_str(json).map_err(|e| {
                ConnectError::Protocol(format!("invalid Engine.IO OPEN packet {json:?}: {e}"))
            }),
            _ => Err(ConnectError::Protocol(format!(
                "expected the Engine.IO OPEN packet, got {:?}",
                truncate(&text)
            ))),
        };
    }
}

/// Waits for the server's answer to our CONNECT; returns the Socket.IO sid.
async fn await_connect(
    ws: &mut Ws,
    events: &mpsc::UnboundedSender<(String, Value)>,
) -> Result<String, ConnectError> {
    let closed =
        || ConnectError::Transport("connection closed during the Socket.IO handshake".to_owned());
    loop {
        let text = match ws.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None => return Err(closed()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(ConnectError::Transport(e.to_string())),
        };
        let message = match parse_engine(&text) {
            Ok(EnginePacket::Message(message)) => message,
            Ok(EnginePacket::Ping(data)) => {
                ws.send(Message::text(format!("3{data}")))
                    .await
                    .map_err(|e| ConnectError::Transport(e.to_string()))?;
                continue;
            }
            Ok(EnginePacket::Close) => return Err(closed()),
            Ok(_) => continue,
            Err(e) => return Err(ConnectError::Protocol(e)),
        };
        match parse_socketio(message).map_err(ConnectError::Protocol)? {
            SocketPacket::Connect { nsp: "/", data } => {
                return data
                    .as_ref()
                    .and_then(|data| data.get("sid"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        ConnectError::Protocol(format!(
                            "CONNECT packet without a sid: {:?}",
                            truncate(&text)
                        ))
                    });
            }
            SocketPacket::ConnectError { nsp: "/", message } => {
                return Err(ConnectError::Refused { message });
            }
            SocketPacket::Disconnect { nsp: "/" } => return Err(closed()),
            SocketPacket::Event {
                nsp: "/",
                name,
                args,
                ..
            } => {
                let _ = events.send((name, first(args)));
            }
            _ => {} // Other namespaces; a stray ACK.
        }
    }
}

// ---------------------------------------------------------------------------
// Connection task

/// How the connection task's loop ended.
enum End {
    /// The client asked to leave: send `41`, then close.
    Disconnect,
    /// The server disconnected the socket (`41`) or closed the Engine.IO session
    /// (`1`): close the WebSocket.
    ServerLeft,
    /// The peer sent a close frame: complete the close handshake.
    PeerClosed,
    /// The connection broke, or the server went silent: just drop it.
    Broken,
}

/// Owns the WebSocket until the connection ends.
async fn run_connection(
    mut ws: Ws,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::UnboundedSender<(String, Value)>,
    acks: AckMap,
    silence_limit: Duration,
) {
    let silence = tokio::time::sleep(silence_limit);
    tokio::pin!(silence);
    let end = loop {
        tokio::select! {
            frame = ws.next() => {
                silence.as_mut().reset(Instant::now() + silence_limit);
                match frame {
                    Some(Ok(Message::Text(text))) => match handle_text(&text, &events, &acks) {
                        Inbound::Nothing => {}
                        Inbound::Reply(reply) => {
                            if ws.send(Message::text(reply)).await.is_err() {
                                break End::Broken;
                            }
                        }
                        Inbound::Leave => break End::ServerLeft,
                    },
                    Some(Ok(Message::Close(_))) => break End::PeerClosed,
                    // Binary frames only carry attachments of binary packets, which are
                    // unsupported; tungstenite answers WebSocket pings itself.
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break End::Broken,
                }
            }
            command = commands.recv() => match command {
                Some(Command::Send(text)) => {
                    if ws.send(Message::text(text)).await.is_err() {
                        break End::Broken;
                    }
                }
                Some(Command::Disconnect) | None => break End::Disconnect,
            },
            () = &mut silence => break End::Broken,
        }
    };

    // Refuse new work and fail the pending acks before the (bounded) goodbye. Closing
    // the command channel first means an ack registered after the clear below can
    // never be sent, so its emit fails at once instead of waiting for its timeout.
    commands.close();
    lock(&acks).clear();
    drop(events);

    let goodbye = async {
        match end {
            End::Disconnect => {
                if ws.send(Message::text("41")).await.is_ok() {
                    let _ = ws.close(None).await;
                    drain(&mut ws).await;
                }
            }
            End::ServerLeft => {
                let _ = ws.close(None).await;
                drain(&mut ws).await;
            }
            // Reading on flushes tungstenite's queued reply to the close frame.
            End::PeerClosed => drain(&mut ws).await,
            End::Broken => {}
        }
    };
    let _ = timeout(CLOSE_TIMEOUT, goodbye).await;
}

/// Reads until the WebSocket is closed, completing the close handshake.
async fn drain(ws: &mut Ws) {
    while let Some(Ok(_)) = ws.next().await {}
}

/// What the connection task does after a text frame.
#[derive(Debug, PartialEq)]
enum Inbound {
    Nothing,
    Reply(String),
    Leave,
}

/// Handles one text frame from the server. Malformed packets and binary packets
/// (unsupported) are ignored rather than ending the connection; a test waiting for
/// the event they carried times out instead.
fn handle_text(
    text: &str,
    events: &mpsc::UnboundedSender<(String, Value)>,
    acks: &AckMap,
) -> Inbound {
    match parse_engine(text) {
        Ok(EnginePacket::Ping(data)) => Inbound::Reply(format!("3{data}")),
        Ok(EnginePacket::Close) => Inbound::Leave,
        Ok(EnginePacket::Message(message)) => match parse_socketio(message) {
            Ok(SocketPacket::Event {
                nsp: "/",
                name,
                args,
                ..
            }) => {
                // The receiver lives as long as the client, which aborts this task.
                let _ = events.send((name, first(args)));
                Inbound::Nothing
            }
            Ok(SocketPacket::Ack { nsp: "/", id, args }) => {
                // Unknown ids belong to emits that already timed out.
                if let Some(waiter) = lock(acks).remove(&id) {
                    let _ = waiter.send(first(args));
                }
                Inbound::Nothing
            }
            Ok(SocketPacket::Disconnect { nsp: "/" }) => Inbound::Leave,
            Ok(_) | Err(_) => Inbound::Nothing,
        },
        Ok(_) | Err(_) => Inbound::Nothing,
    }
}

// ---------------------------------------------------------------------------
// Packets

/// An Engine.IO v4 packet, as carried by one WebSocket text frame.
#[derive(Debug, PartialEq)]
enum EnginePacket<'a> {
    /// `0{json}`: handshake data.
    Open(&'a str),
    /// `1`: the session is closing.
    Close,
    /// `2[data]`: heartbeat from the server; answered with `3[data]`.
    Ping(&'a str),
    /// `3[data]`.
    Pong,
    /// `4<socket.io packet>`.
    Message(&'a str),
    /// `5`: transport upgrade (never sent on a WebSocket-only session).
    Upgrade,
    /// `6`.
    Noop,
}

fn parse_engine(text: &str) -> Result<EnginePacket<'_>, String> {
    let Some(&kind) = text.as_bytes().first() else {
        return Err("empty Engine.IO packet".to_owned());
    };
    // `kind` is ASCII in every accepted case, so slicing after it is on a char boundary.
    let rest = || &text[1..];
    Ok(match kind {
        b'0' => EnginePacket::Open(rest()),
        b'1' => EnginePacket::Close,
        b'2' => EnginePacket::Ping(rest()),
        b'3' => EnginePacket::Pong,
        b'4' => EnginePacket::Message(rest()),
        b'5' => EnginePacket::Upgrade,
        b'6' => EnginePacket::Noop,
        _ => {
            return Err(format!(
                "unknown Engine.IO packet type in {:?}",
                truncate(text)
            ));
        }
    })
}

/// A Socket.IO v5 packet (without binary packets).
#[derive(Debug, PartialEq)]
enum SocketPacket<'a> {
    /// `0[nsp,][json]`: connected (from the server, with `{"sid":..}`).
    Connect { nsp: &'a str, data: Option<Value> },
    /// `1[nsp,]`.
    Disconnect { nsp: &'a str },
    /// `2[nsp,][id]["name",args..]`.
    Event {
        nsp: &'a str,
        id: Option<u64>,
        name: String,
        args: Vec<Value>,
    },
    /// `3[nsp,]id[args..]`.
    Ack {
        nsp: &'a str,
        id: u64,
        args: Vec<Value>,
    },
    /// `4[nsp,]{"message":..}`: the connection was refused.
    ConnectError { nsp: &'a str, message: String },
}

/// Parses `type [/nsp,] [ack id] [json]`.
fn parse_socketio(text: &str) -> Result<SocketPacket<'_>, String> {
    let invalid = |why: &str| format!("{why}: {:?}", truncate(text));
    let kind = match text.as_bytes().first() {
        Some(kind @ b'0'..=b'4') => kind - b'0',
        // BINARY_EVENT / BINARY_ACK: their attachments come as binary frames, which
        // this client does not support.
        Some(b'5' | b'6') => return Err(invalid("binary Socket.IO packets are not supported")),
        Some(_) => return Err(invalid("unknown Socket.IO packet type")),
        None => return Err("empty Socket.IO packet".to_owned()),
    };
    let mut rest = &text[1..];

    let mut nsp = "/";
    if rest.starts_with('/') {
        let end = rest.find(',').unwrap_or(rest.len());
        nsp = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or("");
    }

    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = if digits == 0 {
        None
    } else {
        let id = rest[..digits]
            .parse::<u64>()
            .map_err(|_| invalid("ack id out of range"))?;
        rest = &rest[digits..];
        Some(id)
    };

    let data = if rest.is_empty() {
        None
    } else {
        Some(serde_json::from_str::<Value>(rest).map_err(|e| invalid(&format!("bad JSON ({e})")))?)
    };

    match kind {
        0 => Ok(SocketPacket::Connect { nsp, data }),
        1 => Ok(SocketPacket::Disconnect { nsp }),
        2 => {
            let Some(Value::Array(mut args)) = data else {
                return Err(invalid("EVENT payload is not an array"));
            };
            // socket.io-parser accepts a string or a number as the event name.
            let name = match args.first() {
                Some(Value::String(_) | Value::Number(_)) => match args.remove(0) {
                    Value::String(name) => name,
                    number => number.to_string(),
                },
                _ => return Err(invalid("EVENT without a name")),
            };
            Ok(SocketPacket::Event {
                nsp,
                id,
                name,
                args,
            })
        }
        3 => {
            let Some(id) = id else {
                return Err(invalid("ACK without an id"));
            };
            let args = match data {
                Some(Value::Array(args)) => args,
                _ => return Err(invalid("ACK payload is not an array")),
            };
            Ok(SocketPacket::Ack { nsp, id, args })
        }
        _ => {
            let message = match data {
                Some(Value::Object(mut fields)) => match fields.remove("message") {
                    Some(Value::String(message)) => message,
                    Some(other) => other.to_string(),
                    None => Value::Object(fields).to_string(),
                },
                // Socket.IO v4 servers sent the message as a bare string.
                Some(Value::String(message)) => message,
                Some(other) => other.to_string(),
                None => String::new(),
            };
            Ok(SocketPacket::ConnectError { nsp, message })
        }
    }
}

/// `42[id]["event",args..]`.
fn encode_event(id: Option<u64>, event: &str, args: Vec<Value>) -> String {
    let mut array = Vec::with_capacity(args.len() + 1);
    array.push(Value::from(event));
    array.extend(args);
    let payload = Value::Array(array);
    match id {
        Some(id) => format!("42{id}{payload}"),
        None => format!("42{payload}"),
    }
}

/// The first argument, or `Null`.
fn first(args: Vec<Value>) -> Value {
    args.into_iter().next().unwrap_or(Value::Null)
}

/// A prefix of a packet for error messages.
fn truncate(text: &str) -> &str {
    match text.char_indices().nth(200) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event<'a>(nsp: &'a str, id: Option<u64>, name: &str, args: Vec<Value>) -> SocketPacket<'a> {
        SocketPacket::Event {
            nsp,
            id,
            name: name.to_owned(),
            args,
        }
    }

    #[test]
    fn engine_packets() {
        assert_eq!(
            parse_engine(r#"0{"sid":"a"}"#),
            Ok(EnginePacket::Open(r#"{"sid":"a"}"#))
        );
        assert_eq!(parse_engine("1"), Ok(EnginePacket::Close));
        assert_eq!(parse_engine("2"), Ok(EnginePacket::Ping("")));
        assert_eq!(parse_engine("2probe"), Ok(EnginePacket::Ping("probe")));
        assert_eq!(parse_engine("3"), Ok(EnginePacket::Pong));
        assert_eq!(
            parse_engine("42[\"a\"]"),
            Ok(EnginePacket::Message("2[\"a\"]"))
        );
        assert_eq!(parse_engine("5"), Ok(EnginePacket::Upgrade));
        assert_eq!(parse_engine("6"), Ok(EnginePacket::Noop));
        assert!(parse_engine("").is_err());
        assert!(parse_engine("7").is_err());
        assert!(parse_engine("x").is_err());
        assert!(parse_engine("é2").is_err());
    }

    #[test]
    fn open_packet() {
        let open: OpenPacket = serde_json::from_str(
            r#"{"sid":"abc","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#,
        )
        .unwrap();
        assert_eq!(open.sid, "abc");
        assert_eq!(open.ping_interval, 25000);
        assert_eq!(open.ping_timeout, 20000);
        assert_eq!(open.max_payload, Some(1_000_000));
        assert!(serde_json::from_str::<OpenPacket>(r#"{"sid":"abc"}"#).is_err());
    }

    #[test]
    fn connect_packets() {
        assert_eq!(
            parse_socketio(r#"0{"sid":"xyz"}"#),
            Ok(SocketPacket::Connect {
                nsp: "/",
                data: Some(json!({"sid": "xyz"}))
            })
        );
        assert_eq!(
            parse_socketio("0"),
            Ok(SocketPacket::Connect {
                nsp: "/",
                data: None
            })
        );
        assert_eq!(
            parse_socketio(r#"0/admin,{"sid":"q"}"#),
            Ok(SocketPacket::Connect {
                nsp: "/admin",
                data: Some(json!({"sid": "q"}))
            })
        );
    }

    #[test]
    fn disconnect_packets() {
        assert_eq!(
            parse_socketio("1"),
            Ok(SocketPacket::Disconnect { nsp: "/" })
        );
        assert_eq!(
            parse_socketio("1/admin,"),
            Ok(SocketPacket::Disconnect { nsp: "/admin" })
        );
        assert_eq!(
            parse_socketio("1/admin"),
            Ok(SocketPacket::Disconnect { nsp: "/admin" })
        );
    }

    #[test]
    fn event_packets() {
        assert_eq!(
            parse_socketio(r#"2["hello",{"a":1}]"#),
            Ok(event("/", None, "hello", vec![json!({"a": 1})]))
        );
        assert_eq!(
            parse_socketio(r#"2["bare"]"#),
            Ok(event("/", None, "bare", vec![]))
        );
        assert_eq!(
            parse_socketio(r#"212["hello",1,"two"]"#),
            Ok(event("/", Some(12), "hello", vec![json!(1), json!("two")]))
        );
        assert_eq!(
            parse_socketio(r#"2/chat,7["m",null]"#),
            Ok(event("/chat", Some(7), "m", vec![Value::Null]))
        );
        assert_eq!(
            parse_socketio(r#"2[42,"x"]"#),
            Ok(event("/", None, "42", vec![json!("x")]))
        );
        assert_eq!(
            parse_socketio(r#"2["ünï\"cødé",["é"]]"#),
            Ok(event("/", None, "ünï\"cødé", vec![json!(["é"])]))
        );
    }

    #[test]
    fn ack_packets() {
        assert_eq!(
            parse_socketio(r#"30[{"ok":true}]"#),
            Ok(SocketPacket::Ack {
                nsp: "/",
                id: 0,
                args: vec![json!({"ok": true})]
            })
        );
        assert_eq!(
            parse_socketio("3123[]"),
            Ok(SocketPacket::Ack {
                nsp: "/",
                id: 123,
                args: vec![]
            })
        );
        assert_eq!(
            parse_socketio(r#"3/x,5["a","b"]"#),
            Ok(SocketPacket::Ack {
                nsp: "/x",
                id: 5,
                args: vec![json!("a"), json!("b")]
            })
        );
    }

    #[test]
    fn connect_error_packets() {
        let refused = |message: &str| {
            Ok(SocketPacket::ConnectError {
                nsp: "/",
                message: message.to_owned(),
            })
        };
        assert_eq!(
            parse_socketio(r#"4{"message":"no \"token\" ✗"}"#),
            refused("no \"token\" ✗")
        );
        assert_eq!(
            parse_socketio(r#"4{"message":"m","data":{"x":1}}"#),
            refused("m")
        );
        assert_eq!(parse_socketio(r#"4"legacy""#), refused("legacy"));
        assert_eq!(parse_socketio(r#"4{"other":1}"#), refused(r#"{"other":1}"#));
        assert_eq!(parse_socketio("4"), refused(""));
        assert_eq!(
            parse_socketio(r#"4/admin,{"message":"m"}"#),
            Ok(SocketPacket::ConnectError {
                nsp: "/admin",
                message: "m".to_owned()
            })
        );
    }

    #[test]
    fn malformed_packets_are_errors() {
        for text in [
            "",
            "7",
            "x[]",
            "é",
            "2",
            "2[",
            "2[]",
            "2{}",
            "2[null]",
            "2[{\"a\":1}]",
            "2[\"a\"]trailing",
            "3[\"a\"]",
            "31{}",
            "31",
            "0{",
            "299999999999999999999999[\"a\"]",
            "51-[\"a\",{\"_placeholder\":true,\"num\":0}]",
            "61-0[{\"_placeholder\":true,\"num\":0}]",
            "2/",
            "2/nsp,",
        ] {
            assert!(parse_socketio(text).is_err(), "{text:?} should not parse");
        }
        // Errors on long or multi-byte input do not panic while quoting it.
        let long = format!("2[{}", "é".repeat(1000));
        assert!(parse_socketio(&long).is_err());
    }

    #[test]
    fn events_are_encoded() {
        assert_eq!(
            encode_event(None, "msg", vec![json!({"a": [1, 2]})]),
            r#"42["msg",{"a":[1,2]}]"#
        );
        assert_eq!(encode_event(None, "bare", vec![]), r#"42["bare"]"#);
        assert_eq!(
            encode_event(Some(17), "q\"x", vec![json!(1), Value::Null]),
            r#"4217["q\"x",1,null]"#
        );
        // What we encode, we parse back.
        let text = encode_event(Some(3), "round", vec![json!("trip")]);
        assert_eq!(
            parse_engine(&text).and_then(|p| match p {
                EnginePacket::Message(m) => parse_socketio(m),
                other => Err(format!("{other:?}")),
            }),
            Ok(event("/", Some(3), "round", vec![json!("trip")]))
        );
    }

    #[test]
    fn inbound_frames_are_routed() {
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let acks = AckMap::default();
        let (ack_tx, mut ack_rx) = oneshot::channel();
        lock(&acks).insert(4, ack_tx);

        assert_eq!(
            handle_text("2", &events_tx, &acks),
            Inbound::Reply("3".to_owned())
        );
        assert_eq!(handle_text("41", &events_tx, &acks), Inbound::Leave);
        assert_eq!(handle_text("1", &events_tx, &acks), Inbound::Leave);
        assert_eq!(
            handle_text("41/other,", &events_tx, &acks),
            Inbound::Nothing
        );
        assert_eq!(
            handle_text(r#"42/other,["x",1]"#, &events_tx, &acks),
            Inbound::Nothing
        );
        assert_eq!(handle_text("4garbage", &events_tx, &acks), Inbound::Nothing);
        assert_eq!(handle_text("", &events_tx, &acks), Inbound::Nothing);
        assert_eq!(
            handle_text(r#"42["e",1,2]"#, &events_tx, &acks),
            Inbound::Nothing
        );
        assert_eq!(
            handle_text(r#"42["bare"]"#, &events_tx, &acks),
            Inbound::Nothing
        );
        assert_eq!(handle_text("439[1]", &events_tx, &acks), Inbound::Nothing);
        assert_eq!(
            handle_text(r#"434[{"ok":1},2]"#, &events_tx, &acks),
            Inbound::Nothing
        );

        assert_eq!(events_rx.try_recv(), Ok(("e".to_owned(), json!(1))));
        assert_eq!(events_rx.try_recv(), Ok(("bare".to_owned(), Value::Null)));
        assert!(events_rx.try_recv().is_err());
        assert_eq!(ack_rx.try_recv(), Ok(json!({"ok": 1})));
        assert!(lock(&acks).is_empty());
    }

    #[test]
    fn requests_are_built() {
        let mut options = ConnectOptions::new("http://127.0.0.1:8080/", "/chat/socket.io/");
        options.headers = vec![
            ("Cookie".to_owned(), "a=b".to_owned()),
            ("X-Many".to_owned(), "1".to_owned()),
            ("X-Many".to_owned(), "2".to_owned()),
            ("Host".to_owned(), "chat.example".to_owned()),
        ];
        let request = build_request(&options).unwrap();
        assert_eq!(
            request.uri().to_string(),
            "ws://127.0.0.1:8080/chat/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(request.headers()["cookie"], "a=b");
        assert_eq!(request.headers().get_all("x-many").iter().count(), 2);
        assert_eq!(request.headers().get_all("host").iter().count(), 1);
        assert_eq!(request.headers()["host"], "chat.example");

        let options = ConnectOptions::new("ws://localhost:1", "socket.io?x=1");
        assert_eq!(
            build_request(&options).unwrap().uri().to_string(),
            "ws://localhost:1/socket.io?x=1&EIO=4&transport=websocket"
        );

        let options = ConnectOptions::new("https://chat.example/", "/chat/socket.io/");
        assert_eq!(
            build_request(&options).unwrap().uri().to_string(),
            "wss://chat.example/chat/socket.io/?EIO=4&transport=websocket"
        );
        let options = ConnectOptions::new("wss://chat.example:8443", "/s/");
        assert_eq!(
            build_request(&options).unwrap().uri().to_string(),
            "wss://chat.example:8443/s/?EIO=4&transport=websocket"
        );

        for url in ["ftp://h", "h:1"] {
            assert!(matches!(
                build_request(&ConnectOptions::new(url, "/")),
                Err(ConnectError::Transport(_))
            ));
        }
        let mut bad_header = ConnectOptions::new("http://h", "/");
        bad_header.headers = vec![("Bad Name".to_owned(), "v".to_owned())];
        assert!(matches!(
            build_request(&bad_header),
            Err(ConnectError::Transport(_))
        ));
        bad_header.headers = vec![("X".to_owned(), "line\nbreak".to_owned())];
        assert!(matches!(
            build_request(&bad_header),
            Err(ConnectError::Transport(_))
        ));
    }
}

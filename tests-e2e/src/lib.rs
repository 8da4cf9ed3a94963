//! The end-to-end suite's client: it drives a running Parley through its public
//! URL only, over HTTP and Socket.IO, exactly as the web client and other
//! clients do.
//!
//! Settings come from the environment (see the README's "End-to-end tests"):
//!
//! | Variable | Meaning |
//! |---|---|
//! | `E2E_BASE_URL` | required: the platform's public URL, e.g. `http://127.0.0.1:8080` or `https://chat.localtest.me` |
//! | `E2E_INSECURE_TLS` | `1`: accept any TLS certificate (self-signed test clusters) |
//! | `E2E_SMTP_LISTEN` | address the suite's SMTP sink binds (the platform's `SMTP_HOST`/`SMTP_PORT`); unset: email assertions are skipped |
//! | `E2E_JWT_SIGNING_KEY_FILE` | the platform's JWT signing key (PEM): adds a properly signed but expired token to the authorization checks |
//! | `E2E_RESTART_POSTGRES` | shell command that restarts the platform's PostgreSQL; unset: that resilience test is skipped |
//! | `E2E_RESTART_RABBITMQ` | shell command that restarts the platform's RabbitMQ; unset: that resilience test is skipped |
//!
//! Every user a test creates has a unique name (random suffix), so the suite can
//! run again and again against the same deployment, and its tests in parallel.
#![forbid(unsafe_code)]

pub mod mail;
pub mod tokens;

use std::sync::OnceLock;
use std::time::Duration;

use parley_common::testing_socketio::{ConnectError, ConnectOptions, SocketIoClient};
use rand::Rng;
use serde_json::{Value, json};

pub use parley_common::testing_socketio;

/// How long anything eventual (a notification, an email, a revocation reaching
/// every service) may take before a test gives up. Only bounds a failing test.
pub const EVENTUALLY: Duration = Duration::from_secs(60);
/// How long a test waits for a Socket.IO event or acknowledgement.
pub const SOCKET_WAIT: Duration = Duration::from_secs(15);
/// The password of every user the suite registers (meets the contract's rule).
pub const PASSWORD: &str = "Passw0rd!e2e";
/// The Socket.IO path of the contract.
pub const SOCKET_PATH: &str = "/chat/socket.io/";

/// The suite's settings, read once from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `E2E_BASE_URL` without a trailing slash.
    pub base_url: String,
    /// `E2E_INSECURE_TLS=1`.
    pub insecure_tls: bool,
    /// `E2E_SMTP_LISTEN`.
    pub smtp_listen: Option<String>,
    /// `E2E_JWT_SIGNING_KEY_FILE`.
    pub jwt_signing_key_file: Option<String>,
    /// `E2E_RESTART_POSTGRES`.
    pub restart_postgres: Option<String>,
    /// `E2E_RESTART_RABBITMQ`.
    pub restart_rabbitmq: Option<String>,
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// The settings.
///
/// # Panics
///
/// When `E2E_BASE_URL` is missing or not an http(s) URL: the suite needs a
/// running platform.
pub fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let base_url = non_empty_env("E2E_BASE_URL").unwrap_or_else(|| {
            panic!(
                "E2E_BASE_URL is not set. The end-to-end suite drives an already running \
                 Parley through its public URL: start one with `scripts/e2e.sh` (which sets \
                 it and runs this suite), or set E2E_BASE_URL=http://host:port yourself."
            )
        });
        assert!(
            base_url.starts_with("http://") || base_url.starts_with("https://"),
            "E2E_BASE_URL must start with http:// or https://, not {base_url:?}"
        );
        Settings {
            base_url: base_url.trim_end_matches('/').to_owned(),
            insecure_tls: non_empty_env("E2E_INSECURE_TLS").is_some_and(|v| v == "1"),
            smtp_listen: non_empty_env("E2E_SMTP_LISTEN"),
            jwt_signing_key_file: non_empty_env("E2E_JWT_SIGNING_KEY_FILE"),
            restart_postgres: non_empty_env("E2E_RESTART_POSTGRES"),
            restart_rabbitmq: non_empty_env("E2E_RESTART_RABBITMQ"),
        }
    })
}

/// `E2E_BASE_URL` + `path`.
pub fn url(path: &str) -> String {
    format!("{}{path}", settings().base_url)
}

fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .danger_accept_invalid_certs(settings().insecure_tls)
}

/// An HTTP client with its own cookie jar: one browser.
pub fn browser() -> reqwest::Client {
    client_builder()
        .cookie_store(true)
        .build()
        .expect("HTTP client")
}

/// An HTTP client without cookies.
pub fn plain() -> reqwest::Client {
    client_builder().build().expect("HTTP client")
}

/// `prefix` + `_` + 8 random lowercase hex digits: a username (3–30 characters
/// of `[a-z0-9_-]`) no earlier run has used. `prefix` must be at most 21
/// characters.
pub fn unique(prefix: &str) -> String {
    assert!(prefix.len() <= 21, "prefix {prefix:?} is too long");
    let suffix: u32 = rand::thread_rng().r#gen();
    format!("{prefix}_{suffix:08x}")
}

/// An HTTP answer: status, headers and body (JSON when it parses, else the text
/// as a JSON string).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// A header's value as text (empty when absent).
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Sends `request` and reads the whole answer.
///
/// # Panics
///
/// When the request fails at the transport level (connection refused, reset,
/// timeout): a black-box test treats that as a failure of the platform.
pub async fn send(request: reqwest::RequestBuilder) -> Reply {
    let described = format!("{request:?}");
    let response = request
        .send()
        .await
        .unwrap_or_else(|err| panic!("request failed: {err} ({described})"));
    reply(response).await
}

/// Reads a response into a [`Reply`].
pub async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply {
        status,
        headers,
        body,
    }
}

/// A registered user and their logged-in browser.
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub username: String,
    pub email: String,
    /// The session token (the `jwt` cookie of the registration).
    pub token: String,
    /// A browser holding that cookie.
    pub client: reqwest::Client,
}

impl User {
    /// `GET path` in this user's browser.
    pub async fn get(&self, path: &str) -> Reply {
        send(self.client.get(url(path))).await
    }

    /// `POST path` with a JSON body in this user's browser.
    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        send(self.client.post(url(path)).json(body)).await
    }

    /// `PUT path` without a body (`Content-Type: application/json`, as the web
    /// client sends it).
    pub async fn put(&self, path: &str) -> Reply {
        send(
            self.client
                .put(url(path))
                .header("content-type", "application/json"),
        )
        .await
    }

    /// `DELETE path` without a body.
    pub async fn delete(&self, path: &str) -> Reply {
        send(
            self.client
                .delete(url(path))
                .header("content-type", "application/json"),
        )
        .await
    }

    /// A Socket.IO connection authenticated with the `jwt` cookie, as a browser.
    pub async fn socket(&self) -> SocketIoClient {
        connect_socket(Some(&self.token), None)
            .await
            .unwrap_or_else(|err| panic!("socket of {} connects: {err}", self.username))
    }

    /// Sends an envelope over REST; returns the stored message (`data`).
    pub async fn send_rest(&self, to: &User, body: &str) -> Value {
        let reply = self
            .post(
                "/chat/send",
                &json!({"receiverId": to.id, "message": envelope(body)}),
            )
            .await;
        assert_eq!(reply.status, 200, "send from {}: {reply:?}", self.username);
        reply.body["data"].clone()
    }
}

/// The `jwt` cookie value of a response, if it set a non-empty one.
pub fn session_cookie(reply: &Reply) -> Option<String> {
    reply
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|cookie| cookie.strip_prefix("jwt="))
        .map(|rest| rest.split(';').next().unwrap_or("").to_owned())
        .find(|value| !value.is_empty())
}

/// The email address the suite gives `username`.
pub fn email_of(username: &str) -> String {
    format!("{username}@e2e.example.com")
}

/// Registers a new user named [`unique`]`(prefix)`.
pub async fn register(prefix: &str) -> User {
    let username = unique(prefix);
    let email = email_of(&username);
    let client = browser();
    let reply = send(client.post(url("/user/register")).json(&json!({
        "username": username, "email": email, "password": PASSWORD,
    })))
    .await;
    assert_eq!(reply.status, 200, "register {username}: {reply:?}");
    let token = session_cookie(&reply).expect("register sets the jwt cookie");
    let id = reply.body["data"]["id"]
        .as_str()
        .expect("register returns data.id")
        .to_owned();
    User {
        id,
        username,
        email,
        token,
        client,
    }
}

/// A Socket.IO connection with `cookie_token` as the `jwt` cookie and/or
/// `auth_token` in the CONNECT packet's `auth`.
pub async fn connect_socket(
    cookie_token: Option<&str>,
    auth_token: Option<&str>,
) -> Result<SocketIoClient, ConnectError> {
    let mut options = ConnectOptions::new(settings().base_url.clone(), SOCKET_PATH);
    options.insecure_tls = settings().insecure_tls;
    if let Some(token) = cookie_token {
        options
            .headers
            .push(("Cookie".to_owned(), format!("jwt={token}")));
    }
    if let Some(token) = auth_token {
        options.auth = Some(json!({ "token": token }));
    }
    SocketIoClient::connect(options).await
}

/// Waits (at most [`SOCKET_WAIT`]) for the event `name` whose payload `matches`,
/// discarding other events (presence goes to everyone, so sockets see other
/// tests' users too).
///
/// # Panics
///
/// When it does not arrive in time.
pub async fn expect_event_where(
    socket: &mut SocketIoClient,
    name: &str,
    matches: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + SOCKET_WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match socket.expect_event(name, left).await {
            Some(data) if matches(&data) => return data,
            Some(_) => {}
            None => panic!("no matching {name} event within {SOCKET_WAIT:?}"),
        }
    }
}

/// Waits for `presence` of `user_id` with `online`.
pub async fn expect_presence(socket: &mut SocketIoClient, user_id: &str, online: bool) -> Value {
    expect_event_where(socket, "presence", |p| {
        p["userId"] == user_id && p["online"] == online
    })
    .await
}

/// A Signal-style envelope as the web client sends it (`body` must be base64).
pub fn envelope(body: &str) -> String {
    format!(r#"{{"__encrypted":true,"type":3,"body":"{body}"}}"#)
}

/// A unique base64 body for an envelope.
pub fn unique_body(label: &str) -> String {
    use base64::Engine;
    let nonce: u64 = rand::thread_rng().r#gen();
    base64::engine::general_purpose::STANDARD.encode(format!("{label}-{nonce:016x}"))
}

/// Prekey bundles made by the real libsignal client library (the fixtures the
/// key directory's own tests use): their signed prekeys verify.
pub fn real_bundle(index: usize) -> Value {
    static FIXTURES: OnceLock<Value> = OnceLock::new();
    let fixtures = FIXTURES.get_or_init(|| {
        serde_json::from_str(include_str!(
            "../../services/user/tests/fixtures/libsignal_bundles.json"
        ))
        .expect("fixture parses")
    });
    fixtures["bundles"][index].clone()
}

/// The service health endpoints of the contract (§6) all answer 200
/// `{"status":"ok"}`: the platform survived whatever the test did.
pub async fn assert_healthy() {
    let client = plain();
    for path in [
        "/health",
        "/user/health",
        "/api/user/health",
        "/chat/health",
        "/notifications/health",
    ] {
        let reply = send(client.get(url(path))).await;
        assert_eq!(
            (reply.status, &reply.body["status"]),
            (200, &json!("ok")),
            "GET {path}: {reply:?}"
        );
    }
}

/// Polls `probe` every 250 ms until it returns `Some`, for at most `within`.
///
/// # Panics
///
/// With `what` when `within` passes first.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every notification of `user` (newest first, up to 100).
pub async fn notifications(user: &User) -> Vec<Value> {
    let reply = user.get("/notifications/?limit=100&offset=0").await;
    assert_eq!(reply.status, 200, "notifications: {reply:?}");
    reply.body["data"].as_array().cloned().unwrap_or_default()
}

/// `user`'s notifications of `type`.
pub async fn notifications_of_type(user: &User, kind: &str) -> Vec<Value> {
    notifications(user)
        .await
        .into_iter()
        .filter(|n| n["type"] == kind)
        .collect()
}

/// The whole conversation of `user` with `peer`, oldest first (every page).
pub async fn history(user: &User, peer: &User) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut offset = 0;
    // Bounded: 50 pages of 200.
    for _ in 0..50 {
        let reply = user
            .get(&format!("/chat/get/{}?limit=200&offset={offset}", peer.id))
            .await;
        assert_eq!(reply.status, 200, "history: {reply:?}");
        let page = reply.body["data"].as_array().cloned().unwrap_or_default();
        let more = reply.body["pagination"]["hasMore"] == true;
        offset += page.len();
        // Pages go back in time: the newest page comes first.
        pages.push(page);
        if !more {
            break;
        }
    }
    pages.into_iter().rev().flatten().collect()
}

/// Runs a shell command of the operator of the test (e.g. a dependency restart),
/// bounded by `within`; panics with its output when it fails.
pub async fn run_command(what: &str, command: &str, within: Duration) {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(within, child)
        .await
        .unwrap_or_else(|_| panic!("{what} ({command}) did not finish within {within:?}"))
        .unwrap_or_else(|err| panic!("{what} ({command}) could not run: {err}"));
    assert!(
        output.status.success(),
        "{what} ({command}) failed with {}:\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

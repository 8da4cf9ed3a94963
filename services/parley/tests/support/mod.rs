//! Test harness: spawns the real platform (parsed from a real command line) on a
//! random loopback port, with its own database and events exchange.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use parley::cli::{Cli, Command};
use parley::platform::Platform;
use parley_common::keys;
use parley_common::testing::{self, TestDatabase};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Key material for one test platform.
#[derive(Clone)]
pub struct TestKeys {
    pub pem: String,
    pub jwks: String,
    pub kid: String,
}

impl TestKeys {
    pub fn generate() -> Self {
        let generated = keys::generate();
        let kid = generated.jwk.kid.clone();
        let jwks = serde_json::to_string(&keys::Jwks {
            keys: vec![generated.jwk],
        })
        .unwrap();
        Self {
            pem: generated.private_pem,
            jwks,
            kid,
        }
    }
}

/// How to start a test platform.
#[derive(Default, Clone)]
pub struct Options {
    /// Extra or overriding `--flag value` pairs.
    pub flags: Vec<(String, String)>,
    /// Reuse a database (e.g. to restart on the same data).
    pub db: Option<Arc<TestDatabase>>,
    /// Broker URL (default: the test broker).
    pub amqp_url: Option<String>,
    /// Database URL override (e.g. a runtime role).
    pub database_url: Option<String>,
    /// Reuse keys (e.g. across a restart).
    pub keys: Option<TestKeys>,
    /// Reuse an exchange.
    pub exchange: Option<String>,
}

impl Options {
    pub fn flag(mut self, name: &str, value: impl ToString) -> Self {
        self.flags.push((name.to_owned(), value.to_string()));
        self
    }
}

/// A running platform.
pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub db: Arc<TestDatabase>,
    pub exchange: String,
    pub keys: TestKeys,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(options: Options) -> Self {
        Self::try_spawn_with(options)
            .await
            .expect("platform starts")
    }

    pub async fn try_spawn_with(options: Options) -> Result<Self, parley::platform::PlatformError> {
        let db = match options.db {
            Some(db) => db,
            None => Arc::new(migrated_database().await),
        };
        let keys = options.keys.unwrap_or_else(TestKeys::generate);
        let exchange = options.exchange.unwrap_or_else(testing::unique_exchange);
        let amqp = options
            .amqp_url
            .unwrap_or_else(|| testing::amqp_url().expose_secret().to_owned());
        let database_url = options
            .database_url
            .unwrap_or_else(|| db.url().expose_secret().to_owned());
        let mut flags: Vec<(String, String)> = vec![
            ("--database-url".into(), database_url),
            ("--amqp-url".into(), amqp),
            ("--events-exchange".into(), exchange.clone()),
            ("--jwt-jwks".into(), keys.jwks.clone()),
            ("--jwt-signing-key".into(), keys.pem.clone()),
            ("--bcrypt-cost".into(), "4".into()),
            ("--db-max-connections".into(), "8".into()),
            ("--user-rate-limit-max".into(), "100000".into()),
            ("--auth-rate-limit-max".into(), "100000".into()),
            ("--prekey-publish-rate-limit-max".into(), "100000".into()),
            ("--prekey-fetch-rate-limit-max".into(), "100000".into()),
            ("--shutdown-grace-secs".into(), "2".into()),
            ("--chat-rate-limit-max".into(), "100000".into()),
            ("--notification-rate-limit-max".into(), "100000".into()),
            (
                "--notification-create-rate-limit-max".into(),
                "100000".into(),
            ),
        ];
        for (name, value) in options.flags {
            flags.retain(|(existing, _)| *existing != name);
            flags.push((name, value));
        }
        let mut argv = vec!["parley".to_owned(), "serve".to_owned()];
        for (name, value) in flags {
            argv.push(format!("{name}={value}"));
        }
        let Command::Serve(args) = Cli::try_parse_from(argv).expect("valid flags").command else {
            unreachable!("serve parses to Serve")
        };
        let shutdown = CancellationToken::new();
        let platform = Platform::start(&args, shutdown.clone()).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            platform.serve(listener).await.expect("serve");
        });
        let app = Self {
            addr,
            base: format!("http://{addr}"),
            db,
            exchange,
            keys,
            shutdown,
            task: Some(task),
        };
        assert!(
            wait_for_status(&app, "/readyz", 200, Duration::from_secs(15)).await,
            "platform became ready"
        );
        Ok(app)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Stops the platform and waits for its shutdown to finish.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
    }

    /// Options that restart on this app's data, keys and exchange.
    pub fn same_data(&self) -> Options {
        Options {
            db: Some(self.db.clone()),
            keys: Some(self.keys.clone()),
            exchange: Some(self.exchange.clone()),
            ..Options::default()
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A fresh database with every schema migrated.
pub async fn migrated_database() -> TestDatabase {
    let db = TestDatabase::create().await;
    for schema in [
        parley_user::SCHEMA,
        parley_chat::SCHEMA,
        parley_notification::SCHEMA,
    ] {
        parley_common::db::migrate(db.url(), schema, None)
            .await
            .expect("migrate");
    }
    db
}

/// Polls `path` until it answers `status`, for at most `wait`.
pub async fn wait_for_status(app: &TestApp, path: &str, status: u16, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        if let Ok(response) = plain().get(app.url(path)).send().await
            && response.status() == status
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A client with its own cookie jar (one browser).
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A client without cookies.
pub fn plain() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub const PASSWORD: &str = "Passw0rd!";

/// A registered user with a logged-in browser.
pub struct User {
    pub id: String,
    pub username: String,
    pub email: String,
    pub token: String,
    pub client: reqwest::Client,
}

impl User {
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }
}

/// Registers `username` (email `<username>@example.com`).
pub async fn register(app: &TestApp, username: &str) -> User {
    let client = browser();
    let email = format!("{username}@example.com");
    let response = client
        .post(app.url("/user/register"))
        .json(&json!({"username": username, "email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "register {username}");
    let token = session_cookie(&response).expect("jwt cookie");
    let body: Value = response.json().await.unwrap();
    User {
        id: body["data"]["id"].as_str().unwrap().to_owned(),
        username: username.to_lowercase(),
        email,
        token,
        client,
    }
}

/// The `jwt` value of a response's Set-Cookie, if any.
pub fn session_cookie(response: &reqwest::Response) -> Option<String> {
    set_cookie(response)
        .and_then(|cookie| {
            cookie
                .strip_prefix("jwt=")
                .map(|rest| rest.split(';').next().unwrap().to_owned())
        })
        .filter(|value| !value.is_empty())
}

/// The raw Set-Cookie header of a response.
pub fn set_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("set-cookie")
        .map(|value| value.to_str().unwrap().to_owned())
}

/// A queue bound to `routing_key` on the app's exchange; returns received bodies.
pub struct EventTap {
    consumer: lapin::Consumer,
    _connection: lapin::Connection,
}

impl EventTap {
    pub async fn bind(exchange: &str, routing_key: &str) -> Self {
        let connection = lapin::Connection::connect(
            testing::amqp_url().expose_secret(),
            lapin::ConnectionProperties::default(),
        )
        .await
        .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Topic,
                lapin::options::ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self {
            consumer,
            _connection: connection,
        }
    }

    /// The next event, or `None` after `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Value> {
        let delivery = tokio::time::timeout(wait, self.consumer.next())
            .await
            .ok()??
            .ok()?;
        delivery.ack(BasicAckOptions::default()).await.ok()?;
        serde_json::from_slice(&delivery.data).ok()
    }
}

/// A Signal-style envelope as the web client sends it.
pub fn envelope(body: &str) -> String {
    format!(r#"{{"__encrypted":true,"type":3,"body":"{body}"}}"#)
}

/// Sends a message over REST and returns the response body.
pub async fn send_rest(app: &TestApp, from: &User, to: &User, body: &str) -> Value {
    let response = from
        .client
        .post(app.url("/chat/send"))
        .json(&json!({"receiverId": to.id, "message": envelope(body)}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "send");
    response.json().await.unwrap()
}

/// A Socket.IO connection authenticated with the user's cookie, as a browser does.
pub async fn socket(app: &TestApp, user: &User) -> parley_common::testing_socketio::SocketIoClient {
    use parley_common::testing_socketio::{ConnectOptions, SocketIoClient};
    let mut options = ConnectOptions::new(app.base.clone(), "/chat/socket.io/");
    options
        .headers
        .push(("Cookie".into(), format!("jwt={}", user.token)));
    SocketIoClient::connect(options)
        .await
        .expect("socket connects")
}

/// The `parley` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_parley");

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `parley` child process, killed when dropped.
pub struct Server(pub std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `base` answers `/readyz` with 200.
pub async fn wait_ready(base: &str) {
    let started = std::time::Instant::now();
    loop {
        if let Ok(response) = plain().get(format!("{base}/readyz")).send().await
            && response.status() == 200
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "server became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `GET path` as `user` until `ready` accepts the JSON body (at most 10 s).
pub async fn poll_json(
    app: &TestApp,
    user: &User,
    path: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let body: Value = user
            .client
            .get(app.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ready(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never became ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

//! Integration-test support (feature `test-support`): a database per test, a
//! uniquely named exchange per test, and a TCP proxy that can cut a link to
//! simulate a dependency outage while the real server keeps running.
//!
//! `PARLEY_TEST_DATABASE_URL` names a role that may create databases and roles
//! (default `postgres://postgres@127.0.0.1:5432/postgres`); `PARLEY_TEST_AMQP_URL`
//! the broker (default `amqp://guest:guest@127.0.0.1:5672/%2f`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor, PgConnection};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use uuid::Uuid;

/// The admin URL tests create databases with.
pub fn admin_database_url() -> String {
    std::env::var("PARLEY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The broker URL tests use.
pub fn amqp_url() -> SecretString {
    SecretString::from(
        std::env::var("PARLEY_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned()),
    )
}

/// Host and port of the test broker, and the test broker URL with them replaced
/// by `via` (to route the connection through a [`TcpProxy`]).
pub fn amqp_url_via(via: SocketAddr) -> (SocketAddr, SecretString) {
    let url = amqp_url().expose_secret().to_owned();
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |i| after_scheme + i);
    let host_start = url[after_scheme..authority_end]
        .rfind('@')
        .map_or(after_scheme, |i| after_scheme + i + 1);
    let host_port = &url[host_start..authority_end];
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5672")
    };
    let target = std::net::ToSocketAddrs::to_socket_addrs(&host_port)
        .expect("resolvable broker address")
        .next()
        .expect("a broker address");
    let proxied = format!("{}{}{}", &url[..host_start], via, &url[authority_end..]);
    (target, SecretString::from(proxied))
}

/// A unique exchange name, so parallel tests never see each other's events.
pub fn unique_exchange() -> String {
    format!("parley.test.{}", Uuid::new_v4().simple())
}

/// A database created for one test and dropped when the value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: SecretString,
}

impl TestDatabase {
    /// Creates an empty database with a unique name.
    pub async fn create() -> Self {
        let name = format!("parley_test_{}", Uuid::new_v4().simple());
        let mut admin = admin_connection().await;
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create test database");
        admin.close().await.ok();
        let options: PgConnectOptions = admin_database_url().parse().expect("valid admin URL");
        let url = options.database(&name).to_url_lossy().to_string();
        Self {
            name,
            url: SecretString::from(url),
        }
    }

    /// URL of the test database as the admin role.
    pub fn url(&self) -> &SecretString {
        &self.url
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// URL of the test database as another role.
    pub fn url_as(&self, role: &str, password: &str) -> SecretString {
        let options: PgConnectOptions = self.url.expose_secret().parse().expect("valid URL");
        SecretString::from(
            options
                .username(role)
                .password(password)
                .to_url_lossy()
                .to_string(),
        )
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Dropping needs async I/O; do it on a short-lived runtime of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&admin_database_url()).await {
                    let _ = admin
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                }
            });
        })
        .join();
    }
}

/// A connection as the admin role.
pub async fn admin_connection() -> PgConnection {
    PgConnection::connect(&admin_database_url())
        .await
        .expect("connect to PostgreSQL as PARLEY_TEST_DATABASE_URL")
}

/// A TCP forwarder on loopback whose link can be cut and restored.
#[derive(Debug, Clone)]
pub struct TcpProxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: broadcast::Sender<()>,
}

impl TcpProxy {
    /// Forwards a random loopback port to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = broadcast::channel(4);
        let proxy = Self { addr, up, cut };
        let accept = proxy.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !accept.up.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut = accept.cut.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.recv() => {}
                    }
                });
            }
        });
        proxy
    }

    /// The proxy's own address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every live connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let _ = self.cut.send(());
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

//! The services' PostgreSQL pools (`parley_common::db`) against a real
//! server: when a connection is pinged, and that a connection comes back from
//! a dead peer, a dropped transaction or a cancelled query fit for the next
//! query.
//!
//! sqlx-core is patched (vendor/README.md) so that a connection going back to
//! the pool is not pinged when its query or transaction finished cleanly and
//! it has nothing left to send; the pool pings a connection idle for
//! `PING_IF_IDLE_FOR` before use.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parley_common::{db, testing};
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{ConnectOptions, Executor, PgPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn backend_pid(pool: &PgPool) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await
}

/// Waits until every connection of `pool` is idle in it again (sqlx returns
/// a connection in a task of its own, after the query has answered).
async fn all_idle(pool: &PgPool) {
    let idle = async {
        while pool.num_idle() < pool.size() as usize {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), idle)
        .await
        .expect("connections go back to the pool");
}

/// A loopback forwarder to PostgreSQL that counts the Sync messages clients
/// send: one per query of the extended protocol, and one per ping.
struct SyncCounter {
    addr: SocketAddr,
    syncs: Arc<AtomicUsize>,
}

impl SyncCounter {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let syncs = Arc::new(AtomicUsize::new(0));
        let counted = syncs.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(target).await.unwrap();
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut messages = FrontendMessages::default();
                    let mut chunk = vec![0; 8192];
                    while let Ok(read) = client_read.read(&mut chunk).await {
                        if read == 0 || server_write.write_all(&chunk[..read]).await.is_err() {
                            break;
                        }
                        let syncs = messages.push(&chunk[..read]);
                        counted.fetch_add(syncs, Ordering::SeqCst);
                    }
                });
            }
        });
        Self { addr, syncs }
    }

    fn syncs(&self) -> usize {
        self.syncs.load(Ordering::SeqCst)
    }
}

/// Splits a client's byte stream into PostgreSQL frontend messages: the
/// startup message (length-prefixed, no type byte), then `type, length, body`.
#[derive(Default)]
struct FrontendMessages {
    pending: Vec<u8>,
    started: bool,
}

impl FrontendMessages {
    /// Takes more bytes; returns how many complete Sync (`S`) messages they ended.
    fn push(&mut self, bytes: &[u8]) -> usize {
        self.pending.extend_from_slice(bytes);
        let mut syncs = 0;
        loop {
            let header = if self.started { 5 } else { 4 };
            if self.pending.len() < header {
                return syncs;
            }
            let at = header - 4;
            let length = u32::from_be_bytes(self.pending[at..at + 4].try_into().unwrap()) as usize;
            let total = at + length;
            if self.pending.len() < total {
                return syncs;
            }
            if self.started && self.pending[0] == b'S' {
                syncs += 1;
            }
            self.started = true;
            self.pending.drain(..total);
        }
    }
}

/// The test database's URL, in plaintext (the counter must read the
/// protocol) and through `via` when given.
fn plaintext_url(database: &testing::TestDatabase, via: Option<SocketAddr>) -> SecretString {
    let mut options: PgConnectOptions = database.url().expose_secret().parse().unwrap();
    options = options.ssl_mode(PgSslMode::Disable);
    if let Some(via) = via {
        options = options.host(&via.ip().to_string()).port(via.port());
    }
    SecretString::from(options.to_url_lossy().to_string())
}

/// A query costs one round trip: the connection goes back to the pool without
/// a ping (after a query or a committed transaction), and is pinged before
/// use only after `PING_IF_IDLE_FOR` idle.
#[tokio::test]
async fn a_query_costs_one_round_trip_and_an_idle_connection_is_pinged_before_use() {
    let database = testing::TestDatabase::create().await;
    let target: PgConnectOptions = database.url().expose_secret().parse().unwrap();
    let target: SocketAddr = format!("{}:{}", target.get_host(), target.get_port())
        .parse()
        .unwrap();
    let counter = SyncCounter::start(target).await;
    let pool = db::connect(&plaintext_url(&database, Some(counter.addr)), "public", 1)
        .await
        .unwrap();
    let square = |n: i32| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i32>("SELECT $1 * $1")
                .bind(n)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    // Prepared once, then each query is Bind, Execute, Sync.
    assert_eq!(square(3).await, 9);
    all_idle(&pool).await;

    const QUERIES: usize = 20;
    let before = counter.syncs();
    // A gap of PING_IF_IDLE_FOR between two queries (a stalled machine) earns
    // a ping; count such gaps so that they do not fail the test.
    let mut stalls = 0;
    let mut last = Instant::now();
    for n in 0..QUERIES as i32 {
        if last.elapsed() + Duration::from_millis(50) >= db::PING_IF_IDLE_FOR {
            stalls += 1;
        }
        assert_eq!(square(n).await, n * n);
        last = Instant::now();
    }
    all_idle(&pool).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let syncs = counter.syncs() - before;
    assert!(
        (QUERIES..=QUERIES + stalls).contains(&syncs),
        "{QUERIES} queries sent {syncs} Syncs ({stalls} stalls): a ping per release would be {}",
        2 * QUERIES
    );

    // A committed transaction likewise: BEGIN and COMMIT are simple queries
    // (no Sync), the statement inside one Sync, and no ping after.
    let before = counter.syncs();
    let mut transaction = pool.begin().await.unwrap();
    let n: i32 = sqlx::query_scalar("SELECT $1 * $1")
        .bind(5)
        .fetch_one(&mut *transaction)
        .await
        .unwrap();
    assert_eq!(n, 25);
    transaction.commit().await.unwrap();
    all_idle(&pool).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        counter.syncs() - before,
        1,
        "a transaction goes back unpinged"
    );

    // Idle for longer than PING_IF_IDLE_FOR: pinged, then queried.
    tokio::time::sleep(db::PING_IF_IDLE_FOR + Duration::from_millis(100)).await;
    let before = counter.syncs();
    assert_eq!(square(7).await, 49);
    all_idle(&pool).await;
    assert_eq!(counter.syncs() - before, 2, "one ping, one query");
    pool.close().await;
}

/// A transaction dropped without a commit queues its ROLLBACK; the pool sends
/// it as the connection goes back, so its locks do not outlive it while the
/// connection sits idle.
#[tokio::test]
async fn a_dropped_transaction_is_rolled_back_as_its_connection_goes_back() {
    let database = testing::TestDatabase::create().await;
    let url = plaintext_url(&database, None);
    let pool = db::connect(&url, "public", 1).await.unwrap();
    let watcher = db::connect(&url, "public", 1).await.unwrap();
    let advisory_locks = || {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&watcher)
    };
    {
        let mut transaction = pool.begin().await.unwrap();
        transaction
            .execute("SELECT pg_advisory_xact_lock(4242)")
            .await
            .unwrap();
        assert_eq!(advisory_locks().await.unwrap(), 1);
        // Dropped here, neither committed nor rolled back.
    }
    let released = async {
        while advisory_locks().await.unwrap() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), released)
        .await
        .expect("the dropped transaction's lock is released while its connection is idle");
    assert_eq!(pool.num_idle(), 1, "the connection is back in the pool");
    pool.close().await;
    watcher.close().await;
}

/// A query abandoned while PostgreSQL still runs it leaves its results on the
/// connection; the next query on that connection reads past them and gets
/// its own answer.
#[tokio::test]
async fn a_cancelled_query_leaves_nothing_for_the_next_one() {
    let database = testing::TestDatabase::create().await;
    let pool = db::connect(&plaintext_url(&database, None), "public", 1)
        .await
        .unwrap();
    let pid = backend_pid(&pool).await.unwrap();
    let abandoned = tokio::time::timeout(
        Duration::from_millis(100),
        sqlx::query_scalar::<_, i32>("SELECT 1 FROM pg_sleep(0.5)").fetch_one(&pool),
    )
    .await;
    assert!(abandoned.is_err(), "the slow query is abandoned");
    let next: i32 = sqlx::query_scalar("SELECT 2")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(next, 2);
    assert_eq!(
        backend_pid(&pool).await.unwrap(),
        pid,
        "the same connection serves on"
    );
    pool.close().await;
}

/// One that died while idle is replaced before use, and one that dies
/// between two quick queries fails one and is replaced.
#[tokio::test]
async fn a_pooled_connection_that_died_is_replaced() {
    let database = testing::TestDatabase::create().await;
    let pool = db::connect(database.url(), "public", 1).await.unwrap();
    let mut admin = testing::admin_connection().await;
    let kill = |pid: i32| format!("SELECT pg_terminate_backend({pid}, 5000)");

    // Died while idle past PING_IF_IDLE_FOR: the ping finds out, the query
    // gets a new connection.
    let first = backend_pid(&pool).await.unwrap();
    all_idle(&pool).await;
    admin.execute(kill(first).as_str()).await.unwrap();
    tokio::time::sleep(db::PING_IF_IDLE_FOR + Duration::from_millis(200)).await;
    let second = backend_pid(&pool)
        .await
        .expect("a connection that died while idle is replaced before use");
    assert_ne!(first, second);

    // Died between two quick queries: not pinged, so that query fails, and
    // the pool has dropped the connection for the next one. (On a loaded
    // machine the kill may take longer than PING_IF_IDLE_FOR; then the ping
    // finds out instead, as above.)
    all_idle(&pool).await;
    let idle_since = Instant::now();
    admin.execute(kill(second).as_str()).await.unwrap();
    let after_kill = backend_pid(&pool).await;
    // (The connection went idle up to a poll before `idle_since`: a margin.)
    if idle_since.elapsed() + Duration::from_millis(50) < db::PING_IF_IDLE_FOR {
        assert!(
            after_kill.is_err(),
            "a connection used within the second is not pinged"
        );
    }
    let third = backend_pid(&pool)
        .await
        .expect("the next query gets a new connection");
    assert_ne!(second, third);
    pool.close().await;
}

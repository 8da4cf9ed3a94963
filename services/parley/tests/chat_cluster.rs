//! Several chat replicas behave as one (real `parley` processes sharing one
//! database and broker): messages, typing, receipts and presence cross
//! replicas, and a killed replica's users go offline for everyone.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use parley_common::testing::{self, TestDatabase};
use parley_common::testing_socketio::{ConnectOptions, SocketIoClient};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sqlx::Connection;
use support::*;

const WAIT: Duration = Duration::from_secs(5);

struct Cluster {
    _db: TestDatabase,
    _keys: tempdir::TempDir,
    exchange: String,
    user: (Server, String),
    chat: Vec<(Server, String)>,
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn spawn(
    target: &str,
    db: &TestDatabase,
    keys: &std::path::Path,
    exchange: &str,
) -> (Server, String) {
    let port = free_port();
    let child = Command::new(BIN)
        .args([
            "serve",
            "--target",
            target,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("DATABASE_URL", db.url().expose_secret())
        .env("AMQP_URL", testing::amqp_url().expose_secret())
        .env("PARLEY_EVENTS_EXCHANGE", exchange)
        .env("PARLEY_JWT_SIGNING_KEY_FILE", keys.join("jwt-signing.pem"))
        .env("PARLEY_JWT_JWKS_FILE", keys.join("jwks.json"))
        .env("PARLEY_BCRYPT_COST", "4")
        .env("PARLEY_AUTH_RATE_LIMIT_MAX", "1000")
        .env("PARLEY_PRESENCE_HEARTBEAT_SECS", "1")
        .env("PARLEY_PRESENCE_TTL_SECS", "2")
        .env("PARLEY_TYPING_TIMEOUT_MS", "300")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Server(child), format!("http://127.0.0.1:{port}"))
}

async fn cluster(replicas: usize) -> Cluster {
    let db = migrated_database().await;
    let dir =
        std::env::temp_dir().join(format!("parley-cluster-{}", uuid::Uuid::new_v4().simple()));
    assert!(
        Command::new(BIN)
            .args(["keys", "generate", "--out"])
            .arg(&dir)
            .status()
            .unwrap()
            .success()
    );
    let exchange = testing::unique_exchange();
    let user = spawn("user", &db, &dir, &exchange);
    let chat: Vec<_> = (0..replicas)
        .map(|_| spawn("chat", &db, &dir, &exchange))
        .collect();
    wait_ready(&user.1).await;
    for (_, base) in &chat {
        wait_ready(base).await;
    }
    Cluster {
        _db: db,
        _keys: tempdir::TempDir(dir),
        exchange,
        user,
        chat,
    }
}

async fn register_at(base: &str, name: &str) -> (String, String) {
    let response = plain()
        .post(format!("{base}/user/register"))
        .json(&json!({"username": name, "email": format!("{name}@example.com"), "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let token = session_cookie(&response).unwrap();
    let body: Value = response.json().await.unwrap();
    (body["data"]["id"].as_str().unwrap().to_owned(), token)
}

async fn connect(base: &str, token: &str) -> SocketIoClient {
    let mut options = ConnectOptions::new(base.to_owned(), "/chat/socket.io/");
    options
        .headers
        .push(("Cookie".into(), format!("jwt={token}")));
    SocketIoClient::connect(options).await.expect("connects")
}

#[tokio::test]
async fn two_replicas_behave_as_one_and_a_killed_replica_takes_its_users_offline() {
    let mut cluster = cluster(2).await;
    let (alice, alice_token) = register_at(&cluster.user.1, "alice").await;
    let (bob, bob_token) = register_at(&cluster.user.1, "bob").await;
    let mut a = connect(&cluster.chat[0].1, &alice_token).await;
    assert_eq!(
        a.expect_event("presence", WAIT).await.unwrap(),
        json!({"userId": alice, "online": true})
    );
    let mut b = connect(&cluster.chat[1].1, &bob_token).await;
    assert_eq!(
        a.expect_event("presence", WAIT).await.unwrap(),
        json!({"userId": bob, "online": true}),
        "presence crosses replicas"
    );
    assert_eq!(
        b.expect_event("presenceBulk", WAIT).await.unwrap(),
        json!({"onlineUserIds": [alice]})
    );

    let envelope = envelope("Q3Jvc3M=");
    let ack = a
        .emit_with_ack(
            "sendMessage",
            json!({"senderId": alice, "receiverId": bob, "message": envelope}),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(ack["ok"], true);
    assert_eq!(
        b.expect_event("typing", WAIT).await.unwrap(),
        json!({"userId": alice, "isTyping": false})
    );
    let received = b.expect_event("receiveMessage", WAIT).await.unwrap();
    assert_eq!(received["id"], ack["id"]);
    assert_eq!(received["content"], envelope);

    b.emit("typing", json!({"receiverId": alice, "isTyping": true}))
        .await
        .unwrap();
    assert_eq!(
        a.expect_event("typing", WAIT).await.unwrap(),
        json!({"userId": bob, "isTyping": true})
    );
    assert_eq!(
        a.expect_event("typing", WAIT).await.unwrap(),
        json!({"userId": bob, "isTyping": false}),
        "timer on the other replica"
    );
    b.emit("messageDelivered", json!({"messageId": ack["id"]}))
        .await
        .unwrap();
    assert_eq!(
        a.expect_event("messageDelivered", WAIT).await.unwrap(),
        json!({"messageId": ack["id"], "by": bob})
    );
    b.emit("markRead", json!({"senderId": alice}))
        .await
        .unwrap();
    assert_eq!(
        a.expect_event("messageRead", WAIT).await.unwrap(),
        json!({"by": bob})
    );

    // Kill Bob's replica outright: no goodbye, no disconnect handler.
    let mut tap = EventTap::bind(&cluster.exchange, "chat.message.offline").await;
    let (mut killed, _) = cluster.chat.remove(1);
    killed.0.kill().unwrap();
    let _ = killed.0.wait();
    let started = Instant::now();
    let offline = a
        .expect_event("presence", Duration::from_secs(15))
        .await
        .expect("bob goes offline");
    assert_eq!(offline["userId"], bob);
    assert_eq!(offline["online"], false);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "within TTL + heartbeat (+ slack): {took:?}"
    );

    // Bob is now offline everywhere, so a message to him is an offline message.
    let ack = a
        .emit_with_ack(
            "sendMessage",
            json!({"senderId": alice, "receiverId": bob, "message": envelope}),
            WAIT,
        )
        .await
        .unwrap();
    let event = tap
        .next(Duration::from_secs(10))
        .await
        .expect("offline event");
    assert_eq!(event["data"]["messageId"], ack["id"]);
}

#[tokio::test]
async fn fifty_senders_times_a_hundred_messages_are_stored_and_delivered_exactly_once() {
    let cluster = cluster(2).await;
    let (receiver, receiver_token) = register_at(&cluster.user.1, "sink").await;
    let mut inbox = connect(&cluster.chat[1].1, &receiver_token).await;
    let mut senders = Vec::new();
    for i in 0..50 {
        let (id, token) = register_at(&cluster.user.1, &format!("sender{i}")).await;
        let replica = &cluster.chat[i % 2].1;
        senders.push((id, connect(replica, &token).await));
    }
    let sends = senders.iter().map(|(id, socket)| {
        let receiver = receiver.clone();
        async move {
            let mut acked = Vec::new();
            for n in 0..100 {
                let ack = socket
                    .emit_with_ack(
                        "sendMessage",
                        json!({"senderId": id, "receiverId": receiver, "message": envelope(&format!("bXNn{n}"))}),
                        Duration::from_secs(30),
                    )
                    .await
                    .expect("acked");
                assert_eq!(ack["ok"], true, "{ack}");
                acked.push(ack["id"].as_str().unwrap().to_owned());
            }
            acked
        }
    });
    let acked: Vec<String> = futures::future::join_all(sends)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(acked.len(), 5000);
    let unique: std::collections::HashSet<&String> = acked.iter().collect();
    assert_eq!(unique.len(), 5000, "every message stored once");

    let mut delivered = std::collections::HashMap::<String, usize>::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered.len() < 5000 && Instant::now() < deadline {
        match inbox.next_event(Duration::from_secs(10)).await {
            Some((name, data)) if name == "receiveMessage" => {
                *delivered
                    .entry(data["id"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
            Some(_) => {}
            None => break,
        }
    }
    assert_eq!(delivered.len(), 5000, "every message delivered");
    assert!(
        inbox
            .expect_no_event("receiveMessage", Duration::from_millis(500))
            .await,
        "no duplicates"
    );
    assert!(
        delivered.values().all(|count| *count == 1),
        "delivered once"
    );
    assert!(acked.iter().all(|id| delivered.contains_key(id)));

    let mut db = sqlx::PgConnection::connect(cluster._db.url().expose_secret())
        .await
        .unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM parley_chat.messages")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(stored, 5000);
}

#[tokio::test]
async fn a_lone_replica_stops_relaying_and_a_new_replica_is_served_at_once() {
    let mut cluster = cluster(1).await;
    let (alice, alice_token) = register_at(&cluster.user.1, "alice").await;
    let (bob, bob_token) = register_at(&cluster.user.1, "bob").await;
    let a = connect(&cluster.chat[0].1, &alice_token).await;
    let mut b = connect(&cluster.chat[0].1, &bob_token).await;
    let mut tap = EventTap::bind(&cluster.exchange, "realtime.user").await;
    let send = |to: String, body: &'static str| {
        let a = &a;
        let alice = alice.clone();
        async move {
            let ack = a
                .emit_with_ack(
                    "sendMessage",
                    json!({"senderId": alice, "receiverId": to, "message": envelope(body)}),
                    WAIT,
                )
                .await
                .unwrap();
            assert_eq!(ack["ok"], true, "{ack}");
            ack["id"].clone()
        }
    };

    // Alone, the replica relays only during its start-up window (TTL +
    // heartbeat, 3 s here); local delivery goes on.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut relayed = true;
    while relayed && Instant::now() < deadline {
        let id = send(bob.clone(), "QWxvbmU=").await;
        let received = b.expect_event("receiveMessage", WAIT).await.unwrap();
        assert_eq!(received["id"], id);
        relayed = false;
        while tap.next(Duration::from_millis(1000)).await.is_some() {
            relayed = true;
        }
    }
    assert!(!relayed, "a lone replica stops relaying");
    send(bob.clone(), "U3RpbGw=").await;
    assert!(b.expect_event("receiveMessage", WAIT).await.is_some());
    assert!(
        tap.next(Duration::from_secs(2)).await.is_none(),
        "still alone, still quiet"
    );

    // A second replica: its users get messages sent through the first.
    let second = spawn("chat", &cluster._db, &cluster._keys.0, &cluster.exchange);
    wait_ready(&second.1).await;
    let (carol, carol_token) = register_at(&cluster.user.1, "carol").await;
    let mut c = connect(&second.1, &carol_token).await;
    let id = send(carol.clone(), "Q3Jvc3M=").await;
    let received = c.expect_event("receiveMessage", WAIT).await.unwrap();
    assert_eq!(received["id"], id);
    assert!(tap.next(WAIT).await.is_some(), "relaying again with a peer");
    cluster.chat.push(second);
}

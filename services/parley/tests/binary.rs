//! The `parley` binary itself: key generation, migration and a serving process
//! that shuts down gracefully on SIGTERM.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use parley_common::testing::{self, TestDatabase};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use support::{BIN, EventTap, Server, free_port, plain, wait_ready};

#[tokio::test]
async fn keys_migrate_serve_and_shut_down_gracefully_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("parley-bin-{}", uuid::Uuid::new_v4().simple()));
    let keys = Command::new(BIN)
        .args(["keys", "generate", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(keys.status.success(), "{keys:?}");
    let jwks: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("jwks.json")).unwrap()).unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");

    let db = TestDatabase::create().await;
    let migrate = Command::new(BIN)
        .args(["migrate", "--target", "user"])
        .env("DATABASE_URL", db.url().expose_secret())
        .output()
        .unwrap();
    assert!(migrate.status.success(), "{migrate:?}");
    let logs = String::from_utf8_lossy(&migrate.stdout).to_string()
        + &String::from_utf8_lossy(&migrate.stderr);
    assert!(
        !logs.contains(db.url().expose_secret()),
        "the URL with its password is never logged"
    );

    let port = free_port();
    let exchange = testing::unique_exchange();
    let mut tap = EventTap::bind(&exchange, "user.registered").await;
    let server = Server(
        Command::new(BIN)
            .args([
                "serve",
                "--target",
                "user",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env("DATABASE_URL", db.url().expose_secret())
            .env("AMQP_URL", testing::amqp_url().expose_secret())
            .env("PARLEY_EVENTS_EXCHANGE", &exchange)
            .env("PARLEY_JWT_SIGNING_KEY_FILE", dir.join("jwt-signing.pem"))
            .env("PARLEY_JWT_JWKS_FILE", dir.join("jwks.json"))
            .env("PARLEY_BCRYPT_COST", "13")
            .env("PARLEY_LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&base).await;

    // A registration that takes a while (bcrypt cost 13) is in flight when SIGTERM arrives.
    let in_flight = tokio::spawn({
        let url = format!("{base}/user/register");
        async move {
            plain()
                .post(url)
                .json(&json!({"username":"sigterm","email":"sigterm@example.com","password":"Passw0rd!"}))
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let pid = server.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );

    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(response.status(), 200);
    let mut server = server;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "process exits after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "clean exit: {status:?}");
    let event = tap
        .next(Duration::from_secs(5))
        .await
        .expect("the outbox was flushed before exit");
    assert_eq!(event["data"]["username"], "sigterm");
    let mut logs = String::new();
    std::io::Read::read_to_string(server.0.stdout.as_mut().unwrap(), &mut logs).unwrap();
    assert!(
        logs.lines()
            .all(|line| serde_json::from_str::<Value>(line).is_ok()),
        "JSON logs:\n{logs}"
    );
    assert!(logs.contains("SIGTERM received"));
    assert!(!logs.contains("Passw0rd!"), "secrets never logged");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn refuses_to_start_without_a_database_url() {
    let output = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("DATABASE_URL")
        .env("AMQP_URL", "amqp://127.0.0.1:1")
        .env("PARLEY_JWT_JWKS", "{\"keys\":[]}")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("DATABASE_URL is not set"));
}

#[tokio::test]
async fn the_original_environment_names_work_too() {
    let dir = std::env::temp_dir().join(format!("parley-env-{}", uuid::Uuid::new_v4().simple()));
    assert!(
        Command::new(BIN)
            .args(["keys", "generate", "--out"])
            .arg(&dir)
            .status()
            .unwrap()
            .success()
    );
    let db = support::migrated_database().await;
    let port = free_port();
    let _server = Server(
        Command::new(BIN)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", db.url().expose_secret())
            .env_remove("AMQP_URL")
            .env("MESSAGE_BROKER_URL", testing::amqp_url().expose_secret())
            .env("PARLEY_EVENTS_EXCHANGE", testing::unique_exchange())
            .env("CORS_ORIGINS", "https://web.example")
            .env("PUBLIC_URL", "https://chat.example")
            .env("AUTH_RATE_LIMIT_MAX", "1")
            .env("PARLEY_JWT_SIGNING_KEY_FILE", dir.join("jwt-signing.pem"))
            .env("PARLEY_JWT_JWKS_FILE", dir.join("jwks.json"))
            .env("PARLEY_BCRYPT_COST", "4")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&base).await;
    let response = plain()
        .post(format!("{base}/user/register"))
        .header("origin", "https://web.example")
        .json(&json!({"username":"envuser","email":"env@example.com","password":"Passw0rd!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://web.example"
    );
    assert!(
        response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .ends_with("Secure; SameSite=Strict")
    );
    let limited = plain()
        .post(format!("{base}/user/login"))
        .json(&json!({"email":"env@example.com","password":"Passw0rd!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 429, "AUTH_RATE_LIMIT_MAX=1");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn migrate_declares_the_queues_so_events_published_before_the_first_start_are_kept() {
    use lapin::options::BasicPublishOptions;
    let db = TestDatabase::create().await;
    let exchange = testing::unique_exchange();
    let migrate = Command::new(BIN)
        .args(["migrate", "--target", "all"])
        .env("DATABASE_URL", db.url().expose_secret())
        .env("AMQP_URL", testing::amqp_url().expose_secret())
        .env("PARLEY_EVENTS_EXCHANGE", &exchange)
        .output()
        .unwrap();
    assert!(migrate.status.success(), "{migrate:?}");
    let logs = String::from_utf8_lossy(&migrate.stdout);
    assert!(logs.contains(&format!("{exchange}.notification")), "{logs}");

    // A registration event arrives while no notification service has ever run.
    let user = uuid::Uuid::new_v4();
    let event = json!({"id": uuid::Uuid::new_v4(), "type": "user.registered", "occurredAt": "2026-11-24T20:00:00Z",
        "data": {"userId": user, "username": "early", "email": "early@example.com"}});
    let connection = lapin::Connection::connect(
        testing::amqp_url().expose_secret(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            exchange.as_str().into(),
            "user.registered".into(),
            BasicPublishOptions::default(),
            event.to_string().as_bytes(),
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;

    let db = std::sync::Arc::new(db);
    let _app = support::TestApp::spawn_with(support::Options {
        db: Some(db.clone()),
        exchange: Some(exchange.clone()),
        ..support::Options::default()
    })
    .await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(db.url().expose_secret())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM parley_notification.notifications WHERE user_id = $1",
        )
        .bind(user)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if count == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the early event was kept for the notification service"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

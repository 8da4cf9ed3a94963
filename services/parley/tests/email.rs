//! Email from events, against a real SMTP server on loopback
//! (`parley_common::testing_smtp`): content, escaping, outages, permanent
//! rejections, duplicates and dead letters.

mod support;

use std::time::Duration;

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use parley_common::testing::{self};
use parley_common::testing_smtp::{Mode, SmtpServer};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sqlx::Connection as _;
use support::*;

async fn app_with_smtp(smtp: &SmtpServer) -> TestApp {
    TestApp::spawn_with(
        Options::default()
            .flag("--smtp-host", "127.0.0.1")
            .flag("--smtp-port", smtp.port())
            .flag("--email-retry-max-secs", 1),
    )
    .await
}

async fn db(app: &TestApp) -> sqlx::PgConnection {
    sqlx::PgConnection::connect(app.db.url().expose_secret())
        .await
        .unwrap()
}

async fn publish(exchange: &str, routing_key: &str, body: &Value) {
    let connection = Connection::connect(
        testing::amqp_url().expose_secret(),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body.to_string().as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn registration_sends_a_welcome_email_with_both_parts() {
    let smtp = SmtpServer::start().await;
    let app = app_with_smtp(&smtp).await;
    let alice = register(&app, "alice").await;
    let mails = smtp.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(mail.to, vec![alice.email.clone()]);
    assert_eq!(mail.from, "notifications@chat-app");
    assert_eq!(mail.header_from, "Chat Service <notifications@chat-app>");
    assert_eq!(mail.subject, "Welcome to Chat App");
    assert!(
        mail.content_type.starts_with("multipart/alternative"),
        "{}",
        mail.content_type
    );
    let html = mail.html.as_deref().unwrap();
    let text = mail.text.as_deref().unwrap();
    assert!(
        html.contains("Welcome to Chat")
            && html.contains("Welcome to the Chat App!")
            && html.contains("Open Chat")
    );
    assert!(
        text.contains("Welcome to the Chat App!")
            && text.contains("Open Chat: http://localhost:8080")
    );
}

#[tokio::test]
async fn an_offline_message_email_names_the_sender_and_never_carries_the_ciphertext() {
    let smtp = SmtpServer::start().await;
    let app = app_with_smtp(&smtp).await;
    let bob = register(&app, "bob").await;
    let carol = register(&app, "carol").await;
    smtp.wait_for(2, Duration::from_secs(15)).await;
    send_rest(&app, &bob, &carol, "VG9wU2VjcmV0Q2lwaGVydGV4dA==").await;
    let mails = smtp.wait_for(3, Duration::from_secs(15)).await;
    let mail = mails
        .iter()
        .find(|m| m.subject.starts_with("New message"))
        .expect("message email");
    assert_eq!(mail.subject, "New message from bob");
    assert_eq!(mail.to, vec![carol.email.clone()]);
    assert!(
        mail.text
            .as_deref()
            .unwrap()
            .contains("You have a new encrypted message. Open the app to view it.")
    );
    assert!(
        mail.html
            .as_deref()
            .unwrap()
            .contains("New message from bob")
    );
    assert!(
        !String::from_utf8_lossy(&mail.raw).contains("VG9wU2VjcmV0"),
        "no ciphertext in email"
    );
}

#[tokio::test]
async fn emails_wait_out_an_smtp_outage_and_arrive_exactly_once() {
    let smtp = SmtpServer::start().await;
    let app = app_with_smtp(&smtp).await;
    smtp.stop().await;
    let mut users = Vec::new();
    for name in ["dana", "eli", "fay"] {
        users.push(register(&app, name).await);
    }
    send_rest(&app, &users[0], &users[1], "T2ZmbGluZQ==").await;
    let mut conn = db(&app).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (queued, retried): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE attempts > 0) FROM parley_notification.emails WHERE status = 'pending'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if queued == 4 && retried == 4 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "emails were queued and tried ({queued}, {retried})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(smtp.received().is_empty());

    smtp.restart().await;
    let mails = smtp.wait_for(4, Duration::from_secs(20)).await;
    assert_eq!(mails.len(), 4, "every email after the outage");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(smtp.received().len(), 4, "and each exactly once");
    let mut recipients: Vec<String> = smtp.received().iter().flat_map(|m| m.to.clone()).collect();
    recipients.sort();
    assert_eq!(
        recipients,
        [
            "dana@example.com",
            "eli@example.com",
            "eli@example.com",
            "fay@example.com"
        ]
    );
    let sent: i64 =
        sqlx::query_scalar("SELECT count(*) FROM parley_notification.emails WHERE status = 'sent'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(sent, 4);
}

#[tokio::test]
async fn a_permanent_rejection_is_recorded_and_not_retried() {
    let smtp = SmtpServer::start().await;
    let app = app_with_smtp(&smtp).await;
    smtp.reject_recipient("gus@example.com");
    register(&app, "gus").await;
    let mut conn = db(&app).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let (attempts, error) = loop {
        let row: Option<(i32, Option<String>)> = sqlx::query_as(
            "SELECT attempts, last_error FROM parley_notification.emails WHERE recipient = 'gus@example.com' AND status = 'failed'",
        )
        .fetch_optional(&mut conn)
        .await
        .unwrap();
        if let Some(row) = row {
            break row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rejection was recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(attempts, 1);
    assert!(error.unwrap().contains("550"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempts: i32 = sqlx::query_scalar(
        "SELECT attempts FROM parley_notification.emails WHERE recipient = 'gus@example.com'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(attempts, 1, "not retried");
    let metrics = plain()
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("parley_emails_total{outcome=\"rejected\"} 1"),
        "{metrics}"
    );
    assert!(smtp.received().is_empty());
}

#[tokio::test]
async fn temporary_failures_are_retried_until_accepted() {
    let smtp = SmtpServer::start().await;
    smtp.set_mode(Mode::TempFail);
    let app = app_with_smtp(&smtp).await;
    register(&app, "hal").await;
    let mut conn = db(&app).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let attempts: Option<i32> =
            sqlx::query_scalar("SELECT attempts FROM parley_notification.emails")
                .fetch_optional(&mut conn)
                .await
                .unwrap();
        if attempts.unwrap_or(0) >= 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "retried");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    smtp.set_mode(Mode::Accept);
    assert_eq!(smtp.wait_for(1, Duration::from_secs(15)).await.len(), 1);
}

#[tokio::test]
async fn a_duplicated_event_creates_one_notification_and_one_email() {
    let smtp = SmtpServer::start().await;
    let app = app_with_smtp(&smtp).await;
    let user = uuid::Uuid::new_v4();
    let event = json!({
        "id": uuid::Uuid::new_v4(), "type": "user.registered", "occurredAt": "2026-11-24T20:00:00Z",
        "data": {"userId": user, "username": "ivan", "email": "ivan@example.com"}
    });
    publish(&app.exchange, "user.registered", &event).await;
    publish(&app.exchange, "user.registered", &event).await;
    assert_eq!(smtp.wait_for(1, Duration::from_secs(15)).await.len(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(smtp.received().len(), 1, "one email");
    let mut conn = db(&app).await;
    let notifications: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM parley_notification.notifications WHERE user_id = $1",
    )
    .bind(user)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(notifications, 1, "one notification");
}

#[tokio::test]
async fn an_event_that_cannot_be_handled_is_dead_lettered_and_counted() {
    let app = TestApp::spawn().await;
    let broken = json!({"id": uuid::Uuid::new_v4(), "type": "chat.message.offline", "occurredAt": "2026-11-24T20:00:00Z", "data": {"receiverId": "nobody"}});
    publish(&app.exchange, "chat.message.offline", &broken).await;
    publish(&app.exchange, "user.registered", &json!("not an event")).await;
    let queue = format!("{}.notification", app.exchange);
    let metric = format!("parley_events_dead_lettered_total{{queue=\"{queue}\"}} 2");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let metrics = plain()
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains(&metric) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead letters counted:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connection = Connection::connect(
        testing::amqp_url().expose_secret(),
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let dead = channel
        .queue_declare(
            format!("{queue}.dead").as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        dead.message_count(),
        2,
        "both wait in the dead-letter queue"
    );
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn smtp_credentials_are_used_when_configured() {
    let smtp = SmtpServer::start().await;
    let app = TestApp::spawn_with(
        Options::default()
            .flag("--smtp-host", "127.0.0.1")
            .flag("--smtp-port", smtp.port())
            .flag("--smtp-user", "mailer")
            .flag("--smtp-password", "s3cret")
            .flag("--email-from", "noreply@parley.test"),
    )
    .await;
    register(&app, "jane").await;
    let mails = smtp.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(mails[0].from, "noreply@parley.test");
    assert_eq!(
        smtp.last_auth(),
        Some(("mailer".to_owned(), "s3cret".to_owned()))
    );
}

#[tokio::test]
async fn a_message_email_waits_for_an_address_that_arrives_later() {
    let smtp = SmtpServer::start().await;
    let app = app_with_smtp(&smtp).await;
    let user = uuid::Uuid::new_v4();
    let offline = json!({"id": uuid::Uuid::new_v4(), "type": "chat.message.offline", "occurredAt": "2026-11-24T20:00:00Z",
        "data": {"messageId": uuid::Uuid::new_v4(), "senderId": uuid::Uuid::new_v4(), "senderUsername": "early", "receiverId": user, "createdAt": "2026-11-24T20:00:00.000Z"}});
    publish(&app.exchange, "chat.message.offline", &offline).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        smtp.received().is_empty(),
        "no address yet: nothing sent, nothing lost"
    );
    let registered = json!({"id": uuid::Uuid::new_v4(), "type": "user.registered", "occurredAt": "2026-11-24T20:00:01Z",
        "data": {"userId": user, "username": "late", "email": "late@example.com"}});
    publish(&app.exchange, "user.registered", &registered).await;
    let mails = smtp.wait_for(2, Duration::from_secs(20)).await;
    let message = mails
        .iter()
        .find(|m| m.subject == "New message from early")
        .expect("the message email");
    assert_eq!(message.to, vec!["late@example.com".to_owned()]);
}

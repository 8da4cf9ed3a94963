//! Resilience, where the suite controls the dependencies: RabbitMQ and
//! PostgreSQL are restarted mid-conversation (`E2E_RESTART_RABBITMQ`,
//! `E2E_RESTART_POSTGRES`: shell commands; unset, the test says it is skipped).
//!
//! Alice talks to bob, who is offline (each message becomes a notification and
//! an email), and to carol, who is online (each message arrives live), before,
//! during and after the restart. What the platform promises, and what is
//! checked afterwards:
//!
//! * a message whose send was acknowledged (HTTP 200, ack `ok`) is in the
//!   history exactly once; one whose send was refused is never duplicated;
//! * the offline recipient gets exactly one notification per stored message
//!   (outbox relay + idempotent durable consumer), and exactly one email
//!   (durable email table);
//! * the online recipient never gets a message twice live, and gets every one
//!   sent once the platform is healthy again (live delivery is best effort while
//!   the broker is down between replicas: history has them all).
//!
//! Not promised, so not asserted: that sends succeed while PostgreSQL is down
//! (they are refused), and live delivery across replicas while RabbitMQ is down.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};
use tests_e2e::testing_socketio::SocketIoClient;
use tests_e2e::*;

/// The two restarts never overlap (each test process runs both tests).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Pause between two sends while the restart runs.
const PACE: Duration = Duration::from_millis(250);
/// Bound of the sends during one restart.
const MAX_SENDS_DURING: usize = 400;

#[tokio::test]
async fn rabbitmq_restart_mid_conversation_loses_and_duplicates_nothing() {
    let Some(command) = settings().restart_rabbitmq.clone() else {
        println!("skipped: E2E_RESTART_RABBITMQ is not set (the suite does not control RabbitMQ)");
        return;
    };
    let _serial = SERIAL.lock().await;
    restart_mid_conversation("RabbitMQ", &command).await;
}

#[tokio::test]
async fn postgres_restart_mid_conversation_loses_and_duplicates_nothing() {
    let Some(command) = settings().restart_postgres.clone() else {
        println!(
            "skipped: E2E_RESTART_POSTGRES is not set (the suite does not control PostgreSQL)"
        );
        return;
    };
    let _serial = SERIAL.lock().await;
    restart_mid_conversation("PostgreSQL", &command).await;
}

/// What happened to the sends.
#[derive(Default, Debug)]
struct Outcomes {
    /// Acknowledged REST sends to bob: body → message id.
    to_bob: HashMap<String, String>,
    /// Acknowledged socket sends to carol: body → message id.
    to_carol: HashMap<String, String>,
    /// Bodies whose send was refused (either recipient).
    refused: Vec<String>,
}

struct Conversation {
    alice: User,
    bob: User,
    carol: User,
    alice_socket: SocketIoClient,
    outcomes: Outcomes,
    counter: usize,
}

impl Conversation {
    /// One message to bob over REST; a refusal must be a server-side 5xx (the
    /// dependency is down), never a 4xx.
    async fn send_to_bob(&mut self, phase: &str) -> Option<String> {
        self.counter += 1;
        let body = unique_body(&format!("{phase}-bob-{}", self.counter));
        let request = self
            .alice
            .client
            .post(url("/chat/send"))
            .json(&json!({"receiverId": self.bob.id, "message": envelope(&body)}));
        let reply = match request.send().await {
            Ok(response) => reply(response).await,
            Err(err) => panic!("the HTTP server itself must stay up: {err}"),
        };
        if reply.status == 200 {
            let id = reply.body["data"]["id"].as_str().expect("id").to_owned();
            self.outcomes.to_bob.insert(body, id.clone());
            Some(id)
        } else {
            assert!(reply.status >= 500, "refused with {reply:?}");
            self.outcomes.refused.push(body);
            None
        }
    }

    /// One message to carol over the socket.
    async fn send_to_carol(&mut self, phase: &str) -> Option<String> {
        self.counter += 1;
        let body = unique_body(&format!("{phase}-carol-{}", self.counter));
        let ack = self
            .alice_socket
            .emit_with_ack(
                "sendMessage",
                json!({"senderId": self.alice.id, "receiverId": self.carol.id, "message": envelope(&body)}),
                Duration::from_secs(60),
            )
            .await
            .expect("the socket stays up and acknowledges");
        if ack["ok"] == true {
            let id = ack["id"].as_str().expect("id").to_owned();
            self.outcomes.to_carol.insert(body, id.clone());
            Some(id)
        } else {
            assert_eq!(ack["error"], json!("Failed to send message"), "{ack}");
            self.outcomes.refused.push(body);
            None
        }
    }
}

/// Waits until every public health endpoint answers 200 several times in a row
/// (requests to /chat/ are spread over the chat replicas).
async fn wait_until_healthy() {
    eventually("the platform healthy again", EVENTUALLY, || async {
        let client = plain();
        for _ in 0..4 {
            for path in [
                "/health",
                "/user/health",
                "/chat/health",
                "/notifications/health",
            ] {
                match client.get(url(path)).send().await {
                    Ok(response) if response.status() == 200 => {}
                    _ => return None,
                }
            }
        }
        Some(())
    })
    .await;
}

async fn restart_mid_conversation(dependency: &str, command: &str) {
    let alice = register("res_alice").await;
    let bob = register("res_bob").await;
    let carol = register("res_carol").await;
    let alice_socket = alice.socket().await;
    let mut carol_socket = carol.socket().await;
    let mut talk = Conversation {
        alice,
        bob,
        carol,
        alice_socket,
        outcomes: Outcomes::default(),
        counter: 0,
    };

    // Before: everything works.
    for _ in 0..3 {
        assert!(talk.send_to_bob("before").await.is_some());
        assert!(talk.send_to_carol("before").await.is_some());
    }

    // During: keep talking while the dependency goes down and comes back.
    let restart = {
        let command = command.to_owned();
        let what = format!("restarting {dependency}");
        tokio::spawn(async move { run_command(&what, &command, Duration::from_secs(180)).await })
    };
    let mut during = 0;
    while !restart.is_finished() && during < MAX_SENDS_DURING {
        talk.send_to_bob("during").await;
        talk.send_to_carol("during").await;
        during += 1;
        tokio::time::sleep(PACE).await;
    }
    restart.await.expect("the restart command succeeded");
    println!(
        "{dependency} restarted: {during} rounds during the restart, {} sends refused",
        talk.outcomes.refused.len()
    );

    // After: once healthy, every send works again, and live delivery too.
    wait_until_healthy().await;
    // Live delivery between replicas resumes once they follow the broker again:
    // probe until a message arrives live (bounded), then expect every one.
    // Every receiveMessage carol got, by message id (earlier ones are queued).
    let mut live: HashMap<String, usize> = HashMap::new();
    let mut resumed = false;
    for _ in 0..30 {
        let probe = talk
            .send_to_carol("probe")
            .await
            .expect("sends work once healthy");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Some(event) = carol_socket
            .expect_event(
                "receiveMessage",
                deadline.saturating_duration_since(tokio::time::Instant::now()),
            )
            .await
        {
            count_live(&event, &mut live);
            resumed |= live.contains_key(&probe);
        }
        if resumed {
            break;
        }
    }
    assert!(
        resumed,
        "live delivery resumed after the {dependency} restart"
    );
    let mut after_ids = HashSet::new();
    for _ in 0..3 {
        assert!(
            talk.send_to_bob("after").await.is_some(),
            "sends work once healthy"
        );
        after_ids.insert(
            talk.send_to_carol("after")
                .await
                .expect("sends work once healthy"),
        );
    }
    let deadline = tokio::time::Instant::now() + SOCKET_WAIT;
    while !after_ids.iter().all(|id| live.contains_key(id)) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match carol_socket.expect_event("receiveMessage", left).await {
            Some(event) => count_live(&event, &mut live),
            None => panic!("carol did not get every message sent after recovery: {live:?}"),
        }
    }

    let outcomes = &talk.outcomes;
    println!(
        "{dependency}: {} to bob and {} to carol acknowledged, {} refused",
        outcomes.to_bob.len(),
        outcomes.to_carol.len(),
        outcomes.refused.len()
    );

    // --- history: acknowledged exactly once, refused never twice ---
    let (alice, bob, carol) = (&talk.alice, &talk.bob, &talk.carol);
    for (peer, acknowledged) in [(bob, &outcomes.to_bob), (carol, &outcomes.to_carol)] {
        let history = history(alice, peer).await;
        let mut by_body: HashMap<String, Vec<String>> = HashMap::new();
        for message in &history {
            let envelope_text = message["message"].as_str().expect("message");
            let stored: Value = serde_json::from_str(envelope_text).expect("envelope");
            let body = stored["body"].as_str().expect("body").to_owned();
            by_body
                .entry(body)
                .or_default()
                .push(message["id"].as_str().expect("id").to_owned());
        }
        for (body, id) in acknowledged {
            assert_eq!(
                by_body.get(body),
                Some(&vec![id.clone()]),
                "acknowledged message {} in history exactly once",
                body_label(body)
            );
        }
        for body in &outcomes.refused {
            let copies = by_body.get(body).map_or(0, Vec::len);
            assert!(
                copies <= 1,
                "refused {} stored {copies} times",
                body_label(body)
            );
            if copies == 1 {
                println!(
                    "note: the refused send {} was stored after all (its commit raced the outage)",
                    body_label(body)
                );
            }
        }
        assert!(
            by_body
                .keys()
                .all(|b| acknowledged.contains_key(b) || outcomes.refused.contains(b)),
            "nothing in history that was not sent"
        );
    }
    let stored_to_bob = history(alice, bob).await.len();
    assert!(stored_to_bob >= outcomes.to_bob.len());

    // --- live: never twice ---
    for (id, count) in &live {
        assert_eq!(*count, 1, "message {id} arrived live {count} times");
    }

    // --- notifications: exactly one per message stored for offline bob ---
    let title = format!("New message from {}", alice.username);
    let is_message = |n: &Value| n["type"] == "message" && n["title"] == json!(title);
    let notes = eventually(
        "one notification per stored message",
        EVENTUALLY,
        || async {
            let notes = count_notifications(bob, is_message).await;
            (notes >= stored_to_bob).then_some(notes)
        },
    )
    .await;
    assert_eq!(notes, stored_to_bob, "no duplicate notification");
    assert_eq!(
        count_notifications(carol, is_message).await,
        0,
        "carol was online: no notification"
    );
    for user in [alice, bob, carol] {
        let welcome = count_notifications(user, |n| n["type"] == "system").await;
        assert_eq!(welcome, 1, "one welcome for {}", user.username);
    }

    // --- email: exactly one per notification ---
    if let Some(sink) = mail::sink_or_note(&format!("the {dependency} restart")) {
        let mails =
            mail::wait_for_mail(sink, &bob.email, stored_to_bob, |m| m.subject == title).await;
        assert_eq!(mails.len(), stored_to_bob, "one email per stored message");
        assert!(
            mail::mail_to(sink, &carol.email)
                .iter()
                .all(|m| m.subject != title)
        );
    }

    // Duplicates, if any, would come from redeliveries: give them a moment,
    // then count again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count_notifications(bob, is_message).await, stored_to_bob);
    if let Some(sink) = mail::sink() {
        let mails: Vec<_> = mail::mail_to(sink, &bob.email)
            .into_iter()
            .filter(|m| m.subject == title)
            .collect();
        assert_eq!(mails.len(), stored_to_bob, "no duplicate email");
        let welcome = mail::mail_to(sink, &bob.email)
            .into_iter()
            .filter(|m| m.subject == "Welcome to Chat App")
            .count();
        assert_eq!(welcome, 1, "one welcome email");
    }

    talk.alice_socket.disconnect().await;
    carol_socket.disconnect().await;
    assert_healthy().await;
}

/// Counts one more live arrival of the event's message.
fn count_live(event: &Value, live: &mut HashMap<String, usize>) {
    if let Some(id) = event["id"].as_str() {
        *live.entry(id.to_owned()).or_default() += 1;
    }
}

/// How many of `user`'s notifications `keep` accepts (every page).
async fn count_notifications(user: &User, keep: impl Fn(&Value) -> bool) -> usize {
    let mut count = 0;
    let mut offset = 0;
    // Bounded: 20 pages of 100.
    for _ in 0..20 {
        let reply = user
            .get(&format!("/notifications/?limit=100&offset={offset}"))
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let page = reply.body["data"].as_array().cloned().unwrap_or_default();
        count += page.iter().filter(|n| keep(n)).count();
        if page.len() < 100 {
            break;
        }
        offset += page.len();
    }
    count
}

/// The readable label inside a [`unique_body`].
fn body_label(body: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_else(|| body.to_owned())
}

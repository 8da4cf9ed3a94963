//! Socket.IO (contract §7) with a real client over WebSocket, against real
//! PostgreSQL and RabbitMQ.

mod support;

use std::time::Duration;

use parley_common::testing_socketio::{ConnectError, ConnectOptions, SocketIoClient};
use serde_json::{Value, json};
use support::*;

const WAIT: Duration = Duration::from_secs(5);

async fn connect_with(
    app: &TestApp,
    auth: Option<Value>,
    cookie: Option<&str>,
) -> Result<SocketIoClient, ConnectError> {
    let mut options = ConnectOptions::new(app.base.clone(), "/chat/socket.io/");
    options.auth = auth;
    if let Some(cookie) = cookie {
        options.headers.push(("Cookie".into(), cookie.to_owned()));
    }
    SocketIoClient::connect(options).await
}

fn refused(result: Result<SocketIoClient, ConnectError>) -> String {
    match result {
        Err(ConnectError::Refused { message }) => message,
        Err(other) => panic!("expected connect_error, got {other:?}"),
        Ok(_) => panic!("expected connect_error, got a connection"),
    }
}

/// The first event named in `names`, skipping others (presence…).
async fn first_of(client: &mut SocketIoClient, names: &[&str]) -> (String, Value) {
    loop {
        let (name, data) = client.next_event(WAIT).await.expect("an event");
        if names.contains(&name.as_str()) {
            return (name, data);
        }
    }
}

fn fast_typing() -> Options {
    Options::default().flag("--typing-timeout-ms", 300)
}

#[tokio::test]
async fn the_handshake_refuses_missing_invalid_and_revoked_tokens_with_connect_error() {
    let app = TestApp::spawn().await;
    let alice = register(&app, "alice").await;
    assert_eq!(
        refused(connect_with(&app, None, None).await),
        "Authentication required"
    );
    assert_eq!(
        refused(connect_with(&app, Some(json!({"token": ""})), None).await),
        "Authentication required"
    );
    assert_eq!(
        refused(connect_with(&app, Some(json!({"token": "forged"})), None).await),
        "Invalid token"
    );
    let cookie = format!("jwt={}", alice.token);
    assert_eq!(
        refused(connect_with(&app, Some(json!({"token": "forged"})), Some(&cookie)).await),
        "Invalid token",
        "a bad auth.token does not fall back to the cookie"
    );
    assert!(
        connect_with(&app, Some(json!({"token": alice.token})), None)
            .await
            .is_ok(),
        "auth.token"
    );
    assert!(
        connect_with(&app, None, Some(&format!("theme=dark; {cookie}")))
            .await
            .is_ok(),
        "cookie"
    );
    alice
        .client
        .post(app.url("/user/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused(connect_with(&app, None, Some(&cookie)).await),
        "Invalid token",
        "revoked"
    );
}

#[tokio::test]
async fn presence_is_announced_on_first_connect_and_last_disconnect() {
    let app = TestApp::spawn().await;
    let alice = register(&app, "alice").await;
    let bob = register(&app, "bob").await;
    let mut a = socket(&app, &alice).await;
    assert_eq!(
        a.expect_event("presence", WAIT).await.unwrap(),
        json!({"userId": alice.id, "online": true})
    );
    assert!(
        a.expect_no_event("presenceBulk", Duration::from_millis(300))
            .await,
        "never sent empty"
    );

    let mut b = socket(&app, &bob).await;
    assert_eq!(
        a.expect_event("presence", WAIT).await.unwrap(),
        json!({"userId": bob.id, "online": true})
    );
    assert_eq!(
        b.expect_event("presence", WAIT).await.unwrap(),
        json!({"userId": bob.id, "online": true})
    );
    assert_eq!(
        b.expect_event("presenceBulk", WAIT).await.unwrap(),
        json!({"onlineUserIds": [alice.id]})
    );

    // A second tab of Bob is no news; closing one of two tabs is no news either.
    let b2 = socket(&app, &bob).await;
    assert!(
        a.expect_no_event("presence", Duration::from_millis(300))
            .await
    );
    b2.disconnect().await;
    assert!(
        a.expect_no_event("presence", Duration::from_millis(300))
            .await
    );

    b.disconnect().await;
    let offline = a.expect_event("presence", WAIT).await.unwrap();
    assert_eq!(offline["userId"], bob.id);
    assert_eq!(offline["online"], false);
    assert!(offline["lastSeen"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn send_message_stores_acks_and_delivers_typing_false_then_the_message() {
    let app = TestApp::spawn().await;
    let mut tap = EventTap::bind(&app.exchange, "chat.message.offline").await;
    let carol = register(&app, "carol").await;
    let dave = register(&app, "dave").await;
    let sender = socket(&app, &carol).await;
    let mut sender_tab = socket(&app, &carol).await;
    let mut receiver = socket(&app, &dave).await;
    let text = envelope("SGVsbG8=");
    let ack = sender
        .emit_with_ack(
            "sendMessage",
            json!({"senderId": carol.id, "receiverId": dave.id, "message": format!(" {text} ")}),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(ack["ok"], true);
    let id = ack["id"].as_str().unwrap().to_owned();

    let (first, typing) = first_of(&mut receiver, &["typing", "receiveMessage"]).await;
    assert_eq!(first, "typing");
    assert_eq!(typing, json!({"userId": carol.id, "isTyping": false}));
    let message = receiver.expect_event("receiveMessage", WAIT).await.unwrap();
    assert_eq!(message["_id"], id);
    assert_eq!(message["id"], id);
    assert_eq!(message["senderId"], carol.id);
    assert_eq!(message["receiverId"], dave.id);
    assert_eq!(message["senderUsername"], "carol");
    assert_eq!(message["senderName"], "carol");
    assert_eq!(message["content"], text);
    assert_eq!(message["message"], text);
    assert_eq!(message["timestamp"], message["createdAt"]);
    assert_eq!(message["read"], false);
    assert_eq!(message["isRead"], false);
    assert_eq!(message.as_object().unwrap().len(), 13);
    assert!(
        sender_tab
            .expect_no_event("receiveMessage", Duration::from_millis(300))
            .await,
        "not the sender's tabs"
    );
    assert!(
        tap.next(Duration::from_millis(500)).await.is_none(),
        "no offline event for an online receiver"
    );

    let history: Value = dave
        .client
        .get(app.url(&format!("/chat/get/{}", carol.id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["pagination"]["total"], 1);
    assert_eq!(history["data"][0]["message"], text);
}

#[tokio::test]
async fn rest_then_socket_resend_broadcasts_the_stored_envelope_and_never_the_plaintext() {
    let app = TestApp::spawn().await;
    let mut tap = EventTap::bind(&app.exchange, "chat.message.offline").await;
    let erin = register(&app, "erin").await;
    let frank = register(&app, "frank").await;
    let mut receiver = socket(&app, &frank).await;
    let sender = socket(&app, &erin).await;
    let sent = send_rest(&app, &erin, &frank, "Q2lwaGVy").await;
    let id = sent["data"]["id"].as_str().unwrap().to_owned();
    assert!(
        receiver
            .expect_no_event("receiveMessage", Duration::from_millis(300))
            .await,
        "REST does not emit"
    );

    let ack = sender
        .emit_with_ack(
            "sendMessage",
            json!({"_id": id, "senderId": erin.id, "receiverId": frank.id, "message": "my secret plaintext"}),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(ack, json!({"ok": true, "id": id}));
    let message = receiver.expect_event("receiveMessage", WAIT).await.unwrap();
    assert_eq!(message["content"], envelope("Q2lwaGVy"));
    assert!(!message.to_string().contains("plaintext"));
    let history: Value = erin
        .client
        .get(app.url(&format!("/chat/get/{}", frank.id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["pagination"]["total"], 1, "no second row");
    assert!(!history.to_string().contains("plaintext"));
    assert!(
        tap.next(Duration::from_millis(500)).await.is_none(),
        "no notification from either path: the receiver is online"
    );
}

#[tokio::test]
async fn every_send_message_failure_is_acked_with_the_contract_text() {
    let app = TestApp::spawn().await;
    let gina = register(&app, "gina").await;
    let hank = register(&app, "hank").await;
    let mallory = register(&app, "mallory").await;
    let theirs = send_rest(&app, &mallory, &hank, "eA==").await["data"]["id"].clone();
    let mut s = socket(&app, &gina).await;
    let ok_envelope = envelope("QQ==");
    let cases = [
        (
            json!({"senderId": hank.id, "receiverId": hank.id, "message": ok_envelope}),
            "Unauthorized: cannot send as another user",
        ),
        (
            json!({"senderId": gina.id, "receiverId": hank.id, "message": 42}),
            "Invalid message content",
        ),
        (
            json!({"senderId": gina.id, "receiverId": hank.id}),
            "Invalid message content",
        ),
        (
            json!({"senderId": gina.id, "receiverId": hank.id, "message": "   "}),
            "Message must be between 1 and 5000 characters",
        ),
        (
            json!({"senderId": gina.id, "receiverId": hank.id, "message": "x".repeat(5001)}),
            "Message must be between 1 and 5000 characters",
        ),
        (
            json!({"senderId": gina.id, "message": ok_envelope}),
            "Invalid receiver",
        ),
        (
            json!({"senderId": gina.id, "receiverId": gina.id, "message": ok_envelope}),
            "Invalid receiver",
        ),
        (
            json!({"senderId": gina.id, "receiverId": hank.id, "message": "plain words"}),
            "Messages must be end-to-end encrypted (invalid envelope)",
        ),
        (
            json!({"senderId": gina.id, "receiverId": hank.id, "message": "{\"__encrypted\":false,\"body\":\"QQ==\"}"}),
            "Messages must be end-to-end encrypted",
        ),
        (
            json!({"_id": theirs, "senderId": gina.id, "receiverId": hank.id, "message": "hi"}),
            "Message not found",
        ),
        (
            json!({"_id": uuid::Uuid::new_v4(), "senderId": gina.id, "receiverId": hank.id, "message": "hi"}),
            "Message not found",
        ),
    ];
    for (payload, error) in cases {
        let ack = s
            .emit_with_ack("sendMessage", payload.clone(), WAIT)
            .await
            .unwrap();
        assert_eq!(ack, json!({"ok": false, "error": error}), "{payload}");
    }
    for payload in [
        json!({"_id": "not-a-uuid", "senderId": gina.id, "receiverId": hank.id, "message": "hi"}),
        json!("just a string"),
    ] {
        let ack = s.emit_with_ack("sendMessage", payload, WAIT).await.unwrap();
        assert_eq!(ack, json!({"ok": false, "error": "Failed to send message"}));
        assert_eq!(
            s.expect_event("server:error", WAIT).await.unwrap(),
            json!({"message": "Failed to send message"})
        );
    }
    // No payload at all is acked too, and nothing crashes.
    s.emit_raw_args("typing", vec![]).await.unwrap();
    s.emit_raw_args("markRead", vec![]).await.unwrap();
    s.emit_raw_args("messageDelivered", vec![json!(null)])
        .await
        .unwrap();
    let ack = s
        .emit_with_ack("sendMessage", json!(null), WAIT)
        .await
        .unwrap();
    assert_eq!(ack["ok"], false);
    let health = plain().get(app.url("/chat/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_megabyte_frame_is_accepted_by_the_transport() {
    let app = TestApp::spawn().await;
    let ivy = register(&app, "ivy").await;
    let jack = register(&app, "jack").await;
    let s = socket(&app, &ivy).await;
    let big = "x".repeat(900_000);
    let ack = s
        .emit_with_ack(
            "sendMessage",
            json!({"senderId": ivy.id, "receiverId": jack.id, "message": big}),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(
        ack,
        json!({"ok": false, "error": "Message must be between 1 and 5000 characters"})
    );
}

#[tokio::test]
async fn typing_is_relayed_and_turns_itself_off() {
    let app = TestApp::spawn_with(fast_typing()).await;
    let kim = register(&app, "kim").await;
    let lee = register(&app, "lee").await;
    let typist = socket(&app, &kim).await;
    let mut watcher = socket(&app, &lee).await;
    typist
        .emit("typing", json!({"receiverId": lee.id, "isTyping": true}))
        .await
        .unwrap();
    assert_eq!(
        watcher.expect_event("typing", WAIT).await.unwrap(),
        json!({"userId": kim.id, "isTyping": true})
    );
    let started = std::time::Instant::now();
    assert_eq!(
        watcher.expect_event("typing", WAIT).await.unwrap(),
        json!({"userId": kim.id, "isTyping": false})
    );
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "the timer fired, not an echo"
    );

    typist
        .emit("typing", json!({"receiverId": lee.id, "isTyping": true}))
        .await
        .unwrap();
    assert_eq!(
        watcher.expect_event("typing", WAIT).await.unwrap()["isTyping"],
        true
    );
    typist
        .emit("typing", json!({"receiverId": lee.id, "isTyping": false}))
        .await
        .unwrap();
    assert_eq!(
        watcher.expect_event("typing", WAIT).await.unwrap()["isTyping"],
        false
    );
    assert!(
        watcher
            .expect_no_event("typing", Duration::from_millis(600))
            .await,
        "the cancelled timer stays silent"
    );
}

#[tokio::test]
async fn delivery_and_read_receipts_reach_the_sender() {
    let app = TestApp::spawn().await;
    let max = register(&app, "max").await;
    let nina = register(&app, "nina").await;
    let olga = register(&app, "olga").await;
    let mut sender = socket(&app, &max).await;
    let receiver = socket(&app, &nina).await;
    let stranger = socket(&app, &olga).await;
    let id = send_rest(&app, &max, &nina, "cmVjZWlwdA==").await["data"]["id"].clone();

    stranger
        .emit("messageDelivered", json!({"messageId": id}))
        .await
        .unwrap();
    assert!(
        sender
            .expect_no_event("messageDelivered", Duration::from_millis(300))
            .await,
        "only the receiver may confirm"
    );
    receiver
        .emit("messageDelivered", json!({"messageId": id}))
        .await
        .unwrap();
    assert_eq!(
        sender.expect_event("messageDelivered", WAIT).await.unwrap(),
        json!({"messageId": id, "by": nina.id})
    );
    let history: Value = max
        .client
        .get(app.url(&format!("/chat/get/{}", nina.id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["data"][0]["status"], "Delivered");

    receiver
        .emit("markRead", json!({"senderId": max.id}))
        .await
        .unwrap();
    assert_eq!(
        sender.expect_event("messageRead", WAIT).await.unwrap(),
        json!({"by": nina.id})
    );
    let history: Value = max
        .client
        .get(app.url(&format!("/chat/get/{}", nina.id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["data"][0]["status"], "Seen");
    receiver
        .emit("markRead", json!({"senderId": max.id}))
        .await
        .unwrap();
    assert_eq!(
        sender.expect_event("messageRead", WAIT).await.unwrap(),
        json!({"by": nina.id}),
        "always emitted"
    );
}

#[tokio::test]
async fn an_event_sent_right_after_connect_is_never_lost() {
    let app = TestApp::spawn().await;
    let pia = register(&app, "pia").await;
    let quin = register(&app, "quin").await;
    for round in 0..40 {
        let s = socket(&app, &pia).await;
        let ack = s
            .emit_with_ack(
                "sendMessage",
                json!({"senderId": pia.id, "receiverId": quin.id, "message": envelope("UQ==")}),
                WAIT,
            )
            .await
            .unwrap_or_else(|err| panic!("round {round}: {err:?}"));
        assert_eq!(ack["ok"], true, "round {round}");
        s.disconnect().await;
    }
}

#[tokio::test]
async fn a_stalled_recipient_delays_no_one() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Frame;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let app = TestApp::spawn().await;
    let sender = register(&app, "sender").await;
    let healthy = register(&app, "healthy").await;
    let stalled = register(&app, "stalled").await;

    // The stalled client completes the handshake, then never reads again.
    let mut request = format!(
        "ws://{}/chat/socket.io/?EIO=4&transport=websocket",
        app.addr
    )
    .into_client_request()
    .unwrap();
    request
        .headers_mut()
        .insert("cookie", format!("jwt={}", stalled.token).parse().unwrap());
    let (mut frozen, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let open = frozen.next().await.unwrap().unwrap();
    assert!(open.to_text().unwrap().starts_with('0'));
    frozen.send(Frame::text("40")).await.unwrap();
    loop {
        let frame = frozen.next().await.unwrap().unwrap();
        match frame.to_text().unwrap() {
            "2" => frozen.send(Frame::text("3")).await.unwrap(),
            text if text.starts_with("40") => break,
            other => panic!("unexpected {other}"),
        }
    }

    let mut watcher = socket(&app, &healthy).await;
    let s = socket(&app, &sender).await;
    let big = envelope(&"A".repeat(4900));
    let small = envelope("b2s=");
    for round in 0..600 {
        for (to, body) in [(&stalled.id, &big), (&healthy.id, &small)] {
            let ack = s
                .emit_with_ack(
                    "sendMessage",
                    json!({"senderId": sender.id, "receiverId": to, "message": body}),
                    WAIT,
                )
                .await
                .unwrap_or_else(|err| panic!("round {round}: no ack ({err:?})"));
            assert_eq!(ack["ok"], true);
        }
    }
    let mut received = 0;
    while received < 600 {
        match watcher.next_event(WAIT).await {
            Some((name, _)) if name == "receiveMessage" => received += 1,
            Some(_) => {}
            None => panic!("the healthy receiver got only {received} of 600"),
        }
    }
    drop(frozen);
}

#[tokio::test]
async fn polling_honours_cors_and_engine_io_3_is_refused() {
    let app = TestApp::spawn().await;
    let rita = register(&app, "rita").await;
    let handshake = plain()
        .get(app.url("/chat/socket.io/?EIO=4&transport=polling"))
        .header("origin", "http://localhost:5173")
        .header("cookie", format!("jwt={}", rita.token))
        .send()
        .await
        .unwrap();
    assert_eq!(handshake.status(), 200);
    assert_eq!(
        handshake.headers()["access-control-allow-origin"],
        "http://localhost:5173"
    );
    assert_eq!(
        handshake.headers()["access-control-allow-credentials"],
        "true"
    );
    let open = handshake.text().await.unwrap();
    assert!(
        open.starts_with("0{") && open.contains("\"pingTimeout\":60000"),
        "{open}"
    );

    let preflight = plain()
        .request(
            reqwest::Method::OPTIONS,
            app.url("/chat/socket.io/?EIO=4&transport=polling"),
        )
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);

    let v3 = plain()
        .get(app.url("/chat/socket.io/?EIO=3&transport=polling"))
        .send()
        .await
        .unwrap();
    assert_eq!(v3.status(), 400, "Engine.IO 3 is not allowed");
}

#[tokio::test]
async fn stopping_the_server_with_sockets_open_closes_them_without_a_panic() {
    // Each test is its own process under nextest, so the hook sees only this one.
    let panics = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = panics.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        previous(info);
    }));
    let app = TestApp::spawn().await;
    let alice = register(&app, "alice").await;
    let bob = register(&app, "bob").await;
    let mut sockets = vec![
        socket(&app, &alice).await,
        socket(&app, &bob).await,
        socket(&app, &bob).await,
    ];

    app.stop().await;

    for client in &mut sockets {
        while client.next_event(WAIT).await.is_some() {}
        assert!(client.is_closed(), "the server closed every socket");
    }
    // The disconnect handlers (presence, the offline announcement) have run.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = std::panic::take_hook();
    assert_eq!(panics.load(std::sync::atomic::Ordering::SeqCst), 0);
}

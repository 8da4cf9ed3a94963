//! Bad input, through the public URL: malformed, wrongly typed and oversized
//! bodies, bad path and query parameters, and bad Socket.IO payloads get a 4xx
//! (or a failed acknowledgement) in the contract's shape: never a 5xx, a hang or
//! a crash. Every test ends by checking that the platform is still healthy.

use std::time::Duration;

use serde_json::{Value, json};
use tests_e2e::testing_socketio::ClientError;
use tests_e2e::*;

/// `reply` is the contract's error for `status`: `{"code":status,"message":..}`,
/// or for 400 possibly the validation envelope. Returns the fields named by a
/// validation envelope (empty for `{code,message}`).
fn assert_error(reply: &Reply, status: u16, what: &str) -> Vec<String> {
    assert_eq!(reply.status, status, "{what}: {reply:?}");
    let body = &reply.body;
    if body.get("errors").is_some() {
        assert_eq!(status, 400, "{what}: {reply:?}");
        assert_eq!(body["status"], json!(400), "{what}: {reply:?}");
        assert_eq!(body["message"], json!("Validation failed"), "{what}");
        let errors = body["errors"].as_array().expect("errors array");
        assert!(!errors.is_empty(), "{what}: {reply:?}");
        errors
            .iter()
            .map(|e| {
                assert!(
                    e["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "{what}: {e}"
                );
                e["field"].as_str().expect("field").to_owned()
            })
            .collect()
    } else {
        assert_eq!(body["code"], json!(status), "{what}: {reply:?}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {reply:?}"
        );
        assert!(
            reply.header("content-type").starts_with("application/json"),
            "{what}: {reply:?}"
        );
        Vec::new()
    }
}

/// Not a server error (the endpoint may ignore the input).
fn assert_not_5xx(reply: &Reply, what: &str) {
    assert!(reply.status < 500, "{what}: {reply:?}");
}

/// The endpoints that read a JSON body (all but register/login need a session).
fn body_endpoints() -> Vec<(&'static str, &'static str, bool)> {
    vec![
        ("POST", "/user/register", false),
        ("POST", "/user/login", false),
        ("POST", "/api/user/register", false),
        ("POST", "/user/prekeys", true),
        ("POST", "/api/user/prekeys", true),
        ("POST", "/user/signal-keys", true),
        ("POST", "/chat/send", true),
        ("POST", "/notifications/", true),
        ("POST", "/notification/", true),
    ]
}

/// Endpoints whose body the contract says is ignored.
fn bodyless_endpoints(peer: &str) -> Vec<(&'static str, String)> {
    // Logout last: it revokes the caller's token.
    vec![
        ("PUT", format!("/chat/messages/read/{peer}")),
        ("PUT", "/notifications/read-all".to_owned()),
        ("PUT", format!("/notifications/{peer}/read")),
        ("DELETE", format!("/notifications/{peer}")),
        ("POST", "/user/logout".to_owned()),
    ]
}

async fn raw(
    user: Option<&User>,
    method: &str,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> Reply {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let client = plain();
    let mut request = client
        .request(method, url(path))
        .header("content-type", content_type)
        .body(body);
    if let Some(user) = user {
        request = request.bearer_auth(&user.token);
    }
    send(request).await
}

#[tokio::test]
async fn malformed_and_non_object_json_bodies_are_400() {
    let user = register("bad_json").await;
    // Deeper than any JSON parser's recursion limit, still under the body limit.
    let nested = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", br#"{"username":"#.to_vec()),
        ("not JSON", b"username=alice&".to_vec()),
        ("a string", br#""just a string""#.to_vec()),
        ("a number", b"42".to_vec()),
        ("null", b"null".to_vec()),
        ("true", b"true".to_vec()),
        ("unclosed array", b"[1, 2".to_vec()),
        ("trailing garbage", br#"{"a":1} {"b":2}"#.to_vec()),
        ("invalid UTF-8", b"{\"username\":\"\xff\xfe\"}".to_vec()),
        ("deep nesting", nested.into_bytes()),
        ("NUL bytes", b"{\"a\":\"\0\"}\0".to_vec()),
    ];
    for (method, path, authenticated) in body_endpoints() {
        let caller = authenticated.then_some(&user);
        for (kind, body) in &bodies {
            let reply = raw(caller, method, path, "application/json", body.clone()).await;
            assert_error(&reply, 400, &format!("{method} {path}: {kind}"));
        }
        // A JSON content type with parameters and odd casing is still JSON.
        let reply = raw(caller, method, path, "Application/JSON; charset=utf-8", "{").await;
        assert_error(
            &reply,
            400,
            &format!("{method} {path}: JSON with parameters"),
        );
        // Other content types are ignored (Express): the body is {} and the
        // endpoint's own validation answers.
        let reply = raw(caller, method, path, "text/plain", "hello").await;
        assert!(
            (400..500).contains(&reply.status),
            "{method} {path} text/plain: {reply:?}"
        );
    }
    let peer = uuid::Uuid::new_v4().to_string();
    for (method, path) in bodyless_endpoints(&peer) {
        for (kind, body) in &bodies {
            let reply = raw(Some(&user), method, &path, "application/json", body.clone()).await;
            assert_not_5xx(&reply, &format!("{method} {path}: {kind}"));
            if reply.status >= 400 {
                assert_error(&reply, reply.status, &format!("{method} {path}: {kind}"));
            }
        }
    }
    assert_healthy().await;
}

#[tokio::test]
async fn wrongly_typed_fields_get_the_validation_envelope() {
    let user = register("bad_types").await;
    let peer = register("bad_types_peer").await;
    let cases: Vec<(&str, Value, u16, &[&str])> = vec![
        (
            "/user/register",
            // (A number would pass: express-validator turns it into a string.)
            json!({"username": {"u": 1}, "email": ["a@b.c"], "password": {"p": 1}}),
            400,
            &["username", "email", "password"],
        ),
        (
            "/user/register",
            json!({"username": "a b", "email": "not-an-email", "password": "short"}),
            400,
            &["username", "email", "password"],
        ),
        (
            "/user/register",
            json!({"username": "x".repeat(31), "email": format!("{}@example.com", "e".repeat(300)), "password": "a".repeat(129)}),
            400,
            &["username", "email", "password"],
        ),
        (
            "/user/login",
            json!({"email": 5, "password": null}),
            400,
            &["email", "password"],
        ),
        (
            "/user/prekeys",
            json!({"deviceId": "", "bundle": "not an object"}),
            400,
            &["deviceId", "bundle"],
        ),
        (
            "/user/prekeys",
            json!({"deviceId": "d".repeat(256), "bundle": null}),
            400,
            &["deviceId", "bundle"],
        ),
        (
            "/user/prekeys",
            json!({"deviceId": "d", "bundle": {"big": "x".repeat(20_001)}}),
            400,
            &["bundle"],
        ),
        ("/user/signal-keys", json!({"deviceId": "d"}), 400, &[]),
        (
            "/user/signal-keys",
            json!({"deviceId": "d", "encryptedBundle": "a string"}),
            400,
            &[],
        ),
        (
            "/user/signal-keys",
            json!({"deviceId": "d", "encryptedBundle": {"encrypted": "a", "iv": "b", "salt": "c", "version": 0, "deviceId": "d"}}),
            400,
            &[],
        ),
        (
            "/user/signal-keys",
            json!({"deviceId": "d", "encryptedBundle": {"encrypted": "a", "iv": "b", "salt": "c", "version": 1, "deviceId": "other"}}),
            400,
            &[],
        ),
        (
            "/chat/send",
            json!({"receiverId": 42, "message": {"__encrypted": true}}),
            400,
            &["receiverId", "message"],
        ),
        (
            "/chat/send",
            json!({"receiverId": "not-a-uuid", "message": ["a"]}),
            400,
            &["receiverId", "message"],
        ),
        (
            "/chat/send",
            json!({"receiverId": peer.id, "message": "x".repeat(5001)}),
            400,
            &["message"],
        ),
        (
            "/chat/send",
            json!({"receiverId": peer.id, "message": "plaintext, not an envelope"}),
            400,
            &[],
        ),
        (
            "/chat/send",
            json!({"receiverId": peer.id, "message": r#"{"__encrypted":"true","body":"YQ=="}"#}),
            400,
            &[],
        ),
        (
            "/chat/send",
            json!({"receiverId": peer.id, "message": r#"{"__encrypted":true,"body":7}"#}),
            400,
            &[],
        ),
        (
            "/chat/send",
            json!({"receiverId": user.id, "message": envelope("YQ==")}),
            400,
            &[],
        ),
        (
            "/chat/send",
            json!({"receiverId": peer.id, "message": "   "}),
            400,
            &[],
        ),
        (
            "/notifications/",
            json!({"userId": "nope", "type": "spam", "title": 5, "message": {"m": 1}}),
            400,
            &["userId", "type", "title", "message"],
        ),
        (
            "/notifications/",
            json!({"userId": user.id, "type": "system", "title": "t".repeat(256), "message": "m".repeat(5001)}),
            400,
            &["title", "message"],
        ),
    ];
    for (path, body, status, fields) in cases {
        let reply = send(plain().post(url(path)).bearer_auth(&user.token).json(&body)).await;
        let named = assert_error(&reply, status, &format!("POST {path} {body}"));
        for field in fields {
            assert!(
                named.iter().any(|f| f == field),
                "POST {path}: {field} not among {named:?}"
            );
        }
    }
    // Form bodies are parsed too (Express urlencoded): strings, so the
    // validation answers.
    let reply = send(
        plain()
            .post(url("/chat/send"))
            .bearer_auth(&user.token)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("receiverId=x&message=%ZZ&message=2"),
    )
    .await;
    assert!((400..500).contains(&reply.status), "{reply:?}");
    // Nothing of the above was stored.
    assert!(history(&user, &peer).await.is_empty());
    assert_healthy().await;
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let user = register("big_body").await;
    let big = json!({"username": "x".repeat(200_000), "email": "a@b.c", "password": "p",
        "deviceId": "d", "bundle": {"k": "x".repeat(200_000)}, "receiverId": user.id,
        "message": "x".repeat(200_000)})
    .to_string();
    let huge = format!(r#"{{"message":"{}"}}"#, "y".repeat(5 * 1024 * 1024));
    for (method, path, authenticated) in body_endpoints() {
        let caller = authenticated.then_some(&user);
        let reply = raw(caller, method, path, "application/json", big.clone()).await;
        assert_error(
            &reply,
            413,
            &format!("{method} {path} ({} bytes)", big.len()),
        );
        // 5 MB: the platform answers 413 as soon as it sees Content-Length and
        // closes the connection, so a client still writing may see the
        // connection go before it reads the answer; a gateway in front may
        // refuse it first with its own 413 (ingress-nginx's limit is 1 MB).
        // Any of those is fine; a 2xx or a 5xx is not.
        let method_ = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = plain()
            .request(method_, url(path))
            .header("content-type", "application/json")
            .body(huge.clone());
        if let Some(user) = caller {
            request = request.bearer_auth(&user.token);
        }
        match request.send().await {
            Ok(response) => {
                let reply = tests_e2e::reply(response).await;
                if reply.header("server") == "nginx" {
                    assert_eq!(reply.status, 413, "{method} {path} (5 MB): {reply:?}");
                } else {
                    assert_error(&reply, 413, &format!("{method} {path} (5 MB)"));
                }
            }
            Err(err) => assert!(
                !err.is_timeout() && !err.is_connect(),
                "{method} {path} (5 MB): {err}"
            ),
        }
    }
    // Just under the limit is read (and then judged on its content).
    let fits = json!({"receiverId": user.id, "message": "x".repeat(90_000)}).to_string();
    let reply = raw(Some(&user), "POST", "/chat/send", "application/json", fits).await;
    assert_error(&reply, 400, "a 90 kB message");
    assert_healthy().await;
}

#[tokio::test]
async fn bad_path_and_query_parameters_are_4xx_or_ignored() {
    let user = register("bad_params").await;
    let peer = register("bad_params_peer").await;
    let long = "z".repeat(3000);
    // Malformed ids in paths: the validation envelope (or a 404) in the
    // contract's shape.
    let by_validation = [
        ("GET", "/chat/get/not-a-uuid".to_owned()),
        ("GET", "/chat/get/%20".to_owned()),
        ("PUT", "/chat/messages/read/123".to_owned()),
        ("PUT", "/notifications/not-a-uuid/read".to_owned()),
        ("DELETE", "/notifications/not-a-uuid".to_owned()),
        ("PUT", format!("/notification/{long}/read")),
        (
            "GET",
            "/chat/get/00000000-0000-0000-0000-00000000000g".to_owned(),
        ),
    ];
    for (method, path) in by_validation {
        let reply = send(
            plain()
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
                    url(&path),
                )
                .bearer_auth(&user.token),
        )
        .await;
        assert_error(&reply, 400, &format!("{method} {path}"));
    }
    for path in [
        "/user/users/not-a-uuid".to_owned(),
        format!("/user/users/{long}"),
        "/user/users/00000000-0000-0000-0000-000000000000".to_owned(),
    ] {
        let reply = send(plain().get(url(&path)).bearer_auth(&user.token)).await;
        assert!(
            reply.status == 400 || reply.status == 404,
            "GET {path}: {reply:?}"
        );
        assert_error(&reply, reply.status, &path);
    }
    for path in [
        format!("/user/prekeys/{long}"),
        "/user/prekeys/'%20OR%201=1--".to_owned(),
        "/user/prekeys/%E2%80%AE%F0%9F%92%A9".to_owned(),
    ] {
        let reply = send(plain().get(url(&path))).await;
        assert_error(&reply, 404, &path);
    }
    // A NUL in the path: a gateway in front (nginx) refuses it itself with a
    // 400 of its own; parley alone answers 404 in the contract's shape.
    let reply = send(plain().get(url("/user/prekeys/%00"))).await;
    if reply.header("server") == "nginx" {
        assert_eq!(reply.status, 400, "{reply:?}");
    } else {
        assert_error(&reply, 404, "/user/prekeys/%00");
    }
    let reply = send(
        plain()
            .get(url("/user/signal-keys?deviceId="))
            .bearer_auth(&user.token),
    )
    .await;
    assert_error(&reply, 400, "signal-keys without deviceId");

    // Odd numbers in queries are clamped or defaulted, never a crash.
    for query in [
        "limit=abc&offset=-5",
        "limit=-1&offset=abc",
        "limit=1e400&offset=1e400",
        "limit=99999999999999999999999&offset=99999999999999999999999",
        "limit=0",
        "limit=NaN&offset=Infinity",
        "limit=1&limit=2",
        "limit[]=1&offset[a]=2",
        "limit=%ZZ",
    ] {
        for path in [
            format!("/chat/get/{}?{query}", peer.id),
            format!("/notifications/?{query}"),
        ] {
            let reply = send(plain().get(url(&path)).bearer_auth(&user.token)).await;
            assert_not_5xx(&reply, &path);
            if reply.status >= 400 {
                assert_error(&reply, reply.status, &path);
            } else {
                assert_eq!(reply.status, 200, "{path}: {reply:?}");
                assert!(reply.body["data"].is_array(), "{path}: {reply:?}");
            }
        }
    }
    // Search: wildcards, quotes, long and malformed queries.
    for query in [
        "q=%25",
        "q=_",
        "q=%27%3B%20DROP%20TABLE%20users%3B--",
        "q=%ZZ",
        "q[]=a",
        &format!("q={}", "a".repeat(5000)),
        "q=%F0%9F%92%A9",
        "q=%C3%28",
    ] {
        let path = format!("/user/search?{query}");
        let reply = send(plain().get(url(&path)).bearer_auth(&user.token)).await;
        assert_not_5xx(&reply, &path);
        if reply.status == 200 {
            let found = reply.body["data"].as_array().expect("data");
            assert!(
                found.iter().all(|u| u["_id"] != json!(user.id)),
                "never the caller"
            );
        } else {
            assert_error(&reply, reply.status, &path);
        }
    }
    // Unknown routes and methods: the contract's 404 (no 405).
    for (method, path) in [
        ("GET", "/user/nothing-here"),
        ("DELETE", "/chat/send"),
        ("PATCH", "/user/me"),
        ("GET", "/notifications/a/b/c"),
        ("POST", "/chat/conversations"),
    ] {
        let reply = send(
            plain()
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
                    url(path),
                )
                .bearer_auth(&user.token),
        )
        .await;
        assert_error(&reply, 404, &format!("{method} {path}"));
    }
    assert_healthy().await;
}

/// Sends `payload` as `sendMessage` with an ack; returns the ack.
async fn send_message(
    socket: &tests_e2e::testing_socketio::SocketIoClient,
    payload: Value,
) -> Value {
    socket
        .emit_with_ack("sendMessage", payload.clone(), SOCKET_WAIT)
        .await
        .unwrap_or_else(|err| panic!("no ack for sendMessage {payload}: {err}"))
}

#[tokio::test]
async fn bad_socket_payloads_get_failed_acks_and_never_break_the_server() {
    let user = register("bad_socket").await;
    let peer = register("bad_socket_peer").await;
    let mut socket = user.socket().await;
    let mut peer_socket = peer.socket().await;
    let me = user.id.as_str();
    let failed = json!({"ok": false, "error": "Failed to send message"});
    let reject = |error: &str| json!({"ok": false, "error": error});
    let cases: Vec<(Value, Value)> = vec![
        (Value::Null, failed.clone()),
        (json!("a string"), failed.clone()),
        (json!(42), failed.clone()),
        (json!([1, 2]), failed.clone()),
        (
            json!({}),
            reject("Unauthorized: cannot send as another user"),
        ),
        (
            json!({"senderId": 7, "receiverId": peer.id, "message": envelope("YQ==")}),
            reject("Unauthorized: cannot send as another user"),
        ),
        (
            json!({"senderId": me, "receiverId": peer.id}),
            reject("Invalid message content"),
        ),
        (
            json!({"senderId": me, "receiverId": peer.id, "message": 42}),
            reject("Invalid message content"),
        ),
        (
            json!({"senderId": me, "receiverId": peer.id, "message": {"__encrypted": true, "body": "YQ=="}}),
            reject("Invalid message content"),
        ),
        (
            json!({"senderId": me, "receiverId": peer.id, "message": "   "}),
            reject("Message must be between 1 and 5000 characters"),
        ),
        (
            json!({"senderId": me, "receiverId": peer.id, "message": "x".repeat(5001)}),
            reject("Message must be between 1 and 5000 characters"),
        ),
        (
            json!({"senderId": me, "message": envelope("YQ==")}),
            reject("Invalid receiver"),
        ),
        (
            json!({"senderId": me, "receiverId": me, "message": envelope("YQ==")}),
            reject("Invalid receiver"),
        ),
        (
            json!({"senderId": me, "receiverId": 42, "message": envelope("YQ==")}),
            reject("Invalid receiver"),
        ),
        (
            json!({"senderId": me, "receiverId": "not-a-uuid", "message": envelope("YQ==")}),
            reject("Invalid receiver"),
        ),
        (
            json!({"senderId": me, "receiverId": peer.id, "message": "plaintext"}),
            reject("Messages must be end-to-end encrypted (invalid envelope)"),
        ),
        (
            json!({"senderId": me, "receiverId": peer.id, "message": r#"{"__encrypted":1,"body":"YQ=="}"#}),
            reject("Messages must be end-to-end encrypted"),
        ),
        (
            json!({"_id": "not-a-uuid", "senderId": me, "receiverId": peer.id, "message": "hi"}),
            failed.clone(),
        ),
        (
            json!({"_id": 42, "senderId": me, "receiverId": peer.id, "message": "hi"}),
            failed.clone(),
        ),
        (
            json!({"_id": uuid::Uuid::new_v4(), "senderId": me, "receiverId": peer.id, "message": "hi"}),
            reject("Message not found"),
        ),
    ];
    for (payload, expected) in &cases {
        let ack = send_message(&socket, payload.clone()).await;
        assert_eq!(&ack, expected, "sendMessage {payload}");
    }
    // The unexpected failures also told the sender over `server:error`.
    let error = socket
        .expect_event("server:error", SOCKET_WAIT)
        .await
        .expect("server:error");
    assert_eq!(error, json!({"message": "Failed to send message"}));

    // Without arguments at all, and with extra ones.
    socket
        .emit_raw_args("sendMessage", vec![])
        .await
        .expect("emit");
    socket
        .emit_raw_args("sendMessage", vec![json!(1), json!(2), json!(3)])
        .await
        .expect("emit");
    // The other events with every wrong shape: ignored, nothing breaks.
    let stranger = uuid::Uuid::new_v4().to_string();
    for event in ["typing", "messageDelivered", "markRead"] {
        for payload in [
            Value::Null,
            json!("x"),
            json!(1),
            json!([]),
            json!({}),
            json!({"receiverId": 5, "isTyping": "yes", "messageId": 5, "senderId": []}),
            json!({"receiverId": "nope", "isTyping": {}, "messageId": "nope", "senderId": "nope"}),
            json!({"receiverId": stranger, "isTyping": true, "messageId": stranger, "senderId": stranger}),
        ] {
            socket.emit(event, payload).await.expect("emit");
        }
        socket.emit_raw_args(event, vec![]).await.expect("emit");
    }
    // An unknown event, with an ack request: no answer, no harm.
    let unknown = socket
        .emit_with_ack("dropTables", json!({}), Duration::from_secs(1))
        .await;
    assert_eq!(unknown, Err(ClientError::Timeout));

    // A valid message without an ack callback is still delivered.
    let body = unique_body("no-ack");
    socket
        .emit(
            "sendMessage",
            json!({"senderId": me, "receiverId": peer.id, "message": envelope(&body)}),
        )
        .await
        .expect("emit");
    let live = expect_event_where(&mut peer_socket, "receiveMessage", |m| {
        m["content"] == json!(envelope(&body))
    })
    .await;
    assert_eq!(live["senderId"], json!(me));
    // And the same socket still works.
    let ok = send_message(
        &socket,
        json!({"senderId": me, "receiverId": peer.id, "message": envelope("b2s=")}),
    )
    .await;
    assert_eq!(ok["ok"], json!(true), "{ok}");
    // Only those two messages were stored.
    assert_eq!(history(&user, &peer).await.len(), 2);

    // Malformed Socket.IO/Engine.IO packets: the server may drop the socket,
    // but never crashes; a new socket works.
    let broken = user.socket().await;
    for packet in [
        "42[\"sendMessage\"",
        "42{}",
        "4",
        "99",
        "",
        "42[]",
        "42[null]",
        "4299999999999999999999[\"sendMessage\",{}]",
        "451-[\"sendMessage\",{\"_placeholder\":true,\"num\":0}]",
        "0{\"token\":1}",
    ] {
        let _ = broken.send_raw(packet).await;
    }
    drop(broken);

    // A frame over the 1 MB limit: the connection goes, the server stays.
    let oversized = user.socket().await;
    let ack = oversized
        .emit_with_ack(
            "sendMessage",
            json!({"senderId": me, "receiverId": peer.id, "message": "x".repeat(1_100_000)}),
            SOCKET_WAIT,
        )
        .await;
    assert!(
        !matches!(&ack, Ok(ack) if ack["ok"] == true),
        "an oversized frame is not accepted: {ack:?}"
    );
    drop(oversized);

    let fresh = user.socket().await;
    let ok = send_message(
        &fresh,
        json!({"senderId": me, "receiverId": peer.id, "message": envelope("YWdhaW4=")}),
    )
    .await;
    assert_eq!(ok["ok"], json!(true), "{ok}");
    fresh.disconnect().await;
    socket.disconnect().await;
    peer_socket.disconnect().await;
    assert_healthy().await;
}

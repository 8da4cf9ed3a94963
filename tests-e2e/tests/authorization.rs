//! Authorization through the public URL: every authenticated endpoint and the
//! socket handshake refuse a missing, forged, expired or revoked token; and one
//! user cannot read or change another's messages, notifications or backups.

use serde_json::{Value, json};
use tests_e2e::testing_socketio::ConnectError;
use tests_e2e::tokens::{bad_tokens, fresh_with_platform_key};
use tests_e2e::*;

const NIL: &str = "00000000-0000-4000-8000-000000000000";

/// Which service answers, for its 401 messages (contract §2.1).
#[derive(Clone, Copy, Debug)]
enum Service {
    User,
    Chat,
    Notification,
}

impl Service {
    fn missing(self) -> &'static str {
        match self {
            Service::Chat => "Authentication required",
            _ => "Authentication required. Please log in.",
        }
    }

    fn invalid(self) -> &'static str {
        match self {
            Service::Chat => "Invalid or expired token",
            _ => "Invalid token. Please log in again.",
        }
    }
}

/// Every authenticated endpoint of the contract, with a body that would be
/// valid, under both prefixes where the contract has two.
fn endpoints() -> Vec<(Service, &'static str, String, Option<Value>)> {
    use Service::*;
    let mut list = Vec::new();
    for prefix in ["/user", "/api/user"] {
        list.extend([
            (User, "GET", format!("{prefix}/me"), None),
            (User, "GET", format!("{prefix}/search?q=a"), None),
            (User, "GET", format!("{prefix}/users/{NIL}"), None),
            (
                User,
                "POST",
                format!("{prefix}/prekeys"),
                Some(json!({"deviceId": "d", "bundle": real_bundle(2)})),
            ),
            (
                User,
                "POST",
                format!("{prefix}/signal-keys"),
                Some(
                    json!({"deviceId": "d", "encryptedBundle": {"encrypted": "YQ==", "iv": "YQ==", "salt": "YQ==", "version": 1, "deviceId": "d"}}),
                ),
            ),
            (User, "GET", format!("{prefix}/signal-keys?deviceId=d"), None),
        ]);
    }
    list.extend([
        (
            Chat,
            "POST",
            "/chat/send".to_owned(),
            Some(json!({"receiverId": NIL, "message": envelope("YQ==")})),
        ),
        (Chat, "GET", format!("/chat/get/{NIL}"), None),
        (Chat, "GET", "/chat/conversations".to_owned(), None),
        (Chat, "PUT", format!("/chat/messages/read/{NIL}"), None),
    ]);
    for prefix in ["/notifications", "/notification"] {
        list.extend([
            (Notification, "GET", format!("{prefix}/?limit=5"), None),
            (Notification, "GET", format!("{prefix}/unread/count"), None),
            (Notification, "PUT", format!("{prefix}/read-all"), None),
            (Notification, "PUT", format!("{prefix}/{NIL}/read"), None),
            (Notification, "DELETE", format!("{prefix}/{NIL}"), None),
            (
                Notification,
                "POST",
                format!("{prefix}/"),
                Some(json!({"userId": NIL, "type": "system", "title": "t", "message": "m"})),
            ),
        ]);
    }
    list
}

/// How a request carries its token.
#[derive(Clone, Copy, Debug)]
enum Carrier {
    Bearer,
    Cookie,
}

async fn call(
    method: &str,
    path: &str,
    body: &Option<Value>,
    token: Option<(&str, Carrier)>,
) -> Reply {
    let client = plain();
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = client
        .request(method, url(path))
        .header("content-type", "application/json");
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    match token {
        Some((token, Carrier::Bearer)) => {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        Some((token, Carrier::Cookie)) => {
            request = request.header("cookie", format!("jwt={token}"));
        }
        None => {}
    }
    send(request).await
}

/// A registered user who has logged out: their token is revoked.
async fn logged_out(prefix: &str) -> User {
    let user = register(prefix).await;
    let logout = send(
        user.client
            .post(url("/user/logout"))
            .header("content-type", "application/json"),
    )
    .await;
    assert_eq!(logout.status, 200);
    user
}

/// Forged and expired variants of `victim`'s token, and `leaver`'s revoked one.
fn bad_tokens_and_revoked(victim: &User, leaver: &User) -> Vec<tokens::BadToken> {
    let mut bad = bad_tokens(&victim.token);
    bad.push(tokens::BadToken {
        kind: "revoked (logged out)",
        token: leaver.token.clone(),
    });
    bad
}

#[tokio::test]
async fn every_endpoint_refuses_missing_forged_expired_and_revoked_tokens() {
    let victim = register("authz_victim").await;
    // A token the platform issued, then revoked by logging out.
    let leaver = logged_out("authz_leaver").await;
    let bad = bad_tokens_and_revoked(&victim, &leaver);
    let with_platform_key = bad.iter().any(|t| t.kind.contains("platform's own key"));
    if !with_platform_key {
        println!(
            "note: E2E_JWT_SIGNING_KEY_FILE is not set: the properly signed expired token is not tried"
        );
    }

    // The revocation reaches every service (an event): wait for the slowest.
    for path in [
        "/user/me",
        "/chat/conversations",
        "/notifications/unread/count",
    ] {
        eventually(
            &format!("revocation reaches {path}"),
            EVENTUALLY,
            || async {
                let reply = call("GET", path, &None, Some((&leaver.token, Carrier::Bearer))).await;
                (reply.status == 401).then_some(())
            },
        )
        .await;
    }

    let mut checked = 0;
    for (service, method, path, body) in endpoints() {
        let reply = call(method, &path, &body, None).await;
        assert_eq!(
            (reply.status, &reply.body),
            (401, &json!({"code": 401, "message": service.missing()})),
            "{method} {path} without a token"
        );
        for token in &bad {
            for carrier in [Carrier::Bearer, Carrier::Cookie] {
                let reply = call(method, &path, &body, Some((&token.token, carrier))).await;
                assert_eq!(
                    (reply.status, &reply.body),
                    (401, &json!({"code": 401, "message": service.invalid()})),
                    "{method} {path} with a {} token as {carrier:?}",
                    token.kind
                );
                checked += 1;
            }
        }
        // Control: the victim's real token is accepted (whatever the answer).
        let reply = call(method, &path, &body, Some((&victim.token, Carrier::Bearer))).await;
        assert_ne!(
            reply.status, 401,
            "{method} {path} with a valid token: {reply:?}"
        );
        assert!(reply.status < 500, "{method} {path}: {reply:?}");
    }
    println!("{checked} refusals checked");

    // A bad Bearer token does not fall back to a good cookie.
    let reply = send(
        plain()
            .get(url("/user/me"))
            .header("authorization", format!("Bearer {}", bad[0].token))
            .header("cookie", format!("jwt={}", victim.token)),
    )
    .await;
    assert_eq!(reply.status, 401);

    // The properly signed control token is accepted: the key file is right, so
    // the expired one was refused for its `exp` alone.
    if let Some(fresh) = fresh_with_platform_key(&victim.token) {
        let reply = call("GET", "/user/me", &None, Some((&fresh, Carrier::Bearer))).await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    assert_healthy().await;
}

#[tokio::test]
async fn the_socket_handshake_refuses_missing_forged_expired_and_revoked_tokens() {
    let victim = register("authz_sock").await;
    let leaver = logged_out("authz_sockout").await;
    let refused = |result: Result<_, ConnectError>| match result {
        Err(ConnectError::Refused { message }) => message,
        Ok(_) => "accepted".to_owned(),
        Err(other) => format!("{other}"),
    };

    assert_eq!(
        refused(connect_socket(None, None).await),
        "Authentication required"
    );
    // The revocation reaches the chat service as an event.
    eventually(
        "the revoked token refused by the socket",
        EVENTUALLY,
        || async {
            (refused(connect_socket(None, Some(&leaver.token)).await) == "Invalid token")
                .then_some(())
        },
    )
    .await;

    let bad = bad_tokens_and_revoked(&victim, &leaver);
    for token in &bad {
        assert_eq!(
            refused(connect_socket(None, Some(&token.token)).await),
            "Invalid token",
            "{} token in auth.token",
            token.kind
        );
        assert_eq!(
            refused(connect_socket(Some(&token.token), None).await),
            "Invalid token",
            "{} token in the jwt cookie",
            token.kind
        );
        // A bad auth.token does not fall back to a good cookie.
        assert_eq!(
            refused(connect_socket(Some(&victim.token), Some(&token.token)).await),
            "Invalid token",
            "{} token in auth.token with a good cookie",
            token.kind
        );
    }
    // Controls: the real token is accepted both ways.
    for socket in [
        connect_socket(Some(&victim.token), None).await,
        connect_socket(None, Some(&victim.token)).await,
    ] {
        socket.expect("the real token connects").disconnect().await;
    }
    assert_healthy().await;
}

#[tokio::test]
async fn users_cannot_read_or_change_each_others_messages_notifications_or_backups() {
    let alice = register("own_alice").await;
    let bob = register("own_bob").await;
    let mallory = register("own_mallory").await;

    // Bob is offline: alice's message becomes a notification for him.
    let body = unique_body("private");
    let message = alice.send_rest(&bob, &body).await;
    let message_id = message["id"].as_str().expect("id").to_owned();
    let note = eventually("bob's notification", EVENTUALLY, || async {
        notifications_of_type(&bob, "message")
            .await
            .into_iter()
            .next()
    })
    .await;
    let note_id = note["id"].as_str().expect("id").to_owned();
    let backup = json!({"encrypted": "c2VjcmV0", "iv": "AAECAwQFBgcICQoL", "salt": "c2FsdA==", "version": 1, "deviceId": "bob-device"});
    let stored = bob
        .post(
            "/user/signal-keys",
            &json!({"deviceId": "bob-device", "encryptedBundle": backup}),
        )
        .await;
    assert_eq!(stored.status, 200, "{stored:?}");

    // --- messages ---
    // Mallory's view of alice (or bob) holds nothing of theirs.
    for peer in [&alice, &bob] {
        let history = mallory.get(&format!("/chat/get/{}", peer.id)).await;
        assert_eq!(history.status, 200);
        assert_eq!(history.body["data"], json!([]), "{history:?}");
        assert_eq!(history.body["pagination"]["total"], json!(0));
    }
    let conversations = mallory.get("/chat/conversations").await;
    assert_eq!(conversations.body["data"], json!([]));
    // Marking "alice's messages to me" read changes nothing of bob's.
    let read = mallory
        .put(&format!("/chat/messages/read/{}", alice.id))
        .await;
    assert_eq!(read.body["data"], json!({"modifiedCount": 0}));
    let socket = mallory.socket().await;
    let ack = socket
        .emit_with_ack(
            "sendMessage",
            json!({"senderId": alice.id, "receiverId": bob.id, "message": envelope("YQ==")}),
            SOCKET_WAIT,
        )
        .await
        .expect("ack");
    assert_eq!(
        ack,
        json!({"ok": false, "error": "Unauthorized: cannot send as another user"})
    );
    // Re-sending alice's message by id, as if it were mallory's.
    for receiver in [&bob.id, &alice.id] {
        let ack = socket
            .emit_with_ack(
                "sendMessage",
                json!({"_id": message_id, "senderId": mallory.id, "receiverId": receiver, "message": "x"}),
                SOCKET_WAIT,
            )
            .await
            .expect("ack");
        assert_eq!(ack, json!({"ok": false, "error": "Message not found"}));
    }
    // A delivery receipt for someone else's message is ignored.
    socket
        .emit("messageDelivered", json!({"messageId": message_id}))
        .await
        .expect("emit");
    socket
        .emit("markRead", json!({"senderId": alice.id}))
        .await
        .expect("emit");
    // Handled in order: once this ack is back, the two events were handled.
    let ack = socket
        .emit_with_ack("sendMessage", json!({}), SOCKET_WAIT)
        .await
        .expect("ack");
    assert_eq!(ack["ok"], json!(false));
    let seen_by_bob = history(&bob, &alice).await;
    assert_eq!(seen_by_bob.len(), 1);
    assert_eq!(seen_by_bob[0]["status"], json!("NotDelivered"), "untouched");
    assert_eq!(seen_by_bob[0]["message"], json!(envelope(&body)));
    socket.disconnect().await;

    // --- notifications ---
    let read = mallory.put(&format!("/notifications/{note_id}/read")).await;
    assert_eq!(
        (read.status, &read.body),
        (
            404,
            &json!({"code": 404, "message": "Notification not found"})
        )
    );
    let deleted = mallory.delete(&format!("/notifications/{note_id}")).await;
    assert_eq!(deleted.status, 404, "{deleted:?}");
    let all = mallory.put("/notifications/read-all").await;
    assert_eq!(all.status, 200);
    assert!(
        !notifications(&mallory)
            .await
            .iter()
            .any(|n| n["userId"] != json!(mallory.id)),
        "mallory only ever sees her own notifications"
    );
    let create = mallory
        .post(
            "/notifications/",
            &json!({"userId": bob.id, "type": "alert", "title": "Reset your password", "message": "click here"}),
        )
        .await;
    assert_eq!(
        (create.status, &create.body),
        (
            403,
            &json!({"code": 403, "message": "Forbidden: Cannot create notifications for other users"})
        )
    );
    let bobs = notifications(&bob).await;
    let kept: Vec<&Value> = bobs.iter().filter(|n| n["id"] == json!(note_id)).collect();
    assert_eq!(kept.len(), 1, "bob's notification is still there");
    assert_eq!(kept[0]["read"], json!(false), "and still unread");
    assert!(!bobs.iter().any(|n| n["type"] == "alert"));

    // --- backups and prekeys ---
    let peek = mallory.get("/user/signal-keys?deviceId=bob-device").await;
    assert_eq!(
        (peek.status, &peek.body),
        (200, &json!({"status": 404, "message": "Operation failed"}))
    );
    let overwrite = json!({"encrypted": "bWFsbG9yeQ==", "iv": "AAECAwQFBgcICQoL", "salt": "c2FsdA==", "version": 1, "deviceId": "bob-device"});
    let planted = mallory
        .post(
            "/user/signal-keys",
            &json!({"deviceId": "bob-device", "encryptedBundle": overwrite}),
        )
        .await;
    assert_eq!(planted.status, 200, "mallory stores her own backup");
    let bobs_backup = bob.get("/user/signal-keys?deviceId=bob-device").await;
    assert_eq!(
        bobs_backup.body["data"]["encryptedBundle"], backup,
        "bob's backup is untouched"
    );
    // Publishing "for bob" stores under mallory.
    let published = mallory
        .post(
            "/user/prekeys",
            &json!({"userId": bob.id, "deviceId": "bob-device", "bundle": real_bundle(3)}),
        )
        .await;
    assert_eq!(published.status, 200);
    let bobs_keys = send(plain().get(url(&format!("/user/prekeys/{}", bob.id)))).await;
    assert_eq!(bobs_keys.status, 404, "bob never published: {bobs_keys:?}");
    let mallorys = send(plain().get(url(&format!("/user/prekeys/{}", mallory.id)))).await;
    assert_eq!(mallorys.body["data"]["userId"], json!(mallory.id));
    assert_healthy().await;
}

//! Two users' whole lifecycle, through the public URL only: accounts, the key
//! directory, messages both ways (REST-then-socket and socket only) with
//! receipts, conversations and paginated history, notifications and email for
//! the offline recipient, and logout revoking the token everywhere.

use std::collections::HashSet;

use serde_json::{Value, json};
use tests_e2e::*;

const DEVICE_A: &str = "e2e-device-a";
const DEVICE_B: &str = "e2e-device-b";

fn backup(device: &str) -> String {
    // Raw text, to check it comes back byte for byte (key order included).
    format!(
        r#"{{"encrypted":"q2VuY3J5cHRlZA==","iv":"AAECAwQFBgcICQoL","version":1,"salt":"c2FsdHNhbHRzYWx0c2FsdHNhbHRzYWx0c2FsdHNhbHQ=","deviceId":"{device}"}}"#
    )
}

#[tokio::test]
async fn two_users_whole_lifecycle() {
    // --- accounts -------------------------------------------------------------
    let alice = register("alice").await;
    let bob = register("bob").await;
    assert_ne!(alice.id, bob.id);

    // Registration answered with the contract's shape and an HttpOnly cookie.
    let me = alice.get("/user/me").await;
    assert_eq!(me.status, 200, "{me:?}");
    assert_eq!(
        me.body,
        json!({"status":200,"message":"User retrieved successfully",
               "data":{"id": alice.id, "username": alice.username, "email": alice.email}})
    );

    // Login from a second browser, with the address in another case.
    let laptop = browser();
    let login = send(laptop.post(url("/user/login")).json(&json!({
        "email": alice.email.to_uppercase(), "password": PASSWORD,
    })))
    .await;
    assert_eq!(login.status, 200, "{login:?}");
    assert_eq!(
        login.body,
        json!({"status":200,"message":"Login successful"})
    );
    let cookie = login.header("set-cookie");
    assert!(
        cookie.starts_with("jwt=") && cookie.contains("HttpOnly") && cookie.contains("Path=/"),
        "{cookie}"
    );
    let laptop_token = session_cookie(&login).expect("login sets the cookie");
    let me = send(laptop.get(url("/api/user/me"))).await;
    assert_eq!(me.body["data"]["id"], json!(alice.id), "{me:?}");

    let wrong = send(plain().post(url("/user/login")).json(&json!({
        "email": alice.email, "password": "Wr0ng!password",
    })))
    .await;
    assert_eq!(
        (wrong.status, &wrong.body),
        (
            401,
            &json!({"code":401,"message":"Invalid email or password"})
        )
    );

    // Search finds bob by part of his name, never the caller.
    let search = alice
        .get(&format!(
            "/user/search?q={}",
            &bob.username[..8].to_uppercase()
        ))
        .await;
    assert_eq!(search.status, 200, "{search:?}");
    let found = search.body["data"].as_array().expect("data array");
    assert!(
        found
            .iter()
            .any(|u| u["_id"] == json!(bob.id) && u["username"] == json!(bob.username)),
        "{found:?}"
    );
    let own = alice
        .get(&format!("/user/search?q={}", alice.username))
        .await;
    assert_eq!(own.body["data"], json!([]), "search excludes the caller");
    let by_id = alice.get(&format!("/user/users/{}", bob.id)).await;
    assert_eq!(by_id.body["data"]["username"], json!(bob.username));

    // --- key directory --------------------------------------------------------
    let bundle_a = real_bundle(0);
    let bundle_b = real_bundle(1);
    for (user, device, bundle) in [(&alice, DEVICE_A, &bundle_a), (&bob, DEVICE_B, &bundle_b)] {
        let published = user
            .post(
                "/user/prekeys",
                &json!({"userId": user.id, "deviceId": device, "bundle": bundle}),
            )
            .await;
        assert_eq!(
            (published.status, &published.body),
            (
                200,
                &json!({"status":200,"message":"Prekey bundle published"})
            )
        );
    }
    // Fetching bob's bundle (public) hands out his one-time prekeys one by one.
    let prekeys = bundle_b["preKeys"].as_array().expect("preKeys").clone();
    assert!(prekeys.len() >= 2);
    for expected in prekeys.iter().take(2) {
        let fetched = send(plain().get(url(&format!("/user/prekeys/{}", bob.id)))).await;
        assert_eq!(fetched.status, 200, "{fetched:?}");
        assert_eq!(
            fetched.body["data"],
            json!({"userId": bob.id, "deviceId": DEVICE_B, "bundle": {
                "identityKey": bundle_b["identityKey"],
                "registrationId": bundle_b["registrationId"],
                "signedPreKey": bundle_b["signedPreKey"],
                "preKeys": [expected],
            }})
        );
    }

    // Key backup, then restore from the other browser (byte for byte).
    let none = send(laptop.get(url(&format!("/user/signal-keys?deviceId={DEVICE_A}")))).await;
    assert_eq!(
        (none.status, &none.body),
        (200, &json!({"status":404,"message":"Operation failed"})),
        "no backup yet: HTTP 200 (contract 15.4)"
    );
    let raw = format!(
        r#"{{"deviceId":"{DEVICE_A}","encryptedBundle":{}}}"#,
        backup(DEVICE_A)
    );
    let stored = send(
        alice
            .client
            .post(url("/user/signal-keys"))
            .header("content-type", "application/json")
            .body(raw),
    )
    .await;
    assert_eq!(
        (stored.status, &stored.body),
        (
            200,
            &json!({"status":200,"message":"Encrypted keys updated"})
        )
    );
    let restored = laptop
        .get(url(&format!("/user/signal-keys?deviceId={DEVICE_A}")))
        .send()
        .await
        .expect("restore");
    assert_eq!(restored.status(), 200);
    assert_eq!(
        restored.text().await.expect("body"),
        format!(
            r#"{{"status":200,"data":{{"deviceId":"{DEVICE_A}","encryptedBundle":{}}}}}"#,
            backup(DEVICE_A)
        )
    );
    let again = alice
        .post(
            "/user/signal-keys",
            &json!({"deviceId": DEVICE_A, "encryptedBundle": serde_json::from_str::<Value>(&backup(DEVICE_A)).expect("json")}),
        )
        .await;
    assert_eq!(again.status, 429, "one backup per day: {again:?}");

    // --- messages over REST then socket, and socket only ------------------------
    let mut alice_socket = alice.socket().await;
    let mut bob_socket = bob.socket().await;
    // Bob's arrival is announced to alice (everyone): both are online now.
    let presence = expect_presence(&mut alice_socket, &bob.id, true).await;
    assert_eq!(presence, json!({"userId": bob.id, "online": true}));

    let mut sent_ids = Vec::new();
    // 1. REST, then the socket re-send by _id with the plaintext (web client flow).
    let body = unique_body("rest-then-socket");
    let data = alice.send_rest(&bob, &body).await;
    let id = data["id"].as_str().expect("id").to_owned();
    assert_eq!(data["message"], json!(envelope(&body)));
    assert_eq!(data["status"], json!("NotDelivered"));
    let ack = alice_socket
        .emit_with_ack(
            "sendMessage",
            json!({"_id": id, "senderId": alice.id, "receiverId": bob.id, "message": "hello bob (plaintext)"}),
            SOCKET_WAIT,
        )
        .await
        .expect("ack");
    assert_eq!(ack, json!({"ok": true, "id": id}));
    let received = bob_socket
        .expect_event("receiveMessage", SOCKET_WAIT)
        .await
        .expect("bob receives");
    assert_eq!(received["id"], json!(id));
    assert_eq!(received["senderId"], json!(alice.id));
    assert_eq!(received["senderUsername"], json!(alice.username));
    assert_eq!(
        received["content"],
        json!(envelope(&body)),
        "the stored envelope, never the plaintext"
    );
    assert_eq!(received["message"], received["content"]);
    sent_ids.push(id.clone());

    // Delivery receipt to the sender.
    bob_socket
        .emit("messageDelivered", json!({"messageId": id}))
        .await
        .expect("emit");
    let delivered = alice_socket
        .expect_event("messageDelivered", SOCKET_WAIT)
        .await
        .expect("receipt");
    assert_eq!(delivered, json!({"messageId": id, "by": bob.id}));

    // 2. Socket only, bob to alice.
    let body = unique_body("socket-only");
    let ack = bob_socket
        .emit_with_ack(
            "sendMessage",
            json!({"senderId": bob.id, "receiverId": alice.id, "message": envelope(&body)}),
            SOCKET_WAIT,
        )
        .await
        .expect("ack");
    assert_eq!(ack["ok"], json!(true), "{ack}");
    let reply_id = ack["id"].as_str().expect("id").to_owned();
    let received = alice_socket
        .expect_event("receiveMessage", SOCKET_WAIT)
        .await
        .expect("alice receives");
    assert_eq!(received["id"], json!(reply_id));
    assert_eq!(received["content"], json!(envelope(&body)));
    sent_ids.push(reply_id.clone());

    // Alice reads it: bob sees the read receipt.
    let read = alice.put(&format!("/chat/messages/read/{}", bob.id)).await;
    assert_eq!(
        (read.status, &read.body),
        (
            200,
            &json!({"status":200,"message":"Messages marked as read","data":{"modifiedCount":1}})
        )
    );
    alice_socket
        .emit("markRead", json!({"senderId": bob.id}))
        .await
        .expect("emit");
    let read = bob_socket
        .expect_event("messageRead", SOCKET_WAIT)
        .await
        .expect("read receipt");
    assert_eq!(read, json!({"by": alice.id}));

    // 3. Five more, alternating directions and paths, for pagination.
    for i in 0..5 {
        let body = unique_body(&format!("more-{i}"));
        let id = if i % 2 == 0 {
            let ack = alice_socket
                .emit_with_ack(
                    "sendMessage",
                    json!({"senderId": alice.id, "receiverId": bob.id, "message": envelope(&body)}),
                    SOCKET_WAIT,
                )
                .await
                .expect("ack");
            assert_eq!(ack["ok"], json!(true), "{ack}");
            ack["id"].as_str().expect("id").to_owned()
        } else {
            bob.send_rest(&alice, &body).await["id"]
                .as_str()
                .expect("id")
                .to_owned()
        };
        sent_ids.push(id);
    }
    // Bob got alice's socket messages live.
    for _ in 0..3 {
        let event = bob_socket
            .expect_event("receiveMessage", SOCKET_WAIT)
            .await
            .expect("live message");
        assert_eq!(event["senderId"], json!(alice.id));
    }

    // --- conversations and history ------------------------------------------------
    let conversations = alice.get("/chat/conversations").await;
    assert_eq!(conversations.status, 200, "{conversations:?}");
    let with_bob: Vec<&Value> = conversations.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter(|c| c["userId"] == json!(bob.id))
        .collect();
    assert_eq!(with_bob.len(), 1, "{conversations:?}");
    assert_eq!(with_bob[0]["username"], json!(bob.username));
    assert_eq!(with_bob[0]["lastMessageSenderId"], json!(alice.id));
    // Bob's REST message (i = 1, 3) arrived after the read: two unread.
    assert_eq!(
        with_bob[0]["unreadCount"].to_string().trim_matches('"'),
        "2"
    );

    // Pages of 3, newest page first, each page in chronological order.
    let total = sent_ids.len();
    assert_eq!(total, 7);
    let mut paged = Vec::new();
    for offset in [0, 3, 6] {
        let page = bob
            .get(&format!("/chat/get/{}?limit=3&offset={offset}", alice.id))
            .await;
        assert_eq!(page.status, 200, "{page:?}");
        assert_eq!(
            page.body["pagination"],
            json!({"total": total, "limit": 3, "offset": offset, "hasMore": offset + 3 < total})
        );
        let items = page.body["data"].as_array().expect("data").clone();
        let times: Vec<&str> = items
            .iter()
            .map(|m| m["createdAt"].as_str().expect("createdAt"))
            .collect();
        let mut sorted = times.clone();
        sorted.sort();
        assert_eq!(times, sorted, "a page is chronological");
        paged.push(items);
    }
    let history: Vec<String> = paged
        .into_iter()
        .rev()
        .flatten()
        .map(|m| m["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(history, sent_ids, "every message once, in order");
    let past_end = bob
        .get(&format!("/chat/get/{}?limit=3&offset=50", alice.id))
        .await;
    assert_eq!(past_end.body["data"], json!([]));
    // The first message's status went to Delivered with bob's receipt.
    let first = tests_e2e::history(&alice, &bob).await;
    assert_eq!(first[0]["id"], json!(sent_ids[0]));
    assert_eq!(first[0]["status"], json!("Delivered"));

    // --- the offline recipient: notification and email ---------------------------
    // While bob was online nothing was notified.
    assert!(notifications_of_type(&bob, "message").await.is_empty());
    bob_socket.disconnect().await;
    let gone = expect_presence(&mut alice_socket, &bob.id, false).await;
    assert!(gone["lastSeen"].is_string(), "{gone}");

    let offline_body = unique_body("while-offline");
    let offline = alice.send_rest(&bob, &offline_body).await;
    let title = format!("New message from {}", alice.username);
    let notes = eventually("bob's message notification", EVENTUALLY, || async {
        let notes = notifications_of_type(&bob, "message").await;
        (!notes.is_empty()).then_some(notes)
    })
    .await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0]["title"], json!(title));
    assert_eq!(notes[0]["message"], json!("[Encrypted message]"));
    assert_eq!(notes[0]["read"], json!(false));
    assert_eq!(notes[0]["userId"], json!(bob.id));
    // The welcome notification is there too.
    let welcome = eventually("bob's welcome notification", EVENTUALLY, || async {
        let notes = notifications_of_type(&bob, "system").await;
        (!notes.is_empty()).then_some(notes)
    })
    .await;
    assert_eq!(welcome.len(), 1);
    assert_eq!(welcome[0]["title"], json!("Welcome to Chat App"));

    let count = bob.get("/notifications/unread/count").await;
    assert_eq!(count.body["data"], json!({"count": 2}), "{count:?}");
    let note_id = notes[0]["id"].as_str().expect("id").to_owned();
    let marked = bob.put(&format!("/notifications/{note_id}/read")).await;
    assert_eq!(marked.status, 200, "{marked:?}");
    assert_eq!(marked.body["data"]["read"], json!(true));
    let all = bob.put("/notification/read-all").await;
    assert_eq!(
        all.body,
        json!({"status":200,"message":"All notifications marked as read","data":{"modifiedCount":1}})
    );
    let count = bob.get("/notification/unread/count").await;
    assert_eq!(count.body["data"], json!({"count": 0}));
    let deleted = bob.delete(&format!("/notifications/{note_id}")).await;
    assert_eq!(
        deleted.body,
        json!({"status":200,"message":"Notification deleted successfully"})
    );
    assert!(notifications_of_type(&bob, "message").await.is_empty());

    if let Some(sink) = mail::sink_or_note("two_users_whole_lifecycle") {
        let mails = mail::wait_for_mail(sink, &bob.email, 1, |m| m.subject == title).await;
        assert_eq!(mails.len(), 1, "one message email to bob");
        let text = mails[0].text.clone().unwrap_or_default();
        assert!(text.contains("new encrypted message"), "{text}");
        assert!(
            !text.contains(&offline_body)
                && !mails[0]
                    .html
                    .clone()
                    .unwrap_or_default()
                    .contains(&offline_body),
            "the email never carries the ciphertext"
        );
        for user in [&alice, &bob] {
            let welcome =
                mail::wait_for_mail(sink, &user.email, 1, |m| m.subject == "Welcome to Chat App")
                    .await;
            assert_eq!(welcome.len(), 1, "one welcome email to {}", user.email);
        }
    }
    assert_eq!(
        offline["id"],
        tests_e2e::history(&bob, &alice).await.last().expect("last")["id"]
    );

    // --- logout revokes the token everywhere -----------------------------------------
    let bearer = format!("Bearer {}", alice.token);
    let logout = send(
        alice
            .client
            .post(url("/user/logout"))
            .header("content-type", "application/json"),
    )
    .await;
    assert_eq!(
        (logout.status, &logout.body),
        (
            200,
            &json!({"status":200,"message":"Logged out successfully"})
        )
    );
    assert!(
        logout
            .header("set-cookie")
            .contains("Expires=Thu, 01 Jan 1970 00:00:00 GMT"),
        "{logout:?}"
    );
    // The browser dropped the cookie: it is logged out.
    assert_eq!(alice.get("/user/me").await.status, 401);
    // The token itself is refused by every service (the revocation travels to
    // the others as an event) and by the socket handshake.
    for path in [
        "/user/me",
        "/chat/conversations",
        "/notifications/unread/count",
    ] {
        eventually(
            &format!("the revoked token refused on {path}"),
            EVENTUALLY,
            || {
                let bearer = bearer.clone();
                async move {
                    let reply = send(plain().get(url(path)).header("authorization", bearer)).await;
                    (reply.status == 401).then_some(())
                }
            },
        )
        .await;
    }
    let refused = connect_socket(None, Some(&alice.token)).await;
    assert!(
        matches!(&refused, Err(testing_socketio::ConnectError::Refused { message }) if message == "Invalid token"),
        "{refused:?}"
    );
    // Other sessions are untouched: the laptop's token still works.
    let me = send(plain().get(url("/user/me")).bearer_auth(&laptop_token)).await;
    assert_eq!(me.status, 200);

    let ids: HashSet<&String> = sent_ids.iter().collect();
    assert_eq!(ids.len(), sent_ids.len());
    alice_socket.disconnect().await;
    assert_healthy().await;
}

//! Chat REST (contract §4) against real PostgreSQL and RabbitMQ.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

#[tokio::test]
async fn send_stores_the_envelope_verbatim_and_answers_the_contract_shape() {
    let app = TestApp::spawn().await;
    let alice = register(&app, "alice").await;
    let bob = register(&app, "bob").await;
    // Key order and inner whitespace must survive; only the outer text is trimmed.
    let raw = "  {\"type\":1, \"body\":\"QUJD+/==\",\"__encrypted\":true}\n";
    let response = alice
        .client
        .post(app.url("/chat/send"))
        .json(&json!({"receiverId": format!(" {} ", bob.id), "message": raw}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 200);
    assert_eq!(body["message"], "Message sent successfully");
    let data = &body["data"];
    assert_eq!(data["senderId"], alice.id);
    assert_eq!(data["receiverId"], bob.id);
    assert_eq!(data["message"], raw.trim());
    assert_eq!(data["isEncrypted"], true);
    assert_eq!(data["status"], "NotDelivered");
    let created = data["createdAt"].as_str().unwrap();
    assert_eq!(created.len(), 24, "{created}");
    assert!(created.ends_with('Z'));
    assert_eq!(data.as_object().unwrap().len(), 8);

    let history: Value = bob
        .client
        .get(app.url(&format!("/chat/get/{}", alice.id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["data"][0]["id"], data["id"]);
    assert_eq!(history["data"][0]["message"], raw.trim());
}

#[tokio::test]
async fn send_validation_and_rules_follow_the_contract() {
    let app = TestApp::spawn().await;
    let carol = register(&app, "carol").await;
    let dave = register(&app, "dave").await;
    let post = |body: Value| {
        let request = carol.client.post(app.url("/chat/send")).json(&body);
        async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let (status, body) = post(json!({})).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["errors"],
        json!([
            {"field":"receiverId","message":"Receiver ID is required"},
            {"field":"receiverId","message":"Receiver ID must be a valid UUID"},
            {"field":"message","message":"Message is required"},
            {"field":"message","message":"Message must be a string"}
        ])
    );
    let (_, body) = post(json!({"receiverId": "nope", "message": 5})).await;
    assert_eq!(
        body["errors"],
        json!([
            {"field":"receiverId","message":"Receiver ID must be a valid UUID"},
            {"field":"message","message":"Message must be a string"}
        ])
    );
    let (_, body) = post(json!({"receiverId": dave.id, "message": "x".repeat(5001)})).await;
    assert_eq!(
        body["errors"],
        json!([{"field":"message","message":"Message exceeds maximum length of 5000 characters"}])
    );

    let handled = [
        (
            json!({"receiverId": carol.id, "message": envelope("QQ==")}),
            "Sender and receiver cannot be the same user",
        ),
        (
            json!({"receiverId": dave.id, "message": "   "}),
            "Message cannot be empty",
        ),
        (
            json!({"receiverId": dave.id, "message": "hello in plaintext"}),
            "Messages must be end-to-end encrypted (invalid envelope)",
        ),
        (
            json!({"receiverId": dave.id, "message": "{\"body\":\"QQ==\"}"}),
            "Messages must be end-to-end encrypted",
        ),
        (
            json!({"receiverId": dave.id, "message": "{\"__encrypted\":\"true\",\"body\":\"QQ==\"}"}),
            "Messages must be end-to-end encrypted",
        ),
        (
            json!({"receiverId": dave.id, "message": "{\"__encrypted\":true,\"body\":1}"}),
            "Messages must be end-to-end encrypted",
        ),
    ];
    for (body, message) in handled {
        let (status, answer) = post(body).await;
        assert_eq!(
            (status, answer),
            (400, json!({"code":400,"message":message}))
        );
    }
}

#[tokio::test]
async fn chat_routes_require_a_valid_unrevoked_token() {
    let app = TestApp::spawn().await;
    let erin = register(&app, "erin").await;
    let routes = [
        (reqwest::Method::POST, "/chat/send".to_owned()),
        (reqwest::Method::GET, format!("/chat/get/{}", erin.id)),
        (reqwest::Method::GET, "/chat/conversations".to_owned()),
        (
            reqwest::Method::PUT,
            format!("/chat/messages/read/{}", erin.id),
        ),
    ];
    for (method, path) in &routes {
        let none = plain()
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(none.status(), 401);
        assert_eq!(
            none.json::<Value>().await.unwrap(),
            json!({"code":401,"message":"Authentication required"})
        );
        let forged = plain()
            .request(method.clone(), app.url(path))
            .header("authorization", "Bearer not.a.token")
            .send()
            .await
            .unwrap();
        assert_eq!(
            forged.json::<Value>().await.unwrap(),
            json!({"code":401,"message":"Invalid or expired token"})
        );
    }
    erin.client
        .post(app.url("/user/logout"))
        .send()
        .await
        .unwrap();
    let revoked = plain()
        .get(app.url("/chat/conversations"))
        .header("authorization", erin.bearer())
        .send()
        .await
        .unwrap();
    assert_eq!(
        revoked.status(),
        401,
        "a logged-out token is refused by chat too"
    );
}

#[tokio::test]
async fn history_pages_newest_first_but_returns_each_page_in_order() {
    let app = TestApp::spawn().await;
    let frank = register(&app, "frank").await;
    let gina = register(&app, "gina").await;
    let mallory = register(&app, "mallory").await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let (from, to) = if i % 2 == 0 {
            (&frank, &gina)
        } else {
            (&gina, &frank)
        };
        ids.push(send_rest(&app, from, to, &format!("TXNn{i}")).await["data"]["id"].clone());
    }
    send_rest(&app, &frank, &mallory, "T3RoZXI=").await;
    let page = |query: &str| {
        let request = frank
            .client
            .get(app.url(&format!("/chat/get/{}{query}", gina.id)));
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let first = page("?limit=3&offset=0").await;
    assert_eq!(first["message"], "Conversation fetched successfully");
    let got: Vec<&Value> = first["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["id"])
        .collect();
    assert_eq!(got, vec![&ids[4], &ids[5], &ids[6]]);
    assert_eq!(
        first["pagination"],
        json!({"total":7,"limit":3,"offset":0,"hasMore":true})
    );
    let last = page("?limit=3&offset=6").await;
    assert_eq!(last["data"].as_array().unwrap().len(), 1);
    assert_eq!(last["data"][0]["id"], ids[0]);
    assert_eq!(last["pagination"]["hasMore"], false);
    let past_the_end = page("?offset=50").await;
    assert_eq!(past_the_end["data"], json!([]));
    assert_eq!(
        past_the_end["pagination"]["total"], 7,
        "the total past the end"
    );
    for query in ["?limit=0", "?limit=abc", ""] {
        assert_eq!(page(query).await["pagination"]["limit"], 50, "{query}");
    }
    assert_eq!(page("?limit=1000").await["pagination"]["limit"], 200);
    assert_eq!(
        page("?limit=-5&offset=-3").await["pagination"],
        json!({"total":7,"limit":50,"offset":0,"hasMore":false})
    );

    let bad = frank
        .client
        .get(app.url("/chat/get/not-a-uuid"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["errors"],
        json!([{"field":"receiverId","message":"Receiver ID must be a valid UUID"}])
    );
    // Mallory sees only what involves her.
    let theirs: Value = mallory
        .client
        .get(app.url(&format!("/chat/get/{}", gina.id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["pagination"]["total"], 0);
}

#[tokio::test]
async fn history_with_an_offset_near_or_past_i64_max_is_an_empty_last_page() {
    // Found by the end-to-end suite: offset + limit overflowed (a 500).
    let app = TestApp::spawn().await;
    let hana = register(&app, "hana").await;
    let ivan = register(&app, "ivan").await;
    send_rest(&app, &hana, &ivan, "aGk=").await;
    for query in [
        "?limit=200&offset=99999999999999999999999",
        "?limit=200&offset=9223372036854775807",
        "?offset=9223372036854775800",
    ] {
        let response = hana
            .client
            .get(app.url(&format!("/chat/get/{}{query}", ivan.id)))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["data"], json!([]), "{query}");
        assert_eq!(body["pagination"]["total"], 1, "{query}");
        assert_eq!(body["pagination"]["hasMore"], false, "{query}");
    }
}

#[tokio::test]
async fn conversations_carry_partner_names_unread_counts_and_the_latest_envelope() {
    let app = TestApp::spawn().await;
    let hank = register(&app, "hank").await;
    let ivy = register(&app, "ivy").await;
    let jack = register(&app, "jack").await;
    send_rest(&app, &ivy, &hank, "MQ==").await;
    send_rest(&app, &ivy, &hank, "Mg==").await;
    send_rest(&app, &hank, &jack, "Mw==").await;

    // Usernames come from the chat service's projection, fed by user.registered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let list = loop {
        let list: Value = hank
            .client
            .get(app.url("/chat/conversations"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if list["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["username"] != "Unknown User")
        {
            break list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "usernames never arrived: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(list["message"], "Conversations fetched successfully");
    let items = list["data"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["userId"], jack.id, "newest first");
    assert_eq!(items[0]["username"], "jack");
    assert_eq!(items[0]["lastMessageSenderId"], hank.id);
    assert_eq!(items[0]["unreadCount"], 0);
    assert_eq!(items[1]["userId"], ivy.id);
    assert_eq!(items[1]["username"], "ivy");
    assert_eq!(items[1]["lastMessage"], envelope("Mg=="));
    assert_eq!(items[1]["unreadCount"], 2);
    assert_eq!(items[1].as_object().unwrap().len(), 6);

    let read = hank
        .client
        .put(app.url(&format!("/chat/messages/read/{}", ivy.id)))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        read.json::<Value>().await.unwrap(),
        json!({"status":200,"message":"Messages marked as read","data":{"modifiedCount":2}})
    );
    let again: Value = hank
        .client
        .put(app.url(&format!("/chat/messages/read/{}", ivy.id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["data"]["modifiedCount"], 0);
    let list: Value = hank
        .client
        .get(app.url("/chat/conversations"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"][1]["unreadCount"], 0);
    let history: Value = ivy
        .client
        .get(app.url(&format!("/chat/get/{}", hank.id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        history["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["status"] == "Seen")
    );

    let invalid = hank
        .client
        .put(app.url("/chat/messages/read/xyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        invalid.json::<Value>().await.unwrap()["errors"],
        json!([{"field":"senderId","message":"Sender ID must be a valid UUID"}])
    );
}

#[tokio::test]
async fn a_message_to_a_user_with_no_socket_emits_the_offline_event() {
    let app = TestApp::spawn().await;
    let mut tap = EventTap::bind(&app.exchange, "chat.message.offline").await;
    let kim = register(&app, "kim").await;
    let lee = register(&app, "lee").await;
    let sent = send_rest(&app, &kim, &lee, "SGk=").await;
    let event = tap
        .next(Duration::from_secs(10))
        .await
        .expect("offline event");
    assert_eq!(event["type"], "chat.message.offline");
    assert_eq!(event["data"]["messageId"], sent["data"]["id"]);
    assert_eq!(event["data"]["senderId"], kim.id);
    assert_eq!(event["data"]["senderUsername"], "kim");
    assert_eq!(event["data"]["receiverId"], lee.id);
    assert!(
        event["data"].get("envelope").is_none(),
        "no ciphertext travels to the notification service"
    );
}

#[tokio::test]
async fn chat_health_docs_and_rate_limit() {
    let app = TestApp::spawn_with(Options::default().flag("--chat-rate-limit-max", 2)).await;
    let health = plain().get(app.url("/chat/health")).send().await.unwrap();
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({"status":"ok"})
    );
    let doc: Value = plain()
        .get(app.url("/chat/api-docs.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for route in [
        "/send",
        "/get/{receiver_id}",
        "/conversations",
        "/messages/read/{sender_id}",
    ] {
        assert!(doc["paths"].get(route).is_some(), "{route}");
    }
    for _ in 0..2 {
        assert_eq!(
            plain()
                .get(app.url("/chat/conversations"))
                .send()
                .await
                .unwrap()
                .status(),
            401
        );
    }
    let limited = plain()
        .get(app.url("/chat/conversations"))
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);
    assert_eq!(
        limited.text().await.unwrap(),
        "Too many requests from this IP, please try again later"
    );
    assert_eq!(
        plain()
            .get(app.url("/chat/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "health is not limited"
    );
}

#[tokio::test]
async fn upgrading_a_chat_schema_that_holds_messages_fills_in_every_conversation() {
    use sqlx::Executor;
    let db = parley_common::testing::TestDatabase::create().await;
    // The chat schema as version 1 left it: its first migration only.
    let first_only = std::env::temp_dir().join(format!("parley-chat-v1-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&first_only).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../migrations/chat/0001_messages_and_presence.sql"
        ),
        first_only.join("0001_messages_and_presence.sql"),
    )
    .unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(parley_common::db::connect_options(db.url(), "parley_chat").unwrap())
        .await
        .unwrap();
    pool.execute("CREATE SCHEMA parley_chat").await.unwrap();
    sqlx::migrate::Migrator::new(first_only.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    std::fs::remove_dir_all(&first_only).unwrap();
    let (a, b, c) = (
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
    );
    for (from, to, body, at) in [
        (a, b, "first", "2026-01-01T10:00:00Z"),
        (b, a, "reply", "2026-01-01T10:05:00Z"),
        (a, c, "other", "2026-01-01T09:00:00Z"),
    ] {
        sqlx::query(
            "INSERT INTO messages (sender_id, receiver_id, body, created_at) VALUES ($1, $2, $3, $4::timestamptz)",
        )
        .bind(from)
        .bind(to)
        .bind(body)
        .bind(at)
        .execute(&pool)
        .await
        .unwrap();
    }

    parley_common::db::migrate(db.url(), parley_chat::SCHEMA, None)
        .await
        .unwrap();

    let mut rows: Vec<(uuid::Uuid, uuid::Uuid, uuid::Uuid, String)> =
        sqlx::query_as("SELECT owner_id, partner_id, last_sender_id, last_body FROM conversations")
            .fetch_all(&pool)
            .await
            .unwrap();
    rows.sort();
    let mut expected = vec![
        (a, b, b, "reply".to_owned()),
        (b, a, b, "reply".to_owned()),
        (a, c, a, "other".to_owned()),
        (c, a, a, "other".to_owned()),
    ];
    expected.sort();
    assert_eq!(rows, expected);
    pool.close().await;
}

//! Notification REST (contract §5) and the notifications events create.

mod support;

use serde_json::{Value, json};
use support::*;

async fn create(app: &TestApp, user: &User, body: Value) -> (u16, Value) {
    let response = user
        .client
        .post(app.url("/notifications/"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn registration_creates_a_welcome_notification() {
    let app = TestApp::spawn().await;
    let alice = register(&app, "alice").await;
    let list = poll_json(&app, &alice, "/notifications/", |b| {
        !b["data"].as_array().unwrap().is_empty()
    })
    .await;
    assert_eq!(list["status"], 200);
    assert_eq!(list["message"], "Notifications fetched successfully");
    let welcome = &list["data"][0];
    assert_eq!(welcome["userId"], alice.id);
    assert_eq!(welcome["type"], "system");
    assert_eq!(welcome["title"], "Welcome to Chat App");
    assert_eq!(welcome["message"], "Welcome to the Chat App!");
    assert_eq!(welcome["read"], false);
    assert_eq!(welcome.as_object().unwrap().len(), 8);
    assert!(welcome["createdAt"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn an_offline_message_becomes_a_notification_without_the_ciphertext() {
    let app = TestApp::spawn().await;
    let bob = register(&app, "bob").await;
    let carol = register(&app, "carol").await;
    send_rest(&app, &bob, &carol, "c2VjcmV0").await;
    let list = poll_json(&app, &carol, "/notifications/", |b| {
        b["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "message")
    })
    .await;
    let note = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["type"] == "message")
        .unwrap()
        .clone();
    assert_eq!(note["title"], "New message from bob");
    assert_eq!(note["message"], "[Encrypted message]");
    assert!(
        !list.to_string().contains("c2VjcmV0"),
        "no ciphertext in notifications"
    );
    // Events of different services arrive in either order; the list is always newest first.
    let times: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["createdAt"].as_str().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|pair| pair[0] >= pair[1]),
        "newest first: {times:?}"
    );
}

#[tokio::test]
async fn create_follows_the_rules_and_answers_201() {
    let app = TestApp::spawn().await;
    let dave = register(&app, "dave").await;
    let erin = register(&app, "erin").await;
    let (status, body) = create(&app, &dave, json!({"userId": dave.id, "type": "alert", "title": "  Heads up  ", "message": "  spaced  "})).await;
    assert_eq!(status, 201);
    assert_eq!(body["status"], 201);
    assert_eq!(body["message"], "Notification created successfully");
    assert_eq!(body["data"]["title"], "Heads up", "title trimmed");
    assert_eq!(
        body["data"]["message"], "  spaced  ",
        "message stored as sent"
    );
    assert_eq!(body["data"]["type"], "alert");

    let (status, body) = create(
        &app,
        &dave,
        json!({"userId": erin.id, "type": "alert", "title": "x", "message": "y"}),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            403,
            json!({"code":403,"message":"Forbidden: Cannot create notifications for other users"})
        )
    );

    let (status, body) = create(&app, &dave, json!({})).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["errors"],
        json!([
            {"field":"userId","message":"User ID is required"},
            {"field":"userId","message":"User ID must be a valid UUID"},
            {"field":"type","message":"Notification type is required"},
            {"field":"type","message":"Notification type must be a string"},
            {"field":"type","message":"Notification type must be: message, system, or alert"},
            {"field":"title","message":"Title is required"},
            {"field":"title","message":"Title must be a string"},
            {"field":"message","message":"Message is required"},
            {"field":"message","message":"Message must be a string"}
        ])
    );
    let (_, body) = create(&app, &dave, json!({"userId": dave.id, "type": "spam", "title": "t".repeat(256), "message": "m".repeat(5001)})).await;
    assert_eq!(
        body["errors"],
        json!([
            {"field":"type","message":"Notification type must be: message, system, or alert"},
            {"field":"title","message":"Title exceeds maximum length of 255 characters"},
            {"field":"message","message":"Message exceeds maximum length of 5000 characters"}
        ])
    );
}

#[tokio::test]
async fn list_count_read_read_all_and_delete_are_scoped_to_the_caller() {
    let app = TestApp::spawn().await;
    let frank = register(&app, "frank").await;
    let gina = register(&app, "gina").await;
    poll_json(&app, &frank, "/notifications/unread/count", |b| {
        b["data"]["count"] == 1
    })
    .await;
    for i in 0..3 {
        create(&app, &frank, json!({"userId": frank.id, "type": "message", "title": format!("n{i}"), "message": "m"})).await;
    }
    let count: Value = frank
        .client
        .get(app.url("/notification/unread/count"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        count,
        json!({"status":200,"message":"Unread count fetched successfully","data":{"count":4}})
    );

    let page: Value = frank
        .client
        .get(app.url("/notifications/?limit=2&offset=0"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let titles: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["n2", "n1"]);
    let page: Value = frank
        .client
        .get(app.url("/notifications/?limit=2&offset=2"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    let huge: Value = frank
        .client
        .get(app.url("/notifications/?limit=100000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        huge["data"].as_array().unwrap().len(),
        4,
        "capped, not refused"
    );

    let target = page["data"][0]["id"].as_str().unwrap().to_owned();
    // Someone else's notification is "not found", for read and delete alike.
    for request in [
        gina.client
            .put(app.url(&format!("/notifications/{target}/read"))),
        gina.client
            .delete(app.url(&format!("/notifications/{target}"))),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 404);
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"code":404,"message":"Notification not found"})
        );
    }
    let read = frank
        .client
        .put(app.url(&format!("/notifications/{target}/read")))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    let read: Value = read.json().await.unwrap();
    assert_eq!(read["message"], "Notification marked as read");
    assert_eq!(read["data"]["read"], true);
    assert_eq!(read["data"]["id"], target);

    let all: Value = frank
        .client
        .put(app.url("/notifications/read-all"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        all,
        json!({"status":200,"message":"All notifications marked as read","data":{"modifiedCount":3}})
    );
    let deleted = frank
        .client
        .delete(app.url(&format!("/notification/{target}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        deleted.json::<Value>().await.unwrap(),
        json!({"status":200,"message":"Notification deleted successfully"})
    );
    let again = frank
        .client
        .delete(app.url(&format!("/notifications/{target}")))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);

    let invalid = frank
        .client
        .put(app.url("/notifications/not-a-uuid/read"))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 400);
    assert_eq!(
        invalid.json::<Value>().await.unwrap()["errors"],
        json!([{"field":"notificationId","message":"Notification ID must be a valid UUID"}])
    );
    let theirs: Value = gina
        .client
        .get(app.url("/notifications/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        theirs["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["userId"] == gina.id)
    );
}

#[tokio::test]
async fn every_route_requires_a_token_and_the_paths_follow_the_contract() {
    let app = TestApp::spawn().await;
    let id = uuid::Uuid::new_v4();
    for (method, path) in [
        (reqwest::Method::GET, "/notifications/".to_owned()),
        (
            reqwest::Method::GET,
            "/notifications/unread/count".to_owned(),
        ),
        (reqwest::Method::PUT, "/notifications/read-all".to_owned()),
        (reqwest::Method::PUT, format!("/notifications/{id}/read")),
        (reqwest::Method::DELETE, format!("/notifications/{id}")),
        (reqwest::Method::POST, "/notifications/".to_owned()),
    ] {
        let response = plain()
            .request(method, app.url(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{path}");
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"code":401,"message":"Authentication required. Please log in."})
        );
    }
    assert_eq!(
        plain()
            .get(app.url("/notifications/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        plain()
            .get(app.url("/notification/health"))
            .send()
            .await
            .unwrap()
            .status(),
        404,
        "only the plural has a health alias"
    );
    assert_eq!(
        plain()
            .post(app.url("/notifications"))
            .send()
            .await
            .unwrap()
            .status(),
        404,
        "without the slash it is not the API"
    );
    let doc: Value = plain()
        .get(app.url("/notifications/api-docs.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"].get("/{notification_id}/read").is_some());
}

#[tokio::test]
async fn the_create_limit_runs_before_auth_and_the_service_limit_covers_every_route() {
    let app = TestApp::spawn_with(
        Options::default()
            .flag("--notification-create-rate-limit-max", 1)
            .flag("--notification-rate-limit-max", 4),
    )
    .await;
    assert_eq!(
        plain()
            .post(app.url("/notifications/"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let refused = plain()
        .post(app.url("/notifications/"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(
        refused.text().await.unwrap(),
        "Too many notification creation requests, please try again later"
    );
    assert_eq!(
        plain()
            .get(app.url("/notification/unread/count"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        plain()
            .get(app.url("/notifications/"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let limited = plain()
        .get(app.url("/notifications/"))
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);
    assert_eq!(
        limited.text().await.unwrap(),
        "Too many requests from this IP, please try again later"
    );
}

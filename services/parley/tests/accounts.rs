//! Accounts and sessions (contract §2.1, §3.1–§3.4, §3.9, §3.10) against a real
//! PostgreSQL and RabbitMQ.

mod support;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::*;

#[tokio::test]
async fn register_returns_the_user_and_sets_a_lax_session_cookie() {
    let app = TestApp::spawn().await;
    let response = plain()
        .post(app.url("/user/register"))
        .json(&json!({"username": "  Alice_1 ", "email": " Al.Ice+news@GoogleMail.com ", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cookie = set_cookie(&response).unwrap();
    let attributes: Vec<&str> = cookie.split("; ").collect();
    assert!(attributes[0].starts_with("jwt=ey"), "{cookie}");
    assert_eq!(attributes[1], "Path=/");
    assert!(attributes[2].starts_with("Expires=") && attributes[2].ends_with(" GMT"));
    assert_eq!(&attributes[3..], ["HttpOnly", "SameSite=Lax"]);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 200);
    assert_eq!(body["message"], "User registered successfully");
    assert_eq!(body["data"]["username"], "alice_1");
    assert_eq!(body["data"]["email"], "alice@gmail.com");
    assert_eq!(body["data"].as_object().unwrap().len(), 3);
    assert!(uuid::Uuid::parse_str(body["data"]["id"].as_str().unwrap()).is_ok());
}

#[tokio::test]
async fn https_public_url_makes_the_cookie_secure_and_strict() {
    let app =
        TestApp::spawn_with(Options::default().flag("--public-url", "https://chat.example.com"))
            .await;
    let response = plain()
        .post(app.url("/api/user/register"))
        .json(&json!({"username": "bob", "email": "bob@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let cookie = set_cookie(&response).unwrap();
    assert!(
        cookie.ends_with("; HttpOnly; Secure; SameSite=Strict"),
        "{cookie}"
    );
    assert!(response.headers().contains_key("strict-transport-security"));
}

#[tokio::test]
async fn register_validation_lists_every_failing_rule_in_order() {
    let app = TestApp::spawn().await;
    let response = plain()
        .post(app.url("/user/register"))
        .json(&json!({"username": "a b", "email": "nope", "password": "#Abcdef1!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"status":400,"message":"Validation failed","errors":[
            {"field":"username","message":"Username must contain only letters, numbers, underscores (_) or hyphens (-); no spaces"},
            {"field":"email","message":"Must be a valid email address"},
            {"field":"password","message":"Password must contain at least one uppercase letter, one lowercase letter, one number, and one special character (@$!%*?&)"}
        ]})
    );

    let response = plain()
        .post(app.url("/user/register"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    let messages: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        [
            "Username is required",
            "Username must be between 3 and 30 characters",
            "Username must contain only letters, numbers, underscores (_) or hyphens (-); no spaces",
            "Email is required",
            "Must be a valid email address",
            "Password is required",
            "Password must be between 8 and 128 characters",
            "Password must contain at least one uppercase letter, one lowercase letter, one number, and one special character (@$!%*?&)",
        ]
    );
}

#[tokio::test]
async fn duplicate_email_or_username_is_refused() {
    let app = TestApp::spawn().await;
    register(&app, "carol").await;
    let taken_email = plain()
        .post(app.url("/user/register"))
        .json(&json!({"username": "carol2", "email": "CAROL@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(taken_email.status(), 400);
    assert_eq!(
        taken_email.json::<Value>().await.unwrap(),
        json!({"code":400,"message":"User with this email already exists"})
    );
    let taken_name = plain()
        .post(app.url("/user/register"))
        .json(&json!({"username": "CAROL", "email": "other@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        taken_name.json::<Value>().await.unwrap(),
        json!({"code":400,"message":"Username already taken"})
    );
}

#[tokio::test]
async fn concurrent_registrations_of_one_name_create_one_account() {
    let app = TestApp::spawn().await;
    let attempts = (0..8).map(|i| {
        let url = app.url("/user/register");
        async move {
            plain()
                .post(url)
                .json(&json!({"username": "race", "email": format!("race{i}@example.com"), "password": PASSWORD}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let statuses = futures::future::join_all(attempts).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 400),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn login_normalizes_the_email_and_sets_the_cookie_without_data() {
    let app = TestApp::spawn().await;
    plain()
        .post(app.url("/user/register"))
        .json(&json!({"username": "dave", "email": "dave.x@gmail.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let response = plain()
        .post(app.url("/user/login"))
        .json(&json!({"email": "D.A.V.E.X+tag@googlemail.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(session_cookie(&response).is_some());
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status":200,"message":"Login successful"})
    );
}

#[tokio::test]
async fn wrong_password_and_unknown_email_get_the_same_401() {
    let app = TestApp::spawn().await;
    register(&app, "erin").await;
    for body in [
        json!({"email": "erin@example.com", "password": "Wrong0ne!"}),
        json!({"email": "nobody@example.com", "password": PASSWORD}),
    ] {
        let response = plain()
            .post(app.url("/user/login"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        assert!(set_cookie(&response).is_none());
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"code":401,"message":"Invalid email or password"})
        );
    }
    let invalid = plain()
        .post(app.url("/user/login"))
        .json(&json!({"email": "", "password": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 400);
    let body: Value = invalid.json().await.unwrap();
    assert_eq!(
        body["errors"],
        json!([
            {"field":"email","message":"Email is required"},
            {"field":"email","message":"Must be a valid email address"},
            {"field":"password","message":"Password is required"}
        ])
    );
}

#[tokio::test]
async fn me_accepts_the_cookie_or_a_bearer_token() {
    let app = TestApp::spawn().await;
    let frank = register(&app, "Frank").await;
    let via_cookie: Value = frank
        .client
        .get(app.url("/user/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        via_cookie,
        json!({"status":200,"message":"User retrieved successfully","data":{"id":frank.id,"username":"frank","email":"frank@example.com"}})
    );
    let via_bearer = plain()
        .get(app.url("/api/user/me"))
        .header("authorization", frank.bearer())
        .send()
        .await
        .unwrap();
    assert_eq!(via_bearer.status(), 200);
}

fn forge(app: &TestApp, claims: Value, key_pem: &str, kid: &str) -> String {
    let _ = app;
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_ed_pem(key_pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn missing_forged_expired_and_foreign_tokens_get_401() {
    let app = TestApp::spawn().await;
    let grace = register(&app, "grace").await;
    let missing = plain().get(app.url("/user/me")).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(
        missing.json::<Value>().await.unwrap(),
        json!({"code":401,"message":"Authentication required. Please log in."})
    );

    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = |exp: i64| json!({"username":"grace","email":grace.email,"id":grace.id,"iat":now - 100,"exp":exp,"jti":uuid::Uuid::new_v4()});
    let expired = forge(&app, claims(now - 1), &app.keys.pem, &app.keys.kid);
    let stranger = TestKeys::generate();
    let foreign = forge(&app, claims(now + 3600), &stranger.pem, &app.keys.kid);
    let mut tampered = grace.token.clone();
    tampered.pop();
    tampered.push(if grace.token.ends_with('A') { 'B' } else { 'A' });
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(now + 3600),
        &EncodingKey::from_secret(b"secret"),
    )
    .unwrap();
    for token in [expired, foreign, tampered, hs256, "garbage".to_owned()] {
        let response = plain()
            .get(app.url("/user/me"))
            .header("cookie", format!("jwt={token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{token}");
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"code":401,"message":"Invalid token. Please log in again."})
        );
    }
}

#[tokio::test]
async fn logout_revokes_the_token_even_after_a_restart() {
    let app = TestApp::spawn().await;
    let heidi = register(&app, "heidi").await;
    let response = heidi
        .client
        .post(app.url("/user/logout"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        set_cookie(&response).unwrap(),
        "jwt=; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Lax"
    );
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status":200,"message":"Logged out successfully"})
    );
    let revoked = plain()
        .get(app.url("/user/me"))
        .header("authorization", heidi.bearer())
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 401);

    let options = app.same_data();
    app.stop().await;
    let restarted = TestApp::spawn_with(options).await;
    let still_revoked = plain()
        .get(restarted.url("/user/me"))
        .header("authorization", heidi.bearer())
        .send()
        .await
        .unwrap();
    assert_eq!(still_revoked.status(), 401);

    let anonymous = plain()
        .post(restarted.url("/user/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 200);
}

#[tokio::test]
async fn logout_publishes_the_revocation_event() {
    let app = TestApp::spawn().await;
    let mut tap = EventTap::bind(&app.exchange, "auth.token_revoked").await;
    let ivan = register(&app, "ivan").await;
    ivan.client
        .post(app.url("/user/logout"))
        .send()
        .await
        .unwrap();
    let event = tap
        .next(std::time::Duration::from_secs(10))
        .await
        .expect("revocation event");
    assert_eq!(event["type"], "auth.token_revoked");
    assert_eq!(event["data"]["userId"], ivan.id);
}

#[tokio::test]
async fn search_matches_username_or_email_and_never_the_caller() {
    let app = TestApp::spawn().await;
    let judy = register(&app, "judy").await;
    register(&app, "judith").await;
    register(&app, "mallory").await;
    let search = |q: &str| {
        let request = judy.client.get(app.url("/user/search")).query(&[("q", q)]);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let hits = search("JUD").await;
    assert_eq!(hits["status"], 200);
    let hits = hits["data"].as_array().unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0]["username"], "judith");
    assert_eq!(hits[0]["email"], "judith@example.com");
    assert!(hits[0]["_id"].is_string() && hits[0].get("id").is_none());
    assert_eq!(
        search("example.com").await["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(search("   ").await, json!({"status":200,"data":[]}));
    let no_q: Value = judy
        .client
        .get(app.url("/user/search"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(no_q, json!({"status":200,"data":[]}));
    let anonymous = plain()
        .get(app.url("/user/search?q=jud"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn search_returns_at_most_twenty() {
    let app = TestApp::spawn().await;
    let me = register(&app, "searcher").await;
    for i in 0..22 {
        register(&app, &format!("many{i}")).await;
    }
    let hits: Value = me
        .client
        .get(app.url("/user/search?q=many"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(hits["data"].as_array().unwrap().len(), 20);
}

#[tokio::test]
async fn users_by_id_requires_auth_and_answers_404_for_unknown_ids() {
    let app = TestApp::spawn().await;
    let kim = register(&app, "kim").await;
    let lee = register(&app, "lee").await;
    let found: Value = kim
        .client
        .get(app.url(&format!("/user/users/{}", lee.id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        found,
        json!({"status":200,"message":"User retrieved successfully","data":{"id":lee.id,"username":"lee","email":"lee@example.com"}})
    );
    for id in ["00000000-0000-0000-0000-000000000000", "not-a-uuid"] {
        let response = kim
            .client
            .get(app.url(&format!("/user/users/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"code":404,"message":"User not found"})
        );
    }
    let anonymous = plain()
        .get(app.url(&format!("/user/users/{}", lee.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn registration_publishes_user_registered_through_the_outbox() {
    let app = TestApp::spawn().await;
    let mut tap = EventTap::bind(&app.exchange, "user.registered").await;
    let mia = register(&app, "mia").await;
    let event = tap
        .next(std::time::Duration::from_secs(10))
        .await
        .expect("event");
    assert_eq!(event["type"], "user.registered");
    assert_eq!(
        event["data"],
        json!({"userId": mia.id, "username": "mia", "email": "mia@example.com"})
    );
    assert!(uuid::Uuid::parse_str(event["id"].as_str().unwrap()).is_ok());
    assert!(
        tap.next(std::time::Duration::from_millis(500))
            .await
            .is_none(),
        "published once"
    );
}

#[tokio::test]
async fn logout_on_one_replica_revokes_the_token_on_the_others() {
    let a = TestApp::spawn().await;
    let b = TestApp::spawn_with(a.same_data()).await;
    let olga = register(&a, "olga").await;
    let me_on_b = || {
        plain()
            .get(b.url("/user/me"))
            .header("authorization", olga.bearer())
            .send()
    };
    assert_eq!(
        me_on_b().await.unwrap().status(),
        200,
        "replica B accepts the token"
    );
    olga.client
        .post(a.url("/user/logout"))
        .send()
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if me_on_b().await.unwrap().status() == 401 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replica B never learned of the revocation"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

//! Users, logins, personal tokens and permissions over the HTTP API, end to
//! end: what each permission lets a user read and change, device results
//! filtered by type, token revocation and expiry, the login throttle, roles,
//! and the bootstrap admin token still doing everything.

use std::time::Duration;

use hashfleet_shared::now_ms;
use hashfleet_tests::{device, init_logs, TestCommander, VirtualSentry};
use reqwest::Method;
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery";

async fn create_user(c: &TestCommander, username: &str, permissions: &[&str]) -> Value {
    let (status, body) = c
        .post(
            "/api/v1/users",
            json!({"username": username, "password": PASSWORD, "permissions": permissions}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

async fn login(c: &TestCommander, username: &str, password: &str) -> (u16, Value) {
    c.request(
        Method::POST,
        "/api/v1/auth/login",
        Some(json!({"username": username, "password": password})),
        None,
    )
    .await
}

async fn login_token(c: &TestCommander, username: &str) -> String {
    let (status, body) = login(c, username, PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["expires_at"].is_string(), "{body}");
    body["token"].as_str().expect("token").to_string()
}

/// `(status, code)` of a request made with `token`.
async fn call(
    c: &TestCommander,
    method: Method,
    path: &str,
    body: Option<Value>,
    token: &str,
) -> (u16, Value) {
    c.request(method, path, body, Some(token)).await
}

fn code(body: &Value) -> &str {
    body["code"].as_str().unwrap_or("")
}

fn ids(body: &Value) -> Vec<String> {
    let mut ids: Vec<String> = body["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn permissions_decide_what_a_user_reads_and_changes() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCommander::start_in(&dir.path().join("c"), None).await;

    // The admin creates users; the DTO never carries the hash.
    let alice = create_user(&c, "alice", &["miner:r"]).await;
    assert_eq!(alice["username"], "alice");
    assert_eq!(alice["permissions"], json!(["miner:r"]));
    assert_eq!(alice["admin"], false);
    assert!(!alice.to_string().contains("argon2"), "{alice}");
    create_user(&c, "bob", &["sentry:rw", "token:w"]).await;
    let (_, users) = call(&c, Method::GET, "/api/v1/users", None, &c.token).await;
    assert_eq!(users.as_array().unwrap().len(), 2, "{users}");
    assert!(!users.to_string().contains("argon2"), "{users}");

    // Bad input: short password, typo'd permission, taken or reserved names.
    for (body, want_status, want_code) in [
        (
            json!({"username": "carol", "password": "elevenchars", "permissions": []}),
            400,
            "ERR_PARAMS_INVALID",
        ),
        (
            json!({"username": "carol", "password": PASSWORD, "permissions": ["miners:r"]}),
            400,
            "ERR_PARAMS_INVALID",
        ),
        (
            json!({"username": "carol", "password": PASSWORD, "permissions": ["miner:x"]}),
            400,
            "ERR_PARAMS_INVALID",
        ),
        (
            json!({"username": "alice", "password": PASSWORD, "permissions": []}),
            409,
            "ERR_USER_EXISTS",
        ),
        (
            json!({"username": "admin", "password": PASSWORD, "permissions": []}),
            400,
            "ERR_PARAMS_INVALID",
        ),
    ] {
        let (status, resp) = c.post("/api/v1/users", body.clone()).await;
        assert_eq!(
            (status, code(&resp)),
            (want_status, want_code),
            "{body}: {resp}"
        );
    }
    let (_, resp) = c
        .post(
            "/api/v1/users",
            json!({"username": "carol", "password": "elevenchars"}),
        )
        .await;
    assert!(
        resp["message"].as_str().unwrap().contains("12"),
        "the message says the minimum: {resp}"
    );

    // Devices: a miner and a host.
    let mut sentry = VirtualSentry::enroll(&c, &[("site", "hel1")]).await;
    sentry
        .send(
            now_ms(),
            vec![
                device(
                    "m-1",
                    "miner",
                    "Antminer",
                    "S21",
                    &[("hashrate_hs", 200e12)],
                ),
                device("h-1", "host", "linux", "x86_64", &[("cpu_pct", 5.0)]),
            ],
        )
        .await;

    // alice (miner:r) logs in and sees only miners.
    let alice = login_token(&c, "alice").await;
    let (status, me) = call(&c, Method::GET, "/api/v1/auth/me", None, &alice).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        (&me["username"], &me["permissions"], &me["admin"]),
        (&json!("alice"), &json!(["miner:r"]), &json!(false))
    );
    let (status, body) = call(
        &c,
        Method::POST,
        "/api/v1/devices/query",
        Some(json!({})),
        &alice,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body), ["m-1"]);
    assert_eq!(body["total"], 1);
    let (_, body) = call(
        &c,
        Method::POST,
        "/api/v1/devices/query",
        Some(json!({"query": {"type": "host"}})),
        &alice,
    )
    .await;
    assert_eq!(body["total"], 0, "{body}");
    let (_, body) = c.post("/api/v1/devices/query", json!({"query": {}})).await;
    assert_eq!(ids(&body), ["h-1", "m-1"], "the admin sees both");
    // Her own filter still applies, and its errors read as she wrote them.
    let (status, body) = call(
        &c,
        Method::POST,
        "/api/v1/devices/query",
        Some(json!({"query": {"hashrate_hs": {"$gt": 1e15}}})),
        &alice,
    )
    .await;
    assert_eq!((status, &body["total"]), (200, &json!(0)), "{body}");
    let (status, body) = call(
        &c,
        Method::POST,
        "/api/v1/devices/query",
        Some(json!({"query": {"$bogus": 1}})),
        &alice,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("$bogus"),
        "{body}"
    );
    let (status, csv) = call(&c, Method::GET, "/api/v1/devices/export.csv", None, &alice).await;
    let csv = csv.as_str().unwrap_or_default().to_string();
    assert_eq!(status, 200);
    assert!(csv.contains("m-1") && !csv.contains("h-1"), "{csv}");

    let (status, _) = call(&c, Method::GET, "/api/v1/devices/m-1", None, &alice).await;
    assert_eq!(status, 200);
    for path in [
        "/api/v1/devices/h-1",
        "/api/v1/devices/h-1/history?metric=cpu_pct",
        "/api/v1/devices/h-1/history.csv?metric=cpu_pct",
    ] {
        let (status, body) = call(&c, Method::GET, path, None, &alice).await;
        assert_eq!((status, code(&body)), (403, "ERR_ACTION_DENIED"), "{path}");
        assert!(
            body["message"].as_str().unwrap().contains("host:r"),
            "{body}"
        );
    }
    let (status, _) = call(&c, Method::GET, "/api/v1/devices/nope", None, &alice).await;
    assert_eq!(status, 404);

    // Aggregates need :r on the requested type.
    let tail = |kind: &str| json!({"type": kind, "fields": ["hashrate_hs:sum"]});
    let (status, body) = call(
        &c,
        Method::POST,
        "/api/v1/aggregates/tail",
        Some(tail("miner")),
        &alice,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(
        &c,
        Method::POST,
        "/api/v1/aggregates/tail",
        Some(tail("host")),
        &alice,
    )
    .await;
    assert_eq!((status, code(&body)), (403, "ERR_ACTION_DENIED"), "{body}");
    let (status, _) = call(
        &c,
        Method::POST,
        "/api/v1/aggregates/multi",
        Some(json!({"queries": [tail("miner"), tail("host")]})),
        &alice,
    )
    .await;
    assert_eq!(status, 403);

    // No sentry or token rights: reads are denied, writes say what is missing.
    let sentry_path = format!("/api/v1/sentries/{}", sentry.sentry_id);
    for path in [
        "/api/v1/sentries".to_string(),
        sentry_path.clone(),
        format!("{sentry_path}/heartbeats"),
    ] {
        let (status, body) = call(&c, Method::GET, &path, None, &alice).await;
        assert_eq!((status, code(&body)), (403, "ERR_ACTION_DENIED"), "{path}");
        assert!(
            body["message"].as_str().unwrap().contains("sentry:r"),
            "{body}"
        );
    }
    for (path, body, needs) in [
        (format!("{sentry_path}/approve"), None, "sentry:w"),
        (format!("{sentry_path}/revoke"), None, "sentry:w"),
        (
            "/api/v1/enrollment-tokens".to_string(),
            Some(json!({"uses": 1, "ttl_secs": 60})),
            "token:w",
        ),
    ] {
        let (status, resp) = call(&c, Method::POST, &path, body, &alice).await;
        assert_eq!(
            (status, code(&resp)),
            (403, "ERR_MISSING_WRITE_PERMISSIONS"),
            "{path}"
        );
        assert!(resp["message"].as_str().unwrap().contains(needs), "{resp}");
    }
    for (method, path) in [
        (Method::POST, "/api/v1/backup"),
        (Method::GET, "/api/v1/users"),
        (Method::DELETE, "/api/v1/users/bob"),
    ] {
        let (status, body) = call(&c, method, path, None, &alice).await;
        assert_eq!((status, code(&body)), (403, "ERR_ACTION_DENIED"), "{path}");
    }
    let (status, body) = call(
        &c,
        Method::POST,
        "/api/v1/users",
        Some(json!({"username": "eve", "password": PASSWORD, "permissions": ["miner:rw"]})),
        &alice,
    )
    .await;
    assert_eq!((status, code(&body)), (403, "ERR_ACTION_DENIED"));
    // /metrics takes any signed-in user.
    let (status, _) = call(&c, Method::GET, "/metrics", None, &alice).await;
    assert_eq!(status, 200);

    // bob (sentry:rw, token:w) manages sentries but sees no devices.
    let bob = login_token(&c, "bob").await;
    let (status, body) = call(&c, Method::GET, "/api/v1/sentries", None, &bob).await;
    assert_eq!((status, body.as_array().map(Vec::len)), (200, Some(1)));
    let (status, body) = call(
        &c,
        Method::POST,
        &format!("{sentry_path}/approve"),
        None,
        &bob,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(
        &c,
        Method::POST,
        "/api/v1/enrollment-tokens",
        Some(json!({"uses": 1, "ttl_secs": 60})),
        &bob,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(
        &c,
        Method::POST,
        "/api/v1/devices/query",
        Some(json!({})),
        &bob,
    )
    .await;
    assert_eq!((status, code(&body)), (403, "ERR_ACTION_DENIED"), "{body}");

    // Personal tokens: made, used, listed without the secret, revoked.
    let (status, made) = call(&c, Method::POST, "/api/v1/tokens", None, &alice).await;
    assert_eq!(status, 201, "{made}");
    let personal = made["token"].as_str().unwrap().to_string();
    let id = made["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 16, "{made}");
    assert!(made["created_at"].is_string());
    let (status, me) = call(&c, Method::GET, "/api/v1/auth/me", None, &personal).await;
    assert_eq!((status, &me["username"]), (200, &json!("alice")));
    let (status, _) = call(&c, Method::GET, "/api/v1/devices/m-1", None, &personal).await;
    assert_eq!(status, 200);
    let (_, listed) = call(&c, Method::GET, "/api/v1/tokens", None, &alice).await;
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == id.as_str()),
        "{listed}"
    );
    assert!(!listed.to_string().contains(&personal), "{listed}");
    let revoke = format!("/api/v1/tokens/{id}");
    let (status, _) = call(&c, Method::DELETE, &revoke, None, &bob).await;
    assert_eq!(status, 404, "bob cannot revoke alice's token");
    let (status, body) = call(&c, Method::DELETE, &revoke, None, &alice).await;
    assert_eq!((status, &body["revoked"]), (200, &json!(true)), "{body}");
    let (status, body) = call(&c, Method::GET, "/api/v1/auth/me", None, &personal).await;
    assert_eq!((status, code(&body)), (401, "ERR_UNAUTHORIZED"));
    // An admin may revoke anyone's.
    let (_, made) = call(&c, Method::POST, "/api/v1/tokens", None, &bob).await;
    let bobs = made["token"].as_str().unwrap().to_string();
    let (status, _) = c
        .request(
            Method::DELETE,
            &format!("/api/v1/tokens/{}", made["id"].as_str().unwrap()),
            None,
            Some(&c.token),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = call(&c, Method::GET, "/api/v1/auth/me", None, &bobs).await;
    assert_eq!(status, 401);

    // The bootstrap admin token still does everything, and is nobody's user.
    let (status, me) = call(&c, Method::GET, "/api/v1/auth/me", None, &c.token).await;
    assert_eq!((status, &me["admin"]), (200, &json!(true)), "{me}");
    let (status, body) = call(&c, Method::POST, "/api/v1/tokens", None, &c.token).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = c.post("/api/v1/backup", json!({})).await;
    assert_eq!(status, 200);

    // A disabled user's tokens stop at once, and it cannot log in.
    let (status, body) = c
        .request(Method::DELETE, "/api/v1/users/alice", None, Some(&c.token))
        .await;
    assert_eq!((status, &body["disabled"]), (200, &json!(true)), "{body}");
    let (status, _) = call(&c, Method::GET, "/api/v1/auth/me", None, &alice).await;
    assert_eq!(status, 401);
    let (status, body) = login(&c, "alice", PASSWORD).await;
    assert_eq!((status, code(&body)), (401, "ERR_LOGIN_FAILED"));

    // Without a token: login is open, nothing else is.
    let (status, _) = c
        .request(
            Method::POST,
            "/api/v1/users",
            Some(json!({"username": "mallory", "password": PASSWORD})),
            None,
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = c.request(Method::GET, "/api/v1/auth/me", None, None).await;
    assert_eq!(status, 401);
    let (status, body) = login(&c, "nobody", PASSWORD).await;
    assert_eq!((status, code(&body)), (401, "ERR_LOGIN_FAILED"));
    c.stop().await;
}

#[tokio::test]
async fn session_tokens_expire_and_roles_expand() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCommander::start_with(&dir.path().join("c"), None, |config| {
        config.auth.session_ttl = Duration::from_secs(1);
        config.roles.insert(
            "operator".into(),
            vec!["miner:rw".into(), "container:r".into()],
        );
    })
    .await;
    create_user(&c, "olga", &["role:operator", "host:r"]).await;
    let (status, body) = c
        .post(
            "/api/v1/users",
            json!({"username": "pat", "password": PASSWORD, "permissions": ["role:nope"]}),
        )
        .await;
    assert_eq!((status, code(&body)), (400, "ERR_PARAMS_INVALID"));
    assert!(
        body["message"].as_str().unwrap().contains("operator"),
        "{body}"
    );

    let token = login_token(&c, "olga").await;
    let (status, me) = call(&c, Method::GET, "/api/v1/auth/me", None, &token).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["permissions"], json!(["role:operator", "host:r"]));
    assert_eq!(
        me["effective"],
        json!(["miner:rw", "host:r", "container:r"]),
        "{me}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = call(&c, Method::GET, "/api/v1/auth/me", None, &token).await;
    assert_eq!((status, code(&body)), (401, "ERR_UNAUTHORIZED"), "expired");
    c.stop().await;
}

#[tokio::test]
async fn repeated_failed_logins_are_throttled_until_the_window_passes() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCommander::start_with(&dir.path().join("c"), None, |config| {
        config.auth.login_max_failures = 5;
        config.auth.login_window = Duration::from_secs(3);
    })
    .await;
    create_user(&c, "alice", &["miner:r"]).await;
    let started = std::time::Instant::now();
    for i in 0..5 {
        let (status, body) = login(&c, "alice", "wrong password!").await;
        assert_eq!(
            (status, code(&body)),
            (401, "ERR_LOGIN_FAILED"),
            "attempt {i}"
        );
    }
    // The right password is refused too, and so is anyone from this address.
    let (status, body) = login(&c, "alice", PASSWORD).await;
    assert_eq!(
        (status, code(&body)),
        (429, "ERR_LOGIN_THROTTLED"),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("try again after"),
        "{body}"
    );
    let (status, _) = login(&c, "someone-else", PASSWORD).await;
    assert_eq!(status, 429);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the checks ran inside the window; raise login_window if this machine is this slow"
    );
    // After the window, the right password works.
    tokio::time::sleep(
        Duration::from_secs(3).saturating_sub(started.elapsed()) + Duration::from_millis(200),
    )
    .await;
    let token = login_token(&c, "alice").await;
    let (status, _) = call(&c, Method::GET, "/api/v1/auth/me", None, &token).await;
    assert_eq!(status, 200);
    c.stop().await;
}

//! `/api/v1/users/{id}/credentials`: who may set them, that they never come out (not from the
//! API, not from the database in clear), and, with the real CLI against the mock, that each
//! user's turns carry their own key and no other user's agent can read it.

use awc::http::StatusCode;
use diesel::prelude::*;
use diesel::sql_types::Text;
use serde_json::json;

use crate::helpers::{ADMIN_KEY, Backend, TestApp, spawn_app, spawn_app_with};
use crate::on_both_backends;
use crate::real_cli::{MockApi, spawn_real_app};
use claude_agent_http::auth::credentials_key::CredentialsKey;
use claude_agent_http::auth::credentials_rotation::rotate;
use claude_agent_http::settings::{SandboxMode, StorageKind};

on_both_backends!(
    only_the_admin_or_the_user_themselves_manage_a_users_credentials,
    values_never_come_back_and_only_provider_variables_are_accepted,
    the_stored_credentials_are_not_in_the_database_in_clear,
    a_deleted_user_leaves_no_credentials_behind,
);

const ALICE_KEY: &str = "sk-ant-alice-0123456789-secret";
const BOB_KEY: &str = "sk-ant-bob-9876543210-secret";
/// The service's own key (`spawn_real_app` puts it in `cli.env`).
const SERVICE_KEY: &str = "test-key-offline";
const SERVICE_TOKEN: &str = "service-auth-token-secret";

async fn only_the_admin_or_the_user_themselves_manage_a_users_credentials(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let body = json!({"anthropic_api_key": ALICE_KEY});

    let own = app.put_credentials(&alice, "alice", body.clone()).await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.text);
    assert_eq!(own.body["names"], json!(["ANTHROPIC_API_KEY"]));
    app.put_credentials(&bob, "alice", body.clone()).await.assert_error(403, "forbidden");
    app.get_credentials(&bob, "alice").await.assert_error(403, "forbidden");
    app.delete_credentials(&bob, "alice").await.assert_error(403, "forbidden");
    app.put_credentials(&alice, "bob", body.clone()).await.assert_error(403, "forbidden");
    let anonymous = app.request(awc::http::Method::GET, "/api/v1/users/alice/credentials", None, None).await;
    anonymous.assert_error(401, "unauthorized");

    // The admin, for anyone who exists.
    let by_admin = app.put_credentials(ADMIN_KEY, "bob", json!({"env": {"CLAUDE_CODE_USE_BEDROCK": "1"}})).await;
    assert_eq!(by_admin.status, StatusCode::OK, "{}", by_admin.text);
    app.put_credentials(ADMIN_KEY, "ghost", body.clone()).await.assert_error(404, "user_not_found");
    app.get_credentials(ADMIN_KEY, "ghost").await.assert_error(404, "user_not_found");
    assert_eq!(app.get_credentials(ADMIN_KEY, "alice").await.body["set"], true);

    // Bob's own DELETE removes his; Alice's stay.
    assert_eq!(app.delete_credentials(&bob, "bob").await.status, StatusCode::NO_CONTENT);
    let gone = app.get_credentials(&bob, "bob").await;
    assert_eq!((gone.body["set"].clone(), gone.body["names"].clone()), (json!(false), json!([])), "{}", gone.text);
    assert_eq!(app.get_credentials(&alice, "alice").await.body["set"], true);
}

async fn values_never_come_back_and_only_provider_variables_are_accepted(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.create_user("alice").await;
    let body = json!({
        "anthropic_api_key": ALICE_KEY,
        "anthropic_base_url": "https://gateway.example/anthropic",
        "env": {"AWS_SECRET_ACCESS_KEY": "aws-secret-value", "ANTHROPIC_MODEL": "claude-x"},
    });
    let put = app.put_credentials(&alice, "alice", body).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    let got = app.get_credentials(&alice, "alice").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        got.body["names"],
        json!(["ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_MODEL", "AWS_SECRET_ACCESS_KEY"])
    );
    assert!(got.body["updated_at"].as_str().is_some_and(|t| t.ends_with("+00:00")), "{}", got.text);
    for response in [&put, &got] {
        for value in [ALICE_KEY, "gateway.example", "aws-secret-value", "claude-x"] {
            assert!(!response.text.contains(value), "{value} shown: {}", response.text);
        }
    }

    // Not a provider variable: refused, naming the key, never echoing the value.
    let refused = app.put_credentials(&alice, "alice", json!({"env": {"LD_PRELOAD": "/tmp/evil-value.so"}})).await;
    refused.assert_error(422, "validation_error");
    assert_eq!(refused.body["error"]["fields"][0]["field"], "env.LD_PRELOAD");
    assert!(!refused.text.contains("evil-value"), "{}", refused.text);
    for bad in [
        json!({"env": {"PATH": "/x"}}),
        json!({"env": {"CLAUDE_CODE_ENTRYPOINT": "x"}}),
        json!({"anthropic_api_key": ""}),
        json!({"anthropic_base_url": "not a url"}),
        json!({}),
        json!({"anthropic_api_key": "a", "env": {"ANTHROPIC_API_KEY": "b"}}),
        json!({"api_key": "unknown field"}),
    ] {
        app.put_credentials(&alice, "alice", bad.clone()).await.assert_error(422, "validation_error");
    }
    // A refused PUT changed nothing.
    assert_eq!(app.get_credentials(&alice, "alice").await.body["names"].as_array().unwrap().len(), 4);
}

#[derive(QueryableByName, Debug)]
struct RawRow {
    #[diesel(sql_type = Text)]
    user_id: String,
    #[diesel(sql_type = Text)]
    sealed: String,
    #[diesel(sql_type = Text)]
    names: String,
}

/// The `user_credentials` rows as the database holds them, read past the service.
async fn raw_rows(app: &TestApp) -> Vec<RawRow> {
    let query = diesel::sql_query("SELECT user_id, sealed, names FROM user_credentials ORDER BY user_id");
    match app.settings.session.storage {
        StorageKind::Postgresql => {
            use diesel_async::{AsyncConnection, AsyncPgConnection};
            let url = app.settings.session.database_url.clone().unwrap();
            let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
            diesel_async::RunQueryDsl::load(query, &mut conn).await.unwrap()
        }
        _ => {
            let path = app.settings.session.sqlite_path.display().to_string();
            let mut conn = diesel::SqliteConnection::establish(&path).unwrap();
            diesel::RunQueryDsl::load(query, &mut conn).unwrap()
        }
    }
}

async fn the_stored_credentials_are_not_in_the_database_in_clear(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.create_user("alice").await;
    let put = app.put_credentials(&alice, "alice", json!({"anthropic_api_key": ALICE_KEY})).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    let rows = raw_rows(&app).await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!((row.user_id.as_str(), row.names.as_str()), ("alice", r#"["ANTHROPIC_API_KEY"]"#));
    assert!(row.sealed.starts_with("v1:") && row.sealed.len() > ALICE_KEY.len(), "{}", row.sealed);
    assert!(!row.sealed.contains(ALICE_KEY) && !row.sealed.contains("alice-0123"), "in clear: {}", row.sealed);
    if backend == Backend::Sqlite {
        // Nor anywhere in the files (the WAL included), where the names are found: the scan sees the row.
        let mut bytes = Vec::new();
        for suffix in ["", "-wal"] {
            let mut name = app.settings.session.sqlite_path.clone().into_os_string();
            name.push(suffix);
            bytes.extend(std::fs::read(&name).unwrap_or_default());
        }
        let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"[\"ANTHROPIC_API_KEY\"]"), "the scan reads the stored row");
        assert!(!has(ALICE_KEY.as_bytes()), "the key is in the database file in clear");
    }
    // The key that sealed it was generated into the data dir, readable by its owner only.
    use std::os::unix::fs::PermissionsExt;
    let key_file = app.settings.data.dir.join("credentials.key");
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
}

async fn a_deleted_user_leaves_no_credentials_behind(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.create_user("alice").await;
    app.put_credentials(&alice, "alice", json!({"anthropic_api_key": ALICE_KEY})).await;
    assert_eq!(app.delete_user(ADMIN_KEY, "alice").await.status, StatusCode::NO_CONTENT);
    assert!(raw_rows(&app).await.is_empty());
    let again = app.create_user("alice").await;
    assert_eq!(app.get_credentials(&again, "alice").await.body["set"], false);
}

/// Which user each request to the mock came from (its cwd is under `users/<name>/`), with the
/// `x-api-key` it carried. Requests naming no user directory (none expected) are left out.
async fn keys_by_user(mock: &MockApi, app: &TestApp) -> Vec<(String, String)> {
    let keys = mock.api_keys(&app.client).await;
    let bodies = mock.requests(&app.client).await;
    assert_eq!(keys.len(), bodies.len(), "one key recorded per request");
    let users = app.users_dir();
    bodies
        .iter()
        .zip(keys)
        .filter_map(|(body, key)| {
            let text = body.to_string();
            ["alice", "bob", "carol"]
                .into_iter()
                .find(|u| text.contains(&format!("{}/{u}", users.display())))
                .map(|u| (u.to_string(), key))
        })
        .collect()
}

#[actix_web::test]
async fn each_users_turns_carry_their_own_key_and_the_services_key_is_the_fallback() {
    let mock = MockApi::start();
    let app = spawn_real_app(&mock, |_| {}).await;
    let mut sessions = Vec::new();
    for (user, own) in [("alice", Some(ALICE_KEY)), ("bob", Some(BOB_KEY)), ("carol", None)] {
        let key = app.create_user(user).await;
        if let Some(own) = own {
            let put = app.put_credentials(&key, user, json!({"anthropic_api_key": own})).await;
            assert_eq!(put.status, StatusCode::OK, "{}", put.text);
        }
        let id = app.create_session(&key, json!({})).await;
        app.wait_active(&key, &id).await;
        sessions.push((user, key, id));
    }
    for (user, key, id) in &sessions {
        let res = app.chat(key, id, &format!("hello from {user}")).await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.text);
        assert_eq!(res.body["text"], format!("mock: hello from {user}"));
    }
    let seen = keys_by_user(&mock, &app).await;
    for (user, expected) in [("alice", ALICE_KEY), ("bob", BOB_KEY), ("carol", SERVICE_KEY)] {
        let carried: Vec<&str> = seen.iter().filter(|(u, _)| u == user).map(|(_, k)| k.as_str()).collect();
        assert!(!carried.is_empty(), "no request of {user}'s: {seen:?}");
        assert!(carried.iter().all(|k| *k == expected), "{user}'s requests carried {carried:?}");
    }

    // A change applies from the user's next CLI start: the running one keeps the key it has.
    let (_, alice, alice_session) = &sessions[0];
    app.put_credentials(alice, "alice", json!({"anthropic_api_key": "sk-ant-alice-new-key"})).await;
    let before = mock.api_keys(&app.client).await.len();
    assert_eq!(app.chat(alice, alice_session, "still the old key").await.status, StatusCode::OK);
    let keys = mock.api_keys(&app.client).await;
    assert!(keys[before..].iter().all(|k| k == ALICE_KEY), "{:?}", &keys[before..]);
    let fresh = app.create_session(alice, json!({})).await;
    app.wait_active(alice, &fresh).await;
    let before = mock.api_keys(&app.client).await.len();
    assert_eq!(app.chat(alice, &fresh, "now the new key").await.status, StatusCode::OK);
    let keys = mock.api_keys(&app.client).await;
    assert!(!keys[before..].is_empty() && keys[before..].iter().all(|k| k == "sk-ant-alice-new-key"), "{keys:?}");

    // Deleted: the next CLI is back on the service's key.
    assert_eq!(app.delete_credentials(alice, "alice").await.status, StatusCode::NO_CONTENT);
    let fallback = app.create_session(alice, json!({})).await;
    app.wait_active(alice, &fallback).await;
    let before = mock.api_keys(&app.client).await.len();
    assert_eq!(app.chat(alice, &fallback, "the service's key").await.status, StatusCode::OK);
    let keys = mock.api_keys(&app.client).await;
    assert!(!keys[before..].is_empty() && keys[before..].iter().all(|k| k == SERVICE_KEY), "{keys:?}");
}

#[actix_web::test]
async fn with_credentials_required_a_user_without_them_gets_no_cli() {
    let mock = MockApi::start();
    let app = spawn_real_app(&mock, |s| s.auth.require_user_credentials = true).await;
    let alice = app.create_user("alice").await;
    app.post_session(&alice, json!({})).await.assert_error(409, "credentials_required");
    assert!(app.cli_pids().await.is_empty());
    app.put_credentials(&alice, "alice", json!({"anthropic_api_key": ALICE_KEY})).await;
    let id = app.create_session(&alice, json!({})).await;
    app.wait_active(&alice, &id).await;
    assert_eq!(app.chat(&alice, &id, "hello").await.body["text"], "mock: hello");
    // Removed while the session is closed: its next CLI start is refused, with the same code.
    app.delete_credentials(&alice, "alice").await;
    assert_eq!(app.delete_session(&alice, &id, "").await.status, StatusCode::NO_CONTENT);
    app.resume_session(&alice, &id).await.assert_error(409, "credentials_required");
}

/// What Alice's agent (the real CLI's Bash, and the files API) finds of Bob's key while Bob's
/// CLI runs with it.
async fn alice_looks_for_bobs_key(mode: SandboxMode) -> (String, String, String) {
    let mock = MockApi::start();
    let app = spawn_real_app(&mock, move |s| {
        s.sandbox.mode = mode;
        // Another secret of the service's: dropped, not merely shadowed, for a user with their own.
        s.cli.env.insert("ANTHROPIC_AUTH_TOKEN".into(), SERVICE_TOKEN.into());
    })
    .await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    app.put_credentials(&alice, "alice", json!({"anthropic_api_key": ALICE_KEY})).await;
    app.put_credentials(&bob, "bob", json!({"anthropic_api_key": BOB_KEY})).await;
    let bob_session = app.create_session(&bob, json!({})).await;
    app.wait_active(&bob, &bob_session).await;
    let bob_pid = app.cli_pids().await[0];
    let alice_session = app.create_session(&alice, json!({})).await;
    app.wait_active(&alice, &alice_session).await;

    let bash = |command: String| {
        let (app, alice, id) = (&app, &alice, &alice_session);
        async move {
            let res = app.chat(alice, id, &format!("bash {command}")).await;
            assert_eq!(res.status, StatusCode::OK, "{}", res.text);
            res.body["text"].as_str().unwrap_or_default().to_string()
        }
    };
    let own_env =
        bash(format!("env | grep -o -e 'sk-ant-[a-z]*' -e {SERVICE_KEY} -e {SERVICE_TOKEN} | sort -u | tr '\\n' ' '"))
            .await;
    let procs = bash(format!(
        "cat /proc/*/environ /proc/{bob_pid}/environ 2>/dev/null | tr '\\0' '\\n' | grep -c {BOB_KEY}; \
         ls /proc | grep -c '^[0-9]'"
    ))
    .await;
    // The files API is the service's own process reading: a link Alice's agent plants must not lead it there.
    bash(format!("ln -s /proc/{bob_pid}/environ bob-environ && echo linked")).await;
    let mut files = String::new();
    let paths =
        [format!("/proc/{bob_pid}/environ"), format!("../../../../../../proc/{bob_pid}/environ"), "bob-environ".into()];
    for path in paths {
        let res = app.files(&alice, awc::http::Method::GET, &alice_session, &path, None).await;
        files.push_str(&format!("{} {}\n", res.status, res.text));
    }
    (own_env, procs, files)
}

/// The count `grep -c` printed first in the agent's answer.
fn matches(answer: &str) -> Option<u32> {
    answer.strip_prefix("Bash said: ")?.split_whitespace().next()?.parse().ok()
}

#[actix_web::test]
async fn under_landlock_alices_agent_cannot_read_bobs_key() {
    let (own_env, procs, files) = alice_looks_for_bobs_key(SandboxMode::Landlock).await;
    assert!(own_env.contains("sk-ant-alice"), "her own key is in her CLI's environment: {own_env}");
    for absent in ["sk-ant-bob", SERVICE_KEY, SERVICE_TOKEN] {
        assert!(!own_env.contains(absent), "{absent} in Alice's environment: {own_env}");
    }
    assert_eq!(matches(&procs), Some(0), "Bob's key read through /proc: {procs}");
    assert!(!files.contains(BOB_KEY) && !files.contains("200 OK"), "the files API: {files}");
}

/// The same search with the sandbox off finds Bob's key in his CLI's /proc: the test above
/// tests something (and the key is indeed in Bob's process).
#[actix_web::test]
async fn with_the_sandbox_off_the_same_search_finds_bobs_key() {
    let (_, procs, files) = alice_looks_for_bobs_key(SandboxMode::Off).await;
    assert!(matches(&procs).is_some_and(|n| n > 0), "{procs}");
    assert!(!files.contains(BOB_KEY), "the files API stays in the session's directory: {files}");
}

#[actix_web::test]
async fn rotating_the_key_reseals_the_credentials_which_still_reach_the_users_cli() {
    let mock = MockApi::start();
    let mut app = spawn_real_app(&mock, |_| {}).await;
    let alice = app.create_user("alice").await;
    app.put_credentials(&alice, "alice", json!({"anthropic_api_key": ALICE_KEY})).await;
    let sealed_before = raw_rows(&app).await[0].sealed.clone();
    let key_file = app.settings.data.dir.join("credentials.key");
    let old_key = std::fs::read_to_string(&key_file).unwrap();
    app.stop().await;

    let done = rotate(&app.settings, None).await.unwrap();
    assert!(done.contains("re-sealed 1 user"), "{done}");
    let new_key = std::fs::read_to_string(&key_file).unwrap();
    assert_ne!(new_key, old_key);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!app.settings.data.dir.join("credentials.key.new").exists());
    let sealed_after = raw_rows(&app).await[0].sealed.clone();
    assert_ne!(sealed_after, sealed_before);
    assert!(CredentialsKey::from_base64(&old_key).unwrap().open("alice", &sealed_after).is_err());

    let app = app.restart().await;
    let id = app.create_session(&alice, json!({})).await;
    app.wait_active(&alice, &id).await;
    assert_eq!(app.chat(&alice, &id, "after the rotation").await.status, StatusCode::OK);
    let keys = mock.api_keys(&app.client).await;
    assert!(!keys.is_empty() && keys.iter().all(|k| k == ALICE_KEY), "{keys:?}");
}

#[actix_web::test]
async fn with_a_configured_key_the_rotation_takes_the_new_one_from_a_file() {
    let (_, configured) = CredentialsKey::generate().unwrap();
    let mut app = spawn_app_with(Backend::Sqlite, |s| s.auth.credentials_key = Some(configured)).await;
    let alice = app.create_user("alice").await;
    app.put_credentials(&alice, "alice", json!({"anthropic_api_key": ALICE_KEY})).await;
    assert!(!app.settings.data.dir.join("credentials.key").exists(), "the configured key is used");
    app.stop().await;
    let refused = rotate(&app.settings, None).await.unwrap_err();
    assert!(refused.contains("--new-key-file"), "{refused}");
    let (new_key, text) = CredentialsKey::generate().unwrap();
    let file = app.dir.path().join("new.key");
    std::fs::write(&file, &text).unwrap();
    let done = rotate(&app.settings, Some(&file)).await.unwrap();
    assert!(done.contains("set auth.credentials_key"), "{done}");
    let row = &raw_rows(&app).await[0];
    assert_eq!(
        new_key.open("alice", &row.sealed).unwrap(),
        br#"{"ANTHROPIC_API_KEY":"sk-ant-alice-0123456789-secret"}"#
    );
}

/// A user's own gateway on another port than the service's: Landlock grants the agents TCP
/// ports one by one, and a user may not open one for their agent by naming it as their
/// gateway (users cannot add MCP servers for the same reason). Listed by the admin in
/// `sandbox.allowed_tcp_ports`, it is reached, and the service's mock sees none of it.
#[actix_web::test]
async fn under_landlock_a_users_own_gateway_needs_its_port_listed_by_the_admin() {
    for listed in [false, true] {
        let service_mock = MockApi::start();
        let gateway = MockApi::start();
        let port: u16 = gateway.url.rsplit(':').next().unwrap().parse().unwrap();
        let app = spawn_real_app(&service_mock, move |s| {
            s.sandbox.mode = SandboxMode::Landlock;
            if listed {
                s.sandbox.allowed_tcp_ports.push(port);
            }
        })
        .await;
        let alice = app.create_user("alice").await;
        let body = json!({"anthropic_api_key": ALICE_KEY, "anthropic_base_url": gateway.url});
        assert_eq!(app.put_credentials(&alice, "alice", body).await.status, StatusCode::OK);
        let id = app.create_session(&alice, json!({})).await;
        app.wait_active(&alice, &id).await;
        let res = app.chat(&alice, &id, "through my gateway").await;
        let keys = gateway.api_keys(&app.client).await;
        assert!(service_mock.api_keys(&app.client).await.is_empty(), "never the service's endpoint");
        if listed {
            assert_eq!(res.body["text"], "mock: through my gateway", "{}", res.text);
            assert!(!keys.is_empty() && keys.iter().all(|k| k == ALICE_KEY), "{keys:?}");
        } else {
            assert!(keys.is_empty(), "an unlisted port was reached: {keys:?}");
            assert!(res.text.contains("EACCES"), "{}", res.text);
        }
    }
}

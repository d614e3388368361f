//! `PATCH /sessions/{id}` (model and permission mode, live and for later launches) and
//! `GET /sessions/{id}/context`.

use std::time::Duration;

use awc::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, eventually, spawn_app, spawn_app_with};
use crate::real_cli::{MockApi, spawn_real_app};

async fn patch(app: &TestApp, key: &str, id: &str, body: Value) -> crate::helpers::TestResponse {
    app.request(Method::PATCH, &format!("/api/v1/sessions/{id}"), Some(key), Some(body)).await
}

async fn agent(app: &TestApp, key: &str, id: &str) -> Value {
    let res = app.request(Method::GET, &format!("/api/v1/sessions/{id}/agent"), Some(key), None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    res.body
}

async fn context(app: &TestApp, key: &str, id: &str) -> crate::helpers::TestResponse {
    app.request(Method::GET, &format!("/api/v1/sessions/{id}/context"), Some(key), None).await
}

#[actix_web::test]
async fn a_new_model_and_mode_reach_the_live_cli_and_survive_a_respawn() {
    let app = spawn_app(Backend::Sqlite).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({"options": {"permission_mode": "default"}})).await;
    app.wait_active(&key, &id).await;
    assert_eq!(app.chat(&key, &id, "hi").await.status, StatusCode::OK);
    assert_eq!(agent(&app, &key, &id).await["model"], "fake");

    let res = patch(&app, &key, &id, json!({"model": "claude-live-7", "permission_mode": "plan"})).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    // The same shape as GET, with the new options.
    let got = app.get_session(&key, &id).await;
    assert_eq!(res.body["options"], json!({"model": "claude-live-7", "permission_mode": "plan"}));
    assert_eq!(
        res.body.as_object().unwrap().keys().collect::<Vec<_>>(),
        got.body.as_object().unwrap().keys().collect::<Vec<_>>()
    );
    assert_eq!(got.body["options"], res.body["options"]);

    // The next turn's `system/init` comes from the same process, which now runs them.
    assert_eq!(app.chat(&key, &id, "again").await.status, StatusCode::OK);
    let info = agent(&app, &key, &id).await;
    assert_eq!((&info["model"], &info["permission_mode"]), (&json!("claude-live-7"), &json!("plan")));

    // A restart stops every CLI; the next message respawns it from the stored options.
    let app = app.restart().await;
    assert_eq!(app.chat(&key, &id, "after the restart").await.status, StatusCode::OK);
    let info = agent(&app, &key, &id).await;
    assert_eq!((&info["model"], &info["permission_mode"]), (&json!("claude-live-7"), &json!("plan")));
}

#[actix_web::test]
async fn a_session_without_a_cli_stores_the_change_for_its_next_start() {
    let app = spawn_app(Backend::Sqlite).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    app.wait_active(&key, &id).await;
    assert_eq!(app.delete_session(&key, &id, "").await.status, StatusCode::NO_CONTENT);
    // Closed: no CLI to tell, and none to measure.
    let not_live = eventually(Duration::from_secs(5), || async { context(&app, &key, &id).await.status == 409 }).await;
    assert!(not_live, "closed session's context: {}", context(&app, &key, &id).await.text);
    context(&app, &key, &id).await.assert_error(409, "session_not_live");
    let res = patch(&app, &key, &id, json!({"model": "claude-stored-2"})).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    assert_eq!(res.body["options"]["model"], "claude-stored-2");
    assert_eq!(app.resume_session(&key, &id).await.status, StatusCode::OK);
    assert_eq!(app.chat(&key, &id, "hi").await.status, StatusCode::OK);
    assert_eq!(agent(&app, &key, &id).await["model"], "claude-stored-2");
}

#[actix_web::test]
async fn changes_are_refused_as_at_creation_and_while_a_turn_runs() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.session.overridable.retain(|o| o != "model");
    })
    .await;
    let key = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let id = app.create_session(&key, json!({"options": {"permission_mode": "default"}})).await;
    app.wait_active(&key, &id).await;

    // Not in `session.overridable`, or never per session: 403 as at creation.
    patch(&app, &key, &id, json!({"model": "claude-x"})).await.assert_error(403, "forbidden");
    patch(&app, &key, &id, json!({"mcp_servers": {}})).await.assert_error(403, "forbidden");
    // Bad values, unknown options, options a session cannot change: 422.
    patch(&app, &key, &id, json!({"permission_mode": "yolo"})).await.assert_error(422, "validation_error");
    patch(&app, &key, &id, json!({"max_turns": 3})).await.assert_error(422, "validation_error");
    patch(&app, &key, &id, json!({"colour": "red"})).await.assert_error(422, "validation_error");
    // Another user's session is not there.
    patch(&app, &bob, &id, json!({"permission_mode": "plan"})).await.assert_error(404, "session_not_found");
    context(&app, &bob, &id).await.assert_error(404, "session_not_found");

    // The CLI was started in `default`: it refuses to switch to bypassPermissions, and the
    // stored mode stays what it was.
    let res = patch(&app, &key, &id, json!({"permission_mode": "bypassPermissions"})).await;
    res.assert_error(422, "permission_mode_unavailable");
    assert_eq!(res.body["error"]["fields"][0]["field"], "permission_mode");
    assert_eq!(app.get_session(&key, &id).await.body["options"]["permission_mode"], "default");

    // During a turn: refused, nothing stored.
    let mut stream = app.open_chat_stream(&key, &id, "slow 30 100").await;
    let (_, first) = stream.next_frame().await.expect("first frame");
    assert_eq!(first["type"], "text_delta");
    patch(&app, &key, &id, json!({"permission_mode": "plan"})).await.assert_error(429, "session_busy");
    assert_eq!(app.get_session(&key, &id).await.body["options"]["permission_mode"], "default");
    assert_eq!(app.interrupt(&key, &id).await.status, StatusCode::ACCEPTED);
    stream.rest().await;
}

#[actix_web::test]
async fn the_invalid_model_is_refused_before_the_cli_sees_it() {
    let app = spawn_app(Backend::Sqlite).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    app.wait_active(&key, &id).await;
    for bad in [json!("two words"), json!(""), json!(7), json!("x".repeat(201))] {
        patch(&app, &key, &id, json!({ "model": bad })).await.assert_error(422, "validation_error");
    }
    assert_eq!(app.get_session(&key, &id).await.body["options"], json!({}));
    assert_eq!(app.chat(&key, &id, "hi").await.status, StatusCode::OK);
    assert_eq!(agent(&app, &key, &id).await["model"], "fake");
}

#[actix_web::test]
async fn the_context_usage_is_the_clis_mapped_and_grows_with_the_conversation() {
    let app = spawn_app(Backend::Sqlite).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    app.wait_active(&key, &id).await;
    let before = context(&app, &key, &id).await;
    assert_eq!(before.status, StatusCode::OK, "{}", before.text);
    let keys: Vec<&String> = before.body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["categories", "model", "percent", "used_tokens", "window_tokens"]);
    assert_eq!(before.body["window_tokens"], 200_000);
    assert_eq!(before.body["used_tokens"], 11_000);
    assert_eq!(before.body["percent"], 5.5);
    assert_eq!(before.body["categories"][0], json!({"name": "System prompt", "tokens": 2000, "kind": "used"}));
    let names: Vec<&str> =
        before.body["categories"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["System prompt", "System tools", "Messages", "Free space"]);

    app.chat(&key, &id, &"a long message ".repeat(100)).await;
    let after = context(&app, &key, &id).await;
    assert!(after.body["used_tokens"].as_i64().unwrap() > 11_000, "{}", after.text);
}

/// The pinned CLI: `set_model` reaches the model requests the mock receives, and
/// `get_context_usage` answers in the shape mapped.
#[actix_web::test]
async fn the_real_cli_switches_model_live_and_reports_its_context() {
    let mock = MockApi::start();
    let app = spawn_real_app(&mock, |_| {}).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    app.wait_active(&key, &id).await;
    assert_eq!(app.chat(&key, &id, "hello").await.status, StatusCode::OK);

    let res = patch(&app, &key, &id, json!({"model": "my-custom-model-x", "permission_mode": "acceptEdits"})).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    let res = app.chat(&key, &id, "after the switch").await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    let client = awc::Client::default();
    let requests = mock.requests(&client).await;
    let last = requests.last().expect("the mock got requests");
    assert_eq!(last["model"], "my-custom-model-x");
    let info = agent(&app, &key, &id).await;
    assert_eq!((&info["model"], &info["permission_mode"]), (&json!("my-custom-model-x"), &json!("acceptEdits")));

    let usage = context(&app, &key, &id).await;
    assert_eq!(usage.status, StatusCode::OK, "{}", usage.text);
    let (used, window) = (usage.body["used_tokens"].as_i64().unwrap(), usage.body["window_tokens"].as_i64().unwrap());
    assert!(used > 0 && window > used, "{}", usage.text);
    let categories = usage.body["categories"].as_array().unwrap();
    assert!(
        categories.iter().any(|c| c["name"] == "System prompt" && c["tokens"].as_i64().unwrap() > 0),
        "{}",
        usage.text
    );
}

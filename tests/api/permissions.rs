//! Tool approval over HTTP with the fake CLI: allow, edit, always, deny, timeout, close.

use awc::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, SseReader, TestApp, spawn_app_with};
use crate::on_both_backends;

on_both_backends!(permission_requests_are_allowed_edited_always_allowed_and_denied_over_http);

async fn answer(app: &TestApp, key: &str, id: &str, request_id: &str, body: Value) -> crate::helpers::TestResponse {
    app.request(Method::POST, &format!("/api/v1/sessions/{id}/permissions/{request_id}"), Some(key), Some(body)).await
}

/// Waits for the next permission request on the follower and returns its id.
async fn next_request(follower: &mut SseReader) -> Value {
    loop {
        let (_, frame) = follower.next_frame().await.expect("a permission request");
        if frame["type"] == "permission_request" {
            return frame;
        }
        assert_ne!(frame["type"], "done", "the turn ended without asking");
    }
}

async fn approval_app(backend: Backend, timeout: u64) -> (TestApp, String, String, SseReader) {
    let app = spawn_app_with(backend, move |s| {
        s.defaults.permission_mode = claude_agent_http::settings::PermissionMode::Default;
        s.permissions.timeout = timeout;
    })
    .await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    let follower = app.open_events(&format!("/api/v1/sessions/{id}/events"), Some(&key), None).await;
    (app, key, id, follower)
}

async fn permission_requests_are_allowed_edited_always_allowed_and_denied_over_http(backend: Backend) {
    let (app, key, id, mut follower) = approval_app(backend, 300).await;
    let dir = app.users_dir().join("alice");

    // Allow.
    app.post_message(&key, &id, "write a.txt hello").await;
    let request = next_request(&mut follower).await;
    assert_eq!(request["tool_name"], "Write");
    assert_eq!(request["tool_input"]["content"], "hello");
    for k in ["type", "text", "tool_name", "tool_input", "error", "request_id"] {
        assert!(request.get(k).is_some(), "{k} in {request}");
    }
    let rid = request["request_id"].as_str().unwrap();
    let open = app.request(Method::GET, &format!("/api/v1/sessions/{id}/permissions"), Some(&key), None).await;
    assert_eq!(open.body[0]["request_id"], rid);
    assert_eq!(open.body[0]["tool_name"], "Write");
    let res = answer(&app, &key, &id, rid, json!({"behavior": "allow"})).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    answer(&app, &key, &id, rid, json!({"behavior": "allow"})).await.assert_error(404, "not_found");
    assert_eq!(follower.until_turn_end().await.last().unwrap().1["type"], "done");
    assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), "hello");

    // Allow with edited input.
    app.post_message(&key, &id, "write b.txt original").await;
    let request = next_request(&mut follower).await;
    let mut edited = request["tool_input"].clone();
    edited["content"] = "edited".into();
    let rid = request["request_id"].as_str().unwrap();
    answer(&app, &key, &id, rid, json!({"behavior": "allow", "updated_input": edited})).await;
    follower.until_turn_end().await;
    assert_eq!(std::fs::read_to_string(dir.join("b.txt")).unwrap(), "edited");

    // Deny with a message: the agent is told why and nothing is written.
    app.post_message(&key, &id, "write c.txt nope").await;
    let request = next_request(&mut follower).await;
    let rid = request["request_id"].as_str().unwrap();
    answer(&app, &key, &id, rid, json!({"behavior": "deny", "message": "not in this folder"})).await;
    let frames = follower.until_turn_end().await;
    let result = frames.iter().find(|(_, f)| f["type"] == "tool_result").expect("tool_result").1.clone();
    assert_eq!(result["is_error"], true);
    assert!(result["output"].as_str().unwrap().contains("not in this folder"));
    assert!(!dir.join("c.txt").exists());

    // Always allow: the next use of the tool is not asked, and it is remembered on the session.
    app.post_message(&key, &id, "tool").await;
    let request = next_request(&mut follower).await;
    assert_eq!(request["tool_name"], "Bash");
    let rid = request["request_id"].as_str().unwrap();
    answer(&app, &key, &id, rid, json!({"behavior": "allow", "always": true})).await;
    follower.until_turn_end().await;
    app.post_message(&key, &id, "tool").await;
    let frames = follower.until_turn_end().await;
    assert!(frames.iter().all(|(_, f)| f["type"] != "permission_request"), "not asked again");
    assert_eq!(frames.last().unwrap().1["type"], "done");
    let remembered = crate::helpers::eventually(std::time::Duration::from_secs(5), || async {
        app.get_session(&key, &id).await.body["options"]["allowed_tools"] == json!(["Bash"])
    })
    .await;
    assert!(remembered, "always-allow is stored with the session");
    // Validation and unknown ids.
    answer(&app, &key, &id, "no-such-request", json!({"behavior": "allow"})).await.assert_error(404, "not_found");
    answer(&app, &key, &id, "x", json!({"behavior": "maybe"})).await.assert_error(422, "validation_error");
}

#[actix_web::test]
async fn an_unanswered_request_is_denied_after_the_timeout_and_close_denies() {
    let (app, key, id, mut follower) = approval_app(Backend::Sqlite, 1).await;
    app.post_message(&key, &id, "write late.txt x").await;
    next_request(&mut follower).await;
    let frames = follower.until_turn_end().await;
    let result = frames.iter().find(|(_, f)| f["type"] == "tool_result").expect("tool_result").1.clone();
    assert_eq!(result["is_error"], true, "denied by the timeout");
    assert!(!app.users_dir().join("alice/late.txt").exists());

    app.post_message(&key, &id, "write closed.txt x").await;
    let request = next_request(&mut follower).await;
    app.delete_session(&key, &id, "").await;
    let end = follower.until_turn_end().await;
    assert_eq!(end.last().unwrap().1["type"], "error", "the turn ends when the session closes");
    let rid = request["request_id"].as_str().unwrap();
    answer(&app, &key, &id, rid, json!({"behavior": "allow"})).await.assert_error(404, "not_found");
    assert!(!app.users_dir().join("alice/closed.txt").exists());
}

/// A request id the CLI asks again replaces the open request with its own timeout: the first
/// one's timer, had it been left running, would deny the second before its time.
#[actix_web::test]
async fn a_request_asked_again_under_its_id_gets_its_own_full_timeout() {
    let (app, key, id, mut follower) = approval_app(Backend::Sqlite, 2).await;
    // The CLI asks at t=0 and again, with the same id, at t=1.2 s; the first timer would fire at t=2 s.
    app.post_message(&key, &id, "tool again 1200").await;
    let first = next_request(&mut follower).await;
    let again = next_request(&mut follower).await;
    let rid = first["request_id"].as_str().unwrap().to_string();
    assert_eq!(again["request_id"], rid.as_str());
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await; // t ≈ 2.5 s
    let open = app.request(Method::GET, &format!("/api/v1/sessions/{id}/permissions"), Some(&key), None).await;
    let listed: Vec<&str> = open.body.as_array().unwrap().iter().filter_map(|p| p["request_id"].as_str()).collect();
    assert_eq!(listed, vec![rid.as_str()], "still open: its own timeout has not passed");
    let res = answer(&app, &key, &id, &rid, json!({"behavior": "allow"})).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    let frames = follower.until_turn_end().await;
    let result = frames.iter().find(|(_, f)| f["type"] == "tool_result").expect("tool_result").1.clone();
    assert_eq!(result["is_error"], false, "allowed, not denied by the first request's timer: {result}");
}

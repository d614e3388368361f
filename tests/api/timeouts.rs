//! The turn's `timeout` bounds every phase (launch, turn slot, readiness, the turn itself),
//! with shell stand-ins for a CLI that hangs at start, prints garbage or dies; and no timer
//! outlives the turn (or permission request) it times.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use awc::http::{Method, StatusCode};
use serde_json::{Value, json};

use claude_agent_http::actors::registry::Lookup;
use claude_agent_http::actors::session::PendingTimers;

use crate::helpers::{Backend, SseReader, TestApp, TestResponse, eventually, spawn_app, spawn_app_with};

/// Writes `body` as an executable `#!/bin/sh` script in a fresh directory and returns its path.
fn script(body: &str) -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("claude");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, path)
}

async fn app_with_cli(body: &str) -> (TestApp, tempfile::TempDir) {
    let (dir, path) = script(body);
    let app = spawn_app_with(Backend::Sqlite, |s| s.cli.path = path.display().to_string()).await;
    (app, dir)
}

async fn session(app: &TestApp) -> (String, String) {
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    (key, id)
}

/// Asserts the answer came about when the turn's `timeout` ran out: not much earlier (it did
/// wait) and within `timeout` + 1 s (with slack for a loaded 2-core machine).
fn assert_took_about(started: Instant, timeout: u64, what: &str) {
    let took = started.elapsed().as_secs_f64();
    let t = timeout as f64;
    assert!(took > t - 0.5 && took < t + 2.5, "{what}: answered after {took:.2} s with timeout {timeout} s");
}

async fn chat_with_timeout(app: &TestApp, key: &str, id: &str, message: &str, timeout: u64) -> TestResponse {
    let started = Instant::now();
    let res = app.post_chat(key, json!({"session_id": id, "message": message, "timeout": timeout})).await;
    res.assert_error(504, "turn_timeout");
    assert_took_about(started, timeout, message);
    res
}

/// A CLI that never becomes ready: each request answers 504 when its own timeout runs out,
/// on `/chat` and `/chat/stream` (there before the stream starts, so as a plain HTTP error).
async fn a_cli_that_never_gets_ready_answers_each_request_within_its_timeout(app: &TestApp) {
    let (key, id) = session(app).await;
    chat_with_timeout(app, &key, &id, "first", 2).await;
    chat_with_timeout(app, &key, &id, "second, right after", 2).await;
    let started = Instant::now();
    let stream = app.chat_stream(&key, json!({"session_id": id, "message": "stream", "timeout": 2})).await;
    assert_eq!(stream.status, StatusCode::GATEWAY_TIMEOUT, "{}", stream.text);
    assert_eq!(serde_json::from_str::<Value>(&stream.text).unwrap()["error"]["code"], "turn_timeout");
    assert_took_about(started, 2, "stream");
}

#[actix_web::test]
async fn a_cli_that_hangs_at_start_answers_504_within_the_turns_timeout() {
    let (app, _dir) = app_with_cli("exec sleep 1000").await;
    a_cli_that_never_gets_ready_answers_each_request_within_its_timeout(&app).await;
}

#[actix_web::test]
async fn a_cli_that_prints_only_garbage_answers_504_within_the_turns_timeout() {
    // Non-JSON lines and malformed JSON lines, as fast as the shell can print them.
    let (app, _dir) = app_with_cli("while :; do echo 'garbage, not json'; echo '{\"type\": broken'; done").await;
    a_cli_that_never_gets_ready_answers_each_request_within_its_timeout(&app).await;
}

#[actix_web::test]
async fn a_cli_that_dies_during_startup_answers_502_quickly() {
    let (app, _dir) = app_with_cli("echo 'cannot start' >&2\nsleep 0.3\nexit 3").await;
    let (key, id) = session(&app).await;
    for _ in 0..2 {
        let started = Instant::now();
        let res = app.post_chat(&key, json!({"session_id": id, "message": "hi", "timeout": 20})).await;
        res.assert_error(502, "cli_failed");
        assert!(started.elapsed() < Duration::from_secs(5), "answered after {:?}", started.elapsed());
    }
}

#[actix_web::test]
async fn a_turn_that_hangs_answers_504_at_its_timeout_and_the_next_request_does_not_wait_for_it() {
    let app = spawn_app(Backend::Sqlite).await;
    let (key, id) = session(&app).await;
    app.chat(&key, &id, "before the hang").await;
    // `hang` ignores interrupts: the answer must not wait for the interrupt's grace.
    chat_with_timeout(&app, &key, &id, "hang", 3).await;
    chat_with_timeout(&app, &key, &id, "hang", 2).await;
    let started = Instant::now();
    let stream = app.chat_stream(&key, json!({"session_id": id, "message": "hang", "timeout": 2})).await;
    assert_eq!(stream.status, StatusCode::OK, "{}", stream.text);
    assert_eq!(stream.last()["type"], "error");
    assert_eq!(stream.last()["code"], "turn_timeout");
    assert_took_about(started, 2, "stream");
    // Right after, the hung CLI is replaced (resumed) rather than waited for.
    let started = Instant::now();
    let next = app.post_chat(&key, json!({"session_id": id, "message": "history", "timeout": 10})).await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.text);
    assert!(next.body["text"].as_str().unwrap().starts_with("before the hang"), "{}", next.text);
    assert!(started.elapsed() < Duration::from_secs(4), "answered after {:?}", started.elapsed());
}

#[actix_web::test]
async fn a_turn_waiting_for_a_slot_gives_up_at_its_timeout_not_at_the_queue_timeout() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.api.max_concurrent_requests = 1;
        s.api.queue_timeout = 30;
    })
    .await;
    let key = app.create_user("alice").await;
    let a = app.create_session(&key, json!({})).await;
    let b = app.create_session(&key, json!({})).await;
    app.wait_active(&key, &b).await;
    let mut long = app.open_chat_stream(&key, &a, "slow 60 100").await;
    long.next_frame().await.expect("turn a runs");
    chat_with_timeout(&app, &key, &b, "waits for the slot", 2).await;
    app.interrupt(&key, &a).await;
    long.rest().await;
}

// ---- timers

async fn pending_timers(app: &TestApp, id: &str) -> usize {
    let actor = app.app_state.registry.addr().send(Lookup { session_id: id.to_string() }).await.unwrap();
    actor.expect("a live session").send(PendingTimers).await.unwrap()
}

#[actix_web::test]
async fn finished_turns_leave_no_timer_behind() {
    let app = spawn_app(Backend::Sqlite).await;
    let (key, id) = session(&app).await;
    // The default timeout (120 s) would keep every turn's timer pending for two minutes.
    for i in 0..30 {
        assert_eq!(app.chat(&key, &id, &format!("turn {i}")).await.status, StatusCode::OK);
    }
    assert_eq!(pending_timers(&app, &id).await, 0, "after 30 quick turns");

    // A turn in progress has exactly its deadline timer; the interrupt adds its grace timer;
    // both go when the interrupted turn ends.
    let mut stream = app.open_chat_stream(&key, &id, "slow 50 100").await;
    stream.next_frame().await.expect("the turn runs");
    assert_eq!(pending_timers(&app, &id).await, 1, "the running turn's deadline");
    app.interrupt(&key, &id).await;
    stream.rest().await;
    assert_eq!(pending_timers(&app, &id).await, 0, "after an interrupted turn");

    // A timed-out turn whose CLI obeys the interrupt: the grace timer goes once the CLI has
    // ended the turn, and the same CLI serves the next turn.
    let pids = app.cli_pids().await;
    chat_with_timeout(&app, &key, &id, "slow 100 100", 1).await;
    assert!(eventually(Duration::from_secs(5), || async { pending_timers(&app, &id).await == 0 }).await);
    assert_eq!(app.chat(&key, &id, "after").await.body["text"], "echo: after");
    assert_eq!(app.cli_pids().await, pids, "the CLI that obeyed was kept");
}

async fn next_permission_request(follower: &mut SseReader) -> String {
    loop {
        let (_, frame) = follower.next_frame().await.expect("a permission request");
        if frame["type"] == "permission_request" {
            return frame["request_id"].as_str().unwrap().to_string();
        }
    }
}

#[actix_web::test]
async fn answered_permission_requests_leave_no_timer_behind() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.defaults.permission_mode = claude_agent_http::settings::PermissionMode::Default;
    })
    .await;
    let (key, id) = session(&app).await;
    let mut follower = app.open_events(&format!("/api/v1/sessions/{id}/events"), Some(&key), None).await;
    for i in 0..3 {
        let accepted = app.post_message(&key, &id, &format!("write f{i}.txt hello")).await;
        assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.text);
        let rid = next_permission_request(&mut follower).await;
        assert_eq!(pending_timers(&app, &id).await, 2, "the turn's deadline and the request's timer");
        let path = format!("/api/v1/sessions/{id}/permissions/{rid}");
        let res = app.request(Method::POST, &path, Some(&key), Some(json!({"behavior": "allow"}))).await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.text);
        assert_eq!(follower.until_turn_end().await.last().unwrap().1["type"], "done");
    }
    assert_eq!(pending_timers(&app, &id).await, 0, "after three answered requests");
}

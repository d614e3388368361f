//! Steering and queueing (`POST /sessions/{id}/messages` with `mode`), the queue
//! (`GET /queue`, `DELETE /queue/{message_id}`), `interrupt?cancel_queue=true`, and what
//! becomes of a queue when the CLI stops. With the fake CLI, which steers like 2.1.330.

use std::time::Duration;

use awc::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, SseReader, TestApp, TestResponse, eventually, spawn_app, spawn_app_with};
use crate::on_both_backends;

on_both_backends!(queued_messages_run_in_order_after_the_turn_and_a_cancelled_one_never_runs);

async fn send(app: &TestApp, key: &str, id: &str, message: &str, mode: &str) -> TestResponse {
    let body = json!({ "message": message, "mode": mode });
    app.request(Method::POST, &format!("/api/v1/sessions/{id}/messages"), Some(key), Some(body)).await
}

/// Frames until `n` turns have ended.
async fn turns(follower: &mut SseReader, n: usize) -> Vec<(i64, Value)> {
    let mut frames = Vec::new();
    for _ in 0..n {
        frames.extend(follower.until_turn_end().await);
    }
    frames
}

fn position(frames: &[(i64, Value)], pred: impl Fn(&Value) -> bool) -> usize {
    frames.iter().position(|(_, f)| pred(f)).unwrap_or_else(|| panic!("no such frame in {frames:#?}"))
}

fn of_type<'a>(t: &'a str, message_id: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |f| f["type"] == t && f["message_id"] == message_id
}

/// The user texts of the stored conversation.
async fn user_texts(app: &TestApp, key: &str, id: &str) -> Vec<String> {
    let history = app.request(Method::GET, &format!("/api/v1/sessions/{id}/messages"), Some(key), None).await;
    let list = history.body.as_array().cloned().unwrap_or_default();
    list.iter().filter(|m| m["role"] == "user").map(|m| m["text"].as_str().unwrap_or("").to_string()).collect()
}

async fn queued_messages_run_in_order_after_the_turn_and_a_cancelled_one_never_runs(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    let mut follower = app.open_events(&format!("/api/v1/sessions/{id}/events"), Some(&key), Some("0")).await;
    let first = app.post_message(&key, &id, "slow 20 50").await;
    assert_eq!(
        (first.status, first.body["status"].as_str()),
        (StatusCode::ACCEPTED, Some("started")),
        "{}",
        first.text
    );
    // Without a mode, a message while the turn runs is still refused.
    app.post_message(&key, &id, "now").await.assert_error(429, "session_busy");
    let mut queued = Vec::new();
    for (n, text) in ["one", "two", "three"].into_iter().enumerate() {
        let res = send(&app, &key, &id, text, "queue").await;
        assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text);
        assert_eq!((res.body["status"].as_str(), res.body["position"].as_u64()), (Some("queued"), Some(n as u64 + 1)));
        assert_eq!(res.body["turn_id"], res.body["message_id"], "a queued message runs as the turn of its id");
        queued.push(res.body["message_id"].as_str().unwrap().to_string());
    }
    let listed = app.request(Method::GET, &format!("/api/v1/sessions/{id}/queue"), Some(&key), None).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    let ids: Vec<&str> = listed.body.as_array().unwrap().iter().map(|q| q["message_id"].as_str().unwrap()).collect();
    assert_eq!(ids, queued.iter().map(String::as_str).collect::<Vec<_>>(), "next first");
    assert_eq!(listed.body[0]["text"], "one");
    crate::helpers::assert_python_time(listed.body[0]["queued_at"].as_str().unwrap());

    let cancel = format!("/api/v1/sessions/{id}/queue/{}", queued[1]);
    assert_eq!(app.request(Method::DELETE, &cancel, Some(&key), None).await.status, StatusCode::NO_CONTENT);
    app.request(Method::DELETE, &cancel, Some(&key), None).await.assert_error(404, "not_found");

    let frames = turns(&mut follower, 3).await;
    let event_ids: Vec<i64> = frames.iter().map(|(i, _)| *i).collect();
    assert_eq!(event_ids, (1..=frames.len() as i64).collect::<Vec<_>>(), "no gap, no duplicate");
    let dones: Vec<usize> = (0..frames.len()).filter(|&i| frames[i].1["type"] == "done").collect();
    assert_eq!(dones.len(), 3);
    let dropped = position(&frames, of_type("message_dropped", &queued[1]));
    assert_eq!(frames[dropped].1["reason"], "cancelled");
    let (one, three) = (
        position(&frames, of_type("message_accepted", &queued[0])),
        position(&frames, of_type("message_accepted", &queued[2])),
    );
    assert_eq!(frames[one].1["message"], "one");
    assert!(dones[0] < one && one < dones[1] && dones[1] < three && three < dones[2], "in order, one turn each");
    assert_eq!(frames[dones[1]].1["result"]["text"], "echo: one");
    assert_eq!(frames[dones[2]].1["result"]["text"], "echo: three");
    assert!(!frames.iter().any(|(_, f)| f["type"] == "message_accepted" && f["message_id"] == queued[1].as_str()));

    // Stored like any turn: the conversation, the counters, the events.
    let stored =
        eventually(Duration::from_secs(5), || async { app.get_session(&key, &id).await.body["message_count"] == 3 })
            .await;
    assert!(stored, "three turns counted");
    assert_eq!(user_texts(&app, &key, &id).await, ["slow 20 50", "one", "three"], "the cancelled one never ran");
    let listed = app.request(Method::GET, &format!("/api/v1/sessions/{id}/queue"), Some(&key), None).await;
    assert_eq!(listed.body, json!([]));
    let mut replay = app.open_events(&format!("/api/v1/sessions/{id}/events"), Some(&key), Some("0")).await;
    assert_eq!(replay.take(frames.len()).await, frames, "replayed as they were sent");
    // With nothing running, a queued message is an ordinary turn.
    let idle = send(&app, &key, &id, "four", "queue").await;
    assert_eq!(idle.body["status"], "started", "{}", idle.text);
    assert!(idle.body["first_event_id"].is_i64());
}

#[actix_web::test]
async fn the_queue_is_bounded() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.session.max_queued = 2).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    app.post_message(&key, &id, "slow 40 50").await;
    for text in ["a", "b"] {
        assert_eq!(send(&app, &key, &id, text, "queue").await.status, StatusCode::ACCEPTED);
    }
    let full = send(&app, &key, &id, "c", "queue").await;
    full.assert_error(429, "queue_full");
    assert_eq!(full.header("retry-after"), Some("1"));
    let bad = send(&app, &key, &id, "c", "later").await;
    bad.assert_error(422, "validation_error");
    let mallory = app.create_user("mallory").await;
    app.request(Method::GET, &format!("/api/v1/sessions/{id}/queue"), Some(&mallory), None)
        .await
        .assert_error(404, "session_not_found");
    send(&app, &mallory, &id, "x", "queue").await.assert_error(404, "session_not_found");
}

#[actix_web::test]
async fn a_steer_reaches_the_running_turn_at_its_next_tool_boundary() {
    let app = spawn_app(Backend::Sqlite).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    let mut follower = app.open_events(&format!("/api/v1/sessions/{id}/events"), Some(&key), None).await;
    let turn = app.post_message(&key, &id, "slow 20 50").await;
    let turn_id = turn.body["turn_id"].as_str().unwrap().to_string();
    follower.take(2).await;
    let steered = send(&app, &key, &id, "go left", "steer").await;
    assert_eq!(steered.status, StatusCode::ACCEPTED, "{}", steered.text);
    assert_eq!(steered.body["status"], "steered");
    assert_eq!(steered.body["turn_id"], turn_id.as_str(), "the running turn takes it");
    let message_id = steered.body["message_id"].as_str().unwrap().to_string();
    let frames = follower.until_turn_end().await;
    let accepted = position(&frames, of_type("message_accepted", &message_id));
    assert_eq!(frames[accepted].1["message"], "go left");
    assert!(frames[accepted].1["text"].is_null(), "the answer's text is not the message's");
    let done = &frames.last().unwrap().1;
    assert_eq!(done["type"], "done");
    let text = done["result"]["text"].as_str().unwrap();
    assert!(text.contains("[steered: go left]") && text.ends_with("w19 "), "within the turn: {text}");
    // One turn, and the session is free afterwards.
    assert!(
        eventually(Duration::from_secs(5), || async { app.get_session(&key, &id).await.body["message_count"] == 1 })
            .await
    );
    let next = send(&app, &key, &id, "hello", "steer").await;
    assert_eq!(next.body["status"], "started", "nothing to steer: an ordinary turn");
    let frames = follower.until_turn_end().await;
    assert_eq!(frames.last().unwrap().1["result"]["text"], "echo: hello");
}

#[actix_web::test]
async fn a_steer_the_turn_ends_before_taking_runs_on_within_that_turn() {
    let app = spawn_app(Backend::Sqlite).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    let mut follower = app.open_events(&format!("/api/v1/sessions/{id}/events"), Some(&key), None).await;
    // `sleep` has no tool boundary: the CLI runs the steered message right after it.
    app.post_message(&key, &id, "sleep 400").await;
    let steered = send(&app, &key, &id, "and then", "steer").await;
    assert_eq!(steered.body["status"], "steered", "{}", steered.text);
    let message_id = steered.body["message_id"].as_str().unwrap().to_string();
    let frames = follower.until_turn_end().await;
    position(&frames, of_type("message_accepted", &message_id));
    let done = &frames.last().unwrap().1;
    assert_eq!((done["type"].as_str(), done["result"]["text"].as_str()), (Some("done"), Some("echo: and then")));
    assert_eq!(done["result"]["num_turns"], 2, "both parts count");
    // Nothing of it leaks into the next turn.
    let next = app.chat(&key, &id, "next").await;
    assert_eq!(next.body["text"], "echo: next", "{}", next.text);
    assert_eq!(user_texts(&app, &key, &id).await, ["sleep 400", "next"]);
}

#[actix_web::test]
async fn an_interrupt_cancels_the_queue_only_when_asked() {
    let app = spawn_app(Backend::Sqlite).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    let mut follower = app.open_events(&format!("/api/v1/sessions/{id}/events"), Some(&key), None).await;

    // Without cancel_queue: the queued message runs after the interrupted turn.
    app.post_message(&key, &id, "slow 50 50").await;
    let kept = send(&app, &key, &id, "kept", "queue").await.body["message_id"].as_str().unwrap().to_string();
    let res = app.interrupt(&key, &id).await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text);
    assert_eq!(res.body["cancelled"], json!([]));
    let frames = turns(&mut follower, 2).await;
    assert_eq!(frames.iter().find(|(_, f)| f["type"] == "done").unwrap().1["result"]["subtype"], "interrupted");
    position(&frames, of_type("message_accepted", &kept));
    assert_eq!(frames.last().unwrap().1["result"]["text"], "echo: kept");

    // With it: the queue goes too, and so does a steer the turn has not taken.
    app.post_message(&key, &id, "sleep 3000").await;
    let a = send(&app, &key, &id, "a", "queue").await.body["message_id"].as_str().unwrap().to_string();
    let b = send(&app, &key, &id, "b", "queue").await.body["message_id"].as_str().unwrap().to_string();
    let s = send(&app, &key, &id, "s", "steer").await.body["message_id"].as_str().unwrap().to_string();
    let res = app
        .request(Method::POST, &format!("/api/v1/sessions/{id}/interrupt?cancel_queue=true"), Some(&key), None)
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.text);
    assert_eq!(res.body["cancelled"], json!([a, b]));
    assert!(res.body["turn_id"].is_string());
    let frames = follower.until_turn_end().await;
    for m in [&a, &b, &s] {
        assert_eq!(frames[position(&frames, of_type("message_dropped", m))].1["reason"], "interrupted", "{m}");
    }
    assert_eq!(frames.last().unwrap().1["result"]["subtype"], "interrupted");
    // Nothing else runs: not the queue, and the CLI dropped the steer too (`cancel_queued`).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = app.chat(&key, &id, "history").await;
    assert_eq!(after.body["text"], "slow 50 50 | kept | sleep 3000", "what the CLI got: {}", after.text);
    assert_eq!(user_texts(&app, &key, &id).await, ["slow 50 50", "kept", "sleep 3000", "history"]);
    // No turn and nothing queued: nothing to interrupt.
    app.request(Method::POST, &format!("/api/v1/sessions/{id}/interrupt?cancel_queue=true"), Some(&key), None)
        .await
        .assert_error(409, "no_turn_running");
}

#[actix_web::test]
async fn a_queue_goes_with_its_cli_each_message_with_an_event() {
    let app = spawn_app(Backend::Sqlite).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    let mut follower = app.open_events(&format!("/api/v1/sessions/{id}/events"), Some(&key), None).await;
    app.post_message(&key, &id, "slow 40 50").await;
    follower.take(1).await;
    let a = send(&app, &key, &id, "a", "queue").await.body["message_id"].as_str().unwrap().to_string();
    // The CLI dies mid-turn (as a crash would): the turn fails, the queue is dropped.
    for pid in app.cli_pids().await {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let mut frames = follower.until_turn_end().await;
    assert_eq!(frames.last().unwrap().1["code"], "cli_failed");
    frames.extend(follower.take(1).await);
    let dropped = &frames.last().unwrap().1;
    assert_eq!((dropped["type"].as_str(), dropped["message_id"].as_str()), (Some("message_dropped"), Some(a.as_str())));
    assert_eq!(dropped["reason"], "stopped");
    let listed = app.request(Method::GET, &format!("/api/v1/sessions/{id}/queue"), Some(&key), None).await;
    assert_eq!(listed.body, json!([]));
    // The session resumes as usual, and the dropped message never ran.
    let next = app.chat(&key, &id, "again").await;
    assert_eq!(next.body["text"], "echo: again", "{}", next.text);
    assert!(!user_texts(&app, &key, &id).await.contains(&"a".to_string()));
}

/// The real CLI: a message steered while the agent runs a slow Bash command reaches the
/// model at that tool's boundary, within the same turn (the mock sees it), and the CLI's
/// `command_lifecycle` for its uuid becomes `message_accepted`.
#[actix_web::test]
async fn the_real_cli_takes_a_steer_within_the_running_turn() {
    let mock = crate::real_cli::MockApi::start();
    let app = crate::real_cli::spawn_real_app(&mock, |_| {}).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    app.wait_active(&key, &id).await;
    let mut follower = app.open_events(&format!("/api/v1/sessions/{id}/events"), Some(&key), None).await;
    let turn = app.post_message(&key, &id, "bash sleep 3 && echo slept").await;
    assert_eq!(turn.status, StatusCode::ACCEPTED, "{}", turn.text);
    let (_, first) = follower.next_frame().await.expect("the tool use");
    assert_eq!(first["type"], "tool_use", "{first}");
    let steered = send(&app, &key, &id, "steer the agent left", "steer").await;
    assert_eq!(steered.body["status"], "steered", "{}", steered.text);
    assert_eq!(steered.body["turn_id"], turn.body["turn_id"]);
    let message_id = steered.body["message_id"].as_str().unwrap().to_string();
    let frames = follower.until_turn_end().await;
    eprintln!("steer transcript: {first}");
    for (i, f) in &frames {
        eprintln!("steer transcript {i}: {f}");
    }
    position(&frames, of_type("message_accepted", &message_id));
    assert_eq!(frames.last().unwrap().1["type"], "done");
    let requests = mock.requests(&app.client).await;
    let saw = requests.iter().position(|r| r.to_string().contains("steer the agent left"));
    let saw = saw.expect("the model got the steered message");
    assert!(requests[saw].to_string().contains("slept"), "with the Bash result: the same turn's next request");
    assert!(
        eventually(Duration::from_secs(5), || async { app.get_session(&key, &id).await.body["message_count"] == 1 })
            .await
    );
}

/// The real CLI: a steer into a turn with no tool call left is answered right after that
/// answer, and the service keeps it in the same turn (one `done`, both parts counted).
#[actix_web::test]
async fn the_real_cli_answers_a_late_steer_within_the_same_turn() {
    let mock = crate::real_cli::MockApi::start();
    let app = crate::real_cli::spawn_real_app(&mock, |_| {}).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    app.wait_active(&key, &id).await;
    let mut follower = app.open_events(&format!("/api/v1/sessions/{id}/events"), Some(&key), None).await;
    app.post_message(&key, &id, "slow").await;
    follower.take(2).await;
    let steered = send(&app, &key, &id, "one more thing", "steer").await;
    assert_eq!(steered.body["status"], "steered", "{}", steered.text);
    let message_id = steered.body["message_id"].as_str().unwrap().to_string();
    let frames = follower.until_turn_end().await;
    for (i, f) in &frames {
        eprintln!("late steer {i}: {f}");
    }
    position(&frames, of_type("message_accepted", &message_id));
    let done = &frames.last().unwrap().1;
    assert_eq!(done["type"], "done");
    assert_eq!(done["result"]["text"], "mock: one more thing", "the answer to the steer ends the turn");
    let requests = mock.requests(&app.client).await;
    assert!(requests.iter().any(|r| r.to_string().contains("one more thing")), "the model got it");
    assert!(
        eventually(Duration::from_secs(5), || async { app.get_session(&key, &id).await.body["message_count"] == 1 })
            .await
    );
    let next = app.chat(&key, &id, "and now").await;
    assert_eq!(next.body["text"], "mock: and now", "nothing of it leaks into the next turn: {}", next.text);
}

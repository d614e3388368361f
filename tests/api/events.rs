//! `GET /sessions/{id}/events` (replay + live, many followers, across restarts) and
//! `POST /sessions/{id}/messages` (202).

use std::time::Duration;

use awc::http::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{Backend, TestApp, eventually, spawn_app, spawn_app_with};
use crate::on_both_backends;

on_both_backends!(
    events_replay_after_the_last_id_then_follow_live_across_a_restart,
    the_replay_keeps_the_latest_events_of_a_session,
);

fn ids(frames: &[(i64, serde_json::Value)]) -> Vec<i64> {
    frames.iter().map(|(i, _)| *i).collect()
}

async fn events_replay_after_the_last_id_then_follow_live_across_a_restart(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    let accepted = app.post_message(&key, &id, "first").await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.text);
    assert_eq!(accepted.body["first_event_id"], 1);
    assert!(accepted.body["turn_id"].is_string());

    // Everything kept (Last-Event-ID: 0), then live.
    let mut follower = app.open_events(&format!("/api/v1/sessions/{id}/events"), Some(&key), Some("0")).await;
    let first_turn = follower.until_turn_end().await;
    assert_eq!(first_turn.last().unwrap().1["type"], "done");
    let n = first_turn.len() as i64;
    assert_eq!(ids(&first_turn), (1..=n).collect::<Vec<_>>());
    app.post_message(&key, &id, "second").await;
    let second_turn = follower.until_turn_end().await;
    assert_eq!(ids(&second_turn), (n + 1..=n + second_turn.len() as i64).collect::<Vec<_>>(), "no gap, no duplicate");
    let total = n + second_turn.len() as i64;

    // Reconnect with the id of the last frame seen: the rest only.
    let mut again = app.open_events(&format!("/api/v1/sessions/{id}/events?last_event_id={n}"), Some(&key), None).await;
    assert_eq!(ids(&again.take(second_turn.len()).await), ids(&second_turn));

    // After a restart, the stored events replay as they were.
    let app = app.restart().await;
    let mut replay = app.open_events(&format!("/api/v1/sessions/{id}/events"), Some(&key), Some("0")).await;
    let replayed = replay.take(total as usize).await;
    let mut expected = first_turn.clone();
    expected.extend(second_turn.clone());
    assert_eq!(replayed, expected, "identical after a restart");
    // And follows the respawned session live, numbering on.
    app.post_message(&key, &id, "third").await;
    let third = replay.until_turn_end().await;
    assert_eq!(third[0].0, total + 1);
}

async fn the_replay_keeps_the_latest_events_of_a_session(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.events.replay = 5).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    for m in ["one", "two", "three"] {
        app.chat(&key, &id, m).await;
    }
    let stored = crate::helpers::eventually(std::time::Duration::from_secs(5), || async {
        app.get_session(&key, &id).await.body["message_count"] == 3
    })
    .await;
    assert!(stored);
    let mut follower = app.open_events(&format!("/api/v1/sessions/{id}/events"), Some(&key), Some("0")).await;
    let kept = follower.take(5).await;
    assert_eq!(kept.last().unwrap().1["type"], "done");
    let last_id = kept.last().unwrap().0;
    assert_eq!(ids(&kept), (last_id - 4..=last_id).collect::<Vec<_>>(), "the latest five");
}

#[actix_web::test]
async fn a_follower_joining_mid_turn_sees_every_event_once() {
    let app = spawn_app(Backend::Sqlite).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    let path = format!("/api/v1/sessions/{id}/events");
    // A first follower shows when the turn has begun; the second joins after that frame.
    let mut watcher = app.open_events(&path, Some(&key), None).await;
    app.post_message(&key, &id, "slow 40 25").await;
    let first = watcher.take(1).await;
    assert_eq!(first[0].0, 1);
    let mut follower = app.open_events(&path, Some(&key), None).await;
    assert_eq!(app.get_session(&key, &id).await.body["status"], "busy", "joined before the turn ended");
    let frames = follower.until_turn_end().await;
    assert_eq!(
        ids(&frames),
        (1..=frames.len() as i64).collect::<Vec<_>>(),
        "replay and live meet without gap or duplicate"
    );
    assert_eq!(frames.iter().filter(|(_, f)| f["type"] == "text_delta").count(), 40);
    assert_eq!(frames, [first, watcher.until_turn_end().await].concat(), "both saw the same turn");
}

/// Live `/events` followers, as `GET /metrics` reports them.
async fn followers(app: &TestApp) -> f64 {
    let res = app.request(Method::GET, "/metrics", None, None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    let line = res.text.lines().find(|l| l.starts_with("claude_agent_event_followers ")).expect("the gauge");
    line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a number")
}

/// A client on a raw socket: it has the response head of `/events` when this returns, and
/// leaves when the socket is dropped (no client pool that could keep the connection).
async fn raw_follower(app: &TestApp, key: &str, session_id: &str) -> tokio::net::TcpStream {
    let mut socket = tokio::net::TcpStream::connect(app.address.trim_start_matches("http://")).await.unwrap();
    let request = format!(
        "GET /api/v1/sessions/{session_id}/events HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(socket.read(&mut byte).await.unwrap(), 1, "the response head arrives");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    socket
}

/// Waits (up to 1.5 s: the promise is 1 s, plus scrape slack) for the gauge to read `n`.
async fn followers_become(app: &TestApp, n: f64) -> bool {
    eventually(Duration::from_millis(1500), || async { followers(app).await == n }).await
}

#[actix_web::test]
async fn followers_of_a_quiet_session_end_when_their_clients_leave() {
    let app = spawn_app(Backend::Sqlite).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    assert_eq!(followers(&app).await, 0.0);
    // Clients that read all there was (nothing yet) and close cleanly (FIN, not RST).
    let clients = futures_util::future::join_all((0..20).map(|_| raw_follower(&app, &key, &id))).await;
    assert_eq!(followers(&app).await, 20.0);
    // The session stays quiet: no event will come for a follower to fail on.
    drop(clients);
    assert!(followers_become(&app, 0.0).await, "every follower ended within ~1 s of its client leaving");
    // The session still has live followers afterwards, and they get the next turn.
    let mut follower = app.open_events(&format!("/api/v1/sessions/{id}/events"), Some(&key), None).await;
    app.post_message(&key, &id, "again").await;
    assert_eq!(follower.until_turn_end().await.last().unwrap().1["type"], "done");
}

#[actix_web::test]
async fn followers_of_a_closed_session_end_when_their_clients_leave() {
    let app = spawn_app(Backend::Sqlite).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    app.chat(&key, &id, "hello").await;
    let before_close = raw_follower(&app, &key, &id).await;
    assert_eq!(app.delete_session(&key, &id, "").await.status, StatusCode::NO_CONTENT);
    let after_close = raw_follower(&app, &key, &id).await;
    assert_eq!(followers(&app).await, 2.0);
    drop((before_close, after_close));
    assert!(followers_become(&app, 0.0).await, "followers of a closed session end with their clients");
}

#[actix_web::test]
async fn five_hundred_followers_that_come_and_go_leave_none_behind() {
    let app = spawn_app(Backend::Sqlite).await;
    let key = app.create_user("alice").await;
    let ids = futures_util::future::join_all((0..5).map(|_| app.create_session(&key, json!({})))).await;
    for round in 0..5 {
        let clients =
            futures_util::future::join_all((0..100).map(|i| raw_follower(&app, &key, &ids[(i + round) % ids.len()])))
                .await;
        // Those of the round before may still be leaving.
        assert!(followers(&app).await >= 100.0);
        drop(clients);
    }
    assert!(followers_become(&app, 0.0).await, "500 followers came and went; none is left");
}

#[actix_web::test]
async fn two_followers_see_the_same_events_and_browsers_may_use_access_token() {
    let app = spawn_app(Backend::Sqlite).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    let path = format!("/api/v1/sessions/{id}/events");
    let mut a = app.open_events(&path, Some(&key), None).await;
    let mut b = app.open_events(&format!("{path}?access_token={key}"), None, None).await;
    app.post_message(&key, &id, "tool").await;
    let (fa, fb) = (a.until_turn_end().await, b.until_turn_end().await);
    assert_eq!(fa, fb);
    assert_eq!(
        fa.iter().map(|(_, f)| f["type"].as_str().unwrap()).collect::<Vec<_>>(),
        ["tool_use", "tool_result", "text_delta", "done"]
    );
    // The token is accepted on the events stream only, and a wrong one is refused.
    let other = app.client.get(format!("{}/api/v1/sessions?access_token={key}", app.address)).send().await.unwrap();
    assert_eq!(other.status(), StatusCode::UNAUTHORIZED);
    let wrong = app.client.get(format!("{}{path}?access_token=nope", app.address)).send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let mallory = app.create_user("mallory").await;
    let foreign = app.client.get(format!("{}{path}?access_token={mallory}", app.address)).send().await.unwrap();
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);
    // A message during a turn is busy here too.
    app.post_message(&key, &id, "slow 20 50").await;
    app.post_message(&key, &id, "again").await.assert_error(429, "session_busy");
    app.post_message(&key, &id, " ").await.assert_error(422, "validation_error");
}

//! `GET /sessions/{id}/events` (replay + live, many followers, across restarts) and
//! `POST /sessions/{id}/messages` (202).

use awc::http::StatusCode;
use serde_json::json;

use crate::helpers::{Backend, spawn_app, spawn_app_with};
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
    app.post_message(&key, &id, "slow 40 10").await;
    actix_web::rt::time::sleep(std::time::Duration::from_millis(150)).await;
    let mut follower = app.open_events(&format!("/api/v1/sessions/{id}/events"), Some(&key), None).await;
    let frames = follower.until_turn_end().await;
    assert_eq!(
        ids(&frames),
        (1..=frames.len() as i64).collect::<Vec<_>>(),
        "replay and live meet without gap or duplicate"
    );
    assert_eq!(frames.iter().filter(|(_, f)| f["type"] == "text_delta").count(), 40);
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

//! Read-your-writes (a read right after a turn shows it) and the event log under a database
//! outage (bounded, nothing a client saw is lost, no event id handed out twice).

use std::time::Duration;

use awc::http::StatusCode;
use serde_json::json;

use crate::helpers::{Backend, eventually, pg_admin, pg_url_for_database, spawn_app, spawn_app_with};
use crate::on_both_backends;

on_both_backends!(a_read_right_after_a_chat_shows_the_turn, a_read_right_after_a_stream_or_an_accepted_turn_shows_it);

/// Exactly "chat, then read history and the session", 100 times, no sleep.
async fn a_read_right_after_a_chat_shows_the_turn(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    let mut cost = 0.0;
    for turn in 1..=100i64 {
        let res = app.chat(&key, &id, &format!("message {turn}")).await;
        assert_eq!(res.status, StatusCode::OK, "{}", res.text);
        cost += res.body["cost_usd"].as_f64().unwrap();
        let path = format!("/api/v1/sessions/{id}/messages?limit=1000");
        let history = app.request(awc::http::Method::GET, &path, Some(&key), None).await;
        let messages = history.body.as_array().unwrap_or_else(|| panic!("{}", history.text));
        assert_eq!(messages.len() as i64, 2 * turn, "turn {turn}: the history shows it");
        assert_eq!(messages.last().unwrap()["text"], res.body["text"]);
        let session = app.get_session(&key, &id).await;
        assert_eq!(session.body["message_count"], turn, "turn {turn}: the session counts it");
        let stored_cost = session.body["total_cost_usd"].as_f64().unwrap();
        assert!((stored_cost - cost).abs() < 1e-9, "turn {turn}: cost {stored_cost} vs {cost}");
    }
}

/// The `done` frame of a stream and the end of a 202 turn (its `done` on `/events`) come
/// only once the turn is stored.
async fn a_read_right_after_a_stream_or_an_accepted_turn_shows_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    let mut follower = app.open_events(&format!("/api/v1/sessions/{id}/events"), Some(&key), Some("0")).await;
    for turn in 1..=20i64 {
        let done = if turn % 2 == 0 {
            let mut stream = app.open_chat_stream(&key, &id, &format!("stream {turn}")).await;
            let frames = stream.until_turn_end().await;
            follower.until_turn_end().await;
            frames.last().unwrap().1.clone()
        } else {
            let accepted = app.post_message(&key, &id, &format!("accepted {turn}")).await;
            assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.text);
            follower.until_turn_end().await.last().unwrap().1.clone()
        };
        assert_eq!(done["type"], "done", "{done}");
        let session = app.get_session(&key, &id).await;
        assert_eq!(session.body["message_count"], turn, "turn {turn}: the session counts it");
        let path = format!("/api/v1/sessions/{id}/messages");
        let history = app.request(awc::http::Method::GET, &path, Some(&key), None).await;
        assert_eq!(history.body.as_array().unwrap().len() as i64, 2 * turn);
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// PostgreSQL goes away for a few seconds while sessions stream: memory stays bounded, the
/// turns answer or fail with 503 `storage_unavailable`, and once it is back the replay holds
/// every event a client saw, and new events (also after a restart) never reuse an id.
#[actix_web::test]
async fn an_outage_while_sessions_stream_loses_no_event_and_reuses_no_id() {
    let db = format!("t_out_{}", uuid::Uuid::new_v4().simple());
    pg_admin(&format!("CREATE DATABASE {db}")).await;
    let url = pg_url_for_database(&db);
    let app = spawn_app_with(Backend::Postgres, |s| s.session.database_url = Some(url)).await;
    let key = app.create_user("alice").await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.create_session(&key, json!({})).await);
    }
    for id in &ids {
        assert_eq!(app.chat(&key, id, "warm up").await.status, StatusCode::OK);
    }
    let before = rss_kib();

    let mut streams = Vec::new();
    for id in &ids {
        streams.push(app.open_chat_stream(&key, id, "slow 60 100").await);
    }
    pg_admin(&format!(
        "ALTER DATABASE {db} ALLOW_CONNECTIONS false; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}';"
    ))
    .await;
    let readers = streams.into_iter().map(|mut s| async move { s.until_turn_end().await });
    let reading = futures_util::future::join_all(readers);
    let outage = async {
        tokio::time::sleep(Duration::from_secs(4)).await;
        pg_admin(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true")).await;
    };
    let (seen, ()) = futures_util::future::join(reading, outage).await;
    let during = rss_kib();
    // The whole test process is measured (other tests run alongside): generous slack.
    assert!(during < before * 2 + 256 * 1024, "RSS {during} KiB against {before} KiB before the outage");

    let back =
        eventually(Duration::from_secs(30), || async { app.get_session(&key, &ids[0]).await.status == StatusCode::OK })
            .await;
    assert!(back, "the service recovers");
    let mut highest = Vec::new();
    for (id, frames) in ids.iter().zip(&seen) {
        let last = &frames.last().expect("frames").1;
        let ok = last["type"] == "done" || last["code"] == "storage_unavailable";
        assert!(ok, "the turn answers or fails with storage_unavailable: {last}");
        // Every frame the client saw is in the replay, eventually (the writer catches up).
        let wanted: Vec<i64> = frames.iter().map(|(i, _)| *i).collect();
        let stored = eventually(Duration::from_secs(30), || async {
            let mut replay = app.open_events(&format!("/api/v1/sessions/{id}/events"), Some(&key), Some("0")).await;
            let max = *wanted.last().unwrap();
            let mut got = Vec::new();
            while let Ok(Some((i, _))) = tokio::time::timeout(Duration::from_millis(500), replay.next_frame()).await {
                got.push(i);
                if i >= max {
                    break;
                }
            }
            wanted.iter().all(|i| got.contains(i))
        })
        .await;
        assert!(stored, "session {id}: every event its client saw is replayed");
        highest.push(*wanted.last().unwrap());
    }

    // New turns number above everything handed out, also after a restart.
    let app = app.restart().await;
    for (id, high) in ids.iter().zip(&highest) {
        let mut stream = app.open_chat_stream(&key, id, "after").await;
        let frames = stream.until_turn_end().await;
        assert!(frames.iter().all(|(i, _)| i > high), "session {id}: ids {frames:?} not above {high}");
    }
    drop(app);
    pg_admin(&format!("DROP DATABASE {db} WITH (FORCE)")).await;
}

/// Events a client saw but storage refused for good (here a trigger rejects every event row)
/// are never stored: after a restart the session's new events still number above them.
#[actix_web::test]
async fn ids_a_client_saw_but_storage_never_kept_are_not_handed_out_again_after_a_restart() {
    let db = format!("t_ids_{}", uuid::Uuid::new_v4().simple());
    pg_admin(&format!("CREATE DATABASE {db}")).await;
    let url = pg_url_for_database(&db);
    let app = spawn_app_with(Backend::Postgres, |s| s.session.database_url = Some(url.clone())).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    assert_eq!(app.chat(&key, &id, "stored").await.status, StatusCode::OK);
    pg_in(
        &url,
        "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$ LANGUAGE plpgsql; \
         CREATE TRIGGER refuse BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .await;
    let seen = app.open_chat_stream(&key, &id, "never stored").await.until_turn_end().await;
    let high = seen.last().expect("frames").0;

    let app = app.restart().await;
    let frames = app.open_chat_stream(&key, &id, "after").await.until_turn_end().await;
    assert!(frames.iter().all(|(i, _)| *i > high), "ids {frames:?} not above {high}, which a client saw");
    drop(app);
    pg_admin(&format!("DROP DATABASE {db} WITH (FORCE)")).await;
}

async fn pg_in(url: &str, sql: &str) {
    use diesel_async::{AsyncConnection, SimpleAsyncConnection};
    let mut conn = diesel_async::AsyncPgConnection::establish(url).await.expect("test database");
    conn.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

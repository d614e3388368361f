//! The Python service's clients, as its docs write them, against this service in
//! `auth.mode = "none"`: no key, the `user_id` in the body, `?frames=seed` (or `api.frames`),
//! frames checked against the seed's own `StreamChunk` model, bodies without `Content-Type`,
//! FastAPI's 422 `detail` and timestamps Python 3.10 can parse.

use awc::http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::helpers::{Backend, TestApp, assert_python_time, auth_none, spawn_app_with};
use crate::on_both_backends;
use claude_agent_http::domain::frames::FrameSet;

on_both_backends!(
    the_seeds_stream_joining_client_shows_the_answer_once,
    every_seed_frame_is_a_valid_stream_chunk,
    api_frames_seed_is_the_default_of_both_streams,
    seed_bodies_without_content_type_validation_and_times_work,
);

/// The seed's `StreamChunk` (models.py), strictly: a type it does not list or a key it does
/// not have is an error, as its pydantic `Literal` would raise (and stricter on keys, which
/// pydantic would ignore).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read by the deserializer only
struct StreamChunk {
    #[serde(rename = "type")]
    kind: ChunkType,
    text: Option<String>,
    tool_name: Option<String>,
    tool_input: Option<Map<String, Value>>,
    error: Option<String>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum ChunkType {
    TextDelta,
    ToolUse,
    Done,
    Error,
}

/// A client of the seed: no key, JSON bodies.
async fn seed_post(app: &TestApp, path: &str, body: Value) -> (StatusCode, String) {
    let mut res = app.client.post(format!("{}{path}", app.address)).send_json(&body).await.expect("answered");
    let bytes = res.body().limit(16 * 1024 * 1024).await.expect("body");
    (res.status(), String::from_utf8_lossy(&bytes).to_string())
}

async fn seed_get(app: &TestApp, path: &str) -> (StatusCode, String) {
    let mut res = app.client.get(format!("{}{path}", app.address)).send().await.expect("answered");
    let bytes = res.body().limit(16 * 1024 * 1024).await.expect("body");
    (res.status(), String::from_utf8_lossy(&bytes).to_string())
}

async fn seed_session(app: &TestApp) -> String {
    let (status, text) =
        seed_post(app, "/api/v1/sessions", json!({"user_id": "zhangsan", "subdir": "my-project"})).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["session_id"].as_str().unwrap().to_string()
}

/// The `data:` payloads of an SSE answer, as the seed's examples read it: every line that
/// starts with `data: `, comments and `id:` lines skipped.
fn data_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect()
}

async fn the_seeds_stream_joining_client_shows_the_answer_once(backend: Backend) {
    let app = spawn_app_with(backend, auth_none).await;
    let id = seed_session(&app).await;
    for query in ["?frames=seed", ""] {
        let (status, text) =
            seed_post(&app, &format!("/api/v1/chat/stream{query}"), json!({"session_id": id, "message": "tool"})).await;
        assert_eq!(status, StatusCode::OK);
        // The seed's client: join every frame's `text`.
        let joined: String = data_lines(&text).iter().filter_map(|f| f["text"].as_str()).collect();
        assert_eq!(joined, "The command printed hi.", "shown once ({query:?}): {text}");
    }
    let (_, text) =
        seed_post(&app, "/api/v1/chat/stream?frames=seed", json!({"session_id": id, "message": "hello there"})).await;
    let joined: String = data_lines(&text).iter().filter_map(|f| f["text"].as_str()).collect();
    assert_eq!(joined, "echo: hello there");
}

/// Each frame as the seed's model; panics naming the frame that it refuses.
fn strict_chunks(text: &str) -> Vec<StreamChunk> {
    data_lines(text)
        .into_iter()
        .map(|f| serde_json::from_value(f.clone()).unwrap_or_else(|e| panic!("StreamChunk refuses {f}: {e}")))
        .collect()
}

async fn every_seed_frame_is_a_valid_stream_chunk(backend: Backend) {
    let app = spawn_app_with(backend, auth_none).await;
    let id = seed_session(&app).await;
    let stream = |message: &'static str| {
        let app = &app;
        let id = id.clone();
        async move {
            let (status, text) =
                seed_post(app, "/api/v1/chat/stream?frames=seed", json!({"session_id": id, "message": message})).await;
            assert_eq!(status, StatusCode::OK);
            text
        }
    };
    // A tool call: its tool_result is left out, the tool_use kept.
    let tool = strict_chunks(&stream("tool").await);
    let kinds: Vec<&ChunkType> = tool.iter().map(|c| &c.kind).collect();
    assert_eq!(kinds, [&ChunkType::ToolUse, &ChunkType::TextDelta, &ChunkType::Done]);
    assert_eq!(tool[0].tool_name.as_deref(), Some("Bash"));
    assert_eq!(tool[0].tool_input.as_ref().unwrap()["command"], "echo hi");
    assert_eq!(tool[2].text, None);
    // A failing turn ends with an error chunk, its message in `error`.
    let crash = strict_chunks(&stream("crash").await);
    let last = crash.last().unwrap();
    assert_eq!(last.kind, ChunkType::Error);
    assert!(last.error.as_deref().is_some_and(|e| !e.is_empty()));
    // The crashed CLI's exit settles first (a stream racing it once came back empty: see the note).
    let settled = crate::helpers::eventually(std::time::Duration::from_secs(10), || async {
        let (_, text) = seed_get(&app, &format!("/api/v1/sessions/{id}")).await;
        text.contains("\"idle\"")
    })
    .await;
    assert!(settled, "the session goes idle after its CLI crashed");

    // The check is strict: the full frames (tool_result, extra keys) are refused by it.
    let (status, full) = seed_post(&app, "/api/v1/chat/stream", json!({"session_id": id, "message": "tool"})).await;
    let refused = data_lines(&full).into_iter().filter(|f| serde_json::from_value::<StreamChunk>(f.clone()).is_err());
    assert!(
        refused.count() >= 3,
        "tool_use (tool_use_id), tool_result and done (result) are not the seed's: {status} {full}"
    );
}

/// Tool approval in a seed stream: the `permission_request` frame is not sent (the seed had
/// none), the request is still there to answer over the API, and the turn then ends well.
async fn api_frames_seed_is_the_default_of_both_streams(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        auth_none(s);
        s.api.frames = FrameSet::Seed;
    })
    .await;
    let (status, text) =
        seed_post(&app, "/api/v1/sessions", json!({"user_id": "zhangsan", "options": {"permission_mode": "default"}}))
            .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let id = serde_json::from_str::<Value>(&text).unwrap()["session_id"].as_str().unwrap().to_string();

    let client = app.client.clone();
    let url = format!("{}/api/v1/chat/stream", app.address);
    let body = json!({"session_id": id, "message": "tool"});
    let streaming = actix_web::rt::spawn(async move {
        let mut res = client.post(url).send_json(&body).await.expect("answered");
        String::from_utf8_lossy(&res.body().limit(1 << 20).await.unwrap()).to_string()
    });
    let mut request_id = None;
    for _ in 0..100 {
        let open = app.request(Method::GET, &format!("/api/v1/sessions/{id}/permissions"), None, None).await;
        if let Some(r) = open.body.as_array().and_then(|a| a.first()) {
            request_id = r["request_id"].as_str().map(str::to_string);
            break;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let request_id = request_id.expect("the CLI asked");
    let answer = app
        .request(
            Method::POST,
            &format!("/api/v1/sessions/{id}/permissions/{request_id}"),
            None,
            Some(json!({"behavior": "allow"})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let text = streaming.await.unwrap();
    let chunks = strict_chunks(&text);
    assert_eq!(chunks.last().unwrap().kind, ChunkType::Done, "{text}");
    assert!(!text.contains("permission_request") && !text.contains("tool_result"), "{text}");

    // /events too, and `?frames=full` still gets everything.
    let mut seed = app.open_events(&format!("/api/v1/sessions/{id}/events"), None, Some("0")).await;
    let replayed = seed.until_turn_end().await;
    for (_, f) in &replayed {
        serde_json::from_value::<StreamChunk>(f.clone()).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
    let mut full = app.open_events(&format!("/api/v1/sessions/{id}/events?frames=full"), None, Some("0")).await;
    let types: Vec<Value> = full.until_turn_end().await.into_iter().map(|(_, f)| f["type"].clone()).collect();
    assert!(types.contains(&json!("permission_request")) && types.contains(&json!("tool_result")), "{types:?}");
    // An unknown frame set is a 422 like any bad query.
    let (status, _) =
        seed_post(&app, "/api/v1/chat/stream?frames=old", json!({"session_id": id, "message": "x"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

async fn seed_bodies_without_content_type_validation_and_times_work(backend: Backend) {
    let app = spawn_app_with(backend, auth_none).await;
    // No Content-Type: read as JSON, as FastAPI did.
    let raw = |path: &'static str, ct: Option<&'static str>, body: String| {
        app.request_raw(Method::POST, path, None, ct, body.into_bytes())
    };
    let created = raw("/api/v1/sessions", None, json!({"user_id": "zhangsan"}).to_string()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let id = created.body["session_id"].as_str().unwrap().to_string();
    let chat = raw("/api/v1/chat", None, json!({"session_id": id, "message": "hi"}).to_string()).await;
    assert_eq!(chat.status, StatusCode::OK, "{}", chat.text);
    assert_eq!(chat.body["text"], "echo: hi");
    // A type that is not JSON stays a 415 (FastAPI answered 422 there: neither reads the body).
    raw("/api/v1/sessions", Some("text/plain"), json!({"user_id": "zhangsan"}).to_string())
        .await
        .assert_error(415, "unsupported_media_type");

    // The seed's documented validation error, in FastAPI's shape.
    let (status, text) = seed_post(&app, "/api/v1/sessions", json!({"user_id": "../invalid"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["detail"][0]["loc"], json!(["body", "user_id"]), "{text}");
    assert_eq!(v["detail"][0]["type"], "value_error");
    assert!(v["detail"][0]["msg"].is_string());
    assert_eq!(v["error"]["code"], "validation_error", "the stable error object stays");
    let (_, text) = seed_post(&app, "/api/v1/chat", json!({"message": "hi"})).await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["detail"][0],
        json!({"loc": ["body", "session_id"], "msg": "missing field `session_id`", "type": "missing"})
    );

    // Every time a seed client reads, in the form Python 3.10's fromisoformat parses.
    let session = app.request(Method::GET, &format!("/api/v1/sessions/{id}"), None, None).await;
    let times = [
        session.body["created_at"].as_str().unwrap().to_string(),
        session.body["last_active_at"].as_str().unwrap().to_string(),
        chat.body["timestamp"].as_str().unwrap().to_string(),
    ];
    for t in &times {
        assert_python_time(t);
    }
    python310_parses(&times);
}

/// When this machine has a Python 3.10 (pyenv's), its `datetime.fromisoformat` reads them
/// all; `assert_python_time` holds the same rule where it has none.
fn python310_parses(times: &[String]) {
    let Some(python) = ["python3.10", "/root/.pyenv/versions/3.10.13/bin/python3.10"]
        .into_iter()
        .find(|p| std::process::Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success()))
    else {
        return;
    };
    let script = "import sys, datetime\nfor t in sys.argv[1:]:\n    assert datetime.datetime.fromisoformat(t).utcoffset().total_seconds() == 0, t\n";
    let out = std::process::Command::new(python).arg("-c").arg(script).args(times).output().unwrap();
    assert!(out.status.success(), "Python 3.10 fromisoformat: {}", String::from_utf8_lossy(&out.stderr));
    // And it would have refused the `Z` form: the check can fail.
    let z = std::process::Command::new(python).arg("-c").arg(script).arg("2026-01-06T11:43:12.893Z").output().unwrap();
    assert!(!z.status.success(), "Python 3.10 refuses Z");
}

//! The OpenAI-compatible API (`/v1`) with the fake CLI: answers whole and streamed, the
//! conversation → session mapping (by `X-Session-Id` and by the messages' prefix), OpenAI's
//! error shape, and that one user can never reach another's session through either mapping.

use awc::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, Backend, TestApp, spawn_app, spawn_app_with};

struct Answer {
    status: StatusCode,
    session: Option<String>,
    content_type: String,
    retry_after: Option<String>,
    body: Value,
    text: String,
}

impl Answer {
    fn content(&self) -> &str {
        self.body["choices"][0]["message"]["content"].as_str().unwrap_or_default()
    }

    /// An error in OpenAI's shape, and only that: `{"error": {"message", "type", "param", "code"}}`.
    #[track_caller]
    fn assert_openai_error(&self, status: u16, kind: &str, code: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.text);
        let error = &self.body["error"];
        assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some(kind), Some(code)), "{}", self.text);
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", self.text);
        assert!(error.as_object().unwrap().contains_key("param"), "{}", self.text);
        let keys: Vec<&String> = self.body.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["error"], "no other top-level field (ours has `detail`): {}", self.text);
    }

    /// The `data:` payloads of a streamed answer, in order (`[DONE]` as a string).
    fn events(&self) -> Vec<Value> {
        self.text
            .split("\n\n")
            .filter_map(|block| block.strip_prefix("data: "))
            .map(|data| serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.to_string())))
            .collect()
    }
}

async fn completion(app: &TestApp, key: &str, session: Option<&str>, body: Value) -> Answer {
    let mut req = app
        .client
        .post(format!("{}/v1/chat/completions", app.address))
        .insert_header(("Authorization", format!("Bearer {key}")));
    if let Some(id) = session {
        req = req.insert_header(("X-Session-Id", id));
    }
    let mut res = req.send_json(&body).await.expect("answered");
    let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (session, content_type, retry_after) = (header("x-session-id"), header("content-type"), header("retry-after"));
    let bytes = res.body().limit(4 * 1024 * 1024).await.expect("body");
    let text = String::from_utf8_lossy(&bytes).to_string();
    Answer {
        status: res.status(),
        session,
        content_type: content_type.unwrap_or_default(),
        retry_after,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        text,
    }
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

fn assistant(text: &str) -> Value {
    json!({"role": "assistant", "content": text})
}

fn ask(messages: Vec<Value>) -> Value {
    json!({"model": "default", "messages": messages})
}

async fn message_count(app: &TestApp, key: &str, id: &str) -> i64 {
    app.get_session(key, id).await.body["message_count"].as_i64().expect("message_count")
}

#[actix_web::test]
async fn a_whole_answer_has_openai_shape_and_names_its_session() {
    let app = spawn_app(Backend::Sqlite).await;
    let key = app.create_user("alice").await;
    let a = completion(&app, &key, None, ask(vec![user("hello")])).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(a.content_type.starts_with("application/json"), "{}", a.content_type);
    let b = &a.body;
    assert_eq!(b["object"], "chat.completion");
    assert!(b["id"].as_str().unwrap().starts_with("chatcmpl-"), "{b}");
    assert!(b["created"].as_i64().unwrap() > 1_700_000_000, "{b}");
    assert_eq!(b["model"], "default");
    assert_eq!(b["choices"].as_array().unwrap().len(), 1);
    assert_eq!(b["choices"][0]["index"], 0);
    assert_eq!(b["choices"][0]["message"]["role"], "assistant");
    assert_eq!(a.content(), "echo: hello");
    assert_eq!(b["choices"][0]["finish_reason"], "stop");
    let usage = &b["usage"];
    let (prompt, completion_tokens) =
        (usage["prompt_tokens"].as_i64().unwrap(), usage["completion_tokens"].as_i64().unwrap());
    assert!(prompt > 0 && completion_tokens > 0, "{usage}");
    assert_eq!(usage["total_tokens"].as_i64().unwrap(), prompt + completion_tokens);

    // The session is an ordinary one of alice's, holding the turn.
    let id = a.session.expect("X-Session-Id");
    let session = app.get_session(&key, &id).await;
    assert_eq!(session.status, 200, "{}", session.text);
    assert_eq!(session.body["metadata"]["source"], "openai");
    assert_eq!(session.body["message_count"], 1);
    assert_eq!(session.body["usage"]["input_tokens"].as_i64().unwrap(), prompt);

    // Tool calls are text annotations, never OpenAI tool_calls.
    let t = completion(&app, &key, Some(&id), ask(vec![user("tool")])).await;
    assert_eq!(t.status, 200, "{}", t.text);
    let line = t.content().lines().find(|l| l.starts_with("[tool: Bash {")).unwrap_or_else(|| panic!("{}", t.text));
    assert!(line.ends_with("}]") && line.contains("\"command\""), "{line}");
    assert!(t.body["choices"][0]["message"].get("tool_calls").is_none(), "{}", t.text);
}

#[actix_web::test]
async fn a_streamed_answer_is_chunks_then_done() {
    let app = spawn_app(Backend::Sqlite).await;
    let key = app.create_user("alice").await;
    let body = json!({"model": "default", "messages": [user("slow 4 20")], "stream": true,
        "stream_options": {"include_usage": true}});
    let a = completion(&app, &key, None, body).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(a.content_type.starts_with("text/event-stream"), "{}", a.content_type);
    assert!(a.session.is_some());
    let events = a.events();
    assert_eq!(events.last().unwrap(), "[DONE]", "{}", a.text);
    let chunks = &events[..events.len() - 1];
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    for c in chunks {
        assert_eq!((c["object"].as_str(), c["id"].as_str()), (Some("chat.completion.chunk"), Some(id)), "{c}");
        assert_eq!(c["model"], "default");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant", "{}", a.text);
    let content: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<Vec<_>>().concat();
    assert_eq!(content, "w0 w1 w2 w3 ");
    let pieces = chunks.iter().filter(|c| c["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(pieces.count() >= 4, "one delta per word: {}", a.text);
    // The finish, then the usage chunk (no choices), then [DONE].
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop", "{}", a.text);
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]), "{}", a.text);
    assert!(usage["usage"]["total_tokens"].as_i64().unwrap() > 0, "{usage}");
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c["usage"].is_null()), "usage only on the last chunk");

    // Without include_usage: no usage chunk, no usage field.
    let plain =
        completion(&app, &key, None, json!({"model": "default", "messages": [user("hi")], "stream": true})).await;
    let events = plain.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert!(events.iter().all(|e| e.get("usage").is_none()), "{}", plain.text);
    assert_eq!(events[events.len() - 2]["choices"][0]["finish_reason"], "stop");
}

#[actix_web::test]
async fn x_session_id_continues_that_session() {
    let app = spawn_app(Backend::Sqlite).await;
    let key = app.create_user("alice").await;
    let first = completion(&app, &key, None, ask(vec![user("remember me")])).await;
    let id = first.session.clone().unwrap();
    // Only the last user message is sent: the session holds the rest.
    let next = completion(&app, &key, Some(&id), ask(vec![user("ignored earlier"), user("history")])).await;
    assert_eq!(next.status, 200, "{}", next.text);
    assert_eq!(next.session.as_deref(), Some(id.as_str()));
    assert_eq!(next.content(), "remember me");
    assert_eq!(message_count(&app, &key, &id).await, 2);
}

async fn prefix_hash_finds_the_conversation(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let first = completion(&app, &alice, None, ask(vec![user("first")])).await;
    let id = first.session.clone().unwrap();
    let a1 = first.content().to_string();

    // The first exchange as prefix: the same session, which remembers it.
    let second = completion(&app, &alice, None, ask(vec![user("first"), assistant(&a1), user("history")])).await;
    assert_eq!(second.status, 200, "{}", second.text);
    assert_eq!(second.session.as_deref(), Some(id.as_str()), "same conversation, same session");
    assert_eq!(second.content(), "first");
    // And the conversation goes on: the second exchange is mapped too.
    let msgs = vec![user("first"), assistant(&a1), user("history"), assistant("first"), user("third")];
    let third = completion(&app, &alice, None, ask(msgs)).await;
    assert_eq!(third.session.as_deref(), Some(id.as_str()));
    assert_eq!(message_count(&app, &alice, &id).await, 3);

    // Another prefix is another conversation.
    let other = completion(&app, &alice, None, ask(vec![user("else"), assistant(&a1), user("history")])).await;
    assert_eq!(other.status, 200, "{}", other.text);
    assert_ne!(other.session.as_deref(), Some(id.as_str()));
    assert_eq!(other.content(), "", "a new session: no earlier user message");
    // A new conversation (no prefix) is always a new session, even with the same first message.
    let again = completion(&app, &alice, None, ask(vec![user("first")])).await;
    assert_ne!(again.session.as_deref(), Some(id.as_str()));
    // Another `user` tag with alice's prefix is another conversation too.
    let tagged =
        json!({"model": "default", "user": "end-user-7", "messages": [user("first"), assistant(&a1), user("x")]});
    assert_ne!(completion(&app, &alice, None, tagged).await.session.as_deref(), Some(id.as_str()));

    // Bob sending alice's exact conversation gets a session of his own, with nothing of hers.
    let bobs = completion(&app, &bob, None, ask(vec![user("first"), assistant(&a1), user("history")])).await;
    assert_eq!(bobs.status, 200, "{}", bobs.text);
    let bob_id = bobs.session.clone().unwrap();
    assert_ne!(bob_id, id);
    assert_eq!(bobs.content(), "");
    assert_eq!(app.get_session(&bob, &bob_id).await.body["user_id"], "bob");
    assert_eq!(message_count(&app, &alice, &id).await, 3, "alice's session got nothing of bob's");
}

#[actix_web::test]
async fn the_prefix_hash_finds_the_conversation_on_sqlite() {
    prefix_hash_finds_the_conversation(Backend::Sqlite).await;
}

#[actix_web::test]
async fn the_prefix_hash_finds_the_conversation_on_postgres() {
    prefix_hash_finds_the_conversation(Backend::Postgres).await;
}

/// The attack: bob knows alice's session id and her conversation. Neither mapping lets him in.
#[actix_web::test]
async fn another_user_cannot_reach_a_session_through_either_mapping() {
    let app = spawn_app(Backend::Sqlite).await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let first = completion(&app, &alice, None, ask(vec![user("secret plan")])).await;
    let id = first.session.clone().unwrap();
    let a1 = first.content().to_string();

    let by_header = completion(&app, &bob, Some(&id), ask(vec![user("history")])).await;
    by_header.assert_openai_error(404, "not_found_error", "session_not_found");
    assert!(!by_header.text.contains("secret"), "{}", by_header.text);
    let streamed = json!({"model": "default", "messages": [user("history")], "stream": true});
    completion(&app, &bob, Some(&id), streamed).await.assert_openai_error(404, "not_found_error", "session_not_found");

    let by_prefix = completion(&app, &bob, None, ask(vec![user("secret plan"), assistant(&a1), user("history")])).await;
    assert_eq!(by_prefix.status, 200, "{}", by_prefix.text);
    assert_ne!(by_prefix.session.as_deref(), Some(id.as_str()), "bob's prefix must not find alice's session");
    assert!(!by_prefix.content().contains("secret"), "{}", by_prefix.text);

    assert_eq!(message_count(&app, &alice, &id).await, 1, "nothing of bob's reached alice's session");
    // Alice herself still continues it both ways.
    let mine = completion(&app, &alice, None, ask(vec![user("secret plan"), assistant(&a1), user("history")])).await;
    assert_eq!((mine.session.as_deref(), mine.content()), (Some(id.as_str()), "secret plan"));
}

#[actix_web::test]
async fn errors_are_in_openai_shape() {
    let app = spawn_app(Backend::Sqlite).await;
    let key = app.create_user("alice").await;
    completion(&app, "cah_nope_nope", None, ask(vec![user("hi")])).await.assert_openai_error(
        401,
        "authentication_error",
        "invalid_api_key",
    );
    let models = app.request(awc::http::Method::GET, "/v1/models", Some("wrong"), None).await;
    assert_eq!(models.status, 401);
    assert_eq!(models.body["error"]["code"], "invalid_api_key");

    let unknown = completion(&app, &key, None, json!({"model": "gpt-4o", "messages": [user("hi")]})).await;
    unknown.assert_openai_error(400, "invalid_request_error", "model_not_found");
    assert_eq!(unknown.body["error"]["param"], "model");
    assert!(unknown.session.is_none(), "no session was made");

    let missing = completion(&app, &key, None, json!({"model": "default"})).await;
    missing.assert_openai_error(400, "invalid_request_error", "validation_error");
    assert_eq!(missing.body["error"]["param"], "messages");
    let last_not_user = completion(&app, &key, None, ask(vec![user("hi"), assistant("x")])).await;
    last_not_user.assert_openai_error(400, "invalid_request_error", "invalid_request");
    assert_eq!(last_not_user.body["error"]["param"], "messages");
    let none = completion(&app, &key, Some("no-such-session"), ask(vec![user("hi")])).await;
    none.assert_openai_error(404, "not_found_error", "session_not_found");

    let route = app.request(awc::http::Method::GET, "/v1/nothing", Some(&key), None).await;
    assert_eq!((route.status.as_u16(), route.body["error"]["type"].as_str()), (404, Some("not_found_error")));
    let method = app.request(awc::http::Method::GET, "/v1/chat/completions", Some(&key), None).await;
    assert_eq!((method.status.as_u16(), method.body["error"]["code"].as_str()), (405, Some("method_not_allowed")));

    // The admin key names the user in `user`; without it, 400.
    let admin = completion(&app, ADMIN_KEY, None, ask(vec![user("hi")])).await;
    admin.assert_openai_error(400, "invalid_request_error", "invalid_request");
    assert_eq!(admin.body["error"]["param"], "user");
    let for_alice = json!({"model": "default", "user": "alice", "messages": [user("hi")]});
    let made = completion(&app, ADMIN_KEY, None, for_alice).await;
    assert_eq!(made.status, 200, "{}", made.text);
    assert_eq!(app.get_session(&key, made.session.as_deref().unwrap()).await.body["user_id"], "alice");
}

#[actix_web::test]
async fn a_busy_session_is_429() {
    let app = spawn_app(Backend::Sqlite).await;
    let key = app.create_user("alice").await;
    let id = completion(&app, &key, None, ask(vec![user("hi")])).await.session.unwrap();
    let res = app
        .client
        .post(format!("{}/v1/chat/completions", app.address))
        .insert_header(("Authorization", format!("Bearer {key}")))
        .insert_header(("X-Session-Id", id.as_str()))
        .send_json(&json!({"model": "default", "messages": [user("slow 20 50")], "stream": true}))
        .await
        .expect("answered");
    assert_eq!(res.status(), 200);
    let mut slow = res;
    // The role chunk, then the first word: the turn is running.
    let mut seen = String::new();
    while !seen.contains("w0") {
        let chunk = futures_util::StreamExt::next(&mut slow).await.expect("a chunk").expect("bytes");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let busy = completion(&app, &key, Some(&id), ask(vec![user("me too")])).await;
    busy.assert_openai_error(429, "rate_limit_error", "session_busy");
    assert!(busy.retry_after.is_some(), "Retry-After: {}", busy.text);
    let rest = slow.body().limit(1024 * 1024).await.expect("rest");
    assert!(String::from_utf8_lossy(&rest).ends_with("data: [DONE]\n\n"));
}

#[actix_web::test]
async fn models_and_system_prompts_follow_the_settings() {
    let app = spawn_app(Backend::Sqlite).await;
    let key = app.create_user("alice").await;
    let models = app.request(awc::http::Method::GET, "/v1/models", Some(&key), None).await;
    assert_eq!(models.status, 200, "{}", models.text);
    assert_eq!(models.body["object"], "list");
    let ids: Vec<&str> = models.body["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["default", "sonnet", "opus", "haiku"]);
    assert_eq!(models.body["data"][0]["object"], "model");
    let one = app.request(awc::http::Method::GET, "/v1/models/opus", Some(&key), None).await;
    assert_eq!((one.status.as_u16(), one.body["id"].as_str()), (200, Some("opus")));
    let missing = app.request(awc::http::Method::GET, "/v1/models/gpt-4", Some(&key), None).await;
    assert_eq!((missing.status.as_u16(), missing.body["error"]["code"].as_str()), (404, Some("model_not_found")));

    // A model and a system message shape the new session.
    let body = json!({"model": "opus", "messages": [{"role": "system", "content": "Be brief."}, user("hi")]});
    let a = completion(&app, &key, None, body).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["model"], "opus");
    let options = app.get_session(&key, a.session.as_deref().unwrap()).await.body["options"].clone();
    assert_eq!(options, json!({"model": "opus", "append_system_prompt": "Be brief."}));

    // Where requests may not set them, the model must be the default and the system message is ignored.
    let strict = spawn_app_with(Backend::Sqlite, |s| {
        s.defaults.model = Some("claude-fixed".into());
        s.session.overridable = vec!["max_turns".into()];
    })
    .await;
    let key = strict.create_user("alice").await;
    let models = strict.request(awc::http::Method::GET, "/v1/models", Some(&key), None).await;
    assert_eq!(models.body["data"].as_array().unwrap().len(), 1, "{}", models.text);
    assert_eq!(models.body["data"][0]["id"], "claude-fixed");
    let refused = completion(&strict, &key, None, json!({"model": "opus", "messages": [user("hi")]})).await;
    refused.assert_openai_error(400, "invalid_request_error", "model_not_found");
    let body = json!({"model": "claude-fixed", "messages": [{"role": "system", "content": "Be brief."}, user("hi")]});
    let a = completion(&strict, &key, None, body).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let options = strict.get_session(&key, a.session.as_deref().unwrap()).await.body["options"].clone();
    assert_eq!(options, json!({}), "the system message was ignored");
}

/// The official `openai` Python package (pinned, `scripts/install-openai-client`) against the
/// service: a whole answer, a streamed one on the same session, the model list, and errors
/// raised as its own exception classes.
#[actix_web::test]
async fn the_official_openai_python_client_reads_answers_streams_and_errors() {
    let python = std::env::var("OPENAI_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".ci/.venv-openai/bin/python"));
    assert!(
        python.exists(),
        "the openai package is missing at {}: run scripts/install-openai-client (scripts/test does)",
        python.display()
    );
    let app = spawn_app(Backend::Sqlite).await;
    let key = app.create_user("alice").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/openai/client.py");
    let (address, client_key) = (app.address.clone(), key.clone());
    // The client blocks; the service runs on this thread's runtime meanwhile.
    let out = actix_web::rt::task::spawn_blocking(move || {
        std::process::Command::new(python).arg(script).arg(address).arg(client_key).output()
    })
    .await
    .expect("joined")
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));

    let whole = &seen["whole"];
    assert_eq!(whole["object"], "chat.completion", "{seen}");
    assert_eq!(whole["content"], "echo: hello");
    assert_eq!(whole["finish_reason"], "stop");
    assert!(whole["total_tokens"].as_i64().unwrap() > 0, "{seen}");
    let session = whole["session"].as_str().expect("X-Session-Id read by the client");

    let stream = &seen["stream"];
    let pieces: Vec<&str> = stream["pieces"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(pieces.len() >= 2, "streamed in pieces: {seen}");
    assert_eq!(pieces.concat(), "w0 w1 w2 w3 ", "{seen}");
    assert_eq!(stream["finish_reason"], "stop");
    assert!(stream["total_tokens"].as_i64().unwrap() > 0, "the usage chunk: {seen}");
    // Both answers went to one session: the header continued it.
    assert_eq!(app.get_session(&key, session).await.body["message_count"], 2);

    assert!(seen["models"].as_array().unwrap().iter().any(|m| m == "default"), "{seen}");
    let errors = &seen["errors"];
    assert_eq!(errors["wrong_key"]["class"], "AuthenticationError", "{seen}");
    assert_eq!(errors["wrong_key"]["status"], 401);
    assert_eq!(errors["wrong_key"]["code"], "invalid_api_key");
    assert_eq!(errors["unknown_model"]["class"], "BadRequestError", "{seen}");
    assert_eq!(errors["unknown_model"]["code"], "model_not_found");
    assert_eq!(errors["unknown_model"]["param"], "model");
}

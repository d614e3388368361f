//! The OpenAPI document against the service's real answers: one scenario calls every
//! operation the document lists (successes and errors) and checks each answer against it —
//! the status is documented for the operation, the content type is one it lists, JSON bodies
//! and every SSE frame validate against the schema (with undocumented fields refused), and an
//! error's `code` is named in that status's description. At the end, every operation of the
//! document must have been called.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::time::Duration;

use awc::http::{Method, StatusCode};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, Backend, TestApp, eventually, parse_sse, spawn_app_with};

/// One answer, as the checks need it.
struct Answer {
    status: StatusCode,
    content_type: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn frames(&self) -> Vec<Value> {
        parse_sse(&String::from_utf8_lossy(&self.body)).into_iter().map(|(_, f)| f).collect()
    }

    /// The SSE events as sent: `{"id", "data"}` (and `event` if one were sent), comments left out.
    fn events(&self) -> Vec<Value> {
        let text = String::from_utf8_lossy(&self.body);
        let mut events = Vec::new();
        for block in text.split("\n\n") {
            let mut event = serde_json::Map::new();
            for line in block.lines().filter(|l| !l.starts_with(':')) {
                if let Some((field, value)) = line.split_once(": ") {
                    event.insert(field.to_string(), Value::String(value.to_string()));
                }
            }
            if !event.is_empty() {
                events.push(Value::Object(event));
            }
        }
        events
    }
}

struct Spec {
    doc: Value,
    /// `components`, with every object schema closed to undocumented properties.
    strict_components: Value,
    called: RefCell<BTreeSet<(String, String)>>,
}

impl Spec {
    fn new(doc: Value) -> Self {
        let mut strict_components = doc["components"].clone();
        close_objects(&mut strict_components);
        Spec { doc, strict_components, called: RefCell::new(BTreeSet::new()) }
    }

    /// The document's template for a concrete path: same segments, `{param}` matching any.
    fn template(&self, path: &str) -> String {
        let segments: Vec<&str> = path.split('/').collect();
        let mut best: Option<(usize, &String)> = None;
        for template in self.doc["paths"].as_object().expect("paths").keys() {
            let parts: Vec<&str> = template.split('/').collect();
            if parts.len() != segments.len() {
                continue;
            }
            let fits = parts.iter().zip(&segments).all(|(t, s)| t.starts_with('{') || t == s);
            let literal = parts.iter().filter(|t| !t.starts_with('{')).count();
            if fits && best.is_none_or(|(n, _)| literal > n) {
                best = Some((literal, template));
            }
        }
        best.unwrap_or_else(|| panic!("{path} is not in the document")).1.clone()
    }

    #[track_caller]
    fn check(&self, method: &Method, path: &str, answer: &Answer) {
        let path = path.split('?').next().unwrap();
        let template = self.template(path);
        let verb = method.as_str().to_ascii_lowercase();
        let operation = &self.doc["paths"][&template][&verb];
        assert!(operation.is_object(), "{method} {template} is not in the document");
        let status = answer.status.as_u16().to_string();
        let documented = &operation["responses"][&status];
        assert!(documented.is_object(), "{method} {template} answered {status}, which the document does not list");
        let what = format!("{method} {path} → {status}");

        match documented["content"].as_object() {
            None => assert!(answer.body.is_empty(), "{what}: the document says no body"),
            Some(content) => {
                let media = answer.content_type.split(';').next().unwrap().trim().to_string();
                // The exact type first, then a range such as `*/*`.
                let (_, listed) = content
                    .iter()
                    .find(|(listed, _)| listed.split(';').next().unwrap().trim() == media)
                    .or_else(|| content.iter().find(|(listed, _)| media_matches(listed, &media)))
                    .unwrap_or_else(|| panic!("{what}: content type {media} is not one of {:?}", content.keys()));
                let schema = &listed["schema"];
                match media.as_str() {
                    "application/json" => self.validate(schema, &answer.json(), &what),
                    "text/event-stream" => {
                        // Each event as sent ({id, data}), then its data against `contentSchema`.
                        let events = answer.events();
                        assert!(!events.is_empty(), "{what}: no events");
                        let event_schema = self.resolve(schema);
                        let data_schema = &event_schema["properties"]["data"]["contentSchema"];
                        assert!(data_schema.is_object(), "{what}: the event's data has no contentSchema");
                        for event in &events {
                            self.validate(schema, event, &what);
                            let data = serde_json::from_str(event["data"].as_str().unwrap()).expect("data is JSON");
                            self.validate(data_schema, &data, &what);
                        }
                    }
                    _ => {}
                }
            }
        }
        if answer.status.as_u16() >= 400 {
            let code = answer.json()["error"]["code"].as_str().unwrap_or_default().to_string();
            let description = documented["description"].as_str().unwrap_or_default();
            assert!(description.contains(&format!("`{code}`")), "{what}: `{code}` is not named in {description:?}");
        }
        self.called.borrow_mut().insert((verb, template));
    }

    /// A schema, or the component its `$ref` names.
    fn resolve<'s>(&'s self, schema: &'s Value) -> &'s Value {
        match schema["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/schemas/")) {
            Some(name) => &self.doc["components"]["schemas"][name],
            None => schema,
        }
    }

    #[track_caller]
    fn validate(&self, schema: &Value, instance: &Value, what: &str) {
        let root = json!({ "allOf": [schema], "components": self.strict_components });
        let validator = jsonschema::draft202012::new(&root).expect("the document's schemas compile");
        let errors: Vec<String> =
            validator.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(
            errors.is_empty(),
            "{what}: the answer does not match the document:\n{}\n{instance:#}",
            errors.join("\n")
        );
    }

    fn assert_every_operation_called(&self) {
        let called = self.called.borrow();
        let mut missing = Vec::new();
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            for verb in item.as_object().unwrap().keys() {
                if !called.contains(&(verb.clone(), path.clone())) {
                    missing.push(format!("{verb} {path}"));
                }
            }
        }
        assert!(missing.is_empty(), "operations never called: {missing:?}");
    }
}

fn media_matches(listed: &str, actual: &str) -> bool {
    let listed = listed.split(';').next().unwrap().trim();
    listed == actual || listed == "*/*" || listed.strip_suffix("/*").is_some_and(|kind| actual.starts_with(kind))
}

/// Refuses properties the document does not name (it lists every field we send).
fn close_objects(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(close_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// Sends one request and checks its answer. SSE answers are read until `stop` holds for a frame
/// (or the stream ends).
struct Client<'a> {
    app: &'a TestApp,
    spec: &'a Spec,
}

enum Body {
    None,
    Json(Value),
    Raw(&'static str, Vec<u8>),
}

impl Client<'_> {
    #[track_caller]
    fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Body,
    ) -> impl std::future::Future<Output = Answer> + '_ {
        self.call_headers(method, path, key, body, &[])
    }

    #[track_caller]
    fn call_headers(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Body,
        headers: &[(&'static str, String)],
    ) -> impl std::future::Future<Output = Answer> + '_ {
        let caller = std::panic::Location::caller();
        let mut req = self.app.client.request(method.clone(), format!("{}{path}", self.app.address));
        if let Some(key) = key {
            req = req.insert_header(("Authorization", format!("Bearer {key}")));
        }
        for (name, value) in headers {
            req = req.insert_header((*name, value.clone()));
        }
        let path = path.to_string();
        async move {
            let res = match body {
                Body::None => req.send().await,
                Body::Json(v) => req.send_json(&v).await,
                Body::Raw(ct, bytes) => req.insert_header(("Content-Type", ct)).send_body(bytes).await,
            };
            let mut res = res.expect("answered");
            let content_type =
                res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            let mut body = Vec::new();
            if content_type.starts_with("text/event-stream") {
                // Read frames until the turn ends; `/events` stays open after it.
                while let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_secs(30), res.next()).await {
                    body.extend_from_slice(&chunk);
                    let text = String::from_utf8_lossy(&body);
                    if parse_sse(&text).iter().any(|(_, f)| f["type"] == "done" || f["type"] == "error") {
                        break;
                    }
                }
            } else {
                body = res.body().limit(16 * 1024 * 1024).await.expect("body").to_vec();
            }
            let answer = Answer { status: res.status(), content_type, body };
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.spec.check(&method, &path, &answer)));
            if let Err(panic) = result {
                eprintln!("(request made at {caller})");
                std::panic::resume_unwind(panic);
            }
            answer
        }
    }
}

#[track_caller]
fn expect(answer: &Answer, status: u16) -> Value {
    assert_eq!(answer.status.as_u16(), status, "{}", String::from_utf8_lossy(&answer.body));
    answer.json()
}

#[actix_web::test]
async fn every_operation_answers_as_the_openapi_document_says() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        // Tools ask first, so the permission endpoints have something to answer.
        s.defaults.permission_mode = claude_agent_http::settings::PermissionMode::Default;
    })
    .await;
    let doc = app.request(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.body["openapi"], "3.1.0");
    let spec = Spec::new(doc.body);
    let api = Client { app: &app, spec: &spec };
    let admin = Some(ADMIN_KEY);
    use Body::{Json, None as Empty, Raw};

    // Service.
    expect(&api.call(Method::GET, "/openapi.json", None, Empty).await, 200);
    expect(&api.call(Method::GET, "/", None, Empty).await, 200);
    let page = api.call_headers(Method::GET, "/", None, Empty, &[("Accept", "text/html".into())]).await;
    assert!(page.content_type.starts_with("text/html"));
    expect(&api.call(Method::GET, "/health", None, Empty).await, 200);
    let metrics = api.call(Method::GET, "/metrics", None, Empty).await;
    assert!(String::from_utf8_lossy(&metrics.body).contains("# TYPE"));

    // Users and keys.
    let users = "/api/v1/users";
    let alice = expect(&api.call(Method::POST, users, admin, Json(json!({"user_id": "alice"}))).await, 201);
    let key = alice["api_key"].as_str().unwrap().to_string();
    let user = Some(key.as_str());
    expect(&api.call(Method::POST, users, admin, Json(json!({"user_id": "alice"}))).await, 409);
    expect(&api.call(Method::POST, users, admin, Json(json!({"user_id": "../x"}))).await, 422);
    expect(&api.call(Method::POST, users, None, Json(json!({"user_id": "bob"}))).await, 401);
    expect(&api.call(Method::POST, users, admin, Raw("application/json", b"{not json".to_vec())).await, 400);
    expect(&api.call(Method::POST, users, admin, Raw("text/plain", b"alice".to_vec())).await, 415);
    expect(&api.call(Method::GET, users, admin, Empty).await, 200);
    expect(&api.call(Method::GET, users, user, Empty).await, 403);
    let second = expect(&api.call(Method::POST, "/api/v1/users/alice/keys", admin, Empty).await, 201);
    expect(&api.call(Method::POST, "/api/v1/users/nobody/keys", admin, Empty).await, 404);
    let revoke = format!("/api/v1/users/alice/keys/{}", second["key_id"].as_str().unwrap());
    expect(&api.call(Method::DELETE, &revoke, admin, Empty).await, 204);
    expect(&api.call(Method::DELETE, &revoke, admin, Empty).await, 404);
    assert_eq!(expect(&api.call(Method::GET, "/api/v1/me", user, Empty).await, 200)["role"], "user");
    assert_eq!(expect(&api.call(Method::GET, "/api/v1/me", admin, Empty).await, 200)["role"], "admin");
    let creds = "/api/v1/users/alice/credentials";
    expect(&api.call(Method::PUT, creds, user, Json(json!({"anthropic_api_key": "sk-x"}))).await, 200);
    expect(&api.call(Method::PUT, creds, user, Json(json!({"env": {"PATH": "/x"}}))).await, 422);
    expect(
        &api.call(Method::PUT, "/api/v1/users/bob/credentials", user, Json(json!({"anthropic_api_key": "x"}))).await,
        403,
    );
    expect(
        &api.call(Method::PUT, "/api/v1/users/nobody/credentials", admin, Json(json!({"anthropic_api_key": "x"})))
            .await,
        404,
    );
    assert_eq!(expect(&api.call(Method::GET, creds, user, Empty).await, 200)["set"], true);
    expect(&api.call(Method::GET, "/api/v1/users/bob/credentials", user, Empty).await, 403);
    expect(&api.call(Method::GET, "/api/v1/users/nobody/credentials", admin, Empty).await, 404);
    expect(&api.call(Method::DELETE, creds, user, Empty).await, 204);
    expect(&api.call(Method::DELETE, "/api/v1/users/bob/credentials", user, Empty).await, 403);
    expect(&api.call(Method::DELETE, "/api/v1/users/nobody/credentials", admin, Empty).await, 404);

    // Sessions.
    let sessions = "/api/v1/sessions";
    let session = expect(&api.call(Method::POST, sessions, user, Json(json!({"metadata": {"k": 1}}))).await, 201);
    let id = session["session_id"].as_str().unwrap().to_string();
    let s = format!("{sessions}/{id}");
    expect(&api.call(Method::POST, sessions, user, Json(json!({"options": {"mcp_servers": {}}}))).await, 403);
    expect(&api.call(Method::POST, sessions, user, Json(json!({"subdir": "../out"}))).await, 400);
    assert_eq!(expect(&api.call(Method::GET, sessions, user, Empty).await, 200)[0], id.as_str());
    assert_eq!(
        expect(&api.call(Method::GET, &format!("{sessions}?detail=true"), user, Empty).await, 200)[0]["session_id"],
        id.as_str()
    );
    expect(&api.call(Method::GET, &format!("{sessions}?status=asleep"), user, Empty).await, 422);
    // An empty list must fit the schema too (a oneOf of two array types would match it twice).
    let none =
        expect(&api.call(Method::GET, &format!("{sessions}?detail=true&status=expired"), user, Empty).await, 200);
    assert_eq!(none, json!([]));
    expect(&api.call(Method::GET, &s, user, Empty).await, 200);
    expect(&api.call(Method::GET, &format!("{sessions}/no-such-session"), user, Empty).await, 404);
    app.wait_active(&key, &id).await;

    // Turns: synchronous, streamed, and started then followed.
    let chat = expect(
        &api.call(Method::POST, "/api/v1/chat", user, Json(json!({"session_id": id, "message": "hello"}))).await,
        200,
    );
    assert_eq!(chat["text"], "echo: hello");
    expect(&api.call(Method::POST, "/api/v1/chat", user, Json(json!({"session_id": id, "message": " "}))).await, 422);
    expect(
        &api.call(Method::POST, "/api/v1/chat", user, Json(json!({"session_id": "gone", "message": "x"}))).await,
        404,
    );
    let stream =
        api.call(Method::POST, "/api/v1/chat/stream", user, Json(json!({"session_id": id, "message": "again"}))).await;
    assert_eq!(stream.frames().last().unwrap()["type"], "done");
    expect(
        &api.call(Method::POST, "/api/v1/chat/stream", user, Json(json!({"session_id": "gone", "message": "x"}))).await,
        404,
    );
    expect(&api.call(Method::GET, &format!("{s}/agent"), user, Empty).await, 200);
    // Live settings and context usage.
    let patched = expect(&api.call(Method::PATCH, &s, user, Json(json!({"model": "claude-live-1"}))).await, 200);
    assert_eq!(patched["options"]["model"], "claude-live-1");
    let bypass = Json(json!({"permission_mode": "bypassPermissions"}));
    expect(&api.call(Method::PATCH, &s, user, bypass).await, 422);
    expect(&api.call(Method::PATCH, &s, user, Json(json!({"mcp_servers": {}}))).await, 403);
    expect(&api.call(Method::PATCH, "/api/v1/sessions/gone", user, Json(json!({"model": "m"}))).await, 404);
    let context = expect(&api.call(Method::GET, &format!("{s}/context"), user, Empty).await, 200);
    assert!(context["window_tokens"].as_i64().unwrap() > 0);
    expect(&api.call(Method::GET, "/api/v1/sessions/gone/context", user, Empty).await, 404);
    let started =
        expect(&api.call(Method::POST, &format!("{s}/messages"), user, Json(json!({"message": "tool"}))).await, 202);
    let first = started["first_event_id"].as_i64().unwrap();
    // The turn waits for an answer to its permission request: the session is busy meanwhile.
    let asked = app.open_events(&format!("{s}/events?last_event_id={}", first - 1), user, None).await;
    let request = wait_for_request(asked).await;
    expect(&api.call(Method::POST, &format!("{s}/messages"), user, Json(json!({"message": "more"}))).await, 429);
    expect(&api.call(Method::PATCH, &s, user, Json(json!({"permission_mode": "plan"}))).await, 429);
    let open = expect(&api.call(Method::GET, &format!("{s}/permissions"), user, Empty).await, 200);
    assert_eq!(open[0]["request_id"], request.as_str());
    expect(
        &api.call(Method::POST, &format!("{s}/permissions/nope"), user, Json(json!({"behavior": "allow"}))).await,
        404,
    );
    expect(
        &api.call(Method::POST, &format!("{s}/permissions/{request}"), user, Json(json!({"behavior": "maybe"}))).await,
        422,
    );
    expect(
        &api.call(Method::POST, &format!("{s}/permissions/{request}"), user, Json(json!({"behavior": "allow"}))).await,
        200,
    );
    let followed = api
        .call_headers(Method::GET, &format!("{s}/events"), user, Empty, &[("Last-Event-ID", (first - 1).to_string())])
        .await;
    let types: Vec<Value> = followed.frames().iter().map(|f| f["type"].clone()).collect();
    assert!(types.contains(&json!("permission_request")) && types.contains(&json!("tool_result")), "{types:?}");
    expect(
        &api.call_headers(Method::GET, &format!("{s}/events"), user, Empty, &[("Last-Event-ID", "x".into())]).await,
        422,
    );

    expect(&api.call(Method::POST, &format!("{s}/interrupt"), user, Empty).await, 409);
    let slow = expect(
        &api.call(Method::POST, &format!("{s}/messages"), user, Json(json!({"message": "slow 100 100"}))).await,
        202,
    );
    // Steered into it, and queued after it: listed, one cancelled, the rest with the interrupt.
    let later = Json(json!({"message": "later", "mode": "queue"}));
    let queued = expect(&api.call(Method::POST, &format!("{s}/messages"), user, later).await, 202);
    let then = Json(json!({"message": "then", "mode": "queue"}));
    expect(&api.call(Method::POST, &format!("{s}/messages"), user, then).await, 202);
    let steer = Json(json!({"message": "this way", "mode": "steer"}));
    assert_eq!(expect(&api.call(Method::POST, &format!("{s}/messages"), user, steer).await, 202)["status"], "steered");
    tokio::time::sleep(Duration::from_millis(300)).await; // a word of the turn: its tool boundary
    let mode = Json(json!({"message": "x", "mode": "sideways"}));
    expect(&api.call(Method::POST, &format!("{s}/messages"), user, mode).await, 422);
    let queue = expect(&api.call(Method::GET, &format!("{s}/queue"), user, Empty).await, 200);
    assert_eq!(queue.as_array().unwrap().len(), 2, "{queue}");
    let cancel = format!("{s}/queue/{}", queued["message_id"].as_str().unwrap());
    expect(&api.call(Method::DELETE, &cancel, user, Empty).await, 204);
    expect(&api.call(Method::DELETE, &cancel, user, Empty).await, 404);
    expect(&api.call(Method::GET, "/api/v1/sessions/gone/queue", user, Empty).await, 404);
    let stopped = expect(&api.call(Method::POST, &format!("{s}/interrupt?cancel_queue=true"), user, Empty).await, 202);
    assert_eq!(stopped["cancelled"].as_array().unwrap().len(), 1, "{stopped}");
    let first = slow["first_event_id"].as_i64().unwrap();
    let followed = api
        .call_headers(Method::GET, &format!("{s}/events"), user, Empty, &[("Last-Event-ID", (first - 1).to_string())])
        .await;
    let types: Vec<Value> = followed.frames().iter().map(|f| f["type"].clone()).collect();
    assert!(types.contains(&json!("message_accepted")) && types.contains(&json!("message_dropped")), "{types:?}");
    let messages = expect(&api.call(Method::GET, &format!("{s}/messages"), user, Empty).await, 200);
    assert!(messages.as_array().unwrap().len() >= 6, "{messages}");
    expect(&api.call(Method::GET, &format!("{s}/messages?limit=0"), user, Empty).await, 422);

    // Files.
    let file = format!("{s}/files?path=notes/a.txt");
    expect(&api.call(Method::PUT, &file, user, Raw("text/plain", b"hello".to_vec())).await, 201);
    expect(
        &api.call(Method::PUT, &format!("{s}/files?path=../a.txt"), user, Raw("text/plain", b"x".to_vec())).await,
        400,
    );
    let listing = expect(&api.call(Method::GET, &format!("{s}/files?path=notes"), user, Empty).await, 200);
    assert_eq!(listing[0]["name"], "a.txt");
    assert_eq!(api.call(Method::GET, &file, user, Empty).await.body, b"hello");
    expect(&api.call(Method::GET, &format!("{s}/files?path=missing"), user, Empty).await, 404);
    expect(&api.call(Method::DELETE, &file, user, Empty).await, 204);
    expect(&api.call(Method::DELETE, &file, user, Empty).await, 404);

    // Budgets: the admin sets them, the user reads their own; at a limit a turn is 402.
    let budget = "/api/v1/users/alice/budget";
    expect(&api.call(Method::PUT, budget, user, Json(json!({"daily_usd": 1.0}))).await, 403);
    expect(&api.call(Method::PUT, budget, admin, Json(json!({"daily_usd": -1.0}))).await, 422);
    expect(&api.call(Method::PUT, "/api/v1/users/nobody/budget", admin, Json(json!({"daily_usd": 1.0}))).await, 404);
    expect(&api.call(Method::PUT, budget, admin, Json(json!({"daily_usd": 0.0}))).await, 200);
    assert_eq!(expect(&api.call(Method::GET, budget, user, Empty).await, 200)["daily_usd"], 0.0);
    expect(&api.call(Method::GET, "/api/v1/users/bob/budget", user, Empty).await, 403);
    expect(&api.call(Method::GET, "/api/v1/users/nobody/budget", admin, Empty).await, 404);
    let refused = api.call(Method::POST, "/api/v1/chat", user, Json(json!({"session_id": id, "message": "x"}))).await;
    assert_eq!(expect(&refused, 402)["error"]["budget"]["limit"], "daily");
    expect(&api.call(Method::PUT, budget, admin, Json(json!({}))).await, 200);
    let by_session = expect(&api.call(Method::GET, "/api/v1/usage?group_by=session", user, Empty).await, 200);
    assert_eq!(by_session[0]["session_id"], id.as_str());
    let csv = api.call_headers(Method::GET, "/api/v1/usage", admin, Empty, &[("Accept", "text/csv".into())]).await;
    assert!(csv.content_type.starts_with("text/csv"), "{}", csv.content_type);
    expect(&api.call(Method::GET, "/api/v1/usage?user_id=bob", user, Empty).await, 403);
    expect(&api.call(Method::GET, "/api/v1/usage?group_by=week", admin, Empty).await, 422);
    expect(&api.call(Method::GET, "/api/v1/me/usage", user, Empty).await, 200);
    expect(&api.call(Method::GET, "/api/v1/me/usage", admin, Empty).await, 403);

    // Webhooks (a public target, never contacted: it subscribes to nothing that happens here).
    let hooks = "/api/v1/webhooks";
    let body = json!({"url": "https://1.2.3.4/h", "events": ["budget.reached"]});
    let hook = expect(&api.call(Method::POST, hooks, user, Json(body)).await, 201);
    let h = format!("{hooks}/{}", hook["webhook_id"].as_str().unwrap());
    let refused = json!({"url": "http://127.0.0.1/h", "events": ["turn.completed"]});
    expect(&api.call(Method::POST, hooks, user, Json(refused)).await, 400);
    expect(&api.call(Method::POST, hooks, user, Json(json!({"url": "https://1.2.3.4/h", "events": []}))).await, 422);
    let foreign = json!({"url": "https://1.2.3.4/h", "events": ["turn.failed"], "user_id": "bob"});
    expect(&api.call(Method::POST, hooks, user, Json(foreign)).await, 403);
    let nobody = json!({"url": "https://1.2.3.4/h", "events": ["turn.failed"], "user_id": "nobody"});
    expect(&api.call(Method::POST, hooks, admin, Json(nobody)).await, 404);
    expect(&api.call(Method::GET, hooks, user, Empty).await, 200);
    expect(&api.call(Method::GET, &format!("{hooks}?user_id=bob"), user, Empty).await, 403);
    expect(&api.call(Method::GET, &h, user, Empty).await, 200);
    expect(&api.call(Method::GET, &format!("{hooks}/wh_none"), user, Empty).await, 404);
    expect(&api.call(Method::GET, &format!("{h}/deliveries"), user, Empty).await, 200);
    expect(&api.call(Method::GET, &format!("{h}/deliveries?limit=0"), user, Empty).await, 422);
    expect(&api.call(Method::GET, &format!("{hooks}/wh_none/deliveries"), user, Empty).await, 404);
    expect(&api.call(Method::DELETE, &h, user, Empty).await, 204);
    expect(&api.call(Method::DELETE, &h, user, Empty).await, 404);

    // The OpenAI-compatible API (its stream is checked in tests/api/openai.rs: `[DONE]` is not JSON).
    expect(&api.call(Method::GET, "/v1/models", user, Empty).await, 200);
    expect(&api.call(Method::GET, "/v1/models/default", user, Empty).await, 200);
    expect(&api.call(Method::GET, "/v1/models/gpt-4", user, Empty).await, 404);
    let completions = "/v1/chat/completions";
    let chat = json!({"model": "default", "messages": [{"role": "user", "content": "hi"}]});
    expect(&api.call(Method::POST, completions, user, Json(chat.clone())).await, 200);
    let unknown = json!({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]});
    expect(&api.call(Method::POST, completions, user, Json(unknown)).await, 400);
    let foreign = [("X-Session-Id", "nope".to_string())];
    expect(&api.call_headers(Method::POST, completions, user, Json(chat), &foreign).await, 404);

    // Fork and rewind (the rewinds that change something on the fork, so this session keeps its turns).
    let history = expect(&api.call(Method::GET, &format!("{s}/messages"), user, Empty).await, 200);
    let at = json!({"at_message_id": history[0]["id"]});
    let forked = expect(&api.call(Method::POST, &format!("{s}/fork"), user, Json(at)).await, 201);
    assert_eq!(forked["message_count"], 1);
    let f = format!("{sessions}/{}", forked["session_id"].as_str().unwrap());
    expect(&api.call(Method::POST, &format!("{s}/fork"), user, Json(json!({"at_message_id": 999_999}))).await, 404);
    expect(&api.call(Method::POST, &format!("{s}/fork"), user, Json(json!({"copy_files": true}))).await, 422);
    expect(&api.call(Method::POST, &format!("{s}/fork"), user, Json(json!({"subdir": "/etc"}))).await, 400);
    expect(&api.call(Method::POST, &format!("{sessions}/gone/fork"), user, Empty).await, 404);
    let dry = Json(json!({"message_id": history[0]["id"], "dry_run": true}));
    let rewound = expect(&api.call(Method::POST, &format!("{s}/rewind"), user, dry).await, 200);
    assert_eq!(rewound["dry_run"], true);
    let answer = Json(json!({"message_id": history[1]["id"]}));
    expect(&api.call(Method::POST, &format!("{s}/rewind"), user, answer).await, 422);
    expect(&api.call(Method::POST, &format!("{s}/rewind"), user, Json(json!({"message_id": 999_999}))).await, 404);
    let forked_history = expect(&api.call(Method::GET, &format!("{f}/messages"), user, Empty).await, 200);
    let first = Json(json!({"message_id": forked_history[0]["id"]}));
    expect(&api.call(Method::POST, &format!("{f}/rewind"), user, first).await, 200);
    // Its CLI stops for the rewind: nothing of it is left running for what follows.
    let fork_id = forked["session_id"].as_str().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async { app.get_session(&key, fork_id).await.body["status"] == "idle" })
            .await
    );

    // Close, resume, purge; then the user goes.
    expect(&api.call(Method::DELETE, &format!("{s}?purge=maybe"), user, Empty).await, 422);
    expect(&api.call(Method::DELETE, &s, user, Empty).await, 204);
    expect(&api.call(Method::POST, "/api/v1/chat", user, Json(json!({"session_id": id, "message": "x"}))).await, 409);
    expect(&api.call(Method::POST, &format!("{s}/resume"), user, Empty).await, 200);
    expect(&api.call(Method::POST, &format!("{sessions}/nope/resume"), user, Empty).await, 404);
    expect(&api.call(Method::DELETE, &format!("{s}?purge=true"), user, Empty).await, 204);
    expect(&api.call(Method::DELETE, "/api/v1/users/alice", admin, Empty).await, 204);
    expect(&api.call(Method::DELETE, "/api/v1/users/alice", admin, Empty).await, 404);
    expect(&api.call(Method::GET, "/api/v1/me", user, Empty).await, 401);

    spec.assert_every_operation_called();
}

/// The request id of the first `permission_request` on a follower.
async fn wait_for_request(mut follower: crate::helpers::SseReader) -> String {
    loop {
        let (_, frame) = follower.next_frame().await.expect("a permission request");
        if frame["type"] == "permission_request" {
            return frame["request_id"].as_str().unwrap().to_string();
        }
    }
}

#[actix_web::test]
async fn docs_render_from_the_service_itself() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let client = awc::Client::builder().disable_redirects().finish();
    let res = client.get(format!("{}/docs", app.address)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(res.headers().get("location").unwrap(), "/docs/");
    let page = app.request(Method::GET, "/docs/", None, None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text.contains("swagger-ui-bundle.js"), "{}", page.text);
    // Every file the page loads comes from the service (no CDN), and it points at our document.
    for asset in ["swagger-ui-bundle.js", "swagger-ui.css", "swagger-initializer.js"] {
        let res = app.request(Method::GET, &format!("/docs/{asset}"), None, None).await;
        assert_eq!(res.status, StatusCode::OK, "{asset}");
        assert!(res.text.len() > 100, "{asset}");
        if asset == "swagger-initializer.js" {
            assert!(res.text.contains("/openapi.json"), "{}", res.text);
        }
    }
    assert!(!page.text.contains("http://") && !page.text.contains("https://"), "the page loads nothing from outside");
}

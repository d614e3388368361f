//! Test harness: the app on port 0 with its own folder and a fresh database (SQLite file, or a
//! PostgreSQL schema on 127.0.0.1:5432), plus one helper per endpoint.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use awc::http::{Method, StatusCode, header::HeaderMap};
use claude_agent_http::settings::{AuthMode, StorageKind};
use claude_agent_http::{Application, Settings};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use serde_json::{Value, json};

pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    Memory,
}

/// The PostgreSQL the tests use (`PG_TEST_URL`, default the local server's `test` database).
pub fn pg_base_url() -> String {
    std::env::var("PG_TEST_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

/// Runs one SQL batch on the test server's base database (admin work: schemas, databases).
pub async fn pg_admin(sql: &str) {
    let mut conn = AsyncPgConnection::establish(&pg_base_url())
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} is required for the tests: {e}", pg_base_url()));
    conn.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A URL of the test server whose connections use `schema` first.
pub fn pg_url_with_schema(schema: &str) -> String {
    let base = pg_base_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-csearch_path%3D{schema}")
}

/// A URL of another database on the test server.
pub fn pg_url_for_database(db: &str) -> String {
    let base = pg_base_url();
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h.to_string(), format!("?{q}")),
        None => (base.clone(), String::new()),
    };
    let root = &head[..head.rfind('/').expect("PG_TEST_URL names a database")];
    format!("{root}/{db}{query}")
}

/// Settings for a test app living in `dir`.
pub fn test_settings(dir: &Path) -> Settings {
    let mut s = Settings::default();
    s.api.host = "127.0.0.1".into();
    s.api.port = 0;
    s.api.workers = 1;
    s.api.shutdown_grace = 1;
    s.user.base_dir = dir.join("users");
    s.data.dir = dir.join("data");
    s.session.sqlite_path = dir.join("data/test.db");
    s.session.pool_size = 4;
    s.auth.admin_key = Some(ADMIN_KEY.into());
    s.cli.path = fake_cli_path().display().to_string();
    s.cli.stop_grace = 1;
    s
}

/// The fake CLI (`examples/fake_claude.rs`), built by `cargo test` next to the test binary.
pub fn fake_cli_path() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let target = exe.parent().and_then(Path::parent).expect("target dir");
    let fake = target.join("examples/fake_claude");
    assert!(fake.exists(), "{} is missing: run `cargo build --examples` (scripts/test does)", fake.display());
    fake
}

pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl TestResponse {
    /// The stable error code of an error response.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text);
        assert_eq!(self.code(), code, "body: {}", self.text);
        if status == 422 {
            // FastAPI's list: one {loc, msg, type} per invalid field, in `error.fields`' order.
            let fields = self.body["error"]["fields"].as_array().expect("422 lists its fields");
            let detail = self.body["detail"].as_array().expect("422 detail is FastAPI's list");
            assert_eq!(detail.len(), fields.len(), "body: {}", self.text);
            for (d, f) in detail.iter().zip(fields) {
                assert_eq!(d["msg"], f["message"], "body: {}", self.text);
                assert!(d["loc"][0].is_string() && d["type"].is_string(), "body: {}", self.text);
            }
        } else {
            assert_eq!(self.body["detail"], self.body["error"]["message"], "detail mirrors the message");
        }
    }
}

pub struct TestApp {
    pub address: String,
    pub settings: Settings,
    pub handle: ServerHandle,
    pub client: awc::Client,
    pub dir: Arc<tempfile::TempDir>,
    pub app_state: actix_web::web::Data<claude_agent_http::startup::AppState>,
    server: Option<actix_web::rt::task::JoinHandle<std::io::Result<()>>>,
    pg_schema: Option<String>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Drop the schema from a detached thread: Drop cannot await, and blocking this thread
        // could deadlock with a transaction of the app that runs on it. Schemas an interrupted
        // run leaves behind are dropped by scripts/test.
        if let Some(schema) = self.pg_schema.take()
            && Arc::strong_count(&self.dir) == 1
        {
            std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    rt.block_on(async {
                        if let Ok(mut conn) = AsyncPgConnection::establish(&pg_base_url()).await {
                            let sql = format!("SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {schema} CASCADE");
                            let _ = conn.batch_execute(&sql).await;
                        }
                    });
                }
            });
        }
    }
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// Starts an app on `backend` after `customize` has adjusted its settings.
pub async fn spawn_app_with(backend: Backend, customize: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let mut settings = test_settings(dir.path());
    let mut pg_schema = None;
    match backend {
        Backend::Sqlite => settings.session.storage = StorageKind::Sqlite,
        Backend::Memory => settings.session.storage = StorageKind::Memory,
        Backend::Postgres => {
            let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
            pg_admin(&format!("CREATE SCHEMA {schema}")).await;
            settings.session.storage = StorageKind::Postgresql;
            settings.session.database_url = Some(pg_url_with_schema(&schema));
            pg_schema = Some(schema);
        }
    }
    customize(&mut settings);
    start(settings, dir, pg_schema).await
}

async fn start(settings: Settings, dir: Arc<tempfile::TempDir>, pg_schema: Option<String>) -> TestApp {
    let app = Application::build(settings.clone()).await.expect("app builds");
    let port = app.port();
    let handle = app.handle();
    let app_state = app.state();
    let server = Some(actix_web::rt::spawn(app.run_until_stopped()));
    TestApp {
        app_state,
        server,
        address: format!("http://127.0.0.1:{port}"),
        settings,
        handle,
        client: awc::Client::builder().timeout(Duration::from_secs(60)).finish(),
        dir,
        pg_schema,
    }
}

impl TestApp {
    /// Stops the server gracefully and waits until every session's CLI is reaped.
    pub async fn stop(&mut self) {
        self.handle.stop(true).await;
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server ran");
        }
    }

    /// Stops the server gracefully and starts a new one on the same storage and folders.
    pub async fn restart(mut self) -> TestApp {
        self.stop().await;
        let schema = self.pg_schema.take();
        start(self.settings.clone(), self.dir.clone(), schema).await
    }

    pub fn users_dir(&self) -> PathBuf {
        std::fs::canonicalize(&self.settings.user.base_dir).expect("users dir exists")
    }

    /// Any request; `body` is sent as JSON when given.
    pub async fn request(&self, method: Method, path: &str, key: Option<&str>, body: Option<Value>) -> TestResponse {
        let mut req = self.client.request(method, format!("{}{path}", self.address));
        if let Some(key) = key {
            req = req.insert_header(("Authorization", format!("Bearer {key}")));
        }
        let res = match body {
            Some(body) => req.send_json(&body).await,
            None => req.send().await,
        };
        read(res.expect("request is answered")).await
    }

    /// A request with a raw body and content type.
    pub async fn request_raw(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> TestResponse {
        let mut req = self.client.request(method, format!("{}{path}", self.address));
        if let Some(key) = key {
            req = req.insert_header(("Authorization", format!("Bearer {key}")));
        }
        if let Some(ct) = content_type {
            req = req.insert_header(("Content-Type", ct));
        }
        read(req.send_body(body).await.expect("request is answered")).await
    }

    // ---- service endpoints

    pub async fn get_health(&self) -> TestResponse {
        self.request(Method::GET, "/health", None, None).await
    }

    pub async fn get_root(&self, accept: &str) -> TestResponse {
        let req = self.client.get(format!("{}/", self.address)).insert_header(("Accept", accept));
        read(req.send().await.expect("answered")).await
    }

    /// `GET /assets/{name}`: the console's script and vendored libraries.
    pub async fn get_asset(&self, name: &str) -> TestResponse {
        self.request(Method::GET, &format!("/assets/{name}"), None, None).await
    }

    // ---- users (admin)

    pub async fn post_user(&self, key: &str, body: Value) -> TestResponse {
        self.request(Method::POST, "/api/v1/users", Some(key), Some(body)).await
    }

    /// Creates a user with the admin key and returns its API key.
    pub async fn create_user(&self, user_id: &str) -> String {
        let res = self.post_user(ADMIN_KEY, json!({ "user_id": user_id })).await;
        assert_eq!(res.status, StatusCode::CREATED, "{}", res.text);
        res.body["api_key"].as_str().expect("api_key").to_string()
    }

    pub async fn list_users(&self, key: &str) -> TestResponse {
        self.request(Method::GET, "/api/v1/users", Some(key), None).await
    }

    pub async fn delete_user(&self, key: &str, user_id: &str) -> TestResponse {
        self.request(Method::DELETE, &format!("/api/v1/users/{user_id}"), Some(key), None).await
    }

    pub async fn post_key(&self, key: &str, user_id: &str) -> TestResponse {
        self.request(Method::POST, &format!("/api/v1/users/{user_id}/keys"), Some(key), None).await
    }

    pub async fn delete_key(&self, key: &str, user_id: &str, key_id: &str) -> TestResponse {
        self.request(Method::DELETE, &format!("/api/v1/users/{user_id}/keys/{key_id}"), Some(key), None).await
    }

    pub async fn put_credentials(&self, key: &str, user_id: &str, body: Value) -> TestResponse {
        self.request(Method::PUT, &format!("/api/v1/users/{user_id}/credentials"), Some(key), Some(body)).await
    }

    pub async fn get_credentials(&self, key: &str, user_id: &str) -> TestResponse {
        self.request(Method::GET, &format!("/api/v1/users/{user_id}/credentials"), Some(key), None).await
    }

    pub async fn delete_credentials(&self, key: &str, user_id: &str) -> TestResponse {
        self.request(Method::DELETE, &format!("/api/v1/users/{user_id}/credentials"), Some(key), None).await
    }

    pub async fn put_budget(&self, key: &str, user_id: &str, body: Value) -> TestResponse {
        self.request(Method::PUT, &format!("/api/v1/users/{user_id}/budget"), Some(key), Some(body)).await
    }

    pub async fn get_budget(&self, key: &str, user_id: &str) -> TestResponse {
        self.request(Method::GET, &format!("/api/v1/users/{user_id}/budget"), Some(key), None).await
    }

    /// `GET /api/v1/usage{query}`, as CSV when `csv`.
    pub async fn get_usage(&self, key: &str, query: &str, csv: bool) -> TestResponse {
        let mut req = self
            .client
            .get(format!("{}/api/v1/usage{query}", self.address))
            .insert_header(("Authorization", format!("Bearer {key}")));
        if csv {
            req = req.insert_header(("Accept", "text/csv"));
        }
        read(req.send().await.expect("answered")).await
    }

    pub async fn get_my_usage(&self, key: &str) -> TestResponse {
        self.request(Method::GET, "/api/v1/me/usage", Some(key), None).await
    }

    pub async fn get_me(&self, key: &str) -> TestResponse {
        self.request(Method::GET, "/api/v1/me", Some(key), None).await
    }

    // ---- webhooks

    pub async fn post_webhook(&self, key: &str, body: Value) -> TestResponse {
        self.request(Method::POST, "/api/v1/webhooks", Some(key), Some(body)).await
    }

    pub async fn list_webhooks(&self, key: &str, query: &str) -> TestResponse {
        self.request(Method::GET, &format!("/api/v1/webhooks{query}"), Some(key), None).await
    }

    pub async fn get_webhook(&self, key: &str, id: &str) -> TestResponse {
        self.request(Method::GET, &format!("/api/v1/webhooks/{id}"), Some(key), None).await
    }

    pub async fn delete_webhook(&self, key: &str, id: &str) -> TestResponse {
        self.request(Method::DELETE, &format!("/api/v1/webhooks/{id}"), Some(key), None).await
    }

    pub async fn get_deliveries(&self, key: &str, id: &str) -> TestResponse {
        self.request(Method::GET, &format!("/api/v1/webhooks/{id}/deliveries"), Some(key), None).await
    }

    // ---- sessions

    pub async fn post_session(&self, key: &str, body: Value) -> TestResponse {
        self.request(Method::POST, "/api/v1/sessions", Some(key), Some(body)).await
    }

    /// Creates a session and returns its id.
    pub async fn create_session(&self, key: &str, body: Value) -> String {
        let res = self.post_session(key, body).await;
        assert_eq!(res.status, StatusCode::CREATED, "{}", res.text);
        res.body["session_id"].as_str().expect("session_id").to_string()
    }

    pub async fn list_sessions(&self, key: &str, query: &str) -> TestResponse {
        self.request(Method::GET, &format!("/api/v1/sessions{query}"), Some(key), None).await
    }

    pub async fn get_session(&self, key: &str, id: &str) -> TestResponse {
        self.request(Method::GET, &format!("/api/v1/sessions/{id}"), Some(key), None).await
    }

    pub async fn delete_session(&self, key: &str, id: &str, query: &str) -> TestResponse {
        self.request(Method::DELETE, &format!("/api/v1/sessions/{id}{query}"), Some(key), None).await
    }

    pub async fn resume_session(&self, key: &str, id: &str) -> TestResponse {
        self.request(Method::POST, &format!("/api/v1/sessions/{id}/resume"), Some(key), None).await
    }

    /// Waits until the session's CLI answered `initialize` (status `active`).
    pub async fn wait_active(&self, key: &str, id: &str) {
        let ok = eventually(Duration::from_secs(10), || async {
            self.get_session(key, id).await.body["status"] == "active"
        })
        .await;
        assert!(ok, "session {id} became active: {}", self.get_session(key, id).await.text);
    }

    // ---- chat

    pub async fn chat(&self, key: &str, session_id: &str, message: &str) -> TestResponse {
        self.post_chat(key, json!({ "session_id": session_id, "message": message })).await
    }

    pub async fn post_chat(&self, key: &str, body: Value) -> TestResponse {
        self.request(Method::POST, "/api/v1/chat", Some(key), Some(body)).await
    }

    /// A whole `/chat/stream` answer.
    pub async fn chat_stream(&self, key: &str, body: Value) -> SseResponse {
        let res = self
            .client
            .post(format!("{}/api/v1/chat/stream", self.address))
            .insert_header(("Authorization", format!("Bearer {key}")))
            .send_json(&body)
            .await
            .expect("answered");
        let status = res.status();
        let headers = res.headers().clone();
        let r = read(res).await;
        SseResponse { status, headers, frames: parse_sse(&r.text), text: r.text }
    }

    /// Opens `/chat/stream` and returns the live response to read frame by frame.
    pub async fn open_chat_stream(&self, key: &str, session_id: &str, message: &str) -> SseReader {
        let res = self
            .client
            .post(format!("{}/api/v1/chat/stream", self.address))
            .insert_header(("Authorization", format!("Bearer {key}")))
            .send_json(&json!({ "session_id": session_id, "message": message }))
            .await
            .expect("answered");
        assert_eq!(res.status(), StatusCode::OK);
        SseReader { res: Box::new(res), buffer: String::new() }
    }

    /// Opens `/events` (path and query given) with an optional key header and `Last-Event-ID`.
    pub async fn open_events(&self, path_and_query: &str, key: Option<&str>, last_event_id: Option<&str>) -> SseReader {
        let mut req = self.client.get(format!("{}{path_and_query}", self.address));
        if let Some(key) = key {
            req = req.insert_header(("Authorization", format!("Bearer {key}")));
        }
        if let Some(last) = last_event_id {
            req = req.insert_header(("Last-Event-ID", last));
        }
        let res = req.send().await.expect("answered");
        assert_eq!(res.status(), StatusCode::OK, "events stream opens");
        SseReader { res: Box::new(res), buffer: String::new() }
    }

    /// Starts a turn with `POST /messages` (202) and returns its body.
    pub async fn post_message(&self, key: &str, id: &str, message: &str) -> TestResponse {
        self.request(
            Method::POST,
            &format!("/api/v1/sessions/{id}/messages"),
            Some(key),
            Some(json!({ "message": message })),
        )
        .await
    }

    pub async fn interrupt(&self, key: &str, id: &str) -> TestResponse {
        self.request(Method::POST, &format!("/api/v1/sessions/{id}/interrupt"), Some(key), None).await
    }

    /// `/sessions/{id}/files?path=…`: `body` is uploaded as raw bytes when given.
    pub async fn files(&self, key: &str, method: Method, id: &str, path: &str, body: Option<&[u8]>) -> TestResponse {
        let url = format!("/api/v1/sessions/{id}/files?path={}", urlencode(path));
        match body {
            Some(bytes) => {
                self.request_raw(method, &url, Some(key), Some("application/octet-stream"), bytes.to_vec()).await
            }
            None => self.request(method, &url, Some(key), None).await,
        }
    }

    /// Pids of the CLI processes the registry supervises now.
    pub async fn cli_pids(&self) -> Vec<u32> {
        let stats = self.app_state.registry.stats().await.expect("registry");
        stats.processes
    }
}

/// A finished SSE answer: its frames as (id, JSON), comments left out.
pub struct SseResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub frames: Vec<(i64, Value)>,
    pub text: String,
}

impl SseResponse {
    pub fn types(&self) -> Vec<String> {
        self.frames.iter().map(|(_, f)| f["type"].as_str().unwrap_or("").to_string()).collect()
    }

    pub fn last(&self) -> &Value {
        &self.frames.last().expect("at least one frame").1
    }
}

/// Parses `id:`/`data:` blocks.
pub fn parse_sse(text: &str) -> Vec<(i64, Value)> {
    let mut frames = Vec::new();
    for block in text.split("\n\n") {
        let mut id = None;
        let mut data = None;
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id: ") {
                id = v.trim().parse::<i64>().ok();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = serde_json::from_str::<Value>(v).ok();
            }
        }
        if let Some(data) = data {
            frames.push((id.expect("every frame has an id"), data));
        }
    }
    frames
}

type LiveBody = awc::ClientResponse;

/// An SSE response read as it arrives.
pub struct SseReader {
    res: Box<LiveBody>,
    buffer: String,
}

impl SseReader {
    pub fn new(res: LiveBody) -> Self {
        SseReader { res: Box::new(res), buffer: String::new() }
    }

    /// The next frame, or `None` at the end of the stream.
    pub async fn next_frame(&mut self) -> Option<(i64, Value)> {
        use futures_util::StreamExt;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(frame) = parse_sse(&block).pop() {
                    return Some(frame);
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.res.next()).await.ok()??.ok()?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next `n` frames (panics if the stream ends first).
    pub async fn take(&mut self, n: usize) -> Vec<(i64, Value)> {
        let mut frames = Vec::with_capacity(n);
        while frames.len() < n {
            frames
                .push(self.next_frame().await.unwrap_or_else(|| panic!("stream ended after {} frames", frames.len())));
        }
        frames
    }

    /// Frames up to and including the next `done` or `error`.
    pub async fn until_turn_end(&mut self) -> Vec<(i64, Value)> {
        let mut frames = Vec::new();
        loop {
            let frame = self.next_frame().await.expect("the turn ends before the stream does");
            let end = frame.1["type"] == "done" || frame.1["type"] == "error";
            frames.push(frame);
            if end {
                return frames;
            }
        }
    }

    /// Frames until the stream ends.
    pub async fn rest(&mut self) -> Vec<(i64, Value)> {
        let mut frames = Vec::new();
        while let Some(f) = self.next_frame().await {
            frames.push(f);
        }
        frames
    }
}

/// Percent-encodes a query value (unreserved characters and `/` stay).
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Whether a process runs (a zombie does not count).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// Waits until none of `pids` runs.
pub async fn all_gone(pids: &[u32]) -> bool {
    eventually(Duration::from_secs(15), || async { pids.iter().all(|p| !process_alive(*p)) }).await
}

async fn read<S>(mut res: awc::ClientResponse<S>) -> TestResponse
where
    S: futures_util::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>> + Unpin,
{
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.body().limit(16 * 1024 * 1024).await.expect("body");
    let text = String::from_utf8_lossy(&bytes).to_string();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    TestResponse { status, headers, body, text }
}

/// Waits until `check` holds, polling (for background work such as the TTL sweeper).
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Settings tweak for the seed-compatible unauthenticated mode.
pub fn auth_none(s: &mut Settings) {
    s.auth.mode = AuthMode::None;
}

/// Runs each listed `async fn name(backend: Backend)` on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[actix_web::test] async fn $name() { super::$name($crate::helpers::Backend::Sqlite).await } )*
        }
        mod postgres {
            $( #[actix_web::test] async fn $name() { super::$name($crate::helpers::Backend::Postgres).await } )*
        }
    };
}

/// `t` is UTC in the form Python 3.10's `datetime.fromisoformat` reads
/// (`YYYY-MM-DDTHH:MM:SS[.fff|.ffffff]+HH:MM`: no `Z`) and a valid RFC 3339 time.
pub fn assert_python_time(t: &str) {
    let b = t.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r.clone()).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let fraction = match b.get(19) {
        Some(b'.') => (20..b.len()).take_while(|&i| b[i].is_ascii_digit()).count(),
        _ => 0,
    };
    let offset = if fraction == 0 { 19 } else { 20 + fraction };
    let shaped = b.len() == offset + 6
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && matches!(fraction, 0 | 3 | 6)
        && &t[offset..] == "+00:00";
    assert!(shaped, "not a Python 3.10 fromisoformat UTC time: {t}");
    assert!(humantime::parse_rfc3339(&t.replace("+00:00", "Z")).is_ok(), "not RFC 3339: {t}");
}

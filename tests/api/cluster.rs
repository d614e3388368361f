//! Several instances on one PostgreSQL (issue #12), black-box: three service processes A, B
//! and C on 127.0.0.1 with one schema, one users' directory and one data directory, a short
//! lease TTL. Processes are checked in /proc, rows in the database.

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use awc::http::Method;
use claude_agent_http::memory::ProcessTable;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::helpers::{eventually, fake_cli_path, pg_admin, pg_base_url, pg_url_with_schema, process_alive};

const BIN: &str = env!("CARGO_BIN_EXE_claude-agent-http");
pub const ADMIN: &str = "cluster-test-admin-key-0123456789";
const SECRET: &str = "cluster-test-secret-0123456789abcdef";
/// base64 of 32 bytes: every instance seals and opens credentials with the same key.
const CREDENTIALS_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
/// `cluster.lease_ttl` of the tests, seconds.
pub const TTL: u64 = 3;
const NAMES: [&str; 3] = ["a", "b", "c"];

// ---------------------------------------------------------------------------------------------
// The harness

/// One instance: the service binary as a process.
pub struct Node {
    pub id: String,
    pub url: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Node {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status().unwrap();
    }

    /// Everything the instance logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Waits for the exit (polling, so that the test's other futures go on).
    pub async fn exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < limit, "instance {} did not exit within {limit:?}:\n{}", self.id, self.log());
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What the instances run: their CLI, extra environment, and a `Settings.toml` in their
/// working directory (`{root}` stands for the cluster's temp dir), for what the environment
/// cannot say (`[cli.env]`).
pub struct Spec {
    pub cli: PathBuf,
    pub env: Vec<(String, String)>,
    pub settings_toml: String,
}

impl Spec {
    pub fn fake() -> Spec {
        Spec { cli: fake_cli_path(), env: Vec::new(), settings_toml: String::new() }
    }

    pub fn env(mut self, name: &str, value: &str) -> Spec {
        self.env.push((name.into(), value.into()));
        self
    }

    pub fn toml(mut self, text: &str) -> Spec {
        self.settings_toml.push_str(text);
        self
    }
}

/// Three instances (or `n`) on one fresh schema.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub schema: String,
    pub root: tempfile::TempDir,
    spec: Spec,
    pub client: awc::Client,
    /// Processes a test left behind on purpose (a killed instance's CLIs): killed at the end.
    strays: Vec<u32>,
}

impl Cluster {
    pub async fn start(spec: Spec) -> Cluster {
        Cluster::start_n(spec, 3).await
    }

    pub async fn start_n(spec: Spec, n: usize) -> Cluster {
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        pg_admin(&format!("CREATE SCHEMA {schema}")).await;
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("users")).unwrap();
        let mut cluster = Cluster {
            nodes: Vec::new(),
            schema,
            root,
            spec,
            client: awc::Client::builder().timeout(Duration::from_secs(60)).finish(),
            strays: Vec::new(),
        };
        // The first one migrates the empty schema, then the others start at once (instances
        // that all start on an empty schema: `three_instances_starting_at_once_...`).
        if n > 0 {
            let (child, log, ports) = cluster.spawn(NAMES[0]);
            let first = Cluster::listening(child, log, ports).await;
            cluster.nodes.push(first);
            cluster.start_together(&NAMES[1..n]).await;
        }
        cluster
    }

    async fn start_together(&mut self, names: &[&str]) {
        let mut pending: Vec<_> = names.iter().map(|id| Pending(Some(self.spawn(id)))).collect();
        for p in &mut pending {
            let (child, log, ports) = p.0.take().unwrap();
            let node = Cluster::listening(child, log, ports).await;
            self.nodes.push(node);
        }
    }

    fn spawn(&self, id: &str) -> Spawned {
        let root = self.root.path();
        let cwd = root.join(id);
        std::fs::create_dir_all(&cwd).unwrap();
        std::fs::write(
            cwd.join("Settings.toml"),
            self.spec.settings_toml.replace("{root}", &root.display().to_string()),
        )
        .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.current_dir(&cwd);
        for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("CLAUDE_AGENT_")) {
            cmd.env_remove(name);
        }
        let url = pg_url_with_schema(&self.schema);
        let users = root.join("users");
        let data = root.join("data");
        cmd.env("CLAUDE_AGENT_API__PORT", "0")
            .env("CLAUDE_AGENT_ADMIN_KEY", ADMIN)
            .env("CLAUDE_AGENT_CLI__PATH", &self.spec.cli)
            .env("CLAUDE_AGENT_CLI__STOP_GRACE", "1")
            .env("CLAUDE_AGENT_API__SHUTDOWN_GRACE", "2")
            .env("CLAUDE_AGENT_API__MAX_SESSIONS_PER_USER", "100")
            .env("CLAUDE_AGENT_API__MAX_SESSIONS", "200")
            .env("CLAUDE_AGENT_API__MAX_CONCURRENT_REQUESTS", "100")
            .env("CLAUDE_AGENT_SESSION__STORAGE", "postgresql")
            .env("CLAUDE_AGENT_SESSION__DATABASE_URL", url)
            .env("CLAUDE_AGENT_SESSION__POOL_SIZE", "5")
            // A CLI counts at its measured RSS, not at the real CLI's estimate, for admission: 50
            // fake CLIs on one instance fit.
            .env("CLAUDE_AGENT_MEMORY__CLI_RSS_MB", "20")
            .env("CLAUDE_AGENT_USER__BASE_DIR", users)
            .env("CLAUDE_AGENT_DATA__DIR", data)
            .env("CLAUDE_AGENT_CLUSTER__SECRET", SECRET)
            .env("CLAUDE_AGENT_CLUSTER__LEASE_TTL", TTL.to_string())
            .env("CLAUDE_AGENT_CLUSTER__INSTANCE_ID", id)
            .env("CLAUDE_AGENT_AUTH__CREDENTIALS_KEY", CREDENTIALS_KEY)
            .env("RUST_LOG", "info")
            .envs(self.spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = log.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1)
                    && let Some(port) = rest.split_whitespace().next().and_then(|p| p.parse::<u16>().ok())
                {
                    let _ = tx.send(port);
                }
                kept.lock().unwrap().push(line);
            }
        });
        (child, log, rx)
    }

    async fn listening(mut child: Child, log: Arc<Mutex<Vec<String>>>, ports: mpsc::Receiver<u16>) -> Node {
        let started = Instant::now();
        let port = loop {
            match ports.try_recv() {
                Ok(port) => break port,
                Err(mpsc::TryRecvError::Disconnected) => {
                    let _ = child.wait();
                    panic!("an instance exited at start:\n{}", log.lock().unwrap().join("\n"));
                }
                Err(mpsc::TryRecvError::Empty) => {}
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("an instance did not listen within 60 s:\n{}", log.lock().unwrap().join("\n"));
            }
            actix_web::rt::time::sleep(Duration::from_millis(10)).await;
        };
        let line = log.lock().unwrap().iter().find(|l| l.contains("cluster: instance")).cloned().unwrap_or_default();
        let id = line.split("cluster: instance ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("?");
        Node { id: id.to_string(), url: format!("http://127.0.0.1:{port}"), child, log }
    }

    /// Stops instance `i` with SIGTERM (its drain) and starts it again with the same id and dirs.
    pub async fn restart(&mut self, i: usize) {
        self.nodes[i].signal("TERM");
        let status = self.nodes[i].exit(Duration::from_secs(20)).await;
        assert!(status.success(), "instance {} exits 0 on SIGTERM: {status:?}", self.nodes[i].id);
        let (child, log, ports) = self.spawn(NAMES[i]);
        self.nodes[i] = Cluster::listening(child, log, ports).await;
    }

    /// `kill -9` of instance `i` and of every process it started (a machine or pod that dies).
    pub async fn kill9(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let pid = node.pid();
        let mut all = ProcessTable::read().descendants(pid);
        all.push(pid);
        let mut cmd = Command::new("kill");
        cmd.arg("-9");
        for p in &all {
            cmd.arg(p.to_string());
        }
        let _ = cmd.stderr(Stdio::null()).status();
        node.exit(Duration::from_secs(5)).await;
        self.strays.extend(all);
    }

    pub fn url(&self, i: usize) -> &str {
        &self.nodes[i].url
    }

    pub async fn call(&self, i: usize, method: Method, path: &str, key: Option<&str>, body: Option<Value>) -> Resp {
        request(&self.client, &format!("{}{path}", self.url(i)), method, key, body).await
    }

    /// A user created through instance `i`: its API key.
    pub async fn user(&self, i: usize, user_id: &str) -> String {
        let res = self.call(i, Method::POST, "/api/v1/users", Some(ADMIN), Some(json!({ "user_id": user_id }))).await;
        assert_eq!(res.status, 201, "{}", res.text);
        res.body["api_key"].as_str().unwrap().to_string()
    }

    /// A session created through instance `i`.
    pub async fn session(&self, i: usize, key: &str) -> String {
        let res = self.call(i, Method::POST, "/api/v1/sessions", Some(key), Some(json!({}))).await;
        assert_eq!(res.status, 201, "{}", res.text);
        res.body["session_id"].as_str().unwrap().to_string()
    }

    pub async fn chat(&self, i: usize, key: &str, id: &str, message: &str) -> Resp {
        let body = json!({ "session_id": id, "message": message });
        self.call(i, Method::POST, "/api/v1/chat", Some(key), Some(body)).await
    }

    /// `POST /sessions/{id}/messages` (202), with `mode` when given.
    pub async fn post_message(&self, i: usize, key: &str, id: &str, message: &str, mode: Option<&str>) -> Resp {
        let mut body = json!({ "message": message });
        if let Some(mode) = mode {
            body["mode"] = mode.into();
        }
        self.call(i, Method::POST, &format!("/api/v1/sessions/{id}/messages"), Some(key), Some(body)).await
    }

    /// `/events` of a session through instance `i`.
    pub async fn events(&self, i: usize, key: &str, id: &str, last_event_id: Option<i64>) -> Sse {
        let url = format!("{}/api/v1/sessions/{id}/events", self.url(i));
        Sse::open(&self.client, &url, Method::GET, key, last_event_id, None).await
    }

    pub async fn chat_stream(&self, i: usize, key: &str, id: &str, message: &str) -> Sse {
        let url = format!("{}/api/v1/chat/stream", self.url(i));
        Sse::open(&self.client, &url, Method::POST, key, None, Some(json!({ "session_id": id, "message": message })))
            .await
    }

    pub async fn health(&self, i: usize) -> Value {
        let res = self.call(i, Method::GET, "/health", None, None).await;
        assert_eq!(res.status, 200, "{}", res.text);
        res.body
    }

    /// Rows of `sql` (a SELECT on the cluster's schema), as JSON objects.
    pub async fn db(&self, sql: &str) -> Vec<Value> {
        db_rows(&self.schema, sql).await
    }

    /// The session's row: status, counters and lease.
    pub async fn row(&self, id: &str) -> Value {
        let rows = self
            .db(&format!(
                "SELECT status, message_count, last_event_id, cli_session_id, owner_instance, lease_generation, \
                 lease_expires_at, lease_expires_at < (extract(epoch from clock_timestamp()) * 1000)::bigint AS expired \
                 FROM sessions WHERE session_id = '{id}'"
            ))
            .await;
        rows.into_iter().next().unwrap_or_else(|| panic!("no row for session {id}"))
    }

    /// The CLI processes of the session (CLI id `cli_id`), on every running instance.
    pub fn cli_processes(&self, cli_id: &str) -> Vec<(String, u32)> {
        let table = ProcessTable::read();
        let mut found = Vec::new();
        for node in self.nodes.iter().filter(|n| process_alive(n.pid())) {
            for pid in table.descendants(node.child.id()) {
                if cli_of(pid).as_deref() == Some(cli_id) && process_alive(pid) {
                    found.push((node.id.clone(), pid));
                }
            }
        }
        found
    }
}

/// The CLI session id a process was started for (`--session-id=` or `--resume=`), if it is a CLI.
pub fn cli_of(pid: u32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    // The CLI itself, not a wrapper that passes its arguments on.
    if !args.first().is_some_and(|a| a.contains("fake_claude") || a.contains("claude") || a.contains("node")) {
        return None;
    }
    args.iter().find_map(|a| cli_arg(a).map(str::to_owned))
}

/// An instance started and not yet listening: killed if the test fails before it is.
struct Pending(Option<Spawned>);

/// A started instance, its log, and where its port will be announced.
type Spawned = (Child, Arc<Mutex<Vec<String>>>, mpsc::Receiver<u16>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some((mut child, _, _)) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The CLI session id of a `--session-id=` or `--resume=` argument.
fn cli_arg(arg: &str) -> Option<&str> {
    arg.strip_prefix("--session-id=").or_else(|| arg.strip_prefix("--resume="))
}

/// At the end of a test, the instances stop (SIGTERM, then SIGKILL of what is left) and the
/// schema is dropped.
impl Drop for Cluster {
    fn drop(&mut self) {
        let table = ProcessTable::read();
        let mut leftovers: Vec<u32> = std::mem::take(&mut self.strays);
        for node in &mut self.nodes {
            if matches!(node.child.try_wait(), Ok(None)) {
                leftovers.extend(table.descendants(node.pid()));
                node.signal("CONT");
                node.signal("TERM");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for node in &mut self.nodes {
            while matches!(node.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(node.child.try_wait(), Ok(None)) {
                let _ = node.child.kill();
                let _ = node.child.wait();
            }
        }
        for pid in leftovers.into_iter().filter(|p| process_alive(*p)) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).stderr(Stdio::null()).status();
        }
        let schema = self.schema.clone();
        let dropped = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(async {
                    if let Ok(mut conn) = AsyncPgConnection::establish(&pg_base_url()).await {
                        let sql = format!("SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {schema} CASCADE");
                        let _ = conn.batch_execute(&sql).await;
                    }
                });
            }
        });
        let _ = dropped.join();
    }
}

pub async fn db_rows(schema: &str, sql: &str) -> Vec<Value> {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        j: String,
    }
    let mut conn = AsyncPgConnection::establish(&pg_url_with_schema(schema)).await.unwrap();
    let rows: Vec<Row> = diesel::sql_query(format!("SELECT row_to_json(t)::text AS j FROM ({sql}) t"))
        .load(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.into_iter().map(|r| serde_json::from_str(&r.j).unwrap()).collect()
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Resp {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

pub async fn request(client: &awc::Client, url: &str, method: Method, key: Option<&str>, body: Option<Value>) -> Resp {
    let mut req = client.request(method, url);
    if let Some(key) = key {
        req = req.insert_header(("Authorization", format!("Bearer {key}")));
    }
    let res = match body {
        Some(b) => req.send_json(&b).await,
        None => req.send().await,
    };
    let mut res = res.unwrap_or_else(|e| panic!("{url}: {e}"));
    let bytes = res.body().limit(16 * 1024 * 1024).await.unwrap_or_else(|e| panic!("{url}: body: {e}"));
    let text = String::from_utf8_lossy(&bytes).to_string();
    Resp { status: res.status().as_u16(), body: serde_json::from_slice(&bytes).unwrap_or(Value::Null), text }
}

/// An SSE answer read as it arrives.
pub struct Sse {
    reader: crate::helpers::SseReader,
}

pub type Frame = (i64, Value);

impl Sse {
    pub async fn open(
        client: &awc::Client,
        url: &str,
        method: Method,
        key: &str,
        last_event_id: Option<i64>,
        body: Option<Value>,
    ) -> Sse {
        let mut req = client.request(method, url).insert_header(("Authorization", format!("Bearer {key}")));
        if let Some(last) = last_event_id {
            req = req.insert_header(("Last-Event-ID", last.to_string()));
        }
        let res = match body {
            Some(b) => req.send_json(&b).await,
            None => req.send().await,
        };
        let mut res = res.unwrap_or_else(|e| panic!("{url}: {e}"));
        if res.status() != 200 {
            let body = res.body().await.unwrap_or_default();
            panic!("{url}: {} {}", res.status(), String::from_utf8_lossy(&body));
        }
        Sse { reader: crate::helpers::SseReader::new(res) }
    }

    /// The next frame, or `None` when the stream ends (or has no frame for 30 s).
    pub async fn next_frame(&mut self) -> Option<Frame> {
        tokio::time::timeout(Duration::from_secs(30), self.reader.next_frame()).await.ok()?
    }

    /// Frames up to and including the next `done` or `error`.
    pub async fn until_done(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        loop {
            let frame =
                self.next_frame().await.unwrap_or_else(|| panic!("the stream ended before the turn: {frames:?}"));
            let end = frame.1["type"] == "done" || frame.1["type"] == "error";
            frames.push(frame);
            if end {
                return frames;
            }
        }
    }

    /// Frames up to and including the first that `last` matches.
    pub async fn frames_until(&mut self, last: impl Fn(&Frame) -> bool) -> Vec<Frame> {
        let mut frames = Vec::new();
        loop {
            let frame = self.next_frame().await.unwrap_or_else(|| panic!("the stream ended first: {frames:?}"));
            let end = last(&frame);
            frames.push(frame);
            if end {
                return frames;
            }
        }
    }

    /// Frames of the next `n` turns.
    pub async fn turns(&mut self, n: usize) -> Vec<Frame> {
        let mut frames = Vec::new();
        for _ in 0..n {
            frames.extend(self.until_done().await);
        }
        frames
    }
}

fn ids(frames: &[Frame]) -> Vec<i64> {
    frames.iter().map(|(i, _)| *i).collect()
}

#[track_caller]
fn assert_increasing(frames: &[Frame], what: &str) {
    let ids = ids(frames);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{what}: event ids strictly increase, no duplicate: {ids:?}");
}

fn text_of(frames: &[Frame]) -> String {
    frames.iter().filter(|(_, f)| f["type"] == "text_delta").filter_map(|(_, f)| f["text"].as_str()).collect()
}

/// The value of a metric line `name{labels} value` (or `name value`).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// The tests

/// Create on A, chat through B, stream through C, follow `/events` through B while the turn
/// runs on A: one CLI (on A), the lease never moves, and every instance shows the same frames.
#[actix_web::test]
async fn a_session_on_a_answers_through_b_and_c_with_the_frames_a_shows() {
    let c = Cluster::start(Spec::fake()).await;
    assert_eq!(ids_of_nodes(&c), ["a", "b", "c"]);
    let key = c.user(0, "alice").await;
    let id = c.session(0, &key).await;
    let row = c.row(&id).await;
    assert_eq!(row["owner_instance"], "a", "{row}");
    let generation = row["lease_generation"].clone();
    let cli_id = row["cli_session_id"].as_str().unwrap().to_string();

    let res = c.chat(1, &key, &id, "hello").await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(res.body["text"], "echo: hello");

    // Followers through the owner and through B, from the first event.
    let mut on_a = c.events(0, &key, &id, Some(0)).await;
    let mut on_b = c.events(1, &key, &id, Some(0)).await;
    let first = on_a.until_done().await;
    assert_eq!(on_b.until_done().await, first, "the replay through B is the owner's");

    // A turn streamed through C while both follow it.
    let mut stream = c.chat_stream(2, &key, &id, "slow 8 40").await;
    let streamed = stream.until_done().await;
    assert_eq!(text_of(&streamed), "w0 w1 w2 w3 w4 w5 w6 w7 ");
    assert_eq!(streamed.last().unwrap().1["type"], "done");
    let live_a = on_a.until_done().await;
    let live_b = on_b.until_done().await;
    assert_eq!(live_b, live_a, "the same frames (ids and payloads) through B as through the owner");
    assert_eq!(streamed, live_a, "the stream through C carries the owner's frames and ids");
    assert_increasing(&[first.clone(), live_a.clone()].concat(), "/events");
    assert!(live_a[0].0 > first.last().unwrap().0, "the new turn numbers on");

    // One CLI, on A, and the lease stayed where it was.
    let clis = c.cli_processes(&cli_id);
    assert_eq!(clis.len(), 1, "exactly one CLI for the session in the cluster: {clis:?}");
    assert_eq!(clis[0].0, "a");
    let row = c.row(&id).await;
    assert_eq!((&row["owner_instance"], &row["lease_generation"]), (&json!("a"), &generation), "{row}");
    let status = c.call(2, Method::GET, &format!("/api/v1/sessions/{id}"), Some(&key), None).await;
    assert_eq!(status.body["status"], "active", "{}", status.text);

    // /health and /metrics of each instance.
    let health: Vec<Value> = join_all((0..3).map(|i| c.health(i))).await;
    for (i, h) in health.iter().enumerate() {
        assert_eq!(h["cluster"]["instance_id"], NAMES[i], "{h}");
        assert_eq!(h["cluster"]["instances"], 3, "{h}");
        assert_eq!(h["cluster"]["advertise_url"], c.url(i), "{h}");
    }
    assert_eq!(health[0]["cluster"]["owned_sessions"], 1);
    assert_eq!(health[1]["cluster"]["owned_sessions"], 0);
    assert_eq!(health[2]["cluster"]["owned_sessions"], 0);
    assert_eq!(health[0]["cluster"]["forwarded_requests"], 0, "the owner forwards nothing");
    assert!(health[1]["cluster"]["forwarded_requests"].as_u64().unwrap() >= 2, "B forwarded the chat and /events");
    assert!(health[2]["cluster"]["forwarded_requests"].as_u64().unwrap() >= 2, "C forwarded the stream and the GET");
    let metrics = c.call(0, Method::GET, "/metrics", None, None).await.text;
    assert_eq!(metric(&metrics, "claude_agent_instance_info{instance_id=\"a\"}"), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, "claude_agent_owned_sessions"), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, "claude_agent_lease_takeovers"), Some(0.0), "{metrics}");
    let metrics = c.call(1, Method::GET, "/metrics", None, None).await.text;
    assert!(metric(&metrics, "claude_agent_forwarded_requests").unwrap_or(0.0) >= 2.0, "{metrics}");
}

fn ids_of_nodes(c: &Cluster) -> Vec<&str> {
    c.nodes.iter().map(|n| n.id.as_str()).collect()
}

/// A Deployment's replicas start at the same moment, on a database no instance migrated yet:
/// all of them start (the migrations do not race) and see each other.
#[actix_web::test]
async fn three_instances_starting_at_once_on_an_empty_database_all_start() {
    let mut c = Cluster::start_n(Spec::fake(), 0).await;
    c.start_together(&NAMES).await;
    let seen = eventually(Duration::from_secs(5), || async {
        join_all((0..3).map(|i| c.health(i))).await.iter().all(|h| h["cluster"]["instances"] == 3)
    })
    .await;
    assert!(seen, "every instance sees the three");
}

/// A per-user cap of 3 under 20 creates racing on the three instances: exactly 3 succeed.
#[actix_web::test]
async fn a_per_user_cap_of_3_holds_under_20_creates_racing_on_three_instances() {
    let c = Cluster::start(Spec::fake().env("CLAUDE_AGENT_API__MAX_SESSIONS_PER_USER", "3")).await;
    let key = c.user(0, "bob").await;
    let creates = (0..20)
        .map(|n| c.call(n % 3, Method::POST, "/api/v1/sessions", Some(&key), Some(json!({}))))
        .collect::<Vec<_>>();
    let answers = join_all(creates).await;
    let created: Vec<&Resp> = answers.iter().filter(|r| r.status == 201).collect();
    assert_eq!(created.len(), 3, "exactly 3 of 20: {:?}", answers.iter().map(|r| r.status).collect::<Vec<_>>());
    for refused in answers.iter().filter(|r| r.status != 201) {
        assert_eq!((refused.status, refused.code()), (429, "quota_exceeded"), "{}", refused.text);
    }
    let live = c.db("SELECT session_id FROM sessions WHERE user_id = 'bob' AND owner_instance IS NOT NULL").await;
    assert_eq!(live.len(), 3, "three live leases: {live:?}");
    // A fourth, later, on any instance: still refused.
    let again = c.call(2, Method::POST, "/api/v1/sessions", Some(&key), Some(json!({}))).await;
    assert_eq!((again.status, again.code()), (429, "quota_exceeded"), "{}", again.text);
}

/// `kill -9` of the owner (and of its CLI: the machine is gone) in the middle of a turn: the
/// next message through B answers within the TTL + 5 s, from a CLI resumed from the
/// transcript (the model sees the earlier turns), and no event id is used twice.
#[actix_web::test]
async fn kill_9_of_the_owner_mid_turn_the_next_message_elsewhere_resumes_it_with_no_event_id_reused() {
    let mock = crate::real_cli::MockApi::start();
    let spec = Spec {
        cli: crate::real_cli::real_cli_path(),
        env: vec![("CLAUDE_AGENT_CLI__STOP_GRACE".into(), "3".into())],
        settings_toml: format!(
            "[defaults]\nmodel = \"claude-sonnet-4-5\"\n\n[cli.env]\nANTHROPIC_BASE_URL = \"{}\"\n\
             ANTHROPIC_API_KEY = \"test-key-offline\"\nCLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = \"1\"\n\
             DISABLE_TELEMETRY = \"1\"\nCLAUDE_CODE_MAX_RETRIES = \"0\"\nIS_SANDBOX = \"1\"\n",
            mock.url
        ),
    };
    let mut c = Cluster::start(spec).await;
    let key = c.user(0, "alice").await;
    let id = c.session(0, &key).await;
    for (i, word) in [(0, "alpha"), (1, "beta")] {
        let res = c.chat(i, &key, &id, word).await;
        assert_eq!(res.status, 200, "{}", res.text);
        assert_eq!(res.body["text"], format!("mock: {word}"));
    }
    let before = c.row(&id).await;
    assert_eq!(before["owner_instance"], "a", "{before}");

    // A slow turn on A, followed through A; a few of its frames arrive, then A dies.
    let mut on_a = c.events(0, &key, &id, Some(0)).await;
    let replayed = on_a.turns(2).await;
    let res = c.post_message(0, &key, &id, "slow", None).await;
    assert_eq!(res.status, 202, "{}", res.text);
    let mut seen_live = replayed.clone();
    while seen_live.iter().filter(|(_, f)| f["type"] == "text_delta").count() < replayed_deltas(&replayed) + 3 {
        seen_live.push(on_a.next_frame().await.expect("the slow turn streams"));
    }
    c.kill9(0).await;
    let killed = Instant::now();

    let res = c.chat(1, &key, &id, "history").await;
    let took = killed.elapsed();
    assert_eq!(res.status, 200, "{}\nB's log:\n{}", res.text, c.nodes[1].log());
    assert!(took < Duration::from_secs(TTL + 5), "answered {took:?} after the owner died");
    let text = res.body["text"].as_str().unwrap_or("");
    assert!(text.contains("alpha") && text.contains("beta"), "the resumed CLI sent the earlier turns: {text}");
    let requests = crate::real_cli::MockApi::requests(&mock, &c.client).await;
    let last = requests.iter().rev().find(|r| r["tools"].as_array().is_some_and(|t| !t.is_empty())).unwrap();
    let sent = last["messages"].to_string();
    assert!(sent.contains("alpha") && sent.contains("beta"), "the mock saw the earlier turns: {sent}");

    let after = c.row(&id).await;
    assert_eq!(after["owner_instance"], "b", "{after}");
    assert!(
        after["lease_generation"].as_i64() > before["lease_generation"].as_i64(),
        "a takeover bumps the generation"
    );
    assert_eq!(c.health(1).await["cluster"]["lease_takeovers"], 1);

    // The whole log through C: no id twice, and none A showed is reused for something else.
    let max_live = seen_live.last().unwrap().0;
    let mut replay = c.events(2, &key, &id, Some(0)).await;
    let all = replay.frames_until(|(i, f)| *i > max_live && f["type"] == "done").await;
    assert_increasing(&all, "/events after the takeover");
    assert_eq!(all[..replayed.len()], replayed[..], "the turns A stored before it died are replayed as they were");
    for (live_id, live) in &seen_live {
        if let Some((_, stored)) = all.iter().find(|(i, _)| i == live_id) {
            assert_eq!(stored, live, "event {live_id} is what A showed, not a new event under its id");
        }
    }
    let history_turn: Vec<&Frame> = all.iter().filter(|(i, _)| *i > max_live).collect();
    assert!(history_turn.iter().any(|(_, f)| f["type"] == "text_delta"), "{all:?}");
    // A follower that had everything A showed goes on through B from there, with no duplicate.
    let mut resumed = c.events(1, &key, &id, Some(max_live)).await;
    let rest = resumed.until_done().await;
    assert!(rest[0].0 > max_live, "{rest:?}");
    assert_eq!(rest.last().unwrap(), all.last().unwrap());
}

fn replayed_deltas(frames: &[Frame]) -> usize {
    frames.iter().filter(|(_, f)| f["type"] == "text_delta").count()
}

/// The first message for an idle session reaches B and C at the same instant, 50 times:
/// each time one CLI starts for it in the whole cluster, and both messages are served.
#[actix_web::test]
async fn the_first_messages_for_an_idle_session_racing_on_two_instances_start_one_cli_50_times() {
    // The log is outside what a confined CLI may write.
    let spec = Spec::fake()
        .env("CLAUDE_AGENT_SANDBOX__MODE", "off")
        .toml("[cli.env]\nFAKE_CLAUDE_ARGV_LOG = \"{root}/argv.log\"\n");
    let mut c = Cluster::start(spec).await;
    let key = c.user(0, "alice").await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let created = join_all((0..10).map(|_| c.session(0, &key))).await;
        ids.extend(created);
    }
    // A drains: its sessions are idle and free.
    c.nodes[0].signal("TERM");
    assert!(c.nodes[0].exit(Duration::from_secs(20)).await.success());
    assert!(c.nodes[0].logged("released the leases of this instance"), "{}", c.nodes[0].log());
    let live = c.db("SELECT session_id FROM sessions WHERE owner_instance IS NOT NULL OR status <> 'idle'").await;
    assert!(live.is_empty(), "after the drain every session is idle and free: {live:?}");

    let mut cli_ids = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        cli_ids.push(c.row(id).await["cli_session_id"].as_str().unwrap().to_string());
        // Both sent in the same poll; which goes out first alternates.
        let (first, second) = if n % 2 == 0 { (1, 2) } else { (2, 1) };
        let (x, y) = futures_util::join!(
            c.post_message(first, &key, id, "one", Some("queue")),
            c.post_message(second, &key, id, "two", Some("queue"))
        );
        assert_eq!(x.status, 202, "{}", x.text);
        assert_eq!(y.status, 202, "{}", y.text);
    }
    let quoted: Vec<String> = ids.iter().map(|i| format!("'{i}'")).collect();
    let sql =
        format!("SELECT session_id FROM sessions WHERE session_id IN ({}) AND message_count = 2", quoted.join(","));
    let answered = eventually(Duration::from_secs(30), || async { c.db(&sql).await.len() == ids.len() }).await;
    assert!(answered, "both messages of every session were answered: {}", c.db(&sql).await.len());

    // Both won races: they did race.
    let owners = c.db("SELECT owner_instance, count(*) AS n FROM sessions GROUP BY owner_instance").await;
    for winner in ["b", "c"] {
        assert!(owners.iter().any(|o| o["owner_instance"] == winner), "{winner} took some: {owners:?}");
    }
    let argv = std::fs::read_to_string(c.root.path().join("argv.log")).unwrap();
    let starts: Vec<Value> = argv.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for (id, cli_id) in ids.iter().zip(&cli_ids) {
        // One start on A at the create, one for the race (`--session-id` again: no turn yet).
        let started: Vec<&Value> = starts
            .iter()
            .filter(|s| s["args"].as_array().unwrap().iter().any(|a| a.as_str().and_then(cli_arg) == Some(cli_id)))
            .collect();
        let row = c.row(id).await;
        let logs = || {
            let lines = |n: &Node| n.log().lines().filter(|l| l.contains(id.as_str())).collect::<Vec<_>>().join("\n");
            format!("{row}\nB:\n{}\nC:\n{}", lines(&c.nodes[1]), lines(&c.nodes[2]))
        };
        assert_eq!(
            started.len(),
            2,
            "session {id}: one CLI started for the two racing messages: {started:?}\n{}",
            logs()
        );
        let running = c.cli_processes(cli_id);
        assert_eq!(running.len(), 1, "session {id}: one CLI runs: {running:?}\n{}", logs());
    }
}

/// `SIGSTOP` of the owner past its lease, B takes the session over, `SIGCONT`: the old owner
/// writes nothing more for it (its writes are fenced) and its CLI is gone within 5 s.
#[actix_web::test]
async fn a_paused_owner_that_lost_its_lease_writes_nothing_and_stops_its_cli() {
    let c = Cluster::start(Spec::fake()).await;
    let key = c.user(0, "alice").await;
    let id = c.session(0, &key).await;
    assert_eq!(c.chat(0, &key, &id, "one").await.body["text"], "echo: one");
    let cli_id = c.row(&id).await["cli_session_id"].as_str().unwrap().to_string();
    let old_cli = c.cli_processes(&cli_id);
    assert_eq!(old_cli.len(), 1);

    // A turn runs on A (1.5 s) when A stops.
    let mut on_a = c.events(0, &key, &id, Some(0)).await;
    on_a.until_done().await;
    assert_eq!(c.post_message(0, &key, &id, "slow 15 100", None).await.status, 202);
    assert_eq!(on_a.next_frame().await.expect("the turn started").1["type"], "text_delta");
    c.nodes[0].signal("STOP");
    let expired = eventually(Duration::from_secs(TTL + 3), || async { c.row(&id).await["expired"] == true }).await;
    assert!(expired, "A's lease ran out: {}", c.row(&id).await);

    let res = c.chat(1, &key, &id, "two").await;
    assert_eq!(res.status, 200, "{}\nB's log:\n{}", res.text, c.nodes[1].log());
    assert_eq!(res.body["text"], "echo: two");
    let taken = c.row(&id).await;
    assert_eq!(taken["owner_instance"], "b", "{taken}");
    let snapshot = async |c: &Cluster| {
        let sql_events = format!("SELECT event_id, payload FROM events WHERE session_id = '{id}' ORDER BY event_id");
        let sql_messages = format!("SELECT id, role, text FROM messages WHERE session_id = '{id}' ORDER BY id");
        let sql_row = format!(
            "SELECT status, message_count, last_event_id, total_cost_usd, owner_instance, lease_generation \
             FROM sessions WHERE session_id = '{id}'"
        );
        (c.db(&sql_events).await, c.db(&sql_messages).await, c.db(&sql_row).await)
    };
    let before = snapshot(&c).await;
    let stored: Vec<&Value> = before.0.iter().map(|e| &e["event_id"]).collect();
    assert!(
        before.0.iter().any(|e| e["payload"].as_str().is_some_and(|p| p.contains("echo: one"))),
        "the events of A's first turn are still stored after B's first turn: ids {stored:?}"
    );

    c.nodes[0].signal("CONT");
    let started = Instant::now();
    let gone = eventually(Duration::from_secs(5), || async { old_cli.iter().all(|(_, p)| !process_alive(*p)) }).await;
    assert!(gone, "A's CLI is gone within 5 s of SIGCONT:\n{}", c.nodes[0].log());
    // What A does on waking (the rest of its turn's output, the heartbeat) is behind it.
    let noticed = eventually(Duration::from_secs(5), || async {
        c.nodes[0].logged("lease(s) taken by another instance") && c.nodes[0].logged("refused: fenced")
    })
    .await;
    assert!(noticed, "A's log says it lost the lease and that its writes were refused:\n{}", c.nodes[0].log());
    let health = c.health(0).await;
    assert_eq!(health["cluster"]["leases_lost"], 1, "{health}");
    assert_eq!(health["cluster"]["owned_sessions"], 0, "{health}");
    // Give A's late writes (the end of its turn) the time they would take, then compare.
    actix_web::rt::time::sleep(Duration::from_millis(1500).saturating_sub(started.elapsed())).await;
    let after = snapshot(&c).await;
    assert_eq!(after.0, before.0, "no event of A's after the takeover");
    assert_eq!(after.1, before.1, "no message of A's after the takeover");
    assert_eq!(after.2, before.2, "the session's row is B's");
    let texts: Vec<&str> = after.1.iter().filter_map(|m| m["text"].as_str()).collect();
    assert!(!texts.iter().any(|t| t.starts_with("w0 w1")), "A's late answer is not stored: {texts:?}");

    // B goes on: one CLI, B's, and the numbering continues.
    let res = c.chat(2, &key, &id, "three").await;
    assert_eq!(res.body["text"], "echo: three", "{}", res.text);
    let clis = c.cli_processes(&cli_id);
    assert_eq!(clis.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["b"], "{clis:?}");
    let mut replay = c.events(2, &key, &id, Some(0)).await;
    let all = replay.frames_until(|(_, f)| f["type"] == "done" && f["result"]["text"] == "echo: three").await;
    assert_increasing(&all, "/events");
    let done: Vec<&Value> =
        all.iter().filter(|(_, f)| f["type"] == "done").map(|(_, f)| &f["result"]["text"]).collect();
    assert_eq!(done, ["echo: one", "echo: two", "echo: three"], "the replay keeps what A stored before: {all:?}");
}

/// A restart of C (SIGTERM, start again) leaves A's and B's sessions `active`, their leases
/// where they were, and their `/events` streams going; C's own sessions resume anywhere.
#[actix_web::test]
async fn a_restart_of_one_instance_leaves_the_others_sessions_active_and_their_streams_unbroken() {
    let mut c = Cluster::start(Spec::fake()).await;
    let key = c.user(0, "alice").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let id = c.session(i, &key).await;
        assert_eq!(c.chat(i, &key, &id, "hi").await.status, 200);
        ids.push(id);
    }
    let rows_before: Vec<Value> = join_all(ids.iter().map(|id| c.row(id))).await;
    let cli_a = c.cli_processes(rows_before[0]["cli_session_id"].as_str().unwrap());
    let cli_b = c.cli_processes(rows_before[1]["cli_session_id"].as_str().unwrap());
    // Streams opened on the owners before the restart.
    let mut on_a = c.events(0, &key, &ids[0], Some(0)).await;
    let mut on_b = c.events(1, &key, &ids[1], Some(0)).await;
    on_a.until_done().await;
    on_b.until_done().await;

    c.restart(2).await;
    assert!(c.nodes[2].logged("cluster: instance c"), "{}", c.nodes[2].log());

    for (i, id) in ids[..2].iter().enumerate() {
        let got = c.call(2, Method::GET, &format!("/api/v1/sessions/{id}"), Some(&key), None).await;
        assert_eq!(got.body["status"], "active", "{}", got.text);
        let row = c.row(id).await;
        assert_eq!(row["owner_instance"], NAMES[i], "{row}");
        assert_eq!(row["lease_generation"], rows_before[i]["lease_generation"], "{row}");
    }
    assert!([cli_a, cli_b].concat().iter().all(|(_, p)| process_alive(*p)), "the other instances' CLIs run on");
    let drained = c.row(&ids[2]).await;
    assert_eq!((&drained["status"], &drained["owner_instance"]), (&json!("idle"), &Value::Null), "{drained}");

    // New turns, sent through the restarted C, reach the streams opened before.
    for (i, id) in ids[..2].iter().enumerate() {
        let res = c.post_message(2, &key, id, &format!("after {i}"), None).await;
        assert_eq!(res.status, 202, "{}", res.text);
    }
    let (turn_a, turn_b) = futures_util::join!(on_a.until_done(), on_b.until_done());
    assert_eq!(text_of(&turn_a), "echo: after 0");
    assert_eq!(text_of(&turn_b), "echo: after 1");
    // C's drained session resumes on the next message, wherever it arrives.
    assert_eq!(c.chat(0, &key, &ids[2], "back").await.body["text"], "echo: back");
}

/// A request that claims to come from an instance with a wrong `x-cluster-secret` is an
/// ordinary client's: its `x-cluster-client` is ignored, so an attacker cannot move his
/// failed authentications onto another address (here, a victim's).
#[actix_web::test]
async fn a_forged_cluster_request_gets_no_trust_and_its_failed_attempts_count_against_its_sender() {
    let c = Cluster::start_n(
        Spec::fake()
            .env("CLAUDE_AGENT_AUTH__FAILED_AUTH_BURST", "3")
            .env("CLAUDE_AGENT_AUTH__FAILED_AUTH_PER_MINUTE", "1"),
        2,
    )
    .await;
    let key = c.user(0, "alice").await;
    let id = c.session(0, &key).await;
    let attacker = client_from("127.0.0.2".parse().unwrap());
    let forged = async |path: &str, key: &str, spoofed: &str| {
        attacker
            .get(format!("{}{path}", c.url(0)))
            .insert_header(("Authorization", format!("Bearer {key}")))
            .insert_header(("x-cluster-secret", "not-the-secret"))
            .insert_header(("x-cluster-from", "b"))
            .insert_header(("x-cluster-client", spoofed))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let wrong = "cah_0123456789abcdef_wrong";
    let path = format!("/api/v1/sessions/{id}");
    for n in 0..3 {
        // Each attempt names another "client", or the victim's own address.
        let spoofed = if n == 0 { "127.0.0.1".to_string() } else { format!("198.51.100.{n}") };
        assert_eq!(forged(&path, wrong, &spoofed).await, 401);
    }
    assert_eq!(forged(&path, wrong, "198.51.100.9").await, 429, "the attacker's own address is limited");
    assert_eq!(forged(&path, &key, "198.51.100.10").await, 429, "even with a good key");
    // The victim, on 127.0.0.1, whose address the attacker named: unaffected.
    let res = c.call(0, Method::GET, &path, Some(&key), None).await;
    assert_eq!(res.status, 200, "{}", res.text);
    // A forged header does not make an instance serve another's session as if a peer sent it:
    // the chat still goes to the owner, B.
    let on_b = c.session(1, &key).await;
    let mut res = c
        .client
        .post(format!("{}/api/v1/chat", c.url(0)))
        .insert_header(("Authorization", format!("Bearer {key}")))
        .insert_header(("x-cluster-secret", "not-the-secret"))
        .insert_header(("x-cluster-from", "b"))
        .send_json(&json!({"session_id": on_b, "message": "via a"}))
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!((res.status().as_u16(), &body["text"]), (200, &json!("echo: via a")), "{body}");
    assert_eq!(c.row(&on_b).await["owner_instance"], "b");
}

fn client_from(source: IpAddr) -> awc::Client {
    awc::Client::builder()
        .connector(awc::Connector::new().local_address(source))
        .timeout(Duration::from_secs(30))
        .finish()
}

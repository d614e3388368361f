//! Benchmark of the service against the fake CLI (examples/fake_claude.rs). Prints, for one run:
//! - overhead per turn of the service over driving the fake CLI directly (p50, p99),
//! - latency from the CLI writing its first stdout line of a turn to the first SSE byte,
//! - the service's RSS idle and per idle session (CLI processes excluded),
//! - turns per second across 100 sessions, and 200 concurrent streams × 20 turns,
//! - the service's own CPU time per turn (user + system, CLI processes excluded),
//! - create → first answer with the CLI pre-started versus started cold at the first message,
//! - 10,000 `/events` followers that connect and leave: live follower tasks and RSS before,
//!   with them, and after they left.
//!
//! `cargo build --release --examples && target/release/examples/bench`
//! (`--turns N` changes the sample size; default 300; `--followers N` sets the followers,
//! default 10,000, `--rounds N` how many times they come and go, default 2; `--only followers`
//! runs that scenario alone).
//! `--only scale`: turns/s across 10 and 1,000 sessions, and one session after 300 and 6,000
//! turns (bench_parts/scale.rs; part of the default run).
//! `--only cpu [--turns N]`: the service's CPU per warm sync turn on one session, alone (for a
//! profiler: `BENCH_SERVICE_WRAPPER="valgrind --tool=callgrind"` runs the service under it).
//! `--only outage [--outage-secs 60] [--outage-sessions 20]`: PostgreSQL stopped under load on a
//! private cluster (needs postgresql-common's `pg_createcluster`; see bench_parts/outage.rs).
//! `--only cluster [--turns N] [--lease-ttl S]`: two instances on one PostgreSQL: a turn and an
//! SSE frame forwarded versus direct, and the takeover after a `kill -9` of the owner
//! (bench_parts/cluster.rs).
//!
//! `--real-cli [--robin-rounds N]` runs instead the start-up and memory scenarios with the real CLI
//! (`REAL_CLAUDE_PATH`, default `.cli/node_modules/.bin/claude` from scripts/install-cli)
//! against examples/mock_anthropic.rs: bursts of 10 and 20 creates each followed by one
//! message (create → first answer), and 50 sessions in round robin with memory room for 5
//! CLIs (turns answered without a client retry; latency against one respawn + turn).
//! `--real-cli --only bursts`: the bursts alone.
//! `--real-cli --only cli-floor [--floor 10x2,20x4]`: the floor those are read against, the
//! real CLI started directly (no service) on the service's recipe, N at K at a time.
//!
//! The service runs as a child process (this binary re-run with `--serve`, the library's
//! `Application` on settings from the environment), so its RSS is its own.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde_json::{Value, json};

#[path = "bench_parts/cluster.rs"]
mod cluster;
#[path = "bench_parts/outage.rs"]
mod outage;
#[path = "bench_parts/real_cli.rs"]
mod real_cli;
#[path = "bench_parts/scale.rs"]
mod scale;

const ADMIN_KEY: &str = "bench-admin-key-0123456789";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        serve();
        return;
    }
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let turns = value("--turns").and_then(|n| n.parse().ok());
    let followers = value("--followers").and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let rounds = value("--rounds").and_then(|n| n.parse().ok()).unwrap_or(2);
    let only = value("--only").map(String::as_str);
    if args.iter().any(|a| a == "--real-cli") {
        if only == Some("cli-floor") {
            let specs: Vec<(usize, usize)> = match value("--floor") {
                Some(list) => list
                    .split(',')
                    .filter_map(|s| s.split_once('x'))
                    .filter_map(|(n, k)| Some((n.parse().ok()?, k.parse().ok()?)))
                    .collect(),
                None => vec![(1, 1), (1, 1), (1, 1), (10, 1), (10, 2), (10, 3), (10, 4), (20, 2), (20, 4)],
            };
            real_cli::floor(&specs);
            return;
        }
        let rounds = value("--robin-rounds").and_then(|n| n.parse().ok()).unwrap_or(1);
        actix_web::rt::System::new().block_on(real_cli::run(rounds, only == Some("bursts")));
        return;
    }
    actix_web::rt::System::new().block_on(async {
        if only == Some("outage") {
            let secs = value("--outage-secs").and_then(|n| n.parse().ok()).unwrap_or(60);
            let sessions = value("--outage-sessions").and_then(|n| n.parse().ok()).unwrap_or(20);
            outage::run(secs, sessions).await;
            return;
        }
        if only == Some("cluster") {
            let ttl = value("--lease-ttl").and_then(|n| n.parse().ok()).unwrap_or(15);
            cluster::run(turns.unwrap_or(500), ttl).await;
            return;
        }
        if only == Some("scale") {
            scale::run().await;
            return;
        }
        if only == Some("cpu") {
            scale::cpu_per_turn(turns.unwrap_or(300)).await;
            return;
        }
        if only != Some("followers") {
            run(turns.unwrap_or(300)).await;
            scale::run().await;
        }
        followers_come_and_go(followers, rounds).await;
    });
}

/// The service on settings from the environment (`CLAUDE_AGENT_*`).
fn serve() {
    actix_web::rt::System::new().block_on(async {
        env_logger::Builder::from_env(
            env_logger::Env::default().default_filter_or("warn,claude_agent_http::startup=info"),
        )
        .format_timestamp_millis()
        .init();
        let settings = claude_agent_http::Settings::load(None).expect("settings");
        let app = claude_agent_http::Application::build(settings).await.expect("service starts");
        app.run_until_stopped().await.expect("service runs");
    });
}

fn fake_cli() -> PathBuf {
    let me = std::env::current_exe().expect("own path");
    let fake = me.with_file_name("fake_claude");
    assert!(fake.exists(), "{} missing: cargo build --release --examples", fake.display());
    fake
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

struct Service {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Service {
    fn drop(&mut self) {
        // SIGTERM: the service stops every CLI before it exits.
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

impl Service {
    fn start(extra_env: &[(&str, &str)]) -> Service {
        let dir = tempfile::tempdir().expect("temp dir");
        let me = std::env::current_exe().expect("own path");
        // `BENCH_SERVICE_WRAPPER="valgrind --tool=callgrind"` runs the service under a profiler.
        let wrapper = std::env::var("BENCH_SERVICE_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut cmd = match words.next() {
            Some(program) => {
                let mut cmd = Command::new(program);
                cmd.args(words).arg(me);
                cmd
            }
            None => Command::new(me),
        };
        cmd.arg("--serve").current_dir(dir.path());
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("CLAUDE_AGENT_")) {
            cmd.env_remove(k);
        }
        cmd.env("CLAUDE_AGENT_API__PORT", "0")
            .env("CLAUDE_AGENT_ADMIN_KEY", ADMIN_KEY)
            .env("CLAUDE_AGENT_CLI__PATH", fake_cli())
            .env("CLAUDE_AGENT_API__MAX_SESSIONS", "500")
            .env("CLAUDE_AGENT_API__MAX_SESSIONS_PER_USER", "500")
            .env("CLAUDE_AGENT_API__MAX_CONCURRENT_REQUESTS", "200")
            .env("CLAUDE_AGENT_API__MEMORY_LIMIT_MB", "100000")
            .env("CLAUDE_AGENT_API__WORKERS", "2")
            .env("CLAUDE_AGENT_CLI__STOP_GRACE", "1");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("service spawns");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let port = loop {
            let line = lines.next().expect("service log").expect("utf-8 log");
            if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
                break rest.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()).expect("port");
            }
        };
        // Keep draining the log so the service never blocks on it; `BENCH_SERVICE_LOG=<file>`
        // keeps it (with `RUST_LOG=debug`, a timeline of every start).
        let mut keep = std::env::var("BENCH_SERVICE_LOG").ok().and_then(|p| std::fs::File::create(p).ok());
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some(file) = keep.as_mut() {
                    let _ = writeln!(file, "{line}");
                }
            }
        });
        Service { child, url: format!("http://127.0.0.1:{port}"), _dir: dir }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// The service's own CPU time so far (user + system), in ms.
    fn cpu_ms(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let Some(close) = stat.rfind(')') else { return 0.0 };
        // After the name: state(0) … utime(11) stime(12), in clock ticks.
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let ticks: f64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<f64>().ok()).sum();
        // SAFETY: sysconf has no preconditions.
        let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        ticks * 1000.0 / per_sec
    }
}

struct Api {
    client: awc::Client,
    url: String,
    key: String,
}

impl Api {
    /// The same service and key over a connection pool of its own (one per simulated client).
    fn with_own_client(&self) -> Api {
        Api {
            client: awc::Client::builder().timeout(Duration::from_secs(120)).finish(),
            url: self.url.clone(),
            key: self.key.clone(),
        }
    }
}

impl Api {
    async fn new(service: &Service, user: &str) -> Api {
        let client = awc::Client::builder().timeout(Duration::from_secs(120)).finish();
        let mut res = client
            .post(format!("{}/api/v1/users", service.url))
            .insert_header(("Authorization", format!("Bearer {ADMIN_KEY}")))
            .send_json(&json!({"user_id": user}))
            .await
            .expect("create user");
        let body: Value = res.json().await.expect("user json");
        Api { client, url: service.url.clone(), key: body["api_key"].as_str().expect("key").to_string() }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let mut res = self
            .client
            .post(format!("{}{path}", self.url))
            .insert_header(("Authorization", format!("Bearer {}", self.key)))
            .send_json(&body)
            .await
            .expect("request");
        res.json::<Value>().limit(64 * 1024 * 1024).await.expect("json")
    }

    async fn create_session(&self) -> String {
        self.post("/api/v1/sessions", json!({})).await["session_id"].as_str().expect("session id").to_string()
    }

    async fn wait_active(&self, id: &str) {
        for _ in 0..2000 {
            let mut res = self
                .client
                .get(format!("{}/api/v1/sessions/{id}", self.url))
                .insert_header(("Authorization", format!("Bearer {}", self.key)))
                .send()
                .await
                .expect("get");
            let body: Value = res.json().await.expect("json");
            if body["status"] == "active" {
                return;
            }
            actix_web::rt::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("session {id} never became active");
    }

    async fn chat(&self, id: &str, message: &str) -> Value {
        let body = self.post("/api/v1/chat", json!({"session_id": id, "message": message})).await;
        assert!(body["text"].is_string(), "chat failed: {body}");
        body
    }

    /// One streamed turn, read to its end; panics unless it ends with a `done` frame.
    async fn stream(&self, id: &str, message: &str) {
        let mut res = self
            .client
            .post(format!("{}/api/v1/chat/stream", self.url))
            .insert_header(("Authorization", format!("Bearer {}", self.key)))
            .send_json(&json!({"session_id": id, "message": message}))
            .await
            .expect("stream");
        let body = res.body().limit(64 * 1024 * 1024).await.expect("stream body");
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("\"type\":\"done\""), "stream did not end with done: {text}");
    }

    /// Opens a stream and returns the wall-clock time its first `data:` bytes arrived, and the stamp.
    async fn first_sse_byte(&self, id: &str) -> (u128, u128) {
        let mut res = self
            .client
            .post(format!("{}/api/v1/chat/stream", self.url))
            .insert_header(("Authorization", format!("Bearer {}", self.key)))
            .send_json(&json!({"session_id": id, "message": "stamp"}))
            .await
            .expect("stream");
        let mut seen = String::new();
        let mut arrived = None;
        while let Some(chunk) = res.next().await {
            let chunk = chunk.expect("chunk");
            if arrived.is_none() && chunk.windows(5).any(|w| w == b"data:") {
                arrived = Some(now_ns());
            }
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        let stamp = seen
            .split("stamp:")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .expect("stamp in stream");
        (arrived.expect("a data frame"), stamp)
    }
}

/// The fake CLI driven over its pipes, the way the service drives it, without the service.
struct Direct {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    _dir: tempfile::TempDir,
}

impl Direct {
    fn start() -> Direct {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(fake_cli())
            .args([
                "--output-format=stream-json",
                "--verbose",
                "--input-format=stream-json",
                "--include-partial-messages",
            ])
            .arg(format!("--session-id={}", uuid::Uuid::new_v4()))
            .env("CLAUDE_CONFIG_DIR", dir.path())
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("fake spawns");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut d = Direct { child, stdin, stdout, _dir: dir };
        d.send(&json!({"type":"control_request","request_id":"init","request":{"subtype":"initialize"}}));
        d.read_until(|v| v["type"] == "control_response");
        d
    }

    fn send(&mut self, v: &Value) {
        writeln!(self.stdin, "{v}").expect("write");
        self.stdin.flush().expect("flush");
    }

    fn read_until(&mut self, done: impl Fn(&Value) -> bool) -> Vec<(u128, Value)> {
        let mut seen = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            assert!(self.stdout.read_line(&mut line).expect("read") > 0, "fake ended");
            let at = now_ns();
            let v: Value = serde_json::from_str(&line).expect("json line");
            let end = done(&v);
            seen.push((at, v));
            if end {
                return seen;
            }
        }
    }

    fn turn(&mut self, text: &str) -> Vec<(u128, Value)> {
        self.send(&json!({"type":"user","message":{"role":"user","content":text},"parent_tool_use_id":null,
            "session_id":"","uuid":uuid::Uuid::new_v4().to_string()}));
        self.read_until(|v| v["type"] == "result")
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `per_session` sync turns on each session, every session with a client of its own, all at once.
async fn chat_on_each(api: &Api, ids: &[String], per_session: usize) {
    let clients = ids.iter().map(|id| {
        let api = api.with_own_client();
        let id = id.clone();
        async move {
            for _ in 0..per_session {
                api.chat(&id, "bench").await;
            }
        }
    });
    futures_util::future::join_all(clients).await;
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (percentile(&ms, 0.5), percentile(&ms, 0.99))
}

async fn run(turns: usize) {
    println!("claude-agent-http benchmark ({} turns per latency sample, fake CLI {})", turns, fake_cli().display());
    println!("machine: {} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));

    // 1. Per-turn latency: directly over the pipes, then through the service (sync /chat).
    let mut direct = Direct::start();
    for _ in 0..20 {
        direct.turn("warm up");
    }
    let direct_ms: Vec<f64> = (0..turns)
        .map(|_| {
            let t = Instant::now();
            direct.turn("bench");
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    // The direct pipe's own line latency (stamp → line read), the floor for the SSE figure.
    let pipe_us: Vec<f64> = (0..turns)
        .map(|_| {
            let lines = direct.turn("stamp");
            let (at, v) = lines.iter().find(|(_, v)| v["type"] == "stream_event").expect("delta");
            let stamp: u128 = v["event"]["delta"]["text"].as_str().unwrap()["stamp:".len()..].parse().unwrap();
            (at - stamp) as f64 / 1000.0
        })
        .collect();
    drop(direct);

    let service = Service::start(&[]);
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = service.rss_kib();
    let api = Api::new(&service, "bench").await;
    let id = api.create_session().await;
    api.wait_active(&id).await;
    for _ in 0..20 {
        api.chat(&id, "warm up").await;
    }
    let mut service_ms = Vec::with_capacity(turns);
    for _ in 0..turns {
        let t = Instant::now();
        api.chat(&id, "bench").await;
        service_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (d50, d99) = summary(direct_ms);
    let (s50, s99) = summary(service_ms);
    println!();
    println!("per-turn latency, fake CLI echo turn:");
    println!("  driving the CLI directly:   p50 {d50:7.3} ms   p99 {d99:7.3} ms");
    println!("  through the service (/chat): p50 {s50:7.3} ms   p99 {s99:7.3} ms");
    println!("  service overhead per turn:  p50 {:7.3} ms   p99 {:7.3} ms", s50 - d50, s99 - d99);

    // 2. CLI's first stdout line of a turn → first SSE byte at the client.
    let mut sse_us = Vec::with_capacity(turns);
    for _ in 0..turns {
        let (arrived, stamp) = api.first_sse_byte(&id).await;
        sse_us.push((arrived.saturating_sub(stamp)) as f64 / 1000.0);
    }
    let (p50, p99) = summary(sse_us);
    let (pipe50, pipe99) = summary(pipe_us);
    println!();
    println!("CLI stdout line → first SSE byte at an HTTP client (loopback):");
    println!("  through the service:        p50 {:7.3} ms   p99 {:7.3} ms", p50 / 1000.0, p99 / 1000.0);
    println!("  the bare pipe (no service): p50 {:7.3} ms   p99 {:7.3} ms", pipe50 / 1000.0, pipe99 / 1000.0);

    // 3. RSS idle and per idle session (the service only; every session has its own fake CLI).
    let sessions = 100;
    let mut ids = Vec::new();
    for _ in 0..sessions {
        ids.push(api.create_session().await);
    }
    for id in &ids {
        api.wait_active(id).await;
    }
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    let with_sessions = service.rss_kib();
    println!();
    println!("service RSS (CLI processes excluded):");
    println!("  idle, no session:           {:7.1} MiB", idle_rss as f64 / 1024.0);
    println!(
        "  with {} idle sessions:     {:7.1} MiB  → {:.1} KiB per idle session",
        sessions + 1,
        with_sessions as f64 / 1024.0,
        (with_sessions.saturating_sub(idle_rss)) as f64 / (sessions + 1) as f64
    );

    // 4. Throughput: 100 sessions, each with its own client, 20 turns each.
    let per_session = 20;
    let cpu_before = service.cpu_ms();
    let started = Instant::now();
    chat_on_each(&api, &ids, per_session).await;
    let elapsed = started.elapsed().as_secs_f64();
    println!();
    println!(
        "throughput: {} turns across {sessions} sessions in {elapsed:.2} s → {:.0} turns/s",
        sessions * per_session,
        (sessions * per_session) as f64 / elapsed
    );
    println!(
        "  service CPU per turn:       {:7.3} ms",
        (service.cpu_ms() - cpu_before) / (sessions * per_session) as f64
    );

    // 4b. 200 concurrent streams (`/chat/stream`), each on its own session, 20 turns each.
    let streams = 200;
    let mut stream_ids = ids.clone();
    while stream_ids.len() < streams {
        stream_ids.push(api.create_session().await);
    }
    for id in &stream_ids {
        api.wait_active(id).await;
    }
    let cpu_before = service.cpu_ms();
    let started = Instant::now();
    let clients = stream_ids.iter().map(|id| {
        let api = api.with_own_client();
        let id = id.clone();
        async move {
            for _ in 0..per_session {
                api.stream(&id, "bench").await;
            }
        }
    });
    futures_util::future::join_all(clients).await;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "throughput: {} turns over {streams} concurrent streams in {elapsed:.2} s → {:.0} turns/s",
        streams * per_session,
        (streams * per_session) as f64 / elapsed
    );
    println!(
        "  service CPU per turn:       {:7.3} ms",
        (service.cpu_ms() - cpu_before) / (streams * per_session) as f64
    );
    drop(service);

    // 5. Create → first answer, with a CLI that takes 300 ms to start (like the real one).
    // The CLI's environment is an allowlist: the delay reaches the fake through cli.env.
    let slow_start = [
        ("CLAUDE_AGENT_CLI__ENV", "{FAKE_CLAUDE_INIT_DELAY_MS = \"300\"}"),
        ("CLAUDE_AGENT_API__IDLE_SESSION_TIMEOUT", "1"),
    ];
    let service = Service::start(&slow_start);
    let api = Api::new(&service, "starter").await;
    let mut prestarted = Vec::new();
    let mut immediate = Vec::new();
    let mut cold = Vec::new();
    for _ in 0..5 {
        // Pre-started: create, the client takes 500 ms to type, then its message.
        let id = api.create_session().await;
        actix_web::rt::time::sleep(Duration::from_millis(500)).await;
        let t = Instant::now();
        api.chat(&id, "hello").await;
        prestarted.push(t.elapsed().as_secs_f64() * 1000.0);
        // Cold: the same session once its CLI was stopped (idle eviction): spawn at the message.
        wait_idle(&api, &id).await;
        let t = Instant::now();
        api.chat(&id, "hello again").await;
        cold.push(t.elapsed().as_secs_f64() * 1000.0);
        // Create and message at once: the message waits for the start already under way.
        let t = Instant::now();
        let id = api.create_session().await;
        api.chat(&id, "hello").await;
        immediate.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let median = |v: Vec<f64>| summary(v).0;
    println!();
    println!("first answer, CLI start-up 300 ms (median of 5):");
    println!("  pre-started (create, 500 ms, message): message → answer {:7.1} ms", median(prestarted));
    println!("  create and message at once:            create → answer  {:7.1} ms", median(immediate));
    println!("  cold (CLI spawned at the message):     message → answer {:7.1} ms", median(cold));
    drop(service);
}

async fn wait_idle(api: &Api, id: &str) {
    for _ in 0..600 {
        let mut res = api
            .client
            .get(format!("{}/api/v1/sessions/{id}", api.url))
            .insert_header(("Authorization", format!("Bearer {}", api.key)))
            .send()
            .await
            .expect("get");
        let body: Value = res.json().await.expect("json");
        if body["status"] == "idle" {
            return;
        }
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("session {id} was not evicted");
}

/// `n` clients open `/events` on 10 sessions (each with one turn to replay), then all leave at
/// once. Live follower tasks are the `claude_agent_event_followers` gauge; RSS is the service's.
async fn followers_come_and_go(n: usize, rounds: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let service = Service::start(&[]);
    let api = Api::new(&service, "followers").await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        let id = api.create_session().await;
        api.wait_active(&id).await;
        api.chat(&id, "hello").await;
        ids.push(id);
    }
    let gauge = |name: &'static str| {
        let api = &api;
        async move {
            let mut res = api.client.get(format!("{}/metrics", api.url)).send().await.expect("metrics");
            let text = String::from_utf8_lossy(&res.body().limit(1 << 24).await.expect("body")).to_string();
            let line =
                text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' ')).map(str::to_owned);
            line.and_then(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok())).unwrap_or(-1.0)
        }
    };
    let threads = |pid: u32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status.lines().find_map(|l| l.strip_prefix("Threads:").map(|t| t.trim().to_string())).unwrap_or_default()
    };
    let pid = service.child.id();
    let addr = service.url.trim_start_matches("http://").to_string();
    let report = |when: &str, followers: f64, rss: u64| {
        println!(
            "  {when:<28} followers {followers:6.0}   RSS {:7.1} MiB   threads {}",
            rss as f64 / 1024.0,
            threads(pid)
        );
    };
    // The gauge is read throughout (every 50 ms while followers leave): the base is taken
    // after its first read, so the first scrape's own memory is not counted as the followers'.
    let before = gauge("claude_agent_event_followers").await;
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    let base = service.rss_kib();
    println!();
    println!("{n} /events followers connect, then leave (service RSS, CLI processes excluded):");
    report("before:", before, base);

    let open = |i: usize| {
        let (addr, key, id) = (addr.clone(), api.key.clone(), ids[i % ids.len()].clone());
        async move {
            let mut socket = tokio::net::TcpStream::connect(&addr).await.expect("connect");
            let request = format!(
                "GET /api/v1/sessions/{id}/events HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n\r\n"
            );
            socket.write_all(request.as_bytes()).await.expect("request");
            let mut head = [0u8; 12];
            socket.read_exact(&mut head).await.expect("response head");
            assert_eq!(&head, b"HTTP/1.1 200", "events stream opens");
            socket
        }
    };
    // A second round tells memory kept for good (a leak) from memory kept once (warm-up).
    for round in 1..=rounds {
        if rounds > 1 {
            println!("  round {round}:");
        }
        let mut clients = Vec::with_capacity(n);
        let started = Instant::now();
        while clients.len() < n {
            let batch = (clients.len()..(clients.len() + 200).min(n)).map(open);
            clients.extend(futures_util::future::join_all(batch).await);
        }
        let connected_in = started.elapsed().as_secs_f64();
        actix_web::rt::time::sleep(Duration::from_millis(500)).await;
        let peak = service.rss_kib();
        report(&format!("with {n} (in {connected_in:.1} s):"), gauge("claude_agent_event_followers").await, peak);

        drop(clients);
        let left = Instant::now();
        let mut live = gauge("claude_agent_event_followers").await;
        while live > 0.0 && left.elapsed() < Duration::from_secs(30) {
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
            live = gauge("claude_agent_event_followers").await;
        }
        let gone_in = left.elapsed().as_secs_f64();
        report(&format!("all left, tasks gone {gone_in:.2} s:"), live, service.rss_kib());
        for wait in [1, 5, 15] {
            let at = left + Duration::from_secs(wait);
            actix_web::rt::time::sleep(at.saturating_duration_since(Instant::now())).await;
            report(
                &format!("{wait:>2} s after they left:"),
                gauge("claude_agent_event_followers").await,
                service.rss_kib(),
            );
        }
        let after = service.rss_kib();
        println!(
            "  RSS after / before: {:.2} ({:+.1} MiB; peak {:+.1} MiB, {:.1} KiB per follower)",
            after as f64 / base as f64,
            (after as f64 - base as f64) / 1024.0,
            (peak as f64 - base as f64) / 1024.0,
            (peak.saturating_sub(base)) as f64 / n.max(1) as f64
        );
    }
    drop(service);
}

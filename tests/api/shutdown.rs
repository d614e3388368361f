//! The service as a process: SIGTERM with live sessions, a second signal, and a restart after
//! `kill -9`. Processes are checked in /proc.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use claude_agent_http::memory::ProcessTable;
use serde_json::{Value, json};

use crate::helpers::{all_gone, fake_cli_path, process_alive};

const BIN: &str = env!("CARGO_BIN_EXE_claude-agent-http");
const ADMIN: &str = "shutdown-test-admin-key-0123";

pub struct Service {
    pub child: Child,
    pub url: String,
    pub client: awc::Client,
    /// Every line the service logged after its "listening" line.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Service {
    fn start(dir: &Path) -> Service {
        Service::start_with(dir, &fake_cli_path(), &[])
    }

    /// The service binary in `dir` with `cli` as its CLI and `env` on top of the test settings.
    pub fn start_with(dir: &Path, cli: &Path, env: &[(&str, &str)]) -> Service {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(dir);
        for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("CLAUDE_AGENT_")) {
            cmd.env_remove(name);
        }
        let mut child = cmd
            .env("CLAUDE_AGENT_API__PORT", "0")
            .env("CLAUDE_AGENT_ADMIN_KEY", ADMIN)
            .env("CLAUDE_AGENT_CLI__PATH", cli)
            .env("CLAUDE_AGENT_CLI__STOP_GRACE", "1")
            .env("CLAUDE_AGENT_API__SHUTDOWN_GRACE", "2")
            .env("CLAUDE_AGENT_API__MAX_SESSIONS_PER_USER", "50")
            .env("CLAUDE_AGENT_API__MAX_SESSIONS", "50")
            .env("CLAUDE_AGENT_API__MAX_CONCURRENT_REQUESTS", "50")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let port = loop {
            let line = lines.next().expect("service log").unwrap();
            if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
                break rest.split_whitespace().next().unwrap().parse::<u16>().unwrap();
            }
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        Service {
            child,
            url: format!("http://127.0.0.1:{port}"),
            client: awc::Client::builder().timeout(Duration::from_secs(60)).finish(),
            log,
        }
    }

    pub async fn call(&self, method: awc::http::Method, path: &str, key: &str, body: Option<Value>) -> Value {
        let req = self
            .client
            .request(method, format!("{}{path}", self.url))
            .insert_header(("Authorization", format!("Bearer {key}")));
        let mut res = match body {
            Some(b) => req.send_json(&b).await.unwrap(),
            None => req.send().await.unwrap(),
        };
        let bytes = res.body().await.unwrap();
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().unwrap();
    }

    fn descendants(&self) -> Vec<u32> {
        ProcessTable::read().descendants(self.child.id())
    }

    /// Waits for the exit; its status and how long it took.
    pub fn wait(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(started.elapsed() < limit, "the service did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A test that failed half-way does not leave its service running: it is asked to stop.
impl Drop for Service {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal("TERM");
        }
    }
}

use awc::http::Method;

pub async fn user(service: &Service) -> String {
    service.call(Method::POST, "/api/v1/users", ADMIN, Some(json!({"user_id": "alice"}))).await["api_key"]
        .as_str()
        .unwrap()
        .to_string()
}

#[actix_web::test]
async fn sigterm_with_20_live_sessions_leaves_no_process_and_every_session_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::start(dir.path());
    let key = user(&service).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        let s = service.call(Method::POST, "/api/v1/sessions", &key, Some(json!({}))).await;
        ids.push(s["session_id"].as_str().unwrap().to_string());
    }
    for id in &ids[..3] {
        let res =
            service.call(Method::POST, "/api/v1/chat", &key, Some(json!({"session_id": id, "message": "spawn"}))).await;
        assert!(res["text"].as_str().unwrap().starts_with("spawned"), "{res}");
    }
    for id in &ids[3..8] {
        service
            .call(
                Method::POST,
                &format!("/api/v1/sessions/{id}/messages"),
                &key,
                Some(json!({"message": "slow 200 50"})),
            )
            .await;
    }
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    let pids = service.descendants();
    assert!(pids.len() >= 23, "20 CLIs and 3 grandchildren: {}", pids.len());

    service.signal("TERM");
    let (status, took) = service.wait(Duration::from_secs(30));
    assert!(status.success(), "exit 0 after SIGTERM: {status:?}");
    assert!(took < Duration::from_secs(15), "turns got api.shutdown_grace, then an interrupt: {took:?}");
    assert!(pids.iter().all(|p| !process_alive(*p)), "no process outlives the service");

    let service = Service::start(dir.path());
    for id in &ids {
        let s = service.call(Method::GET, &format!("/api/v1/sessions/{id}"), &key, None).await;
        assert_eq!(s["status"], "idle", "{s}");
        let res =
            service.call(Method::POST, "/api/v1/chat", &key, Some(json!({"session_id": id, "message": "again"}))).await;
        assert_eq!(res["text"], "echo: again", "{res}");
    }
    service.signal("TERM");
}

#[actix_web::test]
async fn a_second_signal_stops_every_cli_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::start(dir.path());
    let key = user(&service).await;
    let s = service.call(Method::POST, "/api/v1/sessions", &key, Some(json!({}))).await;
    let id = s["session_id"].as_str().unwrap();
    // A CLI that ignores interrupts and stdin: only signals end it.
    service
        .call(Method::POST, &format!("/api/v1/sessions/{id}/messages"), &key, Some(json!({"message": "hang"})))
        .await;
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    let pids = service.descendants();
    assert!(!pids.is_empty());
    service.signal("TERM");
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    service.signal("TERM");
    let (status, took) = service.wait(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(3), "the second signal skipped the graces: {took:?}");
    assert!(all_gone(&pids).await);
}

#[actix_web::test]
async fn a_restart_after_kill_9_reaps_what_the_old_run_left() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::start(dir.path());
    let key = user(&service).await;
    let s = service.call(Method::POST, "/api/v1/sessions", &key, Some(json!({}))).await;
    let id = s["session_id"].as_str().unwrap();
    let res =
        service.call(Method::POST, "/api/v1/chat", &key, Some(json!({"session_id": id, "message": "spawn"}))).await;
    let grandchild: u32 = res["text"].as_str().unwrap().strip_prefix("spawned ").unwrap().parse().unwrap();
    service.signal("KILL");
    service.wait(Duration::from_secs(5));
    // The CLI died with the service (parent-death signal); its tool did not.
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    assert!(process_alive(grandchild), "an orphan is left behind by kill -9");
    let service = Service::start(dir.path());
    assert!(all_gone(&[grandchild]).await, "the next start reaped it");
    service.signal("TERM");
}

//! `--real-cli`: the start-up and memory scenarios of the real CLI against mock_anthropic
//! (see the top of bench.rs).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Api, Service, summary};

fn cli_path() -> PathBuf {
    let path = std::env::var("REAL_CLAUDE_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cli/node_modules/.bin/claude"));
    assert!(path.exists(), "the real CLI is missing at {}: run scripts/install-cli", path.display());
    path
}

/// examples/mock_anthropic.rs on a free port; killed on drop.
struct Mock {
    child: Child,
    url: String,
}

impl Mock {
    fn start() -> Mock {
        let bin = super::fake_cli().with_file_name("mock_anthropic");
        let mut child = Command::new(&bin)
            .arg("0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("mock address");
        let addr = line.trim().strip_prefix("listening on ").expect("mock prints its address").to_string();
        Mock { child, url: format!("http://{addr}") }
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the bench gives the CLIs in `cli.env` (the service's and the floor's alike).
fn bench_cli_env(mock: &Mock) -> Vec<(String, String)> {
    [
        ("ANTHROPIC_BASE_URL", mock.url.as_str()),
        ("ANTHROPIC_API_KEY", "bench-offline"),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
        ("DISABLE_TELEMETRY", "1"),
        ("CLAUDE_CODE_MAX_RETRIES", "0"),
        ("IS_SANDBOX", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The service running the real CLI against `mock`, plus `extra` settings.
fn start_service(mock: &Mock, extra: &[(&str, &str)]) -> Service {
    let pairs: Vec<String> = bench_cli_env(mock).iter().map(|(k, v)| format!("{k} = \"{v}\"")).collect();
    let cli_env = format!("{{{}}}", pairs.join(", "));
    let path = cli_path().display().to_string();
    let mut env: Vec<(&str, &str)> = vec![
        ("CLAUDE_AGENT_CLI__PATH", &path),
        ("CLAUDE_AGENT_CLI__ENV", &cli_env),
        ("CLAUDE_AGENT_DEFAULTS__MODEL", "claude-sonnet-4-5"),
    ];
    // `BENCH_MAX_CONCURRENT_STARTS` tries another cli.max_concurrent_starts (the service's
    // own CLAUDE_AGENT_* environment is not passed on).
    let starts = std::env::var("BENCH_MAX_CONCURRENT_STARTS").unwrap_or_default();
    if !starts.is_empty() {
        env.push(("CLAUDE_AGENT_CLI__MAX_CONCURRENT_STARTS", &starts));
    }
    // `BENCH_START_HOLD_MS` tries another cli.start_holds_first_turn_ms (0: released at ready).
    let hold = std::env::var("BENCH_START_HOLD_MS").unwrap_or_default();
    if !hold.is_empty() {
        env.push(("CLAUDE_AGENT_CLI__START_HOLDS_FIRST_TURN_MS", &hold));
    }
    // `BENCH_SERVICE_ENV="K=V,K=V"`: more settings for the service (e.g. CLAUDE_AGENT_CLI__IDLE_NICE=19).
    let more = std::env::var("BENCH_SERVICE_ENV").unwrap_or_default();
    env.extend(more.split(',').filter_map(|pair| pair.split_once('=')));
    env.extend_from_slice(extra);
    Service::start(&env)
}

/// POST with the status: (status, body, Retry-After seconds).
async fn post(api: &Api, path: &str, body: Value) -> (u16, Value, Option<u64>) {
    let mut res = api
        .client
        .post(format!("{}{path}", api.url))
        .insert_header(("Authorization", format!("Bearer {}", api.key)))
        .send_json(&body)
        .await
        .expect("request");
    let retry = res.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let body = res.json::<Value>().limit(64 * 1024 * 1024).await.unwrap_or(Value::Null);
    (res.status().as_u16(), body, retry)
}

/// Retries a 503 after its Retry-After (at most 5 s); returns the body and the tries it took.
async fn until_ok(api: &Api, path: &str, body: Value) -> (Value, u32) {
    for tries in 1..=60 {
        let (status, answer, retry) = post(api, path, body.clone()).await;
        if status == 200 || status == 201 {
            return (answer, tries);
        }
        assert_eq!(status, 503, "{path}: {answer}");
        eprintln!("  (503 on {path}: {})", answer["error"]["code"]);
        actix_web::rt::time::sleep(Duration::from_secs(retry.unwrap_or(1).clamp(1, 5))).await;
    }
    panic!("{path}: still refused after 60 tries");
}

async fn create(api: &Api) -> (String, u32) {
    let (body, tries) = until_ok(api, "/api/v1/sessions", json!({})).await;
    (body["session_id"].as_str().expect("session id").to_string(), tries)
}

async fn chat(api: &Api, id: &str, text: &str) -> u32 {
    let (body, tries) = until_ok(api, "/api/v1/chat", json!({"session_id": id, "message": text})).await;
    assert!(body["text"].as_str().is_some_and(|t| t.starts_with("mock:")), "chat: {body}");
    tries
}

/// RSS in KiB of `pid` alone and of everything under it.
fn rss_kib(pid: u32) -> (u64, u64) {
    let table = claude_agent_http::memory::ProcessTable::read();
    let own = claude_agent_http::memory::rss_bytes(pid).unwrap_or(0);
    (own / 1024, table.tree_rss(pid).saturating_sub(own) / 1024)
}

pub async fn run(rounds: usize, bursts_only: bool) {
    println!("claude-agent-http benchmark, real CLI {} against mock_anthropic", cli_path().display());
    println!("machine: {} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let mock = Mock::start();

    // 1. Bursts: n clients at once, each creates a session and sends one message.
    println!();
    println!("burst of creates, each followed by one message (create sent → first answer):");
    for n in [10, 20] {
        let service = start_service(&mock, &[]);
        let api = Api::new(&service, "burst").await;
        let cpu_before = service.cpu_ms();
        let clients = (0..n).map(|_| {
            let api = api.with_own_client();
            async move {
                let t = Instant::now();
                let (id, create_tries) = create(&api).await;
                let chat_tries = chat(&api, &id, "hello").await;
                (t.elapsed().as_secs_f64(), create_tries + chat_tries - 2)
            }
        });
        let answers: Vec<(f64, u32)> = futures_util::future::join_all(clients).await;
        let retried = answers.iter().filter(|a| a.1 > 0).count();
        let latencies: Vec<f64> = answers.into_iter().map(|a| a.0).collect();
        let max = latencies.iter().cloned().fold(0.0, f64::max);
        let (p50, _) = summary(latencies);
        let cpu = (service.cpu_ms() - cpu_before) / 1000.0;
        println!(
            "  {n:>2} creates:  p50 {p50:5.2} s   max {max:5.2} s   clients that had to retry a 503: {retried}   \
             service CPU {cpu:.2} s"
        );
        drop(service);
    }

    if bursts_only {
        return;
    }

    // 2. One respawn + turn, and the RSS of a CLI, with memory to spare.
    let service = start_service(&mock, &[("CLAUDE_AGENT_API__IDLE_SESSION_TIMEOUT", "1")]);
    let api = Api::new(&service, "calibrate").await;
    let (id, _) = create(&api).await;
    chat(&api, &id, "hello").await;
    let (service_kib, cli_kib) = rss_kib(service.child.id());
    let mut respawn = Vec::new();
    for _ in 0..3 {
        super::wait_idle(&api, &id).await;
        let t = Instant::now();
        chat(&api, &id, "hello again").await;
        respawn.push(t.elapsed().as_secs_f64());
    }
    let respawn = summary(respawn).0;
    drop(service);

    // 3. 50 sessions in round robin (one client, one turn at a time) with room for 5 CLIs.
    let sessions = 50;
    let limit_mb = ((service_kib + cli_kib * 11 / 2) / 1024).to_string();
    let service = start_service(&mock, &[("CLAUDE_AGENT_API__MEMORY_LIMIT_MB", &limit_mb)]);
    let api = Api::new(&service, "roundrobin").await;
    let mut ids = Vec::new();
    let mut create_first_try = 0;
    let t = Instant::now();
    for _ in 0..sessions {
        let (id, tries) = create(&api).await;
        create_first_try += u32::from(tries == 1);
        ids.push(id);
    }
    let creating = t.elapsed().as_secs_f64();
    let mut first_try = 0;
    let mut turns = Vec::new();
    let mut peak_clis = 0;
    for _ in 0..rounds {
        for id in &ids {
            let t = Instant::now();
            let tries = chat(&api, id, "hello").await;
            turns.push(t.elapsed().as_secs_f64());
            first_try += u32::from(tries == 1);
            let table = claude_agent_http::memory::ProcessTable::read();
            peak_clis = peak_clis.max(
                table
                    .descendants(service.child.id())
                    .into_iter()
                    .filter(|p| {
                        std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                            .is_ok_and(|c| c.contains("--output-format=stream-json"))
                    })
                    .count(),
            );
        }
    }
    let n = turns.len();
    let (p50, _) = summary(turns.clone());
    let max = turns.iter().cloned().fold(0.0, f64::max);
    println!();
    println!(
        "one CLI: service {:.0} MiB, CLI {:.0} MiB; one respawn + turn (median of 3) {respawn:.2} s",
        service_kib as f64 / 1024.0,
        cli_kib as f64 / 1024.0
    );
    println!("{sessions} sessions in round robin, api.memory_limit_mb = {limit_mb} (room for ~5 CLIs):");
    println!("  creates answered without a client retry: {create_first_try}/{sessions} ({creating:.1} s for all)");
    println!(
        "  turns answered without a client retry:   {first_try}/{n} ({:.0} %)",
        first_try as f64 * 100.0 / n as f64
    );
    println!("  turn (with retries) p50 {p50:5.2} s   max {max:5.2} s   p50 / (respawn + turn) {:.2}×", p50 / respawn);
    println!("  most CLIs alive at once (sampled after each turn): {peak_clis}");
    drop(service);
}

/// `--real-cli --only cli-floor [--floor N,K ...]`: the real CLI started directly, without the
/// service, on the service's own recipe (`build_args`/`build_env` on the default settings,
/// the bench's `cli.env`, a fresh config dir per CLI): spawn → `initialize` answered → the
/// first turn answered (ready: `initialize` and then `get_usage` answered, as the service
/// counts it). N CLIs started K at a time (default 1×1, then 10 and 20 at 1–4 at a
/// time): what the machine can do at best, against which the bursts above are read.
/// `BENCH_FLOOR_ENV="K=V,K=V"` adds variables (to try the CLI's knobs).
pub fn floor(specs: &[(usize, usize)]) {
    println!("the real CLI alone (no service), {} against mock_anthropic", cli_path().display());
    println!("machine: {} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let mock = Mock::start();
    let mut env = bench_cli_env(&mock);
    for pair in std::env::var("BENCH_FLOOR_ENV").unwrap_or_default().split(',').filter(|p| !p.is_empty()) {
        if let Some((k, v)) = pair.split_once('=') {
            env.push((k.to_string(), v.to_string()));
        }
    }
    let extra: std::collections::BTreeMap<String, String> = env.into_iter().collect();
    println!("N CLIs, K at a time: all answered; spawn → ready; ready → first answer; answers from the start; CPU");
    for &(n, k) in specs {
        let dir = tempfile::tempdir().expect("temp dir");
        let cpu_before = children_cpu_secs();
        let start = Instant::now();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let stamps = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..k.min(n) {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if i >= n {
                            break;
                        }
                        let s = one_cli(&dir.path().join(i.to_string()), &extra, start);
                        stamps.lock().expect("stamps").push(s);
                    }
                });
            }
        });
        let all = start.elapsed().as_secs_f64();
        let cpu = children_cpu_secs() - cpu_before;
        let stamps = stamps.into_inner().expect("stamps");
        let ready: Vec<f64> = stamps.iter().map(|s| s.1 - s.0).collect();
        let turn: Vec<f64> = stamps.iter().map(|s| s.2 - s.1).collect();
        let answered: Vec<f64> = stamps.iter().map(|s| s.2).collect();
        let ready_max = ready.iter().cloned().fold(0.0, f64::max);
        let answered_max = answered.iter().cloned().fold(0.0, f64::max);
        println!(
            "  {n:>2} × {k}: {all:5.2} s   ready p50 {:.2} max {ready_max:.2} s   turn p50 {:.3} s   \
             answered p50 {:.2} max {answered_max:.2} s   CPU {:.2} s per CLI",
            summary(ready).0,
            summary(turn).0,
            summary(answered).0,
            cpu / n as f64
        );
    }
}

/// One CLI in `dir`: (spawned, ready, answered) in seconds since `start`.
fn one_cli(
    dir: &std::path::Path,
    extra: &std::collections::BTreeMap<String, String>,
    start: Instant,
) -> (f64, f64, f64) {
    use claude_agent_http::cli::command::{AgentOptions, SecretFiles, StartMode, build_args, build_env};
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let (config, tmp, cwd) = (dir.join("user/.claude"), dir.join("tmp"), dir.join("user/work"));
    for d in [&config, &tmp, &cwd] {
        std::fs::create_dir_all(d).expect("dirs");
    }
    let mut settings = claude_agent_http::Settings::default();
    settings.defaults.model = Some("claude-sonnet-4-5".into());
    let options = AgentOptions::resolve(&settings, &serde_json::Map::new());
    let id = uuid::Uuid::new_v4().to_string();
    let args =
        build_args(&options, &settings.plugins, &id, StartMode::New, &SecretFiles::default(), Default::default());
    let env = build_env(std::env::vars(), extra, None, &config, &tmp);
    let at = |t: Instant| t.duration_since(start).as_secs_f64();
    let spawned = Instant::now();
    let mut child = Command::new(cli_path())
        .args(&args)
        .env_clear()
        .envs(env)
        .current_dir(&cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn the CLI");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut wait_for = |kind: &str| {
        for line in lines.by_ref() {
            let line = line.expect("stdout");
            if serde_json::from_str::<Value>(&line).is_ok_and(|m| m["type"] == kind) {
                return Instant::now();
            }
        }
        panic!("the CLI ended before a {kind} line");
    };
    let init =
        json!({"type": "control_request", "request_id": "init", "request": {"subtype": "initialize", "hooks": null}});
    writeln!(stdin, "{init}").expect("write");
    wait_for("control_response");
    // As the service does: its CLI counts as ready once it also answered `get_usage`.
    let usage = json!({"type": "control_request", "request_id": "usage", "request": {"subtype": "get_usage"}});
    writeln!(stdin, "{usage}").expect("write");
    let ready = wait_for("control_response");
    let user = json!({"type": "user", "message": {"role": "user", "content": "hello"}, "parent_tool_use_id": null, "session_id": id});
    writeln!(stdin, "{user}").expect("write");
    let answered = wait_for("result");
    // `BENCH_FLOOR_KEEP_MS=<ms>`: the CLI stays alive, idle, that long after its answer (as
    // the service keeps its CLIs), to see what idle CLIs cost the ones still starting.
    let keep = std::env::var("BENCH_FLOOR_KEEP_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let stamps = (at(spawned), at(ready), at(answered));
    if keep > 0 {
        // `BENCH_FLOOR_IDLE_NICE=<n>`: the idle CLI's process group runs at that niceness.
        if let Some(nice) = std::env::var("BENCH_FLOOR_IDLE_NICE").ok().and_then(|v| v.parse().ok()) {
            // SAFETY: setpriority has no memory preconditions.
            unsafe { libc::setpriority(libc::PRIO_PGRP, child.id(), nice) };
        }
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(keep));
            drop(stdin);
            let _ = child.wait();
        });
        return stamps;
    }
    drop(stdin);
    let _ = child.wait();
    stamps
}

/// User + system CPU of the reaped children so far.
fn children_cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

//! The binary itself: the README's run command, `--help`/`--version`, and start-up failures
//! that must end in one clear line and a non-zero exit.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_claude-agent-http");

/// The binary with none of this machine's CLAUDE_AGENT_* variables, run in `dir`.
fn service(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir);
    for (name, _) in std::env::vars() {
        if name.starts_with("CLAUDE_AGENT_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("RUST_LOG", "info");
    cmd
}

/// Runs to completion and returns (exit code, stderr lines).
fn run_failing(cmd: &mut Command) -> (i32, Vec<String>) {
    let out = cmd.stdin(Stdio::null()).output().expect("binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    let lines: Vec<String> = stderr.lines().filter(|l| l.starts_with("claude-agent-http:")).map(String::from).collect();
    (out.status.code().unwrap_or(-1), lines)
}

#[test]
fn help_and_version_work() {
    let dir = tempfile::tempdir().unwrap();
    let help = service(dir.path()).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--config"));
    let version = service(dir.path()).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn an_unknown_settings_key_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Settings.toml"), "[api]\nport = 0\nmax_sesions = 3\n").unwrap();
    let (code, lines) = run_failing(&mut service(dir.path()));
    assert_eq!(code, 2);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("max_sesions"), "{lines:?}");
    assert!(!dir.path().join("data").exists(), "nothing was started");
}

#[test]
fn a_bad_value_in_file_or_environment_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("custom.toml");
    std::fs::write(&cfg, "[session]\nstorage = \"oracle\"\n").unwrap();
    let (code, lines) = run_failing(service(dir.path()).arg("--config").arg(&cfg));
    assert_eq!(code, 2);
    assert!(lines[0].contains("session.storage"), "{lines:?}");

    let (code, lines) = run_failing(service(dir.path()).env("CLAUDE_AGENT_API__PORT", "eighty"));
    assert_eq!(code, 2);
    assert!(lines[0].contains("CLAUDE_AGENT_API__PORT"), "{lines:?}");

    let (code, lines) = run_failing(service(dir.path()).env("CLAUDE_AGENT_CONFIG", dir.path().join("missing.toml")));
    assert_eq!(code, 2);
    assert!(lines[0].contains("missing.toml"), "{lines:?}");
}

#[test]
fn an_unreachable_database_stops_start_up_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (code, lines) = run_failing(
        service(dir.path())
            .env("CLAUDE_AGENT_API__PORT", "0")
            .env("CLAUDE_AGENT_SESSION__STORAGE", "postgresql")
            .env("CLAUDE_AGENT_SESSION__DATABASE_URL", format!("postgres://app:secret@127.0.0.1:{port}/x")),
    );
    assert_eq!(code, 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("postgresql storage"), "{lines:?}");
    assert!(!lines[0].contains("secret"), "no password in the message: {lines:?}");
}

#[test]
fn unauthenticated_mode_refuses_a_public_address() {
    let dir = tempfile::tempdir().unwrap();
    let (code, lines) = run_failing(
        service(dir.path())
            .env("CLAUDE_AGENT_AUTH__MODE", "none")
            .env("CLAUDE_AGENT_API__HOST", "0.0.0.0")
            .env("CLAUDE_AGENT_API__PORT", "0"),
    );
    assert_eq!(code, 1);
    assert!(lines[0].contains("auth.mode"), "{lines:?}");

    // Allowed explicitly (as import-seed-config does for a seed that listened on 0.0.0.0): it
    // serves, and says what that means in its log.
    let mut child = service(dir.path())
        .env("CLAUDE_AGENT_AUTH__MODE", "none")
        .env("CLAUDE_AGENT_API__HOST", "0.0.0.0")
        .env("CLAUDE_AGENT_API__PORT", "0")
        .env("CLAUDE_AGENT_AUTH__ALLOW_UNAUTHENTICATED_REMOTE", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok) {
        let listening = line.contains("listening on 0.0.0.0:");
        seen.push(line);
        if listening {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.iter().any(|l| l.contains("listening on 0.0.0.0:")), "it serves: {seen:?}");
    assert!(
        seen.iter().any(|l| l.contains("WARN") && l.contains("without authentication") && l.contains("any user")),
        "{seen:?}"
    );
}

/// The README's run command on a fresh folder: SQLite and the admin key file appear, the
/// service answers (also to its own `healthcheck`), tells systemd it is ready and pings the
/// watchdog, and SIGTERM stops it with exit 0.
#[test]
fn the_run_command_serves_on_embedded_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Port 0 instead of 8000 so parallel runs never collide, and the fake CLI in place of a
    // `claude` on PATH; everything else is the default.
    let (mut child, port, seen, _more) = start_and_read_port(
        service(dir.path())
            .env("CLAUDE_AGENT_API_PORT", "0")
            .env("CLAUDE_AGENT_CLI_PATH", crate::helpers::fake_cli_path())
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "400000"),
    );
    let answer = get_health(port);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"storage_type\":\"sqlite\""), "{answer}");
    assert!(dir.path().join("data/claude-agent-http.db").exists());
    assert!(dir.path().join("data/admin.key").exists());
    assert!(dir.path().join("users").is_dir());
    assert!(seen.iter().any(|l| l.contains("admin.key")), "the key's location is announced: {seen:?}");
    assert!(!seen.iter().any(|l| l.contains("cah_")), "the key itself is never logged");

    let mut received = Vec::new();
    let mut buf = [0u8; 256];
    while !(received.iter().any(|m: &String| m.contains("READY=1"))
        && received.iter().any(|m| m.contains("WATCHDOG=1")))
    {
        let n = notify.recv(&mut buf).expect("systemd notifications");
        received.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    let healthcheck = |port: u16| {
        service(dir.path()).arg("healthcheck").env("CLAUDE_AGENT_API_PORT", port.to_string()).output().unwrap()
    };
    assert!(healthcheck(port).status.success(), "healthcheck subcommand: healthy");

    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM ends with exit 0: {status:?}");
    loop {
        let n = notify.recv(&mut buf).expect("STOPPING=1 before the exit");
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            break;
        }
    }
    let down = healthcheck(port);
    assert_eq!(down.status.code(), Some(1), "healthcheck subcommand: unhealthy when nothing answers");
    assert!(String::from_utf8_lossy(&down.stderr).contains("unhealthy"));
}

/// The service started by `cmd`, its port and every stderr line so far (and a channel for more).
fn start_and_read_port(
    cmd: &mut Command,
) -> (std::process::Child, u16, Vec<String>, std::sync::mpsc::Receiver<String>) {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let port =
                line.split("listening on 127.0.0.1:").nth(1).and_then(|r| r.split_whitespace().next()?.parse().ok());
            seen.push(line);
            if let Some(port) = port {
                return (child, port, seen, rx);
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("no listening line: {seen:?}");
}

fn get_health(port: u16) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// The README's run command with `cli.path` at its default and no `claude` on PATH: the CLI
/// `scripts/install-cli` puts in `.cli/` is found by itself, and without it the log says
/// what to do (and `/health` is 503).
#[test]
fn the_run_command_finds_the_project_local_cli_or_says_how_to_install_it() {
    let empty_path = tempfile::tempdir().unwrap();
    let with_cli = tempfile::tempdir().unwrap();
    let installed = with_cli.path().join(".cli/node_modules/.bin/claude");
    std::fs::create_dir_all(installed.parent().unwrap()).unwrap();
    std::fs::copy(crate::helpers::fake_cli_path(), &installed).unwrap();
    let (mut child, port, seen, _rx) =
        start_and_read_port(service(with_cli.path()).env("CLAUDE_AGENT_API__PORT", "0").env("PATH", empty_path.path()));
    let health = get_health(port);
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    child.wait().unwrap();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains(".cli/node_modules/.bin/claude"), "the project-local CLI is used: {health}");
    assert!(seen.iter().any(|l| l.contains("project-local CLI")), "and named in the log: {seen:?}");

    let without = tempfile::tempdir().unwrap();
    let (mut child, port, mut seen, rx) =
        start_and_read_port(service(without.path()).env("CLAUDE_AGENT_API__PORT", "0").env("PATH", empty_path.path()));
    let warned = |seen: &[String]| seen.iter().any(|l| l.contains("scripts/install-cli") && l.contains("cli.path"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !warned(&seen) && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(line);
        }
    }
    let health = get_health(port);
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    child.wait().unwrap();
    assert!(warned(&seen), "a missing CLI is a warning naming the fix: {seen:?}");
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
}

/// `scripts/demo --once` against the real CLI and the mock Messages API, twice on the same
/// data (the second run finds its user already there): every step passes and it exits 0.
#[test]
fn the_demo_script_runs_end_to_end_twice() {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cli = real_cli();
    let data = tempfile::tempdir().unwrap();
    for run in ["first", "second"] {
        let mut child = Command::new(manifest.join("scripts/demo"))
            .args(["--once", "--no-build"])
            .env("DEMO_DIR", data.path())
            .env("DEMO_BIN", BIN)
            .env("DEMO_MOCK", crate::helpers::fake_cli_path().with_file_name("mock_anthropic"))
            .env("DEMO_CLI", &cli)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(180);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                // The script, the service and the mock share the group.
                Command::new("kill").arg("-KILL").arg(format!("-{}", child.id())).status().unwrap();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child.wait_with_output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{run} run: {:?}\n{stdout}\n{stderr}", out.status);
        for step in [
            "answer: mock: hello from the demo",
            "\"type\":\"done\"",
            ": hi from the demo",
            "Console: http://127.0.0.1:",
            "demo done",
        ] {
            assert!(stdout.contains(step), "{run} run shows `{step}`:\n{stdout}");
        }
        assert!(!stderr.contains("Traceback"), "{stderr}");
        assert_eq!(stdout.contains("exists already"), run == "second", "{run} run:\n{stdout}");
    }
    let files = std::fs::read_dir(data.path().join("users/demo/play")).unwrap().count();
    assert_eq!(files, 2, "each run wrote its own file");
}

/// The pinned CLI of scripts/install-cli (`REAL_CLAUDE_PATH`); never skipped.
fn real_cli() -> std::path::PathBuf {
    let cli = std::env::var("REAL_CLAUDE_PATH")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".cli/node_modules/.bin/claude"));
    assert!(cli.exists(), "the real CLI is missing at {}: run scripts/install-cli (scripts/test does)", cli.display());
    cli
}

/// With no key the real CLI answers "Not logged in · Please run /login" as its result: the
/// chat is a 502 `cli_failed` that names the key to set and where.
#[actix_web::test]
async fn without_an_api_key_a_chat_names_the_missing_key() {
    let cli = real_cli();
    let app = crate::helpers::spawn_app_with(crate::helpers::Backend::Sqlite, move |s| {
        s.cli.path = cli.display().to_string();
        // An empty key is no key (whatever this machine's environment holds), and nothing listens
        // on port 9 should the CLI try the network anyway.
        for (k, v) in [
            ("ANTHROPIC_API_KEY", ""),
            ("ANTHROPIC_BASE_URL", "http://127.0.0.1:9"),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
            ("IS_SANDBOX", "1"),
        ] {
            s.cli.env.insert(k.into(), v.into());
        }
    })
    .await;
    assert_eq!(app.get_health().await.status, 200, "healthy without a key");
    let key = app.create_user("nokey").await;
    let session = app.create_session(&key, serde_json::json!({})).await;
    let res = app.chat(&key, &session, "hi").await;
    res.assert_error(502, "cli_failed");
    let message = res.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("ANTHROPIC_API_KEY") && message.contains("cli.env"), "{message}");
    let stream = app.chat_stream(&key, serde_json::json!({"session_id": session, "message": "hi"})).await;
    assert_eq!(stream.last()["type"], "error", "a stream ends with the same error: {:?}", stream.frames);
    assert_eq!(stream.last()["code"], "cli_failed");
    assert!(stream.last()["error"].as_str().unwrap_or_default().contains("ANTHROPIC_API_KEY"));
}

/// The Python service's `config.yaml` where `Settings.toml` is missing is named in the error
/// (with the command that converts it) instead of being silently ignored; so is a YAML file
/// given as the settings file.
#[test]
fn a_seed_config_yaml_is_named_instead_of_ignored() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(seed_config_fixture(), dir.path().join("config.yaml")).unwrap();
    let (code, lines) = run_failing(service(dir.path()).env("CLAUDE_AGENT_API__PORT", "0"));
    assert_eq!(code, 2);
    assert!(lines[0].contains("config.yaml") && lines[0].contains("import-seed-config"), "{lines:?}");
    assert!(!dir.path().join("data").exists(), "nothing was started");
    let (code, lines) = run_failing(service(dir.path()).arg("--config").arg("config.yaml"));
    assert_eq!(code, 2);
    assert!(lines[0].contains("YAML") && lines[0].contains("import-seed-config"), "{lines:?}");
}

/// `session.storage = "postgresql"` with no URL: the seed's PG_* defaults (localhost,
/// claude_agent, postgres), here with only the port given the seed's way.
#[test]
fn postgresql_without_a_url_uses_the_seeds_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (code, lines) = run_failing(
        service(dir.path())
            .env("CLAUDE_AGENT_API__PORT", "0")
            .env("CLAUDE_AGENT_SESSION_STORAGE", "postgresql")
            .env("CLAUDE_AGENT_SESSION_PG_PORT", port.to_string()),
    );
    assert_eq!(code, 1, "it tried the database rather than refusing the settings: {lines:?}");
    assert!(lines[0].contains(&format!("postgres://localhost:{port}/claude_agent")), "{lines:?}");
}

fn seed_config_fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed/config.yaml")
}

/// `import-seed-config` on the seed's shipped config.yaml prints a Settings.toml the service
/// starts with (only where it listens, its users' root and its CLI are set for the test), and
/// the seed's client then works: no key, no Content-Type, the seed's frames only.
#[test]
fn import_seed_config_gives_a_file_the_service_starts_with() {
    let dir = tempfile::tempdir().unwrap();
    let out = service(dir.path()).arg("import-seed-config").arg(seed_config_fixture()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let toml = String::from_utf8(out.stdout).unwrap();
    std::fs::write(dir.path().join("Settings.toml"), &toml).unwrap();
    std::fs::copy(seed_config_fixture(), dir.path().join("config.yaml")).unwrap();

    let (mut child, port, _, _) = start_and_read_port(
        service(dir.path())
            .env("CLAUDE_AGENT_API__HOST", "127.0.0.1")
            .env("CLAUDE_AGENT_API__PORT", "0")
            .env("CLAUDE_AGENT_USER__BASE_DIR", dir.path().join("users"))
            .env("CLAUDE_AGENT_CLI__PATH", crate::helpers::fake_cli_path()),
    );
    let health = get_health(port);
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("\"storage_type\":\"memory\""), "the seed's storage: {health}");
    let created = raw_post(port, "/api/v1/sessions", r#"{"user_id": "zhangsan"}"#);
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    let id = created.split("\"session_id\":\"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_string();
    let streamed = raw_post(port, "/api/v1/chat/stream", &format!(r#"{{"session_id": "{id}", "message": "tool"}}"#));
    assert!(streamed.contains("\"type\":\"tool_use\"") && streamed.contains("\"type\":\"done\""), "{streamed}");
    assert!(!streamed.contains("tool_result") && !streamed.contains("\"result\""), "api.frames = seed: {streamed}");

    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(child.wait().unwrap().success());
}

/// A POST as a plain HTTP/1.0-style exchange, with no Content-Type and no key.
fn raw_post(port: u16, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

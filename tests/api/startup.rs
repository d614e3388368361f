//! The binary itself: the README's run command, `--help`/`--version`, and start-up failures
//! that must end in one clear line and a non-zero exit.

use std::io::{BufRead, BufReader};
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
    let mut child = service(dir.path())
        .env("CLAUDE_AGENT_API_PORT", "0")
        .env("CLAUDE_AGENT_CLI_PATH", crate::helpers::fake_cli_path())
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut port = None;
    let mut seen = Vec::new();
    while port.is_none() && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
                port = rest.split_whitespace().next().and_then(|p| p.parse::<u16>().ok());
            }
            seen.push(line);
        }
    }
    let port = port.unwrap_or_else(|| panic!("no listening line: {seen:?}"));
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    use std::io::{Read, Write};
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
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

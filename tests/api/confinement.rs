//! Landlock: the agent's processes (here the fake CLI's grandchildren, and the real CLI's
//! tools) write only in the user's directory and read neither other users' files nor the
//! service's data. The same checks pass under `sandbox.mode = "off"`, so they test something.

use serde_json::json;

use crate::helpers::{Backend, TestApp, spawn_app_with};
use crate::real_cli::{MockApi, spawn_real_app};
use claude_agent_http::settings::SandboxMode;

async fn prepared(mode: SandboxMode) -> (TestApp, String, String) {
    let app = spawn_app_with(Backend::Sqlite, move |s| s.sandbox.mode = mode).await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    app.create_session(&bob, json!({})).await;
    std::fs::write(app.users_dir().join("bob/secret.txt"), "bob's secret").unwrap();
    let id = app.create_session(&alice, json!({})).await;
    (app, alice, id)
}

async fn say(app: &TestApp, key: &str, id: &str, message: &str) -> String {
    let res = app.chat(key, id, message).await;
    res.body["text"].as_str().unwrap_or_else(|| panic!("{}", res.text)).to_string()
}

#[actix_web::test]
async fn under_landlock_the_agents_processes_stay_in_their_users_directory() {
    let (app, alice, id) = prepared(SandboxMode::Landlock).await;
    let bob_secret = app.users_dir().join("bob/secret.txt");
    let outside = app.dir.path().join("outside.txt");
    let database = std::fs::canonicalize(&app.settings.session.sqlite_path).unwrap();
    let mine = app.users_dir().join("alice/mine.txt");

    assert!(say(&app, &alice, &id, &format!("read {}", bob_secret.display())).await.starts_with("read failed"));
    assert!(say(&app, &alice, &id, &format!("read {}", database.display())).await.starts_with("read failed"));
    assert!(say(&app, &alice, &id, &format!("put {} x", outside.display())).await.starts_with("put failed"));
    assert!(!outside.exists());
    assert!(say(&app, &alice, &id, &format!("put {} hello", mine.display())).await.starts_with("put ok"));
    assert_eq!(say(&app, &alice, &id, &format!("read {}", mine.display())).await, "read ok: hello");
    assert!(say(&app, &alice, &id, "read /etc/hostname").await.starts_with("read ok"), "the system stays readable");
    let health = app.get_health().await;
    assert_eq!(health.body["sandbox"]["mode"], "landlock");
    assert!(health.body["sandbox"]["abi"].as_i64().unwrap() >= 1);
}

#[actix_web::test]
async fn with_the_sandbox_off_the_same_checks_see_everything() {
    let (app, alice, id) = prepared(SandboxMode::Off).await;
    let bob_secret = app.users_dir().join("bob/secret.txt");
    let outside = app.dir.path().join("outside.txt");
    assert_eq!(say(&app, &alice, &id, &format!("read {}", bob_secret.display())).await, "read ok: bob's secret");
    assert!(say(&app, &alice, &id, &format!("put {} x", outside.display())).await.starts_with("put ok"));
    assert!(outside.exists());
    assert_eq!(app.get_health().await.body["sandbox"]["mode"], "off");
}

#[actix_web::test]
async fn the_real_cli_works_confined_and_its_tools_cannot_leave_the_users_directory() {
    let mock = MockApi::start();
    let app = spawn_real_app(&mock, |s| s.sandbox.mode = SandboxMode::Landlock).await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    app.create_session(&bob, json!({})).await;
    std::fs::write(app.users_dir().join("bob/secret.txt"), "bob's secret").unwrap();
    let id = app.create_session(&alice, json!({})).await;

    let read = app.chat(&alice, &id, &format!("bash cat {}", app.users_dir().join("bob/secret.txt").display())).await;
    let text = read.body["text"].as_str().unwrap_or_default().to_string();
    assert!(!text.contains("bob's secret"), "{}", read.text);
    assert!(text.contains("Permission denied") || read.body["tool_calls"][0]["is_error"] == true, "{}", read.text);

    let outside = app.dir.path().join("escaped.txt");
    let write = app.chat(&alice, &id, &format!("writeto {} out of bounds", outside.display())).await;
    assert_eq!(write.body["tool_calls"][0]["is_error"], true, "{}", write.text);
    assert!(!outside.exists(), "a Write outside the user's directory fails");

    let inside = app.users_dir().join("alice/inside.txt");
    let ok = app.chat(&alice, &id, &format!("writeto {} in bounds", inside.display())).await;
    assert_eq!(ok.body["tool_calls"][0]["is_error"], false, "{}", ok.text);
    assert_eq!(std::fs::read_to_string(&inside).unwrap(), "in bounds");
    // And the conversation goes on (the confined CLI keeps its transcript in the user's dir).
    assert_eq!(app.chat(&alice, &id, "hello").await.body["text"], "mock: hello");
}

/// What Alice's agent (the real CLI's own Bash tool) saw when it went for everything that is
/// not hers: the service's process, Bob's session, a settings file under /run, the service's
/// and PostgreSQL's ports, unix sockets (PostgreSQL's and one of the test's), a root-only file
/// in a system tree, a virtual console, the host's /dev/shm, and a signal to the service.
#[derive(Debug)]
struct Loot {
    service_proc: String,
    own_proc: String,
    bob_cmdline: String,
    bob_prompt_file: String,
    bob_environ: String,
    settings_file: String,
    sibling_file: String,
    ports: String,
    /// A unix socket the test listens on, and PostgreSQL's own (trust auth as root).
    unix_socket: String,
    postgres_socket: String,
    /// A root-owned 0600 file in a readable system tree (where a host keeps e.g. a Redis
    /// password): the agent runs as root too, so only the sandbox keeps it away.
    private_file: String,
    /// A virtual console (root-owned, 0600: an agent running as root owns it) and a file the
    /// host left in /dev/shm.
    console: String,
    host_shm: String,
    signal: String,
}

const UNIX_SECRET: &str = "unix-socket-secret";
const PRIVATE_SECRET: &str = "requirepass private-secret";
const SHM_SECRET: &str = "host-shm-secret";
const POSTGRES_SOCKET_DIR: &str = "/var/run/postgresql";
const CONSOLE: &str = "/dev/tty1";

/// PostgreSQL's socket and the console exist on this host (the attacks on them need them).
fn postgres_socket_exists() -> bool {
    std::path::Path::new(POSTGRES_SOCKET_DIR).join(".s.PGSQL.5432").exists()
}

fn console_exists() -> bool {
    std::path::Path::new(CONSOLE).exists()
}

/// Writes `content` to `path` with exactly `mode` (the tests share the service's umask 077).
fn write_with_mode(path: &std::path::Path, content: &str, mode: u32) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// Listens on a unix socket and answers every connection with [`UNIX_SECRET`].
fn unix_listener(path: &std::path::Path) -> std::thread::JoinHandle<()> {
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = std::io::Write::write_all(&mut stream, UNIX_SECRET.as_bytes());
        }
    })
}

const BOB_PROMPT: &str = "bob-secret-system-prompt";
const SETTINGS_SECRET: &str = "admin_key = \"settings-secret\"";

async fn agent(app: &TestApp, key: &str, id: &str, command: &str) -> String {
    let res = app.chat(key, id, &format!("bash {command}")).await;
    assert_eq!(res.status, awc::http::StatusCode::OK, "{}", res.text);
    res.body["text"].as_str().unwrap_or_default().to_string()
}

async fn attack(mode: SandboxMode) -> Loot {
    // A settings file the way the deployment files place one: under a system tree the agents
    // may read (here /run), next to files they may read.
    let run = std::path::PathBuf::from(format!("/run/cah-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&run).unwrap();
    let settings_file = run.join("Settings.toml");
    std::fs::write(&settings_file, SETTINGS_SECRET).unwrap();
    let sibling = std::path::PathBuf::from(format!("{}-sibling.txt", run.display()));
    write_with_mode(&sibling, "sibling is readable", 0o644);
    let private = std::path::PathBuf::from(format!("{}-private.conf", run.display()));
    write_with_mode(&private, PRIVATE_SECRET, 0o600);
    let shm = std::path::PathBuf::from(format!("/dev/shm/cah-test-{}", uuid::Uuid::new_v4().simple()));
    write_with_mode(&shm, SHM_SECRET, 0o644);
    let socket = std::path::PathBuf::from(format!("{}.sock", run.display()));
    let _listener = unix_listener(&socket);

    let mock = MockApi::start();
    let file = settings_file.clone();
    let app = spawn_real_app(&mock, move |s| {
        s.sandbox.mode = mode;
        s.file = Some(file);
    })
    .await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let bob_session = app.create_session(&bob, json!({"options": {"system_prompt": BOB_PROMPT}})).await;
    app.wait_active(&bob, &bob_session).await;
    let bob_pid = app.cli_pids().await[0];
    let alice_session = app.create_session(&alice, json!({})).await;
    app.wait_active(&alice, &alice_session).await;
    let me = std::process::id();
    let port = app.address.rsplit(':').next().unwrap().to_string();
    let bob_prompt = format!("/tmp/claude-agent-http/{bob_session}-{me}/system-prompt.txt");
    assert!(std::fs::read_to_string(&bob_prompt).unwrap().contains(BOB_PROMPT), "the prompt is in its file");

    let ask = |command: String| {
        let (app, alice, id) = (&app, &alice, &alice_session);
        async move { agent(app, alice, id, &command).await }
    };
    let loot = Loot {
        service_proc: ask(format!(
            "for f in environ maps cmdline; do head -c1 /proc/{me}/$f >/dev/null 2>&1 && echo READ-$f || echo REFUSED-$f; done; ls /proc/{me}/fd >/dev/null 2>&1 && echo READ-fd || echo REFUSED-fd"
        ))
        .await,
        own_proc: ask("head -c1 /proc/self/environ >/dev/null 2>&1 && echo READ-self || echo REFUSED-self".into()).await,
        bob_cmdline: ask(format!("tr '\\0' ' ' < /proc/{bob_pid}/cmdline 2>&1")).await,
        bob_prompt_file: ask(format!("cat {bob_prompt} 2>&1")).await,
        bob_environ: ask(format!("tr '\\0' '\\n' < /proc/{bob_pid}/environ 2>/dev/null | grep -q ANTHROPIC_API_KEY= && echo GOT-KEY || echo NO-KEY")).await,
        settings_file: ask(format!("cat {} 2>&1", settings_file.display())).await,
        sibling_file: ask(format!("cat {} 2>&1", sibling.display())).await,
        ports: ask(format!(
            "for p in {port} 5432; do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && echo OPEN-$p || echo CLOSED-$p; done"
        ))
        .await,
        unix_socket: ask(format!(
            "/usr/bin/python3 -c \"import socket; s = socket.socket(socket.AF_UNIX); s.connect('{}'); print(s.recv(99).decode())\" 2>&1",
            socket.display()
        ))
        .await,
        postgres_socket: ask(format!(
            "$(ls /usr/lib/postgresql/*/bin/psql | head -1) -h {POSTGRES_SOCKET_DIR} -U postgres -d postgres -Atc \"select 'PG-' || current_user\" 2>&1"
        ))
        .await,
        private_file: ask(format!("cat {} 2>&1", private.display())).await,
        console: ask(format!("(exec 3<>{CONSOLE}) 2>&1 && echo CONSOLE-OPEN || echo CONSOLE-REFUSED")).await,
        host_shm: ask(format!("cat {} 2>&1", shm.display())).await,
        signal: ask(format!("kill -0 {me} 2>/dev/null && echo SIGNALLED || echo SIGNAL-REFUSED")).await,
    };
    // And the agent still works: its own API port is reachable.
    assert_eq!(app.chat(&alice, &alice_session, "hello").await.body["text"], "mock: hello");
    std::fs::remove_dir_all(&run).unwrap();
    std::fs::remove_file(&sibling).unwrap();
    std::fs::remove_file(&private).unwrap();
    std::fs::remove_file(&socket).unwrap();
    std::fs::remove_file(&shm).unwrap();
    // What the agent saw, for the log of a failure and for the isolation notes.
    eprintln!("{mode:?}: {loot:#?}");
    loot
}

#[actix_web::test]
async fn under_landlock_the_real_clis_agent_reaches_neither_the_service_nor_other_sessions() {
    let loot = attack(SandboxMode::Landlock).await;
    for f in ["environ", "maps", "cmdline", "fd"] {
        assert!(loot.service_proc.contains(&format!("REFUSED-{f}")), "{f}: {}", loot.service_proc);
    }
    assert!(loot.own_proc.contains("READ-self"), "its own /proc works: {}", loot.own_proc);
    assert!(!loot.bob_cmdline.contains("--output-format"), "Bob's CLI is invisible: {}", loot.bob_cmdline);
    assert!(!loot.bob_prompt_file.contains(BOB_PROMPT), "{}", loot.bob_prompt_file);
    assert!(loot.bob_environ.contains("NO-KEY"), "Bob's environment: {}", loot.bob_environ);
    assert!(!loot.settings_file.contains("settings-secret"), "{}", loot.settings_file);
    assert!(loot.settings_file.contains("Permission denied"), "{}", loot.settings_file);
    assert!(loot.sibling_file.contains("sibling is readable"), "{}", loot.sibling_file);
    assert!(loot.ports.contains("CLOSED-5432") && !loot.ports.contains("OPEN"), "{}", loot.ports);
    assert!(!loot.unix_socket.contains(UNIX_SECRET), "{}", loot.unix_socket);
    assert!(loot.unix_socket.contains("PermissionError"), "{}", loot.unix_socket);
    assert!(!loot.postgres_socket.contains("PG-postgres"), "{}", loot.postgres_socket);
    if postgres_socket_exists() {
        assert!(loot.postgres_socket.contains("Permission denied"), "{}", loot.postgres_socket);
    }
    assert!(!loot.private_file.contains("private-secret"), "{}", loot.private_file);
    assert!(loot.private_file.contains("Permission denied"), "{}", loot.private_file);
    if console_exists() {
        assert!(loot.console.contains("CONSOLE-REFUSED"), "{}", loot.console);
        assert!(loot.console.contains("Permission denied"), "{}", loot.console);
    }
    assert!(!loot.host_shm.contains(SHM_SECRET), "{}", loot.host_shm);
    assert!(loot.signal.contains("SIGNAL-REFUSED"), "{}", loot.signal);
}

/// The same attacks with the sandbox off: what is the sandbox's to refuse succeeds, so the test
/// above tests something. What holds without it holds here too: the service is not dumpable
/// (its /proc stays closed), Bob's prompt is in a file, not in his CLI's argv, and the CLI's
/// /dev/shm is its own.
#[actix_web::test]
async fn with_the_sandbox_off_the_same_attacks_reach_what_landlock_keeps_away() {
    let loot = attack(SandboxMode::Off).await;
    for f in ["environ", "maps", "cmdline", "fd"] {
        assert!(loot.service_proc.contains(&format!("REFUSED-{f}")), "{f}: {}", loot.service_proc);
    }
    assert!(loot.own_proc.contains("READ-self"), "{}", loot.own_proc);
    assert!(loot.bob_cmdline.contains("--system-prompt-file="), "Bob's CLI is visible: {}", loot.bob_cmdline);
    assert!(!loot.bob_cmdline.contains(BOB_PROMPT), "but its argv holds no secret: {}", loot.bob_cmdline);
    assert!(loot.bob_prompt_file.contains(BOB_PROMPT), "{}", loot.bob_prompt_file);
    assert!(loot.bob_environ.contains("GOT-KEY"), "{}", loot.bob_environ);
    assert!(loot.settings_file.contains("settings-secret"), "{}", loot.settings_file);
    assert!(loot.ports.contains("OPEN-5432") && !loot.ports.contains("CLOSED"), "{}", loot.ports);
    assert!(loot.unix_socket.contains(UNIX_SECRET), "{}", loot.unix_socket);
    if postgres_socket_exists() {
        assert!(loot.postgres_socket.contains("PG-postgres"), "{}", loot.postgres_socket);
    }
    assert!(loot.private_file.contains("private-secret"), "{}", loot.private_file);
    if console_exists() {
        assert!(loot.console.contains("CONSOLE-OPEN"), "{}", loot.console);
    }
    // The CLI's own /dev/shm is its mount namespace's, not Landlock's.
    assert!(!loot.host_shm.contains(SHM_SECRET), "{}", loot.host_shm);
    assert!(loot.signal.contains("SIGNALLED"), "{}", loot.signal);
}

#[actix_web::test]
async fn the_services_data_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let key = app.create_user("alice").await;
    app.create_session(&key, json!({})).await;
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&app.settings.data.dir), 0o700, "data dir");
    let db = &app.settings.session.sqlite_path;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = db.clone().into_os_string();
        file.push(suffix);
        assert_eq!(mode(std::path::Path::new(&file)), 0o600, "{file:?}");
    }
}

/// The revocation attack with the real CLI: a key revoked while its streams are open (a
/// follower and a turn that would stream for 6 s) loses them at once.
#[actix_web::test]
async fn a_revoked_keys_open_streams_on_the_real_cli_end_at_once() {
    let mock = MockApi::start();
    let app = spawn_real_app(&mock, |s| s.sandbox.mode = SandboxMode::Landlock).await;
    let key = app.create_user("alice").await;
    let id = app.create_session(&key, json!({})).await;
    app.wait_active(&key, &id).await;
    let mut follower = app.open_events(&format!("/api/v1/sessions/{id}/events"), Some(&key), None).await;
    let mut turn = app.open_chat_stream(&key, &id, "slow").await;
    turn.take(1).await;
    follower.take(1).await;
    let key_id = key.split('_').nth(1).unwrap();
    let revoked_at = std::time::Instant::now();
    let res = app.delete_key(crate::helpers::ADMIN_KEY, "alice", key_id).await;
    assert_eq!(res.status, awc::http::StatusCode::NO_CONTENT, "{}", res.text);
    for stream in [&mut turn, &mut follower] {
        let rest = tokio::time::timeout(std::time::Duration::from_secs(5), stream.rest()).await;
        assert!(rest.is_ok(), "the stream ended");
        assert!(revoked_at.elapsed() < std::time::Duration::from_secs(2), "{:?}", revoked_at.elapsed());
    }
    app.list_sessions(&key, "").await.assert_error(401, "unauthorized");
}

/// The CLI inherits no descriptor of the service's: not its database, its data dir, its
/// listening socket or its connections (what an agent could use through `/proc/<cli>/fd`, or
/// directly, from inside). Everything the service opens is close-on-exec; this proves it for
/// the files and sockets open while a CLI starts, and for what the test runner itself inherited
/// (a shell's descriptors without close-on-exec, which the CLI used to inherit too).
#[actix_web::test]
async fn the_cli_inherits_no_descriptor_of_the_service() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = spawn_app_with(backend, |s| s.sandbox.mode = SandboxMode::Landlock).await;
        let key = app.create_user("alice").await;
        let id = app.create_session(&key, json!({})).await;
        app.wait_active(&key, &id).await;
        assert_eq!(say(&app, &key, &id, "hello").await, "echo: hello");
        let pid = app.cli_pids().await[0];
        let mut fds: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .map(|e| {
                let target = std::fs::read_link(e.path()).map(|t| t.display().to_string()).unwrap_or_default();
                (e.file_name().to_string_lossy().into_owned(), target)
            })
            .collect();
        fds.sort_by_key(|(fd, _)| fd.parse::<u32>().unwrap_or(u32::MAX));
        // The fake CLI opens nothing itself: stdio only, whatever the test runner inherited.
        assert_eq!(fds.iter().map(|(fd, _)| fd.as_str()).collect::<Vec<_>>(), ["0", "1", "2"], "{backend:?}: {fds:?}");
        // And those are the pipes to the service: no file, socket or database among them.
        assert!(fds.iter().all(|(_, target)| target.starts_with("pipe:")), "{backend:?}: {fds:?}");
    }
}

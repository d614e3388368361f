//! The web console and `/docs` in headless Chromium (Debian's chromium + chromium-driver,
//! installed by scripts/test), with the fake CLI. The console: the admin adds and picks a user,
//! creates a session with a permission mode, model and system prompt; answers render as
//! sanitised Markdown; a tool is approved, another denied; a turn is interrupted; a reload in
//! the middle of a turn resumes its stream; history, cost and spend show after a reload; the
//! page fits a phone. `/docs`: Swagger UI renders the document from the service alone and calls
//! an endpoint. Screenshots go to target/browser/ (console.png, console-phone.png,
//! console-markdown.png, console-phone-sessions.png, docs.png).

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::helpers::{ADMIN_KEY, Backend, spawn_app_with};

struct Chromedriver(Child, u16);

impl Chromedriver {
    fn start() -> Chromedriver {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (scripts/test installs chromium-driver)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Chromedriver(child, port)
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn browser(driver: &Chromedriver, profile: &std::path::Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
                     "--window-size=1400,900", format!("--user-data-dir={}", profile.display())]
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.1))
        .await
        .expect("a Chromium session")
}

async fn save_screenshot(c: &Client, name: &str) -> Result<(), fantoccini::error::CmdError> {
    let png = c.screenshot().await?;
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join(name), png).unwrap();
    Ok(())
}

/// Runs `script` (a function body) in the page and returns its value.
async fn js(c: &Client, script: &str) -> serde_json::Value {
    c.execute(script, vec![]).await.unwrap_or_else(|e| panic!("{script}: {e}"))
}

/// Waits until the JavaScript expression `condition` is true in the page (an exception, e.g.
/// an element not there yet, counts as false).
async fn wait_until(c: &Client, condition: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let script = format!("try {{ return !!({condition}) }} catch (e) {{ return false }}");
    // A page being reloaded fails the call itself: also false.
    while !matches!(c.execute(&script, vec![]).await, Ok(serde_json::Value::Bool(true))) {
        if Instant::now() > deadline {
            panic!("never true: {condition}; the page: {}", page_text(c).await);
        }
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the page shows, for a failure's message (and a screenshot of it).
async fn page_text(c: &Client) -> String {
    let _ = save_screenshot(c, "console-failure.png").await;
    let text = c.execute("return document.body.innerText", vec![]).await;
    text.ok().and_then(|t| t.as_str().map(str::to_owned)).unwrap_or_default()
}

/// The last assistant bubble's text, as the page shows it.
const LAST_ANSWER: &str = "[...document.querySelectorAll('#transcript .msg.assistant')].pop()";

/// Types `text` into the composer and sends it once the previous turn has ended.
async fn send(c: &Client, text: &str) -> Result<(), fantoccini::error::CmdError> {
    wait_until(c, "!document.getElementById('send').disabled").await;
    let composer = c.find(Locator::Id("message")).await?;
    composer.clear().await?;
    composer.send_keys(text).await?;
    c.find(Locator::Id("send")).await?.click().await
}

/// Waits until the element `selector` contains `text`.
async fn wait_for_text(c: &Client, selector: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(e) = c.find(Locator::Css(selector)).await
            && e.text().await.unwrap_or_default().contains(text)
        {
            return;
        }
        if Instant::now() > deadline {
            panic!("{selector} never showed {text:?}; the page: {}", page_text(c).await);
        }
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_web::test]
async fn the_console_runs_a_whole_session_for_a_user_the_admin_picks() {
    // The service's default mode stays bypassPermissions: approvals happen only because the
    // page created the session with permission_mode = "default".
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    app.create_user("alice").await;
    let driver = Chromedriver::start();
    let profile = tempfile::tempdir().unwrap();
    let c = browser(&driver, profile.path()).await;
    let result = async {
        c.goto(&format!("{}/", app.address)).await?;
        c.wait().for_element(Locator::Id("key")).await?.send_keys(ADMIN_KEY).await?;
        c.find(Locator::Id("login-button")).await?.click().await?;
        wait_for_text(&c, "#who", "admin").await;

        // The admin adds a user (its key is shown once), then picks an existing one.
        c.find(Locator::Id("new-user")).await?.send_keys("bob").await?;
        c.find(Locator::Id("create-user")).await?.click().await?;
        wait_for_text(&c, "#user-notice", "Key for bob (shown only now): cah_").await;
        wait_until(&c, "document.getElementById('user-select').value === 'bob'").await;
        c.find(Locator::Id("user-select")).await?.select_by_value("alice").await?;

        c.find(Locator::Id("subdir")).await?.send_keys("from-browser").await?;
        c.find(Locator::Id("mode")).await?.select_by_value("default").await?;
        c.find(Locator::Id("model")).await?.send_keys("claude-test-model").await?;
        c.find(Locator::Id("system-prompt")).await?.send_keys("Answer in Markdown.").await?;
        c.find(Locator::Id("create")).await?.click().await?;
        c.wait().for_element(Locator::Css(".session.current")).await?;
        wait_for_text(&c, "#status", "Connected").await;
        wait_for_text(&c, "#details", "permission mode: default").await;
        let id = js(&c, "return localStorage.getItem('cah_session')").await.as_str().unwrap().to_string();
        let session = app.get_session(ADMIN_KEY, &id).await.body;
        assert_eq!(session["user_id"], "alice");
        assert_eq!(session["subdir"], "from-browser");
        assert_eq!(
            session["options"],
            json!({"permission_mode": "default", "model": "claude-test-model", "system_prompt": "Answer in Markdown."})
        );

        // A streamed Markdown answer: rendered, its code block highlighted.
        send(&c, "markdown").await?;
        wait_for_text(&c, "#transcript .md h2", "Plan").await;
        wait_for_text(&c, "#transcript .md strong", "bold").await;
        wait_until(&c, "document.querySelector('#transcript .md pre code.hljs .hljs-keyword')").await;
        wait_for_text(&c, "#transcript .md pre code", "println!(\"hello\");").await;
        wait_until(&c, &format!("{LAST_ANSWER}.querySelector('.meta')?.textContent.startsWith('success')")).await;

        // An answer carrying HTML that would run script renders inert.
        send(&c, "<img src=x onerror=\"window.pwned=1\"> <script>window.pwned=2</script> **still markdown**").await?;
        wait_until(&c, &format!("{LAST_ANSWER}.querySelector('.md strong')?.textContent === 'still markdown'")).await;
        assert_inert(&c).await;

        // A tool needs approval; it is then shown folded with its input and result.
        send(&c, "write page.txt written from the browser").await?;
        let card = c.wait().for_element(Locator::Css(".permission")).await?;
        assert!(card.text().await?.contains("Allow Write?"));
        // A reload while it waits shows it again, still to be answered.
        c.refresh().await?;
        wait_for_text(&c, "#status", "Connected").await;
        let card = c.wait().for_element(Locator::Css(".permission")).await?;
        assert!(card.text().await?.contains("Allow Write?"));
        let waiting = "[...document.querySelectorAll('.msg.user')].filter(m => m.textContent.startsWith('write page.txt')).length";
        assert_eq!(js(&c, &format!("return {waiting}")).await, json!(1));
        wait_until(&c, "document.querySelector('.permission[data-open=checked] button.primary')").await;
        card.find(Locator::Css("button.primary")).await?.click().await?;
        wait_until(&c, &format!("{LAST_ANSWER}.textContent.includes('Wrote page.txt.')")).await;
        wait_until(&c, &format!("{LAST_ANSWER}.querySelector('.answered')?.textContent === 'Write: allowed'")).await;
        wait_for_text(&c, "#files", "page.txt").await;
        let fold = format!("{LAST_ANSWER}.querySelector('details.tool')");
        wait_until(&c, &format!("{fold}.classList.contains('ok')")).await;
        assert_eq!(js(&c, &format!("return {fold}.open")).await, json!(false), "folded");
        let summary = js(&c, &format!("return {fold}.querySelector('summary').textContent")).await;
        assert!(summary.as_str().unwrap().contains("Write") && summary.as_str().unwrap().contains("page.txt"));
        let folded = js(&c, &format!("return {fold}.querySelector('pre.result').checkVisibility()")).await;
        assert_eq!(folded, json!(false), "the result is hidden while folded");
        c.execute(&format!("{fold}.querySelector('summary').click()"), vec![]).await?;
        let shown = js(&c, &format!("return {fold}.querySelector('pre.result').checkVisibility()")).await;
        assert_eq!(shown, json!(true), "and shown once opened");
        let result = js(&c, &format!("return {fold}.querySelector('pre.result').innerText")).await;
        assert!(result.as_str().unwrap().contains("File created successfully"), "{result}");

        // Another is denied.
        send(&c, "write denied.txt never").await?;
        wait_until(&c, &format!("{LAST_ANSWER}.querySelector('.permission button.danger')")).await;
        c.execute(&format!("{LAST_ANSWER}.querySelector('.permission button.danger').click()"), vec![]).await?;
        wait_until(&c, &format!("{LAST_ANSWER}.querySelector('.answered')?.textContent === 'Write: denied'")).await;
        wait_until(&c, &format!("{LAST_ANSWER}.textContent.includes('Could not write denied.txt: Denied in the console')"))
            .await;

        // Stop interrupts a turn.
        send(&c, "slow 300 50").await?;
        wait_until(&c, &format!("{LAST_ANSWER}.textContent.includes('w3 ')")).await;
        c.find(Locator::Id("interrupt")).await?.click().await?;
        wait_until(&c, &format!("{LAST_ANSWER}.querySelector('.meta')?.textContent.startsWith('interrupted')")).await;

        // A reload in the middle of a turn resumes its stream from its start, once: even while
        // the page has not yet had the reply to its POST (held back here for 5 s, the race CI
        // load once produced), though the turn's events already stream.
        let hold = "const f = window.fetch; window.fetch = (u, o) => (o && o.method === 'POST' && String(u).endsWith('/messages')) \
            ? f(u, o).then((r) => new Promise((ok) => setTimeout(() => ok(r), 5000))) : f(u, o);";
        c.execute(hold, vec![]).await?;
        send(&c, "slow 30 100").await?;
        wait_until(&c, &format!("{LAST_ANSWER}.textContent.includes('w4 ')")).await;
        c.refresh().await?;
        wait_until(&c, &format!("{LAST_ANSWER}.querySelector('.meta')?.textContent.startsWith('success')")).await;
        let answer = js(&c, &format!("return {LAST_ANSWER}.querySelector('.md').textContent")).await;
        let expected: String = (0..30).map(|i| format!("w{i} ")).collect();
        assert_eq!(answer.as_str().unwrap().trim(), expected.trim(), "the whole turn, each word once");
        let asked = js(&c, "return [...document.querySelectorAll('.msg.user')].filter(m => m.textContent === 'slow 30 100').length");
        let asked = asked.await;
        if asked != json!(1) {
            let dump = js(&c, "return document.getElementById('transcript').innerHTML + ' · ' + JSON.stringify(localStorage)");
            panic!("the message shows {asked} times after the reload: {}", dump.await);
        }

        // After another reload: the history (rendered and folded), the cost, the spend and the
        // budget (the admin set a daily limit meanwhile).
        let budget = json!({"daily_usd": 5.0});
        let res = app.request(awc::http::Method::PUT, "/api/v1/users/alice/budget", Some(ADMIN_KEY), Some(budget)).await;
        assert_eq!(res.status, 200, "{}", res.text);
        c.refresh().await?;
        wait_for_text(&c, "#transcript .md h2", "Plan").await;
        wait_until(&c, "document.querySelector('#transcript .md pre code.hljs .hljs-keyword')").await;
        wait_until(&c, "[...document.querySelectorAll('#transcript details.tool summary')].some(s => s.textContent.includes('page.txt'))").await;
        wait_for_text(&c, "#transcript", "Wrote page.txt.").await;
        assert_inert(&c).await;
        let session = app.get_session(ADMIN_KEY, &id).await.body;
        assert_eq!(session["message_count"], 6);
        wait_for_text(&c, "#details", "turns: 6").await;
        wait_for_text(&c, "#details", &format!("cost: ${:.6}", session["total_cost_usd"].as_f64().unwrap())).await;
        let spent: f64 = app.list_sessions(ADMIN_KEY, "?user_id=alice&detail=true").await.body.as_array().unwrap()
            .iter().map(|s| s["total_cost_usd"].as_f64().unwrap()).sum();
        assert!(spent > 0.0);
        wait_for_text(&c, "#spend", &format!("Spend of alice: ${spent:.4} over 1 session")).await;
        wait_for_text(&c, "#budget", &format!("Today ${spent:.4} of $5.0000 · this month ${spent:.4} (no limit)")).await;
        // The admin's table by user: alice's row carries her turns and cost.
        let row = "return [...document.querySelectorAll('#usage-table tbody tr')].map(r => r.textContent).join('|')";
        wait_until(&c, "document.querySelector('#usage-table tbody tr')").await;
        let table = js(&c, row).await;
        let table = table.as_str().unwrap_or_default();
        assert!(table.starts_with("alice") && table.contains(&format!("${spent:.4}")), "{table}");

        // Everything the page loaded came from the service.
        let loaded = js(&c, "return performance.getEntriesByType('resource').map(e => e.name)").await;
        let loaded: Vec<String> = serde_json::from_value(loaded).unwrap();
        assert!(loaded.iter().any(|u| u.ends_with("/assets/purify-3.5.0.min.js")), "{loaded:?}");
        assert!(loaded.iter().all(|u| u.starts_with(&app.address)), "only the service: {loaded:?}");
        save_screenshot(&c, "console.png").await?;
        c.execute("document.getElementById('transcript').scrollTop = 0", vec![]).await?;
        save_screenshot(&c, "console-markdown.png").await?;

        // A phone: one column, nothing wider than the screen; the sessions open from the menu.
        c.set_window_size(390, 844).await?;
        wait_until(&c, "window.innerWidth <= 400").await;
        c.execute("document.getElementById('transcript').scrollTop = 1e9", vec![]).await?;
        save_screenshot(&c, "console-phone.png").await?;
        let fits = js(&c, "return document.documentElement.scrollWidth <= window.innerWidth").await;
        assert_eq!(fits, json!(true), "no sideways scrolling");
        let composer = js(&c, "const r = document.getElementById('send').getBoundingClientRect(); return r.right <= window.innerWidth && r.bottom <= window.innerHeight");
        let geometry = js(&c, "return [window.innerWidth, window.innerHeight, JSON.stringify(document.getElementById('send').getBoundingClientRect()), document.querySelector('header').offsetHeight]").await;
        assert_eq!(composer.await, json!(true), "the composer is on screen: {geometry}");
        c.find(Locator::Id("nav-toggle")).await?.click().await?;
        wait_until(&c, "document.querySelector('aside').getClientRects().length > 0").await;
        save_screenshot(&c, "console-phone-sessions.png").await
    }
    .await;
    let _ = c.close().await;
    result.expect("the console works in Chromium");
    let dir = app.users_dir().join("alice/from-browser");
    assert_eq!(std::fs::read_to_string(dir.join("page.txt")).unwrap(), "written from the browser");
    assert!(!dir.join("denied.txt").exists(), "the denied write did not happen");
}

/// No script of an answer ran and none of its handlers are in the page.
async fn assert_inert(c: &Client) {
    assert_eq!(js(c, "return typeof window.pwned").await, json!("undefined"), "no script of an answer ran");
    let dangerous =
        js(c, "return document.querySelectorAll('#transcript .md script, #transcript .md [onerror]').length");
    assert_eq!(dangerous.await, json!(0), "sanitised away");
    let img = js(c, "return document.querySelectorAll('#transcript .md img').length").await;
    assert!(img.as_i64().unwrap() >= 1, "the harmless part of the HTML is kept");
}

#[actix_web::test]
async fn a_user_key_creates_its_own_sessions_and_sees_the_servers_refusal_of_an_option() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.session.overridable = vec!["permission_mode".into()]).await;
    let key = app.create_user("carol").await;
    let driver = Chromedriver::start();
    let profile = tempfile::tempdir().unwrap();
    let c = browser(&driver, profile.path()).await;
    let result = async {
        c.goto(&format!("{}/", app.address)).await?;
        c.wait().for_element(Locator::Id("key")).await?.send_keys(&key).await?;
        c.find(Locator::Id("login-button")).await?.click().await?;
        wait_for_text(&c, "#who", "user carol").await;
        assert_eq!(js(&c, "return document.getElementById('admin-box').hidden").await, json!(true));

        c.find(Locator::Id("model")).await?.send_keys("claude-other").await?;
        c.find(Locator::Id("create")).await?.click().await?;
        wait_for_text(&c, "#create-error", "The server refused: these options may not be set per session: model").await;
        wait_for_text(&c, "#create-error", "(forbidden)").await;
        assert_eq!(js(&c, "return document.querySelectorAll('.session').length").await, json!(0));

        c.find(Locator::Id("model")).await?.clear().await?;
        c.find(Locator::Id("mode")).await?.select_by_value("plan").await?;
        c.find(Locator::Id("create")).await?.click().await?;
        wait_for_text(&c, "#details", "permission mode: plan").await;
        wait_for_text(&c, "#spend", "Spend of carol: $0.0000 over 1 session").await;
        send(&c, "hello **carol**").await?;
        wait_for_text(&c, "#transcript .md strong", "carol").await;
        wait_for_text(&c, "#transcript .md", "echo: hello carol").await;
        Ok::<(), fantoccini::error::CmdError>(())
    }
    .await;
    let _ = c.close().await;
    result.expect("the console works in Chromium");
}

#[actix_web::test]
async fn the_console_steers_queues_and_changes_the_model_and_mode_live() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let key = app.create_user("dora").await;
    let driver = Chromedriver::start();
    let profile = tempfile::tempdir().unwrap();
    let c = browser(&driver, profile.path()).await;
    let result = async {
        c.goto(&format!("{}/", app.address)).await?;
        c.wait().for_element(Locator::Id("key")).await?.send_keys(&key).await?;
        c.find(Locator::Id("login-button")).await?.click().await?;
        wait_for_text(&c, "#who", "user dora").await;
        c.find(Locator::Id("create")).await?.click().await?;
        wait_for_text(&c, "#status", "Connected").await;
        let id = js(&c, "return localStorage.getItem('cah_session')").await.as_str().unwrap().to_string();
        assert_eq!(js(&c, "return document.getElementById('send-mode').disabled").await, json!(true), "idle: no mode");

        // Steer: while the turn runs, Send needs a mode; the steered message shows in the running
        // answer, and once the agent has it, not as pending.
        send(&c, "slow 40 50").await?;
        wait_until(&c, &format!("{LAST_ANSWER}.textContent.includes('w2 ')")).await;
        wait_until(&c, "!document.getElementById('send-mode').disabled && document.getElementById('send').disabled").await;
        c.find(Locator::Id("send-mode")).await?.select_by_value("steer").await?;
        c.find(Locator::Id("message")).await?.send_keys("go left").await?;
        c.find(Locator::Id("send")).await?.click().await?;
        wait_until(&c, "[...document.querySelectorAll('.steer-note')].some(n => n.textContent.includes('go left') && !n.classList.contains('pending'))").await;
        wait_until(&c, &format!("{LAST_ANSWER}.querySelector('.meta')?.textContent.startsWith('success')")).await;
        wait_until(&c, &format!("{LAST_ANSWER}.textContent.includes('[steered: go left]')")).await;
        wait_until(&c, "document.getElementById('send-mode').disabled").await;

        // Queue: two wait above the composer; one is cancelled and never runs.
        send(&c, "slow 40 50").await?;
        wait_until(&c, &format!("{LAST_ANSWER}.textContent.includes('w2 ')")).await;
        c.find(Locator::Id("send-mode")).await?.select_by_value("queue").await?;
        for text in ["queued one", "queued two"] {
            let composer = c.find(Locator::Id("message")).await?;
            composer.clear().await?;
            composer.send_keys(text).await?;
            c.find(Locator::Id("send")).await?.click().await?;
            wait_for_text(&c, "#queue", text).await;
        }
        c.execute("[...document.querySelectorAll('#queue .queued')].find(r => r.textContent.includes('queued two')).querySelector('button').click()", vec![]).await?;
        wait_until(&c, "!document.getElementById('queue').textContent.includes('queued two')").await;
        wait_until(&c, "[...document.querySelectorAll('.msg.user')].some(m => m.textContent === 'queued one')").await;
        wait_until(&c, &format!("{LAST_ANSWER}.textContent.includes('echo: queued one')")).await;
        wait_until(&c, "document.getElementById('queue').hidden").await;
        let path = format!("/api/v1/sessions/{id}/messages");
        let history = app.request(awc::http::Method::GET, &path, Some(&key), None).await.text;
        assert!(history.contains("queued one") && !history.contains("queued two"), "the cancelled one never ran");

        // The context meter, and the model and mode applied to the running CLI.
        wait_for_text(&c, "#context-text", "tokens").await;
        let model = c.find(Locator::Id("live-model")).await?;
        model.clear().await?;
        model.send_keys("claude-live-model").await?;
        c.find(Locator::Id("live-mode")).await?.select_by_value("plan").await?;
        c.find(Locator::Id("apply-live")).await?.click().await?;
        wait_for_text(&c, "#live-notice", "Applied.").await;
        wait_for_text(&c, "#details", "model: claude-live-model").await;
        wait_for_text(&c, "#details", "permission mode: plan").await;
        let options = app.get_session(&key, &id).await.body["options"].clone();
        assert_eq!((options["model"].as_str(), options["permission_mode"].as_str()), (Some("claude-live-model"), Some("plan")));
        // A refusal is shown as the server's.
        send(&c, "slow 60 50").await?;
        wait_until(&c, &format!("{LAST_ANSWER}.textContent.includes('w2 ')")).await;
        c.find(Locator::Id("live-mode")).await?.select_by_value("default").await?;
        c.find(Locator::Id("apply-live")).await?.click().await?;
        wait_for_text(&c, "#live-error", "(session_busy)").await;
        c.find(Locator::Id("interrupt-all")).await?.click().await?;
        wait_until(&c, &format!("{LAST_ANSWER}.querySelector('.meta')?.textContent.startsWith('interrupted')")).await;

        // After a reload, each stored message has its menu: fork from any, rewind to a user's.
        c.refresh().await?;
        wait_for_text(&c, "#status", "Connected").await;
        let first_user = "document.querySelector('#transcript .msg.user')";
        assert_eq!(js(&c, &format!("return {first_user}.textContent")).await, json!("slow 40 50"), "the menu adds no text");
        c.execute(&format!("{first_user}.querySelector('.msg-menu-button').click()"), vec![]).await?;
        wait_for_text(&c, "#transcript .msg.user .msg-menu", "Fork from here").await;
        wait_for_text(&c, "#transcript .msg.user .msg-menu", "Rewind to here").await;
        save_screenshot(&c, "console-steer.png").await?;

        // Rewind: a preview lists what would be restored, then the conversation continues
        // from before that message.
        let menu = "document.querySelector('#transcript .msg.user .msg-menu')";
        c.execute(&format!("[...{menu}.querySelectorAll('button')].find(b => b.textContent === 'Preview rewind').click()"), vec![]).await?;
        wait_for_text(&c, "#transcript .msg.user .msg-menu", "Would restore: no files").await;
        let users = "document.querySelectorAll('#transcript .msg.user').length";
        let before = js(&c, &format!("return {users}")).await.as_i64().unwrap();
        let second = "document.querySelectorAll('#transcript .msg.user')[1]";
        c.execute(&format!("{second}.querySelector('.msg-menu-button').click()"), vec![]).await?;
        wait_until(&c, &format!("{second}.querySelector('.msg-menu')")).await;
        c.execute(&format!("[...{second}.querySelectorAll('.msg-menu button')].find(b => b.textContent === 'Rewind to here').click()"), vec![]).await?;
        wait_for_text(&c, "#transcript .rewound", "Rewound to before").await;
        wait_until(&c, &format!("{users} === 1")).await;
        assert!(before > 1);
        assert_eq!(app.get_session(&key, &id).await.body["message_count"], 1);

        // Fork from the remaining message: the new session opens, the original stays.
        c.execute("document.querySelector('#transcript .msg.user .msg-menu-button').click()", vec![]).await?;
        wait_until(&c, "document.querySelector('#transcript .msg.user .msg-menu')").await;
        c.execute("[...document.querySelectorAll('#transcript .msg.user .msg-menu button')].find(b => b.textContent === 'Fork from here').click()", vec![]).await?;
        wait_until(&c, &format!("localStorage.getItem('cah_session') !== '{id}'")).await;
        wait_until(&c, "document.querySelectorAll('.session').length === 2").await;
        wait_for_text(&c, "#transcript .msg.user", "slow 40 50").await;
        Ok::<(), fantoccini::error::CmdError>(())
    }
    .await;
    let _ = c.close().await;
    result.expect("the console steers and queues in Chromium");
}

#[actix_web::test]
async fn the_docs_render_offline_and_call_the_service() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let driver = Chromedriver::start();
    let profile = tempfile::tempdir().unwrap();
    let c = browser(&driver, profile.path()).await;
    let result = async {
        c.goto(&format!("{}/docs", app.address)).await?;
        wait_for_text(&c, ".info .title", "claude-agent-http").await;
        wait_for_text(&c, "#operations-tag-sessions", "sessions").await;
        wait_for_text(&c, "#operations-chat-post_chat_stream", "/api/v1/chat/stream").await;

        // Call GET /health from the page ("Try it out" is on by default).
        c.find(Locator::Css("#operations-service-get_health .opblock-summary")).await?.click().await?;
        c.wait().for_element(Locator::Css("#operations-service-get_health .execute")).await?.click().await?;
        wait_for_text(&c, "#operations-service-get_health .live-responses-table", "healthy").await;
        c.find(Locator::Css("#operations-sessions-create_session .opblock-summary")).await?.click().await?;
        c.wait().for_element(Locator::Css("#operations-sessions-create_session .responses-table")).await?;

        // Everything the page loaded came from the service.
        let loaded = c.execute("return performance.getEntriesByType('resource').map(e => e.name)", vec![]).await?;
        let loaded: Vec<String> = serde_json::from_value(loaded).unwrap();
        assert!(loaded.iter().any(|u| u.ends_with("/openapi.json")), "{loaded:?}");
        assert!(loaded.iter().all(|u| u.starts_with(&app.address)), "only the service: {loaded:?}");
        c.find(Locator::Css("#operations-sessions-create_session .opblock-summary")).await?.click().await?;
        c.execute("window.scrollTo(0, 0)", vec![]).await?;
        save_screenshot(&c, "docs.png").await
    }
    .await;
    let _ = c.close().await;
    result.expect("/docs works in Chromium");
}

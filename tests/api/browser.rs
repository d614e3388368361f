//! The web console and `/docs` in headless Chromium (Debian's chromium + chromium-driver,
//! installed by scripts/test). The console: log in, create a session, chat with a streamed
//! answer, approve a tool, reload and see the conversation again. `/docs`: Swagger UI renders
//! the document from the service alone and calls an endpoint. Screenshots go to
//! target/browser/{console,docs}.png.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::helpers::{Backend, spawn_app_with};

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

/// Waits until the element `selector` contains `text`.
async fn wait_for_text(c: &Client, selector: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(e) = c.find(Locator::Css(selector)).await
            && e.text().await.unwrap_or_default().contains(text)
        {
            return;
        }
        assert!(Instant::now() < deadline, "{selector} never showed {text:?}");
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_web::test]
async fn the_console_logs_in_chats_approves_a_tool_and_shows_the_conversation_after_a_reload() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.defaults.permission_mode = claude_agent_http::settings::PermissionMode::Default;
    })
    .await;
    let key = app.create_user("alice").await;
    let driver = Chromedriver::start();
    let profile = tempfile::tempdir().unwrap();
    let c = browser(&driver, profile.path()).await;
    let result = async {
        c.goto(&format!("{}/", app.address)).await?;
        c.wait().for_element(Locator::Id("key")).await?.send_keys(&key).await?;
        c.find(Locator::Id("login-button")).await?.click().await?;
        wait_for_text(&c, "#who", "user alice").await;

        c.find(Locator::Id("subdir")).await?.send_keys("from-browser").await?;
        c.find(Locator::Id("create")).await?.click().await?;
        c.wait().for_element(Locator::Css(".session.current")).await?;
        wait_for_text(&c, "#status", "Connected").await;

        c.find(Locator::Id("message")).await?.send_keys("hello browser").await?;
        c.find(Locator::Id("send")).await?.click().await?;
        wait_for_text(&c, "#transcript", "echo: hello browser").await;
        wait_for_text(&c, "#transcript", "success").await;

        c.find(Locator::Id("message")).await?.send_keys("write page.txt written from the browser").await?;
        c.find(Locator::Id("send")).await?.click().await?;
        let card = c.wait().for_element(Locator::Css(".permission")).await?;
        assert!(card.text().await?.contains("Allow Write?"));
        card.find(Locator::Css("button.primary")).await?.click().await?;
        wait_for_text(&c, "#transcript", "Wrote page.txt.").await;
        wait_for_text(&c, "#files", "page.txt").await;

        // A reload logs in again from the browser's storage and shows the conversation.
        c.refresh().await?;
        wait_for_text(&c, "#transcript", "hello browser").await;
        wait_for_text(&c, "#transcript", "echo: hello browser").await;
        wait_for_text(&c, "#transcript", "Wrote page.txt.").await;
        wait_for_text(&c, "#details", "turns: 2").await;

        save_screenshot(&c, "console.png").await
    }
    .await;
    let _ = c.close().await;
    result.expect("the console works in Chromium");
    let written = app.users_dir().join("alice/from-browser/page.txt");
    assert_eq!(std::fs::read_to_string(written).unwrap(), "written from the browser");
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

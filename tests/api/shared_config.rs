//! `cli.shared_config_dir`: the skills and plugins every user's CLI sees (what the seed's
//! service-wide `~/.claude` gave), linked into each user's config dir, readable by the agent
//! and never writable by it under Landlock. With the sandbox off the same write lands, so the
//! checks can fail.

use std::path::PathBuf;

use serde_json::json;

use crate::helpers::{Backend, TestApp, spawn_app_with};
use crate::real_cli::{MockApi, spawn_real_app};
use claude_agent_http::Settings;
use claude_agent_http::settings::SandboxMode;

const SKILL: &str = "---\nname: greeting\ndescription: Greets in the house style\n---\nSay hello warmly.\n";

/// A shared dir beside the users' root with one skill and an empty plugins dir.
fn share(s: &mut Settings) -> PathBuf {
    let shared = s.user.base_dir.parent().unwrap().join("shared");
    std::fs::create_dir_all(shared.join("skills/greeting")).unwrap();
    std::fs::create_dir_all(shared.join("plugins")).unwrap();
    std::fs::write(shared.join("skills/greeting/SKILL.md"), SKILL).unwrap();
    s.cli.shared_config_dir = Some(shared.clone());
    shared
}

async fn say(app: &TestApp, key: &str, id: &str, message: &str) -> String {
    let res = app.chat(key, id, message).await;
    res.body["text"].as_str().unwrap_or_else(|| panic!("{}", res.text)).to_string()
}

fn shared_of(app: &TestApp) -> PathBuf {
    app.settings.cli.shared_config_dir.clone().unwrap()
}

/// The user's config dir as the CLI sees it, the shared skills inside it.
fn skills_of(app: &TestApp, user: &str) -> PathBuf {
    app.users_dir().join(user).join(".claude/skills")
}

async fn started(mode: SandboxMode) -> (TestApp, String, String) {
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        s.sandbox.mode = mode;
        share(s);
    })
    .await;
    let alice = app.create_user("alice").await;
    let id = app.create_session(&alice, json!({})).await;
    app.wait_active(&alice, &id).await;
    (app, alice, id)
}

#[actix_web::test]
async fn under_landlock_the_shared_skills_are_read_but_never_written() {
    let (app, alice, id) = started(SandboxMode::Landlock).await;
    let skills = skills_of(&app, "alice");
    assert_eq!(std::fs::read_link(&skills).unwrap(), std::fs::canonicalize(shared_of(&app)).unwrap().join("skills"));
    assert!(skills.parent().unwrap().join("plugins").is_symlink());

    let read = say(&app, &alice, &id, &format!("read {}", skills.join("greeting/SKILL.md").display())).await;
    assert!(read.starts_with("read ok: ---") && read.contains("Say hello warmly."), "the agent reads it: {read}");
    for target in [skills.join("evil.md"), skills.join("greeting/SKILL.md")] {
        let put = say(&app, &alice, &id, &format!("put {} pwned", target.display())).await;
        assert!(put.starts_with("put failed"), "{}: {put}", target.display());
    }
    assert!(!shared_of(&app).join("skills/evil.md").exists());
    assert_eq!(std::fs::read_to_string(shared_of(&app).join("skills/greeting/SKILL.md")).unwrap(), SKILL);
    // The user's own config dir stays writable.
    let own = skills.parent().unwrap().join("notes.md");
    assert!(say(&app, &alice, &id, &format!("put {} mine", own.display())).await.starts_with("put ok"));
}

#[actix_web::test]
async fn with_the_sandbox_off_the_same_write_lands_in_the_shared_dir() {
    let (app, alice, id) = started(SandboxMode::Off).await;
    let target = skills_of(&app, "alice").join("evil.md");
    assert!(say(&app, &alice, &id, &format!("put {} pwned", target.display())).await.starts_with("put ok"));
    assert!(shared_of(&app).join("skills/evil.md").exists(), "only Landlock keeps it read-only");
}

#[actix_web::test]
async fn a_users_own_skills_directory_is_left_alone() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        share(s);
        let own = s.user.base_dir.join("alice/.claude/skills/mine");
        std::fs::create_dir_all(&own).unwrap();
    })
    .await;
    let alice = app.create_user("alice").await;
    let id = app.create_session(&alice, json!({})).await;
    app.wait_active(&alice, &id).await;
    let skills = skills_of(&app, "alice");
    assert!(!skills.is_symlink() && skills.join("mine").is_dir(), "theirs wins");
    assert!(skills.parent().unwrap().join("plugins").is_symlink(), "the plugins are still shared");
}

/// The real CLI: it lists the shared skill, its Bash reads it and cannot write there.
#[actix_web::test]
async fn the_real_clis_tools_read_the_shared_skills_and_cannot_change_them() {
    let mock = MockApi::start();
    let app = spawn_real_app(&mock, |s| {
        s.sandbox.mode = SandboxMode::Landlock;
        share(s);
    })
    .await;
    let alice = app.create_user("alice").await;
    let id = app.create_session(&alice, json!({})).await;
    let skills = skills_of(&app, "alice");
    let skill_file = skills.join("greeting/SKILL.md");
    let read = app.chat(&alice, &id, &format!("bash cat {}", skill_file.display())).await;
    assert!(read.text.contains("Say hello warmly"), "{}", read.text);

    let evil = skills.join("evil.md");
    let write = app.chat(&alice, &id, &format!("bash echo pwned > {}", evil.display())).await;
    assert!(!shared_of(&app).join("skills/evil.md").exists(), "{}", write.text);
    let appended = app.chat(&alice, &id, &format!("bash echo pwned >> {}", skill_file.display())).await;
    assert_eq!(
        std::fs::read_to_string(shared_of(&app).join("skills/greeting/SKILL.md")).unwrap(),
        SKILL,
        "{}",
        appended.text
    );

    let agent = app.request(awc::http::Method::GET, &format!("/api/v1/sessions/{id}/agent"), Some(&alice), None).await;
    assert!(agent.text.contains("greeting"), "the CLI found the shared skill: {}", agent.text);
}

/// An agent that replaced its `.claude` with a link to elsewhere does not get the service to
/// make (or remove) links there at the next launch.
#[actix_web::test]
async fn a_config_dir_replaced_by_a_link_gets_no_links_made_through_it() {
    let (app, alice, _) = started(SandboxMode::Landlock).await;
    let elsewhere = app.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let config = app.users_dir().join("alice/.claude");
    std::fs::remove_dir_all(&config).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &config).unwrap();
    let id = app.create_session(&alice, json!({})).await;
    app.wait_active(&alice, &id).await;
    assert!(std::fs::read_dir(&elsewhere).unwrap().next().is_none(), "nothing was linked through it");
}

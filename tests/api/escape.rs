//! Escapes through the files API and session directories: the agent (played here by the test,
//! and once by the real CLI's own Bash tool) swaps its session directory for a link leading
//! out of its user's directory, before or while the service works in it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use awc::http::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Backend, TestApp, spawn_app, spawn_app_with};
use crate::real_cli::{MockApi, spawn_real_app};
use claude_agent_http::settings::SandboxMode;

const BOBS: &str = "bob's secret";

/// Alice with a session at her top level and one at `proj`; Bob with his secret.
struct Scene {
    app: TestApp,
    alice: String,
    top: String,
    proj: String,
}

async fn scene(app: TestApp) -> Scene {
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    app.create_session(&bob, json!({})).await;
    std::fs::write(app.users_dir().join("bob/secret.txt"), BOBS).unwrap();
    let top = app.create_session(&alice, json!({"subdir": ""})).await;
    let proj = app.create_session(&alice, json!({"subdir": "proj"})).await;
    std::fs::write(app.users_dir().join("alice/proj/mine.txt"), "alice's").unwrap();
    Scene { app, alice, top, proj }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// GET (a listing and a file), PUT and DELETE on the swapped session are all refused, and
/// nothing is read, written or removed at the link's target.
async fn every_operation_is_refused(s: &Scene, target: &Path, file: &str) {
    let before = names(target);
    let content = std::fs::read(target.join(file)).unwrap();
    for (method, path, body) in [
        (Method::GET, "", None),
        (Method::GET, file, None),
        (Method::PUT, "evil.txt", Some(&b"evil"[..])),
        (Method::PUT, file, Some(&b"overwritten"[..])),
        (Method::DELETE, file, None),
    ] {
        let res = s.app.files(&s.alice, method.clone(), &s.proj, path, body).await;
        assert!(!res.text.contains(&String::from_utf8_lossy(&content)[..content.len().min(12)]), "{}", res.text);
        res.assert_error(400, "invalid_path");
    }
    assert_eq!(std::fs::read(target.join(file)).unwrap(), content, "{file} unchanged");
    assert_eq!(names(target), before, "nothing written to or removed from {}", target.display());
}

#[actix_web::test]
async fn a_session_dir_swapped_for_a_link_out_is_refused_for_files_and_resume() {
    let s = scene(spawn_app(Backend::Sqlite).await).await;
    let users = s.app.users_dir();
    let data = std::fs::canonicalize(&s.app.settings.data.dir).unwrap();
    std::fs::write(data.join("admin.key"), "the admin key").unwrap();
    // The agent of the top-level session: `mv proj proj.old && ln -s <target> proj`.
    std::fs::rename(users.join("alice/proj"), users.join("alice/proj.old")).unwrap();
    let link = users.join("alice/proj");
    for (target, file) in
        [(users.join("bob"), "secret.txt"), (data.clone(), "admin.key"), (PathBuf::from("/"), "etc/shadow")]
    {
        std::os::unix::fs::symlink(&target, &link).unwrap();
        every_operation_is_refused(&s, &target, file).await;
        std::fs::remove_file(&link).unwrap();
    }
    // The relative form, which stays inside the users' root.
    std::os::unix::fs::symlink("../bob", &link).unwrap();
    every_operation_is_refused(&s, &users.join("bob"), "secret.txt").await;

    // Its CLI is not started there again: resume refuses, and the session stays closed.
    assert_eq!(s.app.delete_session(&s.alice, &s.proj, "").await.status, StatusCode::NO_CONTENT);
    s.app.resume_session(&s.alice, &s.proj).await.assert_error(400, "invalid_path");
    assert_eq!(s.app.get_session(&s.alice, &s.proj).await.body["status"], "closed");
    // The other session is unaffected, and a link inside Alice's own directory is fine.
    assert_eq!(s.app.files(&s.alice, Method::GET, &s.top, "proj.old/mine.txt", None).await.text, "alice's");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("proj.old", &link).unwrap();
    assert_eq!(s.app.files(&s.alice, Method::GET, &s.proj, "mine.txt", None).await.text, "alice's");
    assert_eq!(s.app.resume_session(&s.alice, &s.proj).await.status, StatusCode::OK);
}

#[actix_web::test]
async fn a_users_directory_that_is_a_link_is_refused_even_inside_the_root() {
    let app = spawn_app(Backend::Sqlite).await;
    let bob = app.create_user("bob").await;
    app.create_session(&bob, json!({})).await;
    std::os::unix::fs::symlink("bob", app.users_dir().join("mallory")).unwrap();
    let mallory = app.create_user("mallory").await;
    app.post_session(&mallory, json!({})).await.assert_error(400, "invalid_path");
}

/// A component flips between a real directory and a link to Bob's while requests run: not a
/// byte of Bob's comes back and nothing lands in his directory, whatever the interleaving.
#[actix_web::test]
async fn racing_the_swap_never_reaches_the_other_users_files() {
    let s = scene(spawn_app(Backend::Sqlite).await).await;
    let users = s.app.users_dir();
    let bob_dir = users.join("bob");
    let bob_before = names(&bob_dir);
    let (proj, real) = (users.join("alice/proj"), users.join("alice/proj.real"));
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (stop, bob_dir) = (stop.clone(), bob_dir.clone());
        std::thread::spawn(move || {
            let mut flips = 0u64;
            let flip = || -> std::io::Result<()> {
                std::fs::rename(&proj, &real)?;
                std::os::unix::fs::symlink(&bob_dir, &proj)?;
                std::fs::remove_file(&proj)?;
                std::fs::rename(&real, &proj)
            };
            // Ends with the test, also when it failed and its directory is gone.
            while !stop.load(Ordering::Relaxed) && flip().is_ok() {
                flips += 1;
            }
            flips
        })
    };
    let mut refused = 0;
    for i in 0..300 {
        let res = match i % 3 {
            0 => s.app.files(&s.alice, Method::GET, &s.proj, "secret.txt", None).await,
            1 => s.app.files(&s.alice, Method::GET, &s.proj, "", None).await,
            _ => s.app.files(&s.alice, Method::PUT, &s.proj, &format!("race-{i}.txt"), Some(b"race")).await,
        };
        assert!(!res.text.contains(BOBS), "request {i}: {}", res.text);
        if let Some(entries) = res.body.as_array() {
            assert!(entries.iter().all(|e| e["name"] != "secret.txt"), "request {i}: Bob's listing: {}", res.text);
        }
        assert_ne!(res.status, StatusCode::INTERNAL_SERVER_ERROR, "request {i}: {}", res.text);
        refused += usize::from(res.code() == "invalid_path");
    }
    stop.store(true, Ordering::Relaxed);
    assert!(flipper.join().unwrap() > 0);
    assert!(refused > 0, "some requests met the link");
    assert_eq!(names(&bob_dir), bob_before, "nothing landed in Bob's directory");
    assert_eq!(std::fs::read_to_string(bob_dir.join("secret.txt")).unwrap(), BOBS);
}

/// The swap done by the real CLI's own Bash tool, confined by Landlock (which lets it rename
/// and link inside its user's directory: a link's target is not checked).
#[actix_web::test]
async fn the_real_clis_own_swap_is_refused() {
    let mock = MockApi::start();
    let s = scene(spawn_real_app(&mock, |s| s.sandbox.mode = SandboxMode::Landlock).await).await;
    let users = s.app.users_dir();
    let command = format!("bash mv proj proj.old && ln -s {} proj && echo swapped", users.join("bob").display());
    let swap = s.app.chat(&s.alice, &s.top, &command).await;
    assert_eq!(swap.status, StatusCode::OK, "{}", swap.text);
    assert!(std::fs::symlink_metadata(users.join("alice/proj")).unwrap().file_type().is_symlink(), "{}", swap.text);
    every_operation_is_refused(&s, &users.join("bob"), "secret.txt").await;
    // Then to the service's data dir and to `/`, each planted by the agent itself.
    let data = std::fs::canonicalize(&s.app.settings.data.dir).unwrap();
    std::fs::write(data.join("admin.key"), "the admin key").unwrap();
    for (target, file) in [(data, "admin.key"), (PathBuf::from("/"), "etc/shadow")] {
        let relink = s.app.chat(&s.alice, &s.top, &format!("bash rm proj && ln -s {} proj", target.display())).await;
        assert_eq!(std::fs::read_link(users.join("alice/proj")).unwrap(), target, "{}", relink.text);
        every_operation_is_refused(&s, &target, file).await;
    }
    assert_eq!(s.app.delete_session(&s.alice, &s.proj, "").await.status, StatusCode::NO_CONTENT);
    s.app.resume_session(&s.alice, &s.proj).await.assert_error(400, "invalid_path");
}

#[actix_web::test]
async fn odd_names_download_with_an_rfc_6266_content_disposition() {
    let s = scene(spawn_app(Backend::Sqlite).await).await;
    let dir = s.app.users_dir().join("alice/proj");
    for (name, encoded) in [
        ("r\u{e9}sum\u{e9}.txt", "attachment; filename=\"r_sum_.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9.txt"),
        ("a\u{1}b\nc\".txt", "attachment; filename=\"a_b_c_.txt\"; filename*=UTF-8''a%01b%0Ac%22.txt"),
    ] {
        std::fs::write(dir.join(name), "odd").unwrap();
        let res = s.app.files(&s.alice, Method::GET, &s.proj, name, None).await;
        assert_eq!(res.status, StatusCode::OK, "{name:?}: {}", res.text);
        assert_eq!(res.text, "odd");
        assert_eq!(res.header("content-disposition"), Some(encoded));
        assert_eq!(res.header("content-length"), Some("3"));
    }
}

/// An mtime at year 10000 or later (`touch -d @300000000000`) is listed, not a panic. The
/// users' directory is on tmpfs: ext4 clamps such times to 2446.
#[actix_web::test]
async fn a_far_future_mtime_does_not_break_the_listing() {
    let shm = Arc::new(tempfile::tempdir_in("/dev/shm").expect("/dev/shm (tmpfs) for far-future mtimes"));
    let users = shm.path().join("users");
    let app = spawn_app_with(Backend::Sqlite, |s| s.user.base_dir = users).await;
    let s = scene(app).await;
    let path = s.app.users_dir().join("alice/proj/far");
    let far = std::time::UNIX_EPOCH + std::time::Duration::from_secs(300_000_000_000);
    std::fs::File::create(&path).unwrap().set_modified(far).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), far, "the filesystem keeps the time");
    let res = s.app.files(&s.alice, Method::GET, &s.proj, "", None).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text);
    let far = res.body.as_array().unwrap().iter().find(|e| e["name"] == "far").unwrap();
    assert_eq!(far["modified_at"], "9999-12-31T23:59:59.999+00:00");
    drop(shm);
}

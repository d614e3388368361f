//! Signed webhooks, black-box: a receiver on loopback (allowed by `webhooks.allowed_hosts`)
//! gets each event once with a valid Standard Webhooks signature, again after answering 500
//! twice, and after a restart of the service between the event and its delivery; internal
//! targets are refused without the allowlist; users see only their own hooks and events.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::helpers::{ADMIN_KEY, Backend, TestApp, eventually, spawn_app_with};
use crate::on_both_backends;

on_both_backends!(
    each_event_arrives_once_signed_and_without_text_unless_asked,
    a_delivery_answered_500_twice_is_retried_until_delivered,
    a_delivery_survives_a_restart_between_the_event_and_its_delivery,
    hooks_are_their_owners_and_internal_targets_are_refused,
    an_expired_session_is_announced,
    rotating_the_credentials_key_reseals_webhook_secrets,
    the_target_is_checked_again_at_each_delivery,
);

const ALL_EVENTS: [&str; 7] = [
    "turn.completed",
    "turn.failed",
    "permission.requested",
    "session.idle",
    "session.closed",
    "session.expired",
    "budget.reached",
];

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    path: String,
    id: String,
    timestamp: String,
    signature: String,
    body: String,
    at: Instant,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON payload")
    }

    fn event_type(&self) -> String {
        self.json()["type"].as_str().unwrap_or("").to_string()
    }
}

/// What the receiver saw, and how many requests it still answers 500.
#[derive(Clone, Default)]
struct Inbox {
    got: Arc<Mutex<Vec<Got>>>,
    fail_next: Arc<AtomicUsize>,
}

impl Inbox {
    fn all(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    fn on(&self, path: &str) -> Vec<Got> {
        self.all().into_iter().filter(|g| g.path == path).collect()
    }

    fn of_type(&self, path: &str, event: &str) -> Vec<Got> {
        self.on(path).into_iter().filter(|g| g.event_type() == event).collect()
    }
}

/// A webhook receiver on `listener` (loopback), recording every request.
fn receiver(listener: TcpListener, inbox: Inbox) -> ServerHandle {
    let server = HttpServer::new(move || {
        let inbox = inbox.clone();
        App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
            let inbox = inbox.clone();
            async move {
                let header =
                    |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                inbox.got.lock().unwrap().push(Got {
                    path: req.path().to_string(),
                    id: header("webhook-id"),
                    timestamp: header("webhook-timestamp"),
                    signature: header("webhook-signature"),
                    body: String::from_utf8_lossy(&body).into_owned(),
                    at: Instant::now(),
                });
                let failing = inbox.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
                if failing.is_ok() { HttpResponse::InternalServerError().finish() } else { HttpResponse::Ok().finish() }
            }
        }))
    })
    .workers(1)
    .listen(listener)
    .expect("the receiver listens")
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    handle
}

fn loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("a loopback port")
}

/// Checks a delivery as a receiver following Standard Webhooks would: the HMAC-SHA256 of
/// `{id}.{timestamp}.{body}` under the secret's decoded bytes, compared in constant time, and
/// a timestamp within five minutes.
fn assert_signed(secret: &str, got: &Got) {
    let key = B64.decode(secret.strip_prefix("whsec_").expect("whsec_ secret")).expect("base64 secret");
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.{}", got.id, got.timestamp, got.body).as_bytes());
    let signature = got.signature.strip_prefix("v1,").unwrap_or_else(|| panic!("v1 signature: {got:?}"));
    let signature = B64.decode(signature).expect("base64 signature");
    assert!(mac.verify_slice(&signature).is_ok(), "the signature does not verify: {got:?}");
    let ts: i64 = got.timestamp.parse().expect("unix seconds");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((now - ts).abs() < 300, "timestamp {ts} is not now ({now})");
    assert!(got.id.starts_with("msg_"), "{got:?}");
}

async fn webhook_app(backend: Backend, customize: impl FnOnce(&mut claude_agent_http::Settings)) -> TestApp {
    spawn_app_with(backend, |s| {
        s.webhooks.allowed_hosts = vec!["127.0.0.1".into()];
        s.webhooks.retry_base_ms = 100;
        s.webhooks.poll_interval = 1;
        customize(s);
    })
    .await
}

/// Creates a hook and returns `(webhook_id, secret)`.
async fn hook(app: &TestApp, key: &str, body: Value) -> (String, String) {
    let res = app.post_webhook(key, body).await;
    assert_eq!(res.status.as_u16(), 201, "{}", res.text);
    (res.body["webhook_id"].as_str().unwrap().to_string(), res.body["secret"].as_str().unwrap().to_string())
}

#[track_caller]
fn assert_arrives(ok: bool, what: &str, inbox: &Inbox) {
    let seen: Vec<(String, String)> = inbox.all().iter().map(|g| (g.path.clone(), g.event_type())).collect();
    assert!(ok, "{what} did not arrive; the receiver got {seen:?}");
}

async fn each_event_arrives_once_signed_and_without_text_unless_asked(backend: Backend) {
    let inbox = Inbox::default();
    let listener = loopback();
    let port = listener.local_addr().unwrap().port();
    let _receiver = receiver(listener, inbox.clone());
    let app = webhook_app(backend, |s| {
        s.defaults.permission_mode = claude_agent_http::settings::PermissionMode::Default;
        s.permissions.timeout = 300;
    })
    .await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let (_, alice_secret) = hook(&app, &alice, json!({"url": url("/alice"), "events": ALL_EVENTS})).await;
    let (_, bob_secret) = hook(&app, &bob, json!({"url": url("/bob"), "events": ALL_EVENTS})).await;
    let (_, admin_secret) =
        hook(&app, ADMIN_KEY, json!({"url": url("/admin"), "events": ["turn.completed"], "include_text": true})).await;
    let wait = |path: &'static str, event: &'static str, n: usize| {
        let inbox = inbox.clone();
        async move {
            let ok = eventually(Duration::from_secs(20), || {
                let inbox = inbox.clone();
                async move { inbox.of_type(path, event).len() >= n }
            })
            .await;
            assert_arrives(ok, &format!("{n} × {event} on {path}"), &inbox);
        }
    };

    // A turn.
    let id = app.create_session(&alice, json!({})).await;
    let res = app.chat(&alice, &id, "hello from alice").await;
    assert_eq!(res.status.as_u16(), 200, "{}", res.text);
    wait("/alice", "turn.completed", 1).await;

    // A tool use that asks: the request id comes with the event, and answering it ends the turn.
    app.post_message(&alice, &id, "write a.txt hi").await;
    wait("/alice", "permission.requested", 1).await;
    let asked = inbox.of_type("/alice", "permission.requested")[0].json();
    assert_eq!(asked["data"]["tool_name"], "Write");
    let rid = asked["data"]["request_id"].as_str().unwrap();
    let answer = app
        .request(
            awc::http::Method::POST,
            &format!("/api/v1/sessions/{id}/permissions/{rid}"),
            Some(&alice),
            Some(json!({"behavior": "allow"})),
        )
        .await;
    assert_eq!(answer.status.as_u16(), 200, "{}", answer.text);
    wait("/alice", "turn.completed", 2).await;

    // A failed turn: the CLI crashes, the session goes idle.
    assert_eq!(app.chat(&alice, &id, "crash").await.status.as_u16(), 502);
    wait("/alice", "turn.failed", 1).await;
    wait("/alice", "session.idle", 1).await;

    // A turn that reaches the daily limit: budget.reached once, then the next turn is refused.
    app.put_budget(ADMIN_KEY, "alice", json!({"daily_usd": 0.5})).await;
    let res = app.chat(&alice, &id, "cost 0.75").await;
    assert_eq!(res.status.as_u16(), 200, "{}", res.text);
    wait("/alice", "budget.reached", 1).await;
    assert_eq!(app.chat(&alice, &id, "cost 0.75").await.status.as_u16(), 402);
    // Raised and reached again the same day: not announced again (once per limit and period).
    app.put_budget(ADMIN_KEY, "alice", json!({"daily_usd": 1.0})).await;
    assert_eq!(app.chat(&alice, &id, "cost 0.5").await.status.as_u16(), 200);
    wait("/alice", "turn.completed", 4).await;
    app.put_budget(ADMIN_KEY, "alice", json!({})).await;

    // Closing.
    assert_eq!(app.delete_session(&alice, &id, "").await.status.as_u16(), 204);
    wait("/alice", "session.closed", 1).await;
    wait("/admin", "turn.completed", 4).await;
    // Anything sent twice would have arrived by now.
    actix_web::rt::time::sleep(Duration::from_millis(700)).await;

    let mine = inbox.on("/alice");
    let mut count: HashMap<String, usize> = HashMap::new();
    for got in &mine {
        assert_signed(&alice_secret, got);
        *count.entry(got.event_type()).or_default() += 1;
        let payload = got.json();
        assert_eq!(payload["data"]["session_id"], id.as_str(), "{payload}");
        assert_eq!(payload["data"]["user_id"], "alice", "{payload}");
        crate::helpers::assert_python_time(payload["timestamp"].as_str().unwrap());
        for text in ["message", "text", "tool_input"] {
            assert!(payload["data"].get(text).is_none(), "no {text} without include_text: {payload}");
        }
        assert!(!got.body.contains("hello from alice"), "the conversation stays out: {payload}");
    }
    let mut ids: Vec<&str> = mine.iter().map(|g| g.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), mine.len(), "each event once (distinct webhook-ids): {mine:?}");
    assert_eq!(count["turn.completed"], 4, "{count:?}");
    assert_eq!(count["turn.failed"], 1, "{count:?}");
    assert_eq!(count["permission.requested"], 1, "{count:?}");
    assert_eq!(count["budget.reached"], 1, "{count:?}");
    assert_eq!(count["session.closed"], 1, "{count:?}");
    assert!(count["session.idle"] >= 1, "{count:?}");
    assert!(!count.contains_key("session.expired"), "{count:?}");
    for got in &mine {
        eprintln!("example payload {}: {}", got.event_type(), got.body);
    }

    let failed = inbox.of_type("/alice", "turn.failed")[0].json();
    assert_eq!(failed["data"]["error_code"], "cli_failed", "{failed}");
    let reached = inbox.of_type("/alice", "budget.reached")[0].json();
    assert_eq!(reached["data"]["limit"], "daily", "{reached}");
    assert_eq!(reached["data"]["limit_usd"], 0.5, "{reached}");
    let done = inbox.of_type("/alice", "turn.completed")[0].json();
    assert!(done["data"]["cost_usd"].as_f64().unwrap() > 0.0, "{done}");
    assert!(done["data"]["tokens"]["input"].as_i64().unwrap() > 0, "{done}");
    assert!(done["data"]["turn_id"].is_string(), "{done}");

    // The admin's hook for everyone, with text: the conversation is there.
    let admin = inbox.on("/admin");
    assert_eq!(admin.len(), 4, "{admin:?}");
    for got in &admin {
        assert_signed(&admin_secret, got);
    }
    let first = admin.iter().find(|g| g.body.contains("hello from alice")).expect("the admin's hook has the text");
    assert_eq!(first.json()["data"]["message"], "hello from alice");
    eprintln!("example payload with include_text: {}", first.body);

    // Bob's hook heard nothing of Alice's sessions.
    assert!(inbox.on("/bob").is_empty(), "bob got alice's events: {:?}", inbox.on("/bob"));
    let _ = bob_secret;
}

async fn a_delivery_answered_500_twice_is_retried_until_delivered(backend: Backend) {
    let inbox = Inbox::default();
    inbox.fail_next.store(2, Ordering::SeqCst);
    let listener = loopback();
    let port = listener.local_addr().unwrap().port();
    let _receiver = receiver(listener, inbox.clone());
    let app = webhook_app(backend, |_| {}).await;
    let alice = app.create_user("alice").await;
    let (hook_id, secret) =
        hook(&app, &alice, json!({"url": format!("http://127.0.0.1:{port}/h"), "events": ["turn.completed"]})).await;
    let id = app.create_session(&alice, json!({})).await;
    assert_eq!(app.chat(&alice, &id, "hi").await.status.as_u16(), 200);
    let answered = Instant::now();

    let ok = eventually(Duration::from_secs(20), || {
        let inbox = inbox.clone();
        async move { inbox.all().len() >= 3 }
    })
    .await;
    eprintln!(
        "the turn's answer → its first webhook attempt: {:?}",
        inbox.all()[0].at.saturating_duration_since(answered)
    );
    assert_arrives(ok, "three attempts", &inbox);
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    let got = inbox.all();
    assert_eq!(got.len(), 3, "two failures and the delivery, nothing after: {got:?}");
    for g in &got {
        assert_signed(&secret, g);
        assert_eq!(g.id, got[0].id, "the webhook-id stays the same across retries");
        assert_eq!(g.body, got[0].body);
    }
    let (first, second) = (got[1].at - got[0].at, got[2].at - got[1].at);
    assert!(first >= Duration::from_millis(90), "backoff {first:?}");
    assert!(second >= Duration::from_millis(500), "the second retry waits longer: {second:?}");

    let log = app.get_deliveries(&alice, &hook_id).await;
    assert_eq!(log.status.as_u16(), 200, "{}", log.text);
    let d = &log.body[0];
    assert_eq!(d["status"], "delivered", "{d}");
    assert_eq!(d["attempts"], 3, "{d}");
    assert_eq!(d["last_status_code"], 200, "{d}");
    assert_eq!(d["message_id"], got[0].id.as_str(), "{d}");
    assert_eq!(d["event_type"], "turn.completed", "{d}");
    assert!(d["delivered_at"].is_string() && d["next_attempt_at"].is_null(), "{d}");
    // The log's retention: a delivered row goes once it is old enough.
    let storage = &app.app_state.storage;
    let now = claude_agent_http::clock::now_ms();
    assert_eq!(storage.prune_deliveries(now - 60_000, 0).await.unwrap(), 0, "a fresh row stays");
    assert_eq!(storage.prune_deliveries(now + 60_000, 0).await.unwrap(), 1);
    assert_eq!(app.get_deliveries(&alice, &hook_id).await.body, json!([]));
    let metrics = app.request(awc::http::Method::GET, "/metrics", None, None).await.text;
    assert!(metrics.contains(r#"claude_agent_webhook_attempts_total{outcome="retried"} 2"#), "{metrics}");
    assert!(metrics.contains(r#"claude_agent_webhook_attempts_total{outcome="delivered"} 1"#), "{metrics}");
}

async fn a_delivery_survives_a_restart_between_the_event_and_its_delivery(backend: Backend) {
    // A port nothing listens on yet: the receiver is down.
    let port = loopback().local_addr().unwrap().port();
    let app = webhook_app(backend, |_| {}).await;
    let alice = app.create_user("alice").await;
    let (hook_id, secret) =
        hook(&app, &alice, json!({"url": format!("http://127.0.0.1:{port}/h"), "events": ["turn.completed"]})).await;
    let id = app.create_session(&alice, json!({})).await;
    assert_eq!(app.chat(&alice, &id, "before the restart").await.status.as_u16(), 200);
    let failed = eventually(Duration::from_secs(20), || {
        let (app, alice, hook_id) = (&app, &alice, &hook_id);
        async move {
            let d = app.get_deliveries(alice, hook_id).await.body[0].clone();
            d["status"] == "pending" && d["attempts"].as_i64().unwrap_or(0) >= 1 && d["last_error"].is_string()
        }
    })
    .await;
    assert!(failed, "the first attempt fails while the receiver is down");
    let now = claude_agent_http::clock::now_ms();
    assert_eq!(app.app_state.storage.prune_deliveries(now + 60_000, 0).await.unwrap(), 0, "pending rows stay");
    let log = app.get_deliveries(&alice, &hook_id).await;
    let message_id = log.body[0]["message_id"].as_str().unwrap().to_string();
    eprintln!("delivery log while the receiver is down: {}", log.text);

    let app = app.restart().await;
    let inbox = Inbox::default();
    let _receiver = receiver(TcpListener::bind(("127.0.0.1", port)).expect("the port again"), inbox.clone());
    let ok = eventually(Duration::from_secs(30), || {
        let inbox = inbox.clone();
        async move { !inbox.all().is_empty() }
    })
    .await;
    assert_arrives(ok, "the delivery after the restart", &inbox);
    let got = inbox.all();
    assert_signed(&secret, &got[0]);
    assert_eq!(got[0].id, message_id, "the event stored before the restart");
    assert_eq!(got[0].event_type(), "turn.completed");
    let delivered = eventually(Duration::from_secs(5), || {
        let (app, alice, hook_id) = (&app, &alice, &hook_id);
        async move { app.get_deliveries(alice, hook_id).await.body[0]["status"] == "delivered" }
    })
    .await;
    assert!(delivered);
}

async fn hooks_are_their_owners_and_internal_targets_are_refused(backend: Backend) {
    // No allowlist: loopback and the other internal ranges are refused.
    let app = spawn_app_with(backend, |_| {}).await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    for url in [
        "http://127.0.0.1:9/h",
        "http://localhost:9/h",
        "http://[::1]:9/h",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/h",
        "http://[::ffff:192.168.0.1]/h",
        "ftp://example.com/h",
    ] {
        app.post_webhook(&alice, json!({"url": url, "events": ["turn.completed"]}))
            .await
            .assert_error(400, "webhook_target_refused");
    }
    app.post_webhook(&alice, json!({"url": "http://1.2.3.4/h", "events": ["turn.done"]}))
        .await
        .assert_error(400, "unknown_webhook_event");
    app.post_webhook(&alice, json!({"url": "http://1.2.3.4/h", "events": []}))
        .await
        .assert_error(422, "validation_error");
    app.post_webhook(&alice, json!({"url": "http://1.2.3.4/h", "events": ["turn.completed"], "secret": "short"}))
        .await
        .assert_error(422, "validation_error");
    app.post_webhook(&alice, json!({"url": "http://1.2.3.4/h", "events": ["turn.completed"], "user_id": "bob"}))
        .await
        .assert_error(403, "forbidden");
    app.post_webhook(ADMIN_KEY, json!({"url": "http://1.2.3.4/h", "events": ["turn.completed"], "user_id": "nobody"}))
        .await
        .assert_error(404, "user_not_found");

    // A public target (never contacted here: no event happens).
    let created = app.post_webhook(&alice, json!({"url": "https://1.2.3.4/h", "events": ["session.closed"]})).await;
    assert_eq!(created.status.as_u16(), 201, "{}", created.text);
    let hook_id = created.body["webhook_id"].as_str().unwrap().to_string();
    let secret = created.body["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_") && B64.decode(&secret[6..]).unwrap().len() >= 24, "{secret}");
    let shown = app.get_webhook(&alice, &hook_id).await;
    assert_eq!(shown.status.as_u16(), 200);
    assert!(shown.body.get("secret").is_none() && !shown.text.contains(&secret[6..]), "{}", shown.text);
    assert_eq!(shown.body["user_id"], "alice");
    assert_eq!(shown.body["events"], json!(["session.closed"]));
    let stored = app.app_state.storage.get_webhook(&hook_id).await.unwrap().unwrap();
    assert!(!stored.sealed_secret.contains(&secret[6..]), "the secret is sealed at rest");
    let admins = app.post_webhook(ADMIN_KEY, json!({"url": "https://1.2.3.4/all", "events": ["session.idle"]})).await;
    assert_eq!(admins.status.as_u16(), 201, "{}", admins.text);
    assert!(admins.body["user_id"].is_null());
    let admins_id = admins.body["webhook_id"].as_str().unwrap().to_string();
    let given = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let own_secret =
        app.post_webhook(&bob, json!({"url": "https://1.2.3.4/b", "events": ["session.idle"], "secret": given})).await;
    assert_eq!(own_secret.body["secret"], given);

    // Another user's hook (and the admin's for everyone) is 404, as a missing one.
    app.get_webhook(&bob, &hook_id).await.assert_error(404, "not_found");
    app.get_deliveries(&bob, &hook_id).await.assert_error(404, "not_found");
    app.delete_webhook(&bob, &hook_id).await.assert_error(404, "not_found");
    app.get_webhook(&alice, &admins_id).await.assert_error(404, "not_found");
    app.get_webhook(&alice, "wh_missing").await.assert_error(404, "not_found");
    let listed = app.list_webhooks(&bob, "").await;
    assert_eq!(listed.body.as_array().unwrap().len(), 1, "bob sees his own only: {}", listed.text);
    app.list_webhooks(&bob, "?user_id=alice").await.assert_error(403, "forbidden");
    // The admin's hook for one user is that user's: they see it (and may delete it).
    let for_alice = app
        .post_webhook(ADMIN_KEY, json!({"url": "https://1.2.3.4/a", "events": ["turn.failed"], "user_id": "alice"}))
        .await;
    assert_eq!(for_alice.status.as_u16(), 201, "{}", for_alice.text);
    assert_eq!(for_alice.body["user_id"], "alice");
    let for_alice_id = for_alice.body["webhook_id"].as_str().unwrap();
    assert_eq!(app.get_webhook(&alice, for_alice_id).await.status.as_u16(), 200);
    app.get_webhook(&bob, for_alice_id).await.assert_error(404, "not_found");
    assert_eq!(app.list_webhooks(&alice, "").await.body.as_array().unwrap().len(), 2);
    assert_eq!(app.list_webhooks(ADMIN_KEY, "").await.body.as_array().unwrap().len(), 4);
    assert_eq!(app.list_webhooks(ADMIN_KEY, "?user_id=alice").await.body.as_array().unwrap().len(), 2);
    assert_eq!(app.get_deliveries(&alice, &hook_id).await.body, json!([]));

    // At most 20 hooks per owner.
    for n in 1..20 {
        let more =
            app.post_webhook(&bob, json!({"url": format!("https://1.2.3.4/{n}"), "events": ["turn.failed"]})).await;
        assert_eq!(more.status.as_u16(), 201, "{}", more.text);
    }
    app.post_webhook(&bob, json!({"url": "https://1.2.3.4/21", "events": ["turn.failed"]}))
        .await
        .assert_error(422, "validation_error");

    assert_eq!(app.delete_webhook(&alice, &hook_id).await.status.as_u16(), 204);
    app.get_webhook(&alice, &hook_id).await.assert_error(404, "not_found");
    assert_eq!(app.delete_webhook(ADMIN_KEY, &admins_id).await.status.as_u16(), 204);
    // A deleted user's hooks go with them.
    assert_eq!(app.list_webhooks(ADMIN_KEY, "?user_id=bob").await.body.as_array().unwrap().len(), 20);
    assert_eq!(app.delete_user(ADMIN_KEY, "bob").await.status.as_u16(), 204);
    assert_eq!(app.list_webhooks(ADMIN_KEY, "?user_id=bob").await.body, json!([]));
}

async fn an_expired_session_is_announced(backend: Backend) {
    let inbox = Inbox::default();
    let listener = loopback();
    let port = listener.local_addr().unwrap().port();
    let _receiver = receiver(listener, inbox.clone());
    let app = webhook_app(backend, |s| s.session.ttl = 1).await;
    let alice = app.create_user("alice").await;
    let (_, secret) =
        hook(&app, &alice, json!({"url": format!("http://127.0.0.1:{port}/h"), "events": ["session.expired"]})).await;
    let id = app.create_session(&alice, json!({})).await;
    actix_web::rt::time::sleep(Duration::from_millis(1500)).await;
    let ok = eventually(Duration::from_secs(20), || {
        let (inbox, app, alice, id) = (inbox.clone(), &app, &alice, &id);
        async move {
            let _ = app.get_session(alice, id).await;
            !inbox.all().is_empty()
        }
    })
    .await;
    assert_arrives(ok, "session.expired", &inbox);
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    let got = inbox.all();
    assert_eq!(got.len(), 1, "once: {got:?}");
    assert_signed(&secret, &got[0]);
    assert_eq!(got[0].json()["data"]["session_id"], id.as_str());
    eprintln!("example payload session.expired: {}", got[0].body);
}

async fn rotating_the_credentials_key_reseals_webhook_secrets(backend: Backend) {
    let inbox = Inbox::default();
    let listener = loopback();
    let port = listener.local_addr().unwrap().port();
    let _receiver = receiver(listener, inbox.clone());
    let mut app = webhook_app(backend, |_| {}).await;
    let alice = app.create_user("alice").await;
    let url = format!("http://127.0.0.1:{port}/h");
    let (hook_id, secret) = hook(&app, &alice, json!({"url": url, "events": ["turn.completed"]})).await;
    let sealed_before = app.app_state.storage.get_webhook(&hook_id).await.unwrap().unwrap().sealed_secret;
    app.stop().await;

    let done = claude_agent_http::auth::credentials_rotation::rotate(&app.settings, None).await.unwrap();
    assert!(done.contains("1 webhook secret"), "{done}");
    let app = app.restart().await;
    let sealed_after = app.app_state.storage.get_webhook(&hook_id).await.unwrap().unwrap().sealed_secret;
    assert_ne!(sealed_after, sealed_before, "re-sealed under the new key");
    let id = app.create_session(&alice, json!({})).await;
    assert_eq!(app.chat(&alice, &id, "after the rotation").await.status.as_u16(), 200);
    let ok = eventually(Duration::from_secs(20), || {
        let inbox = inbox.clone();
        async move { !inbox.all().is_empty() }
    })
    .await;
    assert_arrives(ok, "a delivery after the rotation", &inbox);
    assert_signed(&secret, &inbox.all()[0]);
}

async fn the_target_is_checked_again_at_each_delivery(backend: Backend) {
    let inbox = Inbox::default();
    let listener = loopback();
    let port = listener.local_addr().unwrap().port();
    let _receiver = receiver(listener, inbox.clone());
    let mut app = webhook_app(backend, |_| {}).await;
    let alice = app.create_user("alice").await;
    let url = format!("http://127.0.0.1:{port}/h");
    let (hook_id, _) = hook(&app, &alice, json!({"url": url, "events": ["turn.completed"]})).await;
    // The admin takes loopback off the allowlist: the hook created before is not sent to.
    app.settings.webhooks.allowed_hosts.clear();
    let app = app.restart().await;
    let id = app.create_session(&alice, json!({})).await;
    assert_eq!(app.chat(&alice, &id, "hi").await.status.as_u16(), 200);
    let refused = eventually(Duration::from_secs(20), || {
        let (app, alice, hook_id) = (&app, &alice, &hook_id);
        async move {
            let d = app.get_deliveries(alice, hook_id).await.body[0].clone();
            d["attempts"].as_i64().unwrap_or(0) >= 1
                && d["last_error"].as_str().is_some_and(|e| e.contains("target refused"))
        }
    })
    .await;
    let log = app.get_deliveries(&alice, &hook_id).await;
    assert!(refused, "the attempt is refused: {}", log.text);
    assert_eq!(log.body[0]["status"], "pending", "refused attempts are retried (the allowlist may come back)");
    assert!(inbox.all().is_empty(), "nothing reached the receiver: {:?}", inbox.all());
}

//! PostgreSQL stopped for a while under load (issue #11, item 4): `sessions` sessions stream
//! turns back to back on a private PostgreSQL cluster (`pg_createcluster`, its own port; the
//! shared server is never touched), the cluster is stopped for `secs` seconds and started again.
//! Prints the service's RSS before, at its peak during and after the outage, how the turns
//! ended (done / `storage_unavailable` / anything else), and whether every event id a client
//! saw on its stream is in `/events` replay once the database is back.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::rc::Rc;

use super::*;

/// A PostgreSQL 15 cluster of this run's own, trust auth on loopback, dropped at the end.
struct PrivateCluster {
    name: String,
    port: u16,
}

impl PrivateCluster {
    fn create() -> PrivateCluster {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().unwrap().port();
        let name = format!("bench{}", std::process::id());
        let ok = Command::new("pg_createcluster")
            .args(["15", &name, "--port", &port.to_string(), "--", "--auth=trust"])
            .stdout(Stdio::null())
            .status()
            .expect("pg_createcluster (postgresql-common) is installed");
        assert!(ok.success(), "pg_createcluster failed");
        let cluster = PrivateCluster { name, port };
        cluster.ctl("start");
        let ok = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-qc", "CREATE DATABASE bench"])
            .status()
            .expect("psql");
        assert!(ok.success(), "create database");
        cluster
    }

    fn ctl(&self, action: &str) {
        let mut cmd = Command::new("pg_ctlcluster");
        cmd.args(["15", &self.name, action]);
        if action == "stop" {
            // Fast shutdown: connections are cut at once, as when a database host goes away.
            cmd.args(["-m", "fast"]);
        }
        assert!(cmd.status().expect("pg_ctlcluster").success(), "pg_ctlcluster {action}");
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/bench", self.port)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = Command::new("pg_dropcluster").args(["--stop", "15", &self.name]).status();
    }
}

#[derive(Default)]
struct Tally {
    done: usize,
    storage_unavailable: usize,
    other: BTreeMap<String, usize>,
    /// Per session, every event id its client saw on a turn's stream.
    seen: BTreeMap<String, BTreeSet<i64>>,
}

/// One streamed turn: the event ids of its frames and how it ended (`done` or an error code).
async fn stream_turn(api: &Api, id: &str) -> (Vec<i64>, String) {
    let sent = api
        .client
        .post(format!("{}/api/v1/chat/stream", api.url))
        .insert_header(("Authorization", format!("Bearer {}", api.key)))
        .send_json(&json!({"session_id": id, "message": "slow 5 20"}))
        .await;
    let mut res = match sent {
        Ok(res) => res,
        Err(e) => return (Vec::new(), format!("request: {e}")),
    };
    if !res.status().is_success() {
        let body: Value = res.json().await.unwrap_or(Value::Null);
        return (Vec::new(), body["error"]["code"].as_str().unwrap_or("http error").to_string());
    }
    let mut text = String::new();
    while let Some(chunk) = res.next().await {
        match chunk {
            Ok(bytes) => text.push_str(&String::from_utf8_lossy(&bytes)),
            Err(e) => return (ids_of(&text), format!("stream: {e}")),
        }
    }
    let last = text
        .split("\n\n")
        .filter_map(|block| block.lines().find_map(|l| l.strip_prefix("data:")))
        .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
        .last()
        .unwrap_or(Value::Null);
    let end = match last["type"].as_str() {
        Some("done") => "done".to_string(),
        Some("error") => last["code"].as_str().unwrap_or("error").to_string(),
        _ => "no last frame".to_string(),
    };
    (ids_of(&text), end)
}

fn ids_of(sse: &str) -> Vec<i64> {
    sse.lines().filter_map(|l| l.strip_prefix("id:")).filter_map(|n| n.trim().parse().ok()).collect()
}

/// The ids `/events` replays from the start, read until `up_to` or for at most 10 s.
async fn replayed_ids(api: &Api, id: &str, up_to: i64) -> BTreeSet<i64> {
    let mut got = BTreeSet::new();
    let Ok(mut res) = api
        .client
        .get(format!("{}/api/v1/sessions/{id}/events?last_event_id=0", api.url))
        .insert_header(("Authorization", format!("Bearer {}", api.key)))
        .send()
        .await
    else {
        return got;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pending = String::new();
    while got.last().is_none_or(|&last| last < up_to) && Instant::now() < deadline {
        let next = actix_web::rt::time::timeout(Duration::from_secs(1), res.next()).await;
        match next {
            Ok(Some(Ok(bytes))) => {
                pending.push_str(&String::from_utf8_lossy(&bytes));
                if let Some(cut) = pending.rfind("\n\n") {
                    got.extend(ids_of(&pending[..cut]));
                    pending.drain(..cut);
                }
            }
            Ok(_) => break,
            Err(_) => {}
        }
    }
    got
}

pub async fn run(secs: u64, sessions: usize) {
    let cluster = PrivateCluster::create();
    let url = cluster.url();
    let service = Service::start(&[
        ("CLAUDE_AGENT_SESSION__STORAGE", "postgresql"),
        ("CLAUDE_AGENT_SESSION__DATABASE_URL", url.as_str()),
    ]);
    let api = Api::new(&service, "outage").await;
    let mut ids = Vec::new();
    for _ in 0..sessions {
        let id = api.create_session().await;
        api.wait_active(&id).await;
        ids.push(id);
    }
    let tally = Rc::new(RefCell::new(Tally::default()));
    let stop = Rc::new(std::cell::Cell::new(false));
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let (api, id, tally, stop) = (api.with_own_client(), id.clone(), tally.clone(), stop.clone());
            actix_web::rt::spawn(async move {
                while !stop.get() {
                    let (seen, end) = stream_turn(&api, &id).await;
                    {
                        let mut t = tally.borrow_mut();
                        t.seen.entry(id.clone()).or_default().extend(seen);
                        match end.as_str() {
                            "done" => t.done += 1,
                            "storage_unavailable" => t.storage_unavailable += 1,
                            other => *t.other.entry(other.to_string()).or_default() += 1,
                        }
                    }
                    if end != "done" {
                        // A client backs off a little when refused, as a real one would.
                        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            })
        })
        .collect();
    let snapshot = |tally: &Rc<RefCell<Tally>>| {
        let t = tally.borrow();
        (t.done, t.storage_unavailable, t.other.values().sum::<usize>())
    };
    actix_web::rt::time::sleep(Duration::from_secs(5)).await;
    let before = service.rss_kib();
    let (done0, _, _) = snapshot(&tally);

    cluster.ctl("stop");
    let down_at = Instant::now();
    let mut peak = before;
    while down_at.elapsed() < Duration::from_secs(secs) {
        actix_web::rt::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(service.rss_kib());
    }
    let (done1, unavailable1, other1) = snapshot(&tally);
    cluster.ctl("start");
    let up_at = Instant::now();
    while up_at.elapsed() < Duration::from_secs(15) {
        actix_web::rt::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(service.rss_kib());
    }
    stop.set(true);
    for task in tasks {
        let _ = task.await;
    }
    let after = service.rss_kib();

    let tally = tally.take();
    let (mut seen_total, mut missing) = (0usize, Vec::new());
    for id in &ids {
        let seen = tally.seen.get(id).cloned().unwrap_or_default();
        seen_total += seen.len();
        let Some(&max) = seen.last() else { continue };
        let replayed = replayed_ids(&api, id, max).await;
        missing.extend(seen.difference(&replayed).map(|n| (id.clone(), *n)));
    }
    println!();
    println!(
        "PostgreSQL stopped {secs} s while {sessions} sessions stream (`slow 5 20` turns back to back, private cluster):"
    );
    println!(
        "  service RSS: before {:.1} MiB, peak {:.1} MiB ({:.2}×), after {:.1} MiB",
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
        peak as f64 / before.max(1) as f64,
        after as f64 / 1024.0
    );
    println!("  turns before the outage (5 s): {done0} done");
    println!("  turns during the outage: {} done, {unavailable1} storage_unavailable, {other1} other", done1 - done0);
    println!(
        "  turns in all: {} done, {} storage_unavailable, other {:?}",
        tally.done, tally.storage_unavailable, tally.other
    );
    println!(
        "  event ids clients saw: {seen_total}; missing from /events replay after: {} {:?}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    drop(service);
    drop(cluster);
}

//! Two instances on one PostgreSQL (issue #12, item 8), in one run:
//! - a sync turn sent to the session's owner versus through the other instance (forwarded):
//!   p50 / p99 of each and what forwarding adds,
//! - a streamed turn of many frames, direct versus forwarded: what forwarding adds per frame,
//! - takeover: the owner killed with SIGKILL, the time until a message through the other
//!   instance is answered (the lease runs out, the session is taken over and its CLI resumed).
//!
//! `target/release/examples/bench --only cluster [--turns N] [--lease-ttl S]` (needs PostgreSQL at
//! `PG_TEST_URL`, default postgres://root@127.0.0.1:5432/test; a schema of its own is made
//! and dropped).

use super::*;

const SECRET: &str = "bench-cluster-secret-0123456789";
const FRAMES: usize = 500;

fn pg_base() -> String {
    std::env::var("PG_TEST_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

fn psql(sql: &str) {
    let ok = Command::new("psql")
        .arg(pg_base())
        .args(["-q", "-c", &format!("SET client_min_messages = warning; {sql}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "psql {sql} failed (PostgreSQL at {} is needed)", pg_base());
}

fn instance(url: &str, users: &std::path::Path, ttl: u64) -> Service {
    let users = users.display().to_string();
    let ttl = ttl.to_string();
    Service::start(&[
        ("CLAUDE_AGENT_SESSION__STORAGE", "postgresql"),
        ("CLAUDE_AGENT_SESSION__DATABASE_URL", url),
        ("CLAUDE_AGENT_USER__BASE_DIR", &users),
        ("CLAUDE_AGENT_CLUSTER__SECRET", SECRET),
        ("CLAUDE_AGENT_CLUSTER__LEASE_TTL", &ttl),
        ("CLAUDE_AGENT_AUTH__CREDENTIALS_KEY", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
    ])
}

/// `turns` sync turns, alternating between `a` and `b` so both see the same machine: ms each.
async fn alternate(a: &Api, b: &Api, id: &str, turns: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut direct, mut forwarded) = (Vec::with_capacity(turns), Vec::with_capacity(turns));
    for i in 0..turns * 2 {
        let (api, into) = if i % 2 == 0 { (a, &mut direct) } else { (b, &mut forwarded) };
        let t = Instant::now();
        api.chat(id, "bench").await;
        into.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    (direct, forwarded)
}

pub async fn run(turns: usize, ttl: u64) {
    let schema = format!("bench_cluster_{}", std::process::id());
    psql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"));
    let base = pg_base();
    let url = format!("{base}{}options=-csearch_path%3D{schema}", if base.contains('?') { '&' } else { '?' });
    let users = tempfile::tempdir().expect("users dir");
    let mut owner = instance(&url, users.path(), ttl);
    let other = instance(&url, users.path(), ttl);
    let a = Api::new(&owner, "cluster").await;
    let b = Api {
        client: awc::Client::builder().timeout(Duration::from_secs(120)).finish(),
        url: other.url.clone(),
        key: a.key.clone(),
    };
    let id = a.create_session().await;
    a.wait_active(&id).await;
    for _ in 0..20 {
        a.chat(&id, "warm up").await;
        b.chat(&id, "warm up").await;
    }

    let (direct, forwarded) = alternate(&a, &b, &id, turns).await;
    let (d50, d99) = summary(direct);
    let (f50, f99) = summary(forwarded);
    println!();
    println!("forwarding ({turns} sync turns each, alternating; the session's CLI runs on A):");
    println!("  to the owner (A):         p50 {d50:6.3} ms   p99 {d99:6.3} ms");
    println!("  through B (forwarded):    p50 {f50:6.3} ms   p99 {f99:6.3} ms");
    println!("  forwarding adds:          p50 {:6.3} ms   p99 {:6.3} ms", f50 - d50, f99 - d99);

    let message = format!("slow {FRAMES} 0");
    let (mut sd, mut sf) = (Vec::new(), Vec::new());
    for i in 0..20 {
        let (api, into) = if i % 2 == 0 { (&a, &mut sd) } else { (&b, &mut sf) };
        let t = Instant::now();
        api.stream(&id, &message).await;
        into.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (sd50, _) = summary(sd);
    let (sf50, _) = summary(sf);
    println!("streamed turns of {FRAMES} frames (p50 of 10 each):");
    println!(
        "  to the owner {sd50:7.2} ms, through B {sf50:7.2} ms: forwarding adds {:.4} ms per frame",
        (sf50 - sd50) / FRAMES as f64
    );

    // Takeover: the owner dies without a word; the next message reaches the other instance.
    let _ = Command::new("kill").arg("-KILL").arg(owner.child.id().to_string()).status();
    let _ = owner.child.wait();
    let t = Instant::now();
    let answer = b.chat(&id, "history").await;
    let took = t.elapsed().as_secs_f64();
    let earlier = answer["text"].as_str().unwrap_or("").matches("bench").count();
    println!(
        "takeover after kill -9 of the owner (lease_ttl {ttl} s): the next message through B answered in {took:.2} s \
         ({earlier} earlier turns in its context)"
    );
    drop(other);
    drop(owner);
    psql(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
}

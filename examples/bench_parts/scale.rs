//! Cost stays flat as sessions and turns grow (issue #11, item 8):
//! - turns/s across 10 sessions and across 1,000 (each with its own client, same turns in all),
//! - one session's latency and the service's CPU per turn over turns 1–300 and 5,701–6,000.

use super::*;

/// `turns` sync turns spread over `sessions` sessions, one client each: turns/s and the
/// service's CPU per turn.
async fn across(service: &Service, api: &Api, sessions: usize, turns: usize) -> (f64, f64) {
    let mut ids = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        ids.push(api.create_session().await);
    }
    for id in &ids {
        api.wait_active(id).await;
    }
    let per_session = turns.div_ceil(sessions);
    let cpu_before = service.cpu_ms();
    let started = Instant::now();
    chat_on_each(api, &ids, per_session).await;
    let elapsed = started.elapsed().as_secs_f64();
    let done = (per_session * sessions) as f64;
    let cpu_per_turn = (service.cpu_ms() - cpu_before) / done;
    for id in &ids {
        let _ = api
            .client
            .delete(format!("{}/api/v1/sessions/{id}?purge=true", api.url))
            .insert_header(("Authorization", format!("Bearer {}", api.key)))
            .send()
            .await;
    }
    (done / elapsed, cpu_per_turn)
}

pub async fn run() {
    let service = Service::start(&[
        ("CLAUDE_AGENT_API__MAX_SESSIONS", "1100"),
        ("CLAUDE_AGENT_API__MAX_SESSIONS_PER_USER", "1100"),
        ("CLAUDE_AGENT_API__MAX_CONCURRENT_REQUESTS", "1100"),
    ]);
    let api = Api::new(&service, "scale").await;
    let turns = 4_000;
    let (small, small_cpu) = across(&service, &api, 10, turns).await;
    let (large, large_cpu) = across(&service, &api, 1_000, turns).await;
    println!();
    println!("cost as sessions grow ({turns} sync turns, one client per session):");
    println!("  across    10 sessions: {small:7.0} turns/s   service CPU {small_cpu:6.3} ms/turn");
    println!("  across 1,000 sessions: {large:7.0} turns/s   service CPU {large_cpu:6.3} ms/turn");
    println!("  1,000 / 10: {:.2}", large / small);

    let id = api.create_session().await;
    api.wait_active(&id).await;
    let window = |from: usize| {
        let (service, api, id) = (&service, &api, id.clone());
        async move {
            let cpu_before = service.cpu_ms();
            let mut ms = Vec::with_capacity(300);
            for _ in 0..300 {
                let t = Instant::now();
                api.chat(&id, "bench").await;
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            let cpu = (service.cpu_ms() - cpu_before) / 300.0;
            let (p50, p99) = summary(ms);
            println!(
                "  turns {:>5}–{:>5}: p50 {p50:6.3} ms   p99 {p99:6.3} ms   service CPU {cpu:6.3} ms/turn",
                from + 1,
                from + 300
            );
        }
    };
    println!();
    println!("cost as one session's turns grow (sync /chat):");
    window(0).await;
    for _ in 300..5_700 {
        api.chat(&id, "bench").await;
    }
    window(5_700).await;
    drop(service);
}

/// The service's CPU per warm sync turn on one session (`--only cpu`).
pub async fn cpu_per_turn(turns: usize) {
    let service = Service::start(&[]);
    let api = Api::new(&service, "cpu").await;
    let id = api.create_session().await;
    api.wait_active(&id).await;
    for _ in 0..20 {
        api.chat(&id, "warm up").await;
    }
    let cpu_before = service.cpu_ms();
    let started = Instant::now();
    for _ in 0..turns {
        api.chat(&id, "bench").await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{turns} sync turns on one session: {:.0} turns/s, service CPU {:.3} ms/turn",
        turns as f64 / elapsed,
        (service.cpu_ms() - cpu_before) / turns as f64
    );
    drop(service);
}

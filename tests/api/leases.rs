//! Session leases at the storage level, on PostgreSQL (the cluster's coordinator): a stale
//! owner's writes are refused once another instance took the session, and racing takes count
//! each other against the cluster-wide caps.

use std::time::Duration;

use claude_agent_http::domain::SessionStatus;
use claude_agent_http::settings::{SessionSettings, StorageKind};
use claude_agent_http::storage::{EventRow, Storage, StorageError, Take};

use crate::helpers::{pg_admin, pg_url_with_schema};

struct Schema(String);

impl Drop for Schema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0);
        std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(pg_admin(&sql));
            }
        })
        .join()
        .ok();
    }
}

async fn storage() -> (Storage, Schema) {
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    pg_admin(&format!("CREATE SCHEMA {schema}")).await;
    let settings = SessionSettings {
        storage: StorageKind::Postgresql,
        database_url: Some(pg_url_with_schema(&schema)),
        ..SessionSettings::default()
    };
    (Storage::connect(&settings).await.expect("storage"), Schema(schema))
}

async fn session(storage: &Storage, user: &str) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    let row = claude_agent_http::storage::SessionRow {
        session_id: id.clone(),
        user_id: user.into(),
        subdir: String::new(),
        cwd: "/tmp".into(),
        status: SessionStatus::Starting,
        created_at: 0,
        last_active_at: claude_agent_http::clock::now_ms(),
        message_count: 0,
        total_cost_usd: 0.0,
        input_tokens: 0,
        output_tokens: 0,
        metadata: "{}".into(),
        options: "{}".into(),
        cli_session_id: id.clone(),
        last_event_id: 0,
        fork_from: None,
        resume_at: None,
    };
    storage.insert_session(&row).await.expect("insert");
    id
}

fn event(session: &str, id: i64) -> EventRow {
    EventRow { session_id: session.into(), event_id: id, turn_id: "t".into(), payload: "{}".into(), created_at: 0 }
}

#[actix_web::test]
async fn a_paused_owner_is_fenced_out_once_another_instance_took_the_session() {
    let (storage, _schema) = storage().await;
    let id = session(&storage, "alice").await;
    let ttl = 300;
    let Take::Taken { lease: a_lease, takeover, .. } = storage.take_lease(&id, "a", ttl, (10, 10)).await.unwrap()
    else {
        panic!("a free session is taken")
    };
    assert!(!takeover);
    let a = storage.fenced(Some(a_lease.clone()));
    a.insert_events(&[event(&id, 1)], 0).await.expect("the owner writes");
    a.set_status_if(&id, &SessionStatus::LIVE, SessionStatus::Active).await.expect("the owner writes");

    // While A's lease lives, B cannot take it: it learns who owns it.
    match storage.take_lease(&id, "b", ttl, (10, 10)).await.unwrap() {
        Take::Owned { owner, .. } => assert_eq!(owner, "a"),
        other => panic!("a live lease was taken: {other:?}"),
    }

    // A is paused past its lease: B takes over, with a new generation.
    tokio::time::sleep(Duration::from_millis(ttl as u64 + 100)).await;
    let Take::Taken { lease: b_lease, takeover, row } = storage.take_lease(&id, "b", ttl, (10, 10)).await.unwrap()
    else {
        panic!("an expired lease is taken over")
    };
    assert!(takeover);
    assert!(b_lease.generation > a_lease.generation);
    assert_eq!(row.last_event_id, 1, "the new owner continues after the old one's ids");
    let b = storage.fenced(Some(b_lease));

    // A wakes up: every kind of write it makes is refused; B's go through.
    assert_eq!(a.insert_events(&[event(&id, 2)], 0).await, Err(StorageError::Fenced));
    assert_eq!(a.set_status_if(&id, &SessionStatus::LIVE, SessionStatus::Idle).await, Err(StorageError::Fenced));
    assert_eq!(a.extend_event_ids(&id, 5000).await, Err(StorageError::Fenced));
    assert_eq!(a.reserve_event_ids(&id, 1000).await, Err(StorageError::Fenced));
    assert_eq!(a.allow_tool(&id, "Bash").await, Err(StorageError::Fenced));
    assert!(!a.release_lease(&id, &a_lease).await.unwrap(), "A cannot give away B's lease");
    b.insert_events(&[event(&id, 3)], 0).await.expect("the new owner writes");
    let ids: Vec<i64> = storage.list_events(&id, 0).await.unwrap().iter().map(|e| e.event_id).collect();
    assert_eq!(ids, [1, 3], "nothing of A's after the takeover");
    let row = storage.get_session(&id).await.unwrap().unwrap();
    assert_eq!(row.status, SessionStatus::Active, "A's late `idle` was not written");
}

#[actix_web::test]
async fn racing_takes_on_three_instances_let_exactly_the_cap_through() {
    let (storage, _schema) = storage().await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(session(&storage, "alice").await);
    }
    let takes = ids.iter().enumerate().map(|(i, id)| {
        let storage = storage.clone();
        let (id, instance) = (id.clone(), ["a", "b", "c"][i % 3]);
        async move { storage.take_lease(&id, instance, 15_000, (3, 100)).await.unwrap() }
    });
    let results = futures_util::future::join_all(takes).await;
    let taken = results.iter().filter(|t| matches!(t, Take::Taken { .. })).count();
    let refused = results.iter().filter(|t| matches!(t, Take::UserQuota { .. })).count();
    assert_eq!((taken, refused), (3, 17), "{results:?}");
}

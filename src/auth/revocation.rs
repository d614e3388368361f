//! Revocation that reaches open streams: revoking a key or deleting a user ends, within moments,
//! every SSE stream that was opened with it (`/events`, `/chat/stream`).
//!
//! With several instances on one PostgreSQL, a revocation is also notified (`NOTIFY`, ids
//! only) and every instance announces it to its own streams and key cache.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::LocalBoxFuture;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::Caller;
use super::key_cache::KeyCache;
use crate::error::ApiError;
use crate::storage::Storage;

/// Announcements kept for a stream that has not looked yet. A stream that falls further behind
/// checks its key in storage instead, so a burst of revocations never lets one slip by.
const BACKLOG: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    Key(String),
    User(String),
}

impl Revoked {
    /// As other instances are told (`key:<id>`, `user:<id>`).
    pub fn notice(&self) -> String {
        match self {
            Revoked::Key(k) => format!("key:{k}"),
            Revoked::User(u) => format!("user:{u}"),
        }
    }

    pub fn from_notice(notice: &str) -> Option<Revoked> {
        match notice.split_once(':')? {
            ("key", k) => Some(Revoked::Key(k.to_string())),
            ("user", u) => Some(Revoked::User(u.to_string())),
            _ => None,
        }
    }
}

/// The in-process notifier (one per application, in `AppState`; clones share it).
#[derive(Clone)]
pub struct Revocations {
    announced: broadcast::Sender<Revoked>,
    /// The authenticator's cache of verified keys (see [`Revocations::key_cache`]).
    keys: Arc<KeyCache>,
}

impl Default for Revocations {
    fn default() -> Self {
        Self { announced: broadcast::channel(BACKLOG).0, keys: Default::default() }
    }
}

impl Revocations {
    /// Tells every open stream, and the key cache; called once the revocation is committed
    /// to storage.
    pub fn announce(&self, revoked: Revoked) {
        self.keys.revoke(&revoked);
        // No receiver (no stream open) is not an error.
        let _ = self.announced.send(revoked);
    }

    /// [`Revocations::announce`] here, and to the other instances sharing the database (a
    /// failed notice is logged: their key caches forget it within a second, their streams
    /// keep going).
    pub async fn announce_everywhere(&self, revoked: Revoked, storage: &Storage) {
        let notice = revoked.notice();
        self.announce(revoked);
        if let Err(e) = storage.notify_revocation(&notice).await {
            log::warn!("revocation {notice} not told to the other instances: {e}");
        }
    }

    /// The cache the authenticator keeps verified keys in, which [`Revocations::announce`]
    /// drops revoked ones from.
    pub fn key_cache(&self) -> Arc<KeyCache> {
        self.keys.clone()
    }

    /// What ends a stream opened by `caller`. It listens first and then checks the key in
    /// storage, so a revocation committed after the request was authenticated but before it
    /// listened is seen too (it answers 401 then, as if the key were already gone).
    pub async fn watch(&self, caller: &Caller, storage: &Storage) -> Result<RevocationWatch, ApiError> {
        let Caller::User { user_id, key_id } = caller else {
            // The admin key and open mode are not revocable through the API.
            return Ok(RevocationWatch::never());
        };
        let mut announced = self.announced.subscribe();
        // A key the cache holds was not revoked here since it was read (that would have
        // dropped it); any other is read from storage.
        let cached = self.keys.get(key_id, Instant::now()).is_some_and(|(_, c)| &c == caller);
        if !cached && !key_still_valid(storage, user_id, key_id).await? {
            return Err(ApiError::Unauthorized("Invalid or revoked API key".into()));
        }
        let (user_id, key_id, storage) = (user_id.clone(), key_id.clone(), storage.clone());
        Ok(RevocationWatch(Box::pin(async move {
            loop {
                match announced.recv().await {
                    Ok(Revoked::Key(k)) if k == key_id => return,
                    Ok(Revoked::User(u)) if u == user_id => return,
                    Ok(_) => {}
                    // Missed some: ask storage (a storage failure keeps the stream, it is not a revocation).
                    Err(RecvError::Lagged(_)) => {
                        if let Ok(false) = key_still_valid(&storage, &user_id, &key_id).await {
                            return;
                        }
                    }
                    Err(RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        })))
    }
}

async fn key_still_valid(storage: &Storage, user_id: &str, key_id: &str) -> Result<bool, ApiError> {
    let row = storage.find_key(key_id).await?;
    Ok(row.is_some_and(|r| r.revoked_at.is_none() && r.user_id.as_deref() == Some(user_id)))
}

/// Resolves when the stream's key or user is revoked.
pub struct RevocationWatch(LocalBoxFuture<'static, ()>);

impl RevocationWatch {
    /// For streams nothing can revoke.
    pub fn never() -> Self {
        RevocationWatch(Box::pin(std::future::pending()))
    }
}

impl Future for RevocationWatch {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn notices_carry_ids_both_ways() {
        for revoked in [Revoked::Key("k:1".into()), Revoked::User("alice".into())] {
            assert_eq!(Revoked::from_notice(&revoked.notice()), Some(revoked));
        }
        assert_eq!(Revoked::from_notice("nonsense"), None);
        assert_eq!(Revoked::from_notice("group:x"), None);
    }

    use std::time::Duration;

    use super::*;
    use crate::settings::{SessionSettings, StorageKind};
    use crate::storage::{ApiKeyRow, UserRow};

    async fn storage_with_alice() -> Storage {
        let settings = SessionSettings { storage: StorageKind::Memory, ..Default::default() };
        let storage = Storage::connect(&settings).await.unwrap();
        let user = UserRow { user_id: "alice".into(), created_at: 0 };
        let key = ApiKeyRow {
            key_id: "k1".into(),
            user_id: Some("alice".into()),
            is_admin: false,
            key_hash: "h".into(),
            created_at: 0,
            revoked_at: None,
        };
        storage.insert_user_with_key(&user, &key).await.unwrap();
        storage
    }

    fn alice() -> Caller {
        Caller::User { user_id: "alice".into(), key_id: "k1".into() }
    }

    async fn resolves(watch: &mut RevocationWatch) -> bool {
        tokio::time::timeout(Duration::from_millis(200), watch).await.is_ok()
    }

    #[actix_web::test]
    async fn its_own_key_or_user_ends_a_watch_and_others_do_not() {
        let storage = storage_with_alice().await;
        let revocations = Revocations::default();
        let mut watch = revocations.watch(&alice(), &storage).await.unwrap();
        revocations.announce(Revoked::Key("k2".into()));
        revocations.announce(Revoked::User("bob".into()));
        assert!(!resolves(&mut watch).await);
        revocations.announce(Revoked::User("alice".into()));
        assert!(resolves(&mut watch).await);
        let mut watch = revocations.watch(&alice(), &storage).await.unwrap();
        revocations.announce(Revoked::Key("k1".into()));
        assert!(resolves(&mut watch).await);
    }

    #[actix_web::test]
    async fn a_watch_that_missed_announcements_asks_storage() {
        let storage = storage_with_alice().await;
        let revocations = Revocations::default();
        let mut watch = revocations.watch(&alice(), &storage).await.unwrap();
        for i in 0..BACKLOG * 2 {
            revocations.announce(Revoked::Key(format!("other{i}")));
        }
        assert!(!resolves(&mut watch).await, "lagged, but the key is still valid");
        // Revoked while the watch lags behind: its own announcement is among those it misses.
        assert!(storage.revoke_key("alice", "k1", 1).await.unwrap());
        for i in 0..BACKLOG * 2 {
            revocations.announce(Revoked::Key(if i == 0 { "k1".into() } else { format!("other{i}") }));
        }
        assert!(resolves(&mut watch).await);
    }

    #[actix_web::test]
    async fn a_key_revoked_before_the_watch_is_refused() {
        let storage = storage_with_alice().await;
        storage.revoke_key("alice", "k1", 1).await.unwrap();
        let refused = Revocations::default().watch(&alice(), &storage).await.err().unwrap();
        assert_eq!(refused.code(), "unauthorized");
        assert!(Revocations::default().watch(&Caller::Admin, &storage).await.is_ok());
    }
}

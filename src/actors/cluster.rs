//! This instance among others on one PostgreSQL: its registration and heartbeat, and the
//! leases of the sessions it runs. A CLI is started only once its session's lease is taken
//! (create, resume, respawn, takeover: one conditional UPDATE that bumps the generation);
//! the session's writer is fenced by that lease and gives it back when it ends. A lease the
//! heartbeat finds taken over stops its CLI at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::ApiError;
use crate::storage::{Lease, SessionRow, Storage, StorageError, Take};

/// Who this instance is, and the leases it holds.
pub struct Cluster {
    instance_id: Arc<str>,
    advertise_url: String,
    ttl: Duration,
    storage: Storage,
    /// Cluster-wide caps of live sessions: per user, in all.
    caps: (i64, i64),
    /// Session → the generation of the lease this instance holds on it.
    owned: Mutex<HashMap<String, i64>>,
    takeovers: AtomicU64,
    lost: AtomicU64,
    /// When the last heartbeat renewed this instance's leases (monotonic: it runs on while
    /// the process is paused).
    renewed_at: Mutex<Instant>,
    /// What stops the CLIs of lost leases (the registry), set once the heartbeat starts.
    on_lost: std::sync::OnceLock<OnLost>,
    /// When a request last asked for a heartbeat (see [`Cluster::still_owns`]).
    checked_at: Mutex<Option<Instant>>,
    /// One heartbeat at a time (the timer's, or one a request asked for).
    beating: tokio::sync::Mutex<()>,
}

/// A lease found taken over by the heartbeat: the registry stops these sessions' CLIs.
pub type OnLost = Box<dyn Fn(Vec<String>) + Send + Sync>;

impl Cluster {
    pub fn new(
        instance_id: String,
        advertise_url: String,
        ttl: Duration,
        storage: Storage,
        caps: (u32, u32),
    ) -> Arc<Cluster> {
        Arc::new(Cluster {
            instance_id: instance_id.into(),
            advertise_url,
            ttl,
            storage,
            caps: (caps.0.into(), caps.1.into()),
            owned: Mutex::new(HashMap::new()),
            takeovers: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            renewed_at: Mutex::new(Instant::now()),
            on_lost: std::sync::OnceLock::new(),
            beating: tokio::sync::Mutex::new(()),
            checked_at: Mutex::new(None),
        })
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    pub fn advertise_url(&self) -> &str {
        &self.advertise_url
    }

    pub fn lease_ttl(&self) -> Duration {
        self.ttl
    }

    /// How often something waiting on a lease (a forwarded request, a follower elsewhere)
    /// looks at it again: a third of the TTL, from 250 ms to 2 s.
    pub fn lease_poll(&self) -> Duration {
        (self.ttl / 3).clamp(Duration::from_millis(250), Duration::from_secs(2))
    }

    fn ttl_ms(&self) -> i64 {
        self.ttl.as_millis() as i64
    }

    /// Whether this instance holds the session's lease (no database round trip).
    pub fn owns(&self, session_id: &str) -> bool {
        self.owned().contains_key(session_id)
    }

    /// Whether this instance still holds the session's lease, checked with the database
    /// first when the last renewal is older than the TTL (the process was paused, or the
    /// database away): a lease lost meanwhile has its CLI stopped before anything is asked of it.
    /// A database that does not answer within a moment leaves the answer at what this instance
    /// knows (its writes stay fenced anyway), so an outage does not hold every turn up.
    pub async fn still_owns(&self, session_id: &str) -> bool {
        let stale = self.renewed_at.lock().map(|at| at.elapsed() >= self.ttl).unwrap_or(true);
        if stale && self.may_check_now() {
            let _ = tokio::time::timeout(Duration::from_millis(500), self.beat_and_stop_lost()).await;
        }
        self.owns(session_id)
    }

    /// At most one heartbeat a second asked for by requests.
    fn may_check_now(&self) -> bool {
        let Ok(mut last) = self.checked_at.lock() else { return false };
        if last.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    pub fn owned_count(&self) -> usize {
        self.owned().len()
    }

    /// Expired leases of other instances this one took.
    pub fn takeovers(&self) -> u64 {
        self.takeovers.load(Ordering::Relaxed)
    }

    /// Leases this instance held and found taken by another.
    pub fn leases_lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    fn owned(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.owned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers the instance and frees what it owned before (a restart with the same id):
    /// its sessions become `idle` and resumable anywhere. Other instances' are not touched.
    pub async fn join(&self) -> Result<usize, StorageError> {
        // Without a secret no request can be forwarded to it: it registers no URL.
        let url = Some(self.advertise_url.as_str()).filter(|u| !u.is_empty());
        self.storage.register_instance(&self.instance_id, url).await?;
        self.storage.release_all_leases(&self.instance_id).await
    }

    /// The other live instances.
    pub async fn peers(&self) -> Result<Vec<crate::storage::InstanceRow>, StorageError> {
        let all = self.storage.live_instances(self.ttl_ms()).await?;
        Ok(all.into_iter().filter(|i| *i.instance_id != *self.instance_id).collect())
    }

    /// Takes the session's lease before its CLI starts: the row as it is now (the event ids
    /// a takeover continues from) and the lease its writes are fenced by.
    pub async fn take(&self, session_id: &str) -> Result<(SessionRow, Lease), ApiError> {
        let taken = self.storage.take_lease(session_id, &self.instance_id, self.ttl_ms(), self.caps).await?;
        match taken {
            Take::Taken { row, lease, takeover } => {
                if takeover {
                    self.takeovers.fetch_add(1, Ordering::Relaxed);
                    log::info!("session {session_id}: took over the expired lease of its previous owner");
                }
                self.owned().insert(session_id.to_string(), lease.generation);
                Ok((*row, lease))
            }
            Take::Owned { owner, url } => Err(ApiError::SessionElsewhere { owner, url }),
            Take::UserQuota { live } => Err(ApiError::QuotaExceeded {
                message: format!("You have the maximum of {live} live sessions; close one first"),
                retry_after_secs: 10,
            }),
            Take::TotalQuota { live } => Err(ApiError::QuotaExceeded {
                message: format!("The service runs its maximum of {live} live sessions"),
                retry_after_secs: 10,
            }),
            Take::Missing => Err(ApiError::SessionNotFound),
        }
    }

    /// Gives a lease back once everything its holder wrote is stored (the writer's end).
    pub async fn release(&self, session_id: &str, lease: &Lease) {
        {
            let mut owned = self.owned();
            if owned.get(session_id) == Some(&lease.generation) {
                owned.remove(session_id);
            }
        }
        if let Err(e) = self.storage.release_lease(session_id, lease).await {
            log::warn!("session {session_id}: lease not released ({e}); it expires in {:?}", self.ttl);
        }
    }

    /// Drain: every session this instance owned becomes `idle` and free at once (after its
    /// CLIs stopped), and the instance leaves the table.
    pub async fn leave(&self) {
        // The writers of the stopped sessions give their leases back once their last jobs
        // (the final status, the unused event ids) are stored: waited for, briefly.
        let until = Instant::now() + Duration::from_secs(5);
        while self.owned_count() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.owned().clear();
        match self.storage.release_all_leases(&self.instance_id).await {
            Ok(n) => log::info!("released the leases of this instance ({n} session(s) now idle)"),
            Err(e) => log::warn!("leases not released ({e}); they expire in {:?}", self.ttl),
        }
        if let Err(e) = self.storage.deregister_instance(&self.instance_id).await {
            log::warn!("instance row not removed: {e}");
        }
    }

    /// Renews the instance and its leases every third of the TTL, stops the CLIs of leases
    /// found taken over, and frees the sessions of instances dead for two TTLs.
    pub fn start_heartbeat(self: &Arc<Self>, on_lost: OnLost) {
        let _ = self.on_lost.set(on_lost);
        let me = Arc::downgrade(self);
        actix_web::rt::spawn(async move {
            let period = me.upgrade().map(|c| c.ttl / 3).unwrap_or(Duration::from_secs(1));
            let mut tick = tokio::time::interval(period.max(Duration::from_millis(100)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let Some(cluster) = me.upgrade() else { return };
                cluster.beat_and_stop_lost().await;
            }
        });
    }

    async fn beat_and_stop_lost(&self) {
        let _one = self.beating.lock().await;
        let lost = self.beat().await;
        if !lost.is_empty()
            && let Some(stop) = self.on_lost.get()
        {
            stop(lost);
        }
    }

    /// One heartbeat: the sessions whose lease this instance held and no longer does.
    async fn beat(&self) -> Vec<String> {
        let before: HashMap<String, i64> = self.owned().clone();
        let sent = Instant::now();
        let held = match self.storage.heartbeat(&self.instance_id, self.ttl_ms()).await {
            Ok(held) => held,
            Err(e) => {
                log::warn!("heartbeat failed ({e}); leases run out {:?} after the last one", self.ttl);
                return Vec::new();
            }
        };
        if let Ok(mut at) = self.renewed_at.lock() {
            *at = sent;
        }
        let held: HashMap<String, i64> = held.into_iter().collect();
        let lost = lost_leases(&before, &held);
        if !lost.is_empty() {
            let mut owned = self.owned();
            for id in &lost {
                if owned.get(id) == before.get(id) {
                    owned.remove(id);
                }
            }
            self.lost.fetch_add(lost.len() as u64, Ordering::Relaxed);
            log::warn!("{} session lease(s) taken by another instance: stopping their CLIs: {lost:?}", lost.len());
        }
        if let Err(e) = self.storage.release_abandoned_leases(self.ttl_ms()).await {
            log::debug!("abandoned leases not swept: {e}");
        }
        lost
    }
}

/// Leases held before a heartbeat that it did not find held still (gone, or a new generation).
fn lost_leases(before: &HashMap<String, i64>, held: &HashMap<String, i64>) -> Vec<String> {
    let mut lost: Vec<String> =
        before.iter().filter(|(id, generation)| held.get(*id) != Some(generation)).map(|(id, _)| id.clone()).collect();
    lost.sort();
    lost
}

/// `<hostname>-<port>`: stable across restarts of one pod, or of one host and port.
pub fn default_instance_id(port: u16) -> String {
    format!("{}-{port}", hostname())
}

/// `http://<host>:<port>`, with the hostname when the service listens on every address.
pub fn default_advertise_url(host: &str, port: u16) -> String {
    let host = match host.trim_start_matches('[').trim_end_matches(']') {
        "0.0.0.0" | "::" | "" => hostname(),
        h if h.contains(':') => format!("[{h}]"),
        h => h.to_string(),
    };
    format!("http://{host}:{port}")
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let name = if ok { std::ffi::CStr::from_bytes_until_nul(&buf).ok().and_then(|c| c.to_str().ok()) } else { None };
    name.filter(|n| !n.is_empty()).unwrap_or("localhost").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_missing_or_of_another_generation_is_lost() {
        let before: HashMap<String, i64> = [("a".into(), 1), ("b".into(), 4), ("c".into(), 2)].into();
        let held: HashMap<String, i64> = [("a".into(), 1), ("b".into(), 5), ("d".into(), 1)].into();
        assert_eq!(lost_leases(&before, &held), ["b", "c"]);
        assert!(lost_leases(&before, &before).is_empty());
    }

    #[test]
    fn the_default_url_names_the_host_when_listening_everywhere() {
        assert_eq!(default_advertise_url("127.0.0.1", 80), "http://127.0.0.1:80");
        assert_eq!(default_advertise_url("::1", 80), "http://[::1]:80");
        assert!(default_advertise_url("0.0.0.0", 8000).ends_with(":8000"));
        assert!(!default_advertise_url("0.0.0.0", 8000).contains("0.0.0.0"));
        assert!(default_instance_id(8000).ends_with("-8000"));
    }
}

//! The registry actor: the one place that admits or refuses every create and resume
//! (global and per-user caps, memory), samples memory, and expires sessions past their TTL.
//! Each decision and its effect (the reserved slot) happen in one message, so two requests
//! racing for the last slot cannot both win.

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;

use crate::error::ApiError;
use crate::memory::{self, MemorySample};
use crate::settings::Settings;
use crate::storage::Storage;

/// Limits the registry enforces, read from the settings once.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_sessions: u32,
    pub max_sessions_per_user: u32,
    pub memory_limit_bytes: u64,
    pub check_interval: Duration,
    /// 0 = sessions never expire.
    pub ttl: Duration,
}

impl Limits {
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            max_sessions: s.api.max_sessions,
            max_sessions_per_user: s.api.max_sessions_per_user,
            memory_limit_bytes: s.api.memory_limit_mb.saturating_mul(1024 * 1024),
            check_interval: Duration::from_secs(s.memory.check_interval),
            ttl: Duration::from_secs(s.session.ttl),
        }
    }
}

pub struct Registry {
    limits: Limits,
    storage: Storage,
    /// Live sessions of this instance: session id → owner.
    live: HashMap<String, String>,
    per_user: HashMap<String, u32>,
    memory: MemorySample,
    sweeping: bool,
}

impl Registry {
    pub fn new(limits: Limits, storage: Storage) -> Self {
        Self {
            limits,
            storage,
            live: HashMap::new(),
            per_user: HashMap::new(),
            memory: memory::sample(),
            sweeping: false,
        }
    }

    fn release(&mut self, session_id: &str) {
        if let Some(user) = self.live.remove(session_id)
            && let Some(n) = self.per_user.get_mut(&user)
        {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(&user);
            }
        }
    }

    fn sweep_expired(&mut self, ctx: &mut Context<Self>) {
        if self.sweeping || self.limits.ttl.is_zero() {
            return;
        }
        self.sweeping = true;
        let cutoff = crate::clock::now_ms() - self.limits.ttl.as_millis() as i64;
        let storage = self.storage.clone();
        let sweep = async move { storage.expire_sessions_inactive_since(cutoff).await };
        ctx.spawn(sweep.into_actor(self).map(|result, act, _| {
            act.sweeping = false;
            match result {
                Ok(expired) => {
                    for id in &expired {
                        act.release(id);
                    }
                    if !expired.is_empty() {
                        log::info!("expired {} session(s) past session.ttl", expired.len());
                    }
                }
                Err(e) => log::warn!("ttl sweep failed: {e}"),
            }
        }));
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.limits.check_interval, |act, _| {
            act.memory = memory::sample()
        });
        if !self.limits.ttl.is_zero() {
            // Often enough that an expired session is noticed within a quarter of its TTL.
            let every =
                (self.limits.ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
            ctx.run_interval(every, |act, ctx| act.sweep_expired(ctx));
        }
    }
}

/// Why a session was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    GlobalCap {
        max: u32,
    },
    UserCap {
        max: u32,
    },
    Memory {
        used_mb: u64,
        limit_mb: u64,
        retry_after_secs: u64,
    },
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::GlobalCap { max } => ApiError::QuotaExceeded {
                message: format!("The service runs its maximum of {max} live sessions"),
                retry_after_secs: 10,
            },
            Refusal::UserCap { max } => ApiError::QuotaExceeded {
                message: format!("You have the maximum of {max} live sessions; close one first"),
                retry_after_secs: 10,
            },
            Refusal::Memory {
                used_mb,
                limit_mb,
                retry_after_secs,
            } => ApiError::MemoryPressure {
                message: format!("Memory in use ({used_mb} MiB) is at the limit ({limit_mb} MiB)"),
                retry_after_secs,
            },
        }
    }
}

/// Reserve a live slot for a session (create or resume). Idempotent for a session already live.
#[derive(Message)]
#[rtype(result = "Result<(), Refusal>")]
pub struct Admit {
    pub session_id: String,
    pub user_id: String,
}

impl Handler<Admit> for Registry {
    type Result = Result<(), Refusal>;

    fn handle(&mut self, msg: Admit, _: &mut Context<Self>) -> Self::Result {
        if self.live.contains_key(&msg.session_id) {
            return Ok(());
        }
        if self.memory.total_bytes() >= self.limits.memory_limit_bytes {
            return Err(Refusal::Memory {
                used_mb: self.memory.total_mb(),
                limit_mb: self.limits.memory_limit_bytes / (1024 * 1024),
                retry_after_secs: self.limits.check_interval.as_secs().max(1),
            });
        }
        if self.live.len() as u32 >= self.limits.max_sessions {
            return Err(Refusal::GlobalCap {
                max: self.limits.max_sessions,
            });
        }
        let of_user = self.per_user.get(&msg.user_id).copied().unwrap_or(0);
        if of_user >= self.limits.max_sessions_per_user {
            return Err(Refusal::UserCap {
                max: self.limits.max_sessions_per_user,
            });
        }
        *self.per_user.entry(msg.user_id.clone()).or_insert(0) += 1;
        self.live.insert(msg.session_id, msg.user_id);
        Ok(())
    }
}

/// Give a session's slot back (closed, purged, expired, or its create failed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Release {
    pub session_ids: Vec<String>,
}

impl Handler<Release> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Release, _: &mut Context<Self>) {
        for id in &msg.session_ids {
            self.release(id);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryStats {
    pub live_sessions: usize,
    pub memory: MemorySample,
}

#[derive(Message)]
#[rtype(result = "RegistryStats")]
pub struct GetStats;

impl Handler<GetStats> for Registry {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(RegistryStats {
            live_sessions: self.live.len(),
            memory: self.memory,
        })
    }
}

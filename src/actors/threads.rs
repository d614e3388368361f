//! The threads session actors run on: `runtime.workers` threads (one per core by default),
//! each with its own actix arbiter on a current-thread tokio runtime, handed out round robin. A
//! session's actor, its CLI's pipes and its supervisor tasks all live on one of them, so one
//! busy session slows only its neighbours on that thread, and every core serves sessions.

use std::sync::atomic::{AtomicUsize, Ordering};

use actix::prelude::*;

/// One arbiter of the pool: where to start an actor, and the tokio runtime under it (for
/// registering a CLI's pipes from the launcher thread).
#[derive(Clone)]
pub struct SessionThread {
    pub arbiter: ArbiterHandle,
    pub runtime: tokio::runtime::Handle,
}

pub struct SessionThreads {
    /// Each thread runs its own actix `System`: an arbiter of the main one would be stopped
    /// with it, and actix-server stops the main `System` on SIGTERM, before the registry has
    /// stopped every CLI (dropped actors kill their CLI, but not its process group).
    systems: Vec<System>,
    threads: Vec<SessionThread>,
    next: AtomicUsize,
}

impl SessionThreads {
    /// Starts `count` threads (at least one).
    pub fn start(count: usize) -> std::io::Result<SessionThreads> {
        let (mut systems, mut threads) = (Vec::new(), Vec::new());
        for i in 0..count.max(1) {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new().name(format!("sessions-{i}")).spawn(move || {
                let runner = System::new();
                runner.block_on(async {
                    crate::alloc::flush_thread_cache_periodically();
                    let _ = tx.send((System::current(), Arbiter::current(), tokio::runtime::Handle::current()));
                });
                let _ = runner.run();
            })?;
            let (system, arbiter, runtime) =
                rx.recv().map_err(|_| std::io::Error::other("a session thread ended before it ran"))?;
            systems.push(system);
            threads.push(SessionThread { arbiter, runtime });
        }
        Ok(SessionThreads { systems, threads, next: AtomicUsize::new(0) })
    }

    /// The next thread, round robin.
    pub fn pick(&self) -> SessionThread {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.threads.len();
        self.threads[i].clone()
    }

    pub fn len(&self) -> usize {
        self.threads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }
}

impl Drop for SessionThreads {
    /// Stopping a thread drops its actors, whose CLIs are killed with them (`kill_on_drop`);
    /// a graceful shutdown has reaped them before.
    fn drop(&mut self) {
        for system in &self.systems {
            system.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn threads_are_handed_out_round_robin_and_run_work() {
        let pool = SessionThreads::start(3).unwrap();
        let picked: Vec<String> = (0..6)
            .map(|_| {
                let (tx, rx) = std::sync::mpsc::channel();
                pool.pick().arbiter.spawn_fn(move || {
                    let _ = tx.send(std::thread::current().name().unwrap_or("").to_string());
                });
                rx.recv().unwrap()
            })
            .collect();
        assert_eq!(picked[0], picked[3]);
        assert_ne!(picked[0], picked[1]);
        assert_ne!(picked[1], picked[2]);
        assert_eq!(pool.len(), 3);
    }
}

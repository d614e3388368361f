//! The threads session actors run on: `runtime.workers` actix arbiters (one per core by
//! default), each with its own current-thread tokio runtime, handed out round robin. A
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
    arbiters: Vec<Arbiter>,
    threads: Vec<SessionThread>,
    next: AtomicUsize,
}

impl SessionThreads {
    /// Starts `count` arbiters (at least one). Must run inside an actix `System`.
    pub fn start(count: usize) -> SessionThreads {
        let (mut arbiters, mut threads) = (Vec::new(), Vec::new());
        for _ in 0..count.max(1) {
            let (tx, rx) = std::sync::mpsc::channel();
            let arbiter = Arbiter::with_tokio_rt(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a session thread's runtime");
                let _ = tx.send(runtime.handle().clone());
                runtime
            });
            // The factory ran before `with_tokio_rt` returned.
            let runtime = rx.recv().expect("a session thread's runtime handle");
            threads.push(SessionThread { arbiter: arbiter.handle(), runtime });
            arbiters.push(arbiter);
        }
        SessionThreads { arbiters, threads, next: AtomicUsize::new(0) }
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
    /// An arbiter outlives its `System` unless told to stop; stopping drops its actors, whose
    /// CLIs are killed with them (`kill_on_drop`). A graceful shutdown has reaped them before.
    fn drop(&mut self) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn threads_are_handed_out_round_robin_and_run_work() {
        let pool = SessionThreads::start(3);
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

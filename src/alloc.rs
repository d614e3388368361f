//! The global allocator: jemalloc, purging freed pages from a background thread.
//!
//! Why not glibc's malloc: after 10,000 `/events` followers connect and leave, glibc keeps the
//! freed memory in its per-thread arenas (RSS stayed at 7.9× its base), and that RSS counts
//! toward `api.memory_limit_mb`. jemalloc with a background purger returns it within about a
//! second, idle or not (`examples/bench.rs --only followers`).

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A C string pointer, as jemalloc declares `malloc_conf` (`const char *`).
#[repr(transparent)]
pub struct MallocConf(*const std::ffi::c_char);

// SAFETY: it points at a 'static, immutable byte string.
unsafe impl Sync for MallocConf {}

/// jemalloc reads its options from this symbol when it initialises (before `main`):
/// - one purging thread; dirty pages go back after 1 s, with no second "muzzy" stage;
/// - `slab_sizes`: blocks of 2–16 KiB come from 64 KiB slabs. By default an 8 KiB block is a
///   slab of its own, and every slab has an extent record that jemalloc keeps for good once
///   made: actix gives each connection two 8 KiB buffers, so 10,000 `/events` followers left
///   ~26,000 records (+5 MiB of metadata) behind them. With this, ~6,500 (jemalloc's
///   `stats.metadata`, `examples/bench.rs --only followers`).
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: MallocConf = MallocConf(
    c"background_thread:true,max_background_threads:1,dirty_decay_ms:1000,muzzy_decay_ms:0,slab_sizes:2049-16384:16"
        .as_ptr(),
);

/// How often a runtime thread hands its jemalloc thread cache back.
const THREAD_CACHE_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// Hands this thread's cached free blocks back to jemalloc's arenas, where the background
/// thread returns empty pages to the OS. jemalloc trims a thread's cache only as the thread
/// allocates: an HTTP worker that served 10,000 `/events` followers and then went quiet kept
/// megabytes of freed buffers in it for good.
fn flush_thread_cache() {
    // SAFETY: `thread.tcache.flush` reads and writes nothing (null pointers, zero length);
    // the name is a NUL-terminated static string.
    let _ = unsafe {
        tikv_jemalloc_sys::mallctl(
            c"thread.tcache.flush".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
}

thread_local! {
    static FLUSHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Flushes the calling runtime thread's cache every few seconds, for as long as its runtime
/// runs (once per thread, however often it is called). Only on a thread with an actix runtime.
pub fn flush_thread_cache_periodically() {
    if FLUSHING.with(|f| f.replace(true)) {
        return;
    }
    actix_web::rt::spawn(async {
        let mut tick = actix_web::rt::time::interval(THREAD_CACHE_FLUSH);
        loop {
            tick.tick().await;
            flush_thread_cache();
        }
    });
}

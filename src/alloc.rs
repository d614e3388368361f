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

/// jemalloc reads its options from this symbol when it initialises (before `main`): one
/// purging thread; dirty pages go back after 1 s, with no second "muzzy" stage.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: MallocConf =
    MallocConf(c"background_thread:true,max_background_threads:1,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

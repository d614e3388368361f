//! Checkpoints of the SQLite write-ahead log, run by the pool's upkeep (never inside a commit).
//!
//! A passive checkpoint copies the WAL's pages into the database without taking any lock, but
//! the WAL starts again from its beginning only when a write finds every page of it copied.
//! Under steady turns some write always lands while the checkpoint runs, so passive checkpoints
//! alone let the WAL grow without end (seen: 280 MB after 4,000 turns, and the kernel zeroing
//! each new block of it). When a passive one leaves more than [`RESTART_AFTER_FRAMES`] in the
//! WAL, a `RESTART` checkpoint follows: it holds the write lock only for the pages written since
//! the passive one, so that the next write starts the WAL over (and truncates it to
//! `journal_size_limit`).

use diesel::QueryableByName;
use diesel::sql_types::Integer;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};

use super::{BUSY_TIMEOUT_MS, SqliteConn, StorageError};

/// WAL frames (pages) past which the WAL is restarted: SQLite's own automatic checkpoint size.
pub const RESTART_AFTER_FRAMES: i32 = 1000;

/// How long the restarting checkpoint waits for the write lock and for readers.
const RESTART_WAIT_MS: u32 = 2;

/// What `PRAGMA wal_checkpoint` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName)]
pub struct Checkpointed {
    /// 1 if a lock it needed was held by another connection.
    #[diesel(sql_type = Integer)]
    pub busy: i32,
    /// Frames in the WAL (-1 when the database is not in WAL mode).
    #[diesel(sql_type = Integer)]
    pub log: i32,
    /// Frames of it now copied into the database.
    #[diesel(sql_type = Integer)]
    pub checkpointed: i32,
}

impl Checkpointed {
    /// The WAL will not start over by itself and has grown past the bound.
    pub fn needs_restart(&self) -> bool {
        self.log > RESTART_AFTER_FRAMES
    }
}

/// A passive checkpoint, then a restarting one if the WAL is past its bound. Returns what the
/// last one reported.
pub async fn checkpoint(conn: &mut SqliteConn) -> Result<Checkpointed, StorageError> {
    let passive: Checkpointed = diesel::sql_query("PRAGMA wal_checkpoint(PASSIVE)").get_result(conn).await?;
    if !passive.needs_restart() {
        return Ok(passive);
    }
    // A short busy wait: it waits up to RESTART_WAIT_MS for the write under way (writes come
    // between turns' pauses) and for readers on the WAL, then gives up (as passive) rather than
    // hold the write lock longer; the next tick tries again. Writes are blocked only while it
    // copies what the passive one left, syncs, and waits for those readers.
    conn.batch_execute(&format!("PRAGMA busy_timeout={RESTART_WAIT_MS};")).await?;
    let restart = diesel::sql_query("PRAGMA wal_checkpoint(RESTART)").get_result(conn).await;
    conn.batch_execute(&format!("PRAGMA busy_timeout={BUSY_TIMEOUT_MS};")).await?;
    Ok(restart?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::Connection as _;
    use diesel::connection::SimpleConnection as _;
    use diesel_async::AsyncConnection as _;

    /// Writes in a loop on a thread of its own (as turns do on their writers) while the
    /// upkeep checkpoints every 20 ms: the WAL must stay within a few times [`RESTART_AFTER_FRAMES`]. With
    /// passive checkpoints alone (`needs_restart` false) it holds nearly all of it.
    #[tokio::test(flavor = "current_thread")]
    async fn a_wal_written_without_pause_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.db");
        let url = path.to_str().unwrap().to_owned();
        let setup = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=0; \
                     PRAGMA busy_timeout=5000; PRAGMA journal_size_limit=0;";
        let mut writer = diesel::SqliteConnection::establish(&url).unwrap();
        writer.batch_execute(setup).unwrap();
        writer.batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL);").unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_millis(3000);
        let writes = std::thread::spawn(move || {
            let mut n = 0u64;
            while std::time::Instant::now() < until {
                writer
                    .batch_execute(&format!("INSERT INTO t (body) VALUES (printf('%.*c', 3000, 'x')); -- {n}"))
                    .unwrap();
                n += 1;
                // Turns' writes come with pauses between them (the CLI's answer at least).
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            n
        });
        let mut upkeep = SqliteConn::establish(&url).await.unwrap();
        upkeep.batch_execute(setup).await.unwrap();
        while std::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            checkpoint(&mut upkeep).await.unwrap();
        }
        let rows = writes.join().unwrap();
        let wal = std::fs::metadata(dir.path().join("wal.db-wal")).map(|m| m.len()).unwrap_or(0);
        // Every row is at least one 4 KiB page in the WAL (more with the index's).
        let written = rows * 4096;
        // Restarted past RESTART_AFTER_FRAMES, it holds at most that and what came meanwhile.
        let bound = 3 * RESTART_AFTER_FRAMES as u64 * (4096 + 24);
        assert!(written > 2 * bound, "the writer wrote enough to tell ({rows} rows)");
        assert!(wal < bound, "WAL {wal} bytes after {written} bytes written");
    }

    fn reported(log: i32, checkpointed: i32) -> Checkpointed {
        Checkpointed { busy: 0, log, checkpointed }
    }

    #[test]
    fn a_small_wal_is_left_to_restart_by_itself() {
        assert!(!reported(-1, -1).needs_restart());
        assert!(!reported(0, 0).needs_restart());
        assert!(!reported(RESTART_AFTER_FRAMES, 10).needs_restart());
    }

    #[test]
    fn a_wal_past_the_bound_is_restarted_even_when_all_of_it_was_copied() {
        // All copied still leaves it growing if a write lands before the next one begins.
        assert!(reported(RESTART_AFTER_FRAMES + 1, RESTART_AFTER_FRAMES + 1).needs_restart());
        assert!(reported(70_000, 69_000).needs_restart());
    }
}

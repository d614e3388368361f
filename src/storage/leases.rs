//! Instances sharing a PostgreSQL database, and the leases of the live sessions they run.
//! Every expiry is compared with the database's clock, never an instance's. SQLite and
//! `memory` are single-instance and never call these (the SQL is written for both anyway).

use std::sync::Arc;

use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::schema::{instances, sessions};
use super::{SessionRow, Storage, StorageError, run};
use crate::domain::SessionStatus;
use crate::settings::StorageKind;

/// A session lease as its owner holds it: its writes for the session are fenced by both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: Arc<str>,
    pub generation: i64,
}

/// What taking a session's lease found.
#[derive(Debug)]
pub enum Take {
    /// Ours now, with the row as it is (its event ids, options): `takeover` when another
    /// instance's expired lease was taken.
    Taken {
        row: Box<SessionRow>,
        lease: Lease,
        takeover: bool,
    },
    /// Another instance holds a live lease.
    Owned {
        owner: String,
        url: Option<String>,
    },
    /// The user, or the whole cluster, already runs its allowed number of live sessions.
    UserQuota {
        live: i64,
    },
    TotalQuota {
        live: i64,
    },
    Missing,
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = instances)]
pub struct InstanceRow {
    pub instance_id: String,
    pub advertise_url: Option<String>,
    pub started_at: i64,
    pub heartbeat_at: i64,
}

/// A session's owner, its lease's end, the owner's URL, and the database's clock.
type OwnerRow = (Option<String>, Option<i64>, Option<String>, i64);

/// The message of the error a write refused by its fence rolls back with.
const FENCED: &str = "the session's lease was taken by another instance (fenced write refused)";

pub(super) fn fenced_error() -> diesel::result::Error {
    diesel::result::Error::QueryBuilderError(FENCED.into())
}

pub(super) fn is_fenced(e: &diesel::result::Error) -> bool {
    matches!(e, diesel::result::Error::QueryBuilderError(m) if m.to_string() == FENCED)
}

/// Inside a write transaction for `$session_id`: refuses (rolls back) unless `$fence` (the
/// writer's lease, if the storage is fenced) is still the session's. The no-op UPDATE locks
/// the row until the commit, so a takeover waits for this transaction and never interleaves.
macro_rules! check_fence {
    ($conn:expr, $session_id:expr, $fence:expr) => {
        if let Some(lease) = $fence {
            use $crate::storage::schema::sessions as s;
            let held = diesel::update(s::table.find($session_id))
                .filter(s::owner_instance.eq(&*lease.owner))
                .filter(s::lease_generation.eq(lease.generation))
                .set(s::lease_generation.eq(s::lease_generation))
                .execute($conn)
                .await?;
            if held == 0 {
                return Err($crate::storage::leases::fenced_error());
            }
        }
    };
}
pub(crate) use check_fence;

/// The advertised URL of an instance (none if it never gave one or is gone), in a query body.
macro_rules! owner_url {
    ($conn:expr, $instance_id:expr) => {
        instances::table
            .find($instance_id)
            .select(instances::advertise_url)
            .get_result::<Option<String>>($conn)
            .await
            .optional()?
            .flatten()
    };
}

/// The database's clock in epoch ms, as SQL of the backend.
fn now_sql(kind: StorageKind) -> &'static str {
    match kind {
        StorageKind::Postgresql => "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
        StorageKind::Sqlite | StorageKind::Memory => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
    }
}

impl Storage {
    /// This storage with every session write fenced by `lease` (see [`check_fence!`]).
    pub fn fenced(&self, lease: Option<Lease>) -> Storage {
        Storage { fence: lease.map(Arc::new), ..self.clone() }
    }

    /// The lease this storage's writes are fenced by.
    pub fn fence(&self) -> Option<&Lease> {
        self.fence.as_deref()
    }

    /// The database's clock (epoch ms).
    pub async fn db_now_ms(&self) -> Result<i64, StorageError> {
        let now = now_sql(self.kind);
        run!(self, [now], |conn| diesel::select(sql::<BigInt>(now)).get_result::<i64>(conn).await?)
    }

    /// Registers this instance (again: a restart with the same id starts afresh).
    pub async fn register_instance(&self, instance_id: &str, url: Option<&str>) -> Result<(), StorageError> {
        let (now, url) = (now_sql(self.kind), url.map(str::to_owned));
        run!(self, [instance_id, url, now], |conn| {
            diesel::insert_into(instances::table)
                .values((
                    instances::instance_id.eq(instance_id),
                    instances::advertise_url.eq(url),
                    instances::started_at.eq(sql::<BigInt>(now)),
                    instances::heartbeat_at.eq(sql::<BigInt>(now)),
                ))
                .on_conflict(instances::instance_id)
                .do_update()
                .set((
                    instances::advertise_url.eq(url),
                    instances::started_at.eq(sql::<BigInt>(now)),
                    instances::heartbeat_at.eq(sql::<BigInt>(now)),
                ))
                .execute(conn)
                .await?;
        })
    }

    pub async fn deregister_instance(&self, instance_id: &str) -> Result<(), StorageError> {
        run!(self, [instance_id], |conn| {
            diesel::delete(instances::table.find(instance_id)).execute(conn).await?;
        })
    }

    /// Instances whose heartbeat is younger than `ttl_ms`.
    pub async fn live_instances(&self, ttl_ms: i64) -> Result<Vec<InstanceRow>, StorageError> {
        let now = now_sql(self.kind);
        run!(self, [ttl_ms, now], |conn| {
            instances::table
                .filter(instances::heartbeat_at.ge(sql::<BigInt>(now) - *ttl_ms))
                .select(InstanceRow::as_select())
                .order(instances::instance_id.asc())
                .load(conn)
                .await?
        })
    }

    /// The heartbeat: this instance's row and every lease it holds renewed for `ttl_ms`, in
    /// one transaction. Returns the leases it still holds (a lease taken over is not among them).
    pub async fn heartbeat(&self, instance_id: &str, ttl_ms: i64) -> Result<Vec<(String, i64)>, StorageError> {
        let now = now_sql(self.kind);
        let renewed = format!("({now} + {ttl_ms})");
        run!(self, [instance_id, renewed, now], |conn| {
            conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                diesel::update(instances::table.find(instance_id))
                    .set(instances::heartbeat_at.eq(sql::<BigInt>(now)))
                    .execute(conn)
                    .await?;
                diesel::update(sessions::table.filter(sessions::owner_instance.eq(instance_id)))
                    .set(sessions::lease_expires_at.eq(sql::<diesel::sql_types::Nullable<BigInt>>(renewed)))
                    .execute(conn)
                    .await?;
                sessions::table
                    .filter(sessions::owner_instance.eq(instance_id))
                    .select((sessions::session_id, sessions::lease_generation))
                    .load::<(String, i64)>(conn)
                    .await
            })
            .await?
        })
    }

    /// Takes the session's lease for `instance_id` for `ttl_ms`, bumping its generation, if it
    /// is free, expired or already ours, and if the user and the cluster are under their caps
    /// of live sessions. Takes are serialised by one transaction-scoped advisory lock, so racing
    /// takes on different instances count each other (a cap of 3 lets exactly 3 through).
    pub async fn take_lease(
        &self,
        session_id: &str,
        instance_id: &str,
        ttl_ms: i64,
        caps: (i64, i64),
    ) -> Result<Take, StorageError> {
        let (now, pg) = (now_sql(self.kind), self.kind == StorageKind::Postgresql);
        let (max_per_user, max_total) = caps;
        run!(self, [session_id, instance_id, ttl_ms, now, pg, max_per_user, max_total], |conn| {
            conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                if *pg {
                    diesel::sql_query(
                        "SELECT pg_advisory_xact_lock(hashtext('claude-agent-http leases ' || current_schema()))",
                    )
                    .execute(conn)
                    .await?;
                }
                let found: Option<(String, Option<String>, Option<i64>, i64)> = sessions::table
                    .find(session_id)
                    .select((
                        sessions::user_id,
                        sessions::owner_instance,
                        sessions::lease_expires_at,
                        sql::<BigInt>(now),
                    ))
                    .get_result(conn)
                    .await
                    .optional()?;
                let Some((user_id, owner, expires, at)) = found else { return Ok(Take::Missing) };
                let live = expires.is_some_and(|e| e >= at);
                match owner {
                    Some(other) if other != *instance_id && live => {
                        let url = owner_url!(conn, &other);
                        return Ok(Take::Owned { owner: other, url });
                    }
                    _ => {}
                }
                // A closed session's lease lasts until its writer is done; its slot is free at once.
                let others_live = || {
                    sessions::table
                        .filter(sessions::owner_instance.is_not_null())
                        .filter(sessions::lease_expires_at.ge(at))
                        .filter(sessions::session_id.ne(session_id))
                        .filter(sessions::status.ne_all([SessionStatus::Closed, SessionStatus::Expired]))
                };
                let user_live: i64 =
                    others_live().filter(sessions::user_id.eq(&user_id)).count().get_result(conn).await?;
                if user_live >= *max_per_user {
                    return Ok(Take::UserQuota { live: user_live });
                }
                let total_live: i64 = others_live().count().get_result(conn).await?;
                if total_live >= *max_total {
                    return Ok(Take::TotalQuota { live: total_live });
                }
                // Conditional again: the old owner's heartbeat may have renewed it meanwhile.
                let taken = diesel::update(sessions::table.find(session_id))
                    .filter(
                        sessions::owner_instance
                            .is_null()
                            .or(sessions::owner_instance.eq(instance_id))
                            .or(sessions::lease_expires_at.lt(at)),
                    )
                    .set((
                        sessions::owner_instance.eq(instance_id),
                        sessions::lease_generation.eq(sessions::lease_generation + 1),
                        sessions::lease_expires_at.eq(at + *ttl_ms),
                    ))
                    .execute(conn)
                    .await?;
                let (row, holder, generation): (SessionRow, Option<String>, i64) = sessions::table
                    .find(session_id)
                    .select((SessionRow::as_select(), sessions::owner_instance, sessions::lease_generation))
                    .get_result(conn)
                    .await?;
                if taken == 0 {
                    let other = holder.unwrap_or_default();
                    let url = owner_url!(conn, &other);
                    return Ok(Take::Owned { owner: other, url });
                }
                let takeover = owner.is_some_and(|o| o != *instance_id);
                Ok(Take::Taken {
                    row: Box::new(row),
                    lease: Lease { owner: Arc::from(instance_id.as_str()), generation },
                    takeover,
                })
            })
            .await?
        })
    }

    /// Gives the lease back (a no-op if it is no longer ours), so the next request for the
    /// session, on any instance, takes it at once.
    pub async fn release_lease(&self, session_id: &str, lease: &Lease) -> Result<bool, StorageError> {
        let (owner, generation) = (lease.owner.to_string(), lease.generation);
        run!(self, [session_id, owner, generation], |conn| {
            diesel::update(sessions::table.find(session_id))
                .filter(sessions::owner_instance.eq(owner))
                .filter(sessions::lease_generation.eq(generation))
                .set((sessions::owner_instance.eq(None::<String>), sessions::lease_expires_at.eq(None::<i64>)))
                .execute(conn)
                .await?
                > 0
        })
    }

    /// At start-up and at the end of a drain: every session this instance owned becomes
    /// `idle` (if it was live) and free; so do live sessions nobody owns and nobody touched
    /// for a minute (left by a run before leases; a session being created has no lease for a
    /// moment). Other instances' sessions are not touched. Returns how many changed.
    pub async fn release_all_leases(&self, instance_id: &str) -> Result<usize, StorageError> {
        let quiet_since = crate::clock::now_ms() - 60_000;
        run!(self, [instance_id, quiet_since], |conn| {
            conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                let ours = || {
                    sessions::table.filter(
                        sessions::owner_instance
                            .eq(instance_id.clone())
                            .or(sessions::owner_instance.is_null().and(sessions::last_active_at.lt(*quiet_since))),
                    )
                };
                let n = diesel::update(ours().filter(sessions::status.eq_any(SessionStatus::LIVE)))
                    .set(sessions::status.eq(SessionStatus::Idle))
                    .execute(conn)
                    .await?;
                diesel::update(sessions::table.filter(sessions::owner_instance.eq(instance_id)))
                    .set((sessions::owner_instance.eq(None::<String>), sessions::lease_expires_at.eq(None::<i64>)))
                    .execute(conn)
                    .await?;
                Ok(n)
            })
            .await?
        })
    }

    /// Sessions whose owner stopped renewing more than `grace_ms` before their lease ran out
    /// (a dead instance): `idle` and free, so listings stop showing them live. The lease goes
    /// with it, so a paused owner that wakes up is fenced out.
    pub async fn release_abandoned_leases(&self, grace_ms: i64) -> Result<usize, StorageError> {
        let now = now_sql(self.kind);
        run!(self, [grace_ms, now], |conn| {
            conn.transaction::<_, diesel::result::Error, _>(async move |conn| {
                let at: i64 = diesel::select(sql::<BigInt>(now)).get_result(conn).await?;
                let abandoned = || {
                    sessions::table
                        .filter(sessions::owner_instance.is_not_null())
                        .filter(sessions::lease_expires_at.lt(at - *grace_ms))
                };
                diesel::update(abandoned().filter(sessions::status.eq_any(SessionStatus::LIVE)))
                    .set(sessions::status.eq(SessionStatus::Idle))
                    .execute(conn)
                    .await?;
                diesel::update(abandoned())
                    .set((sessions::owner_instance.eq(None::<String>), sessions::lease_expires_at.eq(None::<i64>)))
                    .execute(conn)
                    .await
            })
            .await?
        })
    }

    /// The instance holding a live lease on the session, and its URL, unless it is `me`.
    pub async fn owner_elsewhere(
        &self,
        session_id: &str,
        me: &str,
    ) -> Result<Option<(String, Option<String>)>, StorageError> {
        let now = now_sql(self.kind);
        run!(self, [session_id, me, now], |conn| {
            let found: Option<OwnerRow> = sessions::table
                .left_join(instances::table.on(instances::instance_id.nullable().eq(sessions::owner_instance)))
                .filter(sessions::session_id.eq(session_id))
                .select((
                    sessions::owner_instance,
                    sessions::lease_expires_at,
                    instances::advertise_url.nullable(),
                    sql::<BigInt>(now),
                ))
                .get_result(conn)
                .await
                .optional()?;
            match found {
                Some((Some(owner), Some(expires), url, at)) if expires >= at && owner != *me => Some((owner, url)),
                _ => None,
            }
        })
    }
}

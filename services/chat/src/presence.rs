//! Cluster-wide presence.
//!
//! Each chat process is a *replica* with a row in `replicas`, refreshed every
//! heartbeat. A user is online while some live replica holds a row for them in
//! `presence_sessions` (one row per replica, written on the replica's first
//! socket of that user and deleted on its last). Transitions of one user are
//! serialized by a transaction-scoped advisory lock on the user, so "first socket
//! in the cluster" and "last socket in the cluster" are decided exactly once.
//!
//! A replica that stops heartbeating for `ttl` is dead: the next reaper pass of
//! any surviving replica deletes it (sessions cascade) and reports the users who
//! are now offline everywhere. Worst case from a crash to `presence` offline is
//! `ttl + heartbeat`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

/// Advisory-lock class of presence transitions ("PRES").
const LOCK_CLASS: i32 = 0x5052_4553;
/// Advisory-lock key of the reaper.
const REAPER_KEY: i32 = 0;

/// This replica's view and share of presence.
#[derive(Debug)]
pub struct Presence {
    pool: PgPool,
    replica_id: Uuid,
    ttl: Duration,
    local: Mutex<HashMap<Uuid, usize>>,
    stripes: Vec<tokio::sync::Mutex<()>>,
}

impl Presence {
    /// Registers this replica.
    pub async fn register(pool: PgPool, ttl: Duration) -> Result<Self, sqlx::Error> {
        let replica_id = Uuid::new_v4();
        sqlx::query("INSERT INTO replicas (id) VALUES ($1)")
            .bind(replica_id)
            .execute(&pool)
            .await?;
        Ok(Self {
            pool,
            replica_id,
            ttl,
            local: Mutex::new(HashMap::new()),
            stripes: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
        })
    }

    /// This replica's id.
    pub fn replica_id(&self) -> Uuid {
        self.replica_id
    }

    fn stripe(&self, user: Uuid) -> &tokio::sync::Mutex<()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        user.hash(&mut hasher);
        &self.stripes[(hasher.finish() as usize) % self.stripes.len()]
    }

    fn ttl_secs(&self) -> f64 {
        self.ttl.as_secs_f64()
    }

    /// A socket of `user` connected here. Returns whether the user just came
    /// online in the whole cluster.
    pub async fn connect(&self, user: Uuid) -> Result<bool, sqlx::Error> {
        let _turn = self.stripe(user).lock().await;
        let count = {
            let mut local = self.local.lock().expect("presence lock poisoned");
            let count = local.entry(user).or_insert(0);
            *count += 1;
            *count
        };
        if count > 1 {
            return Ok(false);
        }
        let mut tx = self.pool.begin().await?;
        lock_user(&mut tx, user).await?;
        sqlx::query(
            "INSERT INTO presence_sessions (replica_id, user_id, sockets) VALUES ($1, $2, 1) \
             ON CONFLICT (replica_id, user_id) DO NOTHING",
        )
        .bind(self.replica_id)
        .bind(user)
        .execute(&mut *tx)
        .await?;
        let elsewhere = online_elsewhere(&mut tx, self.replica_id, user, self.ttl_secs()).await?;
        tx.commit().await?;
        Ok(!elsewhere)
    }

    /// A socket of `user` disconnected here. Returns whether the user just went
    /// offline in the whole cluster.
    pub async fn disconnect(&self, user: Uuid) -> Result<bool, sqlx::Error> {
        let _turn = self.stripe(user).lock().await;
        let last_here = {
            let mut local = self.local.lock().expect("presence lock poisoned");
            match local.get_mut(&user) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                Some(_) => {
                    local.remove(&user);
                    true
                }
                None => false,
            }
        };
        if !last_here {
            return Ok(false);
        }
        let mut tx = self.pool.begin().await?;
        lock_user(&mut tx, user).await?;
        sqlx::query("DELETE FROM presence_sessions WHERE replica_id = $1 AND user_id = $2")
            .bind(self.replica_id)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        let elsewhere = online_elsewhere(&mut tx, self.replica_id, user, self.ttl_secs()).await?;
        tx.commit().await?;
        Ok(!elsewhere)
    }

    /// Every user online anywhere in the cluster.
    pub async fn online_users(&self) -> Result<Vec<Uuid>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT DISTINCT s.user_id FROM presence_sessions s JOIN replicas r ON r.id = s.replica_id \
             WHERE r.last_seen > now() - make_interval(secs => $1)",
        )
        .bind(self.ttl_secs())
        .fetch_all(&self.pool)
        .await
    }

    /// Records that this replica is alive. If a reaper had declared it dead
    /// (e.g. after a long pause), re-registers it with its live sessions and
    /// returns their users, who should be announced online again.
    pub async fn heartbeat(&self) -> Result<Vec<Uuid>, sqlx::Error> {
        let updated = sqlx::query("UPDATE replicas SET last_seen = now() WHERE id = $1")
            .bind(self.replica_id)
            .execute(&self.pool)
            .await?;
        if updated.rows_affected() == 1 {
            return Ok(Vec::new());
        }
        tracing::warn!(replica = %self.replica_id, "this replica had been declared dead; re-registering");
        let users: Vec<Uuid> = self
            .local
            .lock()
            .expect("presence lock poisoned")
            .keys()
            .copied()
            .collect();
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO replicas (id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET last_seen = now()")
            .bind(self.replica_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO presence_sessions (replica_id, user_id, sockets) \
             SELECT $1, u, 1 FROM UNNEST($2::uuid[]) AS u ON CONFLICT DO NOTHING",
        )
        .bind(self.replica_id)
        .bind(&users)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(users)
    }

    /// Whether another replica is alive (heartbeat within the TTL).
    pub async fn others_alive(&self) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM replicas \
             WHERE id <> $1 AND last_seen > now() - make_interval(secs => $2))",
        )
        .bind(self.replica_id)
        .bind(self.ttl_secs())
        .fetch_one(&self.pool)
        .await
    }

    /// Removes replicas silent for longer than the TTL (one reaper at a time
    /// across the cluster). Returns the users now offline everywhere.
    pub async fn reap(&self) -> Result<Vec<Uuid>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, $2)")
            .bind(LOCK_CLASS)
            .bind(REAPER_KEY)
            .fetch_one(&mut *tx)
            .await?;
        if !leader {
            return Ok(Vec::new());
        }
        let orphaned: Vec<Uuid> = sqlx::query_scalar(
            "WITH dead AS (DELETE FROM replicas WHERE last_seen < now() - make_interval(secs => $1) RETURNING id) \
             SELECT DISTINCT s.user_id FROM presence_sessions s JOIN dead ON dead.id = s.replica_id",
        )
        .bind(self.ttl_secs())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        if orphaned.is_empty() {
            return Ok(orphaned);
        }
        tracing::info!(
            users = orphaned.len(),
            "reaped the sessions of dead replicas"
        );
        let online = self.online_users().await?;
        Ok(orphaned
            .into_iter()
            .filter(|user| !online.contains(user))
            .collect())
    }

    /// Removes this replica on a clean shutdown. Returns the users now offline
    /// everywhere.
    pub async fn deregister(&self) -> Result<Vec<Uuid>, sqlx::Error> {
        let users: Vec<Uuid> = sqlx::query_scalar(
            "WITH gone AS (DELETE FROM replicas WHERE id = $1 RETURNING id) \
             SELECT s.user_id FROM presence_sessions s JOIN gone ON gone.id = s.replica_id",
        )
        .bind(self.replica_id)
        .fetch_all(&self.pool)
        .await?;
        let online = self.online_users().await?;
        Ok(users
            .into_iter()
            .filter(|user| !online.contains(user))
            .collect())
    }
}

async fn lock_user(tx: &mut sqlx::PgConnection, user: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2::text))")
        .bind(LOCK_CLASS)
        .bind(user)
        .execute(tx)
        .await?;
    Ok(())
}

async fn online_elsewhere(
    tx: &mut sqlx::PgConnection,
    replica: Uuid,
    user: Uuid,
    ttl_secs: f64,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM presence_sessions s JOIN replicas r ON r.id = s.replica_id \
         WHERE s.user_id = $1 AND s.replica_id <> $2 AND r.last_seen > now() - make_interval(secs => $3))",
    )
    .bind(user)
    .bind(replica)
    .bind(ttl_secs)
    .fetch_one(tx)
    .await
}

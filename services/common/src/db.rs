//! PostgreSQL: one schema per service, pools pinned to it, and the migration runner.
//!
//! `parley migrate` connects as the schema owner, creates the schema, applies the
//! service's embedded migrations (history in `<schema>._sqlx_migrations`) and
//! grants the runtime role DML on that schema only. At start-up a service checks
//! that the schema is exactly at the version it was built for.

use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgPool};

/// A service's schema and the migrations that own it.
#[derive(Debug, Clone, Copy)]
pub struct ServiceSchema {
    /// Schema name, e.g. `parley_user`.
    pub schema: &'static str,
    /// The migrations embedded in the binary.
    pub migrator: &'static Migrator,
}

/// Database errors with the context an operator needs.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {0}")]
    Url(sqlx::Error),
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(sqlx::Error),
    #[error("migrating schema {schema} failed: {source}")]
    Migrate {
        schema: &'static str,
        source: sqlx::migrate::MigrateError,
    },
    #[error("{0}")]
    Query(#[from] sqlx::Error),
    #[error(
        "schema {schema} is at version {found}, newer than this binary knows ({known}); run a newer parley"
    )]
    SchemaTooNew {
        schema: &'static str,
        found: i64,
        known: i64,
    },
    #[error(
        "schema {schema} is at version {found}, this binary needs {known}; run `parley migrate` first"
    )]
    SchemaTooOld {
        schema: &'static str,
        found: i64,
        known: i64,
    },
    #[error("invalid role name {0:?} (lower-case letters, digits and underscores only)")]
    RoleName(String),
}

/// Connection options for `url`, with `search_path` pinned to `schema` and UTC.
pub fn connect_options(url: &SecretString, schema: &str) -> Result<PgConnectOptions, DbError> {
    let options = PgConnectOptions::from_str(url.expose_secret()).map_err(DbError::Url)?;
    Ok(options.options([("search_path", schema), ("timezone", "UTC")]))
}

/// A pooled connection idle for at least this long is pinged before use.
pub const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Pool settings shared by every service pool.
///
/// sqlx pings every connection on every acquire by default, and again as it
/// goes back to the pool: two more round trips to PostgreSQL per query
/// (docs/performance.md, items 10 and 11). Only a connection idle for
/// [`PING_IF_IDLE_FOR`] is pinged before use: a database that restarted or a
/// link that dropped was down for longer than that, so a connection that
/// outlived it was idle meanwhile. The ping on release is skipped by the
/// patched sqlx-core (vendor/README.md) when the query or transaction
/// finished cleanly; after an error or a cancelled query it still runs, and a
/// dead connection is closed there, so only the query that met it fails.
fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

/// A pool whose connections see only `schema` (plus `pg_catalog`).
pub async fn connect(
    url: &SecretString,
    schema: &str,
    max_connections: u32,
) -> Result<PgPool, DbError> {
    pool_options(max_connections)
        .connect_with(connect_options(url, schema)?)
        .await
        .map_err(DbError::Connect)
}

/// A pool that is created now but connects on first use, so a service can start
/// (and report itself not ready) while the database is down.
pub fn connect_lazy(
    url: &SecretString,
    schema: &str,
    max_connections: u32,
) -> Result<PgPool, DbError> {
    Ok(pool_options(max_connections).connect_lazy_with(connect_options(url, schema)?))
}

/// Applies `service`'s migrations as the owner at `url`, then grants
/// `runtime_role` (if given) DML on the schema.
pub async fn migrate(
    url: &SecretString,
    service: ServiceSchema,
    runtime_role: Option<&str>,
) -> Result<(), DbError> {
    if let Some(role) = runtime_role {
        validate_role(role)?;
    }
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(connect_options(url, service.schema)?)
        .await
        .map_err(DbError::Connect)?;
    pool.execute(format!("CREATE SCHEMA IF NOT EXISTS {}", service.schema).as_str())
        .await?;
    service
        .migrator
        .run(&pool)
        .await
        .map_err(|source| DbError::Migrate {
            schema: service.schema,
            source,
        })?;
    if let Some(role) = runtime_role {
        grant_runtime_role(&pool, service.schema, role).await?;
    }
    pool.close().await;
    Ok(())
}

fn validate_role(role: &str) -> Result<(), DbError> {
    let valid = !role.is_empty()
        && role.len() <= 63
        && role.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && role
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(DbError::RoleName(role.to_owned()))
    }
}

/// DML on every table of `schema`, read-only access to the migration history,
/// nothing else.
async fn grant_runtime_role(pool: &PgPool, schema: &str, role: &str) -> Result<(), DbError> {
    let statements = [
        format!("GRANT USAGE ON SCHEMA {schema} TO \"{role}\""),
        format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO \"{role}\""
        ),
        format!(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO \"{role}\""
        ),
        format!("REVOKE INSERT, UPDATE, DELETE ON {schema}._sqlx_migrations FROM \"{role}\""),
    ];
    for statement in statements {
        pool.execute(statement.as_str()).await?;
    }
    Ok(())
}

/// The newest migration version embedded in the binary.
pub fn known_version(service: ServiceSchema) -> i64 {
    service
        .migrator
        .iter()
        .map(|migration| migration.version)
        .max()
        .unwrap_or(0)
}

/// Checks that the schema is at exactly the version this binary knows.
pub async fn check_schema_version(pool: &PgPool, service: ServiceSchema) -> Result<(), DbError> {
    let known = known_version(service);
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT max(version) FROM _sqlx_migrations WHERE success AND to_regclass('_sqlx_migrations') IS NOT NULL",
    )
    .fetch_one(pool)
    .await
    .or_else(|err| match &err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => Ok(None),
        _ => Err(err),
    })?;
    let found = found.unwrap_or(0);
    if found > known {
        return Err(DbError::SchemaTooNew {
            schema: service.schema,
            found,
            known,
        });
    }
    if found < known {
        return Err(DbError::SchemaTooOld {
            schema: service.schema,
            found,
            known,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_checked() {
        assert!(validate_role("parley_user_svc").is_ok());
        assert!(validate_role("x\"; DROP TABLE users; --").is_err());
        assert!(validate_role("Upper").is_err());
        assert!(validate_role("").is_err());
    }
}

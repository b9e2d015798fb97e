//! # The ClickHouse server, as every part of clicktrail sees it
//!
//! One place for what differs between servers and what their answers mean:
//! - [`client`]: the one way to build a configured client (sink, compactor, migrate, check,
//!   freshness all use it);
//! - [`ping`], [`server_version`] and [`table_uuid`] (where the server has table UUIDs);
//! - [`Dialect`]: every difference between ClickHouse 18.16 and current releases that the
//!   project depends on (SQL placeholders of the migrations, client settings, export settings);
//! - [`codes`]: the table of exception codes with their class, whether one row can cause them,
//!   and their metric label.
//!
//! Architecture invariant: nothing outside this module spells a version check or an exception
//! code number.
//!
//! Naming: this module shadows the `clickhouse` crate inside the crate root only; elsewhere
//! the crate is `::clickhouse`.

pub mod codes;

use std::time::Duration;

use crate::config::ClickHouseConfig;

pub use codes::{classify, exception_code, ErrorClass};

/// Builds the client for the configured server and database.
///
/// Validation is off because 18.16 lacks `RowBinaryWithNamesAndTypes`; inserts still name
/// their columns, so a schema change fails loudly (NO_SUCH_COLUMN_IN_TABLE) rather than
/// shifting values into the wrong columns. Callers that must work before the database exists
/// (migrate, check) use `.with_database("default")`.
pub fn client(cfg: &ClickHouseConfig) -> ::clickhouse::Client {
    let mut c = ::clickhouse::Client::default()
        .with_url(&cfg.url)
        .with_user(&cfg.user)
        .with_database(&cfg.database)
        .with_validation(false)
        .with_compression(match cfg.compression {
            crate::config::Compression::Lz4 => ::clickhouse::Compression::Lz4,
            crate::config::Compression::None => ::clickhouse::Compression::None,
        });
    let password = cfg.password.expose();
    if !password.is_empty() {
        c = c.with_password(password);
    }
    c
}

/// Why the server did not answer a probe.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PingError {
    #[error("{0}")]
    Failed(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("not probed yet")]
    NotYet,
}

/// `SELECT 1` within `timeout`.
pub async fn ping(client: &::clickhouse::Client, timeout: Duration) -> Result<(), PingError> {
    match tokio::time::timeout(timeout, client.query("SELECT 1").fetch_one::<u8>()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(PingError::Failed(e.to_string())),
        Err(_) => Err(PingError::Timeout(timeout)),
    }
}

/// The server's version, parsed, and as it reports it.
pub async fn server_version(
    client: &::clickhouse::Client,
) -> Result<(ServerVersion, String), ::clickhouse::error::Error> {
    let v: String = client.query("SELECT version()").fetch_one().await?;
    let parsed = v.parse().unwrap_or(ServerVersion(0, 0));
    Ok((parsed, v))
}

/// The table's UUID, or `None` where the server has none: 18.16's `system.tables` has no
/// `uuid` column, and tables of Ordinary databases report the zero UUID. Detected from the
/// column, not the version, because whether a table has one depends on its database's engine.
pub async fn table_uuid(
    client: &::clickhouse::Client,
    database: &str,
    table: &str,
) -> Result<Option<String>, ::clickhouse::error::Error> {
    let has_column: u64 = client
        .query(
            "SELECT count() FROM system.columns \
             WHERE database = 'system' AND table = 'tables' AND name = 'uuid'",
        )
        .fetch_one()
        .await?;
    if has_column == 0 {
        return Ok(None);
    }
    let uuid: Option<String> = client
        .query("SELECT toString(uuid) FROM system.tables WHERE database = ? AND name = ?")
        .bind(database)
        .bind(table)
        .fetch_optional()
        .await?;
    Ok(uuid.filter(|u| u != "00000000-0000-0000-0000-000000000000"))
}

/// Server version as (major, minor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion(pub u32, pub u32);

#[derive(Debug, Clone, thiserror::Error)]
#[error("`{0}` is not a ClickHouse version: write MAJOR.MINOR, e.g. 18.16 or 26.1")]
pub struct BadVersion(pub String);

impl std::str::FromStr for ServerVersion {
    type Err = BadVersion;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut it = s.trim().split('.');
        let major = it.next().and_then(|p| p.parse().ok());
        let minor = it.next().and_then(|p| p.parse().ok());
        match (major, minor) {
            (Some(a), Some(b)) => Ok(ServerVersion(a, b)),
            _ => Err(BadVersion(s.to_string())),
        }
    }
}

/// What the SQL and the client may use on a given server.
#[derive(Debug, Clone, Copy)]
pub struct Dialect {
    pub version: ServerVersion,
}

/// Settings the compactor's `Native` export needs: LowCardinality columns (current servers)
/// arrive as plain `String`, the only text type its decoder reads. 18.16 accepts the setting
/// too, so it is sent to every server.
pub const EXPORT_SETTINGS: &[(&str, &str)] = &[("low_cardinality_allow_in_native_format", "0")];

impl Dialect {
    /// LowCardinality is production-ready (no experimental flag) from 19.x on; 20.1 is the
    /// first release where every tool around it handles it, so we start there. 18.16 needs
    /// `allow_experimental_low_cardinality_type`, which current releases reject as unknown.
    pub fn low_cardinality(&self) -> bool {
        self.version >= ServerVersion(20, 1)
    }

    /// Block deduplication for plain MergeTree (`non_replicated_deduplication_window`).
    pub fn non_replicated_dedup(&self) -> bool {
        self.version >= ServerVersion(21, 3)
    }

    /// `ADD COLUMN IF NOT EXISTS` (not in 18.16, whose migrations rely on the record of
    /// applied versions instead).
    pub fn add_column_if_not_exists(&self) -> bool {
        self.version >= ServerVersion(20, 1)
    }

    /// The setting that makes an insert into a Distributed table answer only after every
    /// shard has its rows: `insert_distributed_sync` until 23.11 renamed it (kept as an alias
    /// there, but the old name may go).
    pub fn sync_distributed_insert(&self) -> &'static str {
        if self.version >= ServerVersion(23, 11) {
            "distributed_foreground_insert"
        } else {
            "insert_distributed_sync"
        }
    }

    /// Fills the `{{placeholders}}` of a migration file.
    pub fn render(&self, sql: &str, db: &str) -> String {
        sql.replace("{{db}}", db)
            .replace(
                "{{lowcard_string}}",
                if self.low_cardinality() {
                    "LowCardinality(String)"
                } else {
                    "String"
                },
            )
            .replace(
                "{{dedup_settings}}",
                if self.non_replicated_dedup() {
                    ", non_replicated_deduplication_window = 1000"
                } else {
                    ""
                },
            )
            .replace(
                "{{if_not_exists}}",
                if self.add_column_if_not_exists() {
                    "IF NOT EXISTS "
                } else {
                    ""
                },
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_versions_are_refused() {
        assert!("eighteen".parse::<ServerVersion>().is_err());
        assert_eq!(
            "18.16.1".parse::<ServerVersion>().unwrap(),
            ServerVersion(18, 16)
        );
    }
}

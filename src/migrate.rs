//! Schema migrations: numbered SQL files in `migrations/`, compiled into the binary, applied
//! once each and recorded in `<db>.schema_migrations`. Safe to rerun: applied versions are
//! skipped, and every statement is `IF NOT EXISTS`-style so a crash between a statement and its
//! record is harmless on the next run.
//!
//! One set of files serves every supported server: they use `{{...}}` placeholders that
//! [`Dialect`] (in [`crate::clickhouse`], with every other server difference) fills in per
//! server version. `clicktrail migrate --print-sql --server-version X.Y`
//! prints exactly what would run.

use std::fmt::Write as _;

pub use crate::clickhouse::{Dialect, ServerVersion};
use crate::config::ClickHouseConfig;

/// (version, file name, contents), in order. A unit test checks this lists every file.
pub const MIGRATIONS: &[(u32, &str, &str)] = &[
    (
        1,
        "0001_create_events.sql",
        include_str!("../migrations/0001_create_events.sql"),
    ),
    (
        2,
        "0002_analytics.sql",
        include_str!("../migrations/0002_analytics.sql"),
    ),
    (
        3,
        "0003_fold.sql",
        include_str!("../migrations/0003_fold.sql"),
    ),
    (
        4,
        "0004_pages_daily.sql",
        include_str!("../migrations/0004_pages_daily.sql"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    BadVersion(#[from] crate::clickhouse::BadVersion),
    #[error("ClickHouse at {url} did not answer: {source}")]
    Connect {
        url: String,
        source: clickhouse::error::Error,
    },
    #[error("migration {file} failed on statement:\n{statement}\nClickHouse said: {source}")]
    Statement {
        file: String,
        statement: String,
        source: clickhouse::error::Error,
    },
    #[error("recording migrations failed: {0}")]
    Record(clickhouse::error::Error),
}

/// Statements of a rendered file: split at `;` line ends, comments and blanks dropped.
pub fn statements(rendered: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in rendered.lines() {
        let t = line.trim();
        if t.starts_with("--") || t.is_empty() {
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
        if t.ends_with(';') {
            out.push(cur.trim().trim_end_matches(';').trim().to_string());
            cur.clear();
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

fn bookkeeping(db: &str) -> Vec<String> {
    vec![
        format!("CREATE DATABASE IF NOT EXISTS {db}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, name String, \
             checksum String, applied_at DateTime('UTC')) ENGINE = MergeTree() ORDER BY version"
        ),
    ]
}

fn record_sql(db: &str, version: u32, name: &str, sql: &str) -> String {
    let checksum = format!("{:08x}", crc32c::crc32c(sql.as_bytes()));
    format!(
        "INSERT INTO {db}.schema_migrations (version, name, checksum, applied_at) VALUES ({version}, '{name}', '{checksum}', now())"
    )
}

/// Every statement `migrate` would run on an empty server of this version.
pub fn plan_sql(dialect: Dialect, db: &str) -> String {
    let mut out = String::new();
    for s in bookkeeping(db) {
        let _ = writeln!(out, "{s};\n");
    }
    for (version, name, sql) in MIGRATIONS {
        let _ = writeln!(out, "-- {name}");
        let rendered = dialect.render(sql, db);
        for s in statements(&rendered) {
            let _ = writeln!(out, "{s};\n");
        }
        let _ = writeln!(out, "{};\n", record_sql(db, *version, name, sql));
    }
    out
}

/// Applies pending migrations; returns the names applied.
pub async fn run(cfg: &ClickHouseConfig) -> Result<Vec<String>, MigrateError> {
    // No default database: it may not exist yet.
    let client = crate::clickhouse::client(cfg)
        .with_database("default")
        .with_compression(::clickhouse::Compression::None);
    let (version, full) = crate::clickhouse::server_version(&client)
        .await
        .map_err(|source| MigrateError::Connect {
            url: cfg.url.clone(),
            source,
        })?;
    tracing::info!(server = %full, "migrating");
    let dialect = Dialect { version };
    let db = &cfg.database;
    for s in bookkeeping(db) {
        client
            .query(&s)
            .execute()
            .await
            .map_err(|source| MigrateError::Statement {
                file: "(bookkeeping)".into(),
                statement: s.clone(),
                source,
            })?;
    }
    let applied: Vec<u32> = client
        .query(&format!("SELECT version FROM {db}.schema_migrations"))
        .fetch_all()
        .await
        .map_err(MigrateError::Record)?;
    let mut done = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        for s in statements(&dialect.render(sql, db)) {
            match client.query(&s).execute().await {
                Ok(()) => {}
                // Only where the dialect has no `ADD COLUMN IF NOT EXISTS`: the columns of
                // this statement were added by an earlier run that crashed before its record
                // (one ALTER with several ADD COLUMN is all or nothing).
                Err(e)
                    if !dialect.add_column_if_not_exists()
                        && s.trim_start().starts_with("ALTER TABLE")
                        && crate::clickhouse::codes::is_column_exists(&e) =>
                {
                    tracing::info!(migration = name, "columns already there, continuing");
                }
                Err(source) => {
                    return Err(MigrateError::Statement {
                        file: name.to_string(),
                        statement: s.clone(),
                        source,
                    })
                }
            }
        }
        client
            .query(&record_sql(db, *version, name, sql))
            .execute()
            .await
            .map_err(MigrateError::Record)?;
        tracing::info!(migration = name, "applied");
        done.push(name.to_string());
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_listed_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS.iter().map(|m| m.1.to_string()).collect();
        assert_eq!(files, listed);
        for (i, (v, name, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*v as usize, i + 1);
            assert!(name.starts_with(&format!("{v:04}_")));
        }
    }

    #[test]
    fn dialects_differ_where_servers_do() {
        let old = plan_sql(
            Dialect {
                version: "18.16".parse().unwrap(),
            },
            "clicktrail",
        );
        let new = plan_sql(
            Dialect {
                version: "26.1".parse().unwrap(),
            },
            "clicktrail",
        );
        assert!(!old.contains("LowCardinality") && !old.contains("deduplication_window"));
        assert!(
            new.contains("LowCardinality(String)")
                && new.contains("non_replicated_deduplication_window")
        );
        assert!(
            !old.contains("{{") && !new.contains("{{"),
            "all placeholders filled"
        );
    }
}

//! Schema migrations: numbered SQL files in `migrations/`, compiled into the binary, applied
//! once each and recorded in `<db>.schema_migrations`. Safe to rerun: applied versions are
//! skipped, and every statement is `IF NOT EXISTS`-style so a crash between a statement and its
//! record is harmless on the next run.
//!
//! One set of files serves every supported server: they use `{{...}}` placeholders that
//! [`Dialect`] (in [`crate::clickhouse`], with every other server difference) fills in per
//! server version. `clicktrail migrate --print-sql --server-version X.Y [--cluster NAME]`
//! prints exactly what would run.
//!
//! On a cluster ([`Layout::Cluster`], `clickhouse.cluster`) the same files are rewritten by
//! [`cluster`] into `ON CLUSTER` statements: one source of truth for both layouts.

pub mod cluster;
pub mod cutover;

pub use cutover::InsertWait;

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
    (
        5,
        "0005_event_from.sql",
        include_str!("../migrations/0005_event_from.sql"),
    ),
    (
        6,
        "0006_sum_rollups.sql",
        include_str!("../migrations/0006_sum_rollups.sql"),
    ),
    (
        7,
        "0007_site_daily.sql",
        include_str!("../migrations/0007_site_daily.sql"),
    ),
    (
        8,
        "0008_drop_site_daily.sql",
        include_str!("../migrations/0008_drop_site_daily.sql"),
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
    #[error("migration {file}: {why}")]
    Cutover { file: String, why: String },
    #[error("migration {file}: {source}")]
    Cluster {
        file: String,
        source: cluster::Unsupported,
    },
}

/// Where the schema lives: one server, or a `remote_servers` cluster (by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout<'a> {
    Single,
    Cluster(&'a str),
}

impl<'a> Layout<'a> {
    /// `clickhouse.cluster`: empty means one server.
    pub fn of(cfg: &'a ClickHouseConfig) -> Self {
        Self::from_name(&cfg.cluster)
    }

    pub fn from_name(name: &'a str) -> Self {
        if name.is_empty() {
            Self::Single
        } else {
            Self::Cluster(name)
        }
    }
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

fn bookkeeping(db: &str, layout: Layout<'_>) -> Vec<String> {
    if let Layout::Cluster(c) = layout {
        return cluster::bookkeeping(db, c);
    }
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

/// The statements of one migration file for this server and layout.
pub fn render(
    dialect: Dialect,
    layout: Layout<'_>,
    db: &str,
    name: &str,
    sql: &str,
) -> Result<Vec<String>, MigrateError> {
    match layout {
        Layout::Single => Ok(statements(&dialect.render(sql, db))),
        Layout::Cluster(c) => {
            let mut out = Vec::new();
            for s in statements(&dialect.render(&cluster::prerender(sql), db)) {
                out.extend(cluster::statement(&s, db, c).map_err(|source| {
                    MigrateError::Cluster {
                        file: name.to_string(),
                        source,
                    }
                })?);
            }
            Ok(out)
        }
    }
}

/// Every statement `migrate` would run on an empty server (or cluster) of this version.
pub fn plan_sql(dialect: Dialect, db: &str, layout: Layout<'_>) -> Result<String, MigrateError> {
    let mut out = String::new();
    if let Layout::Cluster(_) = layout {
        let _ = writeln!(
            out,
            "-- Sent with {} = 1 and wait_end_of_query = 1.\n",
            dialect.sync_distributed_insert()
        );
    }
    for s in bookkeeping(db, layout) {
        let _ = writeln!(out, "{s};\n");
    }
    for (version, name, sql) in MIGRATIONS {
        let _ = writeln!(out, "-- {name}");
        if let Some(phases) = cutover::phases(sql) {
            let _ = writeln!(out, "{};\n", cutover::bookkeeping(db, layout));
            out.push_str(&cutover::plan(
                |part| render(dialect, layout, db, name, part),
                db,
                layout,
                *version,
                phases,
            )?);
        } else {
            for s in render(dialect, layout, db, name, sql)? {
                let _ = writeln!(out, "{s};\n");
            }
        }
        let _ = writeln!(out, "{};\n", record_sql(db, *version, name, sql));
    }
    Ok(out)
}

/// Applies pending migrations; returns the names applied. `wait`: whether a cutover migration
/// waits for inserts of running collectors ([`cutover`]).
pub async fn run(cfg: &ClickHouseConfig, wait: InsertWait) -> Result<Vec<String>, MigrateError> {
    run_to(cfg, wait, u32::MAX).await
}

/// [`run`], applying only the migrations up to version `last` (tests: a schema as an older
/// release left it, with data, then the newer migrations over it).
pub async fn run_to(
    cfg: &ClickHouseConfig,
    wait: InsertWait,
    last: u32,
) -> Result<Vec<String>, MigrateError> {
    // No default database: it may not exist yet.
    let mut client = crate::clickhouse::client(cfg)
        .with_database("default")
        .with_compression(::clickhouse::Compression::None);
    let (version, full) = crate::clickhouse::server_version(&client)
        .await
        .map_err(|source| MigrateError::Connect {
            url: cfg.url.clone(),
            source,
        })?;
    let layout = Layout::of(cfg);
    tracing::info!(server = %full, ?layout, "migrating");
    let dialect = Dialect { version };
    if let Layout::Cluster(_) = layout {
        // An ON CLUSTER answer streams one row per host as each finishes; without
        // wait_end_of_query a host's failure would arrive after a 200 status. A backfill
        // through a Distributed table lands on every shard before the record is written.
        client = client
            .with_setting("wait_end_of_query", "1")
            .with_setting(dialect.sync_distributed_insert(), "1");
    }
    let db = &cfg.database;
    for s in bookkeeping(db, layout) {
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
        if applied.contains(version) || *version > last {
            continue;
        }
        if let Some(phases) = cutover::phases(sql) {
            cutover::apply(
                &client,
                |part| render(dialect, layout, db, name, part),
                db,
                layout,
                *version,
                name,
                phases,
                wait,
            )
            .await?;
        } else {
            apply_statements(&client, dialect, layout, db, name, sql).await?;
        }
        // Recorded only once every statement (or phase) ran: a crash before this reruns it.
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

/// The statements of a migration without phases, in order.
async fn apply_statements(
    client: &clickhouse::Client,
    dialect: Dialect,
    layout: Layout<'_>,
    db: &str,
    name: &str,
    sql: &str,
) -> Result<(), MigrateError> {
    for s in render(dialect, layout, db, name, sql)? {
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
    Ok(())
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
            Layout::Single,
        )
        .unwrap();
        let new = plan_sql(
            Dialect {
                version: "26.1".parse().unwrap(),
            },
            "clicktrail",
            Layout::Single,
        )
        .unwrap();
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

    #[test]
    fn every_migration_renders_on_a_cluster() {
        for v in ["18.16", "26.1"] {
            let dialect = Dialect {
                version: v.parse().unwrap(),
            };
            let sql = plan_sql(dialect, "ct", Layout::Cluster("c1")).unwrap();
            for s in statements(&sql) {
                // DDL runs everywhere; the records and backfills go through replicated or
                // Distributed tables.
                assert!(
                    s.starts_with("INSERT INTO") || s.contains(" ON CLUSTER c1"),
                    "{v}: not ON CLUSTER: {s}"
                );
                assert!(!s.contains("ENGINE = ReplacingMergeTree"), "{s}");
                assert!(!s.contains("ENGINE = AggregatingMergeTree"), "{s}");
                // Views read the shard's own rows; only backfills read the whole cluster.
                assert!(
                    s.starts_with("INSERT INTO")
                        || !(s.contains("FROM ct.events\n") || s.contains("FROM ct.events ")),
                    "{s}"
                );
            }
            assert!(sql.contains(
                "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/ct/events_local', '{replica}')"
            ));
            assert!(sql.contains("replicated_deduplication_window = 1000"));
            assert!(!sql.contains("non_replicated_deduplication_window"));
            assert!(sql.contains(
                "CREATE TABLE IF NOT EXISTS ct.events ON CLUSTER c1 AS ct.events_local\nENGINE = Distributed(c1, ct, events_local, cityHash64(site, session_id))"
            ));
            // A rollup without a path is sharded by a key of its own columns.
            assert!(sql.contains(
                "CREATE TABLE IF NOT EXISTS ct.site_daily ON CLUSTER c1 AS ct.site_daily_local\nENGINE = Distributed(c1, ct, site_daily_local, cityHash64(site, day))"
            ));
            // ... and dropped again by 0008, the view first, then both of its tables.
            let at = |s: &str| sql.find(s).unwrap_or_else(|| panic!("{s} not in the plan"));
            assert!(
                at("DROP TABLE IF EXISTS ct.site_daily_mv ON CLUSTER c1")
                    < at("DROP TABLE IF EXISTS ct.site_daily ON CLUSTER c1")
                    && at("DROP TABLE IF EXISTS ct.site_daily ON CLUSTER c1")
                        < at("DROP TABLE IF EXISTS ct.site_daily_local ON CLUSTER c1")
            );
            for rollup in [
                "click_grid_daily",
                "element_clicks_daily",
                "scroll_depth_daily",
                "engagement_daily",
                "page_stats_hourly",
                "fold_daily",
                "pages_daily",
                "click_grid_daily_sum",
                "element_clicks_daily_sum",
                "scroll_depth_daily_sum",
                "engagement_daily_sum",
                "fold_daily_sum",
                "page_stats_hourly_sum",
                "pages_daily_sum",
                "site_daily",
            ] {
                let engine = if rollup.ends_with("_sum") && !rollup.starts_with("page") {
                    "Summing"
                } else {
                    "Aggregating"
                };
                assert!(sql.contains(&format!(
                    "Replicated{engine}MergeTree('/clickhouse/tables/{{shard}}/ct/{rollup}_local', '{{replica}}')"
                )), "{rollup}");
                assert!(sql.contains(&format!(
                    "CREATE TABLE IF NOT EXISTS ct.{rollup} ON CLUSTER c1 AS ct.{rollup}_local"
                )));
                assert!(sql.contains(&format!(
                    "CREATE MATERIALIZED VIEW IF NOT EXISTS ct.{rollup}_mv ON CLUSTER c1 TO ct.{rollup}_local AS"
                )));
            }
            assert!(sql.contains("ALTER TABLE ct.events_local ON CLUSTER c1\n    ADD COLUMN"));
            assert!(sql.contains("DROP TABLE IF EXISTS ct.events ON CLUSTER c1;"));
        }
    }
}

//! The migrations rendered for a ClickHouse cluster (`clickhouse.cluster = "NAME"`): one source
//! of truth, the same `migrations/*.sql` as on one server, rewritten statement by statement.
//!
//! | on one server | on a cluster |
//! | --- | --- |
//! | `CREATE DATABASE db` | `... ON CLUSTER c` |
//! | `CREATE TABLE db.t (...) ENGINE = XMergeTree()` | `db.t_local ON CLUSTER c` with `ReplicatedXMergeTree('/clickhouse/tables/{shard}/db/t_local', '{replica}')`, and a `Distributed(c, db, t_local, key)` named `db.t` |
//! | `ALTER TABLE db.t ...` | the same on `db.t_local`, then `db.t` dropped and created again over it, `ON CLUSTER c` |
//! | `CREATE MATERIALIZED VIEW db.v TO db.r AS SELECT ... FROM db.t` | `db.v ON CLUSTER c TO db.r_local AS SELECT ... FROM db.t_local` |
//! | `INSERT INTO db.r SELECT ... FROM db.events` (a backfill) | through the Distributed tables, each shard aggregating its own rows (`distributed_group_by_no_merge`) |
//! | `INSERT INTO db.r SELECT ... FROM db.old_rollup` (0006's conversion) | through the Distributed tables, states merged across shards before they are counted |
//! | `DROP TABLE IF EXISTS db.v_mv` (a view) | `... ON CLUSTER c` |
//! | `DROP TABLE IF EXISTS db.r` (a rollup given up, 0008) | `db.r`, then `db.r_local`, `ON CLUSTER c`; never `events` or `schema_*` |
//!
//! Invariants:
//! - The Distributed tables keep the single-server names, so the sink's `INSERT INTO events`,
//!   the canary and every report query of docs/queries.md run unchanged and read the whole
//!   cluster; `*_local` are what replicates and merges.
//! - `events` is sharded by [`EVENTS_SHARDING_KEY`], a hash of the site and the session id: a
//!   session's events meet on one shard, and a resent row lands where its first copy did, so
//!   ReplacingMergeTree's collapse (per shard) stays exact. The materialized views sit on
//!   `events_local`, so each shard's rollup rows come from that shard's events: the rollups
//!   are sharded the same way without a key of their own. Partial rows of one (site, path, day)
//!   on several shards add up: sums are summed and distinct-id states merged again by the
//!   report queries (`uniqIfMerge`), so nothing is counted twice.
//! - ZooKeeper paths: `/clickhouse/tables/{shard}/<db>/<table>`, replica `{replica}`, after
//!   PostHog's and Plausible's convention; the database is written in because 18.16 does not
//!   expand `{database}`. Tables the same on every server (`schema_migrations`) use `all`
//!   instead of `{shard}`.

/// The sharding key of the Distributed `events`: the row's site and session id
/// ([`crate::row`] columns `site`, `session_id`; a unit test checks they are columns).
pub const EVENTS_SHARDING_KEY: &str = "cityHash64(site, session_id)";

/// The Distributed rollups' key. Their rows are written by the views on each shard, never
/// through the Distributed table, except by a migration's backfill, whose per-shard partial
/// states may land on any shard (the queries merge states across shards either way).
pub const ROLLUP_SHARDING_KEY: &str = "cityHash64(site, path)";

/// The key of the site-level rollups (`site_*`, 0007), which have no path.
pub const SITE_ROLLUP_SHARDING_KEY: &str = "cityHash64(site, day)";

/// Block deduplication window of the replicated tables: every collector's batch adds one
/// block per shard, so the default (100) covers a resend only within ~100/N inserts; 1000 keeps
/// a resend after a collector restart covered for minutes with ten collectors. Past it a
/// resend still collapses at merge (ReplacingMergeTree).
pub const DEDUP_SETTINGS: &str = ", replicated_deduplication_window = 1000";

/// The local (replicated) table behind the Distributed `table`.
pub fn local(table: &str) -> String {
    format!("{table}_local")
}

fn sharding_key(table: &str) -> &'static str {
    if table == crate::sink::client::EVENTS_TABLE {
        EVENTS_SHARDING_KEY
    } else if table.starts_with("site_") {
        SITE_ROLLUP_SHARDING_KEY
    } else {
        ROLLUP_SHARDING_KEY
    }
}

/// The Distributed `db.table` over `db.table_local`, with the table's columns as they are now.
fn distributed(db: &str, table: &str, cluster: &str) -> String {
    let local_t = local(table);
    format!(
        "CREATE TABLE IF NOT EXISTS {db}.{table} ON CLUSTER {cluster} AS {db}.{local_t}\n\
         ENGINE = Distributed({cluster}, {db}, {local_t}, {})",
        sharding_key(table)
    )
}

/// Why a statement cannot be rendered for a cluster: a migration shape this module does not
/// know (a unit test renders every shipped migration).
#[derive(Debug, thiserror::Error)]
#[error("cannot render for a cluster ({why}):\n{statement}")]
pub struct Unsupported {
    pub why: &'static str,
    pub statement: String,
}

/// The bookkeeping statements (database, record of applied migrations) on a cluster.
pub fn bookkeeping(db: &str, cluster: &str) -> Vec<String> {
    vec![
        format!("CREATE DATABASE IF NOT EXISTS {db} ON CLUSTER {cluster}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.schema_migrations ON CLUSTER {cluster} (version UInt32, name String, \
             checksum String, applied_at DateTime('UTC')) \
             ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/{db}/schema_migrations', '{{replica}}') ORDER BY version"
        ),
    ]
}

/// Fills the placeholders that differ on a cluster before [`crate::clickhouse::Dialect::render`]
/// fills the rest.
pub fn prerender(sql: &str) -> String {
    sql.replace("{{dedup_settings}}", DEDUP_SETTINGS)
}

/// One single-server statement (rendered by the dialect) as the statements a cluster needs.
pub fn statement(s: &str, db: &str, cluster: &str) -> Result<Vec<String>, Unsupported> {
    let unsupported = |why| Unsupported {
        why,
        statement: s.to_string(),
    };
    let qualified = |rest: &str| -> Option<(String, String)> {
        let name_end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
        let table = rest[..name_end].strip_prefix(db)?.strip_prefix('.')?;
        Some((table.to_string(), rest[name_end..].to_string()))
    };
    if let Some(rest) = s.strip_prefix("CREATE DATABASE IF NOT EXISTS ") {
        return Ok(vec![format!(
            "CREATE DATABASE IF NOT EXISTS {} ON CLUSTER {cluster}",
            rest.trim()
        )]);
    }
    if let Some(rest) = s.strip_prefix("CREATE TABLE IF NOT EXISTS ") {
        let (table, body) =
            qualified(rest).ok_or_else(|| unsupported("table outside the database"))?;
        let at = body
            .find("ENGINE = ")
            .ok_or_else(|| unsupported("no ENGINE"))?
            + "ENGINE = ".len();
        let engine_end = body[at..]
            .find("MergeTree()")
            .map(|i| at + i + "MergeTree".len())
            .ok_or_else(|| unsupported("engine is not a *MergeTree()"))?;
        let engine = &body[at..engine_end];
        let local_t = local(&table);
        let body = format!(
            "{}Replicated{engine}('/clickhouse/tables/{{shard}}/{db}/{local_t}', '{{replica}}'){}",
            &body[..at],
            &body[engine_end + "()".len()..]
        );
        return Ok(vec![
            format!("CREATE TABLE IF NOT EXISTS {db}.{local_t} ON CLUSTER {cluster}{body}"),
            distributed(db, &table, cluster),
        ]);
    }
    if let Some(rest) = s.strip_prefix("ALTER TABLE ") {
        let (table, body) =
            qualified(rest).ok_or_else(|| unsupported("table outside the database"))?;
        // The local tables, then the Distributed table anew over them: with
        // internal_replication, 18.16 refuses ALTER ... ON CLUSTER of a table that is not
        // replicated (code 371, "Table events isn't replicated, but shard #2 is replicated").
        // Dropping a Distributed table drops no rows (they are in the local tables; inserts
        // are synchronous, so none wait in its directory); an insert meanwhile fails with
        // "table doesn't exist" and the sink holds it until the table is back.
        let local_t = local(&table);
        return Ok(vec![
            format!("ALTER TABLE {db}.{local_t} ON CLUSTER {cluster}{body}"),
            format!("DROP TABLE IF EXISTS {db}.{table} ON CLUSTER {cluster}"),
            distributed(db, &table, cluster),
        ]);
    }
    if let Some(rest) = s.strip_prefix("CREATE MATERIALIZED VIEW IF NOT EXISTS ") {
        let (view, body) =
            qualified(rest).ok_or_else(|| unsupported("view outside the database"))?;
        let to = body
            .trim_start()
            .strip_prefix("TO ")
            .ok_or_else(|| unsupported("a view without TO"))?;
        let (target, select) =
            qualified(to).ok_or_else(|| unsupported("TO outside the database"))?;
        let from = format!("FROM {db}.");
        let at = select.find(&from).ok_or_else(|| unsupported("no FROM"))? + from.len();
        let src_end = select[at..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(select.len(), |i| at + i);
        let select = format!(
            "{}{}{}",
            &select[..at],
            local(&select[at..src_end]),
            &select[src_end..]
        );
        return Ok(vec![format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{view} ON CLUSTER {cluster} TO {db}.{}{select}",
            local(&target)
        )]);
    }
    if s.starts_with("INSERT INTO ") {
        if !(s.contains(&format!("FROM {db}.events\n"))
            || s.contains(&format!("FROM {db}.events ")))
        {
            // A conversion of old rollups (0006): one event's id may be in two shards' states
            // (its view's and a backfill's, routed by ROLLUP_SHARDING_KEY), so the states are
            // merged across shards, by the default distributed aggregation, before counting.
            return Ok(vec![s.to_string()]);
        }
        // Each shard aggregates its own rows and the entry server only forwards the states:
        // no shard's events cross to one server to be grouped.
        return Ok(vec![format!(
            "{s}\nSETTINGS distributed_group_by_no_merge = 1"
        )]);
    }
    if let Some(rest) = s.strip_prefix("DROP TABLE IF EXISTS ") {
        let (table, tail) =
            qualified(rest).ok_or_else(|| unsupported("table outside the database"))?;
        if !tail.trim().is_empty() {
            return Err(unsupported("DROP TABLE with a tail"));
        }
        if table.ends_with("_mv") {
            return Ok(vec![format!(
                "DROP TABLE IF EXISTS {db}.{table} ON CLUSTER {cluster}"
            )]);
        }
        // A rollup given up (0008): its Distributed table, then the local ones behind it.
        // The events are never dropped by a migration, so a typo there cannot lose them.
        if table == crate::sink::client::EVENTS_TABLE || table.starts_with("schema_") {
            return Err(unsupported(
                "the events and the migration records are never dropped",
            ));
        }
        return Ok(vec![
            format!("DROP TABLE IF EXISTS {db}.{table} ON CLUSTER {cluster}"),
            format!(
                "DROP TABLE IF EXISTS {db}.{} ON CLUSTER {cluster}",
                local(&table)
            ),
        ]);
    }
    Err(unsupported(
        "not a statement shape the cluster renderer knows",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sharding_key_names_columns_of_the_row() {
        let names: Vec<&str> = crate::row::COLUMNS.iter().map(|c| c.name).collect();
        for col in ["site", "session_id", "path"] {
            assert!(names.contains(&col), "{col} is not a column of the row");
        }
        assert!(EVENTS_SHARDING_KEY.contains("site") && EVENTS_SHARDING_KEY.contains("session_id"));
    }

    #[test]
    fn a_table_becomes_local_replicated_plus_distributed() {
        let out = statement(
            "CREATE TABLE IF NOT EXISTS ct.events\n(\n    a String\n)\nENGINE = ReplacingMergeTree()\nORDER BY a",
            "ct",
            "c1",
        )
        .unwrap();
        assert_eq!(
            out[0],
            "CREATE TABLE IF NOT EXISTS ct.events_local ON CLUSTER c1\n(\n    a String\n)\nENGINE = \
             ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/ct/events_local', '{replica}')\nORDER BY a"
        );
        assert_eq!(
            out[1],
            "CREATE TABLE IF NOT EXISTS ct.events ON CLUSTER c1 AS ct.events_local\n\
             ENGINE = Distributed(c1, ct, events_local, cityHash64(site, session_id))"
        );
    }

    #[test]
    fn a_view_reads_and_writes_the_local_tables() {
        let out = statement(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS ct.r_mv TO ct.r AS\nSELECT a\nFROM ct.events\nWHERE 1",
            "ct",
            "c1",
        )
        .unwrap();
        assert_eq!(
            out,
            ["CREATE MATERIALIZED VIEW IF NOT EXISTS ct.r_mv ON CLUSTER c1 TO ct.r_local AS\nSELECT a\nFROM ct.events_local\nWHERE 1"]
        );
    }

    #[test]
    fn unknown_shapes_are_refused() {
        assert!(statement("DROP TABLE ct.events", "ct", "c1").is_err());
        assert!(statement("DROP TABLE IF EXISTS ct.events", "ct", "c1").is_err());
        assert_eq!(
            statement("DROP TABLE IF EXISTS ct.fold_daily_mv", "ct", "c1").unwrap(),
            ["DROP TABLE IF EXISTS ct.fold_daily_mv ON CLUSTER c1"]
        );
        assert_eq!(
            statement("DROP TABLE IF EXISTS ct.site_daily", "ct", "c1").unwrap(),
            [
                "DROP TABLE IF EXISTS ct.site_daily ON CLUSTER c1",
                "DROP TABLE IF EXISTS ct.site_daily_local ON CLUSTER c1"
            ]
        );
        assert!(statement("DROP TABLE IF EXISTS ct.schema_migrations", "ct", "c1").is_err());
        assert!(statement("DROP TABLE IF EXISTS ct.fold_daily x", "ct", "c1").is_err());
        assert!(statement(
            "CREATE TABLE IF NOT EXISTS other.t (a String) ENGINE = Log",
            "ct",
            "c1"
        )
        .is_err());
    }
}

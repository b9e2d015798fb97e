//! Migrations that switch rollups from one table set to another at a cutover time (0006: the set
//! rollups of 0002-0004 to sums), exactly and idempotently, while collectors keep inserting.
//!
//! A phased migration file has `-- phase: switch`, `-- phase: convert` and `-- phase: finish`
//! sections and the placeholder `{{cutover}}` (a `DateTime`). The runner:
//! 1. picks the cutover T at the first run (ClickHouse's `now()` + [`MARGIN`]) and stores it in
//!    `<db>.schema_cutovers`; every rerun reuses it, so a view created by an earlier run and one
//!    created now split the rows at the same instant;
//! 2. runs `switch` (new tables; new views `inserted_at >= T`; the old views replaced by views
//!    `inserted_at < T`) and checks it ended before T (a row stamped at or after T while the old
//!    unfiltered view still existed would be counted by both sides);
//! 3. waits until no insert stamped before T can still commit (the sink keeps a batch's stamp
//!    only while `now - stamp + clickhouse.timeout <= restamp_after`, src/sink/mod.rs), i.e.
//!    until `now() >= T + restamp_after + clickhouse.timeout`, unless told no collector runs;
//! 4. drops every `backfill = 1` partition of the new tables (so a rerun after a crash in the
//!    middle of the conversion doubles nothing), then runs `convert`;
//! 5. runs `finish`; the caller records the migration only after that.
//!
//! Invariant: a row is counted by exactly one side. Stamped before T: by the old tables (old
//! view, then the replacement), converted once in step 4; at or after T: by the new views.
//! Collectors' clocks must be within [`MARGIN`] of ClickHouse's (the sink stamps with its own).

use std::time::{Duration, Instant};

use super::{Layout, MigrateError};

/// The placeholder of the cutover instant in a phased migration file.
pub const PLACEHOLDER: &str = "{{cutover}}";

/// How far ahead of ClickHouse's `now()` the cutover is set: the `switch` phase (about twenty
/// DDL statements; each is ON CLUSTER on a cluster, ~1 s there) must end before it.
pub const MARGIN: Duration = Duration::from_secs(30);

/// The margin when no collector inserts meanwhile (`--no-insert-wait`): nothing can land between
/// the switch and T, so only the wait for T itself is left.
pub const MARGIN_NO_INSERTS: Duration = Duration::from_secs(1);

/// Whether `clicktrail migrate` waits for inserts stamped before the cutover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertWait {
    /// No collector runs while migrating (`--no-insert-wait`; tests, `make run`).
    Skip,
    /// Wait this long past the cutover: `compactor.insert_settle / 2 + clickhouse.timeout`.
    For(Duration),
}

impl InsertWait {
    /// The wait that covers every insert a sink configured like `config` can still commit.
    pub fn of(config: &crate::config::Config) -> Self {
        Self::For(config.compactor.insert_settle / 2 + config.clickhouse.timeout)
    }
}

/// The three sections of a phased migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases<'a> {
    pub switch: &'a str,
    pub convert: &'a str,
    pub finish: &'a str,
}

const MARKER: &str = "-- phase: ";

/// The phases of `sql`, or `None` for a plain migration (no phase marker).
pub fn phases(sql: &str) -> Option<Phases<'_>> {
    let find = |name: &str| {
        let tag = format!("\n{MARKER}{name}\n");
        sql.find(&tag).map(|i| (i + 1, i + tag.len()))
    };
    let (s0, s1) = find("switch")?;
    let (c0, c1) = find("convert")?;
    let (f0, f1) = find("finish")?;
    assert!(s0 < c0 && c0 < f0, "phases out of order");
    Some(Phases {
        switch: &sql[s1..c0],
        convert: &sql[c1..f0],
        finish: &sql[f1..],
    })
}

/// `sql` with the cutover filled in: `toDateTime(T)`, or, for `--print-sql` (no server, so no
/// T yet), the query-parameter form `{cutover:DateTime}`.
pub fn fill(sql: &str, cutover: Option<u32>) -> String {
    match cutover {
        Some(t) => sql.replace(PLACEHOLDER, &format!("toDateTime({t})")),
        None => sql.replace(PLACEHOLDER, "{cutover:DateTime}"),
    }
}

/// The tables created in `switch` whose partition key is `(toYYYYMM(col), backfill)`, with
/// `col`: their backfill partitions are dropped before each conversion.
pub fn backfill_tables(switch_sql: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = switch_sql;
    let create = "CREATE TABLE IF NOT EXISTS {{db}}.";
    while let Some(i) = rest.find(create) {
        rest = &rest[i + create.len()..];
        let name_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let table = &rest[..name_end];
        let body_end = rest.find(';').unwrap_or(rest.len());
        let body = &rest[..body_end];
        let part = "PARTITION BY (toYYYYMM(";
        if let Some(p) = body.find(part) {
            let col_rest = &body[p + part.len()..];
            if let Some(close) = col_rest.find("), backfill)") {
                out.push((table.to_string(), col_rest[..close].to_string()));
            }
        }
    }
    out
}

/// The statement dropping one backfill partition (`month` = YYYYMM) of `table`.
pub fn drop_backfill(db: &str, layout: Layout<'_>, table: &str, month: u32) -> String {
    match layout {
        Layout::Single => format!("ALTER TABLE {db}.{table} DROP PARTITION ({month}, 1)"),
        Layout::Cluster(c) => format!(
            "ALTER TABLE {db}.{} ON CLUSTER {c} DROP PARTITION ({month}, 1)",
            super::cluster::local(table)
        ),
    }
}

/// The bookkeeping table of cutovers (one row per migration and phase reached).
pub fn bookkeeping(db: &str, layout: Layout<'_>) -> String {
    match layout {
        Layout::Single => format!(
            "CREATE TABLE IF NOT EXISTS {db}.schema_cutovers (version UInt32, phase String, \
             at DateTime('UTC')) ENGINE = MergeTree() ORDER BY version"
        ),
        Layout::Cluster(c) => format!(
            "CREATE TABLE IF NOT EXISTS {db}.schema_cutovers ON CLUSTER {c} (version UInt32, \
             phase String, at DateTime('UTC')) \
             ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/{db}/schema_cutovers', '{{replica}}') ORDER BY version"
        ),
    }
}

/// What `--print-sql` shows for a phased migration: its statements and, as comments, what the
/// runner does between them.
pub fn plan(
    render: impl Fn(&str) -> Result<Vec<String>, MigrateError>,
    db: &str,
    layout: Layout<'_>,
    version: u32,
    phases: Phases<'_>,
) -> Result<String, MigrateError> {
    let mut out = format!(
        "-- cutover: at the first run `INSERT INTO {db}.schema_cutovers VALUES ({version}, 'cutover', now() + {} s)`, \
         reused by reruns; shown below as {{cutover:DateTime}}\n\n",
        MARGIN.as_secs()
    );
    for s in render(&fill(phases.switch, None))? {
        out.push_str(&s);
        out.push_str(";\n\n");
    }
    out.push_str(
        "-- wait: until now() >= cutover + compactor.insert_settle / 2 + clickhouse.timeout \
         (not with --no-insert-wait)\n\n",
    );
    for (table, col) in backfill_tables(phases.switch) {
        out.push_str(&format!(
            "-- for each month m of `SELECT DISTINCT toYYYYMM({col}) FROM {db}.{table} WHERE backfill = 1`:\n-- {};\n",
            drop_backfill(db, layout, &table, 0).replace("(0, 1)", "(m, 1)")
        ));
    }
    out.push('\n');
    for s in render(&fill(phases.convert, None))? {
        out.push_str(&s);
        out.push_str(";\n\n");
    }
    for s in render(&fill(phases.finish, None))? {
        out.push_str(&s);
        out.push_str(";\n\n");
    }
    Ok(out)
}

async fn exec(client: &clickhouse::Client, file: &str, s: &str) -> Result<(), MigrateError> {
    client
        .query(s)
        .execute()
        .await
        .map_err(|source| MigrateError::Statement {
            file: file.to_string(),
            statement: s.to_string(),
            source,
        })
}

async fn server_now(client: &clickhouse::Client) -> Result<u32, MigrateError> {
    client
        .query("SELECT toUInt32(now())")
        .fetch_one::<u32>()
        .await
        .map_err(MigrateError::Record)
}

async fn reached(
    client: &clickhouse::Client,
    db: &str,
    version: u32,
    phase: &str,
) -> Result<Option<u32>, MigrateError> {
    let (n, at): (u64, u32) = client
        .query(&format!(
            "SELECT count(), toUInt32(min(at)) FROM {db}.schema_cutovers WHERE version = {version} AND phase = '{phase}'"
        ))
        .fetch_one()
        .await
        .map_err(MigrateError::Record)?;
    Ok((n > 0).then_some(at))
}

async fn mark(
    client: &clickhouse::Client,
    db: &str,
    version: u32,
    phase: &str,
    at: &str,
) -> Result<(), MigrateError> {
    client
        .query(&format!(
            "INSERT INTO {db}.schema_cutovers (version, phase, at) SELECT {version}, '{phase}', {at}"
        ))
        .execute()
        .await
        .map_err(MigrateError::Record)
}

/// Runs a phased migration (steps 1-5 of the module doc). The caller records it afterwards.
#[allow(clippy::too_many_arguments)]
pub async fn apply(
    client: &clickhouse::Client,
    render: impl Fn(&str) -> Result<Vec<String>, MigrateError>,
    db: &str,
    layout: Layout<'_>,
    version: u32,
    name: &str,
    phases: Phases<'_>,
    wait: InsertWait,
) -> Result<(), MigrateError> {
    exec(client, "(bookkeeping)", &bookkeeping(db, layout)).await?;
    // 1. The cutover: stored once; after a concurrent first run the smallest one wins for all.
    let cutover = match reached(client, db, version, "cutover").await? {
        Some(t) => t,
        None => {
            let margin = match wait {
                InsertWait::Skip => MARGIN_NO_INSERTS,
                InsertWait::For(_) => MARGIN,
            };
            mark(
                client,
                db,
                version,
                "cutover",
                &format!("now() + {}", margin.as_secs()),
            )
            .await?;
            reached(client, db, version, "cutover")
                .await?
                .expect("the cutover was just stored")
        }
    };
    tracing::info!(migration = name, cutover, "cutover");
    // 2. The switch. Its statements are idempotent; only a first completion is checked.
    let switched = reached(client, db, version, "switched").await?.is_some();
    for s in render(&fill(phases.switch, Some(cutover)))? {
        exec(client, name, &s).await?;
    }
    if !switched {
        let now = server_now(client).await?;
        if now >= cutover && wait != InsertWait::Skip {
            return Err(MigrateError::Cutover {
                file: name.to_string(),
                why: format!(
                    "the switch to the new views ended at {now}, not before the cutover {cutover}: \
                     rows a collector inserted in between may be counted twice. If no collector \
                     was running, rerun with --no-insert-wait"
                ),
            });
        }
        mark(client, db, version, "switched", "now()").await?;
    }
    // 3. The wait.
    let until = match wait {
        InsertWait::Skip => cutover,
        InsertWait::For(d) => cutover.saturating_add(d.as_secs().min(u64::from(u32::MAX)) as u32),
    };
    let mut last_said = None::<Instant>;
    loop {
        let now = server_now(client).await?;
        if now >= until {
            break;
        }
        let left = until - now;
        if last_said.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            eprintln!(
                "migrate {name}: waiting {left} s more for inserts stamped before the cutover \
                 to commit (no collector running? --no-insert-wait skips this)"
            );
            last_said = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_secs(u64::from(left).min(2))).await;
    }
    // 4. The conversion, from scratch each time.
    for (table, col) in backfill_tables(phases.switch) {
        let months: Vec<u32> = client
            .query(&format!(
                "SELECT DISTINCT toUInt32(toYYYYMM({col})) FROM {db}.{table} WHERE backfill = 1"
            ))
            .fetch_all()
            .await
            .map_err(MigrateError::Record)?;
        for m in months {
            exec(client, name, &drop_backfill(db, layout, &table, m)).await?;
        }
    }
    eprintln!("migrate {name}: converting the old rollups");
    for s in render(&fill(phases.convert, Some(cutover)))? {
        exec(client, name, &s).await?;
        fail::fail_point!("migrate::after_convert_statement");
    }
    // 5. Nothing stamped before T can arrive: the replacement views go.
    for s in render(&fill(phases.finish, Some(cutover)))? {
        exec(client, name, &s).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQL: &str = include_str!("../../migrations/0006_sum_rollups.sql");

    #[test]
    fn the_sum_migration_has_its_phases_and_backfill_tables() {
        let p = phases(SQL).expect("phased");
        assert!(p.switch.contains("CREATE MATERIALIZED VIEW"));
        assert!(p.convert.starts_with("-- The old rollups") && p.convert.contains("INSERT INTO"));
        assert!(p.finish.contains("DROP TABLE IF EXISTS"));
        let t = backfill_tables(p.switch);
        let names: Vec<&str> = t.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "click_grid_daily_sum",
                "element_clicks_daily_sum",
                "scroll_depth_daily_sum",
                "engagement_daily_sum",
                "fold_daily_sum",
                "page_stats_hourly_sum",
                "pages_daily_sum"
            ]
        );
        assert!(t.iter().all(|(n, c)| c
            == if n.starts_with("page_stats") {
                "hour"
            } else {
                "day"
            }));
        // Every conversion writes a table whose backfill partitions are dropped first.
        for s in super::super::statements(p.convert) {
            let target = s
                .strip_prefix("INSERT INTO {{db}}.")
                .and_then(|r| r.split(' ').next())
                .unwrap();
            assert!(names.contains(&target), "{target}");
            assert!(s.contains("toUInt8(1) AS backfill"), "{s}");
        }
        assert!(phases("SELECT 1;").is_none());
    }

    #[test]
    fn the_cutover_is_filled_or_shown_as_a_parameter() {
        assert_eq!(
            fill("WHERE inserted_at >= {{cutover}}", Some(7)),
            "WHERE inserted_at >= toDateTime(7)"
        );
        assert_eq!(
            fill("WHERE inserted_at >= {{cutover}}", None),
            "WHERE inserted_at >= {cutover:DateTime}"
        );
        assert_eq!(
            drop_backfill("ct", Layout::Cluster("c1"), "fold_daily_sum", 202403),
            "ALTER TABLE ct.fold_daily_sum_local ON CLUSTER c1 DROP PARTITION (202403, 1)"
        );
    }
}

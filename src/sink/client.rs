//! The ClickHouse side of the sink: one configured [`clickhouse::Client`], inserts of a slice
//! of rows, and the health probe.

use std::time::Duration;

use crate::config::ClickHouseConfig;
use crate::event::EventRef;

pub const EVENTS_TABLE: &str = "events";

/// Builds the client. Validation is off because 18.16 lacks `RowBinaryWithNamesAndTypes`;
/// the insert still names its columns, so a schema change fails loudly (NO_SUCH_COLUMN) rather
/// than shifting values into the wrong columns.
pub fn client(cfg: &ClickHouseConfig) -> clickhouse::Client {
    let mut c = clickhouse::Client::default()
        .with_url(&cfg.url)
        .with_user(&cfg.user)
        .with_database(&cfg.database)
        .with_validation(false)
        .with_compression(clickhouse::Compression::Lz4);
    if !cfg.password.is_empty() {
        c = c.with_password(&cfg.password);
    }
    c
}

/// Inserts `rows` as one INSERT (one block). The caller keeps the rows: the client drops its
/// buffer on error (clickhouse-rs #212), and a retry must resend exactly the same rows.
pub async fn insert(
    client: &clickhouse::Client,
    rows: &[EventRef<'_>],
    timeout: Duration,
) -> Result<(), clickhouse::error::Error> {
    let mut insert = client
        .insert::<EventRef<'_>>(EVENTS_TABLE)
        .await?
        .with_timeouts(Some(timeout), Some(timeout));
    for row in rows {
        insert.write(row).await?;
    }
    insert.end().await
}

pub async fn ping(client: &clickhouse::Client, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, client.query("SELECT 1").fetch_one::<u8>()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

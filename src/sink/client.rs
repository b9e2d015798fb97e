//! The ClickHouse side of the sink: one configured [`clickhouse::Client`], inserts of
//! RowBinary rows as the spool stores them, and the health probe.

use std::time::Duration;

use crate::config::ClickHouseConfig;

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

/// Inserts `rows`, whole rows in RowBinary ([`crate::row`]), as one INSERT (one block). The
/// caller keeps the bytes: a retry must resend exactly the same rows.
pub async fn insert(
    client: &clickhouse::Client,
    rows: &[u8],
    timeout: Duration,
) -> Result<(), clickhouse::error::Error> {
    let mut insert = client
        .insert_formatted_with(format!(
            "INSERT INTO {EVENTS_TABLE} ({}) FORMAT RowBinary",
            crate::row::insert_columns()
        ))
        .with_timeouts(Some(timeout), Some(timeout));
    // LZ4 frames of 1 MiB: ClickHouse decompresses block by block, so the size of a frame
    // does not need to follow row boundaries.
    for chunk in rows.chunks(1 << 20) {
        insert.send(bytes::Bytes::copy_from_slice(chunk)).await?;
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

//! The sink's insert: RowBinary rows as the spool stores them, posted as one block. The client
//! itself and what its errors mean live in [`crate::clickhouse`].

use std::time::Duration;

pub const EVENTS_TABLE: &str = "events";

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

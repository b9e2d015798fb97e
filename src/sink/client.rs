//! The sink's insert: RowBinary rows as the spool stores them, each followed by the batch's
//! `inserted_at`, posted as one block. The client itself and what its errors mean live in
//! [`crate::clickhouse`].
//!
//! Why the collector sends `inserted_at` (instead of the column's `DEFAULT now()`): a resent
//! batch must be the same bytes, so that block deduplication (replicated tables, and
//! `non_replicated_deduplication_window` on current servers) drops it; with the server's
//! `now()` a resend a second later is a different block.

use std::time::Duration;

pub const EVENTS_TABLE: &str = "events";

/// The insert's column list: the row's columns, then `inserted_at`.
pub fn columns() -> String {
    format!("{}, inserted_at", crate::row::insert_columns())
}

/// Inserts `rows`, whole rows in RowBinary ([`crate::row`]; row `i` ends at `row_ends[i]`), as
/// one INSERT (one block), every row stamped with `inserted_at` (unix seconds). The caller
/// keeps the bytes and the stamp: a retry must resend exactly the same block.
pub async fn insert(
    client: &clickhouse::Client,
    rows: &[u8],
    row_ends: &[usize],
    inserted_at: u32,
    timeout: Duration,
) -> Result<(), clickhouse::error::Error> {
    insert_as(client, rows, row_ends, inserted_at, timeout, None).await
}

/// [`insert`] with the server's `query_id` set, so that the attempt can be found and stopped
/// (`KILL QUERY`) when its outcome is unknown.
pub async fn insert_as(
    client: &clickhouse::Client,
    rows: &[u8],
    row_ends: &[usize],
    inserted_at: u32,
    timeout: Duration,
    query_id: Option<&str>,
) -> Result<(), clickhouse::error::Error> {
    let mut insert = client
        .insert_formatted_with(format!(
            "INSERT INTO {EVENTS_TABLE} ({}) FORMAT RowBinary",
            columns()
        ))
        .with_timeouts(Some(timeout), Some(timeout));
    if let Some(id) = query_id {
        insert = insert.with_setting("query_id", id);
    }
    // LZ4 frames of about 1 MiB: ClickHouse decompresses block by block, so a frame does not
    // need to follow row boundaries; rows are copied into frames anyway, the stamp with them.
    const FRAME: usize = 1 << 20;
    let stamp = inserted_at.to_le_bytes();
    let mut frame = Vec::with_capacity(FRAME + 4096);
    let mut start = 0;
    for &end in row_ends {
        frame.extend_from_slice(&rows[start..end]);
        frame.extend_from_slice(&stamp);
        start = end;
        if frame.len() >= FRAME {
            insert
                .send(bytes::Bytes::from(std::mem::replace(
                    &mut frame,
                    Vec::with_capacity(FRAME + 4096),
                )))
                .await?;
        }
    }
    if !frame.is_empty() {
        insert.send(bytes::Bytes::from(frame)).await?;
    }
    let answer = insert.end().await;
    // Fault tests: ClickHouse answered, and the answer is lost on the way (`return`: the
    // attempt fails as a timeout would, whatever the server did).
    fail::fail_point!("sink::answer_lost", |_| Err(
        clickhouse::error::Error::TimedOut
    ));
    answer
}

//! The content checksum that ties an archive file to the ClickHouse rows it came from:
//! `sum(cityHash64(every column))` with wrapping addition. ClickHouse computes each row's hash
//! while it streams the rows out (18.16 and current releases give identical hashes); clicktrail
//! recomputes it in Rust from the rows it reads back out of the published Parquet file. Sum,
//! not XOR, so a duplicated row changes it. `cityHash64` of many arguments hashes the columns
//! as they are stored (no text rendering), which made ClickHouse's side 3x cheaper than the
//! `sipHash64` of the rendered row used before.

use super::cityhash::RowHasher;
use super::CompactError;
use crate::event::Event;
use crate::row::{Cell, Kind, COLUMNS};

/// The SQL expression of one row's hash: `cityHash64` of every column, in the row's order.
pub(super) fn sql_row_hash() -> String {
    let cols: Vec<&str> = COLUMNS.iter().map(|c| c.name).collect();
    format!("cityHash64({})", cols.join(", "))
}

/// The same hash as SQL over an archive file's columns (`FROM file('…', Parquet)`): the
/// timestamps split back into the DateTime and its milliseconds, booleans back to UInt8. Lets
/// any ClickHouse check a published part by hand (docs/archive.md) and the tests check ours.
pub fn archive_sql_row_hash() -> String {
    let mut last_time = "";
    let cols: Vec<String> = COLUMNS
        .iter()
        .map(|c| match c.kind {
            Kind::DateTime => {
                last_time = c.name;
                format!(
                    "toDateTime(intDiv(toUnixTimestamp64Milli({}), 1000))",
                    c.name
                )
            }
            Kind::Millis => format!("toUInt16(toUnixTimestamp64Milli({last_time}) % 1000)"),
            Kind::Flag => format!("toUInt8({})", c.name),
            _ => c.name.to_string(),
        })
        .collect();
    format!("cityHash64({})", cols.join(", "))
}

fn hash_cell(h: &mut RowHasher, c: &Cell<'_>) {
    match c {
        Cell::Str(s) => h.str(s.as_bytes()),
        Cell::U(v) => h.uint(*v),
        Cell::I(v) => h.i32(*v),
    }
}

/// One row's hash, exactly as ClickHouse's `cityHash64(...)` of the stored columns.
pub(super) fn row_hash(e: &Event) -> u64 {
    let mut h = RowHasher::default();
    for c in &e.cells() {
        hash_cell(&mut h, c);
    }
    h.finish()
}

/// Adds every row of a record batch in the archive schema to `sum`, hashed from the Arrow
/// arrays exactly like [`row_hash`] hashes the row (no row is materialised).
pub(super) fn add_batch(
    sum: &mut Checksum,
    b: &arrow_array::RecordBatch,
) -> Result<(), CompactError> {
    let cols = super::parquet_io::archive_columns(b)?;
    for r in 0..b.num_rows() {
        let mut h = RowHasher::default();
        for c in &cols {
            hash_cell(&mut h, &c.cell(r));
        }
        sum.add_hash(h.finish());
    }
    Ok(())
}

/// Accumulates the checksum of a set of rows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Checksum {
    pub rows: u64,
    pub sum: u64,
}

impl Checksum {
    pub fn add(&mut self, e: &Event) {
        self.add_hash(row_hash(e));
    }

    /// Adds one row given its hash (ClickHouse's, or [`row_hash`]).
    pub fn add_hash(&mut self, h: u64) {
        self.sum = self.sum.wrapping_add(h);
        self.rows += 1;
    }
}

#[cfg(test)]
mod tests {

    /// docs/archive.md shows the by-hand check and the schema; a column added to the row must
    /// show up in both (they went stale once).
    #[test]
    fn docs_archive_md_names_every_column_and_the_checksum_sql() {
        let doc = include_str!("../../docs/archive.md");
        let flat = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flat(doc).contains(&flat(&super::archive_sql_row_hash())),
            "docs/archive.md's checksum query is not {}",
            super::archive_sql_row_hash()
        );
        let schema = &doc[doc.find("## Schema").expect("a Schema section")..];
        for c in COLUMNS.iter().filter(|c| c.kind != Kind::Millis) {
            assert!(
                schema.contains(&format!("`{}`", c.name)),
                "docs/archive.md's schema table has no `{}`",
                c.name
            );
        }
    }
    use super::*;

    #[test]
    fn row_hash_matches_clickhouse() {
        // SELECT cityHash64('abc', toUInt16(65535), toInt32(-5), toDateTime(1700000000, 'UTC'),
        // toUInt8(1)) on ClickHouse 18.16.1 and on 26.9 (chDB), LowCardinality('abc') alike.
        let mut h = RowHasher::default();
        h.str(b"abc");
        h.uint(65535);
        h.i32(-5);
        h.uint(1_700_000_000);
        h.uint(1);
        assert_eq!(h.finish(), 2597527848199113684);
    }

    #[test]
    fn sql_hashes_every_column_in_order() {
        let sql = sql_row_hash();
        assert!(sql.starts_with("cityHash64(event_id, site, type, name, ts, ts_ms,"));
        assert_eq!(sql.matches(", ").count(), COLUMNS.len() - 1);
        // Every column changes the hash.
        let base = crate::row::tests::distinct_row();
        let cells = base.cells();
        for (i, column) in COLUMNS.iter().enumerate() {
            let other = Event::from_cells(|j| {
                Ok(match (&cells[j], i == j) {
                    (Cell::Str(s), true) => Cell::Str(format!("{s}!").into()),
                    (Cell::U(v), true) => Cell::U(v ^ 1),
                    (Cell::I(v), true) => Cell::I(v ^ 1),
                    (Cell::Str(s), false) => Cell::Str(s.to_string().into()),
                    (Cell::U(v), false) => Cell::U(*v),
                    (Cell::I(v), false) => Cell::I(*v),
                })
            })
            .unwrap();
            assert_ne!(row_hash(&base), row_hash(&other), "{}", column.name);
        }
    }
}

//! The content checksum that ties an archive file to the ClickHouse rows it came from:
//! `sum(cityHash64(every column))` with wrapping addition. ClickHouse computes each row's hash
//! while it streams the rows out (18.16 and current releases give identical hashes); clicktrail
//! recomputes it in Rust from the rows it reads back out of the published Parquet file. Sum,
//! not XOR, so a duplicated row changes it. `cityHash64` of many arguments hashes the columns
//! as they are stored (no text rendering), which made ClickHouse's side 3x cheaper than the
//! `sipHash64` of the rendered row used before.

use super::cityhash::RowHasher;
use crate::event::Event;

/// Columns in checksum order, and whether each is text (`true`) or a number.
pub(super) const COLUMNS: &[(&str, bool)] = &[
    ("event_id", true),
    ("site", true),
    ("type", true),
    ("name", true),
    ("ts", false),
    ("ts_ms", false),
    ("received_at", false),
    ("url", true),
    ("host", true),
    ("path", true),
    ("referrer", true),
    ("title", true),
    ("session_id", true),
    ("visitor_id", true),
    ("x", false),
    ("y", false),
    ("viewport_w", false),
    ("viewport_h", false),
    ("doc_w", false),
    ("doc_h", false),
    ("selector", true),
    ("text", true),
    ("rage", false),
    ("scroll_depth", false),
    ("duration_ms", false),
    ("props", true),
    ("browser", true),
    ("os", true),
    ("device", true),
    ("user_agent", true),
    ("ip", true),
];

/// The SQL expression of one row's hash: `cityHash64` of every column in [`COLUMNS`] order.
pub(super) fn sql_row_hash() -> String {
    let cols: Vec<&str> = COLUMNS.iter().map(|(c, _)| *c).collect();
    format!("cityHash64({})", cols.join(", "))
}

/// One row's hash, exactly as ClickHouse's `cityHash64(...)` of the stored columns.
pub(super) fn row_hash(e: &Event) -> u64 {
    let mut h = RowHasher::default();
    let s = |h: &mut RowHasher, v: &str| h.str(v.as_bytes());
    s(&mut h, &e.event_id);
    s(&mut h, &e.site);
    s(&mut h, &e.kind);
    s(&mut h, &e.name);
    h.uint(e.ts.into());
    h.uint(e.ts_ms.into());
    h.uint(e.received_at.into());
    s(&mut h, &e.url);
    s(&mut h, &e.host);
    s(&mut h, &e.path);
    s(&mut h, &e.referrer);
    s(&mut h, &e.title);
    s(&mut h, &e.session_id);
    s(&mut h, &e.visitor_id);
    h.i32(e.x);
    h.i32(e.y);
    h.uint(e.viewport_w.into());
    h.uint(e.viewport_h.into());
    h.uint(e.doc_w.into());
    h.uint(e.doc_h.into());
    s(&mut h, &e.selector);
    s(&mut h, &e.text);
    h.uint(e.rage.into());
    h.uint(e.scroll_depth.into());
    h.uint(e.duration_ms.into());
    s(&mut h, &e.props);
    s(&mut h, &e.browser);
    s(&mut h, &e.os);
    s(&mut h, &e.device);
    s(&mut h, &e.user_agent);
    s(&mut h, &e.ip);
    h.finish()
}

/// One Arrow column, typed once per batch, hashed per row exactly like [`row_hash`].
enum Col<'a> {
    Str(&'a arrow_array::StringArray),
    /// Millisecond timestamp as whole seconds (ClickHouse's DateTime).
    Secs(&'a arrow_array::TimestampMillisecondArray),
    /// Millisecond timestamp's 0–999 part (`ts_ms`).
    Millis(&'a arrow_array::TimestampMillisecondArray),
    Bool(&'a arrow_array::BooleanArray),
    /// Any unsigned integer column, widened.
    Num(Box<dyn Fn(usize) -> u64 + 'a>),
    /// Int32: ClickHouse hashes its four bytes zero-extended.
    I32(&'a arrow_array::Int32Array),
}

/// Adds every row of a record batch in the archive schema to `sum`.
pub(super) fn add_batch(sum: &mut Checksum, b: &arrow_array::RecordBatch) -> Result<(), String> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    let col = |name: &str| {
        b.column_by_name(name)
            .ok_or_else(|| format!("column {name} missing"))
    };
    let mut cols = Vec::with_capacity(COLUMNS.len());
    for (name, text) in COLUMNS {
        let c = match *name {
            "ts" => Col::Secs(col("ts")?.as_primitive::<TimestampMillisecondType>()),
            "ts_ms" => Col::Millis(col("ts")?.as_primitive::<TimestampMillisecondType>()),
            "received_at" => {
                Col::Secs(col("received_at")?.as_primitive::<TimestampMillisecondType>())
            }
            "rage" => Col::Bool(col("rage")?.as_boolean()),
            n if *text => Col::Str(col(n)?.as_string::<i32>()),
            n => {
                let a = col(n)?;
                let f: Box<dyn Fn(usize) -> u64> = match a.data_type() {
                    arrow_schema::DataType::Int32 => {
                        cols.push(Col::I32(a.as_primitive::<Int32Type>()));
                        continue;
                    }
                    arrow_schema::DataType::UInt8 => {
                        let a = a.as_primitive::<UInt8Type>();
                        Box::new(move |i| u64::from(a.value(i)))
                    }
                    arrow_schema::DataType::UInt16 => {
                        let a = a.as_primitive::<UInt16Type>();
                        Box::new(move |i| u64::from(a.value(i)))
                    }
                    arrow_schema::DataType::UInt32 => {
                        let a = a.as_primitive::<UInt32Type>();
                        Box::new(move |i| u64::from(a.value(i)))
                    }
                    t => return Err(format!("column {n} has unexpected type {t}")),
                };
                Col::Num(f)
            }
        };
        cols.push(c);
    }
    for i in 0..b.num_rows() {
        let mut h = RowHasher::default();
        for c in &cols {
            match c {
                Col::Str(a) => h.str(a.value(i).as_bytes()),
                Col::Secs(a) => h.uint(a.value(i).div_euclid(1000) as u64),
                Col::Millis(a) => h.uint(a.value(i).rem_euclid(1000) as u64),
                Col::Bool(a) => h.uint(u64::from(a.value(i))),
                Col::Num(f) => h.uint(f(i)),
                Col::I32(a) => h.i32(a.value(i)),
            }
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
        let base = crate::compactor::tests_support::event();
        let mut other = base.clone();
        other.x = -5;
        assert_ne!(row_hash(&base), row_hash(&other));
        other = base.clone();
        other.ip.push('1');
        assert_ne!(row_hash(&base), row_hash(&other));
    }
}

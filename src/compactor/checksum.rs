//! The content checksum that ties an archive file to the ClickHouse rows it came from:
//! `sum(sipHash64(row))` with wrapping addition, where `row` is every column rendered as text
//! and joined by U+001F. ClickHouse (18.16 and current releases alike) computes it in SQL;
//! clicktrail computes it in Rust from the rows it read back out of Parquet. Sum, not XOR, so a
//! duplicated row changes it.

use std::hash::Hasher;

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

/// The SQL expression of one row's hash.
pub(super) fn sql_row_hash() -> String {
    let parts: Vec<String> = COLUMNS
        .iter()
        .map(|(c, text)| {
            if *text {
                // toString() also turns LowCardinality(String) into String on current releases.
                format!("toString({c})")
            } else {
                format!("toString(toUInt64({c}))")
            }
        })
        .collect();
    format!("sipHash64(concat({}))", parts.join(", '\\x1f', "))
}

fn render(e: &Event, out: &mut Vec<u8>) {
    use std::io::Write;
    out.clear();
    let num = |out: &mut Vec<u8>, v: i64| {
        let _ = write!(out, "{}", v as u64);
    };
    let sep = |out: &mut Vec<u8>| out.push(0x1f);
    macro_rules! s {
        ($v:expr) => {
            out.extend_from_slice($v.as_bytes());
            sep(out);
        };
    }
    macro_rules! n {
        ($v:expr) => {
            num(out, $v as i64);
            sep(out);
        };
    }
    s!(e.event_id);
    s!(e.site);
    s!(e.kind);
    s!(e.name);
    n!(e.ts);
    n!(e.ts_ms);
    n!(e.received_at);
    s!(e.url);
    s!(e.host);
    s!(e.path);
    s!(e.referrer);
    s!(e.title);
    s!(e.session_id);
    s!(e.visitor_id);
    n!(e.x);
    n!(e.y);
    n!(e.viewport_w);
    n!(e.viewport_h);
    n!(e.doc_w);
    n!(e.doc_h);
    s!(e.selector);
    s!(e.text);
    n!(e.rage);
    n!(e.scroll_depth);
    n!(e.duration_ms);
    s!(e.props);
    s!(e.browser);
    s!(e.os);
    s!(e.device);
    s!(e.user_agent);
    out.extend_from_slice(e.ip.as_bytes());
}

fn hash(bytes: &[u8]) -> u64 {
    // ClickHouse's sipHash64 is SipHash-2-4 with a zero key.
    let mut h = siphasher::sip::SipHasher24::new_with_keys(0, 0);
    h.write(bytes);
    h.finish()
}

/// One Arrow column, typed once per batch, rendered per row exactly like [`render`].
enum Col<'a> {
    Str(&'a arrow_array::StringArray),
    /// Millisecond timestamp rendered as whole seconds.
    Secs(&'a arrow_array::TimestampMillisecondArray),
    /// Millisecond timestamp rendered as its 0–999 part.
    Millis(&'a arrow_array::TimestampMillisecondArray),
    Bool(&'a arrow_array::BooleanArray),
    Num(Box<dyn Fn(usize) -> i64 + 'a>),
}

/// Adds every row of a record batch in the archive schema to `sum`.
pub(super) fn add_batch(
    sum: &mut Checksum,
    b: &arrow_array::RecordBatch,
    scratch: &mut Vec<u8>,
) -> Result<(), String> {
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
                let f: Box<dyn Fn(usize) -> i64> = match a.data_type() {
                    arrow_schema::DataType::Int32 => {
                        let a = a.as_primitive::<Int32Type>();
                        Box::new(move |i| a.value(i) as i64)
                    }
                    arrow_schema::DataType::UInt8 => {
                        let a = a.as_primitive::<UInt8Type>();
                        Box::new(move |i| a.value(i) as i64)
                    }
                    arrow_schema::DataType::UInt16 => {
                        let a = a.as_primitive::<UInt16Type>();
                        Box::new(move |i| a.value(i) as i64)
                    }
                    arrow_schema::DataType::UInt32 => {
                        let a = a.as_primitive::<UInt32Type>();
                        Box::new(move |i| a.value(i) as i64)
                    }
                    t => return Err(format!("column {n} has unexpected type {t}")),
                };
                Col::Num(f)
            }
        };
        cols.push(c);
    }
    let mut num = itoa::Buffer::new();
    for i in 0..b.num_rows() {
        scratch.clear();
        for (k, c) in cols.iter().enumerate() {
            if k > 0 {
                scratch.push(0x1f);
            }
            match c {
                Col::Str(a) => scratch.extend_from_slice(a.value(i).as_bytes()),
                Col::Secs(a) => scratch
                    .extend_from_slice(num.format(a.value(i).div_euclid(1000) as u64).as_bytes()),
                Col::Millis(a) => scratch
                    .extend_from_slice(num.format(a.value(i).rem_euclid(1000) as u64).as_bytes()),
                Col::Bool(a) => scratch.push(if a.value(i) { b'1' } else { b'0' }),
                Col::Num(f) => scratch.extend_from_slice(num.format(f(i) as u64).as_bytes()),
            }
        }
        sum.sum = sum.sum.wrapping_add(hash(scratch));
        sum.rows += 1;
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
    pub fn add(&mut self, e: &Event, scratch: &mut Vec<u8>) {
        render(e, scratch);
        self.sum = self.sum.wrapping_add(hash(scratch));
        self.rows += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siphash_matches_clickhouse() {
        // SELECT sipHash64('abc'), sipHash64('') on 18.16.1 and 26.9.
        let h = |s: &[u8]| {
            let mut h = siphasher::sip::SipHasher24::new_with_keys(0, 0);
            h.write(s);
            h.finish()
        };
        assert_eq!(h(b"abc"), 4596069200710135518);
        assert_eq!(h(b""), 2202906307356721367);
        assert_eq!(h(b"a\x1fb"), 5232500054495778049);
    }

    #[test]
    fn every_column_is_rendered_once_in_order() {
        let e = Event {
            event_id: "e".into(),
            x: -5,
            ..crate::compactor::tests_support::event()
        };
        let mut buf = Vec::new();
        render(&e, &mut buf);
        assert_eq!(
            buf.iter().filter(|&&b| b == 0x1f).count(),
            COLUMNS.len() - 1
        );
        assert!(sql_row_hash().contains("toString(toUInt64(x))"));
        // Negative numbers wrap like toUInt64() does in ClickHouse.
        let text = String::from_utf8(buf).unwrap();
        assert!(text.contains(&format!("\x1f{}\x1f", (-5i64) as u64)));
    }
}

//! # The events row: one table of columns, everything else derived from it
//!
//! [`events_row!`] below is the only place that lists the columns of `clicktrail.events`:
//! name, kind (which fixes the ClickHouse type per dialect, the Rust type, the RowBinary and
//! Native encodings and the Arrow type of the archive) and where the value comes from. From it
//! come:
//! - [`EventRow`], the row (borrowed strings as [`Cow`], so a row decoded from a spool record
//!   borrows the record and a validated one owns its strings: [`Event`] = `EventRow<'static>`);
//! - [`COLUMNS`] and [`insert_columns`], the insert's column list in row order;
//! - [`EventRow::encode`] / [`EventRow::decode`], the RowBinary layout ([`row_ends`] cuts
//!   rows apart from the kinds' widths alone);
//! - [`EventRow::cells`] / [`EventRow::from_cells`], a column-by-column view used by the
//!   archive (Arrow schema and Native layout in `compactor`) and the content checksum.
//!
//! Adding a column: a line in the table, a numbered migration, the validator line that
//! fills it, and (spool records hold these rows) a new spool format byte whose reader upgrades
//! the older rows, as [`upgrade_v1`] does for format 1. Tests check the table against the server's `DESCRIBE TABLE` (18.16 and 26.x),
//! the encoder byte for byte against the `clickhouse` crate's own serialisation, and the
//! archive round trip column by column by name.
//!
//! Invariant: the order of the table is the order of the values in a RowBinary row and of the
//! insert's column list; both are generated from the same list, so they cannot disagree.
//! Columns are named in the INSERT, so a table with its columns in another order is fine.
//!
//! (Over 500 lines: the table and its generated codecs, plus the tests that hold them to the
//! `clickhouse` crate and the docs.)

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::rowbinary::{read_bytes, write_bytes, RowError};

/// How a column is stored; fixes every encoding of its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text or an id: `String`.
    Str,
    /// Text with few distinct values: `LowCardinality(String)` where the server supports it
    /// without an experimental flag, `String` elsewhere. Same bytes on the wire.
    LowStr,
    /// Seconds since the epoch: `DateTime('UTC')`, carried as a UInt32.
    DateTime,
    /// Milliseconds (0–999) within the [`Kind::DateTime`] column right before it: `UInt16`.
    /// The archive folds it into that column's millisecond timestamp.
    Millis,
    /// 0 or 1: `UInt8`; a boolean in the archive.
    Flag,
    U8,
    U16,
    U32,
    I32,
}

impl Kind {
    /// The column type as `DESCRIBE TABLE` shows it.
    pub fn clickhouse_type(self, low_cardinality: bool) -> &'static str {
        match self {
            Kind::Str => "String",
            Kind::LowStr if low_cardinality => "LowCardinality(String)",
            Kind::LowStr => "String",
            Kind::DateTime => "DateTime('UTC')",
            Kind::Millis | Kind::U16 => "UInt16",
            Kind::Flag | Kind::U8 => "UInt8",
            Kind::U32 => "UInt32",
            Kind::I32 => "Int32",
        }
    }

    /// Bytes of one value in RowBinary and Native; 0 for length-prefixed strings.
    pub const fn width(self) -> usize {
        match self {
            Kind::Str | Kind::LowStr => 0,
            Kind::Flag | Kind::U8 => 1,
            Kind::Millis | Kind::U16 => 2,
            Kind::DateTime | Kind::U32 | Kind::I32 => 4,
        }
    }

    pub fn is_text(self) -> bool {
        self.width() == 0
    }
}

/// One column of the events table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
    /// Where the value comes from (the wire field, the enrichment, the server).
    pub source: &'static str,
}

/// One value of a row, seen column by column.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'a> {
    Str(Cow<'a, str>),
    /// Every unsigned kind, widened (ClickHouse hashes them widened too).
    U(u64),
    I(i32),
}

/// A Rust type that a column kind stores.
pub trait Value<'a>: Sized {
    type Static: 'static;
    fn encode(&self, out: &mut Vec<u8>);
    fn decode(buf: &'a [u8], pos: &mut usize) -> Result<Self, RowError>;
    fn cell(&self) -> Cell<'_>;
    fn from_cell(c: Cell<'a>) -> Option<Self>;
    fn into_static(self) -> Self::Static;
}

impl<'a> Value<'a> for Cow<'a, str> {
    type Static = Cow<'static, str>;
    fn encode(&self, out: &mut Vec<u8>) {
        write_bytes(out, self.as_bytes());
    }
    fn decode(buf: &'a [u8], pos: &mut usize) -> Result<Self, RowError> {
        let b = read_bytes(buf, pos)?.ok_or(RowError::CutShort)?;
        Ok(Cow::Borrowed(std::str::from_utf8(b)?))
    }
    fn cell(&self) -> Cell<'_> {
        Cell::Str(Cow::Borrowed(self))
    }
    fn from_cell(c: Cell<'a>) -> Option<Self> {
        match c {
            Cell::Str(s) => Some(s),
            _ => None,
        }
    }
    fn into_static(self) -> Cow<'static, str> {
        Cow::Owned(self.into_owned())
    }
}

macro_rules! unsigned_value {
    ($($t:ty),*) => {$(
        impl<'a> Value<'a> for $t {
            type Static = $t;
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn decode(buf: &'a [u8], pos: &mut usize) -> Result<Self, RowError> {
                const N: usize = std::mem::size_of::<$t>();
                let b = buf.get(*pos..*pos + N).ok_or(RowError::CutShort)?;
                *pos += N;
                Ok(<$t>::from_le_bytes(b.try_into().expect("N bytes")))
            }
            fn cell(&self) -> Cell<'_> {
                Cell::U(u64::from(*self))
            }
            fn from_cell(c: Cell<'a>) -> Option<Self> {
                match c {
                    Cell::U(v) => <$t>::try_from(v).ok(),
                    _ => None,
                }
            }
            fn into_static(self) -> $t {
                self
            }
        }
    )*};
}
unsigned_value!(u8, u16, u32);

impl<'a> Value<'a> for i32 {
    type Static = i32;
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn decode(buf: &'a [u8], pos: &mut usize) -> Result<Self, RowError> {
        let b = buf.get(*pos..*pos + 4).ok_or(RowError::CutShort)?;
        *pos += 4;
        Ok(i32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn cell(&self) -> Cell<'_> {
        Cell::I(*self)
    }
    fn from_cell(c: Cell<'a>) -> Option<Self> {
        match c {
            Cell::I(v) => Some(v),
            _ => None,
        }
    }
    fn into_static(self) -> i32 {
        self
    }
}

/// Generates [`EventRow`], [`COLUMNS`] and the per-row codecs from one list of
/// `doc, rust_field "column": RustType = Kind` lines.
macro_rules! events_row {
    (<$a:lifetime> $( #[doc = $doc:literal] $field:ident $name:literal : $ty:ty = $kind:ident, )* ) => {
        /// A row of `clicktrail.events`, field for column, in insert order (see the module
        /// docs). Serde names are the column names (dead-letter entries store rows as JSON);
        /// a column missing from such JSON takes its default, so entries written before the
        /// column existed still replay.
        #[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, clickhouse::Row)]
        #[serde(default)]
        pub struct EventRow<$a> {
            $( #[doc = $doc] #[serde(rename = $name)] pub $field: $ty, )*
        }

        /// The columns, in row order.
        pub const COLUMNS: &[Column] = &[
            $( Column { name: $name, kind: Kind::$kind, source: $doc }, )*
        ];

        impl<$a> EventRow<$a> {
            /// Appends the row in RowBinary.
            #[inline]
            pub fn encode(&self, out: &mut Vec<u8>) {
                $( Value::encode(&self.$field, out); )*
            }

            /// Reads one RowBinary row at `pos`, borrowing its strings from `buf`.
            pub fn decode(buf: &$a [u8], pos: &mut usize) -> Result<Self, RowError> {
                Ok(Self { $( $field: Value::decode(buf, pos)?, )* })
            }

            /// The values in column order.
            pub fn cells(&self) -> [Cell<'_>; COLUMN_COUNT] {
                [ $( Value::cell(&self.$field), )* ]
            }

            /// A row from its values in column order; the column whose value has the wrong
            /// type is named in the error.
            #[allow(unused_assignments)] // the count after the last column
            pub fn from_cells(
                mut cell: impl FnMut(usize) -> Result<Cell<$a>, RowError>,
            ) -> Result<Self, RowError> {
                let mut i = 0usize;
                Ok(Self { $( $field: {
                    let v = cell(i)?;
                    let v = Value::from_cell(v).ok_or(RowError::WrongType($name))?;
                    i += 1;
                    v
                }, )* })
            }

            /// The same row owning all of its strings.
            pub fn into_owned(self) -> EventRow<'static> {
                EventRow { $( $field: Value::into_static(self.$field), )* }
            }
        }

        /// Number of columns.
        pub const COLUMN_COUNT: usize = [$($name),*].len();
    };
}

events_row! { <'a>
    /// client `id`, or assigned by the collector (uuid, or derived from a dead letter's id on replay)
    event_id "event_id": Cow<'a, str> = Str,
    /// the site key of the request
    site "site": Cow<'a, str> = LowStr,
    /// client `type`: pageview, click, scroll, engagement, custom
    kind "type": Cow<'a, str> = LowStr,
    /// client `name` (custom events)
    name "name": Cow<'a, str> = Str,
    /// client `ts` (seconds), after the clock-skew rule
    ts "ts": u32 = DateTime,
    /// client `ts` (milliseconds within the second)
    ts_ms "ts_ms": u16 = Millis,
    /// the collector's clock when the request arrived
    received_at "received_at": u32 = DateTime,
    /// client `url`
    url "url": Cow<'a, str> = Str,
    /// host of `url`
    host "host": Cow<'a, str> = LowStr,
    /// path of `url`
    path "path": Cow<'a, str> = Str,
    /// client `referrer` (page views)
    referrer "referrer": Cow<'a, str> = Str,
    /// client `title` (page views)
    title "title": Cow<'a, str> = Str,
    /// client `session`
    session_id "session_id": Cow<'a, str> = Str,
    /// client `visitor`, or the cookieless daily hash
    visitor_id "visitor_id": Cow<'a, str> = Str,
    /// client `x` (page px, clicks)
    x "x": i32 = I32,
    /// client `y` (page px, clicks)
    y "y": i32 = I32,
    /// client `vw`
    viewport_w "viewport_w": u16 = U16,
    /// client `vh`
    viewport_h "viewport_h": u16 = U16,
    /// client `dw` (document width)
    doc_w "doc_w": u32 = U32,
    /// client `dh` (document height)
    doc_h "doc_h": u32 = U32,
    /// client `selector` (clicks)
    selector "selector": Cow<'a, str> = Str,
    /// client `text` (clicks)
    text "text": Cow<'a, str> = Str,
    /// client `rage` (clicks)
    rage "rage": u8 = Flag,
    /// client `depth` (scrolls, 0-100)
    scroll_depth "scroll_depth": u8 = U8,
    /// client `duration_ms` (engagement)
    duration_ms "duration_ms": u32 = U32,
    /// client `props` (custom events, a JSON object)
    props "props": Cow<'a, str> = Str,
    /// parsed from the User-Agent
    browser "browser": Cow<'a, str> = LowStr,
    /// parsed from the User-Agent
    os "os": Cow<'a, str> = LowStr,
    /// parsed from the User-Agent: desktop, mobile, tablet, bot, other
    device "device": Cow<'a, str> = LowStr,
    /// the User-Agent, only with privacy.keep_user_agent
    user_agent "user_agent": Cow<'a, str> = Str,
    /// the client address as privacy.ip stores it
    ip "ip": Cow<'a, str> = Str,
    /// client `ex` (clicks): where inside the clicked element, 0 = left edge, 65535 = right
    elem_x "elem_x": u16 = U16,
    /// client `ey` (clicks): 0 = top edge, 65535 = bottom edge
    elem_y "elem_y": u16 = U16,
    /// client `dead` (clicks): nothing happened within 1 s
    dead "dead": u8 = Flag,
    /// client `error` (clicks): an uncaught error within 1 s
    error "error": u8 = Flag,
    /// from `vw`: unknown (0), mobile (< 768), tablet (< 1024), desktop
    device_class "device_class": Cow<'a, str> = LowStr,
    /// client `pv`: the event id of the page view this event belongs to (its own id on a page view)
    pageview_id "pageview_id": Cow<'a, str> = Str,
    /// client `from` (scrolls): the depth this page view had already sent, 0 on its first
    depth_from "depth_from": u8 = U8,
    /// client `from` (engagement): the engaged ms this page view had already sent, 0 on its first
    duration_from_ms "duration_from_ms": u32 = U32,
}

/// A validated row that owns its strings: what validation produces.
pub type Event = EventRow<'static>;

/// Columns the server fills itself, present in the table but not in the insert.
pub const SERVER_COLUMNS: &[(&str, &str)] = &[("inserted_at", "DateTime('UTC')")];

/// The insert's column list, `a, b, c`, in row order.
pub fn insert_columns() -> String {
    let names: Vec<&str> = COLUMNS.iter().map(|c| c.name).collect();
    names.join(", ")
}

/// Each column's fixed width in a RowBinary row, 0 for a length-prefixed string: the sink's
/// per-record scan reads this flat table rather than matching on kinds.
const WIDTHS: [u8; COLUMN_COUNT] = {
    let mut w = [0u8; COLUMN_COUNT];
    let mut i = 0;
    while i < COLUMN_COUNT {
        w[i] = COLUMNS[i].kind.width() as u8;
        i += 1;
    }
    w
};

/// The end offset of each row of `buf`, which must hold exactly `count` whole rows: a
/// structural scan (string lengths and the kinds' widths only), for cutting a batch apart.
pub fn row_ends(buf: &[u8], count: usize) -> Result<Vec<usize>, RowError> {
    row_ends_of(buf, count, &WIDTHS)
}

/// Columns of the first RowBinary layout (spool format 1): every column up to `pageview_id`.
/// The columns added since are fixed-width and last, so an old row becomes a current one by
/// appending their zero values ("not sent").
pub const V1_COLUMN_COUNT: usize = COLUMN_COUNT - 2;
const V1_TAIL: usize = 1 + 4; // depth_from (u8) + duration_from_ms (u32)

/// Rows of the first layout ([`V1_COLUMN_COUNT`] columns), rewritten in the current one, with
/// the end offset of each.
pub fn upgrade_v1(buf: &[u8], count: usize) -> Result<(Vec<u8>, Vec<usize>), RowError> {
    let old_ends = row_ends_of(buf, count, &WIDTHS[..V1_COLUMN_COUNT])?;
    let mut out = Vec::with_capacity(buf.len() + count * V1_TAIL);
    let mut ends = Vec::with_capacity(count);
    let mut start = 0;
    for end in old_ends {
        out.extend_from_slice(&buf[start..end]);
        out.extend_from_slice(&[0; V1_TAIL]);
        ends.push(out.len());
        start = end;
    }
    Ok((out, ends))
}

fn row_ends_of(buf: &[u8], count: usize, widths: &[u8]) -> Result<Vec<usize>, RowError> {
    let mut ends = Vec::with_capacity(count);
    let mut pos = 0usize;
    while pos < buf.len() {
        for &w in widths {
            if w > 0 {
                pos += usize::from(w);
                continue;
            }
            // A string: its length prefix, usually one byte.
            match buf.get(pos) {
                Some(&len) if len < 0x80 => pos += 1 + usize::from(len),
                _ => {
                    read_bytes(buf, &mut pos)?.ok_or(RowError::CutShort)?;
                }
            }
        }
        if pos > buf.len() {
            return Err(RowError::CutShort);
        }
        ends.push(pos);
    }
    if ends.len() != count {
        return Err(RowError::Count {
            said: count,
            held: ends.len(),
        });
    }
    Ok(ends)
}

/// Every row of `buf`, which must hold exactly `count` whole rows, borrowing their strings.
pub fn decode_all(buf: &[u8], count: usize) -> Result<Vec<EventRow<'_>>, RowError> {
    let mut pos = 0;
    let mut rows = Vec::with_capacity(count);
    while pos < buf.len() {
        rows.push(EventRow::decode(buf, &mut pos)?);
    }
    if rows.len() != count {
        return Err(RowError::Count {
            said: count,
            held: rows.len(),
        });
    }
    Ok(rows)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A row in which every column holds a value no other column holds, so that any swap or
    /// omission shows.
    pub(crate) fn distinct_row() -> Event {
        let mut n = 0u64;
        EventRow::from_cells(|i| {
            n += 1;
            let c = COLUMNS[i];
            Ok(match c.kind {
                Kind::Str | Kind::LowStr => Cell::Str(Cow::Owned(format!("{}-value", c.name))),
                Kind::DateTime => Cell::U(1_700_000_000 + n * 1000),
                Kind::Millis => Cell::U(100 + n),
                Kind::Flag => Cell::U(1),
                Kind::U8 => Cell::U(10 + n),
                Kind::U16 => Cell::U(1000 + n),
                Kind::U32 => Cell::U(100_000 + n),
                Kind::I32 => Cell::I(-(n as i32) * 7),
            })
        })
        .unwrap()
    }

    #[test]
    fn rows_round_trip_and_cut_apart() {
        let a = distinct_row();
        let b = Event {
            event_id: "é".repeat(100).into(), // a length needing two varint bytes
            x: -7,
            ..distinct_row()
        };
        let mut buf = Vec::new();
        a.encode(&mut buf);
        let first_end = buf.len();
        b.encode(&mut buf);
        let mut pos = 0;
        assert_eq!(EventRow::decode(&buf, &mut pos).unwrap(), a);
        assert_eq!(pos, first_end);
        assert_eq!(EventRow::decode(&buf, &mut pos).unwrap(), b);
        assert_eq!(decode_all(&buf, 2).unwrap().len(), 2);
        assert!(matches!(
            decode_all(&buf, 2).unwrap()[0].site,
            Cow::Borrowed(_)
        ));
        assert_eq!(row_ends(&buf, 2).unwrap(), [first_end, buf.len()]);
        assert!(row_ends(&buf[..buf.len() - 1], 2).is_err());
        assert!(row_ends(&buf, 1)
            .unwrap_err()
            .to_string()
            .contains("says 1 rows"));
        assert!(decode_all(&buf, 3)
            .unwrap_err()
            .to_string()
            .contains("says 3 rows"));
        assert!(decode_all(&buf[..buf.len() - 1], 2).is_err());
    }

    #[test]
    fn rows_stored_before_a_column_existed_still_read() {
        // A dead-letter row of a version without the analytics columns.
        let old = r#"{"event_id":"e1","site":"s","type":"click","x":5,"ip":"203.0.113.0"}"#;
        let e: Event = serde_json::from_str(old).unwrap();
        assert_eq!((e.event_id.as_ref(), e.x, e.elem_x), ("e1", 5, 0));
        assert_eq!(e.device_class, "");
    }

    #[test]
    fn every_column_is_documented() {
        let doc = include_str!("../docs/schema.md");
        for c in COLUMNS
            .iter()
            .map(|c| c.name)
            .chain(SERVER_COLUMNS.iter().map(|c| c.0))
        {
            assert!(
                doc.contains(&format!("`{c}`")),
                "docs/schema.md does not describe column `{c}`"
            );
        }
    }

    #[test]
    fn cells_follow_the_column_table() {
        let r = distinct_row();
        let cells = r.cells();
        assert_eq!(cells.len(), COLUMNS.len());
        for (c, v) in COLUMNS.iter().zip(&cells) {
            match (c.kind.is_text(), v) {
                (true, Cell::Str(s)) => assert_eq!(s, &format!("{}-value", c.name)),
                (false, Cell::U(_) | Cell::I(_)) => {}
                _ => panic!("column {} holds {v:?}", c.name),
            }
        }
        let back = EventRow::from_cells(|i| Ok(cells[i].clone())).unwrap();
        assert_eq!(back, r);
        let err = EventRow::from_cells(|_| Ok(Cell::U(1))).unwrap_err();
        assert_eq!(err.to_string(), "column event_id: wrong type");
        assert!(insert_columns().starts_with("event_id, site, type, name, ts, ts_ms,"));
    }

    /// The RowBinary the `clickhouse` crate itself writes for the same row, captured from the
    /// body of its insert request, must equal ours byte for byte.
    #[tokio::test]
    async fn encode_matches_the_clickhouse_crate_byte_for_byte() {
        use axum::body::Bytes;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Bytes)>();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri, body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((uri.to_string(), body));
                ""
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let client = clickhouse::Client::default()
            .with_url(format!("http://{addr}"))
            .with_compression(clickhouse::Compression::None)
            .with_validation(false);
        let rows = [
            distinct_row(),
            Event {
                title: "ünïcode \" and a long one ".repeat(20).into(),
                ..distinct_row()
            },
        ];
        let mut insert = client.insert::<Event>("events").await.unwrap();
        for r in &rows {
            insert.write(r).await.unwrap();
        }
        insert.end().await.unwrap();
        let (uri, body) = rx.recv().await.unwrap();
        let mut ours = Vec::new();
        for r in &rows {
            r.encode(&mut ours);
        }
        assert_eq!(body.as_ref(), &ours[..], "RowBinary differs");
        let query = url::form_urlencoded::parse(uri.split_once('?').unwrap().1.as_bytes())
            .find(|(k, _)| k == "query")
            .unwrap()
            .1
            .replace('`', "");
        assert!(
            query.contains(&insert_columns().replace(' ', "")) || query.contains(&insert_columns()),
            "the crate names the same columns in the same order: {query}"
        );
    }
}

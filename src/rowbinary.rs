//! The events table's rows in ClickHouse's `RowBinary` format: what a spool record holds and,
//! byte for byte, what the sink sends to ClickHouse.
//!
//! Encoding once, when a request is accepted, means the sink's hot path is a copy: it
//! concatenates the records of a batch and posts them as `INSERT INTO events (COLUMNS) FORMAT
//! RowBinary`, with no per-row decoding or serialisation, and a batch resent after a crash is
//! literally the same bytes (which ClickHouse ≥ 21.3 deduplicates by block hash).
//!
//! Rows are decoded only off the hot path: to isolate the rows ClickHouse refuses, to
//! dead-letter them, and by tests. The layout is [`COLUMNS`] in order: strings as
//! `varuint length, bytes`, integers little-endian at their column width (DateTime as UInt32).
//! Columns are named in the INSERT, so a reordered table cannot shift values between columns.

use std::borrow::Cow;

use crate::event::{Event, EventRef};

/// The insert's column list, in row order.
pub const COLUMNS: &str = "event_id, site, type, name, ts, ts_ms, received_at, url, host, path, \
     referrer, title, session_id, visitor_id, x, y, viewport_w, viewport_h, doc_w, doc_h, \
     selector, text, rage, scroll_depth, duration_ms, props, browser, os, device, user_agent, ip";

/// ClickHouse's unsigned LEB128, as it prefixes strings in RowBinary and Native (and counts in
/// Native block headers).
pub(crate) fn write_varuint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A length-prefixed byte string.
pub(crate) fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_varuint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Reads a [`write_varuint`] at `pos`: `Ok(None)` (and `pos` unmoved) if `buf` ends first,
/// an error if it runs past the 10 bytes a u64 needs.
pub(crate) fn read_varuint(buf: &[u8], pos: &mut usize) -> Result<Option<u64>, String> {
    let mut v = 0u64;
    for i in 0..10 {
        let Some(&byte) = buf.get(*pos + i) else {
            return Ok(None);
        };
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *pos += i + 1;
            return Ok(Some(v));
        }
    }
    Err("malformed length: varuint longer than 10 bytes".into())
}

/// Reads a [`write_bytes`] at `pos`: `Ok(None)` (and `pos` unmoved) if not all of it is in
/// `buf`.
pub(crate) fn read_bytes<'a>(buf: &'a [u8], pos: &mut usize) -> Result<Option<&'a [u8]>, String> {
    let mut p = *pos;
    let Some(len) = read_varuint(buf, &mut p)? else {
        return Ok(None);
    };
    match usize::try_from(len) {
        Ok(len) if buf.len() - p >= len => {
            *pos = p + len;
            Ok(Some(&buf[p..p + len]))
        }
        _ => Ok(None),
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    write_bytes(out, s.as_bytes());
}

/// Appends one row.
pub fn encode(e: &Event, out: &mut Vec<u8>) {
    string(out, &e.event_id);
    string(out, &e.site);
    string(out, &e.kind);
    string(out, &e.name);
    out.extend_from_slice(&e.ts.to_le_bytes());
    out.extend_from_slice(&e.ts_ms.to_le_bytes());
    out.extend_from_slice(&e.received_at.to_le_bytes());
    string(out, &e.url);
    string(out, &e.host);
    string(out, &e.path);
    string(out, &e.referrer);
    string(out, &e.title);
    string(out, &e.session_id);
    string(out, &e.visitor_id);
    out.extend_from_slice(&e.x.to_le_bytes());
    out.extend_from_slice(&e.y.to_le_bytes());
    out.extend_from_slice(&e.viewport_w.to_le_bytes());
    out.extend_from_slice(&e.viewport_h.to_le_bytes());
    out.extend_from_slice(&e.doc_w.to_le_bytes());
    out.extend_from_slice(&e.doc_h.to_le_bytes());
    string(out, &e.selector);
    string(out, &e.text);
    out.push(e.rage);
    out.push(e.scroll_depth);
    out.extend_from_slice(&e.duration_ms.to_le_bytes());
    string(out, &e.props);
    string(out, &e.browser);
    string(out, &e.os);
    string(out, &e.device);
    string(out, &e.user_agent);
    string(out, &e.ip);
}

/// Reads rows back, borrowing their strings.
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes consumed so far (the end of the last row read).
    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn is_done(&self) -> bool {
        self.pos == self.buf.len()
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let b = self
            .buf
            .get(self.pos..self.pos + N)
            .ok_or("row cut short")?
            .try_into()
            .expect("N bytes");
        self.pos += N;
        Ok(b)
    }

    fn str(&mut self) -> Result<Cow<'a, str>, String> {
        let b = read_bytes(self.buf, &mut self.pos)?.ok_or("row cut short")?;
        Ok(Cow::Borrowed(
            std::str::from_utf8(b).map_err(|e| e.to_string())?,
        ))
    }

    /// The next row.
    pub fn row(&mut self) -> Result<EventRef<'a>, String> {
        Ok(EventRef {
            event_id: self.str()?,
            site: self.str()?,
            kind: self.str()?,
            name: self.str()?,
            ts: u32::from_le_bytes(self.bytes()?),
            ts_ms: u16::from_le_bytes(self.bytes()?),
            received_at: u32::from_le_bytes(self.bytes()?),
            url: self.str()?,
            host: self.str()?,
            path: self.str()?,
            referrer: self.str()?,
            title: self.str()?,
            session_id: self.str()?,
            visitor_id: self.str()?,
            x: i32::from_le_bytes(self.bytes()?),
            y: i32::from_le_bytes(self.bytes()?),
            viewport_w: u16::from_le_bytes(self.bytes()?),
            viewport_h: u16::from_le_bytes(self.bytes()?),
            doc_w: u32::from_le_bytes(self.bytes()?),
            doc_h: u32::from_le_bytes(self.bytes()?),
            selector: self.str()?,
            text: self.str()?,
            rage: u8::from_le_bytes(self.bytes()?),
            scroll_depth: u8::from_le_bytes(self.bytes()?),
            duration_ms: u32::from_le_bytes(self.bytes()?),
            props: self.str()?,
            browser: self.str()?,
            os: self.str()?,
            device: self.str()?,
            user_agent: self.str()?,
            ip: self.str()?,
        })
    }
}

/// The end offset of each row of `buf`, which must hold exactly `count` whole rows: a
/// structural scan (lengths and widths only), for cutting a batch into sub-ranges.
pub fn row_ends(buf: &[u8], count: usize) -> Result<Vec<usize>, String> {
    // Per row, in column order: 0 = a string, n = n fixed bytes.
    const LAYOUT: [u8; 31] = [
        0, 0, 0, 0, 4, 2, 4, 0, 0, 0, 0, 0, 0, 0, 4, 4, 2, 2, 4, 4, 0, 0, 1, 1, 4, 0, 0, 0, 0, 0, 0,
    ];
    let mut ends = Vec::with_capacity(count);
    let mut pos = 0usize;
    let short = || "row cut short".to_string();
    while pos < buf.len() {
        for width in LAYOUT {
            if width > 0 {
                pos += usize::from(width);
                continue;
            }
            read_bytes(buf, &mut pos)?.ok_or_else(short)?;
        }
        if pos > buf.len() {
            return Err(short());
        }
        ends.push(pos);
    }
    if ends.len() != count {
        return Err(format!("record says {count} rows but holds {}", ends.len()));
    }
    Ok(ends)
}

/// Every row of `buf`, which must hold exactly `count` whole rows.
pub fn decode_all(buf: &[u8], count: usize) -> Result<Vec<EventRef<'_>>, String> {
    let mut d = Decoder::new(buf);
    let mut rows = Vec::with_capacity(count);
    while !d.is_done() {
        rows.push(d.row()?);
    }
    if rows.len() != count {
        return Err(format!("record says {count} rows but holds {}", rows.len()));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compactor::tests_support::event;

    #[test]
    fn rows_round_trip() {
        let a = event();
        let b = Event {
            event_id: "é".repeat(100), // a length needing two varint bytes
            x: -7,
            rage: 1,
            ..event()
        };
        let mut buf = Vec::new();
        encode(&a, &mut buf);
        let first_end = buf.len();
        encode(&b, &mut buf);
        let mut d = Decoder::new(&buf);
        assert_eq!(d.row().unwrap().to_event(), a);
        assert_eq!(d.pos(), first_end);
        assert_eq!(d.row().unwrap().to_event(), b);
        assert!(d.is_done());
        assert_eq!(decode_all(&buf, 2).unwrap().len(), 2);
        assert_eq!(row_ends(&buf, 2).unwrap(), [first_end, buf.len()]);
        assert!(row_ends(&buf[..buf.len() - 1], 2).is_err());
        assert!(row_ends(&buf, 1).unwrap_err().contains("says 1 rows"));
        assert!(decode_all(&buf, 3).unwrap_err().contains("says 3 rows"));
        assert!(decode_all(&buf[..buf.len() - 1], 2).is_err());
    }

    #[test]
    fn column_list_matches_the_row_layout() {
        // Same order as the struct the clickhouse crate used to serialise (and the table).
        let names: Vec<&str> = COLUMNS.split(", ").collect();
        assert_eq!(names.len(), 31);
        assert_eq!(names[2], "type");
        assert_eq!(names[30], "ip");
        let mut buf = Vec::new();
        encode(&event(), &mut buf);
        // 19 strings, the rest fixed width: 3 × 4 + 2 (ts, ts_ms, received_at), 4 × 4 + 2 × 2
        // (x, y, viewport), 2 × 4 (doc), 1 + 1 + 4 (rage, scroll_depth, duration_ms).
        let e = event();
        let strings = [
            &e.event_id,
            &e.site,
            &e.kind,
            &e.name,
            &e.url,
            &e.host,
            &e.path,
            &e.referrer,
            &e.title,
            &e.session_id,
            &e.visitor_id,
            &e.selector,
            &e.text,
            &e.props,
            &e.browser,
            &e.os,
            &e.device,
            &e.user_agent,
            &e.ip,
        ];
        let text: usize = strings.iter().map(|s| 1 + s.len()).sum();
        assert_eq!(
            buf.len(),
            text + 4 + 2 + 4 + 4 + 4 + 2 + 2 + 4 + 4 + 1 + 1 + 4
        );
    }
}

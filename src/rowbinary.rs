//! ClickHouse's binary encodings shared by the events row ([`crate::row`]), the spool
//! records and the compactor's `Native` decoder: unsigned LEB128 lengths and length-prefixed
//! byte strings. The events row's own layout (which columns, which widths) lives in
//! [`crate::row`]; this module knows only the primitives.
//!
//! A spool record holds RowBinary rows, and byte for byte that is what the sink sends
//! ClickHouse (`INSERT INTO events (COLUMNS) FORMAT RowBinary`): encoding once, at intake,
//! makes the sink's hot path a copy, and a batch resent after a crash literally the same
//! bytes.

/// Why bytes are not a valid row (a bug or a corrupt record; CRC32C already passed).
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("row cut short")]
    CutShort,
    #[error("malformed length: varuint longer than 10 bytes")]
    Varuint,
    #[error("text is not UTF-8: {0}")]
    Utf8(#[from] std::str::Utf8Error),
    #[error("record says {said} rows but holds {held}")]
    Count { said: usize, held: usize },
    #[error("column {0}: wrong type")]
    WrongType(&'static str),
    #[error("column {0} missing")]
    Missing(String),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

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
pub(crate) fn read_varuint(buf: &[u8], pos: &mut usize) -> Result<Option<u64>, RowError> {
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
    Err(RowError::Varuint)
}

/// Reads a [`write_bytes`] at `pos`: `Ok(None)` (and `pos` unmoved) if not all of it is in
/// `buf`.
pub(crate) fn read_bytes<'a>(buf: &'a [u8], pos: &mut usize) -> Result<Option<&'a [u8]>, RowError> {
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

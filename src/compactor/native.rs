//! ClickHouse's `Native` output format, decoded straight into the archive's Arrow columns.
//!
//! The export query ([`export_columns`]) selects every column under a fixed name and type, plus
//! `_h`, ClickHouse's `cityHash64` of the row. `Native` is columnar: a block is
//! `varuint columns, varuint rows`, then per column its name, its type and its values (strings
//! as `varuint length, bytes`; integers as little-endian fixed width), which map onto Arrow
//! buffers with one copy and no per-value allocation. ClickHouse's own formatting is also
//! cheapest for this format (about 30% less server CPU than `RowBinary` on 18.16).
//!
//! The decoder is fed HTTP chunks as they arrive, in any sizes: it resumes in the middle of a
//! column, one whole value at a time, so nothing is parsed twice. Completed blocks accumulate
//! until a record batch is full; a batch never splits a block.
//!
//! Why hand-written: the `clickhouse` crate reads rows into structs one at a time (serde per
//! value, an allocation per string), and its typed readers need `RowBinaryWithNamesAndTypes`,
//! which 18.16 lacks; decoding `Native` straight into Arrow buffers is what lets the export
//! reach about 1M rows/s here (docs/benchmarks.md, `cargo bench --bench archive`). The file is
//! over 500 lines because a third of it is its tests (every chunk split, every error).
//!
//! Only this query's types are understood. LowCardinality columns (current servers) arrive as
//! plain `String` because the query sets `low_cardinality_allow_in_native_format = 0`; any
//! other name or type is an error that names the column, never a silent misread.

use std::sync::Arc;

use arrow_array::{
    ArrayRef, BooleanArray, Int32Array, RecordBatch, StringArray, TimestampMillisecondArray,
    UInt16Array, UInt32Array, UInt8Array,
};
use arrow_buffer::{Buffer, OffsetBuffer, ScalarBuffer};

use super::checksum::{sql_row_hash, Checksum};
use super::parquet_io::schema;
use super::CompactError;
use crate::row::{Kind, COLUMNS};
use crate::rowbinary::{read_bytes, read_varuint};

/// Where one selected column goes: a column of the events row ([`COLUMNS`] index), or `_h`.
#[derive(Clone, Copy, Debug)]
enum Slot {
    Col(usize),
    Hash,
}

/// The type ClickHouse names in a `Native` answer to the export query for a column kind.
fn native_type(kind: Kind) -> &'static str {
    match kind {
        // DateTime is selected as its UInt32; LowCardinality arrives plain (EXPORT_SETTINGS).
        Kind::DateTime => "UInt32",
        k => k.clickhouse_type(false),
    }
}

impl Slot {
    fn type_name(self) -> &'static str {
        match self {
            Slot::Col(i) => native_type(COLUMNS[i].kind),
            Slot::Hash => "UInt64",
        }
    }

    fn width(self) -> usize {
        match self {
            Slot::Col(i) => COLUMNS[i].kind.width(),
            Slot::Hash => 8,
        }
    }
}

/// The selected columns in query order: (name in the result, SQL expression, slot).
fn layout() -> Vec<(String, String, Slot)> {
    let mut cols: Vec<(String, String, Slot)> = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| match c.kind {
            // DateTime as plain seconds under a new name, so that the column's name in the
            // query's WHERE still means the column.
            Kind::DateTime => {
                let alias = format!("{}__s", c.name);
                let expr = format!("toUInt32({}) AS {alias}", c.name);
                (alias, expr, Slot::Col(i))
            }
            _ => (c.name.to_string(), c.name.to_string(), Slot::Col(i)),
        })
        .collect();
    cols.push(("_h".into(), format!("{} AS _h", sql_row_hash()), Slot::Hash));
    cols
}

/// The export query's select list, in the order [`NativeDecoder`] expects.
pub(super) fn export_columns() -> String {
    layout()
        .into_iter()
        .map(|(_, expr, _)| expr)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The decoded values of one column of the pending batch.
enum Buf {
    Str { offsets: Vec<i32>, values: Vec<u8> },
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
}

impl Buf {
    fn for_kind(kind: Kind) -> Self {
        match kind {
            Kind::Str | Kind::LowStr => Buf::Str {
                offsets: vec![0],
                values: Vec::new(),
            },
            Kind::Flag | Kind::U8 => Buf::U8(Vec::new()),
            Kind::Millis | Kind::U16 => Buf::U16(Vec::new()),
            Kind::DateTime | Kind::U32 => Buf::U32(Vec::new()),
            Kind::I32 => Buf::I32(Vec::new()),
        }
    }

    /// An empty buffer sized like `self`: the next batch is about as large, and growing a
    /// buffer by doubling copies it again and again.
    fn empty_like(&self) -> Self {
        match self {
            Buf::Str { offsets, values } => {
                let mut o = Vec::with_capacity(offsets.len());
                o.push(0);
                Buf::Str {
                    offsets: o,
                    values: Vec::with_capacity(values.len()),
                }
            }
            Buf::U8(v) => Buf::U8(Vec::with_capacity(v.len())),
            Buf::U16(v) => Buf::U16(Vec::with_capacity(v.len())),
            Buf::U32(v) => Buf::U32(Vec::with_capacity(v.len())),
            Buf::I32(v) => Buf::I32(Vec::with_capacity(v.len())),
        }
    }
}

fn new_bufs() -> Vec<Buf> {
    COLUMNS.iter().map(|c| Buf::for_kind(c.kind)).collect()
}

/// Where the decoder is inside the stream.
enum State {
    /// Before a block header.
    Header,
    /// Inside block with `rows` rows, at column `col`; `done` values of it are decoded
    /// (`None` while the column's name and type are still ahead).
    Column {
        rows: usize,
        columns: usize,
        col: usize,
        done: Option<usize>,
    },
}

/// Decodes a `Native` stream chunk by chunk into record batches of the archive schema.
pub(super) struct NativeDecoder {
    layout: Vec<(String, String, Slot)>,
    buf: Vec<u8>,
    state: State,
    cols: Vec<Buf>,
    /// Rows in `cols` from completed blocks.
    pending_rows: usize,
    batch_rows: usize,
    /// Rows and sum of `_h` of every completed block.
    seen: Checksum,
    /// Sum of `_h` of the block being decoded.
    block_hash: u64,
}

impl NativeDecoder {
    /// `batch_rows`: a record batch is emitted once this many rows of whole blocks are decoded.
    pub(super) fn new(batch_rows: usize) -> Self {
        Self {
            layout: layout(),
            buf: Vec::new(),
            state: State::Header,
            cols: new_bufs(),
            pending_rows: 0,
            batch_rows,
            seen: Checksum::default(),
            block_hash: 0,
        }
    }

    /// Rows of completed blocks and the sum of ClickHouse's hashes of them.
    pub(super) fn seen(&self) -> Checksum {
        self.seen
    }

    /// Decodes as much of `chunk` (and what was left over before it) as possible; calls `emit`
    /// with every record batch that fills up.
    pub(super) fn feed(
        &mut self,
        chunk: &[u8],
        emit: &mut dyn FnMut(RecordBatch) -> Result<(), CompactError>,
    ) -> Result<(), CompactError> {
        self.buf.extend_from_slice(chunk);
        let mut pos = 0;
        let result = loop {
            match self.step(&mut pos) {
                Ok(Some(())) => {
                    if self.pending_rows >= self.batch_rows && matches!(self.state, State::Header) {
                        let batch = self.take_batch()?;
                        if let Err(e) = emit(batch) {
                            break Err(e);
                        }
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        // What is left is at most one partial value or header.
        self.buf.drain(..pos);
        result
    }

    /// Ends the stream; returns the last (partial) batch, if any rows are pending.
    pub(super) fn finish(mut self) -> Result<(Option<RecordBatch>, Checksum), CompactError> {
        if !self.buf.is_empty() || !matches!(self.state, State::Header) {
            return Err(CompactError::Native(format!(
                "ClickHouse's answer ended inside a block ({} bytes left undecoded)",
                self.buf.len()
            )));
        }
        let last = if self.pending_rows > 0 {
            Some(self.take_batch()?)
        } else {
            None
        };
        Ok((last, self.seen))
    }

    /// One step: a block header, a column header, or as many values of the current column as
    /// are buffered. `Ok(None)` when more bytes are needed.
    fn step(&mut self, pos: &mut usize) -> Result<Option<()>, CompactError> {
        let buf = &self.buf[..];
        match self.state {
            State::Header => {
                let mut p = *pos;
                let Some(columns) = read_varuint(buf, &mut p)? else {
                    return Ok(None);
                };
                let Some(rows) = read_varuint(buf, &mut p)? else {
                    return Ok(None);
                };
                let columns = columns as usize;
                if columns != self.layout.len() {
                    return Err(CompactError::Native(format!(
                        "ClickHouse sent {columns} columns, the export query selects {}",
                        self.layout.len()
                    )));
                }
                *pos = p;
                self.block_hash = 0;
                self.state = State::Column {
                    rows: rows as usize,
                    columns,
                    col: 0,
                    done: None,
                };
                Ok(Some(()))
            }
            State::Column {
                rows,
                columns,
                col,
                done,
            } => {
                if col == columns {
                    self.pending_rows += rows;
                    self.seen.rows += rows as u64;
                    self.seen.sum = self.seen.sum.wrapping_add(self.block_hash);
                    self.state = State::Header;
                    return Ok(Some(()));
                }
                let slot = self.layout[col].2;
                let name = self.layout[col].0.as_str();
                let Some(done) = done else {
                    let mut p = *pos;
                    let Some(got_name) = read_bytes(buf, &mut p)? else {
                        return Ok(None);
                    };
                    let Some(got_type) = read_bytes(buf, &mut p)? else {
                        return Ok(None);
                    };
                    if got_name != name.as_bytes() || got_type != slot.type_name().as_bytes() {
                        return Err(CompactError::Native(format!(
                            "ClickHouse sent column {} {} where the export expects {name} {}",
                            String::from_utf8_lossy(got_name),
                            String::from_utf8_lossy(got_type),
                            slot.type_name()
                        )));
                    }
                    *pos = p;
                    self.state = State::Column {
                        rows,
                        columns,
                        col,
                        done: Some(0),
                    };
                    return Ok(Some(()));
                };
                let before = done;
                let done = self.values(slot, rows - done, pos)? + done;
                if done == rows {
                    self.state = State::Column {
                        rows,
                        columns,
                        col: col + 1,
                        done: None,
                    };
                    return Ok(Some(()));
                }
                self.state = State::Column {
                    rows,
                    columns,
                    col,
                    done: Some(done),
                };
                if done == before {
                    Ok(None)
                } else {
                    Ok(Some(()))
                }
            }
        }
    }

    /// Decodes up to `want` values of one column from the buffer; returns how many.
    fn values(&mut self, slot: Slot, want: usize, pos: &mut usize) -> Result<usize, CompactError> {
        let buf = &self.buf[..];
        let i = match slot {
            Slot::Col(i) => i,
            Slot::Hash => {
                let n = want.min((buf.len() - *pos) / 8);
                for b in buf[*pos..*pos + n * 8].chunks_exact(8) {
                    let h = u64::from_le_bytes(b.try_into().expect("8 bytes"));
                    self.block_hash = self.block_hash.wrapping_add(h);
                }
                *pos += n * 8;
                return Ok(n);
            }
        };
        if let Buf::Str { offsets, values } = &mut self.cols[i] {
            let mut n = 0;
            while n < want {
                let Some(s) = read_bytes(buf, pos)? else {
                    break;
                };
                values.extend_from_slice(s);
                let end = i32::try_from(values.len()).map_err(|_| {
                    CompactError::Native(format!(
                        "column {} exceeds 2 GiB in one record batch",
                        COLUMNS[i].name
                    ))
                })?;
                offsets.push(end);
                n += 1;
            }
            return Ok(n);
        }
        let width = slot.width();
        let n = want.min((buf.len() - *pos) / width);
        let bytes = &buf[*pos..*pos + n * width];
        *pos += n * width;
        match &mut self.cols[i] {
            Buf::U8(v) => v.extend_from_slice(bytes),
            Buf::U16(v) => v.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]])),
            ),
            Buf::U32(v) => v.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
            Buf::I32(v) => v.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
            Buf::Str { .. } => unreachable!("handled above"),
        }
        Ok(n)
    }

    /// The pending rows as a record batch of the archive schema; the buffers start over.
    fn take_batch(&mut self) -> Result<RecordBatch, CompactError> {
        let next: Vec<Buf> = self.cols.iter().map(Buf::empty_like).collect();
        let mut cols: Vec<Option<Buf>> = std::mem::replace(&mut self.cols, next)
            .into_iter()
            .map(Some)
            .collect();
        self.pending_rows = 0;
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(COLUMNS.len());
        for (i, c) in COLUMNS.iter().enumerate() {
            if c.kind == Kind::Millis {
                continue; // folded into the timestamp before it
            }
            let buf = cols[i].take().expect("each column once");
            let array: ArrayRef = match (c.kind, buf) {
                (_, Buf::Str { offsets, values }) => Arc::new(
                    StringArray::try_new(
                        OffsetBuffer::new(ScalarBuffer::from(offsets)),
                        Buffer::from_vec(values),
                        None,
                    )
                    .map_err(|e| CompactError::Native(format!("column {}: {e}", c.name)))?,
                ),
                (Kind::DateTime, Buf::U32(secs)) => {
                    let ms: Vec<i64> = match COLUMNS.get(i + 1).map(|n| n.kind) {
                        Some(Kind::Millis) => match cols[i + 1].as_ref() {
                            Some(Buf::U16(millis)) => secs
                                .iter()
                                .zip(millis)
                                .map(|(s, ms)| i64::from(*s) * 1000 + i64::from(*ms))
                                .collect(),
                            _ => unreachable!("a Millis column has a U16 buffer"),
                        },
                        _ => secs.iter().map(|s| i64::from(*s) * 1000).collect(),
                    };
                    Arc::new(TimestampMillisecondArray::from(ms).with_timezone("UTC"))
                }
                (Kind::Flag, Buf::U8(v)) => {
                    Arc::new(v.iter().map(|b| Some(*b != 0)).collect::<BooleanArray>())
                }
                (_, Buf::U8(v)) => Arc::new(UInt8Array::from(v)),
                (_, Buf::U16(v)) => Arc::new(UInt16Array::from(v)),
                (_, Buf::U32(v)) => Arc::new(UInt32Array::from(v)),
                (_, Buf::I32(v)) => Arc::new(Int32Array::from(v)),
            };
            arrays.push(array);
        }
        Ok(RecordBatch::try_new(schema(), arrays)?)
    }
}

/// The archive's record batches of `rows`, made the way the compactor makes them: through a
/// `Native` stream decoded by [`NativeDecoder`]. For benchmarks of the Parquet writer.
#[doc(hidden)]
pub fn record_batches(rows: &[crate::event::Event]) -> Vec<RecordBatch> {
    let mut d = NativeDecoder::new(super::parquet_io::BATCH_ROWS);
    let mut out = Vec::new();
    for chunk in rows.chunks(8192) {
        d.feed(&encode_block(chunk, |_| 0), &mut |b| {
            out.push(b);
            Ok(())
        })
        .expect("our own blocks decode");
    }
    out.extend(d.finish().expect("whole blocks").0);
    out
}

/// A `Native` block of the export's layout holding `rows`, as ClickHouse sends it, with `_h`
/// from `hash`. For tests and benchmarks of the export path, not used by the compactor.
pub(super) fn encode_block(rows: &[crate::event::Event], hash: impl Fn(usize) -> u64) -> Vec<u8> {
    use crate::row::Cell;
    use crate::rowbinary::{write_bytes, write_varuint};
    let mut out = Vec::new();
    let l = layout();
    write_varuint(&mut out, l.len() as u64);
    write_varuint(&mut out, rows.len() as u64);
    let cells: Vec<_> = rows.iter().map(|r| r.cells()).collect();
    for (name, _, slot) in l {
        write_bytes(&mut out, name.as_bytes());
        write_bytes(&mut out, slot.type_name().as_bytes());
        for (r, row) in cells.iter().enumerate() {
            let Slot::Col(i) = slot else {
                out.extend_from_slice(&hash(r).to_le_bytes());
                continue;
            };
            match (&row[i], COLUMNS[i].kind.width()) {
                (Cell::Str(s), _) => write_bytes(&mut out, s.as_bytes()),
                (Cell::U(v), w) => out.extend_from_slice(&v.to_le_bytes()[..w]),
                (Cell::I(v), _) => out.extend_from_slice(&v.to_le_bytes()),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    /// A Native block of `rows` rows numbered from `first`, each value telling its row.
    fn block(rows: usize, first: usize) -> Vec<u8> {
        let rows: Vec<Event> = (first..first + rows).map(numbered).collect();
        encode_block(&rows, |r| (first + r) as u64 * 3)
    }

    fn numbered(r: usize) -> Event {
        use crate::row::Cell;
        Event::from_cells(|i| {
            let c = COLUMNS[i];
            Ok(match c.kind {
                Kind::Str | Kind::LowStr => {
                    Cell::Str(format!("{}-{r}-{}", c.name, "é".repeat(i)).into())
                }
                Kind::Flag => Cell::U((r % 2) as u64),
                Kind::Millis => Cell::U((r % 1000) as u64),
                Kind::U8 => Cell::U((r % 200) as u64),
                Kind::U16 => Cell::U(r as u64),
                Kind::DateTime | Kind::U32 => Cell::U(1_700_000_000 + r as u64),
                Kind::I32 => Cell::I(-(r as i32)),
            })
        })
        .unwrap()
    }

    fn decode(stream: &[u8], chunk: usize, batch_rows: usize) -> (Vec<RecordBatch>, Checksum) {
        let mut d = NativeDecoder::new(batch_rows);
        let mut batches = Vec::new();
        for c in stream.chunks(chunk) {
            d.feed(c, &mut |b| {
                batches.push(b);
                Ok(())
            })
            .unwrap();
        }
        let (last, sum) = d.finish().unwrap();
        batches.extend(last);
        (batches, sum)
    }

    #[test]
    fn decodes_blocks_split_anywhere() {
        let mut stream = block(300, 0);
        stream.extend(block(200, 300));
        stream.extend(block(0, 500)); // ClickHouse may end with an empty block
        let whole = decode(&stream, stream.len(), 1000);
        for chunk in [1, 2, 3, 7, 64, 4096] {
            let (batches, sum) = decode(&stream, chunk, 1000);
            assert_eq!(batches, whole.0, "chunk size {chunk}");
            assert_eq!(sum, whole.1);
        }
        let (batches, sum) = whole;
        assert_eq!(sum.rows, 500);
        assert_eq!(sum.sum, (0..500u64).map(|r| r * 3).sum::<u64>());
        assert_eq!(batches.len(), 1);
        let b = &batches[0];
        assert_eq!(b.num_rows(), 500);
        let rows = crate::compactor::parquet_io::from_batch(b).unwrap();
        for r in [0, 7, 499] {
            assert_eq!(rows[r], numbered(r), "row {r}, every column");
        }
    }

    #[test]
    fn batches_never_split_a_block() {
        let mut stream = Vec::new();
        for k in 0..5 {
            stream.extend(block(100, k * 100));
        }
        let (batches, sum) = decode(&stream, 333, 250);
        let sizes: Vec<usize> = batches.iter().map(|b| b.num_rows()).collect();
        assert_eq!(sizes, [300, 200]);
        assert_eq!(sum.rows, 500);
    }

    #[test]
    fn truncated_or_unexpected_answers_are_errors() {
        let stream = block(10, 0);
        let mut d = NativeDecoder::new(100);
        d.feed(&stream[..stream.len() - 1], &mut |_| Ok(()))
            .unwrap();
        assert!(d
            .finish()
            .unwrap_err()
            .to_string()
            .contains("ended inside a block"));

        // A LowCardinality column (a server ignoring the setting) is named, not misread.
        let mut bad = block(1, 0);
        let at = bad.windows(7).position(|w| w == b"\x04site\x06S").unwrap();
        bad.splice(at + 5..at + 12, *b"\x16LowCardinality(String)");
        let mut d = NativeDecoder::new(100);
        let err = d.feed(&bad, &mut |_| Ok(())).unwrap_err().to_string();
        assert!(err.contains("site LowCardinality(String)"), "{err}");
    }
}

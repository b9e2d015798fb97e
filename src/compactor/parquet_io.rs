//! Events ⇄ Arrow record batches ⇄ Parquet. The archive's schema (docs/archive.md):
//! timestamps are UTC timestamps (`ts` in milliseconds, folding `ts_ms` in), `rage` is a
//! boolean, everything else keeps its ClickHouse type. Files are zstd-compressed, dictionary-
//! encoded, with page statistics, rows sorted like the table (site, type, path, ts) so that
//! readers prune row groups by site, type, path and time.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Int32Builder, StringBuilder, TimestampMillisecondBuilder, UInt16Builder,
    UInt32Builder, UInt8Builder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, TimestampMillisecondType, UInt16Type, UInt32Type, UInt8Type};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnWriter, ArrowRowGroupWriterFactory};
use parquet::arrow::{add_encoded_arrow_schema_to_metadata, ArrowSchemaConverter};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;

use super::checksum::Checksum;
use crate::event::Event;
pub use crate::event::EventRef;

/// Rows per Arrow batch handed to the writer.
pub const BATCH_ROWS: usize = 65_536;

pub fn schema() -> SchemaRef {
    let utc = || Some(Arc::<str>::from("UTC"));
    let s = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        s("event_id"),
        s("site"),
        s("type"),
        s("name"),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, utc()),
            false,
        ),
        Field::new(
            "received_at",
            // Parquet has no second-precision timestamp; milliseconds keep it a timestamp.
            DataType::Timestamp(TimeUnit::Millisecond, utc()),
            false,
        ),
        s("url"),
        s("host"),
        s("path"),
        s("referrer"),
        s("title"),
        s("session_id"),
        s("visitor_id"),
        Field::new("x", DataType::Int32, false),
        Field::new("y", DataType::Int32, false),
        Field::new("viewport_w", DataType::UInt16, false),
        Field::new("viewport_h", DataType::UInt16, false),
        Field::new("doc_w", DataType::UInt32, false),
        Field::new("doc_h", DataType::UInt32, false),
        s("selector"),
        s("text"),
        Field::new("rage", DataType::Boolean, false),
        Field::new("scroll_depth", DataType::UInt8, false),
        Field::new("duration_ms", DataType::UInt32, false),
        s("props"),
        s("browser"),
        s("os"),
        s("device"),
        s("user_agent"),
        s("ip"),
    ]))
}

/// The table's sort key: rows arrive in runs ordered by it, so each row group and page covers
/// a narrow range of it, and its statistics let readers skip whole row groups and pages for a
/// site, an event type, a path or a time range. On every other column min/max span nearly
/// everything (ids, URLs, free text, measurements, or a handful of values present in every row
/// group), so statistics there would cost encoding time (up to a tenth of the export) and
/// prune nothing.
const STATISTICS_COLUMNS: [&str; 4] = ["site", "type", "path", "ts"];

/// Columns that are (nearly) unique per row, where a dictionary only costs time and space.
const PLAIN_COLUMNS: [&str; 2] = ["event_id", "ts"];

pub fn writer_properties(row_group_rows: usize) -> WriterProperties {
    let mut b = WriterProperties::builder()
        // zstd level 1: on these rows both faster and smaller than level 3 (dictionary
        // encoding has already removed most of the redundancy).
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("valid level"),
        ))
        .set_dictionary_enabled(true)
        .set_statistics_enabled(EnabledStatistics::None)
        .set_max_row_group_row_count(Some(row_group_rows))
        .set_created_by(format!("clicktrail {}", env!("CARGO_PKG_VERSION")));
    for c in STATISTICS_COLUMNS {
        b = b.set_column_statistics_enabled(c.into(), EnabledStatistics::Page);
    }
    for c in PLAIN_COLUMNS {
        b = b.set_column_dictionary_enabled(c.into(), false);
    }
    b.build()
}

/// Column builders for one record batch, filled row by row.
pub struct BatchBuilder {
    strings: Vec<StringBuilder>,
    ts: TimestampMillisecondBuilder,
    received: TimestampMillisecondBuilder,
    i32s: [Int32Builder; 2],
    u16s: [UInt16Builder; 2],
    u32s: [UInt32Builder; 3],
    rage: BooleanBuilder,
    depth: UInt8Builder,
    len: usize,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self {
            strings: (0..20).map(|_| StringBuilder::new()).collect(),
            ts: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            received: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            i32s: [Int32Builder::new(), Int32Builder::new()],
            u16s: [UInt16Builder::new(), UInt16Builder::new()],
            u32s: [
                UInt32Builder::new(),
                UInt32Builder::new(),
                UInt32Builder::new(),
            ],
            rage: BooleanBuilder::new(),
            depth: UInt8Builder::new(),
            len: 0,
        }
    }
}

impl BatchBuilder {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, r: &EventRef<'_>) {
        let texts = [
            &r.event_id,
            &r.site,
            &r.kind,
            &r.name,
            &r.url,
            &r.host,
            &r.path,
            &r.referrer,
            &r.title,
            &r.session_id,
            &r.visitor_id,
            &r.selector,
            &r.text,
            &r.props,
            &r.browser,
            &r.os,
            &r.device,
            &r.user_agent,
            &r.ip,
        ];
        for (b, v) in self.strings.iter_mut().zip(texts) {
            b.append_value(v.as_ref());
        }
        self.ts.append_value(r.ts as i64 * 1000 + r.ts_ms as i64);
        self.received.append_value(r.received_at as i64 * 1000);
        self.i32s[0].append_value(r.x);
        self.i32s[1].append_value(r.y);
        self.u16s[0].append_value(r.viewport_w);
        self.u16s[1].append_value(r.viewport_h);
        self.u32s[0].append_value(r.doc_w);
        self.u32s[1].append_value(r.doc_h);
        self.u32s[2].append_value(r.duration_ms);
        self.rage.append_value(r.rage != 0);
        self.depth.append_value(r.scroll_depth);
        self.len += 1;
    }

    /// The rows pushed so far as a record batch; the builder starts over empty.
    pub fn finish(&mut self) -> RecordBatch {
        let mut s: Vec<ArrayRef> = self
            .strings
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        let mut take =
            |i: usize| std::mem::replace(&mut s[i], Arc::new(StringBuilder::new().finish()));
        let columns: Vec<ArrayRef> = vec![
            take(0),
            take(1),
            take(2),
            take(3),
            Arc::new(self.ts.finish()),
            Arc::new(self.received.finish()),
            take(4),
            take(5),
            take(6),
            take(7),
            take(8),
            take(9),
            take(10),
            Arc::new(self.i32s[0].finish()),
            Arc::new(self.i32s[1].finish()),
            Arc::new(self.u16s[0].finish()),
            Arc::new(self.u16s[1].finish()),
            Arc::new(self.u32s[0].finish()),
            Arc::new(self.u32s[1].finish()),
            take(11),
            take(12),
            Arc::new(self.rage.finish()),
            Arc::new(self.depth.finish()),
            Arc::new(self.u32s[2].finish()),
            take(13),
            take(14),
            take(15),
            take(16),
            take(17),
            take(18),
        ];
        self.len = 0;
        RecordBatch::try_new(schema(), columns).expect("columns match the schema")
    }
}

/// Events back from one record batch (the project's own reader).
pub fn from_batch(b: &RecordBatch) -> Result<Vec<Event>, String> {
    let col = |name: &str| {
        b.column_by_name(name)
            .ok_or_else(|| format!("column {name} missing"))
    };
    let s = |name: &str| -> Result<Vec<String>, String> {
        Ok(col(name)?
            .as_string_opt::<i32>()
            .ok_or_else(|| format!("column {name} is not a string"))?
            .iter()
            .map(|v| v.unwrap_or_default().to_string())
            .collect())
    };
    macro_rules! prim {
        ($t:ty, $name:expr) => {
            col($name)?
                .as_primitive_opt::<$t>()
                .ok_or_else(|| format!("column {} has the wrong type", $name))?
                .values()
                .to_vec()
        };
    }
    let (event_id, site, kind, name) = (s("event_id")?, s("site")?, s("type")?, s("name")?);
    let ts = prim!(TimestampMillisecondType, "ts");
    let received = prim!(TimestampMillisecondType, "received_at");
    let (url, host, path, referrer, title) = (
        s("url")?,
        s("host")?,
        s("path")?,
        s("referrer")?,
        s("title")?,
    );
    let (session_id, visitor_id) = (s("session_id")?, s("visitor_id")?);
    let (x, y) = (prim!(Int32Type, "x"), prim!(Int32Type, "y"));
    let (vw, vh) = (
        prim!(UInt16Type, "viewport_w"),
        prim!(UInt16Type, "viewport_h"),
    );
    let (dw, dh) = (prim!(UInt32Type, "doc_w"), prim!(UInt32Type, "doc_h"));
    let (selector, text) = (s("selector")?, s("text")?);
    let rage = col("rage")?
        .as_boolean_opt()
        .ok_or("column rage is not a boolean")?
        .clone();
    let depth = prim!(UInt8Type, "scroll_depth");
    let duration = prim!(UInt32Type, "duration_ms");
    let (props, browser, os, device, ua, ip) = (
        s("props")?,
        s("browser")?,
        s("os")?,
        s("device")?,
        s("user_agent")?,
        s("ip")?,
    );
    let mut out = Vec::with_capacity(b.num_rows());
    for i in 0..b.num_rows() {
        out.push(Event {
            event_id: event_id[i].clone(),
            site: site[i].clone(),
            kind: kind[i].clone(),
            name: name[i].clone(),
            ts: (ts[i].div_euclid(1000)) as u32,
            ts_ms: (ts[i].rem_euclid(1000)) as u16,
            received_at: received[i].div_euclid(1000) as u32,
            url: url[i].clone(),
            host: host[i].clone(),
            path: path[i].clone(),
            referrer: referrer[i].clone(),
            title: title[i].clone(),
            session_id: session_id[i].clone(),
            visitor_id: visitor_id[i].clone(),
            x: x[i],
            y: y[i],
            viewport_w: vw[i],
            viewport_h: vh[i],
            doc_w: dw[i],
            doc_h: dh[i],
            selector: selector[i].clone(),
            text: text[i].clone(),
            rage: u8::from(rage.value(i)),
            scroll_depth: depth[i],
            duration_ms: duration[i],
            props: props[i].clone(),
            browser: browser[i].clone(),
            os: os[i].clone(),
            device: device[i].clone(),
            user_agent: ua[i].clone(),
            ip: ip[i].clone(),
        });
    }
    Ok(out)
}

/// A Parquet file being written batch by batch; memory stays bounded by one row group.
///
/// Columns are encoded on two threads (this one and a scoped helper per batch): encoding and
/// zstd dominate the compactor's own CPU, and the columns of a row group are independent.
pub struct FileWriter {
    file: SerializedFileWriter<File>,
    factory: ArrowRowGroupWriterFactory,
    fields: arrow_schema::Fields,
    /// One writer per column of the row group being filled.
    columns: Vec<ArrowColumnWriter>,
    row_group: usize,
    row_group_rows: usize,
    rows_in_group: usize,
    pending: BatchBuilder,
    rows: u64,
}

fn pq(e: parquet::errors::ParquetError) -> String {
    e.to_string()
}

/// Runs `f` on every item, alternate items on this thread and on a scoped helper (columns of a
/// row group are independent), and returns the results in the items' order.
fn on_two_threads<T: Send, R: Send>(
    items: Vec<T>,
    f: impl Fn(T) -> Result<R, String> + Sync,
) -> Result<Vec<R>, String> {
    let (mine, theirs): (Vec<_>, Vec<_>) =
        items.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let run = |half: Vec<(usize, T)>| -> Result<Vec<(usize, R)>, String> {
        half.into_iter()
            .map(|(i, t)| f(t).map(|r| (i, r)))
            .collect()
    };
    let mut done = std::thread::scope(|s| {
        let helper = s.spawn(|| run(theirs));
        let here = run(mine);
        let there = helper
            .join()
            .map_err(|_| "a Parquet encoding thread panicked")?;
        let mut here = here?;
        here.extend(there?);
        Ok::<_, String>(here)
    })?;
    done.sort_by_key(|(i, _)| *i);
    Ok(done.into_iter().map(|(_, r)| r).collect())
}

impl FileWriter {
    pub fn create(path: &Path, row_group_rows: usize) -> Result<Self, String> {
        let f = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let schema = schema();
        let props = Arc::new(writer_properties(row_group_rows));
        let parquet_schema = ArrowSchemaConverter::new()
            .with_coerce_types(props.coerce_types())
            .convert(&schema)
            .map_err(pq)?;
        // Readers (pyarrow, DuckDB, ClickHouse) take the Arrow schema from the metadata:
        // without it the timestamps' UTC zone would be lost.
        let mut props_with_schema = (*props).clone();
        add_encoded_arrow_schema_to_metadata(&schema, &mut props_with_schema);
        let file = SerializedFileWriter::new(
            f,
            parquet_schema.root_schema_ptr(),
            Arc::new(props_with_schema),
        )
        .map_err(pq)?;
        let factory = ArrowRowGroupWriterFactory::new(&file, schema.clone());
        let columns = factory.create_column_writers(0).map_err(pq)?;
        Ok(Self {
            file,
            factory,
            fields: schema.fields().clone(),
            columns,
            row_group: 0,
            row_group_rows,
            rows_in_group: 0,
            pending: BatchBuilder::default(),
            rows: 0,
        })
    }

    pub fn push(&mut self, e: &EventRef<'_>) -> Result<(), String> {
        self.pending.push(e);
        if self.pending.len() >= BATCH_ROWS {
            let batch = self.pending.finish();
            self.write(&batch)?;
        }
        Ok(())
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), String> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let n = (batch.num_rows() - offset).min(self.row_group_rows - self.rows_in_group);
            self.encode(&batch.slice(offset, n))?;
            offset += n;
            self.rows_in_group += n;
            self.rows += n as u64;
            if self.rows_in_group == self.row_group_rows {
                self.flush_row_group()?;
            }
        }
        Ok(())
    }

    /// Encodes one batch into the row group's column writers.
    fn encode(&mut self, batch: &RecordBatch) -> Result<(), String> {
        let mut leaves = Vec::with_capacity(batch.num_columns());
        for (field, array) in self.fields.iter().zip(batch.columns()) {
            leaves.extend(compute_leaves(field, array).map_err(pq)?);
        }
        on_two_threads(
            self.columns.iter_mut().zip(&leaves).collect(),
            |(w, leaf)| w.write(leaf).map_err(pq),
        )?;
        Ok(())
    }

    fn flush_row_group(&mut self) -> Result<(), String> {
        if self.rows_in_group == 0 {
            return Ok(());
        }
        self.row_group += 1;
        let next = self
            .factory
            .create_column_writers(self.row_group)
            .map_err(pq)?;
        let columns = std::mem::replace(&mut self.columns, next);
        // Closing a column writer flushes its last page and compresses it: also in parallel.
        let chunks = on_two_threads(columns, |w| w.close().map_err(pq))?;
        let mut rg = self.file.next_row_group().map_err(pq)?;
        for chunk in chunks {
            chunk.append_to_row_group(&mut rg).map_err(pq)?;
        }
        rg.close().map_err(pq)?;
        self.rows_in_group = 0;
        Ok(())
    }

    /// Finishes the file; returns the rows written. No fsync: this is the staging copy, which
    /// a crash simply makes the compactor write again. The published copy is the one that
    /// must be durable (the archive store syncs it) before any row leaves ClickHouse.
    pub fn finish(mut self) -> Result<u64, String> {
        if !self.pending.is_empty() {
            let batch = self.pending.finish();
            self.write(&batch)?;
        }
        self.flush_row_group()?;
        self.file.into_inner().map_err(pq)?;
        Ok(self.rows)
    }
}

/// Reads a Parquet file back and checksums every row (verification), straight from the
/// Arrow arrays: no row is materialised.
pub fn checksum_file(path: &Path) -> Result<Checksum, String> {
    let mut sum = Checksum::default();
    for batch in open(path)? {
        let batch = batch.map_err(|e| e.to_string())?;
        super::checksum::add_batch(&mut sum, &batch)?;
    }
    Ok(sum)
}

fn open(path: &Path) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| e.to_string())
}

/// Calls `f` for every row of a Parquet file, one record batch in memory at a time.
pub fn for_each_row(path: &Path, mut f: impl FnMut(Event)) -> Result<(), String> {
    for batch in open(path)? {
        let batch = batch.map_err(|e| e.to_string())?;
        for e in from_batch(&batch)? {
            f(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_parquet() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.parquet");
        let rows: Vec<Event> = (0..70_000)
            .map(|i| Event {
                event_id: format!("e{i}"),
                ts: 1_700_000_000 + i,
                ts_ms: (i % 1000) as u16,
                x: i as i32 - 100,
                rage: (i % 2) as u8,
                ..crate::compactor::tests_support::event()
            })
            .collect();
        let mut w = FileWriter::create(&p, 32_768).unwrap();
        for r in &rows {
            w.push(&EventRef::from(r)).unwrap();
        }
        assert_eq!(w.finish().unwrap(), 70_000);
        // The fast checksum (from Arrow arrays) equals the one computed from the rows.
        let mut want = Checksum::default();
        for r in &rows {
            want.add(r);
        }
        assert_eq!(checksum_file(&p).unwrap(), want);
        let mut back = Vec::new();
        for_each_row(&p, |e| back.push(e)).unwrap();
        assert_eq!(back, rows, "row for row");
        let meta = ParquetRecordBatchReaderBuilder::try_new(File::open(&p).unwrap()).unwrap();
        assert_eq!(
            meta.metadata().num_row_groups(),
            3,
            "row groups are bounded"
        );
    }
}

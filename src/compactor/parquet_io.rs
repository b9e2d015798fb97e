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
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

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

pub fn writer_properties(row_group_rows: usize) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        .set_dictionary_enabled(true)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(row_group_rows))
        .set_created_by(format!("clicktrail {}", env!("CARGO_PKG_VERSION")))
        .build()
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
pub struct FileWriter {
    writer: ArrowWriter<File>,
    pending: BatchBuilder,
    rows: u64,
}

impl FileWriter {
    pub fn create(path: &Path, row_group_rows: usize) -> Result<Self, String> {
        let f = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let writer = ArrowWriter::try_new(f, schema(), Some(writer_properties(row_group_rows)))
            .map_err(|e| e.to_string())?;
        Ok(Self {
            writer,
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
        self.rows += batch.num_rows() as u64;
        self.writer.write(batch).map_err(|e| e.to_string())
    }

    /// Finishes the file and fsyncs it; returns the rows written.
    pub fn finish(mut self) -> Result<u64, String> {
        if !self.pending.is_empty() {
            let batch = self.pending.finish();
            self.write(&batch)?;
        }
        let f = self.writer.into_inner().map_err(|e| e.to_string())?;
        f.sync_all().map_err(|e| e.to_string())?;
        Ok(self.rows)
    }
}

/// Reads a Parquet file back and checksums every row (verification), straight from the
/// Arrow arrays: no row is materialised.
pub fn checksum_file(path: &Path) -> Result<Checksum, String> {
    let mut sum = Checksum::default();
    let mut scratch = Vec::new();
    for batch in open(path)? {
        let batch = batch.map_err(|e| e.to_string())?;
        super::checksum::add_batch(&mut sum, &batch, &mut scratch)?;
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
        let mut scratch = Vec::new();
        for r in &rows {
            want.add(r, &mut scratch);
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

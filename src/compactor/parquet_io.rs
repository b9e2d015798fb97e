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

/// Builds one record batch from events.
pub fn to_batch(rows: &[Event]) -> RecordBatch {
    let n = rows.len();
    macro_rules! strings {
        ($f:ident) => {{
            let mut b = StringBuilder::with_capacity(n, n * 8);
            for r in rows {
                b.append_value(&r.$f);
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    macro_rules! nums {
        ($builder:ty, $f:ident) => {{
            let mut b = <$builder>::with_capacity(n);
            for r in rows {
                b.append_value(r.$f);
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    let mut ts = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    for r in rows {
        ts.append_value(r.ts as i64 * 1000 + r.ts_ms as i64);
    }
    let mut received = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    for r in rows {
        received.append_value(r.received_at as i64 * 1000);
    }
    let mut rage = BooleanBuilder::with_capacity(n);
    for r in rows {
        rage.append_value(r.rage != 0);
    }
    let columns: Vec<ArrayRef> = vec![
        strings!(event_id),
        strings!(site),
        strings!(kind),
        strings!(name),
        Arc::new(ts.finish()),
        Arc::new(received.finish()),
        strings!(url),
        strings!(host),
        strings!(path),
        strings!(referrer),
        strings!(title),
        strings!(session_id),
        strings!(visitor_id),
        nums!(Int32Builder, x),
        nums!(Int32Builder, y),
        nums!(UInt16Builder, viewport_w),
        nums!(UInt16Builder, viewport_h),
        nums!(UInt32Builder, doc_w),
        nums!(UInt32Builder, doc_h),
        strings!(selector),
        strings!(text),
        Arc::new(rage.finish()),
        nums!(UInt8Builder, scroll_depth),
        nums!(UInt32Builder, duration_ms),
        strings!(props),
        strings!(browser),
        strings!(os),
        strings!(device),
        strings!(user_agent),
        strings!(ip),
    ];
    RecordBatch::try_new(schema(), columns).expect("columns match the schema")
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
    pending: Vec<Event>,
    pub checksum: Checksum,
    scratch: Vec<u8>,
}

impl FileWriter {
    pub fn create(path: &Path, row_group_rows: usize) -> Result<Self, String> {
        let f = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let writer = ArrowWriter::try_new(f, schema(), Some(writer_properties(row_group_rows)))
            .map_err(|e| e.to_string())?;
        Ok(Self {
            writer,
            pending: Vec::with_capacity(BATCH_ROWS),
            checksum: Checksum::default(),
            scratch: Vec::new(),
        })
    }

    pub fn push(&mut self, e: Event) -> Result<(), String> {
        self.checksum.add(&e, &mut self.scratch);
        self.pending.push(e);
        if self.pending.len() >= BATCH_ROWS {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<(), String> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = to_batch(&self.pending);
        self.pending.clear();
        self.writer.write(&batch).map_err(|e| e.to_string())
    }

    /// Finishes the file and fsyncs it.
    pub fn finish(mut self) -> Result<Checksum, String> {
        self.flush_batch()?;
        let f = self.writer.into_inner().map_err(|e| e.to_string())?;
        f.sync_all().map_err(|e| e.to_string())?;
        Ok(self.checksum)
    }
}

/// Reads a Parquet file back and checksums every row (verification).
pub fn checksum_file(path: &Path) -> Result<Checksum, String> {
    let mut sum = Checksum::default();
    let mut scratch = Vec::new();
    for_each_row(path, |e| sum.add(&e, &mut scratch))?;
    Ok(sum)
}

/// Calls `f` for every row of a Parquet file, one record batch in memory at a time.
pub fn for_each_row(path: &Path, mut f: impl FnMut(Event)) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| e.to_string())?;
    for batch in reader {
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
        for r in rows.clone() {
            w.push(r).unwrap();
        }
        let written = w.finish().unwrap();
        let read = checksum_file(&p).unwrap();
        assert_eq!(written, read);
        assert_eq!(read.rows, 70_000);
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

//! Events ⇄ Arrow record batches ⇄ Parquet. The archive's schema (docs/archive.md):
//! timestamps are UTC timestamps (`ts` in milliseconds, folding `ts_ms` in), `rage` is a
//! boolean, everything else keeps its ClickHouse type. Files are zstd-compressed, dictionary-
//! encoded, with page statistics, rows sorted like the table (site, type, path, ts) so that
//! readers prune row groups by site, type, path and time.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

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
use super::CompactError;
use crate::event::Event;
use crate::row::{Cell, EventRow, Kind, COLUMNS};
use crate::rowbinary::RowError;

/// Rows per Arrow batch handed to the writer.
pub const BATCH_ROWS: usize = 65_536;

/// The archive's type for a column kind; `None` for a [`Kind::Millis`] column, which is folded
/// into the millisecond timestamp of the column before it.
fn arrow_type(kind: Kind) -> Option<DataType> {
    Some(match kind {
        Kind::Str | Kind::LowStr => DataType::Utf8,
        // Parquet has no second-precision timestamp; milliseconds keep it a timestamp.
        Kind::DateTime => DataType::Timestamp(TimeUnit::Millisecond, Some(Arc::from("UTC"))),
        Kind::Millis => return None,
        Kind::Flag => DataType::Boolean,
        Kind::U8 => DataType::UInt8,
        Kind::U16 => DataType::UInt16,
        Kind::U32 => DataType::UInt32,
        Kind::I32 => DataType::Int32,
    })
}

/// The archive's schema, derived from the events row (docs/archive.md).
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(
        COLUMNS
            .iter()
            .filter_map(|c| arrow_type(c.kind).map(|t| Field::new(c.name, t, false)))
            .collect::<Vec<_>>(),
    ))
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

/// One archive column, typed once per batch, read per row as the row's value ([`Cell`]).
pub(super) enum ArchiveCol<'a> {
    Str(&'a arrow_array::StringArray),
    /// A millisecond timestamp as the whole seconds of ClickHouse's DateTime.
    Secs(&'a arrow_array::TimestampMillisecondArray),
    /// The 0–999 part of the timestamp before it (the [`Kind::Millis`] column folded into it).
    Millis(&'a arrow_array::TimestampMillisecondArray),
    Bool(&'a arrow_array::BooleanArray),
    U8(&'a arrow_array::UInt8Array),
    U16(&'a arrow_array::UInt16Array),
    U32(&'a arrow_array::UInt32Array),
    I32(&'a arrow_array::Int32Array),
}

impl ArchiveCol<'_> {
    /// Row `r`'s value, as the events row holds it.
    pub(super) fn cell(&self, r: usize) -> Cell<'_> {
        match self {
            ArchiveCol::Str(a) => Cell::Str(a.value(r).into()),
            ArchiveCol::Secs(a) => Cell::U(a.value(r).div_euclid(1000) as u64),
            ArchiveCol::Millis(a) => Cell::U(a.value(r).rem_euclid(1000) as u64),
            ArchiveCol::Bool(a) => Cell::U(u64::from(a.value(r))),
            ArchiveCol::U8(a) => Cell::U(u64::from(a.value(r))),
            ArchiveCol::U16(a) => Cell::U(u64::from(a.value(r))),
            ArchiveCol::U32(a) => Cell::U(u64::from(a.value(r))),
            ArchiveCol::I32(a) => Cell::I(a.value(r)),
        }
    }
}

/// The columns of a record batch of the archive schema in the row's column order, found by
/// name, each checked for its type.
pub(super) fn archive_columns(b: &RecordBatch) -> Result<Vec<ArchiveCol<'_>>, RowError> {
    let col = |name: &str| {
        b.column_by_name(name)
            .ok_or_else(|| RowError::Missing(name.to_string()))
    };
    let mut cols = Vec::with_capacity(COLUMNS.len());
    let mut last_time = "";
    for c in COLUMNS {
        let wrong = || RowError::WrongType(c.name);
        let a: &ArrayRef = if c.kind == Kind::Millis {
            col(last_time)?
        } else {
            col(c.name)?
        };
        cols.push(match c.kind {
            Kind::Str | Kind::LowStr => {
                ArchiveCol::Str(a.as_string_opt::<i32>().ok_or_else(wrong)?)
            }
            Kind::DateTime => {
                last_time = c.name;
                ArchiveCol::Secs(
                    a.as_primitive_opt::<TimestampMillisecondType>()
                        .ok_or_else(wrong)?,
                )
            }
            Kind::Millis => ArchiveCol::Millis(
                a.as_primitive_opt::<TimestampMillisecondType>()
                    .ok_or_else(wrong)?,
            ),
            Kind::Flag => ArchiveCol::Bool(a.as_boolean_opt().ok_or_else(wrong)?),
            Kind::U8 => ArchiveCol::U8(a.as_primitive_opt::<UInt8Type>().ok_or_else(wrong)?),
            Kind::U16 => ArchiveCol::U16(a.as_primitive_opt::<UInt16Type>().ok_or_else(wrong)?),
            Kind::U32 => ArchiveCol::U32(a.as_primitive_opt::<UInt32Type>().ok_or_else(wrong)?),
            Kind::I32 => ArchiveCol::I32(a.as_primitive_opt::<Int32Type>().ok_or_else(wrong)?),
        });
    }
    Ok(cols)
}

/// Rows back from one record batch of the archive schema (the project's own reader).
pub fn from_batch(b: &RecordBatch) -> Result<Vec<Event>, RowError> {
    let cols = archive_columns(b)?;
    (0..b.num_rows())
        .map(|r| EventRow::from_cells(|i| Ok(cols[i].cell(r))).map(EventRow::into_owned))
        .collect()
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
    rows: u64,
}

/// Runs `f` on every item, alternate items on this thread and on a scoped helper (columns of a
/// row group are independent), and returns the results in the items' order.
fn on_two_threads<T: Send, R: Send>(
    items: Vec<T>,
    f: impl Fn(T) -> Result<R, CompactError> + Sync,
) -> Result<Vec<R>, CompactError> {
    let (mine, theirs): (Vec<_>, Vec<_>) =
        items.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let run = |half: Vec<(usize, T)>| -> Result<Vec<(usize, R)>, CompactError> {
        half.into_iter()
            .map(|(i, t)| f(t).map(|r| (i, r)))
            .collect()
    };
    let mut done = std::thread::scope(|s| {
        let helper = s.spawn(|| run(theirs));
        let here = run(mine);
        let there = helper
            .join()
            .map_err(|_| CompactError::Native("a Parquet encoding thread panicked".into()))?;
        let mut here = here?;
        here.extend(there?);
        Ok::<_, CompactError>(here)
    })?;
    done.sort_by_key(|(i, _)| *i);
    Ok(done.into_iter().map(|(_, r)| r).collect())
}

impl FileWriter {
    pub fn create(path: &Path, row_group_rows: usize) -> Result<Self, CompactError> {
        let f = File::create(path)?;
        let schema = schema();
        let props = Arc::new(writer_properties(row_group_rows));
        let parquet_schema = ArrowSchemaConverter::new()
            .with_coerce_types(props.coerce_types())
            .convert(&schema)?;
        // Readers (pyarrow, DuckDB, ClickHouse) take the Arrow schema from the metadata:
        // without it the timestamps' UTC zone would be lost.
        let mut props_with_schema = (*props).clone();
        add_encoded_arrow_schema_to_metadata(&schema, &mut props_with_schema);
        let file = SerializedFileWriter::new(
            f,
            parquet_schema.root_schema_ptr(),
            Arc::new(props_with_schema),
        )?;
        let factory = ArrowRowGroupWriterFactory::new(&file, schema.clone());
        let columns = factory.create_column_writers(0)?;
        Ok(Self {
            file,
            factory,
            fields: schema.fields().clone(),
            columns,
            row_group: 0,
            row_group_rows,
            rows_in_group: 0,
            rows: 0,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), CompactError> {
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
    fn encode(&mut self, batch: &RecordBatch) -> Result<(), CompactError> {
        let mut leaves = Vec::with_capacity(batch.num_columns());
        for (field, array) in self.fields.iter().zip(batch.columns()) {
            leaves.extend(compute_leaves(field, array)?);
        }
        on_two_threads(
            self.columns.iter_mut().zip(&leaves).collect(),
            |(w, leaf)| Ok(w.write(leaf)?),
        )?;
        Ok(())
    }

    fn flush_row_group(&mut self) -> Result<(), CompactError> {
        if self.rows_in_group == 0 {
            return Ok(());
        }
        self.row_group += 1;
        let next = self.factory.create_column_writers(self.row_group)?;
        let columns = std::mem::replace(&mut self.columns, next);
        // Closing a column writer flushes its last page and compresses it: also in parallel.
        let chunks = on_two_threads(columns, |w| Ok(w.close()?))?;
        let mut rg = self.file.next_row_group()?;
        for chunk in chunks {
            chunk.append_to_row_group(&mut rg)?;
        }
        rg.close()?;
        self.rows_in_group = 0;
        Ok(())
    }

    /// Finishes the file; returns the rows written. No fsync: this is the staging copy, which
    /// a crash simply makes the compactor write again. The published copy is the one that
    /// must be durable (the archive store syncs it) before any row leaves ClickHouse.
    pub fn finish(mut self) -> Result<u64, CompactError> {
        self.flush_row_group()?;
        self.file.into_inner()?;
        Ok(self.rows)
    }
}

/// Reads a Parquet file back and checksums every row (verification), straight from the
/// Arrow arrays: no row is materialised.
pub fn checksum_file(path: &Path) -> Result<Checksum, CompactError> {
    let mut sum = Checksum::default();
    for batch in open(path)? {
        let batch = batch?;
        super::checksum::add_batch(&mut sum, &batch)?;
    }
    Ok(sum)
}

fn open(
    path: &Path,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader, CompactError> {
    let file = File::open(path)?;
    Ok(ParquetRecordBatchReaderBuilder::try_new(file)?
        .with_batch_size(BATCH_ROWS)
        .build()?)
}

/// Calls `f` for every row of a Parquet file, one record batch in memory at a time.
pub fn for_each_row(path: &Path, mut f: impl FnMut(Event)) -> Result<(), CompactError> {
    for batch in open(path)? {
        let batch = batch?;
        for e in from_batch(&batch).map_err(|e| CompactError::Archive(e.to_string()))? {
            f(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compactor::native::{encode_block, NativeDecoder};

    /// Rows → the compactor's export path (Native → Arrow) → Parquet → our reader: every
    /// column comes back by name with its value (the rows hold a distinct value per column).
    #[test]
    fn events_round_trip_through_parquet() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.parquet");
        let base = crate::row::tests::distinct_row();
        let rows: Vec<Event> = (0..70_000u32)
            .map(|i| Event {
                event_id: format!("e{i}").into(),
                ts: 1_700_000_000 + i,
                ts_ms: (i % 1000) as u16,
                x: i as i32 - 100,
                rage: (i % 2) as u8,
                ..base.clone()
            })
            .collect();
        let mut w = FileWriter::create(&p, 32_768).unwrap();
        let mut decoder = NativeDecoder::new(BATCH_ROWS);
        let mut batches = Vec::new();
        for chunk in rows.chunks(10_000) {
            decoder
                .feed(&encode_block(chunk, |_| 0), &mut |b| {
                    batches.push(b);
                    Ok(())
                })
                .unwrap();
        }
        batches.extend(decoder.finish().unwrap().0);
        for b in &batches {
            w.write(b).unwrap();
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
        // By name and value, independently of our reader: each text column holds its name.
        let file = File::open(&p).unwrap();
        let mut reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        let first = reader.next().unwrap().unwrap();
        for c in COLUMNS
            .iter()
            .filter(|c| c.kind.is_text() && c.name != "event_id")
        {
            let a = first.column_by_name(c.name).unwrap().as_string::<i32>();
            assert_eq!(a.value(0), format!("{}-value", c.name), "column {}", c.name);
        }
        assert_eq!(
            first.schema().fields().len(),
            COLUMNS.len() - 1,
            "every column but ts_ms, which is folded into ts"
        );
        let meta = ParquetRecordBatchReaderBuilder::try_new(File::open(&p).unwrap()).unwrap();
        assert_eq!(
            meta.metadata().num_row_groups(),
            3,
            "row groups are bounded"
        );
    }
}

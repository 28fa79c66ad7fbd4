//! Rewriting committed files: merging a segment's files into one file per Hive
//! directory, and keeping the rows of a superseded file that a new commit does not cover.
//!
//! Both write new temp files that the caller commits (with the old files as the
//! commit's `replaces`), so a crash half-way leaves the old files as they were.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use arrow::array::{Int64Array, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::compute::kernels::boolean::and;
use arrow::compute::kernels::cmp::{gt_eq, lt_eq};
use arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

use super::commit::{DataFile, Dataset, StagedFile};
use super::SinkError;
use crate::batch::TopicPartition;
use crate::schema::OFFSET_COLUMN;

/// A written, fsynced temp file and its row count.
pub struct TempFile {
    pub path: PathBuf,
    pub rows: u64,
}

/// Writes batches into one new temp file of a dataset.
pub struct TempWriter {
    sink: String,
    path: PathBuf,
    writer: ArrowWriter<BufWriter<File>>,
    schema: SchemaRef,
    rows: u64,
}

impl TempWriter {
    /// A temp file in Hive directory `dir` for rows of `tp` from offset `first`.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        sink: &str,
        dataset: &Dataset,
        dir: &str,
        tp: &TopicPartition,
        first: i64,
        kind: &str,
        schema: SchemaRef,
        properties: &WriterProperties,
    ) -> Result<Self, SinkError> {
        let (path, handle) = dataset
            .create_temp(dir, tp, first, kind)
            .map_err(|source| SinkError::Io {
                sink: sink.to_owned(),
                path: PathBuf::from(dataset.describe()).join(dir),
                source,
            })?;
        let writer = ArrowWriter::try_new(
            BufWriter::new(handle),
            schema.clone(),
            Some(properties.clone()),
        )?;
        Ok(TempWriter {
            sink: sink.to_owned(),
            path,
            writer,
            schema,
            rows: 0,
        })
    }

    /// Appends `batch`; `false` (nothing written) when its columns do not fit the file's
    /// schema, e.g. a file written before the pipeline's output changed.
    pub fn append(&mut self, batch: &RecordBatch) -> Result<bool, SinkError> {
        let Ok(batch) = RecordBatch::try_new(self.schema.clone(), batch.columns().to_vec()) else {
            return Ok(false);
        };
        self.writer.write(&batch)?;
        self.rows += batch.num_rows() as u64;
        Ok(true)
    }

    /// Encoded size so far (estimated for the row group in progress).
    pub fn bytes(&self) -> u64 {
        (self.writer.bytes_written() + self.writer.in_progress_size()) as u64
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes and fsyncs the file.
    pub fn finish(self) -> Result<TempFile, SinkError> {
        let buffered = self.writer.into_inner()?;
        let io_error = |source| SinkError::Io {
            sink: self.sink.clone(),
            path: self.path.clone(),
            source,
        };
        let handle = buffered
            .into_inner()
            .map_err(|e| io_error(e.into_error()))?;
        handle.sync_all().map_err(io_error)?;
        Ok(TempFile {
            path: self.path,
            rows: self.rows,
        })
    }

    /// Stops writing and deletes the file.
    pub fn abandon(self) {
        let path = self.path.clone();
        drop(self.writer);
        let _ = std::fs::remove_file(path);
    }
}

/// Every batch of a Parquet file, with the file's schema.
pub fn read_batches(path: &Path) -> Result<(SchemaRef, Vec<RecordBatch>), SinkError> {
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(File::open(path).map_err(|source| {
            SinkError::Io {
                sink: "parquet".into(),
                path: path.to_owned(),
                source,
            }
        })?)?;
    let schema = builder.schema().clone();
    let batches = builder
        .build()?
        .collect::<Result<Vec<_>, arrow::error::ArrowError>>()?;
    Ok((schema, batches))
}

/// Rows whose `_offset` lies in `from..=to` (all rows when there is no `_offset`).
pub fn rows_between(rows: &RecordBatch, from: i64, to: i64) -> Result<RecordBatch, SinkError> {
    let Some(offsets) = rows.column_by_name(OFFSET_COLUMN) else {
        return Ok(rows.clone());
    };
    let keep = and(
        &gt_eq(offsets, &Int64Array::new_scalar(from))?,
        &lt_eq(offsets, &Int64Array::new_scalar(to))?,
    )?;
    Ok(filter_record_batch(rows, &keep)?)
}

/// Where [`merge_files`] writes: one partition's files for offsets `range`.
pub struct MergeTarget<'a> {
    pub sink: &'a str,
    pub dataset: &'a Dataset,
    pub tp: &'a TopicPartition,
    pub range: (i64, i64),
    pub schema: &'a SchemaRef,
    pub properties: &'a WriterProperties,
}

/// Writes the rows of each directory's `sources` (files in offset order) into one temp
/// file per directory, named for `target.range`. `None`, with nothing left behind, when a
/// source's columns do not fit `target.schema`.
pub fn merge_files(
    target: &MergeTarget<'_>,
    sources: &BTreeMap<String, Vec<PathBuf>>,
) -> Result<Option<Vec<StagedFile>>, SinkError> {
    let (first, last) = target.range;
    let mut staged: Vec<StagedFile> = Vec::with_capacity(sources.len());
    for (dir, paths) in sources {
        let mut writer = TempWriter::create(
            target.sink,
            target.dataset,
            dir,
            target.tp,
            first,
            "merge",
            target.schema.clone(),
            target.properties,
        )?;
        for path in paths {
            for batch in read_batches(path)?.1 {
                if !writer.append(&batch)? {
                    tracing::warn!(sink = target.sink, file = %path.display(), "not merging a file written with another schema");
                    writer.abandon();
                    for file in staged {
                        let _ = std::fs::remove_file(file.tmp_path);
                    }
                    return Ok(None);
                }
            }
        }
        let temp = writer.finish()?;
        staged.push(StagedFile {
            dir: dir.clone(),
            tmp_path: temp.path,
            name: Dataset::file_name(target.tp, first, last),
            rows: temp.rows,
        });
    }
    Ok(Some(staged))
}

/// The parts of `file` outside `first..=last`, for a commit that replaces it: one temp
/// file per non-empty side, with the offsets it keeps covering.
pub fn keep_outside(
    sink: &str,
    dataset: &Dataset,
    tp: &TopicPartition,
    file: &DataFile,
    (first, last): (i64, i64),
    properties: &WriterProperties,
) -> Result<Vec<(DataFile, TempFile)>, SinkError> {
    let copy = dataset
        .local_copy(&file.relative_path(tp))
        .map_err(|source| SinkError::Io {
            sink: sink.to_owned(),
            path: PathBuf::from(dataset.describe()).join(file.relative_path(tp)),
            source,
        })?;
    let (schema, batches) = read_batches(&copy.path)?;
    // Unique per replaced file, so two of them in one directory never share a temp.
    let kind = format!("keep{}-{}", file.first, file.last);
    let mut kept = Vec::new();
    let sides = [
        (file.first < first).then(|| (file.first, first - 1)),
        (file.last > last).then(|| (last + 1, file.last)),
    ];
    for (from, to) in sides.into_iter().flatten() {
        let mut writer = TempWriter::create(
            sink,
            dataset,
            &file.dir,
            tp,
            from,
            &kind,
            schema.clone(),
            properties,
        )?;
        for batch in &batches {
            writer.append(&rows_between(batch, from, to)?)?;
        }
        if writer.rows() == 0 {
            writer.abandon();
            continue;
        }
        let range = DataFile {
            first: from,
            last: to,
            dir: file.dir.clone(),
        };
        kept.push((range, writer.finish()?));
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{AsArray, StringArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    use super::*;

    fn rows(offsets: std::ops::RangeInclusive<i64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Utf8, false),
            Field::new(OFFSET_COLUMN, DataType::Int64, false),
        ]));
        let offsets: Vec<i64> = offsets.collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(
                    offsets.iter().map(|o| format!("row {o}")),
                )),
                Arc::new(Int64Array::from(offsets)),
            ],
        )
        .unwrap()
    }

    fn offsets(batches: &[RecordBatch]) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                b.column_by_name(OFFSET_COLUMN)
                    .unwrap()
                    .as_primitive::<Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    #[test]
    fn rows_between_is_inclusive() {
        assert_eq!(
            offsets(&[rows_between(&rows(0..=9), 3, 5).unwrap()]),
            [3, 4, 5]
        );
    }

    #[test]
    fn a_replaced_file_keeps_its_rows_on_both_sides_of_the_new_range() {
        let root = tempfile::tempdir().unwrap();
        let dataset = Dataset::local(root.path(), None);
        let tp = TopicPartition::new("t", 0);
        let properties = WriterProperties::builder().build();
        let old = DataFile {
            first: 0,
            last: 9,
            dir: "d=1".into(),
        };
        let batch = rows(0..=9);
        let mut writer = TempWriter::create(
            "test",
            &dataset,
            "d=1",
            &tp,
            0,
            "group",
            batch.schema(),
            &properties,
        )
        .unwrap();
        assert!(writer.append(&batch).unwrap());
        let temp = writer.finish().unwrap();
        std::fs::rename(temp.path, root.path().join(old.relative_path(&tp))).unwrap();

        let kept = keep_outside("test", &dataset, &tp, &old, (3, 5), &properties).unwrap();
        let ranges: Vec<(i64, i64)> = kept.iter().map(|(f, _)| (f.first, f.last)).collect();
        assert_eq!(ranges, [(0, 2), (6, 9)]);
        assert_eq!(
            offsets(&read_batches(&kept[0].1.path).unwrap().1),
            [0, 1, 2]
        );
        assert_eq!(
            offsets(&read_batches(&kept[1].1.path).unwrap().1),
            [6, 7, 8, 9]
        );

        // Nothing outside: nothing kept.
        assert!(
            keep_outside("test", &dataset, &tp, &old, (0, 9), &properties)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_batch_of_another_schema_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dataset = Dataset::local(root.path(), None);
        let tp = TopicPartition::new("t", 0);
        let properties = WriterProperties::builder().build();
        let other = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let mut writer =
            TempWriter::create("test", &dataset, "", &tp, 0, "merge", other, &properties).unwrap();
        assert!(!writer.append(&rows(0..=1)).unwrap());
        writer.abandon();
    }
}

//! An open Parquet file that encodes on its own thread.
//!
//! The sink hands an open file a batch and goes on with the next one, so the files of
//! different partitions (and Hive directories) encode and compress in parallel while
//! each file still takes its batches in the order they came. The batch crosses to the
//! thread as it is (its columns are shared, not copied). Finishing a group closes all its
//! files first and then waits for them, so their final row groups and fsyncs overlap too.
//!
//! Nothing is acknowledged before [`finish_all`] returned: an error on the thread
//! surfaces at the next [`Encoder::append`] or at the finish, and fails the sink as an
//! error of the inline writer would.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use super::rewrite::{TempFile, TempWriter};
use super::SinkError;

/// Batches queued per file before `append` waits for its thread: enough to keep it busy
/// while the sink works on other files, few enough to bound memory.
const QUEUE: usize = 2;

/// A [`TempWriter`] on its own thread.
pub(crate) struct Encoder {
    sink: String,
    schema: SchemaRef,
    queue: Option<SyncSender<RecordBatch>>,
    thread: Option<JoinHandle<Result<TempFile, SinkError>>>,
    /// Encoded size as of the last batch the thread finished.
    bytes: Arc<AtomicU64>,
}

impl Encoder {
    /// Starts `writer`'s thread.
    pub(crate) fn start(sink: &str, writer: TempWriter) -> Result<Self, SinkError> {
        let (queue, batches) = sync_channel::<RecordBatch>(QUEUE);
        let bytes = Arc::new(AtomicU64::new(0));
        let schema = writer.schema().clone();
        let thread = {
            let bytes = bytes.clone();
            let path = writer.path().to_owned();
            std::thread::Builder::new()
                .name("sluice-parquet".into())
                .spawn(move || {
                    let mut writer = writer;
                    for batch in batches {
                        writer.append(&batch)?;
                        bytes.store(writer.bytes(), Ordering::Relaxed);
                    }
                    writer.finish()
                })
                .map_err(|source| SinkError::Io {
                    sink: sink.to_owned(),
                    path,
                    source,
                })?
        };
        Ok(Encoder {
            sink: sink.to_owned(),
            schema,
            queue: Some(queue),
            thread: Some(thread),
            bytes,
        })
    }

    /// Queues `batch`; `false` (nothing queued) when its columns do not fit the file's
    /// schema, as [`TempWriter::append`].
    pub(crate) fn append(&mut self, batch: &RecordBatch) -> Result<bool, SinkError> {
        let Ok(batch) = RecordBatch::try_new(self.schema.clone(), batch.columns().to_vec()) else {
            return Ok(false);
        };
        let sent = self.queue.as_ref().is_some_and(|q| q.send(batch).is_ok());
        if !sent {
            // The thread stopped on an error: that error is the answer.
            self.queue = None;
            return Err(self.join().err().unwrap_or_else(|| self.stopped()));
        }
        Ok(true)
    }

    /// Encoded size of the batches finished so far (the queued ones not yet counted).
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Tells the thread no more batches come: it writes the footer and fsyncs.
    fn close(&mut self) {
        self.queue = None;
    }

    /// Waits for the thread's file.
    fn join(&mut self) -> Result<TempFile, SinkError> {
        self.close();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) | None => Err(self.stopped()),
        }
    }

    fn stopped(&self) -> SinkError {
        SinkError::Io {
            sink: self.sink.clone(),
            path: "parquet encoder thread".into(),
            source: std::io::Error::other("the encoder thread panicked"),
        }
    }
}

impl Drop for Encoder {
    /// A file given up without finishing (the sink failed): its thread still ends, and
    /// the temp file stays behind for recovery to remove like any crash's.
    fn drop(&mut self) {
        self.close();
    }
}

/// Closes every file, then waits for each: the files' last row groups and fsyncs run at
/// once. Returns the files in `files`' order.
pub(crate) fn finish_all<K>(
    files: impl IntoIterator<Item = (K, Encoder)>,
) -> Result<Vec<(K, TempFile)>, SinkError> {
    let mut files: Vec<(K, Encoder)> = files.into_iter().collect();
    for (_, file) in &mut files {
        file.close();
    }
    files
        .into_iter()
        .map(|(key, mut file)| file.join().map(|temp| (key, temp)))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::batch::TopicPartition;
    use crate::sink::parquet::commit::Dataset;
    use crate::sink::parquet::rewrite::read_batches;
    use crate::sink::parquet::store;

    fn batch(from: i64, to: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Utf8, false),
            Field::new("_offset", DataType::Int64, false),
        ]));
        let offsets: Vec<i64> = (from..=to).collect();
        let values: Vec<String> = offsets.iter().map(|o| format!("row {o}")).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(values)),
                Arc::new(Int64Array::from(offsets)),
            ],
        )
        .unwrap()
    }

    fn dataset_in(root: &std::path::Path) -> Dataset {
        let location = crate::storage::open(root, &Default::default()).unwrap();
        Dataset::new(store::open(location).unwrap(), None)
    }

    fn encoder(dataset: &Dataset, dir: &str, first: i64) -> Encoder {
        let properties = parquet::file::properties::WriterProperties::builder().build();
        let tp = TopicPartition::new("t", 0);
        let writer = TempWriter::create(
            "test",
            dataset,
            dir,
            &tp,
            first,
            "group",
            batch(0, 0).schema(),
            &properties,
        )
        .unwrap();
        Encoder::start("test", writer).unwrap()
    }

    #[test]
    fn files_encoded_on_their_threads_hold_their_batches_in_order() {
        let root = tempfile::tempdir().unwrap();
        let dataset = dataset_in(root.path());
        let mut files: Vec<(String, Encoder)> = ["d=1", "d=2", "d=3"]
            .iter()
            .map(|dir| (dir.to_string(), encoder(&dataset, dir, 0)))
            .collect();
        for start in (0..3000).step_by(100) {
            for (i, (_, file)) in files.iter_mut().enumerate() {
                let offset = start + i as i64 * 10_000;
                assert!(file.append(&batch(offset, offset + 99)).unwrap());
            }
        }
        let finished = finish_all(files).unwrap();
        assert_eq!(finished.len(), 3);
        for (i, (dir, temp)) in finished.iter().enumerate() {
            assert_eq!(dir, ["d=1", "d=2", "d=3"][i]);
            assert_eq!(temp.rows, 3000);
            let (_, batches) = read_batches(&temp.path).unwrap();
            let offsets: Vec<i64> = batches
                .iter()
                .flat_map(|b| {
                    b.column(1)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .unwrap()
                        .values()
                        .to_vec()
                })
                .collect();
            let base = i as i64 * 10_000;
            assert_eq!(offsets, (base..base + 3000).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_batch_of_another_schema_is_refused_and_nothing_of_it_is_written() {
        let root = tempfile::tempdir().unwrap();
        let dataset = dataset_in(root.path());
        let mut file = encoder(&dataset, "d=1", 0);
        let other = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)])),
            vec![Arc::new(Int64Array::from(vec![1]))],
        )
        .unwrap();
        assert!(!file.append(&other).unwrap());
        assert!(file.append(&batch(0, 9)).unwrap());
        let finished = finish_all([((), file)]).unwrap();
        assert_eq!(finished[0].1.rows, 10);
        assert_eq!(
            read_batches(&finished[0].1.path).unwrap().1[0].num_rows(),
            10
        );
    }

    #[test]
    fn queueing_a_batch_copies_none_of_its_columns() {
        let root = tempfile::tempdir().unwrap();
        let dataset = dataset_in(root.path());
        let mut file = encoder(&dataset, "d=1", 0);
        let big = batch(0, 99_999);
        let column_bytes = big.get_array_memory_size() as u64;
        let (queued, appended) = crate::alloc_count::allocated_by(|| file.append(&big));
        assert!(appended.unwrap());
        // The caller's thread allocates a new schema-checked batch (column handles), not
        // the ~2 MB of values: far under one row per column of copying.
        assert!(
            queued < 1024 && column_bytes > 1_000_000,
            "queueing allocated {queued} bytes for a batch of {column_bytes}"
        );
        let finished = finish_all([((), file)]).unwrap();
        assert_eq!(finished[0].1.rows, 100_000);
    }
}

//! The sink on its own: files by offsets whatever the batching, merges on restart, and a
//! second writer replacing what it covers.

use std::path::Path;

use arrow::array::{AsArray, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};

use super::*;
use crate::batch::Flush;
use crate::schema::OFFSET_COLUMN;

const SEGMENT: u64 = 100;

pub(crate) fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("v", DataType::Utf8, false),
        Field::new("d", DataType::Utf8, false),
        Field::new(OFFSET_COLUMN, DataType::Int64, false),
    ]))
}

fn sink(root: &Path, writer: Option<&str>) -> ParquetSink {
    let config: ParquetSinkConfig = serde_norway::from_str(&format!(
        "path: {}\npartition_by: [d]\nroll:\n  segment_offsets: {SEGMENT}\n  max_age: 1h\n",
        root.display()
    ))
    .unwrap();
    ParquetSink::new(
        "test".into(),
        ParquetInput::Rows,
        &config,
        &Default::default(),
        schema(),
        writer.map(str::to_owned),
        Arc::new(AckTracker::new(1)),
        Arc::new(Stats::default()),
    )
    .unwrap()
}

/// Offsets `first..=last` of partition 0; odd offsets go to `d=b`, even to `d=a`.
pub(crate) fn batch(id: u64, first: i64, last: i64, value: &str) -> Batch {
    let offsets: Vec<i64> = (first..=last).collect();
    let rows = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                offsets.iter().map(|o| format!("{value}{o}")),
            )),
            Arc::new(StringArray::from_iter_values(offsets.iter().map(|o| {
                if o % 2 == 0 {
                    "a"
                } else {
                    "b"
                }
            }))),
            Arc::new(Int64Array::from(offsets)),
        ],
    )
    .unwrap();
    Batch {
        provenance: crate::batch::Provenance {
            id: BatchId(id),
            tp: TopicPartition::new("t", 0),
            first_offset: first,
            last_offset: last,
        },
        rows,
        dead_letters: Vec::new(),
        retain_from: None,
    }
}

/// Writes offsets `from..=to` in batches of `size`, rolling early every `early` batches.
fn write_range(sink: &mut ParquetSink, from: i64, to: i64, size: i64, early: usize, v: &str) {
    let mut first = from;
    let mut id = 0;
    while first <= to {
        let last = (first + size - 1).min(to);
        sink.write(&batch(id, first, last, v)).unwrap();
        id += 1;
        if early > 0 && (id as usize).is_multiple_of(early) {
            sink.roll(&TopicPartition::new("t", 0), Roll::Early)
                .unwrap();
        }
        first = last + 1;
    }
    sink.flush(&Flush::all()).unwrap();
}

/// Every visible file (relative path) with its `(offset, value)` rows.
fn dataset(root: &Path) -> BTreeMap<String, Vec<(i64, String)>> {
    read::dataset_files(root)
        .unwrap()
        .into_iter()
        .map(|path| {
            let rows = read::read_file(&path)
                .unwrap()
                .iter()
                .flat_map(|b| {
                    let offsets = b.column(2).as_primitive::<Int64Type>().clone();
                    let values = b.column(0).as_string::<i32>().clone();
                    (0..b.num_rows()).map(move |i| (offsets.value(i), values.value(i).to_owned()))
                })
                .collect();
            let relative = path.strip_prefix(root).unwrap().display().to_string();
            (relative, rows)
        })
        .collect()
}

#[test]
fn files_depend_on_offsets_not_on_batching_or_early_rolls() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_range(&mut sink(a.path(), None), 0, 249, 7, 3, "v");
    write_range(&mut sink(b.path(), None), 0, 249, 50, 0, "v");
    let files = dataset(a.path());
    assert_eq!(files, dataset(b.path()));
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "d=a/t-0-00000000000000000000-00000000000000000099.parquet",
            "d=a/t-0-00000000000000000100-00000000000000000199.parquet",
            "d=a/t-0-00000000000000000200-00000000000000000249.parquet",
            "d=b/t-0-00000000000000000000-00000000000000000099.parquet",
            "d=b/t-0-00000000000000000100-00000000000000000199.parquet",
            "d=b/t-0-00000000000000000200-00000000000000000249.parquet",
        ]
    );
    let rows: usize = files.values().map(Vec::len).sum();
    assert_eq!(rows, 250);
    assert!(common_temp_files(a.path()).is_empty());
}

#[test]
fn a_restarted_writer_merges_the_tail_it_left_into_the_segment() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Stops at 129 (a flush, as on shutdown), then goes on in a new process.
    write_range(&mut sink(a.path(), None), 0, 129, 20, 1, "v");
    write_range(&mut sink(a.path(), None), 130, 249, 20, 1, "v");
    write_range(&mut sink(b.path(), None), 0, 249, 250, 0, "v");
    assert_eq!(dataset(a.path()), dataset(b.path()));
}

#[test]
fn another_writer_replaces_the_offsets_it_covers_and_keeps_the_rest() {
    let root = tempfile::tempdir().unwrap();
    write_range(&mut sink(root.path(), None), 0, 249, 50, 0, "live");
    // A backfill of 130..=229 with a new model.
    write_range(&mut sink(root.path(), Some("bf")), 130, 229, 30, 2, "new");
    let files = dataset(root.path());
    let mut rows: Vec<(i64, String)> = files.values().flatten().cloned().collect();
    rows.sort();
    let expected: Vec<(i64, String)> = (0..250)
        .map(|o| {
            let v = if (130..=229).contains(&o) {
                "new"
            } else {
                "live"
            };
            (o, format!("{v}{o}"))
        })
        .collect();
    assert_eq!(
        rows, expected,
        "every offset once, the backfill's where it ran"
    );
    let names: Vec<&str> = files
        .keys()
        .filter(|k| k.starts_with("d=a"))
        .map(String::as_str)
        .collect();
    assert_eq!(
        names,
        [
            "d=a/t-0-00000000000000000000-00000000000000000099.parquet",
            "d=a/t-0-00000000000000000100-00000000000000000199.parquet",
            "d=a/t-0-00000000000000000200-00000000000000000229.parquet",
            "d=a/t-0-00000000000000000230-00000000000000000249.parquet",
        ]
    );
    assert!(common_temp_files(root.path()).is_empty());
}

fn common_temp_files(root: &Path) -> Vec<std::path::PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .map(|e| e.into_path())
        .collect()
}

#[test]
fn a_flush_merges_every_partitions_segment_at_once_into_the_same_files() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let of = |partition: i32, id: u64, first: i64, last: i64| {
        let mut batch = batch(id, first, last, "v");
        batch.provenance.tp = TopicPartition::new("t", partition);
        batch
    };
    // Three partitions, each with early-rolled files of its open segment: one flush
    // finishes and merges all three (on the thread pool) and commits them.
    let mut merged = sink(a.path(), None);
    for (id, first) in (0..130).step_by(10).enumerate() {
        for partition in 0..3 {
            merged
                .write(&of(partition, id as u64, first, first + 9))
                .unwrap();
            if id % 4 == 3 {
                merged
                    .roll(&TopicPartition::new("t", partition), Roll::Early)
                    .unwrap();
            }
        }
    }
    merged.flush(&Flush::all()).unwrap();
    // The same rows in one batch per partition and segment, no early rolls.
    let mut whole = sink(b.path(), None);
    for partition in 0..3 {
        whole.write(&of(partition, 0, 0, 99)).unwrap();
        whole.write(&of(partition, 1, 100, 129)).unwrap();
    }
    whole.flush(&Flush::all()).unwrap();
    let files = dataset(a.path());
    assert_eq!(files, dataset(b.path()));
    // Per partition and directory: the closed segment and the open one's 100..=129.
    assert_eq!(files.len(), 3 * 2 * 2);
    assert!(files.contains_key("d=b/t-2-00000000000000000100-00000000000000000129.parquet"));
    assert_eq!(files.values().map(Vec::len).sum::<usize>(), 3 * 130);
    assert!(common_temp_files(a.path()).is_empty());
}

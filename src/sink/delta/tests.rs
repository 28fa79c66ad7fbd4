//! The Delta sink on a local table: fencing, appends to an unpartitioned table, schema
//! checks.

use std::path::Path;

use arrow::array::AsArray;
use arrow::datatypes::{Field, Int64Type, Schema, TimeUnit};

use super::*;
use crate::batch::Flush;
use crate::sink::parquet::tests::{batch, schema};

fn sink(root: &Path) -> DeltaSink {
    sink_partitioned_by(root, "[d]")
}

fn sink_partitioned_by(root: &Path, partition_by: &str) -> DeltaSink {
    let config: DeltaSinkConfig = serde_norway::from_str(&format!(
        "path: {}\npartition_by: {partition_by}\nroll:\n  max_age: 1h\n",
        root.display()
    ))
    .unwrap();
    DeltaSink::new(
        "test".into(),
        ParquetInput::Rows,
        &config,
        &Default::default(),
        schema(),
        "p",
        None,
        Arc::new(AckTracker::new(1)),
        Arc::new(Stats::default()),
    )
    .unwrap()
}

/// `(offset, v)` of every row in the files the log adds.
fn table_rows(root: &Path) -> Vec<(i64, String)> {
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(root.join("_delta_log")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(action.get("remove").is_none(), "appends only");
            let Some(add) = action["add"]["path"].as_str() else {
                continue;
            };
            let file = root.join(add);
            for batch in crate::sink::parquet::read::read_file(&file).unwrap() {
                let offsets = batch.column_by_name("_offset").unwrap();
                let values = batch.column_by_name("v").unwrap().as_string::<i32>();
                for (i, o) in offsets.as_primitive::<Int64Type>().iter().enumerate() {
                    rows.push((o.unwrap(), values.value(i).to_owned()));
                }
            }
        }
    }
    rows.sort();
    rows
}

#[test]
fn a_writer_whose_partition_moved_on_cannot_commit() {
    let root = tempfile::tempdir().unwrap();
    let mut old = sink(root.path());
    old.write(&batch(1, 0, 9, "old")).unwrap();
    old.flush(&Flush::all()).unwrap();
    // The partition moves: the new owner replays from offset 0 and skips what is there.
    let mut new = sink(root.path());
    new.write(&batch(1, 0, 14, "new")).unwrap();
    new.flush(&Flush::all()).unwrap();
    // The old owner does not know yet.
    old.write(&batch(2, 10, 19, "old")).unwrap();
    let refused = old.flush(&Flush::all());
    assert!(
        matches!(
            refused,
            Err(SinkError::Delta {
                source: DeltaError::Fenced {
                    expected: Some(9),
                    found: Some(14),
                    ..
                },
                ..
            })
        ),
        "{refused:?}"
    );
    let rows = table_rows(root.path());
    let expected: Vec<(i64, String)> = (0..=14)
        .map(|o| (o, format!("{}{o}", if o < 10 { "old" } else { "new" })))
        .collect();
    assert_eq!(rows, expected, "offsets 0..=14 once, each from its owner");
    let app = new.app_id(&TopicPartition::new("t", 0));
    assert_eq!(new.table.txn_version(&app).unwrap(), Some(14));
}

#[test]
fn an_unpartitioned_table_takes_appends_and_a_restart_skips_what_it_holds() {
    let root = tempfile::tempdir().unwrap();
    let mut first = sink_partitioned_by(root.path(), "[]");
    first.write(&batch(1, 0, 4, "a")).unwrap();
    first.flush(&Flush::all()).unwrap();
    let mut second = sink_partitioned_by(root.path(), "[]");
    second.write(&batch(1, 0, 7, "b")).unwrap();
    second.flush(&Flush::all()).unwrap();
    let rows = table_rows(root.path());
    let offsets: Vec<i64> = rows.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..=7).collect::<Vec<_>>());
    assert_eq!(rows[5].1, "b5");
}

#[test]
fn partition_columns_need_a_type_delta_partitions_by() {
    let config: DeltaSinkConfig =
        serde_norway::from_str("path: x\npartition_by: [_offset]\n").unwrap();
    assert!(check(&schema(), &config).is_ok());
    let rows = Schema::new(vec![Field::new(
        "t",
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        true,
    )]);
    assert_eq!(
        table_schema(&rows).field(0).data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    let config: DeltaSinkConfig = serde_norway::from_str("path: x\npartition_by: [t]\n").unwrap();
    assert!(check(&rows, &config).is_err());
}

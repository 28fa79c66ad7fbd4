//! Lookup joins against a reference table (Parquet or CSV with a header).
//!
//! The table is read whole into one Arrow batch and indexed by its key (compared as text).
//! A row's key becomes a row index (null when absent) and the wanted table columns are
//! gathered with Arrow's `take` kernel. A refresh task re-reads the file on an interval and
//! swaps the new table in atomically; a file that fails to read, or whose columns changed
//! type, is logged and the old table stays.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{cast, concat_batches, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::config::LookupConfig;

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("reading lookup table {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("lookup table {path}: {message}")]
    Shape { path: PathBuf, message: String },
}

/// A loaded table: the wanted columns and the key index.
pub struct Table {
    columns: Vec<ArrayRef>,
    index: HashMap<String, u32>,
}

/// Reads the whole file as one batch.
pub(crate) fn read(path: &Path) -> Result<RecordBatch, LookupError> {
    let fail = |message: String| LookupError::Read {
        path: path.to_owned(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let is_csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let (schema, batches): (SchemaRef, Vec<RecordBatch>) = if is_csv {
        let format = arrow::csv::reader::Format::default().with_header(true);
        let (schema, _) = format
            .infer_schema(&file, Some(10_000))
            .map_err(|e| fail(e.to_string()))?;
        let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
        let schema = Arc::new(schema);
        let reader = arrow::csv::ReaderBuilder::new(schema.clone())
            .with_format(format)
            .build(file)
            .map_err(|e| fail(e.to_string()))?;
        (
            schema,
            reader
                .collect::<Result<_, _>>()
                .map_err(|e| fail(e.to_string()))?,
        )
    } else {
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| fail(e.to_string()))?;
        let schema = builder.schema().clone();
        let reader = builder.build().map_err(|e| fail(e.to_string()))?;
        (
            schema,
            reader
                .collect::<Result<_, _>>()
                .map_err(|e| fail(e.to_string()))?,
        )
    };
    concat_batches(&schema, &batches).map_err(|e| fail(e.to_string()))
}

/// The fields a lookup adds (nullable: a key may be missing), or what is wrong.
pub(crate) fn output_fields(config: &LookupConfig, table: &Schema) -> Result<Vec<Field>, String> {
    if table.field_with_name(config.key_column()).is_err() {
        return Err(format!(
            "the table has no key column `{}`",
            config.key_column()
        ));
    }
    config
        .columns
        .iter()
        .map(|c| {
            table
                .field_with_name(c)
                .map(|f| Field::new(c, f.data_type().clone(), true))
                .map_err(|_| format!("the table has no column `{c}`"))
        })
        .collect()
}

impl Table {
    pub fn build(
        batch: &RecordBatch,
        config: &LookupConfig,
        path: &Path,
    ) -> Result<Table, LookupError> {
        let shape = |message: String| LookupError::Shape {
            path: path.to_owned(),
            message,
        };
        let keys = batch
            .column_by_name(config.key_column())
            .ok_or_else(|| shape(format!("no key column `{}`", config.key_column())))?;
        let keys = cast(keys, &DataType::Utf8).map_err(|e| shape(e.to_string()))?;
        let keys = keys.as_string::<i32>();
        let mut index = HashMap::with_capacity(keys.len());
        for (row, key) in keys.iter().enumerate() {
            if let Some(key) = key {
                // The first row with a key wins, like a left join on a deduplicated table.
                index.entry(key.to_owned()).or_insert(row as u32);
            }
        }
        let columns = config
            .columns
            .iter()
            .map(|c| {
                batch
                    .column_by_name(c)
                    .cloned()
                    .ok_or_else(|| shape(format!("no column `{c}`")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Table { columns, index })
    }

    /// The table columns for each row's key in `keys`.
    pub fn join(&self, keys: &ArrayRef) -> Result<Vec<ArrayRef>, arrow::error::ArrowError> {
        let keys = cast(keys, &DataType::Utf8)?;
        let keys = keys.as_string::<i32>();
        let indices: UInt32Array = keys
            .iter()
            .map(|k| k.and_then(|k| self.index.get(k).copied()))
            .collect();
        self.columns
            .iter()
            .map(|c| take(c.as_ref(), &indices, None))
            .collect()
    }

    fn data_types(&self) -> Vec<DataType> {
        self.columns.iter().map(|c| c.data_type().clone()).collect()
    }
}

/// A table that a background task keeps fresh.
pub type SharedTable = Arc<RwLock<Arc<Table>>>;

pub fn current(table: &SharedTable) -> Arc<Table> {
    match table.read() {
        Ok(t) => t.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// Re-reads the table every `config.refresh` until the stage (the last strong reference)
/// is gone.
pub fn spawn_refresh(
    table: Weak<RwLock<Arc<Table>>>,
    config: LookupConfig,
    path: PathBuf,
    stage: String,
) {
    let interval = config.refresh.max(Duration::from_millis(100));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let Some(shared) = table.upgrade() else {
                return;
            };
            let (cfg, file) = (config.clone(), path.clone());
            let loaded = tokio::task::spawn_blocking(move || {
                read(&file).and_then(|b| Table::build(&b, &cfg, &file))
            })
            .await;
            match loaded {
                Ok(Ok(fresh)) if fresh.data_types() == current(&shared).data_types() => {
                    let rows = fresh.index.len();
                    match shared.write() {
                        Ok(mut guard) => *guard = Arc::new(fresh),
                        Err(poisoned) => *poisoned.into_inner() = Arc::new(fresh),
                    }
                    tracing::debug!(stage = %stage, table = %path.display(), keys = rows, "lookup table refreshed");
                }
                Ok(Ok(_)) => {
                    tracing::error!(stage = %stage, table = %path.display(), "lookup table columns changed type; keeping the previous table")
                }
                Ok(Err(e)) => {
                    tracing::error!(stage = %stage, error = %e, "lookup table refresh failed; keeping the previous table")
                }
                Err(e) => {
                    tracing::error!(stage = %stage, error = %e, "lookup table refresh task failed")
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;

    fn config(refresh_ms: u64) -> LookupConfig {
        LookupConfig {
            path: "customers.csv".into(),
            on: "customer_id".into(),
            key: None,
            columns: vec!["segment".into()],
            refresh: Duration::from_millis(refresh_ms),
        }
    }

    fn segments(table: &Table, keys: &[Option<&str>]) -> Vec<Option<String>> {
        let keys: ArrayRef = Arc::new(StringArray::from(keys.to_vec()));
        let joined = table.join(&keys).unwrap();
        let column = joined[0].as_string::<i32>();
        column.iter().map(|v| v.map(str::to_owned)).collect()
    }

    #[test]
    fn csv_and_parquet_tables_join_on_the_key_with_nulls_for_misses() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("customers.csv");
        std::fs::write(&csv, "customer_id,segment\nc-1,smb\nc-2,enterprise\n").unwrap();
        let batch = read(&csv).unwrap();
        let table = Table::build(&batch, &config(1000), &csv).unwrap();
        let want = vec![Some("enterprise".to_owned()), None, None];
        assert_eq!(segments(&table, &[Some("c-2"), Some("c-9"), None]), want);

        let parquet = dir.path().join("customers.parquet");
        let mut writer = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&parquet).unwrap(),
            batch.schema(),
            None,
        )
        .unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let table = Table::build(&read(&parquet).unwrap(), &config(1000), &parquet).unwrap();
        assert_eq!(segments(&table, &[Some("c-2"), Some("c-9"), None]), want);
        assert!(
            output_fields(&config(1000), &read(&parquet).unwrap().schema()).unwrap()[0]
                .is_nullable()
        );
    }

    #[tokio::test]
    async fn a_refreshed_file_is_swapped_in_and_a_broken_one_keeps_the_old_table() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("customers.csv");
        std::fs::write(&csv, "customer_id,segment\nc-1,smb\n").unwrap();
        let config = config(100);
        let table: SharedTable = Arc::new(RwLock::new(Arc::new(
            Table::build(&read(&csv).unwrap(), &config, &csv).unwrap(),
        )));
        spawn_refresh(Arc::downgrade(&table), config, csv.clone(), "test".into());

        std::fs::write(&csv, "customer_id,segment\nc-1,enterprise\n").unwrap();
        let mut refreshed = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if segments(&current(&table), &[Some("c-1")]) == [Some("enterprise".to_owned())] {
                refreshed = true;
                break;
            }
        }
        assert!(refreshed, "the new file was not picked up");

        std::fs::write(&csv, "no_key_column\n1\n").unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            segments(&current(&table), &[Some("c-1")]),
            [Some("enterprise".to_owned())]
        );
    }
}

//! Lookup joins against a reference table (Parquet or CSV with a header), in a local file
//! or an object named by URL (`s3://bucket/ref/customers.parquet`).
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
    Read { path: String, message: String },
    #[error("lookup table {path}: {message}")]
    Shape { path: String, message: String },
}

/// Where a table is read from.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Object(crate::storage::ObjectLocation),
}

impl Source {
    /// `path` as written in the pipeline file: a URL, or a path relative to `base_dir`.
    pub fn open(
        path: &Path,
        base_dir: &Path,
        storage: &std::collections::BTreeMap<String, crate::config::StorageConfig>,
    ) -> Result<Source, LookupError> {
        match crate::storage::open(path, storage) {
            Ok(crate::storage::Location::Local(local)) => Ok(Source::File(base_dir.join(local))),
            Ok(crate::storage::Location::Object(object)) => Ok(Source::Object(object)),
            Err(e) => Err(LookupError::Read {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::File(path) => path.display().to_string(),
            Source::Object(object) => object.url.clone(),
        }
    }

    fn is_csv(&self) -> bool {
        let name = match self {
            Source::File(path) => path.to_string_lossy().into_owned(),
            Source::Object(object) => object.url.clone(),
        };
        Path::new(&name)
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    }

    /// The whole file.
    fn bytes(&self) -> std::io::Result<bytes::Bytes> {
        match self {
            Source::File(path) => std::fs::read(path).map(bytes::Bytes::from),
            Source::Object(object) => match object.read("")? {
                Some(bytes) => Ok(bytes::Bytes::from(bytes)),
                None => Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such object",
                )),
            },
        }
    }
}

/// A loaded table: the wanted columns and the key index.
pub struct Table {
    columns: Vec<ArrayRef>,
    index: HashMap<String, u32>,
}

/// Reads the whole table as one batch.
pub(crate) fn read(source: &Source) -> Result<RecordBatch, LookupError> {
    let fail = |message: String| LookupError::Read {
        path: source.describe(),
        message,
    };
    let bytes = source.bytes().map_err(|e| fail(e.to_string()))?;
    let (schema, batches): (SchemaRef, Vec<RecordBatch>) = if source.is_csv() {
        let format = arrow::csv::reader::Format::default().with_header(true);
        let (schema, _) = format
            .infer_schema(std::io::Cursor::new(&bytes), Some(10_000))
            .map_err(|e| fail(e.to_string()))?;
        let schema = Arc::new(schema);
        let reader = arrow::csv::ReaderBuilder::new(schema.clone())
            .with_format(format)
            .build(std::io::Cursor::new(&bytes))
            .map_err(|e| fail(e.to_string()))?;
        (
            schema,
            reader
                .collect::<Result<_, _>>()
                .map_err(|e| fail(e.to_string()))?,
        )
    } else {
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
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
        source: &Source,
    ) -> Result<Table, LookupError> {
        let shape = |message: String| LookupError::Shape {
            path: source.describe(),
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
    source: Source,
    stage: String,
) {
    let interval = config.refresh.max(Duration::from_millis(100));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let Some(shared) = table.upgrade() else {
                return;
            };
            let (cfg, from) = (config.clone(), source.clone());
            let loaded = tokio::task::spawn_blocking(move || {
                read(&from).and_then(|b| Table::build(&b, &cfg, &from))
            })
            .await;
            match loaded {
                Ok(Ok(fresh)) if fresh.data_types() == current(&shared).data_types() => {
                    let rows = fresh.index.len();
                    match shared.write() {
                        Ok(mut guard) => *guard = Arc::new(fresh),
                        Err(poisoned) => *poisoned.into_inner() = Arc::new(fresh),
                    }
                    tracing::debug!(stage = %stage, table = %source.describe(), keys = rows, "lookup table refreshed");
                }
                Ok(Ok(_)) => {
                    tracing::error!(stage = %stage, table = %source.describe(), "lookup table columns changed type; keeping the previous table")
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

    fn path(source: &Source) -> &Path {
        match source {
            Source::File(path) => path,
            Source::Object(_) => panic!("a file"),
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
        let csv = Source::File(dir.path().join("customers.csv"));
        std::fs::write(path(&csv), "customer_id,segment\nc-1,smb\nc-2,enterprise\n").unwrap();
        let batch = read(&csv).unwrap();
        let table = Table::build(&batch, &config(1000), &csv).unwrap();
        let want = vec![Some("enterprise".to_owned()), None, None];
        assert_eq!(segments(&table, &[Some("c-2"), Some("c-9"), None]), want);

        let parquet = Source::File(dir.path().join("customers.parquet"));
        let mut writer = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(path(&parquet)).unwrap(),
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

    #[test]
    fn a_table_is_read_from_an_object_store_url() {
        let object = crate::storage::ObjectLocation {
            url: "memory://bucket/ref/customers.csv".into(),
            store: Arc::new(object_store::memory::InMemory::new()),
            prefix: "ref/customers.csv".into(),
        };
        let source = Source::Object(object.clone());
        let missing = read(&source).unwrap_err().to_string();
        assert!(
            missing.contains("memory://bucket/ref/customers.csv"),
            "{missing}"
        );
        object
            .put("", b"customer_id,segment\nc-1,smb\n".to_vec())
            .unwrap();
        let table = Table::build(&read(&source).unwrap(), &config(1000), &source).unwrap();
        assert_eq!(segments(&table, &[Some("c-1")]), [Some("smb".to_owned())]);
    }

    #[tokio::test]
    async fn a_refreshed_file_is_swapped_in_and_a_broken_one_keeps_the_old_table() {
        let dir = tempfile::tempdir().unwrap();
        let csv = Source::File(dir.path().join("customers.csv"));
        std::fs::write(path(&csv), "customer_id,segment\nc-1,smb\n").unwrap();
        let config = config(100);
        let table: SharedTable = Arc::new(RwLock::new(Arc::new(
            Table::build(&read(&csv).unwrap(), &config, &csv).unwrap(),
        )));
        spawn_refresh(Arc::downgrade(&table), config, csv.clone(), "test".into());

        std::fs::write(path(&csv), "customer_id,segment\nc-1,enterprise\n").unwrap();
        let mut refreshed = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if segments(&current(&table), &[Some("c-1")]) == [Some("enterprise".to_owned())] {
                refreshed = true;
                break;
            }
        }
        assert!(refreshed, "the new file was not picked up");

        std::fs::write(path(&csv), "no_key_column\n1\n").unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            segments(&current(&table), &[Some("c-1")]),
            [Some("enterprise".to_owned())]
        );
    }
}

//! The `delta` sink: a Delta Lake table, on a local directory or an object-store URL, with
//! the kafka-delta-ingest guarantee.
//!
//! Rows of each source partition collect in an open *group* (one Parquet file per table
//! partition, written to a local spool) until `roll` says to commit it. A commit uploads
//! the files whole (multipart when large) and appends one table version through the Delta
//! kernel (`delta_kernel`, delta-io's own, on our arrow/parquet and object_store) with an
//! `add` action per file (partition values and statistics: row count, null counts,
//! min/max) and a `txn` action for the source partition: application id
//! `sluice:PIPELINE:TOPIC:PARTITION` (a backfill adds `:backfill:RUN`), version = the last
//! offset the table now holds. Log entries are created with put-if-absent, so two writers
//! never both take a version.
//!
//! Exactly once: when a partition is assigned the sink reads its `txn` version from the
//! table and drops replayed rows up to it; before each commit it checks, on the version it
//! commits against, that the `txn` version is still what it last wrote or read. If another
//! writer moved it (a zombie writer, or the partition's new owner), the commit is refused
//! and the sink stops without acknowledging, so no offset is committed past the table.
//! Files uploaded for a commit that did not happen are in no version: readers never see
//! them (`VACUUM` removes them). Every `checkpoint_interval` versions a checkpoint is
//! written, so readers replay a short log.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{cast, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use delta_kernel::committer::FileSystemCommitter;
use delta_kernel::engine::arrow_conversion::TryFromArrow;
use delta_kernel::engine::arrow_data::ArrowEngineData;
use delta_kernel::expressions::{ColumnName, Scalar};
use delta_kernel::schema::StructType;
use delta_kernel::transaction::create_table::create_table;
use delta_kernel::transaction::data_layout::DataLayout;
use delta_kernel::transaction::{CommitResult, UpdateTableOperation};
use delta_kernel::{Snapshot, SnapshotRef};
use delta_kernel_default_engine::executor::tokio::TokioMultiThreadExecutor;
use delta_kernel_default_engine::parquet::DataFileMetadata;
use delta_kernel_default_engine::stats::FileStatsAccumulator;
use delta_kernel_default_engine::{build_add_file_metadata, DefaultEngine, DefaultEngineBuilder};
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as ParquetCompression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tokio::sync::mpsc;
use url::Url;

use super::parquet::rewrite::rows_between;
use super::parquet::ParquetInput;
use super::rolling::{self, Rolling};
use super::{SinkError, SinkMessage};
use crate::ack::AckTracker;
use crate::batch::{Batch, BatchId, TopicPartition};
use crate::config::{Compression, DeltaSinkConfig, StorageConfig};
use crate::dead_letter;
use crate::storage::{self, Location};
use crate::telemetry::Stats;

type Engine = DefaultEngine<TokioMultiThreadExecutor>;

/// Why the Delta sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("the Delta table at `{url}`: {source}")]
    Kernel {
        url: String,
        #[source]
        source: delta_kernel::KernelError,
    },
    #[error(
        "partition {partition}: the table holds offsets up to {found:?} from another writer \
         (this writer expected {expected:?}): it no longer owns the partition and stops \
         without committing"
    )]
    Fenced {
        partition: TopicPartition,
        expected: Option<i64>,
        found: Option<i64>,
    },
    #[error("columns the Delta table cannot hold: {0}")]
    Schema(String),
    #[error("spool file {}: {source}", path.display())]
    Spool {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The Arrow schema a Delta table holds for `rows`: timestamps in microseconds, fixed-size
/// lists as lists, string views as strings (what the Delta protocol has types for).
pub fn table_schema(rows: &Schema) -> SchemaRef {
    let fields: Vec<Field> = rows
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_data_type(delta_type(f.data_type())))
        .collect();
    Arc::new(Schema::new(fields))
}

fn delta_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::FixedSizeList(item, _) | DataType::LargeList(item) | DataType::List(item) => {
            let item = item
                .as_ref()
                .clone()
                .with_data_type(delta_type(item.data_type()));
            DataType::List(Arc::new(item))
        }
        DataType::Struct(fields) => DataType::Struct(
            fields
                .iter()
                .map(|f| f.as_ref().clone().with_data_type(delta_type(f.data_type())))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Checks what `validate` can know: the rows fit a Delta table and the partition columns
/// exist with a type Delta partitions by.
pub fn check(rows: &Schema, config: &DeltaSinkConfig) -> Result<(), DeltaError> {
    let schema = table_schema(rows);
    StructType::try_from_arrow(schema.as_ref()).map_err(|e| DeltaError::Schema(e.to_string()))?;
    for column in &config.partition_by {
        let Ok(field) = schema.field_with_name(column) else {
            return Err(DeltaError::Schema(format!(
                "partition column `{column}` is not among the rows' columns"
            )));
        };
        if !partition_type(field.data_type()) {
            return Err(DeltaError::Schema(format!(
                "partition column `{column}` is {}: expected a string, integer, boolean or \
                 date column",
                field.data_type()
            )));
        }
    }
    Ok(())
}

fn partition_type(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::Boolean
            | DataType::Date32
    )
}

/// The kernel value of partition column `array` at `row`.
fn scalar_at(array: &ArrayRef, row: usize) -> Scalar {
    use arrow::datatypes::{Date32Type, Int16Type, Int32Type, Int64Type, Int8Type};
    if array.is_null(row) {
        let kernel = delta_kernel::schema::DataType::try_from_arrow(array.data_type())
            .unwrap_or(delta_kernel::schema::DataType::STRING);
        return Scalar::Null(kernel);
    }
    match array.data_type() {
        DataType::Int8 => Scalar::Byte(array.as_primitive::<Int8Type>().value(row)),
        DataType::Int16 => Scalar::Short(array.as_primitive::<Int16Type>().value(row)),
        DataType::Int32 => Scalar::Integer(array.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => Scalar::Long(array.as_primitive::<Int64Type>().value(row)),
        DataType::Boolean => Scalar::Boolean(array.as_boolean().value(row)),
        DataType::Date32 => Scalar::Date(array.as_primitive::<Date32Type>().value(row)),
        _ => Scalar::String(
            array
                .as_string_opt::<i32>()
                .map(|a| a.value(row).to_owned())
                .unwrap_or_default(),
        ),
    }
}

/// A table: where it is and the kernel engine that reads and writes it.
struct Table {
    url: Url,
    store: Arc<dyn ObjectStore>,
    engine: Engine,
    snapshot: SnapshotRef,
}

impl Table {
    fn kernel_error(&self, source: delta_kernel::KernelError) -> DeltaError {
        DeltaError::Kernel {
            url: self.url.to_string(),
            source,
        }
    }

    /// Opens the table at `location`, creating it with `schema` (partitioned by
    /// `partition_by`) if it does not exist.
    fn open(
        location: Location,
        schema: &Schema,
        partition_by: &[String],
    ) -> Result<Table, DeltaError> {
        let (url, store): (Url, Arc<dyn ObjectStore>) = match location {
            Location::Local(path) => {
                std::fs::create_dir_all(&path).map_err(|source| DeltaError::Spool {
                    path: path.clone(),
                    source,
                })?;
                let absolute = std::fs::canonicalize(&path)
                    .map_err(|source| DeltaError::Spool { path, source })?;
                let url = Url::from_directory_path(&absolute).map_err(|()| {
                    DeltaError::Schema(format!("{} is not absolute", absolute.display()))
                })?;
                (url, Arc::new(object_store::local::LocalFileSystem::new()))
            }
            Location::Object(object) => {
                let text = format!("{}/", object.url.trim_end_matches('/'));
                let url = Url::parse(&text).map_err(|e| DeltaError::Schema(e.to_string()))?;
                (url, object.store)
            }
        };
        let kernel = |source| DeltaError::Kernel {
            url: url.to_string(),
            source,
        };
        // The kernel's I/O runs on sluice's object-store runtime (which is never dropped, so
        // a sink may be dropped anywhere).
        let executor = match storage::io_runtime() {
            Some(runtime) => TokioMultiThreadExecutor::new(runtime.handle().clone()),
            None => TokioMultiThreadExecutor::new_owned_runtime(Some(2), None).map_err(kernel)?,
        };
        let engine = DefaultEngineBuilder::new(store.clone())
            .with_task_executor(Arc::new(executor))
            .build();
        let log = ObjectPath::from_url_path(format!("{}_delta_log/", url.path()))
            .map_err(|e| DeltaError::Schema(e.to_string()))?;
        let exists = {
            let store = store.clone();
            storage::block_on(async move { store.list_with_delimiter(Some(&log)).await })
                .map(|listed| !listed.objects.is_empty())
                .unwrap_or(false)
        };
        let snapshot = storage::blocking(|| -> Result<SnapshotRef, DeltaError> {
            if exists {
                return Snapshot::builder_for(url.as_str())
                    .build(&engine)
                    .map_err(kernel);
            }
            let kernel_schema = Arc::new(
                StructType::try_from_arrow(schema)
                    .map_err(|e| DeltaError::Schema(e.to_string()))?,
            );
            let mut create = create_table(url.as_str(), kernel_schema, engine_info(), true);
            if !partition_by.is_empty() {
                create = create.with_data_layout(DataLayout::Partitioned {
                    columns: partition_by
                        .iter()
                        .map(|c| ColumnName::new([c.as_str()]))
                        .collect(),
                });
            }
            let created = create
                .build(&engine, Box::new(FileSystemCommitter::new()))
                .and_then(|txn| txn.commit(&engine))
                .map_err(kernel)?;
            if !created.is_committed() {
                // Another writer created it first: use theirs.
                tracing::info!(table = %url, "the Delta table was created by another writer meanwhile");
            }
            Snapshot::builder_for(url.as_str())
                .build(&engine)
                .map_err(kernel)
        })?;
        Ok(Table {
            url,
            store,
            engine,
            snapshot,
        })
    }

    /// The latest version of the table.
    fn refresh(&mut self) -> Result<(), DeltaError> {
        let snapshot =
            storage::blocking(|| Snapshot::builder_from(self.snapshot.clone()).build(&self.engine))
                .map_err(|e| self.kernel_error(e))?;
        self.snapshot = snapshot;
        Ok(())
    }

    fn txn_version(&self, app_id: &str) -> Result<Option<i64>, DeltaError> {
        storage::blocking(|| self.snapshot.get_app_id_version(app_id, &self.engine))
            .map_err(|e| self.kernel_error(e))
    }
}

fn engine_info() -> String {
    format!("sluice/{}", env!("CARGO_PKG_VERSION"))
}

/// Rows of one table partition: grouping key, partition values, rows.
type TablePartition = (String, HashMap<String, Scalar>, RecordBatch);

/// One file of an open group: the rows of one table partition.
struct GroupFile {
    values: HashMap<String, Scalar>,
    path: PathBuf,
    writer: ArrowWriter<BufWriter<File>>,
    stats: FileStatsAccumulator,
}

struct OpenGroup {
    first: i64,
    last: i64,
    /// By partition directory key.
    files: BTreeMap<String, GroupFile>,
    rows: u64,
    batches: Vec<BatchId>,
    opened: Instant,
}

pub(crate) struct PartitionState {
    /// The table's `txn` version for the partition: rows up to it are in the table.
    durable_through: Option<i64>,
    open: Option<OpenGroup>,
    rolled: bool,
}

pub struct DeltaSink {
    name: String,
    input: ParquetInput,
    table: Table,
    /// `sluice:PIPELINE` (and `:backfill:RUN`); `:TOPIC:PARTITION` is added per partition.
    app: String,
    /// What the files hold: the table's columns without the partition columns.
    file_schema: SchemaRef,
    /// The table's columns (rows as the table holds them).
    table_schema: SchemaRef,
    /// Indices of the received columns the table holds.
    projection: Vec<usize>,
    /// Indices in `table_schema` of the written columns and of the partition columns.
    file_columns: Vec<usize>,
    partition_columns: Vec<(String, usize)>,
    kernel_file_schema: StructType,
    stats_columns: Vec<ColumnName>,
    properties: WriterProperties,
    config: DeltaSinkConfig,
    spool: tempfile::TempDir,
    partitions: HashMap<TopicPartition, PartitionState>,
    acks: Arc<AckTracker>,
    stats: Arc<Stats>,
}

impl DeltaSink {
    /// `schema`: what the sink receives. `pipeline`: the pipeline's name; `writer` a
    /// backfill's run id (see the module docs for the application ids).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        input: ParquetInput,
        config: &DeltaSinkConfig,
        storage_config: &BTreeMap<String, StorageConfig>,
        schema: SchemaRef,
        pipeline: &str,
        writer: Option<String>,
        acks: Arc<AckTracker>,
        stats: Arc<Stats>,
    ) -> Result<Self, SinkError> {
        let storage_error = |source| SinkError::Storage {
            sink: name.clone(),
            source,
        };
        let location = storage::open(&config.path, storage_config).map_err(storage_error)?;
        storage::probe(&location).map_err(storage_error)?;
        let projected: Vec<usize> = schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| {
                config.columns.as_ref().is_none_or(|c| c.contains(f.name()))
                    || crate::schema::is_provenance(f.name())
            })
            .map(|(i, _)| i)
            .collect();
        let table_schema = table_schema(&schema.project(&projected)?);
        check(&table_schema, config).map_err(|e| delta_error(&name, e))?;
        let table = Table::open(location, &table_schema, &config.partition_by)
            .map_err(|e| delta_error(&name, e))?;
        // The columns the table wants statistics for (its data-skipping settings).
        let stats_columns = storage::blocking(|| {
            table
                .snapshot
                .clone()
                .update_table(UpdateTableOperation::StreamingUpdate, engine_info(), true)
                .build(&table.engine, Box::new(FileSystemCommitter::new()))
                .map(|txn| txn.stats_columns())
        })
        .map_err(|e| delta_error(&name, table.kernel_error(e)))?;
        let partition_columns: Vec<(String, usize)> = config
            .partition_by
            .iter()
            .filter_map(|c| Some((c.clone(), table_schema.index_of(c).ok()?)))
            .collect();
        let file_columns: Vec<usize> = (0..table_schema.fields().len())
            .filter(|i| !partition_columns.iter().any(|(_, p)| p == i))
            .collect();
        let file_schema = Arc::new(table_schema.project(&file_columns)?);
        let kernel_file_schema = StructType::try_from_arrow(file_schema.as_ref())
            .map_err(|e| delta_error(&name, DeltaError::Schema(e.to_string())))?;
        let compression = match config.compression {
            Compression::Zstd => ParquetCompression::ZSTD(ZstdLevel::default()),
            Compression::None => ParquetCompression::UNCOMPRESSED,
        };
        let properties = WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(config.row_group_rows))
            .set_created_by(engine_info())
            .build();
        let app = match &writer {
            Some(run) => format!("sluice:{pipeline}:backfill:{run}"),
            None => format!("sluice:{pipeline}"),
        };
        let spool = tempfile::Builder::new()
            .prefix("sluice-delta-")
            .tempdir()
            .map_err(|source| SinkError::Io {
                sink: name.clone(),
                path: std::env::temp_dir(),
                source,
            })?;
        Ok(DeltaSink {
            projection: projected,
            name,
            input,
            table,
            app,
            file_schema,
            table_schema,
            file_columns,
            partition_columns,
            kernel_file_schema,
            stats_columns,
            properties,
            config: config.clone(),
            spool,
            partitions: HashMap::new(),
            acks,
            stats,
        })
    }

    /// Runs until the input closes, then commits whatever is still open.
    pub async fn run(mut self, input: mpsc::Receiver<SinkMessage>) -> Result<(), SinkError> {
        rolling::run(&mut self, input).await
    }

    fn app_id(&self, tp: &TopicPartition) -> String {
        format!("{}:{}:{}", self.app, tp.topic, tp.partition)
    }

    fn error(&self, source: DeltaError) -> SinkError {
        delta_error(&self.name, source)
    }

    /// The rows of `batch` this sink writes, as the table holds them.
    fn rows_of(&self, batch: &Batch) -> Result<RecordBatch, SinkError> {
        let rows = match self.input {
            ParquetInput::Rows => batch.rows.clone(),
            ParquetInput::DeadLetters => dead_letter::to_record_batch(&batch.dead_letters)?,
        };
        let rows = rows.project(&self.projection)?;
        let columns = rows
            .columns()
            .iter()
            .zip(self.table_schema.fields())
            .map(|(column, field)| {
                if column.data_type() == field.data_type() {
                    Ok(column.clone())
                } else {
                    cast(column, field.data_type())
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(self.table_schema.clone(), columns)?)
    }

    /// Reads the partition's offset from the table the first time a batch of it arrives.
    fn ensure_partition(&mut self, tp: &TopicPartition) -> Result<(), SinkError> {
        if self.partitions.contains_key(tp) {
            return Ok(());
        }
        self.table.refresh().map_err(|e| self.error(e))?;
        let durable_through = self
            .table
            .txn_version(&self.app_id(tp))
            .map_err(|e| self.error(e))?;
        if let Some(offset) = durable_through {
            tracing::info!(sink = %self.name, partition = %tp, offset, "the Delta table already holds rows up to this offset; replayed rows are skipped");
        }
        self.partitions.insert(
            tp.clone(),
            PartitionState {
                durable_through,
                open: None,
                rolled: false,
            },
        );
        Ok(())
    }

    fn write_batch(&mut self, batch: &Batch) -> Result<(), SinkError> {
        let prov = &batch.provenance;
        let tp = &prov.tp;
        self.ensure_partition(tp)?;
        let durable_through = self.partitions.get(tp).and_then(|s| s.durable_through);
        if durable_through.is_some_and(|done| prov.last_offset <= done) {
            self.acks.ack(tp, prov.id);
            return Ok(());
        }
        let mut rows = self.rows_of(batch)?;
        if let Some(done) = durable_through {
            rows = rows_between(&rows, done + 1, i64::MAX)?;
        }
        let first = durable_through.map_or(prov.first_offset, |d| (d + 1).max(prov.first_offset));
        let parts = self.split(&rows)?;
        let spool = self.spool.path().to_owned();
        let Some(state) = self.partitions.get_mut(tp) else {
            return Ok(());
        };
        let group = state.open.get_or_insert_with(|| OpenGroup {
            first,
            last: prov.last_offset,
            files: BTreeMap::new(),
            rows: 0,
            batches: Vec::new(),
            opened: Instant::now(),
        });
        group.last = prov.last_offset;
        group.batches.push(prov.id);
        group.rows += rows.num_rows() as u64;
        for (key, values, part) in parts {
            let file = match group.files.entry(key) {
                std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::btree_map::Entry::Vacant(entry) => {
                    let path = spool.join(format!("{}-{}.parquet", tp, uuid_like()));
                    let handle = File::create(&path).map_err(|source| DeltaError::Spool {
                        path: path.clone(),
                        source,
                    });
                    let handle = handle.map_err(|e| delta_error(&self.name, e))?;
                    let writer = ArrowWriter::try_new(
                        BufWriter::new(handle),
                        self.file_schema.clone(),
                        Some(self.properties.clone()),
                    )?;
                    let stats =
                        FileStatsAccumulator::new(&self.stats_columns, &self.kernel_file_schema);
                    entry.insert(GroupFile {
                        values,
                        path,
                        writer,
                        stats,
                    })
                }
            };
            let data = part.project(&self.file_columns)?;
            file.writer.write(&data)?;
            file.stats.merge(&data).map_err(|source| {
                delta_error(
                    &self.name,
                    DeltaError::Kernel {
                        url: self.table.url.to_string(),
                        source,
                    },
                )
            })?;
        }
        if self.is_full(tp) {
            self.roll(tp)?;
        }
        Ok(())
    }

    /// Splits rows by their partition values: (key, values, rows) per table partition.
    fn split(&self, rows: &RecordBatch) -> Result<Vec<TablePartition>, SinkError> {
        if self.partition_columns.is_empty() {
            return Ok(vec![(String::new(), HashMap::new(), rows.clone())]);
        }
        let texts: Vec<ArrayRef> = self
            .partition_columns
            .iter()
            .map(|(_, i)| cast(rows.column(*i), &DataType::Utf8))
            .collect::<Result<_, _>>()?;
        let mut groups: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for row in 0..rows.num_rows() {
            let key: Vec<String> = texts
                .iter()
                .map(|t| {
                    if t.is_null(row) {
                        "\u{0}null".to_owned()
                    } else {
                        t.as_string::<i32>().value(row).to_owned()
                    }
                })
                .collect();
            groups
                .entry(key.join("\u{1}"))
                .or_default()
                .push(row as u32);
        }
        let mut parts = Vec::with_capacity(groups.len());
        for (key, indices) in groups {
            let part = take_record_batch(rows, &UInt32Array::from(indices))?;
            let values = self
                .partition_columns
                .iter()
                .map(|(name, i)| (name.clone(), scalar_at(part.column(*i), 0)))
                .collect();
            parts.push((key, values, part));
        }
        Ok(parts)
    }

    fn is_full(&self, tp: &TopicPartition) -> bool {
        self.partitions
            .get(tp)
            .and_then(|s| s.open.as_ref())
            .is_some_and(|g| {
                g.rows >= self.config.roll.max_rows
                    || g.files
                        .values()
                        .map(|f| (f.writer.bytes_written() + f.writer.in_progress_size()) as u64)
                        .sum::<u64>()
                        >= self.config.roll.max_bytes.as_u64()
            })
    }

    /// Commits the open group of `tp` as one table version, then acknowledges its batches.
    fn roll(&mut self, tp: &TopicPartition) -> Result<(), SinkError> {
        let Some(state) = self.partitions.get_mut(tp) else {
            return Ok(());
        };
        let Some(group) = state.open.take() else {
            return Ok(());
        };
        state.rolled = true;
        let expected = state.durable_through;
        let mut written = Vec::with_capacity(group.files.len());
        for (_, file) in group.files {
            file.writer.close()?;
            let stats = file.stats.finish().map_err(|e| self.kernel(e))?;
            written.push((file.values, file.path, stats));
        }
        if group.rows > 0 {
            let bytes = self.commit(tp, expected, (group.first, group.last), written)?;
            self.stats.record_files(bytes.0, group.rows, bytes.1);
        }
        if let Some(state) = self.partitions.get_mut(tp) {
            state.durable_through = Some(group.last).max(state.durable_through);
        }
        for id in group.batches {
            self.acks.ack(tp, id);
        }
        Ok(())
    }

    fn kernel(&self, source: delta_kernel::KernelError) -> SinkError {
        self.error(DeltaError::Kernel {
            url: self.table.url.to_string(),
            source,
        })
    }

    /// Uploads the group's files and appends them with the partition's `txn` version
    /// `last`, on whatever version the table is at, as long as the partition's version is
    /// still `expected`. `first..=last`: the offsets of the group. Returns (files, bytes).
    fn commit(
        &mut self,
        tp: &TopicPartition,
        expected: Option<i64>,
        (first, last): (i64, i64),
        files: Vec<(
            HashMap<String, Scalar>,
            PathBuf,
            Option<arrow::array::StructArray>,
        )>,
    ) -> Result<(u64, u64), SinkError> {
        let app_id = self.app_id(tp);
        let mut uploaded = Vec::with_capacity(files.len());
        let mut bytes = 0;
        // Files are uploaded once; only the log entry is retried on a conflict.
        let write_state = storage::blocking(|| {
            self.table
                .snapshot
                .clone()
                .update_table(UpdateTableOperation::StreamingUpdate, engine_info(), true)
                .build(&self.table.engine, Box::new(FileSystemCommitter::new()))
                .and_then(|txn| txn.write_state())
        })
        .map_err(|e| self.kernel(e))?;
        for (values, path, stats) in files {
            let mut context = write_state.write_context_builder();
            if !values.is_empty() {
                context = context.with_partition_values(values);
            }
            let context = context.build().map_err(|e| self.kernel(e))?;
            let name = format!(
                "part-{tp}-{first:020}-{last:020}-{}.{}.parquet",
                uuid_like(),
                match self.config.compression {
                    Compression::Zstd => "zstd",
                    Compression::None => "uncompressed",
                }
            );
            let url = context
                .write_dir()
                .join(&name)
                .map_err(|e| self.error(DeltaError::Schema(e.to_string())))?;
            let key = ObjectPath::from_url_path(url.path())
                .map_err(|e| self.error(DeltaError::Schema(e.to_string())))?;
            let size =
                storage::upload_file(self.table.store.clone(), key, &path).map_err(|source| {
                    SinkError::Io {
                        sink: self.name.clone(),
                        path: PathBuf::from(url.as_str()),
                        source,
                    }
                })?;
            let _ = std::fs::remove_file(&path);
            bytes += size;
            let now = chrono::Utc::now().timestamp_millis();
            let stats = match stats {
                Some(stats) => stats,
                None => continue,
            };
            let meta = DataFileMetadata::new(delta_kernel::FileMeta::new(url, now, size), stats);
            let add = build_add_file_metadata(meta, &context)
                .and_then(ArrowEngineData::try_from_engine_data)
                .map_err(|e| self.kernel(e))?;
            uploaded.push(add.record_batch().clone());
        }
        let count = uploaded.len() as u64;
        for attempt in 0..20 {
            let found = self.table.txn_version(&app_id).map_err(|e| self.error(e))?;
            if found != expected {
                return Err(self.error(DeltaError::Fenced {
                    partition: tp.clone(),
                    expected,
                    found,
                }));
            }
            let adds: Vec<_> = uploaded
                .iter()
                .map(|a| Box::new(ArrowEngineData::new(a.clone())))
                .collect();
            let engine = &self.table.engine;
            let snapshot = self.table.snapshot.clone();
            let result = storage::blocking(|| -> Result<_, delta_kernel::KernelError> {
                let mut txn = snapshot
                    .update_table(UpdateTableOperation::StreamingUpdate, engine_info(), true)
                    .with_transaction_id(app_id.clone(), last)
                    .with_blind_append()
                    .build(engine, Box::new(FileSystemCommitter::new()))?;
                for add in adds {
                    txn.add_files(add);
                }
                txn.commit(engine)
            })
            .map_err(|e| self.kernel(e))?;
            match result {
                CommitResult::Committed(committed) => {
                    let version = committed.commit_version();
                    match committed.post_commit_snapshot() {
                        Some(snapshot) => self.table.snapshot = snapshot.clone(),
                        None => self.table.refresh().map_err(|e| self.error(e))?,
                    }
                    self.checkpoint(version);
                    tracing::debug!(sink = %self.name, partition = %tp, version, last, files = count, "committed to the Delta table");
                    return Ok((count, bytes));
                }
                CommitResult::Conflicted(_) | CommitResult::Retryable(_) => {
                    // Another writer took the version: read the table again and retry.
                    if attempt > 2 {
                        std::thread::sleep(Duration::from_millis(20 * attempt));
                    }
                    self.table.refresh().map_err(|e| self.error(e))?;
                }
            }
        }
        Err(self.error(DeltaError::Schema(format!(
            "partition {tp}: 20 attempts to append a version conflicted with other writers"
        ))))
    }

    /// Writes a checkpoint at every `checkpoint_interval`-th version (failures are logged:
    /// the table stays readable, only slower).
    fn checkpoint(&self, version: u64) {
        let interval = self.config.checkpoint_interval.max(1);
        if version == 0 || !version.is_multiple_of(interval) {
            return;
        }
        let snapshot = self.table.snapshot.clone();
        if let Err(e) = storage::blocking(|| snapshot.checkpoint(&self.table.engine, None)) {
            tracing::warn!(sink = %self.name, version, error = %e, "writing a Delta checkpoint failed; readers replay more log until the next one");
        }
    }
}

impl Rolling for DeltaSink {
    type State = PartitionState;

    fn roll_config(&self) -> &crate::config::RollConfig {
        &self.config.roll
    }

    fn partitions(&mut self) -> &mut HashMap<TopicPartition, PartitionState> {
        &mut self.partitions
    }

    fn group_age(state: &PartitionState) -> (Option<Instant>, bool) {
        (state.open.as_ref().map(|g| g.opened), state.rolled)
    }

    fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        self.write_batch(batch)
    }

    fn roll_group(&mut self, tp: &TopicPartition, _early: bool) -> Result<(), SinkError> {
        self.roll(tp)
    }
}

fn delta_error(sink: &str, source: DeltaError) -> SinkError {
    SinkError::Delta {
        sink: sink.to_owned(),
        source,
    }
}

/// A random 128-bit hex id for file names.
fn uuid_like() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;

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
        let config: DeltaSinkConfig =
            serde_norway::from_str("path: x\npartition_by: [t]\n").unwrap();
        assert!(check(&rows, &config).is_err());
    }
}

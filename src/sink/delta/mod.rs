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
use arrow::datatypes::{DataType, SchemaRef};
use delta_kernel::committer::FileSystemCommitter;
use delta_kernel::engine::arrow_conversion::TryFromArrow;
use delta_kernel::engine::arrow_data::ArrowEngineData;
use delta_kernel::expressions::{ColumnName, Scalar};
use delta_kernel::schema::StructType;
use delta_kernel::transaction::{CommitResult, UpdateTableOperation};
use delta_kernel_default_engine::executor::tokio::TokioMultiThreadExecutor;
use delta_kernel_default_engine::parquet::DataFileMetadata;
use delta_kernel_default_engine::stats::FileStatsAccumulator;
use delta_kernel_default_engine::{build_add_file_metadata, DefaultEngine};
use object_store::path::Path as ObjectPath;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as ParquetCompression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tokio::sync::mpsc;

use super::parquet::rewrite::rows_between;
use super::parquet::ParquetInput;
use super::rolling::{self, Rolling};
use super::{SinkError, SinkMessage};
use crate::ack::AckTracker;
use crate::batch::{Batch, BatchId, TopicPartition};
use crate::config::{Compression, DeltaSinkConfig, StorageConfig};
use crate::dead_letter;
use crate::storage;
use crate::telemetry::Stats;

mod commit;
mod schema;
mod table;

use schema::scalar_at;
pub use schema::{check, table_schema};
pub use table::live_files;
use table::{engine_info, Table};

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
    /// Whether `properties` were tuned to the rows yet ([`super::dictionary`]).
    tuned: bool,
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
            tuned: false,
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
        super::dictionary::tune_once(&self.name, &mut self.properties, &mut self.tuned, &rows);
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
        let texts: Vec<_> = texts.iter().map(|t| t.as_string::<i32>()).collect();
        let mut groups: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        // One key buffer for all rows: a key is only allocated for a new group.
        let mut key = String::new();
        for row in 0..rows.num_rows() {
            key.clear();
            for text in &texts {
                match text.is_null(row) {
                    true => key.push('\u{0}'),
                    false => key.push_str(text.value(row)),
                }
                key.push('\u{1}');
            }
            match groups.get_mut(key.as_str()) {
                Some(indices) => indices.push(row as u32),
                None => {
                    groups.insert(key.clone(), vec![row as u32]);
                }
            }
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

    fn acks(&self) -> &AckTracker {
        &self.acks
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
mod tests;

//! The `parquet` sink: a Hive-partitioned Parquet dataset in a local directory.
//!
//! Per source partition the sink keeps one open *group* of files (one per Hive
//! directory) covering a contiguous offset range. A group is rolled (closed, fsynced and
//! committed, see [`commit`]) when it reaches `roll.max_rows` or `roll.max_bytes`, when it
//! is `roll.max_age` old, when too many files are open (`max_open_files`: the oldest group
//! goes first), on a flush (partition revoked, shutdown) and on close. Only then are its
//! batches acknowledged, which is what lets the source commit their offsets.
//!
//! The same sink type writes the dead-letter dataset, reading a batch's dead letters
//! instead of its rows.

pub mod commit;
pub mod partition;
pub mod read;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::BufWriter;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::compute::kernels::cmp::gt;
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as ParquetCompression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tokio::sync::mpsc;

use self::commit::{Dataset, StagedFile};
use self::partition::{PartitionKey, Partitioner};
use super::{Flush, SinkError, SinkMessage};
use crate::ack::AckTracker;
use crate::batch::{Batch, BatchId, TopicPartition};
use crate::config::{Compression, ParquetSinkConfig};
use crate::dead_letter;
use crate::schema::OFFSET_COLUMN;
use crate::telemetry::Stats;

/// Which part of a batch this sink writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParquetInput {
    Rows,
    DeadLetters,
}

struct OpenFile {
    dir: String,
    tmp_path: std::path::PathBuf,
    writer: ArrowWriter<BufWriter<File>>,
    rows: u64,
}

struct OpenGroup {
    first: i64,
    last: i64,
    files: BTreeMap<String, OpenFile>,
    rows: u64,
    batches: Vec<BatchId>,
    opened: Instant,
}

impl OpenGroup {
    fn bytes(&self) -> u64 {
        self.files
            .values()
            .map(|f| (f.writer.bytes_written() + f.writer.in_progress_size()) as u64)
            .sum()
    }
}

#[derive(Default)]
struct PartitionState {
    /// Rows up to this offset are already in the dataset (from recovery or our commits).
    durable_through: Option<i64>,
    open: Option<OpenGroup>,
}

pub struct ParquetSink {
    name: String,
    input: ParquetInput,
    dataset: Dataset,
    /// Schema of the files: the received schema, projected to `columns`.
    file_schema: SchemaRef,
    /// Indices of the written columns when `columns` is set.
    projection: Option<Vec<usize>>,
    partitioner: Partitioner,
    properties: WriterProperties,
    config: ParquetSinkConfig,
    partitions: HashMap<TopicPartition, PartitionState>,
    acks: Arc<AckTracker>,
    stats: Arc<Stats>,
}

impl ParquetSink {
    /// `schema` is what the sink receives (row schema, or the dead-letter schema).
    pub fn new(
        name: String,
        input: ParquetInput,
        config: &ParquetSinkConfig,
        schema: SchemaRef,
        acks: Arc<AckTracker>,
        stats: Arc<Stats>,
    ) -> Result<Self, SinkError> {
        let keys = config
            .partition_by
            .iter()
            .map(|spec| PartitionKey::parse(spec))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|keys| Partitioner::new(keys, &schema))
            .map_err(|message| SinkError::Setup {
                sink: name.clone(),
                message,
            })?;
        let compression = match config.compression {
            Compression::Zstd => ParquetCompression::ZSTD(ZstdLevel::default()),
            Compression::None => ParquetCompression::UNCOMPRESSED,
        };
        let properties = WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(config.row_group_rows))
            .set_created_by(format!("sluice {}", env!("CARGO_PKG_VERSION")))
            .build();
        std::fs::create_dir_all(&config.path).map_err(|source| SinkError::Io {
            sink: name.clone(),
            path: config.path.clone(),
            source,
        })?;
        let projection = config.columns.as_ref().map(|columns| {
            schema
                .fields()
                .iter()
                .enumerate()
                .filter(|(_, f)| {
                    columns.contains(f.name()) || crate::schema::is_provenance(f.name())
                })
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
        });
        let file_schema = match &projection {
            Some(indices) => Arc::new(schema.project(indices)?),
            None => schema,
        };
        Ok(ParquetSink {
            name,
            input,
            dataset: Dataset::new(&config.path),
            file_schema,
            projection,
            partitioner: keys,
            properties,
            config: config.clone(),
            partitions: HashMap::new(),
            acks,
            stats,
        })
    }

    /// Runs until the input closes, then commits whatever is still open.
    pub async fn run(mut self, mut input: mpsc::Receiver<SinkMessage>) -> Result<(), SinkError> {
        let period =
            (self.config.roll.max_age / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = input.recv() => match message {
                    Some(SinkMessage::Batch(batch)) => self.write(&batch)?,
                    Some(SinkMessage::Flush(flush)) => self.flush(&flush)?,
                    None => break,
                },
                _ = tick.tick() => self.roll_aged()?,
            }
        }
        self.flush(&Flush::all())
    }

    fn rows_of(&self, batch: &Batch) -> Result<RecordBatch, SinkError> {
        match self.input {
            ParquetInput::Rows => Ok(batch.rows.clone()),
            ParquetInput::DeadLetters => Ok(dead_letter::to_record_batch(&batch.dead_letters)?),
        }
    }

    fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
        let prov = &batch.provenance;
        if !self.partitions.contains_key(&prov.tp) {
            let durable_through = self
                .dataset
                .recover(&prov.tp)
                .map_err(|source| self.io_error(self.dataset.root(), source))?;
            if let Some(offset) = durable_through {
                tracing::info!(sink = %self.name, partition = %prov.tp, offset, "dataset already holds rows up to this offset; replayed rows are skipped");
            }
            self.partitions.insert(
                prov.tp.clone(),
                PartitionState {
                    durable_through,
                    open: None,
                },
            );
        }
        let durable_through = self
            .partitions
            .get(&prov.tp)
            .and_then(|s| s.durable_through);
        let mut rows = self.rows_of(batch)?;
        let mut first = prov.first_offset;
        if let Some(done) = durable_through {
            if prov.last_offset <= done {
                self.acks.ack(&prov.tp, prov.id);
                return Ok(());
            }
            if prov.first_offset <= done {
                rows = drop_through(&rows, done)?;
                first = done + 1;
            }
        }
        let Some(state) = self.partitions.get_mut(&prov.tp) else {
            return Ok(());
        };
        if rows.num_rows() == 0 && state.open.is_none() {
            // Nothing to persist and nothing before it pending in this sink.
            self.acks.ack(&prov.tp, prov.id);
            return Ok(());
        }
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
        for (dir, part) in self.partitioner.split(&rows)? {
            let file = match group.files.entry(dir) {
                std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::btree_map::Entry::Vacant(entry) => {
                    let (tmp_path, handle) = self
                        .dataset
                        .create_temp(entry.key(), &prov.tp, group.first)
                        .map_err(|source| SinkError::Io {
                            sink: self.name.clone(),
                            path: self.dataset.root().join(entry.key()),
                            source,
                        })?;
                    let writer = ArrowWriter::try_new(
                        BufWriter::new(handle),
                        self.file_schema.clone(),
                        Some(self.properties.clone()),
                    )?;
                    let dir = entry.key().clone();
                    entry.insert(OpenFile {
                        dir,
                        tmp_path,
                        writer,
                        rows: 0,
                    })
                }
            };
            match &self.projection {
                Some(indices) => file.writer.write(&part.project(indices)?)?,
                None => file.writer.write(&part)?,
            }
            file.rows += part.num_rows() as u64;
        }
        let full = group.rows >= self.config.roll.max_rows
            || group.bytes() >= self.config.roll.max_bytes.as_u64();
        if full {
            self.roll(&prov.tp.clone())?;
        }
        self.enforce_open_file_cap()
    }

    /// Commits the open group of `tp`, then acknowledges its batches.
    fn roll(&mut self, tp: &TopicPartition) -> Result<(), SinkError> {
        let Some(state) = self.partitions.get_mut(tp) else {
            return Ok(());
        };
        let Some(group) = state.open.take() else {
            return Ok(());
        };
        state.durable_through = Some(group.last);
        let mut staged = Vec::with_capacity(group.files.len());
        for file in group.files.into_values() {
            let path = file.tmp_path.clone();
            let buffered = file.writer.into_inner()?;
            let handle = buffered
                .into_inner()
                .map_err(|e| self.io_error(&path, e.into_error()))?;
            handle.sync_all().map_err(|e| self.io_error(&path, e))?;
            staged.push(StagedFile {
                dir: file.dir,
                tmp_path: file.tmp_path,
                rows: file.rows,
            });
        }
        if !staged.is_empty() {
            let finals = self
                .dataset
                .commit(tp, group.first, group.last, &staged)
                .map_err(|e| self.io_error(self.dataset.root(), e))?;
            let bytes: u64 = finals
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum();
            self.stats
                .record_files(finals.len() as u64, group.rows, bytes);
            tracing::debug!(sink = %self.name, partition = %tp, first = group.first, last = group.last, files = finals.len(), rows = group.rows, "committed Parquet files");
        }
        for id in group.batches {
            self.acks.ack(tp, id);
        }
        Ok(())
    }

    fn flush(&mut self, flush: &Flush) -> Result<(), SinkError> {
        let targets: Vec<TopicPartition> = match &flush.partitions {
            Some(tps) => tps.clone(),
            None => self.partitions.keys().cloned().collect(),
        };
        for tp in &targets {
            self.roll(tp)?;
            if flush.revoke {
                self.partitions.remove(tp);
            }
        }
        Ok(())
    }

    fn roll_aged(&mut self) -> Result<(), SinkError> {
        let max_age = self.config.roll.max_age;
        let aged: Vec<TopicPartition> = self
            .partitions
            .iter()
            .filter(|(_, s)| {
                s.open
                    .as_ref()
                    .is_some_and(|g| g.opened.elapsed() >= max_age)
            })
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in aged {
            self.roll(&tp)?;
        }
        Ok(())
    }

    /// Rolls the oldest groups until at most `max_open_files` files are open.
    fn enforce_open_file_cap(&mut self) -> Result<(), SinkError> {
        loop {
            let open: usize = self
                .partitions
                .values()
                .filter_map(|s| s.open.as_ref())
                .map(|g| g.files.len())
                .sum();
            if open <= self.config.max_open_files {
                return Ok(());
            }
            let oldest = self
                .partitions
                .iter()
                .filter_map(|(tp, s)| s.open.as_ref().map(|g| (g.opened, tp)))
                .min()
                .map(|(_, tp)| tp.clone());
            match oldest {
                Some(tp) => self.roll(&tp)?,
                None => return Ok(()),
            }
        }
    }

    fn io_error(&self, path: &std::path::Path, source: std::io::Error) -> SinkError {
        SinkError::Io {
            sink: self.name.clone(),
            path: path.to_owned(),
            source,
        }
    }
}

/// Rows whose `_offset` is above `done` (a replay overlapping what is already written).
fn drop_through(rows: &RecordBatch, done: i64) -> Result<RecordBatch, SinkError> {
    let Some(offsets) = rows.column_by_name(OFFSET_COLUMN) else {
        return Ok(rows.clone());
    };
    let keep = gt(offsets, &Int64Array::new_scalar(done))?;
    Ok(filter_record_batch(rows, &keep)?)
}

//! The `parquet` sink: a Hive-partitioned Parquet dataset in a local directory or under
//! an object-store URL (`s3://`, `gs://`, `az://`; see [`store`]).
//!
//! Each source partition's offsets are cut into *segments* of `roll.segment_offsets`
//! offsets (`k·N ..= (k+1)·N − 1`), and no file crosses a segment boundary. Per partition
//! the sink keeps one open *group* of files (one per Hive directory) covering a
//! contiguous offset range. A group is rolled (closed, fsynced and committed, see
//! [`commit`]) when its segment ends, when it reaches `roll.max_rows` or `roll.max_bytes`,
//! when it is `roll.max_age` old, when too many files are open (`max_open_files`: the
//! oldest group goes first), on a flush (partition revoked, shutdown) and on close. Only
//! then are its batches acknowledged, which is what lets the source commit their offsets.
//!
//! Early rolls leave a segment in several files; when the segment ends (or on a flush)
//! they are merged into one file per directory in the same commit. So the files a
//! partition ends up with depend on its offsets and rows only, never on batch timing: a
//! backfill of the same range writes the same file names, and a commit covering offsets
//! another writer already wrote *replaces* those files (keeping their rows outside the
//! new range) instead of adding duplicates.
//!
//! The same sink type writes the dead-letter dataset, reading a batch's dead letters
//! instead of its rows.

pub mod commit;
mod encoder;
pub mod partition;
pub mod read;
pub mod rewrite;
mod roll;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::basic::{Compression as ParquetCompression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tokio::sync::mpsc;

use self::commit::{CommitError, DataFile, Dataset};
use self::encoder::Encoder;
use self::partition::{PartitionKey, Partitioner};
use self::rewrite::{rows_between, TempWriter};
use self::roll::Roll;
use super::rolling::Rolling;
use super::{SinkError, SinkMessage};
use crate::ack::AckTracker;
use crate::batch::{Batch, BatchId, TopicPartition};
use crate::config::{Compression, ParquetSinkConfig, StorageConfig};
use crate::dead_letter;
use crate::telemetry::Stats;

/// Which part of a batch this sink writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParquetInput {
    Rows,
    DeadLetters,
}

struct OpenGroup {
    first: i64,
    last: i64,
    /// One temp file per Hive directory, each encoding on its own thread.
    files: BTreeMap<String, Encoder>,
    rows: u64,
    batches: Vec<BatchId>,
    opened: Instant,
}

impl OpenGroup {
    fn bytes(&self) -> u64 {
        self.files.values().map(Encoder::bytes).sum()
    }
}

pub(crate) struct PartitionState {
    /// Rows up to this offset are already in the dataset (from recovery or our commits).
    durable_through: Option<i64>,
    /// First offset this sink saw for the partition: where its files start when nothing
    /// was durable before.
    started_at: i64,
    open: Option<OpenGroup>,
    /// A group of the partition was committed since this sink took it on (until then,
    /// groups roll after `roll.first_max_age`).
    rolled: bool,
    /// Committed files of the partition that a later commit may merge (this writer's
    /// files of the current segment) or replace (files another writer put ahead of us).
    files: BTreeSet<DataFile>,
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
    /// Whether `properties` were tuned to the rows yet ([`super::dictionary`]).
    tuned: bool,
    config: ParquetSinkConfig,
    /// Offsets per segment.
    segment: i64,
    partitions: HashMap<TopicPartition, PartitionState>,
    acks: Arc<AckTracker>,
    stats: Arc<Stats>,
}

impl ParquetSink {
    /// `schema` is what the sink receives (row schema, or the dead-letter schema).
    /// `writer`: `None` for the live pipeline, a backfill's run id otherwise (see
    /// [`commit`]). `storage`: the pipeline's `storage` blocks, for URL paths.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        input: ParquetInput,
        config: &ParquetSinkConfig,
        storage: &BTreeMap<String, StorageConfig>,
        schema: SchemaRef,
        writer: Option<String>,
        acks: Arc<AckTracker>,
        stats: Arc<Stats>,
    ) -> Result<Self, SinkError> {
        let keys = config
            .partition_by
            .iter()
            .map(|spec| PartitionKey::parse(spec))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|keys| Partitioner::new(keys, &schema))
            .map_err(|source| SinkError::Partition {
                sink: name.clone(),
                source,
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
        let dataset = open_dataset(&name, &config.path, storage, writer)?;
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
        let segment = config.roll.segment_offsets();
        Ok(ParquetSink {
            name,
            input,
            dataset,
            file_schema,
            projection,
            partitioner: keys,
            properties,
            tuned: false,
            config: config.clone(),
            segment: i64::try_from(segment).unwrap_or(i64::MAX).max(1),
            partitions: HashMap::new(),
            acks,
            stats,
        })
    }

    /// Runs until the input closes, then commits whatever is still open.
    pub async fn run(mut self, input: mpsc::Receiver<SinkMessage>) -> Result<(), SinkError> {
        super::rolling::run(&mut self, input).await
    }

    fn segment_start(&self, offset: i64) -> i64 {
        offset - offset.rem_euclid(self.segment)
    }

    fn segment_end(&self, offset: i64) -> i64 {
        self.segment_start(offset).saturating_add(self.segment - 1)
    }

    fn rows_of(&self, batch: &Batch) -> Result<RecordBatch, SinkError> {
        match self.input {
            ParquetInput::Rows => Ok(batch.rows.clone()),
            ParquetInput::DeadLetters => Ok(dead_letter::to_record_batch(&batch.dead_letters)?),
        }
    }

    /// Recovers the partition's dataset state the first time a batch of it arrives.
    fn ensure_partition(&mut self, tp: &TopicPartition, first: i64) -> Result<(), SinkError> {
        if self.partitions.contains_key(tp) {
            return Ok(());
        }
        let recovered = self.dataset.recover(tp).map_err(|e| self.commit_error(e))?;
        if let Some(offset) = recovered.durable_through {
            tracing::info!(sink = %self.name, partition = %tp, offset, "dataset already holds rows up to this offset; replayed rows are skipped");
        }
        // Only files we may still merge or replace matter: those from the segment we
        // resume in onwards.
        let from = recovered
            .durable_through
            .map_or(i64::MIN, |d| self.segment_start(d.saturating_add(1)));
        let files = recovered
            .files
            .into_iter()
            .filter(|f| f.last >= from)
            .collect();
        self.partitions.insert(
            tp.clone(),
            PartitionState {
                durable_through: recovered.durable_through,
                started_at: first,
                open: None,
                rolled: false,
                files,
            },
        );
        Ok(())
    }

    fn write_batch(&mut self, batch: &Batch) -> Result<(), SinkError> {
        let prov = &batch.provenance;
        let tp = &prov.tp;
        self.ensure_partition(tp, prov.first_offset)?;
        let durable_through = self.partitions.get(tp).and_then(|s| s.durable_through);
        let mut rows = self.rows_of(batch)?;
        let mut first = prov.first_offset;
        if let Some(done) = durable_through {
            if prov.last_offset <= done {
                self.acks.ack(tp, prov.id);
                return Ok(());
            }
            if first <= done {
                rows = rows_between(&rows, done + 1, i64::MAX)?;
                first = done + 1;
            }
        }
        // One piece per segment the batch touches; the batch is acknowledged with the
        // group holding its last piece.
        loop {
            let end = self.segment_end(first);
            self.finish_earlier_segment(tp, first)?;
            if prov.last_offset <= end {
                self.append(tp, first, prov.last_offset, &rows, Some(prov.id))?;
                if prov.last_offset == end {
                    self.roll(tp, Roll::SegmentEnd(end))?;
                } else if self.is_full(tp) {
                    self.roll(tp, Roll::Early)?;
                }
                break;
            }
            let head = rows_between(&rows, i64::MIN, end)?;
            rows = rows_between(&rows, end + 1, i64::MAX)?;
            self.append(tp, first, end, &head, None)?;
            self.roll(tp, Roll::SegmentEnd(end))?;
            first = end + 1;
        }
        self.enforce_open_file_cap()
    }

    /// Before writing at `first`: ends the segment the partition was in if `first` is in a
    /// later one (the partition skipped the rest of it, e.g. rows all filtered out).
    fn finish_earlier_segment(&mut self, tp: &TopicPartition, first: i64) -> Result<(), SinkError> {
        let Some(state) = self.partitions.get(tp) else {
            return Ok(());
        };
        let reached = match &state.open {
            Some(group) => Some(group.first),
            None => state.durable_through,
        };
        if let Some(reached) = reached {
            if self.segment_start(reached) < self.segment_start(first)
                && (state.open.is_some() || reached < self.segment_end(reached))
            {
                self.roll(tp, Roll::SegmentEnd(self.segment_end(reached)))?;
            }
        }
        Ok(())
    }

    /// Adds the rows of offsets `first..=last` to the partition's open group.
    fn append(
        &mut self,
        tp: &TopicPartition,
        first: i64,
        last: i64,
        rows: &RecordBatch,
        batch: Option<BatchId>,
    ) -> Result<(), SinkError> {
        let segment_start = self.segment_start(first);
        super::dictionary::tune_once(&self.name, &mut self.properties, &mut self.tuned, rows);
        let Some(state) = self.partitions.get_mut(tp) else {
            return Ok(());
        };
        if rows.num_rows() == 0 && state.open.is_none() {
            // Nothing to persist and nothing before it pending in this sink.
            if let Some(id) = batch {
                self.acks.ack(tp, id);
            }
            return Ok(());
        }
        let group = state.open.get_or_insert_with(|| {
            // Files start where the partition's coverage continues, so the names do not
            // depend on where batches happened to start.
            let continues = state
                .durable_through
                .map_or(state.started_at, |d| d.saturating_add(1));
            OpenGroup {
                first: continues.clamp(segment_start, first),
                last,
                files: BTreeMap::new(),
                rows: 0,
                batches: Vec::new(),
                opened: Instant::now(),
            }
        });
        group.last = last;
        group.batches.extend(batch);
        group.rows += rows.num_rows() as u64;
        for (dir, part) in self.partitioner.split(rows)? {
            let file = match group.files.entry(dir) {
                std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::btree_map::Entry::Vacant(entry) => {
                    let writer = TempWriter::create(
                        &self.name,
                        &self.dataset,
                        entry.key(),
                        tp,
                        group.first,
                        "group",
                        self.file_schema.clone(),
                        &self.properties,
                    )?;
                    entry.insert(Encoder::start(&self.name, writer)?)
                }
            };
            match &self.projection {
                Some(indices) => file.append(&part.project(indices)?)?,
                None => file.append(&part)?,
            };
        }
        Ok(())
    }

    fn is_full(&self, tp: &TopicPartition) -> bool {
        self.partitions
            .get(tp)
            .and_then(|s| s.open.as_ref())
            .is_some_and(|g| {
                g.rows >= self.config.roll.max_rows
                    || g.bytes() >= self.config.roll.max_bytes.as_u64()
            })
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
                Some(tp) => self.roll(&tp, Roll::Early)?,
                None => return Ok(()),
            }
        }
    }

    fn io_error(&self, source: std::io::Error) -> SinkError {
        SinkError::Io {
            sink: self.name.clone(),
            path: self.dataset.describe().into(),
            source,
        }
    }

    fn commit_error(&self, error: CommitError) -> SinkError {
        match error {
            CommitError::Io(source) => self.io_error(source),
            fenced @ CommitError::Fenced { .. } => SinkError::Fenced {
                sink: self.name.clone(),
                source: fenced,
            },
        }
    }
}

impl Rolling for ParquetSink {
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

    /// An early roll leaves the segment open; a flush merges its files so far.
    fn roll_group(&mut self, tp: &TopicPartition, early: bool) -> Result<(), SinkError> {
        self.roll(tp, if early { Roll::Early } else { Roll::Flush })
    }

    /// The partitions' files are finished and merged at once (see [`Self::roll_all`]).
    fn roll_groups(&mut self, tps: &[TopicPartition], early: bool) -> Result<(), SinkError> {
        self.roll_all(tps, if early { Roll::Early } else { Roll::Flush })
    }
}

/// The dataset at `path` (a directory or an object-store URL), as writer `writer` sees
/// it, with its store reachable.
pub fn open_dataset(
    sink: &str,
    path: &Path,
    storage: &BTreeMap<String, StorageConfig>,
    writer: Option<String>,
) -> Result<Dataset, SinkError> {
    let storage_error = |source| SinkError::Storage {
        sink: sink.to_owned(),
        source,
    };
    let location = crate::storage::open(path, storage).map_err(storage_error)?;
    crate::storage::probe(&location).map_err(storage_error)?;
    let store = store::open(location).map_err(|source| SinkError::Io {
        sink: sink.to_owned(),
        path: path.to_owned(),
        source,
    })?;
    Ok(Dataset::new(store, writer))
}

#[cfg(test)]
pub(crate) mod tests;

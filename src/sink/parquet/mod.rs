//! The `parquet` sink: a Hive-partitioned Parquet dataset in a local directory.
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
pub mod partition;
pub mod read;
pub mod rewrite;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::basic::{Compression as ParquetCompression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tokio::sync::mpsc;

use self::commit::{DataFile, Dataset, StagedFile};
use self::partition::{PartitionKey, Partitioner};
use self::rewrite::{keep_outside, read_batches, rows_between, TempFile, TempWriter};
use super::{Flush, SinkError, SinkMessage};
use crate::ack::AckTracker;
use crate::batch::{Batch, BatchId, TopicPartition};
use crate::config::{Compression, ParquetSinkConfig};
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
    /// One temp file per Hive directory.
    files: BTreeMap<String, TempWriter>,
    rows: u64,
    batches: Vec<BatchId>,
    opened: Instant,
}

impl OpenGroup {
    fn bytes(&self) -> u64 {
        self.files.values().map(TempWriter::bytes).sum()
    }
}

struct PartitionState {
    /// Rows up to this offset are already in the dataset (from recovery or our commits).
    durable_through: Option<i64>,
    /// First offset this sink saw for the partition: where its files start when nothing
    /// was durable before.
    started_at: i64,
    open: Option<OpenGroup>,
    /// Committed files of the partition that a later commit may merge (this writer's
    /// files of the current segment) or replace (files another writer put ahead of us).
    files: BTreeSet<DataFile>,
}

/// Why a group is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Roll {
    /// A size, age or open-file limit: the segment goes on in another file.
    Early,
    /// The partition has moved past the segment ending at this offset: its files are
    /// merged into one per directory, named for the whole segment.
    SegmentEnd(i64),
    /// Revoke or shutdown: the segment's files so far are merged.
    Flush,
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
    /// Offsets per segment.
    segment: i64,
    partitions: HashMap<TopicPartition, PartitionState>,
    acks: Arc<AckTracker>,
    stats: Arc<Stats>,
}

impl ParquetSink {
    /// `schema` is what the sink receives (row schema, or the dead-letter schema).
    /// `writer`: `None` for the live pipeline, a backfill's run id otherwise (see
    /// [`commit`]).
    pub fn new(
        name: String,
        input: ParquetInput,
        config: &ParquetSinkConfig,
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
        let segment = config.roll.segment_offsets();
        Ok(ParquetSink {
            name,
            input,
            dataset: Dataset::new(&config.path, writer),
            file_schema,
            projection,
            partitioner: keys,
            properties,
            config: config.clone(),
            segment: i64::try_from(segment).unwrap_or(i64::MAX).max(1),
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
        let recovered = self
            .dataset
            .recover(tp)
            .map_err(|source| self.io_error(self.dataset.root(), source))?;
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
                files,
            },
        );
        Ok(())
    }

    fn write(&mut self, batch: &Batch) -> Result<(), SinkError> {
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
                    entry.insert(writer)
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

    /// Commits the open group of `tp` (merging the segment's earlier files when `roll`
    /// says so, replacing files of other writers it overlaps), then acknowledges its
    /// batches.
    fn roll(&mut self, tp: &TopicPartition, roll: Roll) -> Result<(), SinkError> {
        let segment = self.segment;
        let Some(state) = self.partitions.get_mut(tp) else {
            return Ok(());
        };
        let group = state.open.take();
        let before = state.durable_through;
        // The offsets this commit newly covers.
        let covers = match (&group, roll) {
            (Some(g), Roll::SegmentEnd(end)) => Some((g.first, end)),
            (Some(g), _) => Some((g.first, g.last)),
            (None, Roll::SegmentEnd(end)) => before.filter(|d| *d < end).map(|d| (d + 1, end)),
            (None, _) => None,
        };
        // This writer's earlier files of the segment, merged unless the roll is early.
        let reached = covers.map(|(first, _)| first).or(before);
        let merge: Vec<DataFile> = match (roll, reached) {
            (Roll::Early, _) | (_, None) => Vec::new(),
            (_, Some(reached)) => {
                let segment_start = reached - reached.rem_euclid(segment);
                state
                    .files
                    .iter()
                    .filter(|f| f.first >= segment_start && before.is_some_and(|d| f.last <= d))
                    .cloned()
                    .collect()
            }
        };
        let replace: Vec<DataFile> = match covers {
            Some((first, last)) => state
                .files
                .iter()
                .filter(|f| f.overlaps(first, last))
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        let group_rows = group.as_ref().map_or(0, |g| g.rows);
        let batches = group
            .as_ref()
            .map(|g| g.batches.clone())
            .unwrap_or_default();
        let written: Vec<(String, TempFile)> = match group {
            Some(g) => g
                .files
                .into_iter()
                .map(|(dir, w)| w.finish().map(|f| (dir, f)))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let (first, last) = match (covers, merge.first(), before) {
            (Some((first, last)), Some(earliest), _) => (earliest.first.min(first), last),
            (Some(range), None, _) => range,
            (None, Some(earliest), Some(d)) => (earliest.first, d),
            (None, _, _) => return self.acknowledge(tp, before, &batches),
        };
        let ranges: BTreeSet<(i64, i64)> = merge.iter().map(|f| (f.first, f.last)).collect();
        let worth_merging = if written.is_empty() {
            ranges.len() > 1 || ranges.first().is_some_and(|r| *r != (first, last))
        } else {
            !ranges.is_empty()
        };
        let merged = if worth_merging {
            self.merge(tp, first, last, &merge, &written)?
        } else {
            None
        };
        let (mut staged, mut replaces, merged_temps) = match (merged, covers) {
            (Some(staged), _) => {
                let temps: Vec<_> = written.into_iter().map(|(_, f)| f.path).collect();
                (staged, merge, temps)
            }
            // The group's files as they are, named for what they cover.
            (None, Some((group_first, group_last))) => {
                let staged = written
                    .into_iter()
                    .map(|(dir, f)| StagedFile {
                        dir,
                        tmp_path: f.path,
                        name: Dataset::file_name(tp, group_first, group_last),
                        rows: f.rows,
                    })
                    .collect();
                (staged, Vec::new(), Vec::new())
            }
            (None, None) => return self.acknowledge(tp, before, &batches),
        };
        // Files of other writers under the newly covered offsets give way; their rows
        // outside those offsets are kept.
        let mut kept = Vec::new();
        if let Some(range) = covers {
            for file in &replace {
                for (range, temp) in
                    keep_outside(&self.name, &self.dataset, tp, file, range, &self.properties)?
                {
                    staged.push(StagedFile {
                        dir: range.dir.clone(),
                        tmp_path: temp.path,
                        name: Dataset::file_name(tp, range.first, range.last),
                        rows: temp.rows,
                    });
                    kept.push(range);
                }
            }
            replaces.extend(replace.iter().cloned());
            if !replace.is_empty() {
                tracing::info!(sink = %self.name, partition = %tp, first = range.0, last = range.1, files = replace.len(), "replacing files that already held these offsets");
            }
        }
        let (commit_first, commit_last) = (first, last);
        if !staged.is_empty() || !replaces.is_empty() {
            let finals = self
                .dataset
                .commit(tp, commit_first, commit_last, &staged, &replaces)
                .map_err(|e| self.io_error(self.dataset.root(), e))?;
            for temp in merged_temps {
                let _ = std::fs::remove_file(temp);
            }
            let bytes: u64 = finals
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum();
            self.stats
                .record_files(finals.len() as u64, group_rows, bytes);
            tracing::debug!(sink = %self.name, partition = %tp, first = commit_first, last = commit_last, files = finals.len(), rows = group_rows, ?roll, "committed Parquet files");
        }
        // Rows another writer had below our range stay in a file of their own; at a
        // segment's end or a flush they join the segment's file like ours.
        let kept_below = covers.is_some_and(|(from, _)| {
            let segment_start = from - from.rem_euclid(segment);
            kept.iter()
                .any(|k| k.last < from && k.first >= segment_start)
        });
        if let Some(state) = self.partitions.get_mut(tp) {
            for file in &replaces {
                state.files.remove(file);
            }
            state.files.extend(kept);
            state.files.extend(staged.into_iter().filter_map(|f| {
                let (first, last) = Dataset::parse_file_name(tp, &f.name)?;
                Some(DataFile {
                    first,
                    last,
                    dir: f.dir,
                })
            }));
        }
        self.acknowledge(tp, before.max(Some(commit_last)), &batches)?;
        if roll != Roll::Early && kept_below {
            self.roll(tp, Roll::Flush)?;
        }
        if let (Roll::SegmentEnd(end), Some(state)) = (roll, self.partitions.get_mut(tp)) {
            // Past this segment only files ahead of us can still be replaced.
            state.files.retain(|f| f.last > end);
        }
        Ok(())
    }

    /// Writes the rows of `merge` (earlier files of the segment) and `written` (the
    /// group's temps) into one file per directory for offsets `first..=last`, in offset
    /// order. `None` when an
    /// earlier file's schema differs from the sink's (the pipeline changed): then the
    /// files stay apart.
    fn merge(
        &self,
        tp: &TopicPartition,
        first: i64,
        last: i64,
        merge: &[DataFile],
        written: &[(String, TempFile)],
    ) -> Result<Option<Vec<StagedFile>>, SinkError> {
        let mut sources: BTreeMap<&str, Vec<std::path::PathBuf>> = BTreeMap::new();
        for file in merge {
            sources
                .entry(&file.dir)
                .or_default()
                .push(self.dataset.root().join(file.relative_path(tp)));
        }
        for (dir, temp) in written {
            sources.entry(dir).or_default().push(temp.path.clone());
        }
        let mut staged = Vec::with_capacity(sources.len());
        for (dir, paths) in sources {
            let mut writer = TempWriter::create(
                &self.name,
                &self.dataset,
                dir,
                tp,
                first,
                "merge",
                self.file_schema.clone(),
                &self.properties,
            )?;
            for path in &paths {
                for batch in read_batches(path)?.1 {
                    if !writer.append(&batch)? {
                        tracing::warn!(sink = %self.name, file = %path.display(), "not merging a file written with another schema");
                        writer.abandon();
                        for file in staged {
                            let StagedFile { tmp_path, .. } = file;
                            let _ = std::fs::remove_file(tmp_path);
                        }
                        return Ok(None);
                    }
                }
            }
            let temp = writer.finish()?;
            staged.push(StagedFile {
                dir: dir.to_owned(),
                tmp_path: temp.path,
                name: Dataset::file_name(tp, first, last),
                rows: temp.rows,
            });
        }
        Ok(Some(staged))
    }

    /// Records how far the partition is durable and acknowledges `batches`.
    fn acknowledge(
        &mut self,
        tp: &TopicPartition,
        durable_through: Option<i64>,
        batches: &[BatchId],
    ) -> Result<(), SinkError> {
        if let Some(state) = self.partitions.get_mut(tp) {
            state.durable_through = durable_through.max(state.durable_through);
        }
        for id in batches {
            self.acks.ack(tp, *id);
        }
        Ok(())
    }

    fn flush(&mut self, flush: &Flush) -> Result<(), SinkError> {
        let targets: Vec<TopicPartition> = match &flush.partitions {
            Some(tps) => tps.clone(),
            None => self.partitions.keys().cloned().collect(),
        };
        for tp in &targets {
            self.roll(tp, Roll::Flush)?;
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
            self.roll(&tp, Roll::Early)?;
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
                Some(tp) => self.roll(&tp, Roll::Early)?,
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use arrow::array::{AsArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    use super::*;
    use crate::schema::OFFSET_COLUMN;

    const SEGMENT: u64 = 100;

    fn schema() -> SchemaRef {
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
            schema(),
            writer.map(str::to_owned),
            Arc::new(AckTracker::new(1)),
            Arc::new(Stats::default()),
        )
        .unwrap()
    }

    /// Offsets `first..=last` of partition 0; odd offsets go to `d=b`, even to `d=a`.
    fn batch(id: u64, first: i64, last: i64, value: &str) -> Batch {
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
                        (0..b.num_rows())
                            .map(move |i| (offsets.value(i), values.value(i).to_owned()))
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
}

//! Committing a partition's open group (see [`super::commit`]): at a segment's end or a
//! flush the segment's earlier files are merged in, files of other writers under the newly
//! covered offsets are replaced (their other rows kept), and then the group's batches are
//! acknowledged. A roll is planned (`&mut`: the group taken out, the files to merge and
//! replace chosen), prepared (`&`: the group's files finished, the merge written to temp
//! files) and committed (`&mut`, in order), so that a flush of several partitions
//! prepares them on a thread pool at once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use rayon::iter::{IntoParallelIterator, ParallelIterator};

use super::commit::{DataFile, Dataset, StagedFile};
use super::encoder::Encoder;
use super::rewrite::{keep_outside, merge_files, MergeTarget, TempFile};
use super::{ParquetSink, SinkError};
use crate::batch::{BatchId, TopicPartition};

/// Why a group is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Roll {
    /// A size, age or open-file limit: the segment goes on in another file.
    Early,
    /// The partition has moved past the segment ending at this offset: its files are
    /// merged into one per directory, named for the whole segment.
    SegmentEnd(i64),
    /// Revoke or shutdown: the segment's files so far are merged.
    Flush,
}

/// A partition's commit, planned: what its open group newly covers, and which committed
/// files it merges and replaces.
struct Plan {
    tp: TopicPartition,
    roll: Roll,
    /// How far the partition was durable before.
    before: Option<i64>,
    covers: Option<(i64, i64)>,
    merge: Vec<DataFile>,
    replace: Vec<DataFile>,
    group_rows: u64,
    batches: Vec<BatchId>,
    files: BTreeMap<String, Encoder>,
}

/// A plan after its file work (the group's files finished, the segment's files merged):
/// what is left to commit.
enum Prepared {
    /// Nothing to commit: the group's batches are acknowledged as they are.
    Acknowledge {
        tp: TopicPartition,
        durable_through: Option<i64>,
        batches: Vec<BatchId>,
    },
    Commit {
        plan: Box<Plan>,
        /// The offsets the committed files hold.
        range: (i64, i64),
        staged: Vec<StagedFile>,
        replaces: Vec<DataFile>,
        /// The group's temps that went into a merged file (removed after the commit).
        merged_temps: Vec<PathBuf>,
    },
}

impl ParquetSink {
    /// Commits the open group of `tp` (merging the segment's earlier files when `roll`
    /// says so, replacing files of other writers it overlaps), then acknowledges its
    /// batches.
    pub(super) fn roll(&mut self, tp: &TopicPartition, roll: Roll) -> Result<(), SinkError> {
        let Some(plan) = self.plan(tp, roll) else {
            return Ok(());
        };
        let prepared = self.prepare(plan)?;
        self.commit_prepared(prepared)
    }

    /// [`Self::roll`] for several partitions at once: the file work of each (finishing
    /// its files, merging its segment: reading and writing whole files) runs on a thread
    /// pool, partitions at the same time; the commits follow one by one in `tps`' order.
    /// A flush of many partitions (a revoke, the end of a run) took the sum of their
    /// merges before.
    pub(super) fn roll_all(&mut self, tps: &[TopicPartition], roll: Roll) -> Result<(), SinkError> {
        let plans: Vec<Plan> = tps.iter().filter_map(|tp| self.plan(tp, roll)).collect();
        let prepared: Vec<Result<Prepared, SinkError>> = if plans.len() > 1 {
            let this = &*self;
            plans
                .into_par_iter()
                .map(|plan| this.prepare(plan))
                .collect()
        } else {
            plans.into_iter().map(|plan| self.prepare(plan)).collect()
        };
        for prepared in prepared {
            self.commit_prepared(prepared?)?;
        }
        Ok(())
    }

    /// Takes `tp`'s open group and decides what its commit covers, merges and replaces.
    /// `None` when the sink does not hold `tp`.
    fn plan(&mut self, tp: &TopicPartition, roll: Roll) -> Option<Plan> {
        let segment = self.segment;
        let state = self.partitions.get_mut(tp)?;
        let group = state.open.take();
        state.rolled |= group.is_some();
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
        let (group_rows, batches, files) = match group {
            Some(g) => (g.rows, g.batches, g.files),
            None => Default::default(),
        };
        Some(Plan {
            tp: tp.clone(),
            roll,
            before,
            covers,
            merge,
            replace,
            group_rows,
            batches,
            files,
        })
    }

    /// The file work of `plan`: waits for the group's files and merges the segment's
    /// files when that is worth it. Writes temp files only; nothing is visible yet.
    fn prepare(&self, mut plan: Plan) -> Result<Prepared, SinkError> {
        let written: Vec<(String, TempFile)> =
            super::encoder::finish_all(std::mem::take(&mut plan.files))?;
        let acknowledge = |plan: Plan| Prepared::Acknowledge {
            tp: plan.tp,
            durable_through: plan.before,
            batches: plan.batches,
        };
        let (first, last) = match (plan.covers, plan.merge.first(), plan.before) {
            (Some((first, last)), Some(earliest), _) => (earliest.first.min(first), last),
            (Some(range), None, _) => range,
            (None, Some(earliest), Some(d)) => (earliest.first, d),
            (None, _, _) => return Ok(acknowledge(plan)),
        };
        let ranges: BTreeSet<(i64, i64)> = plan.merge.iter().map(|f| (f.first, f.last)).collect();
        let worth_merging = if written.is_empty() {
            ranges.len() > 1 || ranges.first().is_some_and(|r| *r != (first, last))
        } else {
            !ranges.is_empty()
        };
        let merged = if worth_merging {
            self.merge(&plan.tp, (first, last), &plan.merge, &written)?
        } else {
            None
        };
        let (staged, replaces, merged_temps) = match (merged, plan.covers) {
            (Some(staged), _) => {
                let temps: Vec<_> = written.into_iter().map(|(_, f)| f.path).collect();
                (staged, std::mem::take(&mut plan.merge), temps)
            }
            // The group's files as they are, named for what they cover.
            (None, Some((group_first, group_last))) => {
                let staged = written
                    .into_iter()
                    .map(|(dir, f)| StagedFile {
                        dir,
                        tmp_path: f.path,
                        name: Dataset::file_name(&plan.tp, group_first, group_last),
                        rows: f.rows,
                    })
                    .collect();
                (staged, Vec::new(), Vec::new())
            }
            (None, None) => return Ok(acknowledge(plan)),
        };
        Ok(Prepared::Commit {
            plan: Box::new(plan),
            range: (first, last),
            staged,
            replaces,
            merged_temps,
        })
    }

    /// Commits a prepared roll and acknowledges its batches.
    ///
    /// Long on purpose: one commit of the protocol (which files to replace, stage,
    /// manifest, rename, acknowledge); its steps share the state of one commit and must
    /// stay in this order.
    fn commit_prepared(&mut self, prepared: Prepared) -> Result<(), SinkError> {
        let (plan, (first, last), mut staged, mut replaces, merged_temps) = match prepared {
            Prepared::Acknowledge {
                tp,
                durable_through,
                batches,
            } => return self.acknowledge(&tp, durable_through, &batches),
            Prepared::Commit {
                plan,
                range,
                staged,
                replaces,
                merged_temps,
            } => (plan, range, staged, replaces, merged_temps),
        };
        let Plan {
            tp,
            roll,
            before,
            covers,
            replace,
            group_rows,
            batches,
            ..
        } = *plan;
        let tp = &tp;
        let segment = self.segment;
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
        if !staged.is_empty() || !replaces.is_empty() {
            let committed = self
                .dataset
                .commit(tp, first, last, &staged, &replaces)
                .map_err(|e| self.commit_error(e))?;
            for temp in merged_temps {
                let _ = std::fs::remove_file(temp);
            }
            self.stats
                .record_files(committed.files, group_rows, committed.bytes);
            tracing::debug!(sink = %self.name, partition = %tp, first = first, last = last, files = committed.files, rows = group_rows, ?roll, "committed Parquet files");
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
        self.acknowledge(tp, before.max(Some(last)), &batches)?;
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
    /// order. `None` when an earlier file's schema differs from the sink's (the pipeline
    /// changed): then the files stay apart.
    fn merge(
        &self,
        tp: &TopicPartition,
        (first, last): (i64, i64),
        merge: &[DataFile],
        written: &[(String, TempFile)],
    ) -> Result<Option<Vec<StagedFile>>, SinkError> {
        let mut sources: BTreeMap<String, Vec<std::path::PathBuf>> = BTreeMap::new();
        // Committed files as local files (downloads from an object store live as long as
        // these guards).
        let mut copies = Vec::with_capacity(merge.len());
        for file in merge {
            let copy = self
                .dataset
                .local_copy(&file.relative_path(tp))
                .map_err(|e| self.io_error(e))?;
            sources
                .entry(file.dir.clone())
                .or_default()
                .push(copy.path.clone());
            copies.push(copy);
        }
        for (dir, temp) in written {
            sources
                .entry(dir.clone())
                .or_default()
                .push(temp.path.clone());
        }
        let target = MergeTarget {
            sink: &self.name,
            dataset: &self.dataset,
            tp,
            range: (first, last),
            schema: &self.file_schema,
            properties: &self.properties,
        };
        merge_files(&target, &sources)
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
}

//! How Parquet files become visible exactly once, even across `kill -9`, on a local
//! filesystem and on an object store alike: one protocol over the small [`Store`]
//! interface (`store.rs` says what each step is on each).
//!
//! A source partition's files are written as a *group* covering offsets `first..=last`,
//! one file per Hive directory, under hidden temp names (`.OWNER-FIRST.KIND.parquet.tmp`:
//! readers skip dot files, and the suffix is not `.parquet`, so globs skip them too).
//! Each writer keeps, per partition, a numbered sequence of manifests
//! `_sluice/manifests/TOPIC-PARTITION/SEQ.json`. Committing a group:
//!
//! 1. *stage* every temp (local: closed and fsynced in place; object store: uploaded whole
//!    under `_sluice/staging/`, multipart when large, so nothing partial is ever seen);
//! 2. *create* manifest `SEQ+1` if it does not exist (local: a hard link; object store: a
//!    conditional `PUT` with `If-None-Match`): **this is the commit point**. It names the
//!    temps and their final names, and the older files the commit *replaces* (merged into
//!    a segment file, or a backfill's new version of the same offsets). If `SEQ+1` exists,
//!    or a later manifest does, another writer owns the partition now: the commit is
//!    refused ([`CommitError::Fenced`]), its temps are discarded and the sink stops
//!    without acknowledging anything, so no offset is committed past it;
//! 3. *publish* each temp under `TOPIC-PARTITION-FIRST-LAST.parquet` (rename; or
//!    server-side copy and delete of the staged object), delete the replaced files;
//! 4. delete the partition's older manifests.
//!
//! When a partition is (re)assigned, [`Dataset::recover`] rolls the latest manifest
//! forward (finishing publishes and deletions a crash interrupted), then *claims* the
//! partition by creating the next manifest (no files, same offsets): a writer that still
//! believes it owns the partition (a zombie from before a rebalance) finds its next
//! number taken and is fenced at its next commit. Then it deletes temps no manifest names
//! (torn writes), lists the partition's files, and returns the last offset already in the
//! dataset. The sink drops replayed rows up to that offset, so a replay after a crash,
//! whatever its batch boundaries, adds no duplicate and loses nothing: Kafka offsets may
//! lag the dataset, never lead it.
//!
//! A backfill writing into the live dataset is a second *writer*: it keeps its manifests
//! under `_sluice/backfills/RUN/` and its temp names carry `RUN.`, so its recovery never
//! touches the live pipeline's files in flight, and the live pipeline's never touches its.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use super::store::{LocalCopy, Store};
use crate::batch::TopicPartition;

/// Directory (under the dataset root) of sluice's own bookkeeping; `_` makes readers
/// (pyarrow, Spark, DuckDB globs on `*.parquet`) skip it.
pub const META_DIR: &str = "_sluice";
pub const TMP_SUFFIX: &str = ".parquet.tmp";

/// Why a commit did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(
        "partition {partition} was claimed by another writer (manifest {seq} exists): this \
         writer no longer owns it and stops without committing"
    )]
    Fenced { partition: TopicPartition, seq: u64 },
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    /// Position in the partition's sequence of manifests (0 for manifests written before
    /// sequences existed, named `FIRST-LAST.json`).
    #[serde(default)]
    seq: u64,
    topic: String,
    partition: i32,
    /// The offsets of this commit; a claim carries its predecessor's (`None`: nothing
    /// durable yet).
    first_offset: Option<i64>,
    last_offset: Option<i64>,
    files: Vec<ManifestFile>,
    /// Files (relative to the root) this commit supersedes; deleted after the publishes.
    #[serde(default)]
    replaces: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ManifestFile {
    /// Hive directory relative to the dataset root (`""` for the root).
    dir: String,
    tmp: String,
    name: String,
    rows: u64,
}

/// A file of a commit, written and closed, waiting for its commit.
#[derive(Debug)]
pub struct StagedFile {
    pub dir: String,
    pub tmp_path: PathBuf,
    /// Final file name ([`Dataset::file_name`]).
    pub name: String,
    pub rows: u64,
}

/// A committed file of one source partition: its Hive directory and the offsets it covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DataFile {
    pub first: i64,
    pub last: i64,
    pub dir: String,
}

impl DataFile {
    /// Path relative to the dataset root.
    pub fn relative_path(&self, tp: &TopicPartition) -> String {
        join(&self.dir, &Dataset::file_name(tp, self.first, self.last))
    }

    pub fn overlaps(&self, first: i64, last: i64) -> bool {
        self.first <= last && first <= self.last
    }
}

/// What [`Dataset::recover`] found for a partition.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The last offset this writer has already made durable.
    pub durable_through: Option<i64>,
    /// Every committed file of the partition, by any writer.
    pub files: BTreeSet<DataFile>,
}

/// What a commit made visible.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub files: u64,
    pub bytes: u64,
}

/// One Parquet dataset, as seen by one writer.
#[derive(Debug, Clone)]
pub struct Dataset {
    store: Arc<dyn Store>,
    /// `None`: the live pipeline. `Some(run)`: a backfill run writing beside it.
    writer: Option<String>,
    /// Per partition, the number of this writer's latest manifest.
    seqs: Arc<Mutex<HashMap<TopicPartition, u64>>>,
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// `SEQ.json` -> SEQ; a pre-sequence `FIRST-LAST.json` counts as 0.
fn manifest_seq(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".json")?;
    if stem.starts_with('.') {
        return None;
    }
    match stem.split_once('-') {
        Some((first, last)) => {
            (first.parse::<i64>().is_ok() && last.parse::<i64>().is_ok()).then_some(0)
        }
        None => stem.parse().ok(),
    }
}

fn manifest_name(seq: u64) -> String {
    format!("{seq:020}.json")
}

impl Dataset {
    pub fn new(store: Box<dyn Store>, writer: Option<String>) -> Self {
        Dataset {
            store: Arc::from(store),
            writer,
            seqs: Arc::default(),
        }
    }

    /// A dataset in local directory `root`.
    pub fn local(root: impl Into<PathBuf>, writer: Option<String>) -> Self {
        Self::new(Box::new(super::store::LocalStore::new(root)), writer)
    }

    /// The root as written (path or URL), for messages.
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// A committed file (relative to the root) as a local file.
    pub fn local_copy(&self, relative: &str) -> io::Result<LocalCopy> {
        self.store.local_copy(relative)
    }

    /// Final file name of the rows of `tp` at offsets `first..=last`: derived only from
    /// provenance, so writing the same offsets again produces the same name.
    pub fn file_name(tp: &TopicPartition, first: i64, last: i64) -> String {
        format!("{tp}-{first:020}-{last:020}.parquet")
    }

    /// The offsets a file of `tp` covers, from its [`Self::file_name`].
    pub fn parse_file_name(tp: &TopicPartition, name: &str) -> Option<(i64, i64)> {
        let rest = name
            .strip_suffix(".parquet")?
            .strip_prefix(&tp.to_string())?
            .strip_prefix('-')?;
        let (first, last) = rest.split_once('-')?;
        if first.len() != 20 || last.len() != 20 {
            return None;
        }
        Some((first.parse().ok()?, last.parse().ok()?))
    }

    /// Temp names of this writer's files for `tp` start with `.OWNER-`.
    fn owner(&self, tp: &TopicPartition) -> String {
        match &self.writer {
            Some(run) => format!("{run}.{tp}"),
            None => tp.to_string(),
        }
    }

    /// Creates a temp file for Hive directory `dir` for rows of `tp` from offset `first`;
    /// `kind` keeps temps of one commit apart (`group`, `merge`, `keep`).
    pub fn create_temp(
        &self,
        dir: &str,
        tp: &TopicPartition,
        first: i64,
        kind: &str,
    ) -> io::Result<(PathBuf, File)> {
        let owner = self.owner(tp);
        let path = self
            .store
            .temp_dir(dir)?
            .join(format!(".{owner}-{first:020}.{kind}{TMP_SUFFIX}"));
        let file = File::create(&path)?;
        Ok((path, file))
    }

    fn manifest_dir(&self, tp: &TopicPartition) -> String {
        match &self.writer {
            Some(run) => format!("{META_DIR}/backfills/{run}/{tp}"),
            None => format!("{META_DIR}/manifests/{tp}"),
        }
    }

    /// The partition's manifests, by sequence number.
    fn manifests(&self, tp: &TopicPartition) -> io::Result<Vec<(u64, String)>> {
        let mut found: Vec<(u64, String)> = self
            .store
            .names(&self.manifest_dir(tp))?
            .into_iter()
            .filter_map(|name| Some((manifest_seq(&name)?, name)))
            .collect();
        found.sort();
        Ok(found)
    }

    fn read_manifest(&self, tp: &TopicPartition, name: &str) -> io::Result<Option<Manifest>> {
        let path = join(&self.manifest_dir(tp), name);
        match self.store.read(&path)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    fn seq(&self, tp: &TopicPartition) -> u64 {
        let seqs = self.seqs.lock().unwrap_or_else(PoisonError::into_inner);
        seqs.get(tp).copied().unwrap_or(0)
    }

    fn set_seq(&self, tp: &TopicPartition, seq: u64) {
        let mut seqs = self.seqs.lock().unwrap_or_else(PoisonError::into_inner);
        seqs.insert(tp.clone(), seq);
    }

    /// Commits `files` (closed) as the rows of `tp` at `first..=last`, superseding
    /// `replaces`.
    pub fn commit(
        &self,
        tp: &TopicPartition,
        first: i64,
        last: i64,
        files: &[StagedFile],
        replaces: &[DataFile],
    ) -> Result<Committed, CommitError> {
        let mut committed = Committed::default();
        for f in files {
            committed.files += 1;
            committed.bytes += self.store.temp_size(&f.tmp_path);
            if let Err(e) = self.store.stage(&f.dir, &f.tmp_path) {
                self.discard(files);
                return Err(e.into());
            }
        }
        let seq = self.seq(tp) + 1;
        let manifest = Manifest {
            seq,
            topic: tp.topic.to_string(),
            partition: tp.partition,
            first_offset: Some(first),
            last_offset: Some(last),
            files: files
                .iter()
                .map(|f| ManifestFile {
                    dir: f.dir.clone(),
                    tmp: file_name_of(&f.tmp_path),
                    name: f.name.clone(),
                    rows: f.rows,
                })
                .collect(),
            replaces: replaces.iter().map(|f| f.relative_path(tp)).collect(),
        };
        if let Err(e) = self.create_manifest(tp, &manifest) {
            self.discard(files);
            return Err(e);
        }
        self.roll_forward(&manifest)?;
        self.remove_manifests_before(tp, seq)?;
        self.set_seq(tp, seq);
        Ok(committed)
    }

    /// Creates `manifest` under its number, then makes sure no later one exists (an older
    /// manifest may have been deleted after a later one was created by the partition's
    /// new owner): either way the partition belongs to someone else.
    fn create_manifest(&self, tp: &TopicPartition, manifest: &Manifest) -> Result<(), CommitError> {
        let path = join(&self.manifest_dir(tp), &manifest_name(manifest.seq));
        let fenced = || CommitError::Fenced {
            partition: tp.clone(),
            seq: manifest.seq,
        };
        if !self.store.create(
            &path,
            serde_json::to_vec_pretty(manifest).map_err(io::Error::from)?,
        )? {
            return Err(fenced());
        }
        if self
            .manifests(tp)?
            .iter()
            .any(|(seq, _)| *seq > manifest.seq)
        {
            self.store.delete(&path)?;
            return Err(fenced());
        }
        Ok(())
    }

    /// Deletes the temps of a commit that did not happen.
    fn discard(&self, files: &[StagedFile]) {
        for f in files {
            let _ = self.store.discard(&f.dir, &file_name_of(&f.tmp_path));
            let _ = std::fs::remove_file(&f.tmp_path);
        }
    }

    /// Makes the partition's dataset consistent after a crash or a move from another
    /// consumer: finishes this writer's last commit, claims the partition, removes its
    /// torn writes, and lists the partition's files.
    pub fn recover(&self, tp: &TopicPartition) -> Result<Recovered, CommitError> {
        // Two writers recovering at once both try to claim; the loser reads again.
        for _ in 0..8 {
            let manifests = self.manifests(tp)?;
            let latest = match manifests.last() {
                Some((_, name)) => self.read_manifest(tp, name)?,
                None => None,
            };
            let seq = manifests.last().map_or(0, |(seq, _)| *seq);
            if let Some(manifest) = &latest {
                self.roll_forward(manifest)?;
            }
            let claim = Manifest {
                seq: seq + 1,
                topic: tp.topic.to_string(),
                partition: tp.partition,
                first_offset: latest.as_ref().and_then(|m| m.first_offset),
                last_offset: latest.as_ref().and_then(|m| m.last_offset),
                files: Vec::new(),
                replaces: Vec::new(),
            };
            match self.create_manifest(tp, &claim) {
                Ok(()) => {}
                Err(CommitError::Fenced { .. }) => continue,
                Err(e) => return Err(e),
            }
            self.remove_manifests_before(tp, claim.seq)?;
            self.set_seq(tp, claim.seq);
            let files = self.scan_partition(tp)?;
            return Ok(Recovered {
                durable_through: claim.last_offset,
                files,
            });
        }
        Err(CommitError::Fenced {
            partition: tp.clone(),
            seq: self.seq(tp),
        })
    }

    fn roll_forward(&self, manifest: &Manifest) -> io::Result<()> {
        let mut finals = BTreeSet::new();
        let mut touched = BTreeSet::new();
        for file in &manifest.files {
            let target = join(&file.dir, &file.name);
            if self.store.publish(&file.dir, &file.tmp, &file.name)? {
                touched.insert(file.dir.clone());
            } else if !self.store.exists(&target)? {
                tracing::warn!(dataset = %self.describe(), file = %target, "a committed Parquet file is missing from the dataset");
            }
            finals.insert(target);
        }
        for replaced in &manifest.replaces {
            if finals.contains(replaced) {
                continue;
            }
            self.store.delete(replaced)?;
            touched.insert(
                replaced
                    .rsplit_once('/')
                    .map(|(dir, _)| dir.to_owned())
                    .unwrap_or_default(),
            );
        }
        self.store.sync(&touched)
    }

    /// Deletes the manifests before `seq`, and the temps of manifest creates that a
    /// killed writer left in the directory (a create writes a hidden temp, links it to the
    /// manifest's name and removes it; a kill in between leaves the temp).
    fn remove_manifests_before(&self, tp: &TopicPartition, seq: u64) -> io::Result<()> {
        let dir = self.manifest_dir(tp);
        for (older, name) in self.manifests(tp)? {
            if older < seq {
                self.store.delete(&join(&dir, &name))?;
            }
        }
        for name in self.store.names(&dir)? {
            if name.starts_with('.') && name.ends_with(".tmp") {
                self.store.delete(&join(&dir, &name))?;
            }
        }
        Ok(())
    }

    /// Lists the dataset once: deletes this writer's temps of `tp` (a manifest rolled
    /// forward has published all it names, so what is left is torn) and returns the
    /// committed files of `tp`.
    fn scan_partition(&self, tp: &TopicPartition) -> io::Result<BTreeSet<DataFile>> {
        let temp_prefix = format!(".{}-", self.owner(tp));
        let listing = self.store.list()?;
        for (dir, name) in &listing.temps {
            let ours = name
                .strip_prefix(&temp_prefix)
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()));
            if ours {
                self.store.discard(dir, name)?;
            }
        }
        Ok(listing
            .files
            .into_iter()
            .filter_map(|(dir, name)| {
                let (first, last) = Self::parse_file_name(tp, &name)?;
                Some(DataFile { first, last, dir })
            })
            .collect())
    }

    /// Removes the bookkeeping of backfill `run` (it finished).
    pub fn forget_writer(&self, run: &str) -> io::Result<()> {
        self.store
            .delete_all(&format!("{META_DIR}/backfills/{run}"))
    }
}

fn file_name_of(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;

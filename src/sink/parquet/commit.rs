//! How Parquet files become visible exactly once, even across `kill -9`.
//!
//! A source partition's files are written as a *group* covering offsets `first..=last`,
//! one file per Hive directory, under hidden temp names (`.OWNER-FIRST.KIND.parquet.tmp`:
//! readers skip dot files, and the suffix is not `.parquet`, so globs skip them too).
//! Committing a group:
//!
//! 1. close and fsync every temp file;
//! 2. write the group's manifest `_sluice/manifests/TOPIC-PARTITION/FIRST-LAST.json`
//!    (temp + fsync + rename + fsync dir): **this is the commit point**. It names the
//!    temp files and their final names, and the older files the commit *replaces*
//!    (merged into a segment file, or a backfill's new version of the same offsets);
//! 3. rename each temp file to `TOPIC-PARTITION-FIRST-LAST.parquet`, delete the replaced
//!    files, fsync the dirs;
//! 4. delete the partition's older manifests.
//!
//! When a partition is (re)assigned, [`Dataset::recover`] rolls the latest manifest
//! forward (finishing renames and deletions a crash interrupted), deletes temp files no
//! manifest names (torn writes), lists the partition's files, and returns the last offset
//! already in the dataset. The sink drops replayed rows up to that offset, so a replay
//! after a crash, whatever its batch boundaries, adds no duplicate and loses nothing: Kafka
//! offsets may lag the dataset, never lead it.
//!
//! A backfill writing into the live dataset is a second *writer*: it keeps its manifests
//! under `_sluice/backfills/RUN/` and its temp names carry `RUN.`, so its recovery never
//! touches the live pipeline's files in flight, and the live pipeline's never touches its.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::batch::TopicPartition;

/// Directory (under the dataset root) of sluice's own bookkeeping; `_` makes readers
/// (pyarrow, Spark, DuckDB globs on `*.parquet`) skip it.
pub const META_DIR: &str = "_sluice";
pub const TMP_SUFFIX: &str = ".parquet.tmp";

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    topic: String,
    partition: i32,
    first_offset: i64,
    last_offset: i64,
    files: Vec<ManifestFile>,
    /// Files (relative to the root) this commit supersedes; deleted after the renames.
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

/// A file of a commit, written and fsynced, waiting for its commit.
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
        let name = Dataset::file_name(tp, self.first, self.last);
        if self.dir.is_empty() {
            name
        } else {
            format!("{}/{name}", self.dir)
        }
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

/// One Parquet dataset directory, as seen by one writer.
#[derive(Debug, Clone)]
pub struct Dataset {
    root: PathBuf,
    /// `None`: the live pipeline. `Some(run)`: a backfill run writing beside it.
    writer: Option<String>,
}

impl Dataset {
    pub fn new(root: impl Into<PathBuf>, writer: Option<String>) -> Self {
        Dataset {
            root: root.into(),
            writer,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
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

    /// Creates a temp file in Hive directory `dir` for rows of `tp` from offset `first`;
    /// `kind` keeps temps of one commit apart (`group`, `merge`, `keep`).
    pub fn create_temp(
        &self,
        dir: &str,
        tp: &TopicPartition,
        first: i64,
        kind: &str,
    ) -> io::Result<(PathBuf, File)> {
        let dir_path = self.root.join(dir);
        fs::create_dir_all(&dir_path)?;
        let owner = self.owner(tp);
        let path = dir_path.join(format!(".{owner}-{first:020}.{kind}{TMP_SUFFIX}"));
        let file = File::create(&path)?;
        Ok((path, file))
    }

    fn manifest_dir(&self, tp: &TopicPartition) -> PathBuf {
        let meta = self.root.join(META_DIR);
        match &self.writer {
            Some(run) => meta.join("backfills").join(run).join(tp.to_string()),
            None => meta.join("manifests").join(tp.to_string()),
        }
    }

    /// Commits `files` (closed and fsynced) as the rows of `tp` at `first..=last`,
    /// superseding `replaces`. Returns the final paths.
    pub fn commit(
        &self,
        tp: &TopicPartition,
        first: i64,
        last: i64,
        files: &[StagedFile],
        replaces: &[DataFile],
    ) -> io::Result<Vec<PathBuf>> {
        let manifest = Manifest {
            topic: tp.topic.to_string(),
            partition: tp.partition,
            first_offset: first,
            last_offset: last,
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
        let dir = self.manifest_dir(tp);
        fs::create_dir_all(&dir)?;
        let manifest_name = format!("{first:020}-{last:020}.json");
        write_atomically(&dir, &manifest_name, &serde_json::to_vec_pretty(&manifest)?)?;
        let finals = self.roll_forward(&manifest)?;
        remove_manifests_except(&dir, &manifest_name)?;
        Ok(finals)
    }

    /// Makes the partition's dataset consistent after a crash or a move from another
    /// consumer: finishes this writer's last commit, removes its torn writes, and lists
    /// the partition's files.
    pub fn recover(&self, tp: &TopicPartition) -> io::Result<Recovered> {
        let dir = self.manifest_dir(tp);
        // The latest manifest is the one reaching furthest (names are FIRST-LAST.json).
        let latest = match fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter_map(|n| {
                    let last: i64 = n.strip_suffix(".json")?.split_once('-')?.1.parse().ok()?;
                    Some((last, n))
                })
                .max(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let durable_through = match &latest {
            Some((_, name)) => {
                let manifest: Manifest = serde_json::from_slice(&fs::read(dir.join(name))?)?;
                self.roll_forward(&manifest)?;
                remove_manifests_except(&dir, name)?;
                Some(manifest.last_offset)
            }
            None => None,
        };
        let files = self.scan_partition(tp)?;
        Ok(Recovered {
            durable_through,
            files,
        })
    }

    fn roll_forward(&self, manifest: &Manifest) -> io::Result<Vec<PathBuf>> {
        let mut finals = Vec::with_capacity(manifest.files.len());
        let mut touched = BTreeSet::new();
        for file in &manifest.files {
            let dir = self.root.join(&file.dir);
            let tmp = dir.join(&file.tmp);
            let target = dir.join(&file.name);
            if tmp.exists() {
                fs::rename(&tmp, &target)?;
                touched.insert(dir);
            } else if !target.exists() {
                tracing::warn!(file = %target.display(), "a committed Parquet file is missing from the dataset");
            }
            finals.push(target);
        }
        for replaced in &manifest.replaces {
            let path = self.root.join(replaced);
            if finals.contains(&path) {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => {
                    if let Some(parent) = path.parent() {
                        touched.insert(parent.to_owned());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        for dir in &touched {
            sync_dir(dir)?;
        }
        Ok(finals)
    }

    /// Walks the dataset once: deletes this writer's temp files of `tp` (a manifest rolled
    /// forward has renamed all it names, so what is left is torn) and lists the committed
    /// files of `tp`.
    fn scan_partition(&self, tp: &TopicPartition) -> io::Result<BTreeSet<DataFile>> {
        let temp_prefix = format!(".{}-", self.owner(tp));
        let mut files = BTreeSet::new();
        let walker = walkdir::WalkDir::new(&self.root)
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || e.file_name() != META_DIR);
        for entry in walker {
            let entry = entry.map_err(io::Error::other)?;
            if !entry.file_type().is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy();
            if name.ends_with(TMP_SUFFIX) {
                let ours = name
                    .strip_prefix(&temp_prefix)
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()));
                if ours {
                    fs::remove_file(entry.path())?;
                }
            } else if let Some((first, last)) = Self::parse_file_name(tp, &name) {
                let dir = entry
                    .path()
                    .parent()
                    .and_then(|p| p.strip_prefix(&self.root).ok())
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                files.insert(DataFile { first, last, dir });
            }
        }
        Ok(files)
    }
}

/// Removes the bookkeeping of backfill `run` under dataset `root` (it finished).
pub fn forget_writer(root: &Path, run: &str) -> io::Result<()> {
    match fs::remove_dir_all(root.join(META_DIR).join("backfills").join(run)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn file_name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn remove_manifests_except(dir: &Path, keep: &str) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() != keep {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Writes `dir/name` so that it is either absent or complete, and durable.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(
        dataset: &Dataset,
        dir: &str,
        tp: &TopicPartition,
        first: i64,
        last: i64,
    ) -> StagedFile {
        let (tmp_path, file) = dataset.create_temp(dir, tp, first, "group").unwrap();
        file.sync_all().unwrap();
        StagedFile {
            dir: dir.into(),
            tmp_path,
            name: Dataset::file_name(tp, first, last),
            rows: 1,
        }
    }

    fn data_file(dir: &str, first: i64, last: i64) -> DataFile {
        DataFile {
            first,
            last,
            dir: dir.into(),
        }
    }

    #[test]
    fn a_committed_group_is_visible_under_provenance_names() {
        let root = tempfile::tempdir().unwrap();
        let dataset = Dataset::new(root.path(), None);
        let tp = TopicPartition::new("t", 0);
        let files = [
            stage(&dataset, "date=a", &tp, 0, 9),
            stage(&dataset, "date=b", &tp, 0, 9),
        ];
        let finals = dataset.commit(&tp, 0, 9, &files, &[]).unwrap();
        for f in &finals {
            assert!(f.exists());
            assert!(f.ends_with(Dataset::file_name(&tp, 0, 9)));
        }
        assert!(!files[0].tmp_path.exists());
        let recovered = dataset.recover(&tp).unwrap();
        assert_eq!(recovered.durable_through, Some(9));
        assert_eq!(
            recovered.files.into_iter().collect::<Vec<_>>(),
            [data_file("date=a", 0, 9), data_file("date=b", 0, 9)]
        );
    }

    #[test]
    fn file_names_round_trip_and_belong_to_one_partition() {
        let tp = TopicPartition::new("a-b", 1);
        let name = Dataset::file_name(&tp, 5, 99);
        assert_eq!(Dataset::parse_file_name(&tp, &name), Some((5, 99)));
        assert_eq!(
            Dataset::parse_file_name(&TopicPartition::new("a-b", 11), &name),
            None
        );
        assert_eq!(
            Dataset::parse_file_name(&TopicPartition::new("a", 1), &name),
            None
        );
        assert_eq!(Dataset::parse_file_name(&tp, "a-b-1-5-99.parquet"), None);
    }

    #[test]
    fn a_commit_deletes_the_files_it_replaces_even_after_a_crash() {
        let root = tempfile::tempdir().unwrap();
        let dataset = Dataset::new(root.path(), None);
        let tp = TopicPartition::new("t", 0);
        dataset
            .commit(&tp, 0, 4, &[stage(&dataset, "d=1", &tp, 0, 4)], &[])
            .unwrap();
        dataset
            .commit(&tp, 5, 9, &[stage(&dataset, "d=2", &tp, 5, 9)], &[])
            .unwrap();
        // Merge both into one file, as a segment's end does.
        let merged = stage(&dataset, "d=1", &tp, 0, 9);
        dataset
            .commit(
                &tp,
                0,
                9,
                &[merged],
                &[data_file("d=1", 0, 4), data_file("d=2", 5, 9)],
            )
            .unwrap();
        let recovered = dataset.recover(&tp).unwrap();
        assert_eq!(recovered.durable_through, Some(9));
        assert_eq!(
            recovered.files.into_iter().collect::<Vec<_>>(),
            [data_file("d=1", 0, 9)]
        );

        // A crash after the manifest, before the renames and deletions.
        let newer = stage(&dataset, "d=3", &tp, 0, 9);
        let manifest = Manifest {
            topic: "t".into(),
            partition: 0,
            first_offset: 0,
            last_offset: 9,
            files: vec![ManifestFile {
                dir: newer.dir.clone(),
                tmp: file_name_of(&newer.tmp_path),
                name: newer.name.clone(),
                rows: 1,
            }],
            replaces: vec![data_file("d=1", 0, 9).relative_path(&tp)],
        };
        write_atomically(
            &dataset.manifest_dir(&tp),
            "00000000000000000000-00000000000000000009.json",
            &serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        let recovered = dataset.recover(&tp).unwrap();
        assert_eq!(
            recovered.files.into_iter().collect::<Vec<_>>(),
            [data_file("d=3", 0, 9)]
        );
    }

    #[test]
    fn recovery_finishes_an_interrupted_commit_and_drops_torn_writes() {
        let root = tempfile::tempdir().unwrap();
        let dataset = Dataset::new(root.path(), None);
        let tp = TopicPartition::new("t", 1);
        let other = TopicPartition::new("t", 11);
        let a = stage(&dataset, "d=1", &tp, 10, 19);
        let b = stage(&dataset, "d=2", &tp, 10, 19);
        // Crash after the manifest was written but before any rename.
        let manifest = Manifest {
            topic: "t".into(),
            partition: 1,
            first_offset: 10,
            last_offset: 19,
            files: [&a, &b]
                .iter()
                .map(|f| ManifestFile {
                    dir: f.dir.clone(),
                    tmp: file_name_of(&f.tmp_path),
                    name: f.name.clone(),
                    rows: 1,
                })
                .collect(),
            replaces: Vec::new(),
        };
        let dir = dataset.manifest_dir(&tp);
        fs::create_dir_all(&dir).unwrap();
        write_atomically(
            &dir,
            "00000000000000000010-00000000000000000019.json",
            &serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        // A later group was being written when the process died: torn, never committed.
        let torn = stage(&dataset, "d=2", &tp, 20, 29);
        let not_ours = stage(&dataset, "d=2", &other, 20, 29);
        let backfill = Dataset::new(root.path(), Some("backfill-1".into()));
        let backfills = stage(&backfill, "d=2", &tp, 20, 29);

        assert_eq!(dataset.recover(&tp).unwrap().durable_through, Some(19));
        assert!(root
            .path()
            .join("d=1")
            .join(Dataset::file_name(&tp, 10, 19))
            .exists());
        assert!(root
            .path()
            .join("d=2")
            .join(Dataset::file_name(&tp, 10, 19))
            .exists());
        assert!(!torn.tmp_path.exists(), "torn write removed");
        assert!(
            not_ours.tmp_path.exists(),
            "another partition's temp file is left alone"
        );
        assert!(
            backfills.tmp_path.exists(),
            "another writer's temp file is left alone"
        );
        assert_eq!(
            dataset
                .recover(&TopicPartition::new("t", 2))
                .unwrap()
                .durable_through,
            None
        );
        // The backfill writer has its own manifests: none yet.
        let recovered = backfill.recover(&tp).unwrap();
        assert_eq!(recovered.durable_through, None);
        assert_eq!(
            recovered.files.len(),
            2,
            "but it sees the partition's files"
        );
        assert!(!backfills.tmp_path.exists());
    }
}

//! How Parquet files become visible exactly once, even across `kill -9`.
//!
//! Files of one source partition are written as a *group* covering offsets
//! `first..=last`, one file per Hive directory, under hidden temp names
//! (`.TOPIC-PARTITION-FIRST.parquet.tmp`: readers skip dot files, and the suffix is not
//! `.parquet`, so globs skip them too). Committing a group:
//!
//! 1. close and fsync every temp file;
//! 2. write the group's manifest `_sluice/manifests/TOPIC-PARTITION/FIRST-LAST.json`
//!    (temp + fsync + rename + fsync dir): **this is the commit point**;
//! 3. rename each temp file to `TOPIC-PARTITION-FIRST-LAST.parquet`, fsync the dirs;
//! 4. delete the partition's older manifests.
//!
//! When a partition is (re)assigned, [`Dataset::recover`] rolls the latest manifest
//! forward (finishing renames a crash interrupted), deletes temp files no manifest
//! names (torn writes), and returns the last offset already in the dataset. The sink
//! drops replayed rows up to that offset, so a replay after a crash, whatever its batch
//! boundaries, adds no duplicate and loses nothing: Kafka offsets may lag the dataset,
//! never lead it.

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
}

#[derive(Debug, Serialize, Deserialize)]
struct ManifestFile {
    /// Hive directory relative to the dataset root (`""` for the root).
    dir: String,
    tmp: String,
    name: String,
    rows: u64,
}

/// A file of a group, written and fsynced, waiting for its group to commit.
#[derive(Debug)]
pub struct StagedFile {
    pub dir: String,
    pub tmp_path: PathBuf,
    pub rows: u64,
}

/// One Parquet dataset directory.
#[derive(Debug, Clone)]
pub struct Dataset {
    root: PathBuf,
}

impl Dataset {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Dataset { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Final file name of a group's file: derived only from provenance, so a replay of the
    /// same range produces the same name.
    pub fn file_name(tp: &TopicPartition, first: i64, last: i64) -> String {
        format!("{tp}-{first:020}-{last:020}.parquet")
    }

    /// Creates the temp file a group writes into for one Hive directory.
    pub fn create_temp(
        &self,
        dir: &str,
        tp: &TopicPartition,
        first: i64,
    ) -> io::Result<(PathBuf, File)> {
        let dir_path = self.root.join(dir);
        fs::create_dir_all(&dir_path)?;
        let path = dir_path.join(format!(".{tp}-{first:020}{TMP_SUFFIX}"));
        let file = File::create(&path)?;
        Ok((path, file))
    }

    fn manifest_dir(&self, tp: &TopicPartition) -> PathBuf {
        self.root
            .join(META_DIR)
            .join("manifests")
            .join(tp.to_string())
    }

    /// Commits a group whose files are all closed and fsynced. Returns the final paths.
    pub fn commit(
        &self,
        tp: &TopicPartition,
        first: i64,
        last: i64,
        files: &[StagedFile],
    ) -> io::Result<Vec<PathBuf>> {
        let name = Self::file_name(tp, first, last);
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
                    name: name.clone(),
                    rows: f.rows,
                })
                .collect(),
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
    /// consumer; returns the last offset whose rows are already in the dataset.
    pub fn recover(&self, tp: &TopicPartition) -> io::Result<Option<i64>> {
        let dir = self.manifest_dir(tp);
        let latest = match fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".json"))
                .max(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let durable = match &latest {
            Some(name) => {
                let manifest: Manifest = serde_json::from_slice(&fs::read(dir.join(name))?)?;
                self.roll_forward(&manifest)?;
                remove_manifests_except(&dir, name)?;
                Some(manifest.last_offset)
            }
            None => None,
        };
        self.remove_stray_temps(tp)?;
        Ok(durable)
    }

    fn roll_forward(&self, manifest: &Manifest) -> io::Result<Vec<PathBuf>> {
        let mut finals = Vec::with_capacity(manifest.files.len());
        for file in &manifest.files {
            let dir = self.root.join(&file.dir);
            let tmp = dir.join(&file.tmp);
            let target = dir.join(&file.name);
            if tmp.exists() {
                fs::rename(&tmp, &target)?;
                sync_dir(&dir)?;
            } else if !target.exists() {
                tracing::warn!(file = %target.display(), "a committed Parquet file is missing from the dataset");
            }
            finals.push(target);
        }
        Ok(finals)
    }

    /// Deletes temp files of `tp` that no manifest names: writes a crash cut short.
    fn remove_stray_temps(&self, tp: &TopicPartition) -> io::Result<()> {
        let prefix = tp.to_string();
        let walker = walkdir::WalkDir::new(&self.root)
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || e.file_name() != META_DIR);
        for entry in walker {
            let entry = entry.map_err(io::Error::other)?;
            let name = entry.file_name().to_string_lossy();
            let Some(stem) = name
                .strip_prefix('.')
                .and_then(|n| n.strip_suffix(TMP_SUFFIX))
            else {
                continue;
            };
            if stem
                .rsplit_once('-')
                .is_some_and(|(owner, _)| owner == prefix)
            {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
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

    fn stage(dataset: &Dataset, dir: &str, tp: &TopicPartition, first: i64) -> StagedFile {
        let (tmp_path, file) = dataset.create_temp(dir, tp, first).unwrap();
        file.sync_all().unwrap();
        StagedFile {
            dir: dir.into(),
            tmp_path,
            rows: 1,
        }
    }

    #[test]
    fn a_committed_group_is_visible_under_provenance_names() {
        let root = tempfile::tempdir().unwrap();
        let dataset = Dataset::new(root.path());
        let tp = TopicPartition::new("t", 0);
        let files = [
            stage(&dataset, "date=a", &tp, 0),
            stage(&dataset, "date=b", &tp, 0),
        ];
        let finals = dataset.commit(&tp, 0, 9, &files).unwrap();
        for f in &finals {
            assert!(f.exists());
            assert!(f.ends_with(Dataset::file_name(&tp, 0, 9)));
        }
        assert!(!files[0].tmp_path.exists());
        assert_eq!(dataset.recover(&tp).unwrap(), Some(9));
    }

    #[test]
    fn recovery_finishes_an_interrupted_commit_and_drops_torn_writes() {
        let root = tempfile::tempdir().unwrap();
        let dataset = Dataset::new(root.path());
        let tp = TopicPartition::new("t", 1);
        let other = TopicPartition::new("t", 11);
        let a = stage(&dataset, "d=1", &tp, 10);
        let b = stage(&dataset, "d=2", &tp, 10);
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
                    name: Dataset::file_name(&tp, 10, 19),
                    rows: 1,
                })
                .collect(),
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
        let torn = stage(&dataset, "d=2", &tp, 20);
        let not_ours = stage(&dataset, "d=2", &other, 20);

        assert_eq!(dataset.recover(&tp).unwrap(), Some(19));
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
        assert_eq!(dataset.recover(&TopicPartition::new("t", 2)).unwrap(), None);
    }
}

//! The small storage interface the commit protocol ([`super::commit`]) runs over, and its
//! two implementations: a local directory and an object-store prefix.
//!
//! Paths are `/`-separated and relative to the dataset root. A *temp* is a file the sink
//! writes locally and then *stages* (makes durable where a commit can find it); a commit
//! *publishes* a staged temp under its final name.
//!
//! | step      | local directory                    | object store                                   |
//! |-----------|------------------------------------|------------------------------------------------|
//! | temp      | hidden file beside the final name  | file in a local spool directory                |
//! | stage     | nothing (written and fsynced)      | upload to `_sluice/staging/DIR/TEMP` (multipart when large) |
//! | create    | temp + fsync + `link` (fails if it exists) | `PUT` with `If-None-Match: *`         |
//! | publish   | `rename`                           | server-side copy, then delete the staged object |
//! | sync      | fsync the touched directories      | nothing (each request is durable when it returns) |

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use object_store::{ObjectStore, ObjectStoreExt};

use super::commit::{META_DIR, TMP_SUFFIX};
use crate::storage::{block_on, io_error, Location, ObjectLocation};

/// Where staged temps live on an object store.
const STAGING_DIR: &str = "_sluice/staging";

/// A committed file made readable as a local file (downloaded when remote; the download
/// is deleted on drop).
pub struct LocalCopy {
    pub path: PathBuf,
    _download: Option<tempfile::TempPath>,
}

/// What a dataset's files are, by name: committed files and temps.
#[derive(Debug, Default)]
pub struct Listing {
    /// `(dir, name)` of every non-temp file outside `_sluice/`.
    pub files: Vec<(String, String)>,
    /// `(dir, temp name)` of every staged temp.
    pub temps: Vec<(String, String)>,
}

/// Storage operations of the commit protocol.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The root as written (a path or URL), for messages.
    fn describe(&self) -> String;
    /// Local directory in which temps of Hive directory `dir` are created.
    fn temp_dir(&self, dir: &str) -> io::Result<PathBuf>;
    /// Makes the closed local temp `path` (in `temp_dir(dir)`) durable for a commit.
    fn stage(&self, dir: &str, path: &Path) -> io::Result<()>;
    /// Publishes staged temp `temp` of `dir` as `name`; `false` when it is not staged
    /// (published already).
    fn publish(&self, dir: &str, temp: &str, name: &str) -> io::Result<bool>;
    /// Deletes a staged (or local) temp that will not be committed.
    fn discard(&self, dir: &str, temp: &str) -> io::Result<()>;
    fn exists(&self, path: &str) -> io::Result<bool>;
    fn read(&self, path: &str) -> io::Result<Option<Vec<u8>>>;
    /// Creates `path` with `bytes` unless something is there: `false` then.
    fn create(&self, path: &str, bytes: Vec<u8>) -> io::Result<bool>;
    /// Deletes `path`; a missing file is not an error.
    fn delete(&self, path: &str) -> io::Result<()>;
    /// Deletes everything under directory `dir`.
    fn delete_all(&self, dir: &str) -> io::Result<()>;
    /// Names of the files directly in directory `dir`.
    fn names(&self, dir: &str) -> io::Result<Vec<String>>;
    /// Every committed file and staged temp of the dataset.
    fn list(&self) -> io::Result<Listing>;
    /// A committed file as a local file.
    fn local_copy(&self, path: &str) -> io::Result<LocalCopy>;
    /// Size of a local temp file in bytes.
    fn temp_size(&self, path: &Path) -> u64 {
        fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }
    /// Makes the publishes and deletes in `dirs` durable.
    fn sync(&self, dirs: &BTreeSet<String>) -> io::Result<()>;
}

/// Builds the store of a dataset root.
pub fn open(location: Location) -> io::Result<Box<dyn Store>> {
    Ok(match location {
        Location::Local(root) => {
            fs::create_dir_all(&root)?;
            Box::new(LocalStore { root })
        }
        Location::Object(object) => Box::new(ObjectStoreStore {
            spool: tempfile::Builder::new().prefix("sluice-spool-").tempdir()?,
            location: object,
        }),
    })
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// A dataset in a local directory.
#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: root.into() }
    }
}

impl Store for LocalStore {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn temp_dir(&self, dir: &str) -> io::Result<PathBuf> {
        let path = self.root.join(dir);
        fs::create_dir_all(&path)?;
        Ok(path)
    }

    fn stage(&self, _dir: &str, _path: &Path) -> io::Result<()> {
        Ok(())
    }

    fn publish(&self, dir: &str, temp: &str, name: &str) -> io::Result<bool> {
        let dir = self.root.join(dir);
        match fs::rename(dir.join(temp), dir.join(name)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn discard(&self, dir: &str, temp: &str) -> io::Result<()> {
        self.delete(&join(dir, temp))
    }

    fn exists(&self, path: &str) -> io::Result<bool> {
        self.root.join(path).try_exists()
    }

    fn read(&self, path: &str) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.root.join(path)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn create(&self, path: &str, bytes: Vec<u8>) -> io::Result<bool> {
        let target = self.root.join(path);
        let dir = target.parent().unwrap_or(&self.root).to_owned();
        fs::create_dir_all(&dir)?;
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let mut file = File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        // A hard link fails when the target exists: the local conditional create.
        let linked = fs::hard_link(&tmp, &target);
        fs::remove_file(&tmp)?;
        match linked {
            Ok(()) => {
                sync_dir(&dir)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn delete(&self, path: &str) -> io::Result<()> {
        match fs::remove_file(self.root.join(path)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn delete_all(&self, dir: &str) -> io::Result<()> {
        match fs::remove_dir_all(self.root.join(dir)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn names(&self, dir: &str) -> io::Result<Vec<String>> {
        match fs::read_dir(self.root.join(dir)) {
            Ok(entries) => entries
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    fn list(&self) -> io::Result<Listing> {
        let mut listing = Listing::default();
        let walker = walkdir::WalkDir::new(&self.root)
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || e.file_name() != META_DIR);
        for entry in walker {
            let entry = entry.map_err(io::Error::other)?;
            if !entry.file_type().is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let dir = entry
                .path()
                .parent()
                .and_then(|p| p.strip_prefix(&self.root).ok())
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.ends_with(TMP_SUFFIX) {
                listing.temps.push((dir, name));
            } else {
                listing.files.push((dir, name));
            }
        }
        Ok(listing)
    }

    fn local_copy(&self, path: &str) -> io::Result<LocalCopy> {
        Ok(LocalCopy {
            path: self.root.join(path),
            _download: None,
        })
    }

    fn sync(&self, dirs: &BTreeSet<String>) -> io::Result<()> {
        for dir in dirs {
            sync_dir(&self.root.join(dir))?;
        }
        Ok(())
    }
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A dataset under an object-store prefix.
pub struct ObjectStoreStore {
    location: ObjectLocation,
    /// Where temps are written before they are uploaded.
    spool: tempfile::TempDir,
}

impl std::fmt::Debug for ObjectStoreStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStoreStore")
            .field("url", &self.location.url)
            .finish_non_exhaustive()
    }
}

impl ObjectStoreStore {
    fn staged_key(&self, dir: &str, temp: &str) -> object_store::path::Path {
        self.location.key(&join(&join(STAGING_DIR, dir), temp))
    }

    fn call<T, F>(&self, f: impl FnOnce(std::sync::Arc<dyn ObjectStore>) -> F) -> io::Result<T>
    where
        F: std::future::Future<Output = object_store::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        block_on(f(self.location.store.clone())).map_err(io_error)
    }
}

impl Store for ObjectStoreStore {
    fn describe(&self) -> String {
        self.location.url.clone()
    }

    fn temp_dir(&self, dir: &str) -> io::Result<PathBuf> {
        let path = self.spool.path().join(dir);
        fs::create_dir_all(&path)?;
        Ok(path)
    }

    fn stage(&self, dir: &str, path: &Path) -> io::Result<()> {
        let temp = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let key = self.staged_key(dir, &temp);
        crate::storage::upload_file(self.location.store.clone(), key, path)?;
        // Uploaded: the spool copy is not needed any more.
        fs::remove_file(path)
    }

    fn publish(&self, dir: &str, temp: &str, name: &str) -> io::Result<bool> {
        let from = self.staged_key(dir, temp);
        let to = self.location.key(&join(dir, name));
        let copied = self.call(move |store| async move {
            match store.copy(&from, &to).await {
                Ok(()) => {
                    store.delete(&from).await?;
                    Ok(true)
                }
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        })?;
        Ok(copied)
    }

    fn discard(&self, dir: &str, temp: &str) -> io::Result<()> {
        self.location.delete(&join(&join(STAGING_DIR, dir), temp))
    }

    fn exists(&self, path: &str) -> io::Result<bool> {
        self.location.exists(path)
    }

    fn read(&self, path: &str) -> io::Result<Option<Vec<u8>>> {
        self.location.read(path)
    }

    fn create(&self, path: &str, bytes: Vec<u8>) -> io::Result<bool> {
        self.location.create(path, bytes)
    }

    fn delete(&self, path: &str) -> io::Result<()> {
        self.location.delete(path)
    }

    fn delete_all(&self, dir: &str) -> io::Result<()> {
        for path in self.location.list(dir)? {
            self.location.delete(&path)?;
        }
        Ok(())
    }

    fn names(&self, dir: &str) -> io::Result<Vec<String>> {
        self.location.names(dir)
    }

    fn list(&self) -> io::Result<Listing> {
        let mut listing = Listing::default();
        let staging = format!("{STAGING_DIR}/");
        for relative in self.location.list("")? {
            if let Some(staged) = relative.strip_prefix(&staging) {
                let (dir, name) = staged.rsplit_once('/').unwrap_or(("", staged));
                listing.temps.push((dir.to_owned(), name.to_owned()));
            } else if !relative.starts_with(&format!("{META_DIR}/")) {
                let (dir, name) = relative.rsplit_once('/').unwrap_or(("", &relative));
                listing.files.push((dir.to_owned(), name.to_owned()));
            }
        }
        Ok(listing)
    }

    fn local_copy(&self, path: &str) -> io::Result<LocalCopy> {
        let bytes = self.location.read(path)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{path} is not there"))
        })?;
        let mut download = tempfile::Builder::new()
            .prefix(".download-")
            .tempfile_in(self.spool.path())?;
        download.write_all(&bytes)?;
        let download = download.into_temp_path();
        Ok(LocalCopy {
            path: download.to_path_buf(),
            _download: Some(download),
        })
    }

    fn sync(&self, _dirs: &BTreeSet<String>) -> io::Result<()> {
        Ok(())
    }
}

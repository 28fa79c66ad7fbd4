//! Moving whole files between local disk and an object store: uploads (multipart when
//! large), and downloads of a dataset's files or of the objects a URL pattern names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;

use super::{block_on, open, Location, ObjectLocation, StorageError};
use crate::config::StorageConfig;

/// Downloads object `relative` (under `location`) to `target`, creating its directory.
pub fn download(location: &ObjectLocation, relative: &str, target: &Path) -> std::io::Result<()> {
    let bytes = location.read(relative)?.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{}/{relative} is not there", location.url),
        )
    })?;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(target, bytes)
}

/// Downloads the Parquet files of the dataset under `location` into `dest` (same relative
/// paths), leaving out what readers skip: `_`-prefixed directories (`_sluice/`,
/// `_delta_log/`) and hidden files. Returns how many files it copied.
pub fn download_dataset(location: &ObjectLocation, dest: &Path) -> std::io::Result<usize> {
    let mut copied = 0;
    for relative in location.list("")? {
        let skipped = relative
            .split('/')
            .any(|part| part.starts_with('_') || part.starts_with('.'));
        if skipped || !relative.ends_with(".parquet") {
            continue;
        }
        download(location, &relative, &dest.join(&relative))?;
        copied += 1;
    }
    Ok(copied)
}

/// Downloads the objects a URL pattern names (`s3://bucket/in/*.jsonl`: a glob in the
/// part after the last `/` before its first wildcard) into `dest`, keeping their names
/// below that prefix. Returns each object's URL and local path, sorted by URL.
pub fn download_matching(
    pattern: &str,
    storage: &BTreeMap<String, StorageConfig>,
    dest: &Path,
) -> Result<Vec<(String, PathBuf)>, StorageError> {
    let wildcard = pattern.find(['*', '?', '[']).unwrap_or(pattern.len());
    let split = pattern[..wildcard].rfind('/').map_or(0, |i| i + 1);
    let (base, glob) = pattern.split_at(split);
    let glob_error = |message: String| StorageError::Glob {
        pattern: pattern.to_owned(),
        message,
    };
    let matcher = glob::Pattern::new(glob).map_err(|e| glob_error(e.to_string()))?;
    let Location::Object(location) = open(Path::new(base), storage)? else {
        return Err(glob_error("expected an object-store URL".into()));
    };
    let read_error = |source: std::io::Error| StorageError::Read {
        url: location.url.clone(),
        source,
    };
    let options = glob::MatchOptions {
        require_literal_separator: true,
        ..Default::default()
    };
    let mut found = Vec::new();
    for relative in location.list("").map_err(read_error)? {
        if !matcher.matches_with(&relative, options) {
            continue;
        }
        let target = dest.join(&relative);
        download(&location, &relative, &target).map_err(read_error)?;
        found.push((format!("{base}{relative}"), target));
    }
    found.sort();
    if found.is_empty() {
        return Err(glob_error("no object matches".into()));
    }
    Ok(found)
}

/// Uploads above this size go in parts, so no partial object is ever visible.
const MULTIPART_ABOVE: u64 = 16 * 1024 * 1024;
const PART_SIZE: usize = 8 * 1024 * 1024;

/// Uploads local file `path` whole to `key` (in parts when large: the object appears only
/// when the upload completes). Returns its size.
pub fn upload_file(
    store: Arc<dyn ObjectStore>,
    key: ObjectPath,
    path: &Path,
) -> std::io::Result<u64> {
    use std::io::Read;
    let to_io = |e: object_store::Error| std::io::Error::other(e);
    let size = std::fs::metadata(path)?.len();
    if size <= MULTIPART_ABOVE {
        let bytes = std::fs::read(path)?;
        block_on(async move {
            use object_store::ObjectStoreExt;
            store.put(&key, object_store::PutPayload::from(bytes)).await
        })
        .map_err(to_io)?;
        return Ok(size);
    }
    // Parts are read from the file as they go, PART_SIZE at a time.
    let mut file = std::fs::File::open(path)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || -> std::io::Result<()> {
            loop {
                let mut part = vec![0; PART_SIZE];
                let mut filled = 0;
                while filled < PART_SIZE {
                    match file.read(&mut part[filled..])? {
                        0 => break,
                        n => filled += n,
                    }
                }
                if filled == 0 {
                    return Ok(());
                }
                part.truncate(filled);
                if tx.blocking_send(part).is_err() {
                    return Ok(());
                }
            }
        });
        let uploaded = block_on(async move {
            use object_store::ObjectStoreExt;
            let upload = store.put_multipart(&key).await?;
            let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            while let Some(part) = rx.recv().await {
                writer.wait_for_capacity(2).await?;
                writer.write(&part);
            }
            writer.finish().await
        });
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the upload reader panicked")));
        read.and(uploaded.map(|_| ()).map_err(to_io))
    })?;
    Ok(size)
}

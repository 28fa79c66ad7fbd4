//! Single-object operations on an [`ObjectLocation`], by `/`-separated path relative to
//! its prefix, as blocking calls that return `std::io` errors (a missing object is
//! `NotFound`): what the Parquet commit protocol and the model registry are built from.

use std::io;

use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::{block_on, ObjectLocation};

/// `object_store`'s error as an I/O error (`NotFound` kept as the kind).
pub(crate) fn io_error(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e),
        other => io::Error::other(other),
    }
}

impl ObjectLocation {
    /// The object's bytes, `None` when there is none.
    pub fn read(&self, path: &str) -> io::Result<Option<Vec<u8>>> {
        let (store, key) = (self.store.clone(), self.key(path));
        block_on(async move {
            match store.get(&key).await {
                Ok(got) => Ok(Some(got.bytes().await?.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .map_err(io_error)
    }

    /// Writes the object whole, replacing what was there.
    pub fn put(&self, path: &str, bytes: Vec<u8>) -> io::Result<()> {
        let (store, key) = (self.store.clone(), self.key(path));
        block_on(async move { store.put(&key, PutPayload::from(bytes)).await })
            .map(|_| ())
            .map_err(io_error)
    }

    /// Creates the object only if there is none (`If-None-Match: *`): `false` when one
    /// exists already, whoever wrote it.
    pub fn create(&self, path: &str, bytes: Vec<u8>) -> io::Result<bool> {
        let (store, key) = (self.store.clone(), self.key(path));
        block_on(async move {
            let options = PutOptions::from(PutMode::Create);
            match store.put_opts(&key, PutPayload::from(bytes), options).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        })
        .map_err(io_error)
    }

    pub fn exists(&self, path: &str) -> io::Result<bool> {
        let (store, key) = (self.store.clone(), self.key(path));
        block_on(async move {
            match store.head(&key).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        })
        .map_err(io_error)
    }

    /// Deletes the object; one that is not there is no error.
    pub fn delete(&self, path: &str) -> io::Result<()> {
        let (store, key) = (self.store.clone(), self.key(path));
        block_on(async move {
            match store.delete(&key).await {
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                other => other,
            }
        })
        .map_err(io_error)
    }

    /// The path (relative to this location) of every object under `dir` (`""`: all).
    pub fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let (store, prefix) = (self.store.clone(), self.key(dir));
        let keys: Vec<object_store::path::Path> = block_on(async move {
            store
                .list(Some(&prefix))
                .map_ok(|meta| meta.location)
                .try_collect()
                .await
        })
        .map_err(io_error)?;
        Ok(keys.iter().filter_map(|key| self.relative(key)).collect())
    }

    /// The names of the "directories" directly in `dir` (common prefixes).
    pub fn dirs(&self, dir: &str) -> io::Result<Vec<String>> {
        let (store, prefix) = (self.store.clone(), self.key(dir));
        let listed = block_on(async move { store.list_with_delimiter(Some(&prefix)).await })
            .map_err(io_error)?;
        Ok(listed
            .common_prefixes
            .into_iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect())
    }

    /// The names of the objects directly in `dir` (not below it).
    pub fn names(&self, dir: &str) -> io::Result<Vec<String>> {
        let (store, prefix) = (self.store.clone(), self.key(dir));
        let listed = block_on(async move { store.list_with_delimiter(Some(&prefix)).await })
            .map_err(io_error)?;
        Ok(listed
            .objects
            .into_iter()
            .filter_map(|o| o.location.filename().map(str::to_owned))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn memory() -> ObjectLocation {
        ObjectLocation {
            url: "memory://test/root".into(),
            store: Arc::new(object_store::memory::InMemory::new()),
            prefix: "root".into(),
        }
    }

    #[test]
    fn objects_are_read_created_once_listed_and_deleted() {
        let at = memory();
        assert_eq!(at.read("a/x.json").unwrap(), None);
        assert!(at.create("a/x.json", b"1".to_vec()).unwrap());
        assert!(!at.create("a/x.json", b"2".to_vec()).unwrap(), "taken");
        assert_eq!(at.read("a/x.json").unwrap().as_deref(), Some(&b"1"[..]));
        at.put("a/x.json", b"3".to_vec()).unwrap();
        at.put("a/b/y", b"4".to_vec()).unwrap();
        assert_eq!(at.read("a/x.json").unwrap().as_deref(), Some(&b"3"[..]));
        let mut all = at.list("a").unwrap();
        all.sort();
        assert_eq!(all, ["a/b/y", "a/x.json"]);
        assert_eq!(at.names("a").unwrap(), ["x.json"]);
        assert_eq!(at.dirs("a").unwrap(), ["b"]);
        assert!(at.exists("a/b/y").unwrap());
        at.delete("a/b/y").unwrap();
        at.delete("a/b/y").unwrap();
        assert!(!at.exists("a/b/y").unwrap());
    }
}

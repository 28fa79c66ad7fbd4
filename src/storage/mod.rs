//! Where datasets live: a local directory or an object-store URL (`s3://`, `gs://`,
//! `az://`, `abfss://`, `file://`), resolved into a [`Location`].
//!
//! Object stores are built with the `object_store` crate from the URL, the service's
//! standard environment (credential chains included) and the pipeline's `storage:` block
//! for the longest matching URL prefix (see [`crate::config::storage`]). [`check`] does
//! what can be known without a network (scheme, bucket, option names) and runs at
//! `validate`; [`probe`] asks the store at start.
//!
//! The sink's protocol code is synchronous; [`block_on`] runs an object-store call on
//! sluice's own I/O runtime and waits for it, so it works from any thread, inside a Tokio
//! runtime or not.

mod build;
mod object;
mod runtime;
mod transfer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use url::Url;

use crate::config::StorageConfig;

pub(crate) use object::io_error;
pub use runtime::{block_on, blocking, io_runtime};
pub use transfer::{download, download_dataset, download_matching, upload_file};

/// Why a storage URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("`{url}` is not a valid URL: {source}")]
    Url {
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error(
        "`{url}`: unknown storage scheme `{scheme}` (expected s3://, gs://, az://, abfss://, \
         file:// or a plain path)"
    )]
    Scheme { url: String, scheme: String },
    #[error("`{url}` names no bucket (expected {scheme}://BUCKET/PATH)")]
    Bucket { url: String, scheme: String },
    #[error("storage.{prefix}: `{key}` applies to s3:// URLs only")]
    S3Only { prefix: String, key: &'static str },
    #[error("storage.{prefix}.options: unknown option `{key}` for {service}")]
    Option {
        prefix: String,
        key: String,
        service: &'static str,
    },
    #[error("`{url}`: {source}")]
    Build {
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error("`{pattern}`: {message}")]
    Glob { pattern: String, message: String },
    #[error("reading `{url}`: {source}")]
    Read {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{url}` cannot be reached: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: object_store::Error,
    },
}

/// A dataset root.
#[derive(Debug, Clone)]
pub enum Location {
    /// A local (or mounted) directory.
    Local(PathBuf),
    /// A prefix in an object store.
    Object(ObjectLocation),
}

/// A prefix in an object store.
#[derive(Clone)]
pub struct ObjectLocation {
    /// The URL as written (it carries no credentials), for messages.
    pub url: String,
    pub store: Arc<dyn ObjectStore>,
    /// The key prefix inside the bucket/container (no leading or trailing `/`).
    pub prefix: ObjectPath,
}

impl std::fmt::Debug for ObjectLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectLocation")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl ObjectLocation {
    /// The key of `relative` (a `/`-separated path) under this prefix.
    pub fn key(&self, relative: &str) -> ObjectPath {
        relative
            .split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |key, part| key.clone().join(part))
    }

    /// `relative` back from a key under this prefix (`None` for keys elsewhere).
    pub fn relative(&self, key: &ObjectPath) -> Option<String> {
        let parts: Vec<String> = key
            .prefix_match(&self.prefix)?
            .map(|p| p.as_ref().to_owned())
            .collect();
        Some(parts.join("/"))
    }
}

/// Whether `path` is written as a URL (`scheme://...`) rather than a plain path.
pub fn is_url(path: &str) -> bool {
    path.split_once("://").is_some_and(|(scheme, _)| {
        scheme.len() > 1
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
    })
}

/// The dataset root `path` names, with its store built (no request made yet).
pub fn open(
    path: &Path,
    storage: &BTreeMap<String, StorageConfig>,
) -> Result<Location, StorageError> {
    let text = path.to_string_lossy();
    if !is_url(&text) {
        return Ok(Location::Local(path.to_owned()));
    }
    let url = Url::parse(&text).map_err(|source| StorageError::Url {
        url: text.to_string(),
        source,
    })?;
    let scheme = url.scheme().to_owned();
    let bucket_missing = url.host_str().is_none_or(str::is_empty);
    let block = settings_for(&text, storage);
    let store: Arc<dyn ObjectStore> = match scheme.as_str() {
        "file" => {
            let local = url.to_file_path().map_err(|()| StorageError::Scheme {
                url: text.to_string(),
                scheme,
            })?;
            return Ok(Location::Local(local));
        }
        "s3" | "s3a" => {
            if bucket_missing {
                return Err(StorageError::Bucket {
                    url: text.to_string(),
                    scheme,
                });
            }
            Arc::new(build::s3(&text, block)?)
        }
        "gs" => {
            if bucket_missing {
                return Err(StorageError::Bucket {
                    url: text.to_string(),
                    scheme,
                });
            }
            Arc::new(build::gcs(&text, block)?)
        }
        "az" | "adl" | "azure" | "abfs" | "abfss" => Arc::new(build::azure(&text, block)?),
        _ => {
            return Err(StorageError::Scheme {
                url: text.to_string(),
                scheme,
            })
        }
    };
    let prefix = ObjectPath::from_url_path(url.path()).map_err(|e| StorageError::Build {
        url: text.to_string(),
        source: e.into(),
    })?;
    Ok(Location::Object(ObjectLocation {
        url: text.trim_end_matches('/').to_owned(),
        store,
        prefix,
    }))
}

/// What can be known about `path` without asking the store.
pub fn check(path: &Path, storage: &BTreeMap<String, StorageConfig>) -> Result<(), StorageError> {
    open(path, storage).map(|_| ())
}

/// Asks the store whether the location can be listed (credentials, endpoint, bucket).
pub fn probe(location: &Location) -> Result<(), StorageError> {
    let Location::Object(object) = location else {
        return Ok(());
    };
    let store = object.store.clone();
    let prefix = object.prefix.clone();
    block_on(async move { store.list_with_delimiter(Some(&prefix)).await })
        .map(|_| ())
        .map_err(|source| StorageError::Unreachable {
            url: object.url.clone(),
            source,
        })
}

/// The `storage` block whose prefix is the longest one `url` starts with.
fn settings_for<'a>(
    url: &str,
    storage: &'a BTreeMap<String, StorageConfig>,
) -> Option<(&'a str, &'a StorageConfig)> {
    storage
        .iter()
        .filter(|(prefix, _)| url.starts_with(prefix.as_str()))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(prefix, block)| (prefix.as_str(), block))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(prefix: &str, block: StorageConfig) -> BTreeMap<String, StorageConfig> {
        BTreeMap::from([(prefix.to_owned(), block)])
    }

    #[test]
    fn plain_paths_and_file_urls_are_local() {
        let none = BTreeMap::new();
        assert!(
            matches!(open(Path::new("out/x"), &none), Ok(Location::Local(p)) if p == Path::new("out/x"))
        );
        assert!(
            matches!(open(Path::new("file:///tmp/x"), &none), Ok(Location::Local(p)) if p == Path::new("/tmp/x"))
        );
        assert!(!is_url("C:/data") && !is_url("a/b://c") && is_url("s3://b/k"));
    }

    #[test]
    fn bad_urls_say_what_was_expected() {
        let none = BTreeMap::new();
        let err = open(Path::new("ftp://host/x"), &none)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown storage scheme `ftp`"), "{err}");
        let err = open(Path::new("s3:///x"), &none).unwrap_err().to_string();
        assert!(err.contains("names no bucket"), "{err}");
        let block = StorageConfig {
            options: BTreeMap::from([("aws_no_such_thing".into(), "1".into())]),
            ..Default::default()
        };
        let err = open(Path::new("s3://b/x"), &storage("s3://b", block))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "storage.s3://b.options: unknown option `aws_no_such_thing` for S3"
        );
        let block = StorageConfig {
            region: Some("eu".into()),
            ..Default::default()
        };
        let err = open(Path::new("gs://b/x"), &storage("gs://", block))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`region` applies to s3:// URLs only"), "{err}");
    }

    #[test]
    fn keys_map_to_relative_paths_and_back() {
        let block = StorageConfig {
            endpoint: Some("http://127.0.0.1:1".into()),
            region: Some("us-east-1".into()),
            path_style: Some(true),
            allow_http: Some(true),
            access_key_id: Some("id".into()),
            secret_access_key: Some("secret".into()),
            ..Default::default()
        };
        let Location::Object(location) = open(
            Path::new("s3://bucket/data/feedback/"),
            &storage("s3://bucket", block),
        )
        .unwrap() else {
            panic!("an object location");
        };
        assert_eq!(location.url, "s3://bucket/data/feedback");
        let key = location.key("date=2026-01-01/t-0-1.parquet");
        assert_eq!(key.as_ref(), "data/feedback/date=2026-01-01/t-0-1.parquet");
        assert_eq!(
            location.relative(&key).as_deref(),
            Some("date=2026-01-01/t-0-1.parquet")
        );
        assert_eq!(location.relative(&ObjectPath::from("other/x")), None);
    }

    #[test]
    fn the_longest_prefix_wins() {
        let mut storage = storage("s3://", StorageConfig::default());
        let specific = StorageConfig {
            region: Some("eu-west-1".into()),
            ..Default::default()
        };
        storage.insert("s3://bucket/".into(), specific.clone());
        assert_eq!(
            settings_for("s3://bucket/x", &storage),
            Some(("s3://bucket/", &specific))
        );
        assert_eq!(settings_for("gs://bucket/x", &storage), None);
    }

    #[test]
    fn block_on_works_inside_and_outside_a_runtime() {
        assert_eq!(block_on(async { 1 + 1 }), 2);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(async { block_on(async { 3 }) }), 3);
    }
}

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

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use url::Url;

use crate::config::StorageConfig;

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
            Arc::new(s3(&text, block)?)
        }
        "gs" => {
            if bucket_missing {
                return Err(StorageError::Bucket {
                    url: text.to_string(),
                    scheme,
                });
            }
            Arc::new(gcs(&text, block)?)
        }
        "az" | "adl" | "azure" | "abfs" | "abfss" => Arc::new(azure(&text, block)?),
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

/// Retries of one object-store request: a few, quickly. A store that stays away longer
/// ends the attempt, and the runtime retries whole attempts with a longer backoff
/// (`runtime`), with nothing committed past what is durable.
fn retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: std::time::Duration::from_millis(100),
            max_backoff: std::time::Duration::from_secs(3),
            base: 2.0,
        },
        max_retries: 4,
        retry_timeout: std::time::Duration::from_secs(30),
    }
}

fn s3(
    url: &str,
    block: Option<(&str, &StorageConfig)>,
) -> Result<object_store::aws::AmazonS3, StorageError> {
    let mut builder = AmazonS3Builder::from_env()
        .with_url(url)
        .with_retry(retry());
    if let Some((prefix, block)) = block {
        if let Some(endpoint) = &block.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &block.region {
            builder = builder.with_region(region);
        }
        if let Some(path_style) = block.path_style {
            builder = builder.with_virtual_hosted_style_request(!path_style);
        }
        if let Some(allow) = block.allow_http {
            builder = builder.with_allow_http(allow);
        }
        if let Some(id) = &block.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &block.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        if let Some(token) = &block.session_token {
            builder = builder.with_token(token);
        }
        for (key, value) in &block.options {
            let parsed: AmazonS3ConfigKey =
                key.to_ascii_lowercase()
                    .parse()
                    .map_err(|_| StorageError::Option {
                        prefix: prefix.to_owned(),
                        key: key.clone(),
                        service: "S3",
                    })?;
            builder = builder.with_config(parsed, value);
        }
    }
    builder.build().map_err(|source| StorageError::Build {
        url: url.to_owned(),
        source,
    })
}

/// Settings of a block that only S3 has, refused for other services.
fn s3_only(prefix: &str, block: &StorageConfig) -> Result<(), StorageError> {
    let only = [
        ("region", block.region.is_some()),
        ("path_style", block.path_style.is_some()),
        ("access_key_id", block.access_key_id.is_some()),
        ("secret_access_key", block.secret_access_key.is_some()),
        ("session_token", block.session_token.is_some()),
    ];
    match only.into_iter().find(|(_, set)| *set) {
        Some((key, _)) => Err(StorageError::S3Only {
            prefix: prefix.to_owned(),
            key,
        }),
        None => Ok(()),
    }
}

fn gcs(
    url: &str,
    block: Option<(&str, &StorageConfig)>,
) -> Result<object_store::gcp::GoogleCloudStorage, StorageError> {
    let mut builder = GoogleCloudStorageBuilder::from_env()
        .with_url(url)
        .with_retry(retry());
    if let Some((prefix, block)) = block {
        s3_only(prefix, block)?;
        if let Some(endpoint) = &block.endpoint {
            builder = builder.with_base_url(endpoint);
        }
        if let Some(allow) = block.allow_http {
            builder = builder
                .with_client_options(object_store::ClientOptions::new().with_allow_http(allow));
        }
        for (key, value) in &block.options {
            let parsed: GoogleConfigKey =
                key.to_ascii_lowercase()
                    .parse()
                    .map_err(|_| StorageError::Option {
                        prefix: prefix.to_owned(),
                        key: key.clone(),
                        service: "Google Cloud Storage",
                    })?;
            builder = builder.with_config(parsed, value);
        }
    }
    builder.build().map_err(|source| StorageError::Build {
        url: url.to_owned(),
        source,
    })
}

fn azure(
    url: &str,
    block: Option<(&str, &StorageConfig)>,
) -> Result<object_store::azure::MicrosoftAzure, StorageError> {
    let mut builder = MicrosoftAzureBuilder::from_env()
        .with_url(url)
        .with_retry(retry());
    if let Some((prefix, block)) = block {
        s3_only(prefix, block)?;
        if let Some(endpoint) = &block.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        if let Some(allow) = block.allow_http {
            builder = builder.with_allow_http(allow);
        }
        for (key, value) in &block.options {
            let parsed: AzureConfigKey =
                key.to_ascii_lowercase()
                    .parse()
                    .map_err(|_| StorageError::Option {
                        prefix: prefix.to_owned(),
                        key: key.clone(),
                        service: "Azure Blob Storage",
                    })?;
            builder = builder.with_config(parsed, value);
        }
    }
    builder.build().map_err(|source| StorageError::Build {
        url: url.to_owned(),
        source,
    })
}

/// Downloads the Parquet files of the dataset under `location` into `dest` (same relative
/// paths), leaving out what readers skip: `_`-prefixed directories (`_sluice/`,
/// `_delta_log/`) and hidden files. Returns how many files it copied.
pub fn download_dataset(location: &ObjectLocation, dest: &Path) -> std::io::Result<usize> {
    use futures::TryStreamExt;
    let store = location.store.clone();
    let prefix = location.prefix.clone();
    let keys: Vec<ObjectPath> = block_on(async move {
        store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
    })
    .map_err(std::io::Error::other)?;
    let mut copied = 0;
    for key in keys {
        let Some(relative) = location.relative(&key) else {
            continue;
        };
        let skipped = relative
            .split('/')
            .any(|part| part.starts_with('_') || part.starts_with('.'));
        if skipped || !relative.ends_with(".parquet") {
            continue;
        }
        let store = location.store.clone();
        let bytes = block_on(async move {
            use object_store::ObjectStoreExt;
            store.get(&key).await?.bytes().await
        })
        .map_err(std::io::Error::other)?;
        let target = dest.join(&relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(target, bytes)?;
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
    let listed = {
        use futures::TryStreamExt;
        let store = location.store.clone();
        let prefix = location.prefix.clone();
        block_on(async move {
            store
                .list(Some(&prefix))
                .map_ok(|meta| meta.location)
                .try_collect::<Vec<_>>()
                .await
        })
        .map_err(|e| read_error(std::io::Error::other(e)))?
    };
    let options = glob::MatchOptions {
        require_literal_separator: true,
        ..Default::default()
    };
    let mut found = Vec::new();
    for key in listed {
        let Some(relative) = location.relative(&key) else {
            continue;
        };
        if !matcher.matches_with(&relative, options) {
            continue;
        }
        let store = location.store.clone();
        let bytes = block_on(async move {
            use object_store::ObjectStoreExt;
            store.get(&key).await?.bytes().await
        })
        .map_err(|e| read_error(std::io::Error::other(e)))?;
        let target = dest.join(&relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(read_error)?;
        }
        std::fs::write(&target, bytes).map_err(read_error)?;
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

/// Runs a blocking call (a Delta kernel call, which waits on its own I/O) from any thread:
/// on a multi-threaded Tokio runtime, its other tasks move to another worker meanwhile.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    let in_worker = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if in_worker {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// sluice's object-store runtime (two threads, started on first use, never dropped);
/// `None` if its threads could not be started.
pub fn io_runtime() -> Option<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("sluice-storage")
                .enable_all()
                .build()
                .ok()
        })
        .as_ref()
}

/// Runs `future` on sluice's object-store runtime and waits for its output. Callable from
/// any thread (the caller's thread blocks, as it would on a file write).
pub fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match io_runtime() {
        Some(runtime) => {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            runtime.spawn(async move {
                let _ = tx.send(future.await);
            });
            // On a multi-threaded Tokio runtime, let its other tasks move to another
            // worker while this one waits.
            let in_worker = tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
            let received = if in_worker {
                tokio::task::block_in_place(|| rx.recv())
            } else {
                rx.recv()
            };
            match received {
                Ok(output) => output,
                // The task panicked: surface it here, where the caller waits.
                Err(_) => panic!("an object-store task panicked"),
            }
        }
        // No threads could be started for it: run on a current-thread runtime here.
        None => std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map(|rt| rt.block_on(future))
                })
                .join()
        })
        .ok()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("no runtime for object-store calls could be started")),
    }
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

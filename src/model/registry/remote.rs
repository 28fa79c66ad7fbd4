//! The model registry under an object-store prefix: the same layout as on disk, with a
//! conditional create in place of the rename that takes a version number.
//!
//! Publishing a version:
//! 1. list `NAME/` and take the next number above every one seen (claimed or published);
//! 2. create `NAME/VERSION/.claim` with `If-None-Match: *`: if it exists, another
//!    publisher took the number, so try the next one;
//! 3. upload `model.onnx` and the extra files (multipart when large), then
//!    `manifest.json`, which makes the version count;
//! 4. when asked, replace `NAME/current` with one `PUT`.
//!
//! A publisher that dies after step 2 leaves a numbered prefix with no `manifest.json`:
//! it is skipped by [`Remote::versions`] and its number is never reused.
//!
//! Reading a version downloads all of `NAME/VERSION/` into a directory in a private
//! cache (a temp directory, under `SLUICE_MODEL_CACHE` when set), staged and renamed so a
//! cached version is always whole; versions are immutable, so a cached one is used as is.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{manifest_json, Manifest, ModelVersion, RegistryError};
use crate::storage::ObjectLocation;

/// The object that takes a version number.
const CLAIM: &str = ".claim";

/// An object-store registry and the local cache of the versions read from it.
#[derive(Debug)]
pub(super) struct Remote {
    location: ObjectLocation,
    cache: tempfile::TempDir,
}

/// The version numbers under `NAME/`.
#[derive(Debug, Default)]
pub(super) struct Numbers {
    /// With a `manifest.json`, ascending.
    pub published: Vec<u64>,
    /// Every number seen, claimed or published.
    pub taken: BTreeSet<u64>,
}

impl Remote {
    pub fn new(location: ObjectLocation) -> Result<Remote, RegistryError> {
        let parent = std::env::var_os("SLUICE_MODEL_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let io = |source| RegistryError::Io {
            name: String::new(),
            path: parent.clone(),
            source,
        };
        std::fs::create_dir_all(&parent).map_err(io)?;
        let cache = tempfile::Builder::new()
            .prefix("sluice-models-")
            .tempdir_in(&parent)
            .map_err(io)?;
        Ok(Remote { location, cache })
    }

    pub fn cache(&self) -> &Path {
        self.cache.path()
    }

    #[cfg(test)]
    pub fn location_for_tests(&self) -> &ObjectLocation {
        &self.location
    }

    pub fn url(&self) -> &str {
        &self.location.url
    }

    fn error(&self, name: &str, path: &str, source: std::io::Error) -> RegistryError {
        RegistryError::Io {
            name: name.into(),
            path: PathBuf::from(format!("{}/{path}", self.location.url)),
            source,
        }
    }

    /// The text of `NAME/current`, `None` when there is none.
    pub fn current(&self, name: &str) -> Result<Option<String>, RegistryError> {
        let path = format!("{name}/current");
        let bytes = self
            .location
            .read(&path)
            .map_err(|e| self.error(name, &path, e))?;
        Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    pub fn set_current(&self, name: &str, version: &str) -> Result<(), RegistryError> {
        let path = format!("{name}/current");
        self.location
            .put(&path, format!("{version}\n").into_bytes())
            .map_err(|e| self.error(name, &path, e))
    }

    pub fn versions(&self, name: &str) -> Result<Numbers, RegistryError> {
        let paths = self
            .location
            .list(name)
            .map_err(|e| self.error(name, name, e))?;
        let mut numbers = Numbers::default();
        for path in paths {
            let mut parts = path.split('/').skip(1);
            let (Some(number), Some(file)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(number) = number.parse::<u64>() else {
                continue;
            };
            numbers.taken.insert(number);
            if file == "manifest.json" && parts.next().is_none() {
                numbers.published.push(number);
            }
        }
        numbers.published.sort_unstable();
        Ok(numbers)
    }

    /// The names under the registry's root.
    pub fn models(&self) -> Result<Vec<String>, RegistryError> {
        self.location.dirs("").map_err(|e| self.error("", "", e))
    }

    /// Claims `manifest.version` of `manifest.name`, then uploads `files` and the
    /// manifest; `false` (nothing written) when another publisher holds the number.
    pub fn write(
        &self,
        manifest: &Manifest,
        files: &[(String, &Path)],
    ) -> Result<bool, RegistryError> {
        let name = &manifest.name;
        let number = &manifest.version;
        let claim = format!("{name}/{number}/{CLAIM}");
        let owner = format!(
            "{{\"host\":{:?},\"pid\":{},\"at\":{:?}}}\n",
            hostname(),
            std::process::id(),
            chrono::Utc::now().to_rfc3339()
        );
        if !self
            .location
            .create(&claim, owner.into_bytes())
            .map_err(|e| self.error(name, &claim, e))?
        {
            return Ok(false);
        }
        for (file_name, from) in files {
            let path = format!("{name}/{number}/{file_name}");
            crate::storage::upload_file(
                self.location.store.clone(),
                self.location.key(&path),
                from,
            )
            .map_err(|e| self.error(name, &path, e))?;
        }
        let path = format!("{name}/{number}/manifest.json");
        let json = manifest_json(manifest, Path::new(&path))?;
        // The claim makes the number ours, so this create fails only if someone broke
        // the protocol; it must not overwrite what they wrote.
        if !self
            .location
            .create(&path, json)
            .map_err(|e| self.error(name, &path, e))?
        {
            return Err(self.error(
                name,
                &path,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a manifest is already there although this publisher claimed the version",
                ),
            ));
        }
        Ok(true)
    }

    /// Makes `version`'s files available under `version.dir` (downloaded once).
    pub fn fetch(&self, version: &ModelVersion) -> Result<(), RegistryError> {
        if version.dir.join("manifest.json").is_file() {
            return Ok(());
        }
        let name = &version.name;
        let prefix = format!("{name}/{}", version.version);
        let parent = version.dir.parent().unwrap_or(self.cache.path());
        let io = |path: &Path, source| RegistryError::Io {
            name: name.clone(),
            path: path.to_owned(),
            source,
        };
        std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        let staging = tempfile::Builder::new()
            .prefix(".download-")
            .tempdir_in(parent)
            .map_err(|e| io(parent, e))?;
        let paths = self
            .location
            .list(&prefix)
            .map_err(|e| self.error(name, &prefix, e))?;
        let mut complete = false;
        for path in &paths {
            let Some(file) = path.strip_prefix(&format!("{prefix}/")) else {
                continue;
            };
            if file == CLAIM {
                continue;
            }
            complete |= file == "manifest.json";
            crate::storage::download(&self.location, path, &staging.path().join(file))
                .map_err(|e| self.error(name, path, e))?;
        }
        if !complete {
            return Err(RegistryError::Incomplete {
                name: name.clone(),
                version: version.version.clone(),
                url: format!("{}/{prefix}", self.location.url),
            });
        }
        match std::fs::rename(staging.path(), &version.dir) {
            Ok(()) => {
                let _ = staging.keep();
                tracing::info!(model = %version.label(), from = %self.location.url, files = paths.len(), "model version downloaded");
                Ok(())
            }
            // Another thread of this process fetched it first.
            Err(_) if version.dir.join("manifest.json").is_file() => Ok(()),
            Err(e) => Err(io(&version.dir, e)),
        }
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

//! The model registry: versions of each model and the `current` pointer, in a local
//! directory or under an object-store URL, in the same layout.
//!
//! ```text
//! ROOT/NAME/VERSION/model.onnx       the model (VERSION is a positive integer)
//! ROOT/NAME/VERSION/manifest.json    inputs, outputs, labels, metrics, created_at
//! ROOT/NAME/VERSION/...              extra files (tokenizer.json, report.json, ...)
//! ROOT/NAME/current                  the serving version
//! ```
//!
//! A reader sees either the old or the new version, never a half-written one, and two
//! publishers never take the same version number:
//!
//! | step            | local directory                          | object store ([`remote`])                      |
//! |-----------------|------------------------------------------|------------------------------------------------|
//! | take a number   | rename of the staged directory (fails when the number exists) | create `VERSION/.claim` with `If-None-Match: *` |
//! | write the files | into the hidden staging directory        | uploads (multipart when large); `manifest.json` last |
//! | switch          | temp file renamed over `current`          | one `PUT` of `current`                         |
//!
//! A version counts once its `manifest.json` is there. Readers of an object-store registry
//! get each version they use downloaded whole into a private local cache first (versions
//! never change once published), so sessions and tokenizers open local files either way.
//! The same layout is written by `scripts/models/registry.py`; a local registry copied to
//! a bucket (`aws s3 sync models/ s3://bucket/models/`) is a valid remote one.

mod remote;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("model `{name}`: no `current` pointer at {} (publish a version first: scripts/setup.sh builds the bundled models)", .path.display())]
    NoCurrent { name: String, path: PathBuf },
    #[error("model `{name}`: {}: {source}", .path.display())]
    Io {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error("model `{name}` version {version} at {url} is not complete (no manifest.json): it is being published, or its publisher died")]
    Incomplete {
        name: String,
        version: String,
        url: String,
    },
    #[error("model `{name}`: no published version before {version} to roll back to")]
    NoEarlier { name: String, version: String },
    #[error("model `{name}`: {tries} publishers took version numbers at the same time; giving up")]
    Contended { name: String, tries: usize },
    #[error("model `{name}`: {path} is not a valid manifest: {source}")]
    Manifest {
        name: String,
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// One input or output of a model, as listed in its manifest. Dimensions are numbers
/// (fixed) or names (dynamic, e.g. `batch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    /// numpy dtype name: `float32`, `int64`, ...
    pub dtype: String,
    pub shape: Vec<Dim>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(i64),
    Named(String),
}

impl TensorSpec {
    /// The fixed size of every dimension after the batch one, or `None` if one is dynamic.
    pub(crate) fn fixed_tail(&self) -> Option<Vec<i64>> {
        self.shape
            .iter()
            .skip(1)
            .map(|d| match d {
                Dim::Fixed(n) if *n > 0 => Some(*n),
                _ => None,
            })
            .collect()
    }
}

/// `manifest.json` of one model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub created_at: String,
    #[serde(default)]
    pub description: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Class names by output index, for classifiers.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    #[serde(default)]
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// What the model saw and said at training time, the reference for drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
}

/// A version's reference profile, computed on its holdout rows by `sluice retrain`:
/// what serving-time statistics are compared with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Rows it was computed on.
    pub rows: usize,
    /// Share of the predictions per class (argmax), in label order.
    pub predicted: Vec<f64>,
    /// Share of the rows whose top probability falls in each tenth of [0, 1].
    pub top_score: Vec<f64>,
    /// Per numeric input feature: its deciles (nine cut points: ten equal-mass bins).
    #[serde(default)]
    pub features: Vec<FeatureProfile>,
    /// For a vector input (an embedding): the training centroid and the deciles of the
    /// rows' cosine similarity to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<EmbeddingProfile>,
    /// For a model fed token ids (a text model): the number of tokens per row, after
    /// truncation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<BinnedProfile>,
}

/// A discrete quantity's reference distribution: bin edges (its deciles, which repeat
/// where many rows share a value) and the share of rows that fell in each bin, so that a
/// stable stream scores PSI 0 even where the bins are not equal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinnedProfile {
    pub edges: Vec<f64>,
    pub shares: Vec<f64>,
}

impl BinnedProfile {
    /// The bin of `value`: how many edges are at or below it (0..=edges.len()).
    pub fn bin(&self, value: f64) -> usize {
        self.edges.partition_point(|edge| *edge <= value)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureProfile {
    pub name: String,
    pub deciles: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingProfile {
    pub centroid: Vec<f32>,
    pub cosine_deciles: Vec<f64>,
}

impl Manifest {
    pub(crate) fn output(&self, name: &str) -> Option<&TensorSpec> {
        self.outputs.iter().find(|o| o.name == name)
    }
    pub(crate) fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|o| o.name == name)
    }
}

/// A registry: a local directory, or an object-store prefix with a local cache.
#[derive(Debug, Clone)]
pub struct Registry {
    /// The local directory; for an object-store registry, where versions are cached.
    root: PathBuf,
    remote: Option<Arc<remote::Remote>>,
}

/// One version of one model, resolved to files.
#[derive(Debug, Clone)]
pub struct ModelVersion {
    pub name: String,
    pub version: String,
    /// Its local directory (for an object-store registry, in the cache: filled by
    /// [`Registry::current`] and [`Registry::manifest`]).
    pub dir: PathBuf,
}

impl ModelVersion {
    pub fn model_path(&self) -> PathBuf {
        self.dir.join("model.onnx")
    }
    /// `NAME/VERSION`, what the version column of output rows holds.
    pub fn label(&self) -> String {
        format!("{}/{}", self.name, self.version)
    }
}

/// What [`Registry::copy_to`] did, by version label (`NAME/VERSION`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CopyReport {
    pub copied: Vec<String>,
    /// Already in the target (left as they are).
    pub present: Vec<String>,
    /// `current` pointers set in the target.
    pub pointed: Vec<String>,
}

/// Where to look for a free version number at most this many times.
const PUBLISH_TRIES: usize = 16;

impl Registry {
    /// A registry in a local directory.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Registry {
            root: root.into(),
            remote: None,
        }
    }

    /// The registry `path` names: a local directory or an object-store URL (with the
    /// `storage:` settings for it). Nothing is read yet.
    pub fn open(
        path: &Path,
        storage: &BTreeMap<String, crate::config::StorageConfig>,
    ) -> Result<Self, RegistryError> {
        match crate::storage::open(path, storage)? {
            crate::storage::Location::Local(root) => Ok(Registry::new(root)),
            crate::storage::Location::Object(location) => {
                let remote = remote::Remote::new(location)?;
                Ok(Registry {
                    root: remote.cache().to_owned(),
                    remote: Some(Arc::new(remote)),
                })
            }
        }
    }

    /// Where the registry is, for messages: its directory or URL.
    pub fn describe(&self) -> String {
        match &self.remote {
            Some(remote) => remote.url().to_owned(),
            None => self.root.display().to_string(),
        }
    }

    fn io(name: &str, path: &Path, source: std::io::Error) -> RegistryError {
        RegistryError::Io {
            name: name.into(),
            path: path.into(),
            source,
        }
    }

    /// The version `NAME/current` points at (for an object-store registry, downloaded
    /// into the cache unless it is there already).
    pub fn current(&self, name: &str) -> Result<ModelVersion, RegistryError> {
        let text = match &self.remote {
            Some(remote) => remote.current(name)?,
            None => {
                let pointer = self.root.join(name).join("current");
                match std::fs::read_to_string(&pointer) {
                    Ok(text) => Some(text),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(Self::io(name, &pointer, e)),
                }
            }
        };
        let Some(text) = text else {
            return Err(RegistryError::NoCurrent {
                name: name.into(),
                path: PathBuf::from(self.describe()).join(name).join("current"),
            });
        };
        let version = self.version(name, text.trim());
        if let Some(remote) = &self.remote {
            remote.fetch(&version)?;
        }
        Ok(version)
    }

    /// Version `version` of `name` (not checked or fetched).
    pub fn version(&self, name: &str, version: &str) -> ModelVersion {
        ModelVersion {
            name: name.into(),
            version: version.into(),
            dir: self.root.join(name).join(version),
        }
    }

    pub fn manifest(&self, version: &ModelVersion) -> Result<Manifest, RegistryError> {
        if let Some(remote) = &self.remote {
            remote.fetch(version)?;
        }
        let path = version.dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Self::io(&version.name, &path, e))?;
        serde_json::from_str(&text).map_err(|source| RegistryError::Manifest {
            name: version.name.clone(),
            path,
            source,
        })
    }

    /// Every published version of `name` (its `manifest.json` is there), oldest first.
    pub fn versions(&self, name: &str) -> Result<Vec<ModelVersion>, RegistryError> {
        let numbers = match &self.remote {
            Some(remote) => remote.versions(name)?.published,
            None => self.local_numbers(name)?,
        };
        Ok(numbers
            .into_iter()
            .map(|n| self.version(name, &n.to_string()))
            .collect())
    }

    /// The version numbers in a local registry's `NAME/` (none when it does not exist).
    fn local_numbers(&self, name: &str) -> Result<Vec<u64>, RegistryError> {
        let dir = self.root.join(name);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Self::io(name, &dir, e)),
        };
        let mut numbers: Vec<u64> = entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        numbers.sort_unstable();
        Ok(numbers)
    }

    /// Publishes `model` (an ONNX file) with `manifest` (its `version` field is replaced)
    /// as the next version of `name`, plus `extra` files copied beside it. `current` is
    /// switched to it when `make_current`. Two publishers at once get different numbers.
    pub fn publish(
        &self,
        model: &Path,
        mut manifest: Manifest,
        extra: &[&Path],
        make_current: bool,
    ) -> Result<ModelVersion, RegistryError> {
        let name = manifest.name.clone();
        let mut files: Vec<(String, &Path)> = vec![("model.onnx".into(), model)];
        for file in extra {
            let file_name = file.file_name().unwrap_or(file.as_os_str());
            files.push((file_name.to_string_lossy().into_owned(), file));
        }
        let last = match &self.remote {
            Some(remote) => remote.versions(&name)?.taken.last().copied(),
            None => self.local_numbers(&name)?.last().copied(),
        }
        .unwrap_or(0);
        let mut published = false;
        // A number taken meanwhile by another publisher: try the next one.
        for next in (last + 1..).take(PUBLISH_TRIES) {
            manifest.version = next.to_string();
            if self.write(&manifest, &files)? {
                published = true;
                break;
            }
        }
        if !published {
            return Err(RegistryError::Contended {
                name,
                tries: PUBLISH_TRIES,
            });
        }
        let version = self.version(&name, &manifest.version);
        if make_current {
            self.set_current(&name, &version.version)?;
        }
        Ok(version)
    }

    /// Writes version `manifest.version` of `manifest.name` with `files` (name, local
    /// path) and the manifest, unless that number is taken: `false` then, nothing written.
    fn write(&self, manifest: &Manifest, files: &[(String, &Path)]) -> Result<bool, RegistryError> {
        if let Some(remote) = &self.remote {
            return remote.write(manifest, files);
        }
        let name = &manifest.name;
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| Self::io(name, &dir, e))?;
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{}.", manifest.version))
            .tempdir_in(&dir)
            .map_err(|e| Self::io(name, &dir, e))?;
        // Readable by other users, as a created directory would be.
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::Permissions::from_mode(0o755);
            std::fs::set_permissions(staging.path(), mode)
                .map_err(|e| Self::io(name, staging.path(), e))?;
        }
        for (file_name, from) in files {
            let to = staging.path().join(file_name);
            std::fs::copy(from, &to).map_err(|e| Self::io(name, from, e))?;
        }
        write_manifest(manifest, &staging.path().join("manifest.json"))?;
        let target = dir.join(&manifest.version);
        // Renaming a directory onto an existing, non-empty one fails: the number is taken
        // by whoever renamed first.
        match std::fs::rename(staging.path(), &target) {
            Ok(()) => {
                let _ = staging.keep();
                Ok(true)
            }
            Err(_) if target.exists() => Ok(false),
            Err(e) => Err(Self::io(name, &target, e)),
        }
    }

    /// The names of the models in the registry (those with a `current` pointer or a
    /// version), sorted.
    pub fn models(&self) -> Result<Vec<String>, RegistryError> {
        let mut names = match &self.remote {
            Some(remote) => remote.models()?,
            None => match std::fs::read_dir(&self.root) {
                Ok(entries) => entries
                    .filter_map(|e| {
                        let e = e.ok()?;
                        let name = e.file_name().to_str()?.to_owned();
                        (!name.starts_with('.') && e.path().is_dir()).then_some(name)
                    })
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(Self::io("", &self.root, e)),
            },
        };
        names.retain(|name| {
            self.versions(name).is_ok_and(|v| !v.is_empty())
                || self.pointer(name).is_ok_and(|p| p.is_some())
        });
        names.sort();
        Ok(names)
    }

    /// The text of `NAME/current`, `None` when there is none.
    fn pointer(&self, name: &str) -> Result<Option<String>, RegistryError> {
        if let Some(remote) = &self.remote {
            return Ok(remote.current(name)?.map(|text| text.trim().to_owned()));
        }
        let pointer = self.root.join(name).join("current");
        match std::fs::read_to_string(&pointer) {
            Ok(text) => Ok(Some(text.trim().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io(name, &pointer, e)),
        }
    }

    /// Points `NAME/current` at published version `version` (checked first); returns the
    /// version it pointed at before. Running pipelines swap it in as for a new version.
    pub fn promote(&self, name: &str, version: &str) -> Result<Option<String>, RegistryError> {
        let target = self.version(name, version);
        // The manifest must be there (fetched, for a bucket): a version that counts.
        self.manifest(&target)?;
        let before = self.pointer(name)?;
        self.set_current(name, version)?;
        Ok(before)
    }

    /// Points `NAME/current` at the published version before the current one; returns
    /// (from, to).
    pub fn rollback(&self, name: &str) -> Result<(String, String), RegistryError> {
        let current = self
            .pointer(name)?
            .ok_or_else(|| RegistryError::NoCurrent {
                name: name.into(),
                path: PathBuf::from(self.describe()).join(name).join("current"),
            })?;
        let current_number: u64 = current.parse().unwrap_or(0);
        let previous = self
            .versions(name)?
            .into_iter()
            .filter_map(|v| v.version.parse::<u64>().ok())
            .filter(|n| *n < current_number)
            .max()
            .ok_or_else(|| RegistryError::NoEarlier {
                name: name.into(),
                version: current.clone(),
            })?;
        let previous = previous.to_string();
        self.promote(name, &previous)?;
        Ok((current, previous))
    }

    /// Copies every published version of the models `names` (all when empty) that `to`
    /// lacks, under the same numbers, and points `to`'s `current` where this registry's
    /// does where `to` has none yet. For moving a registry between a disk and a bucket;
    /// running it again copies only what is new.
    pub fn copy_to(&self, to: &Registry, names: &[String]) -> Result<CopyReport, RegistryError> {
        let names = if names.is_empty() {
            self.models()?
        } else {
            names.to_vec()
        };
        let mut report = CopyReport::default();
        for name in &names {
            for version in self.versions(name)? {
                let manifest = self.manifest(&version)?;
                let entries =
                    std::fs::read_dir(&version.dir).map_err(|e| Self::io(name, &version.dir, e))?;
                let mut paths = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(|e| Self::io(name, &version.dir, e))?;
                    let file_name = entry.file_name().to_string_lossy().into_owned();
                    let skip = file_name == "manifest.json" || file_name.starts_with('.');
                    if !skip && entry.path().is_file() {
                        paths.push((file_name, entry.path()));
                    }
                }
                let files: Vec<(String, &Path)> = paths
                    .iter()
                    .map(|(n, p)| (n.clone(), p.as_path()))
                    .collect();
                if to.write(&manifest, &files)? {
                    report.copied.push(version.label());
                } else {
                    report.present.push(version.label());
                }
            }
            if let (Some(current), None) = (self.pointer(name)?, to.pointer(name)?) {
                to.set_current(name, &current)?;
                report.pointed.push(format!("{name}/{current}"));
            }
        }
        Ok(report)
    }

    /// Points `NAME/current` at `version` (a rename over the old pointer, or one `PUT`).
    pub fn set_current(&self, name: &str, version: &str) -> Result<(), RegistryError> {
        if let Some(remote) = &self.remote {
            return remote.set_current(name, version);
        }
        let dir = self.root.join(name);
        let tmp = dir.join(".current.tmp");
        std::fs::write(&tmp, format!("{version}\n")).map_err(|e| Self::io(name, &tmp, e))?;
        let pointer = dir.join("current");
        std::fs::rename(&tmp, &pointer).map_err(|e| Self::io(name, &pointer, e))
    }
}

/// Writes `manifest` as pretty JSON to `path`.
fn write_manifest(manifest: &Manifest, path: &Path) -> Result<(), RegistryError> {
    let json = manifest_json(manifest, path)?;
    std::fs::write(path, json).map_err(|e| Registry::io(&manifest.name, path, e))
}

/// `manifest` as the bytes of a `manifest.json` (`path` names it in errors).
fn manifest_json(manifest: &Manifest, path: &Path) -> Result<Vec<u8>, RegistryError> {
    let json =
        serde_json::to_string_pretty(manifest).map_err(|source| RegistryError::Manifest {
            name: manifest.name.clone(),
            path: path.to_owned(),
            source,
        })?;
    Ok((json + "\n").into_bytes())
}

#[cfg(test)]
mod tests;

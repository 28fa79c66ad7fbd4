//! The model registry on disk: versions of each model and the `current` pointer.
//!
//! ```text
//! ROOT/NAME/VERSION/model.onnx       the model (VERSION is a positive integer)
//! ROOT/NAME/VERSION/manifest.json    inputs, outputs, labels, metrics, created_at
//! ROOT/NAME/current                  the serving version, replaced atomically (rename)
//! ```
//!
//! Publishing writes the version under a hidden staging name and renames it into place,
//! then switches `current` by writing a temp file and renaming it over the pointer, so a
//! reader sees either the old or the new version, never a half-written one. The same
//! layout is written by `scripts/models/registry.py`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("model `{name}`: no `current` pointer at {path} (publish a version first: scripts/setup.sh builds the bundled models)")]
    NoCurrent { name: String, path: PathBuf },
    #[error("model `{name}`: reading {path}: {source}")]
    Io {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
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
}

impl Manifest {
    pub(crate) fn output(&self, name: &str) -> Option<&TensorSpec> {
        self.outputs.iter().find(|o| o.name == name)
    }
    pub(crate) fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|o| o.name == name)
    }
}

/// A registry rooted at a directory.
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
}

/// One version of one model, resolved to files.
#[derive(Debug, Clone)]
pub struct ModelVersion {
    pub name: String,
    pub version: String,
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

impl Registry {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Registry { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn io(name: &str, path: &Path, source: std::io::Error) -> RegistryError {
        RegistryError::Io {
            name: name.into(),
            path: path.into(),
            source,
        }
    }

    /// The version `NAME/current` points at.
    pub fn current(&self, name: &str) -> Result<ModelVersion, RegistryError> {
        let pointer = self.root.join(name).join("current");
        let text = match std::fs::read_to_string(&pointer) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RegistryError::NoCurrent {
                    name: name.into(),
                    path: pointer,
                })
            }
            Err(e) => return Err(Self::io(name, &pointer, e)),
        };
        Ok(self.version(name, text.trim()))
    }

    pub fn version(&self, name: &str, version: &str) -> ModelVersion {
        ModelVersion {
            name: name.into(),
            version: version.into(),
            dir: self.root.join(name).join(version),
        }
    }

    pub fn manifest(&self, version: &ModelVersion) -> Result<Manifest, RegistryError> {
        let path = version.dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Self::io(&version.name, &path, e))?;
        serde_json::from_str(&text).map_err(|source| RegistryError::Manifest {
            name: version.name.clone(),
            path,
            source,
        })
    }

    /// Every published version of `name`, oldest first.
    pub fn versions(&self, name: &str) -> Result<Vec<ModelVersion>, RegistryError> {
        let dir = self.root.join(name);
        let mut numbers: Vec<u64> = std::fs::read_dir(&dir)
            .map_err(|e| Self::io(name, &dir, e))?
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        numbers.sort_unstable();
        Ok(numbers
            .into_iter()
            .map(|n| self.version(name, &n.to_string()))
            .collect())
    }

    /// Publishes `model` (an ONNX file) with `manifest` (its `version` field is replaced)
    /// as the next version of `name`, plus `extra` files copied beside it. `current` is
    /// switched to it when `make_current`.
    pub fn publish(
        &self,
        model: &Path,
        mut manifest: Manifest,
        extra: &[&Path],
        make_current: bool,
    ) -> Result<ModelVersion, RegistryError> {
        let name = manifest.name.clone();
        let dir = self.root.join(&name);
        std::fs::create_dir_all(&dir).map_err(|e| Self::io(&name, &dir, e))?;
        let next = self
            .versions(&name)?
            .last()
            .and_then(|v| v.version.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        manifest.version = next.to_string();
        let staging = dir.join(format!(".{next}.tmp"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(|e| Self::io(&name, &staging, e))?;
        let copy = |from: &Path, file_name: &std::ffi::OsStr| {
            let to = staging.join(file_name);
            std::fs::copy(from, &to).map_err(|e| Self::io(&name, from, e))
        };
        copy(model, "model.onnx".as_ref())?;
        for file in extra {
            copy(file, file.file_name().unwrap_or(file.as_os_str()))?;
        }
        let manifest_path = staging.join("manifest.json");
        let json =
            serde_json::to_string_pretty(&manifest).map_err(|source| RegistryError::Manifest {
                name: name.clone(),
                path: manifest_path.clone(),
                source,
            })?;
        std::fs::write(&manifest_path, json + "\n")
            .map_err(|e| Self::io(&name, &manifest_path, e))?;
        let version = self.version(&name, &manifest.version);
        std::fs::rename(&staging, &version.dir).map_err(|e| Self::io(&name, &version.dir, e))?;
        if make_current {
            self.set_current(&name, &version.version)?;
        }
        Ok(version)
    }

    /// Points `NAME/current` at `version` (atomic rename over the old pointer).
    pub fn set_current(&self, name: &str, version: &str) -> Result<(), RegistryError> {
        let dir = self.root.join(name);
        let tmp = dir.join(".current.tmp");
        std::fs::write(&tmp, format!("{version}\n")).map_err(|e| Self::io(name, &tmp, e))?;
        let pointer = dir.join("current");
        std::fs::rename(&tmp, &pointer).map_err(|e| Self::io(name, &pointer, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str) -> Manifest {
        Manifest {
            name: name.into(),
            version: String::new(),
            created_at: "2026-11-22T00:00:00Z".into(),
            description: String::new(),
            inputs: vec![TensorSpec {
                name: "x".into(),
                dtype: "float32".into(),
                shape: vec![Dim::Named("batch".into()), Dim::Fixed(3)],
            }],
            outputs: vec![],
            labels: Some(vec!["a".into(), "b".into()]),
            metrics: Default::default(),
        }
    }

    #[test]
    fn publish_numbers_versions_and_switches_current() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(dir.path());
        let model = dir.path().join("m.onnx");
        std::fs::write(&model, b"not really onnx").unwrap();
        let first = registry.publish(&model, manifest("m"), &[], true).unwrap();
        let second = registry.publish(&model, manifest("m"), &[], false).unwrap();
        assert_eq!(
            (first.version.as_str(), second.version.as_str()),
            ("1", "2")
        );
        assert_eq!(registry.current("m").unwrap().version, "1");
        registry.set_current("m", "2").unwrap();
        let current = registry.current("m").unwrap();
        assert_eq!(current.label(), "m/2");
        let read = registry.manifest(&current).unwrap();
        assert_eq!(read.version, "2");
        assert_eq!(read.inputs[0].fixed_tail(), Some(vec![3]));
        assert_eq!(registry.versions("m").unwrap().len(), 2);
    }

    #[test]
    fn a_missing_pointer_says_how_to_get_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = Registry::new(dir.path()).current("nope").unwrap_err();
        assert!(err.to_string().contains("scripts/setup.sh"), "{err}");
    }
}

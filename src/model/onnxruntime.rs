//! Finding and loading the ONNX Runtime shared library, once per process.
//!
//! `ort` is built with `load-dynamic`: the library is opened at run time, from (first match)
//! the pipeline's `onnxruntime.library`, `ORT_DYLIB_PATH`, or the project-local copy that
//! `scripts/setup.sh` unpacks from the PyPI wheel (`.tools/onnxruntime-gpu/lib/` when it is
//! there and a GPU may be used, else `.tools/onnxruntime/lib/`). The project directory is
//! looked for above the working directory, above the executable, and at the crate's own
//! source directory, so `cargo run`, `target/release/sluice` and tests all find it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The ONNX Runtime version the set-up script installs.
pub(crate) const ORT_VERSION: &str = "1.31.1";

#[derive(Debug, Clone, thiserror::Error)]
pub enum OrtLoadError {
    #[error("no ONNX Runtime library found (looked for {tried}); run `scripts/setup.sh` to install it from the PyPI `onnxruntime` wheel, or set ORT_DYLIB_PATH / `onnxruntime.library` to a libonnxruntime.so.{ORT_VERSION}")]
    NotFound { tried: String },
    #[error("cannot load the ONNX Runtime library {path}: {message}; run `scripts/setup.sh` to reinstall ONNX Runtime {ORT_VERSION}, or point ORT_DYLIB_PATH / `onnxruntime.library` at a compatible libonnxruntime.so (1.24 to 1.31)")]
    Load { path: PathBuf, message: String },
    #[error("ONNX Runtime is already loaded from {loaded} in this process; {wanted} cannot be loaded too (one library per process)")]
    Conflict { loaded: PathBuf, wanted: PathBuf },
}

/// Which library flavour a lookup prefers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// The CPU build, else the GPU build (it has the CPU execution provider too).
    Cpu,
    /// The GPU build when it is installed, else the CPU build.
    PreferGpu,
}

struct Loaded {
    path: PathBuf,
    environment: ort::environment::Environment,
}

static LOADED: OnceLock<Result<Loaded, OrtLoadError>> = OnceLock::new();

/// Loads ONNX Runtime (first call) and returns the process's environment and the library
/// path it came from. `configured` is the pipeline's `onnxruntime.library`, if any.
pub fn environment(
    configured: Option<&Path>,
    flavour: Flavour,
) -> Result<(&'static ort::environment::Environment, &'static Path), OrtLoadError> {
    let wanted = locate(configured, flavour)?;
    let loaded = LOADED.get_or_init(|| load(&wanted));
    match loaded {
        Ok(loaded) if same_file(&loaded.path, &wanted) => Ok((&loaded.environment, &loaded.path)),
        Ok(loaded) => Err(OrtLoadError::Conflict {
            loaded: loaded.path.clone(),
            wanted,
        }),
        Err(e) => Err(e.clone()),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn load(path: &Path) -> Result<Loaded, OrtLoadError> {
    let fail = |message: String| OrtLoadError::Load {
        path: path.to_owned(),
        message,
    };
    let builder = ort::init_from(path).map_err(|e| fail(e.to_string()))?;
    let environment = builder
        .with_name("sluice")
        .build()
        .map_err(|e| fail(e.to_string()))?;
    tracing::info!(library = %path.display(), "ONNX Runtime loaded");
    Ok(Loaded {
        path: path.to_owned(),
        environment,
    })
}

/// The library file to load, by the precedence in the module doc.
pub fn locate(configured: Option<&Path>, flavour: Flavour) -> Result<PathBuf, OrtLoadError> {
    if let Some(path) = configured {
        return Ok(path.to_owned());
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let file = format!("libonnxruntime.so.{ORT_VERSION}");
    let flavours: &[&str] = match flavour {
        Flavour::PreferGpu => &["onnxruntime-gpu", "onnxruntime"],
        Flavour::Cpu => &["onnxruntime", "onnxruntime-gpu"],
    };
    let mut tried = Vec::new();
    for root in project_roots() {
        for dir in flavours {
            let candidate = root.join(".tools").join(dir).join("lib").join(&file);
            if candidate.is_file() {
                return Ok(candidate);
            }
            tried.push(candidate.display().to_string());
        }
    }
    tried.dedup();
    Err(OrtLoadError::NotFound {
        tried: tried.join(", "),
    })
}

/// Directories that may be the project root, nearest first.
fn project_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    let mut push_ancestors = |start: Option<PathBuf>| {
        if let Some(start) = start {
            for dir in start.ancestors() {
                if dir.join(".tools").is_dir() && !roots.iter().any(|r: &PathBuf| r == dir) {
                    roots.push(dir.to_owned());
                }
            }
        }
    };
    push_ancestors(std::env::current_dir().ok());
    push_ancestors(std::env::current_exe().ok());
    push_ancestors(Some(PathBuf::from(env!("CARGO_MANIFEST_DIR"))));
    if roots.is_empty() {
        roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    }
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_library_wins() {
        let path = Path::new("/opt/ort/libonnxruntime.so.1.31.1");
        assert_eq!(locate(Some(path), Flavour::Cpu).unwrap(), path);
    }

    #[test]
    fn a_missing_library_names_the_path_and_the_fix() {
        let err = load(Path::new("/nonexistent/libonnxruntime.so.1.31.1"))
            .err()
            .expect("loading a missing file fails");
        let text = err.to_string();
        assert!(
            text.contains("/nonexistent/libonnxruntime.so.1.31.1"),
            "{text}"
        );
        assert!(text.contains("scripts/setup.sh"), "{text}");
    }
}

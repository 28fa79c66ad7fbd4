//! Opening ONNX Runtime sessions on the chosen device, checking them against the stage's
//! expectations, and warming them up before they serve.
//!
//! Device choice (`device: auto | cpu | cuda`) is made once per stage by
//! [`DevicePlan::resolve`] and logged once: `auto` uses the CUDA execution provider when
//! the loaded library has it and a session can be created on it, otherwise the CPU one;
//! `cuda` fails with an error naming the library and the fix instead of falling back.

use std::path::{Path, PathBuf};

use ort::ep::{ExecutionProvider, CUDA};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{Tensor, TensorElementType, ValueType};

use super::onnxruntime::{self, Flavour, OrtLoadError};
use crate::config::Device;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Library(#[from] OrtLoadError),
    #[error("device: cuda was asked for, but {reason}. Install the GPU build with `scripts/setup.sh --gpu` (or point ORT_DYLIB_PATH at onnxruntime-gpu's libonnxruntime.so), check `nvidia-smi`, or use `device: auto` to fall back to the CPU")]
    CudaUnavailable { reason: String },
    #[error("loading {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Incompatible { path: PathBuf, message: String },
    #[error("warm-up run of {path} failed: {message}")]
    WarmUp { path: PathBuf, message: String },
}

/// Where a stage's sessions run, decided once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Cpu,
    Cuda { device_id: i32 },
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Placement::Cpu => f.write_str("cpu"),
            Placement::Cuda { device_id } => write!(f, "cuda:{device_id}"),
        }
    }
}

/// How sessions of one stage are opened.
#[derive(Debug, Clone)]
pub struct DevicePlan {
    pub placement: Placement,
    pub intra_threads: usize,
    /// Intra-op threads spin between runs (ONNX Runtime's default) instead of sleeping.
    pub intra_spinning: bool,
    environment: &'static ort::environment::Environment,
}

impl DevicePlan {
    /// Loads ONNX Runtime if needed and decides the placement by trying `probe_model`
    /// (the stage's current model) on CUDA when that is wanted.
    pub fn resolve(
        device: Device,
        device_id: i32,
        intra_threads: usize,
        library: Option<&Path>,
        probe_model: &Path,
        stage: &str,
    ) -> Result<DevicePlan, ModelError> {
        let flavour = match device {
            Device::Cpu => Flavour::Cpu,
            Device::Auto | Device::Cuda => Flavour::PreferGpu,
        };
        let (environment, library_path) = onnxruntime::environment(library, flavour)?;
        let mut plan = DevicePlan {
            placement: Placement::Cpu,
            intra_threads,
            intra_spinning: false,
            environment,
        };
        if device == Device::Cpu {
            tracing::info!(stage, device = "cpu", "inference on the CPU (device: cpu)");
            return Ok(plan);
        }
        let cuda_problem = match CUDA::is_available() {
            Ok(true) => {
                plan.placement = Placement::Cuda { device_id };
                match plan.open(probe_model) {
                    Ok(_) => None,
                    Err(e) => Some(format!("a CUDA session could not be created ({e})")),
                }
            }
            Ok(false) => Some(format!(
                "the ONNX Runtime library {} has no CUDA execution provider",
                library_path.display()
            )),
            Err(e) => Some(format!("ONNX Runtime could not list its providers: {e}")),
        };
        match (cuda_problem, device) {
            (None, _) => {
                tracing::info!(stage, device = %plan.placement, "inference on the GPU (CUDA execution provider)");
                Ok(plan)
            }
            (Some(reason), Device::Cuda) => Err(ModelError::CudaUnavailable { reason }),
            (Some(reason), _) => {
                plan.placement = Placement::Cpu;
                tracing::info!(stage, device = "cpu", reason = %reason, "inference on the CPU (device: auto, CUDA not usable)");
                Ok(plan)
            }
        }
    }

    /// Opens one session of `model` with this plan's device and threads.
    pub fn open(&self, model: &Path) -> Result<Session, ModelError> {
        let fail = |e: ort::Error| ModelError::Load {
            path: model.to_owned(),
            message: e.to_string(),
        };
        let mut builder = Session::builder(self.environment)
            .map_err(fail)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| fail(e.into()))?;
        builder = builder
            .with_intra_op_spinning(self.intra_spinning)
            .map_err(|e| fail(e.into()))?;
        if self.intra_threads > 0 {
            builder = builder
                .with_intra_threads(self.intra_threads)
                .map_err(|e| fail(e.into()))?;
        }
        if let Placement::Cuda { device_id } = self.placement {
            builder = builder
                .with_execution_providers([CUDA::default()
                    .with_device_id(device_id)
                    .build()
                    .error_on_failure()])
                .map_err(|e| fail(e.into()))?;
        }
        builder.commit_from_file(model).map_err(fail)
    }
}

/// Element type and the dimensions after the batch one (`None` = dynamic) of a session's
/// input or output.
pub fn outlet_shape(dtype: &ValueType) -> Option<(TensorElementType, Vec<Option<i64>>)> {
    let ValueType::Tensor { ty, shape, .. } = dtype else {
        return None;
    };
    let tail = shape
        .iter()
        .skip(1)
        .map(|&d| (d > 0).then_some(d))
        .collect();
    Some((*ty, tail))
}

/// Runs `session` once on a one-row input of each declared input (ids of 1 for integer
/// inputs, zeros for float ones, 8 for dynamic dimensions), so a model that cannot run is
/// rejected before it serves and the first real batch does not pay for initialisation.
pub fn warm_up(session: &mut Session, path: &Path) -> Result<(), ModelError> {
    let fail = |message: String| ModelError::WarmUp {
        path: path.to_owned(),
        message,
    };
    let mut inputs: Vec<(String, ort::value::DynValue)> = Vec::new();
    for input in session.inputs() {
        let Some((ty, tail)) = outlet_shape(input.dtype()) else {
            return Err(fail(format!("input `{}` is not a tensor", input.name())));
        };
        let mut shape = vec![1_i64];
        shape.extend(tail.iter().map(|d| d.unwrap_or(8)));
        let len = shape.iter().product::<i64>() as usize;
        let value = match ty {
            TensorElementType::Int64 => {
                Tensor::from_array((shape, vec![1_i64; len])).map(|t| t.into_dyn())
            }
            TensorElementType::Int32 => {
                Tensor::from_array((shape, vec![1_i32; len])).map(|t| t.into_dyn())
            }
            TensorElementType::Float32 => {
                Tensor::from_array((shape, vec![0_f32; len])).map(|t| t.into_dyn())
            }
            other => {
                return Err(fail(format!(
                    "input `{}` has element type {other:?}; sluice feeds int64, int32 and float32",
                    input.name()
                )))
            }
        }
        .map_err(|e| fail(e.to_string()))?;
        inputs.push((input.name().to_owned(), value));
    }
    session
        .run(inputs)
        .map(|_| ())
        .map_err(|e| fail(e.to_string()))
}

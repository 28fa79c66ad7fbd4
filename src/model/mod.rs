//! Models: the on-disk registry of versions, the ONNX Runtime library, and sessions.
//!
//! - [`registry`]: `models/NAME/VERSION/{model.onnx,manifest.json}` and the `current`
//!   pointer that publishing switches and running pipelines watch.
//! - [`metrics`]: classification metrics (the retrain gate's, and live accuracy's).
//! - [`onnxruntime`]: finds and loads the shared library once per process.
//! - [`session`]: opens sessions on the CPU or CUDA, warms them up.

pub mod metrics;
pub mod onnxruntime;
pub mod registry;
pub mod session;

pub use registry::{
    BinnedProfile, Dim, EmbeddingProfile, FeatureProfile, Manifest, ModelVersion, Profile,
    Registry, RegistryError, TensorSpec,
};
pub use session::{DevicePlan, ModelError, Placement};

/// Index of the largest value (the first of equal ones).
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

/// Cosine similarity of two vectors (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut aa, mut bb) = (0.0_f64, 0.0_f64, 0.0_f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        dot / (aa.sqrt() * bb.sqrt())
    }
}

//! The canary and shadow lanes of an infer stage: which rows take which lane (a stable
//! hash of a key column), running each lane's rows on its own workers, and merging the
//! results back in row order (canary) or beside the served columns (shadow).

use std::sync::{mpsc, Arc};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field};

use super::worker::Request;
use super::InferStage;
use crate::stage::StageError;

/// The canary lane: its settings, the key column's index and its workers' queue.
pub(super) struct Canary {
    pub(super) config: crate::config::CanaryConfig,
    pub(super) key: usize,
    pub(super) requests: mpsc::Sender<Request>,
}

/// A shadow lane: its settings, the key column's index and its workers' queue.
pub(super) struct Shadow {
    pub(super) config: crate::config::ShadowConfig,
    pub(super) key: usize,
    pub(super) requests: mpsc::Sender<Request>,
}

/// The served columns of a batch: the outputs, each row's version, the rejected rows.
pub(super) struct Served {
    pub(super) outputs: Vec<ArrayRef>,
    pub(super) versions: ArrayRef,
    pub(super) rejected: Vec<crate::stage::Rejection>,
}

/// What one lane's workers returned for its rows.
pub(super) struct LaneReply {
    pub(super) outputs: Vec<ArrayRef>,
    pub(super) version: Arc<str>,
    pub(super) rejected: Vec<crate::stage::Rejection>,
}

impl InferStage {
    /// The served outputs of every row: from the serving version, or for the canary's
    /// share of the keys from the canary version, merged back in row order.
    pub(super) async fn serve(&self, rows: &RecordBatch) -> Result<Served, StageError> {
        let one_lane = |reply: LaneReply| Served {
            versions: Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                &*reply.version,
                rows.num_rows(),
            ))),
            outputs: reply.outputs,
            rejected: reply.rejected,
        };
        // One lane when there is no canary, or when every row takes the same one.
        let Some(canary) = &self.canary else {
            return Ok(one_lane(self.infer(rows, &self.requests).await?));
        };
        let (main, side, lane_of) = lanes(canary.key, canary.config.share, rows)?;
        if main.is_empty() {
            return Ok(one_lane(self.infer(rows, &canary.requests).await?));
        }
        if side.is_empty() {
            return Ok(one_lane(self.infer(rows, &self.requests).await?));
        }
        let (main_rows, side_rows) = (pick(rows, &main)?, pick(rows, &side)?);
        let (main_reply, side_reply) = tokio::try_join!(
            self.infer(&main_rows, &self.requests),
            self.infer(&side_rows, &canary.requests)
        )?;
        let mut outputs = Vec::with_capacity(self.outputs.len());
        for output in 0..self.outputs.len() {
            let parts: [&dyn Array; 2] = [
                main_reply.outputs[output].as_ref(),
                side_reply.outputs[output].as_ref(),
            ];
            outputs.push(arrow::compute::interleave(&parts, &lane_of)?);
        }
        let names = [&main_reply.version, &side_reply.version];
        let versions: ArrayRef = Arc::new(StringArray::from_iter_values(
            lane_of.iter().map(|(lane, _)| &**names[*lane]),
        ));
        let mut rejected: Vec<crate::stage::Rejection> = Vec::new();
        for (reply, indices) in [(main_reply, &main), (side_reply, &side)] {
            rejected.extend(reply.rejected.into_iter().map(|mut r| {
                r.row = indices[r.row] as usize;
                r
            }));
        }
        rejected.sort_by_key(|r| r.row);
        Ok(Served {
            outputs,
            versions,
            rejected,
        })
    }

    /// The shadow version's outputs for its sample of the keys (null elsewhere), its
    /// version (null elsewhere); counts how often its top class agreed with the served one.
    pub(super) async fn shadow(
        &self,
        shadow: &Shadow,
        rows: &RecordBatch,
        served: &Served,
    ) -> Result<Vec<ArrayRef>, StageError> {
        let (_, sampled, lane_of) = lanes(shadow.key, shadow.config.sample, rows)?;
        let reply = if sampled.is_empty() {
            None
        } else {
            Some(self.infer(&pick(rows, &sampled)?, &shadow.requests).await?)
        };
        // Unsampled rows point at a one-row null array.
        let indices: Vec<(usize, usize)> = lane_of
            .iter()
            .map(|&(lane, at)| if lane == 1 { (0, at) } else { (1, 0) })
            .collect();
        let mut columns = Vec::with_capacity(self.outputs.len() + 1);
        for (output, spec) in self.outputs.iter().enumerate() {
            let data_type = spec.field().data_type().clone();
            let column = match &reply {
                Some(reply) => {
                    let null = arrow::array::new_null_array(&data_type, 1);
                    let parts: [&dyn Array; 2] = [reply.outputs[output].as_ref(), null.as_ref()];
                    arrow::compute::interleave(&parts, &indices)?
                }
                None => arrow::array::new_null_array(&data_type, rows.num_rows()),
            };
            columns.push(column);
        }
        let version = reply.as_ref().map(|r| r.version.clone());
        columns.push(Arc::new(
            lane_of
                .iter()
                .map(|&(lane, _)| version.as_deref().filter(|_| lane == 1))
                .collect::<StringArray>(),
        ));
        if let (Some(reply), Some(p)) = (&reply, self.probabilities) {
            let (agreed, compared) = agreement(&served.outputs[p], &reply.outputs[p], &sampled);
            self.stats
                .record_shadow(&self.name, &self.model, &reply.version, compared, agreed);
        }
        Ok(columns)
    }
}

/// The rows of each lane (serving, canary) and, per row, its (lane, position in lane).
type Lanes = (Vec<u32>, Vec<u32>, Vec<(usize, usize)>);

/// Splits rows by whether their `key` column's value hashes into `share`.
fn lanes(key: usize, share: f64, rows: &RecordBatch) -> Result<Lanes, StageError> {
    let keys = arrow::compute::cast(rows.column(key), &DataType::Utf8)?;
    let keys = keys.as_string::<i32>();
    let (mut main, mut side) = (Vec::new(), Vec::new());
    let mut lane_of = Vec::with_capacity(rows.num_rows());
    for row in 0..rows.num_rows() {
        let takes = keys.is_valid(row) && takes(share, keys.value(row));
        let lane = if takes { &mut side } else { &mut main };
        lane_of.push((usize::from(takes), lane.len()));
        lane.push(row as u32);
    }
    Ok((main, side, lane_of))
}

/// Whether a row whose key is `key` falls in `share`: FNV-1a of the key in
/// ten-thousandths, below the share (the same key always does or does not).
fn takes(share: f64, key: &str) -> bool {
    (crate::batch::stable_hash(key) % 10_000) < (share * 10_000.0).round() as u64
}

/// The rows at `indices`.
fn pick(rows: &RecordBatch, indices: &[u32]) -> Result<RecordBatch, StageError> {
    Ok(arrow::compute::take_record_batch(
        rows,
        &arrow::array::UInt32Array::from(indices.to_vec()),
    )?)
}

/// Of the `sampled` rows, how many the two probability columns give the same top class,
/// and how many were compared (rows null in either are not).
fn agreement(served: &ArrayRef, shadow: &ArrayRef, sampled: &[u32]) -> (u64, u64) {
    let (Some(served), Some(shadow)) = (
        served.as_fixed_size_list_opt(),
        shadow.as_fixed_size_list_opt(),
    ) else {
        return (0, 0);
    };
    let top = |list: &arrow::array::FixedSizeListArray, row: usize| -> Option<usize> {
        if list.is_null(row) {
            return None;
        }
        let values = list.value(row);
        let values = values.as_primitive_opt::<arrow::datatypes::Float32Type>()?;
        Some(crate::model::argmax(values.values()))
    };
    let (mut agreed, mut compared) = (0, 0);
    for (at, &row) in sampled.iter().enumerate() {
        if let (Some(a), Some(b)) = (top(served, row as usize), top(shadow, at)) {
            compared += 1;
            agreed += u64::from(a == b);
        }
    }
    (agreed, compared)
}

/// Plan-time checks of `canary` and `shadow`: the share, the key column, a published
/// version.
pub(super) fn check(
    config: &crate::config::InferConfig,
    input: &arrow::datatypes::Schema,
    ctx: &crate::stage::PlanContext,
    issues: &mut crate::stage::PlanIssues,
) {
    let lanes = [
        config
            .canary
            .as_ref()
            .map(|c| ("canary", "share", &c.version, c.share, &c.key)),
        config
            .shadow
            .as_ref()
            .map(|s| ("shadow", "sample", &s.version, s.sample, &s.key)),
    ];
    for (kind, share_key, version, share, key) in lanes.into_iter().flatten() {
        // A canary of every row is a promotion; a shadow may see every row.
        let top_ok = if kind == "canary" {
            share < 1.0
        } else {
            share <= 1.0
        };
        if !(share > 0.0 && top_ok) {
            issues.add(
                &format!("{kind}.{share_key}"),
                format!(
                    "expected a share above 0 and below 1 (a shadow: at most 1), found {share}"
                ),
            );
        }
        if input.field_with_name(key).is_err() {
            issues.unknown_column(&format!("{kind}.key"), key, input);
        }
        let published = ctx.registry.version(&config.model, version);
        if let Err(e) = ctx.registry.manifest(&published) {
            issues.add(
                &format!("{kind}.version"),
                format!("not a published version: {}", crate::telemetry::chain(&e)),
            );
        }
    }
}

/// The shadow's columns: its outputs and version, null where a row is not in its sample.
pub(super) fn add_shadow_fields(
    config: &crate::config::InferConfig,
    specs: &[super::tensors::OutputSpec],
    fields: &mut Vec<Arc<Field>>,
    issues: &mut crate::stage::PlanIssues,
) {
    let shadow_fields = specs
        .iter()
        .map(|spec| {
            spec.field()
                .with_name(format!("shadow_{}", spec.column))
                .with_nullable(true)
        })
        .chain([Field::new(
            format!("shadow_{}", config.version_column),
            DataType::Utf8,
            true,
        )]);
    for field in shadow_fields {
        if fields.iter().any(|f| f.name() == field.name()) {
            issues.add(
                "shadow",
                format!("column `{}` already exists", field.name()),
            );
        }
        fields.push(Arc::new(field));
    }
}

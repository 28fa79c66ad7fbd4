//! Inference workers: dynamic batching and model runs, on their own threads.
//!
//! Each worker owns one session of the serving version. It takes the first waiting
//! request, then keeps taking requests until `max_batch` rows are collected or `max_wait`
//! has passed, so small micro-batches from many partitions share one model run. The rows
//! are then cut into runs of at most `max_batch`:
//!
//! - one request that fits in one run is fed straight from its Arrow buffers;
//! - otherwise rows are gathered into new buffers; when a length input is configured and
//!   sorting by length cuts the padded cells by 10% or more, rows are sorted first, and each
//!   run is trimmed to its own longest row.
//!
//! A run that fails is retried row by row, so one bad row is rejected (dead letter) and
//! the others still get results.

use crate::telemetry::stats::InferenceMetrics;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;
use tokio::sync::oneshot;

use super::serving::Serving;
use super::tensors::{Matrix, OutputBuffer, OutputSpec};
use crate::batch::DeadLetterKind;
use crate::stage::Rejection;

/// Rows of one micro-batch, ready for the model.
pub struct Request {
    /// One matrix per model input, in [`Batching::input_names`] order.
    pub inputs: Vec<Matrix>,
    pub rows: usize,
    /// Rows that cannot be fed (null inputs); they get zeros and are rejected.
    pub invalid: Vec<(usize, String)>,
    pub reply: oneshot::Sender<Reply>,
}

/// Results for one request, in its row order.
pub struct Reply {
    pub outputs: Vec<OutputBuffer>,
    /// `NAME/VERSION` of the model that produced them.
    pub version: Arc<str>,
    pub rejected: Vec<Rejection>,
}

/// Settings shared by the workers of one stage.
pub struct Batching {
    pub stage: String,
    pub input_names: Vec<String>,
    /// Inputs whose second dimension is the sequence (trimmed per run).
    pub sequence_inputs: Vec<bool>,
    /// Index of the input whose non-zero count is a row's length.
    pub length_input: Option<usize>,
    pub outputs: Vec<OutputSpec>,
    pub max_batch: usize,
    pub max_wait: Duration,
    /// Rows and time per model run, for `/metrics`.
    pub metrics: InferenceMetrics,
}

/// The loop of worker `index`: runs until every request sender is gone.
pub fn run(
    index: usize,
    batching: Arc<Batching>,
    serving: Arc<Serving>,
    queue: Arc<Mutex<Receiver<Request>>>,
) {
    loop {
        let Some(requests) = collect(&batching, &queue) else {
            return;
        };
        let model = serving.current();
        let Some(session) = model.sessions.get(index) else {
            return;
        };
        let mut session = match session.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let replies = process(&batching, &mut session, &model.label, &requests);
        for (request, reply) in requests.into_iter().zip(replies) {
            // The stage stops waiting only when the pipeline is shutting down.
            let _ = request.reply.send(reply);
        }
    }
}

fn collect(batching: &Batching, queue: &Mutex<Receiver<Request>>) -> Option<Vec<Request>> {
    let queue = match queue.lock() {
        Ok(q) => q,
        Err(poisoned) => poisoned.into_inner(),
    };
    let first = queue.recv().ok()?;
    let mut rows = first.rows;
    let mut requests = vec![first];
    let now = Instant::now();
    let deadline = now.checked_add(batching.max_wait).unwrap_or(now);
    while rows < batching.max_batch {
        let left = deadline.saturating_duration_since(Instant::now());
        match queue.recv_timeout(left) {
            Ok(request) => {
                rows += request.rows;
                requests.push(request);
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    Some(requests)
}

/// A row of one request: (request, row, length).
type Item = (usize, usize, usize);

fn process(
    batching: &Batching,
    session: &mut Session,
    version: &Arc<str>,
    requests: &[Request],
) -> Vec<Reply> {
    // Fast path: one request, one run, straight from the Arrow buffers; its reply takes
    // the run's output buffers as they are (no zeroed buffers to copy them into).
    if let [request] = requests {
        if request.rows <= batching.max_batch && request.invalid.is_empty() {
            let views = request
                .inputs
                .iter()
                .map(|m| (m.clone(), request.rows))
                .collect::<Vec<_>>();
            match run_once(batching, session, &views) {
                Ok(outputs) => {
                    return vec![Reply {
                        outputs,
                        version: version.clone(),
                        rejected: Vec::new(),
                    }];
                }
                Err(e) => {
                    tracing::warn!(stage = %batching.stage, error = %e, "model run failed; retrying row by row")
                }
            }
        }
    }

    let mut replies: Vec<Reply> = requests
        .iter()
        .map(|r| Reply {
            outputs: batching
                .outputs
                .iter()
                .map(|o| OutputBuffer::zeros(o.elem, r.rows * o.width))
                .collect(),
            version: version.clone(),
            rejected: r
                .invalid
                .iter()
                .map(|(row, why)| Rejection::new(*row, DeadLetterKind::NullField, why.clone()))
                .collect(),
        })
        .collect();

    let mut items: Vec<Item> = Vec::new();
    for (r, request) in requests.iter().enumerate() {
        let lengths = batching
            .length_input
            .map(|i| request.inputs[i].nonzero_per_row())
            .unwrap_or_else(|| vec![sequence_width(batching, request); request.rows]);
        let invalid: Vec<usize> = request.invalid.iter().map(|(row, _)| *row).collect();
        items.extend(
            (0..request.rows)
                .filter(|row| !invalid.contains(row))
                .map(|row| (r, row, lengths[row])),
        );
    }
    if batching.length_input.is_some() {
        let by_length = sorted(&items);
        if padded_cells(&by_length, batching.max_batch) * 10
            <= padded_cells(&items, batching.max_batch) * 9
        {
            items = by_length;
        }
    }
    for chunk in items.chunks(batching.max_batch.max(1)) {
        match run_chunk(batching, session, requests, chunk) {
            Ok(outputs) => scatter(batching, &mut replies, chunk, &outputs),
            Err(error) if chunk.len() == 1 => {
                let (r, row, _) = chunk[0];
                replies[r].rejected.push(Rejection::new(
                    row,
                    DeadLetterKind::ModelFailed,
                    format!("model {version} failed on this row: {error}"),
                ));
            }
            Err(error) => {
                tracing::warn!(stage = %batching.stage, rows = chunk.len(), error = %error, "model run failed; retrying row by row");
                for item in chunk {
                    match run_chunk(batching, session, requests, std::slice::from_ref(item)) {
                        Ok(outputs) => {
                            scatter(batching, &mut replies, std::slice::from_ref(item), &outputs)
                        }
                        Err(error) => replies[item.0].rejected.push(Rejection::new(
                            item.1,
                            DeadLetterKind::ModelFailed,
                            format!("model {version} failed on this row: {error}"),
                        )),
                    }
                }
            }
        }
    }
    for reply in &mut replies {
        reply.rejected.sort_by_key(|r| r.row);
    }
    replies
}

fn sequence_width(batching: &Batching, request: &Request) -> usize {
    request
        .inputs
        .iter()
        .zip(&batching.sequence_inputs)
        .filter(|(_, seq)| **seq)
        .map(|(m, _)| m.width())
        .max()
        .unwrap_or(0)
}

fn sorted(items: &[Item]) -> Vec<Item> {
    let mut items = items.to_vec();
    items.sort_by_key(|&(_, _, len)| len);
    items
}

/// Cells fed to the model when `items` are cut into runs of `max_batch` in this order.
fn padded_cells(items: &[Item], max_batch: usize) -> usize {
    items
        .chunks(max_batch.max(1))
        .map(|c| c.len() * c.iter().map(|i| i.2).max().unwrap_or(0))
        .sum()
}

/// Gathers the chunk's rows into new buffers (sequence inputs trimmed to the chunk's
/// longest row) and runs the model.
fn run_chunk(
    batching: &Batching,
    session: &mut Session,
    requests: &[Request],
    chunk: &[Item],
) -> Result<Vec<OutputBuffer>, String> {
    let longest = chunk.iter().map(|i| i.2).max().unwrap_or(0).max(1);
    let mut gathered = Vec::with_capacity(batching.input_names.len());
    for (input, &is_sequence) in batching.sequence_inputs.iter().enumerate() {
        let width = if is_sequence {
            longest
        } else {
            requests[chunk[0].0].inputs[input].width()
        };
        let matrix = match &requests[chunk[0].0].inputs[input] {
            Matrix::I64 { .. } => {
                let mut data = vec![0_i64; chunk.len() * width];
                for (k, &(r, row, _)) in chunk.iter().enumerate() {
                    if let Matrix::I64 {
                        data: src,
                        width: w,
                    } = &requests[r].inputs[input]
                    {
                        let n = width.min(*w);
                        data[k * width..k * width + n].copy_from_slice(&src[row * w..row * w + n]);
                    }
                }
                Matrix::I64 {
                    data: data.into(),
                    width,
                }
            }
            Matrix::F32 { .. } => {
                let mut data = vec![0_f32; chunk.len() * width];
                for (k, &(r, row, _)) in chunk.iter().enumerate() {
                    if let Matrix::F32 {
                        data: src,
                        width: w,
                    } = &requests[r].inputs[input]
                    {
                        let n = width.min(*w);
                        data[k * width..k * width + n].copy_from_slice(&src[row * w..row * w + n]);
                    }
                }
                Matrix::F32 {
                    data: data.into(),
                    width,
                }
            }
        };
        gathered.push((matrix, chunk.len()));
    }
    run_once(batching, session, &gathered)
}

/// One model run over `[rows, width]` matrices; returns each output's values, row-major.
fn run_once(
    batching: &Batching,
    session: &mut Session,
    inputs: &[(Matrix, usize)],
) -> Result<Vec<OutputBuffer>, String> {
    let mut feed: Vec<(String, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
    for (name, (matrix, rows)) in batching.input_names.iter().zip(inputs) {
        let shape = [*rows, matrix.width()];
        let value: SessionInputValue<'_> = match matrix {
            Matrix::I64 { data, .. } => TensorRef::from_array_view((shape, &data[..]))
                .map_err(|e| e.to_string())?
                .into(),
            Matrix::F32 { data, .. } => TensorRef::from_array_view((shape, &data[..]))
                .map_err(|e| e.to_string())?
                .into(),
        };
        feed.push((name.clone(), value));
    }
    let rows = inputs.first().map_or(0, |(_, rows)| *rows);
    let started = std::time::Instant::now();
    let outputs = session.run(feed).map_err(|e| e.to_string())?;
    batching.metrics.observe(rows, started.elapsed());
    batching
        .outputs
        .iter()
        .map(|spec| {
            let value = outputs
                .get(&spec.output)
                .ok_or_else(|| format!("the model returned no `{}`", spec.output))?;
            let buffer = match spec.elem {
                super::tensors::Elem::F32 => {
                    let (_, data) = value
                        .try_extract_tensor::<f32>()
                        .map_err(|e| e.to_string())?;
                    OutputBuffer::F32(data.to_vec())
                }
                super::tensors::Elem::I64 => {
                    let (_, data) = value
                        .try_extract_tensor::<i64>()
                        .map_err(|e| e.to_string())?;
                    OutputBuffer::I64(data.to_vec())
                }
            };
            let len = match &buffer {
                OutputBuffer::F32(v) => v.len(),
                OutputBuffer::I64(v) => v.len(),
            };
            if len != rows * spec.width {
                return Err(format!(
                    "output `{}` has {len} values for {rows} rows, expected {} per row",
                    spec.output, spec.width
                ));
            }
            Ok(buffer)
        })
        .collect()
}

fn scatter(batching: &Batching, replies: &mut [Reply], chunk: &[Item], outputs: &[OutputBuffer]) {
    for (o, spec) in batching.outputs.iter().enumerate() {
        let w = spec.width;
        for (k, &(r, row, _)) in chunk.iter().enumerate() {
            match (&mut replies[r].outputs[o], &outputs[o]) {
                (OutputBuffer::F32(dst), OutputBuffer::F32(src)) => {
                    dst[row * w..(row + 1) * w].copy_from_slice(&src[k * w..(k + 1) * w])
                }
                (OutputBuffer::I64(dst), OutputBuffer::I64(src)) => {
                    dst[row * w..(row + 1) * w].copy_from_slice(&src[k * w..(k + 1) * w])
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(rows: usize) -> Request {
        let (reply, _) = oneshot::channel();
        Request {
            inputs: vec![Matrix::F32 {
                data: vec![0.0; rows].into(),
                width: 1,
            }],
            rows,
            invalid: Vec::new(),
            reply,
        }
    }

    fn batching(max_batch: usize, max_wait: Duration) -> Batching {
        Batching {
            stage: "test".into(),
            input_names: vec!["x".into()],
            sequence_inputs: vec![false],
            length_input: None,
            outputs: Vec::new(),
            max_batch,
            max_wait,
            metrics: crate::telemetry::Stats::default().inference("test"),
        }
    }

    #[test]
    fn small_batches_are_merged_up_to_max_batch_or_max_wait() {
        let (tx, rx) = std::sync::mpsc::channel();
        let queue = Mutex::new(rx);
        for _ in 0..3 {
            tx.send(request(10)).unwrap();
        }
        // Room for all three: they share one run.
        let merged = collect(&batching(64, Duration::from_millis(20)), &queue).unwrap();
        assert_eq!(merged.len(), 3);
        // A run closes once it holds max_batch rows; the rest wait for the next one.
        for _ in 0..3 {
            tx.send(request(10)).unwrap();
        }
        let first = collect(&batching(15, Duration::from_secs(5)), &queue).unwrap();
        assert_eq!(first.iter().map(|r| r.rows).sum::<usize>(), 20);
        let second = collect(&batching(15, Duration::from_millis(20)), &queue).unwrap();
        assert_eq!(second.len(), 1, "max_wait ends a run that is not full");
    }

    #[test]
    fn sorting_by_length_cuts_padding_for_mixed_lengths() {
        // Alternating short and long rows, runs of 2: unsorted every run pads to 100.
        let items: Vec<Item> = (0..8)
            .map(|i| (0, i, if i % 2 == 0 { 5 } else { 100 }))
            .collect();
        assert_eq!(padded_cells(&items, 2), 800);
        assert_eq!(padded_cells(&sorted(&items), 2), 2 * 2 * 5 + 2 * 2 * 100);
    }
}

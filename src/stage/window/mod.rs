//! `window`: per-key event-time windows (tumbling or sliding) with allowed lateness, one
//! output row per closed window with features of what fell into it ([`features`]).
//!
//! State is kept per topic-partition and key (`key` columns, e.g. `machine_id`):
//! - the key's *watermark* is the latest event time seen for it. A window `[start, end)`
//!   closes when the watermark reaches `end + allowed_lateness`; it is emitted then, by the
//!   record that moved the watermark (its `_offset` becomes the window row's `_offset`,
//!   `end` its `_timestamp`).
//! - a record is added to every window containing its time that is not closed yet. A
//!   record for which all such windows are closed is late: it goes to the dead letters.
//! - records are kept until no open window needs them.
//!
//! Delivery: window state lives in memory, so it must be rebuilt after a restart or a
//! rebalance. The stage reports, per partition, the earliest offset still held in an open
//! window ([`WindowStage::retain_from`]); the runtime never commits past it, so a restart
//! re-reads every record of every open window. Windows already emitted close again during
//! that replay at the same record (watermarks are per key, and the key's records replay in
//! the same order), and the Parquet sink drops rows at offsets it already holds, so they
//! are not written twice. On a revoke the state of the revoked partitions is dropped
//! ([`WindowStage::revoke`]): the next owner rebuilds it from the committed offset.
//! A window whose key goes quiet stays open (and holds commits back) until the key's
//! next record; the last windows of a bounded input are therefore not emitted.

pub mod features;
mod schema;

pub use self::schema::{band_column, feature_column, output_schema};

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Float64Builder, Int32Array, Int64Array, RecordBatch,
    StringArray, StringBuilder, TimestampMillisecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type, SchemaRef};

use self::features::Spectra;
use self::schema::timestamp_type;
use super::{Rejection, StageError, StageOutput};
use crate::batch::{DeadLetterKind, RecordMap, TopicPartition};
use crate::config::{WindowConfig, WindowField};
use crate::schema::{OFFSET_COLUMN, PARTITION_COLUMN, TOPIC_COLUMN};

/// Output columns besides keys, carried columns and features.
pub(crate) const WINDOW_ID_COLUMN: &str = "window_id";
pub(crate) const WINDOW_START_COLUMN: &str = "window_start";
pub(crate) const WINDOW_END_COLUMN: &str = "window_end";
pub(crate) const RECORDS_COLUMN: &str = "records";

/// One record's contribution to its windows.
#[derive(Debug)]
struct Entry {
    time: i64,
    offset: i64,
    /// Per configured field, the record's value.
    values: Vec<Value>,
    carry: Vec<Option<String>>,
}

/// One field of one record.
#[derive(Debug)]
enum Value {
    /// Null in this record.
    Missing,
    Number(f64),
    /// Samples (a list column) and the rate they were taken at, per second.
    Chunk(Vec<f64>, f64),
}

impl Value {
    /// The samples and their rate (`None` for a number).
    fn samples(&self) -> (&[f64], Option<f64>) {
        match self {
            Value::Missing => (&[], None),
            Value::Number(x) => (std::slice::from_ref(x), None),
            Value::Chunk(samples, rate) => (samples, Some(*rate)),
        }
    }
}

#[derive(Debug)]
struct KeyState {
    key: Vec<String>,
    /// Latest event time seen for this key.
    watermark: i64,
    entries: Vec<Entry>,
    /// Starts of windows holding at least one record and not yet emitted.
    open: BTreeSet<i64>,
}

/// A window ready to be written.
struct Closed {
    key: Vec<String>,
    start: i64,
    trigger_offset: i64,
    records: i64,
    carry: Vec<Option<String>>,
    features: Vec<f64>,
}

#[derive(Debug, Default)]
struct PartitionState {
    /// By [`key_id`], so a record finds its key without allocating.
    keys: RecordMap<String, KeyState>,
    /// Scratch for the key id of the record being added.
    id: String,
}

/// One string per key (each part as `length:part`, so no two keys share one), written
/// into `id`.
fn key_id<'a>(id: &mut String, parts: impl Iterator<Item = &'a str>) {
    use std::fmt::Write;
    id.clear();
    for part in parts {
        // Writing to a String cannot fail.
        let _ = write!(id, "{}:{part}", part.len());
    }
}

pub struct WindowStage {
    name: String,
    config: WindowConfig,
    size: i64,
    slide: i64,
    lateness: i64,
    spectra: Spectra,
    output_schema: SchemaRef,
    /// One lock per partition, so batches of different partitions are windowed at once
    /// (the runtime sends a partition's batches one at a time, in offset order).
    state: Mutex<HashMap<TopicPartition, Arc<Mutex<PartitionState>>>>,
}

/// The columns a batch is read from, typed once per batch.
struct Columns {
    keys: Vec<StringArray>,
    time: TimestampMillisecondArray,
    offsets: Int64Array,
    only_with: Vec<ArrayRef>,
    carry: Vec<StringArray>,
    fields: Vec<FieldColumn>,
}

// One per field per batch, on the stack briefly: boxing the larger variant buys nothing.
#[allow(clippy::large_enum_variant)]
enum FieldColumn {
    Numbers(Float64Array),
    Chunks {
        list: arrow::array::ListArray,
        values: Float64Array,
        rates: Float64Array,
    },
}

impl WindowStage {
    pub fn new(name: String, config: &WindowConfig, output_schema: SchemaRef) -> Self {
        WindowStage {
            name,
            size: millis(config.size),
            slide: millis(config.slide()).max(1),
            lateness: millis(config.allowed_lateness),
            config: config.clone(),
            spectra: Spectra::default(),
            output_schema,
            state: Mutex::new(HashMap::new()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TopicPartition, Arc<Mutex<PartitionState>>>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state of `tp`, made empty if there is none yet.
    fn partition(&self, tp: &TopicPartition) -> Arc<Mutex<PartitionState>> {
        self.lock().entry(tp.clone()).or_default().clone()
    }

    /// The earliest offset of `tp` that a restart must re-read to rebuild the open
    /// windows; `None` when no window of `tp` is open.
    pub fn retain_from(&self, tp: &TopicPartition) -> Option<i64> {
        let partition = self.lock().get(tp)?.clone();
        let state = partition.lock().unwrap_or_else(|p| p.into_inner());
        state
            .keys
            .values()
            .flat_map(|k| k.entries.iter().map(|e| e.offset))
            .min()
    }

    /// Forgets the windows of partitions this member no longer owns.
    pub fn revoke(&self, partitions: Option<&[TopicPartition]>) {
        let mut state = self.lock();
        match partitions {
            Some(tps) => {
                for tp in tps {
                    state.remove(tp);
                }
            }
            None => state.clear(),
        }
    }

    fn columns(&self, rows: &RecordBatch) -> Result<Columns, StageError> {
        let column = |name: &str| {
            rows.column_by_name(name)
                .cloned()
                .ok_or_else(|| StageError::Failed {
                    stage: self.name.clone(),
                    message: format!("column `{name}` missing at run time"),
                })
        };
        let strings = |name: &str| -> Result<StringArray, StageError> {
            Ok(column(name)?.as_string::<i32>().clone())
        };
        let floats = |array: &ArrayRef| -> Result<Float64Array, StageError> {
            Ok(cast(array, &DataType::Float64)?
                .as_primitive::<Float64Type>()
                .clone())
        };
        let mut fields = Vec::with_capacity(self.config.fields.len());
        for field in &self.config.fields {
            let array = column(&field.input)?;
            fields.push(match array.data_type() {
                DataType::List(_) => {
                    let list = array.as_list::<i32>().clone();
                    let rate_column = field.sample_rate.as_deref().unwrap_or_default();
                    FieldColumn::Chunks {
                        values: floats(list.values())?,
                        rates: floats(&column(rate_column)?)?,
                        list,
                    }
                }
                _ => FieldColumn::Numbers(floats(&array)?),
            });
        }
        let time = cast(&column(&self.config.time)?, &timestamp_type())?;
        Ok(Columns {
            keys: self
                .config
                .key
                .iter()
                .map(|k| strings(k))
                .collect::<Result<_, _>>()?,
            time: time.as_primitive().clone(),
            offsets: column(OFFSET_COLUMN)?.as_primitive::<Int64Type>().clone(),
            only_with: self
                .config
                .only_with
                .iter()
                .map(|c| column(c))
                .collect::<Result<_, _>>()?,
            carry: self
                .config
                .carry
                .iter()
                .map(|c| strings(c))
                .collect::<Result<_, _>>()?,
            fields,
        })
    }

    /// Adds the batch's records to their windows and returns the windows that closed.
    pub async fn process(&self, rows: RecordBatch) -> Result<StageOutput, StageError> {
        if rows.num_rows() == 0 {
            return Ok(StageOutput {
                rows: RecordBatch::new_empty(self.output_schema.clone()),
                rejected: Vec::new(),
                aggregated: true,
            });
        }
        let topic = rows
            .column_by_name(TOPIC_COLUMN)
            .map(|c| c.as_string::<i32>().value(0).to_owned())
            .unwrap_or_default();
        let partition = rows
            .column_by_name(PARTITION_COLUMN)
            .map(|c| c.as_primitive::<Int32Type>().value(0))
            .unwrap_or_default();
        let tp = TopicPartition::new(topic, partition);
        let columns = self.columns(&rows)?;
        let mut rejected = Vec::new();
        let mut closed = Vec::new();
        let partition = self.partition(&tp);
        let mut state = partition.lock().unwrap_or_else(|p| p.into_inner());
        for row in 0..rows.num_rows() {
            if columns.only_with.iter().any(|c| c.is_null(row)) {
                continue;
            }
            if let Some((kind, reason)) = self.add(&mut state, &columns, row, &mut closed) {
                rejected.push(Rejection::new(row, kind, reason));
            }
        }
        drop(state);
        Ok(StageOutput {
            rows: self.to_rows(&tp, &closed)?,
            rejected,
            aggregated: true,
        })
    }

    /// Adds one record; returns why it was rejected, if it was.
    ///
    /// Long on purpose: one record into its key's windows (validation, assignment,
    /// lateness, closing due windows), the window semantics in one place.
    fn add(
        &self,
        partition: &mut PartitionState,
        columns: &Columns,
        row: usize,
        closed: &mut Vec<Closed>,
    ) -> Option<(DeadLetterKind, String)> {
        for (name, keys) in self.config.key.iter().zip(&columns.keys) {
            if keys.is_null(row) {
                return Some((
                    DeadLetterKind::NullField,
                    format!("key column `{name}` is null"),
                ));
            }
        }
        if columns.time.is_null(row) {
            return Some((
                DeadLetterKind::NullField,
                format!("event time column `{}` is null", self.config.time),
            ));
        }
        let time = columns.time.value(row);
        let mut values = Vec::with_capacity(columns.fields.len());
        for (field, column) in self.config.fields.iter().zip(&columns.fields) {
            values.push(match column {
                FieldColumn::Numbers(numbers) if numbers.is_null(row) => Value::Missing,
                FieldColumn::Numbers(numbers) => Value::Number(numbers.value(row)),
                FieldColumn::Chunks { list, .. } if list.is_null(row) => Value::Missing,
                FieldColumn::Chunks {
                    list,
                    values,
                    rates,
                } => {
                    if rates.is_null(row)
                        || rates.value(row) <= 0.0
                        || !rates.value(row).is_finite()
                    {
                        return Some((
                            DeadLetterKind::InvalidInput,
                            format!(
                                "`{}` has samples but no positive sample rate in `{}`",
                                field.input,
                                field.sample_rate.as_deref().unwrap_or_default()
                            ),
                        ));
                    }
                    let offsets = list.value_offsets();
                    let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
                    let chunk = values.slice(start, end - start);
                    if chunk.null_count() > 0 {
                        return Some((
                            DeadLetterKind::InvalidInput,
                            format!("`{}` has null samples", field.input),
                        ));
                    }
                    Value::Chunk(chunk.values().to_vec(), rates.value(row))
                }
            });
        }
        let offset = columns.offsets.value(row);
        key_id(
            &mut partition.id,
            columns.keys.iter().map(|keys| keys.value(row)),
        );
        let state = partition
            .keys
            .entry_ref(partition.id.as_str())
            .or_insert_with(|| KeyState {
                key: columns
                    .keys
                    .iter()
                    .map(|k| k.value(row).to_owned())
                    .collect(),
                watermark: i64::MIN,
                entries: Vec::new(),
                open: BTreeSet::new(),
            });
        let closes = self.size.saturating_add(self.lateness);
        let mut still_open = false;
        for start in self.starts_containing(time) {
            if start.saturating_add(closes) > state.watermark {
                still_open = true;
                state.open.insert(start);
            }
        }
        if !still_open {
            return Some((
                DeadLetterKind::LateEvent,
                format!(
                    "late: event time {} is past every window's end + allowed lateness (watermark {})",
                    format_ms(time),
                    format_ms(state.watermark)
                ),
            ));
        }
        state.entries.push(Entry {
            time,
            offset,
            values,
            carry: columns
                .carry
                .iter()
                .map(|c| c.is_valid(row).then(|| c.value(row).to_owned()))
                .collect(),
        });
        state.watermark = state.watermark.max(time);
        let mut any_closed = false;
        while let Some(start) = state
            .open
            .first()
            .copied()
            .filter(|s| s.saturating_add(closes) <= state.watermark)
        {
            state.open.remove(&start);
            closed.push(self.summarize(state, start, offset));
            any_closed = true;
        }
        // Keep only the records an open window still needs (only a window that closed
        // can leave records behind: adding one opens windows, it never closes the
        // earliest).
        if any_closed {
            match state.open.first().copied() {
                Some(earliest) => state.entries.retain(|e| e.time >= earliest),
                None => state.entries.clear(),
            }
        }
        None
    }

    /// Starts of every window containing `time`, latest first (`size / slide` of them; the
    /// plan bounds that ratio).
    fn starts_containing(&self, time: i64) -> impl Iterator<Item = i64> + '_ {
        let last = time.div_euclid(self.slide) * self.slide;
        std::iter::successors(Some(last), |start| start.checked_sub(self.slide))
            .take_while(move |start| start.saturating_add(self.size) > time)
    }

    fn summarize(&self, state: &KeyState, start: i64, trigger_offset: i64) -> Closed {
        let end = start.saturating_add(self.size);
        let mut inside: Vec<&Entry> = state
            .entries
            .iter()
            .filter(|e| e.time >= start && e.time < end)
            .collect();
        inside.sort_by_key(|e| (e.time, e.offset));
        let mut features = Vec::new();
        let mut values = Vec::new();
        let mut times = Vec::new();
        for (i, field) in self.config.fields.iter().enumerate() {
            values.clear();
            times.clear();
            let mut rate = None;
            for entry in &inside {
                let (chunk, chunk_rate) = entry.values[i].samples();
                let t0 = (entry.time - start) as f64 / 1000.0;
                match chunk_rate {
                    Some(r) => {
                        rate = rate.or(Some(r));
                        times.extend((0..chunk.len()).map(|j| t0 + j as f64 / r));
                    }
                    None => times.extend(std::iter::repeat_n(t0, chunk.len())),
                }
                values.extend_from_slice(chunk);
            }
            features.extend(features::compute(&field.features, &values, &times));
            if !field.bands.is_empty() {
                features.extend(self.spectra.band_power(
                    &values,
                    rate.unwrap_or(0.0),
                    &field.bands,
                ));
            }
        }
        let carry = inside
            .last()
            .map(|e| e.carry.clone())
            .unwrap_or_else(|| vec![None; self.config.carry.len()]);
        Closed {
            key: state.key.clone(),
            start,
            trigger_offset,
            records: inside.len() as i64,
            carry,
            features,
        }
    }

    fn to_rows(&self, tp: &TopicPartition, closed: &[Closed]) -> Result<RecordBatch, StageError> {
        let n = closed.len();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.output_schema.fields().len());
        for k in 0..self.config.key.len() {
            columns.push(Arc::new(StringArray::from_iter_values(
                closed.iter().map(|c| c.key[k].as_str()),
            )));
        }
        columns.push(Arc::new(StringArray::from_iter_values(
            closed
                .iter()
                .map(|c| format!("{}@{}", c.key.join("/"), format_ms(c.start))),
        )));
        let starts = closed.iter().map(|c| c.start);
        columns.push(Arc::new(
            TimestampMillisecondArray::from_iter_values(starts.clone()).with_timezone("UTC"),
        ));
        columns.push(Arc::new(
            TimestampMillisecondArray::from_iter_values(
                starts.clone().map(|s| s.saturating_add(self.size)),
            )
            .with_timezone("UTC"),
        ));
        columns.push(Arc::new(Int64Array::from_iter_values(
            closed.iter().map(|c| c.records),
        )));
        for k in 0..self.config.carry.len() {
            let mut builder = StringBuilder::with_capacity(n, n * 8);
            for c in closed {
                builder.append_option(c.carry[k].as_deref());
            }
            columns.push(Arc::new(builder.finish()));
        }
        let feature_count: usize = self.config.fields.iter().map(feature_width).sum();
        for f in 0..feature_count {
            let mut builder = Float64Builder::with_capacity(n);
            builder.append_slice(&closed.iter().map(|c| c.features[f]).collect::<Vec<_>>());
            columns.push(Arc::new(builder.finish()));
        }
        columns.push(Arc::new(StringArray::from_iter_values(
            std::iter::repeat_n(tp.topic.as_ref(), n),
        )));
        columns.push(Arc::new(Int32Array::from_value(tp.partition, n)));
        columns.push(Arc::new(Int64Array::from_iter_values(
            closed.iter().map(|c| c.trigger_offset),
        )));
        columns.push(Arc::new(
            TimestampMillisecondArray::from_iter_values(
                starts.map(|s| s.saturating_add(self.size)),
            )
            .with_timezone("UTC"),
        ));
        Ok(RecordBatch::try_new(self.output_schema.clone(), columns)?)
    }
}

fn feature_width(field: &WindowField) -> usize {
    field.features.len() + field.bands.len()
}

fn format_ms(ms: i64) -> String {
    if ms == i64::MIN {
        return "none".into();
    }
    // `to_rfc3339_opts` rather than `format`: no format string parsed per window.
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests;

/// A duration in whole milliseconds, saturating (the plan bounds durations well below).
fn millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

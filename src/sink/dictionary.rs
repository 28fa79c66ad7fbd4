//! Dictionary encoding only where it pays. Parquet writers dictionary-encode every column
//! by default: for a column of mostly distinct values (ids, free text, offsets,
//! timestamps, measurements) every value is hashed into a dictionary that grows to its
//! page limit, is thrown away, and the chunk is written plain after all. Profiles of
//! `sluice bench --broker noida` put 10% of sluice's CPU in that interner for strings
//! and, once those were plain, 9% for numbers. The first batch a sink sees decides, per
//! top-level string, binary or fixed-width column, from a sample of its values: mostly
//! distinct -> written plain.

use std::collections::HashSet;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

/// Values looked at per column.
const SAMPLE: usize = 1024;
/// Fewer sampled values than this decide nothing (the default stays).
const MIN_SAMPLE: usize = 64;
/// Distinct share of the sample at or above which a column is written plain.
const DISTINCT: f64 = 0.9;

/// `properties` with dictionary encoding turned off for the string, binary and
/// fixed-width columns of `rows` whose sampled values are mostly distinct; also returns
/// those columns' names.
pub fn tune(properties: &WriterProperties, rows: &RecordBatch) -> (WriterProperties, Vec<String>) {
    let mut plain = Vec::new();
    for (field, column) in rows.schema().fields().iter().zip(rows.columns()) {
        if mostly_distinct(column) {
            plain.push(field.name().clone());
        }
    }
    if plain.is_empty() {
        return (properties.clone(), plain);
    }
    let mut builder = properties.clone().into_builder();
    for name in &plain {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(name.as_str()), false);
    }
    (builder.build(), plain)
}

/// Tunes a sink's `properties` to its first non-empty `rows` (`tuned` says whether that
/// happened already).
pub(crate) fn tune_once(
    sink: &str,
    properties: &mut WriterProperties,
    tuned: &mut bool,
    rows: &RecordBatch,
) {
    if *tuned || rows.num_rows() == 0 {
        return;
    }
    *tuned = true;
    let (tuned_properties, plain) = tune(properties, rows);
    if !plain.is_empty() {
        tracing::debug!(sink, columns = ?plain, "written without a dictionary: mostly distinct values");
    }
    *properties = tuned_properties;
}

/// Whether the first non-null values of a string, binary or fixed-width (numbers, times,
/// decimals) column are mostly distinct.
fn mostly_distinct(column: &ArrayRef) -> bool {
    let data = column.to_data();
    let values: Vec<&[u8]> = match column.data_type() {
        DataType::Utf8 => sample(
            column
                .as_string::<i32>()
                .iter()
                .map(|v| v.map(str::as_bytes)),
        ),
        DataType::LargeUtf8 => sample(
            column
                .as_string::<i64>()
                .iter()
                .map(|v| v.map(str::as_bytes)),
        ),
        DataType::Utf8View => sample(column.as_string_view().iter().map(|v| v.map(str::as_bytes))),
        DataType::Binary => sample(column.as_binary::<i32>().iter()),
        DataType::LargeBinary => sample(column.as_binary::<i64>().iter()),
        DataType::BinaryView => sample(column.as_binary_view().iter()),
        DataType::FixedSizeBinary(_) => sample(column.as_fixed_size_binary().iter()),
        kind if kind.is_primitive() => {
            let (Some(width), Some(buffer)) = (kind.primitive_width(), data.buffers().first())
            else {
                return false;
            };
            let bytes = buffer.as_slice();
            sample((0..column.len()).map(|i| {
                let at = (data.offset() + i) * width;
                column
                    .is_valid(i)
                    .then(|| bytes.get(at..at + width))
                    .flatten()
            }))
        }
        _ => return false,
    };
    if values.len() < MIN_SAMPLE {
        return false;
    }
    let distinct: HashSet<&[u8]> = values.iter().copied().collect();
    distinct.len() as f64 >= DISTINCT * values.len() as f64
}

fn sample<'a>(values: impl Iterator<Item = Option<&'a [u8]>>) -> Vec<&'a [u8]> {
    values.flatten().take(SAMPLE).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMillisecondArray};
    use std::sync::Arc;

    #[test]
    fn unique_strings_are_written_plain_and_repeating_ones_keep_their_dictionary() {
        let n = 500;
        let rows = RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("fb-{i:08}")),
                )) as ArrayRef,
            ),
            (
                "channel",
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| ["web", "app", "mail"][i % 3]),
                )) as ArrayRef,
            ),
            (
                "rating",
                Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| i % 5))) as ArrayRef,
            ),
            (
                "offset",
                Arc::new(Int64Array::from_iter_values(1_000..1_000 + n as i64)) as ArrayRef,
            ),
            (
                "reading",
                Arc::new(Float64Array::from_iter_values(
                    (0..n).map(|i| (i as f64 * 0.37).sin()),
                )) as ArrayRef,
            ),
            (
                "ts",
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    (0..n as i64).map(|i| 1_700_000_000_000 + i / 100),
                )) as ArrayRef,
            ),
        ])
        .unwrap();
        let (properties, plain) = tune(&WriterProperties::builder().build(), &rows);
        assert_eq!(plain, ["id", "offset", "reading"]);
        assert!(!properties.dictionary_enabled(&ColumnPath::from("id")));
        assert!(!properties.dictionary_enabled(&ColumnPath::from("offset")));
        assert!(properties.dictionary_enabled(&ColumnPath::from("channel")));
        assert!(properties.dictionary_enabled(&ColumnPath::from("rating")));
        // Timestamps that repeat (100 rows a millisecond) keep theirs.
        assert!(properties.dictionary_enabled(&ColumnPath::from("ts")));
        // A slice is sampled from its own first value on.
        let sliced = rows.slice(n / 2, n / 2);
        let (_, plain) = tune(&WriterProperties::builder().build(), &sliced);
        assert_eq!(plain, ["id", "offset", "reading"]);
        // Too few rows to tell: nothing changes.
        let (_, plain) = tune(&WriterProperties::builder().build(), &rows.slice(0, 10));
        assert!(plain.is_empty());
    }
}

//! What arrow-json lets through but a reader of the output cannot take: raw control
//! characters inside JSON strings, and timestamps outside the range every Parquet reader
//! holds.
//!
//! **Control characters.** JSON (RFC 8259 §7) requires U+0000..U+001F inside strings to
//! be escaped (`\u0000`, `\n`); arrow-json's tape decoder accepts them raw. sluice is
//! strict: such a record is malformed JSON and goes to the dead letters, so what lands in
//! Parquet is what any JSON producer would have had to write.
//!
//! **Timestamps.** Readers convert Parquet timestamps to nanoseconds in an `i64` (pandas,
//! pyarrow's `to_pandas`, Spark's older readers) or to Python datetimes: a value outside
//! 1677-09-21T00:12:44Z ..= 2262-04-11T23:47:16Z makes them fail on the whole column. That
//! is the accepted range for every timestamp column, whatever its declared unit, and for
//! the broker's record timestamp (`_timestamp`); dates (`date32`) must lie in years
//! 1..=9999. A value outside is a dead letter with the column and value; a record whose
//! broker timestamp is missing keeps a null `_timestamp` (and a `date(_timestamp)`
//! partition writes it under Hive's null directory, `__HIVE_DEFAULT_PARTITION__`).

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, Date32Type, TimeUnit};

/// Nanoseconds in an `i64`, less `i64::MIN` (pandas' NaT), in each unit.
const NS_RANGE: (i64, i64) = (i64::MIN + 1, i64::MAX);

/// Days from 1970-01-01 to 0001-01-01 and to 9999-12-31 (Python's date range).
const DATE32_RANGE: (i32, i32) = (-719_162, 2_932_896);

/// The accepted range of a timestamp in `unit`.
pub fn timestamp_range(unit: TimeUnit) -> (i64, i64) {
    let per_ns = match unit {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    };
    // Integer division truncates toward zero: the bounds stay inside the ns range.
    (NS_RANGE.0 / per_ns, NS_RANGE.1 / per_ns)
}

/// Whether a broker timestamp (ms since the epoch) is inside the accepted range.
pub fn broker_timestamp_ok(ms: i64) -> bool {
    let (min, max) = timestamp_range(TimeUnit::Millisecond);
    (min..=max).contains(&ms)
}

/// The first raw control character inside a JSON string, or outside one other than
/// whitespace: `(byte offset, byte)`.
pub fn raw_control_character(payload: &[u8]) -> Option<(usize, u8)> {
    // Almost every record has none: one cheap pass decides.
    if !any_control_byte(payload) {
        return None;
    }
    let (mut in_string, mut escaped) = (false, false);
    for (i, &b) in payload.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            } else if b < 0x20 {
                return Some((i, b));
            }
        } else if b == b'"' {
            in_string = true;
        } else if b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r') {
            return Some((i, b));
        }
    }
    None
}

/// Whether any byte is below 0x20. Fixed-size blocks OR-ed together without an early
/// exit, which the compiler turns into vector compares (a byte-at-a-time `any` does not).
fn any_control_byte(bytes: &[u8]) -> bool {
    const BLOCK: usize = 32;
    let mut blocks = bytes.chunks_exact(BLOCK);
    for block in &mut blocks {
        if block.iter().fold(0u8, |seen, &b| seen | u8::from(b < 0x20)) != 0 {
            return true;
        }
    }
    blocks.remainder().iter().any(|&b| b < 0x20)
}

/// Whether a column of this type can hold a value out of range (so is worth checking).
pub fn holds_dates(data_type: &DataType) -> bool {
    match data_type {
        DataType::Timestamp(..) | DataType::Date32 => true,
        DataType::Struct(fields) => fields.iter().any(|f| holds_dates(f.data_type())),
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            holds_dates(f.data_type())
        }
        _ => false,
    }
}

/// Rows of `rows` with a timestamp or date out of range: `(row, why)`, at most one per
/// row (its first bad column).
pub fn out_of_range_rows(rows: &RecordBatch) -> Vec<(usize, String)> {
    let mut found: Vec<Option<String>> = Vec::new();
    for (field, column) in rows.schema().fields().iter().zip(rows.columns()) {
        if !holds_dates(field.data_type()) {
            continue;
        }
        let bad = out_of_range(column);
        if !bad.iter().any(|b| *b) {
            continue;
        }
        found.resize(rows.num_rows(), None);
        for (row, why) in found.iter_mut().enumerate() {
            if bad[row] && why.is_none() {
                *why = Some(describe(field.name(), column, row));
            }
        }
    }
    found
        .into_iter()
        .enumerate()
        .filter_map(|(row, why)| why.map(|w| (row, w)))
        .collect()
}

/// Keeps the rows not listed in `bad` (sorted row numbers).
pub fn without_rows(
    rows: &RecordBatch,
    bad: &[usize],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut keep = vec![true; rows.num_rows()];
    for &row in bad {
        keep[row] = false;
    }
    arrow::compute::filter_record_batch(rows, &BooleanArray::from(keep))
}

fn describe(name: &str, column: &ArrayRef, row: usize) -> String {
    let value = match column.data_type() {
        DataType::Timestamp(..) | DataType::Date32 => {
            let text = arrow::util::display::array_value_to_string(column, row)
                .unwrap_or_else(|_| "?".into());
            format!(" ({text})")
        }
        _ => String::new(),
    };
    format!(
        "`{name}` holds a date or time{value} outside 1677-09-21..2262-04-11 \
         (timestamps) or years 1..9999 (dates), which Parquet readers cannot convert"
    )
}

/// For each element of `array`, whether it (or anything nested in it) is out of range.
fn out_of_range(array: &ArrayRef) -> Vec<bool> {
    let n = array.len();
    match array.data_type() {
        DataType::Timestamp(unit, _) => {
            let (min, max) = timestamp_range(*unit);
            // Every timestamp unit is an i64 array underneath.
            let values = arrow::compute::cast(array, &DataType::Int64)
                .map(|a| a.as_primitive::<arrow::datatypes::Int64Type>().clone());
            match values {
                Ok(values) => (0..n)
                    .map(|i| values.is_valid(i) && !(min..=max).contains(&values.value(i)))
                    .collect(),
                Err(_) => vec![false; n],
            }
        }
        DataType::Date32 => {
            let values = array.as_primitive::<Date32Type>();
            let (min, max) = DATE32_RANGE;
            (0..n)
                .map(|i| values.is_valid(i) && !(min..=max).contains(&values.value(i)))
                .collect()
        }
        DataType::Struct(_) => {
            let mut bad = vec![false; n];
            for child in array.as_struct().columns() {
                for (b, c) in bad.iter_mut().zip(out_of_range(child)) {
                    *b |= c;
                }
            }
            bad
        }
        DataType::List(_) => {
            let list = array.as_list::<i32>();
            spread(&out_of_range(list.values()), list.value_offsets(), n)
        }
        DataType::LargeList(_) => {
            let list = array.as_list::<i64>();
            spread(&out_of_range(list.values()), list.value_offsets(), n)
        }
        DataType::FixedSizeList(_, size) => {
            let list = array.as_fixed_size_list();
            let inner = out_of_range(list.values());
            let size = (*size).max(0) as usize;
            (0..n)
                .map(|i| inner[i * size..(i + 1) * size].iter().any(|b| *b))
                .collect()
        }
        _ => vec![false; n],
    }
}

/// Element flags of a list's values -> one flag per list.
fn spread<O: Copy + TryInto<usize>>(inner: &[bool], offsets: &[O], n: usize) -> Vec<bool> {
    let at = |o: O| o.try_into().unwrap_or(0);
    (0..n)
        .map(|i| inner[at(offsets[i])..at(offsets[i + 1])].iter().any(|b| *b))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::array::{Int64Array, ListArray, TimestampMillisecondArray};
    use arrow::datatypes::{Field, Int64Type, Schema};

    #[test]
    fn control_characters_inside_strings_are_found_and_escaped_ones_are_not() {
        assert_eq!(raw_control_character(br#"{"a":"x"}"#), None);
        assert_eq!(raw_control_character(b"{\"a\":\n \"x\"}\r\n"), None);
        assert_eq!(raw_control_character(br#"{"a":"\u0000 and \n"}"#), None);
        assert_eq!(raw_control_character(b"{\"a\":\"x\0y\"}"), Some((7, 0)));
        assert_eq!(
            raw_control_character(b"{\"a\":\"tab\there\"}"),
            Some((9, b'\t'))
        );
        // An escaped quote does not end the string.
        assert_eq!(raw_control_character(b"{\"a\":\"\\\"\x01\"}"), Some((8, 1)));
        assert_eq!(raw_control_character(b"{\x02}"), Some((1, 2)));
        // In a whole 32-byte block past the first, and in the tail after the last one.
        let mut long = br#"{"a":""#.to_vec();
        long.extend(std::iter::repeat_n(b'x', 40));
        long.push(3);
        long.extend(std::iter::repeat_n(b'x', 40));
        long.extend(b"\"}");
        assert_eq!(raw_control_character(&long), Some((46, 3)));
        long[46] = b'y';
        assert_eq!(raw_control_character(&long), None);
        long.resize(96, b' ');
        long.push(0x1f);
        assert_eq!(raw_control_character(&long), Some((96, 0x1f)));
    }

    #[test]
    fn the_accepted_range_is_what_fits_nanoseconds_in_every_unit() {
        let (min, max) = timestamp_range(TimeUnit::Millisecond);
        assert_eq!((min, max), (-9_223_372_036_854, 9_223_372_036_854));
        assert!(broker_timestamp_ok(1_700_000_000_000));
        assert!(!broker_timestamp_ok(9_999_999_999_999_999));
        assert!(!broker_timestamp_ok(i64::MAX));
        assert_eq!(
            timestamp_range(TimeUnit::Nanosecond),
            (i64::MIN + 1, i64::MAX)
        );
    }

    #[test]
    fn rows_with_a_timestamp_out_of_range_are_found_also_inside_lists() {
        let ts = TimestampMillisecondArray::from(vec![
            Some(1_700_000_000_000),
            Some(i64::MAX),
            None,
            Some(-9_300_000_000_000),
        ])
        .with_timezone("UTC");
        let list = ListArray::from_iter_primitive::<Int64Type, _, _>(vec![
            Some(vec![Some(1)]),
            Some(vec![]),
            Some(vec![Some(2), Some(3)]),
            None,
        ]);
        let list = arrow::compute::cast(
            &(Arc::new(list) as ArrayRef),
            &DataType::List(Arc::new(Field::new(
                "item",
                DataType::Timestamp(TimeUnit::Second, None),
                true,
            ))),
        )
        .unwrap();
        // Row 2's second element is far past 2262 in seconds.
        let list = {
            let values = Int64Array::from(vec![1, 2, i64::MAX / 2]);
            let values = arrow::compute::cast(
                &(Arc::new(values) as ArrayRef),
                &DataType::Timestamp(TimeUnit::Second, None),
            )
            .unwrap();
            let field = Arc::new(Field::new("item", values.data_type().clone(), true));
            let offsets = list.as_list::<i32>().offsets().clone();
            Arc::new(ListArray::new(field, offsets, values, None)) as ArrayRef
        };
        let schema = Schema::new(vec![
            Field::new("ts", ts.data_type().clone(), true),
            Field::new("times", list.data_type().clone(), true),
        ]);
        let rows = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(ts), list]).unwrap();
        let bad = out_of_range_rows(&rows);
        let found: Vec<usize> = bad.iter().map(|(row, _)| *row).collect();
        assert_eq!(found, vec![1, 2, 3]);
        assert!(bad[0].1.starts_with("`ts` holds"), "{}", bad[0].1);
        assert!(bad[1].1.starts_with("`times` holds"), "{}", bad[1].1);
        assert_eq!(without_rows(&rows, &found).unwrap().num_rows(), 1);
    }
}

//! Hive-style partitioning: `partition_by` expressions -> `key=value/` directories.
//!
//! Expressions are `date(COL)` and `hour(COL)` (UTC, of a timestamp column) or a plain
//! column; `name=expr` renames the key. A batch is split with Arrow kernels, not per row:
//! each key becomes an array (the day by integer division, `date_part(Hour)`, or the
//! column itself),
//! the key arrays are turned into comparable rows with the row format, rows are grouped,
//! and each group is cut out with `take`. Values are rendered once per group.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::kernels::cast::cast;
use arrow::compute::{date_part, take_record_batch, DatePart};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Date32Type, Schema, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use arrow::error::ArrowError;
use arrow::row::{RowConverter, SortField};
use arrow::util::display::{ArrayFormatter, FormatOptions};

/// Directory name Hive (and pyarrow, Spark, DuckDB) use for a null partition value.
pub const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    Date(String),
    Hour(String),
    Column(String),
}

/// A `partition_by` entry that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartitionKeyError {
    #[error("`{spec}`: expected FUNCTION(COLUMN)")]
    NotACall { spec: String },
    #[error("`{spec}`: unknown function `{function}`, expected `date` or `hour`")]
    UnknownFunction { spec: String, function: String },
    #[error("`{spec}`: expected a column name, date(COL) or hour(COL)")]
    NotAKey { spec: String },
    #[error("`{spec}`: `{name}` is not a valid partition key name")]
    BadName { spec: String, name: String },
    #[error("unknown column `{column}` in partition key `{key}`")]
    UnknownColumn { key: String, column: String },
    #[error("partition key `{key}`: column `{column}` has type {data_type}, which it cannot partition by")]
    WrongType {
        key: String,
        column: String,
        data_type: DataType,
    },
}

/// One parsed `partition_by` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionKey {
    name: String,
    expr: Expr,
}

impl PartitionKey {
    /// Parses `date(ts)`, `hour(ts)`, `region` or `name=expr`.
    pub fn parse(spec: &str) -> Result<Self, PartitionKeyError> {
        let spec = spec.trim();
        let (name, expr_text) = match spec.split_once('=') {
            Some((name, expr)) => (Some(name.trim()), expr.trim()),
            None => (None, spec),
        };
        let expr = match expr_text.split_once('(') {
            Some((func, rest)) => {
                let column = rest
                    .strip_suffix(')')
                    .map(str::trim)
                    .filter(|c| is_identifier(c))
                    .ok_or_else(|| PartitionKeyError::NotACall {
                        spec: spec.to_owned(),
                    })?;
                match func.trim() {
                    "date" => Expr::Date(column.to_owned()),
                    "hour" => Expr::Hour(column.to_owned()),
                    other => {
                        return Err(PartitionKeyError::UnknownFunction {
                            spec: spec.to_owned(),
                            function: other.to_owned(),
                        })
                    }
                }
            }
            None if is_identifier(expr_text) => Expr::Column(expr_text.to_owned()),
            None => {
                return Err(PartitionKeyError::NotAKey {
                    spec: spec.to_owned(),
                })
            }
        };
        let default_name = match &expr {
            Expr::Date(_) => "date",
            Expr::Hour(_) => "hour",
            Expr::Column(c) => c.as_str(),
        };
        let name = name.unwrap_or(default_name);
        if !is_identifier(name) {
            return Err(PartitionKeyError::BadName {
                spec: spec.to_owned(),
                name: name.to_owned(),
            });
        }
        Ok(PartitionKey {
            name: name.to_owned(),
            expr,
        })
    }

    fn column(&self) -> &str {
        match &self.expr {
            Expr::Date(c) | Expr::Hour(c) | Expr::Column(c) => c,
        }
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Splits batches of one schema into Hive partitions.
#[derive(Debug, Clone)]
pub struct Partitioner {
    keys: Vec<(PartitionKey, usize)>,
}

impl Partitioner {
    /// Checks every key against `schema` (column exists, type fits the function).
    pub fn new(keys: Vec<PartitionKey>, schema: &Schema) -> Result<Self, PartitionKeyError> {
        let mut resolved = Vec::with_capacity(keys.len());
        for key in keys {
            let column = key.column();
            let (index, field) = schema.column_with_name(column).ok_or_else(|| {
                PartitionKeyError::UnknownColumn {
                    key: key.name.clone(),
                    column: column.to_owned(),
                }
            })?;
            let ok = match (&key.expr, field.data_type()) {
                (Expr::Date(_), DataType::Timestamp(..) | DataType::Date32 | DataType::Date64) => {
                    true
                }
                (Expr::Hour(_), DataType::Timestamp(..)) => true,
                (Expr::Column(_), t) => {
                    t.is_primitive()
                        || matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Boolean)
                }
                _ => false,
            };
            if !ok {
                return Err(PartitionKeyError::WrongType {
                    key: key.name.clone(),
                    column: column.to_owned(),
                    data_type: field.data_type().clone(),
                });
            }
            resolved.push((key, index));
        }
        Ok(Partitioner { keys: resolved })
    }

    /// Splits `batch` into `(relative directory, rows)` pairs, e.g. `date=2026-11-22`.
    pub fn split(&self, batch: &RecordBatch) -> Result<Vec<(String, RecordBatch)>, ArrowError> {
        if batch.num_rows() == 0 {
            // No file for no rows (an empty file in the root would not carry the keys).
            return Ok(Vec::new());
        }
        if self.keys.is_empty() {
            return Ok(vec![(String::new(), batch.clone())]);
        }
        let key_arrays = self
            .keys
            .iter()
            .map(|(key, index)| key_array(&key.expr, batch.column(*index)))
            .collect::<Result<Vec<_>, _>>()?;
        let converter = RowConverter::new(
            key_arrays
                .iter()
                .map(|a| SortField::new(a.data_type().clone()))
                .collect(),
        )?;
        let rows = converter.convert_columns(&key_arrays)?;
        // Most batches fall in one partition (a day, one region): compared, not hashed.
        let first = rows.row(0);
        if rows.iter().all(|row| row == first) {
            return Ok(vec![(self.directory(&key_arrays, 0)?, batch.clone())]);
        }
        let mut groups: HashMap<_, Vec<u32>> = HashMap::new();
        let mut order = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let members = groups.entry(row).or_insert_with(|| {
                order.push(row);
                Vec::new()
            });
            members.push(i as u32);
        }
        order
            .into_iter()
            .map(|row| {
                let members = groups.remove(&row).unwrap_or_default();
                let first = members.first().copied().unwrap_or(0) as usize;
                let indices = UInt32Array::from(members);
                Ok((
                    self.directory(&key_arrays, first)?,
                    take_record_batch(batch, &indices)?,
                ))
            })
            .collect()
    }

    fn directory(&self, key_arrays: &[ArrayRef], row: usize) -> Result<String, ArrowError> {
        let options = FormatOptions::default();
        let mut dir = String::new();
        for ((key, _), array) in self.keys.iter().zip(key_arrays) {
            if !dir.is_empty() {
                dir.push('/');
            }
            dir.push_str(&key.name);
            dir.push('=');
            if array.is_null(row) {
                dir.push_str(NULL_PARTITION);
            } else if matches!(key.expr, Expr::Hour(_)) {
                let formatter = ArrayFormatter::try_new(array.as_ref(), &options)?;
                dir.push_str(&format!("{:0>2}", formatter.value(row).to_string()));
            } else {
                let formatter = ArrayFormatter::try_new(array.as_ref(), &options)?;
                escape_into(&formatter.value(row).to_string(), &mut dir);
            }
        }
        Ok(dir)
    }
}

fn key_array(expr: &Expr, column: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    match expr {
        Expr::Date(_) => match column.data_type() {
            DataType::Timestamp(unit, tz) if tz.as_deref().is_none_or(is_utc) => {
                Ok(utc_dates(column, *unit))
            }
            _ => cast(column, &DataType::Date32),
        },
        Expr::Hour(_) => date_part(column.as_ref(), DatePart::Hour),
        Expr::Column(_) => Ok(Arc::clone(column)),
    }
}

/// Whether a timestamp's time zone is UTC by another name.
fn is_utc(tz: &str) -> bool {
    matches!(tz, "UTC" | "Etc/UTC" | "Z" | "+00:00" | "+0000" | "+00")
}

/// The UTC day of each timestamp, as `cast` to `Date32` gives it, by integer division
/// (the cast goes through a time-zone conversion per value: 40 ns a row in a profile).
fn utc_dates(column: &ArrayRef, unit: TimeUnit) -> ArrayRef {
    fn days<T: ArrowPrimitiveType<Native = i64>>(column: &ArrayRef, per_day: i64) -> ArrayRef {
        Arc::new(
            column
                .as_primitive::<T>()
                .unary::<_, Date32Type>(|t| t.div_euclid(per_day) as i32),
        )
    }
    match unit {
        TimeUnit::Second => days::<TimestampSecondType>(column, 86_400),
        TimeUnit::Millisecond => days::<TimestampMillisecondType>(column, 86_400_000),
        TimeUnit::Microsecond => days::<TimestampMicrosecondType>(column, 86_400_000_000),
        TimeUnit::Nanosecond => days::<TimestampNanosecondType>(column, 86_400_000_000_000),
    }
}

/// Percent-escapes the characters Hive escapes in partition values.
fn escape_into(value: &str, out: &mut String) {
    for c in value.chars() {
        if c.is_control() || "\"#%'*/:=?\\{[]^".contains(c) {
            let mut buf = [0u8; 4];
            for byte in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        } else {
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, PrimitiveArray, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::Field;

    #[test]
    fn utc_days_by_division_are_the_days_the_cast_gives() {
        // Around the epoch, before it, at day boundaries, and far from it, in every unit.
        let seconds = [
            0i64,
            -1,
            1,
            86_399,
            86_400,
            -86_400,
            -86_401,
            1_795_305_599,
            1_795_305_600,
            -6_000_000_000,
            9_000_000_000,
        ];
        fn check<T: ArrowPrimitiveType<Native = i64>>(values: Vec<i64>, unit: TimeUnit) {
            for tz in [None, Some("UTC"), Some("+00:00")] {
                let array: PrimitiveArray<T> =
                    PrimitiveArray::from_iter(values.iter().map(|v| Some(*v)).chain([None]));
                let column: ArrayRef =
                    Arc::new(array.with_data_type(DataType::Timestamp(unit, tz.map(Into::into))));
                let expected = cast(&column, &DataType::Date32).unwrap();
                let fast = key_array(&Expr::Date("t".into()), &column).unwrap();
                assert_eq!(fast.as_ref(), expected.as_ref(), "{unit:?} {tz:?}");
            }
        }
        check::<TimestampSecondType>(seconds.to_vec(), TimeUnit::Second);
        let scaled = |f: i64| seconds.iter().map(|s| s * f + f / 3).collect::<Vec<_>>();
        check::<TimestampMillisecondType>(scaled(1_000), TimeUnit::Millisecond);
        check::<TimestampMicrosecondType>(scaled(1_000_000), TimeUnit::Microsecond);
        let nanos = seconds.iter().map(|s| s * 1_000_000_000 - 7).collect();
        check::<TimestampNanosecondType>(nanos, TimeUnit::Nanosecond);
    }

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("region", DataType::Utf8, true),
            Field::new(
                "_timestamp",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ),
        ]));
        let day = 86_400_000;
        let ts = 1_795_305_600_000; // 2026-11-22T00:00:00Z
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
                Arc::new(StringArray::from(vec![
                    Some("eu/west"),
                    Some("us"),
                    None,
                    Some("us"),
                ])),
                Arc::new(
                    TimestampMillisecondArray::from(vec![
                        Some(ts + 3_600_000),
                        Some(ts + day),
                        Some(ts),
                        None,
                    ])
                    .with_timezone("UTC"),
                ),
            ],
        )
        .unwrap()
    }

    fn split(specs: &[&str]) -> Vec<(String, Vec<i64>)> {
        let batch = batch();
        let keys = specs
            .iter()
            .map(|s| PartitionKey::parse(s).unwrap())
            .collect();
        let partitioner = Partitioner::new(keys, batch.schema_ref()).unwrap();
        partitioner
            .split(&batch)
            .unwrap()
            .into_iter()
            .map(|(dir, b)| {
                let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                (dir, ids.values().to_vec())
            })
            .collect()
    }

    #[test]
    fn splits_by_utc_date_and_hour_in_first_seen_order() {
        assert_eq!(
            split(&["date(_timestamp)", "hour(_timestamp)"]),
            vec![
                ("date=2026-11-22/hour=01".to_owned(), vec![1]),
                ("date=2026-11-23/hour=00".to_owned(), vec![2]),
                ("date=2026-11-22/hour=00".to_owned(), vec![3]),
                (
                    format!("date={NULL_PARTITION}/hour={NULL_PARTITION}"),
                    vec![4]
                ),
            ]
        );
    }

    #[test]
    fn an_empty_batch_makes_no_files() {
        let batch = batch().slice(0, 0);
        for specs in [&[][..], &["date(_timestamp)"][..]] {
            let keys = specs
                .iter()
                .map(|s| PartitionKey::parse(s).unwrap())
                .collect();
            let partitioner = Partitioner::new(keys, batch.schema_ref()).unwrap();
            assert!(partitioner.split(&batch).unwrap().is_empty(), "{specs:?}");
        }
    }

    #[test]
    fn plain_columns_are_escaped_and_renamable() {
        assert_eq!(
            split(&["r=region"]),
            vec![
                ("r=eu%2Fwest".to_owned(), vec![1]),
                ("r=us".to_owned(), vec![2, 4]),
                (format!("r={NULL_PARTITION}"), vec![3]),
            ]
        );
    }

    #[test]
    fn rejects_bad_expressions_and_types() {
        assert!(PartitionKey::parse("week(ts)")
            .unwrap_err()
            .to_string()
            .contains("unknown function"));
        assert!(PartitionKey::parse("date(ts").is_err());
        let schema = batch().schema();
        let hour_of_text = vec![PartitionKey::parse("hour(region)").unwrap()];
        assert!(Partitioner::new(hour_of_text, &schema)
            .unwrap_err()
            .to_string()
            .contains("type Utf8"));
        let missing = vec![PartitionKey::parse("nope").unwrap()];
        assert!(Partitioner::new(missing, &schema)
            .unwrap_err()
            .to_string()
            .contains("unknown column"));
    }
}

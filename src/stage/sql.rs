//! The `sql` stage: a SQL statement over the micro-batch (`SELECT ... FROM batch WHERE ...`),
//! run by polars SQL on the Arrow batch.
//!
//! The batch crosses from arrow-rs to polars and back through the Arrow C data interface
//! ([`to_polars`], [`from_polars`]): column buffers are handed over, not copied value by
//! value (polars re-lays out Utf8 as its string views on import). The output schema is
//! found at start-up by running the statement on an empty frame of the input schema, so a
//! bad statement, an unknown column or a dropped provenance column is a config error with
//! the key path; each batch's result is cast to that schema.
//!
//! A batch the statement fails on (a strict `CAST` of a bad value, say) is run again row
//! by row: rows that fail go to the dead letters with polars' message, the rest go on.
//! The stage is row-wise: filters, projections, casts, string functions. Aggregations
//! would merge records of different offsets and are not supported.

use std::sync::Arc;

use arrow::array::{make_array, Array, ArrayRef, RecordBatch};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ffi::{from_ffi, to_ffi, FFI_ArrowArray, FFI_ArrowSchema};
use polars::prelude::{Column, CompatLevel, DataFrame, IntoLazy, PlSmallStr, PolarsError, Series};
use polars::sql::SQLContext;

use super::{PlanIssues, Rejection, StageError, StageOutput};
use crate::batch::DeadLetterKind;
use crate::config::SqlConfig;
use crate::schema::is_provenance;

/// The table name statements select from.
pub(crate) const TABLE: &str = "batch";

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("{0}")]
    Polars(#[from] PolarsError),
    #[error("{0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// Converts an arrow-rs batch to a polars frame through the C data interface.
pub(crate) fn to_polars(batch: &RecordBatch) -> Result<DataFrame, SqlError> {
    let height = batch.num_rows();
    let columns = batch
        .columns()
        .iter()
        .zip(batch.schema().fields())
        .map(|(array, field)| {
            let (ffi_array, ffi_schema) = to_ffi(&array.to_data())?;
            // SAFETY: both crates' structs are the C data interface's `ArrowArray` and
            // `ArrowSchema` (#[repr(C)], same fields); ownership (the release callbacks)
            // moves with the value.
            let (pl_array, pl_schema) = unsafe {
                (
                    std::mem::transmute::<FFI_ArrowArray, polars_arrow::ffi::ArrowArray>(ffi_array),
                    std::mem::transmute::<FFI_ArrowSchema, polars_arrow::ffi::ArrowSchema>(
                        ffi_schema,
                    ),
                )
            };
            // SAFETY: the schema and array were just exported together by arrow-rs.
            let imported = unsafe {
                let pl_field = polars_arrow::ffi::import_field_from_c(&pl_schema)?;
                polars_arrow::ffi::import_array_from_c(pl_array, pl_field.dtype().clone())?
            };
            let series = Series::from_arrow(PlSmallStr::from_str(field.name()), imported)?;
            Ok(Column::from(series))
        })
        .collect::<Result<Vec<_>, SqlError>>()?;
    Ok(DataFrame::new(height, columns)?)
}

/// Converts a polars frame back to an arrow-rs batch, casting each column to the type
/// `schema` gives it.
pub fn from_polars(frame: &DataFrame, schema: &SchemaRef) -> Result<RecordBatch, SqlError> {
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let array = export_column(frame.column(field.name())?)?;
        columns.push(if array.data_type() == field.data_type() {
            array
        } else {
            cast(&array, field.data_type())?
        });
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// One polars column as an arrow-rs array (its own type, before any cast).
fn export_column(column: &Column) -> Result<ArrayRef, SqlError> {
    let series = column.as_materialized_series().rechunk();
    let array = series.to_arrow(0, CompatLevel::oldest());
    let field =
        polars_arrow::datatypes::Field::new(series.name().clone(), array.dtype().clone(), true);
    let pl_schema = polars_arrow::ffi::export_field_to_c(&field);
    let pl_array = polars_arrow::ffi::export_array_to_c(array);
    // SAFETY: see `to_polars`; the other direction.
    let (ffi_array, ffi_schema) = unsafe {
        (
            std::mem::transmute::<polars_arrow::ffi::ArrowArray, FFI_ArrowArray>(pl_array),
            std::mem::transmute::<polars_arrow::ffi::ArrowSchema, FFI_ArrowSchema>(pl_schema),
        )
    };
    // SAFETY: exported together by polars just above.
    let data = unsafe { from_ffi(ffi_array, &ffi_schema)? };
    Ok(make_array(data))
}

/// Runs `query` over `frame` registered as [`TABLE`].
fn run(query: &str, frame: DataFrame) -> Result<DataFrame, PolarsError> {
    let mut context = SQLContext::new();
    context.register(TABLE, frame.lazy());
    context.execute(query)?.collect()
}

/// Large and view string/binary types as the plain ones the rest of the pipeline uses.
fn plain(data_type: &DataType) -> DataType {
    match data_type {
        DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        DataType::LargeBinary | DataType::BinaryView => DataType::Binary,
        DataType::LargeList(item) => DataType::List(Arc::new(
            item.as_ref()
                .clone()
                .with_data_type(plain(item.data_type())),
        )),
        other => other.clone(),
    }
}

/// The statement's output schema, found by running it on no rows of `input`.
pub fn output_schema(config: &SqlConfig, input: &SchemaRef, issues: &mut PlanIssues) -> Schema {
    let empty = RecordBatch::new_empty(input.clone());
    let result = to_polars(&empty).and_then(|frame| Ok(run(&config.query, frame)?));
    let frame = match result {
        Ok(frame) => frame,
        Err(e) => {
            issues.add(
                "query",
                format!("expected a SELECT over `{TABLE}` that polars SQL can run: {e}"),
            );
            return input.as_ref().clone();
        }
    };
    let mut fields = Vec::with_capacity(frame.width());
    for column in frame.columns() {
        match export_column(column) {
            Ok(array) => {
                let name = column.name().as_str();
                let nullable = input
                    .field_with_name(name)
                    .map_or(true, |f| f.is_nullable());
                fields.push(Field::new(name, plain(array.data_type()), nullable));
            }
            Err(e) => issues.add(
                "query",
                format!(
                    "column `{}` has a type sluice cannot take back: {e}",
                    column.name()
                ),
            ),
        }
    }
    let missing: Vec<&str> = input
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .filter(|name| is_provenance(name))
        .filter(|name| !fields.iter().any(|f| f.name() == name))
        .collect();
    if !missing.is_empty() {
        issues.add(
            "query",
            format!(
                "expected the result to keep the provenance columns (missing: {}); select `*` or list them",
                missing.join(", ")
            ),
        );
    }
    Schema::new(fields)
}

pub struct SqlStage {
    name: String,
    query: Arc<str>,
    output_schema: SchemaRef,
}

impl SqlStage {
    pub fn new(name: String, config: &SqlConfig, output_schema: SchemaRef) -> Self {
        SqlStage {
            name,
            query: config.query.as_str().into(),
            output_schema,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn process(&self, rows: RecordBatch) -> Result<StageOutput, StageError> {
        let (query, schema, stage) = (
            self.query.clone(),
            self.output_schema.clone(),
            self.name.clone(),
        );
        tokio::task::spawn_blocking(move || process(&query, &schema, rows))
            .await
            .map_err(StageError::Task)?
            .map_err(|e| StageError::Failed {
                stage,
                message: e.to_string(),
            })
    }
}

fn run_batch(query: &str, schema: &SchemaRef, rows: &RecordBatch) -> Result<RecordBatch, SqlError> {
    from_polars(&run(query, to_polars(rows)?)?, schema)
}

fn process(query: &str, schema: &SchemaRef, rows: RecordBatch) -> Result<StageOutput, SqlError> {
    if let Ok(out) = run_batch(query, schema, &rows) {
        return Ok(StageOutput {
            rows: out,
            rejected: Vec::new(),
            aggregated: false,
        });
    }
    // Some row makes the statement fail: find which, one row at a time.
    let mut kept = Vec::new();
    let mut rejected = Vec::new();
    for row in 0..rows.num_rows() {
        match run_batch(query, schema, &rows.slice(row, 1)) {
            Ok(out) => kept.push(out),
            Err(e) => rejected.push(Rejection::new(
                row,
                DeadLetterKind::SqlFailed,
                format!("sql statement failed on this row: {e}"),
            )),
        }
    }
    Ok(StageOutput {
        rows: concat_batches(schema, &kept)?,
        rejected,
        // The rows left are the statement's output, not one per input row.
        aggregated: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray};

    fn batch() -> RecordBatch {
        RecordBatch::try_from_iter([
            (
                "_offset",
                Arc::new(Int64Array::from(vec![10, 11, 12])) as ArrayRef,
            ),
            (
                "text",
                Arc::new(StringArray::from(vec![Some("Great"), None, Some("bad")])) as ArrayRef,
            ),
            (
                "rating",
                Arc::new(Float64Array::from(vec![5.0, 2.0, 1.0])) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    fn plan(query: &str, input: &SchemaRef) -> Result<SchemaRef, Vec<String>> {
        let mut issues = PlanIssues::new("stages[0].sql".into());
        let config = SqlConfig {
            query: query.into(),
        };
        let schema = output_schema(&config, input, &mut issues);
        if issues.issues.is_empty() {
            Ok(Arc::new(schema))
        } else {
            Err(issues
                .issues
                .iter()
                .map(|i| format!("{}: {}", i.path, i.message))
                .collect())
        }
    }

    fn strings(batch: &RecordBatch, column: &str) -> Vec<Option<String>> {
        let array = batch.column_by_name(column).unwrap();
        let array = array.as_any().downcast_ref::<StringArray>().unwrap();
        array.iter().map(|v| v.map(str::to_owned)).collect()
    }

    #[test]
    fn filters_string_functions_and_casts_run_with_the_planned_schema() {
        let input = batch();
        let query = "SELECT *, upper(text) AS shout, CAST(rating AS INT) AS stars \
                     FROM batch WHERE rating >= 2";
        let schema = plan(query, &input.schema()).unwrap();
        let stars = schema.field_with_name("stars").unwrap();
        assert_eq!(stars.data_type(), &DataType::Int32);
        assert_eq!(
            schema.field_with_name("shout").unwrap().data_type(),
            &DataType::Utf8
        );
        let out = process(query, &schema, input).unwrap();
        assert!(out.rejected.is_empty());
        assert_eq!(out.rows.schema(), schema);
        assert_eq!(out.rows.num_rows(), 2);
        assert_eq!(
            strings(&out.rows, "shout"),
            vec![Some("GREAT".into()), None]
        );
        let offsets = out.rows.column_by_name("_offset").unwrap();
        let offsets = offsets.as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(offsets.values(), &[10, 11]);
    }

    #[test]
    fn a_row_the_statement_fails_on_is_rejected_and_the_rest_go_on() {
        let input = RecordBatch::try_from_iter([
            (
                "_offset",
                Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef,
            ),
            (
                "code",
                Arc::new(StringArray::from(vec!["12", "x", "7"])) as ArrayRef,
            ),
        ])
        .unwrap();
        let query = "SELECT *, CAST(code AS BIGINT) AS n FROM batch";
        let schema = plan(query, &input.schema()).unwrap();
        let out = process(query, &schema, input).unwrap();
        assert_eq!(out.rejected.len(), 1, "{:?}", out.rejected.len());
        assert_eq!(out.rejected[0].row, 1);
        assert!(
            out.rejected[0].reason.contains("sql statement failed"),
            "{}",
            out.rejected[0].reason
        );
        assert_eq!(out.rows.num_rows(), 2);
        let n = out.rows.column_by_name("n").unwrap();
        let n = n.as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(n.values(), &[12, 7]);
    }

    #[test]
    fn a_bad_statement_or_lost_provenance_is_a_startup_error_on_the_query_key() {
        let input = batch().schema();
        let unknown = plan("SELECT *, nope + 1 AS x FROM batch", &input).unwrap_err();
        assert!(
            unknown[0].starts_with("stages[0].sql.query: expected a SELECT"),
            "{unknown:?}"
        );
        assert!(unknown[0].contains("nope"), "{unknown:?}");
        let syntax = plan("SELEC * FROM batch", &input).unwrap_err();
        assert!(syntax[0].starts_with("stages[0].sql.query"), "{syntax:?}");
        let lost = plan("SELECT text FROM batch", &input).unwrap_err();
        assert!(lost[0].contains("missing: _offset"), "{lost:?}");
    }

    #[test]
    fn a_batch_goes_to_polars_and_back_unchanged() {
        let batch = batch();
        let frame = to_polars(&batch).unwrap();
        assert_eq!(frame.height(), 3);
        let back = from_polars(&frame, &batch.schema()).unwrap();
        assert_eq!(back, batch);
    }
}

//! What a Delta table holds for sluice's rows: the Arrow types the protocol has, the
//! partition columns it allows, and partition values as kernel scalars.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use delta_kernel::engine::arrow_conversion::TryFromArrow;
use delta_kernel::expressions::Scalar;
use delta_kernel::schema::StructType;

use super::DeltaError;
use crate::config::DeltaSinkConfig;

/// The Arrow schema a Delta table holds for `rows`: timestamps in microseconds, fixed-size
/// lists as lists, string views as strings (what the Delta protocol has types for).
pub fn table_schema(rows: &Schema) -> SchemaRef {
    let fields: Vec<Field> = rows
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_data_type(delta_type(f.data_type())))
        .collect();
    Arc::new(Schema::new(fields))
}

fn delta_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::FixedSizeList(item, _) | DataType::LargeList(item) | DataType::List(item) => {
            let item = item
                .as_ref()
                .clone()
                .with_data_type(delta_type(item.data_type()));
            DataType::List(Arc::new(item))
        }
        DataType::Struct(fields) => DataType::Struct(
            fields
                .iter()
                .map(|f| f.as_ref().clone().with_data_type(delta_type(f.data_type())))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Checks what `validate` can know: the rows fit a Delta table and the partition columns
/// exist with a type Delta partitions by.
pub fn check(rows: &Schema, config: &DeltaSinkConfig) -> Result<(), DeltaError> {
    let schema = table_schema(rows);
    StructType::try_from_arrow(schema.as_ref()).map_err(|e| DeltaError::Schema(e.to_string()))?;
    for column in &config.partition_by {
        let Ok(field) = schema.field_with_name(column) else {
            return Err(DeltaError::Schema(format!(
                "partition column `{column}` is not among the rows' columns"
            )));
        };
        if !partition_type(field.data_type()) {
            return Err(DeltaError::Schema(format!(
                "partition column `{column}` is {}: expected a string, integer, boolean or \
                 date column",
                field.data_type()
            )));
        }
    }
    Ok(())
}

fn partition_type(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::Boolean
            | DataType::Date32
    )
}

/// The kernel value of partition column `array` at `row`.
pub(super) fn scalar_at(array: &ArrayRef, row: usize) -> Scalar {
    use arrow::datatypes::{Date32Type, Int16Type, Int32Type, Int64Type, Int8Type};
    if array.is_null(row) {
        let kernel = delta_kernel::schema::DataType::try_from_arrow(array.data_type())
            .unwrap_or(delta_kernel::schema::DataType::STRING);
        return Scalar::Null(kernel);
    }
    match array.data_type() {
        DataType::Int8 => Scalar::Byte(array.as_primitive::<Int8Type>().value(row)),
        DataType::Int16 => Scalar::Short(array.as_primitive::<Int16Type>().value(row)),
        DataType::Int32 => Scalar::Integer(array.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => Scalar::Long(array.as_primitive::<Int64Type>().value(row)),
        DataType::Boolean => Scalar::Boolean(array.as_boolean().value(row)),
        DataType::Date32 => Scalar::Date(array.as_primitive::<Date32Type>().value(row)),
        _ => Scalar::String(
            array
                .as_string_opt::<i32>()
                .map(|a| a.value(row).to_owned())
                .unwrap_or_default(),
        ),
    }
}

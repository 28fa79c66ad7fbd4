//! Protobuf messages -> Arrow columns, built column by column straight from the messages'
//! values (no JSON or other intermediate form), for the schema [`crate::proto::schema`]
//! gives. Types: `double`/`float` -> Float64/Float32; `int32`, `sint32`, `sfixed32` -> Int32;
//! the 64-bit signed ones -> Int64; `uint32`/`fixed32` -> UInt32; `uint64`/`fixed64` ->
//! UInt64; `bool`; `string` -> Utf8; `bytes` -> Binary; an enum -> Utf8 (the value's name,
//! its number when the schema does not name it); `google.protobuf.Timestamp` ->
//! Timestamp(µs, UTC); the wrappers (`google.protobuf.Int64Value`, ...) -> their value,
//! nullable; other messages -> Struct; `repeated` -> List; `map<K, V>` -> Map. A field
//! with presence (a message, `optional`, a `oneof` member, a wrapper) is nullable and null
//! when unset; one without (a plain proto3 scalar) holds its default when unset, as
//! protobuf defines.

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array,
    ListArray, MapArray, StringArray, StructArray, TimestampMicrosecondArray, UInt32Array,
    UInt64Array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::error::ArrowError;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value};

use crate::proto::wrapped;

/// The columns of `messages` (all of `message`'s type) for `schema` (from [`schema`]).
pub(crate) fn columns(
    message: &MessageDescriptor,
    schema: &Schema,
    messages: &[DynamicMessage],
) -> Result<Vec<ArrayRef>, ArrowError> {
    schema
        .fields()
        .iter()
        .map(|column| {
            let field = message
                .get_field_by_name(column.name())
                .ok_or_else(|| ArrowError::SchemaError(format!("no field `{}`", column.name())))?;
            let values: Vec<Option<Cow<'_, Value>>> =
                messages.iter().map(|m| field_value(m, &field)).collect();
            field_array(&field, &values, column.data_type())
        })
        .collect()
}

/// A field's value in `message`: `None` for an unset field with presence.
fn field_value<'m>(message: &'m DynamicMessage, field: &FieldDescriptor) -> Option<Cow<'m, Value>> {
    (!field.supports_presence() || field.is_list() || field.is_map() || message.has_field(field))
        .then(|| message.get_field(field))
}

fn field_array(
    field: &FieldDescriptor,
    values: &[Option<Cow<'_, Value>>],
    data_type: &DataType,
) -> Result<ArrayRef, ArrowError> {
    let refs: Vec<Option<&Value>> = values.iter().map(|v| v.as_deref()).collect();
    let kind = field.kind();
    match data_type {
        DataType::Map(entries, _) => map_array(&kind, &refs, entries),
        DataType::List(item) if field.is_list() => list_array(&kind, &refs, item),
        _ => array(&kind, &refs, data_type),
    }
}

fn list_array(
    kind: &Kind,
    values: &[Option<&Value>],
    item: &Arc<Field>,
) -> Result<ArrayRef, ArrowError> {
    let mut lengths = Vec::with_capacity(values.len());
    let mut elements: Vec<Option<&Value>> = Vec::new();
    for value in values {
        let list = value.and_then(|v| v.as_list()).unwrap_or_default();
        lengths.push(list.len());
        elements.extend(list.iter().map(Some));
    }
    let child = array(kind, &elements, item.data_type())?;
    Ok(Arc::new(ListArray::try_new(
        item.clone(),
        OffsetBuffer::from_lengths(lengths),
        child,
        None,
    )?))
}

fn map_array(
    kind: &Kind,
    values: &[Option<&Value>],
    entries: &Arc<Field>,
) -> Result<ArrayRef, ArrowError> {
    let (Kind::Message(entry), DataType::Struct(entry_fields)) = (kind, entries.data_type()) else {
        return Err(ArrowError::SchemaError(
            "a map without its entry type".into(),
        ));
    };
    let (key_kind, value_kind) = (
        entry.map_entry_key_field().kind(),
        entry.map_entry_value_field().kind(),
    );
    let mut lengths = Vec::with_capacity(values.len());
    let mut keys: Vec<Value> = Vec::new();
    let mut items: Vec<Option<&Value>> = Vec::new();
    for value in values {
        let mut pairs: Vec<(&MapKey, &Value)> = value
            .and_then(|v| v.as_map())
            .map(|m| m.iter().collect())
            .unwrap_or_default();
        // Maps have no order on the wire: sorted keys make the output deterministic.
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        lengths.push(pairs.len());
        for (key, item) in pairs {
            keys.push(Value::from(key.clone()));
            items.push(Some(item));
        }
    }
    let key_refs: Vec<Option<&Value>> = keys.iter().map(Some).collect();
    let key_array = array(&key_kind, &key_refs, entry_fields[0].data_type())?;
    let value_array = array(&value_kind, &items, entry_fields[1].data_type())?;
    let struct_array =
        StructArray::try_new(entry_fields.clone(), vec![key_array, value_array], None)?;
    Ok(Arc::new(MapArray::try_new(
        entries.clone(),
        OffsetBuffer::from_lengths(lengths),
        struct_array,
        None,
        false,
    )?))
}

/// A column of single values of `kind` (a list's elements, a map's keys or values, a
/// plain field).
fn array(
    kind: &Kind,
    values: &[Option<&Value>],
    data_type: &DataType,
) -> Result<ArrayRef, ArrowError> {
    if let Kind::Message(message) = kind {
        if let Some(inner) = wrapped(message) {
            let unwrapped: Vec<Option<Value>> = values
                .iter()
                .map(|v| {
                    v.and_then(|v| v.as_message()).map(|m| {
                        m.get_field_by_number(1)
                            .map(Cow::into_owned)
                            .unwrap_or_else(|| Value::default_value(&inner))
                    })
                })
                .collect();
            let refs: Vec<Option<&Value>> = unwrapped.iter().map(Option::as_ref).collect();
            return array(&inner, &refs, data_type);
        }
    }
    Ok(match (data_type, kind) {
        (DataType::Boolean, _) => Arc::new(
            values
                .iter()
                .map(|v| v.and_then(|v| v.as_bool()))
                .collect::<BooleanArray>(),
        ),
        (DataType::Int32, _) => Arc::new(
            values
                .iter()
                .map(|v| v.and_then(|v| v.as_i32()))
                .collect::<Int32Array>(),
        ),
        (DataType::Int64, _) => Arc::new(
            values
                .iter()
                .map(|v| v.and_then(|v| v.as_i64()))
                .collect::<Int64Array>(),
        ),
        (DataType::UInt32, _) => Arc::new(
            values
                .iter()
                .map(|v| v.and_then(|v| v.as_u32()))
                .collect::<UInt32Array>(),
        ),
        (DataType::UInt64, _) => Arc::new(
            values
                .iter()
                .map(|v| v.and_then(|v| v.as_u64()))
                .collect::<UInt64Array>(),
        ),
        (DataType::Float32, _) => Arc::new(
            values
                .iter()
                .map(|v| v.and_then(|v| v.as_f32()))
                .collect::<Float32Array>(),
        ),
        (DataType::Float64, _) => Arc::new(
            values
                .iter()
                .map(|v| v.and_then(|v| v.as_f64()))
                .collect::<Float64Array>(),
        ),
        (DataType::Utf8, Kind::Enum(e)) => Arc::new(
            values
                .iter()
                .map(|v| {
                    v.and_then(|v| v.as_enum_number())
                        .map(|n| match e.get_value(n) {
                            Some(value) => value.name().to_owned(),
                            None => n.to_string(),
                        })
                })
                .collect::<StringArray>(),
        ),
        (DataType::Utf8, _) => Arc::new(
            values
                .iter()
                .map(|v| v.and_then(|v| v.as_str()))
                .collect::<StringArray>(),
        ),
        (DataType::Binary, _) => Arc::new(
            values
                .iter()
                .map(|v| v.and_then(|v| v.as_bytes()).map(|b| b.as_ref()))
                .collect::<BinaryArray>(),
        ),
        (DataType::Timestamp(TimeUnit::Microsecond, tz), _) => Arc::new(
            values
                .iter()
                .map(|v| v.and_then(|v| v.as_message()).map(timestamp_micros))
                .collect::<TimestampMicrosecondArray>()
                .with_timezone_opt(tz.clone()),
        ),
        (DataType::Struct(fields), Kind::Message(message)) => {
            let messages: Vec<Option<&DynamicMessage>> = values
                .iter()
                .map(|v| v.and_then(|v| v.as_message()))
                .collect();
            let children = fields
                .iter()
                .map(|column| {
                    let field = message.get_field_by_name(column.name()).ok_or_else(|| {
                        ArrowError::SchemaError(format!(
                            "no field `{}` in `{}`",
                            column.name(),
                            message.full_name()
                        ))
                    })?;
                    let child: Vec<Option<Cow<'_, Value>>> = messages
                        .iter()
                        .map(|m| m.and_then(|m| field_value(m, &field)))
                        .collect();
                    field_array(&field, &child, column.data_type())
                })
                .collect::<Result<Vec<_>, ArrowError>>()?;
            let nulls = NullBuffer::from_iter(messages.iter().map(Option::is_some));
            let nulls = (nulls.null_count() > 0).then_some(nulls);
            Arc::new(StructArray::try_new(fields.clone(), children, nulls)?)
        }
        (other, kind) => {
            return Err(ArrowError::SchemaError(format!(
                "no Arrow column of type {other} for protobuf {kind:?}"
            )))
        }
    })
}

/// A `google.protobuf.Timestamp` in microseconds since the epoch.
fn timestamp_micros(message: &DynamicMessage) -> i64 {
    let seconds = message
        .get_field_by_number(1)
        .and_then(|v| v.as_i64())
        .unwrap_or(0);
    let nanos = message
        .get_field_by_number(2)
        .and_then(|v| v.as_i32())
        .unwrap_or(0);
    seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(nanos) / 1_000)
}

//! Rows as Protobuf messages in the Confluent wire format (magic byte, schema id, message
//! indexes, body), for a `kafka` sink with `format: protobuf`.
//!
//! The schema is a `.proto` file derived from the output columns ([`crate::proto::derive`],
//! one message named by `record_name`), registered under the sink's subject as `PROTOBUF`
//! when the sink starts, or a pinned version used as it is ([`super::subject`]). Each
//! column is written to the field of the same name; the start fails if one has no such
//! field or a type that cannot hold it. Each column is cast once per batch
//! to the Arrow type of its field's kind, then each row becomes one message.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{
    DataType, Field, Fields, Float32Type, Float64Type, Int32Type, Int64Type, Schema, SchemaRef,
    TimeUnit, TimestampMicrosecondType, UInt32Type, UInt64Type,
};
use prost::Message as _;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};
use tokio_util::sync::CancellationToken;

use super::subject::SubjectSchema;
use super::SinkError;
use crate::config::KafkaSinkConfig;

/// The Protobuf side of a `kafka` sink.
#[derive(Debug, Clone)]
pub struct ProtobufOutput {
    sink: String,
    schema: SubjectSchema,
    record_name: String,
    columns: SchemaRef,
    /// After [`Self::prepare`]: the schema id, the message, and each column's field and
    /// the Arrow type it is cast to.
    ready: Option<(u32, MessageDescriptor, Vec<FieldTarget>)>,
}

/// A column's field, and the Arrow type the column is cast to before encoding.
type FieldTarget = (FieldDescriptor, DataType);

fn protobuf_error(sink: &str, message: String) -> SinkError {
    SinkError::Protobuf {
        sink: sink.to_owned(),
        message,
    }
}

impl ProtobufOutput {
    /// `columns`: the schema of the rows the sink writes (after `columns:` projection).
    pub fn new(sink: &str, config: &KafkaSinkConfig, columns: &Schema) -> Result<Self, SinkError> {
        let record_name = config.record_full_name();
        let derive = || crate::proto::derive(&record_name, columns);
        Ok(ProtobufOutput {
            sink: sink.to_owned(),
            schema: SubjectSchema::new(sink, config, "PROTOBUF", derive, protobuf_error)?,
            record_name,
            columns: Arc::new(Schema::new(columns.fields().clone())),
            ready: None,
        })
    }

    fn error(&self, message: String) -> SinkError {
        protobuf_error(&self.sink, message)
    }

    /// Registers the derived schema (or fetches the pinned version) and maps each column to
    /// its field.
    pub async fn prepare(
        &mut self,
        shutdown: &CancellationToken,
        stats: &crate::telemetry::Stats,
    ) -> Result<(), SinkError> {
        let (id, schema) = self.schema.resolve(shutdown, stats, protobuf_error).await?;
        let pool = crate::proto::writer_pool(id, &schema).map_err(|e| self.error(e))?;
        let file = pool
            .files()
            .last()
            .ok_or_else(|| self.error("the schema has no file".into()))?;
        let message = pool
            .get_message_by_name(&self.record_name)
            .or_else(|| file.messages().next())
            .ok_or_else(|| self.error(format!("schema id {id} declares no message")))?;
        let fields = self
            .columns
            .fields()
            .iter()
            .map(|column| {
                let field = message.get_field_by_name(column.name()).ok_or_else(|| {
                    format!(
                        "column `{}` has no field in `{}`",
                        column.name(),
                        message.full_name()
                    )
                })?;
                let target = arrow_type(&field);
                let fits = target
                    .as_ref()
                    .is_some_and(|t| arrow::compute::can_cast_types(column.data_type(), t));
                match target {
                    Some(target) if fits => Ok((field, target)),
                    _ => Err(format!(
                        "column `{}` ({}) cannot be written to field `{}`",
                        column.name(),
                        column.data_type(),
                        field.name()
                    )),
                }
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(|why| {
                self.error(format!(
                    "the output columns do not fit subject `{}`'s schema id {id}: {why}",
                    self.schema.subject
                ))
            })?;
        tracing::info!(sink = %self.sink, subject = %self.schema.subject, schema_id = id, message = %message.full_name(), "writing Protobuf");
        self.ready = Some((id, message, fields));
        Ok(())
    }

    /// One framed message per row of `rows` (the projected output columns).
    pub fn encode(&self, rows: &RecordBatch) -> Result<Vec<Vec<u8>>, SinkError> {
        let (id, message, fields) = self
            .ready
            .as_ref()
            .ok_or_else(|| self.error("encoding before the schema was registered".into()))?;
        let columns = rows
            .columns()
            .iter()
            .zip(fields)
            .map(|(column, (_, target))| cast(column, target))
            .collect::<Result<Vec<ArrayRef>, _>>()?;
        let mut prefix = vec![0];
        prefix.extend_from_slice(&id.to_be_bytes());
        prefix.push(0); // message indexes: the file's first message
        (0..rows.num_rows())
            .map(|row| {
                let mut out = DynamicMessage::new(message.clone());
                for (column, (field, _)) in columns.iter().zip(fields) {
                    if let Some(value) = field_value(column, row, field) {
                        out.try_set_field(field, value)
                            .map_err(|e| self.error(e.to_string()))?;
                    }
                }
                let mut bytes = prefix.clone();
                out.encode(&mut bytes)
                    .map_err(|e| self.error(e.to_string()))?;
                Ok(bytes)
            })
            .collect()
    }
}

/// The Arrow type a field's values are cast to before encoding (`None`: no column fits).
fn arrow_type(field: &FieldDescriptor) -> Option<DataType> {
    let element = kind_type(&field.kind())?;
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            return None;
        };
        let pair = Fields::from(vec![
            Field::new(
                "key",
                kind_type(&entry.map_entry_key_field().kind())?,
                false,
            ),
            Field::new(
                "value",
                kind_type(&entry.map_entry_value_field().kind())?,
                true,
            ),
        ]);
        return Some(DataType::Map(
            Arc::new(Field::new("entries", DataType::Struct(pair), false)),
            false,
        ));
    }
    Some(if field.is_list() {
        DataType::List(Arc::new(Field::new("item", element, true)))
    } else {
        element
    })
}

fn kind_type(kind: &Kind) -> Option<DataType> {
    Some(match kind {
        Kind::Double => DataType::Float64,
        Kind::Float => DataType::Float32,
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => DataType::Int32,
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => DataType::Int64,
        Kind::Uint32 | Kind::Fixed32 => DataType::UInt32,
        Kind::Uint64 | Kind::Fixed64 => DataType::UInt64,
        Kind::Bool => DataType::Boolean,
        Kind::String | Kind::Enum(_) => DataType::Utf8,
        Kind::Bytes => DataType::Binary,
        Kind::Message(m) if m.full_name() == "google.protobuf.Timestamp" => {
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        }
        Kind::Message(m) if m.is_map_entry() => return None,
        Kind::Message(m) => DataType::Struct(
            m.fields()
                .map(|f| Some(Field::new(f.name(), arrow_type(&f)?, true)))
                .collect::<Option<Fields>>()?,
        ),
    })
}

/// Row `row` of a cast column as the field's value; `None` for a null (field left unset).
fn field_value(column: &ArrayRef, row: usize, field: &FieldDescriptor) -> Option<Value> {
    if column.is_null(row) {
        return None;
    }
    let kind = field.kind();
    if field.is_map() {
        let Kind::Message(entry) = &kind else {
            return None;
        };
        let entries = column.as_map().value(row);
        let (keys, values) = (entries.column(0), entries.column(1));
        let (key_kind, value_kind) = (
            entry.map_entry_key_field().kind(),
            entry.map_entry_value_field().kind(),
        );
        let map = (0..entries.len())
            .filter_map(|i| {
                let key = element(keys, i, &key_kind)?.into_map_key()?;
                Some((key, element(values, i, &value_kind)?))
            })
            .collect();
        return Some(Value::Map(map));
    }
    if field.is_list() {
        let items = column.as_list::<i32>().value(row);
        return Some(Value::List(
            (0..items.len())
                .filter_map(|i| element(&items, i, &kind))
                .collect(),
        ));
    }
    element(column, row, &kind)
}

/// One value of `kind` from a column cast by [`arrow_type`].
fn element(column: &ArrayRef, row: usize, kind: &Kind) -> Option<Value> {
    if column.is_null(row) {
        return None;
    }
    Some(match kind {
        Kind::Double => Value::F64(column.as_primitive::<Float64Type>().value(row)),
        Kind::Float => Value::F32(column.as_primitive::<Float32Type>().value(row)),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(column.as_primitive::<Int32Type>().value(row))
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(column.as_primitive::<Int64Type>().value(row))
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(column.as_primitive::<UInt32Type>().value(row)),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(column.as_primitive::<UInt64Type>().value(row)),
        Kind::Bool => Value::Bool(column.as_boolean().value(row)),
        Kind::String => Value::String(column.as_string::<i32>().value(row).to_owned()),
        Kind::Bytes => Value::Bytes(column.as_binary::<i32>().value(row).to_vec().into()),
        Kind::Enum(e) => {
            let name = column.as_string::<i32>().value(row);
            Value::EnumNumber(
                e.get_value_by_name(name)
                    .map(|v| v.number())
                    .or_else(|| name.parse().ok())?,
            )
        }
        Kind::Message(m) if m.full_name() == "google.protobuf.Timestamp" => {
            let micros = column.as_primitive::<TimestampMicrosecondType>().value(row);
            let mut stamp = DynamicMessage::new(m.clone());
            stamp.set_field_by_number(1, Value::I64(micros.div_euclid(1_000_000)));
            stamp.set_field_by_number(2, Value::I32((micros.rem_euclid(1_000_000) * 1_000) as i32));
            Value::Message(stamp)
        }
        Kind::Message(m) => {
            let parts = column.as_struct();
            let mut message = DynamicMessage::new(m.clone());
            for (child, field) in parts.columns().iter().zip(m.fields()) {
                if let Some(value) = field_value(child, row, &field) {
                    message.try_set_field(&field, value).ok()?;
                }
            }
            Value::Message(message)
        }
    })
}

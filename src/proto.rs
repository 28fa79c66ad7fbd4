//! Protobuf schemas: a declared `.proto` file compiled in-process (protox, no protoc),
//! registry schemas (`.proto` text or a base64 `FileDescriptorProto`) parsed into
//! descriptor pools with the well-known types, and the Arrow schema of a message.
//!
//! Arrow types: `double`/`float` -> Float64/Float32; `int32`, `sint32`, `sfixed32` ->
//! Int32; the 64-bit signed ones -> Int64; `uint32`/`fixed32` -> UInt32; `uint64`/`fixed64`
//! -> UInt64; `bool`; `string` -> Utf8; `bytes` -> Binary; an enum -> Utf8 (its value's
//! name); `google.protobuf.Timestamp` -> Timestamp(µs, UTC); the wrappers
//! (`google.protobuf.Int64Value`, ...) -> their value, nullable; other messages -> Struct;
//! `repeated` -> List; `map<K, V>` -> Map. A field with presence (a message, `optional`, a
//! `oneof` member) is nullable; a plain proto3 scalar is not (it holds its default).

use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use base64::Engine;
use prost::Message as _;
use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};

/// The declared `.proto` file's reader message (`message`, else the file's first) and
/// its Arrow form. The file is compiled in-process; imports resolve from its directory
/// and the well-known types.
pub fn load(
    path: &std::path::Path,
    message: Option<&str>,
) -> Result<(SchemaRef, MessageDescriptor), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let pool = protox::Compiler::new([dir])
        .and_then(|mut compiler| {
            compiler.include_imports(true).open_file(&name)?;
            Ok(compiler.descriptor_pool())
        })
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let file = pool
        .get_file_by_name(&name)
        .ok_or_else(|| format!("{}: not compiled", path.display()))?;
    let reader = match message {
        Some(wanted) => pool.get_message_by_name(wanted).ok_or_else(|| {
            let names: Vec<String> = file.messages().map(|m| m.full_name().to_owned()).collect();
            format!(
                "{}: no message `{wanted}` (decode.message), expected one of: {}",
                path.display(),
                names.join(", ")
            )
        })?,
        None => file
            .messages()
            .next()
            .ok_or_else(|| format!("{}: declares no message", path.display()))?,
    };
    let schema = schema(&reader).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(f) = schema.fields().iter().find(|f| f.name().starts_with('_')) {
        return Err(format!(
            "{}: field `{}`: names starting with `_` are reserved for provenance columns",
            path.display(),
            f.name()
        ));
    }
    Ok((Arc::new(schema), reader))
}

/// A registry schema (`.proto` text or a base64 `FileDescriptorProto`) in a pool with the
/// well-known types.
pub(crate) fn writer_pool(id: u32, schema: &str) -> Result<DescriptorPool, String> {
    let unusable = |why: String| format!("writer schema id {id} cannot be used: {why}");
    let file = match base64::engine::general_purpose::STANDARD.decode(schema.trim()) {
        Ok(bytes) => prost_types::FileDescriptorProto::decode(bytes.as_slice())
            .map_err(|e| unusable(format!("not a FileDescriptorProto: {e}")))?,
        Err(_) => protox_parse::parse(&format!("schema-{id}.proto"), schema)
            .map_err(|e| unusable(format!("not a .proto file: {e}")))?,
    };
    let mut pool = DescriptorPool::global();
    pool.add_file_descriptor_proto(file)
        .map_err(|e| unusable(e.to_string()))?;
    Ok(pool)
}

/// Nesting deeper than this is refused (a recursive message has no Arrow type).
const MAX_DEPTH: usize = 32;

const TIMESTAMP: &str = "google.protobuf.Timestamp";

/// The Arrow schema of `message`'s fields, in field-number order of declaration.
pub(crate) fn schema(message: &MessageDescriptor) -> Result<Schema, String> {
    Ok(Schema::new(fields(message, 0)?))
}

fn fields(message: &MessageDescriptor, depth: usize) -> Result<Fields, String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "`{}` nests more than {MAX_DEPTH} levels (a recursive message has no Arrow type)",
            message.full_name()
        ));
    }
    message
        .fields()
        .map(|field| {
            let data_type = field_type(&field, depth)?;
            Ok(Field::new(field.name(), data_type, nullable(&field)))
        })
        .collect()
}

/// Whether a field can be null: it has presence and is not a list or map.
fn nullable(field: &FieldDescriptor) -> bool {
    !field.is_list() && !field.is_map() && field.supports_presence()
}

fn field_type(field: &FieldDescriptor, depth: usize) -> Result<DataType, String> {
    let kind = field.kind();
    if field.is_map() {
        let Kind::Message(entry) = &kind else {
            return Err(format!("map field `{}` has no entry message", field.name()));
        };
        let key = entry.map_entry_key_field();
        let value = entry.map_entry_value_field();
        let entries = Fields::from(vec![
            Field::new("key", kind_type(&key.kind(), depth + 1)?, false),
            Field::new("value", kind_type(&value.kind(), depth + 1)?, true),
        ]);
        return Ok(DataType::Map(
            Arc::new(Field::new("entries", DataType::Struct(entries), false)),
            false,
        ));
    }
    let element = kind_type(&kind, depth)?;
    Ok(if field.is_list() {
        DataType::List(Arc::new(Field::new("item", element, true)))
    } else {
        element
    })
}

/// The wrapper message's value kind, for `google.protobuf.*Value`.
pub(crate) fn wrapped(message: &MessageDescriptor) -> Option<Kind> {
    let name = message.full_name().strip_prefix("google.protobuf.")?;
    matches!(
        name,
        "DoubleValue"
            | "FloatValue"
            | "Int64Value"
            | "UInt64Value"
            | "Int32Value"
            | "UInt32Value"
            | "BoolValue"
            | "StringValue"
            | "BytesValue"
    )
    .then(|| message.get_field(1).map(|f| f.kind()))
    .flatten()
}

fn kind_type(kind: &Kind, depth: usize) -> Result<DataType, String> {
    Ok(match kind {
        Kind::Double => DataType::Float64,
        Kind::Float => DataType::Float32,
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => DataType::Int32,
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => DataType::Int64,
        Kind::Uint32 | Kind::Fixed32 => DataType::UInt32,
        Kind::Uint64 | Kind::Fixed64 => DataType::UInt64,
        Kind::Bool => DataType::Boolean,
        Kind::String | Kind::Enum(_) => DataType::Utf8,
        Kind::Bytes => DataType::Binary,
        Kind::Message(m) if m.full_name() == TIMESTAMP => {
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        }
        Kind::Message(m) => match wrapped(m) {
            Some(inner) => kind_type(&inner, depth)?,
            None => DataType::Struct(fields(m, depth + 1)?),
        },
    })
}

/// A `.proto` file declaring message `full_name` (`package.Name`) with one field per
/// column of `columns`, numbered in column order: the schema a `kafka` sink with
/// `format: protobuf` registers. Nullable scalars are `optional` (explicit presence);
/// timestamps are `google.protobuf.Timestamp`; lists `repeated`; structs nested messages;
/// maps `map<K, V>`.
pub fn derive(full_name: &str, columns: &Schema) -> Result<String, String> {
    let (package, name) = full_name.rsplit_once('.').unwrap_or(("", full_name));
    let mut nested = Vec::new();
    let body = message_body(columns.fields(), &mut nested, 1)?;
    let mut text = String::from("syntax = \"proto3\";\n");
    if !package.is_empty() {
        text += &format!("package {package};\n");
    }
    let stamp = "google.protobuf.Timestamp";
    if body.contains(stamp) || nested.iter().any(|n| n.contains(stamp)) {
        text += "import \"google/protobuf/timestamp.proto\";\n";
    }
    text += &format!("\nmessage {name} {{\n");
    for message in &nested {
        text += message;
    }
    text += &body;
    text += "}\n";
    Ok(text)
}

/// The fields of a message (indented `depth` levels); nested messages go to `nested`.
fn message_body(fields: &Fields, nested: &mut Vec<String>, depth: usize) -> Result<String, String> {
    let indent = "  ".repeat(depth);
    let mut body = String::new();
    for (i, field) in fields.iter().enumerate() {
        let name = field.name();
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "column `{name}` is not a protobuf field name (letters, digits, `_`)"
            ));
        }
        let number = i + 1;
        let line = match field.data_type() {
            DataType::List(item) | DataType::LargeList(item) | DataType::FixedSizeList(item, _) => {
                let element = scalar_type(item.data_type(), name, nested, depth)?;
                format!("repeated {element} {name} = {number};")
            }
            DataType::Map(entries, _) => {
                let DataType::Struct(pair) = entries.data_type() else {
                    return Err(format!("column `{name}`: a map without entries"));
                };
                let key = scalar_type(pair[0].data_type(), name, nested, depth)?;
                let value =
                    scalar_type(pair[1].data_type(), &format!("{name}_value"), nested, depth)?;
                format!("map<{key}, {value}> {name} = {number};")
            }
            other => {
                let kind = scalar_type(other, name, nested, depth)?;
                let message =
                    kind.contains('.') || kind.chars().next().is_some_and(char::is_uppercase);
                if field.is_nullable() && !message {
                    format!("optional {kind} {name} = {number};")
                } else {
                    format!("{kind} {name} = {number};")
                }
            }
        };
        body += &format!("{indent}{line}\n");
    }
    Ok(body)
}

/// The protobuf type of one value of `data_type` (a struct becomes a nested message named
/// after `column`).
fn scalar_type(
    data_type: &DataType,
    column: &str,
    nested: &mut Vec<String>,
    depth: usize,
) -> Result<String, String> {
    Ok(match data_type {
        DataType::Boolean => "bool".into(),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "int32".into(),
        DataType::Int64 => "int64".into(),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 => "uint32".into(),
        DataType::UInt64 => "uint64".into(),
        DataType::Float16 | DataType::Float32 => "float".into(),
        DataType::Float64 => "double".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytes".into(),
        DataType::Timestamp(_, _) => "google.protobuf.Timestamp".into(),
        DataType::Struct(fields) => {
            let name: String = column
                .split('_')
                .filter(|part| !part.is_empty())
                .map(|part| {
                    let mut chars = part.chars();
                    chars
                        .next()
                        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                        .unwrap_or_default()
                })
                .collect();
            let name = if name.is_empty() {
                "Value".to_owned()
            } else {
                name
            };
            let mut inner = Vec::new();
            let body = message_body(fields, &mut inner, depth + 1)?;
            let indent = "  ".repeat(depth);
            let mut message = format!("{indent}message {name} {{\n");
            for m in inner {
                message += &m;
            }
            message += &body;
            message += &format!("{indent}}}\n");
            nested.push(message);
            name
        }
        other => {
            return Err(format!(
                "column `{column}` is {other}, which has no protobuf form here"
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_derived_proto_compiles_and_reads_back_as_the_same_columns() {
        let point = Fields::from(vec![
            Field::new("x", DataType::Float64, false),
            Field::new("label", DataType::Utf8, true),
        ]);
        let entries = Fields::from(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("value", DataType::Int64, true),
        ]);
        let columns = Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("score", DataType::Float32, true),
            Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ),
            Field::new(
                "embedding",
                DataType::new_list(DataType::Float32, true),
                false,
            ),
            Field::new("first_point", DataType::Struct(point), true),
            Field::new(
                "counts",
                DataType::Map(
                    Arc::new(Field::new("entries", DataType::Struct(entries), false)),
                    false,
                ),
                false,
            ),
            Field::new("_offset", DataType::Int64, false),
        ]);
        let text = derive("acme.Out", &columns).unwrap();
        for line in [
            "package acme;",
            "import \"google/protobuf/timestamp.proto\";",
            "optional float score = 2;",
            "google.protobuf.Timestamp at = 3;",
            "repeated float embedding = 4;",
            "message FirstPoint {",
            "FirstPoint first_point = 5;",
            "map<string, int64> counts = 6;",
            "int64 _offset = 7;",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
        let pool = writer_pool(1, &text).unwrap();
        let message = pool.get_message_by_name("acme.Out").unwrap();
        let back = schema(&message).unwrap();
        let names: Vec<&str> = back.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "id",
                "score",
                "at",
                "embedding",
                "first_point",
                "counts",
                "_offset"
            ]
        );
        assert!(back.field_with_name("score").unwrap().is_nullable());
        assert!(!back.field_with_name("id").unwrap().is_nullable());
    }

    #[test]
    fn columns_without_a_protobuf_form_are_named() {
        let bad_name = Schema::new(vec![Field::new("sentiment.label", DataType::Utf8, true)]);
        assert!(derive("a.B", &bad_name)
            .unwrap_err()
            .contains("`sentiment.label`"));
        let nested_list = Schema::new(vec![Field::new(
            "m",
            DataType::new_list(DataType::new_list(DataType::Int32, true), true),
            true,
        )]);
        assert!(derive("a.B", &nested_list)
            .unwrap_err()
            .contains("column `m`"));
    }
}

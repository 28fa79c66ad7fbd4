//! Record schema files (`schemas/*.json`, `schemas/*.avsc`) and the Arrow schemas derived
//! from them.
//!
//! A schema file declares the fields of one topic's JSON records (format in
//! `schemas/README.md`), or is an Avro schema (`.avsc`): the reader schema Avro records
//! are resolved to, its Arrow form as `arrow-avro` decodes it. Decoding appends the provenance columns every row keeps
//! (`_topic`, `_partition`, `_offset`, `_timestamp`), so [`with_provenance`] is the
//! schema of decoded batches and of what sinks receive.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;

use crate::config::{HeaderColumn, HeaderType};

pub(crate) const TOPIC_COLUMN: &str = "_topic";
pub(crate) const PARTITION_COLUMN: &str = "_partition";
pub(crate) const OFFSET_COLUMN: &str = "_offset";
pub(crate) const TIMESTAMP_COLUMN: &str = "_timestamp";

/// Whether `name` is one of the provenance columns every row carries.
pub(crate) fn is_provenance(name: &str) -> bool {
    [
        TOPIC_COLUMN,
        PARTITION_COLUMN,
        OFFSET_COLUMN,
        TIMESTAMP_COLUMN,
    ]
    .contains(&name)
}

/// Why a schema file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read schema file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("schema file {path} is not a valid schema: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("schema file {path}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: FieldError,
    },
}

/// A field declaration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FieldError {
    #[error("field `{0}` is declared twice")]
    Twice(String),
    #[error(
        "field `{path}`: unknown type `{name}`, expected one of {}, {{\"list\": TYPE}} or {{\"struct\": [FIELDS]}}",
        NAMED_TYPES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    )]
    UnknownType { path: String, name: String },
    #[error("field `{0}`: names starting with `_` are reserved for provenance columns")]
    Reserved(String),
    #[error("not a usable Avro record schema: {0}")]
    Avro(String),
}

/// The JSON document in a schema file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaFile {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    doc: Option<String>,
    fields: Vec<FieldSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldSpec {
    name: String,
    #[serde(rename = "type")]
    data_type: TypeSpec,
    /// Default: true. A non-nullable field missing from a record sends it to dead letters.
    #[serde(default = "yes")]
    nullable: bool,
    #[serde(default)]
    #[allow(dead_code)]
    doc: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TypeSpec {
    Named(String),
    List { list: Box<TypeSpec> },
    Struct { r#struct: Vec<FieldSpec> },
}

fn yes() -> bool {
    true
}

/// Names accepted for `"type"`, with their Arrow type.
/// A type name and the Arrow type it stands for.
type NamedType = (&'static str, fn() -> DataType);

const NAMED_TYPES: &[NamedType] = &[
    ("bool", || DataType::Boolean),
    ("int8", || DataType::Int8),
    ("int16", || DataType::Int16),
    ("int32", || DataType::Int32),
    ("int64", || DataType::Int64),
    ("uint8", || DataType::UInt8),
    ("uint16", || DataType::UInt16),
    ("uint32", || DataType::UInt32),
    ("uint64", || DataType::UInt64),
    ("float32", || DataType::Float32),
    ("float64", || DataType::Float64),
    ("utf8", || DataType::Utf8),
    ("string", || DataType::Utf8),
    ("binary", || DataType::Binary),
    ("date32", || DataType::Date32),
    ("timestamp_ms", || {
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
    }),
    ("timestamp_us", || {
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    }),
];

/// A loaded record schema: its name and the Arrow schema of the record fields.
#[derive(Debug, Clone)]
pub struct RecordSchema {
    pub name: String,
    pub fields: SchemaRef,
    /// The Avro schema's JSON, for a `.avsc` file.
    pub avro: Option<String>,
}

/// Reads and checks a schema file.
pub fn load(path: &Path) -> Result<RecordSchema, SchemaError> {
    let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Read {
        path: path.to_owned(),
        source,
    })?;
    let is_avro = path.extension().is_some_and(|e| e == "avsc");
    let parsed = if is_avro {
        parse_avro(&text)
    } else {
        parse(&text)
    };
    parsed.map_err(|err| match err {
        ParseError::Json(source) => SchemaError::Parse {
            path: path.to_owned(),
            source,
        },
        ParseError::Invalid(source) => SchemaError::Invalid {
            path: path.to_owned(),
            source,
        },
    })
}

enum ParseError {
    Json(serde_json::Error),
    Invalid(FieldError),
}

fn parse(text: &str) -> Result<RecordSchema, ParseError> {
    let file: SchemaFile = serde_json::from_str(text).map_err(ParseError::Json)?;
    let fields = to_fields(&file.fields, "").map_err(ParseError::Invalid)?;
    if let Some(f) = fields.iter().find(|f| f.name().starts_with('_')) {
        return Err(ParseError::Invalid(FieldError::Reserved(f.name().clone())));
    }
    Ok(RecordSchema {
        name: file.name,
        fields: Arc::new(Schema::new(fields)),
        avro: None,
    })
}

/// An Avro record schema: its fields as Arrow decodes them.
fn parse_avro(text: &str) -> Result<RecordSchema, ParseError> {
    use arrow_avro::reader::ReaderBuilder;
    use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
    let json: serde_json::Value = serde_json::from_str(text).map_err(ParseError::Json)?;
    let invalid = |message: String| ParseError::Invalid(FieldError::Avro(message));
    if json["type"] != "record" {
        return Err(invalid("the top level must be a record".into()));
    }
    let name = json["name"].as_str().unwrap_or_default().to_owned();
    let avro = AvroSchema::new(text.to_owned());
    let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
    store
        .set(Fingerprint::Id(0), avro)
        .map_err(|e| invalid(e.to_string()))?;
    let decoder = ReaderBuilder::new()
        .with_writer_schema_store(store)
        .with_active_fingerprint(Fingerprint::Id(0))
        .build_decoder()
        .map_err(|e| invalid(e.to_string()))?;
    let fields = decoder.schema().fields().clone();
    if let Some(f) = fields.iter().find(|f| f.name().starts_with('_')) {
        return Err(ParseError::Invalid(FieldError::Reserved(f.name().clone())));
    }
    Ok(RecordSchema {
        name,
        fields: Arc::new(Schema::new(fields)),
        avro: Some(text.to_owned()),
    })
}

/// The Arrow form of an Avro record schema (tests of the Avro decoder).
#[cfg(test)]
pub(crate) fn parse_avro_for_tests(text: &str) -> SchemaRef {
    match parse_avro(text) {
        Ok(record) => record.fields,
        Err(_) => panic!("not an Avro record schema: {text}"),
    }
}

fn to_fields(specs: &[FieldSpec], parent: &str) -> Result<Fields, FieldError> {
    let mut seen = std::collections::HashSet::new();
    let mut fields = Vec::with_capacity(specs.len());
    for spec in specs {
        let path = format!("{parent}{}", spec.name);
        if !seen.insert(spec.name.as_str()) {
            return Err(FieldError::Twice(path));
        }
        let data_type = to_type(&spec.data_type, &path)?;
        fields.push(Field::new(&spec.name, data_type, spec.nullable));
    }
    Ok(fields.into())
}

fn to_type(spec: &TypeSpec, path: &str) -> Result<DataType, FieldError> {
    match spec {
        TypeSpec::Named(name) => NAMED_TYPES
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, make)| make())
            .ok_or_else(|| FieldError::UnknownType {
                path: path.to_owned(),
                name: name.clone(),
            }),
        TypeSpec::List { list } => {
            let item = to_type(list, &format!("{path}[]"))?;
            Ok(DataType::List(Arc::new(Field::new("item", item, true))))
        }
        TypeSpec::Struct { r#struct } => {
            Ok(DataType::Struct(to_fields(r#struct, &format!("{path}."))?))
        }
    }
}

/// The provenance columns appended to every decoded row.
pub(crate) fn provenance_fields() -> [Field; 4] {
    [
        Field::new(TOPIC_COLUMN, DataType::Utf8, false),
        Field::new(PARTITION_COLUMN, DataType::Int32, false),
        Field::new(OFFSET_COLUMN, DataType::Int64, false),
        Field::new(
            TIMESTAMP_COLUMN,
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
    ]
}

/// Record fields followed by the provenance columns: the schema of decoded batches.
pub fn with_provenance(record: &Schema) -> SchemaRef {
    row_schema(record, &[])
}

/// The columns `headers` add (nullable: a record may not carry the header).
pub fn header_fields(headers: &[HeaderColumn]) -> Vec<Field> {
    headers
        .iter()
        .map(|h| {
            let data_type = match h.kind() {
                HeaderType::Utf8 => DataType::Utf8,
                HeaderType::Binary => DataType::Binary,
            };
            Field::new(h.column(), data_type, true)
        })
        .collect()
}

/// Record fields, the header columns, then the provenance columns: the schema of decoded
/// batches.
pub fn row_schema(record: &Schema, headers: &[HeaderColumn]) -> SchemaRef {
    let mut fields: Vec<Field> = record.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(header_fields(headers));
    fields.extend(provenance_fields());
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> RecordSchema {
        match parse(text) {
            Ok(s) => s,
            Err(ParseError::Json(e)) => panic!("json: {e}"),
            Err(ParseError::Invalid(e)) => panic!("invalid: {e}"),
        }
    }

    #[test]
    fn parses_scalar_list_and_struct_types() {
        let schema = parse_ok(
            r#"{"name": "t", "fields": [
                {"name": "id", "type": "utf8", "nullable": false},
                {"name": "ts", "type": "timestamp_ms"},
                {"name": "tags", "type": {"list": "string"}},
                {"name": "pos", "type": {"struct": [{"name": "x", "type": "float64"}]}}
            ]}"#,
        );
        let s = &schema.fields;
        assert!(!s.field(0).is_nullable());
        assert_eq!(
            s.field(1).data_type(),
            &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
        );
        assert!(matches!(s.field(2).data_type(), DataType::List(_)));
        assert!(matches!(s.field(3).data_type(), DataType::Struct(f) if f.len() == 1));
        let full = with_provenance(s);
        assert_eq!(full.fields().len(), 8);
        assert_eq!(full.field(6).name(), OFFSET_COLUMN);
    }

    #[test]
    fn unknown_types_and_reserved_names_are_rejected_with_the_field() {
        let err = |text: &str| match parse(text) {
            Err(ParseError::Invalid(m)) => m.to_string(),
            _ => panic!("expected an invalid schema"),
        };
        let unknown = err(r#"{"name": "t", "fields": [{"name": "a", "type": "int128"}]}"#);
        assert!(
            unknown.contains("field `a`: unknown type `int128`"),
            "{unknown}"
        );
        let reserved = err(r#"{"name": "t", "fields": [{"name": "_offset", "type": "int64"}]}"#);
        assert!(reserved.contains("reserved"), "{reserved}");
        let twice = err(
            r#"{"name": "t", "fields": [{"name": "a", "type": "int64"}, {"name": "a", "type": "utf8"}]}"#,
        );
        assert!(twice.contains("declared twice"), "{twice}");
    }
}

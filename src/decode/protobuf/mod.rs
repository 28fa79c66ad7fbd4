//! Protobuf records in the Confluent wire format -> Arrow rows, with `prost-reflect`.
//!
//! Each record is a magic byte `0`, the writer schema's 4-byte big-endian registry id, the
//! *message indexes* (zigzag varints: how many, then the path to the message type within
//! the schema's file; a lone `0` means the first message) and the protobuf body.
//!
//! The declared `.proto` file's message (`decode.message`, else its first) is the reader
//! type: bodies are decoded as that message, which is how protobuf itself resolves
//! versions (by field number: a field the writer added is skipped, one it removed reads
//! as its default or null, `int32` widens to `int64`). The writer schema (fetched by id
//! once, as for Avro: [`super::writers`]) is checked against the reader once per id and
//! message path: a field number whose type the two declare incompatibly (say `string` in
//! the writer, `int64` in the reader) makes that writer's records dead letters naming the
//! id and the field, instead of decoding garbage. Registry schemas may be `.proto` text
//! (Confluent's Java clients) or a base64 `FileDescriptorProto` (its Python client);
//! imports of the well-known types (`google/protobuf/*.proto`) resolve without
//! references; other references are not followed (such a schema is unusable, named).

mod arrow;
mod wire;

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use ::arrow::array::{ArrayRef, RecordBatch};
use ::arrow::datatypes::SchemaRef;
use ::arrow::error::ArrowError;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor};
use tokio_util::sync::CancellationToken;

use super::writers::{schema_id, PrepareError, WriterSchemas};
use super::{payload_within, Decoded, Rejected, RowLayout};
use crate::batch::{Batch, DeadLetterKind, RawBatch, RawRecord};
use crate::config::HeaderColumn;
use crate::proto::writer_pool;
use crate::schema_registry::SchemaRegistry;

/// Decodes Confluent-framed protobuf records as one reader message type.
#[derive(Debug)]
pub struct ProtobufDecoder {
    reader: MessageDescriptor,
    layout: RowLayout,
    max_record_bytes: usize,
    writers: WriterSchemas<DescriptorPool>,
    /// The wire reader, when the reader message is flat (the fast path).
    flat: Option<wire::FlatReader>,
    /// Whether a writer's message (by schema id and message indexes) reads as the reader
    /// type, and if not, why.
    fits: Mutex<HashMap<u32, Vec<PathVerdict>>>,
}

/// A message index path of a writer schema, and whether it reads as the reader type.
type PathVerdict = (Box<[i32]>, Result<(), String>);

/// A record's framing: schema id, message indexes and where the body starts.
struct Framing {
    id: u32,
    /// The message index path, inline (no allocation per record).
    path: [i32; MAX_PATH],
    depth: usize,
    body: usize,
}

/// The deepest message index path read (nesting deeper than this is not framed).
const MAX_PATH: usize = 16;

impl Framing {
    fn indexes(&self) -> &[i32] {
        &self.path[..self.depth]
    }
}

impl ProtobufDecoder {
    /// `reader`: the declared message; `record_schema`: its Arrow form.
    pub fn new(
        reader: MessageDescriptor,
        record_schema: SchemaRef,
        max_record_bytes: usize,
        registry: SchemaRegistry,
    ) -> Self {
        ProtobufDecoder {
            flat: wire::FlatReader::new(&reader),
            reader,
            layout: RowLayout::new(record_schema),
            max_record_bytes,
            writers: WriterSchemas::new("PROTOBUF", registry),
            fits: Mutex::new(HashMap::new()),
        }
    }

    /// Reports waiting for the registry to `stats` (its `/health`).
    pub fn with_stats(mut self, stats: std::sync::Arc<crate::telemetry::Stats>) -> Self {
        self.writers.set_stats(stats);
        self
    }

    /// Rows also carry these record headers as columns, after the record's fields.
    pub fn with_headers(mut self, headers: &[HeaderColumn]) -> Self {
        self.layout.set_headers(headers);
        self
    }

    pub fn output_schema(&self) -> &SchemaRef {
        &self.layout.output_schema
    }

    /// Makes writer schema `id` known without asking the registry (benches, tests).
    /// Returns why it cannot be used, if so.
    pub fn add_writer(&self, id: u32, schema: &str) -> Option<String> {
        let writer = writer_pool(id, schema);
        let unusable = writer.as_ref().err().cloned();
        self.writers.insert(id, writer);
        unusable
    }

    /// Fetches the writer schemas of `raw`'s records that are not known yet (see
    /// [`super::writers`]).
    pub async fn prepare(
        &self,
        raw: &RawBatch,
        shutdown: &CancellationToken,
    ) -> Result<(), PrepareError> {
        let ids = raw.records().filter_map(|r| schema_id(r.payload?));
        self.writers
            .prepare(ids, shutdown, |id, schema| writer_pool(id, &schema))
            .await
    }

    /// Decodes a batch whose writer schemas [`Self::prepare`] fetched. Errors are internal,
    /// never caused by bad input.
    pub fn decode(&self, raw: &RawBatch) -> Result<Batch, ArrowError> {
        let mut decoded = Decoded::new(&raw.provenance.tp, raw.len());
        let mut bodies: Vec<(RawRecord<'_>, &[u8], u32)> = Vec::with_capacity(raw.len());
        for record in raw.records() {
            match self.screen(&record) {
                Ok((body, id)) => bodies.push((record, body, id)),
                Err(reason) => decoded.reject(&record, reason),
            }
        }
        let flat = self
            .flat
            .as_ref()
            .and_then(|flat| self.read_flat(flat, &bodies, &mut decoded));
        let columns = match flat {
            Some(columns) => columns,
            None => self.read_messages(&bodies, &mut decoded)?,
        };
        if let Some(columns) = columns {
            decoded.parts.push(RecordBatch::try_new(
                self.layout.record_schema.clone(),
                columns,
            )?);
        }
        self.layout.finish(decoded, raw)
    }

    /// The fast path: `None` when a record the wire reader refuses is a valid message
    /// after all (say, with a deprecated group), so the batch takes the general path.
    fn read_flat<'a>(
        &self,
        flat: &wire::FlatReader,
        bodies: &[(RawRecord<'a>, &[u8], u32)],
        decoded: &mut Decoded<'a>,
    ) -> Option<Option<Vec<ArrayRef>>> {
        let mut builders = flat.builders(bodies.len());
        let mut good = Vec::with_capacity(bodies.len());
        let mut bad = Vec::new();
        for (record, body, id) in bodies {
            match flat.read(body, &mut builders) {
                Ok(()) => good.push(*record),
                Err(()) => match self.body(body, *id) {
                    Ok(_) => return None,
                    Err(reason) => bad.push((*record, reason)),
                },
            }
        }
        for (record, reason) in bad {
            decoded.reject(&record, reason);
        }
        if good.is_empty() {
            return Some(None);
        }
        decoded.good = good;
        Some(Some(builders.finish()))
    }

    /// The general path: each body as a message, then the messages as columns.
    fn read_messages<'a>(
        &self,
        bodies: &[(RawRecord<'a>, &[u8], u32)],
        decoded: &mut Decoded<'a>,
    ) -> Result<Option<Vec<ArrayRef>>, ArrowError> {
        let mut messages = Vec::with_capacity(bodies.len());
        let mut good = Vec::with_capacity(bodies.len());
        for (record, body, id) in bodies {
            match self.body(body, *id) {
                Ok(message) => {
                    messages.push(message);
                    good.push(*record);
                }
                Err(reason) => decoded.reject(record, reason),
            }
        }
        if messages.is_empty() {
            return Ok(None);
        }
        decoded.good = good;
        arrow::columns(&self.reader, &self.layout.record_schema, &messages).map(Some)
    }

    /// A body as the reader message, or why it is a dead letter.
    fn body(&self, body: &[u8], id: u32) -> Result<DynamicMessage, Rejected> {
        DynamicMessage::decode(self.reader.clone(), body).map_err(|e| {
            (
                DeadLetterKind::MalformedProtobuf,
                format!(
                    "not a valid `{}` message (schema id {id}): {e}",
                    self.reader.full_name(),
                ),
            )
        })
    }

    /// A record's body and schema id, once its framing and writer schema check out.
    fn screen<'a>(&self, record: &RawRecord<'a>) -> Result<(&'a [u8], u32), Rejected> {
        let payload = payload_within(record, self.max_record_bytes)?;
        let framing = framing(payload).ok_or_else(|| {
            (
                DeadLetterKind::NotFramed,
                "not in the Confluent wire format (magic byte 0, a 4-byte schema id and the \
                 message indexes)"
                    .to_owned(),
            )
        })?;
        self.fits(&framing)
            .map_err(|reason| (DeadLetterKind::UnknownSchema, reason))?;
        Ok((&payload[framing.body..], framing.id))
    }

    /// Whether the writer message a record names reads as the reader type (cached).
    fn fits(&self, framing: &Framing) -> Result<(), String> {
        let mut fits = self.fits.lock().unwrap_or_else(PoisonError::into_inner);
        let paths = fits.entry(framing.id).or_default();
        if let Some((_, known)) = paths.iter().find(|(path, _)| **path == *framing.indexes()) {
            return known.clone();
        }
        let verdict = match self.writers.read().get(&framing.id) {
            None => return Err(format!("schema id {} was not fetched", framing.id)),
            Some(Err(reason)) => Err(reason.clone()),
            Some(Ok(pool)) => writer_message(pool, framing.indexes())
                .and_then(|writer| compatible(&writer, &self.reader, 0))
                .map_err(|why| {
                    format!(
                        "writer schema id {} cannot be read as the declared schema: {why}",
                        framing.id
                    )
                }),
        };
        paths.push((framing.indexes().into(), verdict.clone()));
        verdict
    }
}

/// The message a record's indexes name in its writer schema's file (the pool's last).
fn writer_message(pool: &DescriptorPool, indexes: &[i32]) -> Result<MessageDescriptor, String> {
    let file = pool
        .files()
        .last()
        .ok_or_else(|| "the schema has no file".to_owned())?;
    let mut candidates: Vec<MessageDescriptor> = file.messages().collect();
    let mut found = None;
    for &index in indexes {
        let message = usize::try_from(index)
            .ok()
            .and_then(|i| candidates.get(i).cloned())
            .ok_or_else(|| format!("message index path {indexes:?} is not in the schema"))?;
        candidates = message.child_messages().collect();
        found = Some(message);
    }
    found.ok_or_else(|| "the record names no message".to_owned())
}

/// Whether messages written as `writer` read as `reader`: every field number both declare
/// has the same cardinality and compatible types (Confluent's rules: `int32`, `uint32`,
/// `int64`, `uint64`, `bool` and enums interchange; `sint32`/`sint64`; `fixed32`/`sfixed32`;
/// `fixed64`/`sfixed64`; `string`/`bytes`; messages field by field).
fn compatible(
    writer: &MessageDescriptor,
    reader: &MessageDescriptor,
    depth: usize,
) -> Result<(), String> {
    if depth > 32 {
        return Ok(());
    }
    for field in reader.fields() {
        let Some(written) = writer.get_field(field.number()) else {
            continue;
        };
        let shape = |f: &prost_reflect::FieldDescriptor| (f.is_list(), f.is_map());
        let mismatch = || {
            format!(
                "field `{}` ({}) is {} in the writer, {} in the reader",
                field.name(),
                field.number(),
                describe(&written),
                describe(&field)
            )
        };
        if shape(&written) != shape(&field) {
            return Err(mismatch());
        }
        match (written.kind(), field.kind()) {
            (Kind::Message(w), Kind::Message(r)) => compatible(&w, &r, depth + 1)
                .map_err(|why| format!("in field `{}`: {why}", field.name()))?,
            (w, r) if group(&w) == group(&r) => {}
            _ => return Err(mismatch()),
        }
    }
    Ok(())
}

/// Kinds that read each other's wire values.
fn group(kind: &Kind) -> u8 {
    match kind {
        Kind::Int32 | Kind::Uint32 | Kind::Int64 | Kind::Uint64 | Kind::Bool | Kind::Enum(_) => 1,
        Kind::Sint32 | Kind::Sint64 => 2,
        Kind::Fixed32 | Kind::Sfixed32 => 3,
        Kind::Fixed64 | Kind::Sfixed64 => 4,
        Kind::String | Kind::Bytes => 5,
        Kind::Float => 6,
        Kind::Double => 7,
        Kind::Message(_) => 8,
    }
}

fn describe(field: &prost_reflect::FieldDescriptor) -> String {
    let kind = match field.kind() {
        Kind::Message(m) => m.full_name().to_owned(),
        Kind::Enum(e) => e.full_name().to_owned(),
        other => format!("{other:?}").to_lowercase(),
    };
    if field.is_list() {
        format!("repeated {kind}")
    } else {
        kind
    }
}

/// A record's framing, if it has one.
fn framing(payload: &[u8]) -> Option<Framing> {
    let id = schema_id(payload)?;
    let mut at = 5;
    let count = zigzag(payload, &mut at)?;
    let mut path = [0; MAX_PATH];
    // Count 0 is the short form of the path [0].
    let depth = usize::try_from(count)
        .ok()
        .filter(|&c| c <= MAX_PATH)?
        .max(1);
    if count > 0 {
        for index in path.iter_mut().take(depth) {
            *index = i32::try_from(zigzag(payload, &mut at)?).ok()?;
        }
    }
    Some(Framing {
        id,
        path,
        depth,
        body: at,
    })
}

/// A zigzag varint at `at`, moving past it.
fn zigzag(bytes: &[u8], at: &mut usize) -> Option<i64> {
    let value = wire::varint(bytes, at)?;
    Some(((value >> 1) as i64) ^ -((value & 1) as i64))
}

#[cfg(test)]
mod tests;

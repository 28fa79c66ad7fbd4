//! The fast path for flat messages (every field a scalar, string, bytes, enum or
//! `google.protobuf.Timestamp`: the shape of most event topics): the protobuf wire format
//! read straight into Arrow builders, with no message object per record.
//!
//! A record's fields are read into a scratch row first (protobuf lets a field appear more
//! than once: the last value wins) and appended to the builders only when the whole record
//! has been read, so a record that turns out to be malformed leaves the columns as they
//! were and goes to the dead letters (the caller asks `prost-reflect` for the precise
//! reason). Unknown field numbers are skipped, as protobuf requires. Messages with lists,
//! maps, nested messages or wrappers take the general path ([`super::arrow`]).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Float32Builder, Float64Builder, Int32Builder,
    Int64Builder, StringBuilder, TimestampMicrosecondBuilder, UInt32Builder, UInt64Builder,
};
use prost_reflect::{EnumDescriptor, Kind, MessageDescriptor};

/// How one column's wire values are read.
#[derive(Debug, Clone)]
enum Reads {
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Sfixed32,
    Fixed64,
    Sfixed64,
    Float,
    Double,
    Bool,
    Text,
    Bytes,
    Enum(EnumDescriptor),
    Timestamp,
}

impl Reads {
    fn of(kind: &Kind) -> Option<Reads> {
        Some(match kind {
            Kind::Int32 => Reads::Int32,
            Kind::Int64 => Reads::Int64,
            Kind::Uint32 => Reads::Uint32,
            Kind::Uint64 => Reads::Uint64,
            Kind::Sint32 => Reads::Sint32,
            Kind::Sint64 => Reads::Sint64,
            Kind::Fixed32 => Reads::Fixed32,
            Kind::Sfixed32 => Reads::Sfixed32,
            Kind::Fixed64 => Reads::Fixed64,
            Kind::Sfixed64 => Reads::Sfixed64,
            Kind::Float => Reads::Float,
            Kind::Double => Reads::Double,
            Kind::Bool => Reads::Bool,
            Kind::String => Reads::Text,
            Kind::Bytes => Reads::Bytes,
            Kind::Enum(e) => Reads::Enum(e.clone()),
            Kind::Message(m) if m.full_name() == "google.protobuf.Timestamp" => Reads::Timestamp,
            Kind::Message(_) => return None,
        })
    }

    /// The wire type this column's values come in.
    fn wire_type(&self) -> u8 {
        match self {
            Reads::Fixed64 | Reads::Sfixed64 | Reads::Double => 1,
            Reads::Text | Reads::Bytes | Reads::Timestamp => 2,
            Reads::Fixed32 | Reads::Sfixed32 | Reads::Float => 5,
            _ => 0,
        }
    }
}

/// One value of a record, before it is appended.
#[derive(Debug, Clone, Copy)]
enum Scalar {
    Int(i64),
    Uint(u64),
    F32(f32),
    F64(f64),
    /// A byte range of the record.
    Span(usize, usize),
    Micros(i64),
}

struct Column {
    reads: Reads,
    /// Unset means null (the field has presence); otherwise the type's default.
    nullable: bool,
}

/// Reads flat messages of one type into columns.
#[derive(Debug)]
pub(super) struct FlatReader {
    columns: Vec<(Reads, bool)>,
    /// Column of each field number (index = number), for numbers up to 1024.
    by_number: Vec<Option<usize>>,
}

impl FlatReader {
    /// A reader for `message`, if every field is flat and numbered under 1024.
    pub(super) fn new(message: &MessageDescriptor) -> Option<FlatReader> {
        let mut columns = Vec::new();
        let mut by_number = Vec::new();
        for (index, field) in message.fields().enumerate() {
            if field.is_list() || field.is_map() {
                return None;
            }
            let reads = Reads::of(&field.kind())?;
            let number = usize::try_from(field.number()).ok().filter(|&n| n < 1024)?;
            if by_number.len() <= number {
                by_number.resize(number + 1, None);
            }
            by_number[number] = Some(index);
            columns.push((reads, field.supports_presence()));
        }
        Some(FlatReader { columns, by_number })
    }

    /// Column builders for `rows` records.
    pub(super) fn builders(&self, rows: usize) -> Builders {
        Builders {
            columns: self
                .columns
                .iter()
                .map(|(reads, nullable)| {
                    (
                        builder(reads, rows),
                        Column {
                            reads: reads.clone(),
                            nullable: *nullable,
                        },
                    )
                })
                .collect(),
            row: vec![None; self.columns.len()],
        }
    }

    /// Reads one record's body into `into`; `Err` (nothing appended) if it is malformed.
    pub(super) fn read(&self, body: &[u8], into: &mut Builders) -> Result<(), ()> {
        into.row.iter_mut().for_each(|v| *v = None);
        let mut at = 0;
        while at < body.len() {
            let key = varint(body, &mut at).ok_or(())?;
            let (number, wire) = (key >> 3, (key & 7) as u8);
            let column = usize::try_from(number)
                .ok()
                .and_then(|n| self.by_number.get(n).copied().flatten());
            let Some(column) = column else {
                skip(body, &mut at, wire)?;
                continue;
            };
            let reads = &self.columns[column].0;
            if wire != reads.wire_type() {
                return Err(());
            }
            into.row[column] = Some(match wire {
                0 => {
                    let v = varint(body, &mut at).ok_or(())?;
                    match reads {
                        Reads::Uint32 => Scalar::Uint(u64::from(v as u32)),
                        Reads::Uint64 => Scalar::Uint(v),
                        Reads::Sint32 | Reads::Sint64 => {
                            Scalar::Int(((v >> 1) as i64) ^ -((v & 1) as i64))
                        }
                        Reads::Int32 | Reads::Enum(_) => Scalar::Int(i64::from(v as i32)),
                        Reads::Bool => Scalar::Uint(u64::from(v != 0)),
                        _ => Scalar::Int(v as i64),
                    }
                }
                1 => {
                    let bytes: [u8; 8] =
                        body.get(at..at + 8).ok_or(())?.try_into().map_err(|_| ())?;
                    at += 8;
                    match reads {
                        Reads::Double => Scalar::F64(f64::from_le_bytes(bytes)),
                        Reads::Fixed64 => Scalar::Uint(u64::from_le_bytes(bytes)),
                        _ => Scalar::Int(i64::from_le_bytes(bytes)),
                    }
                }
                5 => {
                    let bytes: [u8; 4] =
                        body.get(at..at + 4).ok_or(())?.try_into().map_err(|_| ())?;
                    at += 4;
                    match reads {
                        Reads::Float => Scalar::F32(f32::from_le_bytes(bytes)),
                        Reads::Fixed32 => Scalar::Uint(u64::from(u32::from_le_bytes(bytes))),
                        _ => Scalar::Int(i64::from(i32::from_le_bytes(bytes))),
                    }
                }
                _ => {
                    let length =
                        usize::try_from(varint(body, &mut at).ok_or(())?).map_err(|_| ())?;
                    let end = at
                        .checked_add(length)
                        .filter(|&e| e <= body.len())
                        .ok_or(())?;
                    let span = (at, end);
                    at = end;
                    match reads {
                        Reads::Text => {
                            std::str::from_utf8(&body[span.0..span.1]).map_err(|_| ())?;
                            Scalar::Span(span.0, span.1)
                        }
                        Reads::Timestamp => Scalar::Micros(timestamp(&body[span.0..span.1])?),
                        _ => Scalar::Span(span.0, span.1),
                    }
                }
            });
        }
        into.append(body);
        Ok(())
    }
}

/// The builders of a batch's columns and the record being read.
pub(super) struct Builders {
    columns: Vec<(Builder, Column)>,
    row: Vec<Option<Scalar>>,
}

enum Builder {
    Int32(Int32Builder),
    Int64(Int64Builder),
    Uint32(UInt32Builder),
    Uint64(UInt64Builder),
    Float(Float32Builder),
    Double(Float64Builder),
    Bool(BooleanBuilder),
    Text(StringBuilder),
    Bytes(BinaryBuilder),
    Timestamp(TimestampMicrosecondBuilder),
}

fn builder(reads: &Reads, rows: usize) -> Builder {
    match reads {
        Reads::Int32 | Reads::Sint32 | Reads::Sfixed32 => {
            Builder::Int32(Int32Builder::with_capacity(rows))
        }
        Reads::Int64 | Reads::Sint64 | Reads::Sfixed64 => {
            Builder::Int64(Int64Builder::with_capacity(rows))
        }
        Reads::Uint32 | Reads::Fixed32 => Builder::Uint32(UInt32Builder::with_capacity(rows)),
        Reads::Uint64 | Reads::Fixed64 => Builder::Uint64(UInt64Builder::with_capacity(rows)),
        Reads::Float => Builder::Float(Float32Builder::with_capacity(rows)),
        Reads::Double => Builder::Double(Float64Builder::with_capacity(rows)),
        Reads::Bool => Builder::Bool(BooleanBuilder::with_capacity(rows)),
        Reads::Text | Reads::Enum(_) => {
            Builder::Text(StringBuilder::with_capacity(rows, rows * 16))
        }
        Reads::Bytes => Builder::Bytes(BinaryBuilder::with_capacity(rows, rows * 16)),
        Reads::Timestamp => Builder::Timestamp(
            TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
        ),
    }
}

impl Builders {
    /// Appends the scratch row: unset fields as null (with presence) or their default.
    fn append(&mut self, body: &[u8]) {
        for ((builder, column), value) in self.columns.iter_mut().zip(&self.row) {
            let value = match value {
                Some(v) => Some(*v),
                None if column.nullable => None,
                None => Some(match column.reads {
                    Reads::Float => Scalar::F32(0.0),
                    Reads::Double => Scalar::F64(0.0),
                    Reads::Text | Reads::Bytes => Scalar::Span(0, 0),
                    _ => Scalar::Int(0),
                }),
            };
            push(builder, &column.reads, value, body);
        }
    }

    /// The finished columns.
    pub(super) fn finish(self) -> Vec<ArrayRef> {
        self.columns
            .into_iter()
            .map(|(builder, _)| -> ArrayRef {
                match builder {
                    Builder::Int32(mut b) => Arc::new(b.finish()),
                    Builder::Int64(mut b) => Arc::new(b.finish()),
                    Builder::Uint32(mut b) => Arc::new(b.finish()),
                    Builder::Uint64(mut b) => Arc::new(b.finish()),
                    Builder::Float(mut b) => Arc::new(b.finish()),
                    Builder::Double(mut b) => Arc::new(b.finish()),
                    Builder::Bool(mut b) => Arc::new(b.finish()),
                    Builder::Text(mut b) => Arc::new(b.finish()),
                    Builder::Bytes(mut b) => Arc::new(b.finish()),
                    Builder::Timestamp(mut b) => Arc::new(b.finish()),
                }
            })
            .collect()
    }
}

fn int(value: Scalar) -> i64 {
    match value {
        Scalar::Int(v) | Scalar::Micros(v) => v,
        Scalar::Uint(v) => v as i64,
        _ => 0,
    }
}

fn uint(value: Scalar) -> u64 {
    match value {
        Scalar::Uint(v) => v,
        Scalar::Int(v) => v as u64,
        _ => 0,
    }
}

fn push(builder: &mut Builder, reads: &Reads, value: Option<Scalar>, body: &[u8]) {
    match builder {
        Builder::Int32(b) => b.append_option(value.map(|v| int(v) as i32)),
        Builder::Int64(b) => b.append_option(value.map(int)),
        Builder::Uint32(b) => b.append_option(value.map(|v| uint(v) as u32)),
        Builder::Uint64(b) => b.append_option(value.map(uint)),
        Builder::Float(b) => b.append_option(value.map(|v| match v {
            Scalar::F32(f) => f,
            _ => 0.0,
        })),
        Builder::Double(b) => b.append_option(value.map(|v| match v {
            Scalar::F64(f) => f,
            _ => 0.0,
        })),
        Builder::Bool(b) => b.append_option(value.map(|v| uint(v) != 0)),
        Builder::Timestamp(b) => b.append_option(value.map(int)),
        Builder::Bytes(b) => b.append_option(value.map(|v| match v {
            Scalar::Span(from, to) => &body[from..to],
            _ => &[][..],
        })),
        Builder::Text(b) => match (reads, value) {
            (_, None) => b.append_null(),
            (Reads::Enum(e), Some(v)) => {
                let number = int(v) as i32;
                match e.get_value(number) {
                    Some(named) => b.append_value(named.name()),
                    None => b.append_value(number.to_string()),
                }
            }
            (_, Some(Scalar::Span(from, to))) => {
                // Checked as UTF-8 when read; the default span is empty.
                b.append_value(std::str::from_utf8(&body[from..to]).unwrap_or_default())
            }
            (_, Some(_)) => b.append_value(""),
        },
    }
}

/// A `google.protobuf.Timestamp` body in microseconds.
fn timestamp(body: &[u8]) -> Result<i64, ()> {
    let (mut seconds, mut nanos) = (0i64, 0i64);
    let mut at = 0;
    while at < body.len() {
        let key = varint(body, &mut at).ok_or(())?;
        match (key >> 3, key & 7) {
            (1, 0) => seconds = varint(body, &mut at).ok_or(())? as i64,
            (2, 0) => nanos = i64::from(varint(body, &mut at).ok_or(())? as i32),
            (_, wire) => skip(body, &mut at, wire as u8)?,
        }
    }
    Ok(seconds
        .saturating_mul(1_000_000)
        .saturating_add(nanos / 1_000))
}

/// Skips a field's value of wire type `wire`.
fn skip(body: &[u8], at: &mut usize, wire: u8) -> Result<(), ()> {
    let step = match wire {
        0 => {
            varint(body, at).ok_or(())?;
            0
        }
        1 => 8,
        5 => 4,
        2 => usize::try_from(varint(body, at).ok_or(())?).map_err(|_| ())?,
        _ => return Err(()), // groups (deprecated) take the general path
    };
    *at = at
        .checked_add(step)
        .filter(|&e| e <= body.len())
        .ok_or(())?;
    Ok(())
}

/// A base-128 varint at `at`, moving past it.
pub(super) fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

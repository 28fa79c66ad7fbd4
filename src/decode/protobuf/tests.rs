//! Unit tests of the protobuf decoder: framing, version resolution, dead letters.

use super::*;
use crate::batch::{BatchId, TopicPartition};
use crate::proto::load;
use ::arrow::array::{AsArray, Int64Array};
use prost::Message as _;
use prost_reflect::{Kind, Value};
use std::time::Duration;

const READER: &str = "syntax = \"proto3\";\npackage fb;\nmessage Outer {\n  message Feedback {\n    string id = 1;\n    int64 rating = 2;\n    optional string note = 3;\n  }\n}\nmessage Feedback {\n  string id = 1;\n  int64 rating = 2;\n  optional string note = 3;\n}\n";
/// `rating` an int32 (read as int64); no `note`.
const V1: &str = "syntax = \"proto3\";\npackage fb;\nmessage Feedback {\n  string id = 1;\n  int32 rating = 2;\n}\n";
/// `rating` a string: cannot be read as int64.
const INCOMPATIBLE: &str = "syntax = \"proto3\";\npackage fb;\nmessage Feedback {\n  string id = 1;\n  string rating = 2;\n}\n";

fn decoder() -> (ProtobufDecoder, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("feedback.proto");
    std::fs::write(&path, READER).unwrap();
    let (schema, reader) = load(&path, Some("fb.Feedback")).unwrap();
    let registry = SchemaRegistry::new(&crate::config::SchemaRegistryConfig {
        url: "http://127.0.0.1:9".into(),
        username: None,
        password: None,
        bearer_token: None,
        timeout: Duration::from_secs(1),
    })
    .unwrap();
    let decoder = ProtobufDecoder::new(reader, schema, 1 << 16, registry);
    assert_eq!(decoder.add_writer(1, V1), None);
    assert_eq!(
        decoder.add_writer(2, INCOMPATIBLE),
        None,
        "usable until a record names it"
    );
    assert!(
        decoder.add_writer(3, "message {").is_some(),
        "not a .proto file"
    );
    (decoder, dir)
}

/// A record of writer `id`, message path `indexes` (Confluent framing), as `message`.
fn framed(id: u32, indexes: &[u8], message: &DynamicMessage) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(indexes);
    out.extend(message.encode_to_vec());
    out
}

fn v1(decoder: &ProtobufDecoder, id: &str, rating: i64) -> Vec<u8> {
    let mut message = DynamicMessage::new(decoder.reader.clone());
    message.set_field_by_name("id", Value::String(id.into()));
    message.set_field_by_name("rating", Value::I64(rating));
    framed(1, &[0], &message)
}

fn raw(payloads: &[Vec<u8>]) -> RawBatch {
    let mut batch = RawBatch::new(BatchId(1), TopicPartition::new("t", 0), payloads.len());
    for (i, p) in payloads.iter().enumerate() {
        batch.push(100 + i as i64, Some(1_700_000_000_000), None, Some(p));
    }
    batch
}

#[test]
fn message_indexes_are_read_in_both_of_confluent_s_forms() {
    let with = |indexes: &[u8]| {
        let mut payload = vec![0, 0, 0, 0, 7];
        payload.extend_from_slice(indexes);
        payload.push(0x0a);
        framing(&payload)
    };
    let first = with(&[0]).unwrap();
    assert_eq!(
        (first.id, first.indexes().to_vec(), first.body),
        (7, vec![0], 6)
    );
    // The explicit form: one index, 0 (zigzag 2 then 0).
    assert_eq!(with(&[2, 0]).unwrap().indexes(), [0]);
    // A nested message: path [1, 0] (zigzag 4, 2, 0).
    assert_eq!(with(&[4, 2, 0]).unwrap().indexes(), [1, 0]);
    assert!(framing(&[0, 0, 0, 0, 7]).is_none(), "no indexes");
    assert!(framing(&[1, 0, 0, 0, 7, 0]).is_none(), "wrong magic byte");
    assert!(
        framing(&[0, 0, 0, 0, 7, 0x80]).is_none(),
        "a varint cut short"
    );
}

#[test]
fn an_older_writer_decodes_and_bad_records_become_dead_letters_with_the_reason() {
    let (decoder, _dir) = decoder();
    let incompatible = {
        let mut payload = vec![0, 0, 0, 0, 2, 0];
        payload.extend([0x0a, 1, b'x', 0x12, 4, b'f', b'i', b'v', b'e']);
        payload
    };
    let nested = {
        let mut payload = v1(&decoder, "n", 2);
        payload[5] = 4; // path [1, ..]: no second message in V1's file
        payload.insert(6, 2);
        payload
    };
    let batch = decoder
        .decode(&raw(&[
            v1(&decoder, "a", 5),
            incompatible,
            b"{\"id\": \"json\"}".to_vec(),
            vec![0, 0, 0, 0, 1, 0, 0xff, 0xff],
            nested,
            vec![0, 0, 0, 0, 3, 0, 0x0a, 0],
            v1(&decoder, "b", 4),
        ]))
        .unwrap();
    let ids: Vec<&str> = batch
        .rows
        .column(0)
        .as_string::<i32>()
        .iter()
        .flatten()
        .collect();
    assert_eq!(ids, ["a", "b"]);
    let ratings = batch
        .rows
        .column(1)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!(ratings.values().to_vec(), vec![5, 4]);
    assert!(
        batch.rows.column(2).is_null(0),
        "an absent optional field is null"
    );
    let letters: Vec<(i64, &str, &str)> = batch
        .dead_letters
        .iter()
        .map(|l| (l.offset, l.kind.as_str(), l.reason.as_str()))
        .collect();
    assert_eq!(letters.len(), 5, "{letters:?}");
    assert_eq!(letters[0].1, "unknown_schema");
    assert!(letters[0].2.contains("writer schema id 2 cannot be read as the declared schema: field `rating` (2) is string in the writer, int64 in the reader"), "{}", letters[0].2);
    assert_eq!(letters[1].1, "not_framed");
    assert_eq!(letters[2].1, "malformed_protobuf");
    assert!(
        letters[2]
            .2
            .contains("not a valid `fb.Feedback` message (schema id 1)"),
        "{}",
        letters[2].2
    );
    assert!(
        letters[3].2.contains("message index path [1"),
        "{}",
        letters[3].2
    );
    assert!(
        letters[4]
            .2
            .contains("writer schema id 3 cannot be used: not a .proto file"),
        "{}",
        letters[4].2
    );
}

#[test]
fn the_declared_file_must_name_a_message_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("feedback.proto");
    std::fs::write(&path, READER).unwrap();
    let error = load(&path, Some("fb.Nope")).unwrap_err();
    assert!(
        error.contains(
            "no message `fb.Nope` (decode.message), expected one of: fb.Outer, fb.Feedback"
        ),
        "{error}"
    );
    std::fs::write(
        &path,
        "syntax = \"proto3\";\nmessage A { string _x = 1; }\n",
    )
    .unwrap();
    assert!(load(&path, None).unwrap_err().contains("reserved"));
    std::fs::write(
        &path,
        "syntax = \"proto3\";\nmessage Node { Node next = 1; }\n",
    )
    .unwrap();
    assert!(load(&path, None).unwrap_err().contains("recursive"));
}

const EVERY_SCALAR: &str = "syntax = \"proto3\";\npackage s;\nimport \"google/protobuf/timestamp.proto\";\nmessage All {\n  enum Color { RED = 0; GREEN = 1; }\n  int32 a = 1;\n  int64 b = 2;\n  uint32 c = 3;\n  uint64 d = 4;\n  sint32 e = 5;\n  sint64 f = 6;\n  fixed32 g = 7;\n  sfixed32 h = 8;\n  fixed64 i = 9;\n  sfixed64 j = 10;\n  float k = 11;\n  double l = 12;\n  bool m = 13;\n  string n = 14;\n  bytes o = 15;\n  Color p = 16;\n  google.protobuf.Timestamp q = 17;\n  optional string r = 18;\n  optional int64 s = 19;\n}\n";

#[test]
fn the_wire_fast_path_reads_what_the_general_path_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.proto");
    std::fs::write(&path, EVERY_SCALAR).unwrap();
    let (schema, reader) = load(&path, None).unwrap();
    assert!(wire::FlatReader::new(&reader).is_some(), "a flat message");
    let registry = SchemaRegistry::new(&crate::config::SchemaRegistryConfig {
        url: "http://127.0.0.1:9".into(),
        username: None,
        password: None,
        bearer_token: None,
        timeout: Duration::from_secs(1),
    })
    .unwrap();
    let decoder = ProtobufDecoder::new(reader.clone(), schema.clone(), 1 << 16, registry);
    assert_eq!(decoder.add_writer(1, EVERY_SCALAR), None);
    let stamp = match reader.get_field_by_name("q").unwrap().kind() {
        Kind::Message(m) => m,
        _ => unreachable!(),
    };
    let messages: Vec<DynamicMessage> = (0..20i64)
        .map(|i| {
            let mut m = DynamicMessage::new(reader.clone());
            if i % 5 == 4 {
                return m; // every field unset
            }
            let set = |m: &mut DynamicMessage, name: &str, v: Value| m.set_field_by_name(name, v);
            set(&mut m, "a", Value::I32(-(i as i32) * 1000));
            set(&mut m, "b", Value::I64(i64::MIN + i));
            set(&mut m, "c", Value::U32(u32::MAX - i as u32));
            set(&mut m, "d", Value::U64(u64::MAX - i as u64));
            set(&mut m, "e", Value::I32(-(i as i32)));
            set(&mut m, "f", Value::I64(-i * 1_000_000_007));
            set(&mut m, "g", Value::U32(i as u32 * 7));
            set(&mut m, "h", Value::I32(-(i as i32) * 7));
            set(&mut m, "i", Value::U64(i as u64 * 11));
            set(&mut m, "j", Value::I64(-i * 11));
            set(&mut m, "k", Value::F32(i as f32 * 0.5));
            set(&mut m, "l", Value::F64(-(i as f64) * 0.25));
            set(&mut m, "m", Value::Bool(i % 2 == 0));
            set(&mut m, "n", Value::String(format!("text {i} ü")));
            set(&mut m, "o", Value::Bytes(vec![i as u8, 0, 255].into()));
            set(&mut m, "p", Value::EnumNumber((i % 3) as i32)); // 2 has no name
            let mut t = DynamicMessage::new(stamp.clone());
            t.set_field_by_name("seconds", Value::I64(1_700_000_000 + i));
            t.set_field_by_name("nanos", Value::I32(i as i32 * 1_000));
            set(&mut m, "q", Value::Message(t));
            if i % 2 == 0 {
                set(&mut m, "r", Value::String(String::new()));
                set(&mut m, "s", Value::I64(0));
            }
            m
        })
        .collect();
    let mut payloads: Vec<Vec<u8>> = messages.iter().map(|m| framed(1, &[0], m)).collect();
    // A field that appears twice: the last value wins.
    let mut twice = DynamicMessage::new(reader.clone());
    twice.set_field_by_name("a", Value::I32(1));
    let mut again = twice.encode_to_vec();
    again.extend([0x08, 0x02]); // field 1 (varint) = 2
    let mut last = vec![0, 0, 0, 0, 1, 0];
    last.extend(again);
    payloads.push(last);
    let fast = decoder.decode(&raw(&payloads)).unwrap();
    assert!(fast.dead_letters.is_empty(), "{:?}", fast.dead_letters);
    // The general path over the same bytes.
    let all: Vec<DynamicMessage> = payloads
        .iter()
        .map(|p| DynamicMessage::decode(reader.clone(), &p[6..]).unwrap())
        .collect();
    let general = arrow::columns(&reader, &schema, &all).unwrap();
    for (i, column) in general.iter().enumerate() {
        assert_eq!(
            fast.rows.column(i).as_ref(),
            column.as_ref(),
            "column {}",
            schema.field(i).name()
        );
    }
}

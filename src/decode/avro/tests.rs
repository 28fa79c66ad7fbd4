use super::*;
use crate::batch::{BatchId, TopicPartition};
use arrow::array::{AsArray, Int64Array};
use arrow::datatypes::Int64Type;
use std::time::Duration;

const READER: &str = r#"{"type": "record", "name": "Feedback", "fields": [
    {"name": "id", "type": "string"},
    {"name": "rating", "type": "long"},
    {"name": "note", "type": ["null", "string"], "default": null}]}"#;
/// Older writers: `rating` an int (promoted to long), no `note` (its default).
const V1: &str = r#"{"type": "record", "name": "Feedback", "fields": [
    {"name": "id", "type": "string"},
    {"name": "rating", "type": "int"}]}"#;
/// Newer writers: an extra field the reader leaves out.
const V2: &str = r#"{"type": "record", "name": "Feedback", "fields": [
    {"name": "id", "type": "string"},
    {"name": "rating", "type": "long"},
    {"name": "note", "type": ["null", "string"], "default": null},
    {"name": "channel", "type": "string"}]}"#;
/// `id` a number: cannot be read as the declared string.
const INCOMPATIBLE: &str = r#"{"type": "record", "name": "Feedback", "fields": [
    {"name": "id", "type": "long"},
    {"name": "rating", "type": "long"}]}"#;

fn long(n: i64, out: &mut Vec<u8>) {
    let mut v = ((n << 1) ^ (n >> 63)) as u64;
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn string(s: &str, out: &mut Vec<u8>) {
    long(s.len() as i64, out);
    out.extend_from_slice(s.as_bytes());
}

fn framed(id: u32, body: Vec<u8>) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend(body);
    out
}

fn v1(id: &str, rating: i64) -> Vec<u8> {
    let mut body = Vec::new();
    string(id, &mut body);
    long(rating, &mut body);
    framed(1, body)
}

fn v2(id: &str, rating: i64, note: Option<&str>) -> Vec<u8> {
    let mut body = Vec::new();
    string(id, &mut body);
    long(rating, &mut body);
    match note {
        None => long(0, &mut body),
        Some(text) => {
            long(1, &mut body);
            string(text, &mut body);
        }
    }
    string("web", &mut body);
    framed(2, body)
}

fn decoder() -> AvroDecoder {
    let record = crate::schema::parse_avro_for_tests(READER);
    let registry = SchemaRegistry::new(&crate::config::SchemaRegistryConfig {
        url: "http://127.0.0.1:9".into(),
        username: None,
        password: None,
        bearer_token: None,
        timeout: Duration::from_secs(1),
    })
    .unwrap();
    let decoder = AvroDecoder::new(READER, record, 1 << 16, registry);
    assert_eq!(decoder.add_writer(1, V1), None);
    assert_eq!(decoder.add_writer(2, V2), None);
    assert!(decoder.add_writer(3, INCOMPATIBLE).is_some());
    decoder
}

fn raw(payloads: &[Option<Vec<u8>>]) -> RawBatch {
    let mut batch = RawBatch::new(BatchId(1), TopicPartition::new("t", 0), payloads.len());
    for (i, p) in payloads.iter().enumerate() {
        batch.push(100 + i as i64, Some(1_700_000_000_000), None, p.as_deref());
    }
    batch
}

fn ids(batch: &Batch) -> Vec<String> {
    let ids = batch.rows.column(0).as_string::<i32>();
    ids.iter().map(|v| v.unwrap_or("").to_owned()).collect()
}

#[test]
fn writers_of_two_versions_decode_into_the_declared_schema_in_order() {
    let decoder = decoder();
    let batch = decoder
        .decode(&raw(&[
            Some(v1("a", 5)),
            Some(v2("b", 4, Some("fine"))),
            Some(v1("c", 1)),
            Some(v2("d", 2, None)),
        ]))
        .unwrap();
    assert!(batch.dead_letters.is_empty(), "{:?}", batch.dead_letters);
    assert_eq!(ids(&batch), ["a", "b", "c", "d"]);
    let ratings = batch.rows.column(1).as_primitive::<Int64Type>();
    assert_eq!(ratings.values().to_vec(), vec![5, 4, 1, 2]);
    let notes = batch.rows.column(2).as_string::<i32>();
    let notes: Vec<Option<&str>> = notes.iter().collect();
    assert_eq!(notes, [None, Some("fine"), None, None]);
    let offsets = batch
        .rows
        .column_by_name("_offset")
        .unwrap()
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!(offsets.values().to_vec(), vec![100, 101, 102, 103]);
    assert_eq!(batch.rows.schema(), *decoder.output_schema());
}

#[test]
fn every_kind_of_bad_record_is_a_dead_letter_with_its_reason_and_the_rest_survive() {
    let decoder = decoder();
    let mut truncated = v2("t", 3, Some("cut off"));
    truncated.truncate(truncated.len() - 4);
    let mut trailing = v1("x", 1);
    trailing.extend_from_slice(&[1, 2, 3]);
    let mut incompatible = Vec::new();
    long(7, &mut incompatible);
    long(7, &mut incompatible);
    let batch = decoder
        .decode(&raw(&[
            Some(v1("a", 5)),
            None,
            Some(b"{\"id\": \"json\"}".to_vec()),
            Some(framed(99, vec![2, 0x61])),
            Some(framed(3, incompatible)),
            Some(truncated),
            Some(v2("b", 4, None)),
            Some(trailing),
            Some(v1("c", 2)),
        ]))
        .unwrap();
    assert_eq!(ids(&batch), ["a", "b", "c"]);
    let kinds: Vec<(i64, &str)> = batch
        .dead_letters
        .iter()
        .map(|d| (d.offset, d.kind.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (101, "tombstone"),
            (102, "not_framed"),
            (103, "unknown_schema"),
            (104, "unknown_schema"),
            (105, "malformed_avro"),
            (107, "malformed_avro"),
        ]
    );
    let reasons: Vec<&str> = batch
        .dead_letters
        .iter()
        .map(|d| d.reason.as_str())
        .collect();
    assert!(
        reasons[2].contains("schema id 99 was not fetched"),
        "{reasons:?}"
    );
    assert!(
        reasons[3].contains("writer schema id 3 cannot be read"),
        "{reasons:?}"
    );
    assert!(reasons[4].starts_with("not valid Avro"), "{reasons:?}");
    assert!(
        reasons[5].contains("bytes left after the end"),
        "{reasons:?}"
    );
}

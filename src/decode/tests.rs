use super::*;
use crate::batch::{BatchId, TopicPartition};
use arrow::array::Array;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

fn decoder(unknown: UnknownFields) -> JsonDecoder {
    let schema = Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("rating", DataType::Int64, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
    ]);
    JsonDecoder::new(Arc::new(schema), 64, unknown)
}

fn raw(payloads: &[Option<&[u8]>]) -> RawBatch {
    let mut batch = RawBatch::new(
        BatchId(1),
        TopicPartition::new("feedback", 2),
        payloads.len(),
    );
    for (i, p) in payloads.iter().enumerate() {
        batch.push(100 + i as i64, Some(1_700_000_000_000), None, *p);
    }
    batch
}

fn ids(batch: &Batch) -> Vec<String> {
    let ids = batch
        .rows
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    ids.iter().map(|v| v.unwrap_or("").to_owned()).collect()
}

#[test]
fn good_records_decode_with_provenance_columns() {
    let batch = decoder(UnknownFields::Ignore)
        .decode(&raw(&[
            Some(br#"{"id":"a","rating":5,"ts":"2026-11-22T08:00:00Z"}"#),
            Some(br#"{"id":"b","extra":true}"#),
        ]))
        .unwrap();
    assert_eq!(ids(&batch), ["a", "b"]);
    assert!(batch.dead_letters.is_empty());
    let offsets = batch
        .rows
        .column(5)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    assert_eq!(offsets.values().to_vec(), vec![100, 101]);
    assert_eq!(batch.rows.schema().field(6).name(), "_timestamp");
    assert!(
        batch.rows.column(1).is_null(1),
        "missing nullable field is null"
    );
}

#[test]
fn every_kind_of_bad_record_becomes_a_dead_letter_and_the_rest_survive() {
    let batch = decoder(UnknownFields::Reject)
        .decode(&raw(&[
            Some(br#"{"id":"ok1"}"#),
            Some(b"{not json"),
            Some(br#"{"id":"x","rating":"five"}"#),
            Some(br#"{"rating":3}"#),
            Some(b"\xff\xfe"),
            None,
            Some(br#"{"id":"this record is much longer than the sixty-four byte limit set"}"#),
            Some(br#"{"id":"a"} {"id":"b"}"#),
            Some(br#"{"id":"y","unknown":1}"#),
            Some(b"  "),
            Some(br#"{"id":"ok2"}"#),
        ]))
        .unwrap();
    assert_eq!(ids(&batch), ["ok1", "ok2"]);
    let reasons: Vec<(i64, &str)> = batch
        .dead_letters
        .iter()
        .map(|d| (d.offset, d.reason.as_str()))
        .collect();
    assert_eq!(reasons.len(), 9, "{reasons:#?}");
    let reason_of = |offset: i64| reasons.iter().find(|(o, _)| *o == offset).unwrap().1;
    assert!(
        reason_of(101).starts_with("not valid JSON"),
        "{}",
        reason_of(101)
    );
    assert!(
        reason_of(102).starts_with("does not match schema"),
        "{}",
        reason_of(102)
    );
    assert!(
        reason_of(103).starts_with("does not match schema"),
        "{}",
        reason_of(103)
    );
    assert!(reason_of(104).contains("UTF-8"));
    assert!(reason_of(105).contains("tombstone"));
    assert!(reason_of(106).contains("max_record_bytes"));
    assert!(
        reason_of(107).contains("found 2 values"),
        "{}",
        reason_of(107)
    );
    assert!(reason_of(108).contains("unknown"), "{}", reason_of(108));
    assert!(reason_of(109).contains("empty"));
    let letter = &batch.dead_letters[0];
    assert_eq!(
        (
            letter.stage.as_str(),
            &*letter.tp.topic,
            letter.tp.partition
        ),
        ("decode", "feedback", 2)
    );
    assert_eq!(letter.payload.as_deref(), Some(&b"{not json"[..]));
}

#[test]
fn halves_of_an_object_split_over_two_records_are_both_rejected() {
    let batch = decoder(UnknownFields::Ignore)
        .decode(&raw(&[
            Some(br#"{"id":"#),
            Some(br#""z"}"#),
            Some(br#"{"id":"ok"}"#),
        ]))
        .unwrap();
    assert_eq!(ids(&batch), ["ok"]);
    assert_eq!(batch.dead_letters.len(), 2);
}

#[test]
fn bad_records_anywhere_in_a_large_batch_are_isolated_and_the_rest_keep_their_order() {
    let payloads: Vec<Vec<u8>> = (0..2_000)
        .map(|i| {
            let text = match i {
                i if i % 37 == 5 => "{not json".to_owned(),
                i if i % 53 == 7 => r#"{"id":"x","rating":"five"}"#.to_owned(),
                i if i % 61 == 3 => r#"{"rating":3}"#.to_owned(),
                i if i % 71 == 0 => r#"{"id":"a"} {"id":"b"}"#.to_owned(),
                i if i % 97 == 11 => r#"{"id":"#.to_owned(),
                i => format!(r#"{{"id":"r{i}","rating":{}}}"#, i % 5),
            };
            text.into_bytes()
        })
        .collect();
    let expected: Vec<String> = payloads
        .iter()
        .filter_map(|p| {
            let text = std::str::from_utf8(p).unwrap();
            text.starts_with(r#"{"id":"r"#)
                .then(|| text[7..].split('"').next().unwrap().to_owned())
        })
        .collect();
    let refs: Vec<Option<&[u8]>> = payloads.iter().map(|p| Some(p.as_slice())).collect();
    let batch = decoder(UnknownFields::Reject).decode(&raw(&refs)).unwrap();
    assert_eq!(ids(&batch), expected);
    assert_eq!(batch.dead_letters.len(), payloads.len() - expected.len());
    let offsets = batch
        .rows
        .column_by_name("_offset")
        .unwrap()
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    let good_offsets: Vec<i64> = (0..payloads.len())
        .filter(|&i| payloads[i].starts_with(br#"{"id":"r"#))
        .map(|i| 100 + i as i64)
        .collect();
    assert_eq!(offsets.values().to_vec(), good_offsets);
}

#[test]
fn a_kept_decoder_decodes_the_next_batches_as_a_new_one_would() {
    let json = decoder(UnknownFields::Ignore);
    let clean = raw(&[
        Some(br#"{"id":"a","rating":1}"#),
        Some(br#"{"id":"b","rating":2}"#),
        Some(br#"{"id":"c","rating":3}"#),
    ]);
    assert_eq!(ids(&json.decode(&clean).unwrap()), ["a", "b", "c"]);
    // The clean batch's decoder was kept; a clone shares it.
    let kept = |json: &JsonDecoder| json.kept.0.lock().unwrap().len();
    assert_eq!(kept(&json), 1);
    let shared = json.clone();
    // Its next batch breaks the JSON stream: the decoder that read it is not kept (it
    // may hold half a row), and the one taken out for it is gone from the shelf.
    let broken = raw(&[
        Some(br#"{"id":"d","rating":4}"#),
        Some(br#"{"id":"e","#),
        Some(br#"{"id":"f","rating":6}"#),
    ]);
    let batch = shared.decode(&broken).unwrap();
    assert_eq!(ids(&batch), ["d", "f"]);
    assert_eq!(batch.dead_letters.len(), 1);
    assert_eq!(kept(&json), 0);
    // Larger batches than a kept decoder takes get a new one; every row comes out.
    assert_eq!(ids(&json.decode(&clean).unwrap()), ["a", "b", "c"]);
    let v: &[u8] = br#"{"id":"v"}"#;
    let five = raw(&[Some(v); 5]);
    assert_eq!(json.decode(&five).unwrap().rows.num_rows(), 5);
    assert_eq!(kept(&json), 2);
    assert_eq!(ids(&json.decode(&clean).unwrap()), ["a", "b", "c"]);
}

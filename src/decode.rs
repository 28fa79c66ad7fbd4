//! Record bytes -> Arrow rows, with every bad record sent to the dead letters.
//!
//! Decoding uses arrow-json's streaming decoder against the schema from `schemas/`.
//! Cheap checks run per record first (tombstone, size, UTF-8). The fast path then feeds
//! the whole batch to one decoder, checking after each record that it produced exactly
//! one complete row, and flushes once. If anything is off (a syntax error, a type that does
//! not match, a record holding two objects or half of one), the batch is decoded again one
//! record at a time, so the bad records are isolated with their own error and the good
//! ones still go through. Bad input never fails a batch.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::json::reader::Decoder;
use arrow::json::ReaderBuilder;

use crate::batch::{Batch, RawBatch, RawRecord};
use crate::config::UnknownFields;
use crate::dead_letter::DeadLetter;
use crate::schema::with_provenance;

const STAGE: &str = "decode";

/// Decodes JSON records of one schema.
#[derive(Debug, Clone)]
pub struct JsonDecoder {
    record_schema: SchemaRef,
    output_schema: SchemaRef,
    max_record_bytes: usize,
    strict: bool,
}

impl JsonDecoder {
    pub fn new(
        record_schema: SchemaRef,
        max_record_bytes: usize,
        unknown_fields: UnknownFields,
    ) -> Self {
        JsonDecoder {
            output_schema: with_provenance(&record_schema),
            record_schema,
            max_record_bytes,
            strict: unknown_fields == UnknownFields::Reject,
        }
    }

    /// Schema of decoded rows: record fields plus provenance columns.
    pub fn output_schema(&self) -> &SchemaRef {
        &self.output_schema
    }

    fn new_decoder(&self, rows: usize) -> Result<Decoder, ArrowError> {
        ReaderBuilder::new(self.record_schema.clone())
            .with_batch_size(rows.max(1))
            .with_strict_mode(self.strict)
            .build_decoder()
    }

    /// Decodes a raw batch. Errors are internal (Arrow could not build arrays it should
    /// be able to build), never caused by bad input.
    pub fn decode(&self, raw: &RawBatch) -> Result<Batch, ArrowError> {
        let tp = &raw.provenance.tp;
        let mut dead_letters = Vec::new();
        let mut candidates: Vec<(RawRecord<'_>, &[u8])> = Vec::with_capacity(raw.len());
        for record in raw.records() {
            match self.screen(&record) {
                Ok(payload) => candidates.push((record, payload)),
                Err(reason) => dead_letters.push(DeadLetter::new(STAGE, tp, &record, reason)),
            }
        }
        let (fields, good) = match self.decode_all(&candidates)? {
            Some(fields) => (fields, candidates.iter().map(|(r, _)| *r).collect()),
            None => self.decode_each(&candidates, tp, &mut dead_letters)?,
        };
        let rows = self.with_provenance_columns(fields, raw, &good)?;
        dead_letters.sort_by_key(|d| d.offset);
        Ok(Batch {
            provenance: raw.provenance.clone(),
            rows,
            dead_letters,
            retain_from: None,
        })
    }

    /// Per-record checks that need no JSON parsing.
    fn screen<'a>(&self, record: &RawRecord<'a>) -> Result<&'a [u8], String> {
        let payload = record
            .payload
            .ok_or_else(|| "record has no value (tombstone)".to_owned())?;
        if payload.len() > self.max_record_bytes {
            return Err(format!(
                "record is {} bytes, over decode.max_record_bytes ({} bytes)",
                payload.len(),
                self.max_record_bytes
            ));
        }
        if let Err(e) = std::str::from_utf8(payload) {
            return Err(format!("record is not valid UTF-8: {e}"));
        }
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Err("record is empty".to_owned());
        }
        Ok(payload)
    }

    /// Fast path: all records through one decoder. `None` when any record is bad.
    fn decode_all(
        &self,
        records: &[(RawRecord<'_>, &[u8])],
    ) -> Result<Option<RecordBatch>, ArrowError> {
        let mut decoder = self.new_decoder(records.len())?;
        for (i, (_, payload)) in records.iter().enumerate() {
            let aligned = decoder
                .decode(payload)
                .is_ok_and(|read| read == payload.len())
                && !decoder.has_partial_record()
                && decoder.len() == i + 1;
            if !aligned {
                return Ok(None);
            }
        }
        match decoder.flush() {
            Ok(Some(batch)) if batch.num_rows() == records.len() => Ok(Some(batch)),
            Ok(None) if records.is_empty() => {
                Ok(Some(RecordBatch::new_empty(self.record_schema.clone())))
            }
            _ => Ok(None),
        }
    }

    /// Slow path: one record at a time; bad ones become dead letters with their error.
    fn decode_each<'a>(
        &self,
        records: &[(RawRecord<'a>, &[u8])],
        tp: &crate::batch::TopicPartition,
        dead_letters: &mut Vec<DeadLetter>,
    ) -> Result<(RecordBatch, Vec<RawRecord<'a>>), ArrowError> {
        let mut rows = Vec::with_capacity(records.len());
        let mut good = Vec::with_capacity(records.len());
        for (record, payload) in records {
            match self.decode_one(payload)? {
                Ok(row) => {
                    rows.push(row);
                    good.push(*record);
                }
                Err(reason) => dead_letters.push(DeadLetter::new(STAGE, tp, record, reason)),
            }
        }
        Ok((concat_batches(&self.record_schema, &rows)?, good))
    }

    fn decode_one(&self, payload: &[u8]) -> Result<Result<RecordBatch, String>, ArrowError> {
        let mut decoder = self.new_decoder(2)?;
        let outcome = match decoder.decode(payload) {
            Err(e) => Err(format!("not valid JSON: {e}")),
            Ok(_) if decoder.has_partial_record() => {
                Err("not valid JSON: the object is incomplete".to_owned())
            }
            Ok(_) if decoder.len() != 1 => Err(format!(
                "expected one JSON object, found {} values",
                decoder.len()
            )),
            Ok(_) => match decoder.flush() {
                Ok(Some(row)) => Ok(row),
                Ok(None) => Err("expected one JSON object, found none".to_owned()),
                Err(e) => Err(format!("does not match schema: {e}")),
            },
        };
        Ok(outcome)
    }

    fn with_provenance_columns(
        &self,
        fields: RecordBatch,
        raw: &RawBatch,
        good: &[RawRecord<'_>],
    ) -> Result<RecordBatch, ArrowError> {
        let n = good.len();
        let tp = &raw.provenance.tp;
        let mut columns: Vec<ArrayRef> = fields.columns().to_vec();
        columns.push(Arc::new(StringArray::from_iter_values(
            std::iter::repeat_n(&*tp.topic, n),
        )));
        columns.push(Arc::new(Int32Array::from_value(tp.partition, n)));
        columns.push(Arc::new(Int64Array::from_iter_values(
            good.iter().map(|r| r.offset),
        )));
        columns.push(Arc::new(
            TimestampMillisecondArray::from_iter(good.iter().map(|r| r.timestamp))
                .with_timezone("UTC"),
        ));
        RecordBatch::try_new(self.output_schema.clone(), columns)
    }
}

#[cfg(test)]
mod tests {
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
}

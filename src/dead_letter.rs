//! The dead-letter dataset's layout: [`DeadLetter`]s as Arrow rows.
//!
//! A dead letter keeps the record's provenance in the same `_topic`, `_partition`,
//! `_offset`, `_timestamp` columns as good rows (so both datasets join and replay the same
//! way), plus `reason`, `stage`, `failed_at` and the original `key` and `payload` bytes.
//! `schemas/dead_letter.json` documents the same layout.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;

use crate::batch::DeadLetter;
use crate::schema::provenance_fields;

/// Arrow schema of dead-letter rows.
pub fn schema() -> SchemaRef {
    let utc_ms = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let mut fields = vec![
        Field::new("reason", DataType::Utf8, false),
        Field::new("stage", DataType::Utf8, false),
        Field::new("failed_at", utc_ms, false),
        Field::new("key", DataType::Binary, true),
        Field::new("payload", DataType::Binary, true),
    ];
    fields.extend(provenance_fields());
    Arc::new(Schema::new(fields))
}

/// Dead letters as one Arrow batch of [`schema`].
pub fn to_record_batch(letters: &[DeadLetter]) -> Result<RecordBatch, ArrowError> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            letters.iter().map(|d| d.reason.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            letters.iter().map(|d| d.stage.as_str()),
        )),
        Arc::new(
            TimestampMillisecondArray::from_iter_values(letters.iter().map(|d| d.failed_at))
                .with_timezone("UTC"),
        ),
        Arc::new(BinaryArray::from_iter(
            letters.iter().map(|d| d.key.as_deref()),
        )),
        Arc::new(BinaryArray::from_iter(
            letters.iter().map(|d| d.payload.as_deref()),
        )),
        Arc::new(StringArray::from_iter_values(
            letters.iter().map(|d| &*d.tp.topic),
        )),
        Arc::new(Int32Array::from_iter_values(
            letters.iter().map(|d| d.tp.partition),
        )),
        Arc::new(Int64Array::from_iter_values(
            letters.iter().map(|d| d.offset),
        )),
        Arc::new(
            TimestampMillisecondArray::from_iter(letters.iter().map(|d| d.timestamp))
                .with_timezone("UTC"),
        ),
    ];
    RecordBatch::try_new(schema(), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{DeadLetterKind, RawRecord, TopicPartition};
    use arrow::array::Array;

    #[test]
    fn dead_letters_become_rows_with_reason_provenance_and_raw_bytes() {
        let record = RawRecord {
            index: 0,
            offset: 42,
            timestamp: Some(1_000),
            key: None,
            payload: Some(b"{not json"),
        };
        let tp = TopicPartition::new("feedback", 3);
        let letter = DeadLetter::new(
            "decode",
            &tp,
            &record,
            DeadLetterKind::MalformedJson,
            "not JSON".into(),
        );
        let batch = to_record_batch(&[letter]).unwrap();
        assert_eq!(batch.schema(), schema());
        let payload = batch
            .column(4)
            .as_any()
            .downcast_ref::<BinaryArray>()
            .unwrap();
        assert_eq!(payload.value(0), b"{not json");
        assert!(batch.column(3).is_null(0), "no key");
        let offset = batch
            .column(7)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(offset.value(0), 42);
    }
}

//! Unit tests of the Kafka sink's encoding.

use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::DataType;

use super::encode::encode_rows;
use arrow::array::Int64Array;
use arrow::datatypes::{Field, Schema};

#[test]
fn rows_become_one_json_message_each_with_projected_columns_and_key() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, true),
    ]));
    let rows = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![7, 8])),
            Arc::new(StringArray::from(vec![Some("line\nbreak"), None])),
        ],
    )
    .unwrap();
    let messages = encode_rows(&rows, Some(&[1]), Some(0), &[], None).unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0].payload, br#"{"text":"line\nbreak"}"#);
    assert_eq!(messages[0].key.as_deref(), Some(&b"7"[..]));
    assert_eq!(messages[1].payload, b"{}");
    assert_eq!(messages[1].key.as_deref(), Some(&b"8"[..]));
}

//! Encoding a batch into Kafka messages: rows as JSON objects or Avro (key and headers
//! from columns), dead letters as their original bytes with the context in headers.

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::compute::kernels::cast::cast;
use arrow::datatypes::DataType;
use rdkafka::message::{Header, Headers, OwnedHeaders};

use super::super::SinkError;
use crate::batch::Batch;

/// One encoded message, borrowing nothing so it can outlive the batch's Arrow data.
pub(super) struct Outgoing {
    pub(super) key: Option<Vec<u8>>,
    pub(super) payload: Vec<u8>,
    pub(super) headers: Option<OwnedHeaders>,
}

/// The dead letter as headers only, flagged as truncated (what any topic can take).
/// `payload_bytes`: the payload's size, unless the headers already give the original's.
pub(super) fn headers_only(headers: Option<&OwnedHeaders>, payload_bytes: usize) -> Outgoing {
    let headers = headers.cloned().unwrap_or_default();
    let flagged = headers
        .iter()
        .any(|h| h.key == "sluice.payload.original.bytes");
    Outgoing {
        key: None,
        payload: Vec::new(),
        headers: Some(if flagged {
            headers
        } else {
            with_truncation(headers, payload_bytes)
        }),
    }
}

fn with_truncation(headers: OwnedHeaders, original_bytes: usize) -> OwnedHeaders {
    let original = original_bytes.to_string();
    headers
        .insert(Header {
            key: "sluice.payload.truncated",
            value: Some("true"),
        })
        .insert(Header {
            key: "sluice.payload.original.bytes",
            value: Some(original.as_str()),
        })
}

pub(super) fn encode_rows(
    rows: &RecordBatch,
    columns: Option<&[usize]>,
    key: Option<usize>,
    headers: &[(String, usize)],
    registered: Option<&super::Registered>,
) -> Result<Vec<Outgoing>, SinkError> {
    if rows.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let projected = match columns {
        Some(columns) => rows.project(columns)?,
        None => rows.clone(),
    };
    let payloads = match registered {
        Some(format) => format.encode(&projected)?,
        None => json_lines(&projected)?,
    };
    let keys = match key {
        Some(index) => Some(cast(rows.column(index), &DataType::Utf8)?),
        None => None,
    };
    let keys = keys
        .as_ref()
        .and_then(|k| k.as_any().downcast_ref::<StringArray>());
    let header_values = header_columns(rows, headers)?;
    let messages = payloads
        .into_iter()
        .enumerate()
        .map(|(row, payload)| Outgoing {
            key: keys
                .filter(|k| k.is_valid(row))
                .map(|k| k.value(row).as_bytes().to_vec()),
            payload,
            headers: message_headers(&header_values, row),
        })
        .collect();
    Ok(messages)
}

/// The columns headers come from, as bytes: binary columns as they are, others as text.
fn header_columns<'a>(
    rows: &RecordBatch,
    headers: &'a [(String, usize)],
) -> Result<Vec<(&'a str, arrow::array::ArrayRef)>, SinkError> {
    headers
        .iter()
        .map(|(name, index)| {
            let column = rows.column(*index);
            let bytes = match column.data_type() {
                DataType::Binary => column.clone(),
                _ => cast(&cast(column, &DataType::Utf8)?, &DataType::Binary)?,
            };
            Ok((name.as_str(), bytes))
        })
        .collect()
}

/// Row `row`'s headers (a null value sends none); `None` when there are none.
fn message_headers(columns: &[(&str, arrow::array::ArrayRef)], row: usize) -> Option<OwnedHeaders> {
    let mut headers = None::<OwnedHeaders>;
    for (name, column) in columns {
        let Some(values) = column.as_any().downcast_ref::<arrow::array::BinaryArray>() else {
            continue;
        };
        if values.is_valid(row) {
            headers = Some(headers.unwrap_or_default().insert(Header {
                key: name,
                value: Some(values.value(row)),
            }));
        }
    }
    headers
}

/// One JSON object per row: arrow-json's line-delimited writer in one pass, split at
/// newlines (JSON escapes newlines inside strings).
fn json_lines(rows: &RecordBatch) -> Result<Vec<Vec<u8>>, SinkError> {
    let mut buffer = Vec::with_capacity(rows.get_array_memory_size());
    {
        let mut writer = arrow::json::LineDelimitedWriter::new(&mut buffer);
        writer.write(rows)?;
        writer.finish()?;
    }
    Ok(buffer
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// One message per dead letter, and how many payloads were cut to `max_payload_bytes`.
pub(super) fn encode_dead_letters(batch: &Batch, max_payload_bytes: usize) -> (Vec<Outgoing>, u64) {
    let mut truncated = 0;
    let messages = batch
        .dead_letters
        .iter()
        .map(|letter| {
            let partition = letter.tp.partition.to_string();
            let offset = letter.offset.to_string();
            let timestamp = letter.timestamp.map(|t| t.to_string()).unwrap_or_default();
            let mut headers = OwnedHeaders::new_with_capacity(9)
                .insert(Header {
                    key: "sluice.error.reason",
                    value: Some(letter.reason.as_str()),
                })
                .insert(Header {
                    key: "sluice.error.kind",
                    value: Some(letter.kind.as_str()),
                })
                .insert(Header {
                    key: "sluice.error.stage",
                    value: Some(letter.stage.as_str()),
                })
                .insert(Header {
                    key: "sluice.source.topic",
                    value: Some(&*letter.tp.topic),
                })
                .insert(Header {
                    key: "sluice.source.partition",
                    value: Some(partition.as_str()),
                })
                .insert(Header {
                    key: "sluice.source.offset",
                    value: Some(offset.as_str()),
                })
                .insert(Header {
                    key: "sluice.source.timestamp",
                    value: Some(timestamp.as_str()),
                });
            let payload = letter.payload.as_deref().unwrap_or_default();
            let payload = if payload.len() > max_payload_bytes {
                truncated += 1;
                headers = with_truncation(headers, payload.len());
                &payload[..max_payload_bytes]
            } else {
                payload
            };
            Outgoing {
                key: letter.key.clone(),
                payload: payload.to_vec(),
                headers: Some(headers),
            }
        })
        .collect();
    (messages, truncated)
}

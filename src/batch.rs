//! What flows through a pipeline: raw records cut by the source, decoded batches, the
//! dead letters that travel beside them, and the flushes that ask sinks to make
//! everything durable.
//!
//! A batch always holds a contiguous offset range of one topic-partition ([`Provenance`]).
//! Stages and sinks see Arrow data; the provenance travels beside it so the runtime can
//! acknowledge the range once every sink has made it durable.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::RecordBatch;

/// A map looked up once per record (a record's partition, a window's key): std's table
/// (hashbrown, for `entry_ref`) with foldhash's quality variant, several times faster than
/// std's SipHash on short keys and seeded per process like it.
pub(crate) type RecordMap<K, V> = hashbrown::HashMap<K, V, foldhash::quality::RandomState>;

/// A Kafka topic-partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// Identifies one batch from the source to every sink's acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchId(pub u64);

/// Where a batch came from: one topic-partition, offsets `first..=last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    pub id: BatchId,
    pub tp: TopicPartition,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// One record as read from Kafka, borrowed from its [`RawBatch`].
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'a> {
    /// Its position in the batch.
    pub index: usize,
    pub offset: i64,
    /// Kafka timestamp, milliseconds since the epoch (UTC).
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
}

#[derive(Debug, Clone)]
struct Entry {
    offset: i64,
    timestamp: Option<i64>,
    key: Option<Range<usize>>,
    payload: Option<Range<usize>>,
}

/// Records of one topic-partition as the source cut them: all keys and payloads live in
/// one buffer, so a batch costs two allocations however many records it holds.
#[derive(Debug, Clone)]
pub struct RawBatch {
    pub provenance: Provenance,
    buf: Vec<u8>,
    entries: Vec<Entry>,
    /// The kept headers' values, `headers` per record in order (see [`Self::header`]).
    header_values: Vec<Option<Range<usize>>>,
    headers: usize,
}

impl RawBatch {
    pub fn new(id: BatchId, tp: TopicPartition, capacity: usize) -> Self {
        RawBatch {
            provenance: Provenance {
                id,
                tp,
                first_offset: -1,
                last_offset: -1,
            },
            buf: Vec::new(),
            entries: Vec::with_capacity(capacity),
            header_values: Vec::new(),
            headers: 0,
        }
    }

    /// Appends a record with the values of the kept headers (the same number for every
    /// record of the batch; `None`: the record has no such header).
    pub fn push_with_headers(
        &mut self,
        offset: i64,
        timestamp: Option<i64>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: &[Option<&[u8]>],
    ) {
        self.push(offset, timestamp, key, payload);
        self.headers = headers.len();
        for value in headers {
            let range = value.map(|bytes| {
                let start = self.buf.len();
                self.buf.extend_from_slice(bytes);
                start..self.buf.len()
            });
            self.header_values.push(range);
        }
    }

    /// Kept header `header` of record `index`.
    pub fn header(&self, index: usize, header: usize) -> Option<&[u8]> {
        if header >= self.headers {
            return None;
        }
        self.header_values
            .get(index * self.headers + header)?
            .clone()
            .map(|r| &self.buf[r])
    }

    /// Appends a record; offsets must increase.
    pub fn push(
        &mut self,
        offset: i64,
        timestamp: Option<i64>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) {
        let mut copy = |bytes: &[u8]| {
            let start = self.buf.len();
            self.buf.extend_from_slice(bytes);
            start..self.buf.len()
        };
        let key = key.map(&mut copy);
        let payload = payload.map(&mut copy);
        if self.entries.is_empty() {
            self.provenance.first_offset = offset;
        }
        self.provenance.last_offset = offset;
        self.entries.push(Entry {
            offset,
            timestamp,
            key,
            payload,
        });
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of keys and payloads held.
    pub fn byte_size(&self) -> usize {
        self.buf.len()
    }

    /// Makes room for `bytes` more of keys, payloads and header values, so that the
    /// buffer is not grown (and copied) step by step while records come in.
    pub fn reserve_bytes(&mut self, bytes: usize) {
        self.buf.reserve(bytes);
    }

    pub fn records(&self) -> impl ExactSizeIterator<Item = RawRecord<'_>> + '_ {
        self.entries.iter().enumerate().map(|(index, e)| RawRecord {
            index,
            offset: e.offset,
            timestamp: e.timestamp,
            key: e.key.clone().map(|r| &self.buf[r]),
            payload: e.payload.clone().map(|r| &self.buf[r]),
        })
    }
}

/// A decoded batch: the rows that made it, and the records that went to dead letters.
#[derive(Debug, Clone)]
pub struct Batch {
    pub provenance: Provenance,
    /// Record fields plus `_topic`, `_partition`, `_offset`, `_timestamp`.
    pub rows: RecordBatch,
    pub dead_letters: Vec<DeadLetter>,
    /// The earliest offset of the partition a stateful stage still holds in memory (an
    /// open window): a restart must re-read from there, so commits stop there.
    pub retain_from: Option<i64>,
}

/// One record that went to the dead letters.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// What kind of problem it was (a bounded set: metrics and headers use it).
    pub kind: DeadLetterKind,
    /// What was wrong, in words a person can act on.
    pub reason: String,
    /// The pipeline stage that rejected it (`decode`, `stages[1].infer`, ...).
    pub stage: String,
    pub tp: TopicPartition,
    pub offset: i64,
    /// Kafka timestamp of the record (ms since the epoch, UTC).
    pub timestamp: Option<i64>,
    /// When sluice rejected it (ms since the epoch, UTC).
    pub failed_at: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

impl DeadLetter {
    pub fn new(
        stage: impl Into<String>,
        tp: &TopicPartition,
        record: &RawRecord<'_>,
        kind: DeadLetterKind,
        reason: String,
    ) -> Self {
        DeadLetter {
            kind,
            reason,
            stage: stage.into(),
            tp: tp.clone(),
            offset: record.offset,
            timestamp: record.timestamp,
            failed_at: chrono::Utc::now().timestamp_millis(),
            key: record.key.map(<[u8]>::to_vec),
            payload: record.payload.map(<[u8]>::to_vec),
        }
    }
}

/// Why a record became a dead letter, as a bounded set (the `reason` label of
/// `sluice_dead_letters_total`, the `sluice.error.kind` header of Kafka dead letters).
/// Set where the record is rejected; the free-text reason says the details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterKind {
    /// No value (a tombstone).
    Tombstone,
    /// Over `decode.max_record_bytes`.
    Oversized,
    InvalidUtf8,
    /// Only whitespace.
    EmptyRecord,
    /// Not one JSON object (syntax, raw control characters, several values).
    MalformedJson,
    /// Valid JSON that does not fit the declared schema.
    SchemaMismatch,
    /// A timestamp (a field or the broker's) outside what readers can hold.
    BadTimestamp,
    /// A column a stage needs is null.
    NullField,
    /// Text that is empty after trimming.
    EmptyText,
    /// A value a stage cannot use (e.g. samples without a sample rate).
    InvalidInput,
    /// Older than its window's allowed lateness.
    LateEvent,
    /// The model failed on this row alone.
    ModelFailed,
    /// The `sql` statement failed on this row alone.
    SqlFailed,
    /// Not in the Confluent wire format (magic byte `0`, 4-byte schema id).
    NotFramed,
    /// Its writer schema id is not in the registry, or cannot be read into the declared
    /// (reader) schema.
    UnknownSchema,
    /// A body that its writer schema does not describe.
    MalformedAvro,
    /// Bytes that are not a protobuf message of the declared type.
    MalformedProtobuf,
}

impl DeadLetterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::Tombstone => "tombstone",
            DeadLetterKind::Oversized => "oversized",
            DeadLetterKind::InvalidUtf8 => "invalid_utf8",
            DeadLetterKind::EmptyRecord => "empty_record",
            DeadLetterKind::MalformedJson => "malformed_json",
            DeadLetterKind::SchemaMismatch => "schema_mismatch",
            DeadLetterKind::BadTimestamp => "bad_timestamp",
            DeadLetterKind::NullField => "null_field",
            DeadLetterKind::EmptyText => "empty_text",
            DeadLetterKind::InvalidInput => "invalid_input",
            DeadLetterKind::LateEvent => "late_event",
            DeadLetterKind::ModelFailed => "model_failed",
            DeadLetterKind::SqlFailed => "sql_failed",
            DeadLetterKind::NotFramed => "not_framed",
            DeadLetterKind::UnknownSchema => "unknown_schema",
            DeadLetterKind::MalformedAvro => "malformed_avro",
            DeadLetterKind::MalformedProtobuf => "malformed_protobuf",
        }
    }
}

/// Make everything held for `partitions` (all when `None`) durable now.
#[derive(Debug, Clone)]
pub struct Flush {
    pub partitions: Option<Vec<TopicPartition>>,
    pub kind: FlushKind,
    /// The number the tracker gave it ([`crate::ack::AckTracker::begin_flush`]): each sink
    /// reports it handled. `None`: nobody waits for it.
    pub seq: Option<u64>,
}

/// Why a flush is sent, which says what happens to the state kept for its partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushKind {
    /// The run is ending (shutdown, or the end of a bounded input).
    Stop,
    /// The partitions are leaving this consumer: forget their state afterwards.
    Revoke,
    /// A barrier of an exactly-once output topic: everything before it becomes durable
    /// so one transaction can commit its output and offsets. The run goes on: stages keep
    /// their state and a sink's open segment stays open (no merge).
    Checkpoint,
}

impl Flush {
    /// Every partition, at the end of a run.
    pub fn all() -> Self {
        Flush {
            partitions: None,
            kind: FlushKind::Stop,
            seq: None,
        }
    }

    /// Every partition, mid-run.
    pub fn checkpoint() -> Self {
        Flush {
            partitions: None,
            kind: FlushKind::Checkpoint,
            seq: None,
        }
    }

    /// `partitions` are revoked.
    pub fn revoke(partitions: Vec<TopicPartition>) -> Self {
        Flush {
            partitions: Some(partitions),
            kind: FlushKind::Revoke,
            seq: None,
        }
    }

    /// The same flush, numbered `seq` for the sinks to report.
    pub fn numbered(self, seq: u64) -> Self {
        Flush {
            seq: Some(seq),
            ..self
        }
    }

    /// Whether stateful stages drop what they hold for the flushed partitions.
    pub fn ends_state(&self) -> bool {
        self.kind != FlushKind::Checkpoint
    }
}

/// FNV-1a: a stable hash (std's is not guaranteed stable across releases), for splits
/// and shares that must come out the same on every run and every machine.
pub fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

//! The open transaction of an exactly-once Kafka sink (the protocol is in
//! [`crate::exactly_once`]): which batches' messages it holds, the offsets it will commit,
//! and the commit itself once every other sink has made those batches durable.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, BooleanArray, Int64Array};
use arrow::compute::kernels::cmp::gt;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::ack::AckTracker;
use crate::batch::{Batch, BatchId, TopicPartition};
use crate::exactly_once::{metadata, Link};
use crate::kafka_client::ClientEvents;
use crate::schema::OFFSET_COLUMN;

/// How long one transactional call to the coordinator (init, offsets, commit, abort) may
/// take before the sink gives up and the run restarts.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a transaction did not commit.
#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    #[error("the broker refused the transaction")]
    Kafka(#[from] KafkaError),
    #[error("the consumer has no group metadata to commit offsets with")]
    NoGroup,
    #[error("the pipeline stopped before the other sinks made the transaction's batches durable")]
    Abandoned,
    #[error("{0}")]
    Task(String),
}

pub(super) struct Transaction {
    link: Arc<Link>,
    open: bool,
    /// The batches whose messages the open transaction holds, in arrival order.
    batches: Vec<(TopicPartition, BatchId)>,
    /// Per partition: the offset to commit (the next to read, or where a stateful stage's
    /// retained records start) and the last source offset whose output is in it.
    offsets: BTreeMap<TopicPartition, (i64, i64)>,
}

impl Transaction {
    pub(super) fn new(link: Arc<Link>) -> Self {
        Transaction {
            link,
            open: false,
            batches: Vec::new(),
            offsets: BTreeMap::new(),
        }
    }

    /// Registers the producer's `transactional.id` with the coordinator, which fences an
    /// earlier producer with the same id and aborts its open transaction.
    pub(super) async fn init(
        producer: &FutureProducer<ClientEvents>,
    ) -> Result<(), TransactionError> {
        let producer = producer.clone();
        blocking(move || Ok(producer.init_transactions(CALL_TIMEOUT)?)).await
    }

    /// Starts a transaction if none is open, and records that `batch`'s messages go in it.
    pub(super) fn add(
        &mut self,
        producer: &FutureProducer<ClientEvents>,
        batch: &Batch,
    ) -> Result<(), KafkaError> {
        if !self.open {
            producer.begin_transaction()?;
            self.open = true;
        }
        self.record(batch);
        Ok(())
    }

    /// What committing `batch` takes: its id, and its partition's offset and mark.
    fn record(&mut self, batch: &Batch) {
        let provenance = &batch.provenance;
        self.batches.push((provenance.tp.clone(), provenance.id));
        let next = provenance.last_offset + 1;
        let commit = batch.retain_from.map_or(next, |r| r.min(next));
        self.offsets
            .insert(provenance.tp.clone(), (commit, provenance.last_offset));
    }

    /// Which rows of `batch` to send: `None` for all; else false for rows at source
    /// offsets whose output an earlier run already committed (a stateful stage replays
    /// them to rebuild its state).
    pub(super) fn fresh_rows(&self, batch: &Batch) -> Option<BooleanArray> {
        let through = self.link.through(&batch.provenance.tp)?;
        if batch.provenance.first_offset > through {
            return None;
        }
        let offsets = batch
            .rows
            .column_by_name(OFFSET_COLUMN)?
            .as_any()
            .downcast_ref::<Int64Array>()?;
        gt(offsets, &Int64Array::new_scalar(through)).ok()
    }

    /// Commits the open transaction with the consumer offsets of its batches, once every
    /// other sink has acknowledged them, then acknowledges them for this sink. Returns how
    /// many batches it committed. On failure the transaction is aborted: its messages stay
    /// invisible to `read_committed` readers and its offsets uncommitted.
    pub(super) async fn commit(
        &mut self,
        producer: &FutureProducer<ClientEvents>,
        acks: &AckTracker,
    ) -> Result<usize, TransactionError> {
        if !self.open {
            return Ok(0);
        }
        if !acks.others_acked(&self.batches).await {
            self.abort(producer).await;
            return Err(TransactionError::Abandoned);
        }
        let offsets = self.offset_list();
        let group = self.link.group();
        let committed = {
            let producer = producer.clone();
            blocking(move || {
                if offsets.count() > 0 {
                    let group = group.ok_or(TransactionError::NoGroup)?;
                    producer.send_offsets_to_transaction(&offsets, &group, CALL_TIMEOUT)?;
                }
                producer.commit_transaction(CALL_TIMEOUT)?;
                Ok(())
            })
            .await
        };
        if let Err(error) = committed {
            self.abort(producer).await;
            return Err(error);
        }
        for (tp, id) in &self.batches {
            acks.ack(tp, *id);
        }
        let count = self.batches.len();
        self.clear();
        Ok(count)
    }

    /// Aborts the open transaction (best effort: a fenced producer cannot, and its
    /// transaction is aborted by the coordinator anyway).
    pub(super) async fn abort(&mut self, producer: &FutureProducer<ClientEvents>) {
        if !self.open {
            return;
        }
        let started = Instant::now();
        let aborted = {
            let producer = producer.clone();
            blocking(move || Ok(producer.abort_transaction(CALL_TIMEOUT)?)).await
        };
        match aborted {
            Ok(()) => {
                tracing::warn!(batches = self.batches.len(), took = ?started.elapsed(), "transaction aborted: its output stays invisible to read_committed consumers and its records are read again")
            }
            Err(error) => {
                tracing::warn!(error = %crate::telemetry::chain(&error), "aborting the transaction failed; the coordinator aborts it when it times out or the producer is fenced")
            }
        }
        self.clear();
    }

    fn clear(&mut self) {
        self.open = false;
        self.batches.clear();
        self.offsets.clear();
    }

    /// The offsets to commit, each with the last source offset whose output is committed
    /// in its metadata.
    fn offset_list(&self) -> TopicPartitionList {
        let mut list = TopicPartitionList::with_capacity(self.offsets.len());
        for (tp, &(offset, through)) in &self.offsets {
            let mut element = list.add_partition(&tp.topic, tp.partition);
            // Only fails for an invalid offset value, which `last + 1` never is.
            let _ = element.set_offset(Offset::Offset(offset));
            element.set_metadata(metadata(through));
        }
        list
    }
}

/// Runs a blocking transactional call off the async workers.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, TransactionError> + Send + 'static,
) -> Result<T, TransactionError> {
    let wrapped = move || call();
    tokio::task::spawn_blocking(wrapped)
        .await
        .map_err(|e| TransactionError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Provenance;
    use arrow::array::RecordBatch;
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch(first: i64, offsets: Vec<i64>, retain_from: Option<i64>) -> Batch {
        let schema = Arc::new(Schema::new(vec![Field::new(
            OFFSET_COLUMN,
            DataType::Int64,
            false,
        )]));
        let last = offsets.iter().copied().max().unwrap_or(first);
        let rows = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(offsets))]).unwrap();
        Batch {
            provenance: Provenance {
                id: BatchId(first as u64),
                tp: TopicPartition::new("in", 0),
                first_offset: first,
                last_offset: last,
            },
            rows,
            dead_letters: Vec::new(),
            retain_from,
        }
    }

    #[test]
    fn rows_an_earlier_transaction_committed_are_left_out() {
        let link = Arc::new(Link::new("t".into(), Duration::from_secs(1)));
        let transaction = Transaction::new(link.clone());
        let replay = batch(10, vec![10, 12, 14, 16], None);
        assert!(
            transaction.fresh_rows(&replay).is_none(),
            "no mark: all rows"
        );
        link.resume(TopicPartition::new("in", 0), 13);
        let fresh = transaction.fresh_rows(&replay).unwrap();
        assert_eq!(fresh, BooleanArray::from(vec![false, false, true, true]));
        assert!(transaction.fresh_rows(&batch(14, vec![14], None)).is_none());
    }

    #[test]
    fn the_committed_offset_stops_where_a_window_retains_and_the_mark_says_how_far_output_went() {
        let link = Arc::new(Link::new("t".into(), Duration::from_secs(1)));
        let mut transaction = Transaction::new(link);
        transaction.record(&batch(0, vec![0, 4, 9], None));
        transaction.record(&batch(10, vec![10, 19], Some(7)));
        let list = transaction.offset_list();
        assert_eq!(list.count(), 1, "one entry per partition: its last batch's");
        let element = list.find_partition("in", 0).unwrap();
        assert_eq!(
            element.offset(),
            Offset::Offset(7),
            "where the window's records start"
        );
        assert_eq!(element.metadata(), "sluice.through=19");
        assert_eq!(transaction.batches.len(), 2);
    }
}

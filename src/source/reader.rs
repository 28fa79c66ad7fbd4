//! One turn of a Kafka source's loop: the consumer's queue without waiting (rebalances,
//! errors, and the records of any partition not routed to the fetch queue), then the
//! source's [`FetchQueue`] (waiting when nothing else came). Shared by the group source
//! and the bounded (backfill) source.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};

use super::batcher::Record;
use super::fetch_queue::{FetchQueue, RawMessage};
use crate::batch::TopicPartition;

/// A record as a source's turn hands it on: from the consumer's queue or from the fetch
/// queue.
pub(super) enum Consumed<'a, 'c> {
    Polled(&'a BorrowedMessage<'c>),
    Fetched(RawMessage<'a>),
}

impl Record for Consumed<'_, '_> {
    fn offset(&self) -> i64 {
        match self {
            Consumed::Polled(m) => Message::offset(*m),
            Consumed::Fetched(m) => m.offset(),
        }
    }
    fn timestamp_millis(&self) -> Option<i64> {
        match self {
            Consumed::Polled(m) => Message::timestamp(*m).to_millis(),
            Consumed::Fetched(m) => m.timestamp().to_millis(),
        }
    }
    fn key(&self) -> Option<&[u8]> {
        match self {
            Consumed::Polled(m) => Message::key(*m),
            Consumed::Fetched(m) => m.key(),
        }
    }
    fn payload(&self) -> Option<&[u8]> {
        match self {
            Consumed::Polled(m) => Message::payload(*m),
            Consumed::Fetched(m) => m.payload(),
        }
    }
    fn for_each_header<'m>(&'m self, mut each: impl FnMut(&str, Option<&'m [u8]>)) {
        match self {
            Consumed::Polled(m) => {
                for header in Message::headers(*m).into_iter().flat_map(|h| h.iter()) {
                    each(header.key, header.value);
                }
            }
            Consumed::Fetched(m) => m.for_each_header(each),
        }
    }
}

/// A source's fetch queue and the names of the partitions it has seen. Declare it
/// before the consumer: it must be dropped first.
pub(super) struct Reader {
    fetch: FetchQueue,
    partitions: PartitionNames,
}

impl Reader {
    pub(super) fn new(fetch: FetchQueue) -> Self {
        Reader {
            fetch,
            partitions: PartitionNames::default(),
        }
    }

    /// Serves the consumer's queue once without waiting, then reads the fetch queue,
    /// waiting up to `wait` when the consumer's queue had nothing. Calls `on_error` with
    /// each error and `each` with each record, in order; stops at `each`'s first error.
    /// True when nothing came (the source is idle).
    pub(super) fn turn<C: ConsumerContext, E>(
        &mut self,
        consumer: &BaseConsumer<C>,
        wait: Duration,
        mut on_error: impl FnMut(KafkaError),
        mut each: impl FnMut(&TopicPartition, &Consumed<'_, '_>) -> Result<(), E>,
    ) -> Result<bool, E> {
        let polled = consumer.poll(Duration::ZERO);
        let mut idle = polled.is_none();
        match polled {
            None => {}
            Some(Err(e)) => on_error(e),
            Some(Ok(message)) => {
                let tp = self.partitions.of(&message);
                each(tp, &Consumed::Polled(&message))?;
            }
        }
        let read = self.fetch.read(if idle { wait } else { Duration::ZERO });
        idle &= read.is_empty();
        for message in read.iter() {
            match message {
                Err(e) => on_error(e),
                Ok(message) => {
                    let tp = self.partitions.of_raw(&message);
                    each(tp, &Consumed::Fetched(message))?;
                }
            }
        }
        Ok(idle)
    }
}

/// The topic-partition of each message, without allocating one per message: the
/// partitions seen so far are kept and handed out again (a consumer has a handful).
#[derive(Default)]
struct PartitionNames {
    known: Vec<TopicPartition>,
    /// The topic handle and partition of the last message read from the fetch queue,
    /// and where its name is in `known`: messages come in runs of one partition.
    last_raw: Option<(usize, i32, usize)>,
}

impl PartitionNames {
    fn of(&mut self, message: &BorrowedMessage<'_>) -> &TopicPartition {
        let at = self.position(Message::topic(message), Message::partition(message));
        &self.known[at]
    }

    /// As [`Self::of`], for a message from the source's fetch queue: the name is looked
    /// up only when the partition changes.
    fn of_raw(&mut self, message: &RawMessage<'_>) -> &TopicPartition {
        let (id, partition) = (message.topic_id(), message.partition());
        let at = match self.last_raw {
            Some((last_id, last_partition, at)) if last_id == id && last_partition == partition => {
                at
            }
            _ => {
                let at = self.position(message.topic(), partition);
                self.last_raw = Some((id, partition, at));
                at
            }
        };
        &self.known[at]
    }

    fn position(&mut self, topic: &str, partition: i32) -> usize {
        match self
            .known
            .iter()
            .position(|tp| tp.partition == partition && &*tp.topic == topic)
        {
            Some(at) => at,
            None => {
                self.known.push(TopicPartition::new(topic, partition));
                self.known.len() - 1
            }
        }
    }
}

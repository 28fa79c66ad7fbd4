//! Exactly-once output topics: what the group consumer and the transactional Kafka sink
//! share.
//!
//! With `sinks[].kafka.exactly_once`, the consumer never commits offsets itself. Every
//! `commit_interval` the source sends a checkpoint [`Flush`](crate::batch::Flush) down the
//! pipeline; every sink makes what it holds durable, and the Kafka sink, once every other
//! sink has acknowledged the batches of its open transaction, sends the consumer offsets
//! into that transaction and commits it: the output messages and the offsets become
//! visible together or not at all. Only then does it acknowledge those batches, so the
//! source's revoke and shutdown drains wait for the transaction too.
//!
//! A stateful stage can hold the committed offset back (a window re-reads its open
//! records after a restart) while the transaction already holds the outputs of later
//! records. The offset's commit metadata therefore records the last source offset whose
//! output is committed (`sluice.through=N`); after an assignment the consumer reads it
//! back ([`Link::resume`]) and the sink drops rows at or before it, as the Parquet sink
//! drops rows its dataset already holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::consumer::ConsumerGroupMetadata;

use crate::batch::TopicPartition;

const THROUGH: &str = "sluice.through=";

/// The commit metadata recording that outputs through source offset `through` are
/// committed.
pub fn metadata(through: i64) -> String {
    format!("{THROUGH}{through}")
}

/// The offset recorded by [`metadata`], if `text` is such a record.
pub fn parse_metadata(text: &str) -> Option<i64> {
    text.strip_prefix(THROUGH)?.parse().ok()
}

/// Shared between the group consumer (which writes) and the transactional sink (which
/// reads).
pub struct Link {
    /// The producer's `transactional.id`: stable for a member (its `group.instance.id`),
    /// so a restarted member fences its killed predecessor and aborts its open
    /// transaction at once.
    pub transactional_id: String,
    /// How often the source sends a checkpoint.
    pub interval: Duration,
    group: Mutex<Option<Arc<ConsumerGroupMetadata>>>,
    through: Mutex<HashMap<TopicPartition, i64>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("transactional_id", &self.transactional_id)
            .field("interval", &self.interval)
            .field("group", &self.group().is_some())
            .finish_non_exhaustive()
    }
}

impl Link {
    pub fn new(transactional_id: String, interval: Duration) -> Self {
        Link {
            transactional_id,
            interval,
            group: Mutex::new(None),
            through: Mutex::new(HashMap::new()),
        }
    }

    /// The consumer's group metadata (generation, member id), as of its last assignment.
    pub fn set_group(&self, metadata: Option<ConsumerGroupMetadata>) {
        *lock(&self.group) = metadata.map(Arc::new);
    }

    pub fn group(&self) -> Option<Arc<ConsumerGroupMetadata>> {
        lock(&self.group).clone()
    }

    /// An assigned partition's committed metadata said its outputs are committed through
    /// source offset `through`.
    pub fn resume(&self, tp: TopicPartition, through: i64) {
        lock(&self.through).insert(tp, through);
    }

    /// Revoked partitions: their next owner reads their marks.
    pub fn forget(&self, tps: &[TopicPartition]) {
        let mut through = lock(&self.through);
        for tp in tps {
            through.remove(tp);
        }
    }

    /// The last source offset of `tp` whose output an earlier run committed.
    pub fn through(&self, tp: &TopicPartition) -> Option<i64> {
        lock(&self.through).get(tp).copied()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain values: a panic elsewhere leaves nothing half-updated.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_mark_reads_back_and_other_metadata_is_ignored() {
        assert_eq!(parse_metadata(&metadata(41)), Some(41));
        assert_eq!(parse_metadata(""), None);
        assert_eq!(parse_metadata("someone else's"), None);
        let link = Link::new("t".into(), Duration::from_secs(1));
        let tp = TopicPartition::new("a", 0);
        link.resume(tp.clone(), 9);
        assert_eq!(link.through(&tp), Some(9));
        link.forget(std::slice::from_ref(&tp));
        assert_eq!(link.through(&tp), None);
    }
}

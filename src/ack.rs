//! Per-partition, in-order offset tracking: an offset becomes committable only when every
//! sink has made every batch up to it durable.
//!
//! The source registers each batch (in offset order) before sending it downstream, saying
//! how many sinks must acknowledge it. Sinks acknowledge in any order; a partition's
//! committable offset advances only over the contiguous prefix of fully acknowledged
//! batches and is `last + 1`, the Kafka convention for "next offset to read", or the
//! batch's `retain_from` when a stateful stage still needs earlier records. The source
//! thread takes the advanced offsets to store them with librdkafka, and waits on the
//! tracker (a condvar) to drain a partition before committing on revoke and shutdown.
//!
//! A flush is tracked too: a sink may still commit on a flush after every batch was
//! acknowledged (the Parquet sink merges a segment's files), and that commit must happen
//! before a revoked partition's next owner claims it. The source numbers each flush
//! ([`AckTracker::begin_flush`]), every sink reports when it has handled it, and a drain
//! waits for both.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::batch::{BatchId, Provenance, TopicPartition};

#[derive(Debug)]
struct PendingBatch {
    id: BatchId,
    last_offset: i64,
    remaining: usize,
    /// Earliest offset a stateful stage still holds after this batch.
    retain_from: Option<i64>,
}

#[derive(Debug, Default)]
struct PartitionAcks {
    pending: VecDeque<PendingBatch>,
    /// Next offset to commit, advanced over fully acknowledged batches.
    committable: Option<i64>,
    /// Whether `committable` moved since the source last took it.
    advanced: bool,
}

#[derive(Debug, Default)]
struct State {
    partitions: HashMap<TopicPartition, PartitionAcks>,
    /// Flushes sent and how many sinks have not handled each yet.
    flushes: HashMap<u64, usize>,
    last_flush: u64,
    failed: bool,
}

/// Shared between the source thread and every sink.
#[derive(Debug)]
pub struct AckTracker {
    sinks: usize,
    state: Mutex<State>,
    changed: Condvar,
    /// The same wake-up as `changed`, for async waiters (a transactional sink).
    acked: tokio::sync::Notify,
}

impl AckTracker {
    /// A tracker for a pipeline whose batches must be acknowledged by `sinks` sinks.
    pub fn new(sinks: usize) -> Self {
        AckTracker {
            sinks,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            acked: tokio::sync::Notify::new(),
        }
    }

    pub fn sinks(&self) -> usize {
        self.sinks
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain counters behind: keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a batch the source is about to send. Batches of a partition must be
    /// registered in offset order.
    pub fn register(&self, provenance: &Provenance) {
        let mut state = self.lock();
        state
            .partitions
            .entry(provenance.tp.clone())
            .or_default()
            .pending
            .push_back(PendingBatch {
                id: provenance.id,
                last_offset: provenance.last_offset,
                remaining: self.sinks,
                retain_from: None,
            });
    }

    /// After processing a batch, a stateful stage still holds records of its partition
    /// from `offset` on: commits for this batch stop there. Call before any sink acks it.
    pub fn retain(&self, tp: &TopicPartition, id: BatchId, offset: i64) {
        let mut state = self.lock();
        if let Some(batch) = state
            .partitions
            .get_mut(tp)
            .and_then(|p| p.pending.iter_mut().find(|b| b.id == id))
        {
            batch.retain_from = Some(offset);
        }
    }

    /// One sink made the batch durable.
    pub fn ack(&self, tp: &TopicPartition, id: BatchId) {
        let mut state = self.lock();
        let Some(partition) = state.partitions.get_mut(tp) else {
            return; // revoked meanwhile: its offsets are no longer ours to commit
        };
        if let Some(batch) = partition.pending.iter_mut().find(|b| b.id == id) {
            batch.remaining = batch.remaining.saturating_sub(1);
        }
        while partition.pending.front().is_some_and(|b| b.remaining == 0) {
            if let Some(done) = partition.pending.pop_front() {
                let next = done.last_offset + 1;
                partition.committable = Some(done.retain_from.map_or(next, |r| r.min(next)));
                partition.advanced = true;
            }
        }
        drop(state);
        self.changed.notify_all();
        self.acked.notify_waiters();
    }

    /// Whether every sink but one has acknowledged each of `batches` (a batch of a
    /// partition that is no longer tracked counts as settled); `None` once the pipeline
    /// failed.
    fn settled_but_one(&self, batches: &[(TopicPartition, BatchId)]) -> Option<bool> {
        let state = self.lock();
        if state.failed {
            return None;
        }
        Some(batches.iter().all(|(tp, id)| {
            state
                .partitions
                .get(tp)
                .and_then(|p| p.pending.iter().find(|b| b.id == *id))
                .is_none_or(|b| b.remaining <= 1)
        }))
    }

    /// Waits until every sink but the caller has acknowledged each of `batches`. Returns
    /// false when the pipeline failed (the other sinks will not acknowledge any more).
    pub async fn others_acked(&self, batches: &[(TopicPartition, BatchId)]) -> bool {
        loop {
            let acked = self.acked.notified();
            tokio::pin!(acked);
            // Registered before the check, so an ack in between still wakes us.
            acked.as_mut().enable();
            match self.settled_but_one(batches) {
                Some(true) => return true,
                None => return false,
                Some(false) => acked.await,
            }
        }
    }

    /// Numbers a flush the source is about to send; every sink must report it handled.
    pub fn begin_flush(&self) -> u64 {
        let mut state = self.lock();
        state.last_flush += 1;
        let seq = state.last_flush;
        state.flushes.insert(seq, self.sinks);
        seq
    }

    /// One sink has handled flush `seq` (everything it held for the flush is durable).
    pub fn flushed(&self, seq: u64) {
        let mut state = self.lock();
        if let Some(remaining) = state.flushes.get_mut(&seq) {
            *remaining = remaining.saturating_sub(1);
            if *remaining == 0 {
                state.flushes.remove(&seq);
            }
        }
        drop(state);
        self.changed.notify_all();
    }

    /// Offsets that advanced since the last call, as `(partition, next offset)`.
    pub fn take_committable(&self) -> Vec<(TopicPartition, i64)> {
        let mut state = self.lock();
        state
            .partitions
            .iter_mut()
            .filter(|(_, p)| p.advanced)
            .filter_map(|(tp, p)| {
                p.advanced = false;
                p.committable.map(|offset| (tp.clone(), offset))
            })
            .collect()
    }

    /// The committable offset of each of `tps` that has one.
    pub fn committable(&self, tps: &[TopicPartition]) -> Vec<(TopicPartition, i64)> {
        let state = self.lock();
        tps.iter()
            .filter_map(|tp| {
                let offset = state.partitions.get(tp)?.committable?;
                Some((tp.clone(), offset))
            })
            .collect()
    }

    /// Batches registered but not yet acknowledged by every sink, over `tps` (all if None).
    pub fn in_flight(&self, tps: Option<&[TopicPartition]>) -> usize {
        let state = self.lock();
        state
            .partitions
            .iter()
            .filter(|(tp, _)| tps.is_none_or(|tps| tps.contains(tp)))
            .map(|(_, p)| p.pending.len())
            .sum()
    }

    /// Waits until no batch of `tps` (all if None) is in flight and every sink has handled
    /// every flush sent. Returns false on timeout or when the pipeline failed (its sinks
    /// will not acknowledge any more).
    pub fn wait_drained(&self, tps: Option<&[TopicPartition]>, timeout: Duration) -> bool {
        let now = Instant::now();
        let deadline = now.checked_add(timeout).unwrap_or(now);
        let mut state = self.lock();
        loop {
            let in_flight: usize = state
                .partitions
                .iter()
                .filter(|(tp, _)| tps.is_none_or(|tps| tps.contains(tp)))
                .map(|(_, p)| p.pending.len())
                .sum();
            if in_flight == 0 && state.flushes.is_empty() {
                return true;
            }
            let now = Instant::now();
            if state.failed || now >= deadline {
                return false;
            }
            state = match self.changed.wait_timeout(state, deadline - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// Forgets revoked partitions: late acknowledgements for them are ignored.
    pub fn forget(&self, tps: &[TopicPartition]) {
        let mut state = self.lock();
        for tp in tps {
            state.partitions.remove(tp);
        }
    }

    /// Marks the pipeline failed, waking anyone waiting for a drain.
    pub fn fail(&self) {
        self.lock().failed = true;
        self.changed.notify_all();
        self.acked.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(id: u64, first: i64, last: i64) -> Provenance {
        Provenance {
            id: BatchId(id),
            tp: TopicPartition::new("t", 0),
            first_offset: first,
            last_offset: last,
        }
    }

    #[test]
    fn advances_only_over_batches_every_sink_acknowledged_in_order() {
        let tracker = AckTracker::new(2);
        let (a, b, c) = (batch(1, 0, 9), batch(2, 10, 19), batch(3, 20, 29));
        for p in [&a, &b, &c] {
            tracker.register(p);
        }
        let tp = a.tp.clone();
        // Second batch fully acknowledged first: nothing is committable yet.
        tracker.ack(&tp, b.id);
        tracker.ack(&tp, b.id);
        tracker.ack(&tp, a.id);
        assert!(tracker.take_committable().is_empty());
        // The first batch's second sink completes the prefix 0..=19.
        tracker.ack(&tp, a.id);
        assert_eq!(tracker.take_committable(), vec![(tp.clone(), 20)]);
        assert!(tracker.take_committable().is_empty(), "taken once");
        assert_eq!(tracker.in_flight(None), 1);
        tracker.ack(&tp, c.id);
        assert!(!tracker.wait_drained(None, Duration::from_millis(10)));
        tracker.ack(&tp, c.id);
        assert!(tracker.wait_drained(None, Duration::from_millis(10)));
        assert_eq!(
            tracker.committable(std::slice::from_ref(&tp)),
            vec![(tp, 30)]
        );
    }

    #[test]
    fn commits_stop_at_what_a_stateful_stage_retains() {
        let tracker = AckTracker::new(1);
        let (a, b) = (batch(1, 0, 9), batch(2, 10, 19));
        tracker.register(&a);
        tracker.register(&b);
        let tp = a.tp.clone();
        // After batch a an open window holds offsets from 4; after b, from 12.
        tracker.retain(&tp, a.id, 4);
        tracker.retain(&tp, b.id, 12);
        tracker.ack(&tp, a.id);
        assert_eq!(tracker.take_committable(), vec![(tp.clone(), 4)]);
        tracker.ack(&tp, b.id);
        assert_eq!(tracker.take_committable(), vec![(tp, 12)]);
    }

    #[test]
    fn acks_for_forgotten_partitions_are_ignored_and_failure_wakes_waiters() {
        let tracker = std::sync::Arc::new(AckTracker::new(1));
        let a = batch(1, 0, 9);
        tracker.register(&a);
        let waiter = {
            let tracker = tracker.clone();
            std::thread::spawn(move || tracker.wait_drained(None, Duration::from_secs(30)))
        };
        tracker.fail();
        assert!(!waiter.join().unwrap());
        tracker.forget(std::slice::from_ref(&a.tp));
        tracker.ack(&a.tp, a.id);
        assert!(tracker.take_committable().is_empty());
    }

    #[tokio::test]
    async fn a_transactional_sink_waits_until_every_other_sink_acknowledged() {
        let tracker = std::sync::Arc::new(AckTracker::new(3));
        let (a, b) = (batch(1, 0, 9), batch(2, 10, 19));
        tracker.register(&a);
        tracker.register(&b);
        let ids = vec![(a.tp.clone(), a.id), (b.tp.clone(), b.id)];
        let waiter = {
            let (tracker, ids) = (tracker.clone(), ids.clone());
            tokio::spawn(async move { tracker.others_acked(&ids).await })
        };
        for (tp, id) in [(&a.tp, a.id), (&b.tp, b.id), (&a.tp, a.id)] {
            tracker.ack(tp, id);
            tokio::task::yield_now().await;
            assert!(
                !waiter.is_finished(),
                "one other sink has not acknowledged yet"
            );
        }
        tracker.ack(&b.tp, b.id);
        assert!(
            waiter.await.unwrap(),
            "both batches wait only on the caller now"
        );
        assert!(
            tracker.take_committable().is_empty(),
            "nothing committable before it acks"
        );

        let failed = {
            let tracker = tracker.clone();
            tracker.register(&batch(3, 20, 29));
            tokio::spawn(async move {
                let ids = [(TopicPartition::new("t", 0), BatchId(3))];
                tracker.others_acked(&ids).await
            })
        };
        tracker.fail();
        assert!(!failed.await.unwrap(), "a failed pipeline ends the wait");
    }

    #[test]
    fn a_drain_waits_until_every_sink_handled_every_flush() {
        let tracker = AckTracker::new(2);
        let seq = tracker.begin_flush();
        assert!(
            !tracker.wait_drained(None, Duration::from_millis(10)),
            "no batch in flight, but the flush is not handled yet"
        );
        tracker.flushed(seq);
        assert!(!tracker.wait_drained(None, Duration::from_millis(10)));
        tracker.flushed(seq);
        assert!(tracker.wait_drained(None, Duration::from_millis(10)));
    }
}

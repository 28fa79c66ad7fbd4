//! The order the stateful part of the chain runs in: a partition's batches one at a time,
//! in source order; batches of different partitions at once; a flush that ends state
//! (a revoke, the end of a run) after every batch before it and before every batch after
//! it.
//!
//! [`PartitionOrder`] is asked in source order, once per message, and hands each one a
//! [`Wait`] (what it must wait for) and a [`Turn`] (held while it runs; dropping it,
//! whether the work finished, failed or was dropped, lets the ones waiting on it start).

use std::collections::HashMap;

use futures::future::{join_all, BoxFuture, FutureExt, JoinAll, Shared};
use tokio::sync::oneshot;

use crate::batch::TopicPartition;

/// Resolves once the turn it belongs to is dropped.
type Done = Shared<BoxFuture<'static, ()>>;

/// What a message waits for before it runs.
pub(super) type Wait = JoinAll<Done>;

/// Held while a message runs; dropping it releases its successors.
pub(super) struct Turn {
    /// `None` for a message nothing waits for.
    _done: Option<oneshot::Sender<()>>,
}

fn turn() -> (Turn, Done) {
    let (done, released) = oneshot::channel::<()>();
    let turn = Turn { _done: Some(done) };
    (turn, released.map(|_| ()).boxed().shared())
}

/// Who waits for whom; see the module doc.
#[derive(Default)]
pub(super) struct PartitionOrder {
    /// The latest batch of each partition since the last barrier.
    last: HashMap<TopicPartition, Done>,
    /// The latest barrier.
    barrier: Option<Done>,
}

impl PartitionOrder {
    /// The next batch of `tp`: it waits for the previous batch of `tp`, or for the last
    /// barrier if `tp` has none since.
    pub(super) fn batch(&mut self, tp: &TopicPartition) -> (Wait, Turn) {
        let (turn, done) = turn();
        let before = match self.last.insert(tp.clone(), done) {
            Some(previous) => Some(previous),
            None => self.barrier.clone(),
        };
        (join_all(before), turn)
    }

    /// A barrier: it waits for every batch and barrier before it, and every batch after
    /// it waits for it.
    pub(super) fn barrier(&mut self) -> (Wait, Turn) {
        let (turn, done) = turn();
        let before: Vec<Done> = self
            .last
            .drain()
            .map(|(_, done)| done)
            .chain(self.barrier.replace(done))
            .collect();
        (join_all(before), turn)
    }

    /// A message that touches no state (a checkpoint, an error, any batch of a chain
    /// without stateful stages): it waits for nothing and nothing waits for it.
    pub(super) fn free() -> (Wait, Turn) {
        (join_all(Vec::new()), Turn { _done: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(wait: &mut Wait) -> bool {
        (&mut *wait).now_or_never().is_some()
    }

    fn tp(partition: i32) -> TopicPartition {
        TopicPartition::new("t", partition)
    }

    #[test]
    fn a_partitions_batches_run_one_after_another_and_partitions_at_once() {
        let mut order = PartitionOrder::default();
        let (mut first, first_turn) = order.batch(&tp(0));
        let (mut second, second_turn) = order.batch(&tp(0));
        let (mut other, _other_turn) = order.batch(&tp(1));
        assert!(
            ready(&mut first),
            "the first batch of a partition waits for nothing"
        );
        assert!(ready(&mut other), "another partition's batch does not wait");
        assert!(!ready(&mut second), "the second batch waits for the first");
        drop(first_turn);
        assert!(ready(&mut second));
        let (mut third, _) = order.batch(&tp(0));
        assert!(!ready(&mut third), "the third waits for the second");
        drop(second_turn);
        assert!(ready(&mut third));
    }

    #[test]
    fn a_barrier_waits_for_every_batch_before_it_and_holds_every_batch_after_it() {
        let mut order = PartitionOrder::default();
        let (_, zero) = order.batch(&tp(0));
        let (_, one) = order.batch(&tp(1));
        let (mut barrier, barrier_turn) = order.barrier();
        let (mut after, after_turn) = order.batch(&tp(0));
        let (mut new_partition, _new_partition_turn) = order.batch(&tp(2));
        drop(zero);
        assert!(!ready(&mut barrier), "partition 1's batch is still running");
        drop(one);
        assert!(ready(&mut barrier));
        assert!(!ready(&mut after), "batches after the barrier wait for it");
        assert!(
            !ready(&mut new_partition),
            "a partition first seen after it too"
        );
        let (mut second_barrier, _) = order.barrier();
        drop(barrier_turn);
        assert!(ready(&mut new_partition));
        assert!(ready(&mut after));
        assert!(
            !ready(&mut second_barrier),
            "a barrier waits for the batches since the previous one"
        );
        drop(after_turn);
        assert!(
            !ready(&mut second_barrier),
            "partition 2's batch still runs"
        );
    }

    #[test]
    fn free_messages_wait_for_nothing_and_hold_nothing() {
        let mut order = PartitionOrder::default();
        let (_, running) = order.batch(&tp(0));
        let (mut free, _free_turn) = PartitionOrder::free();
        assert!(ready(&mut free));
        let (mut barrier, _) = order.barrier();
        assert!(!ready(&mut barrier));
        drop(running);
        assert!(ready(&mut barrier), "the free message's turn held nothing");
    }
}

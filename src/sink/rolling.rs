//! What the Parquet and Delta sinks share: the run loop (batches, flushes, and a tick that
//! commits groups that are old enough), and which partitions those are.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{SinkError, SinkMessage};
use crate::ack::AckTracker;
use crate::batch::{Batch, Flush, FlushKind, TopicPartition};
use crate::config::RollConfig;

/// A sink that keeps an open group of rows per source partition and commits it when a
/// limit is reached.
pub(crate) trait Rolling {
    type State;
    fn roll_config(&self) -> &RollConfig;
    fn partitions(&mut self) -> &mut HashMap<TopicPartition, Self::State>;
    /// When the partition's open group was opened (`None`: there is none), and whether the
    /// partition rolled since it was assigned.
    fn group_age(state: &Self::State) -> (Option<Instant>, bool);
    fn write(&mut self, batch: &Batch) -> Result<(), SinkError>;
    /// Commits the partition's open group: `early` when a limit cut it (more of its
    /// segment follows), not on a flush.
    fn roll_group(&mut self, tp: &TopicPartition, early: bool) -> Result<(), SinkError>;
    /// [`Self::roll_group`] for each of `tps`, in order; a sink may do their work at once.
    fn roll_groups(&mut self, tps: &[TopicPartition], early: bool) -> Result<(), SinkError> {
        for tp in tps {
            self.roll_group(tp, early)?;
        }
        Ok(())
    }
    /// Where flushes are reported handled.
    fn acks(&self) -> &AckTracker;

    /// Commits the groups of the partitions `flush` names (all by default), and forgets
    /// them when they are revoked. A checkpoint commits like a size limit does (the
    /// segment stays open); the others end the segment's merge.
    fn flush(&mut self, flush: &Flush) -> Result<(), SinkError> {
        let tps = targets(flush, self.partitions());
        self.roll_groups(&tps, flush.kind == FlushKind::Checkpoint)?;
        if flush.kind == FlushKind::Revoke {
            let partitions = self.partitions();
            for tp in &tps {
                partitions.remove(tp);
            }
        }
        Ok(())
    }

    /// Commits the groups that are old enough (see [`aged`]).
    fn roll_aged(&mut self) -> Result<(), SinkError> {
        let roll = self.roll_config().clone();
        for tp in aged(self.partitions(), &roll, Self::group_age) {
            self.roll_group(&tp, true)?;
        }
        Ok(())
    }
}

/// Runs `sink` until its input closes, then commits whatever is still open.
pub(crate) async fn run<S: Rolling>(
    sink: &mut S,
    mut input: mpsc::Receiver<SinkMessage>,
) -> Result<(), SinkError> {
    let period = (sink.roll_config().first_max_age() / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = input.recv() => match message {
                Some(SinkMessage::Batch(batch)) => sink.write(&batch)?,
                Some(SinkMessage::Flush(flush)) => {
                    sink.flush(&flush)?;
                    if let Some(seq) = flush.seq {
                        sink.acks().flushed(seq);
                    }
                }
                None => break,
            },
            _ = tick.tick() => sink.roll_aged()?,
        }
    }
    sink.flush(&Flush::all())
}

/// The partitions `flush` is about, among those a sink holds.
fn targets<T>(flush: &Flush, partitions: &HashMap<TopicPartition, T>) -> Vec<TopicPartition> {
    match &flush.partitions {
        Some(tps) => tps.clone(),
        None => partitions.keys().cloned().collect(),
    }
}

/// Partitions whose open group (`opened`, `None` when there is none) is `roll.max_age`
/// old, or `roll.first_max_age` for a partition that has not rolled since it was
/// assigned: a pipeline that is restarted often still makes durable progress.
fn aged<T>(
    partitions: &HashMap<TopicPartition, T>,
    roll: &RollConfig,
    group: impl Fn(&T) -> (Option<Instant>, bool),
) -> Vec<TopicPartition> {
    partitions
        .iter()
        .filter(|(_, state)| {
            let (opened, rolled) = group(state);
            let limit = if rolled {
                roll.max_age
            } else {
                roll.first_max_age()
            };
            opened.is_some_and(|at| at.elapsed() >= limit)
        })
        .map(|(tp, _)| tp.clone())
        .collect()
}

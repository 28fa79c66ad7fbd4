//! Records deleted by retention before the pipeline read them.
//!
//! When a consumer's next offset is no longer on the broker (the pipeline was stopped, or
//! fell behind, longer than the topic's retention), librdkafka resets to the log start
//! (`start: earliest`) or end (`latest`) and logs one line. The records in between are
//! gone for good, and without this check nothing else would say so. [`Gaps`] remembers
//! each partition's next expected offset (the committed offset at assignment, then one
//! past each record read); a record that arrives further on while the broker's log start
//! (low watermark) has moved past the expected offset marks the records in between as
//! skipped. Jumps the log start does not explain (compaction, transaction markers) are
//! not gaps.

use crate::batch::{RecordMap, TopicPartition};

/// Records of one partition that were deleted before they were read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub tp: TopicPartition,
    /// The first offset not read.
    pub from: i64,
    /// Where reading went on.
    pub to: i64,
}

impl Gap {
    pub fn records(&self) -> u64 {
        u64::try_from(self.to - self.from).unwrap_or(0)
    }
}

/// Each assigned partition's next expected offset.
#[derive(Debug, Default)]
pub struct Gaps {
    expected: RecordMap<TopicPartition, i64>,
}

impl Gaps {
    /// `tp` resumes at its committed offset `next` (none: a new group, no gap possible).
    pub fn resume_at(&mut self, tp: TopicPartition, next: i64) {
        if next >= 0 {
            self.expected.insert(tp, next);
        }
    }

    pub fn forget(&mut self, tps: &[TopicPartition]) {
        for tp in tps {
            self.expected.remove(tp);
        }
    }

    /// A record of `tp` at `offset` was read. `log_start` gives the broker's low watermark
    /// (asked only when the offset jumped).
    pub fn read(
        &mut self,
        tp: &TopicPartition,
        offset: i64,
        log_start: impl FnOnce() -> Option<i64>,
    ) -> Option<Gap> {
        let next = offset.saturating_add(1);
        let expected = match self.expected.get_mut(tp) {
            Some(expected) => Some(std::mem::replace(expected, next)),
            None => self.expected.insert(tp.clone(), next),
        };
        let expected = expected.filter(|e| offset > *e)?;
        let low = log_start()?;
        (low > expected).then(|| Gap {
            tp: tp.clone(),
            from: expected,
            to: low.min(offset),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jump_past_the_log_start_is_a_gap_and_other_jumps_are_not() {
        let tp = TopicPartition::new("t", 0);
        let mut gaps = Gaps::default();
        gaps.resume_at(tp.clone(), 300);
        // Retention moved the log start to 600: records 300..600 are gone.
        assert_eq!(
            gaps.read(&tp, 600, || Some(600)),
            Some(Gap {
                tp: tp.clone(),
                from: 300,
                to: 600
            })
        );
        assert_eq!(gaps.read(&tp, 601, || panic!("no jump, no question")), None);
        // A transaction marker or a compacted record: the log start explains nothing.
        assert_eq!(gaps.read(&tp, 605, || Some(600)), None);
        // A partition read for the first time by a new group: no expectation.
        let fresh = TopicPartition::new("t", 1);
        gaps.resume_at(fresh.clone(), -1);
        assert_eq!(gaps.read(&fresh, 5_000, || Some(5_000)), None);
    }
}

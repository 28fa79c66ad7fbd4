//! The join behind live accuracy: predictions wait for their delayed label by id, and
//! labels that come first wait for their prediction, each for at most the horizon.
//!
//! Pure bookkeeping with the clock passed in (the caller reads `Instant::now()`), so the
//! expiry and cap rules are unit-tested without sleeping. One id may carry several
//! predictions at once (the served version and a shadow): a label scores each of them
//! for its own version. A replayed prediction of the same version replaces the earlier
//! one, so a restart's replay is not counted twice while it waits.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One version's prediction for a row: its top class and that class's probability.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Prediction {
    pub version: Arc<str>,
    pub class: usize,
    pub confidence: f32,
}

/// A prediction with its label.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Joined {
    pub truth: usize,
    pub predicted: usize,
    pub confidence: f32,
}

/// What happened to predictions and labels since the counts were last taken.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Predictions scored against a label.
    pub joined: u64,
    /// Predictions whose label did not come within the horizon.
    pub prediction_expired: u64,
    /// Labels that matched no prediction within the horizon.
    pub label_expired: u64,
    /// Predictions or labels given up because `max_pending` were already waiting.
    pub dropped: u64,
}

struct Waiting<T> {
    since: Instant,
    value: T,
}

struct Label {
    class: usize,
    /// Versions already scored with this label.
    scored: Vec<Arc<str>>,
}

/// Ids waiting, oldest first (`order` may hold ids since replaced or removed: an entry
/// counts only while its time matches the map's).
struct Pending<T> {
    by_id: HashMap<Arc<str>, Waiting<T>>,
    order: VecDeque<(Instant, Arc<str>)>,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending {
            by_id: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<T> Pending<T> {
    fn insert(&mut self, id: Arc<str>, value: T, now: Instant) {
        self.order.push_back((now, id.clone()));
        self.by_id.insert(id, Waiting { since: now, value });
    }

    /// Removes and returns the oldest entry if `expired(since)` says so.
    fn pop_oldest(&mut self, expired: impl Fn(Instant) -> bool) -> Option<T> {
        while let Some((since, id)) = self.order.front() {
            let current = self.by_id.get(id).is_some_and(|w| w.since == *since);
            if !current {
                self.order.pop_front();
                continue;
            }
            if !expired(*since) {
                return None;
            }
            let (_, id) = self.order.pop_front()?;
            return self.by_id.remove(&id).map(|w| w.value);
        }
        None
    }
}

/// The waiting predictions and labels, and each version's window of joined pairs.
pub(crate) struct Joiner {
    horizon: Duration,
    max_pending: usize,
    window: usize,
    predictions: Pending<Vec<Prediction>>,
    labels: Pending<Label>,
    windows: HashMap<Arc<str>, Vec<Joined>>,
    counts: Counts,
}

impl Joiner {
    pub(crate) fn new(horizon: Duration, max_pending: usize, window: usize) -> Self {
        Joiner {
            horizon,
            max_pending: max_pending.max(1),
            window: window.max(1),
            predictions: Pending::default(),
            labels: Pending::default(),
            windows: HashMap::new(),
            counts: Counts::default(),
        }
    }

    /// A prediction for row `id`. Returns the windows it completed (version, pairs).
    pub(crate) fn predict(
        &mut self,
        id: &str,
        prediction: Prediction,
        now: Instant,
    ) -> Option<(Arc<str>, Vec<Joined>)> {
        if let Some(waiting) = self.labels.by_id.get_mut(id) {
            let label = &mut waiting.value;
            if label.scored.contains(&prediction.version) {
                return None;
            }
            label.scored.push(prediction.version.clone());
            let truth = label.class;
            return self.score(prediction, truth);
        }
        if let Some(waiting) = self.predictions.by_id.get_mut(id) {
            let list = &mut waiting.value;
            match list.iter_mut().find(|p| p.version == prediction.version) {
                Some(earlier) => *earlier = prediction,
                None => list.push(prediction),
            }
            return None;
        }
        self.predictions
            .insert(Arc::from(id), vec![prediction], now);
        while self.predictions.by_id.len() > self.max_pending {
            let Some(given_up) = self.predictions.pop_oldest(|_| true) else {
                break;
            };
            self.counts.dropped += given_up.len() as u64;
        }
        None
    }

    /// The label of row `id` (a class index). Returns the windows it completed.
    pub(crate) fn label(
        &mut self,
        id: &str,
        truth: usize,
        now: Instant,
    ) -> Vec<(Arc<str>, Vec<Joined>)> {
        let mut full = Vec::new();
        let mut scored = Vec::new();
        if let Some(waiting) = self.predictions.by_id.remove(id) {
            for prediction in waiting.value {
                scored.push(prediction.version.clone());
                full.extend(self.score(prediction, truth));
            }
        }
        // Kept for the horizon either way: a later prediction of another version (a
        // shadow, a canary) for the same row is scored with it too.
        self.labels.insert(
            Arc::from(id),
            Label {
                class: truth,
                scored,
            },
            now,
        );
        while self.labels.by_id.len() > self.max_pending {
            let Some(given_up) = self.labels.pop_oldest(|_| true) else {
                break;
            };
            if given_up.scored.is_empty() {
                self.counts.dropped += 1;
            }
        }
        full
    }

    /// Gives up on whatever waited longer than the horizon.
    pub(crate) fn expire(&mut self, now: Instant) {
        let horizon = self.horizon;
        let old = |since: Instant| now.saturating_duration_since(since) >= horizon;
        while let Some(predictions) = self.predictions.pop_oldest(old) {
            self.counts.prediction_expired += predictions.len() as u64;
        }
        while let Some(label) = self.labels.pop_oldest(old) {
            if label.scored.is_empty() {
                self.counts.label_expired += 1;
            }
        }
    }

    /// The counts since the last call.
    pub(crate) fn take_counts(&mut self) -> Counts {
        std::mem::take(&mut self.counts)
    }

    /// Predictions waiting for a label now.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.predictions.by_id.values().map(|w| w.value.len()).sum()
    }

    fn score(&mut self, prediction: Prediction, truth: usize) -> Option<(Arc<str>, Vec<Joined>)> {
        self.counts.joined += 1;
        let pairs = self.windows.entry(prediction.version.clone()).or_default();
        pairs.push(Joined {
            truth,
            predicted: prediction.class,
            confidence: prediction.confidence,
        });
        if pairs.len() < self.window {
            return None;
        }
        Some((prediction.version, std::mem::take(pairs)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction(version: &str, class: usize) -> Prediction {
        Prediction {
            version: Arc::from(version),
            class,
            confidence: 0.9,
        }
    }

    #[test]
    fn labels_join_predictions_in_either_order_and_fill_windows_per_version() {
        let t0 = Instant::now();
        let mut joiner = Joiner::new(Duration::from_secs(60), 100, 2);
        assert!(joiner.predict("a", prediction("m/1", 0), t0).is_none());
        // The shadow's prediction of the same row waits beside the served one.
        assert!(joiner.predict("a", prediction("m/2", 1), t0).is_none());
        assert_eq!(joiner.waiting(), 2);
        assert!(joiner.label("a", 0, t0).is_empty());
        assert_eq!(joiner.waiting(), 0);
        // Label first, then the prediction: joined when it comes, once per version.
        assert!(joiner.label("b", 1, t0).is_empty());
        let (version, pairs) = joiner.predict("b", prediction("m/1", 1), t0).unwrap();
        assert_eq!(&*version, "m/1");
        assert_eq!(
            pairs,
            vec![
                Joined {
                    truth: 0,
                    predicted: 0,
                    confidence: 0.9
                },
                Joined {
                    truth: 1,
                    predicted: 1,
                    confidence: 0.9
                }
            ]
        );
        assert!(joiner.predict("b", prediction("m/1", 1), t0).is_none());
        let (version, _) = joiner.predict("b", prediction("m/2", 0), t0).unwrap();
        assert_eq!(&*version, "m/2");
        assert_eq!(joiner.take_counts().joined, 4);
    }

    #[test]
    fn what_waits_past_the_horizon_or_beyond_the_cap_is_given_up_and_counted() {
        let t0 = Instant::now();
        let horizon = Duration::from_secs(10);
        let mut joiner = Joiner::new(horizon, 2, 10);
        joiner.predict("a", prediction("m/1", 0), t0);
        joiner.predict("b", prediction("m/1", 0), t0 + Duration::from_secs(5));
        // A replay replaces, it does not add.
        joiner.predict("b", prediction("m/1", 1), t0 + Duration::from_secs(6));
        joiner.label("x", 0, t0 + Duration::from_secs(1));
        joiner.expire(t0 + Duration::from_secs(10));
        assert_eq!(joiner.waiting(), 1);
        let counts = joiner.take_counts();
        assert_eq!((counts.prediction_expired, counts.label_expired), (1, 0));
        joiner.expire(t0 + Duration::from_secs(11));
        assert_eq!(joiner.take_counts().label_expired, 1);
        // The cap: a third waiting prediction pushes out the oldest.
        joiner.predict("c", prediction("m/1", 0), t0 + Duration::from_secs(12));
        joiner.predict("d", prediction("m/1", 0), t0 + Duration::from_secs(12));
        assert_eq!(joiner.waiting(), 2);
        assert_eq!(joiner.take_counts().dropped, 1);
        // "b" was the one given up: its label now waits alone.
        assert!(joiner
            .label("b", 1, t0 + Duration::from_secs(13))
            .is_empty());
        assert_eq!(joiner.take_counts().joined, 0);
    }
}

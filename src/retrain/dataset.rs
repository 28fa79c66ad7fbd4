//! Training data from a sink's Parquet dataset, with polars.
//!
//! A lazy scan of the Hive-partitioned dataset; the time range, the SQL filter and the
//! label rules become polars expressions, so predicates and the column projection are
//! pushed into the scan (only the id, time, label inputs and feature columns are read, and
//! row groups outside the range are skipped by their statistics). Rows are then
//! deduplicated by id (the latest wins), labelled (rules, a label column, or a join with a
//! labels dataset), optionally balanced and sampled, and split into train and holdout by a
//! hash of the id, so the same rows land on the same side on every run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use polars::prelude::*;

use super::trainer::Examples;
use crate::config::job::{DatasetConfig, FeatureColumns, LabelConfig};

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("dataset {path}: {source}")]
    Polars { path: PathBuf, source: PolarsError },
    #[error("dataset {path}: {message}")]
    Shape { path: PathBuf, message: String },
}

/// Labelled rows, split.
#[derive(Debug, Clone, Default)]
pub struct Split {
    pub train: Examples,
    pub holdout: Examples,
    pub holdout_ids: Vec<String>,
    /// Rows read after deduplication and labelling, before balancing and sampling.
    pub labelled_rows: usize,
    /// Rows per class after balancing and sampling (train + holdout).
    pub class_counts: Vec<usize>,
}

pub use crate::batch::stable_hash;

fn scan(path: &Path) -> PolarsResult<LazyFrame> {
    let args = ScanArgsParquet {
        hive_options: HiveOptions {
            enabled: Some(true),
            ..Default::default()
        },
        glob: true,
        ..Default::default()
    };
    let pattern = format!("{}/**/*.parquet", path.display());
    LazyFrame::scan_parquet(PlRefPath::new(pattern.as_str()), args)
}

fn millis(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Reads, labels and splits the dataset for classes `labels`. With `text`, the one
/// feature column is text, kept in [`Examples::text`] (fine-tuning).
///
/// Long on purpose: one polars lazy query built step by step (scan, time range, filter,
/// labels, dedup, balance, sample, split); each step needs the previous frame.
pub fn load(
    config: &DatasetConfig,
    root: &Path,
    labels_path: Option<&Path>,
    labels: &[String],
    text: bool,
) -> Result<Split, DatasetError> {
    let fail = |source: PolarsError| DatasetError::Polars {
        path: root.to_owned(),
        source,
    };
    let shape = |message: String| DatasetError::Shape {
        path: root.to_owned(),
        message,
    };
    let mut frame = scan(root).map_err(fail)?;

    let time = col(config.time_column.as_str()).cast(DataType::Int64);
    let now = chrono::Utc::now().timestamp_millis();
    if let Some(last) = config.last {
        frame = frame.filter(time.clone().gt_eq(lit(now - last.as_millis() as i64)));
    }
    if let Some(from) = config.from.as_deref().and_then(millis) {
        frame = frame.filter(time.clone().gt_eq(lit(from)));
    }
    if let Some(to) = config.to.as_deref().and_then(millis) {
        frame = frame.filter(time.clone().lt(lit(to)));
    }
    if let Some(filter) = &config.filter {
        frame = frame.filter(polars::sql::sql_expr(filter).map_err(fail)?);
    }

    // The label as a string column `__label`.
    frame = match &config.label {
        LabelConfig::Rules(rules) => {
            let mut expr = lit(NULL).cast(DataType::String);
            for rule in rules.iter().rev() {
                let condition = polars::sql::sql_expr(&rule.when).map_err(fail)?;
                expr = when(condition)
                    .then(lit(rule.label.clone()))
                    .otherwise(expr);
            }
            frame.with_column(expr.alias("__label"))
        }
        LabelConfig::Column(column) => {
            frame.with_column(col(column.as_str()).cast(DataType::String).alias("__label"))
        }
        LabelConfig::Join(join) => {
            let path = labels_path.unwrap_or(&join.path);
            let found = scan(path).map_err(fail)?.select([
                col(join.id.as_str())
                    .cast(DataType::String)
                    .alias("__label_id"),
                col(join.label.as_str())
                    .cast(DataType::String)
                    .alias("__label"),
            ]);
            frame
                .with_column(
                    col(config.id.as_str())
                        .cast(DataType::String)
                        .alias("__label_id"),
                )
                .join(
                    found,
                    [col("__label_id")],
                    [col("__label_id")],
                    JoinArgs::new(JoinType::Inner),
                )
        }
    };

    let features: Vec<String> = match &config.features {
        FeatureColumns::Vector(name) => vec![name.clone()],
        FeatureColumns::Columns(names) => names.clone(),
    };
    let mut selected = vec![
        col(config.id.as_str()).cast(DataType::String).alias("__id"),
        col(config.time_column.as_str())
            .cast(DataType::Int64)
            .alias("__time"),
        col("__label"),
    ];
    selected.extend(features.iter().map(|f| col(f.as_str())));
    let frame = frame
        .select(selected)
        .filter(col("__label").is_in(
            lit(Series::new("labels".into(), labels.to_vec())).implode(false),
            false,
        ))
        .drop_nulls(None)
        .sort(["__time"], SortMultipleOptions::default())
        .unique_stable(
            Some(Selector::ByName {
                names: [PlSmallStr::from("__id")].into(),
                strict: true,
            }),
            UniqueKeepStrategy::Last,
        );
    let df = frame.collect().map_err(fail)?;

    let ids: Vec<String> = df
        .column("__id")
        .map_err(fail)?
        .str()
        .map_err(fail)?
        .iter()
        .map(|v| v.unwrap_or_default().to_owned())
        .collect();
    let row_labels: Vec<usize> = df
        .column("__label")
        .map_err(fail)?
        .str()
        .map_err(fail)?
        .iter()
        .map(|l| l.unwrap_or_default())
        .map(|l| labels.iter().position(|known| known == l).unwrap_or(0))
        .collect();
    let (x, width, texts) = if text {
        let column = df
            .column(features[0].as_str())
            .map_err(fail)?
            .cast(&DataType::String)
            .map_err(fail)?;
        let texts: Vec<String> = column
            .str()
            .map_err(fail)?
            .iter()
            .map(|v| v.unwrap_or_default().to_owned())
            .collect();
        (Vec::new(), 0, texts)
    } else {
        let (x, width) = feature_matrix(&df, &features).map_err(|e| match e {
            FeatureError::Polars(e) => fail(e),
            FeatureError::Shape(m) => shape(m),
        })?;
        (x, width, Vec::new())
    };

    // Balance and sample deterministically, by the id hash order.
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| stable_hash(&ids[i]));
    let mut per_class = vec![0_usize; labels.len()];
    for &label in &row_labels {
        per_class[label] += 1;
    }
    let cap = if config.balance {
        per_class
            .iter()
            .copied()
            .filter(|&n| n > 0)
            .min()
            .unwrap_or(0)
    } else {
        usize::MAX
    };
    let mut taken = vec![0_usize; labels.len()];
    let mut kept = Vec::new();
    for i in order {
        if taken[row_labels[i]] < cap && kept.len() < config.sample_rows.unwrap_or(usize::MAX) {
            taken[row_labels[i]] += 1;
            kept.push(i);
        }
    }
    kept.sort_unstable();

    let threshold = (config.holdout * 10_000.0) as u64;
    let mut split = Split {
        labelled_rows: ids.len(),
        class_counts: taken,
        ..Default::default()
    };
    split.train.width = width;
    split.holdout.width = width;
    for i in kept {
        let side = if stable_hash(&format!("split:{}", ids[i])) % 10_000 < threshold {
            split.holdout_ids.push(ids[i].clone());
            &mut split.holdout
        } else {
            &mut split.train
        };
        side.x.extend_from_slice(&x[i * width..(i + 1) * width]);
        side.y.push(row_labels[i]);
        if let Some(text) = texts.get(i) {
            side.text.push(text.clone());
        }
    }
    Ok(split)
}

enum FeatureError {
    Polars(PolarsError),
    Shape(String),
}

impl From<PolarsError> for FeatureError {
    fn from(e: PolarsError) -> Self {
        FeatureError::Polars(e)
    }
}

/// Row-major float features from one vector column or several numeric columns.
fn feature_matrix(df: &DataFrame, features: &[String]) -> Result<(Vec<f32>, usize), FeatureError> {
    let rows = df.height();
    if let [name] = features {
        let series = df.column(name)?.as_materialized_series().clone();
        let inner = match series.dtype() {
            DataType::Array(_, _) => Some(series.array()?.get_inner()),
            DataType::List(_) => Some(series.list()?.get_inner()),
            _ => None,
        };
        if let Some(inner) = inner {
            let values: Vec<f32> = inner
                .cast(&DataType::Float32)?
                .f32()?
                .iter()
                .map(|v| v.unwrap_or(f32::NAN))
                .collect();
            let width = values.len().checked_div(rows).unwrap_or(0);
            if width * rows != values.len() {
                return Err(FeatureError::Shape(format!(
                    "vector column `{name}` has rows of different lengths"
                )));
            }
            return Ok((values, width));
        }
    }
    let columns: Vec<Vec<f32>> = features
        .iter()
        .map(|name| -> Result<Vec<f32>, FeatureError> {
            let series = df
                .column(name)?
                .as_materialized_series()
                .cast(&DataType::Float32)?;
            Ok(series
                .f32()?
                .iter()
                .map(|v| v.unwrap_or(f32::NAN))
                .collect())
        })
        .collect::<Result<_, _>>()?;
    let mut x = Vec::with_capacity(rows * columns.len());
    for row in 0..rows {
        x.extend(columns.iter().map(|c| c[row]));
    }
    Ok((x, columns.len()))
}

/// Counts by label, for the summary line.
pub fn describe(counts: &[usize], labels: &[String]) -> String {
    let parts: HashMap<&str, usize> = labels
        .iter()
        .map(String::as_str)
        .zip(counts.iter().copied())
        .collect();
    let mut parts: Vec<String> = parts.into_iter().map(|(l, n)| format!("{l} {n}")).collect();
    parts.sort();
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, FixedSizeListArray, Float32Array, Int8Array, RecordBatch, StringArray,
        TimestampMillisecondArray,
    };
    use arrow::datatypes::{DataType, Field};

    use super::*;
    use crate::config::job::{LabelJoin, LabelRule};

    const DAY: i64 = 86_400_000;

    /// Writes one Hive partition file of rows `(id, rating, ts_ms, [x, y])`.
    fn write_part(root: &Path, date: &str, rows: &[(&str, Option<i8>, i64, [f32; 2])]) {
        let dir = root.join(format!("date={date}"));
        std::fs::create_dir_all(&dir).unwrap();
        let item = Arc::new(Field::new_list_field(DataType::Float32, false));
        let values: Vec<f32> = rows.iter().flat_map(|r| r.3).collect();
        let columns: Vec<(&str, ArrayRef)> = vec![
            (
                "id",
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            ),
            (
                "rating",
                Arc::new(Int8Array::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
            ),
            (
                "_timestamp",
                Arc::new(
                    TimestampMillisecondArray::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())
                        .with_timezone("UTC"),
                ),
            ),
            (
                "embedding",
                Arc::new(
                    FixedSizeListArray::try_new(
                        item,
                        2,
                        Arc::new(Float32Array::from(values)),
                        None,
                    )
                    .unwrap(),
                ),
            ),
        ];
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let file = std::fs::File::create(dir.join("part.parquet")).unwrap();
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }

    fn config(label: LabelConfig) -> DatasetConfig {
        DatasetConfig {
            path: "unused".into(),
            id: "id".into(),
            time_column: "_timestamp".into(),
            last: None,
            from: None,
            to: None,
            filter: None,
            features: FeatureColumns::Vector("embedding".into()),
            label,
            balance: false,
            sample_rows: None,
            holdout: 0.5,
        }
    }

    fn rules() -> LabelConfig {
        LabelConfig::Rules(vec![
            LabelRule {
                when: "rating >= 4".into(),
                label: "pos".into(),
            },
            LabelRule {
                when: "rating <= 2".into(),
                label: "neg".into(),
            },
        ])
    }

    fn labels() -> Vec<String> {
        vec!["neg".into(), "pos".into()]
    }

    #[test]
    fn rules_dedup_time_range_filter_and_a_stable_split() {
        let dir = tempfile::tempdir().unwrap();
        let now = chrono::Utc::now().timestamp_millis();
        write_part(
            dir.path(),
            "old",
            &[
                ("a", Some(5), now - 40 * DAY, [1.0, 1.0]),
                ("b", Some(1), now - 40 * DAY, [0.0, 0.0]),
            ],
        );
        write_part(
            dir.path(),
            "new",
            &[
                ("c", Some(5), now - DAY, [1.0, 2.0]),
                ("c", Some(1), now - DAY / 2, [9.0, 9.0]), // a later copy of c: it wins
                ("d", Some(3), now - DAY, [3.0, 3.0]),     // rating 3: no rule, dropped
                ("e", None, now - DAY, [4.0, 4.0]),        // no rating: dropped
                ("f", Some(2), now - DAY, [5.0, 5.0]),
                ("g", Some(4), now - DAY, [6.0, 6.0]),
            ],
        );
        let mut all = config(rules());
        let split = load(&all, dir.path(), None, &labels(), false).unwrap();
        assert_eq!(split.labelled_rows, 5, "a, b, c (once), f, g");
        assert_eq!(split.train.rows() + split.holdout.rows(), 5);
        assert_eq!(split.train.width, 2);
        let again = load(&all, dir.path(), None, &labels(), false).unwrap();
        assert_eq!(again.holdout_ids, split.holdout_ids, "the split is stable");
        // c's latest row: rating 1 -> neg, features [9, 9].
        let both: Vec<(Vec<f32>, usize)> = [&split.train, &split.holdout]
            .iter()
            .flat_map(|e| (0..e.rows()).map(move |r| (e.row(r).to_vec(), e.y[r])))
            .collect();
        assert!(both.contains(&(vec![9.0, 9.0], 0)));
        assert!(!both.iter().any(|(x, _)| x == &vec![1.0, 2.0]));

        all.last = Some(std::time::Duration::from_secs(30 * 86_400));
        let recent = load(&all, dir.path(), None, &labels(), false).unwrap();
        assert_eq!(recent.labelled_rows, 3, "c, f, g");
        all.filter = Some("id <> 'g'".into());
        assert_eq!(
            load(&all, dir.path(), None, &labels(), false)
                .unwrap()
                .labelled_rows,
            2
        );
        all.filter = None;
        all.balance = true;
        let balanced = load(&all, dir.path(), None, &labels(), false).unwrap();
        assert_eq!(
            balanced.class_counts,
            vec![1, 1],
            "c and f are neg, g is pos: one of each"
        );
    }

    #[test]
    fn labels_can_come_from_a_joined_dataset() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let now = chrono::Utc::now().timestamp_millis();
        write_part(
            &data,
            "x",
            &[
                ("a", None, now, [1.0, 0.0]),
                ("b", None, now, [0.0, 1.0]),
                ("c", None, now, [0.5, 0.5]),
            ],
        );
        let label_dir = dir.path().join("labels").join("batch=1");
        std::fs::create_dir_all(&label_dir).unwrap();
        let batch = RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef,
            ),
            (
                "label",
                Arc::new(StringArray::from(vec!["pos", "neg"])) as ArrayRef,
            ),
        ])
        .unwrap();
        let mut writer = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(label_dir.join("l.parquet")).unwrap(),
            batch.schema(),
            None,
        )
        .unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let join = LabelConfig::Join(LabelJoin {
            path: "labels".into(),
            id: "id".into(),
            label: "label".into(),
        });
        let split = load(
            &config(join),
            &data,
            Some(&dir.path().join("labels")),
            &labels(),
            false,
        )
        .unwrap();
        assert_eq!(split.labelled_rows, 2, "c has no label yet");
        assert_eq!(split.class_counts, vec![1, 1]);
    }
}

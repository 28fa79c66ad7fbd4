//! `sluice backfill`: the same pipeline file over a bounded range of its topics, then exit.
//!
//! Ranges come from record timestamps (`--from`/`--to`) or explicit offsets (`--offsets
//! topic:partition=start..end`), optionally only some partitions (`--partitions 0-5`, or
//! `--shard INDEX/COUNT`) so several machines can split one backfill. Reading is
//! [`crate::source::bounded`]: assigned partitions, no consumer group, no commits. The
//! stages and sinks are the live pipeline's, so the rows and Parquet file names are the
//! ones the live pipeline writes. The Parquet sinks write as a separate *writer* (see
//! `sink::parquet::commit`): files the live pipeline wrote for the same offsets are
//! replaced, and a stopped backfill started again with the same arguments resumes from
//! its own manifests; a completed one removes them, so running it again reprocesses. One progress bar per partition
//! (records/s, ETA) on a terminal; a summary at the end.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::batch::TopicPartition;
use crate::config::SourceConfig;
use crate::pipeline::Pipeline;
use crate::runtime::{self, RunError, SourceMode};
use crate::sink::parquet::open_dataset;
use crate::source::bounded::{self, BackfillProgress, PartitionFilter, RangeSpec};
use crate::source::files::FilesError;
use crate::telemetry::{Stats, StatsSnapshot};

#[derive(Debug, thiserror::Error)]
pub enum ArgError {
    #[error(
        "--offsets {0}: expected TOPIC:PARTITION=START..END, e.g. customer-feedback:0=0..5000"
    )]
    Offsets(String),
    #[error("--partitions {0}: expected a list of partitions and ranges, e.g. 0-5 or 0,2,4")]
    Partitions(String),
    #[error("--shard {0}: expected INDEX/COUNT with INDEX < COUNT, e.g. 2/4")]
    Shard(String),
    #[error("{0}: expected an RFC 3339 time (2026-11-21T00:00:00Z) or a date (2026-11-21, UTC midnight)")]
    Time(String),
    #[error("--sinks {arg}: {problem}")]
    Sinks { arg: String, problem: String },
}

/// `--sinks`: which outputs a backfill writes (e.g. `parquet` to leave the output topics
/// alone). `parquet` and `kafka` select every sink and dead-letter target of that kind;
/// `sinks[N]` (or `N`), `dead_letter.parquet`, `dead_letter.delta` and `dead_letter.kafka`
/// select one. At least
/// one sink and one dead-letter target must remain.
pub fn keep_sinks(pipeline: &mut Pipeline, arg: &str) -> Result<(), ArgError> {
    let problem = |problem: String| ArgError::Sinks {
        arg: arg.to_owned(),
        problem,
    };
    let outputs = pipeline.sinks.names();
    let mut keep = std::collections::BTreeSet::new();
    for selector in arg.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let index = selector
            .strip_prefix("sinks[")
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(selector);
        let chosen: Vec<&String> = outputs
            .iter()
            .filter(|(name, kind)| {
                *kind == selector
                    || name == selector
                    || name.starts_with(&format!("sinks[{index}]."))
            })
            .map(|(name, _)| name)
            .collect();
        if chosen.is_empty() {
            let names: Vec<&str> = outputs.iter().map(|(n, _)| n.as_str()).collect();
            return Err(problem(format!(
                "`{selector}` names no output; expected `parquet`, `kafka`, or one of {}",
                names.join(", ")
            )));
        }
        keep.extend(chosen.into_iter().cloned());
    }
    let kept = |prefix: &str| keep.iter().any(|n| n.starts_with(prefix));
    if !kept("sinks[") {
        return Err(problem("no sink would be left".into()));
    }
    if !kept("dead_letter.") {
        return Err(problem(
            "no dead-letter target would be left (bad records must go somewhere): add \
             `dead_letter.parquet`, `dead_letter.delta` or `dead_letter.kafka`"
                .into(),
        ));
    }
    pipeline.sinks.keep(&keep);
    Ok(())
}

/// `TOPIC:PARTITION=START..END`.
pub fn parse_offsets(arg: &str) -> Result<(TopicPartition, i64, i64), ArgError> {
    let bad = || ArgError::Offsets(arg.to_owned());
    let (tp, range) = arg.rsplit_once('=').ok_or_else(bad)?;
    let (topic, partition) = tp.rsplit_once(':').ok_or_else(bad)?;
    let (start, end) = range.split_once("..").ok_or_else(bad)?;
    let partition: i32 = partition.parse().map_err(|_| bad())?;
    let (start, end): (i64, i64) = (
        start.parse().map_err(|_| bad())?,
        end.parse().map_err(|_| bad())?,
    );
    if topic.is_empty() || start < 0 || end < start {
        return Err(bad());
    }
    Ok((TopicPartition::new(topic, partition), start, end))
}

/// `0-5`, `0,2,4` or a mix.
pub fn parse_partitions(arg: &str) -> Result<Vec<i32>, ArgError> {
    let bad = || ArgError::Partitions(arg.to_owned());
    let mut partitions = Vec::new();
    for part in arg.split(',').map(str::trim) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (i32, i32) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if b < a {
                    return Err(bad());
                }
                partitions.extend(a..=b);
            }
            None => partitions.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(partitions)
}

/// `INDEX/COUNT`: this process reads partitions `p % COUNT == INDEX`.
pub fn parse_shard(arg: &str) -> Result<PartitionFilter, ArgError> {
    let bad = || ArgError::Shard(arg.to_owned());
    let (index, count) = arg.split_once('/').ok_or_else(bad)?;
    let (index, count): (u32, u32) = (
        index.trim().parse().map_err(|_| bad())?,
        count.trim().parse().map_err(|_| bad())?,
    );
    if count == 0 || index >= count {
        return Err(bad());
    }
    Ok(PartitionFilter::Shard { index, count })
}

/// RFC 3339, or a date meaning UTC midnight; milliseconds since the epoch.
pub fn parse_time(arg: &str) -> Result<i64, ArgError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(arg) {
        return Ok(t.timestamp_millis());
    }
    chrono::NaiveDate::parse_from_str(arg, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
        .ok_or_else(|| ArgError::Time(arg.to_owned()))
}

/// How a backfill ended.
#[derive(Debug)]
pub struct BackfillSummary {
    /// `(partition, start, end, reached end)`.
    pub partitions: Vec<(TopicPartition, i64, i64, bool)>,
    pub stats: StatsSnapshot,
    pub elapsed: Duration,
    /// Every partition reached its end and every row is durable.
    pub complete: bool,
}

impl std::fmt::Display for BackfillSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "sluice backfill summary")?;
        for (tp, start, end, reached) in &self.partitions {
            let state = if *reached { "done" } else { "NOT FINISHED" };
            writeln!(f, "  {tp:<28} offsets {start}..{end}  {state}")?;
        }
        let s = &self.stats;
        writeln!(f, "  records read     {}", s.records_in)?;
        writeln!(f, "  rows out         {}", s.rows_decoded)?;
        writeln!(f, "  dead letters     {}", s.dead_letters)?;
        writeln!(
            f,
            "  Parquet files    {} ({} bytes)",
            s.parquet_files, s.parquet_bytes
        )?;
        writeln!(f, "  Kafka messages   {}", s.kafka_messages)?;
        let secs = self.elapsed.as_secs_f64();
        writeln!(
            f,
            "  elapsed          {secs:.2} s ({:.0} records/s)",
            s.records_in as f64 / secs.max(1e-9)
        )?;
        write!(
            f,
            "  result           {}",
            if self.complete {
                "complete"
            } else {
                "incomplete: run it again with the same arguments"
            }
        )
    }
}

/// Resolves the ranges and runs `pipeline` over them. `show_progress`: draw bars on stderr
/// (only drawn on a terminal).
pub async fn run(
    pipeline: &Pipeline,
    spec: &RangeSpec,
    filter: &PartitionFilter,
    shutdown: CancellationToken,
    stats: Arc<Stats>,
    show_progress: bool,
) -> Result<BackfillSummary, RunError> {
    let SourceConfig::Kafka(kafka) = &pipeline.config.source;
    let progress = {
        let (kafka, spec) = (kafka.clone(), spec.clone());
        let filter = filter.clone();
        let resolving =
            tokio::task::spawn_blocking(move || bounded::resolve(&kafka, &spec, &filter));
        tokio::select! {
            resolved = resolving => resolved.map_err(RunError::Task)??,
            _ = shutdown.cancelled() => return Err(RunError::Interrupted),
        }
    };
    let mut progress = progress;
    progress.run_id = run_id(&format!("{}|{spec:?}|{filter:?}", pipeline.name()));
    let progress = Arc::new(progress);
    let mode = SourceMode::Bounded(progress.clone());
    execute(pipeline, mode, progress, shutdown, stats, show_progress).await
}

/// [`run`] over JSON-lines or Parquet files (`pattern`: a path or a glob) instead of Kafka.
pub async fn run_files(
    pipeline: &Pipeline,
    pattern: &str,
    shutdown: CancellationToken,
    stats: Arc<Stats>,
    show_progress: bool,
) -> Result<BackfillSummary, RunError> {
    // Objects named by a URL pattern are read from a local copy (kept until the run ends);
    // the run is identified by their URLs, so a stopped run started again resumes.
    let local = pattern.strip_prefix("file://").unwrap_or(pattern);
    let (files, mut progress, identity, _copy) = if crate::storage::is_url(local) {
        let bad = |message: String| FilesError::Pattern {
            pattern: pattern.to_owned(),
            message,
        };
        let copy = tempfile::Builder::new()
            .prefix("sluice-input-")
            .tempdir()
            .map_err(|e| bad(e.to_string()))?;
        let found =
            crate::storage::download_matching(pattern, &pipeline.sinks.storage, copy.path())
                .map_err(|e| bad(crate::telemetry::chain(&e)))?;
        let (urls, files): (Vec<String>, Vec<PathBuf>) = found.into_iter().unzip();
        let (files, progress) = crate::source::files::resolve_files(pattern, files)?;
        (files, progress, urls, Some(copy))
    } else {
        let (files, progress) = crate::source::files::resolve(local)?;
        let identity = files.iter().map(|f| f.display().to_string()).collect();
        (files, progress, identity, None)
    };
    progress.run_id = run_id(&format!("{}|{}", pipeline.name(), identity.join("|")));
    let progress = Arc::new(progress);
    let mode = SourceMode::Files(files, progress.clone());
    execute(pipeline, mode, progress, shutdown, stats, show_progress).await
}

async fn execute(
    pipeline: &Pipeline,
    mode: SourceMode,
    progress: Arc<BackfillProgress>,
    shutdown: CancellationToken,
    stats: Arc<Stats>,
    show_progress: bool,
) -> Result<BackfillSummary, RunError> {
    for range in &progress.ranges {
        tracing::info!(partition = %range.tp, start = range.start, end = range.end, "backfill range");
    }
    let bars_done = CancellationToken::new();
    let bars = show_progress.then(|| {
        let (progress, done) = (progress.clone(), bars_done.clone());
        tokio::spawn(draw_progress(progress, done))
    });
    let started = Instant::now();
    let outcome = runtime::run_with(pipeline, mode, shutdown, stats).await;
    bars_done.cancel();
    if let Some(bars) = bars {
        let _ = bars.await;
    }
    let snapshot = outcome?;
    let complete = progress.complete.load(std::sync::atomic::Ordering::Relaxed);
    if complete {
        // Done: the same arguments again mean a new pass (e.g. with a newer model), not a
        // resume, so this run's bookkeeping goes.
        for root in pipeline.sinks.parquet_roots() {
            let dataset = open_dataset("backfill", root, &pipeline.sinks.storage, None)?;
            dataset
                .forget_writer(&progress.run_id)
                .map_err(|source| RunError::Bookkeeping {
                    path: root.to_owned(),
                    source,
                })?;
        }
    }
    Ok(BackfillSummary {
        partitions: progress
            .ranges
            .iter()
            .map(|r| (r.tp.clone(), r.start, r.end, r.done()))
            .collect(),
        stats: snapshot,
        elapsed: started.elapsed(),
        complete,
    })
}

/// `backfill-` and a stable hash of what identifies the run.
fn run_id(identity: &str) -> String {
    format!("backfill-{:016x}", crate::batch::stable_hash(identity))
}

async fn draw_progress(progress: Arc<BackfillProgress>, done: CancellationToken) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style =
        ProgressStyle::with_template("{prefix:<28} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    let bars: Vec<ProgressBar> = progress
        .ranges
        .iter()
        .map(|r| {
            let bar = multi.add(ProgressBar::new((r.end - r.start).max(0) as u64));
            bar.set_style(style.clone());
            bar.set_prefix(r.tp.to_string());
            bar
        })
        .collect();
    loop {
        for (bar, range) in bars.iter().zip(&progress.ranges) {
            let at = range.position.load(std::sync::atomic::Ordering::Relaxed);
            bar.set_position((at - range.start).max(0) as u64);
        }
        if done.is_cancelled() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = done.cancelled() => {}
        }
    }
    for bar in bars {
        bar.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse_or_say_what_was_expected() {
        let (tp, start, end) = parse_offsets("customer-feedback:3=10..250").unwrap();
        assert_eq!(
            (tp.to_string().as_str(), start, end),
            ("customer-feedback-3", 10, 250)
        );
        assert!(parse_offsets("customer-feedback:3=250..10").is_err());
        assert!(parse_offsets("customer-feedback=1..2").is_err());
        assert_eq!(parse_partitions("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert!(parse_partitions("3-1").is_err());
        let shard = parse_shard("1/3").unwrap();
        assert!(shard.keeps(4) && !shard.keeps(3));
        assert!(parse_shard("3/3").is_err());
        assert_eq!(parse_time("2026-11-21").unwrap(), 1_795_219_200_000);
        assert_eq!(
            parse_time("2026-11-21T00:00:01Z").unwrap(),
            1_795_219_201_000
        );
        assert!(parse_time("yesterday")
            .unwrap_err()
            .to_string()
            .contains("RFC 3339"));
    }
}

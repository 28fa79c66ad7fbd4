//! The file source of `sluice backfill --input`, instead of Kafka:
//! - JSON-lines files (`.jsonl`, `.ndjson`, `.json`): one record per line, as the topic
//!   carries them (an export of the topic, or `sluice bench --export-input`);
//! - Parquet files (`.parquet`): one record per row, encoded as the JSON object the topic
//!   would carry (arrow's JSON writer), so the pipeline's decode step and dead letters
//!   apply unchanged. Provenance columns (`_topic`, `_offset`, ...) of a file sluice wrote
//!   are left out, so a dataset can be run through a pipeline again.
//!
//! Files are taken in sorted order; file `i` is partition `i` of the pseudo-topic
//! [`FILES_TOPIC`], and a line's (row's) number from 0 is its offset, so provenance,
//! dead-letter positions and the Parquet sink's manifests work as for Kafka. A record's
//! `_timestamp` is its file's modification time. Blank lines are skipped (their offsets
//! stay unused).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use arrow::json::LineDelimitedWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::bounded::{BackfillProgress, BoundedOutput, PartitionRange};
use super::SourceMessage;
use crate::ack::AckTracker;
use crate::batch::{BatchId, RawBatch, TopicPartition};
use crate::telemetry::Stats;

/// The topic name file records carry in `_topic`.
pub const FILES_TOPIC: &str = "files";

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("--input {pattern}: {message}")]
    Pattern { pattern: String, message: String },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path}: {message}")]
    Parquet { path: PathBuf, message: String },
    #[error("the pipeline downstream of the source stopped")]
    PipelineClosed,
}

/// How a file's records are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    JsonLines,
    Parquet,
}

impl Format {
    fn of(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()? {
            "jsonl" | "ndjson" | "json" => Some(Format::JsonLines),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }
}

fn parquet_error(path: &Path) -> impl Fn(String) -> FilesError + '_ {
    move |message| FilesError::Parquet {
        path: path.to_owned(),
        message,
    }
}

/// The files `pattern` names (a path or a glob), sorted, each with its record count.
pub fn resolve(pattern: &str) -> Result<(Vec<PathBuf>, BackfillProgress), FilesError> {
    let bad = |message: String| FilesError::Pattern {
        pattern: pattern.to_owned(),
        message,
    };
    let mut files: Vec<PathBuf> = glob::glob(pattern)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    files.retain(|f| f.is_file());
    files.sort();
    if files.is_empty() {
        return Err(bad("no such file".into()));
    }
    resolve_files(pattern, files)
}

/// [`resolve`] for files already found (e.g. downloaded from object storage), in order;
/// `pattern` is what errors name.
pub fn resolve_files(
    pattern: &str,
    files: Vec<PathBuf>,
) -> Result<(Vec<PathBuf>, BackfillProgress), FilesError> {
    let bad = |message: String| FilesError::Pattern {
        pattern: pattern.to_owned(),
        message,
    };
    if let Some(other) = files.iter().find(|f| Format::of(f).is_none()) {
        return Err(bad(format!(
            "{} is neither JSON lines (.jsonl, .ndjson, .json) nor Parquet (.parquet)",
            other.display()
        )));
    }
    let mut ranges = Vec::with_capacity(files.len());
    for (index, file) in files.iter().enumerate() {
        let handle = open(file)?;
        let records = match Format::of(file) {
            Some(Format::Parquet) => ParquetRecordBatchReaderBuilder::try_new(handle)
                .map_err(|e| parquet_error(file)(e.to_string()))?
                .metadata()
                .file_metadata()
                .num_rows(),
            _ => BufReader::new(handle).split(b'\n').count() as i64,
        };
        ranges.push(PartitionRange {
            tp: TopicPartition::new(FILES_TOPIC, index as i32),
            start: 0,
            end: records,
            position: AtomicI64::new(0),
        });
    }
    Ok((
        files,
        BackfillProgress {
            ranges,
            run_id: String::new(),
            complete: AtomicBool::new(false),
        },
    ))
}

/// Reads the files of a [`resolve`]d plan into micro-batches.
pub struct FileSource {
    files: Vec<PathBuf>,
    max_rows: usize,
    output: BoundedOutput,
}

impl FileSource {
    pub fn new(
        files: Vec<PathBuf>,
        max_rows: usize,
        progress: Arc<BackfillProgress>,
        out: mpsc::Sender<SourceMessage>,
        tracker: Arc<AckTracker>,
        stats: Arc<Stats>,
    ) -> Self {
        stats.readiness.set_assigned();
        FileSource {
            files,
            max_rows: max_rows.clamp(1, 65_536),
            output: BoundedOutput {
                out,
                tracker,
                stats,
                progress,
            },
        }
    }

    fn send(&self, batch: RawBatch) -> Result<(), FilesError> {
        self.output
            .send(batch)
            .map_err(|_| FilesError::PipelineClosed)
    }

    /// Reads every file (until `shutdown`), then makes everything durable.
    pub fn run(self, shutdown: CancellationToken) -> Result<(), FilesError> {
        let mut next_id = 0;
        for (file, range) in self.files.iter().zip(&self.output.progress.ranges) {
            if shutdown.is_cancelled() {
                break;
            }
            match Format::of(file) {
                Some(Format::Parquet) => self.read_parquet(file, range, &mut next_id, &shutdown)?,
                _ => self.read_json_lines(file, range, &mut next_id, &shutdown)?,
            }
        }
        self.output.finish();
        Ok(())
    }

    fn read_json_lines(
        &self,
        file: &Path,
        range: &PartitionRange,
        next_id: &mut u64,
        shutdown: &CancellationToken,
    ) -> Result<(), FilesError> {
        let read = |source| FilesError::Read {
            path: file.to_owned(),
            source,
        };
        let modified = modified_millis(file);
        let mut batch: Option<RawBatch> = None;
        for (line, bytes) in BufReader::new(open(file)?).split(b'\n').enumerate() {
            if shutdown.is_cancelled() {
                break;
            }
            let bytes = bytes.map_err(read)?;
            let offset = line as i64;
            range.position.store(offset + 1, Ordering::Relaxed);
            let payload = bytes.strip_suffix(b"\r").unwrap_or(&bytes);
            if payload.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let current = batch.get_or_insert_with(|| {
                *next_id += 1;
                RawBatch::new(BatchId(*next_id), range.tp.clone(), self.max_rows)
            });
            current.push(offset, modified, None, Some(payload));
            if current.len() >= self.max_rows {
                if let Some(full) = batch.take() {
                    self.send(full)?;
                }
            }
        }
        if let Some(rest) = batch.take() {
            self.send(rest)?;
        }
        Ok(())
    }

    fn read_parquet(
        &self,
        file: &Path,
        range: &PartitionRange,
        next_id: &mut u64,
        shutdown: &CancellationToken,
    ) -> Result<(), FilesError> {
        let error = parquet_error(file);
        let reader = ParquetRecordBatchReaderBuilder::try_new(open(file)?)
            .and_then(|b| b.with_batch_size(self.max_rows).build())
            .map_err(|e| error(e.to_string()))?;
        let modified = modified_millis(file);
        let mut offset = 0;
        for rows in reader {
            if shutdown.is_cancelled() {
                break;
            }
            let rows = rows.map_err(|e| error(e.to_string()))?;
            let schema = rows.schema();
            let keep: Vec<usize> = schema
                .fields()
                .iter()
                .enumerate()
                .filter(|(_, field)| !crate::schema::is_provenance(field.name()))
                .map(|(i, _)| i)
                .collect();
            let rows = rows.project(&keep).map_err(|e| error(e.to_string()))?;
            let mut lines = Vec::new();
            let mut writer = LineDelimitedWriter::new(&mut lines);
            writer
                .write(&rows)
                .and_then(|()| writer.finish())
                .map_err(|e| error(e.to_string()))?;
            *next_id += 1;
            let mut batch = RawBatch::new(BatchId(*next_id), range.tp.clone(), rows.num_rows());
            // The JSON writer escapes newlines inside values: one line per row.
            for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                batch.push(offset, modified, None, Some(line));
                offset += 1;
            }
            range.position.store(offset, Ordering::Relaxed);
            if !batch.is_empty() {
                self.send(batch)?;
            }
        }
        Ok(())
    }
}

fn open(file: &Path) -> Result<File, FilesError> {
    File::open(file).map_err(|source| FilesError::Read {
        path: file.to_owned(),
        source,
    })
}

/// A file's modification time, milliseconds since the epoch.
fn modified_millis(file: &Path) -> Option<i64> {
    std::fs::metadata(file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
}

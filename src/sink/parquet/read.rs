//! Reading a dataset back: every visible `*.parquet` file under a root, as Arrow batches.
//!
//! Visibility follows the readers sluice targets (pyarrow, polars, DuckDB): names starting
//! with `.` or `_` are skipped, so temp files and `_sluice/` bookkeeping never show. Used by
//! `sluice demo` to verify what it wrote, and by the tests.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Every visible Parquet file under `root`, sorted by path.
pub fn dataset_files(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let walker = walkdir::WalkDir::new(root).into_iter().filter_entry(|e| {
        let name = e.file_name().to_string_lossy();
        e.depth() == 0 || !(name.starts_with('.') || name.starts_with('_'))
    });
    for entry in walker {
        let entry = entry.map_err(std::io::Error::other)?;
        if entry.file_type().is_file() && entry.file_name().to_string_lossy().ends_with(".parquet")
        {
            files.push(entry.into_path());
        }
    }
    files.sort();
    Ok(files)
}

/// Reads one Parquet file completely.
pub fn read_file(path: &Path) -> Result<Vec<RecordBatch>, parquet::errors::ParquetError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path)?)?.build()?;
    reader.map(|b| b.map_err(Into::into)).collect()
}

/// Total rows in the visible files under `root`, read from the footers.
pub fn count_rows(root: &Path) -> Result<u64, parquet::errors::ParquetError> {
    let mut rows = 0;
    for path in dataset_files(root)? {
        let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&path)?)?;
        rows += builder.metadata().file_metadata().num_rows() as u64;
    }
    Ok(rows)
}

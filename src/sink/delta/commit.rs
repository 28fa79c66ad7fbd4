//! Committing a partition's open group of the `delta` sink: the files uploaded whole, one
//! table version appended through the Delta kernel with their `add` actions and the
//! partition's `txn` (refused if another writer moved it), then the batches acknowledged;
//! a checkpoint every `checkpoint_interval` versions.

use super::*;

impl DeltaSink {
    /// Commits the open group of `tp` as one table version, then acknowledges its batches.
    pub(super) fn roll(&mut self, tp: &TopicPartition) -> Result<(), SinkError> {
        let Some(state) = self.partitions.get_mut(tp) else {
            return Ok(());
        };
        let Some(group) = state.open.take() else {
            return Ok(());
        };
        state.rolled = true;
        let expected = state.durable_through;
        let mut written = Vec::with_capacity(group.files.len());
        for (_, file) in group.files {
            file.writer.close()?;
            let stats = file.stats.finish().map_err(|e| self.kernel(e))?;
            written.push((file.values, file.path, stats));
        }
        if group.rows > 0 {
            let bytes = self.commit(tp, expected, (group.first, group.last), written)?;
            self.stats.record_files(bytes.0, group.rows, bytes.1);
        }
        if let Some(state) = self.partitions.get_mut(tp) {
            state.durable_through = Some(group.last).max(state.durable_through);
        }
        for id in group.batches {
            self.acks.ack(tp, id);
        }
        Ok(())
    }

    fn kernel(&self, source: delta_kernel::KernelError) -> SinkError {
        self.error(DeltaError::Kernel {
            url: self.table.url.to_string(),
            source,
        })
    }

    /// Uploads the group's files and appends them with the partition's `txn` version
    /// `last`, on whatever version the table is at, as long as the partition's version is
    /// still `expected`. `first..=last`: the offsets of the group. Returns (files, bytes).
    fn commit(
        &mut self,
        tp: &TopicPartition,
        expected: Option<i64>,
        (first, last): (i64, i64),
        files: Vec<(
            HashMap<String, Scalar>,
            PathBuf,
            Option<arrow::array::StructArray>,
        )>,
    ) -> Result<(u64, u64), SinkError> {
        let app_id = self.app_id(tp);
        let mut uploaded = Vec::with_capacity(files.len());
        let mut bytes = 0;
        // Files are uploaded once; only the log entry is retried on a conflict.
        let write_state = storage::blocking(|| {
            self.table
                .snapshot
                .clone()
                .update_table(UpdateTableOperation::StreamingUpdate, engine_info(), true)
                .build(&self.table.engine, Box::new(FileSystemCommitter::new()))
                .and_then(|txn| txn.write_state())
        })
        .map_err(|e| self.kernel(e))?;
        for (values, path, stats) in files {
            let mut context = write_state.write_context_builder();
            if !values.is_empty() {
                context = context.with_partition_values(values);
            }
            let context = context.build().map_err(|e| self.kernel(e))?;
            let name = format!(
                "part-{tp}-{first:020}-{last:020}-{}.{}.parquet",
                uuid_like(),
                match self.config.compression {
                    Compression::Zstd => "zstd",
                    Compression::None => "uncompressed",
                }
            );
            let url = context
                .write_dir()
                .join(&name)
                .map_err(|e| self.error(DeltaError::Schema(e.to_string())))?;
            let key = ObjectPath::from_url_path(url.path())
                .map_err(|e| self.error(DeltaError::Schema(e.to_string())))?;
            let size =
                storage::upload_file(self.table.store.clone(), key, &path).map_err(|source| {
                    SinkError::Io {
                        sink: self.name.clone(),
                        path: PathBuf::from(url.as_str()),
                        source,
                    }
                })?;
            let _ = std::fs::remove_file(&path);
            bytes += size;
            let now = chrono::Utc::now().timestamp_millis();
            let stats = match stats {
                Some(stats) => stats,
                None => continue,
            };
            let meta = DataFileMetadata::new(delta_kernel::FileMeta::new(url, now, size), stats);
            let add = build_add_file_metadata(meta, &context)
                .and_then(ArrowEngineData::try_from_engine_data)
                .map_err(|e| self.kernel(e))?;
            uploaded.push(add.record_batch().clone());
        }
        let count = uploaded.len() as u64;
        for attempt in 0..20 {
            let found = self.table.txn_version(&app_id).map_err(|e| self.error(e))?;
            if found != expected {
                return Err(self.error(DeltaError::Fenced {
                    partition: tp.clone(),
                    expected,
                    found,
                }));
            }
            let adds: Vec<_> = uploaded
                .iter()
                .map(|a| Box::new(ArrowEngineData::new(a.clone())))
                .collect();
            let engine = &self.table.engine;
            let snapshot = self.table.snapshot.clone();
            let result = storage::blocking(|| -> Result<_, delta_kernel::KernelError> {
                let mut txn = snapshot
                    .update_table(UpdateTableOperation::StreamingUpdate, engine_info(), true)
                    .with_transaction_id(app_id.clone(), last)
                    .with_blind_append()
                    .build(engine, Box::new(FileSystemCommitter::new()))?;
                for add in adds {
                    txn.add_files(add);
                }
                txn.commit(engine)
            })
            .map_err(|e| self.kernel(e))?;
            match result {
                CommitResult::Committed(committed) => {
                    let version = committed.commit_version();
                    match committed.post_commit_snapshot() {
                        Some(snapshot) => self.table.snapshot = snapshot.clone(),
                        None => self.table.refresh().map_err(|e| self.error(e))?,
                    }
                    self.checkpoint(version);
                    tracing::debug!(sink = %self.name, partition = %tp, version, last, files = count, "committed to the Delta table");
                    return Ok((count, bytes));
                }
                CommitResult::Conflicted(_) | CommitResult::Retryable(_) => {
                    // Another writer took the version: read the table again and retry.
                    if attempt > 2 {
                        std::thread::sleep(Duration::from_millis(20 * attempt));
                    }
                    self.table.refresh().map_err(|e| self.error(e))?;
                }
            }
        }
        Err(self.error(DeltaError::Schema(format!(
            "partition {tp}: 20 attempts to append a version conflicted with other writers"
        ))))
    }

    /// Writes a checkpoint at every `checkpoint_interval`-th version (failures are logged:
    /// the table stays readable, only slower).
    fn checkpoint(&self, version: u64) {
        let interval = self.config.checkpoint_interval.max(1);
        if version == 0 || !version.is_multiple_of(interval) {
            return;
        }
        let snapshot = self.table.snapshot.clone();
        if let Err(e) = storage::blocking(|| snapshot.checkpoint(&self.table.engine, None)) {
            tracing::warn!(sink = %self.name, version, error = %e, "writing a Delta checkpoint failed; readers replay more log until the next one");
        }
    }
}

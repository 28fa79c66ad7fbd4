//! A Delta table as the sink sees it: its URL, store, kernel engine and latest snapshot;
//! opened (created with the rows' schema when missing) and refreshed here.

use std::sync::Arc;

use arrow::datatypes::Schema;
use delta_kernel::committer::FileSystemCommitter;
use delta_kernel::engine::arrow_conversion::TryFromArrow;
use delta_kernel::expressions::ColumnName;
use delta_kernel::schema::StructType;
use delta_kernel::transaction::create_table::create_table;
use delta_kernel::transaction::data_layout::DataLayout;
use delta_kernel::{Snapshot, SnapshotRef};
use delta_kernel_default_engine::executor::tokio::TokioMultiThreadExecutor;
use delta_kernel_default_engine::DefaultEngineBuilder;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use url::Url;

use super::{DeltaError, Engine};
use crate::storage::{self, Location};

/// A table: where it is and the kernel engine that reads and writes it.
pub(super) struct Table {
    pub(super) url: Url,
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) engine: Engine,
    pub(super) snapshot: SnapshotRef,
}

impl Table {
    pub(super) fn kernel_error(&self, source: delta_kernel::KernelError) -> DeltaError {
        DeltaError::Kernel {
            url: self.url.to_string(),
            source,
        }
    }

    /// Opens the table at `location`, creating it with `schema` (partitioned by
    /// `partition_by`) if it does not exist.
    pub(super) fn open(
        location: Location,
        schema: &Schema,
        partition_by: &[String],
    ) -> Result<Table, DeltaError> {
        let (url, store, engine) = connect(location, true)?;
        let kernel = |source| DeltaError::Kernel {
            url: url.to_string(),
            source,
        };
        let log = ObjectPath::from_url_path(format!("{}_delta_log/", url.path()))
            .map_err(|e| DeltaError::Schema(e.to_string()))?;
        let exists = {
            let store = store.clone();
            storage::block_on(async move { store.list_with_delimiter(Some(&log)).await })
                .map(|listed| !listed.objects.is_empty())
                .unwrap_or(false)
        };
        let snapshot = storage::blocking(|| -> Result<SnapshotRef, DeltaError> {
            if exists {
                return Snapshot::builder_for(url.as_str())
                    .build(&engine)
                    .map_err(kernel);
            }
            let kernel_schema = Arc::new(
                StructType::try_from_arrow(schema)
                    .map_err(|e| DeltaError::Schema(e.to_string()))?,
            );
            let mut create = create_table(url.as_str(), kernel_schema, engine_info(), true);
            if !partition_by.is_empty() {
                create = create.with_data_layout(DataLayout::Partitioned {
                    columns: partition_by
                        .iter()
                        .map(|c| ColumnName::new([c.as_str()]))
                        .collect(),
                });
            }
            let created = create
                .build(&engine, Box::new(FileSystemCommitter::new()))
                .and_then(|txn| txn.commit(&engine))
                .map_err(kernel)?;
            if !created.is_committed() {
                // Another writer created it first: use theirs.
                tracing::info!(table = %url, "the Delta table was created by another writer meanwhile");
            }
            Snapshot::builder_for(url.as_str())
                .build(&engine)
                .map_err(kernel)
        })?;
        Ok(Table {
            url,
            store,
            engine,
            snapshot,
        })
    }

    /// The latest version of the table.
    pub(super) fn refresh(&mut self) -> Result<(), DeltaError> {
        let snapshot =
            storage::blocking(|| Snapshot::builder_from(self.snapshot.clone()).build(&self.engine))
                .map_err(|e| self.kernel_error(e))?;
        self.snapshot = snapshot;
        Ok(())
    }

    pub(super) fn txn_version(&self, app_id: &str) -> Result<Option<i64>, DeltaError> {
        storage::blocking(|| self.snapshot.get_app_id_version(app_id, &self.engine))
            .map_err(|e| self.kernel_error(e))
    }
}

/// The table's URL (a directory URL, ending in `/`), its store, and a kernel engine
/// whose I/O runs on sluice's object-store runtime. A local directory is created when
/// `create`.
fn connect(
    location: Location,
    create: bool,
) -> Result<(Url, Arc<dyn ObjectStore>, Engine), DeltaError> {
    let (url, store): (Url, Arc<dyn ObjectStore>) = match location {
        Location::Local(path) => {
            if create {
                std::fs::create_dir_all(&path).map_err(|source| DeltaError::Spool {
                    path: path.clone(),
                    source,
                })?;
            }
            let absolute = std::fs::canonicalize(&path)
                .map_err(|source| DeltaError::Spool { path, source })?;
            let url = Url::from_directory_path(&absolute).map_err(|()| {
                DeltaError::Schema(format!("{} is not absolute", absolute.display()))
            })?;
            (url, Arc::new(object_store::local::LocalFileSystem::new()))
        }
        Location::Object(object) => {
            let text = format!("{}/", object.url.trim_end_matches('/'));
            let url = Url::parse(&text).map_err(|e| DeltaError::Schema(e.to_string()))?;
            (url, object.store)
        }
    };
    // The kernel's I/O runs on sluice's object-store runtime (which is never dropped, so
    // a sink may be dropped anywhere).
    let executor = match storage::io_runtime() {
        Some(runtime) => TokioMultiThreadExecutor::new(runtime.handle().clone()),
        None => TokioMultiThreadExecutor::new_owned_runtime(Some(2), None).map_err(|source| {
            DeltaError::Kernel {
                url: url.to_string(),
                source,
            }
        })?,
    };
    let engine = DefaultEngineBuilder::new(store.clone())
        .with_task_executor(Arc::new(executor))
        .build();
    Ok((url, store, engine))
}

/// The data files of the table's latest version (paths relative to its root), as a
/// reader must see them: added and not removed since. Tables with deletion vectors are
/// refused (sluice never writes them; reading such a file whole would be wrong).
pub fn live_files(location: Location) -> Result<Vec<String>, DeltaError> {
    let (url, _store, engine) = connect(location, false)?;
    let kernel = |source| DeltaError::Kernel {
        url: url.to_string(),
        source,
    };
    let files = storage::blocking(
        || -> Result<Vec<(String, bool)>, delta_kernel::KernelError> {
            let snapshot = Snapshot::builder_for(url.as_str()).build(&engine)?;
            let scan = snapshot.scan_builder().build()?;
            let mut files = Vec::new();
            for metadata in scan.scan_metadata(&engine)? {
                files = metadata?.visit_scan_files(files, |files, file| {
                    files.push((file.path, file.dv_info.has_vector()));
                })?;
            }
            Ok(files)
        },
    )
    .map_err(kernel)?;
    if files.iter().any(|(_, deletion_vector)| *deletion_vector) {
        return Err(DeltaError::Schema(format!(
            "{url}: the table has deletion vectors, which sluice does not read"
        )));
    }
    Ok(files
        .into_iter()
        // Paths in the log are URL-encoded relative paths.
        .map(|(path, _)| {
            percent_encoding::percent_decode_str(&path)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect())
}

pub(super) fn engine_info() -> String {
    format!("sluice/{}", env!("CARGO_PKG_VERSION"))
}

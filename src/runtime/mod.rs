//! Running a checked [`Pipeline`]: the `/metrics` endpoint, attempts (`attempt`) and
//! what happens between them.
//!
//! [`run`] takes the shutdown token as an argument (mini-redis style), so the binary
//! wires it to SIGINT/SIGTERM and tests and the demo cancel it themselves.
//!
//! A full disk (or quota), or an object store that stops answering mid-run (after the
//! object-store client's own retries), is not a reason to exit at once: a supervisor
//! would restart the process into the same fault every few seconds. The attempt stops the way a crash
//! would leave things (nothing committed past what is durable), `/health` answers with
//! the cause, and a new attempt starts after a backoff (1 s doubling to 30 s), for at most
//! `Pipeline::storage_retry` (default 5 minutes; `--storage-retry`). Each attempt starts
//! like a process restart: sinks recover their datasets, the source resumes from the
//! committed offsets. Then the error is returned.

use std::path::PathBuf;
use std::sync::Arc;

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::SourceConfig;
use crate::kafka_client::{check_reachable, ClientEvents, Unreachable};
use crate::pipeline::schedule::repeat;
use crate::pipeline::{Pipeline, ScheduledRetrain};
use crate::sink::SinkError;
use crate::source::bounded::{BackfillProgress, BoundedError};
use crate::source::files::FilesError;
use crate::source::kafka::SourceError;
use crate::stage::StageError;
use crate::telemetry::http::MetricsServer;
use crate::telemetry::{Stats, StatsSnapshot};

mod attempt;
mod order;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("decoding a batch failed inside Arrow (a bug, not bad input): {0}")]
    Decode(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Prepare(#[from] crate::decode::writers::PrepareError),
    #[error("decode.schema_registry: {0}")]
    Registry(#[from] crate::schema_registry::RegistryError),
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error("a pipeline task panicked or was cancelled")]
    Task(#[from] tokio::task::JoinError),
    #[error("forgetting the finished backfill's bookkeeping under {}", path.display())]
    Bookkeeping {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Metrics(#[from] crate::telemetry::http::BindError),
    #[error(transparent)]
    Backfill(#[from] BoundedError),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
    #[error("stopped by a signal before the pipeline started")]
    Interrupted,
}

/// Where the records come from.
#[derive(Clone)]
pub enum SourceMode {
    /// `sluice run`: a member of the pipeline's consumer group, until shutdown.
    Group,
    /// `sluice backfill`: the resolved offset ranges, then stop (no group, no commits).
    Bounded(Arc<BackfillProgress>),
    /// `sluice backfill --input`: these JSON-lines or Parquet files (see `source::files`),
    /// then stop.
    Files(Vec<PathBuf>, Arc<BackfillProgress>),
}

impl SourceMode {
    /// Who writes the Parquet files: the live pipeline (`None`) or a backfill run.
    fn parquet_writer(&self) -> Option<String> {
        match self {
            SourceMode::Group => None,
            SourceMode::Bounded(progress) | SourceMode::Files(_, progress) => {
                Some(progress.run_id.clone())
            }
        }
    }
}

/// Checks, all at once, that a broker answers every Kafka client the run will create
/// (a backfill's source was checked when its ranges were resolved).
async fn check_brokers(
    pipeline: &Pipeline,
    mode: &SourceMode,
    stats: &Arc<Stats>,
) -> Result<(), RunError> {
    let SourceConfig::Kafka(kafka) = &pipeline.config.source;
    let mut clients = pipeline.sinks.kafka_clients();
    if matches!(mode, SourceMode::Group) {
        // The member's own configuration (check_reachable leaves the group out).
        let consumer = crate::source::settings::consumer_config(kafka, &pipeline.group_id());
        clients.push(("source.kafka.brokers".into(), consumer));
    }
    let timeout = kafka.connect_timeout;
    let checks = clients.into_iter().map(|(key, config)| {
        let client = key.trim_end_matches(".brokers").trim_end_matches(".kafka");
        let events = ClientEvents::new(client, stats.clone());
        tokio::task::spawn_blocking(move || check_reachable(&config, &key, timeout, Some(events)))
    });
    for checked in futures::future::join_all(checks).await {
        checked??;
    }
    Ok(())
}

/// Runs `pipeline` until `shutdown` is cancelled (or a component fails). Returns the
/// run's counters once every in-flight batch is durable and offsets are committed.
pub async fn run(
    pipeline: &Pipeline,
    shutdown: CancellationToken,
    stats: Arc<Stats>,
) -> Result<StatsSnapshot, RunError> {
    run_with(pipeline, SourceMode::Group, shutdown, stats).await
}

/// How long open scrapes may take to finish when the pipeline stops.
const SERVER_STOP_GRACE: Duration = Duration::from_secs(2);

/// Backoff between attempts after a full disk: from the first, doubling to the last.
const STORAGE_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// [`run`] with the source `mode`. A bounded run also ends by itself once its ranges are
/// read and durable.
pub async fn run_with(
    pipeline: &Pipeline,
    mode: SourceMode,
    shutdown: CancellationToken,
    stats: Arc<Stats>,
) -> Result<StatsSnapshot, RunError> {
    // The endpoint is up first, so `/health` says what start-up is waiting for, and it
    // stays up between attempts, saying why the pipeline is not running.
    let server_stop = CancellationToken::new();
    let _stop_server_on_return = server_stop.clone().drop_guard();
    let mut server_task = None;
    if let Some(metrics) = &pipeline.config.metrics {
        let server = MetricsServer::bind(&metrics.listen, pipeline.name(), stats.clone()).await?;
        if let Some(addr) = server.local_addr() {
            tracing::info!(%addr, "serving /metrics and /health");
            let _ = stats.http_addr.set(addr);
        }
        let stop = server_stop.clone();
        server_task = Some(tokio::spawn(async move {
            if let Err(e) = server.serve(stop).await {
                tracing::error!(error = %e, "the /metrics endpoint failed");
            }
        }));
    }
    let outcome = attempts(pipeline, mode, &shutdown, &stats).await;
    // The endpoint goes with the pipeline: its port is free when this returns.
    server_stop.cancel();
    if let Some(mut server) = server_task {
        if tokio::time::timeout(SERVER_STOP_GRACE, &mut server)
            .await
            .is_err()
        {
            server.abort();
            let _ = server.await;
        }
    }
    outcome
}

/// Runs attempts until one ends without a full disk, or the storage retry time is spent.
async fn attempts(
    pipeline: &Pipeline,
    mode: SourceMode,
    shutdown: &CancellationToken,
    stats: &Arc<Stats>,
) -> Result<StatsSnapshot, RunError> {
    let mut full_since: Option<Instant> = None;
    let mut backoff = STORAGE_BACKOFF.0;
    loop {
        // A failing attempt cancels its own token, not the caller's.
        let outcome = attempt::run(
            pipeline,
            mode.clone(),
            shutdown.child_token(),
            stats.clone(),
        )
        .await;
        let error = match outcome {
            Err(error) if storage_fault(&error).is_some() => error,
            other => {
                stats.readiness.set_problem("storage", None);
                return other;
            }
        };
        let since = *full_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= pipeline.storage_retry || shutdown.is_cancelled() {
            return Err(error);
        }
        let cause = crate::telemetry::chain(&error);
        let fault = storage_fault(&error).unwrap_or("storage fault");
        tracing::error!(error = %cause, retry_in = ?backoff, "{fault}: nothing past what is durable was committed; retrying");
        stats.readiness.set_problem(
            "storage",
            Some(format!("{fault}, retrying in {backoff:?}: {cause}")),
        );
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return Err(error),
        }
        backoff = (backoff * 2).min(STORAGE_BACKOFF.1);
    }
}

/// Whether `error` comes from a full disk or an exhausted quota (`storage full`), or from
/// an object store that stopped answering (`object store unavailable`).
fn storage_fault(error: &RunError) -> Option<&'static str> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ) || matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
            {
                return Some("storage full");
            }
            let store = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<object_store::Error>());
            if store.is_some_and(|e| {
                !matches!(
                    e,
                    object_store::Error::NotFound { .. }
                        | object_store::Error::AlreadyExists { .. }
                        | object_store::Error::Precondition { .. }
                )
            }) {
                return Some("object store unavailable");
            }
        }
        cause = e.source();
    }
    None
}

/// Runs the pipeline's `retrain` job on its schedule until shutdown, on a blocking thread
/// so the stream never waits for it; with `on_drift`, also when an infer stage raises
/// drift (at most once per its interval). One run at a time. A failed run is logged; the
/// next one still happens. A version it publishes reaches this pipeline's infer stages
/// through the registry watcher, like one published by a separate `sluice retrain`.
async fn retrain_task(
    retrain: ScheduledRetrain,
    shutdown: CancellationToken,
    stats: Arc<Stats>,
) -> Result<(), RunError> {
    let one_at_a_time = tokio::sync::Mutex::new(());
    let run = |trigger: &'static str| {
        let (job, stats, lock) = (retrain.job.clone(), stats.clone(), &one_at_a_time);
        async move {
            let _running = lock.lock().await;
            let options = crate::retrain::RetrainOptions::default();
            let run = tokio::task::spawn_blocking(move || {
                crate::retrain::run(&job, &options, |_, _, _| {})
            });
            let outcome = match run.await {
                Ok(Ok(report)) => {
                    tracing::info!(trigger, report = %report, "scheduled retrain finished");
                    if report.published.is_some() {
                        "published"
                    } else {
                        "kept"
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(trigger, error = %crate::telemetry::chain(&e), "scheduled retrain failed; the serving model stays");
                    "failed"
                }
                Err(e) => {
                    tracing::error!(trigger, error = %e, "scheduled retrain task failed");
                    "failed"
                }
            };
            stats.record_retrain(trigger, outcome);
        }
    };
    let on_drift = async {
        let Some(min_interval) = retrain.on_drift else {
            return std::future::pending().await;
        };
        let mut last: Option<std::time::Instant> = None;
        loop {
            stats.drift_raised.notified().await;
            match last {
                Some(at) if at.elapsed() < min_interval => {
                    tracing::info!(since = ?at.elapsed(), ?min_interval, "drift raised again; the last drift retrain is too recent");
                }
                _ => {
                    last = Some(std::time::Instant::now());
                    run("drift").await;
                }
            }
        }
    };
    tokio::pin!(on_drift);
    let scheduled = repeat(Some(&retrain.schedule), false, &shutdown, || {
        run("schedule")
    });
    tokio::select! {
        result = scheduled => {
            if let Err(e) = result {
                tracing::error!(error = %crate::telemetry::chain(&e), "retrain schedule has no next run; scheduled retraining stops");
            }
        }
        () = &mut on_drift => {}
        () = shutdown.cancelled() => {}
    }
    // Drift may still start runs after the schedule ended.
    tokio::select! {
        () = &mut on_drift => {}
        () = shutdown.cancelled() => {}
    }
    Ok(())
}

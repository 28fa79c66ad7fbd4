//! Builds a running pipeline from a checked [`Pipeline`] and supervises it.
//!
//! ```text
//! source thread --(bounded)--> process task --(bounded, one per sink)--> sink tasks
//!       ^                      decode + stages                               |
//!       +------------------ AckTracker (durable -> committable) <-----------+
//! ```
//!
//! The process task decodes and runs the stateful stages (`window`) one batch at a time in
//! source order, then keeps up to [`STAGE_CONCURRENCY`] batches in flight through the
//! other stages at once and hands them on in source order; having several in flight is
//! what lets an `infer` stage merge small batches into one model run. A revoke reaches the
//! stateful stages in order too, after the revoked partitions' last batch.
//!
//! [`run`] takes the shutdown token as an argument (mini-redis style), so the binary
//! wires it to SIGINT/SIGTERM and tests and the demo cancel it themselves. Only the
//! source watches it; the rest ends as channels close. If a sink fails, the tracker is
//! marked failed and the token cancelled: the source commits only what is durable and
//! stops, and `run` returns the sink's error.

use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ack::AckTracker;
use crate::config::{Pipeline, ScheduledRetrain, SourceConfig};
use crate::decode::JsonDecoder;
use crate::kafka_client::{check_reachable, client_config, Unreachable};
use crate::sink::{self, SinkError, SinkMessage};
use crate::source::bounded::{BackfillProgress, BoundedError, BoundedSource};
use crate::source::files::{FileSource, FilesError};
use crate::source::kafka::{KafkaSource, SourceError};
use crate::source::SourceMessage;
use crate::stage::{Chain, StageError};
use crate::telemetry::http::MetricsServer;
use crate::telemetry::{Stats, StatsSnapshot};

/// Batches buffered between two tasks. Small: batches are large, and a slow sink should
/// slow the consumer down quickly.
const CHANNEL_CAPACITY: usize = 4;

/// Batches in flight through the stages at once (results stay in source order).
const STAGE_CONCURRENCY: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("decoding a batch failed inside Arrow (a bug, not bad input): {0}")]
    Decode(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error("a pipeline task panicked or was cancelled: {0}")]
    Task(String),
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

enum Source {
    Group(KafkaSource),
    Bounded(BoundedSource),
    Files(FileSource),
}

/// Checks, all at once, that a broker answers every Kafka client the run will create
/// (a backfill's source was checked when its ranges were resolved).
async fn check_brokers(pipeline: &Pipeline, mode: &SourceMode) -> Result<(), RunError> {
    let SourceConfig::Kafka(kafka) = &pipeline.config.source;
    let mut clients = sink::kafka_clients(pipeline);
    if matches!(mode, SourceMode::Group) {
        let consumer = client_config(&kafka.brokers, &[], &kafka.properties, &[]);
        clients.push(("source.kafka.brokers".into(), consumer));
    }
    let timeout = kafka.connect_timeout;
    let checks = clients.into_iter().map(|(key, config)| {
        tokio::task::spawn_blocking(move || check_reachable(&config, &key, timeout))
    });
    for checked in futures::future::join_all(checks).await {
        checked.map_err(|e| RunError::Task(e.to_string()))??;
    }
    Ok(())
}

/// How long sinks may keep finishing outstanding work (Kafka deliveries) after shutdown
/// is requested; then they give it up, uncommitted, and the run ends with an error.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(15);

/// Runs `pipeline` until `shutdown` is cancelled (or a component fails). Returns the
/// run's counters once every in-flight batch is durable and offsets are committed.
pub async fn run(
    pipeline: &Pipeline,
    shutdown: CancellationToken,
    stats: Arc<Stats>,
) -> Result<StatsSnapshot, RunError> {
    run_with(pipeline, SourceMode::Group, shutdown, stats).await
}

/// [`run`] with the source `mode`. A bounded run also ends by itself once its ranges are
/// read and durable.
pub async fn run_with(
    pipeline: &Pipeline,
    mode: SourceMode,
    shutdown: CancellationToken,
    stats: Arc<Stats>,
) -> Result<StatsSnapshot, RunError> {
    let config = &pipeline.config;
    let SourceConfig::Kafka(kafka) = &config.source;
    let sink_count = sink::count(pipeline);
    let tracker = Arc::new(AckTracker::new(sink_count));
    let sinks = sink::build(pipeline, mode.parquet_writer(), &tracker, &stats)?;

    // The endpoint is up first, so `/health` says what start-up is waiting for.
    let server_stop = CancellationToken::new();
    let _stop_server_on_return = server_stop.clone().drop_guard();
    let mut server_task = None;
    if let Some(metrics) = &config.metrics {
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

    // Fail fast, before loading models, when no broker answers.
    tokio::select! {
        checked = check_brokers(pipeline, &mode) => checked?,
        _ = shutdown.cancelled() => return Err(RunError::Interrupted),
    }

    // Models load and warm up before the consumer joins the group.
    let chain = Arc::new(Chain::build_counted(pipeline, stats.clone()).await?);
    stats.set_inference_devices(chain.inference_devices());
    stats.readiness.set_stages_ready();

    let mut tasks: JoinSet<Result<(), RunError>> = JoinSet::new();
    if let (Some(retrain), SourceMode::Group) = (pipeline.retrain.clone(), &mode) {
        tasks.spawn(retrain_task(retrain, shutdown.clone()));
    }
    // Sinks give up outstanding deliveries SHUTDOWN_GRACE after shutdown (or when the run
    // ends, which cancels the guard's token).
    let stop_sinks = CancellationToken::new();
    let _stop_sinks_on_return = stop_sinks.clone().drop_guard();
    tokio::spawn({
        let (shutdown, stop) = (shutdown.clone(), stop_sinks.clone());
        async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = stop.cancelled() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
                    tracing::warn!(grace = ?SHUTDOWN_GRACE, "shutdown grace over: giving up deliveries still outstanding");
                    stop.cancel();
                }
                _ = stop.cancelled() => {}
            }
        }
    });
    let mut sink_inputs = Vec::with_capacity(sinks.len());
    for sink in sinks {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        sink_inputs.push(tx);
        let stop = stop_sinks.clone();
        tasks.spawn(async move { sink.run(rx, stop).await.map_err(RunError::from) });
    }

    let (source_tx, source_rx) = mpsc::channel(CHANNEL_CAPACITY);
    let source = match mode {
        SourceMode::Group => Source::Group(KafkaSource::new(
            kafka,
            &pipeline.group_id(),
            source_tx,
            tracker.clone(),
            stats.clone(),
        )?),
        SourceMode::Bounded(progress) => Source::Bounded(BoundedSource::new(
            kafka,
            progress,
            source_tx,
            tracker.clone(),
            stats.clone(),
        )?),
        SourceMode::Files(files, progress) => Source::Files(FileSource::new(
            files,
            kafka.batch.max_rows,
            progress,
            source_tx,
            tracker.clone(),
            stats.clone(),
        )),
    };
    let decoder = JsonDecoder::new(
        pipeline.record_schema.clone(),
        config.decode.max_record_bytes.as_u64() as usize,
        config.decode.unknown_fields,
    );
    tasks.spawn(process_task(
        decoder,
        chain,
        source_rx,
        sink_inputs,
        tracker.clone(),
        stats.clone(),
    ));
    let source_shutdown = shutdown.clone();
    tasks.spawn(async move {
        tokio::task::spawn_blocking(move || match source {
            Source::Group(source) => source.run(source_shutdown).map_err(RunError::from),
            Source::Bounded(source) => source.run(source_shutdown).map_err(RunError::from),
            Source::Files(source) => source.run(source_shutdown).map_err(RunError::from),
        })
        .await
        .map_err(|e| RunError::Task(e.to_string()))?
    });

    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        let outcome = done
            .map_err(|e| RunError::Task(e.to_string()))
            .and_then(|r| r);
        if let Err(error) = outcome {
            // The pipeline closing behind a failed component is a consequence, not a cause.
            let consequence = matches!(error, RunError::Source(SourceError::PipelineClosed));
            if first_error.is_none()
                || (!consequence
                    && matches!(
                        first_error,
                        Some(RunError::Source(SourceError::PipelineClosed))
                    ))
            {
                tracing::error!(error = %crate::telemetry::chain(&error), "pipeline component failed; stopping without committing past what is durable");
                first_error = Some(error);
            }
            tracker.fail();
            shutdown.cancel();
        }
    }
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
    match first_error {
        Some(error) => Err(error),
        None => Ok(stats.snapshot()),
    }
}

/// How long open scrapes may take to finish when the pipeline stops.
const SERVER_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A source message after the ordered part of the chain.
enum Ordered {
    Batch(crate::batch::Batch),
    Flush(crate::batch::Flush),
}

/// Decodes each raw batch, runs it through the stages and hands it to every sink;
/// forwards flushes in order.
async fn process_task(
    decoder: JsonDecoder,
    chain: Arc<Chain>,
    input: mpsc::Receiver<SourceMessage>,
    sinks: Vec<mpsc::Sender<SinkMessage>>,
    tracker: Arc<AckTracker>,
    stats: Arc<Stats>,
) -> Result<(), RunError> {
    let decoder = Arc::new(decoder);
    let stats = &stats;
    let messages = futures::stream::unfold(input, |mut input| async move {
        input.recv().await.map(|message| (message, input))
    });
    let ordered = {
        let chain = chain.clone();
        messages.then(move |message| {
            let (chain, decoder, tracker) = (chain.clone(), decoder.clone(), tracker.clone());
            async move {
                Ok::<_, RunError>(match message {
                    SourceMessage::Batch(raw) => {
                        let batch = chain.process_ordered(decoder.decode(&raw)?).await?;
                        if let Some(offset) = batch.retain_from {
                            let prov = &batch.provenance;
                            tracker.retain(&prov.tp, prov.id, offset);
                        }
                        Ordered::Batch(batch)
                    }
                    SourceMessage::Flush(flush) => {
                        if flush.revoke || flush.partitions.is_none() {
                            chain.revoke(flush.partitions.as_deref());
                        }
                        Ordered::Flush(flush)
                    }
                })
            }
        })
    };
    let processed = ordered
        .map(|message| {
            let chain = chain.clone();
            async move {
                match message? {
                    Ordered::Batch(batch) => {
                        let batch = chain.process_rest(batch).await?;
                        stats.record_processed(batch.rows.num_rows() as u64, &batch.dead_letters);
                        for letter in &batch.dead_letters {
                            tracing::debug!(topic = %letter.tp.topic, partition = letter.tp.partition, offset = letter.offset, stage = %letter.stage, reason = %letter.reason, "record sent to dead letters");
                        }
                        Ok::<_, RunError>(SinkMessage::Batch(Arc::new(batch)))
                    }
                    Ordered::Flush(flush) => Ok(SinkMessage::Flush(flush)),
                }
            }
        })
        .buffered(STAGE_CONCURRENCY);
    futures::pin_mut!(processed);
    while let Some(message) = processed.next().await {
        let message = message?;
        for sink in &sinks {
            if sink.send(message.clone()).await.is_err() {
                // That sink failed; its error is reported by its own task.
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Runs the pipeline's `retrain` job on its schedule until shutdown, on a blocking thread
/// so the stream never waits for it. A failed run is logged; the next one still happens.
/// A version it publishes reaches this pipeline's infer stages through the registry
/// watcher, like one published by a separate `sluice retrain`.
async fn retrain_task(
    retrain: ScheduledRetrain,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    loop {
        let delay = match retrain.schedule.delay_after(chrono::Utc::now()) {
            Ok(delay) => delay,
            Err(e) => {
                tracing::error!(error = %e, "retrain schedule has no next run; scheduled retraining stops");
                return Ok(());
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        let job = retrain.job.clone();
        let run = tokio::task::spawn_blocking(move || {
            crate::retrain::run(
                &job,
                &crate::retrain::RetrainOptions::default(),
                |_, _, _| {},
            )
        });
        tokio::select! {
            outcome = run => match outcome {
                Ok(Ok(report)) => tracing::info!(report = %report, "scheduled retrain finished"),
                Ok(Err(e)) => tracing::error!(error = %e, "scheduled retrain failed; the serving model stays"),
                Err(e) => tracing::error!(error = %e, "scheduled retrain task failed"),
            },
            // Shutdown does not wait for a run in progress. Publishing is a rename at its
            // very end, so a run cut off by the process exiting leaves nothing half-written.
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

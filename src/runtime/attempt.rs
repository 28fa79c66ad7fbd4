//! One attempt at running a pipeline: build the sinks, check the brokers, load the models,
//! start the source, the process task and the sinks, and supervise them until they end.
//!
//! ```text
//! source thread --(bounded)--> process task --(bounded, one per sink)--> sink tasks
//!       ^                      decode + stages                               |
//!       +------------------ AckTracker (durable -> committable) <-----------+
//! ```
//!
//! The process task decodes up to [`DECODE_CONCURRENCY`] batches at once (each on a
//! worker thread); runs the stateful stages (`window`) on up to [`ORDERED_CONCURRENCY`]
//! batches of different partitions at once, a partition's batches one at a time in source
//! order (`order`); then keeps up to [`STAGE_CONCURRENCY`] batches in flight through the
//! other stages at once (each on a worker thread) and hands them on in source order;
//! having several in flight is what lets an `infer` stage merge small batches into one
//! model run. A revoke or the end of a run reaches the stateful stages after every batch
//! before it and before every batch after it.
//!
//! Only the source watches the shutdown token; the rest ends as channels close. If a
//! component fails, the tracker is marked failed and the attempt's token cancelled: the
//! source commits only what is durable and stops, and the attempt returns the error.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::order::PartitionOrder;
use super::{check_brokers, retrain_task, RunError, SourceMode};
use crate::ack::AckTracker;
use crate::config::SourceConfig;
use crate::decode::RecordDecoder;
use crate::exactly_once::Link;
use crate::pipeline::Pipeline;
use crate::sink::{self, SinkMessage};
use crate::source::bounded::BoundedSource;
use crate::source::files::FileSource;
use crate::source::kafka::{KafkaSource, SourceError};
use crate::source::SourceMessage;
use crate::stage::Chain;
use crate::telemetry::{Stats, StatsSnapshot};

/// Batches buffered between two tasks. Small: batches are large, and a slow sink should
/// slow the consumer down quickly.
const CHANNEL_CAPACITY: usize = 4;

/// Batches in flight through the stateful stages at once, of different partitions
/// (results stay in source order).
const ORDERED_CONCURRENCY: usize = 16;

/// Batches in flight through the other stages at once (results stay in source order).
const STAGE_CONCURRENCY: usize = 4;

/// Batches decoded at once (results stay in source order).
const DECODE_CONCURRENCY: usize = 4;

enum Source {
    Group(KafkaSource),
    Bounded(BoundedSource),
    Files(FileSource),
}

/// One attempt at running the pipeline, from building its components to the end of
/// every task: what a process start does.
pub(super) async fn run(
    pipeline: &Pipeline,
    mode: SourceMode,
    shutdown: CancellationToken,
    stats: Arc<Stats>,
) -> Result<StatsSnapshot, RunError> {
    let sink_count = pipeline.sinks.count();
    let tracker = Arc::new(AckTracker::new(sink_count));
    let link = match (&mode, pipeline.sinks.commit_interval()) {
        (SourceMode::Group, Some(interval)) => {
            Some(Arc::new(Link::new(transactional_id(pipeline), interval)))
        }
        _ => None,
    };
    let sinks = sink::build(
        &pipeline.sinks,
        mode.parquet_writer(),
        link.as_ref(),
        &tracker,
        &stats,
    )?;

    // Fail fast, before loading models, when no broker answers.
    tokio::select! {
        checked = check_brokers(pipeline, &mode, &stats) => checked?,
        _ = shutdown.cancelled() => return Err(RunError::Interrupted),
    }

    // Models load and warm up before the consumer joins the group.
    let chain = Arc::new(Chain::build_counted(&pipeline.stages, stats.clone()).await?);
    stats.set_inference_devices(chain.inference_devices());
    stats.readiness.set_stages_ready();

    let mut tasks: JoinSet<Result<(), RunError>> = JoinSet::new();
    if let (Some(retrain), SourceMode::Group) = (pipeline.retrain.clone(), &mode) {
        tasks.spawn(retrain_task(retrain, shutdown.clone(), stats.clone()));
    }
    let mut sink_inputs = Vec::with_capacity(sinks.len());
    for sink in sinks {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        sink_inputs.push(tx);
        let shutdown = shutdown.clone();
        tasks.spawn(async move { sink.run(rx, shutdown).await.map_err(RunError::from) });
    }

    let (source_tx, source_rx) = mpsc::channel(CHANNEL_CAPACITY);
    let source = build_source(pipeline, mode, source_tx, &tracker, link, &stats)?;
    let decoder = RecordDecoder::for_pipeline(pipeline, stats.clone())?;
    tasks.spawn(process_task(
        decoder,
        shutdown.clone(),
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
        .map_err(RunError::Task)?
    });

    supervise(tasks, &tracker, &shutdown).await?;
    Ok(stats.snapshot())
}

/// The source `mode` asks for, sending to `out`.
fn build_source(
    pipeline: &Pipeline,
    mode: SourceMode,
    out: mpsc::Sender<SourceMessage>,
    tracker: &Arc<AckTracker>,
    link: Option<Arc<Link>>,
    stats: &Arc<Stats>,
) -> Result<Source, RunError> {
    let SourceConfig::Kafka(kafka) = &pipeline.config.source;
    Ok(match mode {
        SourceMode::Group => Source::Group(KafkaSource::new(
            kafka,
            &pipeline.group_id(),
            out,
            tracker.clone(),
            link,
            stats.clone(),
        )?),
        SourceMode::Bounded(progress) => Source::Bounded(BoundedSource::new(
            kafka,
            progress,
            out,
            tracker.clone(),
            stats.clone(),
        )?),
        SourceMode::Files(files, progress) => Source::Files(FileSource::new(
            files,
            kafka.batch.max_rows,
            progress,
            out,
            tracker.clone(),
            stats.clone(),
        )),
    })
}

/// The exactly-once sink's `transactional.id`: the group and the member's
/// `group.instance.id`, stable across restarts, so a restarted member fences the producer
/// it replaces and aborts that one's open transaction at once. Without static membership
/// the id is unique per process, and a killed process's open transaction holds
/// `read_committed` readers back until `transaction.timeout.ms`.
fn transactional_id(pipeline: &Pipeline) -> String {
    let SourceConfig::Kafka(kafka) = &pipeline.config.source;
    let group = pipeline.group_id();
    let consumer = crate::source::settings::consumer_config(kafka, &group);
    match consumer.get("group.instance.id") {
        Some(member) => format!("sluice.{group}.{member}"),
        None => {
            tracing::warn!("exactly_once without source.kafka.properties.group.instance.id: a crashed process's open transaction delays read_committed readers until it times out; set a stable group.instance.id per member");
            format!("sluice.{group}.{:016x}", rand::random::<u64>())
        }
    }
}

/// Waits for every task; on the first failure marks the tracker failed and cancels the
/// attempt, so the source commits only what is durable. Returns the failure that caused
/// the others.
async fn supervise(
    mut tasks: JoinSet<Result<(), RunError>>,
    tracker: &AckTracker,
    shutdown: &CancellationToken,
) -> Result<(), RunError> {
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        let outcome = done.map_err(RunError::Task).and_then(|r| r);
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
    first_error.map_or(Ok(()), Err)
}

/// A source message after decoding, or after the ordered part of the chain.
enum Ordered {
    Batch(crate::batch::Batch),
    Flush(crate::batch::Flush),
}

/// Runs `work` as its own task, so that futures taken in order by `buffered` run on as
/// many worker threads as there are cores, not all on the task that polls them.
async fn on_a_worker<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, RunError>> + Send + 'static,
) -> Result<T, RunError> {
    tokio::spawn(work).await.map_err(RunError::Task)?
}

/// Decodes each raw batch, runs it through the stages and hands it to every sink;
/// forwards flushes in order.
///
/// Three steps, each handing on in source order: decoding ([`DECODE_CONCURRENCY`] batches
/// at once, each on a worker thread: it is independent per batch), the stateful stages
/// (a partition's batches one at a time, partitions at once: [`PartitionOrder`]), the
/// other stages ([`STAGE_CONCURRENCY`] at once, each on a worker).
/// Batches move between the steps; their columns are never copied.
async fn process_task(
    decoder: RecordDecoder,
    shutdown: CancellationToken,
    chain: Arc<Chain>,
    input: mpsc::Receiver<SourceMessage>,
    sinks: Vec<mpsc::Sender<SinkMessage>>,
    tracker: Arc<AckTracker>,
    stats: Arc<Stats>,
) -> Result<(), RunError> {
    let decoder = Arc::new(decoder);
    let messages = futures::stream::unfold(input, |mut input| async move {
        input.recv().await.map(|message| (message, input))
    });
    let decoded = messages
        .map(move |message| {
            let (decoder, shutdown) = (decoder.clone(), shutdown.clone());
            on_a_worker(async move {
                Ok(match message {
                    SourceMessage::Batch(raw) => {
                        decoder.prepare(&raw, &shutdown).await?;
                        Ordered::Batch(decoder.decode(&raw)?)
                    }
                    SourceMessage::Flush(flush) => Ordered::Flush(flush),
                })
            })
        })
        .buffered(DECODE_CONCURRENCY);
    let mut order = PartitionOrder::default();
    let has_state = chain.has_stateful_stages();
    let stateful = chain.clone();
    let ordered = decoded
        .map(move |message| {
            let (wait, turn) = match &message {
                Ok(Ordered::Batch(batch)) if has_state => order.batch(&batch.provenance.tp),
                Ok(Ordered::Flush(flush)) if has_state && flush.ends_state() => order.barrier(),
                _ => PartitionOrder::free(),
            };
            let (chain, tracker) = (stateful.clone(), tracker.clone());
            on_a_worker(async move {
                wait.await;
                let _turn = turn;
                Ok(match message? {
                    Ordered::Batch(batch) => {
                        let batch = chain.process_ordered(batch).await?;
                        if let Some(offset) = batch.retain_from {
                            let prov = &batch.provenance;
                            tracker.retain(&prov.tp, prov.id, offset);
                        }
                        Ordered::Batch(batch)
                    }
                    Ordered::Flush(flush) => {
                        if flush.ends_state() {
                            chain.revoke(flush.partitions.as_deref());
                        }
                        Ordered::Flush(flush)
                    }
                })
            })
        })
        .buffered(ORDERED_CONCURRENCY);
    let processed = ordered
        .map(|message| {
            let (chain, stats) = (chain.clone(), stats.clone());
            on_a_worker(async move {
                match message? {
                    Ordered::Batch(batch) => {
                        let batch = chain.process_rest(batch).await?;
                        stats.record_processed(batch.rows.num_rows() as u64, &batch.dead_letters);
                        for letter in &batch.dead_letters {
                            tracing::debug!(topic = %letter.tp.topic, partition = letter.tp.partition, offset = letter.offset, stage = %letter.stage, reason = %letter.reason, "record sent to dead letters");
                        }
                        Ok(SinkMessage::Batch(Arc::new(batch)))
                    }
                    Ordered::Flush(flush) => Ok(SinkMessage::Flush(flush)),
                }
            })
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

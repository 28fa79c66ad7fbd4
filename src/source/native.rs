//! librdkafka calls the source needs that rust-rdkafka does not expose: a commit that
//! answers on a queue of its own within a time limit, and the log start librdkafka last
//! saw in a fetch response (without asking the broker).

use std::time::{Duration, Instant};

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::TopicPartitionList;

use crate::batch::TopicPartition;

/// Commits `list` and waits at most `timeout` for the coordinator's answer, serving
/// the consumer's callbacks meanwhile. The answer comes back on a queue of its own
/// (`rd_kafka_commit_queue`, what librdkafka's synchronous commit does, minus the wait
/// without limit): the consumer's queue hands an async manual commit's result to the
/// application only when the consumer closes. A record that poll returns here is
/// dropped unprocessed: its offset is never stored, so it is read again.
pub(super) fn commit_within<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    list: &TopicPartitionList,
    timeout: Duration,
) -> KafkaResult<()> {
    let client = consumer.client().native_ptr();
    // SAFETY: `client` is valid for the consumer's lifetime; the queue is ours until
    // destroyed below (librdkafka keeps its own reference for a reply still in
    // flight, so destroying it after a timeout is allowed).
    let queue = unsafe { rdsys::rd_kafka_queue_new(client) };
    // SAFETY: `list` outlives the call, which copies it; `queue` is live.
    let sent = unsafe {
        rdsys::rd_kafka_commit_queue(client, list.ptr(), queue, None, std::ptr::null_mut())
    };
    let outcome = if sent == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Err(KafkaError::ConsumerCommit(
                    RDKafkaErrorCode::OperationTimedOut,
                ));
            }
            let wait = left.min(Duration::from_millis(100)).as_millis() as i32;
            // SAFETY: `queue` is live; a returned event is ours to read and destroy.
            let event = unsafe { rdsys::rd_kafka_queue_poll(queue, wait) };
            if !event.is_null() {
                // SAFETY: `event` is non-null and destroyed right after reading it.
                break unsafe { commit_outcome(event) };
            }
            let _ = consumer.poll(Duration::ZERO);
        }
    } else {
        Err(KafkaError::ConsumerCommit(sent.into()))
    };
    // SAFETY: created above, not used after this.
    unsafe { rdsys::rd_kafka_queue_destroy(queue) };
    outcome
}

/// What an `RD_KAFKA_EVENT_OFFSET_COMMIT` event says: its error, or the first
/// partition's error. Destroys the event.
///
/// # Safety
/// `event` must be a live event this caller owns; it is not valid after the call.
unsafe fn commit_outcome(event: *mut rdsys::rd_kafka_event_t) -> KafkaResult<()> {
    // SAFETY: the caller's contract: `event` is live until destroyed at the end.
    let outcome = unsafe {
        let error = rdsys::rd_kafka_event_error(event);
        let partitions = rdsys::rd_kafka_event_topic_partition_list(event);
        if error != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            Err(KafkaError::ConsumerCommit(error.into()))
        } else if partitions.is_null() {
            Ok(())
        } else {
            let list = &*partitions;
            let count = usize::try_from(list.cnt).unwrap_or(0);
            (0..count)
                .map(|i| (*list.elems.add(i)).err)
                .find(|e| *e != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
                .map_or(Ok(()), |e| Err(KafkaError::ConsumerCommit(e.into())))
        }
    };
    // SAFETY: read above, not used after this.
    unsafe { rdsys::rd_kafka_event_destroy(event) };
    outcome
}

/// The partition's log start as librdkafka last saw it in a fetch response (no request;
/// `None` when not known yet).
pub(super) fn cached_log_start<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tp: &TopicPartition,
) -> Option<i64> {
    let topic = std::ffi::CString::new(tp.topic.as_bytes()).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid for the consumer's lifetime, the topic is a
    // NUL-terminated string that outlives the call, and the out-pointers are live locals.
    // rust-rdkafka exposes only the querying variant of this call.
    let error = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            tp.partition,
            &mut low,
            &mut high,
        )
    };
    (error == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && low >= 0)
        .then_some(low)
}

//! The source's own fetch queue: the assigned partitions' fetched messages are forwarded
//! to it, and the source takes them many at a time (`rd_kafka_consume_batch_queue`)
//! instead of one `poll` per message.
//!
//! A poll per message costs librdkafka two or three clock readings and a lock, and
//! rust-rdkafka an event wrapper and an `Arc` each; on a VM the clock readings alone were
//! a third of the source thread's time. A batch pays them once.
//!
//! Rebalances and errors still come through the consumer's queue, which the source keeps
//! polling (without waiting) between batches: librdkafka hands batch reads on the
//! consumer queue no rebalance events. A partition is routed here *before* it is
//! assigned, so every message of that assignment comes through this queue and none
//! through the consumer's (a partition's records never come through both at once, so
//! their order holds). When librdkafka stops fetching a partition (revoke, pause,
//! seek) it drops the forward and discards what was queued for the old fetch; the next
//! assignment routes the partition again. Should a forward be lost anyway, the
//! partition's messages come through the consumer's queue, which the source still reads.

use std::ffi::CStr;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{Timestamp, TopicPartitionList};

/// The most messages one read takes.
const READ_AT_MOST: usize = 1024;

/// A queue of the consumer's own that its partitions' messages are forwarded to.
/// Must be dropped before the consumer (librdkafka's destroy waits for every queue
/// handle): owners declare it before the consumer.
pub(crate) struct FetchQueue {
    queue: NonNull<rdsys::rd_kafka_queue_t>,
    /// The messages of the last read, owned until the next read (or drop) destroys them.
    read: Vec<*mut rdsys::rd_kafka_message_t>,
    /// The consumer context's router, pointing here until this queue is dropped.
    router: Arc<Router>,
}

// SAFETY: librdkafka's queues are thread-safe, and the messages in `read` are owned by
// this value alone (no other handle reaches them).
unsafe impl Send for FetchQueue {}

impl FetchQueue {
    /// A new, empty queue on `consumer`'s client, which `router` (the consumer context's)
    /// routes newly assigned partitions to until the queue is dropped.
    pub(crate) fn new<C: ConsumerContext>(consumer: &BaseConsumer<C>, router: Arc<Router>) -> Self {
        let client = consumer.client().native_ptr();
        // SAFETY: the client pointer is valid for the consumer's lifetime, which the
        // owner's field order makes outlast this queue.
        let queue = unsafe { rdsys::rd_kafka_queue_new(client) };
        // rd_kafka_queue_new allocates and never returns NULL (it aborts when out of
        // memory); a NULL would be a librdkafka bug.
        let queue =
            NonNull::new(queue).unwrap_or_else(|| panic!("rd_kafka_queue_new returned NULL"));
        *router.lock() = Some(Route {
            client: client as usize,
            queue: queue.as_ptr() as usize,
        });
        FetchQueue {
            queue,
            read: Vec::with_capacity(READ_AT_MOST),
            router,
        }
    }

    /// Reads up to [`READ_AT_MOST`] messages: what is queued now, or, when nothing is,
    /// waits up to `timeout` for the first and takes what came with it.
    pub(crate) fn read(&mut self, timeout: Duration) -> Read<'_> {
        self.destroy_read();
        let mut got = self.consume(0, READ_AT_MOST);
        if got == 0 && !timeout.is_zero() {
            // A batch read waits until it has all it asked for: ask for one, then take
            // the rest of what is there without waiting.
            let millis = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            got = self.consume(millis, 1);
            if got == 1 {
                got += self.consume(0, READ_AT_MOST - 1);
            }
        }
        debug_assert_eq!(got, self.read.len());
        Read {
            messages: &self.read,
        }
    }

    /// One `rd_kafka_consume_batch_queue` call appending to `read`; how many it took.
    fn consume(&mut self, timeout_ms: i32, at_most: usize) -> usize {
        let at = self.read.len();
        self.read.reserve(at_most);
        // SAFETY: the queue is live; librdkafka writes at most `at_most` message pointers
        // into the spare capacity reserved above, and says how many.
        let got = unsafe {
            rdsys::rd_kafka_consume_batch_queue(
                self.queue.as_ptr(),
                timeout_ms,
                self.read.as_mut_ptr().add(at),
                at_most,
            )
        };
        let got = usize::try_from(got).unwrap_or(0).min(at_most);
        // SAFETY: librdkafka initialised `got` pointers past `at`.
        unsafe { self.read.set_len(at + got) };
        got
    }

    fn destroy_read(&mut self) {
        for message in self.read.drain(..) {
            // SAFETY: every pointer in `read` is a message this queue handed out and
            // nothing else destroys; `Read` borrows of them ended with their `&mut self`.
            unsafe { rdsys::rd_kafka_message_destroy(message) };
        }
    }
}

impl Drop for FetchQueue {
    fn drop(&mut self) {
        // No rebalance may route here once the queue is gone (the consumer's close, after
        // this, revokes).
        self.router.lock().take();
        self.destroy_read();
        // SAFETY: created in `new`, not used after this. Partitions still forwarded here
        // keep the queue's memory alive (librdkafka counts references); what they fetch
        // from now on is dropped, which is fine: the owner is stopping.
        unsafe { rdsys::rd_kafka_queue_destroy(self.queue.as_ptr()) };
    }
}

/// Where a consumer's newly assigned partitions are routed: its [`FetchQueue`], while
/// that lives. Kept in the consumer's context; call [`Router::route`] from its
/// `pre_rebalance` on an assignment.
#[derive(Default)]
pub(crate) struct Router(Mutex<Option<Route>>);

/// A live fetch queue and the client it was made on (as addresses: only compared, and
/// handed back to librdkafka while the queue lives).
#[derive(Clone, Copy)]
struct Route {
    client: usize,
    queue: usize,
}

impl Router {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Route>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forwards the fetched messages of `list`'s partitions to the fetch queue. Call it
    /// before the partitions are assigned: librdkafka keeps a forward the application
    /// set when it starts fetching. Partitions it cannot route (no fetch queue, another
    /// client's, a topic name librdkafka refuses) are left on the consumer's queue, and
    /// returned.
    pub(crate) fn route<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        list: &TopicPartitionList,
    ) -> Vec<(String, i32)> {
        let client = consumer.client().native_ptr();
        // Held throughout: the queue's drop waits for it.
        let guard = self.lock();
        let route = *guard;
        let mut left = Vec::new();
        for element in list.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            let routed = match (route, std::ffi::CString::new(topic)) {
                (Some(route), Ok(name)) if route.client == client as usize => {
                    // SAFETY: the client is live for the consumer's lifetime and the
                    // queue while the router holds it (its drop clears the router
                    // first, and waits for this lock); `name` is
                    // NUL-terminated and outlives the call. The partition's handle is
                    // destroyed once its forward is set (the forward stays).
                    unsafe {
                        let from =
                            rdsys::rd_kafka_queue_get_partition(client, name.as_ptr(), partition);
                        if !from.is_null() {
                            rdsys::rd_kafka_queue_forward(
                                from,
                                route.queue as *mut rdsys::rd_kafka_queue_t,
                            );
                            rdsys::rd_kafka_queue_destroy(from);
                        }
                        !from.is_null()
                    }
                }
                _ => false,
            };
            if !routed {
                left.push((topic.to_owned(), partition));
            }
        }
        drop(guard);
        left
    }
}

/// The messages of one [`FetchQueue::read`], valid until the next read.
pub(crate) struct Read<'q> {
    messages: &'q [*mut rdsys::rd_kafka_message_t],
}

impl<'q> Read<'q> {
    pub(crate) fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Each message in fetch order, or the error librdkafka put in its place.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Result<RawMessage<'q>, KafkaError>> + 'q {
        self.messages.iter().map(|&ptr| {
            // SAFETY: librdkafka returned these non-NULL and they stay alive while the
            // queue's `read` holds them, which the `'q` borrow guarantees.
            let message = unsafe { &*ptr };
            match message.err {
                rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(RawMessage {
                    message,
                    _queue: PhantomData,
                }),
                rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF => {
                    Err(KafkaError::PartitionEOF(message.partition))
                }
                e => Err(KafkaError::MessageConsumption(e.into())),
            }
        })
    }
}

/// A message read from a [`FetchQueue`], borrowed from it.
#[derive(Clone, Copy)]
pub(crate) struct RawMessage<'q> {
    message: &'q rdsys::rd_kafka_message_t,
    _queue: PhantomData<&'q FetchQueue>,
}

impl<'q> RawMessage<'q> {
    /// The topic's name; empty if librdkafka's name were not UTF-8 (topic names are
    /// ASCII by Kafka's rules).
    pub(crate) fn topic(&self) -> &'q str {
        // SAFETY: a consumed message's topic handle lives as long as the message, and
        // its name is a NUL-terminated string owned by it.
        let name = unsafe { CStr::from_ptr(rdsys::rd_kafka_topic_name(self.message.rkt)) };
        name.to_str().unwrap_or_default()
    }

    /// The topic handle: equal for every message of one topic, to tell topics apart
    /// without reading their names.
    pub(crate) fn topic_id(&self) -> usize {
        self.message.rkt as usize
    }

    pub(crate) fn partition(&self) -> i32 {
        self.message.partition
    }

    pub(crate) fn offset(&self) -> i64 {
        self.message.offset
    }

    pub(crate) fn payload(&self) -> Option<&'q [u8]> {
        bytes(self.message.payload, self.message.len)
    }

    pub(crate) fn key(&self) -> Option<&'q [u8]> {
        bytes(self.message.key, self.message.key_len)
    }

    pub(crate) fn timestamp(&self) -> Timestamp {
        let mut kind = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: the message is live; `kind` is a live local.
        let at = unsafe { rdsys::rd_kafka_message_timestamp(self.message, &mut kind) };
        match kind {
            _ if at == -1 => Timestamp::NotAvailable,
            rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_CREATE_TIME => {
                Timestamp::CreateTime(at)
            }
            rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME => {
                Timestamp::LogAppendTime(at)
            }
            rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE => {
                Timestamp::NotAvailable
            }
        }
    }

    /// Calls `each` with every header's name and value, in the record's order.
    pub(crate) fn for_each_header(&self, mut each: impl FnMut(&str, Option<&'q [u8]>)) {
        let mut headers = std::ptr::null_mut();
        // SAFETY: the message is live; librdkafka parses its headers on first use and
        // keeps them with the message.
        let found = unsafe { rdsys::rd_kafka_message_headers(self.message, &mut headers) };
        if found != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || headers.is_null() {
            return;
        }
        for idx in 0.. {
            let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0usize);
            // SAFETY: `headers` belongs to the live message; the out-pointers are locals.
            let err = unsafe {
                rdsys::rd_kafka_header_get_all(headers, idx, &mut name, &mut value, &mut size)
            };
            if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
                return;
            }
            // SAFETY: a header's name is a NUL-terminated string kept with the message.
            let name = unsafe { CStr::from_ptr(name) };
            if let Ok(name) = name.to_str() {
                each(name, bytes(value.cast_mut(), size));
            }
        }
    }
}

/// A field of a live message as a slice (None for a NULL pointer: no key, or a tombstone).
fn bytes<'q>(ptr: *mut std::ffi::c_void, len: usize) -> Option<&'q [u8]> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: librdkafka's pointer and length describe the field's bytes, which live as
    // long as the message ('q).
    Some(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use rdkafka::consumer::Rebalance;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::{ClientConfig, ClientContext};

    use super::*;

    struct Routing(Arc<Router>);
    impl ClientContext for Routing {}
    impl ConsumerContext for Routing {
        fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
            if let Rebalance::Assign(list) = rebalance {
                assert!(
                    self.0.route(consumer, list).is_empty(),
                    "every partition routed"
                );
            }
        }
    }

    /// What a test record carries: key, payload, create time, headers.
    type Sent = (
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        i64,
        Vec<(String, Option<Vec<u8>>)>,
    );

    #[test]
    fn routed_partitions_come_whole_and_in_order_through_the_fetch_queue() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 3, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        let mut sent: BTreeMap<i32, Vec<Sent>> = BTreeMap::new();
        for i in 0..3000i64 {
            let partition = (i % 3) as i32;
            let key = (i % 7 != 0).then(|| format!("k{i}").into_bytes());
            // Every 11th record is a tombstone (no payload).
            let payload = (i % 11 != 0).then(|| format!("p{i}").into_bytes());
            let headers = vec![
                ("h".to_owned(), Some(i.to_string().into_bytes())),
                ("empty".to_owned(), None),
            ];
            let mut owned = OwnedHeaders::new();
            for (name, value) in &headers {
                owned = owned.insert(Header {
                    key: name.as_str(),
                    value: value.as_deref(),
                });
            }
            let mut record = BaseRecord::<[u8], [u8]>::to("t")
                .partition(partition)
                .timestamp(1_000 + i)
                .headers(owned);
            if let Some(key) = &key {
                record = record.key(key.as_slice());
            }
            if let Some(payload) = &payload {
                record = record.payload(payload.as_slice());
            }
            producer.send(record).map_err(|(e, _)| e).unwrap();
            producer.poll(Duration::ZERO);
            sent.entry(partition)
                .or_default()
                .push((key, payload, 1_000 + i, headers));
        }
        producer.flush(Duration::from_secs(30)).unwrap();

        let router = Arc::new(Router::default());
        let consumer: BaseConsumer<Routing> = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "fetch-queue-test")
            .set("auto.offset.reset", "earliest")
            .create_with_context(Routing(router.clone()))
            .unwrap();
        let mut queue = FetchQueue::new(&consumer, router);
        consumer.subscribe(&["t"]).unwrap();
        let mut got: BTreeMap<i32, Vec<(i64, Sent)>> = BTreeMap::new();
        let mut largest_read = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while got.values().map(Vec::len).sum::<usize>() < 3000 && Instant::now() < deadline {
            if let Some(message) = consumer.poll(Duration::ZERO) {
                panic!("a record of a routed partition came through poll: {message:?}");
            }
            let read = queue.read(Duration::from_millis(100));
            largest_read = largest_read.max(read.iter().count());
            for message in read.iter() {
                let message = message.unwrap();
                assert_eq!(message.topic(), "t");
                let mut headers = Vec::new();
                message.for_each_header(|name, value| {
                    headers.push((name.to_owned(), value.map(<[u8]>::to_vec)));
                });
                got.entry(message.partition()).or_default().push((
                    message.offset(),
                    (
                        message.key().map(<[u8]>::to_vec),
                        message.payload().map(<[u8]>::to_vec),
                        message.timestamp().to_millis().unwrap_or(-1),
                        headers,
                    ),
                ));
            }
        }
        for (partition, records) in &sent {
            let read = got.get(partition).map(Vec::as_slice).unwrap_or_default();
            let offsets: Vec<i64> = read.iter().map(|(offset, _)| *offset).collect();
            let expected: Vec<i64> = (0..records.len() as i64).collect();
            assert_eq!(
                offsets, expected,
                "partition {partition}: every offset once, in order"
            );
            let fields: Vec<&Sent> = read.iter().map(|(_, fields)| fields).collect();
            assert_eq!(
                fields,
                records.iter().collect::<Vec<_>>(),
                "partition {partition}"
            );
        }
        assert!(largest_read > 1, "reads take many messages at once");
        // The queue goes first; dropping the consumer after it must not hang.
        drop(queue);
        drop(consumer);
    }
}

//! An optional topic a monitor writes JSON rows to (drift events, live-accuracy windows):
//! keyed by `MODEL/VERSION`, sent without waiting, flushed when the monitor is dropped.

use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

pub(super) struct TopicRows {
    out: Option<(ThreadedProducer<DefaultProducerContext>, String)>,
}

impl TopicRows {
    /// A producer from `config` when `topic` is set; nothing otherwise.
    pub(super) fn new(
        topic: Option<&str>,
        config: &rdkafka::ClientConfig,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let out = match topic {
            Some(topic) => Some((config.create()?, topic.to_owned())),
            None => None,
        };
        Ok(TopicRows { out })
    }

    /// Sends `row` keyed by `key`; a refusal is logged for `stage`, never fatal.
    pub(super) fn send(&self, stage: &str, key: &str, row: &serde_json::Value) {
        let Some((producer, topic)) = &self.out else {
            return;
        };
        let payload = row.to_string();
        if let Err((e, _)) = producer.send(BaseRecord::to(topic).key(key).payload(&payload)) {
            tracing::warn!(stage, topic, error = %e, "could not send a monitoring row");
        }
    }
}

impl Drop for TopicRows {
    fn drop(&mut self) {
        if let Some((producer, _)) = &self.out {
            let _ = producer.flush(std::time::Duration::from_secs(5));
        }
    }
}

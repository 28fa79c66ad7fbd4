"""Reads COUNT Avro messages from TOPIC with confluent-kafka's AvroDeserializer (the
writer schema fetched from the registry by the id in each message) and prints them as
one JSON array (timestamps as epoch milliseconds, with each message's schema id).

Usage: consume.py BROKERS TOPIC REGISTRY_URL COUNT
"""
import datetime
import json
import sys

from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

brokers, topic, url, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
deserialize = AvroDeserializer(SchemaRegistryClient({"url": url}))
consumer = Consumer(
    {"bootstrap.servers": brokers, "group.id": "avro-reader", "auto.offset.reset": "earliest"}
)
consumer.subscribe([topic])
context = SerializationContext(topic, MessageField.VALUE)


def plain(value):
    if isinstance(value, datetime.datetime):
        return int(value.timestamp() * 1000)
    return value


out = []
idle = 0
while len(out) < count and idle < 60:
    message = consumer.poll(1.0)
    if message is None:
        idle += 1
        continue
    if message.error():
        raise RuntimeError(message.error())
    value = deserialize(message.value(), context)
    record = {k: plain(v) for k, v in value.items()}
    record["_schema_id"] = int.from_bytes(message.value()[1:5], "big")
    record["_key"] = message.key().decode() if message.key() else None
    out.append(record)
consumer.close()
print(json.dumps(out))

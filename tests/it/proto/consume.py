"""Reads COUNT protobuf messages from TOPIC with confluent-kafka's ProtobufDeserializer
(the message class built from DESCRIPTORS, a FileDescriptorSet of the schema sluice
registered) and prints them as one JSON array (field names as declared, int64 as
numbers, timestamps as epoch milliseconds), with each message's schema id and key.

Usage: consume.py BROKERS TOPIC DESCRIPTORS MESSAGE COUNT
"""
import json
import sys

from confluent_kafka import Consumer
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

brokers, topic, descriptors, name, count = sys.argv[1:6]
files = descriptor_pb2.FileDescriptorSet()
with open(descriptors, "rb") as f:
    files.ParseFromString(f.read())
cls = message_factory.GetMessages(list(files.file), pool=descriptor_pool.DescriptorPool())[name]
deserialize = ProtobufDeserializer(cls, {"use.deprecated.format": False})
consumer = Consumer(
    {"bootstrap.servers": brokers, "group.id": "proto-reader", "auto.offset.reset": "earliest"}
)
consumer.subscribe([topic])
context = SerializationContext(topic, MessageField.VALUE)

out = []
idle = 0
while len(out) < int(count) and idle < 60:
    message = consumer.poll(1.0)
    if message is None:
        idle += 1
        continue
    if message.error():
        raise RuntimeError(message.error())
    value = deserialize(message.value(), context)
    record = {}
    for field, v in value.ListFields():
        if field.message_type is not None and field.message_type.full_name == "google.protobuf.Timestamp":
            v = v.ToMilliseconds()
        record[field.name] = v
    record["_schema_id"] = int.from_bytes(message.value()[1:5], "big")
    record["_key"] = message.key().decode() if message.key() else None
    out.append(record)
consumer.close()
print(json.dumps(out))

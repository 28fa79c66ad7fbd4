"""Produces protobuf records with confluent-kafka's ProtobufSerializer and
SchemaRegistryClient (the real Confluent wire format), driven line by line from stdin:

    produce DESCRIPTORS MESSAGE KIND START COUNT

DESCRIPTORS is a FileDescriptorSet (the .proto compiled by the test), MESSAGE the full name
of the message class built from it. Answers `ok` after each. Usage: produce.py BROKERS
TOPIC REGISTRY_URL
"""
import sys

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

brokers, topic, url = sys.argv[1:4]
client = SchemaRegistryClient({"url": url})
producer = Producer({"bootstrap.servers": brokers})
context = SerializationContext(topic, MessageField.VALUE)
serializers = {}


def message_class(descriptors, name):
    files = descriptor_pb2.FileDescriptorSet()
    with open(descriptors, "rb") as f:
        files.ParseFromString(f.read())
    # A pool per schema version: v1 and v2 declare the same message name.
    return message_factory.GetMessages(list(files.file), pool=descriptor_pool.DescriptorPool())[name]


def record(cls, kind, i):
    m = cls()
    if kind == "order":
        m.id = f"o{i}"
        m.amount = i * 1.01
        m.placed_at.FromMilliseconds(1_700_000_000_000 + i * 1000)
        m.status = i % 3
        m.tags.extend(f"t{j}" for j in range(i % 3))
        m.attributes["qty"] = i
        m.attributes["double"] = 2 * i
        m.customer.name = f"c{i % 5}"
        m.customer.vip = i % 2 == 0
        if i % 4 == 0:
            m.coupon = f"C{i}"
        if i % 2 == 0:
            m.weight_grams.value = i * 10
        m.delta = -i
        m.sequence = 2**63 + i
        m.blob = bytes([i % 256, 0, 255])
        for j in range(i % 2):
            m.others.add(name=f"x{j}", vip=True)
        if i % 3 == 1:
            m.card = f"card{i}"
        return m
    if kind in ("v1", "v2"):
        m.id = f"f{i}"
        m.rating = i % 5 + 1
        if kind == "v2":
            m.note = f"n{i}"
            m.channel = "web"
        return m
    if kind == "incompatible":
        m.id = f"f{i}"
        m.rating = "five"
        return m
    raise ValueError(kind)


for line in sys.stdin:
    command, descriptors, name, kind, start, count = line.split()
    key = (descriptors, name)
    if key not in serializers:
        cls = message_class(descriptors, name)
        serializers[key] = (cls, ProtobufSerializer(cls, client, {"use.deprecated.format": False}))
    cls, serialize = serializers[key]
    values = [serialize(record(cls, kind, i), context) for i in range(int(start), int(start) + int(count))]
    for value in values:
        producer.produce(topic, value=value)
    producer.flush(30)
    print("ok", flush=True)

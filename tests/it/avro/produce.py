"""Produces Avro records with confluent-kafka's AvroSerializer and SchemaRegistryClient
(the real Confluent wire format), driven line by line from stdin:

    produce SCHEMA KIND START COUNT   serialize and produce records START.. of KIND
    register SCHEMA KIND START COUNT  serialize only (registers the schema, caches its id)

and answers `ok` after each. Usage: produce.py BROKERS TOPIC REGISTRY_URL
"""
import datetime
import decimal
import sys

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

brokers, topic, url = sys.argv[1:4]
client = SchemaRegistryClient({"url": url})
producer = Producer({"bootstrap.servers": brokers})
context = SerializationContext(topic, MessageField.VALUE)
serializers = {}


def record(kind, i):
    if kind == "order":
        return {
            "id": f"o{i}",
            "amount": decimal.Decimal(i * 101) / 100,
            "placed_at": datetime.datetime.fromtimestamp(
                (1_700_000_000_000 + i * 1000) / 1000, tz=datetime.timezone.utc
            ),
            "status": ["NEW", "PAID", "SHIPPED"][i % 3],
            "tags": [f"t{j}" for j in range(i % 3)],
            "attributes": {"qty": i, "double": 2 * i},
            "customer": {"name": f"c{i % 5}", "vip": i % 2 == 0},
            "coupon": None if i % 4 else f"C{i}",
            "weight": i * 0.5,
        }
    if kind == "v1":
        return {"id": f"f{i}", "rating": i % 5 + 1}
    if kind == "v2":
        return {"id": f"f{i}", "rating": i % 5 + 1, "note": f"n{i}", "channel": "web"}
    if kind == "incompatible":
        return {"id": i, "rating": 1}
    raise ValueError(kind)


for line in sys.stdin:
    command, schema, kind, start, count = line.split()
    if schema not in serializers:
        with open(schema) as f:
            serializers[schema] = AvroSerializer(client, f.read())
    serialize = serializers[schema]
    values = [serialize(record(kind, i), context) for i in range(int(start), int(start) + int(count))]
    if command == "produce":
        for value in values:
            producer.produce(topic, value=value)
        producer.flush(30)
    print("ok", flush=True)

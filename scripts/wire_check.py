#!/usr/bin/env python3
"""Independent-client wire check: produces Confluent-framed Avro touchpoints with confluent-kafka +
fastavro, then reads the recovery alerts back and decodes them with fastavro. Prints each alert as
a JSON line (timestamps as epoch milliseconds) on stdout."""
import argparse, datetime, io, json, struct, sys, time, uuid

import fastavro
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

ROOT = __file__.rsplit("/scripts/", 1)[0]


def load(name):
    with open(f"{ROOT}/schemas/{name}") as f:
        return fastavro.parse_schema(json.load(f))


def to_ms(v):
    if isinstance(v, str):
        return int(datetime.datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp() * 1000)
    return v


def plain(v):
    if isinstance(v, datetime.datetime):
        return int(round(v.timestamp() * 1000))
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--input-topic", required=True)
    ap.add_argument("--alert-topic", required=True)
    ap.add_argument("--events", required=True, help="touchpoints as JSON lines")
    ap.add_argument("--input-schema-id", type=int, default=1)
    ap.add_argument("--expect", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=60)
    a = ap.parse_args()

    tp_schema, alert_schema = load("touchpoint.avsc"), load("recovery_alert.avsc")
    producer = Producer({"bootstrap.servers": a.brokers, "linger.ms": 2})
    sent = 0
    with open(a.events) as f:
        for line in f:
            if not line.strip():
                continue
            tp = json.loads(line)
            tp["occurred_at"] = to_ms(tp["occurred_at"])
            for k in ("sentiment", "customer_tier", "agent_id"):
                tp.setdefault(k, None)
            tp.setdefault("attributes", {})
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, tp_schema, tp)
            framed = b"\x00" + struct.pack(">I", a.input_schema_id) + buf.getvalue()
            producer.produce(a.input_topic, key=tp["customer_id"].encode(), value=framed)
            sent += 1
    if producer.flush(30) != 0:
        sys.exit("wire_check: produce did not complete")
    print(f"wire_check: produced {sent} touchpoints", file=sys.stderr)

    consumer = Consumer({
        "bootstrap.servers": a.brokers,
        "group.id": f"wire-check-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    # Assigned by hand, no group join: tansu 510f3e2 holds a JoinGroup for half the session
    # timeout (22.5 s at librdkafka's default), which a reader has no use for.
    parts = consumer.list_topics(a.alert_topic, timeout=10).topics[a.alert_topic].partitions
    consumer.assign([TopicPartition(a.alert_topic, p, OFFSET_BEGINNING) for p in parts])
    got, deadline = 0, time.time() + a.timeout
    while got < a.expect and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        value = msg.value()
        if value[0] != 0:
            sys.exit(f"wire_check: alert is not Confluent-framed (magic {value[0]})")
        schema_id = struct.unpack(">I", value[1:5])[0]
        alert = fastavro.schemaless_reader(io.BytesIO(value[5:]), alert_schema)
        alert["_schema_id"] = schema_id
        print(json.dumps(plain(alert)))
        got += 1
    consumer.close()
    print(f"wire_check: decoded {got} alerts", file=sys.stderr)


if __name__ == "__main__":
    main()

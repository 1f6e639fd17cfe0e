"""How long a full garbage collection holds an ingest worker: the objects a worker builds
before it fetches (kafka-python, numpy, msgspec, the decoder, the click featurizer, a
consumer), then the same after ``gc.freeze()`` as the worker does. Collections happen on
their own every few seconds under load, and the stream waits for each.

    .venv/bin/python scripts/gc_pause.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time


def full_collection_ms(repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        gc.collect()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    from kafka import KafkaConsumer

    import stream_trainer.edges.ingest  # noqa: F401 - what the forkserver preloads
    from stream_trainer.domains.decoders import batch_decoder
    from stream_trainer.models.registry import build_featurizer

    decode = batch_decoder("clicks")
    featurizer = build_featurizer("clicks", {})
    consumer = KafkaConsumer(bootstrap_servers="127.0.0.1:1", api_version=(2, 8))
    gc.collect()
    before = {"objects": len(gc.get_objects()), "ms": full_collection_ms(a.repeats)}
    gc.freeze()
    after = {"objects": len(gc.get_objects()), "ms": full_collection_ms(a.repeats)}
    consumer.close()
    del decode, featurizer
    print(json.dumps({"full_collection": {"as built": before, "frozen": after}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

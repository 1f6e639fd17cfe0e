"""CPU time per event of the tick and sensor featurizers: today's batch versions against
the per-event ones they replaced (``tests/legacy_featurizers.py``, frozen), alternating
in one process on the same events, batches of ``--batch`` (medians of ``--rounds``).

    .venv/bin/python scripts/featurize_cpu.py [--events 50000] [--batch 256] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from legacy_featurizers import LegacySensorFeaturizer, LegacyTickFeaturizer  # noqa: E402

from stream_trainer.features.sensors import SensorFeaturizer  # noqa: E402
from stream_trainer.features.ticks import TickFeaturizer  # noqa: E402
from stream_trainer.producers.generators import make_generator  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    out: dict[str, dict[str, float]] = {}
    kinds = (("ticks", TickFeaturizer, LegacyTickFeaturizer),
             ("sensors", SensorFeaturizer, LegacySensorFeaturizer))  # fmt: skip
    for kind, new, old in kinds:
        # as decoded events are: plain floats (the generators yield numpy scalars)
        events = [json.loads(json.dumps(e, default=float))
                  for e in make_generator(kind, seed=1, count=a.events)]  # fmt: skip
        us: dict[str, list[float]] = {"per event (before)": [], "batch (now)": []}
        for _ in range(a.rounds):
            for name, cls in (("per event (before)", old), ("batch (now)", new)):
                f = cls()
                t0 = time.process_time()
                for i in range(0, len(events), a.batch):
                    f.featurize(events[i : i + a.batch])
                us[name].append((time.process_time() - t0) / len(events) * 1e6)
        out[kind] = {k: round(statistics.median(v), 2) for k, v in us.items()}
    print(json.dumps({"cpu_us_per_event": out, "batch": a.batch, "events": a.events}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

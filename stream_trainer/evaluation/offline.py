"""Our pipeline driven offline, on the daemon's own code path: a stream's messages go as
records through ``Pipeline.handle`` (decode, validate, dedup, batch, featurize, the
prequential step, drift monitor and policy), and each example's prediction comes back
through the output path the daemon publishes, captured in memory instead of Kafka."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream_trainer.config import Settings, parse_settings
from stream_trainer.errors import StreamTrainerError
from stream_trainer.evaluation.kinds import traits
from stream_trainer.evaluation.streams import Stream, channels
from stream_trainer.events import Rejected
from stream_trainer.pipeline.ports import Record
from stream_trainer.pipeline_config import PipelineSettings

POLL = 2000  # records handed to the pipeline at a time, as a consumer poll would


@dataclass
class Result:
    """One method's run: its metrics (filled in when scored), time and events."""

    name: str
    metrics: dict[str, float]
    seconds: float
    events: int
    note: str = ""

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else math.nan


class _Capture:
    """A Sink that keeps the output records in memory (what the daemon would publish)."""

    def __init__(self) -> None:
        self.docs: dict[int, Mapping[str, Any]] = {}

    def output(self, topic: str, key: str | None, doc: Mapping[str, Any]) -> None:
        self.docs[doc["offset"]] = doc

    def dead_letter(self, topic: str, record: Record, why: Rejected) -> None:
        pass

    def flush(self, timeout_s: float = 0.0) -> None:
        pass

    def close(self) -> None:
        pass


def pipeline_settings(kind: str, stream: Stream, config: str | None = None) -> Settings:
    """The pipeline to evaluate: the named config's first pipeline of this kind, or the
    defaults of the kind (batch 256, the daemon's default optimizer)."""
    if config:
        from stream_trainer.config import load_settings

        loaded = load_settings(config)
        specs = [p for p in loaded.pipelines if p.kind == kind]
        if not specs:
            raise StreamTrainerError(f"{config} has no pipeline of kind {kind!r}")
        doc = loaded.model_dump(mode="json")
        doc["pipelines"] = [specs[0].model_dump(mode="json")]
    else:
        p: dict[str, Any] = {"name": kind, "kind": kind, "topics": ["evaluate"]}
        if traits(kind).channels:
            p["featurizer"] = {"channels": list(channels(kind, stream.raw))}
        doc = {"pipelines": [p]}
    doc["pipelines"][0]["output_topic"] = "evaluate.out"
    doc["pipelines"][0]["outputs"] = "all"  # every example's record is scored
    doc["device"] = "cpu"
    return parse_settings(doc, "evaluate")


def run_ours(
    stream: Stream, settings: Settings, records: list[Record] | None = None
) -> tuple[Result, dict[int, Mapping[str, Any]], Any]:
    """Our pipeline over the whole stream (or over ``records``, the stream's messages as
    the caller lays them out: impressions and labels): its result (unscored), the output
    record of each example by offset, and the pipeline as it ended (monitor, policy)."""
    import torch

    from stream_trainer.pipeline.core import Pipeline

    spec: PipelineSettings = settings.pipelines[0]
    torch.set_num_threads(settings.torch_threads)  # as the daemon does
    with tempfile.TemporaryDirectory(prefix="evaluate-") as work:
        settings = settings.model_copy(
            update={"checkpoint": settings.checkpoint.model_copy(update={"dir": Path(work)})}
        )
        frozen = [0.0]  # batches leave at max_size only: the same batches every run
        p = Pipeline(settings, spec, clock=lambda: frozen[0])
        sink = _Capture()
        p.sink = sink
        if records is None:
            records = [Record("evaluate", 0, i, 0, None, r) for i, r in enumerate(stream.raw)]
        t0 = time.perf_counter()
        for i in range(0, len(records), POLL):
            p.handle(records[i : i + POLL])
            p.pump()
        p.flush()
        seconds = time.perf_counter() - t0
    name = f"ours ({spec.kind} model, batch {spec.batch.max_size})"
    return Result(name, {}, seconds, len(records)), sink.docs, p

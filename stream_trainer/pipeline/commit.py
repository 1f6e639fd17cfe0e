"""The one order in which learned state becomes durable: flush, save, then commit.

1. flush the sink: the dead letters and outputs of the offsets about to be saved are
   delivered (else a crash after the commit would lose them);
2. save the checkpoint atomically (model, optimizers, featurizer, drift, offsets, ledger);
3. only then commit those offsets to the consumer group. The checkpoint is the truth;
   the commit is advisory (it lets tools see progress), so a failed commit only warns.

Every runner (single process, replicas, per-key shards) goes through these functions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from stream_trainer.errors import BrokerError, StreamTrainerError
from stream_trainer.pipeline.hooks import PipelineHooks
from stream_trainer.pipeline.ports import TP, Sink, Source

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 5.0
COMMIT_TIMEOUT_MS = 5000


def make_durable(
    name: str, hooks: PipelineHooks, sink: Sink | None, save: Callable[[], object] | None
) -> bool:
    """Steps 1 and 2 (``save`` None: only flush, as replicas other than rank 0 do).

    False when the checkpoint had to be postponed: the outputs could not be delivered
    (broker unreachable) or the file not written. Training goes on; a crash meanwhile
    only replays more.
    """
    t0 = time.perf_counter()
    try:
        if sink is not None:
            sink.flush(timeout_s=FLUSH_TIMEOUT_S)
        path = save() if save is not None else None
    except StreamTrainerError as err:  # BrokerError from the flush, or the store's
        hooks.on_checkpoint_failed()
        log.warning("checkpoint postponed", extra={"pipeline": name, "error": str(err)})
        return False
    if save is not None:
        dt = time.perf_counter() - t0
        hooks.on_checkpoint(dt, time.time())
        log.debug(
            "checkpoint written",
            extra={"pipeline": name, "path": str(path), "seconds": round(dt, 4)},
        )
    return True


def commit_offsets(source: Source | None, offsets: Mapping[TP, int], name: str) -> None:
    """Step 3: commit next offsets whose checkpoint is durable."""
    if source is None or not offsets:
        return
    try:
        source.commit(offsets, timeout_ms=COMMIT_TIMEOUT_MS)
    except BrokerError as err:  # the checkpoint holds the offsets; the commit is advisory
        log.warning(
            "offset commit failed (the checkpoint still holds the offsets)",
            extra={"pipeline": name, "error": str(err)[:200]},
        )

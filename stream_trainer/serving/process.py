"""``POST /predict`` in a process of its own (``serving.process: true``, the default).

Why a process: in the daemon's process a request thread shares one GIL with the
trainer, so a request waits for whatever the trainer is doing in Python (a step, a
poll's decode, a publication's copy), and a batch of requests takes interpreter time
the trainer would have used. In a process of its own, serving has an interpreter and a
scheduler entity of its own: the two only share the machine's cores.

How the process sees the newest weights: the daemon keeps :data:`SLOTS` copies of each
served model in shared memory (torch's shared storages, handed to the process when it
starts). After each publication (``snapshot.py``: at the end of a step, at most every
``serving.publish_every_s``) the trainer's thread copies the weights into the next slot
(from the live model, between two steps, when nothing in the daemon's own process reads
the published copies: no requests topic); the slot's sequence number is odd while it is
written. Then it sends the process a short message: the slot, its sequence number, the
version, and the running baseline and mixture (small). A request scores with the newest
slot and reads its sequence number again after the forward pass: if the slot was
rewritten meanwhile (it is then the oldest of three, so only a request slower than two
publication periods can meet this), it scores again with the newer one. No lock is
shared between the processes, so neither waits for the other.

How old: a served score's weights are as old as ``snapshot.py`` says (``publish_every_s``
plus one step, plus the copy: the ``train_to_serve`` age), plus the message's way to the
process (a pipe on the same machine). ``stream_trainer_served_model_version`` is the
version the process has taken: it says so once a publication's message is read, so a
request sent after the gauge shows a version is scored with it or a newer one.

The process reports every request's outcome to the daemon, which counts them in its
own metrics (one ``/metrics`` endpoint); if the process dies, the daemon logs it and
starts another on the same address with the newest weights; training never waits.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import torch
import torch.multiprocessing  # noqa: F401 (registers the reductions that share tensors)
from torch import nn

from stream_trainer.errors import StreamTrainerError
from stream_trainer.log import current as log_current
from stream_trainer.pipeline_config import PipelineSettings
from stream_trainer.serving.snapshot import ServedModel, _frozen_copy
from stream_trainer.stopping import ignore_stop_signals, quiet_children

log = logging.getLogger(__name__)

SLOTS = 3  # copies per served model: the newest, the one before, and one to write
START_TIMEOUT_S = 120.0  # a cold start imports torch: seconds on a busy machine
STATS_EVERY_S = 0.25  # how often the process reports its requests to the daemon
RESTART_AFTER_S = 1.0
OnRequest = Callable[[str, str, float, int], None]
OnServed = Callable[[str, int], None]  # (pipeline, version): the process serves it now


# ---- the shared copies -----------------------------------------------------------------------
@dataclass(eq=False)
class Slots:
    """One served model's copies in shared memory and their sequence numbers (odd: being
    written). Made by the daemon, handed to the process as they are (shared storages)."""

    modules: list[nn.Module]
    seqs: torch.Tensor  # int64, one per slot

    @classmethod
    def like(cls, model: nn.Module) -> Slots:
        """Host copies whatever the model's device: ``share_memory`` does nothing for a
        CUDA tensor, and a copy from the GPU into host memory that is not page-locked
        returns only once it is complete (after the optimizer step queued before it),
        so the sequence numbers bracket a finished copy."""
        modules = [_frozen_copy(model).cpu().share_memory() for _ in range(SLOTS)]
        return cls(modules, torch.zeros(SLOTS, dtype=torch.int64).share_memory_())

    def signature(self) -> list[tuple[str, tuple[int, ...]]]:
        return [(k, tuple(v.shape)) for k, v in self.modules[0].state_dict().items()]


@dataclass(frozen=True)
class Published:
    """What the process needs to score with slot ``slot``: sent after it is written."""

    pipeline: str
    slot: int
    seq: int
    version: int
    task: str
    published_at: float
    baseline: Any
    mixture: Any
    features: Any = None  # (ServedModel.features)


class SlotReader:
    """The process's side: :meth:`use` as :class:`~stream_trainer.serving.snapshot.Publisher`
    has it (what :class:`~stream_trainer.serving.scorer.Scorer` reads), from the slots."""

    def __init__(self, slots: Slots | None) -> None:
        self._slots = slots  # the newest slots (new ones come before their publication)
        self.current: tuple[Slots, Published] | None = None  # swapped as one reference

    def received(self, what: str, body: Any) -> bool:
        """Take new slots or a publication; True when a publication is now served."""
        if what == "slots":
            self._slots = body
        elif self._slots is not None:
            self.current = (self._slots, body)
            return True
        return False

    @contextlib.contextmanager
    def use(self) -> Iterator[ServedModel | None]:
        cur = self.current
        if cur is None:
            yield None
            return
        slots, p = cur
        seqs = slots.seqs
        yield ServedModel(
            slots.modules[p.slot], p.baseline, p.mixture, p.version, p.task, p.published_at,
            check=lambda: int(seqs[p.slot]) == p.seq, features=p.features,
        )  # fmt: skip


# ---- the daemon's side -----------------------------------------------------------------------
class ServingProcess:
    """Starts the process, mirrors each publication into its slots (:meth:`mirror`, on
    the trainer's thread), counts its requests (``on_request``), restarts it if it dies."""

    def __init__(
        self,
        specs: Sequence[PipelineSettings],
        address: str,
        *,
        token: str | None,
        max_body_bytes: int,
        max_events: int,
        on_request: OnRequest,
        on_served: OnServed | None = None,
    ) -> None:
        self.specs = list(specs)
        self.address = address
        self.limits = {"token": token, "max_body_bytes": max_body_bytes, "max_events": max_events}
        self.on_request = on_request
        self.on_served = on_served
        self.slots: dict[str, Slots] = {}
        self.newest: dict[str, Published] = {}
        self._lock = threading.Lock()  # sends: the trainers' threads and the restart
        self._ctx = mp.get_context("forkserver")
        self._conn: Connection | None = None
        self._process: Any = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.restarts = 0

    # -- the trainer's thread ------------------------------------------------------------------
    def mirror(self, name: str) -> Callable[[ServedModel], None]:
        """The publisher's hook for pipeline ``name``: copy a publication into a slot."""
        return lambda served: self._mirror(name, served)

    def _mirror(self, name: str, served: ServedModel) -> None:
        with self._lock:
            slots = self.slots.get(name)
            if slots is None or slots.signature() != [
                (k, tuple(v.shape)) for k, v in served.module.state_dict().items()
            ]:  # the first publication, or a new architecture (a promoted challenger)
                slots = self.slots[name] = Slots.like(served.module)
                self._send(("slots", (name, slots)))
            last = self.newest.get(name)
            slot = 0 if last is None or last.slot == SLOTS - 1 else last.slot + 1
            seqs = slots.seqs
            seqs[slot] += 1  # odd: being written
            with torch.no_grad():
                src = served.module.state_dict()
                for k, dst in slots.modules[slot].state_dict().items():
                    dst.copy_(src[k])  # (from a GPU: returns once copied, see Slots.like)
            seqs[slot] += 1
            pub = Published(
                name, slot, int(seqs[slot]), served.version, served.task, served.published_at,
                served.baseline, served.mixture, served.features,
            )  # fmt: skip
            self.newest[name] = pub
            self._send(("published", pub))

    def _send(self, msg: Any) -> None:
        """To the process (under the lock); a dead one is restarted by the reader thread,
        which sends it everything anew."""
        if self._conn is None:
            return
        try:
            self._conn.send(msg)
        except (OSError, ValueError):
            pass

    # -- the process -------------------------------------------------------------------------
    def start(self) -> ServingProcess:
        """Start the process and wait until it serves: an address that cannot be bound is
        the daemon's error at start, as in the daemon's own process."""
        self._spawn()
        self._thread = threading.Thread(target=self._read, name="serving-process", daemon=True)
        self._thread.start()
        return self

    def _spawn(self) -> None:
        conn, child = self._ctx.Pipe(duplex=True)
        with self._lock:
            slots = dict(self.slots)
        process = self._ctx.Process(
            target=_serve,
            args=(child, self.specs, self.address, self.limits, slots, log_current()),
            name="serving",
            daemon=True,
        )
        with quiet_children():  # a SIGTERM to the process group is the daemon's to act on
            process.start()
        child.close()
        if not conn.poll(START_TIMEOUT_S):
            process.kill()
            raise StreamTrainerError(f"the serving process did not start in {START_TIMEOUT_S} s")
        try:
            what, detail = conn.recv()
        except EOFError:
            process.join(5)
            raise StreamTrainerError(
                f"the serving process exited at start (code {process.exitcode}); see its log"
            ) from None
        if what == "error":
            process.join(5)
            raise StreamTrainerError(detail)
        self.address = detail  # the bound address (port 0: the one chosen)
        with self._lock:
            self._conn, self._process = conn, process
            for name, pub in self.newest.items():  # a restart: what the last one had
                if self.slots.get(name) is not slots.get(name):
                    self._send(("slots", (name, self.slots[name])))
                self._send(("published", pub))

    def _read(self) -> None:
        """The process's reports, until it stops; a process that died is restarted."""
        while not self._stopping.is_set():
            conn = self._conn
            try:
                msg = conn.recv() if conn is not None else None
            except (EOFError, OSError):
                msg = None
            if msg is not None:
                what, body = msg
                if what == "served":
                    if self.on_served is not None:
                        self.on_served(*body)
                    continue
                for pipeline, outcome, seconds, scored in body:
                    self.on_request(pipeline, outcome, seconds, scored)
                continue
            if self._stopping.is_set():
                return
            code = self._process.exitcode if self._process is not None else None
            log.error("the serving process exited; starting another", extra={"code": code})
            with self._lock:
                self._conn = None
            time.sleep(RESTART_AFTER_S)
            try:
                self._spawn()
                self.restarts += 1
            except StreamTrainerError as err:
                log.error("serving is down", extra={"why": str(err)})
                return

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            self._send(("stop", None))
            conn, process = self._conn, self._process
        if process is not None:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
        if conn is not None:
            conn.close()
        if self._thread is not None:
            self._thread.join(5)


# ---- the process -----------------------------------------------------------------------------
def _serve(
    conn: Connection,
    specs: Sequence[PipelineSettings],
    address: str,
    limits: dict[str, Any],
    slots: dict[str, Slots],
    log_setup: tuple[str, str],
) -> None:
    """The serving process's whole life: bind, answer, report, until the daemon goes."""
    ignore_stop_signals()  # the daemon decides when to stop (a group SIGTERM: it says so)
    from stream_trainer.log import setup_logging
    from stream_trainer.serving.http import PredictServer
    from stream_trainer.serving.scorer import Scorer

    setup_logging(*log_setup)
    torch.set_num_threads(1)  # a request's forward is small; the cores are the trainer's
    readers = {s.name: SlotReader(slots.get(s.name)) for s in specs}
    done: list[tuple[str, str, float, int]] = []
    done_lock = threading.Lock()
    send_lock = threading.Lock()  # two threads send: this one and the reporter

    def send(msg: Any) -> None:
        with send_lock:
            conn.send(msg)

    def on_request(pipeline: str, outcome: str, seconds: float, scored: int) -> None:
        with done_lock:
            done.append((pipeline, outcome, seconds, scored))

    try:
        scorers = {s.name: Scorer(s, readers[s.name]) for s in specs}
        server = PredictServer(address, scorers, on_request=on_request, **limits).start()
    except StreamTrainerError as err:
        conn.send(("error", str(err)))
        return
    conn.send(("ready", server.address))
    gone = threading.Event()

    def report() -> None:
        while not gone.wait(STATS_EVERY_S):
            with done_lock:
                batch, done[:] = list(done), []
            if batch:
                try:
                    send(("requests", batch))
                except OSError:
                    gone.set()

    threading.Thread(target=report, name="serving-report", daemon=True).start()
    try:
        while True:
            what, body = conn.recv()
            if what == "published":
                if readers[body.pipeline].received(what, body):
                    send(("served", (body.pipeline, body.version)))
            elif what == "slots":
                name, new = body
                readers[name].received(what, new)
            elif what == "stop":
                break
    except (EOFError, OSError):  # the daemon is gone
        pass
    finally:
        gone.set()
        server.stop()

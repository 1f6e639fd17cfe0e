"""Serving in a process of its own: weights through shared memory, requests counted by
the daemon, a dead process replaced. No broker."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time

import pytest
import torch
from fakes import ListSink, ListSource, run_until
from test_pipeline import click_stream, settings
from test_serving import EVENT

from stream_trainer.errors import StreamTrainerError
from stream_trainer.pipeline.core import Pipeline
from stream_trainer.serving import Publisher
from stream_trainer.serving.process import Published, ServingProcess, SlotReader, Slots


def post(address: str, doc, timeout: float = 10.0) -> tuple[int, dict]:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    conn.request("POST", "/predict", json.dumps(doc), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read())
    conn.close()
    return out


def eventually(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture(params=[True, False], ids=["local-copies", "mirror-only"])
def served(tmp_path, request):
    """A pipeline whose publications go to a serving process as well (and to copies in
    this process, or, with nothing here to read them, only to the process)."""
    s = settings(tmp_path, output_topic=None)
    p = Pipeline(s, s.pipelines[0])
    requests: list[tuple] = []
    proc = ServingProcess(
        [p.spec], "127.0.0.1:0", token=None, max_body_bytes=1 << 20, max_events=4096,
        on_request=lambda *r: requests.append(r),
    )  # fmt: skip
    p.publisher = Publisher(every_s=0.0, mirror=proc.mirror(p.spec.name), local=request.param)
    proc.start()
    yield p, proc, requests
    proc.stop()


def train(p: Pipeline, n: int, seed: int) -> None:
    run_until(p, ListSource({("t", seed): click_stream(n, seed)}, {}), ListSink())


def test_the_process_scores_with_the_newest_weights(served):
    p, proc, requests = served
    status, doc = post(proc.address, EVENT)
    assert status == 503 and doc["error"] == "model_not_ready"  # nothing published yet
    train(p, 600, 1)
    fb = p.featurizer.featurize([{**EVENT, "label": 0}])
    want = float(p.learner.predict(fb.inputs)[0])  # the trainer's own prediction
    status, doc = eventually(lambda: _newest(proc.address, p.learner.updates))
    assert doc["score"] == pytest.approx(want, rel=1e-5)
    assert (p.publisher.current is not None) == p.publisher.local  # copies only if read here
    first = doc["model_version"]
    train(p, 600, 2)  # more steps, more publications: the process follows
    status, doc = eventually(lambda: _newest(proc.address, p.learner.updates))
    assert doc["model_version"] > first
    eventually(lambda: _counted(requests, "ok", 2))
    assert (p.spec.name, "model_not_ready") in {(r[0], r[1]) for r in requests}


def _newest(address: str, version: int) -> tuple[int, dict]:
    status, doc = post(address, EVENT)
    assert status == 200 and doc["model_version"] == version, doc
    return status, doc


def _counted(requests: list[tuple], outcome: str, n: int) -> None:
    assert sum(r[1] == outcome for r in requests) >= n


def test_the_served_version_is_reported_once_the_process_serves_it(served):
    """What ``stream_trainer_served_model_version`` shows: a request sent once the process
    has reported a version is answered with that version or a newer one, never 503 (the
    gauge used to be set at publication, before the process had read it)."""
    p, proc, _ = served
    versions: list[tuple[str, int]] = []
    proc.on_served = lambda *v: versions.append(v)
    train(p, 300, 1)
    eventually(lambda: _served_at_least(versions, p.learner.updates))
    status, doc = post(proc.address, EVENT)  # at once: no retry
    assert status == 200 and doc["model_version"] == p.learner.updates, doc
    assert {name for name, _ in versions} == {p.spec.name}
    assert [v for _, v in versions] == sorted(v for _, v in versions)


def _served_at_least(served: list[tuple[str, int]], version: int) -> None:
    assert served and served[-1][1] >= version, served


def test_a_dead_process_is_replaced_on_the_same_address(served):
    p, proc, _ = served
    train(p, 300, 1)
    eventually(lambda: _newest(proc.address, p.learner.updates))
    os.kill(proc._process.pid, signal.SIGKILL)
    status, doc = eventually(lambda: _newest(proc.address, p.learner.updates))
    assert proc.restarts == 1 and doc["score"] > 0


def test_an_address_in_use_is_one_clear_error(tmp_path):
    s = settings(tmp_path, output_topic=None)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    address = f"127.0.0.1:{taken.getsockname()[1]}"
    proc = ServingProcess(
        [s.pipelines[0]], address, token=None, max_body_bytes=1 << 20, max_events=16,
        on_request=lambda *r: None,
    )  # fmt: skip
    with pytest.raises(StreamTrainerError, match="serving.address"):
        proc.start()
    taken.close()


def test_a_slot_rewritten_under_a_request_is_noticed():
    """The sequence number of a slot read before and after a forward: a rewrite in
    between (the writer bumps it to odd, copies, bumps it again) fails ``intact``."""
    slots = Slots.like(torch.nn.Linear(2, 1))
    reader = SlotReader(None)
    reader.received("slots", slots)
    slots.seqs[1] += 2
    reader.received("published", Published("c", 1, 2, 7, "binary", 0.0, None, None))
    with reader.use() as m:
        assert m.version == 7 and m.intact()
        slots.seqs[1] += 1  # the trainer starts writing slot 1 again
        assert not m.intact()

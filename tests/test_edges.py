"""The Kafka edges keep to the ports' error contract: client errors become BrokerErrors."""

from __future__ import annotations

import pytest
from kafka.errors import CommitFailedError, KafkaTimeoutError, MessageSizeTooLargeError

from stream_trainer.config import KafkaSettings
from stream_trainer.edges import KafkaSink, KafkaSource
from stream_trainer.errors import BrokerError
from stream_trainer.events import Rejected
from stream_trainer.pipeline.ports import Record


class Failing:
    """A kafka-python client whose every call raises ``err``."""

    def __init__(self, err: Exception) -> None:
        self.err = err

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise self.err

        return fail


def source(err: Exception) -> KafkaSource:
    src = KafkaSource.__new__(KafkaSource)  # no broker: only the wrapping is under test
    src.settings, src.consumer, src.assignment = KafkaSettings(), Failing(err), [("t", 0)]
    return src


def sink(err: Exception) -> KafkaSink:
    out = KafkaSink.__new__(KafkaSink)
    out.bootstrap, out.producer = "127.0.0.1:9", Failing(err)
    return out


def test_source_poll_and_commit_raise_broker_errors():
    with pytest.raises(BrokerError, match="KafkaTimeoutError") as info:
        source(KafkaTimeoutError("no answer")).poll(0.1)
    assert isinstance(info.value.__cause__, KafkaTimeoutError)
    with pytest.raises(BrokerError, match="CommitFailedError") as info:
        source(CommitFailedError("rebalanced")).commit({("t", 0): 5})
    assert isinstance(info.value.__cause__, CommitFailedError)
    source(CommitFailedError("never called")).commit({("other", 0): 5})  # not ours: no call
    inside = source(RuntimeError("Cannot block on net.run() from the IO thread itself"))
    inside.in_rebalance = True  # a revoke's checkpoint: the commit would block the IO thread
    inside.commit({("t", 0): 5})  # skipped (the checkpoint holds the offsets), no raise


def test_sink_send_and_flush_raise_broker_errors():
    rec = Record("t", 0, 7, 0, None, b"x" * 10)
    s = sink(MessageSizeTooLargeError("too big"))
    with pytest.raises(BrokerError, match="MessageSizeTooLargeError") as info:
        s.dead_letter("t.dlq", rec, Rejected("too_large"))
    assert isinstance(info.value.__cause__, MessageSizeTooLargeError)
    with pytest.raises(BrokerError, match="MessageSizeTooLargeError"):
        s.output("out", "k", {"prediction": 1.0})
    with pytest.raises(BrokerError, match="could not deliver to 127.0.0.1:9"):
        sink(KafkaTimeoutError("flush")).flush(0.1)

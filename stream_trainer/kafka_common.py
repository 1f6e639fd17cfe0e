"""Small shared pieces of the Kafka edges (source, sinks, producers, admin)."""

from __future__ import annotations

import socket

from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from stream_trainer.errors import BrokerError


def offset_and_metadata(offset: int) -> OffsetAndMetadata:
    """kafka-python 2.x has (offset, metadata); 2.1+/3.x add leader_epoch."""
    extra = [-1] * (len(OffsetAndMetadata._fields) - 2)
    return OffsetAndMetadata(offset, "", *extra)


def unreachable(bootstrap: str, err: Exception | str) -> BrokerError:
    return BrokerError(
        f"cannot reach Kafka at {bootstrap} ({err}); start one with `stream-trainer broker` "
        "or point kafka.bootstrap_servers / --bootstrap-servers at your cluster"
    )


def check_reachable(bootstrap: str, timeout_s: float = 5.0) -> None:
    """Fail fast, with one clear message, when no bootstrap server accepts a TCP connection.

    kafka-python itself only gives up after 30 s or more, or never (a consumer).
    """
    last = "no address given"
    for addr in filter(None, (a.strip() for a in bootstrap.split(","))):
        host, _, port = addr.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
                return
        except ValueError:
            last = f"{addr!r} is not HOST:PORT"
        except OSError as err:
            last = err.strerror or str(err)
    raise unreachable(bootstrap, last)


def create_topics(bootstrap: str, topics: dict[str, int]) -> list[str]:
    """Create missing topics (name -> partitions); return the ones created."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    check_reachable(bootstrap)
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="stream-trainer-admin")
    except (KafkaError, OSError) as err:
        raise unreachable(bootstrap, err) from None
    try:
        existing = set(admin.list_topics())
        wanted = [NewTopic(t, n, 1) for t, n in topics.items() if t not in existing]
        if wanted:
            try:
                admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass
        return [t.name for t in wanted]
    finally:
        admin.close()

"""Kafka administration and probes: bootstrap addresses, reachability, topic creation,
and a liveness probe that needs no client (an ApiVersions request on a bare socket)."""

from __future__ import annotations

import socket
import ssl
import struct
from typing import Any

from kafka.errors import KafkaError

from stream_trainer.errors import BrokerError


def unreachable(bootstrap: str, err: Exception | str) -> BrokerError:
    """The one message for a broker no client can reach, with how to get one."""
    return BrokerError(
        f"cannot reach Kafka at {bootstrap} ({err}); start one with `stream-trainer broker` "
        "or point kafka.bootstrap_servers / --bootstrap-servers at your cluster"
    )


def addresses(bootstrap: str) -> list[tuple[str, int]]:
    """``"h1:9092,h2:9092"`` -> ``[("h1", 9092), ("h2", 9092)]``; one clear error if malformed.

    >>> addresses("127.0.0.1:9092, [::1]:9093")
    [('127.0.0.1', 9092), ('::1', 9093)]
    """
    out = []
    for addr in filter(None, (a.strip() for a in bootstrap.split(","))):
        host, _, port = addr.rpartition(":")
        if not host or not port.isdigit():
            raise BrokerError(f"bootstrap server {addr!r} is not HOST:PORT")
        out.append((host.strip("[]"), int(port)))
    if not out:
        raise BrokerError("no bootstrap servers given (kafka.bootstrap_servers)")
    return out


def check_reachable(bootstrap: str, timeout_s: float = 5.0) -> None:
    """Fail fast, with one clear message, when no bootstrap server accepts a TCP connection.

    kafka-python itself only gives up after 30 s or more, or never (a consumer).
    """
    last = ""
    for host, port in addresses(bootstrap):
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                return
        except OSError as err:
            last = err.strerror or str(err)
    raise unreachable(bootstrap, last)


def create_topics(bootstrap: str, topics: dict[str, int], **security: Any) -> list[str]:
    """Create missing topics (name -> partitions); return the ones created."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    check_reachable(bootstrap)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap, client_id="stream-trainer-admin", **security
        )
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


_API_VERSIONS_V0 = struct.pack(">hhih", 18, 0, 0x5354, 2) + b"st"


def broker_answers(
    bootstrap: str, timeout_s: float = 2.0, tls: ssl.SSLContext | None = None
) -> bool:
    """True when some bootstrap server answers a Kafka ApiVersions request in time.

    A TCP connect alone is not enough: a frozen (SIGSTOPped) or overloaded broker
    still completes handshakes from its listen backlog, but answers nothing.
    """
    for host, port in addresses(bootstrap):
        try:
            with socket.create_connection((host, port), timeout=timeout_s) as raw:
                conn = tls.wrap_socket(raw, server_hostname=host) if tls else raw
                conn.settimeout(timeout_s)
                conn.sendall(struct.pack(">i", len(_API_VERSIONS_V0)) + _API_VERSIONS_V0)
                head = conn.recv(8)
                if len(head) == 8 and struct.unpack(">ii", head)[1] == 0x5354:
                    return True
        except (OSError, ssl.SSLError):
            continue
    return False

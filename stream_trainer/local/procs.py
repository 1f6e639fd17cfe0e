"""Child processes that cannot outlive their parent (Linux: PR_SET_PDEATHSIG)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import IO, Any

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass


def spawn(
    argv: Sequence[str],
    *,
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session (so a terminal Ctrl-C reaches only us, and we
    stop children in order) that is terminated if this process dies."""
    return subprocess.Popen(
        list(argv),
        stdout=stdout,
        stderr=stderr,
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


def stop(
    proc: subprocess.Popen[bytes], timeout_s: float = 10.0, sig: int = signal.SIGTERM
) -> int | None:
    """Signal ``proc``, wait up to ``timeout_s``, then kill it. Returns its exit code."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        os.kill(proc.pid, sig)
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)
    except ProcessLookupError:
        return proc.poll()


def python_module(*args: str) -> list[str]:
    return [sys.executable, "-m", "stream_trainer", *args]

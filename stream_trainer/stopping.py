"""SIGTERM and SIGINT as a request to stop, from the entry point's first line on; and
child processes that leave the stop to the daemon.

Start-up imports torch and builds the models: seconds on a busy machine. A signal then
met Python's default action (exit 143 for SIGTERM, no log line), so a supervisor that
stopped a daemon it had just started saw a crash. :func:`install` runs before any heavy
import (``__main__`` and ``cli.main``): a signal from then on only records the request,
and the service takes it over (``Service.install_signal_handlers``) and stops cleanly,
whenever it came. Standard library only, so that importing it costs nothing.

A stop signalled to the whole process group (systemd's default ``KillMode``,
``kill -TERM -PGID``, torchrun stopping its workers) reaches the daemon's helper
processes too (ingest workers, the serving process, the forkserver that starts them).
They ignore it (:func:`quiet_children`, :func:`ignore_stop_signals`) and stop when the
daemon tells them, as in a stop of the daemon alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Records the first SIGTERM/SIGINT (``signum``); a second one exits at once (130)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}  # what uninstall() gives the signals back

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            os._exit(130)  # (nothing has started yet that a hard exit could lose)
        self.signum = signum

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None


_installed: StopRequest | None = None


def install() -> StopRequest | None:
    """Handle SIGTERM and SIGINT as a stop request (once per process, main thread only;
    None elsewhere: signals are then whatever they were)."""
    global _installed
    if _installed is not None:
        return _installed
    if threading.current_thread() is not threading.main_thread():
        return None
    request = StopRequest()
    for sig in STOP_SIGNALS:
        request.previous[sig] = signal.signal(sig, request)
    _installed = request
    return request


def uninstall() -> None:
    """Give the signals back to their previous handlers (a command that is not a daemon);
    a signal that came meanwhile is raised again, as if it had come now."""
    global _installed
    request, _installed = _installed, None
    if request is None:
        return
    for sig, handler in request.previous.items():
        if handler is not None:  # (None: not a handler of Python's; nothing to give back)
            signal.signal(sig, handler)
    if request.signum is not None:
        signal.raise_signal(request.signum)


def current() -> StopRequest | None:
    """The request :func:`install` installed in this process, if any."""
    return _installed


def requested() -> str | None:
    """The name of the signal that asked the start-up to stop (None: none came)."""
    return _installed.name if _installed is not None else None


@contextlib.contextmanager
def default_action() -> Iterator[None]:
    """SIGTERM and SIGINT take their default action inside (the process ends), for a
    call that blocks in C++ and cannot stop gracefully: a replica joining torchrun's
    process group, which torchrun stops or restarts with SIGTERM (the others would
    wait for it until their timeout). Nothing has been learned yet."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, signal.SIG_DFL) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def quiet_children() -> Iterator[None]:
    """Start processes inside this to have them begin with SIGTERM and SIGINT blocked.

    The forkserver (started by the first ``Process.start()``) inherits the calling
    thread's signal mask, and every process it forks inherits the forkserver's: so a
    stop signalled to the process group never kills the forkserver or a worker before
    that worker's :func:`ignore_stop_signals`. The resource tracker is started first:
    its own start unblocks both signals in the calling thread (CPython's bpo-33613
    trick), which would undo ours.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    from multiprocessing import forkserver, resource_tracker

    resource_tracker.ensure_running()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        forkserver.ensure_running()  # (a no-op while it runs)
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def ignore_stop_signals() -> None:
    """In a helper process: the daemon decides when it stops (it closes the pipe or says
    so), whoever else signals the process group."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

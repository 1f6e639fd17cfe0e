"""The demo's live view: one table refreshed in place in a real terminal (tmux), lines
when piped, and the numbers and warnings it shows."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from support import REPO

from stream_trainer.local.broker import free_port
from stream_trainer.local.view import LineView, LiveView, Summary, open_view, render

HEADER = re.compile(r"┃\s*pipeline\s*┃\s*events/s\s*┃")
ROW = re.compile(r"│ (clicks|recs|sensors|ticks)\s*│\s*([\d,]+)\s*│\s*([\d,]+)\s*│")


def samples(consumed: float, trained: float, rejected: float, reason: str = "duplicate"):
    """A scrape of one pipeline ``clicks`` (the sample names the daemon exports)."""

    def key(name: str, **labels: str):
        return (name, frozenset({"pipeline": "clicks", **labels}.items()))

    return {
        key("stream_trainer_events_consumed_total"): consumed,
        key("stream_trainer_events_trained_total"): trained,
        key("stream_trainer_events_rejected_total", reason=reason): rejected,
        key("stream_trainer_loss", window="batch"): 0.61,
        key("stream_trainer_loss", window="smoothed"): 0.6 - trained / 1e5,
        key("stream_trainer_drift_detected_total", detector="page_hinkley"): 1.0,
        key("stream_trainer_consumer_lag", topic="clicks", partition="0"): 40.0,
        key("stream_trainer_consumer_lag", topic="clicks", partition="1"): 2.0,
    }


def test_summary_rates_lag_trend_and_the_rejects_warning():
    summary = Summary(log_hint=".demo/logs/daemon.log")
    rows, warnings = summary.update(samples(1000, 1000, 0), now=10.0)
    assert rows[0].rate == 0.0 and warnings == []  # no interval yet
    rows, warnings = summary.update(samples(3000, 1020, 1980), now=12.0)
    (r,) = rows
    assert (r.name, r.rate, r.trained, r.rejected, r.lag) == ("clicks", 1000.0, 1020, 1980, 42)
    assert r.trend == pytest.approx([0.59, 0.5898])
    assert warnings == [
        "! clicks: 99% of the last events rejected (duplicate); see .demo/logs/daemon.log"
    ]


def test_live_table_keeps_the_warning_visible():
    summary = Summary(log_hint="d.log")
    summary.update(samples(0, 0, 0), now=0.0)
    rows, warnings = summary.update(samples(1000, 10, 990), now=2.0)
    out = io.StringIO()
    from rich.console import Console

    Console(file=out, width=120).print(render(rows, warnings))
    text = out.getvalue()
    assert len(HEADER.findall(text)) == 1 and ROW.search(text)
    assert "! clicks: 99% of the last events rejected (duplicate); see d.log" in text


def test_piped_output_is_lines():
    """Not a terminal: today's lines, no escape sequences (``make run | cat``)."""
    out: list[str] = []
    pipe = io.StringIO()  # isatty() is False
    view = open_view(out.append, pipe)
    assert isinstance(view, LineView)
    summary = Summary()
    view.waiting("waiting")
    view.show(*summary.update(samples(100, 100, 0), now=0.0))
    view.show(*summary.update(samples(300, 300, 0), now=2.0))
    assert out[0] == LineView.HEADER and out.count(LineView.HEADER) == 1
    assert out[1].split()[:3] == ["clicks", "0", "100"]
    assert out[2].split()[:3] == ["clicks", "100", "300"]
    assert pipe.getvalue() == "" and not any("\x1b" in line for line in out)


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (make tools installs it)")
def test_demo_in_a_terminal_refreshes_one_table_in_place(tmp_path):
    """`stream-trainer demo` in a real terminal (tmux, 120x30): one header in the
    whole scrollback while the numbers change between two captures."""
    session = f"st-view-{os.getpid()}-{free_port()}"
    metrics = f"127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "stream_trainer", "demo", "--duration", "40", "--rate",
            "200", "--workdir", str(tmp_path / "demo"), "--port", str(free_port()),
            "--metrics-address", metrics]  # fmt: skip
    done = tmp_path / "exit-code"
    # the shell records the demo's exit code, then keeps the pane open for the last capture
    shell = f"cd {REPO} && {' '.join(argv)}; echo $? > {done}; sleep 60"
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "30", shell],
        check=True,
        # the pane's own size: a COLUMNS/LINES inherited from the test runner would win
        env={
            **{k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")},
            "TERM": "xterm-256color",
        },  # fmt: skip
    )

    def capture(history: bool = False) -> str:
        extra = ["-S", "-"] if history else []
        return subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", session, *extra],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip

    def trained(text: str) -> dict[str, int]:
        return {m[1]: int(m[3].replace(",", "")) for m in ROW.finditer(text)}

    try:
        deadline = time.monotonic() + 90
        first: dict[str, int] = {}
        while time.monotonic() < deadline:  # until the daemon trains (a loaded machine: slow)
            first = trained(capture())
            if len(first) == 4 and sum(first.values()) > 0:
                break
            time.sleep(0.5)
        assert len(first) == 4 and sum(first.values()) > 0, capture(history=True)
        second = first
        while time.monotonic() < deadline:  # until a refresh shows more trained
            second = trained(capture())
            if sum(second.values()) > sum(first.values()):
                break
            time.sleep(0.5)
        assert set(second) == set(first)
        assert sum(second.values()) > sum(first.values()), (first, second)
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert done.read_text().strip() == "0", capture(history=True)
        everything = capture(history=True)  # the whole scrollback, after the demo stopped
        assert len(HEADER.findall(everything)) == 1, everything
        for name in ("clicks", "recs", "sensors", "ticks"):  # recs: the joined pipeline
            assert len(re.findall(rf"│ {name}\s*│", everything)) == 1, everything
        assert "stopped" in everything.splitlines()
        assert LineView.HEADER not in everything  # no lines in a terminal
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_live_view_on_a_terminal_stream_is_chosen(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("TERM", "xterm")
    view = open_view(print, Tty())
    assert isinstance(view, LiveView)
    view.close()
    monkeypatch.setenv("TERM", "dumb")
    assert isinstance(open_view(print, Tty()), LineView)

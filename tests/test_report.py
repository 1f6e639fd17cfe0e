from __future__ import annotations

import json

import pytest

from stream_trainer.cli import main
from stream_trainer.errors import StreamTrainerError
from stream_trainer.evaluation import report


def write_history(path, n=60):
    with open(path, "w") as fh:
        for i in range(n):
            for name in ("clicks", "ticks"):
                fh.write(
                    json.dumps(
                        {
                            "ts": 1000.0 + i,
                            "pipeline": name,
                            "loss_batch": 0.6 - i / 200,
                            "loss_smoothed": 0.6 - i / 300,
                            "drifts": 1 if i >= 30 and name == "clicks" else 0,
                        }
                    )
                    + "\n"
                )
        fh.write('{"ts": 2000, "pipel')  # a torn last line, as a running daemon leaves


def test_history_file_to_png(tmp_path, capsys):
    path = tmp_path / "h.jsonl"
    write_history(path)
    h = report.from_history(path)
    assert set(h) == {"clicks", "ticks"}
    assert h["clicks"].drifts == [1030.0] and h["ticks"].drifts == []
    assert len(h["clicks"].smoothed) == 60
    out = tmp_path / "loss.png"
    assert main(["report", "--history", str(path), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "2 pipelines, 1 drift detections" in capsys.readouterr().out


def test_report_errors_are_clear(tmp_path, capsys):
    with pytest.raises(StreamTrainerError, match="cannot read history file"):
        report.from_history(tmp_path / "nope.jsonl")
    assert main(["report"]) == 2
    assert "give either --prometheus URL or --history FILE" in capsys.readouterr().err
    assert main(["report", "--prometheus", "http://127.0.0.1:1"]) == 2
    assert "cannot query Prometheus at http://127.0.0.1:1" in capsys.readouterr().err

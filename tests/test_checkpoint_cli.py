"""``stream-trainer checkpoint inspect`` on files of every format version (the release
fixtures and one written now), and on what is not a checkpoint."""

from __future__ import annotations

import json
import math

from fixtures.checkpoints.regenerate import HERE, cases, train

from stream_trainer import __version__
from stream_trainer.checkpoint.versions import FORMAT_VERSION
from stream_trainer.cli import main


def test_inspect_a_release_file_says_what_it_holds(capsys):
    assert main(["checkpoint", "inspect", str(HERE / "e1fb2d7" / "clicks_joined" / "ckpt"),
                 "--json"]) == 0  # fmt: skip
    (line,) = capsys.readouterr().out.splitlines()
    s = json.loads(line)
    assert s["format_version"] == 2 and s["upgrade_needed"] and s["pipeline"] == "clicks-joined"
    assert s["offsets"] == {"events:0": 1200, "events:1": 1200, "labels:0": 712}
    assert s["model_version"] == 20 and s["events_trained"] == 1198
    assert s["tensors"]["user.weight"] == [512, 8] and s["labels_pending"] > 0
    assert s["parameters"] == sum(math.prod(shape) for shape in s["tensors"].values())


def test_inspect_a_root_lists_each_pipeline_and_today_s_format(tmp_path, capsys):
    train("ticks", cases()["ticks"], tmp_path / "ticks")
    train("sensors", cases()["sensors"], tmp_path / "sensors")
    (tmp_path / "root").mkdir()
    for k in ("ticks", "sensors"):
        (tmp_path / k / k).rename(tmp_path / "root" / k)
    assert main(["checkpoint", "inspect", str(tmp_path / "root")]) == 0
    out = capsys.readouterr().out
    assert out.count("\nformat ") == 2 and "upgrading" not in out
    assert f"format           {FORMAT_VERSION}\n" in out
    assert f"stream-trainer {__version__}" in out and "(kind sensors)" in out


def test_inspect_what_is_not_a_checkpoint_is_one_clear_error(tmp_path, capsys):
    junk = tmp_path / "ckpt-000000000001.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["checkpoint", "inspect", str(junk)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stream-trainer checkpoint: error:") and "not a readable" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["checkpoint", "inspect", str(tmp_path / "none")]) == 2

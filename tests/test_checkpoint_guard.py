"""The guard on the checkpoint format: what a checkpoint holds (keys, tensor names,
dtypes, the model's and optimizers' shapes) per kind is recorded under its format version
in ``tests/fixtures/checkpoints/structure.json``; a change to it fails here until the
version is bumped with a migration (``stream_trainer/checkpoint/versions.py``), the
structure recorded anew (``regenerate.py --structure``), and the release before it has
fixtures that ``tests/test_upgrade.py`` loads."""

from __future__ import annotations

import json

from fixtures.checkpoints.regenerate import HERE, RELEASES, structures

from stream_trainer.checkpoint.versions import FORMAT_VERSION, MIGRATIONS

HOW = (
    "what a checkpoint holds changed: bump FORMAT_VERSION and add a migration in "
    "stream_trainer/checkpoint/versions.py, record the structure (python "
    "tests/fixtures/checkpoints/regenerate.py --structure), and write fixtures of the "
    "last release before the change (regenerate.py <commit>; RELEASES there)"
)


def differences(recorded: dict[str, str], now: dict[str, str]) -> list[str]:
    return [
        f"{k}: {recorded.get(k, '(absent)')} -> {now.get(k, '(absent)')}"
        for k in sorted(recorded.keys() | now.keys())
        if recorded.get(k) != now.get(k)
    ]


def test_the_checkpoint_structure_is_the_recorded_one_of_this_format_version(tmp_path):
    recorded = json.loads((HERE / "structure.json").read_text())
    assert str(FORMAT_VERSION) in recorded, f"format {FORMAT_VERSION} is not recorded: {HOW}"
    now = structures(tmp_path)
    want = recorded[str(FORMAT_VERSION)]
    assert now.keys() == want.keys()
    diff = {case: differences(want[case], now[case]) for case in now}
    assert not any(diff.values()), f"{HOW}:\n" + "\n".join(
        f"  {case}: {line}" for case, lines in diff.items() for line in lines
    )


def test_every_older_format_has_a_migration_and_a_release_fixture():
    assert sorted(MIGRATIONS) == list(range(1, FORMAT_VERSION))
    assert set(RELEASES.values()) == set(range(1, FORMAT_VERSION)), HOW
    for commit in RELEASES:
        assert (HERE / commit).is_dir(), commit

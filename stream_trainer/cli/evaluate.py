"""``stream-trainer evaluate``: one study (``--study``, default ``compare``) printed as a
markdown table, or as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from stream_trainer.errors import StreamTrainerError

Say = Callable[[str], None] | None
Render = Callable[[dict[str, Any]], str]


def cmd_evaluate(a: argparse.Namespace) -> int:
    """Run the chosen study and print its report."""
    study = STUDIES.get(a.study)
    if study is None:
        raise StreamTrainerError(f"--study must be one of {', '.join(STUDIES)}, not {a.study!r}")
    say = (lambda msg: print(f"evaluate: {msg}", file=sys.stderr)) if not a.quiet else None
    report, render = study(a, say)
    print(json.dumps(report, indent=1) if a.json else render(report))
    return 0


def _drift_suite(a: argparse.Namespace, say: Say) -> tuple[dict[str, Any], Render]:
    from stream_trainer.evaluation import drift_suite
    from stream_trainer.evaluation.drift_suite import drift_suite_markdown

    n = a.events or 400_000
    suite = drift_suite.run(
        n,
        {"clicks": n * 5 // 2, "ticks": n * 3 // 4, "sensors": n * 3 // 4},
        seed=a.seed,
        progress=say,
    )
    return suite, drift_suite_markdown


def _replay(a: argparse.Namespace, say: Say) -> tuple[dict[str, Any], Render]:
    from stream_trainer.evaluation.reporting import replay_markdown
    from stream_trainer.evaluation.streams import recurring_clicks
    from stream_trainer.evaluation.studies import replay_study

    _need_kind(a)
    if a.kind != "clicks" or a.input:
        raise StreamTrainerError("--study replay uses its own click stream (--kind clicks)")
    stream = recurring_clicks(a.events or 300_000, seed=a.seed)
    return replay_study(stream, config=a.config, progress=say), replay_markdown


def _adaptation(a: argparse.Namespace, say: Say) -> tuple[dict[str, Any], Render]:
    from stream_trainer.evaluation.reporting import adaptation_markdown
    from stream_trainer.evaluation.studies import adaptation

    return adaptation(_stream(a), config=a.config, progress=say), adaptation_markdown


def _compare(a: argparse.Namespace, say: Say) -> tuple[dict[str, Any], Render]:
    from stream_trainer.evaluation.compare import compare
    from stream_trainer.evaluation.reporting import markdown

    _kind_from_config(a)
    if a.kind == "tabular":
        from stream_trainer.evaluation import tabular

        if not a.input:
            raise StreamTrainerError("evaluate --kind tabular needs --input FILE (JSON lines)")
        stream = _stream(a)
        report = tabular.compare_tabular(
            stream, config=a.config, trees=not a.no_trees, progress=say
        )
        return report, tabular.markdown
    report = compare(
        _stream(a), config=a.config, vw=not a.no_vw, trees=not a.no_trees, progress=say
    )
    return report, markdown


def _delayed_labels(a: argparse.Namespace, say: Say) -> tuple[dict[str, Any], Render]:
    from stream_trainer.evaluation import delayed, streams

    if a.kind not in (None, "clicks") or a.scenario:
        raise StreamTrainerError("--study delayed-labels runs on clicks (--kind clicks)")
    if a.input:
        stream = streams.from_file("clicks", a.input, limit=a.events)
    else:  # no drift unless asked for: the delay's own cost
        stream = streams.generated("clicks", a.events or 100_000, seed=a.seed, drift_at=a.drift_at)
    report = delayed.study(stream, config=a.config, seed=a.seed, progress=say)
    return report, delayed.markdown


def _kind_from_config(a: argparse.Namespace) -> None:
    """No ``--kind``: the kind of the first pipeline of ``--config`` (the stream is its)."""
    if a.kind is None and a.config and not getattr(a, "scenario", None):
        from stream_trainer.config import load_settings

        a.kind = load_settings(a.config).pipelines[0].kind


def _need_kind(a: argparse.Namespace) -> None:
    if a.kind is None:
        raise StreamTrainerError(
            "evaluate needs --kind clicks|ticks|sensors (or --study drift-suite)"
        )


def _stream(a: argparse.Namespace) -> Any:
    """The stream of ``--kind``: ``--input``'s events, or generated ones (drift midway)."""
    from stream_trainer.evaluation import streams

    scenario = getattr(a, "scenario", None)
    if scenario is not None:
        skind = streams.SCENARIOS[scenario][0]
        if a.kind not in (None, skind) or a.input:
            raise StreamTrainerError(f"--scenario {scenario} is a {skind} stream (no --input)")
        a.kind = skind
    _need_kind(a)
    if a.input:
        stream = streams.from_file(a.kind, a.input, limit=a.events)
    else:
        midway = (a.events or 0) // 2 or None
        # a scenario is its own test: no drift unless asked for
        drift_at = a.drift_at if a.drift_at is not None else (None if scenario else midway)
        stream = streams.generated(
            a.kind, a.events or 100_000, seed=a.seed, drift_at=drift_at, scenario=scenario
        )
    if not stream.raw:
        raise StreamTrainerError(f"no events in {stream.source}")
    return stream


STUDIES: dict[str, Callable[[argparse.Namespace, Say], tuple[dict[str, Any], Render]]] = {
    "compare": _compare,
    "adaptation": _adaptation,
    "replay": _replay,
    "drift-suite": _drift_suite,
    "delayed-labels": _delayed_labels,
}

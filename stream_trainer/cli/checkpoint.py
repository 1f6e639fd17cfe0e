"""``stream-trainer checkpoint inspect``: what a checkpoint holds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_checkpoint(a: argparse.Namespace) -> int:
    from stream_trainer.checkpoint.summary import find, render, summarize

    summaries = [summarize(f) for f in find(Path(a.path))]
    if a.json:
        for s in summaries:
            print(json.dumps(s))
    else:
        print("\n\n".join(render(s) for s in summaries))
    return 0

"""The data-flow diagram of one pipeline (docs/img/dataflow.png), drawn with matplotlib.

    .venv/bin/python scripts/dataflow_png.py [--out docs/img/dataflow.png]

The boxes are the stages of docs/concepts/architecture.md, left to right as an event
travels; the module that does each is under its name.
"""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# (x, y, width, height, title, body, colour): the canvas is 100 x 60
BOXES = {
    "kafka": (
        1,
        24,
        13,
        14,
        "Kafka topic(s)",
        "partitioned;\nlabels topic\n(delayed labels)",
        "#e8eef7",
    ),
    "ingest": (
        18,
        21,
        19,
        20,
        "ingest workers",
        "fetch, decode +\nvalidate a poll,\nduplicate digests,\n"
        "stateless featurize\nedges/ingest*.py",
        "#e8f4ea",
    ),
    "dlq": (18, 2, 19, 10, "<topic>.dlq", "refused events +\nreason header", "#fbe9e7"),
    "trainer": (
        42,
        19,
        22,
        24,
        "trainer",
        "adaptive micro-batch\n→ featurize (per-key)\n"
        "→ ONE forward: loss +\n   prediction per event\n→ backward + step\n"
        "pipeline/core.py",
        "#fff4e0",
    ),
    "after": (
        42,
        2,
        22,
        12,
        "after the update",
        "mixture, drift monitor\n→ policy (challenger…)\npipeline/after.py",
        "#fff4e0",
    ),
    "sinks": (
        69,
        44,
        14,
        13,
        "sinks + metrics",
        "outputs topic,\n/metrics\n(Prometheus)",
        "#f0e8f7",
    ),
    "serve": (69, 24, 14, 14, "serving", "shared-memory\nslots → POST\n/predict", "#f0e8f7"),
    "ckpt": (
        69,
        2,
        14,
        16,
        "checkpoint",
        "model, optimizer,\nfeaturizer, drift,\nnext offsets:\natomic write",
        "#e8eef7",
    ),
    "commit": (87, 4, 12, 12, "commit", "offsets, once\nthe file is\ndurable", "#e8eef7"),
}
ARROWS = [
    ("kafka", "ingest", "poll"),
    ("ingest", "dlq", "rejected"),
    ("ingest", "trainer", "columns /\nexamples\n(shared memory)"),
    ("trainer", "after", ""),
    ("trainer", "sinks", ""),
    ("trainer", "serve", "weights every\npublish_every_s"),
    ("trainer", "ckpt", "every N s,\nno batch in flight"),
    ("ckpt", "commit", "then"),
    ("commit", "kafka", ""),
]


def _anchor(box: tuple, toward: tuple) -> tuple[float, float]:
    """The point on ``box``'s edge facing the centre of ``toward``."""
    x, y, w, h = box[:4]
    cx, cy = x + w / 2, y + h / 2
    tx, ty = toward[0] + toward[2] / 2, toward[1] + toward[3] / 2
    dx, dy = tx - cx, ty - cy
    scale = min(w / 2 / abs(dx) if dx else 1e9, h / 2 / abs(dy) if dy else 1e9)
    return cx + dx * scale, cy + dy * scale


def draw(out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig, ax = plt.subplots(figsize=(12, 6.6), dpi=80)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 60)
    ax.axis("off")
    for x, y, w, h, title, body, colour in BOXES.values():
        ax.add_patch(
            FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.3", fc=colour, ec="#555", lw=1)
        )
        ax.text(x + w / 2, y + h - 1.6, title, ha="center", va="top", fontsize=10, weight="bold")
        ax.text(x + w / 2, y + h - 4.6, body, ha="center", va="top", fontsize=8, family="monospace")
    for a, b, label in ARROWS:
        if (a, b) == ("commit", "kafka"):  # around the bottom: the commit goes to the broker
            path = [(93, 16.3), (93, 58), (7.5, 58), (7.5, 38.3)]
            ax.plot(*zip(*path[:-1], strict=True), color="#555", lw=1)
            ax.annotate(
                "", xy=path[-1], xytext=path[-2], arrowprops={"arrowstyle": "-|>", "color": "#555"}
            )
            ax.text(50, 58.6, "committed offsets (consumer group)", ha="center", fontsize=8)
            continue
        start, end = _anchor(BOXES[a], BOXES[b]), _anchor(BOXES[b], BOXES[a])
        ax.add_patch(
            FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color="#555", lw=1)
        )
        if label:
            ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.8, label, ha="center",
                    va="bottom", fontsize=7, color="#333")  # fmt: skip
    ax.set_title("stream-trainer: the data flow of one pipeline", fontsize=12)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "dataflow.png")
    print(f"wrote {draw(ap.parse_args().out)}")


if __name__ == "__main__":
    main()

"""Read a /metrics page back: for the demo's live summary, the soak script and the tests."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, timeout: float = 5.0) -> Samples:
    """Fetch a Prometheus text page into {(sample name, labels): value}."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample with exactly these labels, or None."""
    return samples.get((name, frozenset(labels.items())))


def per_pipeline(samples: Samples, name: str, **match: str) -> dict[str, float]:
    """{pipeline: summed value} of one sample name, filtered by extra labels."""
    out: dict[str, float] = {}
    for (n, labels), v in samples.items():
        lab = dict(labels)
        if n == name and "pipeline" in lab and all(lab.get(k) == x for k, x in match.items()):
            out[lab["pipeline"]] = out.get(lab["pipeline"], 0.0) + v
    return out

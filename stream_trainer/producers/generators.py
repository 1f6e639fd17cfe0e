"""Seeded generators of JSON-ready events. Pure: no Kafka here.

Each generator's hidden truth changes at every drift point (``drift_at`` and every
``drift_every`` events), which is what the drift detectors should find.

>>> g = make_generator("ticks", seed=1)
>>> ev = next(g); sorted(ev)
['price', 'symbol', 'ts', 'volume']
>>> [e["label"] for e in make_generator("clicks", seed=3, count=5)] == \\
...     [e["label"] for e in make_generator("clicks", seed=3, count=5)]
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from stream_trainer import domains

START_TS = 1_767_225_600.0  # 2026-01-01T00:00:00Z: streams are reproducible, not wall-clock


def _drift_points(drift_at: int | None, drift_every: int | None) -> Callable[[int], bool]:
    def is_drift(i: int) -> bool:
        if i == 0:
            return False
        if drift_at is not None and i == drift_at:
            return True
        return bool(drift_every and i % drift_every == 0)

    return is_drift


def _event_rng(truth: np.random.Generator, seed: int, stream: int) -> np.random.Generator:
    """Where a stream's per-event draws come from. Stream 0 shares the truth's generator
    (the reproducible stream of ``seed``); stream k > 0 draws other events from the same
    hidden truth (a second run of the demo continues the learned model on fresh events)."""
    return truth if stream == 0 else np.random.default_rng((seed, stream))


def _zipf_cdf(n: int, s: float) -> np.ndarray:
    """Cumulative popularity: rank k drawn with probability proportional to 1/k^s."""
    w = np.cumsum(1.0 / np.arange(1, n + 1) ** s)
    return w / w[-1]


def clicks(
    seed: int = 0,
    count: int | None = None,
    drift_at: int | None = None,
    drift_every: int | None = None,
    stream: int = 0,
    n_users: int = 2000,
    n_items: int = 500,
    dim: int = 8,
    recurring: bool = False,
    base: float = -1.2,
) -> Iterator[dict[str, Any]]:
    """Click-through on (user, item, context): latent factors, popularity skew.

    p(click) = sigmoid(base + item_bias + device effect + hour effect + u.v) (``base``
    -1.2: a click rate of ~35%; -7.0: ~0.3%, as real click-through rates are). At a
    drift the item factors and biases are redrawn: tastes and popularity change. With
    ``recurring``, drifts alternate between two concepts instead (A, B, A, ...): what
    a replay buffer should help a model remember.
    """
    rng = np.random.default_rng(seed)
    ev = _event_rng(rng, seed, stream)
    users = rng.normal(0, 0.6, (n_users, dim))
    devices = ["mobile", "desktop", "tablet"]
    device_eff = np.array([0.4, -0.3, 0.0])
    hour_eff = 0.5 * np.sin(np.arange(24) / 24 * 2 * math.pi)
    user_cdf = _zipf_cdf(n_users, 0.8)
    item_cdf = _zipf_cdf(n_items, 1.1)

    def redraw() -> tuple[np.ndarray, np.ndarray]:
        return rng.normal(0, 0.6, (n_items, dim)), rng.normal(0, 1.0, n_items)

    items, item_bias = redraw()
    concepts = [(items, item_bias)]
    is_drift = _drift_points(drift_at, drift_every)
    i = 0
    while count is None or i < count:
        if is_drift(i):
            if not recurring:
                items, item_bias = redraw()
            else:
                if len(concepts) == 1:
                    concepts.append(redraw())
                concepts.reverse()
                items, item_bias = concepts[0]
        u = int(np.searchsorted(user_cdf, ev.random()))
        it = int(np.searchsorted(item_cdf, ev.random()))
        d = int(ev.integers(3))
        ts = START_TS + i * 0.05
        hour = int(ts // 3600) % 24
        logit = base + item_bias[it] + device_eff[d] + hour_eff[hour] + users[u] @ items[it]
        label = int(ev.random() < 1 / (1 + math.exp(-logit)))
        yield {
            "ts": round(ts, 3),
            "user_id": f"u{u}",
            "item_id": f"i{it}",
            "context": {"device": devices[d], "hour": hour},
            "label": label,
        }
        i += 1


def ticks(
    seed: int = 0,
    count: int | None = None,
    drift_at: int | None = None,
    drift_every: int | None = None,
    stream: int = 0,
    n_symbols: int = 8,
    signal: float = 1.0,
) -> Iterator[dict[str, Any]]:
    """Ticks of several symbols with autocorrelated returns and volatility regimes.

    r_t = phi_s * r_{t-1} + sigma_s * eps (per symbol). Regimes switch volatility at
    random; a drift flips every symbol between momentum and mean reversion (phi's
    sign, with a new magnitude), so yesterday's forecast now points the wrong way.
    ``signal`` scales phi: 0 gives random walks (nothing to forecast but zero).
    """
    rng = np.random.default_rng(seed)
    ev = _event_rng(rng, seed, stream)
    names = [f"SYM{k}" for k in range(n_symbols)]
    price = rng.uniform(20, 500, n_symbols)
    last_r = np.zeros(n_symbols)
    base_vol = rng.uniform(0.0005, 0.002, n_symbols)
    vol_mult = np.ones(n_symbols)

    phi = signal * rng.choice([-1, 1], n_symbols) * rng.uniform(0.35, 0.7, n_symbols)
    is_drift = _drift_points(drift_at, drift_every)
    i = 0
    while count is None or i < count:
        if is_drift(i):
            phi = -np.sign(phi) * signal * rng.uniform(0.35, 0.7, n_symbols)
        s = i % n_symbols if ev.random() < 0.5 else int(ev.integers(n_symbols))
        if ev.random() < 0.001:  # volatility regime switch
            vol_mult[s] = ev.choice([0.5, 1.0, 2.0])
        r = phi[s] * last_r[s] + base_vol[s] * vol_mult[s] * ev.normal()
        last_r[s] = r
        price[s] *= math.exp(r)
        yield {
            "ts": round(START_TS + i * 0.01, 3),
            "symbol": names[s],
            "price": round(float(price[s]), 6),
            "volume": round(float(ev.lognormal(4, 1)), 2),
        }
        i += 1


def sensors(
    seed: int = 0,
    count: int | None = None,
    drift_at: int | None = None,
    drift_every: int | None = None,
    stream: int = 0,
    n_sensors: int = 20,
    anomaly_rate: float = 0.002,
    level_shift_rate: float = 0.0,
) -> Iterator[dict[str, Any]]:
    """Correlated temp/humidity/pressure with a daily cycle, noise and rare spikes.

    Each sensor reads every 10 simulated minutes (144 readings a day). Humidity
    falls as temperature rises; pressure wanders slowly. A drift shifts every
    sensor's level and daily amplitude and toggles the measurement noise between
    normal and degraded (2.5x): a season change plus ageing hardware. With
    ``level_shift_rate``, each reading moves its sensor's temperature level and
    pressure for good with that probability (a relocated or recalibrated sensor),
    drawn from a generator of their own (the other draws stay those of the seed).
    """
    rng = np.random.default_rng(seed)
    ev = _event_rng(rng, seed, stream)
    shifts = np.random.default_rng((seed, stream, 7)) if level_shift_rate > 0 else None
    ids = [f"s{k:03d}" for k in range(n_sensors)]
    level = rng.normal(20, 4, n_sensors)
    amp = rng.uniform(3, 6, n_sensors)
    phase = rng.uniform(0, 2 * math.pi, n_sensors)
    pressure = rng.normal(1013, 5, n_sensors)
    steps = np.zeros(n_sensors, dtype=np.int64)
    noise = 1.0
    is_drift = _drift_points(drift_at, drift_every)
    i = 0
    while count is None or i < count:
        if is_drift(i):
            level = level + rng.normal(0, 5, n_sensors)
            amp = rng.uniform(2, 8, n_sensors)
            noise = 2.5 if noise == 1.0 else 1.0
        s = i % n_sensors
        if shifts is not None and shifts.random() < level_shift_rate:
            level[s] += shifts.choice([-1, 1]) * shifts.uniform(4, 10)
            pressure[s] += shifts.normal(0, 8)
        t = steps[s]
        steps[s] += 1
        cycle = math.sin(2 * math.pi * t / 144 + phase[s])
        temp = level[s] + amp[s] * cycle + ev.normal(0, 0.8 * noise)
        humidity = 60 - 2.0 * (temp - level[s]) + ev.normal(0, 1.5 * noise)
        pressure[s] += ev.normal(0, 0.2) - 0.01 * (pressure[s] - 1013)
        p_read = pressure[s] + ev.normal(0, 0.5 * noise)
        if ev.random() < anomaly_rate:
            temp += ev.choice([-1, 1]) * ev.uniform(8, 15)
        yield {
            "ts": round(START_TS + (int(t) * n_sensors + s) * 600.0 / n_sensors, 3),
            "sensor_id": ids[s],
            "values": {
                "temp": round(temp, 3),
                "humidity": round(humidity, 3),
                "pressure": round(p_read, 3),
            },
        }
        i += 1


# the built-in domains' streams and message keys (stream_trainer.domains names them)
_BUILTIN = [domains.get(k) for k in domains.KINDS]
GENERATORS: dict[str, Callable[..., Iterator[dict[str, Any]]]] = {
    d.name: d.generator for d in _BUILTIN if d.generator is not None
}


def make_generator(kind: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    return GENERATORS[kind](**kwargs)


KEY_FIELD: dict[str, str] = {d.name: d.key_field for d in _BUILTIN if d.key_field is not None}

from __future__ import annotations

import math

import numpy as np
import pytest

from stream_trainer.learner.quality import Quality, auc


def test_auc_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(300), 2)  # ties included
    labels = (rng.random(300) < 0.3).astype(float)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert auc(scores, labels) == pytest.approx(pairs / (pos.size * neg.size))
    assert math.isnan(auc(scores, np.zeros(300)))


def test_binary_quality_over_a_sliding_window():
    q = Quality("binary", window=100)
    q.update(np.full(100, 0.9), np.zeros(100), np.full(100, 2.3))  # confidently wrong
    q.update(np.full(50, 0.2), np.zeros(50), np.full(50, 0.22))
    v = q.values()
    assert len(q) == 100  # only the last 100 examples count
    assert v["log_loss"] == pytest.approx((50 * 2.3 + 50 * 0.22) / 100)
    assert v["mean_predicted"] == pytest.approx(0.55) and v["observed_rate"] == 0.0
    assert v["calibration_gap"] == pytest.approx(0.55)


def test_forecast_quality_has_direction_and_raw_errors():
    q = Quality("direction")
    q.update(np.array([0.01, -0.02, 0.03]), np.array([0.02, 0.01, 0.01]), np.zeros(3))
    v = q.values()
    assert v["directional_accuracy"] == pytest.approx(2 / 3)
    assert v["mae"] == pytest.approx((0.01 + 0.03 + 0.02) / 3)
    assert v["mse"] == pytest.approx((1e-4 + 9e-4 + 4e-4) / 3)


def test_regression_quality_counts_anomalies():
    q = Quality("regression")
    pred, target = np.zeros((4, 3)), np.ones((4, 3))
    q.update(pred, target, np.full(4, 0.5), anomalies=np.array([1, 0, 0, 1]))
    v = q.values()
    assert v == {"mse": 1.0, "normalized_mse": 0.5, "anomaly_rate": 0.5}


def test_no_examples_no_values():
    assert Quality("binary").values() == {}
    with pytest.raises(ValueError):
        Quality("ranking")

from __future__ import annotations

import numpy as np
import pytest

from spac_ort.errors import ConfigError
from spac_ort.runtime.sampling import SamplingConfig, probabilities, select


def test_greedy_is_argmax():
    logits = np.array([0.1, 3.0, -2.0, 2.9], dtype=np.float32)
    assert select(logits, SamplingConfig(), np.random.default_rng(0)) == 1


def test_temperature_softmax():
    logits = np.log(np.array([0.1, 0.2, 0.7]))
    p = probabilities(logits, SamplingConfig(temperature=1.0))
    assert np.allclose(p, [0.1, 0.2, 0.7])
    sharp = probabilities(logits, SamplingConfig(temperature=0.5))
    assert np.allclose(sharp, np.array([0.01, 0.04, 0.49]) / 0.54)


def test_top_k_and_top_p_filters():
    logits = np.log(np.array([0.05, 0.15, 0.3, 0.5]))
    assert np.allclose(probabilities(logits, SamplingConfig(temperature=1.0, top_k=2)), [0, 0, 0.375, 0.625])
    # top-p 0.75: 0.5 + 0.3 reaches it, 0.15 is not needed
    assert np.allclose(probabilities(logits, SamplingConfig(temperature=1.0, top_p=0.75)), [0, 0, 0.375, 0.625])
    assert np.allclose(probabilities(logits, SamplingConfig(temperature=1.0, top_p=0.5)), [0, 0, 0, 1])


def test_sampling_frequencies_follow_distribution():
    logits = np.log(np.array([0.2, 0.3, 0.5]))
    rng = np.random.default_rng(1)
    cfg = SamplingConfig(temperature=1.0)
    draws = np.bincount([select(logits, cfg, rng) for _ in range(20000)], minlength=3) / 20000
    assert np.abs(draws - [0.2, 0.3, 0.5]).max() < 0.015


@pytest.mark.parametrize("kwargs", [dict(temperature=-0.1), dict(top_p=1.5), dict(top_p=0.0), dict(top_k=-1)])
def test_invalid_config(kwargs):
    with pytest.raises(ConfigError):
        SamplingConfig(**kwargs)

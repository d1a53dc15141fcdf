"""IndicatorSpec validation and tokens, and the plan's deduplication."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from admf_dask.errors import ConfigError, DataError
from admf_dask.indicators import INDICATORS, IndicatorPlan, IndicatorSpec
from admf_dask.kernels import indicators as kernels


def sma_cross_grid():
    return [(f, s) for f in range(5, 55, 5) for s in range(20, 220, 10) if f < s]


def test_sma_cross_grid_dedupes_to_26():
    grid = sma_cross_grid()
    assert len(grid) == 184
    plan = IndicatorPlan.from_requests(
        IndicatorSpec.make("sma", window=w) for fast, slow in grid for w in (fast, slow)
    )
    assert plan.requested == 368
    assert plan.unique == 26 == len(plan.specs) == len(set(plan.tokens))
    assert [dict(s.params)["window"] for s in plan.specs][:4] == [5, 20, 30, 40]  # first-seen order
    assert plan.required_columns == ("close",)
    assert plan.max_lookback == 209


def test_plan_compute_returns_each_unique_spec_once():
    rng = np.random.default_rng(1)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 500)))
    cols = {"close": close, "high": close * 1.01, "low": close * 0.99, "volume": np.ones(500)}
    specs = [
        IndicatorSpec.make("sma", window=20),
        IndicatorSpec.make("bollinger", window=20, k=2),
        IndicatorSpec.make("sma", window=20),
        IndicatorSpec.make("atr"),
    ]
    plan = IndicatorPlan.from_requests(specs)
    assert (plan.requested, plan.unique) == (4, 3)
    assert plan.required_columns == ("close", "high", "low")
    out = plan.compute(cols)
    assert list(out) == list(plan.tokens)
    np.testing.assert_array_equal(out[specs[0].token]["value"], kernels.sma(close, 20))
    assert list(out[specs[1].token]) == ["middle", "upper", "lower"]
    np.testing.assert_array_equal(out[specs[3].token]["value"], kernels.atr(close * 1.01, close * 0.99, close, 14))


def test_empty_plan():
    plan = IndicatorPlan.from_requests([])
    assert (plan.requested, plan.unique, plan.max_lookback, plan.required_columns) == (0, 0, 0, ())
    assert plan.compute({}) == {}


@pytest.mark.parametrize("name", sorted(INDICATORS))
def test_every_indicator_computes_with_its_lookback_and_outputs(name):
    rng = np.random.default_rng(2)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 300)))
    cols = {"close": close, "high": close * 1.01, "low": close * 0.99, "volume": rng.integers(1, 100, 300) * 1.0}
    required = {p.name: 10 for p in INDICATORS[name].params if p.default is None}
    spec = IndicatorSpec.make(name, **required)
    out = spec.compute(cols)
    assert tuple(out) == spec.outputs
    for arr in out.values():
        first_valid = int(np.argmax(np.isfinite(arr)))
        assert first_valid <= spec.lookback
    # the output that warms up last starts exactly at the lookback
    assert max(int(np.argmax(np.isfinite(a))) for a in out.values()) == spec.lookback


def test_token_is_stable_across_processes():
    spec = IndicatorSpec.make("bollinger", window=20, k=2.5)
    code = (
        "from admf_dask.indicators import IndicatorSpec;"
        "print(IndicatorSpec.make('bollinger', k=2.5, window=20).token)"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123"},
        cwd=Path(__file__).resolve().parents[1],
    )
    assert other.stdout.strip() == spec.token
    assert len(spec.token) == 16 and int(spec.token, 16) >= 0


def test_token_depends_on_params_not_their_order_or_spelling():
    a = IndicatorSpec.make("macd", fast=12, slow=26, signal=9)
    assert a.token == IndicatorSpec.make("macd", signal=9, slow=26, fast=12).token
    assert a.token == IndicatorSpec.make("macd").token  # defaults filled in
    assert a.token == IndicatorSpec.make("macd", fast=12.0, slow=np.int64(26)).token
    assert a.token != IndicatorSpec.make("macd", fast=12, slow=27).token
    assert IndicatorSpec.make("sma", window=20).token != IndicatorSpec.make("ema", span=20).token
    assert IndicatorSpec.make("bollinger", window=20, k=2).token == IndicatorSpec.make("bollinger", window=20).token
    assert IndicatorSpec.make("bollinger", window=20, k=2).token != IndicatorSpec.make("bollinger", window=20, k=2.1).token


def test_spec_is_frozen_hashable_and_picklable():
    spec = IndicatorSpec.make("stochastic", k_window=5)
    assert spec.params == (("d_window", 3), ("k_window", 5))
    assert spec.label == "stochastic(d_window=3, k_window=5)"
    with pytest.raises(AttributeError):
        spec.name = "sma"
    assert {spec: 1}[IndicatorSpec.make("stochastic", k_window=5)] == 1
    again = pickle.loads(pickle.dumps(spec))
    assert again == spec and again.token == spec.token


def test_unknown_indicator_has_did_you_mean():
    with pytest.raises(ConfigError, match=r"unknown indicator 'smaa'.*did you mean 'sma'") as err:
        IndicatorSpec.make("smaa", window=3)
    assert err.value.where == {"key": "indicator"}
    with pytest.raises(ConfigError, match="choose one of"):
        IndicatorSpec.make("zzzzzz")


def test_unknown_parameter_has_did_you_mean():
    with pytest.raises(ConfigError, match=r"unknown parameter 'windw'.*did you mean 'window'") as err:
        IndicatorSpec.make("sma", windw=3)
    assert err.value.where == {"key": "sma.windw"}
    with pytest.raises(ConfigError, match="takes no parameters"):
        IndicatorSpec.make("obv", window=3)


@pytest.mark.parametrize(
    ("name", "params", "key"),
    [
        ("sma", {}, "sma.window"),
        ("sma", {"window": 0}, "sma.window"),
        ("sma", {"window": 2.5}, "sma.window"),
        ("sma", {"window": True}, "sma.window"),
        ("sma", {"window": "20"}, "sma.window"),
        ("ema", {"span": -1}, "ema.span"),
        ("bollinger", {"window": 20, "k": -1}, "bollinger.k"),
        ("bollinger", {"window": 20, "k": float("nan")}, "bollinger.k"),
        ("macd", {"fast": 30, "slow": 26}, "macd.fast"),
        ("stochastic", {"d_window": 0}, "stochastic.d_window"),
    ],
)
def test_invalid_parameters_name_the_key(name, params, key):
    with pytest.raises(ConfigError) as err:
        IndicatorSpec.make(name, **params)
    assert err.value.where["key"] == key
    assert key in str(err.value)


def test_plan_rejects_non_specs_and_missing_columns():
    with pytest.raises(ConfigError, match="IndicatorSpec"):
        IndicatorPlan.from_requests([("sma", 20)])
    with pytest.raises(DataError, match="high"):
        IndicatorSpec.make("atr").compute({"close": np.ones(5)})

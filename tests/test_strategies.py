"""The strategy registry: parameters, rules, indicator declarations, user strategies by path."""
from __future__ import annotations

import sys
import textwrap

import pytest

from admf_dask.errors import ConfigError, DataError
from admf_dask.indicators import IndicatorPlan
from admf_dask.strategies import STRATEGIES, direction_code, get_strategy, prepare_batch

BUILTINS = {"sma_cross", "ema_cross", "macd_cross", "rsi_reversion", "bollinger_reversion",
            "bollinger_breakout", "donchian_breakout", "momentum"}


def test_registry_has_every_builtin_with_valid_defaults():
    assert set(STRATEGIES) == BUILTINS
    for name, s in STRATEGIES.items():
        params = s.validate({})
        assert params == s.defaults and set(params) == set(s.param_names)
        assert s.builtin and s.specs(params), name


def test_types_are_converted_and_defaults_filled():
    s = get_strategy("rsi_reversion")
    assert s.validate({"window": 10.0, "lower": 25}) == {"window": 10, "lower": 25.0, "upper": 70.0}
    assert isinstance(s.validate({"window": 10.0})["window"], int)


@pytest.mark.parametrize(
    "name, params, message, key",
    [
        ("sma_cross", {"fast": 50, "slow": 20}, "sma_cross: fast=50 must be < slow=20", "sma_cross.fast"),
        ("sma_cross", {"fast": 20, "slow": 20}, "sma_cross: fast=20 must be < slow=20", "sma_cross.fast"),
        ("ema_cross", {"fast": 0, "slow": 20}, "ema_cross: fast=0 must be >= 1", "ema_cross.fast"),
        ("macd_cross", {"fast": 30}, "macd_cross: fast=30 must be < slow=26", "macd_cross.fast"),
        ("macd_cross", {"signal": 0}, "macd_cross: signal=0 must be >= 1", "macd_cross.signal"),
        ("donchian_breakout", {"window": 0}, "donchian_breakout: window=0 must be >= 1",
         "donchian_breakout.window"),
        ("momentum", {"window": -3}, "momentum: window=-3 must be >= 1", "momentum.window"),
        ("bollinger_reversion", {"window": 1}, "bollinger_reversion: window=1 must be >= 2",
         "bollinger_reversion.window"),
        ("bollinger_breakout", {"k": 0}, "bollinger_breakout: k=0.0 must be > 0", "bollinger_breakout.k"),
        ("rsi_reversion", {"lower": 0}, "rsi_reversion: lower=0.0 must be > 0", "rsi_reversion.lower"),
        ("rsi_reversion", {"upper": 100}, "rsi_reversion: upper=100.0 must be < 100", "rsi_reversion.upper"),
        ("rsi_reversion", {"lower": 70, "upper": 30}, "rsi_reversion: lower=70.0 must be < upper=30.0",
         "rsi_reversion.lower"),
        ("rsi_reversion", {"window": 0}, "rsi_reversion: window=0 must be >= 1", "rsi_reversion.window"),
        ("sma_cross", {"fast": 2.5}, "sma_cross: fast must be a whole number of bars", "sma_cross.fast"),
        ("sma_cross", {"fast": "10"}, "sma_cross: fast must be a number", "sma_cross.fast"),
        ("sma_cross", {"fast": True}, "sma_cross: fast must be a number", "sma_cross.fast"),
        ("bollinger_breakout", {"k": float("nan")}, "bollinger_breakout: k must be finite",
         "bollinger_breakout.k"),
    ],
)
def test_parameter_rules_name_the_parameter_and_the_rule(name, params, message, key):
    with pytest.raises(ConfigError) as err:
        get_strategy(name).validate(params)
    assert str(err.value).startswith(message)
    assert err.value.where["key"] == key


def test_rule_is_recorded():
    with pytest.raises(ConfigError) as err:
        get_strategy("sma_cross").validate({"fast": 50, "slow": 20})
    assert err.value.where["rule"] == "fast < slow"


def test_unknown_parameter_suggests_the_close_one():
    with pytest.raises(ConfigError, match="unknown parameter 'fsat'") as err:
        get_strategy("sma_cross").validate({"fsat": 5})
    assert "did you mean 'fast'?" in str(err.value)


def test_unknown_strategy_suggests_the_close_one():
    with pytest.raises(ConfigError, match="unknown strategy 'sma_crossover'") as err:
        get_strategy("sma_crossover")
    assert "did you mean 'sma_cross'?" in str(err.value)
    with pytest.raises(ConfigError, match="choose one of"):
        get_strategy("zzz")


def test_batch_errors_name_the_parameter_set():
    with pytest.raises(ConfigError) as err:
        prepare_batch("sma_cross", [{"fast": 5, "slow": 20}, {"fast": 30, "slow": 20}])
    text = str(err.value)
    assert text.startswith("sma_cross: fast=30 must be < slow=20 (parameter set 1 {'fast': 30, 'slow': 20})")


def test_direction_names():
    assert direction_code("long_only") == 1 and direction_code("short_only") == -1
    with pytest.raises(ConfigError, match="did you mean 'long_only'"):
        direction_code("long-only")


def test_sweep_shares_indicators_through_the_plan():
    sets = [{"fast": f, "slow": s} for f in range(5, 55, 5) for s in range(20, 220, 10) if f < s]
    batch = prepare_batch("sma_cross", sets)
    assert len(sets) == 184
    assert batch.plan.requested == 368 and batch.plan.unique == 26 and len(batch.rows) == 26
    assert batch.idx.shape == (184, 3)
    # MACD sets with the same (fast, slow, signal) share one spec for both outputs.
    macd = prepare_batch("macd_cross", [{"signal": 9}, {"signal": 5}])
    assert macd.plan.unique == 2 and len(macd.rows) == 4
    plan = IndicatorPlan.from_requests(get_strategy("bollinger_breakout").specs({"window": 20, "k": 2.0}))
    assert plan.unique == 1
    assert prepare_batch("sma_cross", sets) is batch  # cached: a sweep reuses it per symbol


# ------------------------------------------------------------------ user strategies


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_strats_mod.py").write_text(textwrap.dedent("""
        import numpy as np
        from admf_dask.indicators import IndicatorSpec

        def above_sma(bars, indicators, window=50):
            return np.sign(np.nan_to_num(bars.close - indicators["sma"])).astype(np.int8)

        above_sma.indicators = lambda window=50: {"sma": IndicatorSpec.make("sma", window=window)}

        def bad_values(bars, indicators):
            return np.full(len(bars), 2)

        def needs(bars, indicators, level):
            return np.zeros(len(bars), dtype=np.int8)

        NOT_A_FUNCTION = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_strats_mod"
    sys.modules.pop("my_strats_mod", None)


def test_user_strategy_declares_parameters_and_indicators(user_module):
    s = get_strategy(f"{user_module}:above_sma")
    assert not s.builtin and s.param_names == ("window",)
    assert s.validate({}) == {"window": 50}
    assert [spec.label for spec in s.specs({"window": 30})] == ["sma(window=30)"]
    with pytest.raises(ConfigError, match="did you mean 'window'"):
        s.validate({"windw": 3})
    with pytest.raises(ConfigError, match="parameter 'level' is required"):
        get_strategy(f"{user_module}:needs").validate({})


def test_user_strategy_bad_output_is_a_data_error(user_module):
    from admf_dask.bars import generate_bars
    s = get_strategy(f"{user_module}:bad_values")
    with pytest.raises(DataError, match="outside"):
        s.user_targets(generate_bars("AAA", "2024-01-01", "2024-02-01"), {}, {})


@pytest.mark.parametrize(
    "path, match",
    [
        ("no_such_package_xyz.mod:fn", r"strategy 'no_such_package_xyz.mod:fn' does not import: "
                                       r"ModuleNotFoundError: No module named 'no_such_package_xyz'"),
        ("my_strats_mod:above_smaa", r"does not import: module 'my_strats_mod' has no 'above_smaa'"),
        ("my_strats_mod:NOT_A_FUNCTION", "is not a function"),
        ("my_strats_mod:", "must look like 'package.module:function'"),
    ],
)
def test_bad_import_paths(user_module, path, match):
    with pytest.raises(ConfigError, match=match) as err:
        get_strategy(path)
    assert err.value.where["key"] == "strategy"


def test_module_that_raises_on_import(tmp_path, monkeypatch):
    (tmp_path / "broken_strat_mod.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="does not import: RuntimeError: boom at import"):
        get_strategy("broken_strat_mod:fn")

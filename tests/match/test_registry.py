"""The matcher registry: lookup by name, per-method options validated in one line, custom methods."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from universality.errors import ConfigError, MatchError
from universality.match import METHODS, MatchResult, match
from universality.match import registry as reg
from universality.match.compare import Baselines, missing_row, p_value, score, skyline_values

from .helpers import permuted_noisy_copy

OLD_METHODS = ("hungarian", "sparse", "mnn", "many_to_one", "emd", "sinkhorn", "unbalanced", "partial", "gw", "fgw")


def test_builtin_methods_are_the_old_ones_in_the_old_order():
    assert METHODS == OLD_METHODS and reg.methods()[: len(OLD_METHODS)] == OLD_METHODS


@pytest.mark.parametrize("method", OLD_METHODS)
def test_every_method_has_a_frozen_options_dataclass_with_defaults_and_a_documented_solver(method):
    m = reg.get_matcher(method)
    assert m.name == method and dataclasses.is_dataclass(m.options)
    opts = m.options()  # every option has a default
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(opts, m.option_names[0], None)
    doc = m.solve.__doc__ or ""
    assert len(doc) > 80 and any(ch.isdigit() for ch in doc), f"{method}: state the math and the reference"
    assert m.across_widths == (method == "gw")


def test_unknown_method_is_one_line_and_lists_the_known_ones():
    with pytest.raises(MatchError, match="unknown method 'magic'; use one of hungarian, sparse") as e:
        reg.get_matcher("magic")
    assert "\n" not in str(e.value) and all(m in str(e.value) for m in OLD_METHODS)
    with pytest.raises(MatchError, match="unknown method"):
        reg.get_matcher(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "method, option, valid",
    [
        ("hungarian", "threshold", "block"),
        ("emd", "reg", "block"),
        ("partial", "reg", "mass, block"),
        ("gw", "block", "n_max, reduce"),
        ("gw", "alpha", "n_max, reduce"),
        ("sparse", "threshold", "k, exact_limit, block, gap_tol, max_rounds"),
        ("sinkhorn", "reg_m", "reg, block"),
    ],
)
def test_an_option_the_method_does_not_take_names_the_ones_it_does(method, option, valid):
    A = torch.eye(4)
    with pytest.raises(ConfigError) as e:
        match(A, A, method, device="cpu", **{option: 0.5})
    msg = str(e.value)
    assert "\n" not in msg and f"method {method!r} takes no option {option!r}" in msg
    assert msg.endswith(f"its options are: {valid}")


@pytest.mark.parametrize(
    "method, options, field",
    [
        ("sparse", {"k": 0}, "k"),
        ("sparse", {"k": 2.5}, "k"),
        ("sparse", {"exact_limit": -1}, "exact_limit"),
        ("hungarian", {"block": 0}, "block"),
        ("mnn", {"threshold": math.nan}, "threshold"),
        ("many_to_one", {"threshold": None}, "threshold"),
        ("many_to_one", {"k": True}, "k"),
        ("sinkhorn", {"reg": 0.0}, "reg"),
        ("unbalanced", {"reg_m": -1.0}, "reg_m"),
        ("partial", {"mass": 0.0}, "mass"),
        ("partial", {"mass": 1.5}, "mass"),
        ("fgw", {"alpha": 1.5}, "alpha"),
        ("gw", {"n_max": 0}, "n_max"),
        ("gw", {"reduce": "pca"}, "reduce"),
    ],
)
def test_bad_option_values_are_one_line_config_errors_before_any_work(method, options, field):
    with pytest.raises(ConfigError) as e:
        reg.get_matcher(method).make_options(**options)
    assert "\n" not in str(e.value) and field in str(e.value)
    with pytest.raises(ConfigError):
        match("not a dictionary", None, method, **options)  # options fail before the view is resolved


def test_defaults_and_none_spellings_of_the_old_signature_still_work():
    A, B, perm = permuted_noisy_copy(n=12, d=8, noise=0.05)
    s = match(A, B, "sinkhorn", reg=None, device="cpu")
    assert s.meta["params"]["reg"] == 0.01
    u = match(A, B, "unbalanced", reg=None, device="cpu")
    assert u.meta["params"]["reg"] == 0.02 and u.meta["params"]["reg_m"] == 0.1
    r = match(A, B, "mnn", threshold=None, device="cpu")
    assert np.array_equal(perm.numpy()[r.pairs[:, 0]], r.pairs[:, 1])
    assert match(A, B, "mnn", threshold=-math.inf, device="cpu").pairs.tolist() == r.pairs.tolist()


def test_params_are_the_options_of_the_method_as_used():
    A, B, _ = permuted_noisy_copy(n=12, d=8)
    assert match(A, B, "sparse", k=3, device="cpu").meta["params"] == {"k": 3, "exact_limit": 2048 * 2048,
                                                                       "block": None, "gap_tol": 1e-3,
                                                                       "max_rounds": 8}
    assert match(A, B, "gw", n_max=6, device="cpu").meta["params"] == {"n_max": 6, "reduce": "kmeans",
                                                                      "epsilon": None, "max_iter": 500}


@dataclasses.dataclass(frozen=True)
class _DiagonalOptions:
    offset: int = 0

    def __post_init__(self) -> None:
        if self.offset < 0:
            raise ConfigError(f"_DiagonalOptions.offset must be >= 0, got {self.offset}", "use offset=0")


def _diagonal(a, b, similarity, options):
    """Pairs ``(i, i + offset)`` scored by the cosine (a toy method: 0 references, 1 line of math)."""
    n = min(a.shape[0], b.shape[0] - options.offset)
    i = np.arange(n)
    scores = (a[:n] * b[options.offset: options.offset + n]).sum(1).numpy()
    return MatchResult(np.stack([i, i + options.offset], 1), scores, None, float(scores.sum()), {"toy": True})


def test_a_registered_method_is_dispatched_by_name(monkeypatch):
    monkeypatch.setattr(reg, "_REGISTRY", dict(reg._REGISTRY))  # leave the real registry untouched
    reg.register("diagonal", _DiagonalOptions, across_widths=False)(_diagonal)
    assert "diagonal" in reg.methods() and reg.methods()[-1] == "diagonal"
    A, B, _ = permuted_noisy_copy(n=6, d=4)
    r = match(A, B, "diagonal", offset=1, device="cpu")
    assert r.pairs.tolist() == [[i, i + 1] for i in range(5)]
    assert r.meta["method"] == "diagonal" and r.meta["params"] == {"offset": 1} and r.meta["toy"]
    with pytest.raises(ConfigError, match="offset must be >= 0"):
        match(A, B, "diagonal", offset=-1)
    with pytest.raises(MatchError, match="different widths"):
        match(A, torch.randn(6, 5), "diagonal")
    reg.register("diagonal", _DiagonalOptions)(_diagonal)  # re-registering the same function is fine
    with pytest.raises(ConfigError, match="already registered"):
        reg.register("diagonal", _DiagonalOptions)(lambda a, b, s, o: None)
    with pytest.raises(ConfigError, match="frozen dataclass"):
        reg.register("loose", dict)


def test_compare_parts_p_value_skylines_and_rows():
    def stat(x, y):
        return float(x == y)

    assert all(math.isnan(v) for v in p_value(stat, 1, 1, None, 5) + p_value(stat, 1, 1, lambda y, s: y, 0))
    p, null_mean = p_value(stat, 1, 1, lambda y, s: y + s, 4)  # every null sample differs: p = 1/5
    assert p == pytest.approx(0.2) and null_mean == 0.0
    ska, skb, sky = skyline_values(stat, (1, 1), None)
    assert (ska, sky) == (1.0, 1.0) and math.isnan(skb)
    assert all(math.isnan(v) for v in skyline_values(stat, None, None))
    row = score("mmcs", "decoder", "a->b", stat, 1, 1, Baselines(floor_b=0, skyline_a=(1, 1)), 0)
    assert row["value"] == 1.0 and row["floor"] == 0.0 and row["normalised"] == 1.0 and row["note"] == ""
    assert row["source"].startswith("Sharkey")
    gap = missing_row("svcca", "decoder|activation-matched", "a<->b", "why")
    assert gap["note"] == "why" and math.isnan(gap["value"]) and gap["source"].startswith("Lan")

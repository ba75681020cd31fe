"""The registry-based ``match`` and the split ``compare`` give bitwise the results of the code they replaced.

``data/legacy_api.py`` and ``data/legacy_compare.py`` are frozen copies of ``universality/match/api.py`` and
``compare.py`` from before the renovation; both old and new run here, on the same seeded inputs and the
same machine, so every array, float and meta entry must agree to the bit. The one intended difference is
``meta['params']``: it now holds the options of the chosen method (the old one listed every option of every
method), so only the keys both share are compared.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from universality.errors import UniversalityError
from universality.match import METHODS, compare, match
from universality.match.registry import get_matcher
from universality.match.views import codes_from_dense
from universality.match.worlds import PairedWorldConfig, make_paired_world

from .helpers import ToySAE, permuted_noisy_copy, unit

DATA = Path(__file__).parent / "data"


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"_legacy_{name}", DATA / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny problems: one intra-op thread is fastest on a crowded machine (Sinkhorn's many small steps)."""


legacy_api = _load("legacy_api")
legacy_compare = _load("legacy_compare")


# ------------------------------------------------------------------------------------------ inputs
def _inputs() -> dict[str, Any]:
    g = torch.Generator().manual_seed(1234)
    A, B, _ = permuted_noisy_copy(n=24, d=12, noise=0.3, seed=3)
    R = unit(torch.randn(30, 12, generator=g))  # rectangular partner of A
    W = unit(torch.randn(20, 16, generator=g))  # another width: only gw compares it with A
    z = torch.rand(400, 24, generator=g) * (torch.rand(400, 24, generator=g) < 0.2)
    x_a = z @ A + 0.05 * torch.randn(400, 12, generator=g)
    x_b = z @ B + 0.05 * torch.randn(400, 12, generator=g)
    ids = torch.arange(400)
    sae_a, sae_b = ToySAE(A, 0.1), ToySAE(B, 0.1)
    return {"A": A, "B": B, "R": R, "W": W, "sae_a": sae_a, "sae_b": sae_b, "x": (x_a, x_b), "ids": ids,
            "ca": codes_from_dense(sae_a.encode(x_a), ids), "cb": codes_from_dense(sae_b.encode(x_b), ids)}


INPUTS = _inputs()

# (a, b, method, view, keyword arguments): every method, its defaults and its non-default options,
# each view, the sparse gap and completion paths and both GW reductions
CASES: list[tuple[str, str, str, str, dict[str, Any]]] = [
    *[("A", "B", m, "decoder", {}) for m in METHODS],
    *[("A", "R", m, "decoder", {}) for m in METHODS],
    ("A", "B", "sparse", "decoder", {"k": 2}),
    ("A", "R", "sparse", "decoder", {"k": 1, "exact_limit": 0}),
    ("A", "B", "sparse", "decoder", {"k": 3, "block": 5}),
    ("A", "B", "mnn", "decoder", {"k": 4, "threshold": 0.8}),
    ("A", "B", "mnn", "decoder", {"threshold": None}),
    ("A", "R", "many_to_one", "decoder", {"threshold": 0.1, "k": 2}),
    ("A", "B", "hungarian", "decoder", {"block": 7}),
    ("A", "B", "sinkhorn", "decoder", {"reg": 0.02}),
    ("A", "R", "sinkhorn", "decoder", {"reg": 0.1}),
    ("A", "R", "unbalanced", "decoder", {"reg": 0.05, "reg_m": 0.3}),
    ("A", "B", "partial", "decoder", {"mass": 0.8}),
    ("A", "R", "gw", "decoder", {"n_max": 10}),
    ("A", "R", "gw", "decoder", {"n_max": 10, "reduce": "subsample"}),
    ("A", "W", "gw", "decoder", {}),
    ("A", "W", "gw", "decoder", {"n_max": 8, "reduce": "subsample"}),
    ("A", "B", "fgw", "decoder", {"alpha": 0.2, "n_max": 12}),
    *[("sae_a", "sae_b", m, "encoder", {}) for m in ("hungarian", "sparse", "emd", "gw")],
    *[("sae_a", "sae_b", m, "activations", {"activations": "x", "token_ids": "ids"}) for m in METHODS],
    ("sae_a", "sae_b", "hungarian", "activations", {"activations": "x", "token_ids": "ids", "similarity": "jaccard"}),
    ("ca", "cb", "sparse", "activations", {"k": 2}),
    ("ca", "cb", "gw", "activations", {"n_max": 9}),
    ("ca", "cb", "fgw", "activations", {"n_max": 9, "alpha": 0.7}),
]


def _resolve(kw: dict[str, Any]) -> dict[str, Any]:
    return {k: INPUTS[v] if k in ("activations", "token_ids") else v for k, v in kw.items()}


# ------------------------------------------------------------------------------------------ comparison
def _bits(x: Any) -> bytes:
    return np.ascontiguousarray(np.asarray(x)).tobytes()


def _same(x: Any, y: Any, where: str) -> None:
    if isinstance(x, dict):
        assert isinstance(y, dict) and list(x) == list(y), f"{where}: keys {list(x)} vs {list(y)}"
        for k in x:
            _same(x[k], y[k], f"{where}.{k}")
    elif isinstance(x, (list, tuple)):
        assert type(x) is type(y) and len(x) == len(y), f"{where}: {x!r} vs {y!r}"
        for i, (u, v) in enumerate(zip(x, y)):
            _same(u, v, f"{where}[{i}]")
    elif isinstance(x, (float, np.floating, np.ndarray)):
        assert type(x) is type(y) and _bits(x) == _bits(y), f"{where}: {x!r} vs {y!r}"
    else:
        assert type(x) is type(y) and x == y, f"{where}: {x!r} vs {y!r}"


def _assert_same_result(old: Any, new: Any) -> None:
    assert old.pairs.dtype == new.pairs.dtype and np.array_equal(old.pairs, new.pairs)
    assert old.scores.dtype == new.scores.dtype and _bits(old.scores) == _bits(new.scores)
    assert (old.plan is None) == (new.plan is None)
    if old.plan is not None:
        assert old.plan.shape == new.plan.shape and _bits(old.plan) == _bits(new.plan)
    assert _bits(old.value) == _bits(new.value)
    old_meta = {k: v for k, v in old.meta.items() if k != "params"}
    new_meta = {k: v for k, v in new.meta.items() if k != "params"}
    _same(old_meta, new_meta, "meta")
    assert set(get_matcher(new.meta["method"]).option_names) <= set(new.meta["params"])
    shared = [k for k in new.meta["params"] if k in old.meta["params"]]
    _same({k: old.meta["params"][k] for k in shared}, {k: new.meta["params"][k] for k in shared}, "meta.params")


@pytest.mark.parametrize("case", CASES, ids=[f"{m}-{v}-{a}{b}-{'-'.join(kw)}" for a, b, m, v, kw in CASES])
def test_match_is_bitwise_the_old_match(case):
    a, b, method, view, kw = case
    kw = _resolve(kw)
    old = legacy_api.match(INPUTS[a], INPUTS[b], method, view, device="cpu", **kw)
    new = match(INPUTS[a], INPUTS[b], method, view, device="cpu", **kw)
    _assert_same_result(old, new)


ERROR_CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("A", "W", {"method": "hungarian"}),
    ("A", "W", {"method": "fgw"}),
    ("A", "A", {"view": "activations"}),
    ("A", "A", {"view": "bias"}),
    ("A", "A", {"similarity": "jaccard"}),
    ("A", "A", {"method": "sparse", "k": 0}),
    ("A", "A", {"method": "sinkhorn", "reg": -1.0}),
    ("A", "A", {"method": "unbalanced", "reg_m": 0.0}),
    ("A", "A", {"method": "partial", "mass": 1.5}),
    ("A", "R", {"method": "fgw", "alpha": 2.0}),
    ("ca", "cb", {"view": "activations", "similarity": "cosine"}),
]


@pytest.mark.parametrize("a, b, kw", ERROR_CASES)
def test_match_refuses_what_the_old_match_refused(a, b, kw):
    with pytest.raises(UniversalityError) as old:
        legacy_api.match(INPUTS[a], INPUTS[b], device="cpu", **kw)
    with pytest.raises(UniversalityError) as new:
        match(INPUTS[a], INPUTS[b], device="cpu", **kw)
    assert type(new.value) is type(old.value)
    assert "\n" not in str(new.value)


# ------------------------------------------------------------------------------------------ compare
def _world(d_a: int, d_b: int, seed: int = 0) -> dict[str, Any]:
    w = make_paired_world(PairedWorldConfig(n_features=20, d_a=d_a, d_b=d_b, shared_fraction=0.5, seed=seed))
    s = w.sample(600)
    g = torch.Generator().manual_seed(seed + 7)
    return {"a": ToySAE(w.D_a, 0.3), "b": ToySAE(w.D_b, 0.3), "x": (s.x_a, s.x_b), "ids": s.token_ids,
            "sky_a": ToySAE(w.D_a + 0.1 * torch.randn(w.D_a.shape, generator=g), 0.3),
            "sky_b": ToySAE(w.D_b + 0.1 * torch.randn(w.D_b.shape, generator=g), 0.3)}


def _compare_cases() -> list[tuple[str, Any, Any, dict[str, Any]]]:
    same, wide = _world(16, 16), _world(12, 16, seed=1)
    T = unit(torch.randn(14, 10, generator=torch.Generator().manual_seed(5)))
    return [
        ("skyline-pair", same["a"], same["b"], {"activations": same["x"], "token_ids": same["ids"],
                                                "skyline": (same["sky_a"], same["sky_b"]), "n_perm": 3}),
        ("one-skyline", same["a"], same["b"], {"activations": same["x"], "token_ids": same["ids"],
                                               "skyline": same["sky_a"], "n_perm": 2,
                                               "thresholds": (0.3, 0.7), "corr_threshold": 0.2, "seed": 4}),
        ("widths-differ", wide["a"], wide["b"], {"activations": wide["x"], "token_ids": wide["ids"],
                                                 "skyline": (wide["sky_a"], wide["sky_b"]), "n_perm": 2}),
        ("tensors", T, T.flip(0), {"skyline": T.clone(), "n_perm": 2, "floor": "random"}),
        ("no-perm-covariance", same["a"], same["b"], {"activations": same["x"][0], "floor": "covariance",
                                                      "n_perm": 0}),
        ("weights-only", same["a"], same["b"], {"n_perm": 1}),
        ("high-corr-threshold", same["a"], same["b"], {"activations": same["x"], "token_ids": same["ids"],
                                                       "corr_threshold": 0.99, "n_perm": 1}),
    ]


COMPARE_CASES = _compare_cases()


NEW_FRACTION_ROWS = ("shared_fraction_features", "shared_fraction_seed_stable", "shared_fraction_ot")


def _with_intended_changes(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """The old table with the changes of the issue "Numbers that cannot mislead" applied, aligned to the new
    rows: SVCCA/RSA rows with too few pairs for their dimensions are NaN with the reason, notes gain guards
    after the old note, and the p-values (exact permutation or a labelled normal tail, new columns
    ``p_method``/``p_resolution``) and the bootstrap intervals are new, so they are taken from ``new``. The
    new ``pw_mcc`` row has no old counterpart and is checked against the old mean matched cosine instead; the
    new feature-level shared-fraction rows (:data:`NEW_FRACTION_ROWS`) are taken from ``new``."""
    key = ["metric", "view", "direction"]
    old = old.set_index(key)
    new_k = new.set_index(key)
    assert set(old.index) <= set(new_k.index), sorted(set(old.index) - set(new_k.index))
    extra = [i for i in new_k.index if i not in old.index]
    assert {i[0].split("@")[0] for i in extra} <= {"pw_mcc", *NEW_FRACTION_ROWS}, extra
    aligned = old.reindex(new_k.index)
    fresh = new_k.index.get_level_values("metric").str.split("@").str[0].isin(NEW_FRACTION_ROWS)
    aligned.loc[fresh] = new_k.loc[fresh]  # tested on planted pairs in test_compare_fractions.py
    extra = [i for i in extra if i[0] == "pw_mcc"]
    for i in extra:  # PW-MCC is the mean matched decoder cosine under another name (Song et al. 2025)
        pos = aligned.index.get_loc(i)
        aligned.iloc[pos] = old.loc[("mean_matched_cosine", "decoder", "a<->b")]
        aligned.iloc[pos, aligned.columns.get_loc("source")] = new_k["source"].iloc[pos]
    few = new_k.index.get_level_values("metric").isin(["svcca", "rsa"]) & new_k.note.str.contains("SVCCA/RSA need")
    aligned.loc[few, ["value", "floor", "skyline_a", "skyline_b", "normalised", "p_value"]] = np.nan
    aligned.loc[few, "note"] = new_k.loc[few, "note"]
    for i in aligned.index:
        assert new_k.note[i].startswith(aligned.note[i]), (new_k.note[i], aligned.note[i])
    for col in ("note", "p_value", "p_method", "p_resolution", "ci_low", "ci_high", "ci_method"):
        aligned[col] = new_k[col]
    return aligned.reset_index()[list(new.columns)]


@pytest.mark.parametrize("case", COMPARE_CASES, ids=[c[0] for c in COMPARE_CASES])
def test_compare_is_bitwise_the_old_compare(case):
    """Values and skylines are bit for bit the old ones; floors (null means, now computed from one shared
    sparse product per shuffle, whose float32 sums round differently) and the normalised values built on
    them agree to 1e-7 relative."""
    _, a, b, kw = case
    new = compare(a, b, **kw)
    old = _with_intended_changes(legacy_compare.compare(a, b, **kw), new)
    near = ["floor", "normalised"]
    pd.testing.assert_frame_equal(old.drop(columns=near), new.drop(columns=near), check_exact=True)
    for col in ("value", "skyline_a", "skyline_b"):
        assert _bits(old[col].to_numpy()) == _bits(new[col].to_numpy()), col
    for col in near:
        np.testing.assert_allclose(new[col].to_numpy(), old[col].to_numpy(), rtol=1e-7, atol=1e-12, equal_nan=True)


def test_compare_refuses_a_covariance_floor_without_activations_like_before():
    A = unit(torch.randn(8, 6, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(UniversalityError) as old:
        legacy_compare.compare(A, A, floor="covariance")
    with pytest.raises(UniversalityError) as new:
        compare(A, A, floor="covariance")
    assert type(old.value) is type(new.value) and str(old.value) == str(new.value)

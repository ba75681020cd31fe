"""``match`` and ``lineage`` warn when two dictionaries started from the same initial weights."""

from __future__ import annotations

import warnings

import pytest

from universality.match import match
from universality.match.lineage import lineage
from universality.sae import make_sae, sae_config
from universality.sae.identity import init_record, same_training_run, shared_initialisation

CFG = sae_config("topk", 8, 16, k=2)


def sae(seed: int, name: str, mode: str | None = "seed", identity: dict | None = None, **meta):
    """A fresh SAE of ``seed`` carrying an init record (``mode=None``: a legacy artifact, seed only)."""
    out = make_sae(CFG, seed=seed, meta={"name": name, "site": name, "train": {"seed": seed}, **meta})
    if mode is not None:
        out.meta["init"] = init_record(mode, seed, seed, identity or {"key": name}, out.W_dec)
    return out


def test_match_warns_and_notes_a_shared_initialisation():
    a, b = sae(0, "layer1"), sae(0, "layer2")
    with pytest.warns(UserWarning, match=r"shared initialisation: dictionaries a \(layer1\) and b \(layer2\)"):
        res = match(a, b, device="cpu")
    assert "same initial decoder" in res.meta["shared_initialisation"]
    assert float(res.scores.mean()) == pytest.approx(1.0)  # untrained: the shared start is all they share


def test_match_is_quiet_for_independent_starts_and_self_matches():
    a, b = sae(0, "layer1"), sae(1, "layer2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = match(a, b, device="cpu")
        self_res = match(a, a, device="cpu")
    assert "shared_initialisation" not in res.meta and "shared_initialisation" not in self_res.meta


def test_legacy_artifacts_share_an_initialisation_by_seed_and_shape():
    a, b = sae(3, "x", mode=None), sae(3, "y", mode=None)
    assert "seed 3 with shape 16x8" in shared_initialisation(a, b)
    assert shared_initialisation(a, sae(4, "y", mode=None)) is None
    assert shared_initialisation(a, make_sae(sae_config("topk", 8, 32, k=2), seed=3, meta={"train": {"seed": 3}})) is None
    derived = sae(3, "y", mode="derived", identity={"key": "y"})
    assert shared_initialisation(a, derived) is None  # a derived start never equals a seed-only one
    assert shared_initialisation(sae(3, "x").meta, sae(3, "y").meta) is not None  # meta mappings with records work too
    assert shared_initialisation(a.W_dec, b.W_dec) is None  # plain tensors record nothing


def test_lineage_warns_across_layers_but_not_across_checkpoints_of_one_run():
    layers = [sae(0, f"layer{i}") for i in range(3)]
    with pytest.warns(UserWarning, match=r"lineage step \d->\d: shared initialisation"):
        lin = lineage(layers, view="decoder")
    assert sorted(lin.meta["shared_initialisation"]) == ["0->1", "1->2"]
    run = {"key": "run", "site": "s"}
    ckpts = [sae(0, "run", identity=run, trained_steps=t) for t in (100, 200)]
    assert same_training_run(*ckpts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lin = lineage(ckpts, view="decoder")
    assert "same training run" in lin.meta["shared_initialisation"]["0->1"]
    independent = lineage([sae(0, "a", mode="derived"), sae(1, "b", mode="derived")], view="decoder")
    assert independent.meta == {}

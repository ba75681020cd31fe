"""Feature patching (Cunningham et al. 2023): x' = x_corrupt + sum_{i in F} (c_i - c'_i) f_i on hand cases,
and the patched forward on the tiny GPT-2 of tests/eval/conftest.py."""

from __future__ import annotations

import math

import pytest
import torch

from universality.errors import ConfigError
from universality.eval.patching import (PatchRun, k_grid, k_to_reach, kl_floor, neuron_basis, patch, pca_basis,
                                        random_basis, restoration_curve, sae_basis, single_effects)
from universality.zoo.ioi import ioi_documents, ioi_texts, require_learned

SITE = "blocks.0.hook_resid_post"


class _SignSAE:
    """An SAE that reconstructs exactly: codes (relu(x), relu(-x)), decoder rows (I; -I), no biases."""

    def __init__(self, d: int) -> None:
        self.W_dec = torch.cat([torch.eye(d), -torch.eye(d)])

    def encode(self, x):
        return torch.cat([x.clamp_min(0), (-x).clamp_min(0)], -1)

    def decode(self, z):
        return z @ self.W_dec


class _LossySAE(_SignSAE):
    """Keeps only the positive half (a lossy dictionary with a reconstruction error), plus a decoder bias."""

    def __init__(self, d: int) -> None:
        self.W_dec = torch.eye(d) * 2.0
        self.b_dec = torch.full((d,), 0.5)

    def encode(self, x):
        return (x - self.b_dec).clamp_min(0) / 2.0

    def decode(self, z):
        return z @ self.W_dec + self.b_dec


def test_patch_formula_on_a_hand_case():
    g = torch.Generator().manual_seed(0)
    xc, xk = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    lossy = sae_basis(_LossySAE(4))
    # F empty: the corrupted activation
    assert torch.equal(patch(lossy, xc, xk, []), xk)
    # F = all features: the SAE reconstruction of clean plus the corrupted run's reconstruction error
    sae = _LossySAE(4)
    recon = lambda x: sae.decode(sae.encode(x))  # noqa: E731
    assert torch.allclose(patch(lossy, xc, xk, range(4)), recon(xc) + (xk - recon(xk)), atol=1e-6)
    # a single feature moves x along its decoder row by its code difference
    one = patch(lossy, xc, xk, [2])
    dc = sae.encode(xc)[..., 2] - sae.encode(xk)[..., 2]
    assert torch.allclose(one - xk, dc[..., None] * sae.W_dec[2], atol=1e-6)
    # an exact dictionary, and every complete linear basis, restores the clean activation with F = all
    for b in (sae_basis(_SignSAE(4)), neuron_basis(4), random_basis(4, seed=3), pca_basis(torch.randn(50, 4, generator=g))):
        assert torch.allclose(patch(b, xc, xk, range(b.n)), xc, atol=1e-5), b.name


def test_k_grid_and_k_to_reach():
    assert k_grid(10) == [0, 1, 2, 4, 8, 10] and k_grid(8) == [0, 1, 2, 4, 8]
    assert k_to_reach([0, 1, 2, 4], [0.0, 0.3, 0.6, 0.9], 0.5) == 2
    assert k_to_reach([0, 1], [0.0, 0.3], 0.8) is None


def test_patched_forward_runs_from_the_patched_activation(adapter):
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(5, 300, (6, 9), generator=g)
    corrupt = clean.clone()
    corrupt[:, 4] = torch.randint(5, 300, (6,), generator=g)
    io, s = torch.randint(5, 300, (6,), generator=g), torch.randint(5, 300, (6,), generator=g)
    run = PatchRun(adapter, SITE, clean, corrupt, io, s)
    assert abs(run.ld_clean - run.ld_corrupt) > 1e-4
    d = run.x_clean.shape[-1]
    exact = sae_basis(_SignSAE(d))
    for b in (exact, neuron_basis(d)):
        ks, fr = restoration_curve(run, b, list(range(b.n)), ks=[0, b.n])
        assert ks == [0, b.n] and abs(fr[0]) < 1e-6 and abs(fr[1] - 1) < 1e-3, b.name
    eff = single_effects(run, neuron_basis(d))
    assert eff.shape == (d,) and torch.isfinite(eff).all()
    assert kl_floor(adapter, _SignSAE(d), SITE, clean) == pytest.approx(0.0, abs=1e-9)
    assert kl_floor(adapter, _LossySAE(d), SITE, clean) > 0
    with pytest.raises(ConfigError, match="differ"):
        PatchRun(adapter, SITE, clean, corrupt[:, :-1], io, s)


def test_ioi_family_and_refusal():
    texts = ioi_texts(20, seed=0)
    assert texts == ioi_texts(20, seed=0) and texts != ioi_texts(20, seed=1)
    assert all(t.endswith(".") and " to " in t for t in texts)
    docs = ioi_documents(3, per_doc=4)
    assert len(docs) == 3 and docs[0].meta["ioi"] is True and docs[0].text.count("\n") == 3
    with pytest.raises(ConfigError, match="has not learned the IOI task.*0.200 < 1"):
        require_learned(0.2, "m", 1.0)
    with pytest.raises(ConfigError):
        require_learned(math.nan, "m", 1.0)
    require_learned(1.5, "m", 1.0)

"""Correlations of codes cannot be moved by shifting or scaling the codes, and dead latents are counted apart.

Known answers: Pearson correlation and linear CKA are invariant to ``z -> s z + c`` per side, so shifted and
scaled codes must give the numbers of the original codes. The former float32 ``E[ab] - E[a]E[b]`` with an
absolute ``1e-12`` cutoff failed both cases quoted in the issue "Numbers that cannot mislead" (dense latents
with mean/std 30 read 0.89486 instead of 0.89469 here; codes of std ~0.1 scaled by 1e-5 read MPPC 0 instead
of 0.955).
"""

from __future__ import annotations

import math

import pytest
import torch

from universality.match.similarity import CONSTANT_RTOL, code_moments, constant_features, dense_similarity
from universality.match.summary import dead_counts, linear_cka, linear_cka_codes, mppc
from universality.match.views import codes_from_dense


def _sparse_pair(T: int = 3000, n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    za = torch.relu(torch.randn(T, n, generator=g)) * (torch.rand(T, n, generator=g) < 0.3)
    noise = torch.relu(torch.randn(T, n, generator=g)) * (torch.rand(T, n, generator=g) < 0.3)
    return za, za[:, torch.randperm(n, generator=g)] + 0.3 * noise


def _codes(*zs: torch.Tensor) -> list:
    ids = torch.arange(zs[0].shape[0])
    return [codes_from_dense(z, ids) for z in zs]


def test_dense_codes_with_mean_30_std_1_correlate_as_the_centred_codes():
    g = torch.Generator().manual_seed(1)
    T = 20000
    za = 30 + torch.randn(T, 16, generator=g)
    zb = za[:, torch.randperm(16, generator=g)] + 0.5 * torch.randn(T, 16, generator=g)
    shifted, centred = _codes(za, zb), _codes(za - 30, zb - 30)
    assert mppc(*shifted) == pytest.approx(mppc(*centred), abs=1e-6)  # was 0.89486 vs 0.89469
    S, S0 = dense_similarity(*shifted, kind="pearson"), dense_similarity(*centred, kind="pearson")
    assert float((S - S0).abs().max()) < 1e-6


def test_tiny_codes_are_not_read_as_dead():
    za, zb = _sparse_pair()
    za, zb = 0.2 * za, 0.2 * zb  # std ~0.1, as many SAE latents
    ref = mppc(*_codes(za, zb))
    assert min(ref) > 0.9
    assert mppc(*_codes(za * 1e-5, zb * 1e-5)) == pytest.approx(ref, abs=1e-6)  # was (0.0, 0.0)
    assert dead_counts(*_codes(za * 1e-5, zb * 1e-5)) == (0, 0)


@pytest.mark.parametrize("transform", [lambda z: z + 30, lambda z: z * 1e-5, lambda z: z * 1e5, lambda z: 7 * z - 3],
                         ids=["plus30", "times1e-5", "times1e5", "affine"])
def test_mppc_and_code_cka_are_shift_and_scale_invariant(transform):
    za, zb = _sparse_pair()
    ca, cb = _codes(za, zb)
    ta, tb = _codes(transform(za), transform(zb))
    assert mppc(ta, tb) == pytest.approx(mppc(ca, cb), abs=1e-6)
    assert linear_cka_codes(ta, tb, block=5) == pytest.approx(linear_cka_codes(ca, cb), abs=1e-6)
    assert linear_cka_codes(ca, cb) == pytest.approx(linear_cka(za, zb), abs=1e-9)


def test_code_moments_are_exact_float64_two_pass():
    z = torch.tensor([[1e4 + 1.0, 0.0], [1e4 - 1.0, 0.0], [1e4 + 1.0, 2.0], [1e4 - 1.0, 0.0]])
    (c,) = _codes(z)
    mean, var = code_moments(c)
    assert mean.dtype == torch.float64
    assert mean.tolist() == pytest.approx([1e4, 0.5], abs=1e-9)
    assert var.tolist() == pytest.approx([1.0, 0.75], abs=1e-9)


def test_constant_cutoff_is_relative():
    T = 1000
    base = torch.zeros(T, 4)
    base[:, 1] = 5.0  # fires on every token with the same value: constant
    base[::2, 2] = 1e-8  # tiny but varying: live
    base[:, 3] = 1.0
    base[0, 3] = 1.0 + 1e-3  # relative spread 3e-5 > 1e-6: live
    (c,) = _codes(base)
    assert constant_features(c).tolist() == [True, True, False, False]
    (c5,) = _codes(base * 1e5)
    assert constant_features(c5).tolist() == [True, True, False, False]
    assert CONSTANT_RTOL == 1e-6


def test_dead_latents_are_excluded_from_mppc_and_counted():
    za, zb = _sparse_pair(n=8)
    za = torch.cat([za, torch.zeros(za.shape[0], 2)], 1)  # two latents of a never fire
    zb = torch.cat([zb, torch.full((zb.shape[0], 1), 3.0)], 1)  # one latent of b is constant
    ca, cb = _codes(za, zb)
    live = mppc(ca, cb)
    counted = mppc(ca, cb, exclude_dead=False)
    assert dead_counts(ca, cb) == (2, 1)
    assert counted[0] == pytest.approx(live[0] * 8 / 10, abs=1e-6)  # dead latents of a read 0 when counted
    assert counted[1] == pytest.approx(live[1] * 8 / 9, abs=1e-6)
    assert live == pytest.approx(mppc(*_codes(za[:, :8], zb[:, :8])), abs=1e-7)
    (dead,) = _codes(torch.zeros(za.shape[0], 3))
    assert all(math.isnan(v) for v in mppc(dead, dead))

"""Baselines every similarity is read against: a floor, a skyline, a null distribution.

- *Floor*: the metric between ``a`` and a random dictionary of ``b``'s size - random unit directions
  (:func:`random_unit_dictionary`), or random directions with the covariance of the activations
  (:func:`covariance_matched_dictionary`), which is the harder floor: activations are anisotropic and
  any two dictionaries fitted to them lean towards the same top principal directions.
- *Skyline*: the metric between two dictionaries trained on the same activations with different seeds
  (computed by the caller, passed to :func:`normalise`).
- *Null distribution*: :func:`permutation_test` recomputes a statistic after destroying the pairing -
  shuffling which tokens ``b``'s codes belong to (activation views) or rotating ``b``'s space by a random
  orthogonal matrix (weight views) - and gives the permutation p-value
  :math:`p = (1 + \\#\\{r : s_r \\ge s\\}) / (1 + R)` (Phipson & Smyth 2010).
"""

from __future__ import annotations

import hashlib

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from universality.errors import ConfigError
from universality.match.views import FeatureCodes, codes_from_dense

__all__ = [
    "MIN_GAP",
    "null_generator",
    "random_unit_dictionary",
    "covariance_matched_dictionary",
    "random_rotation",
    "shuffle_tokens",
    "permutation_test",
    "normalise",
]

MIN_GAP = 0.05  # a skyline - floor gap below this is too small to divide by


def null_generator(kind: str, seed: int) -> torch.Generator:
    """The generator of null sample ``seed`` of ``kind``, seeded by a hash of both.

    Plain ``manual_seed(seed)`` would make the random-dictionary floor of seed ``s`` the very
    initialisation of an SAE trained with seed ``s`` (both draw ``randn`` from the same stream), so
    an untrained or barely trained dictionary would score 1.0 against its own floor.
    """
    digest = hashlib.sha256(f"universality.match.baselines/{kind}/{int(seed)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def random_unit_dictionary(n: int, d: int, seed: int = 0) -> Float[Tensor, "n d"]:
    """``n`` directions drawn uniformly on the unit sphere in ``R^d``."""
    g = null_generator("random_unit_dictionary", seed)
    W = torch.randn(n, d, generator=g)
    return W / W.norm(dim=1, keepdim=True)


def covariance_matched_dictionary(n: int, x: Float[Tensor, "T d"], seed: int = 0) -> Float[Tensor, "n d"]:
    """``n`` unit directions :math:`w = L g / \\|L g\\|`, :math:`g \\sim N(0, I)`, :math:`LL^\\top = \\Sigma_x`:
    random directions distributed like the (centred) activations themselves."""
    x = x.double()
    cov = torch.cov(x.T) + 1e-6 * torch.eye(x.shape[1], dtype=torch.float64)
    L = torch.linalg.cholesky(cov)
    g = null_generator("covariance_matched_dictionary", seed)
    W = (torch.randn(n, x.shape[1], generator=g, dtype=torch.float64) @ L.T).float()
    return W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)


def random_rotation(d: int, seed: int = 0) -> Float[Tensor, "d d"]:
    """A Haar-random orthogonal matrix (QR of a Gaussian with the sign fix of Mezzadri 2007)."""
    g = null_generator("random_rotation", seed)
    Q, R = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return (Q * torch.sign(torch.diagonal(R))[None, :]).float()


def shuffle_tokens(codes: FeatureCodes, seed: int = 0, block: int = 1) -> FeatureCodes:
    """The same codes with tokens permuted (in contiguous blocks of ``block`` tokens, to keep local
    structure), so that their pairing with another dictionary's tokens is destroyed; the fingerprint is
    kept so the shuffled codes remain comparable."""
    T = codes.n_tokens
    g = null_generator("shuffle_tokens", seed)
    nb = (T + block - 1) // block
    order = torch.randperm(nb, generator=g)
    perm = (order[:, None] * block + torch.arange(block)[None, :]).reshape(-1)
    perm = perm[perm < T]
    dense = codes.rows(0, codes.n)[:, perm]
    return codes_from_dense(dense.T, fingerprint=codes.fingerprint)


def permutation_test(
    statistic: Callable[[Any, Any], float],
    a: Any,
    b: Any,
    null: Callable[[Any, int], Any],
    n_perm: int = 20,
) -> dict[str, Any]:
    """Permutation p-value of ``statistic(a, b)`` against ``statistic(a, null(b, seed))`` for ``n_perm``
    seeds; larger statistic = more similar. Returns ``{"statistic", "null_mean", "null_std", "p_value"}``."""
    if n_perm < 1:
        raise ConfigError(f"n_perm must be >= 1, got {n_perm}", "use e.g. n_perm=20")
    s = float(statistic(a, b))
    nulls = np.array([float(statistic(a, null(b, r + 1))) for r in range(n_perm)])
    p = (1 + int((nulls >= s).sum())) / (1 + n_perm)
    return {"statistic": s, "null_mean": float(nulls.mean()), "null_std": float(nulls.std()), "p_value": p,
            "n_perm": n_perm}


def normalise(x: float, floor: float, skyline: float, min_gap: float = MIN_GAP) -> tuple[float, str]:
    """Normalised score :math:`(x - \\text{floor}) / (\\text{skyline} - \\text{floor})` and a note.

    When the skyline is missing or ``skyline - floor < min_gap`` the ratio would amplify noise, so the
    result is NaN and the note says why (this is printed in the table instead of a ratio).
    """
    if skyline is None or not np.isfinite(skyline):
        return float("nan"), "no skyline given"
    if not np.isfinite(floor) or not np.isfinite(x):
        return float("nan"), "metric or floor undefined"
    gap = skyline - floor
    if gap < min_gap:
        return float("nan"), f"skyline - floor = {gap:.3g} < {min_gap}: too small to normalise"
    return float((x - floor) / gap), ""

"""Blocked similarities between two dictionaries' features, and streaming top-k partners.

Nothing here materialises the full ``(n, m)`` matrix unless asked to (:func:`dense_similarity`): the
rows of ``a`` are processed ``block`` at a time, on the GPU when the inputs live there, and only the top-k
partners per row and per column are kept (:func:`topk_partners`).

Similarities (each a ``(b, m)`` block for rows ``i0:i1`` of ``a``):

- **cosine** of unit directions, :math:`S_{ij} = \\hat a_i \\cdot \\hat b_j`.
- **Pearson** correlation of codes over the same ``T`` tokens (Wang et al. 2024, *Towards Universality:
  Studying Mechanistic Similarity Across Language Model Architectures*, who take per feature its
  maximum over the other dictionary, MPPC):
  :math:`\\rho_{ij} = \\tfrac1T\\sum_t (a_{it} - \\mu_i)(b_{jt} - \\mu_j) / (\\sigma_i \\sigma_j)`,
  from one sparse x dense product per block, accumulated centred in float64 (:func:`covariance_blocks`);
  a *constant* feature (:func:`constant_features`) has correlation 0 with everything.
- **Jaccard** of firing sets, :math:`J_{ij} = |F_i \\cap F_j| / |F_i \\cup F_j|` with
  :math:`F_i = \\{t : a_{it} \\neq 0\\}`; 0 when both are empty.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from universality.errors import MatchError
from universality.match.views import FeatureCodes
from universality.progress import progress_bar

__all__ = [
    "SIMILARITIES",
    "TopK",
    "cosine_blocks",
    "pearson_blocks",
    "jaccard_blocks",
    "similarity_blocks",
    "dense_similarity",
    "topk_partners",
    "default_block",
    "gram_blocks",
    "check_codes",
    "CONSTANT_RTOL",
    "code_moments",
    "constant_features",
    "covariance_blocks",
]

SIMILARITIES = ("cosine", "pearson", "jaccard")
_BLOCK_BYTES = 256 << 20  # one (b, m) float32 block plus its codes stays under ~256 MiB
CONSTANT_RTOL = 1e-6
"""A feature is constant on the tokens when its standard deviation is at most this fraction of its
root mean square, :math:`\\sigma \\le 10^{-6}\\sqrt{\\sigma^2 + \\mu^2}` (always when
:math:`\\sigma = 0`, e.g. a feature that never fires): float32 codes resolve relative changes of about
:math:`6 \\cdot 10^{-8}` only, so smaller fluctuations are rounding. The cutoff is relative, hence the
same for codes and for scaled codes."""


def default_block(m: int, t: int = 0) -> int:
    """Rows per block so that a ``(b, m)`` similarity block and a ``(b, T)`` code block fit the budget."""
    return int(max(16, min(8192, _BLOCK_BYTES // (4 * max(1, m + t)))))


def cosine_blocks(
    A: Float[Tensor, "n d"], B: Float[Tensor, "m d"], block: int | None = None
) -> Iterator[tuple[int, Float[Tensor, "b m"]]]:
    """Yield ``(i0, A[i0:i0+b] @ B.T)`` for unit-row ``A`` and ``B`` (cosine similarity blocks)."""
    if A.shape[1] != B.shape[1]:
        raise MatchError(
            f"feature directions live in different spaces (width {A.shape[1]} vs {B.shape[1]})",
            "compare them with view='activations' on shared tokens, or with method='gw'",
        )
    B = B.to(A.device, A.dtype)
    block = block or default_block(B.shape[0])
    for i0 in range(0, A.shape[0], block):
        yield i0, A[i0 : i0 + block] @ B.T


def check_codes(ca: FeatureCodes, cb: FeatureCodes) -> None:
    if ca.fingerprint != cb.fingerprint or ca.n_tokens != cb.n_tokens:
        raise MatchError(
            f"activation codes come from different tokens (fingerprints {ca.fingerprint} vs {cb.fingerprint}, "
            f"{ca.n_tokens} vs {cb.n_tokens} tokens)",
            "encode the same token ids with both dictionaries (pass the same token_ids to encode_codes)",
        )


def gram_blocks(ca: FeatureCodes, cb: FeatureCodes, block: int | None, binary: bool) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(i0, codes_a[i0:i1] @ codes_b.T)`` with ``codes_b`` kept sparse."""
    check_codes(ca, cb)
    B = cb.binary().codes if binary else cb.codes
    block = block or default_block(cb.n, ca.n_tokens)
    for i0 in range(0, ca.n, block):
        i1 = min(ca.n, i0 + block)
        Ablk = ca.rows(i0, i1, binary=binary).to(B.device)  # (b, T) dense
        yield i0, (B @ Ablk.T).T  # sparse (m, T) @ dense (T, b) -> (m, b) -> (b, m)


def code_moments(c: FeatureCodes) -> tuple[Tensor, Tensor]:
    """Per-feature mean and population variance of the codes in float64, two-pass (centred) over the
    stored non-zeros: :math:`\\mu_i = \\tfrac1T \\sum_t z_{it}`,
    :math:`\\sigma^2_i = \\tfrac1T \\big(\\sum_{t:\\,z_{it} \\ne 0} (z_{it} - \\mu_i)^2 + (T - \\mathrm{nnz}_i)\\,\\mu_i^2\\big)`."""
    crow = c.codes.crow_indices()
    vals = c.codes.values().double()
    counts = crow[1:] - crow[:-1]
    row_of = torch.repeat_interleave(torch.arange(c.n, device=vals.device), counts)
    T = max(c.n_tokens, 1)
    mean = torch.zeros(c.n, dtype=torch.float64, device=vals.device).index_add_(0, row_of, vals) / T
    dev2 = torch.zeros(c.n, dtype=torch.float64, device=vals.device).index_add_(0, row_of, (vals - mean[row_of]) ** 2)
    var = (dev2 + (T - counts.to(torch.float64)) * mean * mean) / T
    return mean, var


def _constant(mean: Tensor, var: Tensor) -> Tensor:
    return var <= CONSTANT_RTOL**2 * (var + mean * mean)


def constant_features(c: FeatureCodes) -> Tensor:
    """Boolean ``(n,)``: the features that are constant on the tokens (:data:`CONSTANT_RTOL`); a feature
    that never fires is constant. Such *dead* features have no correlation with anything."""
    return _constant(*code_moments(c)).cpu()


def covariance_blocks(ca: FeatureCodes, cb: FeatureCodes, block: int | None = None) -> Iterator[tuple[int, Tensor]]:
    """Yield float64 covariance blocks ``(i0, C[i0:i1, :])``, :math:`C_{ij} = \\tfrac1T \\sum_t (a_{it} - \\mu_i)(b_{jt} - \\mu_j)`.

    Accumulated centred in float64, never as :math:`E[ab] - E[a]E[b]` (which cancels catastrophically
    for codes whose mean is large against their spread): each dense row block of ``a`` is centred,
    :math:`\\tilde a = a - \\mu^a`, and multiplied with ``b``'s sparse codes; since
    :math:`\\sum_t \\tilde a_{it} (b_{jt} - \\mu^b_j) = \\sum_t \\tilde a_{it} b_{jt} - \\mu^b_j \\sum_t \\tilde a_{it}`, the
    rounding residue :math:`\\sum_t \\tilde a_{it}` of the centring is subtracted as well."""
    check_codes(ca, cb)
    T = ca.n_tokens
    B = cb.codes.to(torch.float64)
    mb, _ = code_moments(cb)
    block = block or max(16, default_block(cb.n, ca.n_tokens) // 2)  # float64: half the rows per block
    for i0 in range(0, ca.n, block):
        i1 = min(ca.n, i0 + block)
        A = ca.rows(i0, i1).to(B.device, torch.float64)  # (b, T) dense
        A = A - A.mean(1, keepdim=True)
        resid = A.sum(1)
        yield i0, ((B @ A.T).T - resid[:, None] * mb[None, :].to(A.device)) / T


def pearson_blocks(ca: FeatureCodes, cb: FeatureCodes, block: int | None = None) -> Iterator[tuple[int, Tensor]]:
    """Yield Pearson-correlation blocks ``(i0, rho[i0:i1, :])`` of two code sets on the same tokens (float32;
    covariances from :func:`covariance_blocks`, 0 where either feature is constant)."""
    mb, vb = code_moments(cb)
    sb, const_b = vb.sqrt(), _constant(mb, vb)
    ma_all, va_all = code_moments(ca)
    for i0, cov in covariance_blocks(ca, cb, block):
        i1 = i0 + cov.shape[0]
        ma, va = ma_all[i0:i1].to(cov.device), va_all[i0:i1].to(cov.device)
        live = ~_constant(ma, va)[:, None] & ~const_b.to(cov.device)[None, :]
        denom = va.sqrt()[:, None] * sb.to(cov.device)[None, :]
        rho = torch.where(live, cov / torch.where(live, denom, torch.ones_like(denom)), torch.zeros_like(cov))
        yield i0, rho.clamp(-1, 1).float()


def jaccard_blocks(ca: FeatureCodes, cb: FeatureCodes, block: int | None = None) -> Iterator[tuple[int, Tensor]]:
    """Yield Jaccard-index blocks of the two code sets' firing sets."""
    nb = cb.nnz.to(cb.codes.device).float()
    for i0, inter in gram_blocks(ca, cb, block, binary=True):
        na = ca.nnz[i0 : i0 + inter.shape[0]].to(inter.device).float()
        union = na[:, None] + nb[None, :] - inter
        yield i0, torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))


def similarity_blocks(a: Any, b: Any, kind: str, block: int | None = None) -> Iterator[tuple[int, Tensor]]:
    """Dispatch: ``'cosine'`` on direction tensors, ``'pearson'``/``'jaccard'`` on :class:`FeatureCodes`."""
    if kind == "cosine":
        return cosine_blocks(a, b, block)
    if not isinstance(a, FeatureCodes) or not isinstance(b, FeatureCodes):
        raise MatchError(f"similarity {kind!r} needs FeatureCodes for both sides", "build them with encode_codes")
    if kind == "pearson":
        return pearson_blocks(a, b, block)
    if kind == "jaccard":
        return jaccard_blocks(a, b, block)
    raise MatchError(f"unknown similarity {kind!r}", f"use one of {SIMILARITIES}")


def dense_similarity(a: Any, b: Any, kind: str = "cosine", block: int | None = None) -> Float[Tensor, "n m"]:
    """The whole ``(n, m)`` similarity matrix (only for sizes where that fits in memory)."""
    parts = [blk for _, blk in similarity_blocks(a, b, kind, block)]
    n_b = b.shape[0] if isinstance(b, Tensor) else b.n
    return torch.cat(parts) if parts else torch.zeros(0, n_b)


@dataclass(frozen=True)
class TopK:
    """Top-k partners of every row of ``a`` in ``b`` and of every column (feature of ``b``) in ``a``.

    ``row_values``/``row_indices`` are ``(n, k)`` (best first); ``col_values``/``col_indices`` are ``(m, k)``.
    The maximum over ``b`` of row ``i`` is ``row_values[i, 0]`` (e.g. MPPC when the kind is Pearson).
    """

    row_values: Float[Tensor, "n k"]
    row_indices: Int[Tensor, "n k"]
    col_values: Float[Tensor, "m k"]
    col_indices: Int[Tensor, "m k"]

    @property
    def n(self) -> int:
        return int(self.row_values.shape[0])

    @property
    def m(self) -> int:
        return int(self.col_values.shape[0])


def topk_partners(
    a: Any,
    b: Any,
    kind: str = "cosine",
    k: int = 8,
    block: int | None = None,
    blocks: Callable[[], Iterator[tuple[int, Tensor]]] | None = None,
    progress: bool = True,
) -> TopK:
    """Stream similarity blocks and keep the top-``k`` partners per row and per column.

    Memory is ``O((n + m) k + block * m)``; the column top-k is merged block by block
    (concatenate the running ``(k, m)`` best with the block's ``(k, m)`` best, keep the top ``k``).
    """
    it = blocks() if blocks is not None else similarity_blocks(a, b, kind, block)
    n = a.shape[0] if isinstance(a, Tensor) else a.n
    m = b.shape[0] if isinstance(b, Tensor) else b.n
    kr, kc = min(k, m), min(k, n)
    rv, ri = [], []
    cv = ci = None
    bar = progress_bar(desc=f"top-{k} {kind}", total=n, leave=False, progress=progress)
    for i0, S in it:
        v, j = S.topk(kr, dim=1)
        rv.append(v.cpu())
        ri.append(j.cpu())
        # column top-k on a transposed contiguous copy: a strided top-k along dim 0 is several times slower
        bv, bi = S.T.contiguous().topk(min(kc, S.shape[0]), dim=1)  # (m, k)
        bi = bi + i0
        if cv is not None:
            bv, idx = torch.cat([cv, bv], 1).topk(min(kc, cv.shape[1] + bv.shape[1]), dim=1)
            bi = torch.gather(torch.cat([ci, bi], 1), 1, idx)
        cv, ci = bv, bi
        bar.update(S.shape[0])
    bar.close()
    if cv is None:
        raise MatchError("a dictionary has no features", "pass non-empty dictionaries")
    return TopK(torch.cat(rv), torch.cat(ri), cv.cpu(), ci.cpu())

"""FROZEN REFERENCE - do not edit: ``universality/match/api.py`` as it was before the matcher registry.

Loaded by ``tests/match/test_refactor_equivalence.py`` to check that the registry-based :func:`match`
gives bitwise the same results; delete both once the old implementation is no longer a useful reference.

Original docstring: Public API: :func:`match` one pair of dictionaries with one method in one view."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from universality.errors import ConfigError, DataError, MatchError
from universality.match import assignment as asg
from universality.match import transport as tr
from universality.match.result import MatchResult
from universality.match.similarity import check_codes as _check_codes, dense_similarity, topk_partners
from universality.match.views import VIEWS, FeatureCodes, directions, encode_codes, token_fingerprint

__all__ = ["METHODS", "match", "resolve_view", "check_activations"]

METHODS = ("hungarian", "sparse", "mnn", "many_to_one", "emd", "sinkhorn", "unbalanced", "partial", "gw", "fgw")
_WEIGHT_OK_ACROSS_WIDTHS = ("gw",)


def _pair(x: Any) -> tuple[Any, Any]:
    if isinstance(x, (tuple, list)) and len(x) == 2:
        return x[0], x[1]
    return x, x


def _rows(x: Any, what: str) -> int:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise DataError(f"{what} must be a (tokens, d) tensor, got {type(x).__name__}", "pass a torch tensor of activations")
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"{what} must be a non-empty (tokens, d) tensor, got shape {tuple(x.shape)}",
                        "flatten (batch, pos, d) activations to (batch*pos, d) and drop empty sets")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).any(dim=1).sum())
        raise DataError(f"{what} hold NaN or Inf in {bad} of {x.shape[0]} rows",
                        "drop or fix those rows (check the model's dtype / overflow) before matching")
    return int(x.shape[0])


def check_activations(
    activations: Float[Tensor, "T d"] | tuple[Float[Tensor, "T d_a"], Float[Tensor, "T d_b"]],
    token_ids: Int[Tensor, " T"] | tuple[Int[Tensor, " T"], Int[Tensor, " T"]] | None = None,
) -> None:
    """Validate the inputs of the activation view before any encoding.

    ``activations`` is one ``(T, d)`` tensor or a pair ``(x_a, x_b)``: each must be 2-D, non-empty and
    finite (:class:`DataError` otherwise). Both sides must be the same tokens: the same row count, and
    when ``token_ids`` are given (one sequence or a pair), one id per row and equal fingerprints
    (:func:`~universality.match.views.token_fingerprint`); otherwise :class:`MatchError`.
    """
    xa, xb = _pair(activations)
    na = _rows(xa, "activations" if xb is xa else "activations of a")
    nb = na if xb is xa else _rows(xb, "activations of b")
    if na != nb:
        raise MatchError(f"activations of a and b come from different tokens ({na} vs {nb} rows)",
                         "harvest both models on the same token ids (see universality.data.alignment for different tokenizers)")
    if token_ids is None:
        return
    ta, tb = _pair(token_ids)
    for side, t, n in (("a", ta, na), ("b", tb, nb)):
        if t is None:
            continue
        count = int(np.asarray(t.detach().cpu() if isinstance(t, Tensor) else t).reshape(-1).shape[0])
        if count != n:
            raise MatchError(f"{n} activation rows of {side} but {count} token ids", "give one token id per activation row")
    if ta is not None and tb is not None and tb is not ta and token_fingerprint(ta) != token_fingerprint(tb):
        raise MatchError(
            f"activations of a and b come from different tokens (token fingerprints {token_fingerprint(ta)} vs "
            f"{token_fingerprint(tb)})",
            "encode the same token ids with both dictionaries (same dataset, subset, packing and tokenizer)",
        )


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_view(
    a: Any, b: Any, view: str, activations: Any = None, token_ids: Any = None, device: Any = None
) -> tuple[Any, Any, str]:
    """Turn two dictionaries into comparable objects for ``view``: unit-direction tensors (cosine) or
    :class:`FeatureCodes` on shared tokens (Pearson). Returns ``(a_view, b_view, similarity_kind)``."""
    if view not in VIEWS:
        raise MatchError(f"unknown view {view!r}", f"use one of {VIEWS}")
    dev = torch.device(device) if device is not None else _default_device()
    if view in ("decoder", "encoder"):
        return directions(a, view).to(dev), directions(b, view).to(dev), "cosine"
    ca, cb = a, b
    if not isinstance(a, FeatureCodes) or not isinstance(b, FeatureCodes):
        if activations is None:
            raise MatchError(
                "view='activations' needs codes on shared tokens",
                "pass activations=x (or (x_a, x_b) for two models) and token_ids, or FeatureCodes for a and b",
            )
        check_activations(activations, token_ids)
        xa, xb = _pair(activations)
        ta, tb = _pair(token_ids)
        ca = a if isinstance(a, FeatureCodes) else encode_codes(a, xa, ta)
        cb = b if isinstance(b, FeatureCodes) else encode_codes(b, xb, tb)
    _check_codes(ca, cb)
    return ca.to(dev), cb.to(dev), "pearson"


def _size(x: Any) -> int:
    return int(x.shape[0]) if isinstance(x, Tensor) else x.n


def _within_cost(x: Any, kind: str) -> Tensor:
    return 1.0 - dense_similarity(x, x, kind)


def _subset(x: Any, idx: Tensor) -> Any:
    return x[idx.to(x.device)] if isinstance(x, Tensor) else x.subset(idx)


def match(
    a: Any,
    b: Any,
    method: str = "hungarian",
    view: str = "decoder",
    *,
    activations: Any = None,
    token_ids: Any = None,
    similarity: str | None = None,
    k: int = 16,
    threshold: float = 0.5,
    reg: float | None = None,
    reg_m: float = 0.1,
    mass: float = 0.5,
    alpha: float = 0.5,
    n_max: int = 2000,
    reduce: str = "kmeans",
    exact_limit: int = 2048 * 2048,
    block: int | None = None,
    device: Any = None,
) -> MatchResult:
    """Match the features of dictionary ``a`` to those of ``b``.

    Args:
        a, b: dictionaries (objects with ``W_dec``/``W_enc``/``encode``, or ``(n, d)`` direction tensors), or
            :class:`FeatureCodes` for ``view='activations'``.
        method: one of :data:`METHODS` - ``hungarian`` (exact one-to-one), ``sparse`` (top-``k`` candidate
            graph, reports ``optimality_gap`` when ``n*m <= exact_limit``), ``mnn`` (mutual nearest
            neighbours), ``many_to_one`` (each ``b`` feature to its best ``a`` feature above ``threshold``;
            splits in ``meta['groups']``), ``emd``, ``sinkhorn`` (``reg`` default 0.01), ``unbalanced`` (``reg`` default 0.02,
            ``reg_m``; its mass is uncalibrated, see ``transport.calibrated_mass``),
            ``partial`` (``mass``), ``gw`` (within-dictionary structure only; works
            across widths; dictionaries above ``n_max`` are reduced by ``reduce`` = kmeans | subsample),
            ``fgw`` (GW plus cross cost, weight ``alpha`` on structure).
        view: ``decoder`` | ``encoder`` (cosine of unit directions) | ``activations`` (Pearson correlation
            of codes over shared tokens; ``similarity='jaccard'`` for firing-set overlap).
        activations, token_ids: inputs for the activation view - one tensor for both dictionaries or a pair
            ``(x_a, x_b)`` when they read different models; token ids fingerprint the token set.

    Returns:
        :class:`MatchResult` with ``meta['view']``, ``meta['method']`` and ``meta['params']``.
    """
    if method not in METHODS:
        raise MatchError(f"unknown method {method!r}", f"use one of {METHODS}")
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}", "use e.g. k=16")
    av, bv, kind = resolve_view(a, b, view, activations, token_ids, device)
    if similarity is not None:
        if view != "activations" or similarity not in ("pearson", "jaccard"):
            raise MatchError(f"similarity={similarity!r} does not apply to view={view!r}",
                             "use similarity='pearson' or 'jaccard' with view='activations'")
        kind = similarity
    if kind == "cosine" and av.shape[1] != bv.shape[1] and method not in _WEIGHT_OK_ACROSS_WIDTHS:
        raise MatchError(
            f"{view} directions have different widths ({av.shape[1]} vs {bv.shape[1]}), so {method!r} cannot "
            "compare them",
            "use view='activations' on shared tokens, or method='gw' which needs no shared space",
        )
    params = {"k": k, "threshold": threshold, "reg": reg, "reg_m": reg_m, "mass": mass, "alpha": alpha,
              "n_max": n_max, "reduce": reduce}
    n, m = _size(av), _size(bv)
    base_meta = {"view": view, "similarity": kind}

    if method in ("sparse", "mnn", "many_to_one"):
        tk = topk_partners(av, bv, kind, k=k, block=block)
        if method == "mnn":
            res = asg.mutual_nearest_neighbours(tk, threshold=-np.inf if threshold is None else threshold)
        elif method == "many_to_one":
            res = asg.many_to_one(tk, threshold=threshold)
        else:
            def complete(r: Tensor, c: Tensor) -> Tensor:
                return dense_similarity(_subset(av, r), _subset(bv, c), kind, block)

            exact = dense_similarity(av, bv, kind, block) if n * m <= exact_limit else None
            res = asg.sparse_assignment(tk, complete=complete, exact=exact)
    elif method == "hungarian":
        res = asg.hungarian(dense_similarity(av, bv, kind, block))
    elif method in ("emd", "sinkhorn", "unbalanced", "partial"):
        S = dense_similarity(av, bv, kind, block)
        res = {
            "emd": lambda: tr.emd_match(S),
            "sinkhorn": lambda: tr.sinkhorn_match(S, 0.01 if reg is None else reg),
            "unbalanced": lambda: tr.unbalanced_match(S, 0.02 if reg is None else reg, reg_m),
            "partial": lambda: tr.partial_match(S, mass),
        }[method]()
    else:  # gw / fgw
        ia, la = _reduce(av, n_max, reduce)
        ib, lb = _reduce(bv, n_max, reduce)
        ra, rb = _subset(av, ia), _subset(bv, ib)
        Ca, Cb = _within_cost(ra, kind), _within_cost(rb, kind)
        same_space = not (kind == "cosine" and ra.shape[1] != rb.shape[1])
        S_cross = dense_similarity(ra, rb, kind) if same_space else None
        if method == "gw":
            res = tr.gw_match(Ca, Cb, S_cross)
        else:
            if S_cross is None:
                raise MatchError("fgw needs a cross similarity but the directions have different widths",
                                 "use view='activations' for fgw, or method='gw'")
            res = tr.fgw_match(1.0 - S_cross, Ca, Cb, alpha)
        ia_np, ib_np = ia.cpu().numpy(), ib.cpu().numpy()
        pairs = np.stack([ia_np[res.pairs[:, 0]], ib_np[res.pairs[:, 1]]], 1) if len(res) else res.pairs
        res = MatchResult(pairs, res.scores, res.plan, res.value,
                          {**res.meta, "reduced": bool(len(ia) < n or len(ib) < m), "index_a": ia_np.tolist(),
                           "index_b": ib_np.tolist(), "labels_a": la.cpu().numpy().tolist(),
                           "labels_b": lb.cpu().numpy().tolist(), "scored_by": "similarity" if same_space else
                           "plan mass x n (no shared space)"})
    meta = {**res.meta, **base_meta, "method": method, "n_a": n, "n_b": m,
            "params": {**params, **res.meta.get("params", {})}}
    return MatchResult(res.pairs, res.scores, res.plan, res.value, meta)


def _reduce(x: Any, n_max: int, how: str) -> tuple[Tensor, Tensor]:
    if isinstance(x, Tensor):
        return tr.reduce_features(x.cpu(), n_max, how)
    return tr.reduce_features(torch.zeros(x.n, 1), n_max, "subsample")  # codes: subsample only

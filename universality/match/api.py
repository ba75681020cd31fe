"""Public API: :func:`match` one pair of dictionaries with one method in one view.

This module turns two dictionaries into one view (:func:`resolve_view`, :func:`check_activations`) and
dispatches to the method registered under ``method`` (:mod:`universality.match.registry`; the built-in
methods, each with its options dataclass, are in :mod:`universality.match.methods`)."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from universality.errors import DataError, MatchError
from universality.match.methods import n_features
from universality.match.registry import Matcher, get_matcher, methods
from universality.match.result import SELF_MATCH_NOTE, MatchResult
from universality.match.similarity import check_codes
from universality.match.views import VIEWS, FeatureCodes, directions, encode_codes, token_fingerprint
from universality.sae.identity import shared_initialisation

__all__ = ["METHODS", "match", "resolve_view", "check_activations", "as_pair"]

METHODS = methods()  # the built-in methods, in their documented order


def as_pair(x: Any) -> tuple[Any, Any]:
    """``(x[0], x[1])`` for a pair (tuple or list of two), else ``(x, x)``: one input shared by both sides."""
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
    xa, xb = as_pair(activations)
    na = _rows(xa, "activations" if xb is xa else "activations of a")
    nb = na if xb is xa else _rows(xb, "activations of b")
    if na != nb:
        raise MatchError(f"activations of a and b come from different tokens ({na} vs {nb} rows)",
                         "harvest both models on the same token ids (see universality.data.alignment for different tokenizers)")
    if token_ids is None:
        return
    ta, tb = as_pair(token_ids)
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
        xa, xb = as_pair(activations)
        ta, tb = as_pair(token_ids)
        ca = a if isinstance(a, FeatureCodes) else encode_codes(a, xa, ta)
        cb = b if isinstance(b, FeatureCodes) else encode_codes(b, xb, tb)
    check_codes(ca, cb)
    return ca.to(dev), cb.to(dev), "pearson"


def _similarity_kind(view: str, kind: str, similarity: str | None) -> str:
    """The similarity of ``view`` (``kind``), or the one asked for - ``jaccard``/``pearson`` on codes only."""
    if similarity is None:
        return kind
    if view != "activations" or similarity not in ("pearson", "jaccard"):
        raise MatchError(f"similarity={similarity!r} does not apply to view={view!r}",
                         "use similarity='pearson' or 'jaccard' with view='activations'")
    return similarity


def _check_shared_space(a: Any, b: Any, kind: str, view: str, matcher: Matcher) -> None:
    """Cosines of directions of different widths mean nothing: only a matcher that needs no shared space
    (``across_widths``, i.e. ``gw``) may take them."""
    if kind == "cosine" and a.shape[1] != b.shape[1] and not matcher.across_widths:
        raise MatchError(
            f"{view} directions have different widths ({a.shape[1]} vs {b.shape[1]}), so {matcher.name!r} cannot "
            "compare them",
            "use view='activations' on shared tokens, or method='gw' which needs no shared space",
        )


def _described(res: MatchResult, matcher: Matcher, options: Any, view: str, kind: str, n: int, m: int) -> MatchResult:
    """``res`` with the provenance every result carries: view, similarity, method, sizes and ``params`` (the
    method's options, overridden by what the solver reports it used)."""
    params = {**dataclasses.asdict(options), **res.meta.get("params", {})}
    meta = {**res.meta, "view": view, "similarity": kind, "method": matcher.name, "n_a": n, "n_b": m,
            "params": params}
    return MatchResult(res.pairs, res.scores, res.plan, res.value, meta)


def match(
    a: Any,
    b: Any,
    method: str = "hungarian",
    view: str = "decoder",
    *,
    activations: Any = None,
    token_ids: Any = None,
    similarity: str | None = None,
    device: Any = None,
    **options: Any,
) -> MatchResult:
    """Match the features of dictionary ``a`` to those of ``b`` with one registered method in one view.

    The method is looked up in the matcher registry (:mod:`universality.match.registry`); ``options`` are
    that method's own options, validated by its options dataclass - an option it does not take is a one-line
    :class:`ConfigError` naming the ones it does:

    =============== ======================================= ==============================================
    method          solves                                  options (defaults)
    =============== ======================================= ==============================================
    ``hungarian``   exact max-similarity one-to-one         ``block``
    ``sparse``      one-to-one on the top-``k`` graph;      ``k=16``, ``exact_limit=2048*2048``, ``block``
                    ``meta['optimality_gap']``
    ``mnn``         mutual nearest neighbours               ``k=16``, ``threshold=0.5``, ``block``
    ``many_to_one`` each ``b`` feature to its best ``a``;   ``k=16``, ``threshold=0.5``, ``block``
                    splits in ``meta['groups']``
    ``emd``         exact OT, cost ``1 - S``                ``block``
    ``sinkhorn``    entropic OT                             ``reg=0.01``, ``block``
    ``unbalanced``  KL-relaxed entropic OT (uncalibrated    ``reg=0.02``, ``reg_m=0.1``, ``block``
                    mass, see ``transport.calibrated_mass``)
    ``partial``     OT moving exactly ``mass``              ``mass=0.5``, ``block``
    ``gw``          Gromov-Wasserstein on within costs;     ``n_max=2000``, ``reduce='kmeans'``
                    works across widths
    ``fgw``         fused GW (``alpha`` on structure)       ``alpha=0.5``, ``n_max=2000``,
                                                            ``reduce='kmeans'``
    =============== ======================================= ==============================================

    The math and references of each are in the docstrings of :mod:`universality.match.methods`.

    Args:
        a, b: dictionaries (objects with ``W_dec``/``W_enc``/``encode``, or ``(n, d)`` direction tensors), or
            :class:`FeatureCodes` for ``view='activations'``.
        method: a registered method name (:func:`~universality.match.registry.methods`).
        view: ``decoder`` | ``encoder`` (cosine of unit directions) | ``activations`` (Pearson correlation
            of codes over shared tokens; ``similarity='jaccard'`` for firing-set overlap).
        activations, token_ids: inputs for the activation view - one tensor for both dictionaries or a pair
            ``(x_a, x_b)`` when they read different models; token ids fingerprint the token set.
        device: where similarities are computed (default: CUDA when available).
        **options: the method's options (table above).

    Returns:
        :class:`MatchResult` with ``meta['view']``, ``meta['similarity']``, ``meta['method']``,
        ``meta['n_a']``, ``meta['n_b']`` and ``meta['params']`` (the method's options as used);
        ``meta['note']`` says when ``a`` and ``b`` are the same dictionary (the same object or identical
        features), ``value_meaning`` what ``value`` is for the method, and ``meta['shared_initialisation']``
        (also a warning) when two different dictionaries started from the same initial weights
        (:func:`~universality.sae.identity.shared_initialisation`), which inflates their similarity.
    """
    matcher = get_matcher(method)
    opts = matcher.make_options(**options)
    av, bv, kind = resolve_view(a, b, view, activations, token_ids, device)
    kind = _similarity_kind(view, kind, similarity)
    _check_shared_space(av, bv, kind, view, matcher)
    res = _described(matcher.solve(av, bv, kind, opts), matcher, opts, view, kind, n_features(av), n_features(bv))
    if a is b or _same_features(av, bv):
        res = MatchResult(res.pairs, res.scores, res.plan, res.value, {**res.meta, "note": SELF_MATCH_NOTE})
    shared = None if a is b else shared_initialisation(a, b)
    if shared is not None:
        warnings.warn(shared, stacklevel=2)
        res = MatchResult(res.pairs, res.scores, res.plan, res.value, {**res.meta, "shared_initialisation": shared})
    return res


def _same_features(av: Any, bv: Any) -> bool:
    """The two views hold identical features: equal direction tensors, or equal codes on the same tokens."""
    if isinstance(av, Tensor) and isinstance(bv, Tensor):
        return av.shape == bv.shape and bool(torch.equal(av, bv.to(av.device)))
    if isinstance(av, FeatureCodes) and isinstance(bv, FeatureCodes):
        ca, cb = av.codes, bv.codes.to(av.codes.device)
        return (av.fingerprint == bv.fingerprint and ca.shape == cb.shape and ca.values().shape == cb.values().shape
                and all(bool(torch.equal(x, y)) for x, y in ((ca.crow_indices(), cb.crow_indices()),
                                                             (ca.col_indices(), cb.col_indices()),
                                                             (ca.values(), cb.values()))))
    return False

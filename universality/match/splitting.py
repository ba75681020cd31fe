"""Feature splitting across dictionary widths, and recovery of a reference dictionary by narrower ones.

Dictionaries of one site trained at growing widths (e.g. 2x, 4x, 8x, 16x expansion) are compared step by
step, ``w -> w'`` (small -> wide), by Pearson correlation of their codes on the same tokens
(:func:`~universality.match.similarity.topk_partners`, kind ``pearson``). With a threshold :math:`t`:

- the **parent** of a wide latent ``j`` is its best-correlated small latent,
  :math:`\\pi(j) = \\arg\\max_i \\rho(z^{w}_i, z^{w'}_j)`; ``j`` is a **child** of :math:`\\pi(j)` when
  :math:`\\rho \\ge t`, **new** otherwise, **dead** when it is constant on the tokens;
- each small latent ``i`` with children :math:`J_i` is fitted as a non-negative sum of their codes,
  :math:`\\hat z_i = \\sum_{j \\in J_i} w_j z_j` with :math:`w \\ge 0` (non-negative least squares, no
  intercept), scored by :math:`R^2 = 1 - \\sum_t (z_{it} - \\hat z_{it})^2 / \\sum_t (z_{it} - \\bar z_i)^2`;
- a parent **stays** (one child, :math:`R^2 \\ge r`), **splits** (two or more children, :math:`R^2 \\ge r`),
  **vanishes** (no child), is **unresolved** (children that do not reconstruct it, :math:`R^2 < r`) or
  **dead** (constant on the tokens).

Every child has exactly one parent, so merges (one wide latent absorbing several small ones) show up as a
stay of one parent and the vanishing of the others; :func:`~universality.match.lineage.lineage` reports
merges explicitly.

**Within the manifold.** A split parent ``i`` with children :math:`J_i` either divides its own subspace or
opens new directions. For each child ``j`` the score is the share of its unit decoder direction inside the
span of the parent's decoder and its siblings' decoders,
:math:`s_j = \\lVert P_{\\mathrm{span}(d_i,\\, d_k : k \\in J_i \\setminus j)}\\, \\hat d_j \\rVert \\in [0, 1]`:
1 when the child is a combination of the parent and its siblings (the family's plane), about
:math:`\\sqrt{|J_i| / d}` for a direction unrelated to the family. The control applies the same subspaces to
other live wide latents (not in the family), so the two numbers are read side by side.

:func:`width_recovery` asks the converse question (issue 16 item 5, can smaller dictionaries find a
reference dictionary's features): per width, the share of the reference's live latents whose best
partner correlates at least :math:`t`, against the same share on token-shuffled codes (the chance floor).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from jaxtyping import Float
from scipy.optimize import nnls
from torch import Tensor

from universality.errors import ConfigError, DataError, MatchError
from universality.match.api import check_activations
from universality.match.baselines import shuffle_tokens
from universality.match.similarity import check_codes, code_moments, constant_features, topk_partners
from universality.match.views import FeatureCodes, decoder_directions, encode_codes

__all__ = [
    "PARENT_STATUSES",
    "CHILD_STATUSES",
    "SplitConfig",
    "WidthLineage",
    "split_step",
    "width_lineage",
    "within_span",
    "width_recovery",
]

PARENT_STATUSES = ("stays", "splits", "vanishes", "unresolved", "dead")
CHILD_STATUSES = ("child", "new", "dead")


@dataclass(frozen=True)
class SplitConfig:
    """``threshold``: least correlation of a child with its parent; ``r2``: least :math:`R^2` of the parent's
    code from its children's (stays / splits); ``control_samples``: unrelated wide latents per child for the
    within-span control, drawn with ``seed``."""

    threshold: float = 0.3
    r2: float = 0.6
    control_samples: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold}", "use e.g. threshold=0.3")
        if not 0.0 < self.r2 <= 1.0:
            raise ConfigError(f"r2 must be in (0, 1], got {self.r2}", "use e.g. r2=0.6")
        if self.control_samples < 1:
            raise ConfigError(f"control_samples must be >= 1, got {self.control_samples}", "use e.g. 32")


@dataclass(frozen=True)
class WidthLineage:
    """``parents``: one row per small latent and step (step, parent, status, n_children, children, weights,
    r2, best_child_r2, max_corr, within_span, control); ``children``: one row per wide latent and step
    (step, latent, status, parent, corr, within_span, parent_cosine); ``labels``: the widths, small to large."""

    parents: pd.DataFrame
    children: pd.DataFrame
    labels: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def steps(self) -> list[str]:
        return [f"{a}->{b}" for a, b in zip(self.labels, self.labels[1:])]

    def counts(self) -> pd.DataFrame:
        """Per step: parents that stay / split / vanish / are unresolved / dead, and wide latents that are
        new or dead (columns in that order, steps in width order)."""
        p = self.parents.pivot_table(index="step", columns="status", values="parent", aggfunc="size", fill_value=0)
        c = self.children[self.children["status"] != "child"].pivot_table(
            index="step", columns="status", values="latent", aggfunc="size", fill_value=0)
        c = c.rename(columns={"dead": "dead_children"})
        p = p.rename(columns={"dead": "dead_parents"})
        cols = ["stays", "splits", "vanishes", "unresolved", "dead_parents", "new", "dead_children"]
        out = pd.concat([p, c], axis=1).reindex(index=self.steps(), columns=cols).fillna(0).astype(np.int64)
        out.index.name = "step"
        return out

    def children_per_split(self) -> pd.DataFrame:
        """Split parents per number of children, per step (columns step, n_children, parents)."""
        s = self.parents[self.parents["status"] == "splits"]
        out = s.groupby(["step", "n_children"]).size().rename("parents").reset_index()
        return out.astype({"n_children": np.int64, "parents": np.int64})


def _as_codes(x: Any, activations: Any, token_ids: Any, what: str) -> FeatureCodes:
    if isinstance(x, FeatureCodes):
        return x
    if activations is None:
        raise MatchError(f"{what} is a dictionary but no activations were given",
                         "pass activations (tokens, d) and token_ids, or FeatureCodes for every width")
    return encode_codes(x, activations, token_ids)


def _decoder(x: Any) -> Tensor | None:
    if isinstance(x, FeatureCodes):
        return None
    return decoder_directions(x).detach().float().cpu()


def _scipy(c: FeatureCodes) -> sp.csr_matrix:
    m = c.codes.cpu()
    return sp.csr_matrix((m.values().double().numpy(), m.col_indices().numpy(), m.crow_indices().numpy()),
                         shape=tuple(m.shape))


def _nnls_r2(parent: sp.csr_matrix, kids: sp.csr_matrix, ss_tot: float) -> tuple[float, np.ndarray]:
    """``(R^2, weights)`` of the non-negative fit of one parent row from the children's rows (no intercept),
    on the union of their supports (elsewhere both sides are 0, so the residual is 0 there too)."""
    support = np.union1d(parent.indices, kids.indices)
    if ss_tot <= 0 or support.size == 0:
        return float("nan"), np.zeros(kids.shape[0])
    b = parent[:, support].toarray().ravel()
    A = kids[:, support].toarray().T
    w, res = nnls(A, b)
    return float(1.0 - res * res / ss_tot), w


def within_span(
    child: Float[Tensor, " d"], parent: Float[Tensor, " d"], siblings: Float[Tensor, "k d"]
) -> float:
    """Norm of the projection of the unit ``child`` direction on ``span(parent, siblings)`` (in ``[0, 1]``)."""
    basis = torch.cat([parent[None], siblings]).double()
    u, s, _ = torch.linalg.svd(basis.T, full_matrices=False)
    q = u[:, s > s.max() * 1e-6]
    c = child.double() / child.double().norm().clamp_min(1e-12)
    return float((q.T @ c).norm().clamp(max=1.0))


def _span_scores(i: int, kids: list[int], dec_s: Tensor, dec_w: Tensor, pool: np.ndarray,
                 cfg: SplitConfig, rng: np.random.Generator) -> tuple[list[float], float]:
    """Within-span score of every child of parent ``i`` and the control: the same subspaces applied to
    ``control_samples`` latents drawn from ``pool`` (live wide latents outside the family)."""
    scores, ctrl = [], []
    draw = rng.choice(pool, size=min(cfg.control_samples, pool.size), replace=False) if pool.size else pool
    for j in kids:
        sib = dec_w[[k for k in kids if k != j]]
        scores.append(within_span(dec_w[j], dec_s[i], sib))
        ctrl += [within_span(dec_w[int(c)], dec_s[i], sib) for c in draw]
    return scores, float(np.mean(ctrl)) if ctrl else float("nan")


def split_step(
    small: FeatureCodes,
    wide: FeatureCodes,
    step: str = "small->wide",
    decoders: tuple[Tensor, Tensor] | None = None,
    config: SplitConfig | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One width step: the ``(parents, children)`` tables of :class:`WidthLineage` for codes ``small`` and
    ``wide`` on the same tokens; ``decoders`` (unit rows ``(n, d)`` and ``(m, d)``, same space) add the
    within-span scores (NaN without them)."""
    cfg = config or SplitConfig()
    check_codes(small, wide)
    if decoders is not None and (decoders[0].shape[0] != small.n or decoders[1].shape[0] != wide.n
                                 or decoders[0].shape[1] != decoders[1].shape[1]):
        raise DataError(f"decoders {tuple(decoders[0].shape)} and {tuple(decoders[1].shape)} do not fit codes of "
                        f"{small.n} and {wide.n} latents in one space", "pass the two dictionaries' decoders of one site")
    tk = topk_partners(small, wide, "pearson", k=1, progress=False)
    parent_of, corr = tk.col_indices[:, 0].numpy(), tk.col_values[:, 0].double().numpy()
    dead_s, dead_w = constant_features(small).numpy(), constant_features(wide).numpy()
    _, var_s = code_moments(small)
    ss_tot = (var_s.cpu().numpy() * small.n_tokens)
    is_child = (corr >= cfg.threshold) & ~dead_w
    kids_of: dict[int, list[int]] = {}
    for j in np.flatnonzero(is_child):
        kids_of.setdefault(int(parent_of[j]), []).append(int(j))
    S, W = _scipy(small), _scipy(wide)
    rng = np.random.default_rng(cfg.seed)
    parents, span_of = [], {}
    for i in range(small.n):
        kids = kids_of.get(i, [])
        row: dict[str, Any] = {"step": step, "parent": i, "n_children": len(kids), "children": kids, "weights": [],
                               "r2": float("nan"), "best_child_r2": float("nan"),
                               "max_corr": float(tk.row_values[i, 0]), "within_span": float("nan"),
                               "control": float("nan")}
        if dead_s[i]:
            row["status"] = "dead"
        elif not kids:
            row["status"] = "vanishes"
        else:
            r2, w = _nnls_r2(S[i], W[kids], float(ss_tot[i]))
            row["r2"], row["weights"] = r2, [float(x) for x in w]
            row["best_child_r2"] = max(_nnls_r2(S[i], W[[j]], float(ss_tot[i]))[0] for j in kids)
            row["status"] = ("unresolved" if not r2 >= cfg.r2 else "stays" if len(kids) == 1 else "splits")
            if row["status"] == "splits" and decoders is not None:
                pool = np.flatnonzero(~dead_w & ~np.isin(np.arange(wide.n), kids))
                scores, row["control"] = _span_scores(i, kids, decoders[0], decoders[1], pool, cfg, rng)
                row["within_span"] = float(np.mean(scores))
                span_of.update(zip(kids, scores))
        parents.append(row)
    children = []
    for j in range(wide.n):
        status = "dead" if dead_w[j] else "child" if is_child[j] else "new"
        p = int(parent_of[j]) if status == "child" else -1
        cos = float(decoders[0][p] @ decoders[1][j]) if decoders is not None and p >= 0 else float("nan")
        children.append({"step": step, "latent": j, "status": status, "parent": p, "corr": float(corr[j]),
                         "within_span": span_of.get(j, float("nan")), "parent_cosine": cos})
    pcols = ["step", "parent", "status", "n_children", "children", "weights", "r2", "best_child_r2", "max_corr",
             "within_span", "control"]
    return pd.DataFrame(parents, columns=pcols), pd.DataFrame(children, columns=list(children[0]) if children else None)


def _ordered(saes: Sequence[Any] | Mapping[str, Any], labels: Sequence[str] | None) -> tuple[list[Any], list[str]]:
    if isinstance(saes, Mapping):
        items, names = list(saes.values()), [str(k) for k in saes]
    else:
        items = list(saes)
        names = [str(x) for x in labels] if labels is not None else [f"w{_width(x)}" for x in items]
    if labels is not None and len(labels) != len(items):
        raise ConfigError(f"{len(labels)} labels for {len(items)} dictionaries", "give one label per width")
    return items, list(labels) if labels is not None else names


def _width(x: Any) -> int:
    if isinstance(x, FeatureCodes):
        return x.n
    return int(decoder_directions(x).shape[0])


def width_lineage(
    saes_by_width: Sequence[Any] | Mapping[str, Any],
    activations: Float[Tensor, "T d"] | None = None,
    token_ids: Any = None,
    threshold: float = 0.3,
    *,
    r2: float = 0.6,
    labels: Sequence[str] | None = None,
    control_samples: int = 32,
    seed: int = 0,
) -> WidthLineage:
    """Stays, splits, vanishings and new latents from each width to the next (module docstring).

    ``saes_by_width``: dictionaries of one site ordered small -> large (a sequence, or a mapping label ->
    dictionary in that order), or their :class:`FeatureCodes` on shared tokens; dictionaries are encoded on
    ``activations`` (one ``(T, d)`` tensor, the same tokens for every width) with ``token_ids``. Widths must
    not shrink. Dictionaries with decoders get the within-span scores.
    """
    cfg = SplitConfig(threshold=threshold, r2=r2, control_samples=control_samples, seed=seed)
    items, names = _ordered(saes_by_width, labels)
    if len(items) < 2:
        raise ConfigError(f"width_lineage needs at least two widths, got {len(items)}", "pass e.g. the 2x, 4x, 8x and 16x dictionaries")
    widths = [_width(x) for x in items]
    if any(b < a for a, b in zip(widths, widths[1:])):
        raise ConfigError(f"widths must grow from small to large, got {widths}", "order the dictionaries by width")
    if activations is not None:
        check_activations(activations, token_ids)
    codes = [_as_codes(x, activations, token_ids, names[k]) for k, x in enumerate(items)]
    decs = [_decoder(x) for x in items]
    parents, children = [], []
    for k in range(len(items) - 1):
        pair = (decs[k], decs[k + 1])
        same_space = pair[0] is not None and pair[1] is not None and pair[0].shape[1] == pair[1].shape[1]
        p, c = split_step(codes[k], codes[k + 1], f"{names[k]}->{names[k + 1]}", pair if same_space else None,
                          SplitConfig(cfg.threshold, cfg.r2, cfg.control_samples, cfg.seed + k))
        parents.append(p)
        children.append(c)
    return WidthLineage(pd.concat(parents, ignore_index=True), pd.concat(children, ignore_index=True), tuple(names),
                        {"threshold": threshold, "r2": r2, "widths": widths})


def width_recovery(
    reference: Any,
    saes_by_width: Sequence[Any] | Mapping[str, Any],
    activations: Float[Tensor, "T d"] | None = None,
    token_ids: Any = None,
    threshold: float = 0.5,
    *,
    labels: Sequence[str] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Per width (rows in the given order): how many of ``reference``'s live latents have a partner in that
    dictionary with correlation at least ``threshold`` on the shared tokens.

    Columns: ``width`` (label), ``n_latents``, ``live_reference``, ``recovered`` (share of the reference's live
    latents with a partner at ``threshold`` or more), ``mppc`` (their mean best correlation), ``floor_recovered``
    and ``floor_mppc`` (the same against that width's codes shuffled over tokens, seed ``seed``).
    """
    items, names = _ordered(saes_by_width, labels)
    if not items:
        raise ConfigError("width_recovery needs at least one dictionary to test", "pass e.g. the 2x, 4x and 8x dictionaries")
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"threshold must be in (0, 1), got {threshold}", "use e.g. threshold=0.5")
    if activations is not None:
        check_activations(activations, token_ids)
    ref = _as_codes(reference, activations, token_ids, "reference")
    live = ~constant_features(ref)
    if not bool(live.any()):
        raise DataError("no latent of the reference dictionary fires on these tokens", "pass activations it was trained on")
    rows = []
    for name, x in zip(names, items):
        c = _as_codes(x, activations, token_ids, name)
        best = topk_partners(ref, c, "pearson", k=1, progress=False).row_values[:, 0][live].double()
        null = topk_partners(ref, shuffle_tokens(c, seed=seed), "pearson", k=1, progress=False).row_values[:, 0][live].double()
        rows.append({"width": name, "n_latents": c.n, "live_reference": int(live.sum()),
                     "recovered": float((best >= threshold).double().mean()), "mppc": float(best.mean()),
                     "floor_recovered": float((null >= threshold).double().mean()), "floor_mppc": float(null.mean())})
    return pd.DataFrame(rows)

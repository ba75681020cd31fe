"""What a crosscoder says about its sources, latent by latent.

- :func:`relative_decoder_norms`: ``r_{j,s} = ||d_j^s|| / sum_t ||d_j^t||`` (rows sum to 1). For two
  sources ``r_{j,B}`` is the relative norm whose histogram Lindsey et al. (2024) plot: ~0.5 for latents
  both sources use, ~0 or ~1 for latents one source uses only.
- :func:`classify_latents`: ``exclusive`` when one source holds at least ``exclusive_min`` (0.9) of the
  norm; ``shared`` when every source holds at least ``shared_min_fraction`` (0.6) of its equal share
  ``1/N`` (for two sources: ``r`` in ``[0.3, 0.7]``); ``in_between`` otherwise. Lindsey et al. read the
  three clusters off the histogram without fixed cuts; Minder et al. (2025) use
  ``Delta_norm = (1 + (||d^B|| - ||d^A||) / max(||d^A||, ||d^B||)) / 2`` in ``[0.9, 1]`` (exclusive) and
  ``[0.4, 0.6]`` (shared), i.e. ``r_B >= 0.833`` and ``r_B`` in ``[0.444, 0.556]`` here
  (:func:`delta_norm` converts). The defaults are ours; pass others.
- :func:`latent_scaling` (Minder et al. 2025): for a latent ``j`` that looks exclusive to source ``B``,
  the scalar ``beta_s`` that best reconstructs a target of source ``s`` with ``f_j(x) d_j^B``,
  ``beta_s = sum_x f_j <d, y_s> / sum_x f_j^2 ||d||^2``, for ``s = A`` and ``s = B``; ``nu = beta_A / beta_B``
  near 0 means truly exclusive, large means the latent only decoupled from ``A`` (A still carries the
  direction, represented elsewhere or shrunk away). Targets: ``"error"`` (default), ``y_s`` = the
  crosscoder's reconstruction error of ``s`` with latent ``j``'s own contribution put back (Minder et al.'s
  ``nu^epsilon``); ``"activation"``, ``y_s = x_s`` (their ``nu^r`` uses the reconstruction; see the
  docs). Needs ``A`` and ``B`` of one width (one space: checkpoints of a model).
- :func:`decoder_norm_trajectories` / :func:`birth_indices`: in a checkpoint series, each latent's
  ``||d_j^s||`` along ``s``, and its birth - the first source whose norm reaches ``fraction`` (0.5) of
  the final source's norm.
- :func:`shared_cosines`: cosine between per-source decoder rows (same-width sources).
- Nulls: :func:`null_agreement` (two crosscoders of different seeds on one source set: do latents
  match, and do they get the same class?) and the copy anchor (a source crossed with a copy of itself,
  :class:`~universality.crosscoder.source.JointSource` listing one site twice: every live latent
  should be shared).

Everything is measured in the crosscoder's normalised units (the decoders as trained; the per-source
input normalisation is the ``input_norm`` buffer).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from universality.errors import ConfigError, DataError
from universality.sae.crosscoder import CrosscoderSAE, source_norms

__all__ = [
    "CLASSES",
    "relative_decoder_norms",
    "delta_norm",
    "classify_latents",
    "class_fractions",
    "latent_scaling",
    "decoder_norm_trajectories",
    "birth_indices",
    "shared_cosines",
    "null_agreement",
    "live_latents",
]

CLASSES = ("shared", "exclusive", "in_between")


def _check(cc: CrosscoderSAE) -> None:
    if not isinstance(cc, CrosscoderSAE):
        raise ConfigError(f"expected a crosscoder, got {type(cc).__name__}", "load it with SAE.load or build it with make_sae(crosscoder_config(...))")


def decoder_norm_trajectories(cc: CrosscoderSAE) -> Float[Tensor, "d_sae n_sources"]:
    """``||d_j^s||`` for every latent ``j`` and source ``s``."""
    _check(cc)
    return source_norms(cc.W_dec.detach().float(), cc.cfg.source_widths)


def relative_decoder_norms(cc: CrosscoderSAE) -> Float[Tensor, "d_sae n_sources"]:
    """``||d_j^s|| / sum_t ||d_j^t||`` (each row sums to 1)."""
    n = decoder_norm_trajectories(cc)
    return n / n.sum(dim=1, keepdim=True).clamp_min(1e-12)


def delta_norm(rel_b: Float[Tensor, " d_sae"]) -> Float[Tensor, " d_sae"]:
    """Minder et al.'s ``Delta_norm`` from the two-source relative norm ``r_B`` (``||d^A|| / ||d^B|| = (1 - r_B) / r_B``)."""
    a, b = 1.0 - rel_b, rel_b
    return 0.5 * ((b - a) / torch.maximum(a, b).clamp_min(1e-12) + 1.0)


def classify_latents(rel: Float[Tensor, "d_sae n_sources"], exclusive_min: float = 0.9,
                     shared_min_fraction: float = 0.6) -> tuple[list[str], Int[Tensor, " d_sae"]]:
    """``(labels, owner)``: each latent's class (:data:`CLASSES`) and, for exclusive ones, its source (else -1)."""
    if not 0.5 < exclusive_min <= 1.0 or not 0.0 < shared_min_fraction <= 1.0:
        raise ConfigError(f"thresholds out of range: exclusive_min={exclusive_min}, shared_min_fraction={shared_min_fraction}",
                          "use exclusive_min in (0.5, 1] and shared_min_fraction in (0, 1]")
    n_src = rel.shape[1]
    top, owner = rel.max(dim=1)
    exclusive = top >= exclusive_min
    shared = (rel >= shared_min_fraction / n_src).all(dim=1) & ~exclusive
    labels = ["exclusive" if e else "shared" if s else "in_between" for e, s in zip(exclusive.tolist(), shared.tolist())]
    return labels, torch.where(exclusive, owner, torch.full_like(owner, -1))


def class_fractions(labels: Sequence[str], mask: Bool[Tensor, " d_sae"] | None = None) -> dict[str, float]:
    """Fraction of (masked) latents in each class."""
    keep = [lab for i, lab in enumerate(labels) if mask is None or bool(mask[i])]
    return {c: (sum(lab == c for lab in keep) / len(keep)) if keep else float("nan") for c in CLASSES}


@torch.no_grad()
def live_latents(cc: CrosscoderSAE, x: Float[Tensor, "batch d_in"]) -> Bool[Tensor, " d_sae"]:
    """Latents that fire on at least one row of ``x`` (raw activations)."""
    _check(cc)
    return (cc.encode(x) > 0).any(dim=0)


@torch.no_grad()
def latent_scaling(cc: CrosscoderSAE, x: Float[Tensor, "batch d_in"], latents: Int[Tensor, " m"],
                   owner: int | Int[Tensor, " m"], other: int | Int[Tensor, " m"],
                   target: str = "error") -> dict[str, Tensor]:
    """Latent Scaling (Minder et al. 2025) of ``latents``, each exclusive to ``owner`` (B), against ``other`` (A).

    Returns ``beta_other``, ``beta_owner`` and ``nu = beta_other / beta_owner`` (``(m,)`` each; NaN for a
    latent that never fires on ``x``). ``x``: raw concatenated activations.
    """
    _check(cc)
    if target not in ("error", "activation"):
        raise ConfigError(f"latent_scaling target {target!r} is not 'error' or 'activation'", "use target='error'")
    m = latents.numel()
    own = torch.as_tensor(owner).expand(m) if torch.as_tensor(owner).ndim == 0 else torch.as_tensor(owner)
    oth = torch.as_tensor(other).expand(m) if torch.as_tensor(other).ndim == 0 else torch.as_tensor(other)
    widths = cc.cfg.source_widths
    pairs = set(zip(own.tolist(), oth.tolist()))
    for b, a in pairs:
        if widths[a] != widths[b]:
            raise ConfigError(f"latent scaling compares sources {a} and {b} in one space, but their widths differ ({widths[a]}, {widths[b]})",
                              "use it on sources of one width (checkpoints of a model)")
    slices = cc.cfg.source_slices()
    x_n = x.to(cc.W_dec.dtype) * cc.norm_vector()  # normalised units
    z = cc.encode(x)
    recon = z @ cc.W_dec + cc.b_dec
    err = x_n - recon
    W = cc.W_dec.detach()
    beta_own, beta_oth = torch.full((m,), float("nan")), torch.full((m,), float("nan"))
    for i, (j, b, a) in enumerate(zip(latents.tolist(), own.tolist(), oth.tolist())):
        f = z[:, j]
        denom_f = float(f.pow(2).sum())
        d = W[j, slices[b]]
        if denom_f <= 0 or float(d.norm()) == 0:
            continue
        for s, out in ((b, beta_own), (a, beta_oth)):
            if target == "error":
                y = err[:, slices[s]] + f[:, None] * W[j, slices[s]]
            else:
                y = x_n[:, slices[s]]
            out[i] = float((f * (y @ d)).sum()) / (denom_f * float(d.pow(2).sum()))
    return {"beta_other": beta_oth, "beta_owner": beta_own, "nu": beta_oth / beta_own}


def birth_indices(norms: Float[Tensor, "d_sae n_sources"], fraction: float = 0.5) -> Int[Tensor, " d_sae"]:
    """First source index where ``||d_j^s|| >= fraction * ||d_j^{N-1}||`` (the final source's norm)."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"birth fraction must be in (0, 1], got {fraction}", "use e.g. 0.5")
    reached = norms >= fraction * norms[:, -1:]
    return reached.float().argmax(dim=1)  # the final source always reaches its own norm


def shared_cosines(cc: CrosscoderSAE, latents: Int[Tensor, " m"] | None = None,
                   pairs: Sequence[tuple[int, int]] | None = None) -> dict[tuple[int, int], Tensor]:
    """``{(s, t): cos(d_j^s, d_j^t)}`` for every latent in ``latents`` (default all); ``pairs`` default:
    consecutive sources. Sources must share a width."""
    _check(cc)
    widths = cc.cfg.source_widths
    pairs = list(pairs) if pairs is not None else [(s, s + 1) for s in range(len(widths) - 1)]
    W = cc.W_dec.detach().float()
    if latents is not None:
        W = W[latents]
    blocks = W.split(list(widths), dim=1)
    out = {}
    for s, t in pairs:
        if widths[s] != widths[t]:
            raise ConfigError(f"sources {s} and {t} have widths {widths[s]} and {widths[t]}: their decoders live in different spaces",
                              "compare decoder cosines only between sources of one width")
        out[(s, t)] = torch.nn.functional.cosine_similarity(blocks[s], blocks[t], dim=1, eps=1e-12)
    return out


def null_agreement(cc_a: CrosscoderSAE, cc_b: CrosscoderSAE, x: Float[Tensor, "batch d_in"],
                   match_min: float = 0.9) -> dict[str, float]:
    """Seed null: two crosscoders on one source set. Each live latent of ``a`` is matched to the live latent
    of ``b`` with the highest cosine of the whole (concatenated) decoder row; returns the matched fraction
    (cosine >= ``match_min``), the fraction of matched latents given the same class, the mean absolute
    difference of their relative norms, and each crosscoder's class fractions."""
    _check(cc_a), _check(cc_b)
    if cc_a.cfg.source_widths != cc_b.cfg.source_widths:
        raise DataError("the two crosscoders read different sources", "compare crosscoders of one source set")
    if torch.equal(cc_a.W_dec, cc_b.W_dec):
        raise DataError("the two crosscoders have identical decoders", "train the seed null with two different seeds")
    live_a, live_b = live_latents(cc_a, x), live_latents(cc_b, x)
    if not bool(live_a.any()) or not bool(live_b.any()):
        raise DataError("a crosscoder has no live latent on x", "pass more rows, or train longer")
    Wa = torch.nn.functional.normalize(cc_a.W_dec.detach().float()[live_a], dim=1)
    Wb = torch.nn.functional.normalize(cc_b.W_dec.detach().float()[live_b], dim=1)
    best, idx = (Wa @ Wb.T).max(dim=1)
    rel_a, rel_b = relative_decoder_norms(cc_a)[live_a], relative_decoder_norms(cc_b)[live_b]
    lab_a, _ = classify_latents(rel_a)
    lab_b, _ = classify_latents(rel_b)
    matched = best >= match_min
    same = [lab_a[i] == lab_b[int(idx[i])] for i in range(len(lab_a)) if bool(matched[i])]
    out = {"matched_fraction": float(matched.float().mean()),
           "same_class_fraction": (sum(same) / len(same)) if same else float("nan"),
           "mean_abs_rel_norm_diff": float((rel_a[matched] - rel_b[idx[matched]]).abs().sum(dim=1).mean() / 2) if same else float("nan")}
    out.update({f"a_{k}": v for k, v in class_fractions(lab_a).items()})
    out.update({f"b_{k}": v for k, v in class_fractions(lab_b).items()})
    return out

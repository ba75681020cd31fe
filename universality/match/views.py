"""Three views of a dictionary's features: decoder direction, encoder direction, activations.

A *dictionary* is anything with a ``W_dec`` ``(n, d)`` attribute (``universality.SAE``, sae-lens and
sparsify SAEs) and optionally ``W_enc`` ``(d, n)`` and ``encode``, or a plain ``(n, d)`` tensor whose rows
are the feature directions (used for both the decoder and the encoder view).

The activation view is a :class:`FeatureCodes`: the dictionary's codes on a token set, stored as a
feature-major sparse CSR matrix ``(n, T)`` together with a fingerprint of the token ids, so two code sets
can only be compared when their rows are the same tokens.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from universality.errors import MatchError
from universality.progress import progress_bar



@contextlib.contextmanager
def _quiet_sparse() -> Iterator[None]:
    """Silence torch's 'sparse CSR is beta' / 'invariant checks disabled' notices inside a block."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
        yield

__all__ = [
    "VIEWS",
    "FeatureCodes",
    "decoder_directions",
    "encoder_directions",
    "directions",
    "token_fingerprint",
    "encode_codes",
    "codes_from_dense",
]

VIEWS = ("decoder", "encoder", "activations")


def _as_tensor(x: Any) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    raise MatchError(
        f"cannot read features from a {type(x).__name__}",
        "pass an object with W_dec (and W_enc) attributes, or a (n, d) tensor of feature directions",
    )


def _unit_rows(W: Tensor) -> Tensor:
    W = W.float()
    if W.ndim != 2:
        raise MatchError(f"feature directions must be 2-D (n, d), got shape {tuple(W.shape)}", "pass a (n, d) tensor")
    if not torch.isfinite(W).all():
        raise MatchError("feature directions contain NaN or Inf", "check the dictionary's weights")
    return W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)


def decoder_directions(dictionary: Any) -> Float[Tensor, "n d"]:
    """Unit decoder directions: rows of ``W_dec`` ``(n, d)`` (or of a plain tensor), normalised."""
    if hasattr(dictionary, "W_dec"):
        return _unit_rows(_as_tensor(dictionary.W_dec))
    return _unit_rows(_as_tensor(dictionary))


def encoder_directions(dictionary: Any) -> Float[Tensor, "n d"]:
    """Unit encoder directions: columns of ``W_enc`` ``(d, n)`` as rows; a plain tensor is its own encoder."""
    if hasattr(dictionary, "W_enc"):
        W = _as_tensor(dictionary.W_enc)
        n = decoder_directions(dictionary).shape[0] if hasattr(dictionary, "W_dec") else None
        # W_enc is (d_in, d_sae) by contract; accept (d_sae, d_in) only when the decoder says so.
        if n is not None and W.shape[0] == n and W.shape[1] != n:
            return _unit_rows(W)
        return _unit_rows(W.T)
    if hasattr(dictionary, "W_dec"):
        raise MatchError("this dictionary has no W_enc", "use view='decoder' or view='activations'")
    return _unit_rows(_as_tensor(dictionary))


def directions(dictionary: Any, view: str) -> Float[Tensor, "n d"]:
    """Unit directions of ``dictionary`` in ``view`` (``'decoder'`` or ``'encoder'``)."""
    if view == "decoder":
        return decoder_directions(dictionary)
    if view == "encoder":
        return encoder_directions(dictionary)
    raise MatchError(f"view {view!r} has no directions", "use view='decoder' or 'encoder' (or FeatureCodes)")


def token_fingerprint(token_ids: Any) -> str:
    """SHA-256 (16 hex) of the token ids (any integer array-like); identifies a token set."""
    arr = np.ascontiguousarray(np.asarray(_as_tensor(token_ids).cpu() if not isinstance(token_ids, np.ndarray) else token_ids, dtype=np.int64))
    return hashlib.sha256(arr.tobytes() + str(arr.shape).encode()).hexdigest()[:16]


def _data_fingerprint(x: Tensor) -> str:
    arr = np.ascontiguousarray(x.detach().float().cpu().numpy())
    return "data:" + hashlib.sha256(arr.tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class FeatureCodes:
    """Codes of ``n`` features on ``T`` shared tokens, feature-major sparse, with per-feature statistics.

    ``codes`` is a ``torch.sparse_csr`` tensor ``(n, T)``; ``mean``, ``std`` (population) and ``nnz`` are
    ``(n,)``. ``fingerprint`` identifies the token set; two ``FeatureCodes`` are comparable only when
    their fingerprints agree.
    """

    codes: Tensor
    mean: Tensor
    std: Tensor
    nnz: Tensor
    fingerprint: str

    @property
    def n(self) -> int:
        return int(self.codes.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.codes.shape[1])

    def to(self, device: str | torch.device) -> FeatureCodes:
        return FeatureCodes(self.codes.to(device), self.mean.to(device), self.std.to(device), self.nnz.to(device), self.fingerprint)

    def rows(self, i0: int, i1: int, binary: bool = False) -> Float[Tensor, "b T"]:
        """Dense codes of features ``i0:i1`` (``(i1-i0, T)``); ``binary`` gives firing indicators."""
        crow = self.codes.crow_indices()
        s, e = int(crow[i0]), int(crow[i1])
        vals = self.codes.values()[s:e]
        if binary:
            vals = (vals != 0).to(vals.dtype)
        with _quiet_sparse():
            block = torch.sparse_csr_tensor(crow[i0 : i1 + 1] - s, self.codes.col_indices()[s:e], vals, size=(i1 - i0, self.n_tokens))
        return block.to_dense()

    def binary(self) -> FeatureCodes:
        """The firing indicators ``1[code != 0]`` as codes of their own."""
        vals = (self.codes.values() != 0).float()
        with _quiet_sparse():
            codes = torch.sparse_csr_tensor(self.codes.crow_indices(), self.codes.col_indices(), vals, size=self.codes.shape)
        p = self.nnz.float() / max(self.n_tokens, 1)
        return FeatureCodes(codes, p, (p * (1 - p)).clamp_min(0).sqrt(), self.nnz, self.fingerprint)

    def subset(self, index: Tensor) -> FeatureCodes:
        """Codes of the features in ``index`` (in that order), same tokens."""
        import scipy.sparse as sp

        index = np.asarray(torch.as_tensor(index, dtype=torch.long).cpu())
        c = self.codes.cpu()
        M = sp.csr_matrix((c.values().numpy(), c.col_indices().numpy(), c.crow_indices().numpy()), shape=tuple(c.shape))
        sub = M[index]
        sub.sort_indices()
        with _quiet_sparse():
            csr = torch.sparse_csr_tensor(torch.from_numpy(sub.indptr.astype(np.int64)),
                                          torch.from_numpy(sub.indices.astype(np.int64)),
                                          torch.from_numpy(sub.data), size=sub.shape)
        t = torch.as_tensor(index)
        return FeatureCodes(csr, self.mean.cpu()[t], self.std.cpu()[t], self.nnz.cpu()[t], self.fingerprint)


def _stats(codes_csr: Tensor, T: int) -> tuple[Tensor, Tensor, Tensor]:
    crow = codes_csr.crow_indices()
    vals = codes_csr.values().double()
    n = codes_csr.shape[0]
    row_of = torch.repeat_interleave(torch.arange(n, device=vals.device), crow[1:] - crow[:-1])
    s1 = torch.zeros(n, dtype=torch.float64, device=vals.device).index_add_(0, row_of, vals)
    s2 = torch.zeros(n, dtype=torch.float64, device=vals.device).index_add_(0, row_of, vals * vals)
    nnz = torch.zeros(n, dtype=torch.long, device=vals.device).index_add_(0, row_of, (vals != 0).long())
    mean = s1 / T
    var = (s2 / T - mean * mean).clamp_min(0)
    return mean.float(), var.sqrt().float(), nnz


def codes_from_dense(
    z: Float[Tensor, "T n"], token_ids: Any = None, fingerprint: str | None = None
) -> FeatureCodes:
    """Build :class:`FeatureCodes` from a dense ``(T, n)`` code matrix (tokens in rows)."""
    z = _as_tensor(z).float()
    if z.ndim != 2:
        raise MatchError(f"codes must be (tokens, features), got shape {tuple(z.shape)}", "pass a 2-D tensor")
    if not torch.isfinite(z).all():
        raise MatchError("codes contain NaN or Inf", "check the dictionary and the activations")
    fp = fingerprint or (token_fingerprint(token_ids) if token_ids is not None else _data_fingerprint(z))
    with _quiet_sparse():
        csr = z.T.contiguous().to_sparse_csr()
    mean, std, nnz = _stats(csr, z.shape[0])
    return FeatureCodes(csr, mean, std, nnz, fp)


def _batches(x: Tensor, batch_size: int) -> Iterator[Tensor]:
    for i in range(0, x.shape[0], batch_size):
        yield x[i : i + batch_size]


@torch.no_grad()
def encode_codes(
    dictionary: Any,
    x: Float[Tensor, "T d"],
    token_ids: Any = None,
    batch_size: int = 4096,
    device: str | torch.device | None = None,
) -> FeatureCodes:
    """Encode activations ``x`` (rows = tokens) with ``dictionary.encode`` in batches; keep codes sparse.

    ``token_ids`` (one id per row of ``x``) gives the fingerprint; without them the fingerprint hashes ``x``
    itself, which only matches codes computed from the very same activations.
    """
    if not hasattr(dictionary, "encode"):
        raise MatchError(
            f"a {type(dictionary).__name__} cannot encode activations",
            "pass an SAE (with .encode) or precomputed codes via universality.match.codes_from_dense",
        )
    x = _as_tensor(x)
    if token_ids is not None and len(_as_tensor(token_ids).reshape(-1)) != x.shape[0]:
        raise MatchError(
            f"{x.shape[0]} activation rows but {len(_as_tensor(token_ids).reshape(-1))} token ids",
            "give one token id per activation row",
        )
    fp = token_fingerprint(token_ids) if token_ids is not None else _data_fingerprint(x)
    param = next(iter(dictionary.parameters()), None) if hasattr(dictionary, "parameters") else None
    dev = torch.device(device) if device is not None else (param.device if param is not None else torch.device("cpu"))
    dtype = param.dtype if param is not None else torch.float32
    parts = []
    d_sae = getattr(dictionary, "d_sae", None) or x.shape[1]
    bar = progress_bar(_batches(x, batch_size), "encode", total=-(-x.shape[0] // batch_size), leave=False,
                       work=x.shape[0] * d_sae)
    for xb in bar:
        zb = dictionary.encode(xb.to(dev, dtype)).float()
        parts.append(zb.T.contiguous().to_sparse_coo().cpu())
    coo = torch.cat(parts, dim=1).coalesce() if len(parts) > 1 else parts[0].coalesce()
    with _quiet_sparse():
        csr = coo.to_sparse_csr()
    mean, std, nnz = _stats(csr, x.shape[0])
    return FeatureCodes(csr, mean, std, nnz, fp)

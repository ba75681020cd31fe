"""Many same-shape TopK / BatchTopK dictionaries as one module with stacked weights.

``n`` dictionaries with the same :class:`~universality.sae.config.SAEConfig` (different seeds,
or different sites of the same width) are held as

- ``W_enc`` ``(n, d_in, d_sae)``, ``b_enc`` ``(n, d_sae)``,
- ``W_dec`` ``(n, d_sae, d_in)`` with unit-norm rows, ``b_dec`` ``(n, d_in)``,

so one batched matmul (``torch.baddbmm``) encodes a ``(n, batch, d_in)`` input for all of them and
one optimiser step updates all of them: seeds and sites share kernel launches (sparsify trains its
hookpoints x seeds from one pass in the same spirit; the batching here goes one step further and
fuses the dictionaries themselves). Dictionary ``i`` of the stack computes exactly what the
individual SAE computes (same formulas, see :mod:`universality.sae.topk` and
:mod:`universality.sae.batchtopk`).

The TopK decoder is *k-sparse*: each token's reconstruction gathers only its ``k`` active decoder
rows, and the backward pass touches only those rows (``index_add_`` on CUDA; on the CPU a sparse
(latent x row) product, see :mod:`universality.sae.kernels`).

A stack is a training device, not an artifact: :meth:`StackedSAE.from_saes` builds one from
individual SAEs and :meth:`StackedSAE.to_saes` / :meth:`StackedSAE.copy_to_` give them back, so
artifacts stay one folder per dictionary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from universality.errors import ConfigError
from universality.sae.base import SAE
from universality.sae.kernels import stacked_preactivations_at, stacked_sparse_decode, stacked_topk_encoder
from universality.sae.config import SAEConfig
from universality.sae.registry import get_architecture

__all__ = [
    "STACKABLE",
    "StackedOutput",
    "StackedSAE",
    "normalize_rows_",
    "remove_parallel_",
    "stacked_sparse_decode",
    "stacked_topk_encoder",
]

#: Architectures a stack can hold (no sparsity penalty, unit decoder rows).
STACKABLE = ("topk", "batchtopk")
_THRESHOLD_RATE = 0.01  # BatchTopK's running threshold rate, as in universality.sae.batchtopk


def remove_parallel_(g: Float[Tensor, "*n d_sae d_in"], W_dec: Float[Tensor, "*n d_sae d_in"]) -> None:
    """``g_j -= <g_j, w_j> w_j`` for each unit decoder row ``w_j`` (in place; Bricken et al. 2023)."""
    g -= (g * W_dec).sum(dim=-1, keepdim=True) * W_dec


def normalize_rows_(W_dec: Float[Tensor, "*n d_sae d_in"]) -> None:
    """Scale every decoder row to unit norm (in place)."""
    W_dec /= W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@dataclass
class StackedOutput:
    """One training forward pass of a stack.

    ``x_hat`` ``(n, batch, d_in)``; ``pre`` the dense pre-activations ``(n, batch, d_sae)`` (for
    AuxK); ``active`` ``(indices, values)`` ``(n, batch, k)`` for TopK, else ``None``; ``acts`` the
    dense code (BatchTopK only, else ``None``).
    """

    x_hat: Float[Tensor, "n batch d_in"]
    pre: Float[Tensor, "n batch d_sae"]
    active: tuple[Tensor, Tensor] | None = None
    acts: Tensor | None = None


class StackedSAE(nn.Module):
    """``n`` TopK or BatchTopK dictionaries of one :class:`SAEConfig`, trained as one module."""

    def __init__(self, cfg: SAEConfig, n: int, device: str | torch.device | None = None) -> None:
        super().__init__()
        if cfg.architecture not in STACKABLE:
            raise ConfigError(f"a stack holds {'/'.join(STACKABLE)} dictionaries, not {cfg.architecture!r}",
                              "train other architectures unstacked (RunConfig.stack=False)")
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"a stack needs n >= 1 dictionaries, got {n!r}", "pass the number of dictionaries")
        self.cfg, self.n = cfg, n
        dt = cfg.torch_dtype
        D, Fn = cfg.d_in, cfg.d_sae
        # parameter order W_dec, W_enc, b_enc, b_dec: the same as an individual SAE's
        self.W_dec = nn.Parameter(torch.zeros(n, Fn, D, dtype=dt, device=device))
        self.W_enc = nn.Parameter(torch.zeros(n, D, Fn, dtype=dt, device=device))
        self.b_enc = nn.Parameter(torch.zeros(n, Fn, dtype=dt, device=device))
        self.b_dec = nn.Parameter(torch.zeros(n, D, dtype=dt, device=device))
        if cfg.architecture == "batchtopk":
            self.register_buffer("threshold", torch.full((n,), -1.0, dtype=dt, device=device))
        self.input_scales: list[float] = [1.0] * n

    # ----------------------------------------------------------------- conversion
    @classmethod
    def from_saes(cls, saes: Sequence[SAE], device: str | torch.device | None = None) -> StackedSAE:
        """A stack holding copies of ``saes`` (all of one config and architecture)."""
        saes = list(saes)
        if not saes:
            raise ConfigError("no SAEs to stack", "pass at least one SAE")
        cfg = saes[0].cfg
        for s in saes[1:]:
            if s.cfg != cfg:
                raise ConfigError(f"cannot stack SAEs with different configs ({s.cfg} vs {cfg})",
                                  "stack only dictionaries of one SAEConfig")
        stack = cls(cfg, len(saes), device=device if device is not None else saes[0].W_dec.device)
        stack.load_from_(saes)
        return stack

    @torch.no_grad()
    def load_from_(self, saes: Sequence[SAE]) -> None:
        """Copy the weights (and BatchTopK thresholds, input scales) of ``saes`` into the stack."""
        if len(saes) != self.n:
            raise ConfigError(f"{len(saes)} SAEs given to a stack of {self.n}", "pass one SAE per stacked dictionary")
        for i, sae in enumerate(saes):
            if sae.cfg != self.cfg:
                raise ConfigError(f"SAE {i} has config {sae.cfg}, the stack {self.cfg}", "stack only dictionaries of one SAEConfig")
            for name in ("W_dec", "W_enc", "b_enc", "b_dec"):
                getattr(self, name)[i].copy_(getattr(sae, name))
            if self.cfg.architecture == "batchtopk":
                self.threshold[i].copy_(sae.threshold)
            self.input_scales[i] = float(sae.input_scale)

    @torch.no_grad()
    def copy_to_(self, saes: Sequence[SAE]) -> None:
        """Write dictionary ``i`` of the stack into ``saes[i]`` (in place)."""
        if len(saes) != self.n:
            raise ConfigError(f"{len(saes)} SAEs given to a stack of {self.n}", "pass one SAE per stacked dictionary")
        for i, sae in enumerate(saes):
            for name in ("W_dec", "W_enc", "b_enc", "b_dec"):
                getattr(sae, name).copy_(getattr(self, name)[i])
            if self.cfg.architecture == "batchtopk":
                sae.threshold.copy_(self.threshold[i])
            sae.input_scale = self.input_scales[i]

    def to_saes(self, metas: Sequence[dict] | None = None) -> list[SAE]:
        """New individual SAE objects holding copies of the stacked dictionaries."""
        impl = get_architecture(self.cfg.architecture)
        out = [impl(self.cfg, meta=(metas[i] if metas else None), device=self.W_dec.device) for i in range(self.n)]
        self.copy_to_(out)
        return out

    # ----------------------------------------------------------------- forward
    def _check(self, x: Tensor) -> Tensor:
        if x.ndim != 3 or x.shape[0] != self.n or x.shape[2] != self.cfg.d_in:
            raise ConfigError(f"a stack of {self.n} dictionaries of d_in={self.cfg.d_in} needs input (n, batch, d_in), "
                              f"got {tuple(x.shape)}", "stack one (batch, d_in) block per dictionary")
        return x.to(self.W_dec.dtype)

    def pre_acts(self, x: Float[Tensor, "n batch d_in"]) -> Float[Tensor, "n batch d_sae"]:
        """``(x_i - b_dec,i) W_enc,i + b_enc,i`` for every dictionary ``i``."""
        x_NBD = self._check(x)
        return torch.baddbmm(self.b_enc.unsqueeze(1), x_NBD - self.b_dec.unsqueeze(1), self.W_enc)

    def encode(self, x: Float[Tensor, "n batch d_in"]) -> Float[Tensor, "n batch d_sae"]:
        """Dense latents with each individual SAE's inference behaviour."""
        pre_NBF = self.pre_acts(x)
        if self.cfg.architecture == "topk":
            vals, idx = torch.relu(pre_NBF).topk(self.cfg.k, dim=-1, sorted=False)
            return torch.zeros_like(pre_NBF).scatter_(-1, idx, vals)
        out = []
        for i in range(self.n):  # BatchTopK inference: the learned threshold (batch selection until trained)
            thr = float(self.threshold[i])
            out.append(self._batch_topk(pre_NBF[i : i + 1])[0] if thr < 0 else torch.relu(pre_NBF[i]) * (pre_NBF[i] > thr))
        return torch.stack(out)

    def decode(self, z: Float[Tensor, "n batch d_sae"]) -> Float[Tensor, "n batch d_in"]:
        """``z_i W_dec,i + b_dec,i``."""
        return torch.baddbmm(self.b_dec.unsqueeze(1), z.to(self.W_dec.dtype), self.W_dec)

    def decode_sparse(self, idx: Int[Tensor, "n batch k"], vals: Float[Tensor, "n batch k"]) -> Float[Tensor, "n batch d_in"]:
        """Decode from ``k`` active latents per row (k-sparse gather) plus ``b_dec``."""
        return stacked_sparse_decode(idx, vals, self.W_dec) + self.b_dec.unsqueeze(1)

    def forward(self, x: Float[Tensor, "n batch d_in"]) -> Float[Tensor, "n batch d_in"]:
        return self.decode(self.encode(x))

    def _batch_topk(self, pre_NBF: Tensor) -> Tensor:
        N, B, Fn = pre_NBF.shape
        flat = torch.relu(pre_NBF).reshape(N, B * Fn)
        n_keep = min(self.cfg.k * B, B * Fn)
        vals, idx = flat.topk(n_keep, dim=1, sorted=False)
        return torch.zeros_like(flat).scatter_(1, idx, vals).view(N, B, Fn)

    def preactivations_at(
        self, x: Float[Tensor, "n batch d_in"], pre: Float[Tensor, "n batch d_sae"], idx: Int[Tensor, "n batch k"]
    ) -> Float[Tensor, "n batch k"]:
        """``pre[i, b, idx[i, b, j]]`` for the ``pre`` that :meth:`forward_train` returned for ``x``, differentiable
        (AuxK's values): TopK through the kernel's k-sparse backward, BatchTopK as a gather through ``pre``."""
        if self.cfg.architecture == "topk":
            return stacked_preactivations_at(pre, idx, self._check(x), self.W_enc, self.b_enc, centre=self.b_dec)
        return pre.gather(2, idx)

    def forward_train(self, x: Float[Tensor, "n batch d_in"]) -> StackedOutput:
        """Training forward pass of every dictionary (same maths as their ``forward_train``)."""
        x_NBD = self._check(x)
        if self.cfg.architecture == "topk":
            vals, idx, pre = stacked_topk_encoder(x_NBD, self.W_enc, self.b_enc, self.cfg.k, centre=self.b_dec)
            x_hat = self.decode_sparse(idx, vals)
            return StackedOutput(x_hat, pre, active=(idx, vals.detach()))
        xc_NBD = x_NBD - self.b_dec.unsqueeze(1)
        pre = torch.baddbmm(self.b_enc.unsqueeze(1), xc_NBD, self.W_enc)
        z = self._batch_topk(pre)
        self._update_threshold_(z.detach())
        return StackedOutput(self.decode(z), pre, acts=z)

    @torch.no_grad()
    def _update_threshold_(self, z_NBF: Tensor) -> None:
        """BatchTopK running threshold: the smallest kept activation, EMA with rate 0.01 (Bussmann et al. 2024)."""
        pos = z_NBF > 0
        has = pos.flatten(1).any(dim=1)
        low = z_NBF.masked_fill(~pos, float("inf")).flatten(1).amin(dim=1).to(self.threshold.dtype)
        thr = self.threshold
        new = torch.where(thr < 0, low, thr + _THRESHOLD_RATE * (low - thr))
        self.threshold.copy_(torch.where(has, new, thr))

    # ----------------------------------------------------------------- decoder constraint
    @torch.no_grad()
    def remove_parallel_decoder_grad_(self) -> None:
        """Remove each decoder-row gradient's component along its (unit) row (Bricken et al. 2023)."""
        if self.W_dec.grad is not None:
            remove_parallel_(self.W_dec.grad, self.W_dec)

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Project every decoder row back to unit norm."""
        normalize_rows_(self.W_dec)

    def extra_repr(self) -> str:
        return f"n={self.n}, architecture={self.cfg.architecture}, d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae}, k={self.cfg.k}"

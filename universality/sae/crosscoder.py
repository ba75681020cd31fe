"""Crosscoders: one sparse dictionary over ``N`` sources (Lindsey et al. 2024, "Sparse crosscoders
for cross-layer features and model diffing"; Minder et al. 2025, "Overcoming sparsity artifacts in
crosscoders to interpret chat-tuning").

The input is the concatenation ``x = [x_1, ..., x_N]`` of the sources' activations (widths
``cfg.source_widths``). One encoder reads all sources; each source has its own decoder (the column
block ``W_dec[:, block_s]``) and decoder bias (``b_dec[block_s]``):

.. math::
    \\pi = (x \\odot n - b_{dec}) W_{enc} + b_{enc}, \\qquad
    \\hat x_s = \\big(\\sum_j f_j(x) \\, d_j^s + b_{dec}^s\\big) / n_s, \\qquad
    w_j = \\sum_s \\|d_j^s\\|_2

with ``d_j^s = W_dec[j, block_s]`` and ``n`` the per-source input normalisation (buffer
``input_norm``, one factor per source, repeated over its block). Sparsity:

- ``"l1"`` (Lindsey et al.): ``f = ReLU(pi)`` and the penalty ``sum_j f_j w_j`` (the L1 norm of the
  latents weighted by the *sum* of the per-source decoder norms, which makes a latent used by several
  sources pay for each of them). Designated shared latents (the first ``cfg.shared_latents``) pay
  ``cfg.shared_coeff_ratio`` times that (Anthropic, "Insights on crosscoder model diffing", Feb 2025);
  with ``cfg.tie_shared`` their decoder rows are also tied across sources (``d_j^s`` the same for every
  ``s``): every optimiser step ends with the projection of those rows onto the tied subspace (each block
  replaced by the mean of the blocks), which is projected gradient descent on the tied rows;
- ``"batchtopk"`` (Minder et al.): the batch keeps the ``k * batch`` largest ``ReLU(pi_j) w_j`` (the
  selection sees the decoder-norm-weighted activations, so it is invariant to moving norms between
  encoder and decoder); at inference a threshold ``theta`` on ``ReLU(pi_j) w_j`` (running average of
  the smallest kept value, as :mod:`universality.sae.batchtopk`) replaces the batch selection.

Decoder rows are free during training (the penalty or the selection sees their norms); a saved
crosscoder has rows of unit *total* norm (the per-source ratios, which the analysis reads, are kept).

**Normalisation.** Sources of different scale would let the larger one dominate the loss, so the trainer
scales each source to the same mean squared norm, ``d_in / N`` (sum: ``d_in``, its usual target). The
scale is kept in ``input_norm`` rather than folded into the weights: the decoders stay in normalised
units, where the relative decoder norms compare sources on an equal footing, and the saved crosscoder
works on raw activations. During training ``input_norm`` is 1 and the trainer scales the input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from universality.errors import ConfigError
from universality.sae.base import SAE, SAEOutput
from universality.sae.crosscoder_config import CrosscoderConfig
from universality.sae.registry import register

__all__ = ["CrosscoderSAE", "source_norms", "split_sources"]

_THRESHOLD_RATE = 0.01


def source_norms(W_dec: Float[Tensor, "d_sae d_in"], widths: tuple[int, ...]) -> Float[Tensor, "d_sae n_sources"]:
    """``||d_j^s||``: the norm of each latent's decoder row restricted to each source's block."""
    return torch.stack([block.norm(dim=1) for block in W_dec.split(list(widths), dim=1)], dim=1)


def split_sources(x: Float[Tensor, "batch d_in"], widths: tuple[int, ...]) -> list[Tensor]:
    """The blocks ``[x_1, ..., x_N]`` of a concatenated input."""
    return list(x.split(list(widths), dim=1))


@register("crosscoder")
class CrosscoderSAE(SAE):
    config_class = CrosscoderConfig
    cfg: CrosscoderConfig

    def _build(self, W_dec_FD: Tensor, gen: torch.Generator) -> None:
        # every source's block starts with the same norm 1/sqrt(N) (a random direction per block), so
        # the relative decoder norms start at 1/N for every source, whatever the widths
        blocks = [b / b.norm(dim=1, keepdim=True).clamp_min(1e-12) for b in W_dec_FD.split(list(self.cfg.source_widths), dim=1)]
        W = torch.cat(blocks, dim=1) / self.cfg.n_sources ** 0.5
        super()._build(W, gen)
        self.register_buffer("input_norm", torch.ones(self.cfg.n_sources))
        self.register_buffer("threshold", torch.tensor(-1.0))  # BatchTopK only; < 0: not estimated yet
        self.tie_shared_()

    @torch.no_grad()
    def tie_shared_(self) -> None:
        """With ``cfg.tie_shared``: give each designated shared latent one decoder row for every source (the mean
        of its blocks). A no-op otherwise."""
        n, N = self.cfg.shared_latents, self.cfg.n_sources
        if not (self.cfg.tie_shared and n):
            return
        rows = self.W_dec[:n].view(n, N, -1)
        rows.copy_(rows.mean(dim=1, keepdim=True).expand_as(rows))

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Crosscoder rows are free (no norm constraint); tied shared latents are re-tied after every step."""
        self.tie_shared_()

    # ----------------------------------------------------------------- pieces
    @property
    def source_widths(self) -> tuple[int, ...]:
        return self.cfg.source_widths

    def norm_vector(self) -> Float[Tensor, " d_in"]:
        """``input_norm`` repeated over each source's block (1 during training)."""
        widths = torch.tensor(self.cfg.source_widths, device=self.input_norm.device)
        return self.input_norm.repeat_interleave(widths).to(self.W_dec.dtype)

    def decoder_source_norms(self) -> Float[Tensor, "d_sae n_sources"]:
        """``||d_j^s||`` (detached)."""
        return source_norms(self.W_dec.detach(), self.cfg.source_widths)

    def _latent_weights(self) -> Float[Tensor, " d_sae"]:
        """``w_j = sum_s ||d_j^s||`` (with gradient)."""
        return source_norms(self.W_dec, self.cfg.source_widths).sum(dim=1)

    def pre_acts(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        x_BD = x.to(self.W_dec.dtype) * self.norm_vector()
        return (x_BD - self.b_dec) @ self.W_enc + self.b_enc

    def _select(self, pre_BF: Tensor, w_F: Tensor, train: bool) -> Tensor:
        """BatchTopK on ``ReLU(pi) w`` (training), or the threshold (inference); returns the kept ``ReLU(pi)``."""
        act_BF = torch.relu(pre_BF)
        score_BF = act_BF * w_F.detach()
        if train or float(self.threshold) < 0:
            flat = score_BF.flatten()
            n_keep = min(self.cfg.k * pre_BF.shape[0], flat.numel())
            vals, idx = flat.topk(n_keep, sorted=False)
            mask = torch.zeros_like(flat, dtype=torch.bool).index_fill_(0, idx, True).view_as(pre_BF)
            if train:
                with torch.no_grad():
                    kept = vals[vals > 0]
                    if kept.numel():
                        low = kept.min().to(self.threshold.dtype)
                        if float(self.threshold) < 0:
                            self.threshold.copy_(low)
                        else:
                            self.threshold.lerp_(low, _THRESHOLD_RATE)
        else:
            mask = score_BF > self.threshold
        return act_BF * mask

    # ----------------------------------------------------------------- forward
    def encode(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        pre_BF = self.pre_acts(x)
        if self.cfg.sparsity == "l1":
            return torch.relu(pre_BF)
        return self._select(pre_BF, self._latent_weights().detach(), train=False)

    def forward_train(self, x: Float[Tensor, "batch d_in"]) -> SAEOutput:
        pre_BF = self.pre_acts(x)
        w_F = self._latent_weights()
        if self.cfg.sparsity == "l1":
            z_BF = torch.relu(pre_BF)
            sparsity = (z_BF * (w_F * self.penalty_factors())).sum(dim=1).mean()
        else:
            z_BF = self._select(pre_BF, w_F, train=True)
            sparsity = pre_BF.new_zeros(())
        return SAEOutput(self.decode(z_BF), z_BF, pre_BF, sparsity)

    def penalty_factors(self) -> Float[Tensor, " d_sae"]:
        """1 per latent, ``shared_coeff_ratio`` for the designated shared latents."""
        f = torch.ones(self.cfg.d_sae, dtype=self.W_dec.dtype, device=self.W_dec.device)
        f[: self.cfg.shared_latents] = self.cfg.shared_coeff_ratio
        return f

    def decode(self, z: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_in"]:
        return (z.to(self.W_dec.dtype) @ self.W_dec + self.b_dec) / self.norm_vector()

    def decode_sparse(self, idx: Int[Tensor, "batch k"], vals: Float[Tensor, "batch k"]) -> Float[Tensor, "batch d_in"]:
        out_BD = F.embedding_bag(idx, self.W_dec, per_sample_weights=vals.to(self.W_dec.dtype), mode="sum")
        return (out_BD + self.b_dec) / self.norm_vector()

    def decode_source(self, z: Float[Tensor, "batch d_sae"], source: int) -> Float[Tensor, "batch width"]:
        """Reconstruction of source ``source`` alone (raw units)."""
        sl = self.cfg.source_slices()[source]
        return (z.to(self.W_dec.dtype) @ self.W_dec[:, sl] + self.b_dec[sl]) / self.input_norm[source]

    # ----------------------------------------------------------------- folding
    @torch.no_grad()
    def fold_input_scale_(self) -> None:
        """Move the trainer's per-source scale into ``input_norm`` (the weights stay in normalised units)."""
        s = self.input_scale
        scales = [float(v) for v in s] if isinstance(s, (list, tuple)) else [float(s)] * self.cfg.n_sources
        if all(v == 1.0 for v in scales):
            return
        self.input_norm.mul_(torch.tensor(scales, dtype=self.input_norm.dtype, device=self.input_norm.device))
        self.input_scale = 1.0
        norm = dict(self.meta.get("normalisation") or {})
        norm.update({"scale": scales, "folded_into_weights": False, "held_in": "input_norm"})
        norm.setdefault("method", "mean_squared_norm_per_source")
        norm.setdefault("target_mean_squared_norm", [self.cfg.d_in / self.cfg.n_sources] * self.cfg.n_sources)
        self.meta["normalisation"] = norm

    # ----------------------------------------------------------------- persistence
    def save(self, path, overwrite: bool = True):
        """As :meth:`SAE.save`; ``meta["sources"]`` describes every source (model, revision, site, dataset,
        subset), one entry per source - entries that are missing are filled with the source's index and width."""
        given = list(self.meta.get("sources") or [])
        if len(given) > self.cfg.n_sources:
            raise ConfigError(f"meta['sources'] describes {len(given)} sources but the crosscoder has {self.cfg.n_sources}",
                              "give one entry per source, in input order")
        sources = []
        for i, w in enumerate(self.cfg.source_widths):
            entry = dict(given[i]) if i < len(given) and isinstance(given[i], dict) else {}
            entry.setdefault("index", i)
            entry.setdefault("width", w)
            sources.append(entry)
        self.meta["sources"] = sources
        return super().save(path, overwrite=overwrite)

    @torch.no_grad()
    def reinit_latents_(self, idx: Tensor, directions: Float[Tensor, "k d_in"], enc_norm: float) -> None:
        super().reinit_latents_(idx, directions, enc_norm)
        self.tie_shared_()

    def extra_repr(self) -> str:
        return f"source_widths={self.cfg.source_widths}, d_sae={self.cfg.d_sae}, sparsity={self.cfg.sparsity}"

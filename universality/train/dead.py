"""Dead latents: a firing tracker and the three remedies (AuxK, ghost grads, resampling)."""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from universality.sae.base import SAE

__all__ = ["FiringTracker", "auxk_loss", "ghost_grads_loss", "resample_dead_"]


class FiringTracker:
    """Per-latent firing statistics over a window of ``window`` tokens.

    ``tokens_since_fired[i]``: tokens seen since latent ``i`` last fired; a latent is *dead* when
    this reaches ``window`` (Gao et al. 2024 use 10M tokens). ``density()``: firing frequency over
    the last complete window (the running partial window before the first one completes).
    """

    def __init__(self, d_sae: int, window: int, device: str | torch.device = "cpu") -> None:
        self.window = int(window)
        self.tokens_since_fired = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.count = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.count_tokens = 0
        self.last_density: Tensor | None = None

    @torch.no_grad()
    def update(self, acts: Float[Tensor, "batch d_sae"]) -> None:
        fired_BF = acts > 0
        n = acts.shape[0]
        fired_F = fired_BF.any(dim=0)
        self.tokens_since_fired += n
        self.tokens_since_fired[fired_F] = 0
        self.count += fired_BF.sum(dim=0)
        self.count_tokens += n
        if self.count_tokens >= self.window:
            self.last_density = self.count.double() / self.count_tokens
            self.count.zero_()
            self.count_tokens = 0

    @torch.no_grad()
    def update_sparse(self, idx: Tensor, vals: Tensor) -> None:
        """Same as :meth:`update` from the ``(batch, k)`` indices and values of the active latents."""
        n = idx.shape[0]
        fired = vals > 0
        count_F = torch.bincount(idx[fired], minlength=self.count.shape[0])
        self.tokens_since_fired += n
        self.tokens_since_fired[count_F > 0] = 0
        self.count += count_F
        self.count_tokens += n
        if self.count_tokens >= self.window:
            self.last_density = self.count.double() / self.count_tokens
            self.count.zero_()
            self.count_tokens = 0

    def dead_mask(self) -> Bool[Tensor, " d_sae"]:
        return self.tokens_since_fired >= self.window

    def revive_(self, latents: Tensor) -> None:
        self.tokens_since_fired[latents] = 0

    def density(self) -> Float[Tensor, " d_sae"]:
        if self.last_density is not None:
            return self.last_density
        return self.count.double() / max(self.count_tokens, 1)

    def state_tensors(self) -> dict[str, Tensor]:
        out = {"tokens_since_fired": self.tokens_since_fired, "count": self.count}
        if self.last_density is not None:
            out["last_density"] = self.last_density
        return out

    def load_state(self, tensors: dict[str, Tensor], count_tokens: int) -> None:
        self.tokens_since_fired = tensors["tokens_since_fired"].clone()
        self.count = tensors["count"].clone()
        self.last_density = tensors["last_density"].clone() if "last_density" in tensors else None
        self.count_tokens = int(count_tokens)


def auxk_loss(
    sae: SAE,
    x: Float[Tensor, "batch d_in"],
    x_hat: Float[Tensor, "batch d_in"],
    pre: Float[Tensor, "batch d_sae"],
    dead: Bool[Tensor, " d_sae"],
    k_aux: int,
) -> Tensor:
    """AuxK loss of Gao et al. 2024 (Section A.2), normalised like their reported MSE.

    .. math::
        e = x - \\hat x \\ (\\text{no gradient}), \\quad
        \\hat e = \\sum_{i \\in \\mathrm{TopK}_{k_{aux}}(\\pi_{dead})} \\pi_i W_{dec,i}, \\quad
        \\mathcal{L}_{aux} = \\frac{\\sum \\|e - \\hat e\\|^2}{\\sum \\|e - \\bar e\\|^2}

    The dead pre-activations ``pi`` are used without the ReLU, so latents whose pre-activation is
    negative everywhere still receive a gradient. Returns 0 when no latent is dead.

    The latents are chosen without gradient; their values come from ``sae.preactivations_at``, which
    for TopK sends the gradient to the encoder through the ``batch * k_aux`` chosen entries only (the
    same gradient as through ``pre``, without a dense ``batch x d_sae`` one).
    """
    n_dead = int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    k = min(k_aux, n_dead)
    # the top k among the dead columns only (the same latents as masking the live ones with -inf,
    # without a selection over every latent: usually few are dead)
    with torch.no_grad():
        dead_idx = dead.nonzero().squeeze(1).to(pre.device)
        idx_BK = dead_idx[pre.detach().index_select(1, dead_idx).topk(k, dim=-1, sorted=False).indices]
    vals_BK = sae.preactivations_at(x, pre, idx_BK)
    e_hat_BD = torch.nn.functional.embedding_bag(idx_BK, sae.W_dec, per_sample_weights=vals_BK.to(sae.W_dec.dtype), mode="sum")
    e_BD = (x - x_hat).detach().to(e_hat_BD.dtype)
    total = (e_BD - e_BD.mean(dim=0)).pow(2).sum().clamp_min(1e-12)
    return (e_BD - e_hat_BD).pow(2).sum() / total


def ghost_grads_loss(
    sae: SAE,
    x: Float[Tensor, "batch d_in"],
    x_hat: Float[Tensor, "batch d_in"],
    pre: Float[Tensor, "batch d_sae"],
    dead: Bool[Tensor, " d_sae"],
    mse: Tensor,
) -> Tensor:
    """Ghost grads (Anthropic, "Circuits Updates - January 2024").

    The dead latents, with ``exp`` in place of their activation function, reconstruct the
    residual ``e = x - x_hat`` (no gradient); their output is rescaled per row to half the norm of
    ``e`` (scale without gradient), and the loss is rescaled to the size of the main MSE:

    .. math::
        g = \\exp(\\pi_{dead}) W_{dec,dead}, \\quad g' = g \\frac{\\|e\\|}{2\\|g\\|}, \\quad
        \\mathcal{L}_{ghost} = \\mathrm{MSE}(g', e) \\cdot \\mathrm{sg}\\Big(\\frac{\\mathcal{L}_{mse}}{\\mathrm{MSE}(g', e)}\\Big)

    Returns 0 when no latent is dead.
    """
    if not bool(dead.any()):
        return pre.new_zeros(())
    e_BD = (x - x_hat).detach()
    g_BD = pre[:, dead].exp() @ sae.W_dec[dead]
    scale_B1 = (e_BD.norm(dim=1, keepdim=True) / (2 * g_BD.norm(dim=1, keepdim=True)).clamp_min(1e-12)).detach()
    g_BD = g_BD * scale_B1
    ghost_mse = (g_BD - e_BD).pow(2).sum(dim=1).mean()
    return ghost_mse * (mse.detach() / ghost_mse.detach().clamp_min(1e-12))


@torch.no_grad()
def resample_dead_(
    sae: SAE,
    x: Float[Tensor, "batch d_in"],
    dead: Bool[Tensor, " d_sae"],
    generator: torch.Generator,
    enc_scale: float = 0.2,
) -> Tensor:
    """Resample dead latents (Bricken et al. 2023, "Towards Monosemanticity", appendix).

    Rows are drawn with probability proportional to their squared reconstruction loss; each dead
    latent gets the (centred) input direction ``v / ||v||`` as its decoder row, ``v / ||v||``
    times ``enc_scale`` times the mean encoder norm of the live latents as its encoder column, and
    a zero encoder bias. Returns the resampled latent indices (the caller resets their optimizer
    moments and their firing counters).
    """
    idx_K = dead.nonzero().flatten()
    if idx_K.numel() == 0:
        return idx_K
    x_BD = x.to(sae.W_dec.dtype)
    loss_B = (sae(x_BD) - x_BD).pow(2).sum(dim=1)
    weights = loss_B.pow(2).double().cpu()
    if not torch.isfinite(weights).all() or weights.sum() <= 0:
        weights = torch.ones_like(weights)
    rows = torch.multinomial(weights, idx_K.numel(), replacement=True, generator=generator).to(x_BD.device)
    v_KD = x_BD[rows] - sae.b_dec
    v_KD = v_KD / v_KD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    alive = ~dead
    enc_norm = float(sae.W_enc[:, alive].norm(dim=0).mean()) if bool(alive.any()) else 1.0
    sae.reinit_latents_(idx_K, v_KD, enc_scale * enc_norm)
    return idx_K

"""Post-processing of trained dictionaries, after OpenMOSS's GPT-2 SAE work (Ge et al. 2024,
"Automatically Identifying Local and Global Circuits with Linear Computation Graphs", and the
OpenMOSS "Training and evaluating SAEs on GPT-2" notes; see ``/work/shared/background``).

**Pruning** drops trivial latents, any of

- maximum activation below ``max_act_below`` (default 1, in units of the *normalised* input,
  where ``E||x||^2 = d_in``; a folded SAE's activations are multiplied back by its recorded
  normalisation scale first);
- decoder row norm below ``norm_below`` (0.99) - only meaningful where decoder norms are free
  (``decoder_norm="free"`` before folding); unit-norm dictionaries never trip it;
- firing density below ``density_below`` (1e-6).

**Fine-tuning against feature suppression** (Wright & Sharkey 2024, "Addressing Feature
Suppression in SAEs"; used by OpenMOSS): with the encoder frozen (so the sparsity pattern is
kept), train the decoder (unit rows, bias free) and a per-latent scale ``exp(s_i)`` on the MSE
alone, then fold the scale into the encoder. Reports the L2 norm ratio ``||x̂||/||x||`` and the
explained variance before and after. Penalty-trained architectures only (relu, jumprelu, gated):
for TopK/BatchTopK a per-latent rescaling cannot be folded into the encoder without changing
which latents are selected.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from universality.errors import ConfigError, DataError
from universality.eval.metrics import ReconstructionStats, listed_rows
from universality.progress import progress_bar
from universality.sae import SAE, make_sae

__all__ = ["latent_stats", "prune_mask", "prune", "finetune_decoder"]


def _activation_unit(sae: SAE) -> float:
    """Factor turning this SAE's latents into normalised-input units."""
    if sae.input_scale != 1.0:
        raise ConfigError("post-processing expects a folded SAE (one that reads raw activations)", "call sae.folded() first")
    norm = sae.meta.get("normalisation") or {}
    return float(norm.get("scale", 1.0)) if norm.get("folded_into_weights") else 1.0


@torch.no_grad()
def latent_stats(sae: SAE, batches: Iterable[Tensor]) -> dict[str, Tensor]:
    """Per-latent maximum activation (normalised units) and firing density over raw ``batches``."""
    unit = _activation_unit(sae)
    max_act, count, n = None, None, 0
    rows = listed_rows(batches)
    for x in progress_bar(batches, "latent stats", leave=False, work=None if rows is None else rows * sae.d_sae):
        z = sae.encode(x)
        m = z.max(dim=0).values.double().cpu() * unit
        c = (z > 0).sum(dim=0).cpu()
        max_act = m if max_act is None else torch.maximum(max_act, m)
        count = c if count is None else count + c
        n += z.shape[0]
    if n == 0:
        raise DataError("latent_stats got no rows", "pass a non-empty iterable of (batch, d_in) tensors")
    return {"max_act": max_act, "density": count.double() / n, "n_rows": torch.tensor(n)}


def prune_mask(
    sae: SAE, stats: dict[str, Tensor], max_act_below: float = 1.0, norm_below: float = 0.99, density_below: float = 1e-6
) -> tuple[Bool[Tensor, " d_sae"], dict[str, int]]:
    """Latents to keep, and how many each criterion removes (a latent can meet several)."""
    low_act = stats["max_act"] < max_act_below
    low_norm = sae.decoder_norms().cpu() < norm_below if sae.cfg.decoder_norm == "free" else torch.zeros_like(low_act)
    rare = stats["density"] < density_below
    drop = low_act | low_norm | rare
    report = {"max_act": int(low_act.sum()), "decoder_norm": int(low_norm.sum()), "density": int(rare.sum()),
              "pruned": int(drop.sum()), "kept": int((~drop).sum())}
    return ~drop, report


@torch.no_grad()
def prune(sae: SAE, keep: Bool[Tensor, " d_sae"]) -> SAE:
    """A smaller SAE holding only the latents in ``keep`` (every per-latent tensor is sliced)."""
    keep = keep.to(torch.bool).cpu()
    n = int(keep.sum())
    if n == 0:
        raise ConfigError("pruning would remove every latent", "loosen the pruning thresholds")
    k = getattr(sae.cfg, "k", None)
    if k is not None and n < k:
        raise ConfigError(f"pruning keeps {n} latents, fewer than k={k}", "loosen the thresholds or lower k")
    out = make_sae(sae.cfg.replace(d_sae=n), meta=dict(sae.meta), device=sae.W_dec.device)
    out.input_scale = sae.input_scale
    idx = keep.nonzero().flatten().to(sae.W_dec.device)
    new = {}
    for name, value in sae.state_dict().items():
        if name == "W_enc":
            new[name] = value[:, idx]
        elif value.ndim >= 1 and value.shape[0] == sae.d_sae and name != "b_dec":
            new[name] = value[idx]
        else:
            new[name] = value
    out.load_weights_(new, source="pruned SAE")
    out.meta["pruned"] = {"kept": n, "of": sae.d_sae}
    return out


def finetune_decoder(
    sae: SAE,
    batches: Sequence[Float[Tensor, "batch d_in"]],
    steps: int,
    lr: float = 1e-2,
    eval_batches: Sequence[Float[Tensor, "batch d_in"]] | None = None,
) -> tuple[SAE, dict[str, float]]:
    """Fine-tune ``W_dec``, ``b_dec`` and a per-latent scale on the MSE with the encoder frozen.

    ``batches`` (raw activations) are cycled for ``steps`` Adam steps. Returns the new SAE and
    ``{l2_ratio_before, l2_ratio_after, explained_variance_before, explained_variance_after}``
    measured on ``eval_batches`` (default: ``batches``).
    """
    if sae.architecture in ("topk", "batchtopk") or getattr(sae.cfg, "tied", False):
        raise ConfigError(f"decoder fine-tuning needs an untied penalty-trained SAE, not {sae.architecture}{' (tied)' if sae.cfg.tied else ''}",
                          "use it on relu, jumprelu or gated SAEs")
    if not batches or steps < 1:
        raise DataError("finetune_decoder needs at least one batch and one step", "pass batches and steps >= 1")
    unit = _activation_unit(sae)
    work = make_sae(sae.cfg, meta=dict(sae.meta), device=sae.W_dec.device)
    work.load_weights_(sae.state_dict(), source="fine-tune copy")
    work._scale_outputs_(unit)  # work in normalised units: inputs are multiplied by `unit`
    for p in work.parameters():
        p.requires_grad_(False)
    work.W_dec.requires_grad_(True)
    work.b_dec.requires_grad_(True)
    log_scale = torch.zeros(work.d_sae, device=work.W_dec.device, dtype=work.W_dec.dtype, requires_grad=True)
    b_dec_enc = work.b_dec.detach().clone()  # the encoder keeps centring with the original b_dec
    opt = torch.optim.Adam([work.W_dec, work.b_dec, log_scale], lr=lr)
    evals = list(eval_batches) if eval_batches is not None else list(batches)

    def encode(x: Tensor) -> Tensor:
        with torch.no_grad():
            b = work.b_dec.data.clone()
            work.b_dec.data.copy_(b_dec_enc)
            z = work.encode(x)
            work.b_dec.data.copy_(b)
        return z

    def measure() -> dict[str, float]:
        stats = ReconstructionStats()
        with torch.no_grad():
            for x in evals:
                xn = x.to(work.W_dec.dtype) * unit
                z = encode(xn) * log_scale.exp()
                stats.update(xn, z @ work.W_dec + work.b_dec, z)
        s = stats.summary()
        return {"l2_ratio": s["l2_ratio"], "explained_variance": s["explained_variance"]}

    before = measure()
    size = steps * sum(int(b.shape[0]) for b in batches) / len(batches) * work.d_sae  # rows x latents of the steps
    for step in progress_bar(range(steps), "fine-tune decoder", unit="step", leave=False, work=size):
        xn = batches[step % len(batches)].to(work.W_dec.dtype) * unit
        z = encode(xn)
        x_hat = (z * log_scale.exp()) @ work.W_dec + work.b_dec
        loss = (x_hat - xn).pow(2).sum(dim=1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        work.remove_parallel_decoder_grad_()
        opt.step()
        work.normalize_decoder_()
    after = measure()
    with torch.no_grad():
        # fold: the encoder centres with b_dec_enc, the decoder adds the new b_dec
        b_new = work.b_dec.detach().clone()
        work.b_dec.copy_(b_dec_enc)
        work._scale_latents_(log_scale.detach().exp())
        out_b = b_new
    out = _with_separate_decoder_bias(work, out_b)
    out._scale_outputs_(1.0 / unit)
    for p in out.parameters():
        p.requires_grad_(True)
    report = {"l2_ratio_before": before["l2_ratio"], "l2_ratio_after": after["l2_ratio"],
              "explained_variance_before": before["explained_variance"], "explained_variance_after": after["explained_variance"],
              "steps": float(steps)}
    out.meta["finetuned"] = report
    return out, report


@torch.no_grad()
def _with_separate_decoder_bias(sae: SAE, b_dec_out: Tensor) -> SAE:
    """Move a change of the decoder bias into the encoder bias, so one ``b_dec`` serves both sides.

    The encoder reads ``x - b_dec``; replacing ``b_dec`` by ``b'`` shifts every pre-activation by
    ``-(b' - b_dec) W_enc``, which is undone in ``b_enc`` (and ``b_mag`` for Gated).
    """
    delta_D = (b_dec_out - sae.b_dec).to(sae.W_dec.dtype)
    sae.b_enc += delta_D @ sae.W_enc
    if sae.architecture == "gated":
        sae.b_mag += delta_D @ (sae.W_enc * sae.r_mag.exp())
    sae.b_dec.copy_(b_dec_out)
    return sae

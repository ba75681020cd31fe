"""A zoo model site as training data for ``benchmarks/train.py --zoo``, and CE loss recovered as a target.

:func:`zoo_site_data` trains a zoo preset (``tiny_pythia`` by default) on the shipped Shakespeare corpus with
its own small tokenizer, captures one site over packed contexts and returns the rows every library trains
on (scaled to ``E||x||^2 = d_in``, like the planted data), held-out rows for explained variance, and a
:class:`CEProbe` that splices a reconstruction into the model on held-out contexts. CE loss recovered is
``(CE_zero - CE_spliced) / (CE_zero - CE_clean)`` with the zero ablation (:mod:`universality.eval.downstream`;
Bricken et al. 2023).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from universality.eval.downstream import SpliceReference, ce_loss_recovered, next_token_ce, splice_reference


@dataclass
class CEProbe:
    """CE loss recovered (zero ablation) of a reconstruction spliced in at ``site`` on held-out contexts.
    ``scale`` is the factor the training rows were multiplied by: a reconstruction function trained on
    scaled rows is applied as ``f(act * scale) / scale``."""

    adapter: object
    site: str
    input_ids: Tensor
    ref: SpliceReference
    scale: float

    @torch.no_grad()
    def __call__(self, reconstruct: Callable[[Tensor], Tensor]) -> float:
        def fn(act: Tensor) -> Tensor:
            flat = act.reshape(-1, act.shape[-1]).float()
            return (reconstruct(flat * self.scale) / self.scale).to(act.dtype).reshape(act.shape)

        spliced = self.adapter.forward(self.input_ids, replace={self.site: fn})
        ce = next_token_ce(spliced, self.input_ids, None)
        return float(ce_loss_recovered(self.ref.ce_clean, ce, self.ref.ce_ablated["zero"]))


def zoo_site_data(preset: str, site: str, n_rows: int, batch: int, held_rows: int = 8192, ce_contexts: int = 32,
                  docs: int = 60, vocab: int = 320, seed: int = 0, workdir: str | None = None):
    """``(batches, held, probe, info)``: ``n_rows // batch`` training batches of ``site`` activations of
    ``preset`` trained on the first ``docs`` Shakespeare documents, ``held_rows`` held-out rows and the
    :class:`CEProbe` on ``ce_contexts`` held-out contexts. Rows come from contexts in a seeded order;
    training, held-out and CE contexts are disjoint."""
    from models.loading import load
    from universality.data.sources import shakespeare
    from universality.zoo import load_preset, train_lm
    from universality.zoo.corpus import pack_documents
    from universality.zoo.tokenizer import train_tokenizer

    root = Path(workdir or tempfile.mkdtemp(prefix="zoo-site-"))
    documents = list(shakespeare(limit=docs))
    tok = train_tokenizer([d.text for d in documents], vocab, root / "tokenizer")
    cfg = load_preset(preset, vocab_size=vocab)
    out = train_lm(cfg, documents, root / preset, tokenizer=tok, progress=False)
    adapter = load(out, device="cpu")
    rows = pack_documents(documents, tok, cfg.context_length)
    order = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(seed))
    rows = rows[order]
    ce_ids, rest = rows[:ce_contexts], rows[ce_contexts:]
    acts = []
    with torch.no_grad():
        for lo in range(0, rest.shape[0], 64):
            a = adapter.capture(rest[lo:lo + 64], [site])[site]
            acts.append(a.reshape(-1, a.shape[-1]).float())
    flat = torch.cat(acts)
    need = held_rows + batch
    if flat.shape[0] < need:
        raise SystemExit(f"{preset} gives {flat.shape[0]} rows of {site} from {docs} documents; need at least {need}: raise --zoo-docs")
    held, train = flat[:held_rows], flat[held_rows:]
    scale = float((train.shape[1] / train.pow(2).sum(dim=1).mean()).sqrt())
    unique = [train[i:i + batch] * scale for i in range(0, train.shape[0] - batch + 1, batch)]
    n_batches = max(1, n_rows // batch)
    batches = [unique[i % len(unique)] for i in range(n_batches)]
    probe = CEProbe(adapter, site, ce_ids, splice_reference(adapter, site, ce_ids, None, ("zero",)), scale)
    info = {"preset": preset, "site": site, "d_in": int(train.shape[1]), "documents": docs, "tokenizer_vocab": vocab,
            "contexts": int(rows.shape[0]), "context_length": cfg.context_length, "unique_training_rows": len(unique) * batch,
            "held_out_rows": held_rows, "ce_contexts": ce_contexts, "ce_clean": probe.ref.ce_clean,
            "ce_zero_ablation": probe.ref.ce_ablated["zero"], "model_steps": cfg.steps}
    return batches, held * scale, probe, info

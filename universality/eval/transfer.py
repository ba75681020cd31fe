"""Transfer (splice) tests: a dictionary trained on one checkpoint, applied to another's activations.

For checkpoints ``a`` and ``b`` of one training run, the dictionary trained on ``a`` is applied at the
same site of ``b`` (SAE-Track; Kissane et al. 2024 for base versus fine-tuned models) and scored
exactly like ``b``'s own (native) dictionary:

- explained variance of ``b``'s activations (:func:`universality.eval.metrics.explained_variance`);
- CE loss recovered (zero and mean ablation) and KL to the clean logits with the reconstruction
  spliced into ``b``'s forward pass (:func:`universality.eval.downstream.splice_metrics`).

Each number comes with its baselines: the native dictionary of ``b`` is the skyline, a random
dictionary of the same configuration (seeded from the pair, never the native's initialisation) the
floor, and ``normalised = (transferred - floor) / (native - floor)`` (KL: lower is better, so the
same formula reads "share of the gap to native closed").

A fine-tune continues its base's weights, so a base run and its fine-tunes form one lineage and
transfers between them are like-for-like too (dictionaries whose meta carries the same ``lineage``).
Across independently trained models (another seed, other data from scratch, another architecture)
the activation bases are unrelated, so a transferred dictionary means nothing: :func:`check_same_run`
refuses such a pair unless ``allow_other_runs=True``, and then every row says so in its ``note``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from universality.errors import MatchError
from universality.eval.downstream import SpliceReference, splice_reference, splice_scores
from universality.eval.metrics import explained_variance
from universality.io import stable_hash
from universality.progress import progress_bar
from universality.sites import Site, as_site

__all__ = ["check_same_run", "transfer_metrics", "transfer_series", "random_like", "OTHER_RUN_NOTE", "METRICS"]

OTHER_RUN_NOTE = ("the dictionary comes from another training run (other seed, data or architecture): the activation "
                  "bases are unrelated, so this transfer is not a like-for-like test")
#: metric -> True when higher is better
METRICS = {"explained_variance": True, "ce_loss_recovered_zero": True, "ce_loss_recovered_mean": True, "kl_sae": False}


def _run_of(meta: dict[str, Any]) -> tuple[Any, Any]:
    return meta.get("model"), meta.get("family")


def check_same_run(meta_a: dict[str, Any], meta_b: dict[str, Any], allow_other_runs: bool = False) -> str:
    """``""`` when both dictionaries come from models of one lineage, else :data:`OTHER_RUN_NOTE` when
    ``allow_other_runs``; raises otherwise.

    When both metas carry ``lineage`` (the zoo lineage id the activation readers record for zoo
    models, :func:`universality.zoo.lineage_of`; set it by hand for other models), equal ids decide:
    checkpoints of one run, and a base run with its fine-tunes (:func:`universality.zoo.finetune_lm`,
    the base-versus-fine-tune setting of Kissane et al. 2024), pass; different ids (another seed or
    other data trained from scratch) are refused. Otherwise both must record the same ``model`` and
    ``family`` (checkpoints of one run, any revision)."""
    la, lb = meta_a.get("lineage"), meta_b.get("lineage")
    if la is not None and lb is not None:
        if la == lb:
            return ""
        what = f"different lineages ({la!r} vs {lb!r}), not from one training run or its fine-tunes"
    else:
        ra, rb = _run_of(meta_a), _run_of(meta_b)
        if ra[0] is not None and ra == rb:
            return ""
        what = f"different models ({ra[0]!r} vs {rb[0]!r}), not from checkpoints of one training run"
    if allow_other_runs:
        return OTHER_RUN_NOTE
    raise MatchError(f"the dictionaries come from {what}, so their activation bases are unrelated",
                     "transfer between checkpoints of one run (or a run and its fine-tunes), or pass "
                     "allow_other_runs=True to report it with a warning")


def random_like(sae: Any, salt: str) -> Any:
    """A randomly initialised dictionary of ``sae``'s configuration (the floor), seeded from ``salt``
    and the configuration, so it never shares the trained dictionary's initial weights by accident."""
    # import cost: the SAE registry loads only when a floor is made
    from universality.sae import make_sae

    seed = int(stable_hash({"floor": salt, "cfg": sae.cfg.to_dict()}), 16) % (2**31 - 1)
    floor = make_sae(sae.cfg, seed=seed, meta={"floor": "random dictionary", "of": salt})
    floor.input_scale = getattr(sae, "input_scale", 1.0)
    return floor.to(sae.W_dec.device)


@torch.no_grad()
def _scores(adapter: Any, ref: SpliceReference, sae: Any, input_ids: Tensor, attention_mask: Tensor | None) -> dict[str, float]:
    """Explained variance of the site's activations, CE loss recovered (zero, mean) and KL of ``sae``
    spliced into ``adapter`` (:func:`universality.eval.downstream.splice_scores`)."""
    x = ref.acts.float()
    out = {"explained_variance": explained_variance(x, sae(x.to(sae.W_dec.dtype)).to(x.dtype))}
    out.update(splice_scores(adapter, ref, sae, input_ids, attention_mask))
    return out


@torch.no_grad()
def transfer_metrics(adapter_b: Any, sae_a: Any, sae_b: Any, site: str | Site, input_ids: Int[Tensor, "batch pos"],
                     attention_mask: Int[Tensor, "batch pos"] | None = None, allow_other_runs: bool = False,
                     floor: Any = None, cache: dict | None = None) -> list[dict[str, Any]]:
    """One row per metric: ``transferred`` (``sae_a`` on ``adapter_b``), ``native`` (``sae_b``, the
    skyline), ``floor`` (a random dictionary, :func:`random_like`) and ``normalised``.

    ``cache``: a dict shared by calls on the same ``input_ids`` (as :func:`transfer_series` does), so
    each model's reference passes and each (model, dictionary) score are computed once."""
    s = as_site(site)
    note = check_same_run(getattr(sae_a, "meta", {}), getattr(sae_b, "meta", {}), allow_other_runs)
    if sae_a.d_in != sae_b.d_in:
        raise MatchError(f"the dictionaries read widths {sae_a.d_in} and {sae_b.d_in}",
                         "transfer between checkpoints of one model at one site")
    cache = {} if cache is None else cache
    ref_key = ("reference", id(adapter_b), s)
    if ref_key not in cache:
        cache[ref_key] = splice_reference(adapter_b, s, input_ids, attention_mask)
    floor = floor if floor is not None else random_like(sae_b, f"{sae_a.meta.get('revision')}->{sae_b.meta.get('revision')}")
    got = {}
    for name, d in (("transferred", sae_a), ("native", sae_b), ("floor", floor)):
        key = ("scores", id(adapter_b), id(d), s)
        if key not in cache:
            cache[key] = _scores(adapter_b, cache[ref_key], d, input_ids, attention_mask)
        got[name] = cache[key]
    rows = []
    for metric in METRICS:
        t, n, f = got["transferred"][metric], got["native"][metric], got["floor"][metric]
        gap = n - f
        rows.append({"metric": metric, "transferred": t, "native": n, "floor": f,
                     "normalised": (t - f) / gap if abs(gap) > 1e-9 else float("nan"),
                     "higher_is_better": METRICS[metric], "note": note})
    return rows


def transfer_series(adapters: Sequence[Any], saes: Sequence[Any], labels: Sequence[str], site: str | Site,
                    input_ids: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"] | None = None,
                    allow_other_runs: bool = False, progress: bool = True) -> pd.DataFrame:
    """Every ordered pair of checkpoints: the dictionary of ``labels[i]`` applied to ``labels[j]``.

    ``adapters[j]`` / ``saes[j]`` are checkpoint ``j``'s model and native dictionary. Columns:
    ``dictionary_from``, ``applied_to``, ``metric``, ``transferred``, ``native``, ``floor``,
    ``normalised``, ``higher_is_better``, ``note``; the diagonal (``i == j``) is left out.
    """
    if not (len(adapters) == len(saes) == len(labels)):
        raise MatchError(f"{len(adapters)} models, {len(saes)} dictionaries and {len(labels)} labels",
                         "give one model and one native dictionary per checkpoint label")
    pairs = [(i, j) for j in range(len(labels)) for i in range(len(labels)) if i != j]
    floors = {j: random_like(saes[j], f"floor@{labels[j]}") for j in range(len(labels))}
    rows, cache = [], {}
    for i, j in progress_bar(pairs, "transfer", progress=progress):
        for r in transfer_metrics(adapters[j], saes[i], saes[j], site, input_ids, attention_mask, allow_other_runs,
                                  floor=floors[j], cache=cache):
            rows.append({"dictionary_from": labels[i], "applied_to": labels[j], **r})
    return pd.DataFrame(rows, columns=["dictionary_from", "applied_to", "metric", "transferred", "native", "floor",
                                       "normalised", "higher_is_better", "note"])

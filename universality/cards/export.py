"""Export feature cards in the layout SAEDashboard's Neuronpedia runner writes, for Neuronpedia.

:func:`export_neuronpedia` writes the single cards of one :class:`~universality.cards.card.CardSet`
as the ``batch-<n>.json`` files that SAEDashboard's ``NeuronpediaRunner`` produces (repository
jbloomAus/SAEDashboard, ``sae_dashboard/neuronpedia/neuronpedia_dashboard.py``: the classes
``NeuronpediaDashboardBatch`` / ``NeuronpediaDashboardFeature`` / ``NeuronpediaDashboardActivation``
that build and read these files). That folder is what Neuronpedia's tooling converts into its
database rows (SAEDashboard's ``neuronpedia_export.export_neuronpedia_dashboards``, Neuronpedia's
``utils/neuronpedia-utils/.../convert-saedashboard-to-neuronpedia-export.py``), which compute each
activation's ``maxValue`` / ``maxValueTokenIndex`` / ``minValue`` and each feature's
``maxActApprox`` from the ``values`` written here.

Layout of ``out_dir`` (written whole, atomically: a reader or a crash sees the complete folder or
none; :func:`universality.io.atomic_dir`)::

    batch-0.json ... batch-<n>.json   features sorted by latent, ``batch_size`` per file
    skipped_indexes.json              latents with a card but no example (dead on this text)
    universality_export.json          provenance: the card set's dictionary and text, the settings

One batch file::

    {"model_id": str, "layer": int, "sae_set": str, "sae_id_suffix": null,
     "features": [{"feature_index": int,
                   "activations": [{"tokens": [str], "values": [float], "bin_min": float,
                                    "bin_max": float, "bin_contains": float,
                                    "qualifying_token_index": int}, ...],
                   "frac_nonzero": float,
                   "freq_hist_data_bar_values": [float], "freq_hist_data_bar_heights": [int],
                   "pos_str": [str], "pos_values": [float], "neg_str": [str], "neg_values": [float],
                   "n_prompts_total": int, "n_tokens_in_prompt": int, "dataset": str,
                   ... the fields listed below as defaults ...}]}

How a :class:`~universality.cards.card.FeatureCard` maps onto it:

* ``latent`` -> ``feature_index``; ``density`` (firings / tokens) -> ``frac_nonzero``.
* ``top`` contexts -> activation records with SAEDashboard's "top activations" markers
  ``bin_min = -1``, ``bin_contains = -1`` and ``bin_max`` = the card's ``max_value``.
* each :class:`~universality.cards.card.QuantileBand` example -> an activation record with
  ``bin_min = lo``, ``bin_max = hi`` (the band's activation range) and ``bin_contains = share``
  (fraction of all firings in the band).
* every record: ``tokens`` / ``values`` = the context window as is, ``qualifying_token_index`` =
  its ``focus`` (the token the example is about).
* histogram: ``freq_hist_data_bar_heights`` = ``hist_counts``, ``freq_hist_data_bar_values`` = the
  midpoints of the bins ``[hist_edges[i], hist_edges[i+1])``. The cards' bins are log-spaced while
  SAEDashboard's are linear; Neuronpedia draws one bar per value and labels its range from the
  spacing of neighbouring values, so the bars and counts are exact but the hover ranges approximate.
* ``promoted`` -> ``pos_str`` / ``pos_values``, ``suppressed`` -> ``neg_str`` / ``neg_values`` (all
  of them, in the card's order; Neuronpedia's upload API takes at most 20 of each).

What the cards do not have, filled with the defaults of SAEDashboard's reader
(``NeuronpediaDashboardFeature.__init__`` / ``NeuronpediaDashboardBatch.__init__``; Neuronpedia
shows an empty list as "not available"):

* ``neuron_alignment_indices`` / ``_values`` / ``_l1``, ``correlated_neurons_indices`` /
  ``_l1`` / ``_pearson``, ``correlated_features_indices`` / ``_l1`` / ``_pearson``: ``[]``;
* ``logits_hist_data_bar_heights`` / ``logits_hist_data_bar_values``: ``[]`` (the cards keep the
  strongest logit effects, not their histogram);
* ``decoder_weights_dist``: ``[]``; ``vector``: ``[]`` (no steering vector);
* ``n_prompts_total`` / ``n_tokens_in_prompt``: ``0`` and ``dataset``: ``""`` unless passed;
* ``sae_id_suffix``: ``null``; the optional DFA fields (``dfa_values``, ``dfa_maxValue``,
  ``dfa_targetIndex``) are left out, as the runner does without DFA.

Not exported: ``token_identity``, ``top_tokens``, ``mean_value``, ``tags`` and the pair cards (the
reader rejects fields it does not know, so they stay in ``cards.json``).

Neuronpedia names a source ``f"{layer}-{sae_set}"``: ``layer`` is taken from the site of the card
set's dictionary (``cards.a["site"]``, ``blocks.<layer>.<hook>``) unless given.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from universality.cards.card import CARDS_FORMAT, CardSet, Context, FeatureCard
from universality.errors import ArtifactError, ConfigError, UnknownSiteError
from universality.io import atomic_dir, atomic_write_text, write_json
from universality.sites import Site

__all__ = ["EXPORT_FORMAT", "SKIPPED_FILE", "PROVENANCE_FILE", "export_neuronpedia", "feature_record"]

EXPORT_FORMAT = "universality.neuronpedia-export/1"
SKIPPED_FILE = "skipped_indexes.json"
PROVENANCE_FILE = "universality_export.json"

_TOP_BIN = -1.0  # SAEDashboard's marker for the top-activations group (bin_min and bin_contains)


def _number(x: float, what: str) -> float:
    x = float(x)
    if not math.isfinite(x):
        raise ArtifactError(f"{what} is {x} (not finite)", "re-create the cards; the export writes strict JSON")
    return x


def _activation(ctx: Context, bin_min: float, bin_max: float, bin_contains: float, where: str) -> dict[str, Any]:
    if len(ctx.tokens) != len(ctx.values) or not ctx.tokens:
        raise ArtifactError(f"{where} has {len(ctx.tokens)} tokens but {len(ctx.values)} values",
                            "re-create the cards; every context needs one value per token")
    if not 0 <= ctx.focus < len(ctx.tokens):
        raise ArtifactError(f"{where} has focus {ctx.focus} outside its {len(ctx.tokens)}-token window",
                            "re-create the cards")
    return {
        "bin_min": bin_min,
        "bin_max": bin_max,
        "bin_contains": bin_contains,
        "tokens": [str(t) for t in ctx.tokens],
        "values": [_number(v, f"a value of {where}") for v in ctx.values],
        "qualifying_token_index": int(ctx.focus),
    }


def _histogram(card: FeatureCard) -> tuple[list[float], list[int]]:
    edges, counts = card.hist_edges, card.hist_counts
    if not counts:
        return [], []
    if len(edges) != len(counts) + 1:
        raise ArtifactError(f"latent {card.latent}: {len(edges)} histogram edges for {len(counts)} bins",
                            "re-create the cards; a histogram has one more edge than bins")
    mids = [_number((edges[i] + edges[i + 1]) / 2, f"latent {card.latent}: histogram edge") for i in range(len(counts))]
    return mids, [int(c) for c in counts]


def _logits(pairs: Sequence[tuple[str, float]], latent: int, what: str) -> tuple[list[str], list[float]]:
    return [str(t) for t, _ in pairs], [_number(v, f"latent {latent}: {what} logit") for _, v in pairs]


def feature_record(card: FeatureCard, *, n_prompts_total: int = 0, n_tokens_in_prompt: int = 0,
                   dataset: str = "") -> dict[str, Any]:
    """One card as a ``features`` entry of a batch file (every field SAEDashboard's reader takes)."""
    density = _number(card.density, f"latent {card.latent}: density")
    if not 0.0 <= density <= 1.0:
        raise ArtifactError(f"latent {card.latent}: density {density} outside [0, 1]", "re-create the cards")
    top_max = _number(card.max_value, f"latent {card.latent}: max_value")
    acts = [_activation(c, _TOP_BIN, top_max, _TOP_BIN, f"latent {card.latent} top context {i}")
            for i, c in enumerate(card.top)]
    for j, band in enumerate(card.bands):
        lo = _number(band.lo, f"latent {card.latent}: band {j} low edge")
        hi = _number(band.hi, f"latent {card.latent}: band {j} high edge")
        share = _number(band.share, f"latent {card.latent}: band {j} share")
        acts += [_activation(c, lo, hi, share, f"latent {card.latent} band {j} example {i}")
                 for i, c in enumerate(band.examples)]
    bar_values, bar_heights = _histogram(card)
    pos_str, pos_values = _logits(card.promoted, card.latent, "promoted")
    neg_str, neg_values = _logits(card.suppressed, card.latent, "suppressed")
    return {
        "feature_index": int(card.latent),
        "neuron_alignment_indices": [],
        "neuron_alignment_values": [],
        "neuron_alignment_l1": [],
        "correlated_neurons_indices": [],
        "correlated_neurons_l1": [],
        "correlated_neurons_pearson": [],
        "correlated_features_indices": [],
        "correlated_features_l1": [],
        "correlated_features_pearson": [],
        "neg_str": neg_str,
        "neg_values": neg_values,
        "pos_str": pos_str,
        "pos_values": pos_values,
        "frac_nonzero": density,
        "freq_hist_data_bar_values": bar_values,
        "freq_hist_data_bar_heights": bar_heights,
        "logits_hist_data_bar_heights": [],
        "logits_hist_data_bar_values": [],
        "n_prompts_total": int(n_prompts_total),
        "n_tokens_in_prompt": int(n_tokens_in_prompt),
        "dataset": str(dataset),
        "decoder_weights_dist": [],
        "activations": acts,
        "vector": [],
    }


def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or value != value.strip() or "/" in value or "\\" in value:
        raise ConfigError(f"{what} must be a non-empty name without slashes or surrounding spaces, got {value!r}",
                          f"pass e.g. {what}='gpt2-small'" if what == "model_id" else f"pass e.g. {what}='res-jb'")
    return value


def _layer_of(described: dict[str, Any], layer: int | None) -> int:
    if layer is not None:
        if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
            raise ConfigError(f"layer must be a non-negative integer, got {layer!r}", "pass e.g. layer=6")
        return layer
    site = described.get("site")
    try:
        return Site.parse(site).layer
    except UnknownSiteError:
        raise ConfigError(f"cannot tell the layer from the card set's site {site!r}",
                          "pass layer= (Neuronpedia names the source '<layer>-<sae_id>')") from None


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} exists and is not a folder", "choose a new folder for the export")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(f"{out_dir} already exists and is not empty",
                          "choose a new folder, or pass overwrite=True to replace it")


def export_neuronpedia(cards: CardSet, out_dir: str | os.PathLike, model_id: str, sae_id: str, batch_size: int = 128,
                       *, layer: int | None = None, side: str = "a", overwrite: bool = False,
                       n_prompts_total: int = 0, n_tokens_in_prompt: int = 0, dataset: str = "") -> list[Path]:
    """Write the single cards of ``side`` as SAEDashboard/Neuronpedia ``batch-<n>.json`` files.

    ``model_id``: Neuronpedia's model id (``"gpt2-small"``); ``sae_id``: the source set name
    (``sae_set`` in the files, e.g. ``"res-jb"``); ``batch_size``: features per file (Neuronpedia's
    upload API takes at most 128 per request); ``layer``: defaults to the layer of
    ``cards.a["site"]`` (``cards.b`` for ``side="b"``); ``overwrite``: replace a non-empty
    ``out_dir``; ``n_prompts_total`` / ``n_tokens_in_prompt`` / ``dataset``: what the examples were
    drawn from, recorded on every feature. Everything is checked before anything is written, and
    the folder appears whole. Returns the batch files in order. See the module docstring for the
    mapping and the defaults.
    """
    if side not in ("a", "b"):
        raise ConfigError(f"side must be 'a' or 'b', got {side!r}", "pass side='a' or side='b'")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}", "pass e.g. batch_size=128")
    for name, v in (("n_prompts_total", n_prompts_total), ("n_tokens_in_prompt", n_tokens_in_prompt)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ConfigError(f"{name} must be a non-negative integer, got {v!r}", f"pass {name}=0 when unknown")
    model_id, sae_id = _check_name(model_id, "model_id"), _check_name(sae_id, "sae_id")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    described = cards.a if side == "a" else cards.b
    chosen = cards.cards_a if side == "a" else cards.cards_b
    if described is None or not chosen:
        raise ConfigError(f"the card set has no single cards on side {side!r}", "export side='a', or build cards for B")
    layer = _layer_of(described, layer)
    latents = [c.latent for c in chosen]
    if len(set(latents)) != len(latents):
        dup = next(x for x in latents if latents.count(x) > 1)
        raise ArtifactError(f"the card set holds two cards for latent {dup} on side {side!r}", "re-create the cards")

    # Build every file in memory first: a bad card fails before anything touches the disk.
    live: list[dict[str, Any]] = []
    skipped: list[int] = []
    for card in sorted(chosen, key=lambda c: c.latent):
        rec = feature_record(card, n_prompts_total=n_prompts_total, n_tokens_in_prompt=n_tokens_in_prompt,
                             dataset=dataset)
        if rec["activations"]:
            live.append(rec)
        else:  # dead on this text: Neuronpedia creates these from skipped_indexes.json
            skipped.append(card.latent)
    texts = []
    for start in range(0, len(live), batch_size):
        batch = {"model_id": model_id, "layer": layer, "sae_set": sae_id, "sae_id_suffix": None,
                 "features": live[start:start + batch_size]}
        texts.append(json.dumps(batch, allow_nan=False, separators=(",", ":")))
    names = [f"batch-{i}.json" for i in range(len(texts))]
    provenance = {
        "format": EXPORT_FORMAT, "cards_format": CARDS_FORMAT, "layout": "sae_dashboard neuronpedia batch",
        "model_id": model_id, "sae_set": sae_id, "layer": layer, "side": side, "dictionary": described,
        "text": cards.text, "batch_size": batch_size, "batches": names, "n_features": len(live),
        "skipped_indexes": skipped, "meta": cards.meta,
    }
    with atomic_dir(out_dir, overwrite=True) as tmp:
        for name, text in zip(names, texts):
            atomic_write_text(tmp / name, text)
        atomic_write_text(tmp / SKIPPED_FILE, json.dumps(
            {"model_id": model_id, "layer": str(layer), "sae_set": sae_id, "skipped_indexes": skipped}))
        write_json(tmp / PROVENANCE_FILE, provenance)
    return [out_dir / n for n in names]

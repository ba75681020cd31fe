"""What a feature card holds: plain, immutable records that serialise to JSON.

A :class:`CardSet` is the cards of one dictionary (or the pair cards of two) over one evaluation
text, with the provenance that says which dictionary, which text and how many tokens. It is written
as one JSON file (``cards.json``, format :data:`CARDS_FORMAT`) and read back with
:meth:`CardSet.load`; the HTML page (:mod:`analysis.cards_page`) and the viewer export
(:mod:`universality.cards.export`) read only these records.

Activation values are the dictionary's codes (``SAE.encode``), in the units of its own input
(after the store's normalisation, when the dictionary was trained on normalised inputs).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from universality.errors import ArtifactError
from universality.io import read_json, write_json

__all__ = ["CARDS_FORMAT", "Context", "QuantileBand", "FeatureCard", "PairCard", "CardSet"]

CARDS_FORMAT = "universality.cards/1"


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


@dataclass(frozen=True)
class Context:
    """One evaluation context around a token where the latent fires.

    ``tokens``: the decoded tokens of the window (text as the tokenizer spells it); ``values``: the
    latent's activation on every token of the window (0 where it does not fire); ``focus``: index in
    the window of the token the example is about; ``row``: that token's row in the evaluation text;
    ``value``: the activation there. ``other``: for a pair card, the partner latent's activation on
    the same window (``None`` on single cards).
    """

    tokens: tuple[str, ...]
    values: tuple[float, ...]
    focus: int
    row: int
    value: float
    other: tuple[float, ...] | None = None


@dataclass(frozen=True)
class QuantileBand:
    """Examples of one activation quantile band: ``lo`` and ``hi`` are the activations (in the codes'
    units) that bound the band, ``share`` the fraction of the latent's firings in it (1 / number of
    bands: the bands split a uniform sample of the firings at its quantiles)."""

    lo: float
    hi: float
    share: float
    examples: tuple[Context, ...]


@dataclass(frozen=True)
class FeatureCard:
    """Everything the card of one latent shows.

    ``density``: firings / tokens; ``histogram``: counts of the positive activations in the bins
    ``[edges[i], edges[i+1])`` (log-spaced; bins outside the observed range left out);
    ``token_identity``: the cross-fitted share of the latent's activation that token identity alone
    predicts (1: a token detector, 0: context decides; see :mod:`universality.cards.stats`), NaN
    when the latent never fires; ``top_tokens``: the tokens carrying most of its activation mass,
    with their share; ``promoted`` / ``suppressed``: direct logit effect of the decoder direction
    (token, logit change per unit activation), empty when the site has no unembedding path.
    """

    latent: int
    fires: int
    n_tokens: int
    density: float
    max_value: float
    mean_value: float
    top: tuple[Context, ...]
    bands: tuple[QuantileBand, ...]
    hist_edges: tuple[float, ...]
    hist_counts: tuple[int, ...]
    token_identity: float
    top_tokens: tuple[tuple[str, float], ...] = ()
    promoted: tuple[tuple[str, float], ...] = ()
    suppressed: tuple[tuple[str, float], ...] = ()
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class PairCard:
    """Latent ``a`` of dictionary A and latent ``b`` of dictionary B on the same evaluation tokens.

    ``correlation``: Pearson correlation of the two activations over the tokens; ``cosine``: cosine
    of the decoder rows when both dictionaries read the same basis, else ``None``; ``score``: the
    match's own score (``MatchResult.scores``); ``only_a`` / ``only_b``: the strongest contexts where
    one latent fires and the other does not (each :class:`Context` carries the partner's values in
    ``other``); ``both``: the strongest contexts where both fire.
    """

    a: int
    b: int
    score: float
    correlation: float
    cosine: float | None
    both: tuple[Context, ...]
    only_a: tuple[Context, ...]
    only_b: tuple[Context, ...]
    fires_a: int
    fires_b: int
    fires_both: int
    tags: tuple[str, ...] = ()


def _context(d: dict[str, Any]) -> Context:
    return Context(tokens=tuple(d["tokens"]), values=tuple(float(v) for v in d["values"]), focus=int(d["focus"]),
                   row=int(d["row"]), value=float(d["value"]),
                   other=None if d.get("other") is None else tuple(float(v) for v in d["other"]))


def _pairs(items: Any) -> tuple[tuple[str, float], ...]:
    return tuple((str(t), float(v)) for t, v in items or ())


def _card(d: dict[str, Any]) -> FeatureCard:
    nan = float("nan")
    return FeatureCard(
        latent=int(d["latent"]), fires=int(d["fires"]), n_tokens=int(d["n_tokens"]), density=float(d["density"]),
        max_value=float(d["max_value"]), mean_value=nan if d["mean_value"] is None else float(d["mean_value"]),
        top=tuple(_context(c) for c in d["top"]),
        bands=tuple(QuantileBand(lo=float(b["lo"]), hi=float(b["hi"]), share=float(b["share"]),
                                 examples=tuple(_context(c) for c in b["examples"])) for b in d["bands"]),
        hist_edges=tuple(float(e) for e in d["hist_edges"]), hist_counts=tuple(int(c) for c in d["hist_counts"]),
        token_identity=nan if d["token_identity"] is None else float(d["token_identity"]),
        top_tokens=_pairs(d.get("top_tokens")), promoted=_pairs(d.get("promoted")),
        suppressed=_pairs(d.get("suppressed")), tags=tuple(d.get("tags") or ()))


def _pair(d: dict[str, Any]) -> PairCard:
    return PairCard(
        a=int(d["a"]), b=int(d["b"]), score=float("nan") if d["score"] is None else float(d["score"]),
        correlation=float("nan") if d["correlation"] is None else float(d["correlation"]),
        cosine=None if d.get("cosine") is None else float(d["cosine"]),
        both=tuple(_context(c) for c in d["both"]), only_a=tuple(_context(c) for c in d["only_a"]),
        only_b=tuple(_context(c) for c in d["only_b"]), fires_a=int(d["fires_a"]), fires_b=int(d["fires_b"]),
        fires_both=int(d["fires_both"]), tags=tuple(d.get("tags") or ()))


def _clean(obj: Any) -> Any:
    """NaN/Inf -> None, tuples -> lists (strict JSON)."""
    if isinstance(obj, float):
        return _finite(obj)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


@dataclass(frozen=True)
class CardSet:
    """The cards of dictionary ``a`` (and pair cards with ``b``) over one evaluation text.

    ``a`` / ``b``: self-description of each dictionary (path, model, revision, site, architecture,
    width, ...); ``text``: where the evaluation tokens came from (store path or study spans, token
    count, tokenizer); ``cards_a`` / ``cards_b``: single cards by latent; ``pairs``: pair cards;
    ``unmatched_a`` / ``unmatched_b``: latents with no partner above the match threshold (live ones
    only); ``lineage``: chains over checkpoints, each a list of ``(label, latent)`` steps whose cards
    are in ``lineage_cards[label]``; ``groups``: named lists of items a report links to (``best
    matches`` ...), each item ``"a:<latent>"``, ``"b:<latent>"``, ``"pair:<index into pairs>"`` or
    ``"lineage:<index into lineage>"``; ``meta``: the settings (examples, window, seed).
    """

    a: dict[str, Any]
    text: dict[str, Any]
    cards_a: tuple[FeatureCard, ...]
    b: dict[str, Any] | None = None
    cards_b: tuple[FeatureCard, ...] = ()
    pairs: tuple[PairCard, ...] = ()
    unmatched_a: tuple[int, ...] = ()
    unmatched_b: tuple[int, ...] = ()
    lineage: tuple[tuple[tuple[str, int], ...], ...] = ()
    lineage_cards: dict[str, tuple[FeatureCard, ...]] = field(default_factory=dict)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sizes = {"a": {c.latent for c in self.cards_a}, "b": {c.latent for c in self.cards_b}}
        for name, items in self.groups.items():
            for item in items:
                kind, _, num = item.partition(":")
                ok = num.isdigit() and (
                    (kind in sizes and int(num) in sizes[kind]) or (kind == "pair" and int(num) < len(self.pairs))
                    or (kind == "lineage" and int(num) < len(self.lineage)))
                if not ok:
                    raise ArtifactError(f"group {name!r} names {item!r}, which the card set holds no card for",
                                        "name items as a:<latent>, b:<latent>, pair:<i> or lineage:<i> of cards in the set")

    def card(self, latent: int, side: str = "a") -> FeatureCard:
        """The card of ``latent`` on side ``a`` or ``b``; KeyError when the set holds none for it."""
        for c in self.cards_a if side == "a" else self.cards_b:
            if c.latent == latent:
                return c
        raise KeyError(f"no card for latent {latent} of side {side}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lineage_cards"] = {k: [asdict(c) for c in v] for k, v in self.lineage_cards.items()}
        return _clean({"format": CARDS_FORMAT, **d})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CardSet:
        if d.get("format") != CARDS_FORMAT:
            raise ArtifactError(f"not a card set (format {d.get('format')!r}, expected {CARDS_FORMAT!r})",
                                "write cards with universality-tool cards")
        return cls(
            a=dict(d["a"]), text=dict(d["text"]), cards_a=tuple(_card(c) for c in d["cards_a"]),
            b=None if d.get("b") is None else dict(d["b"]), cards_b=tuple(_card(c) for c in d.get("cards_b") or ()),
            pairs=tuple(_pair(p) for p in d.get("pairs") or ()), unmatched_a=tuple(int(i) for i in d.get("unmatched_a") or ()),
            unmatched_b=tuple(int(i) for i in d.get("unmatched_b") or ()),
            lineage=tuple(tuple((str(lbl), int(i)) for lbl, i in chain) for chain in d.get("lineage") or ()),
            lineage_cards={k: tuple(_card(c) for c in v) for k, v in (d.get("lineage_cards") or {}).items()},
            groups={k: tuple(str(i) for i in v) for k, v in (d.get("groups") or {}).items()},
            meta=dict(d.get("meta") or {}))

    def save(self, path: str | Path) -> Path:
        """Write ``cards.json`` atomically (strict JSON: NaN written as null)."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> CardSet:
        return cls.from_dict(read_json(path))

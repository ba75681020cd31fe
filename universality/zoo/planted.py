"""Planted positives: corpora where a marked text family is known to be in D \\ D' (or late in training).

A *planted pattern* is a synthetic text that never occurs in natural text: a fixed random sequence
of nonsense words drawn from a seeded generator, prefixed with a marker. Models learn such a
sequence quickly when it is repeated, so

- :func:`planted_corpus` builds D = base documents + documents carrying the pattern (metadata
  ``planted=True``) and D' = the base documents only, as :class:`~universality.data.subsets.Subset`\\ s
  of the same source, so a model trained on D learns the pattern and one trained on D' cannot
  (``text_loss(model_D, probe) < text_loss(model_D', probe)``);
- ``train_lm(..., inject={"after_step": S, "texts": pattern_texts})`` introduces the same kind of
  text only after checkpoint ``S``, so the pattern is learned only after that step.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from universality.errors import ConfigError

__all__ = ["synthetic_pattern", "word_passage", "PlantedCorpus", "planted_corpus", "PLANTED_FIELD"]

#: Metadata field marking planted documents (``True``) in :func:`planted_corpus`'s source.
PLANTED_FIELD = "planted"
_CONSONANTS = "bcdfghjklmnpqrstvwxz"
_VOWELS = "aeiou"


def synthetic_pattern(seed: int = 0, n_words: int = 24, marker: str = "@@zq") -> str:
    """A fixed nonsense sentence: ``marker`` then ``n_words`` random consonant-vowel words, from ``seed``.

    The same arguments always give the same string; different seeds give unrelated ones.
    """
    if n_words < 1:
        raise ConfigError(f"n_words must be >= 1, got {n_words}", "ask for at least one word")
    rng = random.Random(f"universality.zoo.planted/{seed}")
    words = []
    for _ in range(n_words):
        length = rng.randint(2, 3)
        words.append("".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(length)))
    return f"{marker} " + " ".join(words) + "."


def word_passage(texts: Iterable[str], seed: int = 0, n_words: int = 24, vocabulary: int = 200) -> str:
    """A fixed passage of ``n_words`` *common* words of ``texts`` in a seeded random order.

    Every word is among the ``vocabulary`` most frequent lower-case words of ``texts``, so each of
    its tokens also occurs all over the corpus: what sets the passage apart is its order, which a
    model can only know after it has learned the passage. Features that fire on the passage more
    than its tokens do elsewhere are therefore the model's doing, not the SAE's data
    (:func:`analysis.studies.common.context_excess`). Same arguments, same passage.
    """
    import collections
    import re

    if n_words < 1 or vocabulary < 1:
        raise ConfigError(f"n_words and vocabulary must be >= 1, got {n_words}, {vocabulary}", "ask for at least one word")
    counts = collections.Counter(w for t in texts for w in re.findall(r"[a-z]+", t.lower()))
    common = sorted(w for w, _ in counts.most_common(vocabulary))
    if len(common) < 2:
        raise ConfigError("word_passage needs a corpus with at least two distinct words", "pass the corpus text")
    rng = random.Random(f"universality.zoo.planted.words/{seed}")
    words = rng.sample(common, n_words) if n_words <= len(common) else [rng.choice(common) for _ in range(n_words)]
    return " ".join(words).capitalize() + "."


@dataclass(frozen=True)
class PlantedCorpus:
    """D (``full``), D' (``subset``, without the planted documents) and the planted pattern.

    ``full`` and ``subset`` are :class:`~universality.data.subsets.Subset`\\ s of one source named
    ``source_name``; ``planted`` are the planted documents' texts; ``probe`` is the pattern once
    (so a model cannot predict it by copying an earlier repeat in its context), on which to
    compare models' losses with :func:`~universality.zoo.text_loss`.
    """

    full: Any
    subset: Any
    pattern: str
    planted: tuple[str, ...]
    probe: tuple[str, ...]


def planted_corpus(
    base_texts: Iterable[str],
    *,
    n_planted: int = 64,
    repeats: int = 4,
    pattern: str | None = None,
    seed: int = 0,
    subset_spec: Any = None,
    name: str = "planted",
) -> PlantedCorpus:
    """D = ``base_texts`` + ``n_planted`` documents of the pattern; D' = ``subset_spec`` of D minus them.

    Each planted document is the pattern repeated ``repeats`` times (one per line). Planted
    documents are interleaved evenly among the base documents (ids ``<name>/<index>``, metadata
    ``planted=True``). D' is :class:`~universality.data.subsets.AllOf` ``(subset_spec,
    Complement(MetaEquals("planted", True)))`` (just the complement when ``subset_spec`` is None),
    so the pattern is in D \\ D' by construction.
    """
    # import cost: universality.data pulls torch and numpy; the pattern helpers here stay torch-free
    from universality.data.sources import Document
    from universality.data.subsets import AllOf, Complement, MetaEquals, select_subset

    base = [t for t in base_texts if t]
    if not base:
        raise ConfigError("planted_corpus needs base texts", "pass the corpus the pattern is planted into")
    if n_planted < 1 or repeats < 1:
        raise ConfigError(f"n_planted and repeats must be >= 1, got {n_planted}, {repeats}", "plant at least one copy")
    pattern = pattern or synthetic_pattern(seed)
    planted_doc = "\n".join([pattern] * repeats)
    stride = max(1, len(base) // n_planted)
    docs: list[Document] = []
    placed = 0
    for i, text in enumerate(base):
        if placed < n_planted and i % stride == 0:
            docs.append(Document(f"{name}/{len(docs)}", planted_doc, {"source": name, PLANTED_FIELD: True}))
            placed += 1
        docs.append(Document(f"{name}/{len(docs)}", text, {"source": name, PLANTED_FIELD: False}))
    while placed < n_planted:
        docs.append(Document(f"{name}/{len(docs)}", planted_doc, {"source": name, PLANTED_FIELD: True}))
        placed += 1
    without = Complement(MetaEquals(PLANTED_FIELD, (True,)))
    spec = without if subset_spec is None else AllOf((subset_spec, without))
    full = select_subset(docs, None, name=name)
    subset = select_subset(docs, spec, name=name)
    return PlantedCorpus(full=full, subset=subset, pattern=pattern, planted=(planted_doc,) * n_planted, probe=(pattern,))

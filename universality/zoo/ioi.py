"""A templated indirect-object-identification (IOI) text family, and clean/corrupted prompt pairs.

IOI (Wang et al. 2022) sentences name two people, then repeat one of them (the subject ``S``) and
end where the other one (the indirect object ``IO``) is the answer:
``"When Mary and John went to the store, John gave a drink to"`` -> ``" Mary"``. Cunningham et al.
2023 ("Sparse autoencoders find highly interpretable features", section 4) patch SAE features of a
model's residual stream on this task; :mod:`universality.eval.patching` does that here.

- :func:`ioi_texts` / :func:`ioi_documents`: the training family (complete sentences, several per
  document), which a study adds to its corpus with ``corpus.ioi: true`` (opt-in: existing studies,
  their corpora and their caches are unchanged);
- :func:`ioi_pairs`: clean prompts and their corruptions (the repeated name swapped, so the answer
  flips from IO to S), tokenised to equal lengths, with the IO and S token ids;
- :func:`logit_diff` (IO logit minus S logit at the final position) and :func:`require_learned`,
  which refuses a model whose mean clean logit difference is below :data:`MIN_LOGIT_DIFF`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from universality.errors import ConfigError

__all__ = ["NAMES", "TEMPLATES", "MIN_LOGIT_DIFF", "IOI_FIELD", "ioi_texts", "ioi_documents", "IOIPairs",
           "ioi_pairs", "logit_diff", "require_learned"]

#: Metadata field marking IOI documents (``True``) in a study corpus.
IOI_FIELD = "ioi"
#: Mean clean logit difference (nats, IO minus S at the final position) a model must reach before a
#: patching study runs on it: ``exp(1) ~ 2.7`` times more probable IO than S on average.
MIN_LOGIT_DIFF = 1.0

NAMES = ("Mary", "John", "Tom", "Anna", "Paul", "Kate", "James", "Lucy", "Mark", "Sarah", "David", "Emma")
PLACES = ("store", "garden", "school", "market", "park", "house", "station", "river")
OBJECTS = ("drink", "book", "ring", "letter", "bone", "basket", "kiss", "coin")
#: ``{A}``/``{B}``: the two names of the first clause; ``{S}``: the repeated one; the IO completes the sentence.
TEMPLATES = (
    "When {A} and {B} went to the {place}, {S} gave a {obj} to",
    "After {A} and {B} went to the {place}, {S} gave a {obj} to",
    "While {A} and {B} were working at the {place}, {S} gave a {obj} to",
    "Then, {A} and {B} had a long day at the {place}. {S} gave a {obj} to",
    "When {A} and {B} got a {obj} at the {place}, {S} decided to give it to",
)


def _sample(rng: random.Random, names: tuple[str, ...]) -> dict[str, str]:
    io, s = rng.sample(names, 2)
    a, b = (io, s) if rng.random() < 0.5 else (s, io)
    t = rng.randrange(len(TEMPLATES))
    return {"A": a, "B": b, "S": s, "IO": io, "place": rng.choice(PLACES), "obj": rng.choice(OBJECTS), "t": str(t)}


def _prompt(x: dict[str, str], s2: str) -> str:
    return TEMPLATES[int(x["t"])].format(A=x["A"], B=x["B"], S=s2, place=x["place"], obj=x["obj"])


def ioi_texts(n: int, seed: int = 0, names: tuple[str, ...] = NAMES) -> list[str]:
    """``n`` complete IOI sentences (prompt + ``" IO."``), from ``seed``; same arguments, same list."""
    if n < 1 or len(names) < 2:
        raise ConfigError(f"ioi_texts needs n >= 1 and two names, got n={n}, {len(names)} names", "ask for more")
    rng = random.Random(f"universality.zoo.ioi/{seed}")
    out = []
    for _ in range(n):
        x = _sample(rng, names)
        out.append(f"{_prompt(x, x['S'])} {x['IO']}.")
    return out


def ioi_documents(n_docs: int, per_doc: int = 8, seed: int = 0, name: str = "ioi") -> list[Any]:
    """``n_docs`` :class:`~universality.data.sources.Document`\\ s of ``per_doc`` IOI sentences each (one a
    line), ids ``<name>/<i>``, metadata ``{"source": name, "ioi": True}``."""
    # import cost: universality.data pulls numpy and the tokenizers stack; the text helpers here need none of it
    from universality.data.sources import Document

    if n_docs < 1 or per_doc < 1:
        raise ConfigError(f"ioi_documents needs n_docs, per_doc >= 1, got {n_docs}, {per_doc}", "ask for at least one")
    texts = ioi_texts(n_docs * per_doc, seed=seed)
    return [Document(f"{name}/{i}", "\n".join(texts[i * per_doc:(i + 1) * per_doc]), {"source": name, IOI_FIELD: True})
            for i in range(n_docs)]


@dataclass(frozen=True)
class IOIPairs:
    """Clean prompts (repeated name ``S``, answer ``IO``) and corrupted ones (repeated name ``IO``, so the
    answer flips to ``S``); row ``i`` of ``clean`` and ``corrupt`` differ only in the repeated name's token.

    ``clean``/``corrupt``: ``(n, pos)`` token ids (``<|endoftext|>`` first, as the zoo trains); ``io``/``s``:
    ``(n,)`` token ids of ``" IO"`` and ``" S"``; ``texts``: the clean prompts.
    """

    clean: Int[Tensor, "n pos"]
    corrupt: Int[Tensor, "n pos"]
    io: Int[Tensor, " n"]
    s: Int[Tensor, " n"]
    texts: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    def split(self, n_first: int) -> tuple["IOIPairs", "IOIPairs"]:
        """The first ``n_first`` pairs and the rest."""
        def part(sl: slice) -> "IOIPairs":
            return IOIPairs(self.clean[sl], self.corrupt[sl], self.io[sl], self.s[sl], self.texts[sl])
        return part(slice(0, n_first)), part(slice(n_first, None))


def single_token_names(tokenizer: Any, names: tuple[str, ...] = NAMES) -> tuple[str, ...]:
    """The ``names`` whose ``" Name"`` is one token of ``tokenizer`` (each with its own id)."""
    out, seen = [], set()
    for nm in names:
        ids = tokenizer.encode(" " + nm, add_special_tokens=False)
        if len(ids) == 1 and ids[0] not in seen:
            out.append(nm)
            seen.add(ids[0])
    return tuple(out)


def ioi_pairs(tokenizer: Any, n: int, seed: int = 1) -> IOIPairs:
    """``n`` clean/corrupted IOI prompt pairs for ``tokenizer``, all of one token length (prompts are drawn
    from ``seed`` and the most common length is kept, so rows stack without padding and position ``-1``
    is every prompt's last token).

    Raises :class:`ConfigError` when fewer than 3 of :data:`NAMES` are single tokens of ``tokenizer``."""
    names = single_token_names(tokenizer, NAMES)
    if len(names) < 3:
        raise ConfigError(f"only {len(names)} of the IOI names are single tokens of this tokenizer ({names})",
                          "train the tokenizer on a corpus with corpus.ioi: true so the names become tokens")
    eos = tokenizer.eos_token_id
    rng = random.Random(f"universality.zoo.ioi.pairs/{seed}")
    rows: dict[int, list[tuple[list[int], list[int], int, int, str]]] = {}
    tries = 0
    while sum(len(v) for v in rows.values()) < 8 * n and tries < 50 * n:
        tries += 1
        x = _sample(rng, names)
        clean, corrupt = _prompt(x, x["S"]), _prompt(x, x["IO"])
        c = [eos] + tokenizer.encode(clean, add_special_tokens=False)
        k = [eos] + tokenizer.encode(corrupt, add_special_tokens=False)
        if len(c) != len(k):
            continue
        io = tokenizer.encode(" " + x["IO"], add_special_tokens=False)[0]
        s = tokenizer.encode(" " + x["S"], add_special_tokens=False)[0]
        rows.setdefault(len(c), []).append((c, k, io, s, clean))
    length = max(rows, key=lambda L: len(rows[L]))
    got = rows[length][:n]
    if len(got) < n:
        raise ConfigError(f"could draw only {len(got)} IOI pairs of one length, asked for {n}", "ask for fewer pairs")
    t = torch.tensor
    return IOIPairs(t([g[0] for g in got]), t([g[1] for g in got]), t([g[2] for g in got]), t([g[3] for g in got]),
                    tuple(g[4] for g in got))


def logit_diff(logits: Float[Tensor, "n pos vocab"], io: Int[Tensor, " n"], s: Int[Tensor, " n"]) -> Float[Tensor, " n"]:
    """Per prompt: logit of the IO token minus logit of the S token at the final position."""
    last = logits[:, -1].double()
    idx = torch.arange(last.shape[0], device=last.device)
    return (last[idx, io.to(last.device)] - last[idx, s.to(last.device)]).cpu()


def require_learned(value: float, model: str, threshold: float = MIN_LOGIT_DIFF) -> None:
    """Refuse (:class:`ConfigError`) a model whose mean clean IOI logit difference ``value`` is below ``threshold``."""
    if not value >= threshold:
        raise ConfigError(
            f"model {model!r} has not learned the IOI task: mean logit difference (IO - S) {value:.3f} < {threshold:g}",
            "train it on a corpus with corpus.ioi: true for more steps (e.g. overrides: {steps: 1200})")

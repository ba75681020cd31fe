"""Cross-tokenizer alignment: rows of model A and model B over the same units of text.

Two tokenizers cut the same text differently (one token of A may cover two of B, and the other
way round; some tokenizers leave whitespace uncovered). To compare activations row by row, both
tokenizations are mapped onto shared *units*: character spans that each side covers with whole
tokens.

**Rule.** Let ``T_A`` and ``T_B`` be the character spans ``[s, e)`` of the text tokens of A and B
(special tokens such as BOS, which cover no characters, are left out). A character position ``p``
is a *cut* when no token of either side straddles it (no ``[s, e)`` with ``s < p < e`` in
``T_A`` or in ``T_B``); only token starts and ends are candidates. Consecutive cuts
``c_k < c_{k+1}`` bound the unit ``[c_k, c_{k+1})``. Every token lies inside exactly one unit
(a token contains no cut strictly inside it), and a unit is the smallest span that both sides
tile with whole tokens: one A token over three B tokens gives one unit (one-to-many), two A tokens
over one B token gives one unit (many-to-one), and equal cuts give one-to-one units. A token with
an empty span (``s == e``, e.g. a byte piece of a character the tokenizer also emitted) joins the
unit containing ``s``. Units that hold tokens of only one side (text the other tokenizer skipped)
are dropped and counted in :attr:`Alignment.n_dropped`.

**Pooling.** A unit's row for one side is either the mean of that side's token rows in the unit
(``"mean"``) or the row of its last token (``"last"``: in a causal model the last token of a unit
is the first that has read all of it). :meth:`Alignment.pool` applies it; :meth:`pool_matrix`
returns the same map as an explicit ``(n_units, n_tokens)`` matrix; :meth:`pairs` gives index
pairs ``(i_A, i_B)`` of last tokens.

Several texts are aligned at once by passing one span array per text (:func:`align_tokens` with
lists); units never cross texts and token indices count rows of the texts concatenated in order.
:func:`align_many` applies the same rule to any number of tokenizations (a cut must be free on every
side; a unit is kept when every side has a token in it), for crosscoders over sources on N tokenizers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from universality.errors import ConfigError, DataError

__all__ = ["Alignment", "MultiAlignment", "align_many", "align_tokens"]

_POOLS = ("mean", "last")


@dataclass(frozen=True)
class Alignment:
    """Units shared by two tokenizations and the map from each side's tokens onto them."""

    units: Int[Tensor, "unit 2"]  # character span of each unit (in the concatenated coordinates)
    unit_of_a: Int[Tensor, " n_a"]  # unit index of each A token, -1 where dropped
    unit_of_b: Int[Tensor, " n_b"]
    n_dropped: int
    text_index: Int[Tensor, " unit"]  # which input text each unit belongs to

    @property
    def n_units(self) -> int:
        return int(self.units.shape[0])

    def _unit_of(self, side: str) -> Tensor:
        if side not in ("a", "b"):
            raise ConfigError(f"side must be 'a' or 'b', got {side!r}", "pass side='a' or side='b'")
        return self.unit_of_a if side == "a" else self.unit_of_b

    def last_index(self, side: str) -> Int[Tensor, " unit"]:
        """Index of the last token of each unit on ``side``."""
        unit_of = self._unit_of(side)
        keep = unit_of >= 0
        idx = torch.full((self.n_units,), -1, dtype=torch.int64)
        positions = torch.arange(unit_of.shape[0], dtype=torch.int64)
        idx.scatter_reduce_(0, unit_of[keep], positions[keep], reduce="amax")
        return idx

    def pairs(self) -> tuple[Int[Tensor, " unit"], Int[Tensor, " unit"]]:
        """``(i_A, i_B)``: for each unit, the last token on each side (``"last"`` pooling as pairs)."""
        return self.last_index("a"), self.last_index("b")

    def counts(self, side: str) -> Int[Tensor, " unit"]:
        unit_of = self._unit_of(side)
        return torch.bincount(unit_of[unit_of >= 0], minlength=self.n_units)

    def pool_matrix(self, side: str, how: str = "mean") -> Float[Tensor, "unit n_tokens"]:
        """Dense ``(n_units, n_tokens)`` matrix ``P`` with ``P @ acts == pool(acts, side, how)``."""
        _check_pool(how)
        unit_of = self._unit_of(side)
        P = torch.zeros(self.n_units, unit_of.shape[0])
        if how == "mean":
            keep = unit_of >= 0
            cols = torch.arange(unit_of.shape[0])[keep]
            P[unit_of[keep], cols] = 1.0 / self.counts(side).to(torch.float32)[unit_of[keep]]
        else:
            P[torch.arange(self.n_units), self.last_index(side)] = 1.0
        return P

    def pool(self, acts: Float[Tensor, "n_tokens d"], side: str, how: str = "mean") -> Float[Tensor, "unit d"]:
        """Rows of ``acts`` (one per token of ``side``) pooled onto the units."""
        _check_pool(how)
        unit_of = self._unit_of(side)
        if acts.shape[0] != unit_of.shape[0]:
            raise DataError(
                f"side {side} has {unit_of.shape[0]} tokens but acts has {acts.shape[0]} rows",
                "pass one activation row per text token, in the order given to align_tokens",
            )
        if how == "last":
            return acts.index_select(0, self.last_index(side).to(acts.device))
        keep = (unit_of >= 0).to(acts.device)
        out = torch.zeros(self.n_units, *acts.shape[1:], dtype=torch.float32, device=acts.device)
        rows = keep.nonzero().squeeze(1)
        out.index_add_(0, unit_of.to(acts.device).index_select(0, rows), acts.index_select(0, rows).float())
        counts = self.counts(side).to(acts.device).clamp_min(1).float()
        return (out / counts.view(-1, *([1] * (acts.dim() - 1)))).to(acts.dtype)


def _check_pool(how: str) -> None:
    if how not in _POOLS:
        raise ConfigError(f"unknown pooling {how!r}", f"use one of {_POOLS}")


def _as_spans(spans) -> np.ndarray:
    arr = np.asarray(spans.cpu() if isinstance(spans, Tensor) else spans, dtype=np.int64)
    if arr.size == 0:
        return arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise DataError(f"token spans must have shape (n, 2), got {arr.shape}", "pass [[start, end], ...]")
    if (arr[:, 0] < 0).any() or (arr[:, 1] < arr[:, 0]).any():
        raise DataError("token spans must satisfy 0 <= start <= end", "pass character offsets from the tokenizer")
    return arr


def _per_text(spans) -> list[np.ndarray]:
    """One ``(n, 2)`` array per text: a tensor/array or a list of pairs is one text."""
    if isinstance(spans, (Tensor, np.ndarray)):
        return [_as_spans(spans)]
    items = list(spans)
    if items and all(isinstance(x, (Tensor, np.ndarray)) for x in items):
        return [_as_spans(x) for x in items]
    try:
        arr = np.asarray(items, dtype=np.int64)
    except ValueError:  # ragged: a list of texts given as lists of pairs
        return [_as_spans(x) for x in items]
    if arr.ndim == 2 or arr.size == 0:
        return [_as_spans(arr)]
    return [_as_spans(x) for x in arr]


def _straddled(spans: np.ndarray, length: int) -> np.ndarray:
    """``out[p]`` is True when some span has ``s < p < e``."""
    diff = np.zeros(length + 2, dtype=np.int64)
    wide = spans[spans[:, 1] - spans[:, 0] >= 2]
    np.add.at(diff, wide[:, 0] + 1, 1)
    np.add.at(diff, wide[:, 1], -1)
    return np.cumsum(diff)[: length + 1] > 0


def _align_sides(sides: list[list[np.ndarray]]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], int]:
    """The rule of the module docstring over any number of sides: ``(units, text_index, unit_of per side,
    n_dropped)``; a unit is kept when every side has a token in it."""
    n_texts = {len(side) for side in sides}
    if len(n_texts) != 1:
        raise DataError(f"the sides hold different numbers of texts {[len(s) for s in sides]}", "tokenize the same texts for every side")
    units, text_index = [], []
    unit_of: list[list[np.ndarray]] = [[] for _ in sides]
    n_dropped, offset, n_units = 0, 0, 0
    for t in range(n_texts.pop()):
        spans = [side[t] for side in sides]
        length = int(max(s[:, 1].max(initial=0) for s in spans))
        blocked = np.zeros(length + 1, dtype=bool)
        for s in spans:
            blocked |= _straddled(s, length)
        candidates = np.unique(np.concatenate([s.ravel() for s in spans] + [np.array([0, length])]))
        cuts = candidates[~blocked[candidates]]
        n_local = max(len(cuts) - 1, 1)

        def locate(sp: np.ndarray) -> np.ndarray:
            if len(sp) == 0:
                return np.zeros(0, dtype=np.int64)
            return np.clip(np.searchsorted(cuts, sp[:, 0], side="right") - 1, 0, n_local - 1)

        located = [locate(s) for s in spans]
        kept = np.ones(n_local, dtype=bool)
        for u in located:
            kept &= np.bincount(u, minlength=n_local) > 0
        real = np.zeros(n_local, dtype=bool)  # units spanning at least one token of some side
        real[np.unique(np.concatenate(located))] = True
        n_dropped += int((real & ~kept).sum())
        new_index = np.full(n_local, -1, dtype=np.int64)
        new_index[kept] = n_units + np.arange(int(kept.sum()))
        starts = cuts[:-1] if len(cuts) > 1 else np.array([0])
        ends = cuts[1:] if len(cuts) > 1 else np.array([length])
        units.append(np.stack([starts[kept], ends[kept]], axis=1) + offset)
        text_index.append(np.full(int(kept.sum()), t, dtype=np.int64))
        for out, u in zip(unit_of, located):
            out.append(new_index[u] if len(u) else u)
        n_units += int(kept.sum())
        offset += length + 1
    if n_units == 0:
        raise DataError("the tokenizations share no aligned unit", "check that every side tokenized the same text")
    return (np.concatenate(units), np.concatenate(text_index), [np.concatenate(u) for u in unit_of], n_dropped)


def align_tokens(
    spans_a: Int[Tensor, "n_a 2"] | Sequence[Int[Tensor, "n 2"]],
    spans_b: Int[Tensor, "n_b 2"] | Sequence[Int[Tensor, "n 2"]],
) -> Alignment:
    """Align two tokenizations of the same text(s) by character spans (rule in the module docstring).

    ``spans_a``/``spans_b`` are the ``[start, end)`` character spans of the *text* tokens (leave
    BOS/PAD out), either one array for one text or a list with one array per text; the two lists
    must describe the same texts in the same order.
    """
    list_a, list_b = _per_text(spans_a), _per_text(spans_b)
    if len(list_a) != len(list_b):
        raise DataError(f"{len(list_a)} texts on side a but {len(list_b)} on side b", "tokenize the same texts for both")
    units, text_index, (unit_of_a, unit_of_b), n_dropped = _align_sides([list_a, list_b])
    return Alignment(units=torch.from_numpy(units), unit_of_a=torch.from_numpy(unit_of_a),
                     unit_of_b=torch.from_numpy(unit_of_b), n_dropped=n_dropped, text_index=torch.from_numpy(text_index))


@dataclass(frozen=True)
class MultiAlignment:
    """Units shared by N tokenizations (the same rule: a cut is a position no token of any side straddles;
    a unit is kept when every side has a token in it) and the map from each side's tokens onto them."""

    units: Int[Tensor, "unit 2"]
    unit_of: tuple[Int[Tensor, " n_tokens"], ...]  # per side: unit index of each token, -1 where dropped
    n_dropped: int
    text_index: Int[Tensor, " unit"]

    @property
    def n_units(self) -> int:
        return int(self.units.shape[0])

    def pair(self, i: int, j: int) -> Alignment:
        """Sides ``i`` and ``j`` as a two-sided :class:`Alignment` over these units."""
        return Alignment(self.units, self.unit_of[i], self.unit_of[j], self.n_dropped, self.text_index)

    def pool(self, acts: Float[Tensor, "n_tokens d"], side: int, how: str = "last") -> Float[Tensor, "unit d"]:
        """Rows of ``acts`` (one per token of ``side``) pooled onto the units (see :meth:`Alignment.pool`)."""
        if not 0 <= side < len(self.unit_of):
            raise ConfigError(f"side {side} out of range for {len(self.unit_of)} sides", f"pass 0..{len(self.unit_of) - 1}")
        return self.pair(side, side).pool(acts, "a", how)


def align_many(sides: Sequence[Int[Tensor, "n 2"] | Sequence[Int[Tensor, "n 2"]]]) -> MultiAlignment:
    """Align N tokenizations of the same text(s): ``sides[i]`` holds side ``i``'s text-token spans, one array
    per text (as for :func:`align_tokens`). With two sides the units equal :func:`align_tokens`'s."""
    lists = [_per_text(s) for s in sides]
    if len(lists) < 2:
        raise ConfigError(f"align_many needs at least two sides, got {len(lists)}", "pass one span list per tokenizer")
    units, text_index, unit_of, n_dropped = _align_sides(lists)
    return MultiAlignment(torch.from_numpy(units), tuple(torch.from_numpy(u) for u in unit_of), n_dropped,
                          torch.from_numpy(text_index))

"""Feature lineage across an ordered series of dictionaries (training checkpoints, or layers).

Between consecutive dictionaries ``D_t`` and ``D_{t+1}`` every feature gets its best partner on the
other side (top-1 of the blocked similarity). With a threshold :math:`\\theta`:

- *continue*: ``i`` at ``t`` and ``j`` at ``t+1`` are each other's best partner with :math:`S_{ij} > \\theta`;
- *split*: ``i`` at ``t`` is the best partner (above :math:`\\theta`) of two or more features at ``t+1``;
- *merge*: ``j`` at ``t+1`` is the best partner (above :math:`\\theta`) of two or more features at ``t``;
- *birth*: ``j`` at ``t+1`` has no partner above :math:`\\theta` at ``t``;
- *death*: ``i`` at ``t`` has no partner above :math:`\\theta` at ``t+1``.

Chains follow *continue* links; a chain's persistence is its number of steps (dictionaries it spans).

Consecutive dictionaries that started from the same initial weights (:func:`~universality.sae.identity.shared_initialisation`)
look continuous for that reason alone: ``Lineage.meta['shared_initialisation']`` lists them per step, and a
warning names those that are not checkpoints of one training run (for which a shared start is expected).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from universality.errors import MatchError
from universality.match.api import resolve_view
from universality.match.similarity import topk_partners
from universality.sae.identity import same_training_run, shared_initialisation

__all__ = ["Lineage", "lineage"]


@dataclass(frozen=True)
class Lineage:
    """``events``: one row per event (step, event, feature_from, feature_to, score); ``chains``: one row
    per chain (chain, start, end, persistence, features - the feature index at each step); ``meta``:
    ``shared_initialisation`` - ``{step: reason}`` for consecutive dictionaries that share their initial weights."""

    events: pd.DataFrame
    chains: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> pd.DataFrame:
        """Number of events of each kind per step transition, the transitions in the order of the series
        (not sorted as strings, which would put ``step100->step150`` before ``step16->step32``)."""
        table = self.events.pivot_table(index="step", columns="event", values="score", aggfunc="size", fill_value=0)
        return table.reindex(list(dict.fromkeys(self.events["step"])))


def lineage(
    dictionaries: Sequence[Any],
    threshold: float = 0.7,
    view: str = "decoder",
    labels: Sequence[str] | None = None,
    activations: Any = None,
    token_ids: Any = None,
) -> Lineage:
    """Events and chains of features across ``dictionaries`` (ordered; ``labels`` name the steps).

    ``view='activations'`` needs ``activations``/``token_ids`` (one tensor for every step, or a list of
    one per step when the steps read different spaces - e.g. layers).
    """
    T = len(dictionaries)
    if T < 2:
        raise MatchError(f"lineage needs at least two dictionaries, got {T}", "pass an ordered series")
    labels = list(labels) if labels is not None else [str(t) for t in range(T)]
    if len(labels) != T:
        raise MatchError(f"{len(labels)} labels for {T} dictionaries", "give one label per dictionary")
    acts = activations if isinstance(activations, (list, tuple)) else [activations] * T
    toks = token_ids if isinstance(token_ids, (list, tuple)) else [token_ids] * T
    events: list[dict[str, Any]] = []
    links: list[dict[int, int]] = []
    sizes: list[int] = []
    shared: dict[str, str] = {}
    for t in range(T - 1):
        reason = None if dictionaries[t] is dictionaries[t + 1] else shared_initialisation(dictionaries[t], dictionaries[t + 1])
        if reason is not None:
            shared[f"{labels[t]}->{labels[t + 1]}"] = reason
            if not same_training_run(dictionaries[t], dictionaries[t + 1]):
                warnings.warn(f"lineage step {labels[t]}->{labels[t + 1]}: {reason}", stacklevel=2)
        av, bv, kind = resolve_view(dictionaries[t], dictionaries[t + 1], view, (acts[t], acts[t + 1]),
                                    (toks[t], toks[t + 1]), "cpu")
        tk = topk_partners(av, bv, kind, k=1, progress=False)
        bj, bjv = tk.row_indices[:, 0].numpy(), tk.row_values[:, 0].double().numpy()
        bi, biv = tk.col_indices[:, 0].numpy(), tk.col_values[:, 0].double().numpy()
        n, m = tk.n, tk.m
        if t == 0:
            sizes.append(n)
        sizes.append(m)
        step = f"{labels[t]}->{labels[t + 1]}"
        link: dict[int, int] = {}
        for i in range(n):
            j = int(bj[i])
            if bjv[i] > threshold and int(bi[j]) == i:
                link[i] = j
                events.append({"step": step, "event": "continue", "feature_from": i, "feature_to": j,
                               "score": float(bjv[i])})
            elif bjv[i] <= threshold:
                events.append({"step": step, "event": "death", "feature_from": i, "feature_to": -1,
                               "score": float(bjv[i])})
        children: dict[int, list[int]] = {}
        for j in range(m):
            if biv[j] > threshold:
                children.setdefault(int(bi[j]), []).append(j)
            else:
                events.append({"step": step, "event": "birth", "feature_from": -1, "feature_to": j,
                               "score": float(biv[j])})
        for i, js in children.items():
            if len(js) > 1:
                for j in js:
                    events.append({"step": step, "event": "split", "feature_from": i, "feature_to": j,
                                   "score": float(biv[j])})
        parents: dict[int, list[int]] = {}
        for i in range(n):
            if bjv[i] > threshold:
                parents.setdefault(int(bj[i]), []).append(i)
        for j, is_ in parents.items():
            if len(is_) > 1:
                for i in is_:
                    events.append({"step": step, "event": "merge", "feature_from": i, "feature_to": j,
                                   "score": float(bjv[i])})
        links.append(link)
    # chains: start at every feature that is not the continuation of an earlier one
    continued = [set(link.values()) for link in links]
    chains = []
    for t in range(T):
        for f in range(sizes[t]):
            if t > 0 and f in continued[t - 1]:
                continue
            path, cur, s = [f], f, t
            while s < T - 1 and cur in links[s]:
                cur = links[s][cur]
                path.append(cur)
                s += 1
            chains.append({"chain": len(chains), "start": labels[t], "end": labels[s], "persistence": len(path),
                           "features": path})
    ev = pd.DataFrame(events, columns=["step", "event", "feature_from", "feature_to", "score"])
    ch = pd.DataFrame(chains, columns=["chain", "start", "end", "persistence", "features"])
    ch["persistence"] = ch["persistence"].astype(np.int64)
    return Lineage(ev, ch, {"shared_initialisation": shared} if shared else {})

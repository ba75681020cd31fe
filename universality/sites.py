"""The canonical site grammar, shared by every model family.

A *site* is a place in a model whose activations can be read. Names follow TransformerLens hook
names and mean the same thing in GPT-2, Pythia (GPT-NeoX), Mamba and MoE models:

=====================================  ===========================================================
``blocks.{l}.hook_resid_pre``          residual stream entering block ``l``
``blocks.{l}.hook_resid_mid``          residual after attention, before the MLP (sequential blocks)
``blocks.{l}.hook_resid_post``         residual stream leaving block ``l``
``blocks.{l}.hook_attn_out``           attention output added to the residual
``blocks.{l}.hook_mlp_out``            MLP output added to the residual (the MoE block output)
``blocks.{l}.hook_mixer_out``          Mamba mixer output added to the residual
``blocks.{l}.mlp.hook_router_logits``  MoE router logits, width = number of experts
``blocks.{l}.mlp.hook_expert_indices`` MoE top-k expert indices, width = k (integer)
``blocks.{l}.mlp.hook_expert_weights`` MoE top-k routing weights, width = k
=====================================  ===========================================================

Sites are built with :func:`site` or :meth:`Site.parse` (a split on dots, no regex), and are
hashable, ordered by (layer, position in the block). What a site *is* is asked of the object, never
of its name: :attr:`Site.is_routing`, :attr:`Site.is_integer` (expert indices), :attr:`Site.kind`
(``"int"`` / ``"float"``, as a store manifest records it), :attr:`Site.is_residual`,
:attr:`Site.short` (``"resid_post"``), :attr:`Site.layer`, :attr:`Site.hook`.

**Sites travel typed.** The rule, for every module of the library:

* A site string is parsed once, at the edge where it enters: a public function's argument (YAML
  study config, command line, a user's call such as ``adapter.capture(ids, ["blocks.0.hook_resid_post"])``
  or ``store.iter_batches(["..."])``) or a stored artifact (a store's ``manifest.json``, a
  dictionary's ``cfg.json``). Entry points accept ``str | Site`` and convert with :func:`as_site` /
  :func:`as_sites` (both return ``Site`` objects unchanged); everything inward takes ``Site``
  (type hints say so), down to the forward hooks, which never parse, split or suffix-test a name.
* ``Site.name`` (the string) appears only where data leaves the library or goes to disk: as the
  key of returned activation dicts (``capture`` results, reader batches ``{site: (batch, width)}``,
  ``adapter.sites`` = ``{name: width}``), of tensors in a shard (``acts/<name>``), in manifests and
  ``cfg.json`` (the on-disk format is unchanged), in a reader's resumable state, and in messages.
  Those dicts stay ``str``-keyed because they are the public data contract (an activation source
  yields ``dict[str, Tensor]``; the trainer keys dictionaries by such opaque keys, ``"default"``
  included, and never interprets them).
* A requested site that a model (or store) lacks is an :class:`~universality.errors.UnknownSiteError`
  that lists what it has (:func:`require_sites`, :func:`describe_sites`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from functools import cached_property

from universality.errors import UnknownSiteError

__all__ = [
    "HOOKS",
    "ROUTING_HOOKS",
    "INTEGER_HOOKS",
    "RESIDUAL_HOOKS",
    "Site",
    "site",
    "as_site",
    "as_sites",
    "parse_sites",
    "describe_sites",
    "require_sites",
]

# Order = position inside a block (used to sort sites and to find the deepest one).
HOOKS: tuple[str, ...] = (
    "hook_resid_pre",
    "hook_attn_out",
    "hook_mixer_out",
    "hook_resid_mid",
    "mlp.hook_router_logits",
    "mlp.hook_expert_indices",
    "mlp.hook_expert_weights",
    "hook_mlp_out",
    "hook_resid_post",
)
ROUTING_HOOKS: frozenset[str] = frozenset(
    {"mlp.hook_router_logits", "mlp.hook_expert_indices", "mlp.hook_expert_weights"}
)
INTEGER_HOOKS: frozenset[str] = frozenset({"mlp.hook_expert_indices"})  # int64 activations (no statistics)
RESIDUAL_HOOKS: frozenset[str] = frozenset({"hook_resid_pre", "hook_resid_mid", "hook_resid_post"})
_SHORT = {h.removeprefix("mlp.").removeprefix("hook_"): h for h in HOOKS}
_SHORT_OF = {h: s for s, h in _SHORT.items()}


@dataclass(frozen=True, order=True)
class Site:
    """One canonical site: ``blocks.{layer}.{hook}``."""

    layer: int
    order: int  # index of ``hook`` in HOOKS; makes sorting follow the forward pass
    hook: str

    def __post_init__(self) -> None:
        if not isinstance(self.layer, int) or isinstance(self.layer, bool) or self.layer < 0:
            raise UnknownSiteError(f"site layer must be a non-negative integer, got {self.layer!r}", "use e.g. blocks.0.hook_resid_post")
        if self.hook not in HOOKS:
            raise UnknownSiteError(f"unknown hook {self.hook!r}", f"use one of {', '.join(HOOKS)}")
        if self.order != HOOKS.index(self.hook):
            raise UnknownSiteError(f"inconsistent site order for {self.hook!r}", "build sites with site() or Site.parse()")

    @cached_property
    def name(self) -> str:
        """The canonical string ``blocks.{layer}.{hook}`` (formatted once per object)."""
        return f"blocks.{self.layer}.{self.hook}"

    @property
    def is_routing(self) -> bool:
        """An MoE routing site (router logits, expert indices or expert weights)."""
        return self.hook in ROUTING_HOOKS

    @property
    def is_integer(self) -> bool:
        """Integer-valued activations (MoE top-k expert indices): stored as int64, no statistics."""
        return self.hook in INTEGER_HOOKS

    @property
    def kind(self) -> str:
        """``"int"`` or ``"float"``: the ``kind`` a store manifest records for this site."""
        return "int" if self.is_integer else "float"

    @property
    def is_residual(self) -> bool:
        """A residual-stream site (``resid_pre``, ``resid_mid`` or ``resid_post``)."""
        return self.hook in RESIDUAL_HOOKS

    @property
    def short(self) -> str:
        """The hook without ``mlp.`` and ``hook_``: ``"resid_post"``, ``"expert_indices"``."""
        return _SHORT_OF[self.hook]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: "str | Site") -> "Site":
        """Parse ``blocks.{l}.{hook}``; raises :class:`UnknownSiteError` with the expected form."""
        if isinstance(name, Site):
            return name
        if not isinstance(name, str):
            raise UnknownSiteError(f"site must be a string, got {type(name).__name__}", "pass a name like blocks.0.hook_resid_post")
        parts = name.split(".", 2)
        if len(parts) != 3 or parts[0] != "blocks" or not parts[1].isdigit() or not parts[1].isascii():
            raise UnknownSiteError(
                f"malformed site name {name!r}",
                "site names look like blocks.{layer}.hook_resid_post (see universality.sites.HOOKS)",
            )
        hook = parts[2]
        if hook not in HOOKS:
            raise UnknownSiteError(f"unknown hook {hook!r} in site {name!r}", f"use one of {', '.join(HOOKS)}")
        return cls(int(parts[1]), HOOKS.index(hook), hook)


def site(layer: int, hook: str) -> Site:
    """Typed helper: ``site(3, "resid_post")`` or ``site(3, "hook_resid_post")`` -> ``blocks.3.hook_resid_post``."""
    full = hook if hook in HOOKS else _SHORT.get(hook)
    if full is None:
        raise UnknownSiteError(f"unknown hook {hook!r}", f"use one of {', '.join(sorted(_SHORT))}")
    return Site(layer, HOOKS.index(full), full)


def as_site(name: "str | Site") -> Site:
    """One site at an entry point: a ``Site`` is returned as is, a string is parsed (:meth:`Site.parse`)."""
    return Site.parse(name)


def as_sites(names: "str | Site | Iterable[str | Site]") -> tuple[Site, ...]:
    """Sites at an entry point: one or many names or ``Site`` objects -> a sorted, de-duplicated,
    non-empty tuple of ``Site`` (strings are parsed once here; ``Site`` objects pass through)."""
    if isinstance(names, (str, Site)):
        names = [names]
    elif not isinstance(names, Iterable):
        raise UnknownSiteError(f"sites must be a name or a list of names, got {type(names).__name__}",
                               "pass e.g. ['blocks.0.hook_resid_post']")
    items = list(names)
    if len(items) == 0:
        raise UnknownSiteError("no sites were requested", "pass at least one site name, e.g. blocks.0.hook_resid_post")
    return tuple(sorted({Site.parse(n) for n in items}))


parse_sites = as_sites  # the original name, kept for callers


def _layer_ranges(layers: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"``."""
    runs: list[list[int]] = []
    for layer in sorted(layers):
        if runs and layer == runs[-1][1] + 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def describe_sites(sites: "Iterable[str | Site]", limit: int = 12) -> str:
    """Every one of ``sites`` on one line, in forward order: the names when there are at most
    ``limit``, else one entry per hook with its layers, e.g. ``blocks.{0-31}.hook_resid_pre``."""
    ordered = sorted({as_site(s) for s in sites})
    if not ordered:
        return "(none)"
    if len(ordered) <= limit:
        return ", ".join(s.name for s in ordered)
    layers: dict[str, list[int]] = {}
    for s in ordered:
        layers.setdefault(s.hook, []).append(s.layer)
    parts = []
    for hook in HOOKS:
        if hook in layers:
            spec = _layer_ranges(layers[hook])
            parts.append(f"blocks.{spec}.{hook}" if spec.isdigit() else f"blocks.{{{spec}}}.{hook}")
    return f"{', '.join(parts)} ({len(ordered)} sites)"


def require_sites(requested: Iterable[Site], available: Collection[Site], owner: str) -> None:
    """Raise :class:`UnknownSiteError` naming the requested sites that ``owner`` (e.g. ``"gpt2 model
    'x'"``) lacks and listing every site it has (:func:`describe_sites`)."""
    missing = [s.name for s in requested if s not in available]
    if not missing:
        return
    what = f"site {missing[0]!r}" if len(missing) == 1 else f"sites {missing}"
    fix = f"use one of its sites: {describe_sites(available)}" if available else "it has no sites at all"
    raise UnknownSiteError(f"{owner} has no {what}", fix)

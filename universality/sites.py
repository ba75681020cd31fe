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
hashable, ordered by (layer, position in the block).
"""

from __future__ import annotations

from dataclasses import dataclass

from universality.errors import UnknownSiteError

__all__ = ["HOOKS", "ROUTING_HOOKS", "Site", "site", "parse_sites"]

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
_SHORT = {h.removeprefix("mlp.").removeprefix("hook_"): h for h in HOOKS}


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

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.{self.hook}"

    @property
    def is_routing(self) -> bool:
        return self.hook in ROUTING_HOOKS

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


def parse_sites(names: "str | Site | list[str | Site] | tuple[str | Site, ...]") -> tuple[Site, ...]:
    """Parse one or many site names into a sorted, de-duplicated tuple."""
    if isinstance(names, (str, Site)):
        names = [names]
    if len(names) == 0:
        raise UnknownSiteError("no sites were requested", "pass at least one site name, e.g. blocks.0.hook_resid_post")
    return tuple(sorted({Site.parse(n) for n in names}))

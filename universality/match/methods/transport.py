"""Optimal-transport matchers: ``emd``, ``sinkhorn``, ``unbalanced``, ``partial``.

Both dictionaries carry uniform mass, :math:`a = \\mathbf 1_n / n`, :math:`b = \\mathbf 1_m / m`; the ground
cost is :math:`C = 1 - S` for the dense similarity ``S`` (built in row blocks of ``block``). The coupling
:math:`P` is returned as ``plan``, its cost :math:`\\langle P, C\\rangle` as ``value``, and pairs are read off
it by a maximum-weight assignment on :math:`P` (:func:`universality.match.transport.round_plan`). The solvers
(POT) are in :mod:`universality.match.transport`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from universality.checks import check_int, check_number
from universality.match import transport as tr
from universality.match.registry import register
from universality.match.result import MatchResult
from universality.match.similarity import dense_similarity

__all__ = [
    "EMDOptions",
    "SinkhornOptions",
    "UnbalancedOptions",
    "PartialOptions",
    "emd",
    "sinkhorn",
    "unbalanced",
    "partial",
]


def _default(options: Any, name: str, value: float) -> None:
    """``None`` for ``name`` means its default (the old ``match(reg=None)`` spelling)."""
    if getattr(options, name) is None:
        object.__setattr__(options, name, value)


# ---------------------------------------------------------------------------------------------- emd
@dataclass(frozen=True)
class EMDOptions:
    """Options of ``emd``.

    Attributes:
        block: rows of ``a`` per similarity block (``None``: sized so a block stays under ~256 MiB).
    """

    block: int | None = None

    def __post_init__(self) -> None:
        check_int("EMDOptions", "block", self.block, none_ok=True)


@register("emd", EMDOptions)
def emd(a: Any, b: Any, similarity: str, options: EMDOptions) -> MatchResult:
    """Exact optimal transport between uniform masses,

    .. math:: \\min_{P \\in U(a, b)} \\langle P, C \\rangle, \\quad U(a, b) = \\{P \\ge 0 : P\\mathbf 1 = a,
              P^\\top \\mathbf 1 = b\\},

    by the network simplex (``ot.emd``, Bonneel et al. 2011). For ``n = m`` the optimum is a permutation
    (Birkhoff), so it agrees with ``hungarian``; for ``n != m`` mass splits.
    """
    return tr.emd_match(dense_similarity(a, b, similarity, options.block))


# ---------------------------------------------------------------------------------------------- sinkhorn
@dataclass(frozen=True)
class SinkhornOptions:
    """Options of ``sinkhorn``.

    Attributes:
        reg: entropic regularisation :math:`\\varepsilon > 0` (``None``: 0.01).
        block: rows of ``a`` per similarity block (``None``: sized so a block stays under ~256 MiB).
    """

    reg: float | None = 0.01
    block: int | None = None

    def __post_init__(self) -> None:
        _default(self, "reg", 0.01)
        check_number("SinkhornOptions", "reg", self.reg, 0.0, low_open=True)
        check_int("SinkhornOptions", "block", self.block, none_ok=True)


@register("sinkhorn", SinkhornOptions)
def sinkhorn(a: Any, b: Any, similarity: str, options: SinkhornOptions) -> MatchResult:
    """Entropic optimal transport (Cuturi 2013),

    .. math:: \\min_{P \\in U(a, b)} \\langle P, C \\rangle - \\varepsilon H(P),

    by log-domain Sinkhorn iterations (``ot.sinkhorn(method="sinkhorn_log")``, stable for small
    :math:`\\varepsilon`), then rounded to one-to-one pairs.
    """
    return tr.sinkhorn_match(dense_similarity(a, b, similarity, options.block), options.reg)


# ---------------------------------------------------------------------------------------------- unbalanced
@dataclass(frozen=True)
class UnbalancedOptions:
    """Options of ``unbalanced``.

    Attributes:
        reg: entropic regularisation :math:`\\varepsilon > 0` (``None``: 0.02).
        reg_m: marginal relaxation :math:`\\tau > 0`; the transported mass grows with it.
        block: rows of ``a`` per similarity block (``None``: sized so a block stays under ~256 MiB).
    """

    reg: float | None = 0.02
    reg_m: float = 0.1
    block: int | None = None

    def __post_init__(self) -> None:
        _default(self, "reg", 0.02)
        check_number("UnbalancedOptions", "reg", self.reg, 0.0, low_open=True)
        check_number("UnbalancedOptions", "reg_m", self.reg_m, 0.0, low_open=True)
        check_int("UnbalancedOptions", "block", self.block, none_ok=True)


@register("unbalanced", UnbalancedOptions)
def unbalanced(a: Any, b: Any, similarity: str, options: UnbalancedOptions) -> MatchResult:
    """Unbalanced entropic optimal transport (Chizat et al. 2018),

    .. math:: \\min_{P \\ge 0} \\langle P, C \\rangle - \\varepsilon H(P)
              + \\tau \\big(\\mathrm{KL}(P\\mathbf 1 \\| a) + \\mathrm{KL}(P^\\top \\mathbf 1 \\| b)\\big),

    by stabilised Sinkhorn (``ot.unbalanced.sinkhorn_unbalanced``). ``meta['mass']`` = :math:`\\sum P` grows
    with :math:`\\tau` and is **not** a shared fraction until calibrated against the seed skyline and the
    independent null (:func:`universality.match.transport.calibrated_mass`, ``docs/calibration.md``).
    """
    return tr.unbalanced_match(dense_similarity(a, b, similarity, options.block), options.reg, options.reg_m)


# ---------------------------------------------------------------------------------------------- partial
@dataclass(frozen=True)
class PartialOptions:
    """Options of ``partial``.

    Attributes:
        mass: total mass :math:`s \\in (0, 1]` to transport.
        block: rows of ``a`` per similarity block (``None``: sized so a block stays under ~256 MiB).
    """

    mass: float = 0.5
    block: int | None = None

    def __post_init__(self) -> None:
        check_number("PartialOptions", "mass", self.mass, 0.0, 1.0, low_open=True)
        check_int("PartialOptions", "block", self.block, none_ok=True)


@register("partial", PartialOptions)
def partial(a: Any, b: Any, similarity: str, options: PartialOptions) -> MatchResult:
    """Partial optimal transport moving exactly mass ``s`` (Chapel et al. 2020),

    .. math:: \\min_{P \\ge 0,\\; P\\mathbf 1 \\le a,\\; P^\\top \\mathbf 1 \\le b,\\;
              \\mathbf 1^\\top P \\mathbf 1 = s} \\langle P, C \\rangle,

    by ``ot.partial.partial_wasserstein``: the cheapest mass moves first, so the matched pairs are the most
    similar ones (:func:`universality.match.transport.partial_shared_fraction` reads a shared fraction
    from the marginal cost).
    """
    return tr.partial_match(dense_similarity(a, b, similarity, options.block), options.mass)

"""Placement by site: :func:`place_sites` balances sites over devices; :class:`PlacedTrainer` trains
every site on its device in one process."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from universality.errors import ConfigError
from universality.train.config import RunConfig, TrainConfig
from universality.train.dead import FiringTracker
from universality.train.optim import make_optimizer
from universality.train.trainer import Trainer

__all__ = ["SitePlacement", "site_costs", "place_sites", "PlacedTrainer", "refuse_stack"]


@dataclass(frozen=True)
class SitePlacement:
    """Which rank/device holds each site's dictionaries. ``loads[r]``: the summed
    ``d_in * d_sae`` of the dictionaries on rank ``r``."""

    assignment: dict[str, int]
    loads: tuple[int, ...]

    @property
    def n_devices(self) -> int:
        return len(self.loads)

    def sites_of(self, rank: int) -> list[str]:
        return sorted(s for s, r in self.assignment.items() if r == rank)

    def rank_of(self, site: str) -> int:
        if site not in self.assignment:
            raise ConfigError(f"site {site!r} is not in the placement plan", f"plan one of {sorted(self.assignment)}")
        return self.assignment[site]

    def device_of(self, site: str, device_type: str = "cuda") -> torch.device:
        """The device of ``site``'s dictionaries: ``cuda:{rank}`` (or ``cpu`` for ``device_type="cpu"``)."""
        return torch.device("cpu") if device_type == "cpu" else torch.device(device_type, self.rank_of(site))

    @property
    def imbalance(self) -> float:
        """``max(loads) / mean(loads)`` (1.0 is a perfect balance)."""
        mean = sum(self.loads) / len(self.loads)
        return max(self.loads) / mean if mean > 0 else 1.0


def site_costs(configs: Sequence[TrainConfig]) -> dict[str, int]:
    """Per site, the summed ``d_in * d_sae`` of its dictionaries (encoder FLOPs per token / 2,
    the dominant training cost; see docs/DESIGN "physical picture")."""
    costs: dict[str, int] = {}
    for c in configs:
        costs[c.site] = costs.get(c.site, 0) + c.sae.d_in * c.sae.d_sae
    return costs


def place_sites(configs: Sequence[TrainConfig] | Mapping[str, int], n_devices: int) -> SitePlacement:
    """Assign every site (with all its dictionaries) to one of ``n_devices``, balancing cost.

    Greedy longest-processing-time scheduling (Graham 1969, "Bounds on multiprocessing timing
    anomalies"): sites in decreasing cost go to the currently least-loaded device, which keeps the
    largest load within ``4/3 - 1/(3 n)`` of the optimum. Ties break by site name, then device
    index, so the plan is deterministic. ``configs`` may be TrainConfigs or a ``{site: cost}`` map.
    """
    if not isinstance(n_devices, int) or n_devices < 1:
        raise ConfigError(f"n_devices must be a positive integer, got {n_devices!r}", "pass the number of GPUs (or ranks)")
    costs = dict(configs) if isinstance(configs, Mapping) else site_costs(configs)
    if not costs:
        raise ConfigError("no sites to place", "pass at least one TrainConfig")
    if any(int(v) < 0 for v in costs.values()):
        raise ConfigError("site costs must be >= 0", "use d_in * d_sae")
    loads = [0] * n_devices
    assignment: dict[str, int] = {}
    for site in sorted(costs, key=lambda s: (-int(costs[s]), s)):
        rank = min(range(n_devices), key=lambda r: (loads[r], r))
        assignment[site] = rank
        loads[rank] += int(costs[site])
    return SitePlacement(assignment, tuple(loads))


def refuse_stack(run: RunConfig, what: str) -> None:
    """The stacked fast path (``RunConfig.stack``) trains outside the per-dictionary seams these
    trainers override (DDP forward, devices), so it is refused rather than silently unsynchronised."""
    if getattr(run, "stack", False):
        raise ConfigError(f"RunConfig.stack=True is not supported by {what}", "set stack=False, or use mode=sites (plain trainer per rank)")


class PlacedTrainer(Trainer):
    """One process, several devices: each site's dictionaries live on the device that
    :func:`place_sites` gives their site, and each batch is copied to a site's device once per step.

    ``run.device`` is the staging device the source's rows arrive on (keep it ``"cpu"``);
    ``devices`` are where the dictionaries live (e.g. ``["cuda:0", "cuda:1"]``). Training is the
    plain :class:`Trainer`'s, so the result equals single-device training. On CUDA the devices
    still take turns (the trainer reads every loss back to the host each step); for concurrent
    GPUs use ``torchrun`` with ``mode="sites"``.
    """

    def __init__(
        self,
        configs: TrainConfig | Sequence[TrainConfig],
        run: RunConfig,
        devices: Sequence[str | torch.device],
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        if not devices:
            raise ConfigError("PlacedTrainer needs at least one device", "pass e.g. devices=['cuda:0', 'cuda:1']")
        refuse_stack(run, "PlacedTrainer")
        super().__init__(configs, run, meta=meta)
        self.devices = [torch.device(d) for d in devices]
        self.plan = place_sites(list(self.configs.values()), len(self.devices))
        self._staged: dict[tuple[str, torch.device], tuple[Tensor, Tensor]] = {}
        for key, cfg in self.configs.items():
            device = self.site_device(cfg.site)
            self.saes[key].to(device)
            self.optims[key] = make_optimizer(self.saes[key], cfg.lr)
            self.trackers[key] = FiringTracker(cfg.sae.d_sae, run.dead_window, device)

    def site_device(self, site: str) -> torch.device:
        return self.devices[self.plan.rank_of(site)]

    def _rows(self, batch: Mapping[str, Tensor], cfg: TrainConfig) -> Tensor:
        x = super()._rows(batch, cfg)
        device = self.site_device(cfg.site)
        cached = self._staged.get((cfg.site, device))
        if cached is not None and cached[0] is x:
            return cached[1]
        moved = x.to(device, non_blocking=True)
        self._staged[(cfg.site, device)] = (x, moved)
        return moved

    def _autocast(self):
        if self.run.autocast and any(d.type == "cuda" for d in self.devices):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def load_checkpoint(self, root: str | Path, source: Any) -> None:
        super().load_checkpoint(root, source)
        for key, cfg in self.configs.items():  # the base class restores trackers on run.device
            tracker, device = self.trackers[key], self.site_device(cfg.site)
            tracker.load_state({k: v.to(device) for k, v in tracker.state_tensors().items()}, tracker.count_tokens)

"""The command line: a YAML job file (:class:`SourceSpec`, :func:`load_job`, :func:`run_job`, :func:`main`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from universality.activations.store import ActivationStore
from universality.errors import ConfigError, UniversalityError
from universality.sae import SAE
from universality.synthetic import PlantedSource, ToyConfig, feature_probabilities, planted_dictionary
from universality.train.config import RunConfig, TrainConfig
from universality.checks import known_fields
from universality.train.distributed.config import DistributedConfig
from universality.train.distributed.launch import env_world, train_distributed
from universality.train.distributed.placement import place_sites

__all__ = ["SourceSpec", "load_job", "run_job", "main"]


# --help heads with the package docstring's first line (as the single module's did)
_DESCRIPTION = "Training past one device with ``torch.distributed``: data parallel (DDP) and placement by site."


@dataclass(frozen=True)
class SourceSpec:
    """The global activation stream of a job file.

    ``kind="store"``: an :class:`~universality.activations.store.ActivationStore` at ``path``,
    read by its resumable reader (``sites``, ``batch_size``, ``shuffle_buffer``, ``seed``,
    ``epochs``). ``kind="planted"``: planted toy data (:mod:`universality.synthetic`), one planted
    world per site (``toy`` holds :class:`~universality.synthetic.ToyConfig` fields; site ``i``
    uses ``dictionary_seed + i``), ``n_batches`` batches. ``batch_size`` is the *global* batch: in
    data-parallel mode each of ``world`` ranks trains on ``batch_size / world`` of its rows.
    """

    kind: str
    sites: tuple[str, ...] = ("default",)
    batch_size: int = 4096
    seed: int = 0
    path: str | None = None
    shuffle_buffer: int = 0
    epochs: int | None = 1
    toy: dict[str, Any] = field(default_factory=dict)
    n_batches: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("store", "planted"):
            raise ConfigError(f"unknown source kind {self.kind!r}", "use kind: store or kind: planted")
        if self.kind == "store" and not self.path:
            raise ConfigError("a store source needs a path", "set source.path to the harvested store")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"source.batch_size must be a positive integer, got {self.batch_size!r}", "use e.g. 4096")
        if not self.sites or len(set(self.sites)) != len(self.sites):
            raise ConfigError("source.sites must be distinct and non-empty", "list each site once")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SourceSpec:
        data = known_fields(cls, data, "source")
        if "sites" in data:
            data["sites"] = (data["sites"],) if isinstance(data["sites"], str) else tuple(data["sites"])
        return cls(**data)

    def build(self, sites: Sequence[str] | None = None) -> Iterable:
        """A fresh source over ``sites`` (default: all of ``self.sites``)."""
        sites = list(sites or self.sites)
        if self.kind == "store":
            return ActivationStore.open(self.path).iter_batches(sites, self.batch_size, self.shuffle_buffer, self.seed, self.epochs)
        toy = ToyConfig(**self.toy)
        probs = feature_probabilities(toy.n_features, toy.mean_active, toy.decay)
        worlds = {s: planted_dictionary(toy.n_features, toy.d_in, toy.dictionary_seed + self.sites.index(s)) for s in sites}
        if sites == ["default"]:
            return PlantedSource(worlds["default"], probs, self.batch_size, seed=self.seed, noise_std=toy.noise_std, n_batches=self.n_batches)
        return PlantedSource(worlds, probs, self.batch_size, seed=self.seed, noise_std=toy.noise_std, n_batches=self.n_batches)


def load_job(path: str | Path) -> tuple[SourceSpec, list[TrainConfig], RunConfig, DistributedConfig]:
    """Read a job file (YAML: ``source``, ``train``, ``run``, ``distributed``)."""
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"job file {path} does not exist", "pass --config path/to/job.yaml")
    doc = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} does not hold a mapping", "write source:, train:, run:, distributed: keys")
    unknown = sorted(set(doc) - {"source", "train", "run", "distributed"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level keys {unknown}", "use source, train, run, distributed")
    train = doc.get("train")
    if not isinstance(train, list) or not train:
        raise ConfigError(f"{path}: train must be a non-empty list of TrainConfig mappings", "add train: [{sae: {...}, site: ...}]")
    if "run" not in doc or "source" not in doc:
        raise ConfigError(f"{path}: source and run are required", "add source: {...} and run: {steps: ...}")
    return (
        SourceSpec.from_dict(doc["source"]),
        [TrainConfig.from_dict(t) for t in train],
        RunConfig(**known_fields(RunConfig, doc["run"], "run")),
        DistributedConfig.from_dict(doc.get("distributed") or {}),
    )


def run_job(path: str | Path, progress: bool = True) -> dict[str, SAE]:
    """Run one rank of the job file at ``path`` (what the command line does)."""
    spec, configs, run, cfg = load_job(path)
    sites = list(spec.sites)
    if cfg.mode == "sites":  # read only this rank's sites
        rank, world, _ = env_world()
        plan = place_sites(configs, world)
        sites = [s for s in sites if s in plan.assignment and plan.rank_of(s) == rank] or sites[:1]
    return train_distributed(spec.build(sites), configs, run, cfg, progress=progress)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m universality.train.distributed", description=_DESCRIPTION)
    parser.add_argument("--config", required=True, help="YAML job file (source, train, run, distributed)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        out = run_job(args.config, progress=not args.no_progress)
    except UniversalityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rank = int(os.environ.get("RANK", 0))
    print(f"rank {rank}: trained {len(out)} dictionaries: {', '.join(sorted(out))}")
    return 0

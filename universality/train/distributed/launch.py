"""Entry points: :func:`train_distributed` (one rank of a job), :func:`train_placed` (one process,
several devices) and :func:`launch_local` (several processes on this machine)."""

from __future__ import annotations

import dataclasses
import datetime
import os
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from universality.errors import ConfigError
from universality.sae import SAE
from universality.train.config import RunConfig, TrainConfig
from universality.train.distributed.config import DistributedConfig
from universality.train.distributed.data_parallel import DataParallelTrainer
from universality.train.distributed.placement import PlacedTrainer, place_sites
from universality.train.distributed.slicing import RankSlice
from universality.train.trainer import Trainer

__all__ = ["train_distributed", "train_placed", "launch_local", "env_world"]


def env_world() -> tuple[int, int, int]:
    """``(rank, world, local_rank)`` from torchrun's environment (``(0, 1, 0)`` when absent)."""
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    except ValueError as exc:
        raise ConfigError(f"RANK/WORLD_SIZE/LOCAL_RANK are not integers ({exc})", "launch with torchrun") from None


def _backend_for(cfg: DistributedConfig, run: RunConfig) -> str:
    if cfg.backend != "auto":
        return cfg.backend
    return "nccl" if run.device.startswith("cuda") and torch.cuda.is_available() else "gloo"


def _rank_device(run: RunConfig, backend: str, local_rank: int) -> str:
    """``cuda:LOCAL_RANK`` for a CUDA run (one GPU per process), else the run's device."""
    if run.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"run.device is {run.device!r} but CUDA is not available", "set run.device=cpu (gloo backend)")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible)", "start at most one process per GPU")
        torch.cuda.set_device(local_rank)
        return f"cuda:{local_rank}"
    if backend == "nccl":
        raise ConfigError("the nccl backend needs run.device=cuda", "use backend=gloo on the CPU")
    return run.device


def train_distributed(
    source: Iterable,
    configs: TrainConfig | Sequence[TrainConfig],
    run: RunConfig,
    dist_cfg: DistributedConfig | None = None,
    *,
    meta: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, SAE]:
    """Train ``configs`` on ``source`` as one rank of a distributed job; returns this rank's dictionaries.

    Call it in every process started by ``torchrun`` (or :func:`launch_local`), each with its own
    copy of the same global ``source``. It joins (or creates, from torchrun's environment) the
    default process group, runs :class:`DataParallelTrainer` (``mode="data"``: every rank returns
    the same dictionaries, rank 0 writes them) or a plain :class:`Trainer` over this rank's sites
    (``mode="sites"``, plan from :func:`place_sites`), and destroys the group if it created it.
    Outside a launcher (no ``WORLD_SIZE``) it is plain single-process training. A process that runs
    several jobs one after another should create the group once itself (``dist.init_process_group``)
    and destroy it at the end: re-creating the default group per job can deadlock, since a fast rank
    may reach the new rendezvous while a slower one still serves the old store.
    """
    cfg = dist_cfg or DistributedConfig()
    configs = [configs] if isinstance(configs, TrainConfig) else list(configs)
    created = False
    if not dist.is_initialized():
        rank, world, local_rank = env_world()
        if world == 1:
            return Trainer(configs, run, meta=meta).fit(source, progress=progress)
        backend = _backend_for(cfg, run)
        device = _rank_device(run, backend, local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=cfg.timeout_s))
        created = True
    else:
        _, _, local_rank = env_world()
        device = _rank_device(run, dist.get_backend(), local_rank)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        run = dataclasses.replace(run, device=device)
        if cfg.mode == "data":
            trainer = DataParallelTrainer(configs, run, meta=meta, dist_cfg=cfg)
            return trainer.fit(RankSlice(source, rank, world), progress=progress)
        plan = place_sites(configs, world)
        mine = [c for c in configs if plan.rank_of(c.site) == rank]
        result: dict[str, SAE] = {}
        if mine:
            ckpt_dir = str(Path(run.checkpoint_dir) / f"rank-{rank}-of-{world}") if run.checkpoint_dir else None
            result = Trainer(mine, dataclasses.replace(run, checkpoint_dir=ckpt_dir), meta=meta).fit(source, progress=progress and rank == 0)
        dist.barrier()
        return result
    finally:
        if created:
            dist.destroy_process_group()


def train_placed(
    source: Iterable,
    configs: TrainConfig | Sequence[TrainConfig],
    run: RunConfig,
    devices: Sequence[str | torch.device],
    *,
    meta: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, SAE]:
    """Train ``configs`` in this process with every site's dictionaries on its device from
    :func:`place_sites` over ``devices`` (see :class:`PlacedTrainer`)."""
    return PlacedTrainer(configs, run, devices, meta=meta).fit(source, progress=progress)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _local_entry(rank: int, fn: Callable[..., Any], world: int, port: int, args: tuple) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    fn(rank, *args)


def launch_local(fn: Callable[..., Any], world_size: int, args: Sequence[Any] = ()) -> None:
    """Run ``fn(rank, *args)`` in ``world_size`` fresh processes on this machine, with torchrun's
    environment variables set (so :func:`train_distributed` joins them into one job).

    Uses :func:`torch.multiprocessing.spawn` (``fn`` must be importable by name). An exception in
    any process stops the others and is raised here.
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"world_size must be a positive integer, got {world_size!r}", "pass e.g. 2")
    import torch.multiprocessing as mp

    mp.spawn(_local_entry, args=(fn, world_size, _free_port(), tuple(args)), nprocs=world_size, join=True)

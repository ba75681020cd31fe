"""The data-parallel trainer: :class:`DataParallelTrainer`, one rank of a DDP job."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from jaxtyping import Float
from torch import Tensor, nn

from universality.errors import ArtifactError, ConfigError, TrainingDiverged
from universality.sae import SAE
from universality.train import checkpoint as ckpt
from universality.train.config import RunConfig, TrainConfig
from universality.train.distributed.config import DistributedConfig
from universality.train.distributed.placement import refuse_stack
from universality.train.distributed.sync import SyncedFiringTracker
from universality.train.trainer import Trainer

__all__ = ["DataParallelTrainer"]


class _TrainForward(nn.Module):
    """Exposes ``sae.forward_train`` as ``forward`` so DDP can wrap it (its parameters are the SAE's)."""

    def __init__(self, sae: SAE) -> None:
        super().__init__()
        self.sae = sae

    def forward(self, x: Float[Tensor, "batch d_in"]) -> Any:
        return self.sae.forward_train(x)


def _gather_rows(x: Float[Tensor, "rows d"], group: Any = None) -> Float[Tensor, "all_rows d"]:
    """All ranks' rows concatenated in rank order (shares may differ in size)."""
    world = dist.get_world_size(group)
    sizes = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    all_sizes = [torch.zeros_like(sizes) for _ in range(world)]
    dist.all_gather(all_sizes, sizes, group=group)
    counts = [int(s) for s in all_sizes]
    top = max(counts)
    padded = torch.cat([x, x.new_zeros(top - x.shape[0], *x.shape[1:])]) if x.shape[0] < top else x.contiguous()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


class DataParallelTrainer(Trainer):
    """:class:`Trainer` for one rank of a data-parallel job (call inside an initialised process group).

    Differences from the base class, each at one of its seams: the training forward runs through
    DDP (gradient averaging), trackers are :class:`SyncedFiringTracker`, initialisation reads the
    gathered first global batch, resampling is broadcast from rank 0, the token count is global,
    and only rank 0 writes checkpoints and artifacts.
    """

    def __init__(
        self,
        configs: TrainConfig | Sequence[TrainConfig],
        run: RunConfig,
        meta: Mapping[str, Any] | None = None,
        *,
        group: Any = None,
        dist_cfg: DistributedConfig | None = None,
    ) -> None:
        if not dist.is_initialized():
            raise ConfigError("DataParallelTrainer needs an initialised process group", "launch with torchrun or use train_distributed()")
        refuse_stack(run, "data-parallel training (mode=data)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        cfg = dist_cfg or DistributedConfig()
        if self.rank != 0:
            run = dataclasses.replace(run, out_dir=None, log_to=())  # the identity hash ignores both; rank 0 logs
        super().__init__(configs, run, meta=meta)
        self.trackers = {k: SyncedFiringTracker(c.sae.d_sae, run.dead_window, self.device, group) for k, c in self.configs.items()}
        ids = [self.device] if self.device.type == "cuda" else None
        self.ddp = {
            k: nn.parallel.DistributedDataParallel(
                _TrainForward(sae), device_ids=ids, process_group=group,
                find_unused_parameters=cfg.find_unused_parameters, bucket_cap_mb=cfg.bucket_cap_mb,
            )
            for k, sae in self.saes.items()
        }
        self.mark_initial_weights()  # DDP broadcast rank 0's (identical) weights in place

    # -- seams of Trainer ------------------------------------------------------------------
    def _forward_train(self, key: str, sae: SAE, x: Tensor) -> Any:
        return self.ddp[key](x)

    def _rows_in(self, batch: Mapping[str, Tensor]) -> int:
        n = torch.tensor([next(iter(batch.values())).shape[0]], dtype=torch.int64, device=self.device)
        dist.all_reduce(n, group=self.group)
        return int(n)

    @torch.no_grad()
    def initialise(self, batch: Mapping[str, Tensor]) -> None:
        gathered = {site: _gather_rows(x.to(self.device), self.group) for site, x in batch.items()}
        super().initialise(gathered)

    def train_step(self, key: str, x_raw: Tensor) -> dict[str, float]:
        result = super().train_step(key, x_raw)
        cfg = self.configs[key]
        if cfg.effective_remedy == "resample" and (self.step + 1) % self.run.resample_every == 0:
            # rank 0's resampled directions win; the optimizer resets agree (same synced dead mask)
            with torch.no_grad():
                for p in self.saes[key].parameters():
                    dist.broadcast(p.data, src=dist.get_global_rank(self.group, 0) if self.group else 0, group=self.group)
        return result

    @torch.no_grad()
    def _broadcast_buffers(self) -> None:
        """Rank 0's buffers everywhere (DDP broadcasts them before each forward, but a buffer the
        forward updates, like BatchTopK's threshold, differs per rank after the last step)."""
        src = dist.get_global_rank(self.group, 0) if self.group else 0
        for key in self.keys:
            for buf in self.saes[key].buffers():
                dist.broadcast(buf, src=src, group=self.group)

    @torch.no_grad()
    def results(self, eval_batch: Mapping[str, Tensor] | None = None) -> dict[str, SAE]:
        """As :meth:`Trainer.results` (metrics on this rank's share of ``eval_batch``), after the
        buffers are made equal on every rank. Every rank must call it."""
        self._broadcast_buffers()
        return super().results(eval_batch)

    def save_checkpoint(self, root: str | Path, source: Any) -> Path:
        path = Path(root)  # rank 0 returns the checkpoint folder it wrote
        if self.rank == 0:
            path = super().save_checkpoint(root, source)
        dist.barrier(group=self.group)
        return path

    def _checkpoint_guard(self) -> contextlib.AbstractContextManager:
        """Rank 0 holds the checkpoint folder's lock (the ranks share the folder); a refusal reaches every rank."""
        return self._rank0_lock()

    @contextlib.contextmanager
    def _rank0_lock(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            refused: ArtifactError | None = None
            if self.rank == 0:
                try:
                    stack.enter_context(super()._checkpoint_guard())
                except ArtifactError as exc:
                    refused = exc
            ok = torch.tensor([0 if refused else 1], dtype=torch.int64, device=self.device)
            dist.all_reduce(ok, op=dist.ReduceOp.MIN, group=self.group)
            if refused is not None:
                raise refused
            if not int(ok):
                raise ArtifactError(f"checkpoint_dir {self.run.checkpoint_dir} is in use by another training run",
                                    "wait until that run ends, or give this run its own checkpoint_dir")
            yield

    def fit(self, source: Iterable, progress: bool = True) -> dict[str, SAE]:
        have = torch.tensor([int(ckpt.has_checkpoint(self.run.checkpoint_dir))], dtype=torch.int64, device=self.device)
        lo, hi = have.clone(), have.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=self.group)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=self.group)
        if int(lo) != int(hi):
            raise ArtifactError(
                f"only some ranks see the checkpoint in {self.run.checkpoint_dir}",
                "put checkpoint_dir on a filesystem that every rank shares",
            )
        result = super().fit(source, progress=progress and self.rank == 0)
        self._check_in_sync()
        return result

    @torch.no_grad()
    def _check_in_sync(self) -> None:
        """Raise when the ranks' parameters differ (a training path that bypassed DDP)."""
        sums = torch.stack([p.detach().double().sum() for k in self.keys for p in self.saes[k].parameters()])
        lo, hi = sums.clone(), sums.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=self.group)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=self.group)
        if not torch.equal(lo, hi):
            raise TrainingDiverged(
                "the ranks' dictionaries differ after data-parallel training",
                "train through DataParallelTrainer's forward (Trainer._forward_train) so DDP averages the gradients",
            )

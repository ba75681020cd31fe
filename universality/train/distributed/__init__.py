"""Training past one device with ``torch.distributed``: data parallel (DDP) and placement by site.

Two modes, both launched with ``torchrun`` (one process per GPU; ``nccl`` on CUDA, ``gloo`` on the
CPU) or, on one machine, with :func:`launch_local`:

``mode="data"`` (data parallel)
    Every rank builds the same activation source and reads the same *global* batches;
    :class:`RankSlice` hands rank ``r`` its contiguous ``1/world`` share of each one, so the ranks
    read disjoint rows and their union is the global batch. Every dictionary is wrapped in
    :class:`torch.nn.parallel.DistributedDataParallel`, which averages the gradients. The trainer's
    loss is a mean over rows (``mse = mean_rows ||x - x_hat||^2``), so ``world`` ranks of ``b`` rows
    take the same step as one process on the concatenated ``world * b`` rows, up to float rounding
    (tested). Firing counts are summed over the ranks (:class:`SyncedFiringTracker`), so dead-latent
    decisions agree everywhere; the normalisation scale and ``b_dec`` are computed from the
    gathered first global batch; resampled latents are broadcast from rank 0. Only rank 0 writes
    checkpoints and artifacts; the checkpoint holds the global source position, so a restart under
    the same world size resumes exactly. Terms that are not means over rows are computed per rank
    and their gradients averaged: the AuxK normaliser (the residual variance of the batch), ghost
    grads' rescaling and BatchTopK's batch-level top-k, so those runs match single-process training
    statistically, not bit for bit.

``mode="sites"`` (model parallel by site)
    :func:`place_sites` assigns each site's dictionaries to one rank, balancing the sum of
    ``d_in * d_sae``; every rank reads the same full stream and trains only its sites on its own
    device (``cuda:LOCAL_RANK``, so batches move to the GPU that holds those dictionaries). Each
    rank checkpoints into ``checkpoint_dir/rank-{r}-of-{world}``; the artifacts go to ``out_dir``
    under their (distinct) keys.

One process with several GPUs: :class:`PlacedTrainer` puts each site's dictionaries on the device
:func:`place_sites` picks and copies each batch to it (:func:`train_placed`).

Command line::

    torchrun --nproc_per_node=2 -m universality.train.distributed --config job.yaml

with a YAML file holding ``source`` (:class:`SourceSpec`), ``train`` (a list of
:class:`~universality.train.config.TrainConfig` mappings), ``run``
(:class:`~universality.train.config.RunConfig`) and ``distributed`` (:class:`DistributedConfig`).

Modules: :mod:`.config` (:class:`DistributedConfig`), :mod:`.placement` (:func:`place_sites`,
:class:`PlacedTrainer`), :mod:`.slicing` (:class:`RankSlice`), :mod:`.sync`
(:class:`SyncedFiringTracker`), :mod:`.data_parallel` (:class:`DataParallelTrainer`),
:mod:`.launch` (:func:`train_distributed`, :func:`train_placed`, :func:`launch_local`),
:mod:`.job` (the job file and :func:`main`) and ``__main__`` (the command line).
"""

from __future__ import annotations

from universality.train.distributed.config import BACKENDS, MODES, DistributedConfig
from universality.train.distributed.data_parallel import DataParallelTrainer
from universality.train.distributed.job import SourceSpec, load_job, main, run_job
from universality.train.distributed.launch import launch_local, train_distributed, train_placed
from universality.train.distributed.placement import PlacedTrainer, SitePlacement, place_sites, site_costs
from universality.train.distributed.slicing import RankSlice, share_bounds
from universality.train.distributed.sync import SyncedFiringTracker

__all__ = [
    "MODES",
    "DistributedConfig",
    "SitePlacement",
    "place_sites",
    "PlacedTrainer",
    "RankSlice",
    "SyncedFiringTracker",
    "DataParallelTrainer",
    "train_distributed",
    "train_placed",
    "launch_local",
    "SourceSpec",
    "load_job",
    "main",
    # public before too (imported by tests and callers), now listed so the re-exports are explicit
    "BACKENDS",
    "site_costs",
    "share_bounds",
    "run_job",
]

"""Distributed training: DDP over rows on two gloo processes equals one process on the
concatenated batch; trackers agree; rank-0 checkpoints resume; placement by site.

The multi-process tests are ``slow`` (each start of two processes costs ~10 s on 2 cores); the
placement plan, the rank slicing and the job-file checks run in the default tier.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from universality.errors import ConfigError, TrainingDiverged
from universality.io import load_tensors, read_json, save_tensors, write_json
from universality.sae import SAE
from universality.sae.config import sae_config
from universality.synthetic import ToyConfig, make_toy
from universality.train import Trainer
from universality.train.config import RunConfig, TrainConfig
from universality.train.dead import FiringTracker
from universality.train.distributed import (
    DataParallelTrainer,
    DistributedConfig,
    PlacedTrainer,
    RankSlice,
    SourceSpec,
    SyncedFiringTracker,
    launch_local,
    load_job,
    place_sites,
    share_bounds,
    train_distributed,
    train_placed,
)

ROOT = Path(__file__).resolve().parents[2]
TOY = ToyConfig(d_in=16, n_features=32, mean_active=3.0)
GLOBAL_BATCH = 64
STEPS = 24
KEY = "default/topk-64-s0"


def configs(remedy: str = "auto") -> list[TrainConfig]:
    return [TrainConfig(sae_config("topk", 16, 64, k=4), seed=0, lr=1e-2, remedy=remedy)]


def every_architecture() -> list[TrainConfig]:
    return [
        TrainConfig(sae_config("topk", 16, 32, k=4), lr=1e-2, name="topk"),
        TrainConfig(sae_config("batchtopk", 16, 32, k=4), lr=1e-2, name="batchtopk"),
        TrainConfig(sae_config("relu", 16, 32, sparsity_coeff=1e-2), lr=1e-2, name="relu"),
        TrainConfig(sae_config("jumprelu", 16, 32, sparsity_coeff=1e-2), lr=1e-2, name="jumprelu"),
        TrainConfig(sae_config("gated", 16, 32, sparsity_coeff=1e-2), lr=1e-2, name="gated"),
    ]


def toy_source(n_batches: int = 40):
    return make_toy(TOY, batch_size=GLOBAL_BATCH, seed=1, n_batches=n_batches)[1]


def _env() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["TQDM_DISABLE"] = "1"


# ---------------------------------------------------------------------------------------------
# default tier: no processes
# ---------------------------------------------------------------------------------------------
def test_place_sites_known_answers():
    plan = place_sites({"a": 8, "b": 7, "c": 6, "d": 5, "e": 4}, 2)
    # LPT: 8->0, 7->1, 6->1, 5->0, 4->0 (tie 13/13 goes to device 0)
    assert plan.assignment == {"a": 0, "b": 1, "c": 1, "d": 0, "e": 0}
    assert plan.loads == (17, 13) and plan.sites_of(1) == ["b", "c"]
    equal = place_sites({f"s{i}": 10 for i in range(6)}, 3)
    assert equal.loads == (20, 20, 20) and equal.imbalance == 1.0
    assert place_sites({"x": 1}, 4).loads == (1, 0, 0, 0)
    assert place_sites({"a": 8, "b": 7}, 2).device_of("b") == torch.device("cuda", 1)


def test_place_sites_from_configs_weighs_d_in_times_d_sae():
    cfgs = [
        TrainConfig(sae_config("topk", 32, 256, k=4), site="blocks.0.hook_resid_post", seed=s) for s in range(2)
    ] + [TrainConfig(sae_config("topk", 32, 128, k=4), site=f"blocks.{l}.hook_resid_post") for l in (1, 2, 3, 4)]
    plan = place_sites(cfgs, 2)
    assert plan.loads == (2 * 32 * 256, 4 * 32 * 128)
    assert plan.sites_of(0) == ["blocks.0.hook_resid_post"]


def test_place_sites_is_within_the_lpt_bound_of_the_optimum():
    gen = torch.Generator().manual_seed(0)
    for trial in range(30):
        n_sites, n_dev = 2 + trial % 5, 2 + trial % 3
        costs = {f"s{i}": int(c) for i, c in enumerate(torch.randint(1, 50, (n_sites,), generator=gen))}
        plan = place_sites(costs, n_dev)
        best = _optimum(list(costs.values()), n_dev)
        assert max(plan.loads) <= (4 / 3 - 1 / (3 * n_dev)) * best + 1e-9
        assert sum(plan.loads) == sum(costs.values()) and set(plan.assignment) == set(costs)


def _optimum(costs: list[int], n_dev: int) -> int:
    return min(max(sum(c for c, d in zip(costs, a) if d == k) for k in range(n_dev)) for a in itertools.product(range(n_dev), repeat=len(costs)))


def test_place_sites_rejects_bad_input():
    with pytest.raises(ConfigError, match="n_devices"):
        place_sites({"a": 1}, 0)
    with pytest.raises(ConfigError, match="no sites"):
        place_sites({}, 2)
    with pytest.raises(ConfigError, match="not in the placement plan"):
        place_sites({"a": 1}, 2).rank_of("b")


def test_rank_slices_are_disjoint_and_concatenate_to_the_global_batch():
    for n, world in [(64, 2), (10, 3), (7, 4)]:
        bounds = [share_bounds(n, r, world) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert max(hi - lo for lo, hi in bounds) - min(hi - lo for lo, hi in bounds) <= 1
    src = [{"a": torch.arange(20.0).view(10, 2), "b": torch.arange(10.0).view(10, 1)}, {"a": torch.zeros(2, 2), "b": torch.zeros(2, 1)}]
    shares = [list(RankSlice(src, r, 3)) for r in range(3)]
    assert all(len(s) == 1 for s in shares)  # the 2-row batch cannot feed 3 ranks: every rank stops
    assert torch.equal(torch.cat([s[0]["a"] for s in shares]), src[0]["a"])
    assert torch.equal(torch.cat([s[0]["b"] for s in shares]), src[0]["b"])
    plain = list(RankSlice([torch.ones(4, 3)], 1, 2))
    assert plain[0]["default"].shape == (2, 3)
    with pytest.raises(ConfigError, match="rank"):
        RankSlice(src, 2, 2)


def test_rank_slice_state_is_the_global_position():
    src = toy_source(6)
    view = RankSlice(src, 1, 2)
    it = iter(view)
    next(it), next(it)
    assert view.state_dict() == src.state_dict() == {"next_batch": 2, "seed": 1}
    again = RankSlice(toy_source(6), 1, 2)
    again.load_state_dict(view.state_dict())
    assert torch.equal(next(iter(again))["default"], next(it)["default"])


def test_distributed_config_and_job_file_validation(tmp_path):
    with pytest.raises(ConfigError, match="mode"):
        DistributedConfig(mode="pipeline")
    with pytest.raises(ConfigError, match="backend"):
        DistributedConfig(backend="mpi")
    with pytest.raises(ConfigError, match="store source needs a path"):
        SourceSpec(kind="store")
    with pytest.raises(ConfigError, match="unknown distributed fields"):
        DistributedConfig.from_dict({"mode": "data", "ranks": 2})
    job = tmp_path / "job.yaml"
    job.write_text("source: {kind: planted, batch_size: 8}\ntrain: []\nrun: {steps: 2}\n")
    with pytest.raises(ConfigError, match="train must be a non-empty list"):
        load_job(job)
    job.write_text("source: {kind: planted}\ntrain: [{sae: {architecture: topk, d_in: 4, d_sae: 8, k: 2}}]\nrun: {steps: 2, stepz: 3}\n")
    with pytest.raises(ConfigError, match="unknown run fields"):
        load_job(job)
    with pytest.raises(ConfigError, match="does not exist"):
        load_job(tmp_path / "missing.yaml")


def test_placed_trainer_puts_sites_on_devices_and_equals_one_device(tmp_path):
    cfgs = [TrainConfig(sae_config("topk", 16, 64, k=4), site=s, seed=i, lr=1e-2) for i, s in enumerate(["a", "a", "b", "c"])]

    def source():
        from universality.synthetic import PlantedSource, feature_probabilities, planted_dictionary

        worlds = {s: planted_dictionary(32, 16, i) for i, s in enumerate("abc")}
        return PlantedSource(worlds, feature_probabilities(32, 3.0, 2.0), 32, seed=2, n_batches=30)

    placed = PlacedTrainer(cfgs, RunConfig(steps=12), devices=["cpu", "cpu"])
    assert placed.plan.assignment == {"a": 0, "b": 1, "c": 1} and placed.plan.loads == (2048, 2048)
    got = placed.fit(source(), progress=False)
    want = Trainer(cfgs, RunConfig(steps=12)).fit(source(), progress=False)
    for key, sae in want.items():
        for name, value in sae.state_dict().items():
            assert torch.equal(got[key].state_dict()[name], value), (key, name)
    # resume: a run whose source ends at step 7 (checkpoint there), continued, equals the straight run
    run = RunConfig(steps=12, checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=3)
    src = source()
    first = train_placed(_Take(src, 7), cfgs, run, ["cpu", "cpu"], progress=False)
    assert set(first) == set(want)
    assert read_json(tmp_path / "ck" / "checkpoint" / "state.json")["step"] == 7
    resumed = train_placed(source(), cfgs, run, ["cpu", "cpu"], progress=False)
    for key, sae in want.items():
        for name, value in sae.state_dict().items():
            assert torch.equal(resumed[key].state_dict()[name], value), (key, name)
    with pytest.raises(ConfigError, match="at least one device"):
        PlacedTrainer(cfgs, RunConfig(steps=2), devices=[])
    if "stack" in {f.name for f in dataclasses.fields(RunConfig)}:
        with pytest.raises(ConfigError, match="stack=True is not supported by PlacedTrainer"):
            PlacedTrainer(cfgs, RunConfig(steps=2, stack=True), devices=["cpu"])


class _Take:
    """The first ``n`` batches of a resumable source (a run that stops early)."""

    def __init__(self, source, n: int) -> None:
        self.source, self.n = source, n

    def __iter__(self):
        return itertools.islice(iter(self.source), self.n)

    def state_dict(self):
        return self.source.state_dict()

    def load_state_dict(self, state):
        self.source.load_state_dict(state)


def test_without_a_launcher_train_distributed_is_plain_training():
    assert "WORLD_SIZE" not in os.environ and not dist.is_initialized()
    got = train_distributed(toy_source(8), configs(), RunConfig(steps=6), progress=False)[KEY]
    want = Trainer(configs(), RunConfig(steps=6)).fit(toy_source(8), progress=False)[KEY]
    assert all(torch.equal(got.state_dict()[k], v) for k, v in want.state_dict().items())


# ---------------------------------------------------------------------------------------------
# workers (run in spawned processes; module-level so that spawn can import them)
# ---------------------------------------------------------------------------------------------
def _save_state(path: Path, trainer: Trainer, result: dict[str, SAE]) -> None:
    tensors = {f"sae/{k}": v for k, v in result[KEY].state_dict().items()}
    tensors.update({f"live/{k}": v.detach() for k, v in trainer.saes[KEY].state_dict().items()})
    tensors.update({f"tracker/{k}": v for k, v in trainer.trackers[KEY].state_tensors().items()})
    save_tensors(path, tensors)
    write_json(path.with_suffix(".json"), {"tokens": trainer.tokens, "tracker_tokens": trainer.trackers[KEY].count_tokens, "scale": trainer.scales["default"]})


class _BypassDDP(DataParallelTrainer):
    def _forward_train(self, key, sae, x):
        return sae.forward_train(x)


STORE_SITE = "blocks.0.hook_resid_post"


def store_configs() -> list[TrainConfig]:
    return [TrainConfig(sae_config("topk", 64, 128, k=8), site=STORE_SITE, lr=1e-2)]


def store_reader(path: str):
    from universality.activations.store import ActivationStore

    return ActivationStore.open(path).iter_batches([STORE_SITE], batch_size=128, shuffle_buffer=512, seed=0)


def _tiny_store(root: Path) -> Path:
    """A harvested store (~6.6k rows of a tiny GPT-2 on the shipped corpus, 14 shards)."""
    import models
    from models.testing import make_tiny_model
    from universality.activations import harvest
    from universality.data import MetaEquals, PackingConfig, select_subset, shakespeare

    model = models.load(str(make_tiny_model("gpt2", root / "gpt2")))
    docs = select_subset(shakespeare(), MetaEquals("work", ("passionate_pilgrim",)), name="shakespeare")
    harvest(model, docs, [STORE_SITE], root / "store", packing=PackingConfig(context_len=32), batch_size=4, shard_rows=400, progress=False)
    return root / "store"


def _equivalence_worker(rank: int, out: str, store: str) -> None:
    out_dir = Path(out)
    dist.init_process_group("gloo")
    try:
        # F: a harvested store read by its resumable, shuffling reader
        result = train_distributed(store_reader(store), store_configs(), RunConfig(steps=20, dead_window=NEVER_DEAD),
                                   progress=False)
        save_tensors(out_dir / f"store{rank}.safetensors", result[store_configs()[0].key].state_dict())
        # A: AuxK remedy but no latent dead yet (a window longer than the run) -> exactly the single-process
        # step on 2b rows
        trainer = DataParallelTrainer(configs(), RunConfig(steps=STEPS, dead_window=NEVER_DEAD))
        result = trainer.fit(RankSlice(toy_source(), rank, 2), progress=False)
        _save_state(out_dir / f"ddp{rank}.safetensors", trainer, result)
        # B: resampling with latents dying fast: rank 0's resampled rows must reach rank 1
        trainer = DataParallelTrainer(configs("resample"), RunConfig(steps=STEPS, dead_window=96, resample_every=6))
        result = trainer.fit(RankSlice(toy_source(), rank, 2), progress=False)
        _save_state(out_dir / f"resample{rank}.safetensors", trainer, result)
        # D: every architecture under DDP
        result = train_distributed(toy_source(), every_architecture(), RunConfig(steps=STEPS, dead_window=NEVER_DEAD),
                                   progress=False)
        save_tensors(out_dir / f"arch{rank}.safetensors", {f"{k}/{n}": v for k, sae in result.items() for n, v in sae.state_dict().items()})
        if "stack" in {f.name for f in dataclasses.fields(RunConfig)}:
            try:
                DataParallelTrainer(configs(), RunConfig(steps=2, stack=True))
            except ConfigError as exc:
                write_json(out_dir / f"stack{rank}.json", str(exc))
        # E: a forward that bypasses DDP leaves the ranks apart, and fit says so
        try:
            _BypassDDP(configs(), RunConfig(steps=4)).fit(RankSlice(toy_source(), rank, 2), progress=False)
        except TrainingDiverged as exc:
            write_json(out_dir / f"bypass{rank}.json", str(exc))
        # C: the tracker on its own, dense and sparse updates of different local sizes
        gen = torch.Generator().manual_seed(100 + rank)
        tracker = SyncedFiringTracker(24, window=50)
        for step in range(12):
            n = 5 + rank * 3 + step % 2
            if step % 3:
                tracker.update(torch.relu(torch.randn(n, 24, generator=gen) - 1.0))
            else:
                idx = torch.randint(0, 24, (n, 3), generator=gen)
                tracker.update_sparse(idx, torch.rand(n, 3, generator=gen) - 0.3)
        save_tensors(out_dir / f"tracker{rank}.safetensors", {**tracker.state_tensors(), "count_tokens": torch.tensor(tracker.count_tokens)})
    finally:
        dist.destroy_process_group()


class _FailAt:
    """A source that raises once it reaches batch ``fail_at`` (a crash mid-run)."""

    def __init__(self, source, fail_at: int | None) -> None:
        self.source, self.fail_at = source, fail_at

    def __iter__(self):
        for x in self.source:
            if self.fail_at is not None and self.source.next_batch > self.fail_at:
                raise RuntimeError("simulated crash")
            yield x

    def state_dict(self):
        return self.source.state_dict()

    def load_state_dict(self, state):
        self.source.load_state_dict(state)


def _resume_worker(rank: int, root: str, first: bool) -> None:
    def job(name: str, fail_at: int | None) -> None:
        run = RunConfig(steps=STEPS, checkpoint_dir=f"{root}/{name}/ckpt", checkpoint_every=5, out_dir=f"{root}/{name}/out")
        train_distributed(_FailAt(toy_source(), fail_at), configs(), run, DistributedConfig(backend="gloo", timeout_s=120), progress=False)

    # several jobs in one process: create the group once and let train_distributed join it (creating
    # and destroying the default group per job races: a fast rank can rendezvous at the old store)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    try:
        if first:  # an uninterrupted run, and a run that crashes (on both ranks) after its step-15 checkpoint
            job("full", None)
            try:
                job("crashed", 17)
            except RuntimeError as exc:
                write_json(Path(root) / f"crash{rank}.json", str(exc))
        else:  # fresh processes resume the crashed run
            job("crashed", None)
    finally:
        dist.destroy_process_group()


def _sites_worker(rank: int, job: str, out: str) -> None:
    from universality.train.distributed import run_job

    result = run_job(job, progress=False)
    write_json(Path(out) / f"sites{rank}.json", sorted(result))


# ---------------------------------------------------------------------------------------------
# slow tier: two gloo processes
# ---------------------------------------------------------------------------------------------
NEVER_DEAD = 1_000_000
"""A dead window longer than these runs: no latent counts as dead, so AuxK adds nothing and one process on
the concatenated batch equals data-parallel ranks exactly (AuxK's top-k over a rank's own rows would not)."""


def _concatenated_reference(remedy: str = "auto", **run) -> Trainer:
    run.setdefault("dead_window", NEVER_DEAD)
    trainer = Trainer(configs(remedy), RunConfig(steps=STEPS, **run))
    trainer.fit(toy_source(), progress=False)
    return trainer


@pytest.mark.slow
def test_ddp_equals_single_process_on_the_concatenated_batch(tmp_path):
    _env()
    store = _tiny_store(tmp_path)
    launch_local(_equivalence_worker, 2, (str(tmp_path), str(store)))
    r0, r1 = load_tensors(tmp_path / "ddp0.safetensors"), load_tensors(tmp_path / "ddp1.safetensors")
    assert r0.keys() == r1.keys()
    for k in r0:  # identical parameters and trackers on both ranks
        assert torch.equal(r0[k], r1[k]), k

    # one process reading the global 64-row batches = two ranks of 32 rows each (mean-reduced loss)
    ref = _concatenated_reference()
    assert not bool(ref.trackers[KEY].dead_mask().any())  # so AuxK is zero in both runs
    # float32: the all-reduced mean and the concatenated batch's mean round differently, and 24 Adam steps carry
    # that (one of 8,192 decoder entries was 2.8e-5 off on an AMD EPYC); a reduction bug (sum for mean, one
    # rank's gradient) moves the weights by about the Adam step, lr = 1e-2
    for name, want in ref.saes[KEY].state_dict().items():
        torch.testing.assert_close(r0[f"live/{name}"], want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(r0["tracker/count"], ref.trackers[KEY].count, rtol=0, atol=0)
    torch.testing.assert_close(r0["tracker/tokens_since_fired"], ref.trackers[KEY].tokens_since_fired, rtol=0, atol=0)
    meta = read_json(tmp_path / "ddp0.json")
    assert meta["tokens"] == ref.tokens == STEPS * GLOBAL_BATCH
    assert meta["tracker_tokens"] == ref.trackers[KEY].count_tokens
    assert meta["scale"] == pytest.approx(ref.scales["default"], rel=1e-12)

    # resampling: latents died and were resampled, yet both ranks hold the same dictionary
    s0, s1 = load_tensors(tmp_path / "resample0.safetensors"), load_tensors(tmp_path / "resample1.safetensors")
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k
    fresh = Trainer(configs("resample"), RunConfig(steps=STEPS, dead_window=96, resample_every=6))
    assert not torch.equal(s0["live/W_dec"], fresh.saes[KEY].W_dec.detach())

    # a store: each global batch of the shuffling reader splits into the ranks' shares, and DDP on
    # those shares equals one process on the reader's global batches
    shares = [RankSlice(store_reader(str(store)), r, 2) for r in range(2)]
    for i, (x0, x1, x) in enumerate(zip(*shares, store_reader(str(store)))):
        assert torch.equal(torch.cat([x0[STORE_SITE], x1[STORE_SITE]]), x[STORE_SITE])
        if i == 3:
            break
    assert shares[0].state_dict() == shares[1].state_dict()
    st0, st1 = load_tensors(tmp_path / "store0.safetensors"), load_tensors(tmp_path / "store1.safetensors")
    one = Trainer(store_configs(), RunConfig(steps=20, dead_window=NEVER_DEAD)).fit(store_reader(str(store)),
                                                                             progress=False)[store_configs()[0].key]
    for name, value in one.state_dict().items():
        assert torch.equal(st0[name], st1[name]), name
        torch.testing.assert_close(st0[name], value, rtol=1e-5, atol=1e-5)

    # every architecture: same dictionary on both ranks; the ones whose loss is a mean over rows
    # equal one process on the global batch (BatchTopK's batch-wide top-k is per rank: not exact)
    a0, a1 = load_tensors(tmp_path / "arch0.safetensors"), load_tensors(tmp_path / "arch1.safetensors")
    for k in a0:
        assert torch.equal(a0[k], a1[k]), k
    single = Trainer(every_architecture(), RunConfig(steps=STEPS, dead_window=NEVER_DEAD)).fit(toy_source(),
                                                                                            progress=False)
    for key in ("topk", "relu", "jumprelu", "gated"):
        for name, value in single[key].state_dict().items():
            torch.testing.assert_close(a0[f"{key}/{name}"], value, rtol=1e-5, atol=1e-5)

    for rank in range(2):
        assert "ranks' dictionaries differ" in read_json(tmp_path / f"bypass{rank}.json")
        if "stack" in {f.name for f in dataclasses.fields(RunConfig)}:
            assert "stack=True is not supported" in read_json(tmp_path / f"stack{rank}.json")

    # the tracker alone equals one tracker fed both ranks' rows
    t0, t1 = load_tensors(tmp_path / "tracker0.safetensors"), load_tensors(tmp_path / "tracker1.safetensors")
    want = FiringTracker(24, window=50)
    gens = [torch.Generator().manual_seed(100 + r) for r in range(2)]
    for step in range(12):
        parts = []
        for r in range(2):
            n = 5 + r * 3 + step % 2
            if step % 3:
                parts.append((torch.relu(torch.randn(n, 24, generator=gens[r]) - 1.0),))
            else:
                parts.append((torch.randint(0, 24, (n, 3), generator=gens[r]), torch.rand(n, 3, generator=gens[r]) - 0.3))
        if step % 3:
            want.update(torch.cat([p[0] for p in parts]))
        else:
            want.update_sparse(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    for k, v in want.state_tensors().items():
        assert torch.equal(t0[k], v) and torch.equal(t1[k], v), k
    assert int(t0["count_tokens"]) == want.count_tokens
    assert want.last_density is not None  # the window rolled over at least once


@pytest.mark.slow
def test_checkpoint_resume_under_two_ranks(tmp_path):
    _env()
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    launch_local(_resume_worker, 2, (str(tmp_path), True))
    assert read_json(tmp_path / "crash0.json") == read_json(tmp_path / "crash1.json") == "simulated crash"
    assert not (crashed / "out").exists()
    assert read_json(crashed / "ckpt" / "checkpoint" / "state.json")["step"] == 15
    launch_local(_resume_worker, 2, (str(tmp_path), False))
    a, b = SAE.load(full / "out" / KEY), SAE.load(crashed / "out" / KEY)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert a.meta["trained_steps"] == b.meta["trained_steps"] == STEPS
    assert b.meta["trained_tokens"] == STEPS * GLOBAL_BATCH
    # only rank 0 wrote: one artifact per key, no per-rank leftovers
    assert sorted(p.name for p in (crashed / "out" / "default").iterdir()) == ["topk-64-s0"]


def _sites_job(tmp_path: Path) -> Path:
    job = tmp_path / "job.yaml"
    job.write_text(
        "source: {kind: planted, sites: [a, b, c], batch_size: 48, seed: 3, n_batches: 20,"
        " toy: {d_in: 16, n_features: 32, mean_active: 3.0}}\n"
        "train:\n"
        "  - {sae: {architecture: topk, d_in: 16, d_sae: 128, k: 4}, site: a, lr: 0.01}\n"
        "  - {sae: {architecture: topk, d_in: 16, d_sae: 64, k: 4}, site: b, lr: 0.01}\n"
        "  - {sae: {architecture: topk, d_in: 16, d_sae: 64, k: 4}, site: c, lr: 0.01, seed: 1}\n"
        f"run: {{steps: 12, checkpoint_dir: {tmp_path / 'ckpt'}, out_dir: {tmp_path / 'out'}}}\n"
        "distributed: {mode: sites, backend: gloo}\n"
    )
    return job


@pytest.mark.slow
def test_model_parallel_by_site_trains_each_site_on_its_rank(tmp_path):
    _env()
    job = _sites_job(tmp_path)
    launch_local(_sites_worker, 2, (str(job), str(tmp_path)))
    assert read_json(tmp_path / "sites0.json") == ["a/topk-128-s0"]  # 16*128 = 16*64 + 16*64
    assert read_json(tmp_path / "sites1.json") == ["b/topk-64-s0", "c/topk-64-s1"]
    assert (tmp_path / "ckpt" / "rank-0-of-2" / "checkpoint").is_dir() and (tmp_path / "ckpt" / "rank-1-of-2" / "checkpoint").is_dir()
    # each site's dictionary is the one a single process training all sites would produce
    spec, cfgs, run, _ = load_job(job)
    want = Trainer(cfgs, RunConfig(steps=run.steps)).fit(spec.build(), progress=False)
    for key, sae in want.items():
        got = SAE.load(tmp_path / "out" / key)
        for name, value in sae.state_dict().items():
            torch.testing.assert_close(got.state_dict()[name], value, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_torchrun_command_line_data_parallel(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(
        f"source: {{kind: planted, batch_size: {GLOBAL_BATCH}, seed: 1, n_batches: 40,"
        " toy: {d_in: 16, n_features: 32, mean_active: 3.0}}\n"
        "train: [{sae: {architecture: topk, d_in: 16, d_sae: 64, k: 4}, lr: 0.01}]\n"
        f"run: {{steps: {STEPS}, dead_window: {NEVER_DEAD}, out_dir: {tmp_path / 'out'}}}\n"
        "distributed: {mode: data}\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "universality.train.distributed", "--config", str(job), "--no-progress"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0: trained 1 dictionaries" in proc.stdout and "rank 1: trained 1 dictionaries" in proc.stdout
    got = SAE.load(tmp_path / "out" / KEY)
    want = _concatenated_reference().results()[KEY]
    for name, value in want.state_dict().items():
        torch.testing.assert_close(got.state_dict()[name], value, rtol=1e-5, atol=1e-5)
    assert got.meta["trained_tokens"] == STEPS * GLOBAL_BATCH


def _cuda_worker(rank: int, out: str) -> None:
    dist.init_process_group("nccl")  # also with one GPU, so DDP and the synced trackers run on CUDA
    try:
        trainer_run = RunConfig(steps=STEPS, device="cuda", autocast=False)
        result = train_distributed(toy_source(), configs(), trainer_run, progress=False)
        save_tensors(Path(out) / f"cuda{rank}.safetensors", {k: v.cpu() for k, v in result[KEY].state_dict().items()})
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.gpu
def test_nccl_data_parallel_on_cuda_equals_one_process(tmp_path):
    _env()
    world = min(2, torch.cuda.device_count())
    launch_local(_cuda_worker, world, (str(tmp_path),))
    want = Trainer(configs(), RunConfig(steps=STEPS, device="cuda", autocast=False)).fit(toy_source(), progress=False)[KEY]
    for rank in range(world):
        got = load_tensors(tmp_path / f"cuda{rank}.safetensors")
        for name, value in want.state_dict().items():
            torch.testing.assert_close(got[name], value.cpu(), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_placed_trainer_on_cuda_devices():
    devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    cfgs = [TrainConfig(sae_config("topk", 16, 64, k=4), site=s, lr=1e-2) for s in ("a", "b", "c")]

    def source():
        from universality.synthetic import PlantedSource, feature_probabilities, planted_dictionary

        worlds = {s: planted_dictionary(32, 16, i) for i, s in enumerate("abc")}
        return PlantedSource(worlds, feature_probabilities(32, 3.0, 2.0), 32, seed=2, n_batches=12)

    trainer = PlacedTrainer(cfgs, RunConfig(steps=10, autocast=False), devices=devices)
    for cfg in cfgs:
        assert trainer.saes[cfg.key].W_dec.device == torch.device(devices[trainer.plan.rank_of(cfg.site)])
    got = trainer.fit(source(), progress=False)
    want = Trainer(cfgs, RunConfig(steps=10, device="cuda", autocast=False)).fit(source(), progress=False)
    for key, sae in want.items():
        for name, value in sae.state_dict().items():
            torch.testing.assert_close(got[key].state_dict()[name].cpu(), value.cpu(), rtol=1e-4, atol=1e-4)

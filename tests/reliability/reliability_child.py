"""Kill-and-resume helpers: a tiny harvest and a tiny training run, event hooks that SIGKILL the
process at a chosen point, and checks that every visible artifact is whole.

Used two ways:

* imported by the tests (``import reliability_child``; tests/ has no packages), which run the
  uninterrupted reference and every resume in-process;
* run as a script, ``python reliability_child.py {harvest|train} SPEC.json``, in a child process
  that kills itself with SIGKILL at event number ``spec["kill_at"]``.

Events are counted by wrapping, inside this process only, the I/O primitives that
:mod:`universality.io` calls (``os.fsync``, ``os.replace`` before and after, the folder exchange
before and after, and the safetensors writer ``universality.io._write_safetensors``, which at its kill point leaves a *half-written*
temporary file) plus one event per forward pass (harvest) or per training batch. No production
code path knows about any of this.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# ----------------------------------------------------------------------------- tiny workloads
HARVEST_SITES = ["blocks.0.hook_resid_post", "blocks.1.hook_attn_out"]
HARVEST_KW = dict(batch_size=4, shard_rows=100, max_tokens=1200)
CONTEXT_LEN = 32
TRAIN_SITE = "blocks.0.hook_resid_post"
TRAIN_STEPS = 12


def load_docs(path: str | os.PathLike):
    from universality.data import Document

    return [Document(d["id"], d["text"]) for d in json.loads(Path(path).read_text(encoding="utf-8"))]


def run_harvest(spec: dict[str, Any], adapter=None):
    """The tiny harvest of ``spec`` (model, docs, out); returns the opened store."""
    import models
    from universality.activations import harvest
    from universality.data import PackingConfig

    adapter = adapter if adapter is not None else models.load(spec["model"])
    return harvest(_EventAdapter(adapter), load_docs(spec["docs"]), HARVEST_SITES, spec["out"],
                   packing=PackingConfig(context_len=CONTEXT_LEN), progress=False, **HARVEST_KW)


def train_configs(d_in: int):
    from universality.sae import sae_config
    from universality.train import TrainConfig

    return [
        TrainConfig(sae_config("topk", d_in, 2 * d_in, k=4), site=TRAIN_SITE, lr=3e-3, warmup_steps=2),
        TrainConfig(sae_config("relu", d_in, 2 * d_in, sparsity_coeff=0.3), site=TRAIN_SITE, seed=1, lr=3e-3,
                    remedy="resample"),
    ]


def run_train(spec: dict[str, Any]):
    """Train the tiny dictionaries of ``spec`` (store, ckpt, out) from the store; returns the trainer."""
    import torch

    from universality.activations import ActivationStore
    from universality.train import RunConfig, Trainer

    # The checkpoint also snapshots the global torch RNG (``rng/torch``), which no config controls
    # and training never draws from (test_determinism checks that); seed it so that checkpoints
    # written by different processes compare bitwise.
    torch.manual_seed(0)
    store = ActivationStore.open(spec["store"])
    run = RunConfig(steps=TRAIN_STEPS, dead_window=128, resample_every=3, checkpoint_dir=spec["ckpt"],
                    checkpoint_every=2, out_dir=spec["out"], seed=3, init_rows=256)
    reader = store.iter_batches(TRAIN_SITE, batch_size=64, shuffle_buffer=256, seed=5, epochs=None, drop_last=True)
    trainer = Trainer(train_configs(store.width(TRAIN_SITE)), run, meta=store.describe())
    trainer.fit(_EventSource(reader), progress=False)
    return trainer


# ----------------------------------------------------------------------------- kill switch
class KillSwitch:
    """Counts events; at event number ``kill_at`` (1-based) the process SIGKILLs itself."""

    active: KillSwitch | None = None

    def __init__(self, kill_at: int | None) -> None:
        self.kill_at = kill_at
        self.count = 0
        self.lock = threading.Lock()

    def hit(self) -> bool:
        """Count one event; True when this is the event to die at."""
        with self.lock:
            self.count += 1
            return self.kill_at is not None and self.count == self.kill_at

    @staticmethod
    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)


def _event() -> None:
    ks = KillSwitch.active
    if ks is not None and ks.hit():
        ks.die()


class _EventAdapter:
    """Adapter proxy: one event before every forward pass."""

    def __init__(self, adapter) -> None:
        self._adapter = adapter

    def __getattr__(self, name):
        return getattr(self._adapter, name)

    def capture(self, *args, **kwargs):
        _event()
        return self._adapter.capture(*args, **kwargs)


class _EventSource:
    """Activation-source proxy: one event before every batch; state_dict passes through."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __iter__(self):
        for batch in self.inner:
            _event()
            yield batch

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


@contextlib.contextmanager
def kill_switch(kill_at: int | None) -> Iterator[KillSwitch]:
    """Install the I/O event hooks for the duration (restored afterwards); yields the counter."""
    import universality.io as uio

    ks = KillSwitch(kill_at)
    real_replace, real_fsync, real_save, real_exchange = os.replace, os.fsync, uio._write_safetensors, uio._exchange

    def replace(src, dst, *args, **kwargs):
        _event()  # the temporary file is whole, not yet renamed
        real_replace(src, dst, *args, **kwargs)
        _event()  # renamed, folder not yet synced

    def fsync(fd):
        _event()
        real_fsync(fd)

    def write_safetensors(filename, tensors, metadata=None, hasher=None):
        with ks.lock:
            ks.count += 1
            mid = ks.kill_at is not None and ks.count == ks.kill_at
        real_save(filename, tensors, metadata, hasher)
        if mid:  # leave a half-written temporary file behind, then die
            size = os.path.getsize(filename)
            with open(filename, "r+b") as fh:
                fh.truncate(size // 2)
            ks.die()

    def exchange(a, b):
        _event()
        ok = real_exchange(a, b)
        _event()
        return ok

    KillSwitch.active = ks
    os.replace, os.fsync, uio._write_safetensors, uio._exchange = replace, fsync, write_safetensors, exchange
    try:
        yield ks
    finally:
        os.replace, os.fsync, uio._write_safetensors, uio._exchange = real_replace, real_fsync, real_save, real_exchange
        KillSwitch.active = None


# ----------------------------------------------------------------------------- checks
def visible_files(root: str | os.PathLike) -> list[Path]:
    """Every file under ``root`` whose path has no temporary (``.name.tmp-...``) component."""
    from universality.io import is_temp_name

    root = Path(root)
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file()
                  and not any(is_temp_name(part) for part in p.relative_to(root).parts))


def check_visible_store(out: str | os.PathLike) -> int:
    """Every visible file of a (possibly interrupted) store is whole; returns shards verified."""
    from universality.activations import ActivationStore
    from universality.io import load_tensors, read_json

    out = Path(out)
    for p in visible_files(out):
        if p.suffix == ".json":
            read_json(p)
        elif p.suffix == ".safetensors":
            load_tensors(p)
        else:
            raise AssertionError(f"unexpected visible file {p}")
    if not (out / "manifest.json").is_file():  # the first manifest is written before any shard
        assert not any(p.name.startswith("shard-") for p in visible_files(out)), "shards without a manifest"
        return 0
    store = ActivationStore.open(out, allow_partial=True, verify="all")
    return len(store.shards)


def check_visible_training(ckpt: str | os.PathLike, out: str | os.PathLike) -> dict[str, int]:
    """The visible checkpoint (if any) and every visible dictionary load and pass their checksums."""
    from universality.io import read_json
    from universality.sae import SAE
    from universality.train.checkpoint import read_checkpoint

    ckpt, out = Path(ckpt), Path(out)
    found = {"checkpoint": 0, "dictionaries": 0}
    folder = ckpt / "checkpoint"
    if folder.exists():
        assert sorted(p.name for p in folder.iterdir()) == ["state.json", "state.safetensors"], list(folder.iterdir())
        _, doc = read_checkpoint(ckpt)
        assert doc.get("state_sha256"), "checkpoint without checksum"
        found["checkpoint"] = 1
    for p in visible_files(ckpt):
        assert p.parent == folder, f"unexpected visible file {p}"
    for cfg in (p for p in visible_files(out) if p.name == "cfg.json"):
        assert read_json(cfg).get("weights_sha256"), f"{cfg} has no checksum"
        SAE.load(cfg.parent)
        found["dictionaries"] += 1
    for p in visible_files(out):
        assert p.name in ("cfg.json", "weights.safetensors"), f"unexpected visible file {p}"
        assert (p.parent / "cfg.json").is_file() and (p.parent / "weights.safetensors").is_file(), p.parent
    return found


def main(argv: list[str]) -> int:
    task, spec_path = argv[1], argv[2]
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    import torch

    torch.set_num_threads(1)
    with kill_switch(spec.get("kill_at")):
        if task == "harvest":
            run_harvest(spec)
        elif task == "train":
            run_train(spec)
        else:
            raise SystemExit(f"unknown task {task!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

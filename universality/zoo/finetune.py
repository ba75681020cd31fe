"""``finetune_lm``: continue a zoo run from one of its checkpoints on other data (base versus fine-tune).

The setting of Kissane et al. (2024, "SAEs (usually) transfer between base and chat models"): a base
model trained on D, taken at checkpoint ``step{S}``, trained further on D'. The fine-tune keeps the
base's architecture, tokenizer (the same one, never retrained) and optimiser settings, starts a
fresh AdamW with a short linear warm-up and cosine-decays to ``min_lr_ratio * lr``. Its checkpoint
series counts from 0: ``<out>/step0`` holds the base weights unchanged, ``<out>/step{N}`` the
weights after N fine-tuning updates. The manifest records the base (folder, step, run hash, weight
digest), the new data's subset hash, the fine-tuning hyper-parameters and the base's lineage id
(:mod:`universality.zoo.lineage`), so transfer tests accept dictionaries across base and fine-tune.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from universality.errors import ArtifactError, ConfigError
from universality.io import atomic_dir, read_json, sha256_file, stable_hash
from universality.zoo import checkpoints as ckpt
from universality.zoo import loop
from universality.zoo.batches import BatchSchedule
from universality.zoo.config import ZooModelConfig, from_dict
from universality.zoo.corpus import as_subset, cached_rows, split_eval_rows
from universality.zoo.lineage import manifest_lineage
from universality.zoo.schedule import checkpoint_schedule
from universality.zoo.tokenizer import load_tokenizer, tokenizer_hash
from universality.zoo.train import run_manifest

__all__ = ["finetune_lm", "FinetuneSpec", "default_finetune_lr"]


@dataclass(frozen=True)
class FinetuneSpec:
    """The fine-tuning hyper-parameters (the rest comes from the base run's config)."""

    steps: int
    lr: float
    warmup_steps: int
    seed: int
    checkpoint_steps: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "lr": self.lr, "warmup_steps": self.warmup_steps, "seed": self.seed,
                "checkpoint_steps": list(self.checkpoint_steps)}


def default_finetune_lr(cfg: ZooModelConfig) -> float:
    """The base run's final learning rate, ``cfg.lr * cfg.min_lr_ratio`` (``cfg.lr / 10`` when that ratio is 0):
    the fine-tune continues at the rate the base ended with, so it adapts without undoing the base."""
    return cfg.lr * cfg.min_lr_ratio if cfg.min_lr_ratio > 0 else cfg.lr / 10


def finetune_lm(
    base_dir: str | os.PathLike,
    base_step: int,
    texts_or_dataset: Any,
    out_dir: str | os.PathLike,
    *,
    steps: int,
    lr: float | None = None,
    warmup_steps: int | None = None,
    checkpoint_steps: tuple[int, ...] | list[int] = (),
    seed: int = 0,
    overwrite: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
    num_threads: int | None = None,
) -> Path:
    """Fine-tune checkpoint ``step{base_step}`` of the zoo run ``base_dir`` on ``texts_or_dataset`` for ``steps`` updates.

    ``base_dir``: a finished :func:`~universality.zoo.train_lm` (or ``finetune_lm``) output folder.
    ``texts_or_dataset``: the new data, any input ``train_lm`` takes; it is packed with the base's
    tokenizer and context length, and ``eval_contexts`` of its rows are held out for the eval loss.
    Optimisation: the base config's batch size, weight decay, gradient clipping and ``min_lr_ratio``;
    a fresh AdamW; peak ``lr`` (default :func:`default_finetune_lr`) reached linearly over
    ``warmup_steps`` (default ``max(1, steps // 10)``), cosine decay to ``min_lr_ratio * lr``;
    ``seed`` orders the batches (the weights come from the base). ``checkpoint_steps`` (default: the
    zoo's pattern for ``steps``) must end at ``steps``; step 0 (the base weights) is always saved.

    Writes ``<out>/step{N}/`` and ``<out>/zoo.json`` like ``train_lm``, whose manifest adds ``base``
    (``dir``, ``name``, ``step``, ``run_hash``, ``lineage``, ``weights_sha256``, ``dataset``,
    ``subset_hash``), ``finetune`` (:class:`FinetuneSpec`) and ``lineage`` (the base's). Resume,
    ``stop_at``, ``overwrite`` and ``num_threads`` behave as in ``train_lm``: a finished identical
    fine-tune in ``out_dir`` is returned as is; another run there raises
    :class:`~universality.errors.ArtifactError` unless ``overwrite=True``. Returns ``out_dir``.
    """
    return loop.with_threads(num_threads, lambda: _finetune(
        base_dir, base_step, texts_or_dataset, out_dir, steps, lr, warmup_steps, checkpoint_steps, seed,
        overwrite, stop_at, progress))


def _finetune(base_dir, base_step, texts_or_dataset, out_dir, steps, lr, warmup_steps, checkpoint_steps, seed,
              overwrite, stop_at, progress) -> Path:
    base = Path(base_dir)
    base_manifest = _base_manifest(base)
    base_cfg = from_dict(base_manifest["config"])
    step_path = _base_checkpoint(base, base_manifest, base_step)
    spec = _spec(base_cfg, steps, lr, warmup_steps, checkpoint_steps, seed)
    cfg = base_cfg.replace(steps=spec.steps, lr=spec.lr, warmup_steps=spec.warmup_steps, seed=spec.seed,
                           checkpoint_steps=spec.checkpoint_steps, checkpoint_every=0,
                           name=f"{base_cfg.name or base_cfg.family}-ft")
    if stop_at is not None and stop_at not in cfg.checkpoints:
        raise ConfigError(f"stop_at={stop_at} is not a checkpoint step", f"use one of {list(cfg.checkpoints)}")
    out = Path(out_dir)
    if out.resolve() == base.resolve():
        raise ConfigError(f"out_dir {out} is the base run's folder", "write the fine-tune to its own out_dir")
    if overwrite:
        ckpt.clear_run(out)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = load_tokenizer(base / "tokenizer")
    tok_hash = tokenizer_hash(tokenizer)
    if tok_hash != base_manifest.get("tokenizer_hash"):
        raise ArtifactError(f"{base / 'tokenizer'} does not match the tokenizer hash its manifest records",
                            "restore the base run's tokenizer folder or retrain the base run")
    subset = as_subset(texts_or_dataset)
    record = {"dir": str(base.resolve()), "name": base_manifest.get("name"), "family": base_manifest.get("family"),
              "step": base_step, "checkpoint": f"step{base_step}", "run_hash": base_manifest.get("run_hash"),
              "lineage": manifest_lineage(base_manifest), "weights_sha256": sha256_file(step_path / "model.safetensors"),
              "dataset": base_manifest.get("dataset"), "subset_hash": base_manifest.get("subset_hash")}
    run_key = {"finetune_of": {k: record[k] for k in ("run_hash", "step", "weights_sha256")},
               "config": cfg.to_dict(), "subset_hash": subset.hash, "tokenizer_hash": tok_hash}
    run_hash = stable_hash(run_key)
    if loop.finished(out, run_hash):
        return out
    resume = loop.resumable(out, run_hash, cfg.checkpoints)
    _save_tokenizer(tokenizer, tok_hash, out / "tokenizer")

    rows = cached_rows((tok_hash, subset.hash, cfg.context_length), subset.documents, tokenizer, cfg.context_length)
    train_rows, eval_rows = split_eval_rows(rows, cfg.eval_contexts)
    schedule = BatchSchedule(train_rows, cfg.batch_size, cfg.seed)

    def base_model() -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(step_path), local_files_only=True, dtype=torch.float32)
        model.train()
        return model

    done = loop.run_updates(out, run_hash, cfg, resume, base_model, schedule, eval_rows, tokenizer,
                            stop_at=stop_at, label=f"finetune {cfg.name}", progress=progress)
    if done is None:
        return out
    manifest = run_manifest(cfg, subset, tokenizer, done.model, rows, train_rows, eval_rows, done.train_loss, done.eval_loss)
    manifest.update(run_hash=run_hash, lineage=record["lineage"], tokenizer_hash=tok_hash, inject=None,
                    base=record, finetune=spec.to_dict(), seconds=done.seconds)
    loop.finish(out, manifest)
    return out


def _base_manifest(base: Path) -> dict[str, Any]:
    if not base.is_dir():
        raise ArtifactError(f"base run {base} does not exist", "pass the out_dir of a finished train_lm run")
    path = base / ckpt.MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{base} is not a finished zoo run (no {ckpt.MANIFEST})",
                            "finish it with train_lm (same arguments) or pass a train_lm out_dir")
    manifest = read_json(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict) or "steps" not in manifest:
        raise ArtifactError(f"{path} is not a zoo manifest", "pass the out_dir of a finished train_lm run")
    return manifest


def _base_checkpoint(base: Path, manifest: dict[str, Any], step: Any) -> Path:
    steps = [int(s) for s in manifest["steps"]]
    if not isinstance(step, int) or isinstance(step, bool) or step not in steps:
        raise ConfigError(f"base_step={step!r} is not a checkpoint of {base}", f"use one of {steps}")
    path = ckpt.step_dir(base, step)
    if not (path / "model.safetensors").is_file():
        raise ArtifactError(f"{path} holds no model.safetensors", "restore the base run's checkpoint or retrain it")
    return path


def _spec(base_cfg: ZooModelConfig, steps: Any, lr: Any, warmup_steps: Any, checkpoint_steps: Any, seed: Any) -> FinetuneSpec:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"finetune steps must be a positive integer, got {steps!r}", "pass e.g. steps=100")
    lr = default_finetune_lr(base_cfg) if lr is None else lr
    warmup = max(1, steps // 10) if warmup_steps is None else warmup_steps
    given = tuple(checkpoint_steps)
    ckpts = given or checkpoint_schedule(steps, max(1, steps // 4))
    if ckpts[0] != 0:
        ckpts = (0, *ckpts)
    # The base config validates the rest (lr range, warm-up <= steps, increasing checkpoints ending at steps).
    base_cfg.replace(steps=steps, lr=lr, warmup_steps=warmup, seed=seed, checkpoint_steps=ckpts)
    return FinetuneSpec(steps=steps, lr=float(lr), warmup_steps=warmup, seed=seed, checkpoint_steps=ckpts)


def _save_tokenizer(tokenizer: Any, tok_hash: str, tok_dir: Path) -> None:
    """A copy of the base's tokenizer in ``<out>/tokenizer`` (refusing a different one already there)."""
    if (tok_dir / "tokenizer.json").is_file():
        if tokenizer_hash(load_tokenizer(tok_dir)) != tok_hash:
            raise ArtifactError(f"{tok_dir} holds another tokenizer than the base run's", "choose another out_dir or pass overwrite=True")
        return
    with atomic_dir(tok_dir) as tmp:
        tokenizer.save_pretrained(str(tmp))

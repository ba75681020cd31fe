"""The update loop a zoo run shares (:func:`~universality.zoo.train_lm` and :func:`~universality.zoo.finetune_lm`).

A run is identified by its ``run_hash``; its folder holds ``step{N}/`` checkpoints, a ``resume/``
state while unfinished and ``zoo.json`` once done (:mod:`universality.zoo.checkpoints`). The loop
takes ``cfg.steps`` AdamW updates at the learning rates of :func:`~universality.zoo.schedule.lr_at`,
on the batches of a :class:`~universality.zoo.batches.BatchSchedule`, and saves a checkpoint (with
its eval loss and the resume state) at every step of ``cfg.checkpoints``. Resuming reloads the last
checkpoint and its optimizer moments, so an interrupted run ends bitwise identical to an
uninterrupted one on the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from jaxtyping import Int
from torch import Tensor

from universality.errors import ArtifactError, ConfigError, TrainingDiverged
from universality.io import read_json, write_json
from universality.progress import progress_bar
from universality.zoo import checkpoints as ckpt
from universality.zoo.batches import BatchSchedule
from universality.zoo.config import ZooModelConfig
from universality.zoo.loss import eval_loss, next_token_loss
from universality.zoo.optim_state import make_optimizer
from universality.zoo.schedule import lr_at

__all__ = ["LoopResult", "finished", "resumable", "run_updates", "finish", "with_threads"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class LoopResult:
    """What a completed loop hands back for the manifest."""

    model: torch.nn.Module
    train_loss: list[float]
    eval_loss: dict[str, float]
    seconds: float


def with_threads(num_threads: int | None, fn: Callable[[], _T]) -> _T:
    """``fn()`` with torch's CPU threads set to ``num_threads`` for the call only (``None``: unchanged)."""
    if num_threads is None:
        return fn()
    if not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1:
        raise ConfigError(f"num_threads must be a positive integer, got {num_threads!r}", "pass e.g. num_threads=1")
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def finished(out: Path, run_hash: str) -> bool:
    """True when ``out`` holds this run, finished; raises when it holds another finished run."""
    path = out / ckpt.MANIFEST
    if not path.is_file():
        return False
    if read_json(path).get("run_hash") == run_hash:
        return True
    raise ArtifactError(f"{out} holds a finished zoo run of another config/data/tokenizer", "choose another out_dir or pass overwrite=True")


def resumable(out: Path, run_hash: str, checkpoints: tuple[int, ...]) -> dict[str, Any] | None:
    """The resume state of this run in ``out`` (``None`` for a fresh start); refuses other runs' folders."""
    resume = ckpt.read_resume(out)
    if resume is not None and resume.get("run_hash") != run_hash:
        raise ArtifactError(f"{out} holds an unfinished zoo run of another config/data/tokenizer", "choose another out_dir or pass overwrite=True")
    # With no resume state, only step0 may exist (a crash between writing it and the first resume state).
    if resume is None and any(ckpt.step_dir(out, s).exists() for s in checkpoints if s != 0):
        raise ArtifactError(f"{out} holds step folders but no resume state", "choose another out_dir or pass overwrite=True")
    return resume


def run_updates(
    out: Path,
    run_hash: str,
    cfg: ZooModelConfig,
    resume: dict[str, Any] | None,
    fresh_model: Callable[[], torch.nn.Module],
    schedule: BatchSchedule,
    eval_rows: Int[Tensor, "eval ctx"],
    tokenizer: Any,
    *,
    stop_at: int | None,
    label: str,
    progress: bool,
) -> LoopResult | None:
    """Run (or resume) updates ``0 .. cfg.steps - 1``; ``None`` when ``stop_at`` ended the call early.

    ``fresh_model()`` gives the weights of checkpoint 0 in train mode (a new initialisation, or a
    loaded checkpoint for a fine-tune); the optimizer is a fresh AdamW
    (:func:`~universality.zoo.optim_state.make_optimizer`) with ``cfg.weight_decay``.
    """
    checkpoints = cfg.checkpoints

    def optimizer_factory(m: torch.nn.Module) -> torch.optim.AdamW:
        return make_optimizer(m, cfg.weight_decay)

    started = time.perf_counter()
    if resume is not None:
        start = int(resume["step"])
        model, optimizer = ckpt.load_checkpoint_model(out, resume, optimizer_factory)
        train_loss = list(resume["train_loss"])
        evals = dict(resume["eval_loss"])
        elapsed = float(resume.get("seconds", 0.0))
    else:
        start = 0
        model = fresh_model()
        optimizer = optimizer_factory(model)
        train_loss, evals, elapsed = [], {}, 0.0

    def save(step: int) -> None:
        evals[f"step{step}"] = eval_loss(model, eval_rows)
        ckpt.write_checkpoint(out, step, model, tokenizer)
        state = {"run_hash": run_hash, "train_loss": train_loss, "eval_loss": evals,
                 "seconds": elapsed + time.perf_counter() - started}
        ckpt.write_resume(out, step, optimizer, model, state)

    if resume is None and 0 in checkpoints:
        save(0)
        if stop_at == 0:
            return None

    bar = progress_bar(range(start, cfg.steps), label, leave=False, progress=progress)
    for update in bar:
        lr = lr_at(update, lr=cfg.lr, steps=cfg.steps, warmup_steps=cfg.warmup_steps, min_lr_ratio=cfg.min_lr_ratio)
        ce = _update(model, optimizer, schedule.batch(update), lr, cfg, update)
        train_loss.append(ce)
        bar.set_postfix(loss=f"{train_loss[-1]:.3f}", refresh=False)
        step = update + 1
        if step in checkpoints:
            save(step)
            if stop_at == step and step != cfg.steps:
                bar.close()
                return None
    bar.close()
    return LoopResult(model, train_loss, evals, elapsed + time.perf_counter() - started)


def finish(out: Path, manifest: dict[str, Any]) -> None:
    """Write ``zoo.json`` (atomically, last) and remove the resume state: the run is complete."""
    write_json(out / ckpt.MANIFEST, manifest)
    ckpt.finish_resume(out)


def _update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Int[Tensor, "batch ctx"], lr: float,
            cfg: ZooModelConfig, update: int) -> float:
    """One AdamW update at learning rate ``lr``; returns the batch's cross-entropy."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    ce, aux = next_token_loss(model, batch)
    loss = ce if aux is None else ce + cfg.aux_loss_coef * aux
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"loss became {float(loss)} at update {update} of {cfg.name or cfg.family}", "lower lr or raise warmup_steps")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=False)
    optimizer.step()
    return ce.item()

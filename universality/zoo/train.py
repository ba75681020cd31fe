"""``train_lm``: train one zoo language model from its config and write its checkpoint series."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from universality.errors import ArtifactError, ConfigError, TrainingDiverged
from universality.io import atomic_dir, read_json, stable_hash, write_json
from universality.progress import progress_bar
from universality.zoo import checkpoints as ckpt
from universality.zoo.batches import BatchSchedule
from universality.zoo.config import InjectSpec, ZooModelConfig
from universality.zoo.corpus import as_subset, cached_rows, pack_texts, split_eval_rows
from universality.zoo.families import build_model, mamba_scan
from universality.zoo.loss import eval_loss, next_token_loss
from universality.zoo.optim_state import make_optimizer
from universality.zoo.schedule import lr_at
from universality.zoo.tokenizer import eos_id, load_tokenizer, tokenizer_hash, train_tokenizer

__all__ = ["train_lm", "read_manifest"]

_FINAL_LOSS_WINDOW = 10


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``zoo.json`` manifest of a finished run."""
    return read_json(Path(out_dir) / ckpt.MANIFEST)


def train_lm(
    cfg: ZooModelConfig,
    texts_or_dataset: Any,
    out_dir: str | os.PathLike,
    tokenizer: Any = None,
    *,
    inject: InjectSpec | Mapping[str, Any] | None = None,
    overwrite: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
    num_threads: int | None = None,
) -> Path:
    """Train the model ``cfg`` describes on ``texts_or_dataset`` and save its checkpoints under ``out_dir``.

    ``texts_or_dataset``: a list of strings, of :class:`~universality.data.sources.Document`, a
    :class:`~universality.data.sources.Source` or a :class:`~universality.data.subsets.Subset`
    (D' inside D); the manifest records its name and subset hash. ``tokenizer``: the zoo's shared
    tokenizer (object or folder from :func:`~universality.zoo.train_tokenizer`); when ``None`` one
    of ``cfg.vocab_size`` tokens is trained on these texts and saved to ``<out>/tokenizer``.

    ``inject``: an :class:`~universality.zoo.config.InjectSpec` or ``{"after_step": S, "texts":
    [...], "fraction": 0.25}``; the texts appear only in updates after checkpoint ``S``.

    Writes ``<out>/step{N}/`` (config.json, model.safetensors, tokenizer files) at every step of
    ``cfg.checkpoints``, then ``<out>/zoo.json``. If ``out_dir`` holds an unfinished run of the same
    config, data and tokenizer it resumes from its last checkpoint (bitwise identical to an
    uninterrupted run on the CPU); a finished one is returned as is; another run there raises
    :class:`~universality.errors.ArtifactError` unless ``overwrite=True``. ``stop_at`` (a checkpoint
    step) ends the call after that checkpoint, leaving the run resumable. ``num_threads`` sets
    torch's CPU threads for this call only (tiny models run fastest on 1 thread when the machine
    is shared; bitwise reproducibility holds for a fixed thread count). Returns ``out_dir``.
    """
    if num_threads is None:
        return _train_lm(cfg, texts_or_dataset, out_dir, tokenizer, inject, overwrite, stop_at, progress)
    if not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1:
        raise ConfigError(f"num_threads must be a positive integer, got {num_threads!r}", "pass e.g. num_threads=1")
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        return _train_lm(cfg, texts_or_dataset, out_dir, tokenizer, inject, overwrite, stop_at, progress)
    finally:
        torch.set_num_threads(before)


def _train_lm(cfg, texts_or_dataset, out_dir, tokenizer, inject, overwrite, stop_at, progress) -> Path:
    if not isinstance(cfg, ZooModelConfig):
        raise ConfigError(f"cfg must be a ZooModelConfig, got {type(cfg).__name__}", "build it with universality.zoo.from_dict or load_preset")
    inject = InjectSpec.coerce(inject)
    if inject is not None and inject.after_step >= cfg.steps:
        raise ConfigError(f"inject.after_step={inject.after_step} is not before the last step {cfg.steps}", "inject earlier or train longer")
    checkpoints = cfg.checkpoints
    if stop_at is not None and stop_at not in checkpoints:
        raise ConfigError(f"stop_at={stop_at} is not a checkpoint step", f"use one of {list(checkpoints)}")
    out = Path(out_dir)
    if overwrite:
        ckpt.clear_run(out)
    out.mkdir(parents=True, exist_ok=True)

    subset = as_subset(texts_or_dataset)
    tokenizer = _resolve_tokenizer(tokenizer, out / "tokenizer", subset, cfg.vocab_size)
    tok_hash = tokenizer_hash(tokenizer)
    eos = eos_id(tokenizer)

    run_key = {
        "config": cfg.to_dict(),
        "subset_hash": subset.hash,
        "tokenizer_hash": tok_hash,
        "inject": None if inject is None else {**inject.to_dict(), "texts_hash": stable_hash(list(inject.texts))},
    }
    run_hash = stable_hash(run_key)
    manifest_path = out / ckpt.MANIFEST
    if _finished(out, run_hash):
        return out
    resume = _resumable(out, run_hash, checkpoints)

    # Data: pack, hold out eval rows, lay out the batch order.
    rows = cached_rows((tok_hash, subset.hash, cfg.context_length), subset.documents, tokenizer, cfg.context_length)
    train_rows, eval_rows = split_eval_rows(rows, cfg.eval_contexts)
    schedule = BatchSchedule(
        train_rows, cfg.batch_size, cfg.seed, inject,
        None if inject is None else pack_texts(inject.texts, tokenizer, cfg.context_length, what="injected text"),
    )

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
        model = build_model(cfg, len(tokenizer), eos)
        model.train()
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
            return out

    bar = progress_bar(range(start, cfg.steps), f"zoo {cfg.name or cfg.family}", leave=False, progress=progress)
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
                return out
    bar.close()

    manifest = _manifest(cfg, subset, tokenizer, model, rows, train_rows, eval_rows, train_loss, evals)
    manifest.update(run_hash=run_hash, tokenizer_hash=tok_hash, inject=run_key["inject"],
                    seconds=elapsed + time.perf_counter() - started)
    write_json(manifest_path, manifest)
    ckpt.finish_resume(out)
    return out


def _resolve_tokenizer(tokenizer: Any, tok_dir: Path, subset: Any, vocab_size: int):
    """The given tokenizer, else the one an earlier call of this run saved, else a new one trained on ``subset``.

    It is saved to ``tok_dir`` (``<out>/tokenizer``) the first time, atomically.
    """
    if tokenizer is None and (tok_dir / "tokenizer.json").is_file():
        tokenizer = tok_dir
    if tokenizer is None:
        with atomic_dir(tok_dir) as tmp:
            return train_tokenizer([d.text for d in subset.documents], vocab_size, tmp)
    tokenizer = load_tokenizer(tokenizer)
    if not (tok_dir / "tokenizer.json").is_file():
        with atomic_dir(tok_dir) as tmp:
            tokenizer.save_pretrained(str(tmp))
    return tokenizer


def _finished(out: Path, run_hash: str) -> bool:
    """True when ``out`` holds this run, finished; raises when it holds another finished run."""
    path = out / ckpt.MANIFEST
    if not path.is_file():
        return False
    if read_json(path).get("run_hash") == run_hash:
        return True
    raise ArtifactError(f"{out} holds a finished zoo run of another config/data/tokenizer", "choose another out_dir or pass overwrite=True")


def _resumable(out: Path, run_hash: str, checkpoints: tuple[int, ...]) -> dict[str, Any] | None:
    """The resume state of this run in ``out`` (``None`` for a fresh start); refuses other runs' folders."""
    resume = ckpt.read_resume(out)
    if resume is not None and resume.get("run_hash") != run_hash:
        raise ArtifactError(f"{out} holds an unfinished zoo run of another config/data/tokenizer", "choose another out_dir or pass overwrite=True")
    # With no resume state, only step0 may exist (a crash between writing it and the first resume state).
    if resume is None and any(ckpt.step_dir(out, s).exists() for s in checkpoints if s != 0):
        raise ArtifactError(f"{out} holds step folders but no resume state", "choose another out_dir or pass overwrite=True")
    return resume


def _update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: torch.Tensor, lr: float,
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


def _manifest(cfg: ZooModelConfig, subset: Any, tokenizer: Any, model: torch.nn.Module, rows: torch.Tensor,
              train_rows: torch.Tensor, eval_rows: torch.Tensor, train_loss: list[float], evals: dict[str, float]) -> dict[str, Any]:
    """The self-describing part of ``zoo.json`` (the trainer adds run hash, tokenizer hash, inject, seconds)."""
    checkpoints = cfg.checkpoints
    window = train_loss[-_FINAL_LOSS_WINDOW:]
    return {
        "format": "universality.zoo/1",
        "family": cfg.family,
        "name": cfg.name,
        "config": cfg.to_dict(),
        "dataset": subset.source_name,
        "subset_hash": subset.hash,
        "subset": subset.describe(),
        "vocab_size": len(tokenizer),
        "n_params": sum(p.numel() for p in model.parameters()),
        "n_tokens": int(rows.numel()),
        "n_train_rows": int(train_rows.shape[0]),
        "n_eval_rows": int(eval_rows.shape[0]),
        "steps": list(checkpoints),
        "checkpoints": [f"step{s}" for s in checkpoints],
        "final_train_loss": sum(window) / len(window) if window else float("nan"),
        "train_loss": train_loss,
        "eval_loss": evals,
        "mamba_scan": mamba_scan() if cfg.family == "mamba" else None,
        "git_commit": ckpt.git_commit(),
        "versions": {"torch": torch.__version__, "transformers": _version("transformers"), "python": platform.python_version()},
    }


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None

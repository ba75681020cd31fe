"""``train_lm``: train one zoo language model from its config and write its checkpoint series."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from universality.errors import ConfigError
from universality.io import atomic_dir, read_json, stable_hash
from universality.zoo import checkpoints as ckpt
from universality.zoo import loop
from universality.zoo.batches import BatchSchedule
from universality.zoo.config import InjectSpec, ZooModelConfig
from universality.zoo.corpus import as_subset, cached_rows, pack_texts, split_eval_rows
from universality.zoo.families import build_model, mamba_scan
from universality.zoo.loop import with_threads
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
    return with_threads(num_threads, lambda: _train_lm(cfg, texts_or_dataset, out_dir, tokenizer, inject, overwrite, stop_at, progress))


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
    if loop.finished(out, run_hash):
        return out
    resume = loop.resumable(out, run_hash, checkpoints)

    # Data: pack, hold out eval rows, lay out the batch order.
    rows = cached_rows((tok_hash, subset.hash, cfg.context_length), subset.documents, tokenizer, cfg.context_length)
    train_rows, eval_rows = split_eval_rows(rows, cfg.eval_contexts)
    schedule = BatchSchedule(
        train_rows, cfg.batch_size, cfg.seed, inject,
        None if inject is None else pack_texts(inject.texts, tokenizer, cfg.context_length, what="injected text"),
    )

    def fresh_model() -> torch.nn.Module:
        model = build_model(cfg, len(tokenizer), eos)
        model.train()
        return model

    done = loop.run_updates(out, run_hash, cfg, resume, fresh_model, schedule, eval_rows, tokenizer,
                            stop_at=stop_at, label=f"zoo {cfg.name or cfg.family}", progress=progress)
    if done is None:
        return out
    manifest = run_manifest(cfg, subset, tokenizer, done.model, rows, train_rows, eval_rows, done.train_loss, done.eval_loss)
    manifest.update(run_hash=run_hash, lineage=run_hash, tokenizer_hash=tok_hash, inject=run_key["inject"], seconds=done.seconds)
    loop.finish(out, manifest)
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


def run_manifest(cfg: ZooModelConfig, subset: Any, tokenizer: Any, model: torch.nn.Module, rows: torch.Tensor,
                 train_rows: torch.Tensor, eval_rows: torch.Tensor, train_loss: list[float], evals: dict[str, float]) -> dict[str, Any]:
    """The self-describing part of ``zoo.json`` (the trainer adds run hash, lineage, tokenizer hash, inject, seconds;
    :func:`~universality.zoo.finetune_lm` also the base checkpoint and its own hyper-parameters)."""
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

"""A model zoo for controlled experiments: small language models of every family, trained from config.

Public API (imported lazily, so ``import universality.zoo`` stays cheap):

- :class:`ZooModelConfig`, :func:`from_dict`, :func:`load_preset` - the frozen config and its presets
  (``configs/zoo/*.yaml``).
- :func:`train_tokenizer` - the one byte-level BPE a zoo shares.
- :func:`train_lm` - train a model and write ``<out>/step{N}/`` checkpoints + ``<out>/zoo.json``.
- :func:`finetune_lm` - continue a run from one of its checkpoints on other data (base versus fine-tune).
- :func:`lineage_of` - the lineage id of a run (a base and its fine-tunes share one).
- :func:`read_manifest`, :func:`text_loss` - read a finished run; score a model on texts.
- :func:`planted_corpus`, :class:`InjectSpec` - planted positives: a text family only in D \\ D',
  or introduced only after a given step.
- :func:`checkpoint_schedule`, :func:`lr_at` - the Pythia-like checkpoint steps and the LR schedule.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ZooModelConfig": "universality.zoo.config",
    "InjectSpec": "universality.zoo.config",
    "from_dict": "universality.zoo.config",
    "load_preset": "universality.zoo.config",
    "preset_names": "universality.zoo.config",
    "register_configs": "universality.zoo.config",
    "train_tokenizer": "universality.zoo.tokenizer",
    "tokenizer_hash": "universality.zoo.tokenizer",
    "train_lm": "universality.zoo.train",
    "read_manifest": "universality.zoo.train",
    "finetune_lm": "universality.zoo.finetune",
    "default_finetune_lr": "universality.zoo.finetune",
    "lineage_of": "universality.zoo.lineage",
    "text_loss": "universality.zoo.loss",
    "planted_corpus": "universality.zoo.planted",
    "PlantedCorpus": "universality.zoo.planted",
    "synthetic_pattern": "universality.zoo.planted",
    "word_passage": "universality.zoo.planted",
    "checkpoint_schedule": "universality.zoo.schedule",
    "lr_at": "universality.zoo.schedule",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'universality.zoo' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

"""Checks a study can pass before any work starts (``validate``, and ``python -m universality``).

:func:`universality.study.config.study_from_dict` checks each field on its own; :func:`preflight`
checks what needs the machine or the models:

- ``device: cuda`` on a machine without a CUDA GPU;
- each model's sites exist in it (zoo models are built from their preset with random weights,
  which takes a fraction of a second; local and cached hub models are read from their
  ``config.json`` and built on the meta device, so no weights are loaded);
- a TopK / BatchTopK ``k`` that does not fit the dictionary width ``expansion * width(site)``;
- a hub model that is not in the local cache while the hub is offline (``HF_HUB_OFFLINE=1``).

Nothing is written. Every problem is a one-line :class:`~universality.errors.UniversalityError`.
"""

from __future__ import annotations

import os
from pathlib import Path


import torch
from huggingface_hub import try_to_load_from_cache
from transformers import AutoConfig, AutoModelForCausalLM

from models.base import HFAdapter
from models.registry import family_spec
from universality.errors import ConfigError, ModelLoadError
from universality.sites import Site
from universality.study.config import ModelSpec, StudyConfig
from universality.study.stages import zoo_config
from universality.zoo.families import build_model

__all__ = ["preflight", "model_sites"]


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _check_device(cfg: StudyConfig) -> None:
    if not cfg.device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise ConfigError(f"study.device is {cfg.device} but this machine has no CUDA GPU",
                          "set study.device=cpu, or run on a machine with a GPU")
    index = int(cfg.device.split(":")[1]) if ":" in cfg.device else 0
    if index >= torch.cuda.device_count():
        raise ConfigError(f"study.device is {cfg.device} but this machine has {torch.cuda.device_count()} GPU(s)",
                          f"use cuda:0 ... cuda:{torch.cuda.device_count() - 1}")


def _hub_config(spec: ModelSpec) -> Path | None:
    """``config.json`` of a hub model from the local cache (``None`` when it is not cached)."""
    found = try_to_load_from_cache(spec.path, "config.json", revision=spec.revision)
    return Path(found) if isinstance(found, str) else None


def _sites_from_hf_config(config_json: Path, name: str) -> tuple[dict[Site, int], int]:
    """Sites and ``d_model`` of a model from its ``config.json``, built on the meta device (no weights)."""
    config = AutoConfig.from_pretrained(str(config_json.parent), trust_remote_code=False)
    spec = family_spec(config.model_type)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    adapter = HFAdapter(model, spec, name=name)
    return adapter.site_table, adapter.d_model


def model_sites(cfg: StudyConfig, spec: ModelSpec) -> tuple[dict[Site, int], int] | None:
    """``({Site: width}, d_model)`` of a study model without loading weights, or ``None`` when that
    cannot be known here (a hub model that is not cached while the hub is reachable)."""
    if spec.zoo is not None:
        zcfg = zoo_config(cfg, spec)
        model = build_model(zcfg, cfg.tokenizer_vocab, 0)
        adapter = HFAdapter(model, family_spec(model.config.model_type), name=spec.name)
        return adapter.site_table, adapter.d_model
    local = Path(spec.path).expanduser()
    if local.is_dir():
        config_json = local / "config.json"
        if not config_json.is_file():
            # a checkpoint series (step{N}/ folders) or a TransformerLens name: the loader checks it
            steps = sorted(p for p in local.glob("step*/config.json"))
            if not steps:
                return None
            config_json = steps[-1]
        return _sites_from_hf_config(config_json, spec.name)
    config_json = _hub_config(spec)
    if config_json is None:
        if _offline():
            rev = f" at revision {spec.revision}" if spec.revision else ""
            raise ModelLoadError(f"model {spec.name!r}: hub model {spec.path!r}{rev} is not in the local cache and the hub "
                                 "is offline (HF_HUB_OFFLINE=1)",
                                 f"download it first (huggingface-cli download {spec.path}) or unset HF_HUB_OFFLINE")
        return None
    return _sites_from_hf_config(config_json, spec.name)


def _check_model(cfg: StudyConfig, spec: ModelSpec, found: tuple[dict[Site, int], int]) -> None:
    sites, _ = found
    wanted = cfg.require_sites(spec.name, sites)
    k = getattr(cfg.sae.options, "k", None)
    if k is None:
        return
    narrowest = min(int(sites[s]) for s in wanted)
    d_sae = cfg.sae.expansion * narrowest
    if k > d_sae:
        arch = cfg.sae.architecture
        raise ConfigError(f"study.sae.{arch}.k={k} is larger than the dictionary width {d_sae} "
                          f"(expansion {cfg.sae.expansion} x site width {narrowest}) of model {spec.name!r}",
                          f"choose study.sae.{arch}.k between 1 and {d_sae}, or raise study.sae.expansion")


def preflight(cfg: StudyConfig) -> list[str]:
    """Check ``cfg`` against this machine and its models; returns notes on what could not be checked."""
    _check_device(cfg)
    notes = []
    for spec in cfg.models:
        found = model_sites(cfg, spec)
        if found is None:
            notes.append(f"model {spec.name!r}: sites and widths are checked when it is loaded (not cached here)")
            continue
        _check_model(cfg, spec, found)
    return notes

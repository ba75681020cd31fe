"""``models.load``: open a model by hub name (+ revision) or local folder as a :class:`ModelAdapter`.

Sources, in the order they are recognised:

1. a local folder of checkpoint folders ``<dir>/step{N}/`` (a training series; ``revision`` picks
   one, default the last),
2. a local model folder (``config.json`` + weights; HF layout, or mamba-ssm's Mamba-2 layout which
   is converted on load),
3. a hub name such as ``EleutherAI/pythia-70m`` with an optional ``revision`` (Pythia's published
   checkpoint names are known and checked). Offline, the hub cache (``HF_HUB_CACHE``) is used.

The family comes from config.json's ``model_type`` through :data:`models.registry.FAMILIES`.
``trust_remote_code`` stays off unless asked for.
"""

from __future__ import annotations

import os
import pickle  # for its exception type only: nothing here unpickles
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models.base import HFAdapter, ModelAdapter, format_site_list
from models.mamba_ssm import is_mamba_ssm_config, load_mamba_ssm
from models.pythia import PYTHIA_REVISIONS, is_pythia, is_series_dir, local_revisions
from models.registry import family_spec
from models.source import ModelSource, load_tokenizer, read_raw_config
from models.tlens import load_tlens
from universality.errors import ConfigError, ModelLoadError

__all__ = ["load", "BACKENDS", "resolve_device"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"invalid device {device!r}", "use 'cpu', 'cuda' or 'cuda:N'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available", "use device='cpu'")
    return dev


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        value = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(value, torch.dtype):
            raise ConfigError(f"unknown dtype {dtype!r}", "use float32, bfloat16 or float16")
        dtype = value
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"dtype must be a floating torch dtype, got {dtype!r}", "use float32, bfloat16 or float16")
    return dtype


def _looks_like_path(name: str) -> bool:
    """Hub names are ``owner/name`` or ``name``; anything else is meant as a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _locate(name_or_path: str | os.PathLike, revision: str | None) -> ModelSource:
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir() and is_series_dir(path):
        checkpoints = local_revisions(path)
        rev = checkpoints[-1] if revision is None else revision
        if rev not in checkpoints:
            raise ModelLoadError(
                f"checkpoint series {name!r} has no revision {rev!r}",
                f"use one of {format_site_list(checkpoints, 8)}",
            )
        return ModelSource(str(path), str(path / rev), None, rev, checkpoints, str(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"folder {name!r} has no config.json and no step{{N}}/ checkpoint folders",
                "pass a saved model folder or a folder of step{N}/ checkpoints",
            )
        if revision is not None:
            raise ModelLoadError(
                f"revision {revision!r} given for the single-model folder {name!r}",
                "drop revision, or pass a folder of step{N}/ checkpoint folders",
            )
        return ModelSource(str(path), str(path), None, None, (), None)
    if path.exists() or _looks_like_path(name):
        raise ModelLoadError(f"no model folder at {name!r}", "check the path, or pass a hub name like EleutherAI/pythia-70m")
    checkpoints = PYTHIA_REVISIONS if is_pythia(name) else ()
    if revision is not None and checkpoints and revision not in checkpoints:
        raise ModelLoadError(
            f"{name} has no published revision {revision!r}",
            "use step0, step1, step2, step4, ..., step512, step1000, step2000, ..., step143000",
        )
    return ModelSource(name, name, revision, revision, checkpoints, None)


def _pickle_refused(location: str) -> ModelLoadError:
    return ModelLoadError(
        f"the weights of {location!r} are a pickle holding more than tensors, which torch.load(weights_only=True) refuses",
        "get a safetensors copy of the model (save_pretrained(safe_serialization=True) where you trust its source)",
    )


def _load_hf_model(src: ModelSource, raw: dict[str, Any], dtype: torch.dtype, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM

    if "model_type" not in raw:
        if is_mamba_ssm_config(raw):
            try:
                model = load_mamba_ssm(src.location, raw, revision=src.hub_revision, dtype=dtype)
            except pickle.UnpicklingError as err:
                raise _pickle_refused(src.location) from err
            return model, model.config.model_type
        raise ModelLoadError(
            f"config.json of {src.location!r} has no model_type",
            "pass a Hugging Face model folder or a mamba-ssm checkpoint",
        )
    model_type = raw["model_type"]
    family_spec(model_type)  # fail early with the list of supported families
    try:
        # safetensors when present; a pytorch_model.bin is read with torch.load(weights_only=True), which
        # refuses pickled code (stated here rather than left to the library default)
        model = AutoModelForCausalLM.from_pretrained(
            src.location, revision=src.hub_revision, dtype=dtype, trust_remote_code=trust_remote_code,
            weights_only=True,
        )
    except pickle.UnpicklingError as err:
        raise _pickle_refused(src.location) from err
    except (OSError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            f"cannot load weights of {src.location!r} ({first[:160]})",
            "check the folder holds model.safetensors (or the hub cache holds this revision)",
        ) from err
    return model, model_type


def _load_hf(src: ModelSource, device: torch.device, dtype: torch.dtype, trust_remote_code: bool) -> ModelAdapter:
    raw = read_raw_config(src)
    model, model_type = _load_hf_model(src, raw, dtype, trust_remote_code)
    model = model.to(device=device, dtype=dtype).eval()
    adapter = HFAdapter(
        model,
        family_spec(model_type),
        name=src.series_source,
        revision=src.revision,
        tokenizer=load_tokenizer(src, trust_remote_code),
        checkpoints=src.checkpoints,
    )
    return adapter


def _load_tlens(src: ModelSource, device: torch.device, dtype: torch.dtype, trust_remote_code: bool) -> ModelAdapter:
    return load_tlens(src, device=device, dtype=dtype, trust_remote_code=trust_remote_code)


BACKENDS: dict[str, Callable[..., ModelAdapter]] = {"hf": _load_hf, "tlens": _load_tlens}


def load(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    backend: str = "hf",
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> ModelAdapter:
    """Load a model as a :class:`~models.base.ModelAdapter`.

    ``dtype`` defaults to float32; ``device`` to CUDA when available, else CPU. ``backend`` is
    ``"hf"`` (hooks on the Hugging Face modules) or ``"tlens"`` (TransformerLens' TransformerBridge).
    Raises :class:`~universality.errors.ModelLoadError` for an unknown name, path, revision or
    family, with a one-line message.
    """
    if not isinstance(trust_remote_code, bool):
        raise ConfigError(f"trust_remote_code must be True or False, got {trust_remote_code!r}",
                          "leave it False unless you have read the model repository's code")
    loader = BACKENDS.get(backend) if isinstance(backend, str) else None
    if loader is None:
        raise ModelLoadError(f"unknown backend {backend!r}", f"use one of {', '.join(BACKENDS)}")
    if not isinstance(name_or_path, (str, os.PathLike)) or not os.fspath(name_or_path):
        raise ModelLoadError(f"model name must be a non-empty string or path, got {name_or_path!r}", "pass a hub name or folder")
    if revision is not None and (not isinstance(revision, str) or not revision):
        raise ModelLoadError(f"revision must be a non-empty string, got {revision!r}", "pass e.g. revision='step1000'")
    src = _locate(name_or_path, revision)
    dev = resolve_device(device)
    dt = _resolve_dtype(dtype)
    adapter = loader(src, dev, dt, bool(trust_remote_code))
    adapter._series_source = src.series_source
    adapter._backend = backend
    adapter._trust_remote_code = bool(trust_remote_code)
    adapter._reload = load  # what at_revision calls (models.base does not import this module)
    return adapter

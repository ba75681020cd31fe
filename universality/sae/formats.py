"""Import and export of public SAE formats, so public dictionaries enter any comparison.

**SAELens** (``cfg.json`` + ``sae_weights.safetensors``; sae-lens 6.x inference layout): weights
``W_enc (d_in, d_sae)``, ``b_enc``, ``W_dec (d_sae, d_in)``, ``b_dec`` plus ``threshold``
(``jumprelu``) or ``b_gate``, ``r_mag``, ``b_mag`` (``gated``). Architectures map
``standard <-> relu``, ``topk <-> topk``, ``jumprelu <-> jumprelu``, ``gated <-> gated``;
a BatchTopK dictionary is exported as ``jumprelu`` with its global threshold on every latent,
which is what SAELens itself saves for BatchTopK (an untrained one, threshold < 0, is refused).
``apply_b_dec_to_input=False`` is converted exactly (``b_enc += b_dec W_enc``). Run-time normalisations that are not linear maps
(``layer_norm``, ``constant_norm_rescale``...) cannot be folded and are refused.

**sparsify** (EleutherAI; ``cfg.json`` + ``sae.safetensors``): TopK only; ``encoder.weight``
``(d_sae, d_in)`` (an ``nn.Linear``), ``encoder.bias``, ``W_dec (d_sae, d_in)``, ``b_dec``.
The encoder reads ``x - b_dec`` and keeps the top ``k`` of ``ReLU(encoder(.))``, which is this
project's TopK exactly.

Training hyper-parameters that the inference formats do not store (the sparsity coefficient)
are left at their defaults (0). Imported decoders with non-unit rows have their norms folded into the encoder (exact for
relu/jumprelu/gated). A TopK decoder must already have unit rows, unless the artifact says
``rescale_acts_by_decoder_norm: true`` (sae-lens's default for TopK training, which
``save_inference_model`` keeps in cfg.json): there the encoder multiplies each pre-activation by its
decoder row norm before the top-k and the decoder divides it out again, so folding the norms
(``W_enc, b_enc *= |W_dec_i|``, ``W_dec_i /= |W_dec_i|``) is exact. "Unit" allows the rounding of
the stored dtype: ``max(1e-3, eps)``, i.e. 7.8e-3 for bfloat16 (whose rounding alone moves a unit
row's norm by up to 3.9e-3) and 1e-3 for float32 and float16.
``normalize_activations: expected_average_only_in`` (or the pre-6.0 ``true``) is accepted: it
scales activations during training only and is the identity at inference.

**By name** (:func:`load_pretrained`): a SAELens release and SAE id (resolved through sae-lens's
``pretrained_saes.yaml``, read without importing sae-lens) or a sparsify hub repo and hookpoint
folder, read from the local Hugging Face hub cache only; nothing is downloaded.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from universality.errors import ArtifactError, ConfigError
from universality.io import atomic_dir, load_tensors, read_json, save_tensors, write_json
from universality.sae.config import SAEConfig, sae_config
from universality.sae.registry import get_architecture

if TYPE_CHECKING:  # SAE.load dispatches here; at run time formats needs only the registry
    from universality.sae.base import SAE

__all__ = ["load_saelens", "save_saelens", "load_sparsify", "save_sparsify", "load_pretrained"]

_FROM_SAELENS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}
_SAELENS_META = {"model_name": "model", "hook_name": "site", "dataset_path": "dataset", "model_from_pretrained_kwargs": None}


def _read_cfg(path: Path) -> dict[str, Any]:
    doc = read_json(path / "cfg.json")
    if not isinstance(doc, dict):
        raise ArtifactError(f"{path / 'cfg.json'} is not a JSON object", "the file is corrupt; re-export the SAE")
    return doc


def _int_field(doc: dict[str, Any], name: str, path: Path, what: str) -> int:
    """``doc[name]`` as a positive int; a missing or malformed field is a one-line :class:`ArtifactError`."""
    if name not in doc or doc[name] is None:
        raise ArtifactError(f"{path / 'cfg.json'} lacks the field {name!r} ({what})",
                            f"add {name!r} to cfg.json, or re-export the SAE with the library that wrote it")
    value = _positive_int(doc[name])
    if value is None:
        raise ArtifactError(f"{path / 'cfg.json'} field {name!r} is {doc[name]!r}, not a positive integer ({what})",
                            f"fix {name!r} in cfg.json")
    return value


def _positive_int(value: Any) -> int | None:
    """``value`` as an int >= 1 (an int, an integral float or a string of digits), else None."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value


def _need_tensors(t: dict[str, torch.Tensor], names: tuple[str, ...], file: Path, arch: str) -> None:
    for name in names:
        if name not in t:
            raise ArtifactError(f"{file} lacks the tensor {name!r} (a {arch} SAE needs {', '.join(names)})",
                                "check that cfg.json names the architecture these weights belong to, or re-export the SAE")


_SAELENS_TENSORS = {"relu": ("W_enc", "b_enc", "W_dec", "b_dec"), "topk": ("W_enc", "b_enc", "W_dec", "b_dec"),
                    "jumprelu": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
                    "gated": ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec")}


def _norm_tolerance(dtype: torch.dtype) -> float:
    """How far from 1 the norm of a stored unit decoder row may be: rounding each entry to ``dtype``
    moves the norm by at most half an ulp (``eps / 2``, relative); allow ``eps``, and never less than 1e-3."""
    return max(1e-3, torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-3


def _build(arch: str, cfg: SAEConfig, tensors: dict[str, torch.Tensor], meta: dict[str, Any], source: str,
           stored_dtype: torch.dtype = torch.float32) -> SAE:
    sae = get_architecture(arch)(cfg, meta=meta)
    sae.load_weights_(tensors, source=source)
    norms = sae.decoder_norms()
    tol = _norm_tolerance(stored_dtype)
    if not torch.allclose(norms, torch.ones_like(norms), rtol=0.0, atol=tol):
        if arch in ("topk", "batchtopk"):
            worst = float((norms - 1).abs().max())
            raise ArtifactError(f"{source}: a TopK decoder without unit-norm rows (|norm - 1| up to {worst:.3g} > {tol:g} "
                                f"for {str(stored_dtype).removeprefix('torch.')}) cannot be converted exactly",
                                "normalise the decoder before export, or save it with rescale_acts_by_decoder_norm=true")
        sae.fold_decoder_norms_()
    return sae


def _fold_topk_rescale(t: dict[str, torch.Tensor]) -> None:
    """sae-lens's ``rescale_acts_by_decoder_norm``: the encoder multiplies pre-activation ``i`` by
    ``n_i = |W_dec_i|`` before the top-k and the decoder divides by ``n_i``. The same map with unit
    rows has ``W_enc[:, i], b_enc[i]`` times ``n_i`` and ``W_dec_i / n_i``; done in float32, in place."""
    n_F = t["W_dec"].norm(dim=1).clamp_min(1e-12)
    t["W_enc"] = t["W_enc"] * n_F
    t["b_enc"] = t["b_enc"] * n_F
    t["W_dec"] = t["W_dec"] / n_F[:, None]


def _normalisation_of(doc: dict[str, Any], path: Path) -> str:
    """The ``normalize_activations`` mode, with the pre-6.0 booleans mapped as sae-lens maps them."""
    norm = doc.get("normalize_activations", "none")
    if norm is None or norm is False:
        return "none"
    if norm is True:
        return "expected_average_only_in"
    if norm not in ("none", "expected_average_only_in"):
        raise ArtifactError(f"{path}: SAELens normalize_activations={norm!r} cannot be folded into the weights",
                            "export the SAE with normalisation folded (fold_activation_norm_scaling_factor)")
    return str(norm)


def _saelens_architecture(doc: dict[str, Any], path: Path) -> str:
    """The sae-lens architecture name; pre-6.0 configs name a TopK SAE by ``activation_fn_str``."""
    if "architecture" in doc:
        return str(doc["architecture"])
    act = doc.get("activation_fn", doc.get("activation_fn_str"))
    if act == "topk":
        kwargs = doc.get("activation_fn_kwargs") or {}
        if "k" not in doc and isinstance(kwargs, dict) and kwargs.get("k") is not None:
            doc["k"] = kwargs["k"]
        return "topk"
    if act not in (None, "relu"):
        raise ArtifactError(f"{path}: pre-6.0 SAELens activation_fn {act!r} is not supported", "use a relu or topk SAE")
    return "standard"


def load_saelens(path: str | Path, device: str | torch.device | None = None) -> SAE:
    """Read a SAELens artifact folder (``cfg.json`` + ``sae_weights.safetensors``)."""
    return _load_saelens(Path(path), device)


def _load_saelens(path: Path, device: str | torch.device | None, overrides: Mapping[str, Any] | None = None,
                  norm_scaling_factor: float | None = None, pretrained: dict[str, Any] | None = None) -> SAE:
    doc = _read_cfg(path)
    if overrides:
        doc.update(overrides)
    arch_in = _saelens_architecture(doc, path)
    arch = _FROM_SAELENS.get(arch_in)
    if arch is None:
        raise ArtifactError(f"{path}: SAELens architecture {arch_in!r} is not supported", f"use one of {sorted(_FROM_SAELENS)}")
    norm = _normalisation_of(doc, path)
    if doc.get("reshape_activations", "none") not in ("none", None):
        raise ArtifactError(f"{path}: reshape_activations={doc['reshape_activations']!r} is not supported", "use SAEs on flat (batch, d) activations")
    if doc.get("finetuning_scaling_factor"):
        raise ArtifactError(f"{path}: finetuning_scaling_factor=True (a pre-6.0 per-latent decoder scale) is not supported",
                            "load it with sae_lens.SAE.load_from_disk, save_model it with sae-lens 6, and import that")
    rescale = bool(doc.get("rescale_acts_by_decoder_norm"))
    if rescale and arch != "topk":
        raise ArtifactError(f"{path}: rescale_acts_by_decoder_norm=True on a {arch_in!r} SAE is not supported", "fold the decoder norm before export")
    d_in = _int_field(doc, "d_in", path, "the input width")
    d_sae = _int_field(doc, "d_sae", path, "the number of latents")
    kw: dict[str, Any] = {"k": _int_field(doc, "k", path, "active latents of a topk SAE")} if arch == "topk" else {}
    raw = load_tensors(path / "sae_weights.safetensors")
    _need_tensors(raw, _SAELENS_TENSORS[arch], path / "sae_weights.safetensors", arch_in)
    stored_dtype = raw["W_dec"].dtype
    t = {k: v.to(torch.float32) for k, v in raw.items()}
    if not doc.get("apply_b_dec_to_input", True):
        key = "b_gate" if arch == "gated" else "b_enc"
        t[key] = t[key] + t["b_dec"] @ t["W_enc"]
        if arch == "gated":
            t["b_mag"] = t["b_mag"] + t["b_dec"] @ (t["W_enc"] * t["r_mag"].exp())
    if rescale:
        _fold_topk_rescale(t)
    if arch == "jumprelu":
        t["log_threshold"] = t.pop("threshold").clamp_min(1e-12).log()
    if arch == "gated":
        t["b_enc"] = t.pop("b_gate")
    cfg = sae_config(arch, d_in, d_sae, **kw)
    md = doc.get("metadata") or {}
    flat = {**doc, "hook_name": doc.get("hook_name", doc.get("hook_point"))}  # pre-6.0 configs keep these at the top
    meta: dict[str, Any] = {}
    for old, new in _SAELENS_META.items():
        value = next((v for v in ((overrides or {}).get(old), md.get(old), flat.get(old)) if v is not None), None)
        if new and value is not None:
            meta[new] = value
    source = {"format": "saelens", "path": str(path), "architecture": arch_in, "metadata": md}
    if rescale:
        source["rescale_acts_by_decoder_norm"] = True  # folded exactly into the weights
    if norm != "none":
        source["normalize_activations"] = norm  # a training-time scaling; the identity at inference
    if pretrained:
        source["pretrained"] = pretrained
    meta.update(imported_from=source, normalisation={"method": "none"})
    sae = _build(arch, cfg, t, meta, str(path), stored_dtype)
    if norm_scaling_factor is not None:
        # sae-lens folds the release's norm_scaling_factor s as W_enc *= s, W_dec /= s, b_dec /= s,
        # i.e. x -> sae(s x) / s: this project's input_scale, folded so the SAE reads raw activations
        # (with unit decoder rows the latents are sae-lens's divided by s)
        sae.meta["normalisation"] = {"method": "expected_average_only_in"}
        sae.input_scale = float(norm_scaling_factor)
        sae.fold_input_scale_()
    return sae.to(device) if device is not None else sae


def save_saelens(sae: SAE, path: str | Path) -> Path:
    """Write ``sae`` (folded) as a SAELens inference artifact that ``sae_lens.SAE.load_from_disk`` reads."""
    s = sae.folded()
    arch = s.architecture
    W_enc = s.W_enc.detach().float()
    t = {"W_enc": W_enc, "W_dec": s.W_dec.detach().float(), "b_dec": s.b_dec.detach().float()}
    extra: dict[str, Any] = {}
    if arch == "relu":
        out_arch = "standard"
        t["b_enc"] = s.b_enc.detach().float()
    elif arch == "topk":
        out_arch = "topk"
        t["b_enc"] = s.b_enc.detach().float()
        extra = {"k": s.cfg.k, "rescale_acts_by_decoder_norm": False}
    elif arch == "jumprelu":
        out_arch = "jumprelu"
        t["b_enc"] = s.b_enc.detach().float()
        t["threshold"] = s.threshold.detach().float()
    elif arch == "batchtopk":
        if float(s.threshold) < 0:
            raise ConfigError(f"this BatchTopK SAE has no inference threshold yet (threshold={float(s.threshold):g} < 0: never trained), "
                              "and SAELens would read it as a plain ReLU",
                              "train it (forward_train estimates the threshold) or set sae.threshold before exporting")
        out_arch = "jumprelu"
        t["b_enc"] = s.b_enc.detach().float()
        t["threshold"] = torch.full((s.d_sae,), float(s.threshold))
    elif arch == "gated":
        out_arch = "gated"
        t.update(b_gate=s.b_enc.detach().float(), r_mag=s.r_mag.detach().float(), b_mag=s.b_mag.detach().float())
    else:
        raise ConfigError(f"no SAELens mapping for architecture {arch!r}", "export relu, topk, batchtopk, jumprelu or gated SAEs")
    metadata = {"model_name": s.meta.get("model"), "hook_name": s.meta.get("site"), "dataset_path": s.meta.get("dataset"),
                "exported_by": "universality", "source_architecture": arch}
    doc = {"architecture": out_arch, "d_in": s.d_in, "d_sae": s.d_sae, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
           "metadata": metadata, **extra}
    with atomic_dir(path) as tmp:
        save_tensors(tmp / "sae_weights.safetensors", {k: v.contiguous() for k, v in t.items()})
        write_json(tmp / "cfg.json", doc)
    return Path(path)


def load_sparsify(path: str | Path, device: str | torch.device | None = None) -> SAE:
    """Read a sparsify artifact folder (``cfg.json`` + ``sae.safetensors``); TopK only."""
    path = Path(path)
    doc = _read_cfg(path)
    if doc.get("activation", "topk") != "topk":
        raise ArtifactError(f"{path}: sparsify activation {doc.get('activation')!r} is not supported", "use a topk sparsify SAE")
    if doc.get("skip_connection") or doc.get("transcode"):
        raise ArtifactError(f"{path}: sparsify transcoders / skip connections are not SAEs of x", "import a plain sparsify SAE")
    k = _int_field(doc, "k", path, "active latents")
    t = load_tensors(path / "sae.safetensors")
    _need_tensors(t, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"), path / "sae.safetensors", "sparsify topk")
    d_sae, d_in = t["encoder.weight"].shape
    if "d_in" in doc and _int_field(doc, "d_in", path, "the input width") != d_in:
        raise ArtifactError(f"{path}: cfg d_in={doc['d_in']} but encoder.weight has d_in={d_in}", "the artifact is inconsistent")
    weights = {"W_enc": t["encoder.weight"].float().T.contiguous(), "b_enc": t["encoder.bias"].float(),
               "W_dec": t["W_dec"].float(), "b_dec": t["b_dec"].float()}
    cfg = sae_config("topk", int(d_in), int(d_sae), k=k)
    meta = {"imported_from": {"format": "sparsify", "path": str(path), "cfg": doc}, "normalisation": {"method": "none"}}
    sae = _build("topk", cfg, weights, meta, str(path), t["W_dec"].dtype)
    return sae.to(device) if device is not None else sae


def save_sparsify(sae: SAE, path: str | Path) -> Path:
    """Write a TopK ``sae`` (folded) as a sparsify artifact that ``SparseCoder.load_from_disk`` reads."""
    if sae.architecture != "topk":
        raise ConfigError(f"sparsify stores TopK SAEs only, not {sae.architecture!r}", "export this SAE with save_saelens")
    s = sae.folded()
    t = {"encoder.weight": s.W_enc.detach().float().T.contiguous(), "encoder.bias": s.b_enc.detach().float(),
         "W_dec": s.W_dec.detach().float(), "b_dec": s.b_dec.detach().float()}
    doc = {"activation": "topk", "expansion_factor": max(1, s.d_sae // s.d_in), "normalize_decoder": True,
           "num_latents": s.d_sae, "k": s.cfg.k, "multi_topk": False, "skip_connection": False,
           "transcode": False, "d_in": s.d_in}
    with atomic_dir(path) as tmp:
        save_tensors(tmp / "sae.safetensors", t, metadata={"format": "pt"})
        write_json(tmp / "cfg.json", doc)
    return Path(path)



# ----------------------------------------------------------------------------- by name, from the hub cache
_SAELENS_LOADER = (None, "sae_lens")  # the conversion_func values whose folders are plain SAELens artifacts


def _saelens_registry_file() -> Path | None:
    """sae-lens's ``pretrained_saes.yaml``, located without importing sae-lens (None when not installed)."""
    spec = importlib.util.find_spec("sae_lens")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(folder) / "pretrained_saes.yaml").is_file():
            return Path(folder) / "pretrained_saes.yaml"
    return None


@functools.lru_cache(maxsize=4)
def _read_registry(file: str, mtime_ns: int) -> dict[str, Any]:  # mtime_ns keys the cache on the file's version
    # import cost: PyYAML (a hydra dependency) is needed only to resolve release names
    import yaml

    with open(file, encoding="utf-8") as fh:
        doc = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - a safe loader
    if not isinstance(doc, dict):
        raise ArtifactError(f"{file} is not a mapping of release names", "reinstall sae-lens or pass registry= a valid YAML file")
    return doc


def _registry(registry: str | Path | Mapping[str, Any] | None) -> Mapping[str, Any]:
    if isinstance(registry, Mapping):
        return registry
    file = Path(registry) if registry is not None else _saelens_registry_file()
    if file is None:
        return {}
    if not file.is_file():
        raise ArtifactError(f"the SAE registry {file} does not exist", "pass registry= the path of a pretrained_saes.yaml")
    return _read_registry(str(file), file.stat().st_mtime_ns)


def _hub_cache_dir(cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    # import cost: huggingface_hub (a transformers dependency) is needed only to find the default cache
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _cached(repo_id: str, filename: str, cache: Path, revision: str | None) -> Path | None:
    # import cost: huggingface_hub (a transformers dependency) is needed only for the hub cache lookup
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(repo_id, filename, cache_dir=cache, revision=revision)
    except ValueError as exc:  # huggingface_hub's HFValidationError: not a repo id
        raise ConfigError(f"{repo_id!r} is neither a SAELens release nor a Hugging Face repo id ({str(exc).splitlines()[0]})",
                          "pass a release listed in sae-lens's pretrained_saes.yaml or an 'org/name' repo id") from None
    return Path(hit) if isinstance(hit, str) else None


def load_pretrained(release: str, sae_id: str, cache_dir: str | Path | None = None, *, revision: str | None = None,
                    device: str | torch.device | None = None,
                    registry: str | Path | Mapping[str, Any] | None = None) -> SAE:
    """A public dictionary by name, read from the local Hugging Face hub cache (never the network).

    ``release`` is a SAELens release name (``"gpt2-small-res-jb"``; ``sae_id`` is then an id of that
    release, e.g. ``"blocks.8.hook_resid_pre"``, resolved through sae-lens's ``pretrained_saes.yaml``
    with the release's ``config_overrides`` and ``norm_scaling_factor`` applied as sae-lens applies
    them), or a hub repo id (``"EleutherAI/sae-pythia-70m-32k"``; ``sae_id`` is the folder, e.g. a
    sparsify hookpoint ``"layers.3"``). The folder may hold a SAELens or a sparsify artifact.
    ``cache_dir`` defaults to ``$HF_HUB_CACHE`` (else huggingface_hub's default); ``registry`` may
    name another ``pretrained_saes.yaml`` or be its parsed mapping. Releases that sae-lens converts
    from another layout (``conversion_func``, e.g. Gemma Scope) are refused with a one-line error.
    """
    table = _registry(registry)
    entry = table.get(release)
    pretrained: dict[str, Any] = {"release": release, "sae_id": sae_id}
    overrides: dict[str, Any] = {}
    scale: float | None = None
    if isinstance(entry, Mapping):
        if entry.get("conversion_func") not in _SAELENS_LOADER:
            raise ArtifactError(f"SAELens release {release!r} is stored in another layout (conversion_func={entry['conversion_func']!r})",
                                "load it with sae_lens.SAE.from_pretrained, write it with its save_model(folder), and SAE.load(folder)")
        row = next((r for r in entry.get("saes") or [] if isinstance(r, Mapping) and r.get("id") == sae_id), None)
        if row is None:
            ids = [str(r.get("id")) for r in entry.get("saes") or [] if isinstance(r, Mapping)]
            raise ConfigError(f"SAELens release {release!r} has no SAE {sae_id!r}",
                              f"use one of its {len(ids)} ids, e.g. {', '.join(ids[:3])}")
        repo_id, folder = str(entry["repo_id"]), str(row["path"])
        overrides = dict(entry.get("config_overrides") or {})
        scale = row.get("norm_scaling_factor")
        pretrained.update(model=entry.get("model"))
    else:
        repo_id, folder = release, sae_id
    folder = folder.strip("/")
    cache = _hub_cache_dir(cache_dir)
    pretrained.update(repo_id=repo_id, folder=folder, revision=revision or "main")

    def name(file: str) -> str:
        return f"{folder}/{file}" if folder else file

    cfg_file = _cached(repo_id, name("cfg.json"), cache, revision)
    weights = {fmt: _cached(repo_id, name(file), cache, revision) for fmt, file in
               (("saelens", "sae_weights.safetensors"), ("sparsify", "sae.safetensors"))}
    fmt = next((f for f, hit in weights.items() if hit is not None), None)
    if cfg_file is None or fmt is None:
        what = "a SAELens release" if entry is not None else ("a hub repo (sae-lens is not installed to resolve release names)"
                                                             if not table else "a hub repo (not a SAELens release name)")
        raise ArtifactError(f"{repo_id}/{name('cfg.json')} and its weights are not in the local Hugging Face cache {cache} "
                            f"({release!r} read as {what})",
                            f"download them once: hf download {repo_id} --include '{name('*')}' (or pass cache_dir=)")
    path = cfg_file.parent
    if weights[fmt].parent != path:  # both files must come from one snapshot
        raise ArtifactError(f"{repo_id}/{folder}: cfg.json and the weights sit in different cache snapshots", "re-download the folder")
    if fmt == "saelens":
        sae = _load_saelens(path, device, overrides, scale, pretrained)
    else:
        sae = load_sparsify(path, device)
        sae.meta["imported_from"]["pretrained"] = pretrained
    if pretrained.get("model") and not sae.meta.get("model"):
        sae.meta["model"] = pretrained["model"]
    return sae

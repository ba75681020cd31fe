"""Import and export of public SAE formats, so public dictionaries enter any comparison.

**SAELens** (``cfg.json`` + ``sae_weights.safetensors``; sae-lens 6.x inference layout): weights
``W_enc (d_in, d_sae)``, ``b_enc``, ``W_dec (d_sae, d_in)``, ``b_dec`` plus ``threshold``
(``jumprelu``) or ``b_gate``, ``r_mag``, ``b_mag`` (``gated``). Architectures map
``standard <-> relu``, ``topk <-> topk``, ``jumprelu <-> jumprelu``, ``gated <-> gated``;
a BatchTopK dictionary is exported as ``jumprelu`` with its global threshold on every latent,
which is what SAELens itself saves for BatchTopK. ``apply_b_dec_to_input=False`` is converted
exactly (``b_enc += b_dec W_enc``). Run-time normalisations that are not linear maps
(``layer_norm``, ``constant_norm_rescale``...) cannot be folded and are refused.

**sparsify** (EleutherAI; ``cfg.json`` + ``sae.safetensors``): TopK only; ``encoder.weight``
``(d_sae, d_in)`` (an ``nn.Linear``), ``encoder.bias``, ``W_dec (d_sae, d_in)``, ``b_dec``.
The encoder reads ``x - b_dec`` and keeps the top ``k`` of ``ReLU(encoder(.))``, which is this
project's TopK exactly.

Training hyper-parameters that the inference formats do not store (the sparsity coefficient)
are left at their defaults (0). Imported decoders with non-unit rows have their norms folded into the encoder (exact for
relu/jumprelu/gated); a TopK decoder must already have unit rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from universality.errors import ArtifactError, ConfigError
from universality.io import atomic_dir, load_tensors, read_json, save_tensors, write_json
from universality.sae.config import SAEConfig, sae_config
from universality.sae.registry import get_architecture

if TYPE_CHECKING:  # SAE.load dispatches here; at run time formats needs only the registry
    from universality.sae.base import SAE

__all__ = ["load_saelens", "save_saelens", "load_sparsify", "save_sparsify"]

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


def _build(arch: str, cfg: SAEConfig, tensors: dict[str, torch.Tensor], meta: dict[str, Any], source: str) -> SAE:
    sae = get_architecture(arch)(cfg, meta=meta)
    sae.load_weights_(tensors, source=source)
    norms = sae.decoder_norms()
    if not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
        if arch in ("topk", "batchtopk"):
            raise ArtifactError(f"{source}: a TopK decoder without unit-norm rows cannot be converted exactly", "normalise the decoder before export")
        sae.fold_decoder_norms_()
    return sae


def load_saelens(path: str | Path, device: str | torch.device | None = None) -> SAE:
    """Read a SAELens artifact folder (``cfg.json`` + ``sae_weights.safetensors``)."""
    path = Path(path)
    doc = _read_cfg(path)
    arch_in = doc.get("architecture", "standard")
    arch = _FROM_SAELENS.get(arch_in)
    if arch is None:
        raise ArtifactError(f"{path}: SAELens architecture {arch_in!r} is not supported", f"use one of {sorted(_FROM_SAELENS)}")
    norm = doc.get("normalize_activations", "none")
    if norm not in ("none", None):
        raise ArtifactError(f"{path}: SAELens normalize_activations={norm!r} cannot be folded into the weights", "export the SAE with normalisation folded (fold_activation_norm_scaling_factor)")
    if doc.get("reshape_activations", "none") not in ("none", None):
        raise ArtifactError(f"{path}: reshape_activations={doc['reshape_activations']!r} is not supported", "use SAEs on flat (batch, d) activations")
    if doc.get("rescale_acts_by_decoder_norm"):
        raise ArtifactError(f"{path}: rescale_acts_by_decoder_norm=True is not supported", "fold the decoder norm before export")
    d_in = _int_field(doc, "d_in", path, "the input width")
    d_sae = _int_field(doc, "d_sae", path, "the number of latents")
    kw: dict[str, Any] = {"k": _int_field(doc, "k", path, "active latents of a topk SAE")} if arch == "topk" else {}
    t = {k: v.to(torch.float32) for k, v in load_tensors(path / "sae_weights.safetensors").items()}
    _need_tensors(t, _SAELENS_TENSORS[arch], path / "sae_weights.safetensors", arch_in)
    if not doc.get("apply_b_dec_to_input", True):
        key = "b_gate" if arch == "gated" else "b_enc"
        t[key] = t[key] + t["b_dec"] @ t["W_enc"]
        if arch == "gated":
            t["b_mag"] = t["b_mag"] + t["b_dec"] @ (t["W_enc"] * t["r_mag"].exp())
    if arch == "jumprelu":
        t["log_threshold"] = t.pop("threshold").clamp_min(1e-12).log()
    if arch == "gated":
        t["b_enc"] = t.pop("b_gate")
    cfg = sae_config(arch, d_in, d_sae, **kw)
    md = doc.get("metadata") or {}
    meta = {new: md[old] for old, new in _SAELENS_META.items() if new and md.get(old) is not None}
    meta.update(imported_from={"format": "saelens", "path": str(path), "architecture": arch_in, "metadata": md},
                normalisation={"method": "none"})
    sae = _build(arch, cfg, t, meta, str(path))
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
        out_arch = "jumprelu"
        t["b_enc"] = s.b_enc.detach().float()
        t["threshold"] = torch.full((s.d_sae,), max(float(s.threshold), 0.0))
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
    sae = _build("topk", cfg, weights, meta, str(path))
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



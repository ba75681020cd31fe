"""The :class:`SAE` base class: shared parameters, decoding, scale folding, save and load.

Every architecture is a subclass in its own module, registered with
:func:`universality.sae.registry.register`. The shared layout (sparsify, SAELens) is

- ``W_enc`` ``(d_in, d_sae)``, ``b_enc`` ``(d_sae,)``: encoder, applied to ``x - b_dec``;
- ``W_dec`` ``(d_sae, d_in)`` with unit-norm rows (each row is one feature direction);
- ``b_dec`` ``(d_in,)``: decoder bias, subtracted from the input before encoding.

Input normalisation. The trainer feeds ``s * x`` with ``s`` chosen so that
``E||s x||^2 = d_in``; the SAE records ``s`` in :attr:`SAE.input_scale`. Because every activation
function used here is positively homogeneous in its pre-activation and its threshold, the map
``x -> f(s x) / s`` is the same SAE with every bias and threshold divided by ``s`` (weights
unchanged, latents divided by ``s``). :meth:`SAE.folded` does that, and :meth:`SAE.save` always
saves the folded dictionary, so a loaded dictionary works on raw activations.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from universality.errors import ArtifactError, ConfigError
from universality.io import atomic_dir, load_tensors, read_json, remove_stale_temps, save_tensors_digest, verify_sha256, write_json
from universality.sae import formats
from universality.sae.config import SAEConfig
from universality.sae.registry import get_architecture

__all__ = ["SAE", "SAEOutput", "FORMAT"]

FORMAT = "universality.sae/1"
_RESERVED = ("format", "architecture", "sae", "weights_sha256")


@dataclass
class SAEOutput:
    """What one training forward pass produces.

    ``acts``: the latents (dense, ``(batch, d_sae)``); ``pre``: the pre-activations that the
    dead-latent remedies (AuxK, ghost grads) read; ``sparsity``: the architecture's penalty per
    row averaged over the batch, *before* its coefficient (zero for TopK/BatchTopK);
    ``extra``: further loss terms that enter the loss with weight 1 (e.g. the Gated auxiliary loss).
    ``active``: optionally ``(indices, values)`` of the active latents, ``(batch, k)`` each, so
    firing statistics need not scan the dense code.
    """

    x_hat: Float[Tensor, "batch d_in"]
    acts: Float[Tensor, "batch d_sae"]
    pre: Float[Tensor, "batch d_sae"]
    sparsity: Float[Tensor, ""]
    extra: dict[str, Tensor] = field(default_factory=dict)
    active: tuple[Tensor, Tensor] | None = None


class SAE(nn.Module):
    """A sparse autoencoder. Construct a subclass, or use :meth:`SAE.load` / :func:`make_sae`."""

    architecture: ClassVar[str] = ""
    #: The architecture's config class (:mod:`universality.sae.config`), paired as SAELens pairs them.
    config_class: ClassVar[type[SAEConfig]] = SAEConfig

    def __init__(
        self,
        cfg: SAEConfig,
        meta: dict[str, Any] | None = None,
        *,
        seed: int = 0,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        if cfg.architecture != self.architecture or not isinstance(cfg, self.config_class):
            raise ConfigError(
                f"a {type(cfg).__name__} ({cfg.architecture!r}) was given to the {self.architecture!r} SAE class",
                "build SAEs with universality.sae.make_sae(cfg)",
            )
        self.cfg = cfg
        self.meta: dict[str, Any] = dict(meta or {})
        self.input_scale: float = 1.0
        gen = torch.Generator().manual_seed(int(seed))
        W_dec_FD = torch.randn(cfg.d_sae, cfg.d_in, generator=gen, dtype=torch.float32)
        W_dec_FD /= W_dec_FD.norm(dim=1, keepdim=True)
        self._build(W_dec_FD, gen)
        self.to(device=device, dtype=cfg.torch_dtype)

    # ----------------------------------------------------------------- construction hooks
    def _build(self, W_dec_FD: Tensor, gen: torch.Generator) -> None:
        """Create parameters. Default: ``W_enc = W_dec^T`` (Gao et al. 2024), zero biases."""
        self.W_dec = nn.Parameter(W_dec_FD.clone())
        self.W_enc = nn.Parameter(W_dec_FD.T.clone().contiguous())
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(self.cfg.d_in))

    # ----------------------------------------------------------------- forward
    def pre_acts(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        """Encoder pre-activations ``(x - b_dec) W_enc + b_enc``."""
        x_BD = x.to(self.W_dec.dtype)
        return (x_BD - self.b_dec) @ self.W_enc + self.b_enc

    def preactivations_at(
        self, x: Float[Tensor, "batch d_in"], pre: Float[Tensor, "batch d_sae"], idx: Int[Tensor, "batch k"]
    ) -> Float[Tensor, "batch k"]:
        """``pre[b, idx[b, j]]`` for the pre-activations ``pre`` that :meth:`forward_train` returned for ``x``,
        differentiable (AuxK's values). Here a gather through ``pre``; dictionaries with a k-sparse kernel
        send the gradient to their weights through the gathered entries only."""
        return pre.gather(1, idx)

    def encode(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        """Latent activations (inference behaviour)."""
        raise NotImplementedError

    def forward_train(self, x: Float[Tensor, "batch d_in"]) -> SAEOutput:
        """Training forward pass: reconstruction, latents and the sparsity penalty."""
        raise NotImplementedError

    def decode(self, z: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_in"]:
        """``z W_dec + b_dec``."""
        return z.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def decode_sparse(
        self, idx: Int[Tensor, "batch k"], vals: Float[Tensor, "batch k"]
    ) -> Float[Tensor, "batch d_in"]:
        """Decode from ``k`` active latents per row without building the dense code."""
        out_BD = F.embedding_bag(idx, self.W_dec, per_sample_weights=vals.to(self.W_dec.dtype), mode="sum")
        return out_BD + self.b_dec

    def forward(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_in"]:
        return self.decode(self.encode(x))

    @property
    def uses_penalty(self) -> bool:
        """True when the loss carries a sparsity penalty (weighted by ``cfg.sparsity_coeff``)."""
        return self.cfg.uses_penalty

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    # ----------------------------------------------------------------- decoder constraint
    def decoder_norms(self) -> Float[Tensor, " d_sae"]:
        return self.W_dec.detach().norm(dim=1)

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Project the rows of ``W_dec`` back to unit norm (only when ``decoder_norm == "unit"``)."""
        if self.cfg.decoder_norm == "unit":
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def remove_parallel_decoder_grad_(self) -> None:
        """Remove the gradient component along each unit decoder row (Bricken et al. 2023)."""
        if self.cfg.decoder_norm != "unit" or self.W_dec.grad is None:
            return
        g_FD = self.W_dec.grad
        g_FD -= (g_FD * self.W_dec).sum(dim=1, keepdim=True) * self.W_dec

    @torch.no_grad()
    def reinit_latents_(self, idx: Tensor, directions: Float[Tensor, "k d_in"], enc_norm: float) -> None:
        """Give latents ``idx`` unit decoder rows ``directions``, encoder columns
        ``enc_norm * directions`` and zero encoder bias (used by resampling)."""
        self.W_dec[idx] = directions.to(self.W_dec.dtype)
        if "W_enc" in self._parameters:
            self.W_enc[:, idx] = (enc_norm * directions).T.to(self.W_enc.dtype)
        self.b_enc[idx] = 0

    # ----------------------------------------------------------------- folding
    @torch.no_grad()
    def _scale_outputs_(self, c: float) -> None:
        """Make every latent and the reconstruction ``c`` times larger for ``c`` times larger inputs."""
        self.b_enc.mul_(c)
        self.b_dec.mul_(c)

    @torch.no_grad()
    def _scale_latents_(self, n_F: Tensor) -> None:
        """Multiply latent ``i`` by ``n_F[i]`` (encoder side only)."""
        self.W_enc.mul_(n_F)
        self.b_enc.mul_(n_F)

    @torch.no_grad()
    def fold_input_scale_(self) -> None:
        """Fold :attr:`input_scale` into the weights, so the SAE works on raw activations."""
        s = float(self.input_scale)
        if s == 1.0:
            return
        self._scale_outputs_(1.0 / s)
        self.input_scale = 1.0
        norm = dict(self.meta.get("normalisation") or {})
        norm.update({"scale": s, "folded_into_weights": True})
        norm.setdefault("method", "mean_squared_norm")
        norm.setdefault("target_mean_squared_norm", self.cfg.d_in)
        self.meta["normalisation"] = norm

    @torch.no_grad()
    def fold_decoder_norms_(self) -> None:
        """Give ``W_dec`` unit rows, moving each row norm into the encoder (exact for ReLU-like gates)."""
        n_F = self.W_dec.norm(dim=1).clamp_min(1e-12)
        self._scale_latents_(n_F)
        self.W_dec /= n_F[:, None]

    def folded(self) -> SAE:
        """A copy that works on raw activations and has unit decoder rows."""
        other = copy.deepcopy(self)
        other.fold_input_scale_()
        if other.cfg.decoder_norm == "free":
            other.fold_decoder_norms_()
        return other

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | Path, overwrite: bool = True) -> Path:
        """Write ``cfg.json`` + ``weights.safetensors`` (folded) atomically to the folder ``path``.

        ``cfg.json`` records the SHA-256 of ``weights.safetensors`` (``weights_sha256``), which
        :meth:`load` checks. Temporary folders that a killed save left beside ``path`` are removed.
        """
        sae = self.folded()
        doc = {k: v for k, v in sae.meta.items() if k not in _RESERVED}
        doc.setdefault("normalisation", {"method": "none"})
        doc.update({"format": FORMAT, "architecture": self.architecture, "sae": self.cfg.to_dict()})
        tensors = {k: v.detach() for k, v in sae.state_dict().items()}
        remove_stale_temps(Path(path).parent, Path(path).name)
        with atomic_dir(path, overwrite=overwrite) as tmp:
            doc["weights_sha256"] = save_tensors_digest(tmp / "weights.safetensors", tensors, metadata={"format": FORMAT})
            write_json(tmp / "cfg.json", doc)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> SAE:
        """Load a dictionary folder: this project's format, or a SAELens or sparsify artifact.

        When ``cfg.json`` records ``weights_sha256`` the weights file is checked against it (a
        mismatch raises :class:`ArtifactError`); dictionaries saved without it load unchecked.
        """
        path = Path(path)
        if not path.is_dir():
            raise ArtifactError(f"{path} is not a folder", "pass the dictionary folder that holds cfg.json")
        if not (path / "weights.safetensors").exists():
            if (path / "sae_weights.safetensors").exists():
                return formats.load_saelens(path, device=device)
            if (path / "sae.safetensors").exists():
                return formats.load_sparsify(path, device=device)
            raise ArtifactError(f"{path} holds no weights.safetensors, sae_weights.safetensors or sae.safetensors", "check the folder")
        doc = read_json(path / "cfg.json")
        if doc.get("format") != FORMAT or "architecture" not in doc or "sae" not in doc:
            raise ArtifactError(f"{path / 'cfg.json'} is not a {FORMAT} config", "re-save the dictionary with SAE.save")
        impl = get_architecture(doc["architecture"])
        if cls is not SAE and not issubclass(impl, cls):
            raise ArtifactError(f"{path} holds a {doc['architecture']!r} SAE, not {cls.architecture!r}", "load it with SAE.load")
        sae = impl(SAEConfig.from_dict(doc["sae"]), meta={k: v for k, v in doc.items() if k not in _RESERVED})
        if doc.get("weights_sha256") is not None:
            verify_sha256(path / "weights.safetensors", doc["weights_sha256"],
                          f"the dictionary in {path} is corrupt; delete it and re-train or re-save it")
        sae.load_weights_(load_tensors(path / "weights.safetensors"), source=str(path))
        return sae.to(device) if device is not None else sae

    @torch.no_grad()
    def load_weights_(self, tensors: dict[str, Tensor], source: str = "tensors") -> None:
        """Copy ``tensors`` into the parameters, checking names and shapes exactly."""
        own = self.state_dict()
        missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
        if missing or unexpected:
            raise ArtifactError(
                f"{source}: weights do not match a {self.architecture} SAE (missing {missing}, unexpected {unexpected})",
                "check that cfg.json names the architecture these weights were trained with",
            )
        for name, value in tensors.items():
            if tuple(value.shape) != tuple(own[name].shape):
                raise ArtifactError(
                    f"{source}: {name} has shape {tuple(value.shape)}, expected {tuple(own[name].shape)}",
                    "check d_in/d_sae in cfg.json",
                )
            own[name].copy_(value.to(own[name].dtype))

    def extra_repr(self) -> str:
        return f"d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae}, input_scale={self.input_scale:g}"



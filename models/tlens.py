"""TransformerLens backend: any model TransformerLens 3.9's ``TransformerBridge`` supports.

The Hugging Face model is loaded here (local folder, checkpoint series or hub name + revision,
offline-friendly, eager attention as the bridge expects) and handed to
``TransformerBridge.boot_transformers(name, hf_model=..., tokenizer=...)``, so no hub call is made for
a local path. The bridge exposes TransformerLens hook points named exactly like our canonical sites
(``blocks.{l}.hook_resid_pre``, ``hook_attn_out``, ``hook_resid_mid``, ``hook_mlp_out``,
``hook_resid_post``); each is an ``nn.Module`` (``HookPoint``) whose output is the activation, so
capture and replacement use plain torch forward hooks on them, with the same early stop as the HF
backend. Routing sites (MoE router logits / expert indices / weights) are HF-backend only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from models.base import ModelAdapter, StopForward, checked_replacement, collect, replacement_table, run_capture
from models.source import ModelSource, load_tokenizer, read_raw_config
from universality.errors import ModelLoadError
from universality.sites import HOOKS, Site, site

__all__ = ["TLensAdapter", "load_tlens"]


class TLensAdapter(ModelAdapter):
    """A TransformerBridge with canonical sites read from its hook points."""

    family = "tlens"

    def __init__(self, bridge: nn.Module, *, name: str, revision: str | None, checkpoints: tuple[str, ...]) -> None:
        self.model = bridge.eval()
        self.bridge = bridge
        self.name = name
        self.revision = revision
        self.checkpoints = tuple(checkpoints)
        self.tokenizer = getattr(bridge, "tokenizer", None)
        param = next(bridge.parameters())
        self.device = param.device
        self.dtype = param.dtype
        self.n_layers = int(bridge.cfg.n_layers)
        self.d_model = int(bridge.cfg.d_model)
        self.source_family = getattr(getattr(bridge, "original_model", None), "config", None)
        self.source_family = getattr(self.source_family, "model_type", None)
        hook_dict = bridge.hook_dict  # TransformerLens' own table, keyed by hook name
        self._hooks: dict[Site, nn.Module] = {}
        for layer in range(self.n_layers):
            for hook in HOOKS:
                s = site(layer, hook)
                # Routing sites are read by the HF backend only (their widths and dtypes differ).
                if not s.is_routing and s.name in hook_dict:
                    self._hooks[s] = hook_dict[s.name]
        self._sites: dict[Site, int] = {s: self.d_model for s in self._hooks}

    def __repr__(self) -> str:
        return f"TLensAdapter({self.source_family}, {self.name!r}, n_layers={self.n_layers}, d_model={self.d_model})"

    @property
    def sites(self) -> dict[str, int]:
        return {s.name: w for s, w in self._sites.items()}

    @property
    def site_table(self) -> Mapping[Site, int]:
        return MappingProxyType(self._sites)

    def _run(self, input_ids: Tensor, attention_mask: Tensor | None):
        return self.bridge(input_ids, return_type="logits", attention_mask=attention_mask)

    def capture(
        self,
        input_ids: Int[Tensor, "batch pos"],
        sites: str | Site | Iterable[str | Site],
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        dtype: torch.dtype | None = None,
    ) -> dict[str, Tensor]:
        """Activations ``(batch, pos, d_model)`` of the requested sites; stops after the last one."""
        parsed = self._resolve_sites(sites)
        input_ids, attention_mask = self._prepare_inputs(input_ids, attention_mask)
        out_dtype = dtype or self.dtype
        captured: dict[Site, Tensor] = {}
        wanted = len(parsed)

        def grab(s: Site, _module, _args, output) -> None:
            value = output.detach()
            captured[s] = value.to(out_dtype) if value.dtype != out_dtype else value
            if len(captured) == wanted:
                raise StopForward

        run_capture(parsed, lambda s: self._hooks[s].register_forward_hook(functools.partial(grab, s)),
                    lambda: self._run(input_ids, attention_mask))
        return collect(parsed, captured, "TransformerBridge hook points")

    def forward(
        self,
        input_ids: Int[Tensor, "batch pos"],
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        replace: Mapping[str | Site, Callable[[Tensor], Tensor]] | None = None,
    ) -> Float[Tensor, "batch pos vocab"]:
        """Full logits, with each ``replace[site](act)`` (a name or ``Site`` key) spliced in at its hook point."""
        input_ids, attention_mask = self._prepare_inputs(input_ids, attention_mask)
        fns = replacement_table(replace)
        parsed = self._resolve_sites(fns) if fns else ()

        def swap(s: Site, fn: Callable[[Tensor], Tensor], _module, _args, output):
            return checked_replacement(fn(output), output, s)

        handles = []
        try:
            for s in parsed:
                hook = functools.partial(swap, s, fns[s])
                handles.append(self._hooks[s].register_forward_hook(hook))
            with torch.no_grad():
                return self._run(input_ids, attention_mask)
        finally:
            for h in handles:
                h.remove()


def load_tlens(src: ModelSource, *, device: torch.device, dtype: torch.dtype, trust_remote_code: bool) -> TLensAdapter:
    """Load ``src`` (a :class:`~models.source.ModelSource`) into a TransformerBridge."""
    from transformers import AutoModelForCausalLM

    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as err:  # pragma: no cover - transformer_lens is a dependency
        raise ModelLoadError("transformer_lens is not installed", "pip install 'transformer_lens>=3.9,<4'") from err
    read_raw_config(src)  # one-line error for an unknown name / revision
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(
            src.location, revision=src.hub_revision, dtype=dtype, trust_remote_code=trust_remote_code,
            attn_implementation="eager",
        )
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"cannot load {src.location!r} for TransformerLens ({first[:160]})", "check the name or path") from err
    tokenizer = load_tokenizer(src, trust_remote_code)
    try:
        bridge = TransformerBridge.boot_transformers(
            src.location, hf_model=hf_model.to(device), tokenizer=tokenizer, device=device, dtype=dtype,
            trust_remote_code=trust_remote_code,
        )
    except (ValueError, NotImplementedError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            f"TransformerLens cannot bridge {src.location!r} ({first[:160]})", "use backend='hf' for this model"
        ) from err
    return TLensAdapter(bridge, name=src.series_source, revision=src.revision, checkpoints=src.checkpoints)

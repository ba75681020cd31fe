"""The model-adapter interface and its hook machinery for Hugging Face models.

Each model family declares its sites as *data* (:class:`SiteSpec`: a module path template, whether
the module's input or output is read, which tuple element, and how to shape it), gathered in a
:class:`FamilySpec`. :class:`HFAdapter` turns a spec into plain torch forward hooks:

* :meth:`HFAdapter.capture` registers one hook per requested site, runs the model once, and raises
  :class:`StopForward` from the hook that fills the last requested site, so no layer after the
  deepest requested site runs (SAELens' ``StopForward`` idea). Handles are removed in ``finally``.
* :meth:`HFAdapter.forward` returns full logits with sites replaced by ``fn(act)``: a residual site
  replaces the block input/output, a component site replaces the component output (so the residual
  stream receives the new value), and ``resid_mid`` is replaced by shifting the attention output by
  ``fn(resid_mid) - resid_mid``.

Sites travel typed (see :mod:`universality.sites`): ``capture`` and ``forward`` accept names or
:class:`~universality.sites.Site` objects and convert them once (:meth:`ModelAdapter._resolve_sites`);
hooks are installed per ``Site`` and fill a ``Site``-keyed dict, and only the returned dict is keyed
by ``Site.name``. A requested site the model lacks raises :class:`UnknownSiteError` listing its sites.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from universality.errors import ConfigError, ModelLoadError, UnknownSiteError
from universality.sites import HOOKS, Site, as_site, as_sites, require_sites, site

__all__ = [
    "SiteSpec",
    "FamilySpec",
    "ModelAdapter",
    "HFAdapter",
    "StopForward",
    "checked_replacement",
    "collect",
    "format_site_list",
    "replacement_table",
    "run_capture",
]

Width = Literal["d_model", "n_experts", "top_k"]


@dataclass(frozen=True)
class SiteSpec:
    """Where one hook (``hook_resid_pre``, ...) lives in a block, as data.

    ``module`` is a dotted path template with ``{layer}``; ``read`` says whether the module's first
    positional input (``"input"``, read by a forward pre-hook) or its output (``"output"``) is the
    activation; ``index`` picks an element of a tuple output; ``flat`` marks outputs shaped
    ``(batch*pos, width)`` that are reshaped to ``(batch, pos, width)``; ``width`` names the width;
    ``replace`` is how :meth:`HFAdapter.forward` splices a new value: ``"input"`` / ``"output"``
    (edit what the hook reads), ``"attn_delta"`` (resid_mid: shift the attention output, see
    ``attn_module``), or ``None`` (not replaceable, e.g. routing sites).
    """

    module: str
    read: Literal["input", "output"]
    index: int | None = None
    flat: bool = False
    width: Width = "d_model"
    replace: Literal["input", "output", "attn_delta"] | None = "output"
    attn_module: str | None = None  # for replace="attn_delta": the attention module path template
    block_module: str | None = None  # for replace="attn_delta": the block whose input is resid_pre

    def __post_init__(self) -> None:
        if self.read not in ("input", "output"):
            raise ConfigError(f"SiteSpec.read must be 'input' or 'output', got {self.read!r}", "fix the family spec")
        if self.replace == "attn_delta" and (self.attn_module is None or self.block_module is None):
            raise ConfigError("replace='attn_delta' needs attn_module and block_module", "fix the family spec")


@dataclass(frozen=True)
class FamilySpec:
    """A model family: where its blocks are, and where each of its sites lives (per hook name)."""

    family: str
    layers: str  # dotted path of the ModuleList of blocks, e.g. "transformer.h"
    sites: Mapping[str, SiteSpec]  # hook name (universality.sites.HOOKS) -> spec
    # Optional predicate over (model config, hook) deciding whether the hook exists at all.
    has_site: Callable[[Any, str], bool] | None = None
    # Whether the model takes position_ids (attention models); with an attention_mask, positions
    # are derived from it so left-padded rows see the same positions as unpadded ones.
    position_ids: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.sites) - set(HOOKS)
        if unknown:
            raise ConfigError(f"family {self.family!r} declares unknown hooks {sorted(unknown)}", "use names from universality.sites.HOOKS")


def format_site_list(names: Iterable[str], limit: int = 12) -> str:
    """Comma-separated names, abbreviated as ``a, b, ... (N more)`` past ``limit``."""
    names = list(names)
    if len(names) <= limit:
        return ", ".join(names)
    head = names[: limit // 2]
    tail = names[-2:]
    return f"{', '.join(head)}, ..., {', '.join(tail)} ({len(names)} sites in all)"


class StopForward(Exception):
    """Raised from a hook once every requested site is captured; caught by ``capture``."""


def run_capture(parsed: Sequence[Site], install: Callable[[Site], Any], run: Callable[[], Any]) -> None:
    """Install one hook per site, run the forward pass without gradients until a hook raises
    :class:`StopForward` (the deepest site is filled), and remove every hook, also on error."""
    handles = []
    try:
        for s in parsed:
            handles.append(install(s))
        with torch.no_grad():
            try:
                run()
            except StopForward:
                pass
    finally:
        for h in handles:
            h.remove()


def collect(parsed: Sequence[Site], captured: Mapping[Site, Tensor], what: str) -> dict[str, Tensor]:
    """The captured activations in request order, keyed by site name (the data that leaves the
    adapter); a site whose hook never fired is an error."""
    missing = [s.name for s in parsed if s not in captured]
    if missing:
        raise RuntimeError(f"{what} for {missing} never fired; the site spec does not match the model")
    return {s.name: captured[s] for s in parsed}


def replacement_table(replace: Mapping[str | Site, Callable[[Tensor], Tensor]] | None) -> dict[Site, Callable[[Tensor], Tensor]]:
    """``forward``'s ``replace`` mapping with its keys (names or ``Site``) converted once to ``Site``."""
    out: dict[Site, Callable[[Tensor], Tensor]] = {}
    for key, fn in dict(replace or {}).items():
        s = as_site(key)
        if s in out:
            raise ConfigError(f"replace names site {s.name} twice", "give one replacement per site")
        out[s] = fn
    return out


def _get_module(root: nn.Module, path: str) -> nn.Module | None:
    module: Any = root
    for part in path.split("."):
        if part.isdigit():
            try:
                module = module[int(part)]
            except (IndexError, TypeError):
                return None
        else:
            module = getattr(module, part, None)
            if module is None:
                return None
    return module if isinstance(module, nn.Module) else None


def _first_input(args: tuple, kwargs: dict) -> Tensor:
    if args:
        return args[0]
    return kwargs["hidden_states"]


def _with_first_input(args: tuple, kwargs: dict, value: Tensor) -> tuple[tuple, dict]:
    if args:
        return (value, *args[1:]), kwargs
    kwargs = dict(kwargs)
    kwargs["hidden_states"] = value
    return args, kwargs


def _pick(output: Any, index: int | None) -> Tensor:
    if index is not None:
        return output[index]
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


def _with_pick(output: Any, index: int | None, value: Tensor) -> Any:
    if index is None and not isinstance(output, (tuple, list)):
        return value
    i = 0 if index is None else index
    items = list(output)
    items[i] = value
    return type(output)(items) if isinstance(output, tuple) else items


class ModelAdapter:
    """The interface every backend implements (see docs/INTERFACES.md).

    Attributes: ``family``, ``name``, ``revision``, ``model``, ``tokenizer``, ``device``, ``dtype``,
    ``n_layers``, ``d_model``, ``sites`` (site name -> width), ``site_table`` (the same, keyed by
    :class:`~universality.sites.Site`), ``checkpoints`` (ordered revisions).
    """

    family: str
    name: str
    revision: str | None
    model: nn.Module
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    n_layers: int
    d_model: int
    checkpoints: tuple[str, ...]

    @property
    def sites(self) -> dict[str, int]:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    @property
    def site_table(self) -> Mapping[Site, int]:
        """The model's sites, typed: ``Site -> width``. Built-in adapters keep one made at construction;
        this default (for adapters that only define ``sites``) parses the names."""
        return {as_site(n): int(w) for n, w in self.sites.items()}

    def capture(
        self,
        input_ids: Int[Tensor, "batch pos"],
        sites: str | Site | Iterable[str | Site],
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        dtype: torch.dtype | None = None,
    ) -> dict[str, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(
        self,
        input_ids: Int[Tensor, "batch pos"],
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        replace: Mapping[str | Site, Callable[[Tensor], Tensor]] | None = None,
    ) -> Float[Tensor, "batch pos vocab"]:  # pragma: no cover - interface
        raise NotImplementedError

    def at_revision(self, revision: str) -> "ModelAdapter":
        """Load another checkpoint of this model's series (same backend, device, dtype)."""
        if self.checkpoints and revision not in self.checkpoints:
            raise ModelLoadError(
                f"{self.name} has no revision {revision!r}",
                f"use one of {format_site_list(self.checkpoints, 8)}",
            )
        if self._reload is None:
            raise ModelLoadError(
                f"{self.name} was not opened with models.load, so it has no series to reload",
                "open the model with models.load(name_or_path, revision=...)",
            )
        return self._reload(
            self._series_source,
            revision=revision,
            backend=self._backend,
            device=self.device,
            dtype=self.dtype,
            trust_remote_code=self._trust_remote_code,
        )

    # Set by the loader (models.loading.load), which also sets ``_reload`` to itself: at_revision
    # calls it, so this module need not import the loader (which imports this module).
    _series_source: str = ""
    _backend: str = "hf"
    _trust_remote_code: bool = False
    _reload: Callable[..., ModelAdapter] | None = None

    # ---- shared helpers -------------------------------------------------------------------------
    def _resolve_sites(self, sites: str | Site | Iterable[str | Site]) -> tuple[Site, ...]:
        """The entry conversion of ``capture`` / ``forward``: names or ``Site`` objects -> sorted
        ``Site`` tuple; :class:`UnknownSiteError` listing the model's sites for one it lacks."""
        parsed = as_sites(sites)
        require_sites(parsed, self.site_table, f"{self.family} model {self.name!r}")
        return parsed

    def _prepare_inputs(
        self, input_ids: Tensor, attention_mask: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            raise ConfigError(
                f"input_ids must be a (batch, pos) integer tensor, got {getattr(input_ids, 'shape', type(input_ids))}",
                "pass token ids shaped (batch, pos)",
            )
        if input_ids.dtype.is_floating_point:
            raise ConfigError("input_ids must be integer token ids, got a float tensor", "pass torch.long token ids")
        input_ids = input_ids.to(self.device, torch.long)
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ConfigError(
                    f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids {tuple(input_ids.shape)}",
                    "pass a mask shaped like input_ids",
                )
            attention_mask = attention_mask.to(self.device)
        return input_ids, attention_mask


class HFAdapter(ModelAdapter):
    """A Hugging Face causal LM with sites declared by a :class:`FamilySpec`."""

    def __init__(
        self,
        model: nn.Module,
        spec: FamilySpec,
        *,
        name: str,
        revision: str | None = None,
        tokenizer: Any = None,
        checkpoints: tuple[str, ...] = (),
    ) -> None:
        self.model = model.eval()
        self.spec = spec
        self.family = spec.family
        self.name = name
        self.revision = revision
        self.tokenizer = tokenizer
        self.checkpoints = tuple(checkpoints)
        param = next(model.parameters())
        self.device = param.device
        self.dtype = param.dtype
        blocks = _get_module(model, spec.layers)
        if blocks is None:
            raise ModelLoadError(f"{spec.family} model has no module {spec.layers!r}", "check the model class matches its config")
        self.n_layers = len(blocks)
        self.d_model = int(model.config.hidden_size)
        self._sites: dict[Site, int] = self._discover_sites()

    def __repr__(self) -> str:
        rev = f", revision={self.revision!r}" if self.revision else ""
        return f"HFAdapter({self.family}, {self.name!r}{rev}, n_layers={self.n_layers}, d_model={self.d_model})"

    # ---- sites ----------------------------------------------------------------------------------
    def _discover_sites(self) -> dict[Site, int]:
        out: dict[Site, int] = {}
        cfg = self.model.config
        for layer in range(self.n_layers):
            for hook in HOOKS:
                spec = self.spec.sites.get(hook)
                if spec is None:
                    continue
                if self.spec.has_site is not None and not self.spec.has_site(cfg, hook):
                    continue
                module = _get_module(self.model, spec.module.format(layer=layer))
                if module is None:
                    continue
                width = self._width(spec, module)
                if width is None:
                    continue
                out[site(layer, hook)] = width
        return out

    def _width(self, spec: SiteSpec, module: nn.Module) -> int | None:
        if spec.width == "d_model":
            return self.d_model
        # Routing widths come from the router module itself (absent on dense layers).
        attr = "num_experts" if spec.width == "n_experts" else "top_k"
        value = getattr(module, attr, None)
        return int(value) if value is not None else None

    @property
    def sites(self) -> dict[str, int]:
        return {s.name: w for s, w in self._sites.items()}

    @property
    def site_table(self) -> Mapping[Site, int]:
        return MappingProxyType(self._sites)

    def _module(self, template: str, layer: int) -> nn.Module:
        module = _get_module(self.model, template.format(layer=layer))
        assert module is not None, template  # guaranteed by _discover_sites
        return module

    def _model_inputs(self, input_ids: Tensor, attention_mask: Tensor | None) -> dict[str, Any]:
        inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        if attention_mask is not None and self.spec.position_ids:
            # Position of each token = number of attended tokens before it (left padding safe).
            inputs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return inputs

    # ---- capture --------------------------------------------------------------------------------
    def capture(
        self,
        input_ids: Int[Tensor, "batch pos"],
        sites: str | Site | Iterable[str | Site],
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        dtype: torch.dtype | None = None,
    ) -> dict[str, Tensor]:
        """Activations of every requested site, ``(batch, pos, width)``, from one truncated pass.

        Float sites are returned in ``dtype`` (default: the model's dtype); expert indices stay
        int64. The pass stops right after the last requested site is read.
        """
        parsed = self._resolve_sites(sites)
        input_ids, attention_mask = self._prepare_inputs(input_ids, attention_mask)
        batch, pos = input_ids.shape
        out_dtype = dtype or self.dtype
        captured: dict[Site, Tensor] = {}
        wanted = len(parsed)

        def store(s: Site, value: Tensor, flat: bool) -> None:
            if flat:
                value = value.reshape(batch, pos, -1)
            value = value.detach()
            if value.dtype.is_floating_point and value.dtype != out_dtype:
                value = value.to(out_dtype)
            captured[s] = value
            if len(captured) == wanted:
                raise StopForward

        def install(s: Site):
            spec = self.spec.sites[s.hook]
            module = self._module(spec.module, s.layer)
            if spec.read == "input":
                hook = functools.partial(_capture_input_hook, store, s)
                return module.register_forward_pre_hook(hook, with_kwargs=True)
            hook = functools.partial(_capture_output_hook, store, s, spec.index, spec.flat)
            return module.register_forward_hook(hook)

        run_capture(parsed, install, lambda: self.model(**self._model_inputs(input_ids, attention_mask)))
        return collect(parsed, captured, f"hooks of the {self.family} site spec")

    # ---- forward with replacement -------------------------------------------------------------
    def forward(
        self,
        input_ids: Int[Tensor, "batch pos"],
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        replace: Mapping[str | Site, Callable[[Tensor], Tensor]] | None = None,
    ) -> Float[Tensor, "batch pos vocab"]:
        """Full logits; each ``replace[site]`` (a name or ``Site``) maps the site's activation to the
        value used instead."""
        input_ids, attention_mask = self._prepare_inputs(input_ids, attention_mask)
        fns = replacement_table(replace)
        parsed = self._resolve_sites(fns) if fns else ()
        handles = []
        try:
            for s in parsed:
                handles.extend(self._register_replacement(s, fns[s]))
            with torch.no_grad():
                out = self.model(**self._model_inputs(input_ids, attention_mask))
        finally:
            for h in handles:
                h.remove()
        return out.logits

    def _register_replacement(self, s: Site, fn: Callable[[Tensor], Tensor]) -> list:
        spec = self.spec.sites[s.hook]
        if not callable(fn):
            raise ConfigError(f"replacement for {s.name} is not callable", "pass a function act -> new act")
        if spec.replace is None:
            raise UnknownSiteError(f"site {s.name} cannot be replaced", "replace a residual or component output site")
        if spec.replace == "input":
            module = self._module(spec.module, s.layer)
            hook = functools.partial(_replace_input_hook, fn, s)
            return [module.register_forward_pre_hook(hook, with_kwargs=True)]
        if spec.replace == "output":
            module = self._module(spec.module, s.layer)
            hook = functools.partial(_replace_output_hook, fn, s, spec.index)
            return [module.register_forward_hook(hook)]
        # attn_delta: resid_mid = resid_pre + attn_out; make attn_out' = fn(resid_mid) - resid_pre.
        assert spec.attn_module is not None and spec.block_module is not None
        block = self._module(spec.block_module, s.layer)
        attn = self._module(spec.attn_module, s.layer)
        state: dict[str, Tensor] = {}

        def keep_pre(_m, args, kwargs):
            state["pre"] = _first_input(args, kwargs)

        def shift(_m, _args, output):
            a = _pick(output, None)
            pre = state.pop("pre")
            new = checked_replacement(fn(pre + a), a, s) - pre
            return _with_pick(output, None, new.to(a.dtype))

        return [block.register_forward_pre_hook(keep_pre, with_kwargs=True), attn.register_forward_hook(shift)]


def checked_replacement(new: Any, old: Tensor, s: Site) -> Tensor:
    """``new``, the replacement for site ``s``, cast to ``old``'s dtype; a ConfigError unless shaped like ``old``."""
    if not isinstance(new, Tensor) or new.shape != old.shape:
        raise ConfigError(
            f"replacement for {s.name} returned {getattr(new, 'shape', type(new).__name__)}, expected shape {tuple(old.shape)}",
            "return a tensor shaped like the activation",
        )
    return new.to(old.dtype)


def _capture_input_hook(store: Callable[[Site, Tensor, bool], None], s: Site, _module, args, kwargs):
    store(s, _first_input(args, kwargs), False)


def _capture_output_hook(store: Callable[[Site, Tensor, bool], None], s: Site, index: int | None, flat: bool,
                         _module, _args, output):
    store(s, _pick(output, index), flat)


def _replace_input_hook(fn: Callable[[Tensor], Tensor], s: Site, _module, args, kwargs):
    old = _first_input(args, kwargs)
    return _with_first_input(args, kwargs, checked_replacement(fn(old), old, s))


def _replace_output_hook(fn: Callable[[Tensor], Tensor], s: Site, index: int | None, _module, _args, output):
    old = _pick(output, index)
    return _with_pick(output, index, checked_replacement(fn(old), old, s))

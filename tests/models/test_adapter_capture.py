"""Capture and replacement on tiny random models of every family (known answers)."""

from __future__ import annotations

import pytest
import torch

import models
from models.base import _get_module
from universality.errors import ConfigError, UnknownSiteError

from models.testing import TINY_FAMILIES

ALL_FAMILIES = tuple(TINY_FAMILIES)

# transformers' own hidden_states tuple: entry of resid_post[l] is l + 1 when the tuple starts with the
# embeddings, l when it does not (Mamba; Mamba2 before transformers 5.25, which added the embedding entry:
# detected, not assumed); the final norm module is applied to the last block's output before the last entry.
_FINAL_NORM = {
    "gpt2": "transformer.ln_f",
    "gpt_neox": "gpt_neox.final_layer_norm",
    "mamba": "backbone.norm_f",
    "mamba2": "backbone.norm_f",
    "olmoe": "model.norm",
    "mixtral": "model.norm",
    "qwen2_moe": "model.norm",
}
ATOL = 1e-5


def _ids(batch: int = 2, pos: int = 9, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 250, (batch, pos), generator=g)


@pytest.fixture(scope="module")
def adapters(tiny):
    cache: dict[str, models.ModelAdapter] = {}

    def get(key: str) -> models.ModelAdapter:
        if key not in cache:
            cache[key] = models.load(tiny[key], device="cpu")
        return cache[key]

    return get


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_resid_post_equals_layer_output(adapters, family):
    a = adapters(family)
    assert a.family == family and a.n_layers == 2 and a.d_model == 64
    ids = _ids()
    posts = a.capture(ids, [f"blocks.{l}.hook_resid_post" for l in range(a.n_layers)])
    with torch.no_grad():
        hidden = a.model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    off = 1
    if family in ("mamba", "mamba2"):  # no position embeddings: the embedding entry is the token embedding itself
        with torch.no_grad():
            embedded = a.model.get_input_embeddings()(ids)
        off = 1 if torch.allclose(hidden[0], embedded) else 0
    assert len(hidden) == a.n_layers + 1  # Mamba: n block outputs + normed; others: embeddings + ... + normed
    for layer in range(a.n_layers - 1):
        torch.testing.assert_close(posts[f"blocks.{layer}.hook_resid_post"], hidden[layer + off], atol=ATOL, rtol=0)
    # The last entry is after the final norm: norm(resid_post[last]) reproduces it.
    norm = _get_module(a.model, _FINAL_NORM[family])
    with torch.no_grad():
        last = norm(posts[f"blocks.{a.n_layers - 1}.hook_resid_post"])
    torch.testing.assert_close(last, hidden[-1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_shapes_dtypes_and_resid_chain(adapters, family):
    a = adapters(family)
    ids = _ids(3, 5)
    acts = a.capture(ids, list(a.sites))
    assert list(acts) == sorted(acts, key=lambda n: models.base.Site.parse(n))
    for name, width in a.sites.items():
        assert acts[name].shape == (3, 5, width), name
        expected = torch.int64 if name.endswith("expert_indices") else torch.float32
        assert acts[name].dtype == expected, name
    torch.testing.assert_close(acts["blocks.1.hook_resid_pre"], acts["blocks.0.hook_resid_post"], atol=0, rtol=0)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_sites_add_up(adapters, family):
    a = adapters(family)
    acts = a.capture(_ids(), list(a.sites))
    for layer in range(a.n_layers):
        g = lambda h: acts[f"blocks.{layer}.hook_{h}"]  # noqa: E731
        if family in ("mamba", "mamba2"):
            torch.testing.assert_close(g("resid_pre") + g("mixer_out"), g("resid_post"), atol=ATOL, rtol=0)
            continue
        torch.testing.assert_close(g("resid_pre") + g("attn_out") + g("mlp_out"), g("resid_post"), atol=ATOL, rtol=0)
        if f"blocks.{layer}.hook_resid_mid" in a.sites:
            torch.testing.assert_close(g("resid_pre") + g("attn_out"), g("resid_mid"), atol=ATOL, rtol=0)


def test_parallel_residual_has_no_resid_mid(adapters):
    assert "blocks.0.hook_resid_mid" not in adapters("gpt_neox").sites
    seq = adapters("gpt_neox:sequential")
    assert "blocks.0.hook_resid_mid" in seq.sites
    acts = seq.capture(_ids(), list(seq.sites))
    for layer in range(seq.n_layers):
        g = lambda h: acts[f"blocks.{layer}.hook_{h}"]  # noqa: E731
        torch.testing.assert_close(g("resid_pre") + g("attn_out"), g("resid_mid"), atol=ATOL, rtol=0)
        torch.testing.assert_close(g("resid_mid") + g("mlp_out"), g("resid_post"), atol=ATOL, rtol=0)


def _count_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "mamba", "olmoe"])
def test_early_stop_runs_no_later_layer(adapters, family):
    a = adapters(family)
    fired: list[str] = []
    n_hooks = _count_hooks(a.model)
    blocks = _get_module(a.model, a.spec.layers)
    handles = [blocks[1].register_forward_pre_hook(lambda *_: fired.append("layer1"))]
    handles.append(a.model.get_output_embeddings().register_forward_hook(lambda *_: fired.append("head")))
    try:
        first = sorted(s for s in a.sites if s.startswith("blocks.0."))
        out = a.capture(_ids(), first)
        assert set(out) == set(first)
        assert fired == []
        a.capture(_ids(), ["blocks.1.hook_resid_pre"])
        assert fired == ["layer1"]  # the pre-hook of layer 1 fires, nothing after it (no head)
    finally:
        for h in handles:
            h.remove()
    assert _count_hooks(a.model) == n_hooks  # capture removed every handle it registered


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_forward_replace_identity_and_zero(adapters, family):
    a = adapters(family)
    ids = _ids()
    plain = a.forward(ids)
    assert plain.shape == (2, 9, a.model.config.vocab_size)
    replaceable = [s for s in a.sites if ".mlp.hook_" not in s and s.startswith("blocks.1.")]  # every kind once
    for name in replaceable:
        same = a.forward(ids, replace={name: lambda x: x})
        torch.testing.assert_close(same, plain, atol=ATOL, rtol=0, msg=name)
        changed = a.forward(ids, replace={name: torch.zeros_like})
        assert (changed - plain).abs().max() > 1e-4, name


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "mamba2", "mixtral"])
def test_replacing_resid_post_equals_replacing_next_resid_pre(adapters, family):
    a = adapters(family)
    ids = _ids()
    shift = lambda x: 0.5 * x + 0.1  # noqa: E731
    one = a.forward(ids, replace={"blocks.0.hook_resid_post": shift})
    two = a.forward(ids, replace={"blocks.1.hook_resid_pre": shift})
    torch.testing.assert_close(one, two, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "olmoe"])
def test_replacing_component_reaches_residual(adapters, family):
    """attn_out := 0 makes resid_mid equal resid_pre; resid_mid := f makes the MLP read f."""
    a = adapters(family)
    ids = _ids()
    zero_attn = a.forward(ids, replace={"blocks.1.hook_attn_out": torch.zeros_like})
    acts = a.capture(ids, ["blocks.1.hook_resid_pre"])
    mid_is_pre = a.forward(ids, replace={"blocks.1.hook_resid_mid": lambda x: acts["blocks.1.hook_resid_pre"]})
    torch.testing.assert_close(zero_attn, mid_is_pre, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "mixtral", "mamba"])
def test_padded_batches_match_single_rows(adapters, family):
    """Right padding (all families) and left padding (attention families, positions from the mask)."""
    a = adapters(family)
    ids = _ids(2, 8)
    site_ = "blocks.1.hook_resid_post"
    single = a.capture(ids[1:, :5], [site_])[site_]
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    right = a.capture(ids, [site_], attention_mask=mask)[site_]
    torch.testing.assert_close(right[1:, :5], single, atol=1e-4, rtol=0)
    if family == "mamba":
        return
    left_ids = torch.cat([torch.full((1, 3), 7), ids[1:, :5]], dim=1)
    left_mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 5, dtype=torch.long)], dim=1)
    left = a.capture(left_ids, [site_], attention_mask=left_mask)[site_]
    torch.testing.assert_close(left[:, 3:], single, atol=1e-4, rtol=0)
    logits = a.forward(left_ids, attention_mask=left_mask)
    torch.testing.assert_close(logits[:, 3:], a.forward(ids[1:, :5]), atol=1e-4, rtol=0)


def test_requested_dtype(tiny):
    a = models.load(tiny["gpt2"], device="cpu", dtype="bfloat16")
    assert a.dtype == torch.bfloat16
    out = a.capture(_ids(), ["blocks.0.hook_resid_post"])
    assert out["blocks.0.hook_resid_post"].dtype == torch.bfloat16
    out64 = a.capture(_ids(), ["blocks.0.hook_resid_post"], dtype=torch.float64)
    assert out64["blocks.0.hook_resid_post"].dtype == torch.float64


def test_unknown_site_is_one_line_and_lists_valid(adapters):
    a = adapters("gpt_neox")
    with pytest.raises(UnknownSiteError) as err:
        a.capture(_ids(), ["blocks.0.hook_resid_mid"])
    msg = str(err.value)
    assert "\n" not in msg and "blocks.0.hook_resid_mid" in msg and "blocks.0.hook_resid_pre" in msg
    with pytest.raises(UnknownSiteError):
        a.capture(_ids(), ["blocks.7.hook_resid_post"])
    with pytest.raises(UnknownSiteError):
        a.capture(_ids(), ["resid_post"])
    with pytest.raises(UnknownSiteError, match="cannot be replaced"):
        adapters("olmoe").forward(_ids(), replace={"blocks.0.mlp.hook_router_logits": lambda x: x})
    with pytest.raises(ConfigError):
        a.capture(torch.zeros(4), ["blocks.0.hook_resid_post"])
    with pytest.raises(ConfigError, match="expected shape"):
        a.forward(_ids(), replace={"blocks.0.hook_resid_post": lambda x: x[:, :1]})


def test_long_site_lists_are_abbreviated():
    from models.base import format_site_list

    names = [f"blocks.{i}.hook_resid_post" for i in range(40)]
    text = format_site_list(names)
    assert "40 sites in all" in text and "blocks.39.hook_resid_post" in text and len(text) < 400


@pytest.mark.parametrize("family", ["gpt2", "mamba2", "qwen2_moe"])
def test_capture_on_device_matches_cpu(tiny, adapters, device, family):
    a = models.load(tiny[family], device=device)
    assert a.device.type == device
    sites = [s for s in a.sites if s.startswith("blocks.1.")]
    got = a.capture(_ids().to(device), sites)
    ref = adapters(family).capture(_ids(), sites)
    for name in sites:
        assert got[name].device.type == device
        torch.testing.assert_close(got[name].cpu(), ref[name], atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["gpt2", "mamba", "mixtral"])
def test_cuda_bfloat16_capture_and_replace(tiny, family):
    a = models.load(tiny[family], device="cuda", dtype=torch.bfloat16)
    ids = _ids().cuda()
    acts = a.capture(ids, list(a.sites))
    assert all(v.is_cuda for v in acts.values())
    assert acts["blocks.0.hook_resid_post"].dtype == torch.bfloat16
    same = a.forward(ids, replace={"blocks.0.hook_resid_post": lambda x: x})
    torch.testing.assert_close(same, a.forward(ids), atol=1e-2, rtol=0)

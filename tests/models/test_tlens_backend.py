"""The TransformerLens (TransformerBridge) backend agrees with the HF backend on every common site."""

from __future__ import annotations

import pytest
import torch

import models
from universality.errors import UnknownSiteError


def _ids() -> torch.Tensor:
    return torch.randint(0, 250, (2, 8), generator=torch.Generator().manual_seed(11))


@pytest.mark.parametrize("key", ["gpt2", "gpt_neox", "gpt_neox:sequential"])
def test_tlens_matches_hf_on_common_sites(tiny, key):
    hf = models.load(tiny[key], device="cpu")
    tl = models.load(tiny[key], backend="tlens", device="cpu")
    assert tl.family == "tlens" and tl.n_layers == hf.n_layers and tl.d_model == hf.d_model
    assert set(tl.sites) == set(hf.sites)  # GPT-2 and NeoX: every canonical site exists in both
    common = sorted(tl.sites)
    a, b = tl.capture(_ids(), common), hf.capture(_ids(), common)
    for name in common:
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=0, msg=name)
    torch.testing.assert_close(tl.forward(_ids()), hf.forward(_ids()), atol=1e-4, rtol=0)
    # replacement is spliced the same way in both backends
    shift = {"blocks.0.hook_mlp_out": lambda x: 0.3 * x, "blocks.1.hook_resid_pre": lambda x: x + 0.05}
    torch.testing.assert_close(tl.forward(_ids(), replace=shift), hf.forward(_ids(), replace=shift), atol=1e-4, rtol=0)
    assert tl.tokenizer is not None


def test_tlens_early_stop_and_errors(tiny):
    tl = models.load(tiny["gpt2"], backend="tlens", device="cpu")
    fired = []
    handle = tl.bridge.hook_dict["blocks.1.hook_resid_pre"].register_forward_hook(lambda *_: fired.append(1))
    try:
        tl.capture(_ids(), ["blocks.0.hook_resid_post"])
        assert fired == []
    finally:
        handle.remove()
    with pytest.raises(UnknownSiteError):
        tl.capture(_ids(), ["blocks.9.hook_resid_post"])

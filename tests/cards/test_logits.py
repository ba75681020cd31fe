"""Direct logit effects on hand cases, and the unembedding path of each tiny model family."""

from __future__ import annotations

import pytest
import torch

from universality.cards.logits import Unembedding, logit_effects
from universality.errors import ConfigError


def test_hand_case_with_layernorm_centring_and_scale():
    # vocab of 3 tokens reading coordinates 0, 1 and 2 of a 3-d residual
    W_U = torch.eye(3)
    d = torch.tensor([[3.0, 1.0, 2.0]])
    plain = logit_effects(d, Unembedding(W_U), k=1)
    assert plain[0][0] == [0] and plain[0][1] == pytest.approx([3.0])
    assert plain[0][2] == [1] and plain[0][3] == pytest.approx([1.0])
    # LayerNorm: centre (mean 2) then scale by gamma = (1, 4, 1): effects (1, -4, 0)
    ln = logit_effects(d, Unembedding(W_U, torch.tensor([1.0, 4.0, 1.0]), centred=True), k=1)
    assert ln[0][0] == [0] and ln[0][1] == pytest.approx([1.0])
    assert ln[0][2] == [1] and ln[0][3] == pytest.approx([-4.0])


def test_width_mismatch_is_refused():
    with pytest.raises(ConfigError, match="unembedding reads"):
        logit_effects(torch.zeros(2, 4), Unembedding(torch.zeros(5, 3)), k=2)


@pytest.mark.parametrize("family,centred", [("gpt2", True), ("gpt_neox", True), ("mamba", False)])
def test_unembedding_of_each_family(tmp_path, family, centred):
    import models
    from models.testing import make_tiny_model
    from models.unembedding import unembedding

    adapter = models.load(str(make_tiny_model(family, tmp_path / family)), device="cpu")
    u = unembedding(adapter)
    assert u is not None and u.centred is centred
    assert u.weight.shape == (adapter.model.config.vocab_size, adapter.d_model)
    assert u.norm_weight is not None and u.norm_weight.shape == (adapter.d_model,)
    # the direct effect of a direction is what the model's head computes from a normalised residual
    d = torch.randn(1, adapter.d_model)
    eff = logit_effects(d, u, k=3)[0]
    x = d - d.mean() if centred else d
    want = (x * u.norm_weight) @ u.weight.T
    assert eff[1] == pytest.approx(torch.topk(want, 3).values[0].tolist(), rel=1e-4, abs=1e-5)

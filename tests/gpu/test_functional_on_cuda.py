"""Functional tests on CUDA (skipped without it): batched ablation effects and causal links on a tiny
GPT-2 on the GPU equal the same computation on the CPU."""

from __future__ import annotations

import pytest
import torch

from universality.eval.ablation import ablation_effects
from universality.eval.links import LinkConfig, causal_links, component_attribution
from universality.sae import make_sae, sae_config

pytestmark = pytest.mark.gpu

L0, L1 = "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    import models
    from models.testing import make_tiny_model

    path = make_tiny_model("gpt2", tmp_path_factory.mktemp("gpu_links"))
    return models.load(path, device="cpu"), models.load(path, device="cuda")


def test_links_and_ablation_on_cuda_match_the_cpu(pair):
    cpu, gpu = pair
    s0 = make_sae(sae_config("topk", 64, 128, k=8), seed=3)
    s1 = make_sae(sae_config("topk", 64, 128, k=8), seed=4)
    ids = torch.randint(0, 300, (4, 32), generator=torch.Generator().manual_seed(0))
    want = causal_links(cpu, (L0, s0), {L1: s1}, ids, latents=range(12), cfg=LinkConfig(batch_features=4), progress=False)
    got = causal_links(gpu, (L0, s0.cuda()), {L1: s1.cuda()}, ids, latents=range(12), progress=False)
    torch.testing.assert_close(got.shares[L1], want.shares[L1], atol=1e-3, rtol=0)
    a = ablation_effects(cpu, s0, L0, range(12), ids, progress=False)
    b = ablation_effects(gpu, s0.cuda(), L0, range(12), ids, progress=False)
    torch.testing.assert_close(b, a, atol=1e-3, rtol=0)
    table = component_attribution(gpu, (L1, s1.cuda()), L0, [0, 1, 2], ids)
    assert table.loc[table["part"] == "rest", "contribution"].abs().max() < 1e-3

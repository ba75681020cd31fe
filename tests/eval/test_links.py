"""Causal links, weight-only flow and component attribution on a GPT-2 whose weights are set by hand.

The hand-built model (``planted``): d_model 64, attention outputs and layer 0's MLP output are zero,
position embeddings are zero, and token ``t`` embeds as ``4 e_(t mod 8)``. So the residual stream after
layer 0 holds exactly one of eight planted directions ``e_0..e_7``. Layer 1's MLP has one live hidden
unit that reads ``e_0`` (through ln_2) and writes ``2 e_8``: the one planted path, feature 0 at layer 0
-> feature 8 at layer 1. The dictionaries are set by hand too (ReLU, unit decoder rows on the planted
directions, no bias, so each code is exact): layer 0 has ``e_0..e_7``; layer 1 has ``e_0..e_8`` plus a dead latent ``e_20``.
True links: ``i -> i`` (the residual carries each direction on) and ``0 -> 8``.
"""

from __future__ import annotations

import sys

import pytest
import torch

from universality.errors import ConfigError
from universality.eval.links import (LinkConfig, causal_links, component_attribution, decoder_flow, edge_precision,
                                     flow_agreement)
from universality.sae import make_sae, sae_config

L0, L1 = "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"
D = 64


def _dictionary(directions: list[int]):
    sae = make_sae(sae_config("relu", D, len(directions), sparsity_coeff=1.0), seed=0)
    with torch.no_grad():
        W = torch.zeros(len(directions), D)
        W[torch.arange(len(directions)), torch.tensor(directions)] = 1.0
        sae.W_dec.copy_(W)
        sae.W_enc.copy_(W.T)
        sae.b_enc.zero_()  # exact codes: the decoder restores every planted direction fully
        sae.b_dec.zero_()
    return sae


@pytest.fixture(scope="module")
def planted(adapter, tmp_path_factory):
    from models.testing import make_tiny_model

    adapter = sys.modules["models"].load(make_tiny_model("gpt2", tmp_path_factory.mktemp("planted_gpt2")))
    m = adapter.model.transformer
    with torch.no_grad():
        m.wpe.weight.zero_()
        m.wte.weight.zero_()
        for t in range(m.wte.weight.shape[0]):
            m.wte.weight[t, t % 8] = 4.0
        for block in m.h:
            block.attn.c_proj.weight.zero_()
            block.attn.c_proj.bias.zero_()
            block.mlp.c_proj.weight.zero_()
            block.mlp.c_proj.bias.zero_()
        mlp = m.h[1].mlp
        mlp.c_fc.weight.zero_()
        mlp.c_fc.bias.fill_(-10.0)  # every hidden unit off ...
        mlp.c_fc.weight[0, 0] = 1.0  # ... but unit 0, which reads e_0 after ln_2
        mlp.c_fc.bias[0] = -3.0
        mlp.c_proj.weight[0, 8] = 2.0  # and writes 2 e_8
        m.h[1].ln_2.weight.fill_(1.0)
        m.h[1].ln_2.bias.zero_()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, m.wte.weight.shape[0], (4, 24), generator=g)
    return adapter, _dictionary(list(range(8))), _dictionary(list(range(9)) + [20]), ids


def test_links_recover_the_planted_path_and_nothing_else(planted):
    adapter, s0, s1, ids = planted
    graph = causal_links(adapter, (L0, s0), {L1: s1}, ids, cfg=LinkConfig(batch_features=3), progress=False)
    truth = {(i, i) for i in range(8)} | {(0, 8)}
    got = edge_precision(graph.edge_set(L1), truth)
    assert got["precision"] == 1.0 and got["recall"] == 1.0
    m = graph.shares[L1]
    assert m[0, 8].item() == pytest.approx(1.0, abs=1e-6)  # e_8 fires only through feature 0
    assert m[1:, 8].abs().max().item() < 1e-9  # no other planted feature reaches it
    assert m[:, 9].abs().max().item() == 0  # the dead latent has no links
    off = m[:, :8] - torch.diag(torch.diagonal(m[:, :8]))
    assert off.abs().max().item() < 1e-9


def test_blocks_of_latents_give_the_same_shares_as_one_at_a_time(planted):
    adapter, s0, s1, ids = planted
    one = causal_links(adapter, (L0, s0), {L1: s1}, ids, cfg=LinkConfig(batch_features=1), progress=False)
    many = causal_links(adapter, (L0, s0), {L1: s1}, ids, cfg=LinkConfig(batch_features=5), progress=False)
    assert one.latents == many.latents == tuple(range(8))
    torch.testing.assert_close(one.shares[L1], many.shares[L1], atol=1e-9, rtol=0)


def test_weight_only_flow_agrees_with_the_causal_graph(planted):
    adapter, s0, s1, ids = planted
    graph = causal_links(adapter, (L0, s0), {L1: s1}, ids, progress=False)
    cos = decoder_flow(s0, s1)
    assert cos.shape == (8, 10)
    agree = flow_agreement(graph, L1, cos)
    # source 0 has two equally strong targets (itself and e_8): the other seven agree for sure
    assert agree["value"] >= 7 / 8 and agree["n_sources"] == 8
    assert agree["floor"] == pytest.approx(1 / 9)  # nine live targets; the dead latent is not a candidate


def test_attribution_names_the_mlp_as_the_writer_of_the_new_feature(planted):
    adapter, s0, s1, ids = planted
    table = component_attribution(adapter, (L1, s1), L0, [8, 3], ids)
    parts = set(table["part"])
    assert parts == {"base", "blocks.1.hook_attn_out", "blocks.1.hook_mlp_out", "bias", "rest"}
    new = table[table["latent"] == 8].set_index("part")
    assert new.loc["blocks.1.hook_mlp_out", "share"] == pytest.approx(1.0, abs=1e-6)  # all of it
    assert abs(new.loc["base", "share"]) < 1e-6 and abs(new.loc["blocks.1.hook_attn_out", "share"]) < 1e-6
    old = table[table["latent"] == 3].set_index("part")
    assert old.loc["base", "share"] == pytest.approx(1.0, abs=1e-6) and abs(old.loc["blocks.1.hook_mlp_out", "share"]) < 1e-6
    assert table["share"].groupby(table["latent"]).sum().sub(1).abs().max() < 1e-6  # the parts add up
    assert table[table["part"] == "rest"]["contribution"].abs().max() < 1e-4


def test_links_on_a_random_model_are_bounded_and_batched_consistently(adapter):
    s0 = make_sae(sae_config("topk", D, 32, k=4), seed=11)
    s1 = make_sae(sae_config("topk", D, 48, k=4), seed=12)
    ids = torch.randint(0, 300, (3, 16), generator=torch.Generator().manual_seed(1))
    targets = {"blocks.1.hook_attn_out": s1, L1: s1}
    one = causal_links(adapter, (L0, s0), targets, ids, latents=range(6), cfg=LinkConfig(batch_features=1), progress=False)
    four = causal_links(adapter, (L0, s0), targets, ids, latents=range(6), cfg=LinkConfig(batch_features=4), progress=False)
    for site in targets:
        torch.testing.assert_close(one.shares[site], four.shares[site], atol=1e-6, rtol=0)
        assert torch.isfinite(one.shares[site]).all() and one.shares[site].max() <= 1 + 1e-9  # codes are >= 0
    assert (one.edges["share"].abs() >= one.config.min_share).all()
    with pytest.raises(ConfigError, match="does not come after"):
        causal_links(adapter, (L1, s1), {L0: s0}, ids, progress=False)


def test_bad_arguments_are_one_line_errors(planted):
    adapter, s0, s1, ids = planted
    with pytest.raises(ConfigError, match="batch_features"):
        LinkConfig(batch_features=0)
    with pytest.raises(ConfigError, match="outside"):
        causal_links(adapter, (L0, s0), {L1: s1}, ids, latents=[99], progress=False)
    with pytest.raises(ConfigError, match="residual"):
        component_attribution(adapter, (L1, s1), "blocks.1.hook_mlp_out", [0], ids)


"""Card sets end to end on dictionaries with known answers: a permuted copy's pair cards correlate
exactly, a latent only one side has is listed unmatched, the JSON round trip is lossless and the page
is written with every group anchor."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from analysis.cards_page import PAGE_SIZE, group_anchor, write_card_page
from universality.cards.api import dictionary_card_set, match_card_set
from universality.cards.card import CardSet
from universality.cards.logits import Unembedding
from universality.cards.stats import CardOptions
from universality.cards.text import tensor_chunks, token_decoder
from universality.errors import ArtifactError


class Linear:
    """A ReLU dictionary with explicit encoder and decoder (enough for cards)."""

    def __init__(self, W_enc: torch.Tensor, W_dec: torch.Tensor, meta: dict | None = None) -> None:
        self.W_enc, self.W_dec, self.meta = W_enc, W_dec, dict(meta or {})
        self.d_in, self.d_sae = W_dec.shape[1], W_dec.shape[0]

    def parameters(self):
        return iter((self.W_enc,))

    def encode(self, x):
        z = x @ self.W_enc
        return z * (z > 1e-4)  # float noise of an exact inverse is not a firing


def _world(T=4000, d=16, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    codes = torch.rand(T, n, generator=g) * (torch.rand(T, n, generator=g) < 0.15)
    x = codes @ W
    tok = torch.randint(0, 30, (T,), generator=g)
    ctx = torch.arange(T) // 40
    return x, tok, ctx, W


def test_permuted_copy_gives_exact_pairs_and_the_extra_latent_is_unmatched(tmp_path):
    x, tok, ctx, W = _world()
    n = W.shape[0]
    pinv = torch.linalg.pinv(W)  # (d, n): codes back from x exactly (W has full row rank)
    a = Linear(pinv[:, : n - 1], W[: n - 1], {"model": "m", "site": "blocks.0.hook_resid_post"})
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    b = Linear(pinv[:, perm], W[perm], {"model": "m", "site": "blocks.0.hook_resid_post"})
    inv = torch.argsort(perm)
    pairs = np.array([[i, int(inv[i])] for i in range(n - 1)])
    chunks = ((xa, xa, t, c) for xa, t, c in tensor_chunks(x, tok, ctx, max_rows=500))
    cs = match_card_set(a, b, pairs, np.ones(n - 1), chunks, token_decoder(None), {"source": "synthetic"},
                        CardOptions(n_top=4), n_shown=5, residual=(True, True),
                        unembed=(Unembedding(weight=torch.randn(30, 16)), Unembedding(weight=torch.randn(30, 16))))
    assert len(cs.pairs) == 10  # 5 best + 5 worst of 11, no pair twice
    for p in cs.pairs:
        assert p.correlation == pytest.approx(1.0, abs=1e-4)
        assert p.cosine == pytest.approx(1.0, abs=1e-5)  # same model and site: a shared basis
        assert p.only_a == () and p.only_b == ()
        assert p.fires_both == p.fires_a == p.fires_b
        assert p.both[0].other == pytest.approx(p.both[0].values, abs=1e-3)
    assert cs.unmatched_a == ()
    assert cs.unmatched_b == (int(inv[n - 1]),)
    assert cs.groups["unmatched in B"] == (f"b:{int(inv[n - 1])}",)
    card = cs.card(int(inv[n - 1]), "b")
    assert len(card.promoted) == 8 and card.promoted[0][1] >= card.promoted[-1][1]
    # JSON round trip
    path = cs.save(tmp_path / "cards.json")
    back = CardSet.load(path)
    assert back.to_dict() == cs.to_dict()
    page = write_card_page([("permuted copy", cs)], tmp_path / "cards.html")
    html = page.read_text()
    for g in cs.groups:
        assert f'id="{group_anchor(0, g)}"' in html
    assert "</script" not in html.split('id="card-data">')[1].split("</script>")[0]


def test_cross_model_pairs_show_no_cosine():
    x, tok, ctx, W = _world(T=800)
    pinv = torch.linalg.pinv(W)
    a = Linear(pinv, W, {"model": "m1", "site": "blocks.0.hook_resid_post"})
    b = Linear(pinv, W, {"model": "m2", "site": "blocks.0.hook_resid_post"})
    chunks = ((xa, xa, t, c) for xa, t, c in tensor_chunks(x, tok, ctx))
    cs = match_card_set(a, b, np.array([[0, 0]]), np.array([0.9]), chunks, token_decoder(None), {}, n_shown=2)
    assert cs.pairs[0].cosine is None and cs.meta["basis"] == "different"


def test_dictionary_cards_and_bad_groups(tmp_path):
    x, tok, ctx, W = _world(T=1500)
    d = Linear(torch.linalg.pinv(W), W)
    cs, stats = dictionary_card_set(d, tensor_chunks(x, tok, ctx), token_decoder(None), {"source": "synthetic"})
    assert [c.latent for c in cs.cards_a] == [int(i) for i in np.nonzero(stats.fires > 0)[0]]
    assert cs.text["n_tokens"] == 1500
    with pytest.raises(ArtifactError, match="no card"):
        CardSet(a={}, text={}, cards_a=cs.cards_a, groups={"x": ("a:999",)})
    big = CardSet(a=cs.a, text=cs.text, cards_a=cs.cards_a * 30)
    html = write_card_page([("many", big)], tmp_path / "p.html").read_text()
    assert re.search(r'"page_size":%d' % PAGE_SIZE, html)

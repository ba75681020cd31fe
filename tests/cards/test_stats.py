"""Card statistics on codes with known answers: exact top-k and windows, the token identity share of a
token detector versus a context feature, quantile bands, histogram, chunking by whole contexts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from universality.cards.build import collect, feature_cards
from universality.cards.stats import CardCollector, CardOptions
from universality.cards.text import context_bounds, tensor_chunks, token_decoder
from universality.errors import ConfigError


class Identity:
    """A 'dictionary' whose codes are its inputs (ReLU'd): the test controls every activation."""

    def __init__(self, n: int) -> None:
        self.d_sae = n

    def parameters(self):
        return iter(())

    def encode(self, x):
        return x.clamp_min(0)


def _text(T: int = 3000, ctx_len: int = 50, vocab: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tok = torch.randint(0, vocab, (T,), generator=g)
    ctx = torch.arange(T) // ctx_len
    return tok, ctx, g


def test_top_examples_and_windows_are_exact_across_chunks():
    tok, ctx, g = _text()
    z = torch.rand(len(tok), 6, generator=g) * (torch.rand(len(tok), 6, generator=g) < 0.2)
    opts = CardOptions(n_top=5, before=3, after=2)
    stats = collect(Identity(6), tensor_chunks(z, tok, ctx, max_rows=400), opts)
    for f in range(6):
        want = torch.argsort(z[:, f], descending=True)[:5].tolist()
        slots = stats.top.entries(f)
        got = [int(stats.top.rows[s, f]) for s in slots]
        assert got == want
        for s, r in zip(slots, got):
            w = stats.top.values[0, s, f]
            toks = stats.top.tokens[s, f]
            for j, off in enumerate(range(-3, 3)):
                rr = r + off
                same = 0 <= rr < len(tok) and int(ctx[rr]) == int(ctx[r])
                assert float(w[j]) == pytest.approx(float(z[rr, f]) if same else 0.0)
                assert int(toks[j]) == (int(tok[rr]) if same else -1)
    assert stats.fires.tolist() == (z > 0).sum(0).tolist()
    assert stats.hist_counts.sum(1).tolist() == stats.fires.tolist()
    assert np.allclose(stats.max_value, z.max(0).values.numpy())


def test_token_identity_separates_a_token_detector_from_a_context_feature():
    tok, ctx, g = _text(T=6000)
    z = torch.zeros(len(tok), 3)
    z[:, 0] = (tok == 7).float() * 2.0                       # fires on one token, wherever it is
    z[:, 1] = (torch.rand(len(tok), generator=g) < 0.1).float() * (1 + torch.rand(len(tok), generator=g))  # on no token in particular
    # latent 2 fires on token 3 only in contexts with an even index: token and context both matter
    z[:, 2] = ((tok == 3) & (ctx % 4 < 2)).float()
    stats = collect(Identity(3), tensor_chunks(z, tok, ctx), CardOptions())
    ti = stats.token_identity
    assert ti[0] > 0.99
    assert ti[1] < 0.05
    assert 0.2 < ti[2] < 0.8
    assert stats.top_tokens[0][0] == (7, pytest.approx(1.0))


def test_never_firing_latent_has_no_identity_share_and_no_card_by_default():
    tok, ctx, _ = _text(T=500)
    z = torch.zeros(len(tok), 2)
    z[tok == 1, 0] = 1.0
    stats = collect(Identity(2), tensor_chunks(z, tok, ctx), CardOptions())
    assert np.isnan(stats.token_identity[1])
    cards = feature_cards(stats, token_decoder(None))
    assert [c.latent for c in cards] == [0]
    assert cards[0].top[0].tokens[cards[0].top[0].focus] == "#1"


def test_quantile_bands_sample_the_whole_distribution():
    T = 20000
    tok, ctx, g = _text(T=T)
    z = torch.rand(T, 1, generator=g)  # fires everywhere, uniform on [0, 1)
    opts = CardOptions(reservoir=400, n_bands=4, n_band=3)
    stats = collect(Identity(1), tensor_chunks(z, tok, ctx), opts)
    (card,) = feature_cards(stats, token_decoder(None))
    assert len(card.bands) == 4
    his = [b.hi for b in card.bands]
    assert his == sorted(his)
    assert card.bands[0].hi == pytest.approx(0.25, abs=0.08)
    assert card.bands[1].hi == pytest.approx(0.5, abs=0.08)
    assert sum(b.share for b in card.bands) == pytest.approx(1.0)
    for b in card.bands:
        assert len(b.examples) == 3
        assert all(b.lo <= e.value <= b.hi for e in b.examples)
    # the top examples are the maxima, the bands reach far below them
    assert card.top[0].value == pytest.approx(float(z.max()), abs=1e-4)
    assert card.bands[0].examples[0].value < 0.1


def test_buffers_do_not_grow_with_the_text():
    opts = CardOptions(n_top=4, reservoir=12)
    col = CardCollector(8, opts)
    for seed in range(5):
        tok, ctx, g = _text(T=1000, seed=seed)
        col.update(torch.rand(1000, 8, generator=g), tok, ctx + 1000 * seed)
    assert col.top.tokens.shape == (4, 8, opts.before + opts.after + 1)
    assert col.sample.keys.shape == (12, 8)
    assert col.finish().n_tokens == 5000


def test_chunks_keep_contexts_whole():
    ctx = torch.tensor([0] * 7 + [1] * 3 + [2] * 9 + [3] * 2)
    bounds = context_bounds(ctx, max_rows=8)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(ctx)
    for lo, hi in bounds:
        assert lo == 0 or ctx[lo] != ctx[lo - 1]
        assert hi == len(ctx) or ctx[hi] != ctx[hi - 1]


def test_bad_input_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="reservoir"):
        CardOptions(reservoir=2, n_bands=4, n_band=3)
    col = CardCollector(4)
    with pytest.raises(ConfigError, match="4 latents"):
        col.update(torch.zeros(3, 5), torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long))


def test_identity_sums_stop_at_their_cap_and_say_on_how_many_tokens():
    tok, ctx, g = _text(T=4000, vocab=200)
    z = torch.rand(len(tok), 8, generator=g) * (torch.rand(len(tok), 8, generator=g) < 0.5)
    capped = collect(Identity(8), tensor_chunks(z, tok, ctx, max_rows=500), CardOptions(identity_pairs=600))
    full = collect(Identity(8), tensor_chunks(z, tok, ctx, max_rows=500), CardOptions())
    assert full.identity_tokens == 4000
    assert 0 < capped.identity_tokens < 4000 and capped.identity_tokens % 500 == 0
    # everything else still reads the whole text
    assert capped.fires.tolist() == full.fires.tolist() and capped.n_tokens == 4000
    # top-token shares are shares of the mass the sums read
    for f in range(8):
        assert sum(s for _, s in capped.top_tokens[f]) <= 1.0 + 1e-9

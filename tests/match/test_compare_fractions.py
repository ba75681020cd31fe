"""The compare table's feature-level shared fractions on a planted pair whose answer is known: ``a`` is a
2x-wide dictionary (the planted features, duplicates of half of them and dead latents), ``b`` the planted
features of its own world; half of the features are shared."""

from __future__ import annotations

import pytest
import torch

from universality.match.compare import compare
from universality.match.worlds import PairedWorldConfig, make_paired_world


class Toy(torch.nn.Module):
    """A thresholded-ReLU dictionary on given encoder/decoder rows."""

    def __init__(self, W_dec: torch.Tensor, W_enc: torch.Tensor) -> None:
        super().__init__()
        self.W_dec = torch.nn.Parameter(W_dec.clone())
        self.W_enc = torch.nn.Parameter(W_enc.clone())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.W_enc - 0.3)


@pytest.fixture(scope="module")
def pair():
    w = make_paired_world(PairedWorldConfig(n_features=32, d_a=24, d_b=24, shared_fraction=0.5, rotate=False, seed=3))
    s = w.sample(4000)
    g = torch.Generator().manual_seed(11)
    dup = w.D_a[:16] * 1.0
    dead_dec = torch.nn.functional.normalize(torch.randn(16, 24, generator=g), dim=1)
    W_dec = torch.cat([w.D_a, dup, dead_dec])
    W_enc = torch.cat([w.D_a, dup, torch.zeros(16, 24)]).T  # dead latents: zero encoder, never above 0.3
    a = Toy(W_dec, W_enc)
    b = Toy(w.D_b, w.D_b.T)
    sky = Toy(W_dec + 0.02 * torch.randn(W_dec.shape, generator=g), W_enc)
    return a, b, sky, (s.x_a, s.x_b), s.token_ids


def _row(table, metric, direction="a->b"):
    r = table[(table.metric == metric) & (table.direction == direction)]
    assert len(r) == 1, (metric, direction)
    return r.iloc[0]


def test_feature_level_reading_counts_features_not_latents(pair):
    a, b, _, x, ids = pair
    table = compare(a, b, activations=x, token_ids=ids, n_perm=0, n_boot=0)
    per_latent = _row(table, "shared_fraction_corr@0.5")
    features = _row(table, "shared_fraction_features@0.5")
    assert per_latent.value == pytest.approx(16 / 64)  # 16 shared of 64 latents: dead and duplicates dilute
    assert features.value == pytest.approx(16 / 32)  # 16 shared of 32 features: the planted truth
    assert _row(table, "shared_fraction_features@0.5", "b->a").value == pytest.approx(16 / 32)
    assert "a: 64 latents, 16 dead, 16 duplicates -> 32 features" in features.note
    assert "headline shared fraction" in features.note
    assert features.floor < 0.1  # b's tokens shuffled: nothing is shared
    missing = _row(table, "shared_fraction_ot@0.5")
    assert missing.value != missing.value and "needs a second seed of a" in missing.note


def test_with_a_skyline_the_seed_stable_reading_is_the_headline(pair):
    a, b, sky, x, ids = pair
    table = compare(a, b, activations=x, token_ids=ids, skyline=sky, n_perm=0, n_boot=0)
    stable = _row(table, "shared_fraction_seed_stable@0.5")
    assert stable.value == pytest.approx(0.5)
    assert "headline shared fraction" in stable.note
    assert "headline" not in _row(table, "shared_fraction_features@0.5").note
    ot = _row(table, "shared_fraction_ot@0.5")
    assert 0.2 < ot.value < 0.8 and ot.floor < 0.1
    assert "converged in all" in ot.note

"""Slow tier: SAEs trained on paired worlds recover the planted shared fraction from activations."""

import pytest
import torch

from universality.match import encode_codes, match
from universality.match.baselines import permutation_test, shuffle_tokens
from universality.match.worlds import PairedSource, PairedWorldConfig, make_paired_world

FRACTIONS = (0.0, 0.25, 0.5, 0.75)


@pytest.fixture(scope="module")
def trained():
    from universality.sae import sae_config
    from universality.train import TrainConfig, train_saes

    worlds = {f"f{int(f * 100)}": make_paired_world(PairedWorldConfig(
        n_features=48, d_a=24, d_b=32, shared_fraction=f, mean_active=3, decay=0.0, seed=1)) for f in FRACTIONS}
    cfgs = []
    for name, w in worlds.items():
        for side, d in (("a", w.cfg.d_a), ("b", w.cfg.d_b)):
            cfgs.append(TrainConfig(sae_config("topk", d_in=d, d_sae=48, k=4), site=f"{name}/{side}", seed=0,
                                    lr=1e-2, name=f"{name}/{side}"))
    saes = train_saes(PairedSource(worlds, 2048, seed=0, n_batches=400), cfgs, steps=400, progress=False)
    return worlds, saes


@pytest.mark.slow
@pytest.mark.parametrize("fraction", FRACTIONS)
def test_activation_matching_recovers_shared_fraction(trained, fraction):
    worlds, saes = trained
    name = f"f{int(fraction * 100)}"
    w = worlds[name]
    s = w.sample(6000, seed=99)  # held-out tokens, the same for both worlds
    a, b = saes[f"{name}/a"], saes[f"{name}/b"]
    # the worlds live in different bases and widths: decoder matching is impossible, activations work
    res = match(a, b, view="activations", activations=(s.x_a, s.x_b), token_ids=s.token_ids, device="cpu")
    # correlation 0.4: SAE latents of a shared feature are often mixtures whose partner correlates
    # between 0.4 and 0.5 (measured: 0.667 at 0.4 and 0.646 at 0.5 for a true 0.75; the null stays 0)
    estimate = res.fraction_above(0.4, a.W_dec.shape[0])
    assert estimate == pytest.approx(fraction, abs=0.1)
    if fraction == 0.0:
        codes_a, codes_b = encode_codes(a, s.x_a, s.token_ids), encode_codes(b, s.x_b, s.token_ids)
        stat = lambda x, y: match(x, y, view="activations", device="cpu").fraction_above(0.5, x.n)  # noqa: E731
        pt = permutation_test(stat, codes_a, codes_b, lambda c, r: shuffle_tokens(c, r), n_perm=9)
        assert pt["p_value"] > 0.05  # two independent worlds: nothing significant
    else:
        truth = {tuple(p) for p in w.shared_pairs.tolist()}
        # matched pairs above the platform's default threshold 0.5 are true shared features (via each SAE
        # latent's planted feature); pairs between 0.4 and 0.5 include mixture latents whose best planted
        # feature is another one (measured for 0.25 with independent SAE starts: 10 of 12 right above 0.4,
        # 10 of 10 above 0.5)
        la = (torch.nn.functional.normalize(a.W_dec.detach(), dim=1) @ w.D_a.T).argmax(1)
        lb = (torch.nn.functional.normalize(b.W_dec.detach(), dim=1) @ w.D_b.T).argmax(1)
        kept = res.pairs[res.scores > 0.5]
        correct = [(int(la[i]), int(lb[j])) in truth for i, j in kept]
        assert sum(correct) / max(len(correct), 1) > 0.9

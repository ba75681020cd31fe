"""Each remedy revives latents in a run built to kill them; without a remedy they stay dead.

The run is built to kill: after initialisation, half of the latents get a zero encoder column
and encoder bias -1, so their pre-activation is -1 on every input and the reconstruction loss
sends them no gradient.
"""

from __future__ import annotations

import pytest
import torch

from universality import synthetic as syn
from universality.sae import sae_config
from universality.train import RunConfig, TrainConfig, Trainer
from universality.train.trainer import as_site_batch

D_IN, N_FEAT, D_SAE, BATCH = 16, 32, 32, 128
KILLED = slice(0, D_SAE // 2)


def killed_run(arch_kw: dict, remedy: str, steps: int = 120) -> float:
    """Fraction of the killed latents that fired in the last window of the run."""
    probs = syn.feature_probabilities(N_FEAT, 3.0)
    D = syn.planted_dictionary(N_FEAT, D_IN)
    cfg = TrainConfig(sae_config(d_in=D_IN, d_sae=D_SAE, **arch_kw), lr=1e-2, remedy=remedy)
    run = RunConfig(steps=steps, dead_window=2 * BATCH, resample_every=20)
    tr = Trainer([cfg], run)
    tr.initialise(as_site_batch(next(iter(syn.PlantedSource(D, probs, BATCH)))))
    sae = tr.saes[cfg.key]
    with torch.no_grad():
        sae.W_enc[:, KILLED] = 0.0
        sae.b_enc[KILLED] = -1.0
    tr.fit(syn.PlantedSource(D, probs, BATCH), progress=False)
    window = 10 * BATCH
    alive = tr.trackers[cfg.key].tokens_since_fired < window
    return float(alive[KILLED].double().mean())


def test_without_remedy_killed_latents_stay_dead():
    assert killed_run(dict(architecture="topk", k=3), "none", steps=40) == 0.0
    assert killed_run(dict(architecture="relu", sparsity_coeff=0.3), "none", steps=40) == 0.0


@pytest.mark.parametrize(
    "arch_kw, remedy, at_least",
    [
        (dict(architecture="topk", k=3), "auxk", 0.4),  # measured 0.625
        (dict(architecture="relu", sparsity_coeff=0.3), "resample", 0.9),  # measured 1.0
        (dict(architecture="relu", sparsity_coeff=0.3), "ghost", 0.5),  # measured 0.81
    ],
)
def test_remedy_revives_killed_latents(arch_kw, remedy, at_least):
    assert killed_run(arch_kw, remedy) >= at_least

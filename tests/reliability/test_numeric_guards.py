"""A NaN or Inf in the activations or the loss stops training, names the step, and leaves the last
good checkpoint on disk untouched (same bytes, same file) and usable for a resume."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from universality import synthetic as syn
from universality.errors import TrainingDiverged
from universality.io import is_temp_name, sha256_file
from universality.sae import sae_config
from universality.train import RunConfig, TrainConfig, Trainer
from universality.train import checkpoint as ckpt

D_IN, N_FEAT, STEPS, EVERY = 12, 24, 20, 2


def configs():
    return [
        TrainConfig(sae_config("topk", D_IN, 24, k=3), lr=3e-3, warmup_steps=2),
        TrainConfig(sae_config("relu", D_IN, 24, sparsity_coeff=0.3), lr=3e-3, seed=1, remedy="resample"),
    ]


def run(root: Path) -> RunConfig:
    return RunConfig(steps=STEPS, dead_window=128, resample_every=3, checkpoint_dir=str(root), checkpoint_every=EVERY)


def clean(n_batches=None):
    return syn.PlantedSource(syn.planted_dictionary(N_FEAT, D_IN), syn.feature_probabilities(N_FEAT, 3.0), 64,
                             n_batches=n_batches)


class Poisoned:
    """The clean source, with batch ``bad_at`` replaced: every value ``value``, or one entry."""

    def __init__(self, bad_at: int, value: float, whole: bool = True) -> None:
        self.inner, self.bad_at, self.value, self.whole = clean(), bad_at, value, whole

    def __iter__(self):
        for i, x in enumerate(self.inner):
            if i == self.bad_at:
                x = torch.full_like(x, self.value) if self.whole else x.index_put((torch.tensor([7]), torch.tensor([3])), torch.tensor(self.value))
            yield x

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """``name -> (sha256, inode, mtime_ns)`` of each checkpoint file."""
    folder = root / "checkpoint"
    return {p.name: (sha256_file(p), p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


CASES = [
    pytest.param(math.inf, True, r"activations of site 'default' contain NaN/Inf at step 5", id="inf-activations"),
    pytest.param(math.nan, False, r"activations of site 'default' contain NaN/Inf at step 5", id="one-nan-activation"),
    pytest.param(3e38, True, r"loss of default/topk-24-s0 became (inf|nan) at step 5", id="overflowing-loss"),
]


@pytest.mark.parametrize("value, whole, message", CASES)
def test_divergence_names_the_step_and_keeps_the_last_good_checkpoint_untouched(tmp_path, monkeypatch, value, whole, message):
    written: list[tuple[int, dict]] = []
    real_write = ckpt.write_checkpoint

    def recording_write(root, tensors, doc):
        folder = real_write(root, tensors, doc)
        written.append((doc["step"], snapshot(Path(root))))
        return folder

    monkeypatch.setattr(ckpt, "write_checkpoint", recording_write)
    with pytest.raises(TrainingDiverged, match=message) as err:
        Trainer(configs(), run(tmp_path / "ck")).fit(Poisoned(5, value, whole), progress=False)
    assert "the last good checkpoint is kept" in str(err.value) and "\n" not in str(err.value)

    # the last checkpoint written is the one at step 4, and nothing touched it afterwards
    assert [s for s, _ in written] == [2, 4]
    assert snapshot(tmp_path / "ck") == written[-1][1]
    assert not [p for p in (tmp_path / "ck").iterdir() if is_temp_name(p.name)]
    tensors, doc = ckpt.read_checkpoint(tmp_path / "ck")  # passes its checksum
    assert doc["step"] == 4 and doc["source_state"]["next_batch"] == 4
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())

    # it is exactly what a clean run writes after 4 steps (bitwise: same file digest)
    monkeypatch.setattr(ckpt, "write_checkpoint", real_write)
    Trainer(configs(), run(tmp_path / "clean4")).fit(clean(n_batches=4), progress=False)
    assert sha256_file(tmp_path / "clean4" / "checkpoint" / "state.safetensors") == written[-1][1]["state.safetensors"][0]

    # and a resume from it on clean data ends where an uninterrupted clean run ends
    resumed = Trainer(configs(), run(tmp_path / "ck"))
    resumed.fit(clean(), progress=False)
    full = Trainer(configs(), RunConfig(steps=STEPS, dead_window=128, resample_every=3))
    full.fit(clean(), progress=False)
    assert resumed.step == full.step == STEPS
    for key in full.keys:
        for name, value_ in full.saes[key].state_dict().items():
            assert torch.equal(value_, resumed.saes[key].state_dict()[name]), (key, name)


def test_divergence_before_the_first_checkpoint_writes_nothing(tmp_path):
    with pytest.raises(TrainingDiverged, match="at step 1"):
        Trainer(configs(), run(tmp_path / "ck")).fit(Poisoned(1, math.nan), progress=False)
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())


def test_non_finite_first_batch_stops_at_step_0(tmp_path):
    with pytest.raises(TrainingDiverged, match="at step 0"):
        Trainer(configs(), run(tmp_path / "ck")).fit(Poisoned(0, -math.inf), progress=False)
    assert not ckpt.has_checkpoint(tmp_path / "ck")
    assert os.listdir(tmp_path) in ([], ["ck"])

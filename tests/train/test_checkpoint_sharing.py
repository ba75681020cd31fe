"""Two trainings that share one ``checkpoint_dir``: the second is refused with a one-line error and
the first keeps (and resumes from) its own checkpoint; a lock refuses a second process."""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from universality import synthetic as syn
from universality.errors import ArtifactError, ConfigError, DataError, UniversalityError
from universality.sae import sae_config
from universality.train import RunConfig, TrainConfig, Trainer
from universality.train import checkpoint as ckpt
from universality.train.checkpoint import LOCK_NAME, checkpoint_lock, read_checkpoint

D_IN, N_FEAT = 16, 32
REPO = Path(__file__).resolve().parents[2]


def _source(n_batches: int | None = None) -> syn.PlantedSource:
    probs = syn.feature_probabilities(N_FEAT, 3.0)
    return syn.PlantedSource(syn.planted_dictionary(N_FEAT, D_IN), probs, 64, seed=0, n_batches=n_batches)


def _configs(seed: int) -> list[TrainConfig]:
    return [TrainConfig(sae_config("topk", D_IN, 32, k=3), seed=seed, lr=3e-3)]


def _run(root: Path, steps: int = 12, every: int = 2) -> RunConfig:
    return RunConfig(steps=steps, dead_window=256, checkpoint_dir=str(root), checkpoint_every=every)


def _digest(root: Path) -> dict[str, str]:
    folder = root / "checkpoint"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "; " in text, text
    return text


class _CallsAt:
    """A source that runs ``action()`` once, before yielding batch number ``at`` of ``inner``."""

    def __init__(self, inner, at: int, action) -> None:
        self.inner, self.at, self.action = inner, at, action
        self.outcome: BaseException | str | None = None

    def __iter__(self):
        for i, batch in enumerate(self.inner):
            if i == self.at:
                try:
                    self.action()
                    self.outcome = "ran"
                except UniversalityError as exc:
                    self.outcome = exc
            yield batch

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def _assert_same_weights(a: Trainer, b: Trainer) -> None:
    for key in a.keys:
        for name, value in a.saes[key].state_dict().items():
            assert torch.equal(value, b.saes[key].state_dict()[name]), (key, name)


def test_second_run_on_a_used_checkpoint_dir_is_refused_and_the_first_resumes(tmp_path):
    root = tmp_path / "ck"
    Trainer(_configs(0), _run(root)).fit(_source(n_batches=6), progress=False)  # "killed" at step 6
    before = _digest(root)
    with pytest.raises(ConfigError) as info:
        Trainer(_configs(1), _run(root)).fit(_source(), progress=False)
    text = _one_line(info.value)
    assert "other configs" in text and "own checkpoint_dir" in text and "s0" in text
    assert _digest(root) == before  # seed 0's resumable state is untouched
    resumed = Trainer(_configs(0), _run(root))
    resumed.fit(_source(), progress=False)
    straight = Trainer(_configs(0), RunConfig(steps=12, dead_window=256))
    straight.fit(_source(), progress=False)
    assert resumed.step == 12
    _assert_same_weights(straight, resumed)


def test_a_run_started_while_another_trains_on_the_folder_is_refused(tmp_path):
    root = tmp_path / "ck"
    second = Trainer(_configs(1), _run(root))
    source = _CallsAt(_source(n_batches=6), 1, lambda: second.fit(_source(), progress=False))  # before any checkpoint
    first = Trainer(_configs(0), _run(root))
    first.fit(source, progress=False)
    assert isinstance(source.outcome, ArtifactError), source.outcome
    assert "in use by another training run" in _one_line(source.outcome)
    assert second.step == 0  # refused before it trained
    _, doc = read_checkpoint(root)
    assert doc["keys"] == first.keys and doc["step"] == 6
    resumed = Trainer(_configs(0), _run(root))
    resumed.fit(_source(), progress=False)  # the lock was released and seed 0 resumes
    assert resumed.step == 12
    # the refused run trains once the folder is free (with its own folder)
    Trainer(_configs(1), _run(tmp_path / "ck1")).fit(_source(), progress=False)


def test_without_a_lock_a_run_never_replaces_another_runs_checkpoint(tmp_path, monkeypatch):
    """Where locks do not work (some network filesystems), writing still checks the owner."""
    monkeypatch.setattr(ckpt, "checkpoint_lock", lambda root: contextlib.nullcontext())
    root = tmp_path / "ck"
    second = Trainer(_configs(1), _run(root, steps=4))
    source = _CallsAt(_source(), 1, lambda: second.fit(_source(), progress=False))
    first = Trainer(_configs(0), _run(root))
    with pytest.raises(ConfigError) as info:
        first.fit(source, progress=False)  # seed 1 wrote its checkpoint meanwhile
    assert source.outcome == "ran"
    assert "other configs" in _one_line(info.value)
    _, doc = read_checkpoint(root)
    assert doc["keys"] == second.keys and doc["step"] == 4  # seed 1's checkpoint is intact


def test_the_lock_file_exists_only_while_a_run_trains(tmp_path):
    from universality.io import is_temp_name

    root = tmp_path / "ck"
    during: list[list[str]] = []
    source = _CallsAt(_source(), 3, lambda: during.append(sorted(p.name for p in root.iterdir())))
    Trainer(_configs(0), _run(root, steps=6)).fit(source, progress=False)
    assert during == [sorted(["checkpoint", LOCK_NAME])]
    assert is_temp_name(LOCK_NAME)  # skipped by checksums and by tools that list an artifact's files
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint"]


def test_a_lock_file_left_by_a_killed_run_is_taken_over(tmp_path):
    root = tmp_path / "ck"
    root.mkdir()
    (root / LOCK_NAME).write_text("pid 4000000 on gone\n")  # no process holds its lock
    Trainer(_configs(0), _run(root, steps=2)).fit(_source(), progress=False)
    assert read_checkpoint(root)[1]["step"] == 2 and not (root / LOCK_NAME).exists()


def test_a_run_that_writes_nothing_leaves_no_folder(tmp_path):
    root = tmp_path / "ck"
    with pytest.raises(DataError, match="width"):
        Trainer(_configs(0), _run(root, steps=2)).fit([torch.zeros(4, D_IN + 1)], progress=False)
    assert not root.exists()


_HOLDER = textwrap.dedent("""
    import sys
    from universality.train.checkpoint import checkpoint_lock
    with checkpoint_lock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.readline()
""")


def test_a_second_process_is_refused_while_the_lock_is_held(tmp_path):
    root = tmp_path / "ck"
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ArtifactError) as info:
            Trainer(_configs(0), _run(root, steps=2)).fit(_source(), progress=False)
        assert f"pid {proc.pid}" in _one_line(info.value)
        assert not (root / "checkpoint").exists()
    finally:
        proc.communicate("\n", timeout=60)
    assert proc.returncode == 0
    with checkpoint_lock(root):  # released when the holder exited
        pass
    Trainer(_configs(0), _run(root, steps=2)).fit(_source(), progress=False)
    assert read_checkpoint(root)[1]["step"] == 2

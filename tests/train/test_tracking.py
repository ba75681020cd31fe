"""Optional experiment logging (RunConfig.log_to): off by default, TensorBoard event files, wandb, errors."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from universality import synthetic as syn
from universality.errors import ConfigError
from universality.sae import sae_config
from universality.train import RunConfig, TrainConfig, Trainer
from universality.train import tracking as tr

D_IN, N_FEAT = 8, 16
METRICS = ("loss", "mse", "explained_variance", "l0", "dead_fraction", "lr")


def source(n_batches=None):
    probs = syn.feature_probabilities(N_FEAT, 3.0)
    return syn.PlantedSource(syn.planted_dictionary(N_FEAT, D_IN), probs, 32, seed=0, n_batches=n_batches)


def configs():
    return [TrainConfig(sae_config("topk", D_IN, 16, k=2), lr=3e-3, seed=s) for s in (0, 1)]


def test_default_logs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunConfig(steps=tr.LOG_EVERY + 2, out_dir=str(tmp_path / "out"))
    assert run.log_to == () and run.log_dir is None
    trainer = Trainer(configs(), run)
    trainer.fit(source(), progress=False)
    assert isinstance(trainer.tracking, tr.NullTracker)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out" / "logs").exists()
    assert not list(tmp_path.rglob("events.out.tfevents*"))


def test_tensorboard_event_files_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = tmp_path / "tb"
    steps = 2 * tr.LOG_EVERY + 3  # logged at 50, 100 and the last step
    run = RunConfig(steps=steps, log_to=("tensorboard",), log_dir=str(log_dir))
    trainer = Trainer(configs(), run)
    result = trainer.fit(source(), progress=False)
    assert list(log_dir.glob("events.out.tfevents*"))
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    expected = {f"{key}/{m}" for key in trainer.keys for m in METRICS}
    assert set(acc.Tags()["scalars"]) == expected
    assert "default/topk-16-s0/mse" in expected  # <key>/<metric>, the key names the site
    for tag in expected:
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [tr.LOG_EVERY, 2 * tr.LOG_EVERY, steps]
    final_ev = acc.Scalars("default/topk-16-s0/explained_variance")[-1].value
    assert final_ev == pytest.approx(trainer.eval_metrics["default/topk-16-s0"]["explained_variance"], rel=1e-6)
    # logging changes neither the run's identity nor the artifacts' meta
    plain = Trainer(configs(), RunConfig(steps=steps))
    assert plain.config_hash == trainer.config_hash
    assert "log_to" not in result["default/topk-16-s0"].meta["train"]["run"]


def test_custom_name_is_prefixed_with_site_and_default_dir(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = TrainConfig(sae_config("topk", D_IN, 16, k=2), name="mine")
    run = RunConfig(steps=3, log_to="tensorboard", out_dir=str(tmp_path / "out"))
    assert run.log_to == ("tensorboard",)
    Trainer(cfg, run).fit(source(), progress=False)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "out" / "logs"))
    acc.Reload()
    assert "default/mine/mse" in acc.Tags()["scalars"]
    assert [e.step for e in acc.Scalars("default/mine/lr")] == [3]


def test_unknown_tracker_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown tracker 'mlflow'.*tensorboard"):
        RunConfig(steps=3, log_to=("mlflow",))
    with pytest.raises(ConfigError, match="log_to must be a list"):
        RunConfig(steps=3, log_to=3)


def test_missing_package_is_a_config_error_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails, find_spec finds nothing
    run = RunConfig(steps=3, log_to=("wandb",))  # the name is valid; the package is checked by the trainer
    with pytest.raises(ConfigError, match="pip install wandb") as info:
        Trainer(configs(), run)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="pip install wandb"):
        tr.WandbTracker("unused")
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        Trainer(configs(), RunConfig(steps=3, log_to=("tensorboard",)))


class _FakeRun:
    def __init__(self, **kwargs):
        self.kwargs, self.logged, self.finished = kwargs, [], False

    def log(self, data, step):
        self.logged.append((step, dict(data)))

    def finish(self):
        self.finished = True


def test_wandb_tracker_logs_through_the_wandb_api(tmp_path, monkeypatch):
    runs = []
    fake = types.ModuleType("wandb")

    def init(**kwargs):
        runs.append(_FakeRun(**kwargs))
        return runs[-1]

    fake.init = init
    fake.__spec__ = types.SimpleNamespace(name="wandb")  # find_spec reads the module's spec
    monkeypatch.setitem(sys.modules, "wandb", fake)  # no network, no wandb service
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = RunConfig(steps=tr.LOG_EVERY + 1, log_to=("wandb",), log_dir=str(tmp_path / "wb"))
    trainer = Trainer(configs(), run)
    trainer.fit(source(), progress=False)
    (wb,) = runs
    assert wb.finished and wb.kwargs["dir"] == str(tmp_path / "wb")
    assert wb.kwargs["config"]["config_hash"] == trainer.config_hash
    assert [s for s, _ in wb.logged] == [tr.LOG_EVERY, tr.LOG_EVERY + 1]
    assert set(wb.logged[-1][1]) == {f"{k}/{m}" for k in trainer.keys for m in METRICS}
    assert all(isinstance(v, float) for v in wb.logged[-1][1].values())


def test_real_wandb_in_disabled_mode(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "disabled")  # no network, no service process
    trainer = Trainer(configs(), RunConfig(steps=3, log_to=("wandb",), log_dir=str(tmp_path / "wb")))
    trainer.fit(source(), progress=False)
    assert trainer.step == 3 and isinstance(trainer.tracking, tr.NullTracker)  # closed after the fit


def test_trainer_results_do_not_depend_on_logging(tmp_path):
    pytest.importorskip("tensorboard")
    steps = tr.LOG_EVERY + 5
    a = Trainer(configs(), RunConfig(steps=steps)).fit(source(), progress=False)
    b = Trainer(configs(), RunConfig(steps=steps, log_to=("tensorboard",), log_dir=str(tmp_path / "tb"))).fit(
        source(), progress=False)
    for key in a:
        assert torch.equal(a[key].W_dec, b[key].W_dec) and torch.equal(a[key].b_enc, b[key].b_enc)


def test_stacked_run_logs_every_member(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = Trainer(configs(), RunConfig(steps=4, stack=True, log_to=("tensorboard",), log_dir=str(tmp_path)))
    assert trainer.stacks  # the two seeds train as one stacked group
    trainer.fit(source(), progress=False)
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {f"{key}/{m}" for key in trainer.keys for m in METRICS}
    assert acc.Scalars("default/topk-16-s1/loss")[-1].value == pytest.approx(trainer.last_losses["default/topk-16-s1"]["loss"])

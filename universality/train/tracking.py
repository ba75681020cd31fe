"""Optional experiment logging of SAE training to TensorBoard and Weights & Biases (off by default).

``RunConfig(log_to=("tensorboard",), log_dir="runs/x")`` makes the trainer write, at the steps where it
records metrics (every :data:`LOG_EVERY` steps, at each checkpoint and at the end), one scalar per
dictionary and metric: ``loss``, ``mse`` (normalised units), ``explained_variance``, ``l0``,
``dead_fraction`` (the dead-latent window's) and ``lr``, tagged ``<key>/<metric>`` (the key names
the site, ``<site>/<arch>-<d_sae>-s<seed>``; a custom ``name`` without it is prefixed:
``<site>/<name>/<metric>``).

- ``"tensorboard"``: :class:`torch.utils.tensorboard.SummaryWriter` event files in ``log_dir``
  (needs ``pip install tensorboard``);
- ``"wandb"``: one ``wandb.init`` run (``dir=log_dir``, project ``$WANDB_PROJECT`` or
  ``universality``); ``WANDB_MODE=offline`` or ``disabled`` keep it off the network
  (needs ``pip install wandb``).

Logging changes no result: the fields are left out of the run's identity hash and artifact meta.
A :class:`Tracker` is anything with ``log(scalars, step)`` and ``close()``; :class:`NullTracker` is
the default.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from universality.errors import ConfigError

__all__ = ["TRACKERS", "LOG_EVERY", "Tracker", "NullTracker", "TensorBoardTracker", "WandbTracker", "MultiTracker",
           "check_log_to", "require_trackers", "make_tracker", "default_log_dir"]

#: Backends of ``RunConfig.log_to`` -> the package each needs.
TRACKERS: dict[str, str] = {"tensorboard": "tensorboard", "wandb": "wandb"}

#: Steps between logged metrics (also the cadence of the progress bar's loss readout).
LOG_EVERY = 50


@runtime_checkable
class Tracker(Protocol):
    """Where training metrics go: ``log({tag: value}, step)`` at each logged step, ``close()`` at the end."""

    def log(self, scalars: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class NullTracker:
    """Logs nothing (the default)."""

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        pass

    def close(self) -> None:
        pass


def check_log_to(value: Any) -> tuple[str, ...]:
    """``RunConfig.log_to`` as a tuple of known backend names (a single name or a list is accepted;
    repeats are dropped); :class:`ConfigError` naming the unknown one otherwise."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"RunConfig.log_to must be a list of names, got {value!r}",
                          f"use a subset of {list(TRACKERS)}, e.g. log_to=('tensorboard',)")
    for v in value:
        if v not in TRACKERS:
            raise ConfigError(f"RunConfig.log_to: unknown tracker {v!r}",
                              f"use a subset of {list(TRACKERS)} (or () to log nothing)")
    return tuple(dict.fromkeys(value))


def _missing_hint(name: str) -> ConfigError:
    package = TRACKERS[name]
    return ConfigError(f"RunConfig.log_to asks for {name!r} but the {package} package is not installed",
                       f"pip install {package} (or leave {name!r} out of log_to)")


def require_trackers(log_to: Sequence[str]) -> None:
    """Check, without importing them, that the packages of ``log_to`` are installed."""
    for name in check_log_to(log_to):
        try:
            found = importlib.util.find_spec(TRACKERS[name]) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise _missing_hint(name)


def _import(name: str) -> Any:
    try:
        return importlib.import_module(TRACKERS[name])
    except ImportError:
        raise _missing_hint(name) from None


class TensorBoardTracker:
    """Scalars into TensorBoard event files under ``log_dir``."""

    def __init__(self, log_dir: str | os.PathLike) -> None:
        _import("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=os.fspath(log_dir))

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, float(value), global_step=int(step))

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class WandbTracker:
    """Scalars into one Weights & Biases run (``WANDB_MODE`` decides online/offline/disabled)."""

    def __init__(self, log_dir: str | os.PathLike, config: Mapping[str, Any] | None = None) -> None:
        wandb = _import("wandb")
        os.makedirs(log_dir, exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "universality"), dir=os.fspath(log_dir),
                              config=dict(config or {}))

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        self.run.log({k: float(v) for k, v in scalars.items()}, step=int(step))

    def close(self) -> None:
        self.run.finish()


class MultiTracker:
    """Every scalar to each of ``trackers``."""

    def __init__(self, trackers: Sequence[Tracker]) -> None:
        self.trackers = list(trackers)

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        for t in self.trackers:
            t.log(scalars, step)

    def close(self) -> None:
        for t in self.trackers:
            t.close()


def default_log_dir(out_dir: str | None) -> str:
    """``log_dir`` when the run gives none: ``<out_dir>/logs``, else ``runs`` (TensorBoard's usual folder)."""
    return os.path.join(out_dir, "logs") if out_dir else "runs"


def make_tracker(log_to: Sequence[str], log_dir: str | None, out_dir: str | None = None,
                 config: Mapping[str, Any] | None = None) -> Tracker:
    """The tracker of ``RunConfig.log_to`` (:class:`NullTracker` for ``()``); ``config`` goes to wandb."""
    names = check_log_to(log_to)
    if not names:
        return NullTracker()
    require_trackers(names)
    folder = log_dir or default_log_dir(out_dir)
    made: list[Tracker] = []
    try:
        for name in names:
            made.append(TensorBoardTracker(folder) if name == "tensorboard" else WandbTracker(folder, config))
    except BaseException:
        for t in made:
            t.close()
        raise
    return made[0] if len(made) == 1 else MultiTracker(made)

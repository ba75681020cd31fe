"""The trainer: many dictionaries from one activation stream (sites x seeds x widths x architectures).

The trainer never sees a model: it consumes an *activation source*, an iterable yielding
``{site: (batch, d)}`` dicts or plain ``(batch, d)`` tensors (site ``"default"``), optionally with
``state_dict()``/``load_state_dict()`` for exact resumption (see ``docs/INTERFACES.md``).
Each step reads one batch and takes one optimiser step for every dictionary.

**Provenance.** A source with a ``provenance()`` method (the activation readers of
:mod:`universality.activations`) names the model, revision, dataset and subset hash it streams; the
trainer records them in every artifact's meta (``meta=`` given by hand wins, key by key).

**Initialisation.** With ``TrainConfig.init="derived"`` (default) each dictionary's initial weights
are drawn from a hash of its seed and identity (:mod:`universality.sae.identity`): key, site,
config, and the provenance above - or, when nothing names the data, a fingerprint of the first
batch. The weights drawn at construction are redrawn before the first step when the source's
provenance or the first batch completes the identity. ``meta["init"]`` records the result.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from universality.errors import ConfigError, DataError, TrainingDiverged
from universality.eval.metrics import ReconstructionStats
from universality.io import stable_hash
from universality.progress import progress_bar
from universality.sae import SAE, geometric_median, make_sae
from universality.sae.identity import data_fingerprint, derive_init_seed, has_provenance, init_identity, init_record
from universality.train import checkpoint as ckpt
from universality.train.config import MAX_DEAD_WINDOW, RunConfig, TrainConfig
from universality.train.dead import FiringTracker, auxk_loss, ghost_grads_loss, resample_dead_
from universality.train.optim import flatten_optimizer_state, make_optimizer, reset_latent_state_, unflatten_optimizer_state
from universality.train.schedules import lr_factor, warmup_factor
from universality.train.stacked_step import StackedGroup, group_keys
from universality.train.tracking import LOG_EVERY, NullTracker, Tracker, make_tracker, require_trackers

__all__ = ["Trainer", "train_saes", "as_site_batch", "source_provenance", "per_source_explained_variance"]


def source_provenance(source: Any) -> dict[str, Any]:
    """What ``source.provenance()`` says about the activations (model, revision, dataset, subset_hash,
    ...), or ``{}`` for a source without one. ``None`` values are dropped."""
    get = getattr(source, "provenance", None)
    if not callable(get):
        return {}
    prov = get()
    if not isinstance(prov, Mapping):
        raise DataError(f"{type(source).__name__}.provenance() returned {type(prov).__name__}",
                        "return a dict such as {'model': ..., 'revision': ..., 'dataset': ..., 'subset_hash': ...}")
    return {k: v for k, v in prov.items() if v is not None}


def as_site_batch(batch: Any) -> dict[str, Tensor]:
    """A source item as ``{site: (batch, d)}`` (a plain tensor becomes site ``"default"``)."""
    if isinstance(batch, Tensor):
        batch = {"default": batch}
    if not isinstance(batch, Mapping):
        raise DataError(f"activation source yielded {type(batch).__name__}", "yield (batch, d) tensors or dicts site -> tensor")
    for site, x in batch.items():
        if not isinstance(x, Tensor) or x.ndim != 2:
            raise DataError(f"site {site!r}: expected a (batch, d) tensor, got {getattr(x, 'shape', type(x).__name__)}", "flatten positions into rows")
    return dict(batch)


class Trainer:
    """Holds the dictionaries, their optimisers and trackers; :meth:`fit` runs the loop."""

    def __init__(self, configs: TrainConfig | Sequence[TrainConfig], run: RunConfig, meta: Mapping[str, Any] | None = None) -> None:
        configs = [configs] if isinstance(configs, TrainConfig) else list(configs)
        if not configs:
            raise ConfigError("no TrainConfig given", "pass at least one TrainConfig")
        keys = [c.key for c in configs]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            raise ConfigError(f"two configs share the key(s) {dup}", "give them different seeds, widths or names")
        self.configs = dict(zip(keys, configs))
        self.keys = keys
        self.run = run
        self.meta = dict(meta or {})
        self.provenance: dict[str, Any] = {}
        self.device = torch.device(run.device)
        self.init_records: dict[str, dict[str, Any]] = {}
        self.saes: dict[str, SAE] = {}
        for k, c in self.configs.items():
            init_seed, identity = self._init_seed(c)
            self.saes[k] = make_sae(c.sae, seed=init_seed, device=self.device)
            self.init_records[k] = init_record(c.init, c.seed, init_seed, identity, self.saes[k].W_dec)
        self._drawn = {k: self._versions(k) for k in self.keys}
        self.source_exhausted = False
        self.optims = {k: make_optimizer(self.saes[k], c.lr) for k, c in self.configs.items()}
        # an automatic window (dead_window=0) is fixed from the first batch; until then the cap holds
        provisional = run.dead_window or MAX_DEAD_WINDOW
        self.trackers = {k: FiringTracker(c.sae.d_sae, provisional, self.device) for k, c in self.configs.items()}
        self.scales: dict[str, float | list[float]] = {}  # a list (one per source) for a crosscoder's site
        self._site_widths = _joint_sites(configs)
        self.step = 0
        self.tokens = 0
        self.generator = torch.Generator().manual_seed(run.seed)
        self.last_losses: dict[str, dict[str, float]] = {}
        self.eval_metrics: dict[str, dict[str, Any]] = {}
        self.config_hash = stable_hash({"configs": [self._config_identity(c) for c in configs], "run": self._run_identity()})
        self.stacks: list[StackedGroup] = []
        self.solo_keys: list[str] = list(keys)
        if run.stack:
            self._build_stacks()
        require_trackers(run.log_to)  # a missing tensorboard/wandb fails here, before any work
        self.tracking: Tracker = NullTracker()  # the experiment tracker of a fit (RunConfig.log_to)
        self._logged_step = -1

    @staticmethod
    def _config_identity(c: TrainConfig) -> dict[str, Any]:
        d = c.to_dict()
        if d.get("init") == "seed":
            d.pop("init")  # checkpoints written before the field existed (seed-only init) resume with init="seed"
        return d

    def _run_identity(self) -> dict[str, Any]:
        d = self.run.to_dict()
        for k in ("checkpoint_dir", "checkpoint_every", "out_dir", "device", "autocast", "log_to", "log_dir"):
            d.pop(k)
        d.pop("compile", None)  # compiling changes no result
        if not d.get("stack"):
            d.pop("stack", None)  # unstacked runs keep the hash (and checkpoints) they had before the field existed
        return d

    # ------------------------------------------------------------------ initialisation
    def site_meta(self, site: str) -> dict[str, Any]:
        """The provenance meta of ``site``: the source's :meth:`provenance`, overridden key by key by the
        hand-given ``meta`` (a flat dict, or ``{site: dict}``)."""
        given = self.meta.get(site)
        hand = given if isinstance(given, Mapping) else self.meta
        return {**self.provenance, **hand}

    def _init_seed(self, c: TrainConfig, data: str | None = None) -> tuple[int, dict[str, Any]]:
        """``(seed the weights are drawn from, identity)`` of config ``c`` (``data``: first-batch fingerprint)."""
        identity = init_identity(c.key, c.site, c.seed, stable_hash(c.to_dict()), self.site_meta(c.site))
        if data is not None and not has_provenance(identity):
            identity["data"] = data
        return (derive_init_seed(c.seed, identity) if c.init == "derived" else c.seed), identity

    def mark_initial_weights(self) -> None:
        """Count the weights as they are now as the drawn initial weights: for wrappers that write them in
        place without changing them (DDP's broadcast from rank 0), so a redraw before the first step still
        happens (:meth:`_redraw_initial_weights` leaves weights that were edited since they were drawn)."""
        self._drawn = {k: self._versions(k) for k in self.keys}

    def _versions(self, key: str) -> list[int]:
        """In-place modification counters of a dictionary's tensors (to leave weights a caller edited alone)."""
        sae = self.saes[key]
        return [t._version for t in (*sae.parameters(), *sae.buffers())]

    @torch.no_grad()
    def _redraw_initial_weights(self, batch: Mapping[str, Tensor] | None = None) -> None:
        """Before the first step: redraw every derived-init dictionary whose identity is now more
        complete (the source's provenance, or the first batch's fingerprint when nothing names the data).
        Dictionaries whose weights were changed since they were drawn keep them (and their record)."""
        if self.step > 0 or self.initialised:  # weights already in use (or edited after initialise)
            return
        fingerprints: dict[str, str] = {}
        changed = False
        for key in self.keys:
            c = self.configs[key]
            if c.init != "derived" or self._versions(key) != self._drawn[key]:
                continue
            data = None
            if batch is not None and c.site in batch:
                if c.site not in fingerprints:
                    fingerprints[c.site] = data_fingerprint(batch[c.site][: self.run.init_rows])
                data = fingerprints[c.site]
            init_seed, identity = self._init_seed(c, data)
            if identity == self.init_records[key]["identity"]:
                continue
            fresh = make_sae(c.sae, seed=init_seed)
            self.saes[key].load_weights_(fresh.state_dict(), source=f"initial weights of {key}")
            self.init_records[key] = init_record(c.init, c.seed, init_seed, identity, fresh.W_dec)
            self._drawn[key] = self._versions(key)
            changed = True
        if changed:
            for group in self.stacks:
                group.pull_(self.saes)

    @property
    def initialised(self) -> bool:
        return bool(self.scales)

    @torch.no_grad()
    def initialise(self, batch: Mapping[str, Tensor]) -> None:
        """Normalisation scale per site and ``b_dec`` at the geometric median (first batch); derived
        initialisations without provenance are redrawn from the batch's fingerprint first."""
        self._redraw_initial_weights(batch)
        window = self.run.resolved_dead_window(next(iter(batch.values())).shape[0])
        for tracker in self.trackers.values():
            tracker.window = window
        medians: dict[str, Tensor] = {}
        for key in self.keys:
            cfg = self.configs[key]
            x = self._rows(batch, cfg)[: self.run.init_rows]
            if cfg.site not in self.scales:
                self.scales[cfg.site] = self._first_scale(cfg, x)
                medians[cfg.site] = geometric_median(self._scaled(cfg, x))
            sae = self.saes[key]
            sae.input_scale = self.scales[cfg.site]
            sae.b_dec.copy_(medians[cfg.site].to(sae.b_dec.dtype))
        for group in self.stacks:
            group.pull_(self.saes)

    def _first_scale(self, cfg: TrainConfig, x: Tensor) -> float | list[float]:
        """The normalisation of ``cfg.site`` from its first rows: ``E||s x||^2 = d_in``; for a crosscoder
        one factor per source, each giving its source the mean squared norm ``d_in / N``."""
        widths = self._site_widths.get(cfg.site)
        blocks = x.split(list(widths), dim=1) if widths else [x]
        target = cfg.sae.d_in / len(blocks)
        scales = []
        for i, block in enumerate(blocks):
            msq = float(block.double().pow(2).sum(dim=1).mean())
            if not math.isfinite(msq) or msq <= 0:
                where = f" (source {i})" if widths else ""
                raise DataError(f"site {cfg.site!r}{where}: first batch has mean squared norm {msq}", "check the activation source")
            scales.append(math.sqrt(target / msq) if self.run.normalize else 1.0)
        return scales if widths else scales[0]

    def _scaled(self, cfg: TrainConfig, x_raw: Tensor) -> Tensor:
        """Raw rows times the site's normalisation (per source for a crosscoder)."""
        scale = self.scales[cfg.site]
        if isinstance(scale, list):
            widths = torch.tensor(self._site_widths[cfg.site], device=x_raw.device)
            return x_raw * torch.tensor(scale, dtype=x_raw.dtype, device=x_raw.device).repeat_interleave(widths)
        return x_raw * scale

    def _rows(self, batch: Mapping[str, Tensor], cfg: TrainConfig) -> Tensor:
        if cfg.site not in batch:
            raise DataError(f"the activation source has no site {cfg.site!r} (it has {sorted(batch)})", "set TrainConfig.site to one of those")
        x = batch[cfg.site]
        if x.shape[1] != cfg.sae.d_in:
            raise DataError(f"site {cfg.site!r} has width {x.shape[1]} but {cfg.key} expects d_in={cfg.sae.d_in}", "fix SAEConfig.d_in")
        return x.to(self.device, torch.float32)

    # ------------------------------------------------------------------ hooks (universality.train.distributed)
    # Overridden by ``distributed.DataParallelTrainer``: the forward goes through DDP, the token
    # count is the global batch. Keep these two small; nothing else in this file depends on them.
    def _forward_train(self, key: str, sae: SAE, x: Tensor) -> Any:
        """The training forward pass of dictionary ``key`` (an :class:`~universality.sae.base.SAEOutput`)."""
        return sae.forward_train(x)

    def _rows_in(self, batch: Mapping[str, Tensor]) -> int:
        """Rows (tokens) one step consumed, for ``self.tokens``."""
        return next(iter(batch.values())).shape[0]

    # ------------------------------------------------------------------ one step
    def _autocast(self):
        if self.run.autocast and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, key: str, x_raw: Tensor) -> dict[str, float]:
        """One optimiser step of dictionary ``key`` on raw rows ``x_raw``; returns the loss terms."""
        cfg, sae, opt, tracker = self.configs[key], self.saes[key], self.optims[key], self.trackers[key]
        x = self._scaled(cfg, x_raw)
        remedy = cfg.effective_remedy
        with self._autocast():
            out = self._forward_train(key, sae, x)
            mse = (out.x_hat.float() - x).pow(2).sum(dim=1).mean()
            loss = mse
            terms = {"mse": mse}
            if sae.uses_penalty:
                coeff = cfg.sae.sparsity_coeff * warmup_factor(self.step, cfg.sparsity_warmup_steps)
                terms["sparsity"] = out.sparsity
                loss = loss + coeff * out.sparsity
            for name, value in out.extra.items():
                terms[name] = value
                loss = loss + value
            dead = tracker.dead_mask()
            if remedy == "auxk":
                k_aux = cfg.aux_k or max(1, cfg.sae.d_in // 2)
                terms["auxk"] = auxk_loss(sae, x, out.x_hat, out.pre, dead, k_aux)
                loss = loss + cfg.aux_coeff * terms["auxk"]
            elif remedy == "ghost":
                terms["ghost"] = ghost_grads_loss(sae, x, out.x_hat, out.pre, dead, mse)
                loss = loss + terms["ghost"]
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss of {key} became {float(loss.detach())} at step {self.step}",
                "lower the learning rate or check the activations; the last good checkpoint is kept",
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_decoder_grad_()
        if self.run.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), self.run.grad_clip)
        lr = cfg.lr * lr_factor(self.step, self.run.steps, cfg.warmup_steps, cfg.decay_start)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        sae.normalize_decoder_()
        if out.active is not None:
            tracker.update_sparse(*out.active)
        else:
            tracker.update(out.acts.detach())
        if remedy == "resample" and (self.step + 1) % self.run.resample_every == 0:
            revived = resample_dead_(sae, x, tracker.dead_mask(), self.generator)
            if revived.numel():
                reset_latent_state_(opt, sae, revived)
                tracker.revive_(revived)
        result = {name: float(v.detach()) for name, v in terms.items()}
        result["loss"] = float(loss.detach())
        return result

    # ------------------------------------------------------------------ loop
    def fit(self, source: Iterable, progress: bool = True) -> dict[str, SAE]:
        """Train until ``run.steps`` steps or the source ends; returns folded dictionaries by key.

        While it runs, the trainer holds the lock of ``run.checkpoint_dir`` (another run on that
        folder is refused at once, see :func:`~universality.train.checkpoint.checkpoint_lock`).
        """
        with self._checkpoint_guard():
            return self._fit(source, progress)

    def _checkpoint_guard(self) -> contextlib.AbstractContextManager:
        """The lock of ``run.checkpoint_dir`` for the duration of :meth:`fit` (nothing without one)."""
        if not self.run.checkpoint_dir:
            return contextlib.nullcontext()
        return ckpt.checkpoint_lock(self.run.checkpoint_dir)

    def _fit(self, source: Iterable, progress: bool) -> dict[str, SAE]:
        self.provenance = source_provenance(source)
        self._redraw_initial_weights()
        if ckpt.has_checkpoint(self.run.checkpoint_dir):
            self.load_checkpoint(self.run.checkpoint_dir, source)
        it = iter(source)
        self.tracking = make_tracker(self.run.log_to, self.run.log_dir, self.run.out_dir, config=self._tracking_config())
        try:
            bar = progress_bar(desc="train SAEs", total=self.run.steps, initial=self.step, unit="step", progress=progress)
            return self._loop(source, it, bar)
        finally:
            self.tracking.close()
            self.tracking = NullTracker()

    def _loop(self, source: Iterable, it: Any, bar: Any) -> dict[str, SAE]:
        last_batch: dict[str, Tensor] | None = None
        tracking = not isinstance(self.tracking, NullTracker)
        try:
            while self.step < self.run.steps:
                try:
                    batch = as_site_batch(next(it))
                except StopIteration:
                    self.source_exhausted = True
                    break
                for site, x in batch.items():
                    if not torch.isfinite(x).all():
                        raise TrainingDiverged(
                            f"activations of site {site!r} contain NaN/Inf at step {self.step}",
                            "check the activation source; the last good checkpoint is kept",
                        )
                if not self.initialised:
                    self.initialise(batch)
                for key in self.solo_keys:
                    self.last_losses[key] = self.train_step(key, self._rows(batch, self.configs[key]))
                self._stacked_steps(batch)
                self.step += 1
                self.tokens += self._rows_in(batch)
                last_batch = batch
                bar.update(1)
                if not bar.disable and self.step % LOG_EVERY == 0:
                    bar.set_postfix(mse=f"{sum(v['mse'] for v in self.last_losses.values()) / len(self.keys):.4g}")
                every = self.run.checkpoint_every
                if every and self.step % every == 0:
                    self.measure(batch)
                    self._log_metrics(self.eval_metrics)
                    self.save_checkpoint(self.run.checkpoint_dir, source)
                elif tracking and self.step % LOG_EVERY == 0 and self.step < self.run.steps:
                    self._log_metrics(self._metrics(batch))  # the last step is logged after the loop
        finally:
            bar.close()
        if self.source_exhausted:
            warnings.warn(
                f"the activation source ran out after {self.step} of {self.run.steps} steps ({self.tokens} tokens), so the "
                "learning rate never finished its schedule; give a longer source (more rows, or epochs=None) or set "
                f"RunConfig(steps={self.step})", stacklevel=4)  # _loop < _fit < fit < the caller
        every = self.run.checkpoint_every
        at_checkpoint = bool(every) and self.step % every == 0  # the loop measured and saved this step already
        if last_batch is not None and not at_checkpoint:
            self.measure(last_batch)
            self._log_metrics(self.eval_metrics)
        if self.run.checkpoint_dir and not at_checkpoint:
            self.save_checkpoint(self.run.checkpoint_dir, source)
        result = self.results()
        if self.run.out_dir:
            for key, sae in result.items():
                sae.save(Path(self.run.out_dir) / key)
        return result

    @torch.no_grad()
    def measure(self, batch: Mapping[str, Tensor]) -> None:
        """Reconstruction metrics of every dictionary on ``batch`` (kept, and saved with checkpoints, so
        a run resumed from its final checkpoint reports the same metrics)."""
        for key, summary in self._metrics(batch).items():
            self.eval_metrics[key] = {**summary, "eval_rows": "last training batch",
                                      "units": "normalised inputs (mse, l1 scale with the normalisation)"}

    @torch.no_grad()
    def _metrics(self, batch: Mapping[str, Tensor]) -> dict[str, dict[str, float]]:
        """``{key: ReconstructionStats summary}`` of every dictionary on ``batch`` (normalised inputs)."""
        self._push_stacks()
        out: dict[str, dict[str, float]] = {}
        for key in self.keys:
            cfg, sae = self.configs[key], self.saes[key]
            stats = ReconstructionStats()
            x = self._scaled(cfg, self._rows(batch, cfg))
            was = sae.training
            sae.eval()
            z = sae.encode(x)
            x_hat = sae.decode(z)
            stats.update(x, x_hat, z)
            sae.train(was)
            out[key] = stats.summary()
            if cfg.site in self._site_widths:  # a crosscoder: the explained variance of each source
                out[key]["explained_variance_per_source"] = per_source_explained_variance(x, x_hat, self._site_widths[cfg.site])
        return out

    # ------------------------------------------------------------------ experiment tracking (RunConfig.log_to)
    def _tracking_config(self) -> dict[str, Any]:
        """What a wandb run records as its config: the run's settings and every dictionary's."""
        return {"run": self._run_identity(), "configs": {k: self._config_identity(c) for k, c in self.configs.items()},
                "config_hash": self.config_hash}

    def _log_metrics(self, metrics: Mapping[str, Mapping[str, Any]]) -> None:
        """One scalar per dictionary and metric to the tracker, at ``self.step`` (once per step)."""
        if isinstance(self.tracking, NullTracker) or self.step == self._logged_step:
            return
        scalars: dict[str, float] = {}
        for key in self.keys:
            cfg, m = self.configs[key], metrics.get(key, {})
            prefix = key if key.startswith(f"{cfg.site}/") else f"{cfg.site}/{key}"
            values = {
                "loss": self.last_losses.get(key, {}).get("loss"),
                "mse": m.get("mse"),
                "explained_variance": m.get("explained_variance"),
                "l0": m.get("l0"),
                "dead_fraction": float(self.trackers[key].dead_mask().double().mean()),
                "lr": cfg.lr * lr_factor(max(self.step - 1, 0), self.run.steps, cfg.warmup_steps, cfg.decay_start),
            }
            scalars.update({f"{prefix}/{name}": float(v) for name, v in values.items() if v is not None})
        self.tracking.log(scalars, self.step)
        self._logged_step = self.step

    @torch.no_grad()
    def results(self, eval_batch: Mapping[str, Tensor] | None = None) -> dict[str, SAE]:
        """Folded copies (raw-activation, unit-decoder) of every dictionary, with ``meta`` filled in
        (metrics on ``eval_batch`` when given, else those of the last :meth:`measure`)."""
        if eval_batch is not None:
            self.measure(eval_batch)
        self._push_stacks()
        out: dict[str, SAE] = {}
        for key in self.keys:
            cfg = self.configs[key]
            sae = self.saes[key]
            meta = self.site_meta(cfg.site)
            train = {k: v for k, v in cfg.to_dict().items() if k != "sae"}
            run = {k: v for k, v in self.run.to_dict().items()  # places and logging, not settings
                   if k not in ("checkpoint_dir", "out_dir", "log_to", "log_dir")}
            meta.update(site=cfg.site, name=key, train={**train, "run": run},
                        trained_steps=self.step, trained_tokens=self.tokens, steps_requested=self.run.steps,
                        source_exhausted=self.source_exhausted, init=dict(self.init_records[key]))
            meta["normalisation"] = {"method": "mean_squared_norm" if self.run.normalize else "none",
                                     "target_mean_squared_norm": cfg.sae.d_in, "scale": self.scales.get(cfg.site, 1.0)}
            if cfg.site in self._site_widths:
                n = len(self._site_widths[cfg.site])
                meta["normalisation"].update(method="mean_squared_norm_per_source" if self.run.normalize else "none",
                                             target_mean_squared_norm=[cfg.sae.d_in / n] * n)
            metrics: dict[str, Any] = dict(self.eval_metrics.get(key, {}))
            density = self.trackers[key].density()
            metrics["dead_fraction_window"] = float(self.trackers[key].dead_mask().double().mean())
            metrics["dead_window_tokens"] = self.trackers[key].window
            metrics["dense_fraction_window"] = float((density > 0.1).double().mean())
            metrics.update({f"final_{k}": v for k, v in self.last_losses.get(key, {}).items()})
            meta["metrics"] = metrics
            sae.meta = meta
            out[key] = sae.folded()
        return out

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, root: str | Path, source: Any) -> Path:
        self._push_stacks()
        tensors: dict[str, Tensor] = dict(ckpt.rng_tensors(self.generator))
        opt_meta: dict[str, Any] = {}
        for i, key in enumerate(self.keys):
            for name, value in self.saes[key].state_dict().items():
                tensors[f"sae/{i}/{name}"] = value
            flat, meta = flatten_optimizer_state(self.optims[key])
            tensors.update({f"opt/{i}/{k}": v for k, v in flat.items()})
            opt_meta[key] = meta
            tensors.update({f"tracker/{i}/{k}": v for k, v in self.trackers[key].state_tensors().items()})
        source_state = source.state_dict() if hasattr(source, "state_dict") else None
        doc = {
            "step": self.step,
            "tokens": self.tokens,
            "keys": self.keys,
            "config_hash": self.config_hash,
            "configs": {k: c.to_dict() for k, c in self.configs.items()},
            "scales": self.scales,
            "optimizers": opt_meta,
            "tracker_tokens": {k: self.trackers[k].count_tokens for k in self.keys},
            "source_state": source_state,
            "last_losses": self.last_losses,
            "eval_metrics": self.eval_metrics,
            "init": self.init_records,
            "dead_windows": {k: self.trackers[k].window for k in self.keys},
        }
        if self.stacks:
            doc["stack_optimizers"] = self._stack_state_into(tensors)
        ckpt.check_owner(root, self.config_hash, self.keys)  # never replace another run's resumable state
        return ckpt.write_checkpoint(root, tensors, doc)

    def load_checkpoint(self, root: str | Path, source: Any) -> None:
        tensors, doc = ckpt.read_checkpoint(root)  # format and checksum first
        ckpt.check_owner(root, self.config_hash, self.keys, doc)
        if doc["source_state"] is not None:
            if not hasattr(source, "load_state_dict"):
                raise DataError("the checkpoint holds a source position but the source has no load_state_dict", "resume with the same kind of source")
            source.load_state_dict(doc["source_state"])
        elif doc["step"] > 0:
            raise DataError("the source had no state_dict when the checkpoint was written, so its position is unknown", "use a source with state_dict() to resume")
        for i, key in enumerate(self.keys):
            self.saes[key].load_weights_({k: v.to(self.device) for k, v in ckpt.split_prefix(tensors, f"sae/{i}").items()}, source=str(root))
            opt_t = {k: v.to(self.device) if not k.endswith("/step") else v for k, v in ckpt.split_prefix(tensors, f"opt/{i}").items()}
            unflatten_optimizer_state(self.optims[key], opt_t, doc["optimizers"][key])
            self.trackers[key].load_state({k: v.to(self.device) for k, v in ckpt.split_prefix(tensors, f"tracker/{i}").items()}, doc["tracker_tokens"][key])
        self.scales = {k: [float(u) for u in v] if isinstance(v, list) else float(v) for k, v in doc["scales"].items()}
        for key in self.keys:
            self.saes[key].input_scale = self.scales.get(self.configs[key].site, 1.0)
        self.step = int(doc["step"])
        self.tokens = int(doc["tokens"])
        self.last_losses = dict(doc.get("last_losses") or {})
        self.eval_metrics = dict(doc.get("eval_metrics") or {})
        for key, window in (doc.get("dead_windows") or {}).items():
            if key in self.trackers:
                self.trackers[key].window = int(window)
        self.init_records.update({k: dict(v) for k, v in (doc.get("init") or {}).items() if k in self.init_records})
        ckpt.restore_rng(tensors, self.generator)
        self._load_stack_state(tensors, doc.get("stack_optimizers") or [])

    # ------------------------------------------------------------------ stacked fast path (RunConfig.stack)
    # The stacked groups hold the live weights of their members during training; ``self.saes`` of
    # those members are refreshed from the stacks (``_push_stacks``) before results and checkpoints.
    def _build_stacks(self) -> None:
        if type(self)._forward_train is not Trainer._forward_train:
            raise ConfigError(f"{type(self).__name__} overrides the training forward, which a stacked step would bypass",
                              "set RunConfig.stack=False with this trainer")
        groups, self.solo_keys = group_keys(self.configs)
        self.stacks = [StackedGroup(g, self.configs, self.saes, self.trackers, self.run, self.device, self._autocast) for g in groups]

    def _stacked_steps(self, batch: Mapping[str, Tensor]) -> None:
        for group in self.stacks:
            xs = [self._scaled(self.configs[k], self._rows(batch, self.configs[k])) for k in group.keys]
            self.last_losses.update(group.step(xs, self.step))

    def _push_stacks(self) -> None:
        for group in self.stacks:
            group.push_(self.saes)

    def _stack_state_into(self, tensors: dict[str, Tensor]) -> list[dict[str, Any]]:
        metas = []
        for g, group in enumerate(self.stacks):
            flat, meta = group.optimizer_state()
            tensors.update({f"stackopt/{g}/{k}": v for k, v in flat.items()})
            metas.append({"keys": group.keys, **meta})
        return metas

    def _load_stack_state(self, tensors: dict[str, Tensor], metas: list[dict[str, Any]]) -> None:
        if len(metas) != len(self.stacks) or any(m["keys"] != g.keys for m, g in zip(metas, self.stacks)):
            raise ConfigError("the checkpoint's stacked groups differ from this run's", "resume with the same configs and RunConfig.stack")
        for g, group in enumerate(self.stacks):
            group.pull_(self.saes)
            flat = {k: v.to(self.device) if not k.endswith("/step") else v for k, v in ckpt.split_prefix(tensors, f"stackopt/{g}").items()}
            group.load_optimizer_state(flat, metas[g])


def _joint_sites(configs: Sequence[TrainConfig]) -> dict[str, tuple[int, ...]]:
    """``{site: source widths}`` of the sites crosscoders read; a site read by a crosscoder and by an SAE,
    or by crosscoders of other source widths, is refused (its normalisation would be ambiguous)."""
    widths: dict[str, tuple[int, ...] | None] = {}
    for c in configs:
        w = getattr(c.sae, "source_widths", None)
        w = tuple(w) if w else None
        if c.site in widths and widths[c.site] != w:
            raise ConfigError(f"site {c.site!r} is read by dictionaries with different source layouts ({widths[c.site]} and {w})",
                              "give each crosscoder layout its own site (an SAE reads one source, a crosscoder the concatenation)")
        widths[c.site] = w
    return {site: w for site, w in widths.items() if w is not None}


def per_source_explained_variance(x: Tensor, x_hat: Tensor, widths: Sequence[int]) -> list[float]:
    """``1 - sum||x_s - x_hat_s||^2 / sum||x_s - mean(x_s)||^2`` for each source block ``s``."""
    out = []
    for xs, hs in zip(x.split(list(widths), dim=1), x_hat.split(list(widths), dim=1)):
        xs, hs = xs.double(), hs.double()
        total = float((xs - xs.mean(dim=0)).pow(2).sum())
        out.append(1.0 - float((xs - hs).pow(2).sum()) / total if total > 0 else float("nan"))
    return out


def train_saes(
    source: Iterable,
    configs: TrainConfig | Sequence[TrainConfig],
    run: RunConfig | None = None,
    *,
    steps: int | None = None,
    meta: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, SAE]:
    """Train every dictionary in ``configs`` on one pass over ``source``.

    Returns ``{key: SAE}`` with keys ``f"{site}/{arch}-{d_sae}-s{seed}"`` (or the config's
    ``name``); the SAEs work on raw activations (normalisation folded in) and carry
    ``meta`` (site, normalisation, hyper-parameters, final metrics, ``init`` (how the initial weights
    were drawn, :mod:`universality.sae.identity`), ``trained_steps``/``steps_requested``/
    ``source_exhausted``, plus the source's ``provenance()`` and what ``meta`` gives - model,
    revision, dataset, subset_hash; or a mapping site -> such a dict - the latter winning key by key).
    A source that ends before ``steps`` warns and records ``source_exhausted: True``.
    Give ``run`` (a :class:`RunConfig`) or just ``steps``.
    """
    if run is None:
        if steps is None:
            raise ConfigError("train_saes needs run=RunConfig(...) or steps=", "pass steps=1000 for example")
        run = RunConfig(steps=steps)
    return Trainer(configs, run, meta=meta).fit(source, progress=progress)

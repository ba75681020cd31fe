"""Where a dictionary's initial weights came from, and whether two dictionaries share them.

A dictionary trained with the same seed and shape as another starts from the same random decoder
unless its initialisation seed also depends on *which* dictionary it is. Two such dictionaries look
alike after training for a reason that has nothing to do with the data (a 30-step pair trained on
independent planted worlds read 1.0 mean matched decoder cosine). The trainer therefore derives the
initialisation seed from the seed and the dictionary's identity (:func:`init_identity`,
:func:`derive_init_seed`) and records the result in the artifact's ``meta["init"]``
(:func:`init_record`)::

    {"mode": "derived" | "seed", "seed": <TrainConfig.seed>, "init_seed": <seed the weights were drawn from>,
     "identity": {"key", "site", "seed", "config", "model", "revision", "dataset", "subset_hash", "data"},
     "decoder_fingerprint": <hash of the initial W_dec>}

:func:`shared_initialisation` reads those records (or, for artifacts saved before they existed, the
recorded seed and shape) and says in one line why two dictionaries share their initial weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from universality.io import stable_hash

__all__ = [
    "INIT_MODES",
    "PROVENANCE_KEYS",
    "init_identity",
    "derive_init_seed",
    "decoder_fingerprint",
    "data_fingerprint",
    "has_provenance",
    "init_record",
    "initialisation",
    "same_training_run",
    "shared_initialisation",
]

#: ``"derived"``: the initialisation seed is a hash of the seed and the dictionary's identity (default);
#: ``"seed"``: the seed itself, so every dictionary of one seed and shape starts from the same weights.
INIT_MODES = ("derived", "seed")

#: Provenance fields of the artifact meta that name what a dictionary was trained on.
PROVENANCE_KEYS = ("model", "revision", "dataset", "subset_hash")

_SEED_MASK = (1 << 63) - 1


def init_identity(key: str, site: str, seed: int, config_hash: str, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The identity a derived initialisation seed is hashed from: the dictionary's key, site, seed and
    config hash, plus the provenance fields of ``meta`` that are known (not ``None``)."""
    meta = meta or {}
    identity: dict[str, Any] = {"key": key, "site": site, "seed": int(seed), "config": config_hash}
    for name in PROVENANCE_KEYS:
        if meta.get(name) is not None:
            identity[name] = meta[name]
    return identity


def has_provenance(identity: Mapping[str, Any]) -> bool:
    """True when ``identity`` names the data it was trained on (a provenance field or a data fingerprint)."""
    return any(identity.get(name) is not None for name in (*PROVENANCE_KEYS, "data"))


def derive_init_seed(seed: int, identity: Mapping[str, Any]) -> int:
    """A 63-bit seed from ``seed`` and ``identity`` (a stable hash: the same on every machine and run)."""
    return int(stable_hash({"seed": int(seed), "identity": dict(identity)}, length=16), 16) & _SEED_MASK


def _tensor_digest(t: Tensor) -> str:
    data = t.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha256(data.numpy().tobytes()).hexdigest()[:16]


def decoder_fingerprint(W_dec: Float[Tensor, "d_sae d_in"]) -> str:
    """A 16-hex-digit hash of the decoder's float32 bytes and shape (equal only for equal decoders)."""
    return f"{tuple(W_dec.shape)[0]}x{tuple(W_dec.shape)[1]}:{_tensor_digest(W_dec)}"


def data_fingerprint(rows: Float[Tensor, "n d"]) -> str:
    """A 16-hex-digit hash of activation rows (the first training rows, when nothing else names the data)."""
    return f"{rows.shape[0]}x{rows.shape[1]}:{_tensor_digest(rows)}"


def init_record(mode: str, seed: int, init_seed: int, identity: Mapping[str, Any], W_dec: Tensor) -> dict[str, Any]:
    """The ``meta["init"]`` of a dictionary whose initial decoder is ``W_dec``."""
    return {"mode": mode, "seed": int(seed), "init_seed": int(init_seed), "identity": dict(identity),
            "decoder_fingerprint": decoder_fingerprint(W_dec)}


def _meta(d: Any) -> Mapping[str, Any]:
    meta = d if isinstance(d, Mapping) else getattr(d, "meta", None)
    return meta if isinstance(meta, Mapping) else {}


def initialisation(d: Any) -> dict[str, Any] | None:
    """The ``meta["init"]`` record of a dictionary (an SAE or its meta mapping), or ``None``."""
    rec = _meta(d).get("init")
    return dict(rec) if isinstance(rec, Mapping) else None


def _name(d: Any, side: str) -> str:
    meta = _meta(d)
    name = meta.get("name") or meta.get("site")
    return f"{side} ({name})" if name else side


def _shape(d: Any) -> tuple[int, int] | None:
    cfg = getattr(d, "cfg", None)
    if cfg is not None and hasattr(cfg, "d_sae") and hasattr(cfg, "d_in"):
        return int(cfg.d_sae), int(cfg.d_in)
    W = getattr(d, "W_dec", None)
    if isinstance(W, Tensor) and W.ndim == 2:
        return int(W.shape[0]), int(W.shape[1])
    sae = _meta(d).get("sae")
    if isinstance(sae, Mapping) and sae.get("d_sae") is not None and sae.get("d_in") is not None:
        return int(sae["d_sae"]), int(sae["d_in"])
    return None


def _recorded_seed(d: Any) -> int | None:
    meta = _meta(d)
    rec = initialisation(d)
    if rec is not None and rec.get("seed") is not None:
        return int(rec["seed"])
    train = meta.get("train")
    if isinstance(train, Mapping) and train.get("seed") is not None:
        return int(train["seed"])
    return None


def same_training_run(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` are (checkpoints of) the same training run: equal recorded init
    identities, or - for artifacts without init records - equal recorded name, site and provenance."""
    ra, rb = initialisation(a), initialisation(b)
    if ra is not None and rb is not None:
        return ra.get("identity") == rb.get("identity") and ra.get("init_seed") == rb.get("init_seed")
    ma, mb = _meta(a), _meta(b)
    if ra is not None or rb is not None or not ma.get("name"):
        return False
    return all(ma.get(k) == mb.get(k) for k in ("name", "site", *PROVENANCE_KEYS))


def shared_initialisation(a: Any, b: Any) -> str | None:
    """A one-line reason when dictionaries ``a`` and ``b`` started from the same initial weights, else ``None``.

    ``a`` and ``b`` are SAEs (or their ``meta`` mappings). They share an initialisation when both
    record the same initial-decoder fingerprint (``meta["init"]["decoder_fingerprint"]``), or - for
    artifacts saved before init records existed, or trained with ``TrainConfig(init="seed")`` - when
    they record the same seed, have the same shape and neither records a derived initialisation.
    Dictionaries without any recorded seed (plain tensors, foreign artifacts) give ``None``.
    """
    na, nb = _name(a, "a"), _name(b, "b")
    ra, rb = initialisation(a), initialisation(b)
    fa = ra.get("decoder_fingerprint") if ra else None
    fb = rb.get("decoder_fingerprint") if rb else None
    if fa is not None and fb is not None:
        if fa != fb:
            return None
        if same_training_run(a, b):
            why = "they are the same training run (equal init identity), e.g. two checkpoints of it"
        else:
            why = f"both were initialised from seed {ra.get('init_seed')} ({ra.get('mode')} init)"
        return (f"shared initialisation: dictionaries {na} and {nb} start from the same initial decoder "
                f"(fingerprint {fa}): {why}, so part of their similarity comes from the shared start, not the data; "
                "retrain one with TrainConfig(init='derived') (the default) or another seed to compare independent starts")
    if (ra is not None and ra.get("mode") == "derived") or (rb is not None and rb.get("mode") == "derived"):
        return None
    sa, sb = _recorded_seed(a), _recorded_seed(b)
    shape_a, shape_b = _shape(a), _shape(b)
    if sa is None or sb is None or sa != sb or shape_a is None or shape_a != shape_b:
        return None
    return (f"shared initialisation: dictionaries {na} and {nb} were both initialised from seed {sa} with shape "
            f"{shape_a[0]}x{shape_a[1]} and record no derived initialisation, so they started from the same random "
            "decoder and part of their similarity comes from the shared start, not the data; retrain one with "
            "TrainConfig(init='derived') (the default) or another seed to compare independent starts")

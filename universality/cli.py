"""``universality-tool`` (``python -m universality.cli``): look at and compare artifacts from the shell.

Commands::

    inspect PATH [--expect KEY=VALUE ...] [--revision R] [--deep] [--json]
        Print what a dictionary folder, activation store, training checkpoint, study folder, model
        folder (or step{N}/ series), safetensors or JSON file says about itself, and verify it
        (weights load with the right shapes and are finite, shard headers fit their files, ...).
        ``--expect model=... site=...`` checks recorded fields against what you meant to open.
    match A B [--method M] [--view V] [--store S] [--store-b S2] [--site SITE] [--max-rows N]
              [--skyline A2] [--skyline-b B2] [--n-perm N] [--n-boot N] [--boot-block N] [--out FILE.json]
        Match two saved dictionaries with :func:`universality.match.match` and print every summary
        metric of :func:`universality.match.compare` with its floor, skyline, normalised value,
        p-value (``p_method``, ``p_resolution``), bootstrap interval (``ci_low``, ``ci_high``,
        ``ci_method``) and ``note``; the match result's ``value`` comes with ``value_meaning``.
        ``--store`` supplies activations (rows of the dictionaries' site) for the activation view.
    cards A [B] --store S --out DIR [--store-b S2] [--model M] [--tokenizer T] [--max-rows N] [--neuronpedia DIR]
        Write DIR/cards.html (self-contained, rendered page by page) and DIR/cards.json: the feature
        card of every live latent of A (top contexts, quantile-band samples, density, histogram, token
        identity share, direct logit effects with --model), or with B the pair cards of their match
        (best and worst pairs side by side, contexts where only one fires, unmatched latents of each
        side); see :mod:`universality.cards.command`.
    validate [OVERRIDES ...]
        Compose and validate a study config (``study=... study.sae.steps=...``) without running it.

Error policy: bad input raises a :class:`~universality.errors.UniversalityError`; the tool prints
one ``error: <problem>; <fix>`` line on stderr and exits with status 2 (argparse usage errors exit
with 2 too). Nothing is written unless a command succeeds; ``--out`` is written atomically. Pickle
files (``.bin``, ``.pt``, ``.pkl``...) are never unpickled.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from universality.errors import ArtifactError, ConfigError, MatchError, UniversalityError, error_line
from universality.sites import Site, as_site

__all__ = ["main", "build_parser", "describe_path", "MATCH_FORMAT"]

MATCH_FORMAT = "universality.match_summary/1"
_DEEP_ROWS = 8192  # rows per read when --deep checks every value (bounded memory)
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy", ".npz", ".joblib")


# ----------------------------------------------------------------------------- inspect
def _parse_expect(items: Sequence[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--expect {item!r} is not KEY=VALUE", "write e.g. --expect model=EleutherAI/pythia-70m")
        out[key.strip()] = value
    return out


def _check_recorded(what: str, record: dict[str, Any], expect: dict[str, str], allowed: Sequence[str]) -> None:
    for key, want in expect.items():
        if key not in allowed:
            raise ConfigError(f"cannot check {key!r} of a {what}", f"use --expect with one of {', '.join(allowed)}")
        have = record.get(key)
        if str(have) != want:
            raise ArtifactError(f"{what} records {key}={have!r}, not {want!r}",
                                "open the artifact that matches the request, or re-create it")


def _finite_tensors(tensors: dict[str, Any], where: str) -> None:
    import torch

    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ArtifactError(f"{where}: tensor {name} holds NaN or Inf", "the artifact is corrupt; re-create it")


def _describe_file(path: Path) -> dict[str, Any]:
    # import cost: torch and model code load only for the command that needs them (--help stays fast)
    from universality.io import load_tensors, read_json, sha256_file

    suffix = path.suffix.lower()
    if suffix in _PICKLE_SUFFIXES:
        raise ArtifactError(f"{path} is a pickle-based file, which can run code when loaded and is never read here",
                            "convert it to safetensors (safetensors.torch.save_file) and inspect that")
    if suffix == ".safetensors":
        tensors = load_tensors(path)
        _finite_tensors(tensors, str(path))
        return {"kind": "safetensors", "path": str(path), "sha256": sha256_file(path),
                "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                            for k, v in sorted(tensors.items())}}
    if suffix == ".json":
        return {"kind": "json", "path": str(path), "content": read_json(path)}
    raise ArtifactError(f"{path} is neither a safetensors nor a JSON file", "inspect an artifact folder or a .safetensors/.json file")


def _describe_sae(path: Path, expect: dict[str, str]) -> dict[str, Any]:
    import torch

    # import cost: torch and model code load only for the command that needs them (--help stays fast)
    from universality.sae import SAE

    sae = SAE.load(path, device="cpu")
    tensors = {k: v for k, v in sae.state_dict().items()}
    _finite_tensors(tensors, str(path))
    norms = sae.W_dec.detach().float().norm(dim=1)
    record = {"architecture": sae.architecture, "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae, "k": getattr(sae.cfg, "k", None),
              **{k: sae.meta.get(k) for k in ("model", "revision", "site", "dataset", "subset_hash")}}
    _check_recorded(f"dictionary {path}", record, expect, list(record))
    return {"kind": "dictionary", "path": str(path), **record,
            "normalisation": sae.meta.get("normalisation"), "metrics": sae.meta.get("metrics"),
            "decoder_row_norm": {"min": float(norms.min()), "max": float(norms.max())},
            "unit_decoder_rows": bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-3)),
            "imported_from": (sae.meta.get("imported_from") or {}).get("format")}


def _describe_store(path: Path, expect: dict[str, str], deep: bool) -> dict[str, Any]:
    import torch

    # import cost: torch and model code load only for the command that needs them (--help stays fast)
    from universality.activations import ActivationStore
    from universality.study.config import inside

    store = ActivationStore.open(path, expect=expect or None, verify="all" if deep else "lazy")
    keys = [f"acts/{s}" for s in store.sites]
    for i, shard in enumerate(store.shards):
        for name in (shard.get("file"), shard.get("docs")):
            try:
                inside(path, str(name))
            except ConfigError:
                raise ArtifactError(f"manifest of {path} names shard file {name!r} outside the store",
                                    "the manifest is corrupt or hostile; re-harvest the store") from None
        for key in keys + ["token_ids"]:
            _, shape = store.key_info(i, key)  # parses the header; data past the end of the file is refused
            if shape[0] != int(shard["rows"]):
                raise ArtifactError(f"shard {i} of {path}: {key} has {shape[0]} rows, the manifest says {shard['rows']}",
                                    "the store is corrupt; re-harvest it")
        for lo in range(0, int(shard["rows"]), _DEEP_ROWS) if deep else ():
            for key, t in store.read_rows(i, keys, lo, lo + _DEEP_ROWS).items():
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise ArtifactError(f"shard {i} of {path} holds NaN or Inf in {key}", "re-harvest the store")
    m = store.manifest
    return {"kind": "activation_store", "path": str(path), **store.describe(),
            "sites": {s: {"width": v["width"], "dtype": v["dtype"]} for s, v in m["sites"].items()},
            "shards": len(store.shards),
            "verified": "checksums and every value" if deep else "manifest and shard headers (--deep: checksums, values)"}


def _describe_checkpoint(path: Path) -> dict[str, Any]:
    # import cost: torch and model code load only for the command that needs them (--help stays fast)
    from universality.train.checkpoint import read_checkpoint

    root = path.parent if path.name == "checkpoint" else path
    tensors, doc = read_checkpoint(root)
    _finite_tensors({k: v for k, v in tensors.items() if not k.startswith("rng/")}, str(path))
    return {"kind": "training_checkpoint", "path": str(path), "step": doc.get("step"), "tokens": doc.get("tokens"),
            "tensors": len(tensors), "dictionaries": sorted({k.split("/")[1] for k in tensors if k.startswith("sae/")})}


def _describe_study(path: Path) -> dict[str, Any]:
    # import cost: torch and model code load only for the command that needs them (--help stays fast)
    from universality.io import read_json

    doc = read_json(path / "study.json")
    if not isinstance(doc, dict) or "study" not in doc:
        raise ArtifactError(f"{path / 'study.json'} is not a study record", "point inspect at a study output folder")
    cache = path / "cache"
    stages = sorted(p.name for p in cache.iterdir() if (p / "stage.json").is_file()) if cache.is_dir() else []
    return {"kind": "study", "path": str(path), "study": doc["study"], "stages": stages,
            "report": str(path / "report.html") if (path / "report.html").is_file() else None}


def _describe_model(path: Path, revision: str | None) -> dict[str, Any]:
    # import cost: torch and model code load only for the command that needs them (--help stays fast)
    import models

    adapter = models.load(str(path), revision=revision, device="cpu")
    return {"kind": "model", "path": str(path), "family": adapter.family, "revision": adapter.revision,
            "n_layers": adapter.n_layers, "d_model": adapter.d_model, "sites": len(adapter.sites),
            "checkpoints": list(adapter.checkpoints)}


def describe_path(path: str | Path, expect: dict[str, str] | None = None, revision: str | None = None,
                  deep: bool = False) -> dict[str, Any]:
    """Self-description of the artifact at ``path`` (kind detected from its files), verified on the way.

    Raises :class:`~universality.errors.ArtifactError` for a missing, unknown, corrupt or mismatching
    artifact (``expect`` holds recorded fields to check, e.g. ``{"model": ..., "site": ...}``).
    """
    p = Path(path)
    expect = dict(expect or {})
    if not p.exists():
        raise ArtifactError(f"{p} does not exist", "check the path")
    if revision is not None and not (p.is_dir() and ((p / "config.json").is_file() or any(p.glob("step*/config.json")))):
        raise ConfigError("--revision applies to model folders only", "drop --revision, or point at a model folder")
    if p.is_file():
        if expect:
            raise ConfigError("--expect applies to artifact folders only", "point inspect at the folder")
        return _describe_file(p)
    if (p / "manifest.json").is_file():
        return _describe_store(p, expect, deep)
    if (p / "cfg.json").is_file():
        return _describe_sae(p, expect)
    if expect:
        raise ConfigError(f"--expect applies to dictionaries and activation stores, not {p}", "drop --expect")
    if (p / "checkpoint" / "state.json").is_file() or (p.name == "checkpoint" and (p / "state.json").is_file()):
        return _describe_checkpoint(p)
    if (p / "study.json").is_file():
        return _describe_study(p)
    if (p / "config.json").is_file() or any(p.glob("step*/config.json")):
        return _describe_model(p, revision)
    raise ArtifactError(f"{p} holds no known artifact (no cfg.json, manifest.json, study.json, config.json or checkpoint/)",
                        "point inspect at a dictionary, activation store, checkpoint, study or model folder")


# ----------------------------------------------------------------------------- match
def _store_rows(path: str, site: Site, max_rows: int) -> tuple[Any, Any]:
    """The first ``max_rows`` rows of ``site`` in a store, and one int64 key per row that mixes the token
    id, the document index and the position, so two stores fingerprint equal only on the same tokens."""
    import torch

    # import cost: torch and model code load only for the command that needs them (--help stays fast)
    from universality.activations import ActivationStore

    store = ActivationStore.open(path, expect={"site": site})
    acts = f"acts/{site.name}"  # the shard key (the store's on-disk layout)
    keys = [acts, "token_ids", "doc_index", "position"]
    parts, got = [], 0
    for i, shard in enumerate(store.shards):
        if got >= max_rows:
            break
        take = min(int(shard["rows"]), max_rows - got)
        parts.append(store.read_rows(i, keys, 0, take))
        got += take
    if not parts:
        raise ArtifactError(f"activation store {path} holds no rows", "harvest into it first")
    cat = {k: torch.cat([p[k] for p in parts]) for k in keys}
    prime = 1_000_003  # int64 arithmetic wraps deterministically; the key only feeds a fingerprint
    token_key = (cat["doc_index"].long() * prime + cat["position"].long()) * prime + cat["token_ids"].long()
    return cat[acts].float(), token_key


def _site_of(sae: Any, given: str | None, label: str) -> Site:
    """The site of dictionary ``label``: ``--site`` or the one its ``cfg.json`` records, parsed once here."""
    site = given or sae.meta.get("site")
    if not site:
        raise ConfigError(f"dictionary {label} records no site", "pass --site blocks.{layer}.hook_...")
    return as_site(site)


def _check_width(x: Any, sae: Any, label: str, store: str) -> None:
    if x.shape[1] != sae.cfg.d_in:
        raise MatchError(f"store {store} rows have width {x.shape[1]} but dictionary {label} reads d_in={sae.cfg.d_in}",
                         "pass the store (and --site) that the dictionary was trained on")


def _check_out(out: str | None) -> Path | None:
    # import cost: torch and model code load only for the command that needs them (--help stays fast)
    from universality.io import read_json

    if out is None:
        return None
    p = Path(out)
    if p.suffix != ".json":
        raise ConfigError(f"--out {out!r} must name a .json file", "write e.g. --out match.json")
    if p.is_dir():
        raise ArtifactError(f"--out {out!r} is a folder", "name a .json file")
    _check_writable(p)
    if p.exists():
        held = read_json(p)
        if not isinstance(held, dict) or held.get("format") != MATCH_FORMAT:
            raise ArtifactError(f"{p} already exists and is not a match summary", "choose another --out file")
    return p


def _check_writable(p: Path) -> None:
    """Raise :class:`ArtifactError` unless ``p`` can be written: its nearest existing ancestor folder is a
    folder this user may write (the folders below it are created on write)."""
    import os

    folder = p.parent
    existing = next((q for q in (folder, *folder.parents) if q.exists() or q.is_symlink()), Path("."))
    if not existing.is_dir():
        raise ArtifactError(f"cannot write --out {p}: {existing} is a file, not a folder",
                            "choose an --out path inside a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ArtifactError(f"cannot write --out {p}: the folder {existing} is not writable",
                            "choose an --out path in a folder you can write, or change its permissions")


def _write_out(out: Path, summary: dict[str, Any]) -> None:
    # import cost: torch and model code load only for the command that needs them (--help stays fast)
    from universality.io import write_json

    try:
        write_json(out, summary)
    except OSError as exc:  # after the checks: a full disk, a folder that changed meanwhile
        raise ArtifactError(f"cannot write --out {out} ({exc.strerror or type(exc).__name__})",
                            "free space or fix the folder, then run the command again; nothing was written") from None


def _check_skyline(sky: Any, sae: Any, flag: str, path: str, label: str) -> None:
    """A skyline is a second-seed copy of dictionary ``label``: same input width and number of latents."""
    if sky is None:
        return
    have, want = (sky.cfg.d_in, sky.cfg.d_sae), (sae.cfg.d_in, sae.cfg.d_sae)
    if have != want:
        raise MatchError(
            f"the skyline {flag} {path} has width d_in={have[0]}, d_sae={have[1]} but dictionary {label} has "
            f"d_in={want[0]}, d_sae={want[1]}",
            f"pass as {flag} a dictionary trained like {label} (same site and width) with another seed",
        )


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def run_match(args: argparse.Namespace) -> dict[str, Any]:
    """The ``match`` command: load, validate, match, compare; returns the summary it prints."""
    # import cost: torch and model code load only for the command that needs them (--help stays fast)
    from universality.match import compare, match
    from universality.sae import SAE

    # import cost: torch and model code load only for the command that needs them (--help stays fast)
    from universality.match.api import METHODS
    from universality.match.views import VIEWS

    if args.method not in METHODS:
        raise MatchError(f"unknown method {args.method!r}", f"use one of {', '.join(METHODS)}")
    if args.view not in VIEWS:
        raise MatchError(f"unknown view {args.view!r}", f"use one of {', '.join(VIEWS)}")
    out = _check_out(args.out)
    if args.max_rows < 2:
        raise ConfigError(f"--max-rows must be >= 2, got {args.max_rows}", "use e.g. --max-rows 4096")
    for flag, value, low, example in (("--n-perm", args.n_perm, 0, 49), ("--n-boot", args.n_boot, 0, 100),
                                      ("--boot-block", args.boot_block, 1, 64)):
        if value is not None and value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value}", f"use e.g. {flag} {example}")
    if args.store_b and not args.store:
        raise ConfigError("--store-b needs --store", "pass --store for a and --store-b for b")
    if args.view == "activations" and not args.store:
        raise ConfigError("--view activations needs activations", "pass --store (and --store-b when b reads another model)")
    a, b = SAE.load(args.a, device="cpu"), SAE.load(args.b, device="cpu")
    sky_a = SAE.load(args.skyline, device="cpu") if args.skyline else None
    sky_b = SAE.load(args.skyline_b, device="cpu") if args.skyline_b else None
    if sky_b is not None and sky_a is None:
        raise ConfigError("--skyline-b needs --skyline", "pass a second-seed copy of a with --skyline")
    _check_skyline(sky_a, a, "--skyline", args.skyline, "a")
    _check_skyline(sky_b, b, "--skyline-b", args.skyline_b, "b")
    activations = token_ids = None
    if args.store:
        site_a = _site_of(a, args.site, "a")
        site_b = _site_of(b, args.site_b or args.site, "b")
        xa, ta = _store_rows(args.store, site_a, args.max_rows)
        xb, tb = _store_rows(args.store_b or args.store, site_b, args.max_rows) if (args.store_b or site_b != site_a) \
            else (xa, ta)
        _check_width(xa, a, "a", args.store)
        _check_width(xb, b, "b", args.store_b or args.store)
        activations = (xa, xb) if xb is not xa else xa
        token_ids = (ta, tb) if tb is not ta else ta
    res = match(a, b, method=args.method, view=args.view, activations=activations, token_ids=token_ids, device="cpu")
    skyline = (sky_a, sky_b) if sky_b is not None else sky_a
    given = {k: v for k, v in (("n_perm", args.n_perm), ("n_boot", args.n_boot), ("boot_block", args.boot_block))
             if v is not None}  # unset: compare's defaults
    table = compare(a, b, activations=activations, token_ids=token_ids, skyline=skyline, seed=args.seed, **given)
    summary = {
        "format": MATCH_FORMAT, "a": str(args.a), "b": str(args.b), "method": args.method, "view": args.view,
        "store": args.store, "store_b": args.store_b, "n_a": res.meta.get("n_a"), "n_b": res.meta.get("n_b"),
        "pairs": len(res), "mean_score": res.mean_score, "value": res.value, "value_meaning": res.value_meaning,
        "metrics": table.to_dict(orient="records"),
    }
    summary = _json_safe(summary)
    if out is not None:
        _write_out(out, summary)
    return {**summary, "_table": table}


# ----------------------------------------------------------------------------- validate
def run_validate(overrides: Sequence[str]) -> dict[str, Any]:
    # import cost: torch and model code load only for the command that needs them (--help stays fast)
    from universality.study.config import check_inputs, compose_study

    study = compose_study(overrides)
    check_inputs(study)
    from universality.study.preflight import preflight  # import cost (torch, models): only once the config is valid
    from universality.study.record import check_out_folder

    check_out_folder(Path(study.out_dir), study)
    notes = preflight(study)
    return {"study": study.name, "out_dir": study.out_dir, "analyses": list(study.analyses),
            "models": [m.name for m in study.models], "sites": {m.name: list(study.sites_for(m.name)) for m in study.models},
            "sae": study.sae.describe(), "seeds": list(study.sae.seeds), "notes": notes}


# ----------------------------------------------------------------------------- entry point
_PATH_ARGS = ("path", "a", "b", "store", "store_b", "skyline", "skyline_b", "out", "tokenizer", "neuronpedia")
_MAX_SPLIT = 8  # pieces of one path the shell may have split it into that are looked for


def _split_path(argv: Sequence[str], start: int) -> str | None:
    """The existing path that ``argv[start]`` and the arguments after it name when joined by single
    spaces (an unquoted path with spaces, split by the shell), or None."""
    for end in range(start + 2, min(len(argv), start + _MAX_SPLIT) + 1):
        candidate = " ".join(argv[start:end])
        if Path(candidate).exists():
            return candidate
    return None


def _first_split_path(argv: Sequence[str]) -> str | None:
    return next((hit for i in range(len(argv)) if (hit := _split_path(argv, i))), None)


def _quote_hint(path: str) -> str:
    return f'quote it: "{path}" (or escape its spaces with a backslash)'


def _check_split_paths(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """Raise :class:`ConfigError` when a path argument does not exist but, joined with the arguments
    after it, names a path that does (an unquoted path with spaces or non-ASCII names)."""
    for name in _PATH_ARGS:
        value = getattr(args, name, None)
        if not value or Path(value).exists() or value not in argv:
            continue
        whole = _split_path(argv, list(argv).index(value))
        if whole is not None:
            raise ConfigError(f"{value!r} does not exist, but {whole!r} does: the shell split that path at its spaces",
                              _quote_hint(whole))


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit status 2, like every bad input)."""

    argv: Sequence[str] = ()  # the arguments being parsed (set by :func:`main`), to recognise split paths

    def error(self, message: str) -> None:  # type: ignore[override]
        message = " ".join(message.split())
        whole = _first_split_path(self.argv) if message.startswith("unrecognized arguments") else None
        if whole is not None:
            print(f"error: the path {whole!r} was split at its spaces into several arguments ({message}); "
                  f"{_quote_hint(whole)}", file=sys.stderr)
        elif message.startswith("unrecognized arguments"):
            print(f"error: {message}; if a path holds spaces, quote it (\"my dir/sae\"), or see {self.prog} --help",
                  file=sys.stderr)
        else:
            print(f"error: {message}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (imports nothing heavy; ``--method``/``--view`` are checked by ``match``)."""
    parser = _Parser(prog="universality-tool", description="Inspect and compare universality artifacts.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("inspect", help="describe and verify an artifact")
    p.add_argument("path")
    p.add_argument("--expect", action="append", metavar="KEY=VALUE", help="check a recorded field (repeatable)")
    p.add_argument("--revision", help="checkpoint of a model series folder")
    p.add_argument("--deep", action="store_true", help="read every value of an activation store")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("match", help="match two dictionaries and report every metric with its baselines")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--method", default="hungarian", help="hungarian (default), sparse, mnn, many_to_one, emd, "
                   "sinkhorn, unbalanced, partial, gw (works across widths) or fgw")
    p.add_argument("--view", default="decoder", help="decoder (default), encoder or activations (needs --store)")
    p.add_argument("--store", help="activation store for a (and b)")
    p.add_argument("--store-b", help="activation store for b when it reads another model")
    p.add_argument("--site", help="site of a in the store (default: the dictionary's recorded site)")
    p.add_argument("--site-b", help="site of b (default: --site or b's recorded site)")
    p.add_argument("--max-rows", type=int, default=4096, help="rows read from each store")
    p.add_argument("--skyline", help="a second-seed copy of a")
    p.add_argument("--skyline-b", help="a second-seed copy of b")
    p.add_argument("--n-perm", type=int, default=None,
                   help="null samples for the p-values (default 49: exact p down to 0.02, a fitted normal tail "
                        "below, see the p_method column; 0: none)")
    p.add_argument("--n-boot", type=int, default=None,
                   help="block-bootstrap replicates of the activation metrics' intervals (default 100; 0: none)")
    p.add_argument("--boot-block", type=int, default=None,
                   help="tokens per bootstrap block (default 64; pass the context length of the store)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random floor and the bootstrap")
    p.add_argument("--out", help="also write the summary to this .json file")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("cards", help="write the feature-card page of a dictionary, or the pair cards of two")
    p.add_argument("a")
    p.add_argument("b", nargs="?", default=None)
    p.add_argument("--store", required=True, help="activation store of a's site (and b's, unless --store-b)")
    p.add_argument("--store-b", help="store for b when it reads another model (same tokens, same order)")
    p.add_argument("--site", help="site of a in the store (default: the dictionary's recorded site)")
    p.add_argument("--site-b", help="site of b (default: b's recorded site)")
    p.add_argument("--out", required=True, help="folder for cards.html and cards.json")
    p.add_argument("--max-rows", type=int, default=16384, help="evaluation rows read from the store (whole contexts)")
    p.add_argument("--model", help="model folder or hub name: tokenizer and direct logit effects")
    p.add_argument("--revision", help="revision of --model")
    p.add_argument("--model-b", help="b's model, for b's logit effects (default: --model)")
    p.add_argument("--revision-b", help="revision of --model-b")
    p.add_argument("--tokenizer", help="tokenizer folder (when no --model is given)")
    p.add_argument("--method", default="hungarian", help="matching method for two dictionaries (default hungarian)")
    p.add_argument("--view", default="activations", help="matching view (default activations)")
    p.add_argument("--n-shown", type=int, default=40, help="best and worst pairs given pair cards, and unmatched latents shown")
    p.add_argument("--seed", type=int, default=0, help="seed of the quantile-band samples")
    p.add_argument("--neuronpedia", metavar="DIR", help="also export a's cards as SAEDashboard/Neuronpedia batch files")
    p.add_argument("--neuronpedia-model", help="Neuronpedia model id of the export (default: the recorded model)")
    p.add_argument("--neuronpedia-set", help="Neuronpedia source-set name of the export (default: a's folder name)")
    p.add_argument("--overwrite-export", action="store_true", help="replace a non-empty --neuronpedia folder")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("validate", help="compose and validate a study config without running it")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. study=layer_flow study.sae.steps=100")
    p.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _print(doc: dict[str, Any], as_json: bool) -> None:
    table = doc.pop("_table", None)
    if as_json:
        print(json.dumps(_json_safe(doc), indent=2, sort_keys=True, default=str))
        return
    for key, value in doc.items():
        if key == "metrics":
            continue
        print(f"{key}: {json.dumps(value, default=str) if isinstance(value, (dict, list)) else value}")
    if table is not None:
        import pandas as pd

        with pd.option_context("display.max_rows", 500, "display.width", 200, "display.max_columns", 20):
            print(table.drop(columns=["source"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool; returns the exit status (0 ok, 2 bad input)."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    parser.argv = argv  # type: ignore[attr-defined]
    args = parser.parse_args(argv)
    try:
        _check_split_paths(args, argv)
        if args.command == "inspect":
            doc = describe_path(args.path, _parse_expect(args.expect), args.revision, args.deep)
        elif args.command == "match":
            doc = run_match(args)
        elif args.command == "cards":
            # import cost: torch, the card builder and the page writer load only for this command
            from universality.cards.command import run_cards

            doc = run_cards(args)
        else:
            doc = run_validate(args.overrides)
    except UniversalityError as exc:
        print(error_line(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; rerun the command", file=sys.stderr)
        return 130
    try:
        _print(doc, args.json)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly, as the Python docs advise
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return 0


def _entry() -> None:
    """Console-script entry point (``universality-tool``)."""
    sys.exit(main())


if __name__ == "__main__":
    _entry()

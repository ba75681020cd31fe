"""``python -m universality``: run a study from configs/ (default: the offline quickstart).

Hydra overrides work as usual: ``python -m universality study=feature_evolution``,
``python -m universality study.sae.steps=200``, sweeps with ``-m``.

Error policy: before Hydra starts (and before it creates its run folder), a single run's overrides
are composed and validated (:func:`universality.study.config.compose_study`) and its output folder
is checked; any bad input - an unknown key, a value of the wrong type, a bad value, an output folder
that holds another study - prints one ``error: <problem>; <fix>`` line to stderr and exits with
status 2, leaving the disk untouched. Runs with Hydra flags (``-m``, ``--cfg``, ``--info``...) go
straight to Hydra, whose own errors exit with status 1; errors inside a job still exit with 2.

``--help`` (``-h``) prints :func:`help_text`: the study presets with their one-line descriptions and
every study field with its type and default, generated from ``configs/study/*.yaml`` and the
:class:`~universality.study.config.StudyConfig` dataclasses. Hydra's own help is ``--hydra-help``.
The config folder is :func:`universality.resources.config_dir` (the checkout's ``configs/``, or
``universality/configs`` in an installed wheel).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import textwrap
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from universality.errors import UniversalityError, error_line
from universality.resources import config_dir, preset_description, preset_names
from universality.study.config import StudyConfig, check_inputs, compose_study, register_configs, study_from_dict

CONFIG_DIR = str(config_dir())


@hydra.main(version_base=None, config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from universality.study.runner import run_study  # import cost: torch, models and the trainer, for a run only

    logging.getLogger("universality").setLevel(logging.INFO)
    try:
        study = study_from_dict(OmegaConf.to_container(cfg.study, resolve=True))
    except UniversalityError as exc:
        print(error_line(exc), file=sys.stderr)
        sys.exit(2)
    try:
        outcome = run_study(study)
    except UniversalityError as exc:
        print(error_line(exc), file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"interrupted: study {study.name} stopped; run the same command again to resume "
              f"(finished stages are kept in {study.out_dir}/cache)", file=sys.stderr)
        sys.exit(130)
    print(f"study {study.name} done in {outcome.seconds:.0f} s ({outcome.cache_hits} cached stages reused)")
    print(f"report: {outcome.report_html}")
    print(f"        {outcome.report_md}")
    print(f"tidy results: {outcome.results_csv}")


def precheck(overrides: Sequence[str]) -> None:
    """Compose and validate a single run's config, check its local inputs and its output folder; raises
    :class:`~universality.errors.UniversalityError` on bad input. Writes nothing."""
    study = compose_study(overrides, CONFIG_DIR)
    check_inputs(study)
    # import cost: preflight pulls torch and the model adapters; only once the config is valid
    from universality.study.preflight import preflight
    from universality.study.record import check_out_folder

    check_out_folder(Path(study.out_dir), study)
    preflight(study)


def _type_name(tp: Any) -> str:
    if isinstance(tp, str):  # postponed annotations: the source text, e.g. "tuple[int, ...]"
        return tp
    return getattr(tp, "__name__", None) if isinstance(tp, type) else str(tp).replace("typing.", "")


def _value_text(value: Any) -> str:
    """A default as it would be written in YAML."""
    if value is dataclasses.MISSING:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass a field holds (``CorpusConfig``) or lists (``tuple[ModelSpec, ...]``), if any."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (tuple, list):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if len(args) == 1 and isinstance(args[0], type) and dataclasses.is_dataclass(args[0]):
            return args[0]
    return None


def study_fields(cls: type = StudyConfig, prefix: str = "study", defaults: Any = None) -> list[tuple[str, str, str]]:
    """``(key, type, default)`` of every field of the study config, read from its dataclasses.

    A field holding a dataclass (``corpus``, ``sae``, ...) is listed field by field under its key
    (``study.sae.k``); a list of dataclasses (``models``) is listed as itself and then as
    ``study.models[].<field>``. ``defaults``: an instance whose values are the defaults (a section's
    default object), else the class defaults.
    """
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # a postponed annotation that does not resolve: fall back to the source text
        hints = {}
    rows: list[tuple[str, str, str]] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = f"{prefix}.{f.name}"
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        hint = hints.get(f.name, f.type)
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            rows += study_fields(type(default), key, default)
            continue
        nested = _dataclass_in(hint)
        if nested is not None and default is dataclasses.MISSING and typing.get_origin(hint) is None:
            rows += study_fields(nested, key)
            continue
        rows.append((key, _type_name(f.type), _value_text(default)))
        if nested is not None:
            rows += study_fields(nested, f"{key}[]")
    return rows


def _table(rows: Sequence[tuple[str, ...]], width: int, indent: str = "  ") -> list[str]:
    """Rows as aligned columns; the last column wraps under itself."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lead = sum(w + 2 for w in widths)
    out = []
    for row in rows:
        head = "".join(cell.ljust(w + 2) for cell, w in zip(row, widths))
        last = textwrap.wrap(row[-1], max(20, width - len(indent) - lead), break_on_hyphens=False) or [""]
        out.append(f"{indent}{head}{last[0]}".rstrip())
        out += [f"{indent}{' ' * lead}{more}" for more in last[1:]]
    return out


def help_text(width: int | None = None) -> str:
    """The text of ``python -m universality --help``: usage, studies, sweeps, study fields, flags."""
    width = width or min(120, max(80, shutil.get_terminal_size((100, 24)).columns))
    studies = [(n, preset_description("study", n)) for n in preset_names("study")]
    sweeps = [(n, preset_description("sweep", n)) for n in preset_names("sweep")]
    lines = [
        "usage: python -m universality [study=NAME] [study.KEY=VALUE ...] [-m [+sweep=NAME]] [--cfg job] [--hydra-help]",
        "",
        "Run one study (default: quickstart): train or load its models, harvest activations, train SAEs, match",
        "them and write a report to study.out_dir. Overrides use Hydra's syntax (key=value, +key=value).",
        f"Configs: {config_dir()}",
        "",
        "studies (study=NAME, from configs/study/NAME.yaml):",
        *(_table(studies, width) if studies else ["  (none found)"]),
    ]
    if sweeps:
        lines += ["", "sweeps (-m +sweep=NAME, from configs/sweep/NAME.yaml):", *_table(sweeps, width)]
    lines += [
        "",
        "study fields (study.KEY=VALUE; a study preset sets the required ones):",
        *_table([("key", "type", "default"), *study_fields()], width),
        "",
        "flags:",
        *_table([
            ("-h, --help", "this text"),
            ("-m, --multirun", "run every combination of comma-separated values (a=1,2) or a +sweep preset"),
            ("--cfg job", "print the composed config instead of running (add --resolve to resolve ${...})"),
            ("--info", "print Hydra's config search path and defaults tree"),
            ("--hydra-help", "Hydra's own help: all of its flags and config groups"),
        ], width),
        "",
        "examples:",
        "  python -m universality                                      # the offline quickstart",
        "  python -m universality study=feature_evolution study.sae.steps=200",
        "  python -m universality study=layer_flow --cfg job           # print the config, run nothing",
        "  python -m universality -m study.sae.steps=300,600 'study.out_dir=runs/qs_${study.sae.steps}'  # two runs",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "--help" in args or "-h" in args:
        sys.stdout.write(help_text())
        return
    if not any(a.startswith("-") for a in args):
        try:
            precheck(args)
        except UniversalityError as exc:
            print(error_line(exc), file=sys.stderr)
            sys.exit(2)
    register_configs()
    if argv is not None:
        sys.argv = [sys.argv[0], *args]
    _hydra_main()


if __name__ == "__main__":
    main()

"""``python -m universality``: run a study from configs/ (default: the offline quickstart).

Hydra overrides work as usual: ``python -m universality study=feature_evolution``,
``python -m universality study.sae.steps=200``, sweeps with ``-m``.

Error policy: before Hydra starts (and before it creates its run folder), a single run's overrides
are composed and validated (:func:`universality.study.config.compose_study`) and its output folder
is checked; any bad input - an unknown key, a value of the wrong type, a bad value, an output folder
that holds another study - prints one ``error: <problem>; <fix>`` line to stderr and exits with
status 2, leaving the disk untouched. Runs with Hydra flags (``-m``, ``--cfg``, ``--help``...) go
straight to Hydra, whose own errors exit with status 1; errors inside a job still exit with 2.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from universality.errors import UniversalityError, error_line

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


@hydra.main(version_base=None, config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from universality.study.config import study_from_dict
    from universality.study.runner import run_study

    logging.getLogger("universality").setLevel(logging.INFO)
    try:
        study = study_from_dict(OmegaConf.to_container(cfg.study, resolve=True))
        outcome = run_study(study)
    except UniversalityError as exc:
        print(error_line(exc), file=sys.stderr)
        sys.exit(2)
    print(f"study {study.name} done in {outcome.seconds:.0f} s ({outcome.cache_hits} cached stages reused)")
    print(f"report: {outcome.report_html}")
    print(f"        {outcome.report_md}")
    print(f"tidy results: {outcome.results_csv}")


def precheck(overrides: Sequence[str]) -> None:
    """Compose and validate a single run's config, check its local inputs and its output folder; raises
    :class:`~universality.errors.UniversalityError` on bad input. Writes nothing."""
    from universality.study.config import check_inputs, compose_study

    study = compose_study(overrides, CONFIG_DIR)
    check_inputs(study)
    from universality.study.runner import check_out_folder  # heavy import: only once the config is valid

    check_out_folder(Path(study.out_dir), study)


def main(argv: Sequence[str] | None = None) -> None:
    from universality.study.config import register_configs

    args = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
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

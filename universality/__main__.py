"""``python -m universality``: run a study from configs/ (default: the offline quickstart).

Hydra overrides work as usual: ``python -m universality study=feature_evolution``,
``python -m universality study.sae.steps=200``, sweeps with ``-m``. Errors on bad input print one
line to stderr and exit with status 2.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from universality.errors import UniversalityError

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
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"study {study.name} done in {outcome.seconds:.0f} s ({outcome.cache_hits} cached stages reused)")
    print(f"report: {outcome.report_html}")
    print(f"        {outcome.report_md}")
    print(f"tidy results: {outcome.results_csv}")


def main() -> None:
    from universality.study.config import register_configs

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()

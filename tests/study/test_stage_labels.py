"""The study's stage log lines (one per stage and event) name the model and revision a stage is for."""

from __future__ import annotations

import logging

from universality.progress import model_label
from universality.study.cache import StageCache


def test_stage_log_lines_name_the_revision(tmp_path, caplog):
    cache = StageCache(tmp_path)
    label = f"{model_label('pythia-like', 'step128')} on D"
    with caplog.at_level(logging.INFO, logger="universality.study"):
        rec = cache.run("harvest", {"model": "pythia-like", "revision": "step128"}, lambda tmp: None, label=label)
        StageCache(tmp_path).run("harvest", {"model": "pythia-like", "revision": "step128"}, lambda tmp: None,
                                 label=label)
    lines = [r.getMessage() for r in caplog.records if r.name == "universality.study"]
    assert lines[0] == f"building stage {rec.path.name} (pythia-like@step128 on D)"
    assert lines[1].startswith(f"built stage {rec.path.name} (pythia-like@step128 on D) in ")
    assert lines[2] == f"reusing stage {rec.path.name} (pythia-like@step128 on D)"
    assert len(lines) == 3

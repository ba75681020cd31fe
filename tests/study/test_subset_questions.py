"""Issue 16 item 5 in the subset study: narrower SAEs on D' against D's features, and whether D' features
are noisier, on a tiny crossed design (one site, two SAE seeds, widths 1x and 2x)."""

import dataclasses

import numpy as np
import pandas as pd

from analysis.studies.common import AnalysisResult, Codebook
from analysis.studies.subset_questions import NO_WIDTHS_NOTE, NOISE_METRICS, run_questions
from universality.study.config import study_from_dict
from universality.study.pipeline import StudyContext
from universality.study.runner import run_study

TINY = {"steps": 16, "warmup_steps": 4, "d_model": 32, "n_heads": 2}


def _cfg(out, expansions):
    return study_from_dict({
        "name": "subq", "out_dir": str(out), "analyses": ["subset_generalization"], "cards": False,
        "sites": ["blocks.1.hook_resid_post"], "tokenizer_vocab": 300,
        "corpus": {"source": "shakespeare", "planted": True, "max_docs": 40, "planted_docs": 8},
        "subset": {"kind": "fraction", "fraction": 0.5, "seed": 0},
        "models": [{"name": "pythia", "zoo": "tiny_pythia", "data": "D", "overrides": TINY},
                   {"name": "pythia_sub", "zoo": "tiny_pythia", "data": "D_prime", "overrides": TINY}],
        "harvest": {"train_tokens": 2048, "context_length": 32, "batch_size": 16, "eval_spans": 24,
                    "span_chars": 120, "max_doc_tokens": 128},
        "sae": {"architecture": "topk", "topk": {"k": 4}, "expansion": 2, "steps": 40, "batch_size": 128,
                "seeds": [0, 1], "expansions": expansions},
        "match": {"gw_max": 32, "n_perm": 2},
    })


class _NoWidths:
    """The study's context (its cached models and SAEs) seen through a config without extra widths."""

    def __init__(self, ctx):
        self._ctx = ctx
        self.cfg = dataclasses.replace(ctx.cfg, sae=dataclasses.replace(ctx.cfg.sae, expansions=()))

    def __getattr__(self, name):
        return getattr(self._ctx, name)


def test_subset_questions_rows_tables_and_skip_note(tmp_path):
    cfg = _cfg(tmp_path / "s", [1, 2])
    out = run_study(cfg, progress=False)
    tidy = pd.read_csv(out.results_csv)
    found = tidy[tidy["metric"].str.startswith("found fraction of D features")]
    assert len(found) == 4  # SAE_D' and SAE_D at 1x and 2x
    assert found[["value", "floor"]].apply(lambda c: c.between(0, 1)).all().all()
    by_d = found[found["metric"].str.contains("SAE_D by width")].set_index("expansion")["value"]
    assert by_d.loc[2] == found[found["metric"].str.contains("SAE_D' by width")].set_index("expansion")["skyline"].loc[2]
    noise = tidy[tidy["metric"].str.startswith("noise: ")]
    assert set(noise["metric"]) == {f"noise: {m}" for m in NOISE_METRICS}
    assert np.isfinite(noise[["value", "sae_d", "sae_d_other_seed", "seed_difference"]].to_numpy(float)).all()
    stab = noise.set_index("metric").loc["noise: seed stability"]
    assert 0 <= stab["floor"] < stab["sae_d"] <= 1 and 0 < stab["value"] <= 1
    assert noise.set_index("metric").loc["noise: density", "value"] <= 1
    tables = out.root / "tables"
    width = pd.read_csv(tables / "subset_generalization__subset_width_recovery.csv")
    assert set(width["sae"]) == {"SAE on D'", "SAE on D"} and width["recovered"].between(0, 1).all()
    assert len(pd.read_csv(tables / "subset_generalization__subset_noise.csv")) == len(NOISE_METRICS)
    report = out.report_md.read_text()
    assert "are D' features noisier?" in report and "by SAE_D' of each width" in report
    assert NO_WIDTHS_NOTE not in report

    # the same study without extra widths: question (a) is skipped with a note, (b) still answered
    ctx = _NoWidths(StudyContext(cfg))
    res = AnalysisResult("subset_generalization", "t")
    text = run_questions(ctx, Codebook(ctx), "pythia", res, tmp_path)
    assert NO_WIDTHS_NOTE in text and "subset_width_recovery" not in res.tables
    assert len(res.tables["subset_noise"]) == len(NOISE_METRICS)
    assert not any(r["metric"].startswith("found fraction") for r in res.tidy)

"""Issue 16 item 1: feature patching on IOI. The study refuses a zoo model (or a hub model, here a local
tiny GPT-2 with its own tokenizer) that has not learned the task, and (the threshold lowered) runs end to end
at tiny size. The preset, whose models learn the task, runs at its documented size in the slow tier
(tests/study/test_documented_size.py)."""

import math

import pandas as pd
import pytest

from analysis.studies import ioi_patching
from universality.errors import ConfigError
from universality.study.config import study_from_dict
from universality.study.runner import run_study

TINY = {"steps": 16, "warmup_steps": 4, "d_model": 32, "n_heads": 2}


def _cfg(out, **extra):
    return study_from_dict({
        "name": "ioi", "out_dir": str(out), "analyses": ["ioi_patching"], "cards": False,
        "sites": ["blocks.1.hook_resid_post"], "tokenizer_vocab": 512,
        "corpus": {"source": "shakespeare", "max_docs": 4, "ioi": True, "ioi_docs": 150},
        "models": [{"name": "pythia", "zoo": "tiny_pythia", "data": "D", "overrides": TINY}],
        "harvest": {"train_tokens": 2048, "context_length": 32, "batch_size": 16, "eval_spans": 24,
                    "span_chars": 120, "max_doc_tokens": 128},
        "sae": {"architecture": "topk", "topk": {"k": 4}, "expansion": 2, "steps": 40, "batch_size": 128,
                "seeds": [0, 1]},
        **extra,
    })


def test_ioi_patching_refuses_an_untrained_model_then_runs_end_to_end(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="needs the IOI text family"):
        study_from_dict({"name": "ioi", "out_dir": str(tmp_path / "x"), "analyses": ["ioi_patching"],
                         "models": [{"name": "pythia", "zoo": "tiny_pythia"}], "sites": ["blocks.1.hook_resid_post"]})
    cfg = _cfg(tmp_path / "s")
    with pytest.raises(ConfigError, match="'pythia' has not learned the IOI task") as err:
        run_study(cfg, progress=False)
    assert "corpus.ioi: true" in err.value.fix and len(str(err.value).splitlines()) == 1
    # the same (cached) model with the threshold lowered: the mechanics end to end
    monkeypatch.setattr(ioi_patching, "THRESHOLD", -math.inf)
    out = run_study(cfg, progress=False)
    tables = out.root / "tables"
    curves = pd.read_csv(tables / "ioi_patching__restoration_curves.csv")
    assert set(curves["basis"]) == set(ioi_patching.BASES)
    k0 = curves[curves["k"] == 0]
    assert (k0["fraction"].abs() < 1e-6).all()  # F empty: the corrupted run
    for basis in ("PCA directions", "neurons (standard basis)", "random directions"):  # complete bases: F = all is clean
        last = curves[curves["basis"] == basis].sort_values("k").iloc[-1]
        assert last["k"] == 32 and last["fraction"] == pytest.approx(1.0, abs=2e-2)
    summary = pd.read_csv(tables / "ioi_patching__patching_summary.csv")
    assert len(summary) == 4 and (summary.loc[summary["basis"] == "SAE features", "kl_floor"] >= 0).all()
    tidy = pd.read_csv(out.results_csv)
    assert set(tidy["metric"]) == {f"fraction restored by {k} directions" for k in ioi_patching.K_ROWS}
    assert (out.root / "figures" / "ioi_patching_pythia.png").is_file()
    assert any("directions needed to restore 50%/80%" in f for f in out.report_md.read_text().splitlines())


def test_a_hub_model_goes_through_the_same_study(tmp_path, monkeypatch):
    """A model given by path (as GPT-2 or Pythia from the hub are) with its own tokenizer: the prompts are built
    from its tokenizer's single-token names, the untrained model is refused, and the mechanics run end to end."""
    import shutil

    from models.testing import make_tiny_model
    from models.tokenizer import train_byte_level_bpe
    from universality.zoo.ioi import ioi_texts

    gpt2 = make_tiny_model("gpt2", tmp_path / "gpt2", seed=1, vocab_size=512)
    # a tokenizer of its own in which the names are single tokens, as in GPT-2's and Pythia's
    train_byte_level_bpe(ioi_texts(400), 512, tmp_path / "tok")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tmp_path / "tok" / name, gpt2 / name)
    cfg = _cfg(tmp_path / "h", models=[{"name": "gpt2", "path": str(gpt2)}])
    with pytest.raises(ConfigError, match="'gpt2' has not learned the IOI task"):
        run_study(cfg, progress=False)
    monkeypatch.setattr(ioi_patching, "THRESHOLD", -math.inf)
    out = run_study(cfg, progress=False)
    summary = pd.read_csv(out.root / "tables" / "ioi_patching__patching_summary.csv")
    assert set(summary["model"]) == {"gpt2"} and set(summary["basis"]) == set(ioi_patching.BASES)
    assert (out.root / "figures" / "ioi_patching_gpt2.png").is_file()

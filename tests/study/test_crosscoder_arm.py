"""The crosscoder arm of the architecture comparison on a tiny Pythia + Mamba study: fractions of live
latents, the seed null, the copy anchor (a source crossed with a copy of itself comes out nearly all
shared: the known answer) and the two-arm table beside the matching arm."""

import math

import pandas as pd

from universality.study.runner import run_study

TINY = {"steps": 16, "warmup_steps": 4, "d_model": 32, "n_heads": 2}


def test_crosscoder_arm_on_a_tiny_architecture_study(tmp_path, tiny_study_cfg):
    cfg = tiny_study_cfg(tmp_path / "cc", ["crosscoder_arm"], [
        {"name": "pythia", "zoo": "tiny_pythia", "overrides": TINY},
        {"name": "mamba", "zoo": "tiny_mamba", "overrides": {**TINY, "seed": 5}}])
    out = run_study(cfg, progress=False)
    tidy = pd.read_csv(out.results_csv)
    rows = tidy[tidy["analysis"] == "crosscoder_arm"].set_index("metric")
    shared = rows.loc["crosscoder shared fraction"]
    ex_a, ex_b = rows.loc["crosscoder exclusive fraction (pythia)"], rows.loc["crosscoder exclusive fraction (mamba)"]
    matching = rows.loc["matching shared fraction"]
    for r in (shared, ex_a, ex_b, matching):
        for col in ("value", "value_seed2"):
            assert 0.0 <= r[col] <= 1.0, (r.name, col, r[col])
        assert math.isclose(r["seed_null_spread"], abs(r["value"] - r["value_seed2"]), abs_tol=1e-9)
    for col in ("value", "value_seed2"):
        assert shared[col] + ex_a[col] + ex_b[col] <= 1.0 + 1e-9
    assert shared["skyline"] >= 0.9  # known answer: a source crossed with a copy of itself is all shared
    assert shared["n_live"] > 0 and shared["anchor_n_live"] > 0
    two = pd.read_csv(out.root / "tables" / "crosscoder_arm__two_arm_pythia_mamba.csv")
    assert list(two["arm"]) == ["crosscoder", "matching"]
    assert math.isclose(two.loc[0, "shared"], shared["value"]) and math.isclose(two.loc[1, "shared"], matching["value"])
    report = out.report_md.read_text()
    assert "the two arms agree" in report or "the two arms disagree" in report
    print("\n" + two.to_string() + f"\nexclusive pythia {ex_a['value']:.3f}/{ex_a['value_seed2']:.3f}, "
          f"mamba {ex_b['value']:.3f}/{ex_b['value_seed2']:.3f}; anchor {shared['skyline']:.3f}")


def test_crosscoder_arm_aligns_models_on_different_tokenizers_by_text(tmp_path, tiny_study_cfg):
    """A local GPT-2 with its own tokenizer beside a zoo Pythia: the crosscoder trains live on units of text both
    tokenizers cover, the artifact says so, and the rows of both arms are those units."""
    from models.testing import make_tiny_model
    from universality.sae import SAE

    gpt2 = make_tiny_model("gpt2", tmp_path / "gpt2", seed=2, vocab_size=360)
    cfg = tiny_study_cfg(tmp_path / "cc2", ["crosscoder_arm"], [
        {"name": "pythia", "zoo": "tiny_pythia", "overrides": TINY}, {"name": "gpt2", "path": str(gpt2)}], sae_steps=60)
    out = run_study(cfg, progress=False)
    tidy = pd.read_csv(out.results_csv)
    rows = tidy[tidy["analysis"] == "crosscoder_arm"].set_index("metric")
    shared = rows.loc["crosscoder shared fraction"]
    assert 0.0 <= shared["value"] <= 1.0 and shared["n_live"] > 0 and shared["skyline"] >= 0.9
    assert 0.0 <= rows.loc["matching shared fraction"]["value"] <= 1.0
    report = out.report_md.read_text()
    assert "Two tokenizers (pythia vs gpt2)" in report
    folders = sorted({p.parent for p in (out.root / "cache").rglob("crosscoder/s0/*.json")})
    metas = [SAE.load(f).meta for f in folders]
    text = [m for m in metas if any("alignment" in s for s in m.get("sources", []))]
    assert text and [s["model"] for s in text[0]["sources"]] == ["pythia", "gpt2"]
    assert text[0]["sources"][1]["alignment"] == "character units, last token"
    two = pd.read_csv(out.root / "tables" / "crosscoder_arm__two_arm_pythia_gpt2.csv")
    assert list(two["arm"]) == ["crosscoder", "matching"]
    print("\n" + two.to_string())

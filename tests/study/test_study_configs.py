"""Every zoo-based study config runs end to end on tiny models (sizes cut, analyses as shipped)."""

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from universality.sae.config import TopKOptions
from universality.study.config import HarvestSpec, StudyConfig, register_configs, study_from_dict
from universality.study.runner import run_study

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
register_configs()


def shrink(cfg: StudyConfig, out: Path) -> StudyConfig:
    """The same study on tiny models: 16 training steps, 32-wide models, a few thousand tokens."""
    models = []
    for m in cfg.models:
        small = {"steps": 16, "warmup_steps": 4, "d_model": 32, "n_heads": 2}
        if m.checkpoints == "all":
            small["checkpoint_steps"] = (0, 8, 16)
        models.append(dataclasses.replace(m, overrides={**m.overrides, **small}))
    return dataclasses.replace(
        cfg, models=tuple(models), out_dir=str(out), tokenizer_vocab=300,
        corpus=dataclasses.replace(cfg.corpus, max_docs=40, planted_docs=8,
                                   inject_after_step=None if cfg.corpus.inject_after_step is None else 8),
        harvest=HarvestSpec(train_tokens=2048, context_length=32, batch_size=16, eval_spans=24, span_chars=120,
                            max_doc_tokens=128),
        # extra widths only where the analysis is about them (tests/study/test_subset_questions.py covers the subset's)
        sae=dataclasses.replace(cfg.sae, steps=40, batch_size=128, expansion=2, topk=TopKOptions(k=4),
                                expansions=cfg.sae.expansions if "feature_splitting" in cfg.analyses else ()),
        match=dataclasses.replace(cfg.match, gw_max=32, n_perm=2),
    )


def load(name: str) -> StudyConfig:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="config", overrides=[f"study={name}"])
    return study_from_dict(OmegaConf.to_container(cfg.study, resolve=True))


def _run(name, tmp_path, seeds=None, sae_steps=None):
    cfg = shrink(load(name), tmp_path / name)
    if seeds is not None:
        cfg = dataclasses.replace(cfg, sae=dataclasses.replace(cfg.sae, seeds=seeds))
    if sae_steps is not None:
        cfg = dataclasses.replace(cfg, sae=dataclasses.replace(cfg.sae, steps=sae_steps))
    out = run_study(cfg, progress=False)
    tidy = pd.read_csv(out.results_csv)
    assert set(tidy["analysis"]) == set(cfg.analyses)
    assert "## Findings" in out.report_md.read_text()
    return out, tidy


def test_layer_flow_runs(tmp_path):
    out, tidy = _run("layer_flow", tmp_path)
    mppc = tidy[tidy["metric"] == "mppc"]
    assert len(mppc) == 10  # 5 sites -> 10 unordered pairs
    assert (mppc["skyline"] > mppc["floor"]).all()
    assert "decoder mmcs" in set(tidy["metric"])
    links = tidy[tidy["analysis"] == "causal_links"]
    share = links[links["metric"] == "strongest link share"]
    assert len(share) == 7  # resid_post0 -> 4 later sites, resid_pre1 -> 3
    assert ((share["value"] > 0) & (share["value"] <= 1 + 1e-9) & (share["floor"] >= 0)).all()
    assert "weight flow agreement" in set(links["metric"])
    parts = pd.read_csv(out.root / "tables" / "causal_links__new_feature_attribution.csv")
    assert parts.loc[parts["part"] == "rest", "contribution"].abs().max() < 1e-4  # the residual split is exact
    assert (out.root / "figures" / "causal_links_heatmap.png").is_file()
    # sparse code maps for every forward pair, each with a matching-only row on the same floor and skyline
    cm, mo = (tidy[tidy["metric"] == m].set_index("comparison") for m in ("code map EV", "matching-only EV"))
    assert len(cm) == len(mo) == 10 and set(cm.index) == set(mo.index)
    assert np.isfinite(cm[["value", "floor", "skyline"]].to_numpy()).all() and np.isfinite(mo["value"]).all()
    assert (cm["floor"] < 0.1).all() and (mo["floor"] == cm["floor"]).all()
    # the seed skyline maps between two SAEs on the same activations: above the shuffled floor (tiny, barely
    # trained SAEs here, so the margins are small; about 0.14 to 0.7 against floors of -0.1 to 0)
    assert (cm["skyline"] > cm["floor"] + 0.05).all()
    # resid_post of block 0 and resid_pre of block 1 are the same activations: a known positive
    same = cm.loc["blocks.0.hook_resid_post -> blocks.1.hook_resid_pre"]
    assert same["value"] > same["floor"] + 0.1
    maps = pd.read_csv(out.root / "tables" / "layer_flow__code_maps.csv")
    assert len(maps) == 10 and maps["agreement"].between(0, 1).all() and maps["density"].between(0, 1).all()
    assert any("code map" in f for f in out.report_md.read_text().splitlines())
    # the crosscoder arm: one cross-layer crosscoder over the five sites, beside the matching arm
    cc = tidy[tidy["analysis"] == "crosscoder_layers"]
    co, per = (cc[cc["metric"] == m].set_index("comparison") for m in ("crosscoder co-span", "matching persistence"))
    assert len(co) == len(per) == 4  # consecutive pairs of five sites
    for r in (co, per):
        assert r[["value", "value_seed2"]].stack().between(0, 1).all()
        assert np.allclose(r["seed_null_spread"], (r["value"] - r["value_seed2"]).abs())
    assert (co["skyline"] >= 0.9).all()  # known answer: a site crossed with a copy of itself spans both copies
    assert co["floor"].between(0, 1).all()
    # known positive: resid_post of block 0 and resid_pre of block 1 are the same activations
    assert co.loc["blocks.0.hook_resid_post -> blocks.1.hook_resid_pre", "value"] >= 0.8
    spans = pd.read_csv(out.root / "tables" / "crosscoder_layers__span_counts.csv")
    assert list(spans["sites_spanned"]) == [1, 2, 3, 4, 5] and spans["latents"].sum() == co["n_live"].iloc[0]
    two = pd.read_csv(out.root / "tables" / "crosscoder_layers__two_arm.csv")
    assert len(two) == 8 and set(two["arm"]) == {"crosscoder", "matching"}
    assert (out.root / "figures" / "crosscoder_layers_co_span.png").is_file()
    assert "the two arms agree" in out.report_md.read_text() or "the two arms disagree" in out.report_md.read_text()


def test_feature_splitting_runs(tmp_path):
    cfg = shrink(load("feature_splitting"), tmp_path / "feature_splitting")
    cfg = dataclasses.replace(cfg, sae=dataclasses.replace(cfg.sae, seeds=(0, 1), expansions=(1, 2)))
    out = run_study(cfg, progress=False)
    tidy = pd.read_csv(out.results_csv)
    counts = pd.read_csv(out.root / "tables" / "feature_splitting__lineage_counts.csv").set_index("step")
    # one width step (2x is the study's own expansion, reused) plus the seed control at the smallest width
    assert list(counts.index) == ["1x->2x", "1x s0->1x s1 (seed control)"]
    parents = counts[["stays", "splits", "vanishes", "unresolved", "dead_parents"]].sum(axis=1)
    assert list(parents) == [32, 32]  # every narrower latent (d_model 32 at 1x) gets one status
    share = tidy[tidy["metric"] == "split share"]
    assert len(share) == 1 and share["value"].between(0, 1).all() and share["floor"].between(0, 1).all()
    rec = pd.read_csv(out.root / "tables" / "feature_splitting__recovery.csv")
    assert list(rec["n_latents"]) == [32, 64]
    assert rec["recovered"].between(0, 1).all() and (rec["recovered"] >= rec["floor_recovered"]).all()
    assert (out.root / "figures" / "feature_splitting_blocks.1.hook_resid_post.png").is_file()


def test_moe_experts_runs(tmp_path):
    out, tidy = _run("moe_experts", tmp_path)
    table = pd.read_csv(out.root / "tables" / "moe_experts__feature_experts.csv")
    assert ((table["entropy"] >= 0) & (table["entropy"] <= 1 + 1e-9)).all()
    assert ((table["top_share"] > 0) & (table["top_share"] <= 1)).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["feature_evolution", "architecture_comparison", "subset_generalization"])
def test_single_analysis_studies_run(name, tmp_path):
    # two SAE seeds (the smallest skyline): the architecture and subset presets also train model-seed copies
    out, tidy = _run(name, tmp_path, seeds=(0, 1))
    if name != "feature_evolution":
        assert tidy.loc[tidy["metric"].str.startswith("mppc"), "skyline_model_seed"].notna().all()


SAE_STEPS_MVD = 120


def test_model_vs_dataset_runs(tmp_path):
    # two SAE seeds; more SAE steps than the other tiny studies, so the decoders move away from their
    # initial weights and the decoder view has something to compare
    out, tidy = _run("model_vs_dataset", tmp_path, seeds=(0, 1), sae_steps=SAE_STEPS_MVD)
    found = pd.read_csv(out.root / "tables" / "model_vs_dataset__found.csv")
    sites = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert set(found["site"]) == set(sites)
    # every control in the decoder view; init and embedding (same tokens) also in the activation view
    for site in sites:
        t = found[found["site"] == site]
        assert set(t.loc[t["view"] == "decoder", "control"]) == {"init", "gaussian", "embedding"}
        assert set(t.loc[t["view"] == "activations", "control"]) == {"init", "embedding"}
    assert found[["found", "floor", "skyline"]].apply(lambda c: c.between(0, 1)).all().all()
    # the seed skylines lie above their floors (activation view: found share; decoder view: MMCS, since the tiny
    # SAEs put few features at cosine >= 0.7), the step-0 model and the embeddings find well above the shuffled
    # floor, and the Gaussian control finds fewer trained decoder directions than a second trained seed (on the
    # mean over sites: about 0.11 against 0.16 here; its MMCS comes close to the skyline on these tiny models)
    act = found[found["view"] == "activations"]
    dec = found[found["view"] == "decoder"]
    assert (act["skyline"] > act["floor"] + 0.2).all() and (act["found"] > act["floor"] + 0.2).all()
    assert (dec["mmcs_skyline"] > dec["mmcs_floor"] + 0.05).all()
    gauss = dec[dec["control"] == "gaussian"]
    assert gauss["found"].mean() < gauss["skyline"].mean()
    comp = pd.read_csv(out.root / "tables" / "model_vs_dataset__composites.csv")
    assert len(comp) == 2 * 3 * 2 and comp[["composite", "floor"]].apply(lambda c: c.between(0, 1)).all().all()
    assert set(tidy["metric"]) == {"found share (activations)", "found share (decoder)", "decoder mmcs",
                                  "composite share"}
    assert (out.root / "figures" / "model_vs_dataset.png").is_file()

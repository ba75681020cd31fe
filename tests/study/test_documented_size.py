"""Studies at their documented size (the preset in configs/study/, unchanged but for the output folder), with
the findings that size is documented to give. Slow tier: minutes each on two quiet CPU cores, and up to 15 on a
machine whose two cores are also busy with other work (525-900 s measured so): each has a 45-minute
timeout, a guard against a hang rather than a speed goal (speed lives in benchmarks/)."""

from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from universality.study.config import register_configs, study_from_dict
from universality.study.runner import run_study

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
register_configs()
pytestmark = pytest.mark.timeout(2700)
SITES = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def _preset(name: str, out: Path):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="config", overrides=[f"study={name}", f"study.out_dir={out}"])
    return study_from_dict(OmegaConf.to_container(cfg.study, resolve=True))


@pytest.mark.slow
def test_model_vs_dataset_at_its_documented_size(tmp_path):
    out = run_study(_preset("model_vs_dataset", tmp_path / "mvd"), progress=False)
    found = pd.read_csv(out.root / "tables" / "model_vs_dataset__found.csv")
    act, dec = found[found["view"] == "activations"], found[found["view"] == "decoder"]
    # measured (AMD EPYC, 2 cores): activation view, share of the trained model's features found by the SAE of
    # the token embeddings 0.80 / 0.77 (sites 0 / 1) and of the step-0 model 0.55 / 0.57, against a seed skyline
    # of 0.82 / 0.82 and a shuffled floor of 0; decoder view: MMCS of the Gaussian control 0.52 / 0.53, of init
    # and embeddings 0.36 / 0.36, floor 0.35, skyline 0.59 / 0.60
    for site in SITES:
        a = act[act["site"] == site].set_index("control")
        d = dec[dec["site"] == site].set_index("control")
        assert a.loc["embedding", "found"] >= a.loc["embedding", "floor"] + 0.4
        assert a.loc["init", "found"] >= a.loc["init", "floor"] + 0.25
        assert (a["found"] <= a["skyline"] + 0.05).all()  # no control finds more than a second trained seed
        assert a.loc["embedding", "found"] > a.loc["init", "found"]  # a tiny model's residual is mostly its tokens
        assert d.loc["gaussian", "mmcs"] > max(d.loc["init", "mmcs"], d.loc["embedding", "mmcs"]) + 0.05
        assert (d["mmcs"] <= d["mmcs_skyline"] + 0.02).all() and (d["mmcs_skyline"] > d["mmcs_floor"] + 0.15).all()
    report = out.report_md.read_text()
    assert "skyline" in report and "floor" in report


@pytest.mark.slow
def test_feature_splitting_at_its_documented_size(tmp_path):
    out = run_study(_preset("feature_splitting", tmp_path / "fs"), progress=False)
    counts = pd.read_csv(out.root / "tables" / "feature_splitting__lineage_counts.csv").set_index("step")
    steps = ["2x->4x", "4x->8x", "8x->16x"]
    assert list(counts.index[:3]) == steps and "seed control" in counts.index[3]
    # every latent of the narrower dictionary gets one status (d_model 64: 128, 256, 512 latents)
    parents = counts[["stays", "splits", "vanishes", "unresolved", "dead_parents"]].sum(axis=1)
    assert list(parents.loc[steps]) == [128, 256, 512]
    assert (counts.loc[steps, "splits"] >= 5).all()
    tidy = pd.read_csv(out.results_csv).set_index(["comparison", "metric"])
    # measured: splits land inside their parent's span (within-span 0.63 / 0.70 / 0.70 against random children
    # 0.32 / 0.33 / 0.32); split share 0.12 / 0.10 / 0.09 against the seed control's 0.08
    for step in steps:
        within = tidy.loc[(f"blocks.1.hook_resid_post {step}", "within-span")]
        assert within["value"] >= within["floor"] + 0.2
    rec = pd.read_csv(out.root / "tables" / "feature_splitting__recovery.csv")
    assert list(rec["width"]) == ["2x", "4x", "8x", "16x"]
    assert (rec["recovered"] >= rec["floor_recovered"] + 0.2).all() and (rec["recovered"] <= rec["skyline"] + 0.1).all()


@pytest.mark.slow
def test_ioi_patching_at_its_documented_size(tmp_path):
    """About six minutes: both models train 2000 steps on the IOI family, then every checkpoint that has learned
    the task is patched at both sites."""
    out = run_study(_preset("ioi_patching", tmp_path / "ioi"), progress=False)
    ld = pd.read_csv(out.root / "tables" / "ioi_patching__logit_difference.csv").set_index(["model", "revision"])
    # measured: mean clean logit difference -0.01 / 0.02 / -0.14 / 1.03 / 9.22 nats at steps 0-2000 (Pythia-like),
    # 9.25 for the Mamba at step 2000; the study patches only the checkpoints past 1 nat
    assert ld.loc[("pythia", "step2000"), "ld_clean"] >= 5 and ld.loc[("mamba", "step2000"), "ld_clean"] >= 5
    assert abs(ld.loc[("pythia", "step0"), "ld_clean"]) < 0.5 and not ld.loc[("pythia", "step0"), "learned"]
    tidy = pd.read_csv(out.results_csv)
    final = tidy[tidy["revision"] == "step2000"]
    assert set(final["model"]) == {"pythia", "mamba"} and set(tidy["revision"]) == {"step1000", "step2000"}
    # measured at step 2000, 16 SAE features against 16 random directions (the floor): Pythia 0.92 / 0.54 (site 0),
    # 0.53 / 0.41 (site 1); Mamba 0.81 / 0.55, 0.64 / 0.47; with 4: 0.35 / 0.21, 0.20 / 0.12, 0.42 / 0.15, 0.21 / 0.16
    k16 = final[final["metric"] == "fraction restored by 16 directions"]
    k4 = final[final["metric"] == "fraction restored by 4 directions"]
    assert len(k16) == 4 and (k16["value"] > k16["floor"]).all()
    assert k4["value"].mean() > k4["floor"].mean() + 0.05
    assert (final["kl_floor"].dropna() >= 0).all() and final["kl_floor"].notna().any()
    assert (out.root / "figures" / "ioi_patching_pythia.png").is_file()

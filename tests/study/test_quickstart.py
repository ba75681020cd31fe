"""The quickstart study at a very small size: every section of the report, baselines in every row,
and a rerun that rebuilds nothing (every stage comes from the cache)."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from universality.errors import ArtifactError
from universality.study.config import register_configs, study_from_dict
from universality.study.runner import run_study

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

register_configs()

TINY = [
    "study.tokenizer_vocab=300",
    "study.models=[{name: pythia, zoo: tiny_pythia, data: D, checkpoints: all, overrides: {steps: 24, warmup_steps: 4,"
    " d_model: 32, n_heads: 2, checkpoint_steps: [0, 8, 24]}}, {name: mamba, zoo: tiny_mamba, data: D, overrides:"
    " {steps: 16, warmup_steps: 4, d_model: 32}}, {name: pythia_sub, zoo: tiny_pythia, data: D_prime, overrides:"
    " {steps: 16, warmup_steps: 4, d_model: 32, n_heads: 2}}]",
    "study.corpus.max_docs=60",
    "study.corpus.planted_docs=12",
    "study.harvest.train_tokens=2048",
    "study.harvest.eval_spans=24",
    "study.harvest.span_chars=120",
    "study.sae.steps=40",
    "study.sae.batch_size=128",
    "study.sae.expansion=2",
    "study.sae.topk.k=4",
    "study.match.gw_max=32",
    "study.sites=[blocks.1.hook_resid_post]",
]


def tiny_quickstart(out_dir: Path, extra=()):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(config_name="config", overrides=[*TINY, f"study.out_dir={out_dir}", *extra])
    return study_from_dict(OmegaConf.to_container(cfg.study, resolve=True))


def _relative_links(md: str, page: str) -> list[str]:
    found = [m.strip("<>") for m in re.findall(r"!?\[[^\]]*\]\((<[^>]+>|[^)\s]+)\)", md)]
    found += re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]""", page)
    return [t for t in found if not re.match(r"^(data:|https?:|mailto:|#)", t)]


def _file_and_anchor(link: str) -> tuple[str, str | None]:
    path, _, anchor = link.partition("#")
    return path, anchor or None


def test_quickstart_tiny_end_to_end_and_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # out_dir relative to the working directory, as on the command line
    cfg = tiny_quickstart(Path("qs"))
    first = run_study(cfg, progress=False)
    text = first.report_md.read_text()
    links = _relative_links(text, first.report_html.read_text())
    assert links and all((tmp_path / "qs" / _file_and_anchor(link)[0]).is_file() for link in links), links  # from the report's folder
    # feature cards: every finding links to the cards behind it, and every link names a group the page has
    cards_page = (tmp_path / "qs" / "cards.html").read_text()
    finding_lines = [line for line in text.split("## Setup")[0].splitlines() if line.startswith("- ")]
    assert finding_lines and all("(cards: [" in line for line in finding_lines), finding_lines
    anchors = {a for link in links if (a := _file_and_anchor(link)[1])}
    assert anchors and all(f'id="{a}"' in cards_page for a in anchors), anchors
    assert "## Feature cards" in text and "cards.html: " in text
    data = json.loads(cards_page.split('id="card-data">')[1].split("</script>")[0].replace("<\\/", "</"))
    sections = re.findall(r'<section class="card-section" id="section-\d+"><h2>([^<]+)</h2>', cards_page)
    for analysis in ("Feature evolution", "Architectures compared", "Subset generalisation"):
        assert any(t.startswith(analysis) for t in sections), (analysis, sections)
    groups = {g for s in data["sections"] for g in s["groups"]}
    assert {"best matches", "worst matches", "longest chains"} <= groups
    specific = pd.read_csv(tmp_path / "qs" / "tables" / "subset_generalization__specific_features.csv")
    planted = specific[(specific["tokens"] == "planted family") & (specific["n_specific"] > 0)]
    # planted positives get their own group wherever the analysis found them
    assert len(planted) == 0 or any(g.startswith("planted-family features") for g in groups)
    lineage = pd.read_csv(tmp_path / "qs" / "tables" / "feature_evolution__lineage_events_blocks.1.hook_resid_post.csv")
    assert list(lineage["from_step"]) == sorted(lineage["from_step"]) and len(lineage) == 2
    assert (tmp_path / "qs" / "figures" / "lineage_events.png").is_file()
    # transfer (splice) tests: both directions for each earlier checkpoint, every metric with floor and native
    transfer = pd.read_csv(tmp_path / "qs" / "tables" / "feature_evolution__transfer_blocks.1.hook_resid_post.csv")
    assert set(transfer["direction"]) == {"checkpoint SAE -> final model", "final SAE -> checkpoint model"}
    assert len(transfer) == 2 * 2 * 4 and transfer[["transferred", "native", "floor"]].notna().all().all()
    ev = transfer[transfer["metric"] == "explained_variance"]
    assert (ev["native"] > ev["floor"]).all()  # an SAE beats a random dictionary on its own model
    assert (tmp_path / "qs" / "figures" / "transfer_blocks.1.hook_resid_post.png").is_file()
    # ablation agreement of matched pairs across architectures, with random-pair floor and seed skyline
    ablation = pd.read_csv(tmp_path / "qs" / "tables" / "architecture_comparison__ablation_agreement_pythia_mamba.csv")
    assert len(ablation) == 1 and ablation[["value", "floor", "skyline"]].notna().all().all()
    assert ablation["n_pairs"].iloc[0] > 0 and ablation["skyline"].iloc[0] > ablation["floor"].iloc[0]
    for heading in ("## Findings", "## Setup", "## Feature evolution", "## Architectures compared", "## Subset generalisation"):
        assert heading in text, heading
    html = first.report_html.read_text()
    assert html.count("data:image/png;base64,") >= 6
    tidy = pd.read_csv(first.results_csv)
    assert set(tidy["analysis"]) == {"feature_evolution", "architecture_comparison", "subset_generalization",
                                     "feature_manifolds"}
    groups = tidy[(tidy["analysis"] == "feature_manifolds") & (tidy["metric"] == "group match")]
    assert len(groups) and groups[["value", "floor"]].apply(lambda c: c.between(0, 1)).all().all()
    assert groups["comparison"].str.contains("pythia vs mamba").any()  # one tokenizer: matched across architectures
    assert any(t.startswith("Feature manifolds") and ": pythia:" in t and "feature groups" in t for t in sections), sections
    mppc = tidy[tidy["metric"] == "mppc"]
    within = mppc["analysis"] == "feature_evolution"  # one model: the SAE-seed skyline only
    assert mppc["floor"].notna().all() and mppc.loc[within, "skyline"].notna().all()
    assert mppc.loc[~within, "skyline_sae_seed"].notna().all()
    # the quickstart trains no model-seed copies: that skyline is blank, and each row and the report say so
    across = tidy[tidy["analysis"].isin(["architecture_comparison", "subset_generalization"])
                  & tidy["metric"].str.startswith("mppc")]
    assert across["skyline_model_seed"].isna().all() and across["normalised_model_seed"].isna().all()
    assert across["note"].str.contains("model-seed skyline not computed").all()
    assert "study.model_seed_skyline=true" in text and "was not computed" in text
    assert ((mppc["value"] >= -1) & (mppc["value"] <= 1)).all()
    evo = tidy[(tidy["analysis"] == "feature_evolution") & (tidy["metric"] == "mppc")]
    assert list(evo["revision"]) == ["step0", "step8"]  # each earlier checkpoint against the final one
    agree = tidy[(tidy["analysis"] == "feature_evolution") & (tidy["metric"] == "ablation agreement")]
    assert sorted(agree["revision"]) == ["step0", "step8"]
    assert agree[["value", "floor", "skyline"]].apply(lambda c: c.between(-1, 1)).all().all()
    assert (evo["n_seeds"] == 3).all() and (evo["skyline_lo"] <= evo["skyline_hi"]).all()
    figures = list((tmp_path / "qs" / "figures").glob("*.png"))
    assert len(figures) >= 6
    assert first.cache_misses > 0

    second = run_study(cfg, progress=False)
    assert second.cache_misses == 0 and second.cache_hits >= first.cache_misses
    assert pd.read_csv(second.results_csv).equals(tidy)


def test_output_folder_with_another_study_is_refused(tmp_path):
    out = tmp_path / "qs"
    out.mkdir()
    (out / "study.json").write_text('{"study": "something_else"}')
    with pytest.raises(ArtifactError, match="already holds study 'something_else'"):
        run_study(tiny_quickstart(out), progress=False)
    assert (out / "study.json").read_text() == '{"study": "something_else"}'
    assert sorted(p.name for p in out.iterdir()) == ["study.json"]

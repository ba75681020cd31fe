"""What a reader of a study report sees: links that resolve from the report's folder, figures that draw
data, checkpoints in step order, readable tables, labelled MPPC directions and axes, claims about the
models that hold, and small counts quoted as counts (issue 14, item 5)."""

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from analysis import plots
from analysis.report import Report, Section, display_frame, markdown_table
from analysis.studies import architecture_comparison as arch
from analysis.studies import subset_generalization as subset
from analysis.studies.common import count_or_share
from analysis.studies.feature_evolution import lineage_event_table, lineage_events_long
from universality.errors import DataError
from universality.match.lineage import Lineage
from universality.study.config import ModelSpec

_MD_LINK = re.compile(r"!?\[[^\]]*\]\((<[^>]+>|[^)\s]+)\)")
_HTML_LINK = re.compile(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]""")


def relative_links(md_text: str, html_text: str) -> list[str]:
    """Every relative link and image target of a report (data: URIs, anchors and web links left out)."""
    found = [m.group(1).strip("<>") for m in _MD_LINK.finditer(md_text)] + _HTML_LINK.findall(html_text)
    return [t for t in found if not re.match(r"^(data:|https?:|mailto:|#)", t)]


def assert_links_resolve(md: Path, page: Path) -> int:
    links = relative_links(md.read_text(), page.read_text())
    for target in links:
        assert (md.parent / target).is_file(), f"broken link {target!r} in {md}"
    return len(links)


def _png(path: Path) -> Path:
    return plots.series(pd.DataFrame({"step": [0, 1, 2], "v": [0.1, 0.5, 0.9]}), path, "t", "step", "v")


# ---------------------------------------------------------------- 1. links relative to the report


def test_report_links_resolve_from_the_report_folder_not_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = Path("runs") / "quickstart"
    fig = _png(out / "figures" / "evolution_blocks.0.hook_resid_post.png")  # relative to the working directory
    spaced = _png(out / "figures" / "with space (1).png")
    report = Report("Study", ["one"], [Section("A", "prose", [], [("fig", fig), ("spaced", spaced)])])
    md, page = report.write(out)
    text = md.read_text()
    assert "](figures/evolution_blocks.0.hook_resid_post.png)" in text and "runs/quickstart" not in text
    assert assert_links_resolve(md, page) == 2
    # opened from anywhere else, the links still resolve from the report's folder
    monkeypatch.chdir(tmp_path / "runs")
    assert assert_links_resolve(tmp_path / out / "report.md", tmp_path / out / "report.html") == 2


def test_the_link_check_catches_a_broken_link(tmp_path):
    (tmp_path / "report.md").write_text("![x](runs/quickstart/figures/x.png)\n")
    (tmp_path / "report.html").write_text("<img src='figures/y.png'>")
    assert relative_links((tmp_path / "report.md").read_text(), "<img src='figures/y.png'>") == [
        "runs/quickstart/figures/x.png", "figures/y.png"]
    with pytest.raises(AssertionError, match="broken link"):
        assert_links_resolve(tmp_path / "report.md", tmp_path / "report.html")


def test_report_refuses_a_missing_figure(tmp_path):
    report = Report("Study", [], [Section("A", "", [], [("gone", tmp_path / "figures" / "gone.png")])])
    with pytest.raises(DataError, match="does not exist"):
        report.write(tmp_path)


# ---------------------------------------------------------------- 2. no empty figures


def _drawn(monkeypatch) -> list[int]:
    """Record how many data points each figure draws when it is saved."""
    counts: list[int] = []
    save = plots._save

    def spy(fig, path):
        counts.append(plots.plotted_points(fig))
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    return counts


def test_lineage_events_figure_draws_the_events(tmp_path, monkeypatch):
    revs = ["step0", "step16", "step100", "step150"]
    tables = [lineage_event_table(_counts(revs), site, revs) for site in ("blocks.0", "blocks.1")]
    ev = lineage_events_long(pd.concat(tables, ignore_index=True))
    assert len(ev) == 3 * 3 and ev[["to_step", "count"]].notna().all().all()
    assert list(dict.fromkeys(ev["to_step"])) == [16, 100, 150]
    assert ev.loc[ev["event"] == "birth", "count"].tolist() == [4, 4, 4]  # summed over the two sites
    counts = _drawn(monkeypatch)
    plots.series(ev, tmp_path / "lineage_events.png", "Lineage events", x="to_step", y="count", hue="event", logx=True)
    assert counts and counts[0] >= 9


def test_lineage_events_without_step_numbers_use_the_series_position():
    labels = ["early", "mid", "late"]
    ev = lineage_events_long(lineage_event_table(_counts(labels), "s", labels))
    assert list(dict.fromkeys(ev["to_step"])) == [1, 2]


def test_the_old_lineage_figure_input_is_refused_not_drawn_empty(tmp_path):
    """The old figure mapped the transition labels ``a->b`` onto revision names: every x was NaN."""
    ev = pd.DataFrame({"order": [np.nan] * 4, "count": [1, 2, 3, 4], "event": ["birth", "death"] * 2})
    with pytest.raises(DataError, match="all missing"):
        plots.series(ev, tmp_path / "x.png", "t", x="order", y="count", hue="event")
    assert not (tmp_path / "x.png").exists()


def test_an_empty_figure_is_refused(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.axhspan(0.1, 0.2, label="floor")  # a band and a legend are not data
    ax.plot([np.nan], [np.nan], label="nothing")
    ax.scatter([], [])
    ax.legend()
    assert plots.plotted_points(fig) == 0
    with pytest.raises(DataError, match="would be empty"):
        plots._save(fig, tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


# ---------------------------------------------------------------- 3. checkpoints by step number


def _counts(revs, per=(("birth", 2), ("continue", 3), ("death", 1))):
    rows = [{"step": f"{a}->{b}", "event": e, "feature_from": 0, "feature_to": 0, "score": 0.5}
            for a, b in zip(revs, revs[1:]) for e, n in per for _ in range(n)]
    return Lineage(pd.DataFrame(rows), pd.DataFrame(), {}).counts()


def test_lineage_counts_keep_the_series_order():
    revs = ["step0", "step16", "step32", "step100", "step150"]
    assert list(_counts(revs).index) == ["step0->step16", "step16->step32", "step32->step100", "step100->step150"]


def test_lineage_event_table_sorts_by_step_number():
    revs = ["step0", "step16", "step32", "step100", "step150"]
    shuffled = _counts(revs).sort_index()  # string order: step0, step100, step16, step32
    assert list(shuffled.index)[1] == "step100->step150"
    table = lineage_event_table(shuffled, "s", revs)
    assert list(table["step"]) == ["step0->step16", "step16->step32", "step32->step100", "step100->step150"]
    assert list(table["from_step"]) == [0, 16, 32, 100] and list(table["to_step"]) == [16, 32, 100, 150]
    assert list(table.columns[:4]) == ["site", "step", "from_step", "to_step"]
    assert (table[["birth", "continue", "death"]].dtypes == "int64").all()


# ---------------------------------------------------------------- 4. readable tables


def test_tables_show_counts_as_integers_and_leave_out_blank_columns(tmp_path):
    df = pd.DataFrame({"comparison": ["a", "b"], "value": [0.5, 0.25], "n_seeds": [3.0, 3.0],
                       "step": [16.0, np.nan], "empty": [np.nan, np.nan], "note": ["", ""],
                       "model_seed": [None, None], "count": [2, 5]})
    text = markdown_table(df)
    assert text.splitlines()[0] == "| comparison | value | n_seeds | step | count |"
    assert "| a | 0.500 | 3 | 16 | 2 |" in text and "| b | 0.250 | 3 | n/a | 5 |" in text
    assert "3.000" not in text
    shown = display_frame(df)
    assert list(shown.columns) == ["comparison", "value", "n_seeds", "step", "count"]
    fig = _png(tmp_path / "f.png")
    md, page = Report("S", [], [Section("A", "", [("t", df)], [("f", fig)])]).write(tmp_path)
    html = page.read_text()
    assert "<th>empty</th>" not in html and "<th>note</th>" not in html and "<td>3</td>" in html
    assert "3.000" not in html and "<td>0.500</td>" in html
    assert "| comparison | value | n_seeds | step | count |" in md.read_text()


def test_fractional_columns_keep_their_decimals():
    text = markdown_table(pd.DataFrame({"x": [1.0, 1.5], "flag": [True, False]}))
    assert "| 1.000 | True |" in text and "| 1.500 | False |" in text


# ---------------------------------------------------------------- 5. MPPC directions labelled


def test_correspondence_and_cross_architecture_say_their_mppc_direction():
    mat = pd.DataFrame([[0.5, 0.7], [0.6, 0.2]], index=["a0", "a1"], columns=["b0", "b1"])
    corr = arch.correspondence(mat, "pythia", "mamba")
    assert list(corr.columns) == ["site_a", "best_site_b", "mppc", "direction"]
    assert list(corr["best_site_b"]) == ["b1", "b0"] and corr["mppc"].tolist() == [0.7, 0.6]
    assert (corr["direction"] == "mean of pythia->mamba and mamba->pythia").all()
    assert arch.one_way("pythia", "mamba") == "pythia->mamba"
    assert "mean of both directions" in arch.DIRECTIONS_TEXT and "reverse" in arch.DIRECTIONS_TEXT


# ---------------------------------------------------------------- 6. the threshold axis


def test_subset_curves_axis_names_activation_correlation(tmp_path, monkeypatch):
    labels: list[str] = []
    save = plots._save

    def spy(fig, path):
        labels.append(fig.axes[0].get_xlabel())
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    curve = pd.DataFrame({"threshold": [0.5, 0.7], "shared_fraction": [0.8, 0.4], "comparison": ["x", "x"]})
    plots.threshold_curves(curve, tmp_path / "c.png", "curve")
    out = SimpleNamespace(curves=curve.to_dict("records"),
                          dist=[{"comparison": "x", "kind": "observed", "score": v} for v in (0.1, 0.5, 0.9)])
    subset._figures(out, tmp_path)
    assert labels[0] == "activation correlation threshold"
    assert "correlation" in labels[1] and all("cosine" not in x for x in labels)


# ---------------------------------------------------------------- 7. claims about the models


def _cfg(*models):
    specs = {m.name: m for m in models}
    return SimpleNamespace(model=lambda name: specs[name], models=list(models))


def test_same_data_same_tokenizer_only_when_true():
    pythia = ModelSpec(name="pythia", zoo="tiny_pythia", data="D")
    mamba = ModelSpec(name="mamba", zoo="tiny_mamba", data="D")
    hub = ModelSpec(name="gpt2", path="openai-community/gpt2")
    both_zoo = arch.provenance_text(_cfg(pythia, mamba), [("pythia", "mamba")], {("pythia", "mamba"): True})
    assert "trained by this study on the same data (D) with the same tokenizer" in both_zoo
    mixed = arch.provenance_text(_cfg(pythia, hub), [("pythia", "gpt2")], {("pythia", "gpt2"): False})
    assert "same tokenizer" not in mixed and "same data" not in mixed
    assert "gpt2 is a pretrained model (openai-community/gpt2) not trained by this study" in mixed
    assert "pythia is trained by this study (tiny_pythia) on D" in mixed and "character spans" in mixed
    same_tok_hub = arch.provenance_text(_cfg(pythia, hub), [("pythia", "gpt2")], {("pythia", "gpt2"): True})
    assert "same tokenizer" not in same_tok_hub and "the same tokens" in same_tok_hub


# ---------------------------------------------------------------- 8. small counts as counts


def test_small_counts_are_quoted_as_counts():
    assert count_or_share(1, 1) == "1 of 1" and count_or_share(0, 4) == "0 of 4"
    assert count_or_share(3, 12) == "25%" and count_or_share(0, 0) == "n/a"
    row = {"model": "m", "site": "s", "tokens": "planted family", "n_features": 256, "n_specific": 1,
           "missing_among_specific": 1.0, "missing_among_others": 0.2, "n_other_live": 200,
           "seed_stable_specific": 1, "missing_among_seed_stable_specific": 1.0}
    text = subset._specific_findings([row])[0]
    assert "100%" not in text and "of those 1 of 1 are missing" in text
    assert "against 20% of the other features" in text and "and 1 of 1 of those are missing" in text
    none = subset._specific_findings([{**row, "n_specific": 0, "seed_stable_specific": 0,
                                        "missing_among_specific": float("nan"),
                                        "missing_among_seed_stable_specific": float("nan")}])[0]
    assert "of those n/a are missing" in none and none.endswith("another seed of SAE_D.")

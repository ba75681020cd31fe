"""Plots are written as PNGs and the report holds every section, table and embedded figure."""

import numpy as np
import pandas as pd
import pytest

from analysis import plots
from analysis.report import Report, Section, markdown_table
from universality.errors import DataError


def test_markdown_table_formats_numbers_and_nan():
    df = pd.DataFrame({"metric": ["a", "b"], "value": [0.123456, float("nan")], "n": [3, 4]})
    text = markdown_table(df)
    assert text.splitlines()[0] == "| metric | value | n |"
    assert "| a | 0.123 | 3 |" in text and "| b | n/a | 4 |" in text


def test_figures_and_report(tmp_path):
    rng = np.random.default_rng(0)
    dist = pd.DataFrame({"comparison": ["x"] * 40, "kind": ["observed", "floor"] * 20, "score": rng.random(40)})
    mat = pd.DataFrame(rng.random((3, 3)), index=["s0", "s1", "s2"], columns=["s0", "s1", "s2"])
    curve = pd.DataFrame({"threshold": [0.5, 0.7, 0.9], "shared_fraction": [0.8, 0.5, 0.1], "comparison": ["x"] * 3})
    ser = pd.DataFrame({"step": [0, 1, 2, 4], "similarity": [0.1, 0.3, 0.6, 0.9]})
    figs = [
        plots.similarity_distributions(dist, tmp_path / "f" / "dist.png", "dist"),
        plots.heatmap(mat, tmp_path / "f" / "heat.png", "heat"),
        plots.threshold_curves(curve, tmp_path / "f" / "curve.png", "curve"),
        plots.series(ser, tmp_path / "f" / "ser.png", "ser", "step", "similarity", logx=True, bands={"floor": (0.0, 0.1)}),
    ]
    for f in figs:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = Report("Study", ["finding one"], [Section("A", "prose", [("table", curve)], [(f.stem, f) for f in figs])])
    md, page = report.write(tmp_path)
    text = md.read_text()
    assert "# Study" in text and "## A" in text and "finding one" in text and "f/dist.png" in text
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 4 and "<table" in html


def test_plot_input_errors(tmp_path):
    with pytest.raises(DataError, match="needs columns"):
        plots.threshold_curves(pd.DataFrame({"x": [1]}), tmp_path / "a.png", "t")
    with pytest.raises(DataError, match="empty"):
        plots.heatmap(pd.DataFrame(), tmp_path / "b.png", "t")

"""Seaborn figures for studies. Every function takes a tidy DataFrame and writes one PNG atomically.

- :func:`similarity_distributions` - per-feature similarity against floor and skyline.
- :func:`heatmap` - checkpoint-by-checkpoint or layer-by-layer similarity.
- :func:`threshold_curves` - shared fraction against the matching threshold (activation correlation).
- :func:`series` - a metric along an ordered axis (training steps, layers) with baseline bands.
- :func:`width_splitting` - stay / split / vanish / new counts per width step, and children per split parent.
- :func:`group_projection` - a feature group (manifold) in its 2-D plane, coloured by the largest latent.
- :func:`found_fractions` - share of a reference dictionary's features found by each control, bars per view,
  with floor and skyline markers.
- :func:`restoration_curves` - fraction of a logit difference restored by patching k directions, one line
  per basis (feature patching, Cunningham et al. 2023).
- :func:`relative_norm_histogram` - a crosscoder's relative decoder norms (Lindsey et al. 2024), with the
  shared / exclusive bands shaded.
- :func:`norm_trajectories` - a checkpoint crosscoder's per-latent decoder norms along training: median and
  quantile bands over latents, highlighted latents drawn one by one.

Every figure must draw data: :func:`_save` refuses one whose axes hold no data point (:func:`plotted_points`).
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.container import BarContainer  # noqa: E402

from universality.errors import DataError  # noqa: E402
from universality.io import atomic_write_bytes  # noqa: E402

__all__ = ["similarity_distributions", "heatmap", "threshold_curves", "series", "width_splitting", "group_projection",
           "relative_norm_histogram", "found_fractions", "norm_trajectories", "restoration_curves", "plotted_points"]

_PALETTE = {"observed": "#1f77b4", "floor": "#999999", "skyline": "#2ca02c"}


def plotted_points(fig: plt.Figure) -> int:
    """How many data points the figure's axes draw: finite points of lines, offsets and paths of
    collections (scatter markers, violins, heatmap cells) and images. Baseline bands
    (``axhspan``) and legends are not data."""
    n = 0
    for ax in fig.axes:
        for line in ax.get_lines():
            xy = np.column_stack([np.asarray(line.get_xdata(), dtype=float), np.asarray(line.get_ydata(), dtype=float)])
            n += int(np.isfinite(xy).all(axis=1).sum()) if xy.size else 0
        for coll in ax.collections:
            if isinstance(coll, PathCollection):  # scatter markers: one path, one offset per point
                offsets = np.asarray(coll.get_offsets(), dtype=float).reshape(-1, 2)
                n += int(np.isfinite(offsets).all(axis=1).sum())
            else:
                n += sum(1 for p in coll.get_paths() if len(p.vertices) and np.isfinite(p.vertices).all())
        n += len(ax.get_images())
        for container in ax.containers:
            if isinstance(container, BarContainer):
                n += sum(1 for bar in container.patches if np.isfinite(bar.get_height()))
    return n


def _save(fig: plt.Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG; a figure with no data drawn (empty axes, only a legend) is refused."""
    if plotted_points(fig) == 0:
        title = next((ax.get_title() for ax in fig.axes if ax.get_title()), "")
        plt.close(fig)
        raise DataError(f"figure {Path(path).name} ({title!r}) would be empty: no data point is drawn",
                        "check the columns and values passed to the plot (NaN or missing x/y values are dropped)")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _require(df: pd.DataFrame, cols: list[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise DataError(f"{what} needs columns {missing}", f"pass a tidy DataFrame with columns {cols}")
    if df.empty:
        raise DataError(f"{what} got an empty table", "check that the study produced results for this figure")
    if df[cols].isna().any(axis=1).all():
        raise DataError(f"{what} got no row with every one of {cols} present (all missing)",
                        "check that the values plotted are filled in (e.g. an x column mapped from labels)")


def similarity_distributions(df: pd.DataFrame, path: str | Path, title: str, xlabel: str = "comparison",
                             ylabel: str = "best-match similarity per feature") -> Path:
    """Violin plot of per-feature scores, ``hue`` = observed / floor / skyline.

    Columns: ``comparison``, ``kind`` (observed | floor | skyline), ``score``.
    """
    _require(df, ["comparison", "kind", "score"], "similarity_distributions")
    order = list(dict.fromkeys(df["comparison"]))
    kinds = [k for k in ("observed", "floor", "skyline") if k in set(df["kind"])]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(order) + 2), 4.2))
    sns.violinplot(data=df, x="comparison", y="score", hue="kind", order=order, hue_order=kinds,
                   palette=_PALETTE, cut=0, density_norm="width", inner="quartile", ax=ax)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.tick_params(axis="x", labelrotation=20)
    return _save(fig, path)


def heatmap(matrix: pd.DataFrame, path: str | Path, title: str, cbar_label: str = "similarity",
            vmin: float | None = None, vmax: float | None = None, annotate: bool | None = None) -> Path:
    """Heatmap of a square or rectangular similarity matrix (index = rows, columns = columns)."""
    if matrix.empty:
        raise DataError("heatmap got an empty matrix", "check that the study produced this comparison")
    annotate = matrix.size <= 100 if annotate is None else annotate
    label_len = max(len(str(v)) for v in [*matrix.index, *matrix.columns])
    width = max(6.5, 2.5 + 0.09 * label_len + 0.9 * matrix.shape[1])
    height = max(4.0, 1.5 + 0.05 * label_len + 0.55 * matrix.shape[0])
    fig, ax = plt.subplots(figsize=(width, height))
    sns.heatmap(matrix.astype(float), annot=annotate, fmt=".2f", vmin=vmin, vmax=vmax, cmap="viridis",
                cbar_kws={"label": cbar_label}, ax=ax)
    ax.set_title(title, fontsize=11)
    ax.tick_params(axis="x", labelrotation=30)
    plt.setp(ax.get_xticklabels(), ha="right")
    return _save(fig, path)


def threshold_curves(df: pd.DataFrame, path: str | Path, title: str,
                     xlabel: str = "activation correlation threshold") -> Path:
    """Shared fraction against threshold, one line per comparison (``kind`` styles baselines).

    Columns: ``threshold``, ``shared_fraction``, ``comparison``; optional ``kind``. ``xlabel`` names the
    similarity the threshold applies to (the studies match features by activation correlation).
    """
    _require(df, ["threshold", "shared_fraction", "comparison"], "threshold_curves")
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    style = "kind" if "kind" in df.columns else None
    sns.lineplot(data=df, x="threshold", y="shared_fraction", hue="comparison", style=style, marker="o", ax=ax)
    ax.set(title=title, xlabel=xlabel, ylabel="shared fraction", ylim=(-0.02, 1.02))
    return _save(fig, path)


def series(df: pd.DataFrame, path: str | Path, title: str, x: str, y: str, hue: str | None = None,
           logx: bool = False, bands: dict[str, tuple[float, float]] | None = None,
           ylabel: str | None = None, xlabel: str | None = None) -> Path:
    """A metric along an ordered axis, with optional horizontal baseline bands ``{label: (lo, hi)}``."""
    _require(df, [x, y] + ([hue] if hue else []), "series")
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    sns.lineplot(data=df, x=x, y=y, hue=hue, marker="o", ax=ax)
    for (label, (lo, hi)), color in zip((bands or {}).items(), ("#999999", "#2ca02c", "#d62728", "#9467bd")):
        ax.axhspan(lo, hi if hi > lo else lo + 1e-3, color=color, alpha=0.2, label=label)
    if logx:
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(left=0)
    ax.set(title=title, xlabel=xlabel or x, ylabel=ylabel or y)
    if bands or hue:
        ax.legend(fontsize="small")
    return _save(fig, path)


def restoration_curves(df: pd.DataFrame, path: str | Path, title: str, targets: tuple[float, ...] = (0.5, 0.8)) -> Path:
    """Fraction restored against the number of patched directions ``k`` (symlog axis), one line per ``basis``,
    one panel per ``panel`` when that column is present; dashed lines at ``targets`` and at 1 (the clean run).

    Columns: ``k``, ``fraction``, ``basis``; optional ``panel``.
    """
    _require(df, ["k", "fraction", "basis"], "restoration_curves")
    panels = list(dict.fromkeys(df["panel"])) if "panel" in df.columns else [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False, sharey=True)
    for ax, panel in zip(axes[0], panels):
        part = df if panel is None else df[df["panel"] == panel]
        sns.lineplot(data=part, x="k", y="fraction", hue="basis", marker="o", ax=ax)
        for t in (*targets, 1.0):
            ax.axhline(t, color="#999999", lw=0.8, ls="--" if t < 1 else "-")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(left=0)
        ax.set(title=title if panel is None else f"{title}\n{panel}", xlabel="patched directions k",
               ylabel="fraction of logit difference restored")
        ax.legend(fontsize="small")
    return _save(fig, path)


def width_splitting(counts: pd.DataFrame, children: pd.DataFrame, path: str | Path, title: str) -> Path:
    """Feature splitting across widths: counts of stay / split / vanish / new per width step (left) and the
    number of children per split parent (right).

    ``counts``: columns ``step``, ``event``, ``count`` (steps in width order); ``children``: columns ``step``,
    ``n_children``, ``parents`` (may be empty when nothing split; the right panel then says so).
    """
    _require(counts, ["step", "event", "count"], "width_splitting")
    steps = list(dict.fromkeys(counts["step"]))
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(9.0, 2.2 * len(steps) + 6), 4.2),
                                      gridspec_kw={"width_ratios": [3, 2]})
    sns.barplot(data=counts, x="step", y="count", hue="event", order=steps, ax=left)
    left.set(title=title, xlabel="width step (small -> large)", ylabel="latents")
    left.tick_params(axis="x", labelrotation=20)
    if len(children):
        sns.barplot(data=children, x="n_children", y="parents", hue="step", hue_order=[s for s in steps if s in set(children["step"])], ax=right)
    else:
        right.text(0.5, 0.5, "no split parent", ha="center", va="center", transform=right.transAxes)
    right.set(title="children per split parent", xlabel="children", ylabel="split parents")
    return _save(fig, path)


def group_projection(df: pd.DataFrame, path: str | Path, title: str) -> Path:
    """Scatter of a feature group's reconstructions in its 2-D plane, coloured by the latent with the
    largest code (``universality.match.manifolds.project_group(...).frame()``: columns ``x, y, latent``)."""
    _require(df, ["x", "y", "latent"], "group_projection")
    fig, ax = plt.subplots(figsize=(5.5, 5))
    data = df.assign(latent=df["latent"].astype(str))
    sns.scatterplot(data=data, x="x", y="y", hue="latent", s=8, linewidth=0, alpha=0.7, ax=ax)
    ax.axhline(0, color="#999999", lw=0.5)
    ax.axvline(0, color="#999999", lw=0.5)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set(title=title, xlabel="plane axis 1 (whitened)", ylabel="plane axis 2 (whitened)")
    ax.legend(title="largest latent", fontsize=7, markerscale=2, loc="best")
    return _save(fig, path)


def relative_norm_histogram(df: pd.DataFrame, path: str | Path, title: str, x: str = "relative_norm",
                            hue: str | None = None, shared: tuple[float, float] = (0.3, 0.7),
                            exclusive: float = 0.9, bins: int = 40) -> Path:
    """Histogram of the two-source relative decoder norm ``||d^B|| / (||d^A|| + ||d^B||)`` of live latents
    (one row per latent), with the shared band and the two exclusive bands shaded."""
    _require(df, [x] + ([hue] if hue else []), "relative_norm_histogram")
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    sns.histplot(data=df, x=x, hue=hue, bins=bins, binrange=(0.0, 1.0), ax=ax)
    sns.rugplot(data=df, x=x, hue=hue, ax=ax, legend=False)  # one tick per latent (the bars are patches, not counted as data)
    ax.axvspan(*shared, color="#2ca02c", alpha=0.12, label="shared")
    ax.axvspan(0.0, 1.0 - exclusive, color="#d62728", alpha=0.12, label="exclusive")
    ax.axvspan(exclusive, 1.0, color="#d62728", alpha=0.12)
    ax.set(title=title, xlabel="relative decoder norm (source B)", ylabel="latents", xlim=(0.0, 1.0))
    ax.legend(fontsize="small")
    return _save(fig, path)


def found_fractions(df: pd.DataFrame, path: str | Path, title: str, ylabel: str = "share of features found") -> Path:
    """Bars of ``found`` per ``control`` (``hue`` = ``view``), with each bar's ``floor`` (grey) and ``skyline``
    (green) drawn as short horizontal markers over it.

    Columns: ``control``, ``view``, ``found``, ``floor``, ``skyline``.
    """
    _require(df, ["control", "view", "found", "floor", "skyline"], "found_fractions")
    order = list(dict.fromkeys(df["control"]))
    views = list(dict.fromkeys(df["view"]))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(order) * max(1, len(views)) + 2), 4.2))
    sns.barplot(data=df, x="control", y="found", hue="view", order=order, hue_order=views, ax=ax)
    width = 0.8 / max(1, len(views))
    for (c, v), r in df.set_index(["control", "view"]).iterrows():
        x = order.index(c) - 0.4 + width * (views.index(v) + 0.5)
        for col, color, label in (("floor", _PALETTE["floor"], "floor"), ("skyline", _PALETTE["skyline"], "skyline")):
            if np.isfinite(r[col]):
                ax.hlines(r[col], x - width / 2, x + width / 2, colors=color, linewidth=2.5, label=label)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize="small")
    ax.set(title=title, xlabel="control", ylabel=ylabel, ylim=(0, 1.05))
    ax.tick_params(axis="x", labelrotation=15)
    return _save(fig, path)


def norm_trajectories(df: pd.DataFrame, path: str | Path, title: str, x: str = "step", y: str = "norm",
                      latent: str = "latent", highlight: str | None = None, threshold: float | None = None,
                      logx: bool = False, xlabel: str | None = None, ylabel: str | None = None) -> Path:
    """Per-latent values along an ordered axis (one row per latent and ``x``): the median over latents with
    the 25-75% and 10-90% quantile bands; latents whose ``highlight`` column is true drawn one line each;
    ``threshold`` a dotted horizontal line (e.g. the birth fraction)."""
    _require(df, [x, y, latent] + ([highlight] if highlight else []), "norm_trajectories")
    q = df.groupby(x)[y].quantile([0.1, 0.25, 0.5, 0.75, 0.9]).unstack().sort_index()
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    xs = q.index.to_numpy(dtype=float)
    ax.fill_between(xs, q[0.1], q[0.9], color=_PALETTE["observed"], alpha=0.15, label="10-90% of latents")
    ax.fill_between(xs, q[0.25], q[0.75], color=_PALETTE["observed"], alpha=0.3, label="25-75% of latents")
    ax.plot(xs, q[0.5], color=_PALETTE["observed"], marker="o", label=f"median ({df[latent].nunique()} latents)")
    if highlight:
        marked = df[df[highlight].astype(bool)]
        for i, (lat, grp) in enumerate(marked.groupby(latent)):
            grp = grp.sort_values(x)
            ax.plot(grp[x].to_numpy(dtype=float), grp[y].to_numpy(dtype=float), color="#d62728", lw=1.2, alpha=0.8,
                    label=f"{highlight} latents ({marked[latent].nunique()})" if i == 0 else None)
    if threshold is not None:
        ax.axhline(threshold, color="#999999", ls=":", lw=1.2, label=f"threshold {threshold}")
    if logx:
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(left=0)
    ax.set(title=title, xlabel=xlabel or x, ylabel=ylabel or y)
    ax.legend(fontsize="small")
    return _save(fig, path)

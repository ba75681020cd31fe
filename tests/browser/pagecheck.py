"""Checks of an HTML page as a browser sees it (selenium WebDriver), for the browser tests.

``check_page(driver, path)`` loads a ``file://`` page and runs them all: no SEVERE console
messages, every ``<img>`` loaded, every relative or ``file://`` link pointing to an existing file
(and, with a ``#fragment``, to an element with that id in the target page once its scripts have
run), every in-page ``#hash`` link resolving. Each ``assert_*`` can also be used on its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse
from urllib.request import url2pathname

__all__ = ["file_url", "url_path", "load", "console_errors", "assert_no_console_errors", "assert_images_loaded",
           "element_id_exists", "assert_links_resolve", "assert_hash_links_resolve", "check_page", "PageCheck"]

SKIPPED_SCHEMES = ("http", "https", "mailto", "data", "javascript", "blob", "about", "tel")


def file_url(path: str | Path, fragment: str = "") -> str:
    url = Path(path).resolve().as_uri()
    return f"{url}#{fragment}" if fragment else url


def url_path(url: str) -> Path:
    """The local path of a ``file://`` URL (without its fragment or query)."""
    return Path(url2pathname(urlparse(url).path))


def _wait(predicate, timeout: float, interval: float = 0.05):
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= end:
            return value
        time.sleep(interval)


def load(driver, target: str | Path, timeout: float = 30.0) -> None:
    """Open a page (a path or a URL) and wait until the document and its load handlers are done."""
    url = target if isinstance(target, str) and "://" in target else file_url(target)
    driver.get(url)
    ready = _wait(lambda: driver.execute_script("return document.readyState") == "complete", timeout)
    assert ready, f"{url} did not finish loading in {timeout:.0f}s"
    # one animation frame + a macrotask: lets load/DOMContentLoaded handlers that defer work finish
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "requestAnimationFrame(() => setTimeout(done, 0));")


def console_errors(driver, ignore: tuple[str, ...] = ()) -> list[str]:
    """SEVERE browser-console messages since the last call (reading the log drains it)."""
    return [e["message"] for e in driver.get_log("browser")
            if e.get("level") == "SEVERE" and not any(s in e["message"] for s in ignore)]


def assert_no_console_errors(driver, ignore: tuple[str, ...] = ()) -> None:
    errors = console_errors(driver, ignore)
    assert not errors, f"console errors on {driver.current_url}:\n" + "\n".join(errors)


_IMAGES_JS = """
const imgs = Array.from(document.images);
imgs.forEach(i => { if (i.loading === 'lazy') i.loading = 'eager'; });
return imgs.map(i => ({src: (i.currentSrc || i.src || i.getAttribute('src') || '').slice(0, 120),
                       complete: i.complete, w: i.naturalWidth}));
"""


def assert_images_loaded(driver, timeout: float = 15.0) -> int:
    """Every ``<img>`` has finished loading with a positive natural width; returns how many there are."""
    def pending():
        return [i for i in driver.execute_script(_IMAGES_JS) if not i["complete"]]
    _wait(lambda: not pending(), timeout)
    images = driver.execute_script(_IMAGES_JS)
    broken = [i["src"] for i in images if not (i["complete"] and i["w"] > 0)]
    assert not broken, f"{len(broken)} of {len(images)} images did not load on {driver.current_url}: {broken[:10]}"
    return len(images)


_ID_JS = """
const id = arguments[0];
if (document.getElementById(id)) return true;
return document.getElementsByName(id).length > 0;
"""


def element_id_exists(driver, fragment: str, timeout: float = 3.0) -> bool:
    """An element with id ``fragment`` (or an ``<a name>``) is in the current page, waiting up to
    ``timeout`` seconds for scripts that create it."""
    fid = unquote(fragment)
    return bool(_wait(lambda: driver.execute_script(_ID_JS, fid), timeout))


_LINKS_JS = """
return Array.from(document.querySelectorAll('a[href]')).map(a => {
  const raw = a.getAttribute('href');
  const url = typeof a.href === 'string' ? a.href : new URL(raw, document.baseURI).href;  // SVG <a>
  return {raw: raw, url: url};
});
"""


def _links(driver) -> list[dict]:
    return driver.execute_script(_LINKS_JS)


def _is_checked(link: dict) -> bool:
    raw = link["raw"].strip()
    if not raw or raw.startswith("#"):
        return False  # in-page links: assert_hash_links_resolve
    scheme = urlparse(link["url"]).scheme.lower()
    return scheme == "file" and urlparse(raw).scheme.lower() not in SKIPPED_SCHEMES


def _same_page(url_a: str, url_b: str) -> bool:
    return urldefrag(url_a)[0] == urldefrag(url_b)[0]


def assert_hash_links_resolve(driver, timeout: float = 3.0) -> int:
    """Every in-page ``#id`` link (``href="#..."`` or the page's own URL with a fragment) names an
    element of the page. An id missing at first is looked for again after the hash is opened, for
    pages whose scripts create the target on ``hashchange``. Returns how many links were checked."""
    here = driver.current_url
    fragments = []
    for link in _links(driver):
        raw = link["raw"].strip()
        if raw.startswith("#") or (_is_checked(link) and _same_page(link["url"], here)):
            frag = urldefrag(link["url"])[1]
            if frag and frag not in fragments:
                fragments.append(frag)
    missing = []
    for frag in fragments:
        if element_id_exists(driver, frag, timeout=0):
            continue
        driver.execute_script("location.hash = arguments[0];", frag)
        if not element_id_exists(driver, frag, timeout):
            missing.append(frag)
    if fragments:
        driver.execute_script("history.replaceState(null, '', location.pathname + location.search);")
    assert not missing, f"in-page links with no target on {here}: {['#' + f for f in missing]}"
    return len(fragments)


@dataclass
class PageCheck:
    """What :func:`check_page` looked at."""

    url: str
    images: int = 0
    links: int = 0
    hash_links: int = 0
    pages_opened: list[str] = field(default_factory=list)


def assert_links_resolve(driver, timeout: float = 5.0, ignore_console: tuple[str, ...] = ()) -> tuple[int, list[str]]:
    """Every relative or ``file://`` link of the current page points to an existing file and, when it
    has a ``#fragment`` into another HTML page, that page (opened, scripts run, no console errors)
    has an element with that id. Returns the number of links checked and the pages opened; the
    browser is back on the original page afterwards."""
    here = driver.current_url
    checked = [link for link in _links(driver) if _is_checked(link)]
    problems: list[str] = []
    wanted: dict[str, list[str]] = {}  # other page -> fragments to find there
    for link in checked:
        base, frag = urldefrag(link["url"])
        target = url_path(base)
        if not target.is_file():
            problems.append(f"{link['raw']!r}: no file {target}")
            continue
        if frag and not _same_page(base, here):
            if target.suffix.lower() in (".html", ".htm"):
                wanted.setdefault(base, [])
                if frag not in wanted[base]:
                    wanted[base].append(frag)
    opened = []
    if wanted:
        assert_no_console_errors(driver, ignore_console)  # keep this page's messages apart from the others'
    for base, frags in wanted.items():
        for frag in frags:  # open each target as a reader would: a fresh document with its hash
            driver.get("about:blank")  # (a hash-only change of the same page would not reload it)
            load(driver, f"{base}#{frag}")
            if not element_id_exists(driver, frag, timeout):
                problems.append(f"#{frag} not found in {url_path(base).name} (after its scripts ran)")
        errors = console_errors(driver, ignore_console)
        if errors:
            problems.append(f"console errors on {url_path(base).name}: {errors}")
        opened.append(base)
    if opened:
        load(driver, here)
    assert not problems, f"broken links on {here}:\n" + "\n".join(problems)
    return len(checked), opened


def check_page(driver, path: str | Path, ignore_console: tuple[str, ...] = ()) -> PageCheck:
    """Load ``path`` and run every check: console, images, links to files and other pages, hash links."""
    load(driver, path)
    result = PageCheck(url=driver.current_url)
    assert_no_console_errors(driver, ignore_console)
    result.images = assert_images_loaded(driver)
    result.links, result.pages_opened = assert_links_resolve(driver, ignore_console=ignore_console)
    result.hash_links = assert_hash_links_resolve(driver)
    assert_no_console_errors(driver, ignore_console)
    return result

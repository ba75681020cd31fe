"""Browser tests (slow tier): a headless Chromium driven by selenium.

The session fixture :func:`browser` installs what is missing with ``scripts/install_browser.sh``
(Debian's ``chromium`` + ``chromium-driver`` via apt-get, ``selenium`` via pip), so a CI machine gets
them on its first run. When that fails (no apt, no root, no network) the tests fail with the reason,
or are skipped when ``UNIVERSALITY_SKIP_BROWSER=1``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # `from pagecheck import ...` under any --import-mode
    sys.path.insert(0, str(HERE))

ROOT = HERE.parents[1]
INSTALL = ROOT / "scripts" / "install_browser.sh"
SKIP_ENV = "UNIVERSALITY_SKIP_BROWSER"
INSTALL_TIMEOUT_S = 900


def _find(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    return f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None


def _missing() -> list[str]:
    missing = [n for n in ("chromium", "chromedriver") if _find(n) is None]
    if importlib.util.find_spec("selenium") is None:
        missing.append("selenium")
    return missing


def _unavailable(reason: str):
    """Fail with the reason, or skip when the machine has opted out of browser tests."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"browser tests skipped ({SKIP_ENV}=1): {reason}")
    pytest.fail(f"{reason}\n(set {SKIP_ENV}=1 to skip the browser tests on a machine that cannot run them)",
                pytrace=False)


def _ensure_installed() -> None:
    missing = _missing()
    if not missing:
        return
    try:
        proc = subprocess.run(["bash", str(INSTALL), sys.executable], capture_output=True, text=True,
                              timeout=INSTALL_TIMEOUT_S, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    except (OSError, subprocess.TimeoutExpired) as e:
        _unavailable(f"could not install {', '.join(missing)} with {INSTALL.relative_to(ROOT)}: {e}")
    importlib.invalidate_caches()
    still = _missing()
    if proc.returncode != 0 or still:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        _unavailable(f"could not install {', '.join(still or missing)} with {INSTALL.relative_to(ROOT)} "
                     f"(exit {proc.returncode}):\n{tail}")


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium (selenium WebDriver) that records the browser console (``get_log('browser')``)."""
    _ensure_installed()
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = _find("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(executable_path=_find("chromedriver")), options=opts)
    except WebDriverException as e:
        _unavailable(f"headless Chromium did not start: {e.msg or e}")
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()

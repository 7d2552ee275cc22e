"""Headless Chromium for the dashboard's tests, screenshots and benchmark.

Debian's ``chromium`` and ``chromium-driver`` packages (``.ci/run`` installs them when
missing), driven by Selenium through that chromedriver: Selenium Manager is never asked to
download a browser or a driver (``SE_OFFLINE``), and Chromium is started with everything
that would reach the network on its own turned off.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

#: Where Debian installs the browser and its driver (looked up on PATH first).
CHROMIUM_CANDIDATES = ("chromium", "/usr/bin/chromium", "chromium-browser")
CHROMEDRIVER_CANDIDATES = ("chromedriver", "/usr/bin/chromedriver")

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
)


def _find(candidates: tuple[str, ...]) -> str | None:
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
        if os.path.isabs(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def chromium_paths() -> tuple[str, str] | None:
    """``(chromium, chromedriver)`` executables, or None when either is missing."""
    browser = _find(CHROMIUM_CANDIDATES)
    driver = _find(CHROMEDRIVER_CANDIDATES)
    if browser is None or driver is None:
        return None
    return browser, driver


def start_chromium(width: int = 1280, height: int = 900) -> Any:
    """A Selenium ``webdriver.Chrome`` on headless Chromium with a fresh profile (removed
    by :func:`stop_chromium`). Browser console messages are kept (``get_log("browser")``).
    Raises ``RuntimeError`` when Chromium or chromedriver is not installed."""
    paths = chromium_paths()
    if paths is None:
        raise RuntimeError("chromium and chromedriver are not installed")
    os.environ.setdefault("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="pyserving-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(executable_path=paths[1]), options=options)
    except Exception:
        shutil.rmtree(profile, ignore_errors=True)
        raise
    setattr(driver, "pyserving_profile", profile)  # noqa: B010 - removed by stop_chromium
    return driver


def stop_chromium(driver: Any) -> None:
    """Quit the browser and remove its profile."""
    try:
        driver.quit()
    finally:
        shutil.rmtree(getattr(driver, "pyserving_profile", ""), ignore_errors=True)

"""Headless Chromium for the tests that look at a web page (tests/test_web.py, and the Temporal
Web UI in tests/test_codec.py): Debian's chromium and chromium-driver, put into .venv/bin by
`make tools` (tests/tools/get-chromium.sh), driven by Selenium."""

from __future__ import annotations

import sys
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

BIN = Path(sys.executable).parent


def chromium() -> webdriver.Chrome:
    chromedriver = BIN / "chromedriver"
    assert chromedriver.exists(), f"no {chromedriver}: `make tools` installs Chromium for this"
    options = Options()
    options.binary_location = str(BIN / "chromium")
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace to sandbox with
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(str(chromedriver)))

"""Fixtures of the page tests: the real browser, shared by the browser test modules (one Chromium per module)."""
from __future__ import annotations

import pytest

from tests.browser import chromium


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless Chromium with Chrome's network log on (every request a page makes: see test_browser.py)."""
    driver = chromium(tmp_path_factory.mktemp("chromium-profile"))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()

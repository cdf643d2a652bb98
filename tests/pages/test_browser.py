"""The app in a real browser: ``streamlit run app.py`` on 127.0.0.1 with a fixture cache, driven by Debian's headless
Chromium through Selenium. Every page must render with no error box; an example holding an XSS payload must show
as text and run no script. A screenshot of each page is saved under the test's tmp folder.

Skips only when Chromium is not installed AND we are not in CI (under CI=true a missing browser is a failure:
``.ci/install`` installs it).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests import synthetic
from tests.browser import IDLE, have_chromium, serve

PAGES = [("", "Overview"), ("inspect", "Inspect"), ("map", "Map"), ("select", "Select"), ("evaluate", "Evaluate"),
         ("export", "Export"), ("jobs", "Jobs"), ("pairs", "Pairs")]  # fmt: skip

pytestmark = pytest.mark.slow

if not have_chromium():
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI needs Chromium for the browser test: run .ci/install (apt chromium chromium-driver)")
    pytest.skip("Chromium / chromedriver not installed (bash .ci/install installs them)", allow_module_level=True)


def _finished_sweep(root: Path, dataset: str) -> None:
    """A finished evaluation record (a sweep of a rule at two budgets) with its report, written as the evaluate job
    writes it, so the Evaluate page draws its tables and the sweep chart (band, rule line, dashed full line)."""
    from scoring.store.cache import Cache
    from scoring.store.jobs import Job, now, save_job

    def point(budget, sel, rnd):
        return {"budget": budget, "metric": "nll", "selection": sel, "n_examples": 10, "random_mean": rnd,
                "random_sd": 0.02, "n_seeds": 2, "n_eval": 50, "selection_minus_random": sel - rnd,
                "ci95": [sel - rnd - 0.03, sel - rnd + 0.03], "verdict": "better than random", "full": 1.7, "also": {}}

    arms = [{"name": name, "role": role, "n_examples": 10, "n_tokens": 500, "steps": 2,
             "metrics": {"synth-eval": {"nll": value}}}
            for name, role, value in (("rule@5%", "selection", 1.8), ("random-0@5%", "random", 1.9),
                                      ("rule@10%", "selection", 1.75), ("random-0@10%", "random", 1.85),
                                      ("full", "full", 1.7))]  # fmt: skip
    save_job(Cache(root), Job(
        id="e0" * 8, kind="evaluate", dataset=dataset, source_job="none", state="done", stage="done", created=now(),
        evaluation={"selection": None, "rule_of": "top6", "budgets": ["5%", "10%"], "rule": {"scores": ["davir"]},
                    "against": ["random", "full"], "seeds": 2, "start": "base",
                    "evals": [{"name": "synth-eval", "fingerprint": "x", "kind": "sft"}], "train": {"epochs": 3.0}},
        result={"evals": {"synth-eval": ["nll"]}, "notes": ["a note on <b>the</b> eval sets"], "arms": arms,
                "start": {"name": "base", "metrics": {"synth-eval": {"nll": 2.0}}}, "comparisons": {},
                "sweep": {"synth-eval": [point("5%", 1.8, 1.9), point("10%", 1.75, 1.85)]}}))  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app over a synthetic cache with an XSS row (SFT and pairs) and a finished evaluation sweep."""
    root = tmp_path_factory.mktemp("browser")
    cache = root / "cache"
    synthetic.build(cache, n=200, dataset="synth",
                    extra_rows=[{"id": "xss", "prompt": synthetic.XSS_PROMPT, "response": synthetic.XSS_RESPONSE}])
    synthetic.build_pairs(cache, n=100, dataset="pairs", extra_rows=[
        {"id": "xss", "prompt": synthetic.XSS_PROMPT, "chosen": synthetic.XSS_RESPONSE, "rejected": "<b>no</b>"}])
    _finished_sweep(cache, "synth")
    with serve(cache) as url:
        yield url, root


def _open(driver, url: str, title: str) -> None:
    """Load ``url`` and wait until the page's title is drawn and the script run has finished."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 60).until(
        lambda d: any(h.text.strip() == title for h in d.find_elements(By.CSS_SELECTOR, "h1")))
    WebDriverWait(driver, 60).until(lambda d: d.execute_script(IDLE))
    time.sleep(1.0)  # let charts and late elements settle before looking for error boxes


def _body_after(driver, url: str, title: str) -> str:
    """Open ``url`` and return the page's text once its charts are drawn."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _open(driver, url, title)
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .main-svg"))
    return driver.find_element(By.TAG_NAME, "body").text


def test_every_page_renders_without_an_error_box(server, browser):
    from selenium.webdriver.common.by import By

    url, root = server
    shots = root / "screenshots"
    shots.mkdir(exist_ok=True)
    for path, title in PAGES:
        _open(browser, f"{url}/{path}?dataset=synth", title)
        errors = browser.find_elements(By.CSS_SELECTOR, '[data-testid="stException"], [data-testid="stAlertContentError"]')
        assert not errors, f"{title}: {[e.text for e in errors]}"
        browser.save_screenshot(str(shots / f"{title.lower()}.png"))
        assert (shots / f"{title.lower()}.png").stat().st_size > 10_000
    body = _body_after(browser, f"{url}/evaluate?dataset=synth", "Evaluate")  # the synthetic sweep's chart
    assert "synth-eval: nll vs budget" in body and "a note on <b>the</b> eval sets" in body
    assert browser.find_elements(By.CSS_SELECTOR, '[data-testid="stPlotlyChart"]')
    _open(browser, f"{url}/pairs?dataset=pairs&example=xss", "Pairs")  # the pair view, XSS in the chosen reply
    errors = browser.find_elements(By.CSS_SELECTOR, '[data-testid="stException"], [data-testid="stAlertContentError"]')
    assert not errors, [e.text for e in errors]
    assert "Pair xss" in browser.find_element(By.TAG_NAME, "body").text
    assert browser.execute_script("return typeof window.__xss") == "undefined"
    assert browser.execute_script("return document.querySelectorAll('img[onerror]').length") == 0
    browser.save_screenshot(str(shots / "pairs-xss.png"))


def test_xss_payload_renders_as_text_and_runs_no_script(server, browser):
    from selenium.webdriver.common.by import By

    url, root = server
    _open(browser, f"{url}/inspect?dataset=synth&example=xss", "Inspect")
    page = browser.find_element(By.TAG_NAME, "body").text
    assert "Example xss" in page
    assert "<script>window.__xss = 1</script>" in page  # shown as text
    assert 'onerror="window.__xss = 2"' in page
    assert browser.execute_script("return typeof window.__xss") == "undefined"
    assert browser.execute_script("return document.querySelectorAll('img[onerror]').length") == 0
    assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')
    browser.save_screenshot(str(root / "screenshots" / "inspect-xss.png"))


LOCAL_HOSTS = {"127.0.0.1", "localhost"}
# Elements whose URL the browser fetches by itself (a link is a fetch too: icon, stylesheet, preload, preconnect).
FETCHING = ("link[href]", "script[src]", "img[src]", "iframe[src]", "source[src]", "video[src]", "audio[src]",
            "embed[src]", "object[data]", "image[href]", "use[href]")  # fmt: skip


def outside_urls(urls) -> list[str]:
    """The URLs among ``urls`` that leave this machine: anything but 127.0.0.1 / localhost, data: and blob:."""
    from urllib.parse import urlsplit

    out = []
    for url in urls:
        parts = urlsplit(str(url))
        if parts.scheme in ("data", "blob", "about", "javascript", "chrome", "chrome-untrusted", "chrome-extension",
                            "devtools"):  # inline data, or the browser's own pages (its start tab), not the app
            continue
        if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname in LOCAL_HOSTS:
            continue
        out.append(str(url))
    return sorted(set(out))


def requested_urls(driver, base: str, pages) -> set[str]:
    """Every URL the app's pages make the browser request, three ways: Chrome's network log (every
    Network.requestWillBeSent / webSocketCreated, needs the ``goog:loggingPrefs`` performance log), each page's
    Resource Timing entries, and the URLs of fetching elements in each page's DOM (a favicon link, which a headless
    browser may never fetch, is caught there)."""
    import json

    driver.get_log("performance")  # drop what earlier tests logged
    urls: set[str] = set()
    for path, title in pages:
        _open(driver, f"{base}/{path}", title)
        urls.update(driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)"))
        urls.update(driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.href?.baseVal ?? e.href ?? e.src ?? "
            "e.data).filter(u => typeof u === 'string' && u)", ", ".join(FETCHING)))
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.add(message["params"]["request"]["url"])
        elif message.get("method") == "Network.webSocketCreated":
            urls.add(message["params"]["url"])
    return urls


def test_the_app_requests_nothing_beyond_this_machine(server, browser):
    """Issue 14: the app makes no request beyond 127.0.0.1 on any page (a ``:material/…`` page_icon made the browser
    fetch the favicon from fonts.gstatic.com)."""
    url, _ = server
    urls = requested_urls(browser, url, [(f"{path}?dataset=synth", title) for path, title in PAGES])
    assert any("/_stcore/" in u for u in urls), "the network log saw none of the app's own requests"
    assert outside_urls(urls) == []

"""The threshold workbench in a real browser (issue 14, section 2): real mouse drags on the Plotly charts of the
Select page, through `streamlit run app.py` on 127.0.0.1 and Debian's headless Chromium.

- a brush across a histogram sets a value cut, shown as the CLI line and kept in the URL, and a reload restores it;
- a box on the two-score scatter marks rows on every view and can become the rule (a value band on each score);
- a click on a point opens that example in place;
- a lasso on the map marks the points inside it.

Selenium's pointer offsets are from the element's centre, so a drag "from +0.1 w to +0.45 w" covers the right part
of a chart. Skips like tests/pages/test_browser.py when Chromium is missing outside CI.
"""
from __future__ import annotations

import os
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.browser import IDLE, have_chromium, serve

pytestmark = pytest.mark.slow

if not have_chromium():
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI needs Chromium for the browser test: run .ci/install (apt chromium chromium-driver)")
    pytest.skip("Chromium / chromedriver not installed (bash .ci/install installs them)", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests import synthetic

    cache = tmp_path_factory.mktemp("workbench") / "cache"
    synthetic.build(cache, n=200, dataset="synth")
    with serve(cache) as url:
        yield url


def _idle(driver, timeout: float = 60) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    time.sleep(0.3)
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(IDLE))


def _open_select(driver, url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 90).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .nsewdrag")) >= 2)
    _idle(driver)


def _cli_line(driver) -> str:
    from selenium.webdriver.common.by import By

    for block in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stCode"]'):
        if "scoring select" in block.text:
            return " ".join(block.text.split())
    raise AssertionError("no select line on the page")


def _chart(driver, index: int):
    """The drag layer of the index-th Plotly chart of the page, scrolled into view."""
    from selenium.webdriver.common.by import By

    drag = driver.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .nsewdrag")[index]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", drag)
    time.sleep(0.5)
    return drag


def _tool(driver, element, tool: str) -> None:
    """Pick a Plotly toolbar tool ("select": the box, "lasso") on the chart of ``element``."""
    from selenium.webdriver.common.by import By

    chart = element.find_element(By.XPATH, "ancestor::div[contains(@class,'js-plotly-plot')]")
    button = chart.find_element(By.CSS_SELECTOR, f'.modebar-btn[data-val="{tool}"]')
    driver.execute_script("arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", button)
    time.sleep(0.3)


def _drag(driver, element, path) -> None:
    """Press at the first (fx, fy) of ``path`` (fractions of the element's size from its centre), move through the
    rest, release."""
    from selenium.webdriver.common.action_chains import ActionChains

    w, h = element.size["width"], element.size["height"]
    chain = ActionChains(driver).move_to_element_with_offset(element, int(path[0][0] * w), int(path[0][1] * h))
    chain.click_and_hold()
    x, y = path[0]
    for fx, fy in path[1:]:
        chain.move_by_offset(int((fx - x) * w), int((fy - y) * h))
        x, y = fx, fy
    chain.release().perform()


def _body_has(driver, text: str, timeout: float = 60) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: text in d.find_element(By.TAG_NAME, "body").text)
    _idle(driver)
    return driver.find_element(By.TAG_NAME, "body").text


def test_a_brush_on_a_histogram_sets_a_value_cut_that_the_url_keeps(server, browser):
    _open_select(browser, f"{server}/select?dataset=synth")
    assert "--budget 6% --rule top" in _cli_line(browser)
    _drag(browser, _chart(browser, 0), [(0.1, 0.0), (0.3, 0.05), (0.56, 0.05)])  # to the right end: a cut
    _body_has(browser, "the brush set the rule to above:")
    line = _cli_line(browser)
    assert "--rule above:" in line and "--budget all" in line
    params = parse_qs(urlsplit(browser.current_url).query)
    assert params["rules"][0].startswith("above:") and params["budget"] == ["all"]
    browser.get(browser.current_url)  # a reload (or a shared link) restores the rule
    _open_select(browser, browser.current_url)
    assert _cli_line(browser) == line


def test_a_box_on_the_scatter_marks_rows_and_becomes_the_rule(server, browser):
    from selenium.webdriver.common.by import By

    _open_select(browser, f"{server}/select?dataset=synth")
    scatter = _chart(browser, 1)
    _tool(browser, scatter, "select")
    _drag(browser, scatter, [(-0.3, -0.3), (0.0, 0.0), (0.3, 0.3)])
    body = _body_has(browser, "rows marked by a box on")
    assert "marked" in body
    button = next(b for b in browser.find_elements(By.CSS_SELECTOR, "button") if "Make the box the rule" in b.text)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
    button.click()
    _body_has(browser, "band-values:")
    line = _cli_line(browser)
    assert line.count("--rule band-values:") == 2 and "--budget all" in line


def test_a_click_on_a_point_opens_the_example_in_place(server, browser):
    from selenium.webdriver.common.action_chains import ActionChains

    _open_select(browser, f"{server}/select?dataset=synth")
    drag = _chart(browser, 1)
    # the pixel of the scatter's first drawn point, from Plotly's own axes
    x, y = browser.execute_script(
        "const gd = arguments[0].closest('.js-plotly-plot'); const t = gd.data[0];"
        "const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;"
        "return [xa.l2p(xa.d2l(t.x[0])), ya.l2p(ya.d2l(t.y[0]))];", drag)  # fmt: skip
    w, h = drag.size["width"], drag.size["height"]
    ActionChains(browser).move_to_element_with_offset(drag, int(x - w / 2), int(y - h / 2)).click().perform()
    body = _body_has(browser, "Nearest neighbours")
    assert "Example ex-" in body and "Prompt" in body


def test_a_lasso_on_the_map_marks_its_points(server, browser):
    _open_select(browser, f"{server}/select?dataset=synth")
    drag = _chart(browser, 2)
    _tool(browser, drag, "lasso")
    _drag(browser, drag, [(-0.4, -0.4), (0.4, -0.4), (0.4, 0.4), (-0.4, 0.4), (-0.4, -0.38)])
    _body_has(browser, "rows marked by a lasso on the map")


def test_a_box_on_a_log_axis_is_read_in_score_units(server, browser):
    """On a log axis Plotly reports the box in score units: reading them as log10 marked 17 of 241 rows."""
    import re

    _open_select(browser, f"{server}/select?dataset=synth&scores=ppl&rules=top&budget=10%25")
    scatter = _chart(browser, 1)
    assert browser.execute_script(
        "return arguments[0].closest('.js-plotly-plot')._fullLayout.xaxis.type", scatter) == "log"  # ppl: log on
    _tool(browser, scatter, "select")
    _drag(browser, scatter, [(-0.48, -0.48), (0.0, 0.0), (0.48, 0.48)])
    body = _body_has(browser, "rows marked by a box on ppl")
    marked = int(re.search(r"([\d,]+) rows marked by a box on ppl", body).group(1).replace(",", ""))
    assert marked >= 150  # nearly every one of the 200 rows lies inside a box over nearly the whole plot

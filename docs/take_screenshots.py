"""Screenshot every page of the app into docs/ (the README's pictures), from a cache holding the scored demo.

    python -m scoring demo                         # once: the demo dataset, scored (or --background and wait)
    python docs/take_screenshots.py --cache cache  # starts streamlit on 127.0.0.1, drives headless Chromium

Uses Debian's /usr/bin/chromium and /usr/bin/chromedriver through Selenium (tests/browser.py, like the browser
tests).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser import IDLE, chromium, free_port, start_app, stop_app, wait_healthy  # noqa: E402

PAGES = [  # (file name, url path + query, page title)
    ("overview", "?dataset=demo", "Overview"),
    ("inspect", "inspect?dataset=demo&example={example}", "Inspect"),
    ("map", "map?dataset=demo", "Map"),
    ("select", "select?dataset=demo", "Select"),
    # the workbench on a rule kept in its URL: a value cut on davir AND a percentile band on ifd, all it admits
    ("select-values", "select?dataset=demo&scores=davir,ifd&rules=above:0.2,band:10-90&budget=all&combine=and",
     "Select"),
    ("evaluate", "evaluate?dataset=demo", "Evaluate"),
    ("export", "export?dataset=demo", "Export"),
    ("jobs", "jobs?dataset=demo", "Jobs"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--example", default="demo-0007", help="example id the Inspect shot opens")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    work = Path(tempfile.mkdtemp(prefix="davir-shots-"))
    port = free_port()
    proc = start_app(Path(args.cache).resolve(), port, work / "streamlit.log")
    url = f"http://127.0.0.1:{port}"
    driver = None
    try:
        wait_healthy(url, proc, work / "streamlit.log")
        driver = chromium(work / "profile", network_log=False)
        driver.set_window_size(1400, 1100)
        for name, path, title in PAGES:
            driver.get(f"{url}/{path.format(example=args.example)}")
            WebDriverWait(driver, 120).until(
                lambda d: any(h.text.strip() == title for h in d.find_elements(By.CSS_SELECTOR, "h1")))
            WebDriverWait(driver, 120).until(lambda d: d.execute_script(IDLE))
            if name == "inspect":  # the token view loads the model's tokenizer once: wait for the last section
                WebDriverWait(driver, 120).until(lambda d: "cosine" in d.find_element(By.TAG_NAME, "body").text)
            time.sleep(2.5)
            height = driver.execute_script(
                "const m = document.querySelector('[data-testid=\"stMainBlockContainer\"]'); "
                "return m ? m.getBoundingClientRect().height + 120 : 1100")
            driver.set_window_size(1400, min(max(int(height) + 80, 900), 3200))
            time.sleep(1.0)
            driver.save_screenshot(str(Path(args.out) / f"{name}.png"))
            driver.set_window_size(1400, 1100)
            print(f"{name}.png")
    finally:
        if driver is not None:
            driver.quit()
        stop_app(proc)


if __name__ == "__main__":
    main()

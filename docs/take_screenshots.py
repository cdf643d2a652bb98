"""Screenshot every page of the app into docs/ (the README's pictures), from a cache holding the scored demo.

    python -m scoring demo                         # once: the demo dataset, scored (or --background and wait)
    python docs/take_screenshots.py --cache cache  # starts streamlit on 127.0.0.1, drives headless Chromium

Uses Debian's /usr/bin/chromium and /usr/bin/chromedriver through Selenium, like tests/pages/test_browser.py.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [  # (file name, url path + query, page title)
    ("overview", "?dataset=demo", "Overview"),
    ("inspect", "inspect?dataset=demo&example={example}", "Inspect"),
    ("map", "map?dataset=demo", "Map"),
    ("select", "select?dataset=demo", "Select"),
    ("export", "export?dataset=demo", "Export"),
    ("jobs", "jobs?dataset=demo", "Jobs"),
]

# Streamlit 1.67 is idle when no status widget shows the running icon (one leaving plays a 200 ms exit transition,
# "StatusWidget-exit"; the widget also shows other prompts), no element is stale (the previous run's, dimmed until
# replaced) and no element is still a skeleton (its lazily loaded component code not yet arrived). The same signal as
# benchmarks/browser_latency.py.
IDLE = """
for (const w of document.querySelectorAll('[data-testid="stStatusWidget"]'))
  if (!/StatusWidget-exit/.test(w.className) && w.querySelector('[data-testid="stStatusWidgetRunningIcon"]')) return false;
return !document.querySelector('[data-stale="true"], [data-testid="stSkeleton"]');
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--example", default="demo-0007", help="example id the Inspect shot opens")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = _port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--", "--cache", args.cache],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"davir-shots-{os.getpid()}"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,1100",
                 f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(flag)
    driver = None
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
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
        os.killpg(proc.pid, signal.SIGTERM)


if __name__ == "__main__":
    main()

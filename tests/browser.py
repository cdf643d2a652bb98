"""The app in a real browser, shared by the browser tests (tests/pages/test_browser*.py) and
benchmarks/browser_latency.py: `streamlit run app.py` on a free 127.0.0.1 port over a cache, Debian's headless
Chromium driven by Selenium, and the DOM signal that Streamlit has finished a run.

Chromium's own downloads do not work here: the browser is the Debian package (`apt-get install chromium
chromium-driver`, what .ci/install does), started with a fresh profile and no background networking.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1000")
# Streamlit 1.67 is idle when no status widget shows its running icon (one fading out does not count: a 200 ms exit
# transition), no element is stale and no widget is still a loading skeleton. A script for execute_script.
IDLE = """
for (const w of document.querySelectorAll('[data-testid="stStatusWidget"]'))
  if (!/StatusWidget-exit/.test(w.className) && w.querySelector('[data-testid="stStatusWidgetRunningIcon"]')) return false;
return !document.querySelector('[data-stale="true"], [data-testid="stSkeleton"]');
"""


def have_chromium() -> bool:
    return os.path.exists(CHROMIUM) and os.path.exists(DRIVER)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(cache: Path, port: int, log_path: Path, script: str = "app.py") -> subprocess.Popen:
    """`streamlit run app.py` (or another ``script``) over ``cache`` on 127.0.0.1:``port`` (headless, no file
    watcher, no usage stats), its output in ``log_path``, in a process group of its own (:func:`stop_app` ends it
    all)."""
    env = dict(os.environ, DAVIR_CACHE=str(cache), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", script, "--server.address", "127.0.0.1", "--server.port",
             str(port), "--server.headless", "true", "--server.fileWatcherType", "none",
             "--browser.gatherUsageStats", "false", "--", "--cache", str(cache)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def wait_healthy(url: str, proc: subprocess.Popen, log_path: Path, timeout: float = 120.0) -> None:
    """Until the server answers its health check; a RuntimeError with the log's tail if it dies or takes too long."""
    deadline = time.time() + timeout
    while True:
        try:
            if urllib.request.urlopen(url + "/_stcore/health", timeout=2).status == 200:
                return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError("streamlit did not start:\n" + Path(log_path).read_text()[-3000:])
        time.sleep(0.3)


def stop_app(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def serve(cache: Path):
    """The app over ``cache`` on a free loopback port; yields its URL and stops it after. Its log goes to a
    temporary folder of its own (not beside the cache, which need not be a test's)."""
    port = free_port()
    log_path = Path(tempfile.mkdtemp(prefix="davir-app-")) / f"streamlit-{port}.log"
    proc = start_app(cache, port, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log_path, timeout=60)
        yield url
    finally:
        stop_app(proc)


def chromium(profile: Path, network_log: bool = True):
    """A headless Chromium under Selenium with a fresh ``profile`` folder; ``network_log``: Chrome's performance log
    with network events (every request a page makes, the WebSocket's frames)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    if network_log:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
        options.add_experimental_option("perfLoggingPrefs", {"enableNetwork": True, "enablePage": False})
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=options)

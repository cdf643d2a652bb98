"""Latency the analyst feels: time from an input in a real browser to the rendered result, p50 / p95 per interaction.

    python benchmarks/browser_latency.py --cache cache --dataset demo     # an existing cache (only read)
    python benchmarks/browser_latency.py --rows 1000000                   # a synthetic cache, built once and reused
    python benchmarks/browser_latency.py --floor streamlit                # the floor: same controls, nothing behind

Starts ``streamlit run app.py`` on a free 127.0.0.1 port (headless, no file watcher) over the cache and drives Debian's
headless Chromium (/usr/bin/chromium, /usr/bin/chromedriver) through Selenium. ``--rows N`` builds (or reuses) the
synthetic cache of benchmarks/app_latency.py (tests/synthetic.py, dataset ``bench``) under /tmp/davir-bench-N.
``--floor streamlit|react`` times benchmarks/floor_app.py instead: the same pages and controls with nothing behind
them, so what Streamlit and this browser cost on this machine, the least any page can take (see that file).

One untimed warm-up round (the server's first reads of the score view, imports, the browser's first chart code),
then ``--repeats`` rounds, each timing:

- ``page switch``: a click on a sidebar navigation link, Overview -> Select -> Map -> Inspect -> Overview (also
  reported per target page, ``page switch -> Map`` ...), until the new page's title is drawn and the app is idle;
- ``select: percent slider``: the "Percent of all rows" thumb focused, one key pressed (an arrow key, so each round
  asks for a value not computed before; PageUp / PageDown when 0.1 % of the rows is under two rows, as on the
  300-row demo), until the "Kept" metric's text has changed and the app is idle;
- ``select: budget as``: the "Budget as" radio switched to count and back to percent (both timed), until the new
  budget control is drawn and the app is idle;
- ``map: colour by score`` / ``map: colour by kept/dropped``: "Colour by" opened and another option clicked, until
  the Plotly chart has been redrawn (a ``plotly_afterplot`` event after the input, or a new chart) showing the new
  colouring (its colour bar title, or the kept / dropped legend) and the app is idle.

A control that is not found (the pages are being rewritten) is skipped and reported as ``skipped: reason``; an
interaction that times out is reported under ``errors`` and the others still run.

How time is taken, all in the page's own clock (``performance.now()``), so WebDriver round trips are not counted:
the start is the input event's ``timeStamp`` (the first trusted pointerdown / keydown after the benchmark arms a
capture listener); the end is the first moment the result is shown with the app idle, plus one frame (a
requestAnimationFrame then a setTimeout: the browser has painted), provided the app then stays idle for 150 ms (a
check that the run is over, not counted; before 2026-12-01 it was, which added 150-170 ms to every figure). **Idle** in Streamlit 1.67's
DOM: no ``stStatusWidgetRunningIcon`` inside a ``stStatusWidget`` that is not leaving (the widget plays a 200 ms
exit transition, ``StatusWidget-exit``, after the run ends, so "no stStatusWidget" would add 200 ms; it also shows
other prompts, e.g. "Source file changed", so its mere presence is not "running"), and no element with
``data-stale="true"`` (the previous run's elements, dimmed until the run that replaces them has finished). The app
shows the running icon from the moment a rerun is requested (RERUN_REQUESTED) to the end of the script run.

Where the time goes, per interaction (medians in ``breakdown_p50_ms``):

- ``server``: on the network's own clock (Chrome's performance log, CDP WebSocket frame timestamps, blind to a busy
  page), from the rerun request leaving the browser to the run's last message arriving: the whole script rerun
  (Streamlit reruns the page top to bottom on every input) plus transfer; ``browser`` = total - ``server``: the
  page's own work (handling the input, applying the deltas, drawing charts and tables);
- ``to_send`` (input -> request sent) and ``render`` (the run's last message handled -> painted), page clock, from a
  WebSocket wrapper installed before the app's own scripts; ``kb_received``: the run's messages;
- ``server_cpu_ms`` (CPU of the streamlit process, all threads) and ``browser_cpu_ms`` (all Chromium processes), from
  /proc: what the interaction costs when the machine is shared and wall time is not; ``js_ms`` / ``layout_ms`` /
  ``style_ms``: the page's main-thread script, layout and style time (CDP Performance.getMetrics).

The last line printed is JSON: {"rows", "dataset", "cpu", "cores", "repeats", "p50_ms", "p95_ms", "targets",
"meets_target", "breakdown_p50_ms", "skipped", "errors", "loadavg", ...}. ``--json-only`` prints only that line.
With ``--cache`` the cache is only read (the run never saves); the file list and modification times of the
dataset's folders are compared before and after and any change is reported as ``cache_changed``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `tests` (the browser plumbing, the synthetic cache) and `scoring` from any folder

from tests.browser import chromium, free_port, start_app, stop_app, wait_healthy  # noqa: E402

TARGETS = {"demo_p95_ms": 500, "1M_p95_ms": 1000}
SWITCH_ORDER = ["Select", "Map", "Inspect", "Overview"]  # from Overview, once round per repeat
KEPT_LABEL, PCT_LABEL, BUDGET_LABEL, COLOUR_LABEL = "Kept", "Percent of all rows", "Budget as", "Colour by"

# Installed before any of the app's scripts (CDP Page.addScriptToEvaluateOnNewDocument): the input listener that
# stamps the start, and a WebSocket wrapper that logs every message's time and size.
PRELUDE = r"""
(() => {
  if (window.__bench) return;
  const b = window.__bench = {armed: false, t0: null, ws: []};
  for (const type of ["pointerdown", "mousedown", "keydown"]) {
    window.addEventListener(type, e => {
      if (b.armed && b.t0 === null && e.isTrusted) { b.t0 = e.timeStamp; b.armed = false; }
    }, true);
  }
  const Native = window.WebSocket;
  const size = d => (d && (d.byteLength ?? d.size ?? d.length)) || 0;
  class Logged extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", e => b.ws.push(["r", performance.now(), size(e.data)]));
    }
    send(data) { b.ws.push(["s", performance.now(), size(data)]); return super.send(data); }
  }
  window.WebSocket = Logged;
})();
"""

# Shared by the waits: is the app idle, and page-specific "is the result shown" checks.
HELPERS = r"""
const idle = () => {
  for (const w of document.querySelectorAll('[data-testid="stStatusWidget"]')) {
    if (/StatusWidget-exit/.test(w.className)) continue;
    if (w.querySelector('[data-testid="stStatusWidgetRunningIcon"]')) return false;
  }
  // stale: the previous run's elements; stSkeleton: an element whose lazily loaded component code has not arrived
  return !document.querySelector('[data-stale="true"], [data-testid="stSkeleton"]');
};
const title = () => [...document.querySelectorAll("h1")].map(h => h.textContent.trim());
const metric = label => {
  for (const m of document.querySelectorAll('[data-testid="stMetric"]')) {
    const l = m.querySelector('[data-testid="stMetricLabel"]');
    if (l && l.textContent.trim() === label) {
      const v = m.querySelector('[data-testid="stMetricValue"]');
      return v ? v.textContent.trim() : null;
    }
  }
  return null;
};
const widget = (testid, label) => [...document.querySelectorAll(`[data-testid="${testid}"]`)].find(w => {
  const l = w.querySelector('[data-testid="stWidgetLabel"]');
  return l && l.textContent.trim() === label;
});
const plots = () => [...document.querySelectorAll('.js-plotly-plot')];
"""

WAIT = HELPERS + r"""
const [cond, arg, timeoutMs, done] = arguments;
const b = window.__bench;
const start = performance.now();
const checks = {
  title: () => title().includes(arg),
  metric_changed: () => { const v = metric(arg[0]); return v !== null && v !== arg[1]; },
  widget: () => !!widget(arg[0], arg[1]) && !(arg[2] && widget(arg[2], arg[3])),
  plot: () => plots().some(p => {
    if (!p.querySelector(".main-svg")) return false;
    const fresh = p.__benchMark !== arg[0] || (p.__benchAfter || 0) > (b.t0 ?? start);
    const text = p.textContent || "";
    return fresh && (arg[1] === "kept" ? text.includes("kept") && text.includes("dropped") : text.includes(arg[1]));
  }),
  idle: () => true,
};
let idleSince = null, paintedAt = null;
const finish = (ok) => requestAnimationFrame(() => setTimeout(() => done({
  ok, t0: b.t0, t1: performance.now(), ws: b.ws.splice(0), ...(ok ? {} : {h1: title(), idle: idle(),
  error: (document.querySelector('[data-testid="stException"]') || {}).textContent?.slice(0, 300)}),
})));
const tick = () => {
  const now = performance.now();
  if (now - start > timeoutMs) return finish(false);
  if (idle() && document.querySelector('[data-testid="stException"]')) return finish(false);  // the page raised
  if (idle() && checks[cond]()) {
    if (idleSince === null) {  // the result is shown: the time it is painted (one frame later) is the end ...
      const mark = idleSince = now;
      paintedAt = null;
      requestAnimationFrame(() => setTimeout(() => { if (idleSince === mark) paintedAt = performance.now(); }));
    }
    // ... once the app has stayed idle for 150 ms after it (the run is over, not between two runs); the 150 ms
    // confirmation is not part of the latency
    if (now - idleSince >= 150 && paintedAt !== null)
      return done({ok: true, t0: b.t0, t1: idleSince, painted: paintedAt, ws: b.ws.splice(0)});
  } else idleSince = null;
  setTimeout(tick, 4);
};
tick();
"""


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def _tree_cpu_ms(root_pid: int) -> float:
    """CPU time (user + system) of ``root_pid`` and all its descendants, from /proc."""
    parent, ticks = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry)] = int(fields[1])
        ticks[int(entry)] = int(fields[11]) + int(fields[12])
    keep, frontier = {root_pid}, [root_pid]
    while frontier:
        pid = frontier.pop()
        for child, p in parent.items():
            if p == pid and child not in keep:
                keep.add(child)
                frontier.append(child)
    return 1000.0 * sum(ticks.get(p, 0) for p in keep) / os.sysconf("SC_CLK_TCK")


def _snapshot(paths: list[Path]) -> dict[str, tuple[int, int]]:
    out = {}
    for base in paths:
        for dirpath, _, files in os.walk(base):
            for name in files:
                p = os.path.join(dirpath, name)
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                out[p] = (st.st_mtime_ns, st.st_size)
    return out


class Bench:
    def __init__(self, url: str, driver, server_pid: int, driver_pid: int, timeout_s: float, log):
        self.url, self.driver, self.server_pid, self.driver_pid = url, driver, server_pid, driver_pid
        self.timeout_ms = timeout_s * 1000
        self.log = log
        self.times: dict[str, list[float]] = {}
        self.parts: dict[str, dict[str, list[float]]] = {}
        self.skipped: dict[str, str] = {}
        self.errors: dict[str, list[str]] = {}
        self.recording = False

    # -- plumbing ----------------------------------------------------------------------------------------------
    def js(self, script: str, *args):
        return self.driver.execute_script(HELPERS + script, *args)

    def wait(self, cond: str, arg=None, timeout_ms: float | None = None) -> dict:
        self.driver.set_script_timeout((timeout_ms or self.timeout_ms) / 1000 + 30)
        return self.driver.execute_async_script(WAIT, cond, arg, timeout_ms or self.timeout_ms)

    def settle(self) -> None:
        """Untimed: wait until the app is idle (and drop the messages logged so far)."""
        self.wait("idle")

    def timed(self, label: str, action, cond: str, arg) -> bool:
        """Arm the input listener, run ``action`` (Selenium input), wait for ``cond`` and record the latency."""
        self.js("window.__bench.ws.length = 0; window.__bench.t0 = null; window.__bench.armed = true;")
        self.driver.get_log("performance")  # drop older network events
        server_cpu, browser_cpu = _tree_cpu_ms(self.server_pid), _tree_cpu_ms(self.driver_pid)
        metrics = self._metrics()
        wall = time.perf_counter()
        action()
        res = self.wait(cond, arg)
        wall = (time.perf_counter() - wall) * 1000
        server_cpu, browser_cpu = _tree_cpu_ms(self.server_pid) - server_cpu, _tree_cpu_ms(self.driver_pid) - browser_cpu
        metrics = {k: v - metrics.get(k, 0.0) for k, v in self._metrics().items()}
        if not res.get("ok"):
            self.errors.setdefault(label, []).append(f"no {cond} {arg!r} (h1 {res.get('h1')}, idle {res.get('idle')}, "
                                                     f"exception {res.get('error')!r})")  # fmt: skip
            self.log(f"  {label}: TIMEOUT ({cond} {arg!r})")
            return False
        t0 = res["t0"]
        if t0 is None:  # the input listener missed the event (should not happen): fall back to the wall clock
            ms = wall
        else:
            ms = res["painted"] - t0
        sent = [t for k, t, _ in res["ws"] if k == "s" and (t0 is None or t >= t0)]
        recv = [(t, n) for k, t, n in res["ws"] if k == "r" and (t0 is None or t >= t0) and t <= res["t1"]]
        part = {"server_cpu_ms": server_cpu, "browser_cpu_ms": browser_cpu,
                "kb_received": sum(n for _, n in recv) / 1024, **metrics}  # fmt: skip
        if t0 is not None and sent:
            part["to_send"] = sent[0] - t0
            net = self._frames()
            if net["s"] and len(net["r"]) >= len(recv) > 0:
                # the network's own clock, blind to a busy page: rerun request sent -> the run's last message in
                part["server"] = net["r"][len(recv) - 1] - net["s"][0]
                part["browser"] = ms - part["server"]
            if recv:
                part["render"] = res["painted"] - recv[-1][0]
        if self.recording:
            self.times.setdefault(label, []).append(ms)
            for k, v in part.items():
                self.parts.setdefault(label, {}).setdefault(k, []).append(v)
        self.log(f"  {label}: {ms:.0f} ms" + ("" if self.recording else " (warm-up)")
                 + "".join(f", {k} {v:.0f}" for k, v in part.items()))  # fmt: skip
        return True

    def _metrics(self) -> dict[str, float]:
        """The page's main-thread time so far (CDP Performance.getMetrics), ms: script, layout, style."""
        got = {m["name"]: m["value"] for m in self.driver.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]}
        return {"js_ms": 1000 * got.get("ScriptDuration", 0.0), "layout_ms": 1000 * got.get("LayoutDuration", 0.0),
                "style_ms": 1000 * got.get("RecalcStyleDuration", 0.0)}  # fmt: skip

    def _frames(self) -> dict[str, list[float]]:
        """WebSocket frames sent / received since the last drain, as ms on the network's clock (CDP timestamps)."""
        out: dict[str, list[float]] = {"s": [], "r": []}
        for entry in self.driver.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            kind = {"Network.webSocketFrameSent": "s", "Network.webSocketFrameReceived": "r"}.get(msg.get("method"))
            if kind:
                out[kind].append(float(msg["params"]["timestamp"]) * 1000)
        return out

    def find(self, testid: str, label: str):
        return self.js(f"return widget({json.dumps(testid)}, arguments[0]) || null;", label)

    # -- interactions --------------------------------------------------------------------------------------------
    def switch(self, title: str) -> bool:
        from selenium.webdriver.common.by import By

        links = [a for a in self.driver.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebarNavLink"]')
                 if a.text.strip().splitlines()[-1:] == [title]]  # the icon's ligature ("filter_alt") comes first
        if not links:
            self.skipped.setdefault("page switch", f"no sidebar link titled {title!r}")
            return False
        ok = self.timed("page switch", lambda: links[0].click(), "title", title)
        if ok and self.recording:
            self.times.setdefault(f"page switch -> {title}", []).append(self.times["page switch"][-1])
        self.settle()
        return ok

    def percent_slider(self, r: int, n_rows: int) -> None:
        from selenium.webdriver.common.keys import Keys

        label = "select: percent slider"
        box = self.find("stSlider", PCT_LABEL)
        kept = self.js("return metric(arguments[0]);", KEPT_LABEL)
        if box is None or kept is None:
            self.skipped.setdefault(label, f"no {PCT_LABEL!r} slider" if box is None else f"no {KEPT_LABEL!r} metric")
            return
        thumb = self.js('return arguments[0].querySelector(\'[role="slider"], input[type="range"]\');', box)
        if thumb is None:
            self.skipped.setdefault(label, "the slider has no thumb (role=slider)")
            return
        small = n_rows * 0.001 < 2  # one 0.1 % step would not move Kept reliably
        # a new value each round (the server memoises computed selections): arrow up from the default;
        # on a small dataset PageUp / PageDown alternately, which revisits two values
        key = (Keys.PAGE_UP if r % 2 == 0 else Keys.PAGE_DOWN) if small else Keys.ARROW_UP
        self.js("arguments[0].focus();", thumb)
        self.timed(label, lambda: thumb.send_keys(key), "metric_changed", [KEPT_LABEL, kept])
        self.settle()

    def budget_radio(self) -> None:
        label = "select: budget as"
        box = self.find("stRadio", BUDGET_LABEL)
        if box is None:
            self.skipped.setdefault(label, f"no {BUDGET_LABEL!r} radio")
            return
        for target, testid, wlabel, gone_testid, gone_label in (
                ("count", "stNumberInput", "Rows", "stSlider", PCT_LABEL),
                ("percent", "stSlider", PCT_LABEL, "stNumberInput", "Rows")):  # fmt: skip
            box = self.find("stRadio", BUDGET_LABEL)
            option = self.js("""
                const opts = [...arguments[0].querySelectorAll('label')];
                return opts.find(l => l.textContent.trim() === arguments[1]) || null;""", box, target)
            if option is None:
                self.skipped.setdefault(label, f"no {target!r} option in {BUDGET_LABEL!r}")
                return
            if not self.timed(label, lambda o=option: o.click(), "widget", [testid, wlabel, gone_testid, gone_label]):
                return
            self.settle()

    def _open_list(self, box) -> None:
        """Open a selectbox's list: Streamlit 1.67 draws a react-aria ComboBox (an input role=combobox and an "Open"
        button with aria-haspopup=listbox); older ones a BaseWeb select."""
        from selenium.webdriver.common.by import By

        for css in ('button[aria-haspopup="listbox"]', '[role="combobox"]', '[data-baseweb="select"]'):
            found = box.find_elements(By.CSS_SELECTOR, css)
            if found:
                found[0].click()
                return
        raise LookupError("no way to open the selectbox")

    def colour(self, r: int) -> None:
        from selenium.webdriver.common.by import By

        box = self.find("stSelectbox", COLOUR_LABEL)
        if box is None:
            self.skipped.setdefault("map: colour by score", f"no {COLOUR_LABEL!r} selectbox")
            return
        current = self.js("const i = arguments[0].querySelector('[role=\"combobox\"], input');"
                          "return i ? (i.value || i.textContent || '').trim() : '';", box)
        self._open_list(box)
        options = []
        for _ in range(100):
            options = [o for o in self.driver.find_elements(By.CSS_SELECTOR, '[role="option"]') if o.text.strip()]
            if options:
                break
            time.sleep(0.05)
        names = [o.text.strip() for o in options]
        if not options:
            self.skipped.setdefault("map: colour by score", f"{COLOUR_LABEL!r} opened no options")
            return
        kept = [i for i, n in enumerate(names) if n.startswith("kept")]
        scores = [i for i, n in enumerate(names)  # a score (not kept / dropped, not a saved selection's colouring)
                  if not n.startswith(("kept", "saved selection")) and n != current]
        if not kept:
            self.skipped.setdefault("map: colour by kept/dropped",
                                    "no 'kept / dropped' option (needs a current selection from Select)")
        # alternate: a score (a different one each round), then kept / dropped when offered
        plan = [("map: colour by score", scores[r % len(scores)] if scores else None)]
        if kept and not current.startswith("kept"):
            plan.append(("map: colour by kept/dropped", kept[0]))
        for i, (label, index) in enumerate(plan):
            if index is None:
                continue
            if i > 0:  # open the list again
                self._open_list(self.find("stSelectbox", COLOUR_LABEL))
                for _ in range(100):
                    options = [o for o in self.driver.find_elements(By.CSS_SELECTOR, '[role="option"]')
                               if o.text.strip()]  # fmt: skip
                    if options:
                        break
                    time.sleep(0.05)
                option = next((o for o in options if o.text.strip() == names[index]), None)
                if option is None:
                    self.skipped.setdefault(label, f"option {names[index]!r} not shown")
                    continue
            else:
                option = options[index]
            mark = f"m{r}-{i}-{time.time()}"
            self.js("""for (const p of plots()) {
                           p.__benchMark = arguments[0];
                           if (p.on && !p.__benchHooked) { p.on('plotly_afterplot', () => { p.__benchAfter = performance.now(); });
                                                           p.__benchHooked = true; }
                       }""", mark)  # fmt: skip
            expect = "kept" if names[index].startswith("kept") else names[index]
            self.timed(label, lambda o=option: o.click(), "plot", [mark, expect])
            self.settle()

    def guarded(self, label: str, step) -> bool:
        """Run one interaction; an exception (a control rewritten under us) is recorded, not raised."""
        from selenium.common.exceptions import WebDriverException

        try:
            return step() is not False
        except (WebDriverException, LookupError) as error:
            self.errors.setdefault(label, []).append(f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
            self.log(f"  {label}: {type(error).__name__}")
            try:
                self.driver.find_element("tag name", "body").send_keys("\ue00c")  # Escape: close an open list
                self.settle()
            except WebDriverException:
                pass
            return False

    def round(self, r: int, n_rows: int) -> None:
        for title in SWITCH_ORDER:
            if not self.guarded("page switch", lambda t=title: self.switch(t)):
                continue
            if title == "Select":
                self.guarded("select: percent slider", lambda: self.percent_slider(r, n_rows))
                self.guarded("select: budget as", self.budget_radio)
            elif title == "Map":
                self.guarded("map: colour by", lambda: self.colour(r))


def _browser(profile: Path):
    """tests.browser's Chromium (network log on: the WebSocket's frames) with the timing prelude installed."""
    driver = chromium(profile)
    driver.set_page_load_timeout(120)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": PRELUDE})
    driver.execute_cdp_cmd("Performance.enable", {"timeDomain": "threadTicks"})
    return driver


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default=None, help="an existing cache to read (with --dataset); else a synthetic one")
    parser.add_argument("--dataset", default=None, help="the dataset in --cache (e.g. demo)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the synthetic cache (without --cache)")
    parser.add_argument("--build-dir", default=None, help="where the synthetic cache lives (default /tmp/davir-bench-N)")
    parser.add_argument("--dim", type=int, default=32, help="embedding width of the synthetic rows")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one interaction may take")
    parser.add_argument("--json-only", action="store_true", help="print only the final JSON line")
    parser.add_argument("--floor", choices=["streamlit", "react"], default=None,
                        help="time benchmarks/floor_app.py instead: the same controls with nothing behind them; its "
                             "chart as st.plotly_chart (streamlit) or one Plotly div updated in place (react)")
    args = parser.parse_args()

    def log(msg: str) -> None:
        if not args.json_only:
            print(msg, file=sys.stderr, flush=True)

    info: dict = {}
    script = "app.py"
    if args.floor:
        root, dataset, script = Path(tempfile.mkdtemp(prefix="davir-floor-")), "floor", "benchmarks/floor_app.py"
        n_rows = 300  # floor_app.ROWS (importing it would run the app)
        info["floor_chart"] = args.floor
        if args.floor == "react":  # the app serves plotly.js itself (benchmarks/static/, not in git)
            import plotly

            (ROOT / "benchmarks" / "static").mkdir(exist_ok=True)
            shutil.copyfile(Path(plotly.__file__).parent / "package_data" / "plotly.min.js",
                            ROOT / "benchmarks" / "static" / "plotly.min.js")
            os.environ.update(STREAMLIT_SERVER_ENABLE_STATIC_SERVING="true", FLOOR_REACT="1")
    elif args.cache:
        if not args.dataset:
            parser.error("--cache needs --dataset")
        root, dataset = Path(args.cache).resolve(), args.dataset
        n_rows = int(json.loads((root / "datasets" / dataset / "meta.json").read_text())["n_rows"])
        watched = [p for p in (root / "datasets" / dataset, root / "views" / dataset, root / "selections" / dataset,
                               root / "jobs") if p.exists()]  # fmt: skip
        before = _snapshot(watched)
    else:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from app_latency import ensure_cache

        root, dataset = Path(args.build_dir or f"/tmp/davir-bench-{args.rows}"), "bench"
        log(f"synthetic cache {root} ({args.rows:,} rows): building or reusing ...")
        view, info = ensure_cache(root, args.rows, args.dim)
        n_rows = view.n_rows
        del view

    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="davir-browser-"))
    server = start_app(root, port, work / "streamlit.log", script)
    url = f"http://127.0.0.1:{port}"
    driver = None
    try:
        wait_healthy(url, server, work / "streamlit.log")
        driver = _browser(work / "profile")
        bench = Bench(url, driver, server.pid, driver.service.process.pid, args.timeout, log)
        start = time.perf_counter()
        driver.get(f"{url}/?dataset={dataset}")
        first = bench.wait("title", "Overview", max(args.timeout, 300) * 1000)  # the first view load can be slow
        if not first.get("ok"):
            raise RuntimeError(f"Overview did not render: {first}")
        info["first_load_s"] = round(time.perf_counter() - start, 1)
        log(f"first load {info['first_load_s']} s; warm-up round ...")
        start = time.perf_counter()
        bench.round(0, n_rows)  # untimed: the server's first reads and sorts, the browser's first chart code
        info["warmup_round_s"] = round(time.perf_counter() - start, 1)
        bench.recording = True
        for r in range(1, args.repeats + 1):
            log(f"round {r}")
            bench.round(r, n_rows)
    finally:
        if driver is not None:
            try:
                driver.quit()
            except Exception as error:  # noqa: BLE001 -- the browser is going away; the server must still be stopped
                log(f"closing the browser: {error!r}")
        stop_app(server)
        shutil.rmtree(work / "profile", ignore_errors=True)

    p50 = {k: _pct(v, 50) for k, v in bench.times.items()}
    p95 = {k: _pct(v, 95) for k, v in bench.times.items()}
    parts = {k: {n: round(float(np.median(v)), 1) for n, v in d.items()} for k, d in bench.parts.items()}
    target = TARGETS["demo_p95_ms"] if n_rows < 1_000_000 else TARGETS["1M_p95_ms"]
    headline = {k: v for k, v in p95.items() if not k.startswith("page switch ->")}
    for k in bench.times:
        log(f"{k:34s} p50 {p50[k]:8.1f} ms   p95 {p95[k]:8.1f} ms   n {len(bench.times[k])}   "
            + "  ".join(f"{n} {v:.0f}" for n, v in parts.get(k, {}).items()))  # fmt: skip
    result = {
        "rows": dataset if args.cache or args.floor else n_rows, "n_rows": n_rows, "dataset": dataset, "cpu": _cpu_model(),
        "cores": os.cpu_count(), "repeats": args.repeats, "p95_ms": p95, "p50_ms": p50, "targets": TARGETS,
        "meets_target": bool(headline) and max(headline.values()) < target,
        "breakdown_p50_ms": parts,
        "skipped": {k: f"skipped: {v}" for k, v in bench.skipped.items() if k not in bench.times},
        "sometimes_skipped": {k: f"skipped at least once: {v}" for k, v in bench.skipped.items() if k in bench.times},
        "errors": bench.errors, "loadavg": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d"), **info,
    }  # fmt: skip
    if args.cache and not args.floor:
        after = _snapshot(watched)
        changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
        result["cache_changed"] = changed[:20]
    print(json.dumps(result))


if __name__ == "__main__":
    main()

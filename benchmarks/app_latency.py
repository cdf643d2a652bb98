"""Server-side latency of the app's pages on a large synthetic cache, through Streamlit's AppTest (the real pages).

    python benchmarks/app_latency.py --rows 1000000

Builds (once, reused when present) a synthetic cache of ``--rows`` scored examples in the real schemas
(tests/synthetic.py: examples, base and reference pass parts with per-token losses and embeddings, a finished job,
a UMAP layout), materialises its score view once (timed and reported, not part of the p95: it is paid once per set
of parts), then times every page's first render and every control change ``--repeats`` times:

- a page's first render: a fresh session opening that page (the session's own first run, on Overview, is not
  timed: it includes AppTest's once-per-instance scan of installed components, which a server does at start; so
  Overview's first render is timed on coming back to it from Jobs);
- a control change: one widget moved to a value not used before in that session, then the rerun.

Before every timed run the memo of computed selections is cleared, so each run recomputes the selection it shows.
What the server keeps per score view -- the view's Arrow table and numpy columns, each score's sort order (like a
database index) and ranks per set of eligible rows, the examples' text, the embeddings -- is loaded once per
server process by one untimed warm-up round (its wall time is reported as ``warmup_round_s``).

The last line printed is JSON: {"rows": N, "p95_ms": {action: ms, ...}, "max_p95_ms": ms, ...}; extra fields:
``cpu_p95_ms`` (the same runs' CPU time of this process, all threads: what the work costs when the machine is
shared and wall time is not), ``cpus`` and ``loadavg`` (the 1 / 5 / 15-minute load average at the end).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scoring.scores import view_reads, views  # noqa: E402
from scoring.selection import saved as selections  # noqa: E402
from tests import synthetic  # noqa: E402

PAGES = ["overview", "inspect", "map", "select", "export", "jobs"]


def _cold() -> None:
    """Forget computed selections, so every measured run recomputes the one it shows."""
    with selections._RESULTS_LOCK:
        selections._RESULTS.clear()


def _app(cache_root: Path):
    from streamlit.testing.v1 import AppTest

    os.environ["DAVIR_CACHE"] = str(cache_root)
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)


class Times(dict):
    """{action: [wall ms, ...]} and, in ``cpu``, {action: [CPU ms of this process, ...]} for the same runs."""

    def __init__(self):
        super().__init__()
        self.cpu: dict[str, list[float]] = {}


def _timed(at, label: str, out: dict) -> None:
    _cold()
    cpu = time.process_time()  # every thread of this process: AppTest runs the script in a thread of its own
    start = time.perf_counter()
    at.run()
    elapsed = (time.perf_counter() - start) * 1000
    cpu = (time.process_time() - cpu) * 1000
    if at.exception:
        raise RuntimeError(f"{label}: {at.exception[0].value}")
    out.setdefault(label, []).append(elapsed)
    if isinstance(out, Times):
        out.cpu.setdefault(label, []).append(cpu)


def _page(cache_root: Path, page: str, out: dict):
    """A fresh session on ``page``, its first render timed cold."""
    at = _app(cache_root)
    at.run()  # a session starts on the default page (Overview); switching needs one run
    if page == "overview":  # so Overview's first render is timed on coming back to it from another page
        at.switch_page("pages/jobs.py").run()
    at.switch_page(f"pages/{page}.py")
    _timed(at, f"{page}: first render", out)
    return at


def run_round(cache_root: Path, r: int, n_rows: int, out: dict) -> None:
    """One round: every page's first render and every control change, with values unique to round ``r``."""
    at = _page(cache_root, "overview", out)
    at.selectbox(key="overview_scatter_score").set_value(["rho", "ifd", "ppl", "loss_base"][r % 4])
    _timed(at, "overview: scatter score", out)

    at = _page(cache_root, "inspect", out)
    at.selectbox(key="inspect_sort").set_value(["rho", "ifd", "ppl", "loss_ref"][r % 4])
    _timed(at, "inspect: sort", out)
    at.selectbox(key="inspect_flag").set_value(["clean", "flagged", "too_long", "any"][r % 4])
    _timed(at, "inspect: flag filter", out)
    at.number_input(key="inspect_page").set_value(2 + r)
    _timed(at, "inspect: next page", out)
    at.text_input(key="inspect_text").set_value(f"Answer {1000 + r}")
    _timed(at, "inspect: text search", out)
    at.text_input(key="inspect_text").set_value("")
    at.run()
    at.text_input(key="inspect_open").set_value(f"ex-{(r * 7919) % n_rows:07d}")
    _timed(at, "inspect: open example", out)

    at = _page(cache_root, "select", out)
    at.slider(key="sel_pct").set_value(float(3 + r))
    _timed(at, "select: budget percent", out)
    at.multiselect(key="sel_scores").set_value(["davir", "ifd"])
    _timed(at, "select: two scores (and)", out)
    at.radio(key="sel_combine").set_value("or")
    _timed(at, "select: combine or", out)
    at.radio(key="sel_rule_ifd").set_value("band")
    _timed(at, "select: band rule", out)
    at.selectbox(key="sel_quota").set_value("category" if r % 2 else "cluster")
    _timed(at, "select: quota", out)
    at.radio(key="sel_budget_kind").set_value("tokens")
    _timed(at, "select: token budget", out)
    at.selectbox(key="sel_quota").set_value("(none)")
    at.multiselect(key="sel_scores").set_value(["davir"])
    at.radio(key="sel_budget_kind").set_value("count")
    at.run()
    at.number_input(key="sel_count").set_value(2000 + r)
    at.checkbox(key="sel_dedup_on").check()
    _timed(at, "select: near-duplicate filter (2,000 kept)", out)
    at.checkbox(key="sel_dedup_on").uncheck()
    at.number_input(key="sel_count").set_value(60000)
    at.run()
    at.text_input(key="sel_name").set_value(f"bench{r}")
    at.button(key="sel_save").click()
    _timed(at, "select: save", out)

    at = _page(cache_root, "map", out)
    at.selectbox(key="map_colour").set_value(["rho", "ifd", "ppl", "loss_base"][r % 4])
    _timed(at, "map: colour by score", out)
    at.select_slider(key="map_points").set_value(5000 if r % 2 else 50000)
    _timed(at, "map: points drawn", out)
    at.selectbox(key="map_colour").set_value(f"saved selection: bench{r}")  # kept / dropped by the selection just saved
    _timed(at, "map: colour by saved selection", out)

    at = _page(cache_root, "export", out)
    at.selectbox(key="export_selection").set_value(f"bench{r}")
    _timed(at, "export: pick selection", out)

    _page(cache_root, "jobs", out)


def ensure_cache(root: Path, rows: int, dim: int = 32):
    """The synthetic cache of ``rows`` scored examples (dataset ``bench``) at ``root``: built once, reused when present;
    its score view materialised and its embeddings read once. Returns (view, {"build_s", "materialise_s",
    "embeddings_s"}) -- also used by benchmarks/browser_latency.py."""
    info: dict = {}
    if not (root / "datasets" / "bench" / "meta.json").exists():
        start = time.perf_counter()
        synthetic.build(root, n=rows, dataset="bench", dim=dim, part_rows=10_000, seed=0)
        info["build_s"] = round(time.perf_counter() - start, 1)
    from scoring.store.cache import Cache

    cache = Cache(root)
    start = time.perf_counter()
    view = views.score_view(cache, "bench")
    info["materialise_s"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    view_reads.embedding_matrix(cache, view)
    info["embeddings_s"] = round(time.perf_counter() - start, 2)
    return view, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cache", default=None, help="where to build the synthetic cache (default /tmp/davir-bench-N)")
    parser.add_argument("--dim", type=int, default=32, help="embedding width of the synthetic rows")
    args = parser.parse_args()
    root = Path(args.cache or f"/tmp/davir-bench-{args.rows}")
    view, info = ensure_cache(root, args.rows, args.dim)

    times, warm = Times(), Times()
    start = time.perf_counter()
    run_round(root, 0, view.n_rows, warm)  # imports, loading the view's columns, sorts: once per server process
    info["warmup_round_s"] = round(time.perf_counter() - start, 1)
    for r in range(1, args.repeats + 1):
        run_round(root, r, view.n_rows, times)
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in times.items()), file=sys.stderr)
    p95 = {k: round(float(np.percentile(v, 95)), 1) for k, v in times.items()}
    cpu95 = {k: round(float(np.percentile(v, 95)), 1) for k, v in times.cpu.items()}
    for k, v in p95.items():
        print(f"{k:48s} p95 {v:8.1f} ms   median {np.median(times[k]):8.1f} ms   CPU p95 {cpu95[k]:8.1f} ms")
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    result = {"rows": view.n_rows, "repeats": args.repeats, "p95_ms": p95, "max_p95_ms": max(p95.values()),
              "cpu_p95_ms": cpu95, "max_cpu_p95_ms": max(cpu95.values()), "cpus": os.cpu_count(), "loadavg": load,
              **info}  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""What every page shares: the sidebar (cache, dataset, score run, job progress), the page context, chart specs.

Only rendering lives here; every number comes from ``scoring``. Charts are Vega-Lite specs built as plain dicts
(cheap to build: no figure-object validation on the server) over small aggregated frames.
"""
from __future__ import annotations

import argparse
import functools
import html
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

from scoring.env import cache_dir
from scoring.errors import UserError
from scoring.ingest.catalog import dataset_kind, list_datasets
from scoring.queries.jobs import Progress
from scoring.queries.jobs import progress as job_progress
from scoring.queries.view import log_default
from scoring.scores.tables import pick_job, score_runs
from scoring.scores.views import View, score_view
from scoring.store.cache import Cache
from scoring.store.jobs import Job, list_jobs

STALE_WHILE_RUNNING_S = 5.0  # while parts land, reuse a view this young instead of rebuilding on every rerun
REFRESH_S = 2.0  # how often the progress indicator and the Overview banner refresh while a job runs


@dataclass
class Ctx:
    """The state every page reads: cache, dataset and its score view (None before the first results land)."""

    cache: Cache
    dataset: str | None
    job_id: str | None
    view: View | None
    progress: Progress | None
    problem: str | None = None
    kind: str = "sft"  # the dataset's kind: "sft" or "pair" (preference pairs)

    @property
    def is_pair(self) -> bool:
        return self.kind == "pair"


def default_cache_root() -> str:
    """``--cache DIR`` after ``--`` on the streamlit command line, else ``$DAVIR_CACHE``, else ``./cache``."""
    return str(cache_dir(_cache_argument(tuple(sys.argv[1:]))))


@functools.lru_cache(maxsize=4)
def _cache_argument(argv: tuple[str, ...]) -> str | None:
    """The ``--cache`` of a command line (parsed once per command line: every rerun asks)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--cache")
    return parser.parse_known_args(list(argv))[0].cache


def _run_label(job: Job) -> str:
    return f"{job.id[:8]} · {job.model or '?'} · {job.state}"


def _pick_dataset(names: list[str]) -> str | None:
    """The dataset from the URL on a session's first run (a clear message when unknown), then the selectbox's."""
    wanted = st.query_params.get("dataset")
    _restore("dataset")
    if "_dataset_init" not in st.session_state:
        st.session_state["_dataset_init"] = True
        if wanted and wanted in names:
            st.session_state["dataset"] = wanted
        elif wanted:
            st.session_state["_unknown_dataset"] = wanted
    if st.session_state.get("dataset") not in names:
        st.session_state["dataset"] = names[0] if names else None
    return st.session_state.get("dataset")


def _cache_typed() -> None:
    st.session_state["_cache_typed"] = st.session_state["cache_root"]


def _remember(key: str):
    """Keep a sidebar widget's value under a key of its own (its callback, and after it is drawn). Why: a page that
    draws the sidebar itself (see :func:`ctx`) registers the widget anew, which would reset it to its default."""
    st.session_state["_keep_" + key] = st.session_state.get(key)
    return st.session_state.get(key)


def _restore(key: str) -> None:
    """Before drawing a sidebar widget: its value as last kept by :func:`_remember`."""
    if "_keep_" + key in st.session_state:
        st.session_state[key] = st.session_state["_keep_" + key]


def _cache_root() -> str:
    """The folder typed in "Cache folder" when it exists (or is the one the app started with, which the CLI would
    create too); else an error, and the last good folder stays in use. A typo must not create an empty cache."""
    start = default_cache_root()
    typed = str(st.session_state.get("_cache_typed") or "").strip()
    if typed == start or (typed and Path(typed).expanduser().is_dir()):
        st.session_state["_cache_good"] = typed
        return typed
    good = st.session_state.get("_cache_good", start)
    st.error(f"No cache at {typed or '(empty)'}: check the path (`streamlit run app.py -- --cache DIR` creates "
             f"one). Still using {good}.")  # fmt: skip
    return good


def sidebar() -> Ctx:
    """Render the sidebar and store the page context in the session (pages read it with :func:`ctx`)."""
    # What was typed lives in a key of its own (set by the box's callback), so it survives a page that draws the
    # sidebar itself; the box is refilled from it on every run.
    st.session_state.setdefault("_cache_typed", default_cache_root())
    st.session_state["cache_root"] = st.session_state["_cache_typed"]
    with st.sidebar:
        st.text_input("Cache folder", key="cache_root", on_change=_cache_typed,
                      help="`streamlit run app.py -- --cache DIR`, or $DAVIR_CACHE")  # fmt: skip
        cache = Cache(_cache_root())
        names = [m["name"] for m in list_datasets(cache)]
        dataset = _pick_dataset(names)
        if names:
            st.selectbox("Dataset", names, key="dataset", on_change=_remember, args=("dataset",))
            dataset = _remember("dataset")
            st.query_params["dataset"] = dataset
        else:
            st.info("No dataset yet: start one on the Jobs page, or run `python -m scoring demo --background`.")
        _jobs_indicator(cache)
    unknown = st.session_state.pop("_unknown_dataset", None)
    if unknown:
        listing = ", ".join(names) or "none yet"
        st.error(f"No dataset named {unknown!r} in {cache.root}. Datasets here: {listing}. Showing "
                 f"{dataset or 'nothing'} instead.")  # fmt: skip
    context = _context(cache, dataset)
    st.session_state["_ctx"] = context
    return context


def _context(cache: Cache, dataset: str | None) -> Ctx:
    if not dataset:
        return Ctx(cache, None, None, None, None, "no dataset")
    kind = dataset_kind(cache, dataset)
    progress = job_progress(cache, dataset)
    runs = score_runs(cache, dataset)
    if not runs:
        return Ctx(cache, dataset, None, None, progress, "no scores yet", kind)
    try:
        default = pick_job(cache, dataset).id
    except UserError:
        default = runs[-1].id
    ids = [j.id for j in runs]
    labels = {j.id: _run_label(j) for j in runs}
    _restore("job_id")
    if st.session_state.get("job_id") not in ids:
        st.session_state["job_id"] = default
    with st.sidebar:
        st.selectbox("Score run", ids, key="job_id", format_func=lambda i: labels[i], on_change=_remember,
                     args=("job_id",))  # fmt: skip
    job_id = _remember("job_id")
    try:
        stale = STALE_WHILE_RUNNING_S if progress.active else None
        view = score_view(cache, dataset, job_id, max_age_s=stale)
    except UserError as error:
        return Ctx(cache, dataset, job_id, None, progress, str(error), kind)
    return Ctx(cache, dataset, job_id, view, progress, None, kind)


def _jobs_indicator(cache: Cache) -> None:
    active = [j for j in list_jobs(cache) if j.unfinished]
    if not active:  # a full run draws every page fresh: only a timer rerun of the fragment refreshes the page, so
        st.session_state.pop("_had_active", None)  # a click in the run where the last job ended is not swallowed

    def body() -> None:
        now_active = [j for j in list_jobs(cache) if j.unfinished]
        if not now_active:
            st.caption("No job running.")
            if st.session_state.pop("_had_active", False):
                st.rerun()  # the last job just finished: refresh the whole page once
            return
        st.session_state["_had_active"] = True
        for job in now_active:
            total, done = job.total or 0, job.done or 0
            text = f"{job.kind} {job.dataset}: {job.stage or job.state}"
            if total:
                text += f" — {done:,} / {total:,}"
            st.progress(min(done / total, 1.0) if total else 0.0, text=text)

    st.fragment(body, run_every=REFRESH_S if active else None)()


def ctx() -> Ctx:
    """The context the sidebar stored for this run (app.py draws the sidebar before the page).

    A page can also run without app.py: on a fresh server Streamlit serves a deep link such as ``/evaluate`` from
    its legacy ``pages/`` folder mode until the first ``st.navigation`` call (Streamlit's AppTest does so on every
    run after ``switch_page``). The page then builds the context itself (draws the sidebar) instead of failing on a
    missing or stale one, and ends that mode as ``st.navigation`` does, so app.py frames the session's next run. In a
    browser (a real session has request headers; AppTest's has none and must not rerun, or a click it simulates is
    lost) the page reruns at once, so even the first view of a shared link has app.py's navigation, not the folder's."""
    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        if st.context.headers:
            st.rerun()
        return sidebar()
    if "_ctx" not in st.session_state:
        return sidebar()
    return st.session_state["_ctx"]


def pair_notice(context: Ctx, what: str, stop: bool = True) -> None:
    """On a page made for SFT examples: say clearly that the dataset holds preference pairs, point to the Pairs
    page, and (``stop``) end the page there."""
    if not context.is_pair:
        return
    st.info(f"**{context.dataset}** holds preference pairs (prompt, chosen, rejected): {what} Open the **Pairs** "
            "page for the pair view, the margin distributions and the LossDiff-IRM band.")  # fmt: skip
    st.page_link("pages/pairs.py", label="Open the Pairs page", icon=":material/compare_arrows:")
    if stop:
        st.stop()


def token_html(tokens, values, tips) -> str:
    """Tokens as HTML spans coloured by ``values`` (green > 0, red < 0, grey NaN; scaled to the largest |value|).

    Dataset text is untrusted: every token and tooltip is html-escaped here, the only place tokens become HTML."""
    finite = [abs(v) for v in values if not math.isnan(v)]
    scale = max(finite) if finite else 0.0
    spans = []
    for tok, value, tip in zip(tokens, values, tips):
        shown = html.escape(str(tok)).replace("\n", "↵")
        if math.isnan(value) or scale == 0:
            colour = "rgba(128,128,128,0.15)"
        else:
            a = min(abs(value) / scale, 1.0) * 0.8
            colour = f"rgba(0,160,80,{a:.2f})" if value > 0 else f"rgba(220,50,50,{a:.2f})"
        spans.append(f'<span title="{html.escape(tip, quote=True)}" style="background:{colour};padding:1px 0;'
                     f'white-space:pre-wrap">{shown}</span>')  # fmt: skip
    return '<div style="font-family:monospace;line-height:1.9">' + "".join(spans) + "</div>"


def example_body(ex: dict, left, right) -> None:
    """An example's prompt and response as plain text in ``left`` (dataset text is untrusted: never HTML) and its
    scores with their percentiles in ``right`` (the Inspect, Map and Select panels)."""
    left.markdown("**Prompt**")
    left.code(ex["prompt"], language=None, wrap_lines=True)
    left.markdown("**Response**")
    left.code(ex["response"], language=None, wrap_lines=True)
    right.markdown("**Scores** (percentile among scored rows)")
    right.dataframe(ex["scores"], hide_index=True, column_config={
        "value": st.column_config.NumberColumn(format="%.4g"),
        "percentile": st.column_config.ProgressColumn(min_value=0, max_value=100, format="%.0f")})  # fmt: skip


def need_view(context: Ctx) -> View:
    """The score view, or a clear message and stop when there is none yet."""
    if context.view is not None:
        return context.view
    if context.dataset is None:
        st.info("No dataset in this cache yet. Start one on the **Jobs** page.")
    elif context.progress and context.progress.active:
        p = context.progress
        st.info(f"Scoring {context.dataset}: {p.stage} ({p.done:,} of {p.total:,}). Results appear here as they land.")
    else:
        st.info(f"{context.dataset}: {context.problem}. Start a scoring job on the **Jobs** page.")
    st.stop()


# ---------------------------------------------------------------- chart specs (Vega-Lite dicts)


def facet_bars(df: pd.DataFrame, y: str = "count", color: str | None = None, columns: int = 4,
               width: int = 190) -> dict:
    """Pre-binned histograms (lo, hi, count per score), one small panel per score with its own scales."""
    encoding = {
        "x": {"field": "lo", "type": "quantitative", "bin": {"binned": True}, "title": None},
        "x2": {"field": "hi"},
        "y": {"field": y, "type": "quantitative", "title": None, **({"stack": True} if color else {})},
        "tooltip": [{"field": "lo", "format": ".3g"}, {"field": "hi", "format": ".3g"}, {"field": y}],
    }
    if color:
        encoding["color"] = {"field": color, "type": "nominal", "title": None,
                             "scale": {"domain": ["kept", "dropped"], "range": ["#1f77b4", "#c8c8c8"]}}
        encoding["order"] = {"field": color, "sort": "descending"}
    return {
        "facet": {"field": "score", "type": "nominal", "title": None},
        "columns": columns,
        "spec": {"width": width, "height": 110 if width < 300 else 150, "mark": {"type": "bar"}, "encoding": encoding},
        "resolve": {"scale": {"x": "independent", "y": "independent"}},
    }


def facet_lines(df: pd.DataFrame, columns: int = 4) -> dict:
    """ECDF curves (value, fraction per score), one panel per score."""
    return {
        "facet": {"field": "score", "type": "nominal", "title": None},
        "columns": columns,
        "spec": {
            "width": 190, "height": 110, "mark": {"type": "line", "interpolate": "step-after"},
            "encoding": {"x": {"field": "value", "type": "quantitative", "title": None},
                         "y": {"field": "fraction", "type": "quantitative", "title": None}},
        },  # fmt: skip
        "resolve": {"scale": {"x": "independent"}},
    }


def facet_points(x: str, y: str, columns: int = 4, width: int = 190, log: bool = False) -> dict:
    """Scatter panels of ``y`` against ``x`` over a long frame (one row per point and score: id, score, x, y), one
    panel per score with its own x scale and a shared y (``log``: symmetric-log axes, for signed values)."""
    scale = {"type": "symlog"} if log else {"zero": False}
    return {
        "facet": {"field": "score", "type": "nominal", "title": None},
        "columns": columns,
        "spec": {
            "width": width, "height": 150, "mark": {"type": "point", "filled": True, "opacity": 0.6, "size": 18},
            "encoding": {"x": {"field": x, "type": "quantitative", "title": None, "scale": scale},
                         "y": {"field": y, "type": "quantitative", "title": y, "scale": scale},
                         "tooltip": [{"field": "id"}, {"field": x, "format": ".4g"}, {"field": y, "format": ".4g"}]},
        },
        "resolve": {"scale": {"x": "independent"}},
    }


def log_scores(view: View, scores: list[str], key: str) -> list[str]:
    """The "Log scale" control of a chart over several scores: those binned / drawn on log10 of their positive
    values; by default the ppl-like ones (scoring.queries.view.log_default: perplexity by name or heavy-tailed)."""
    why = "Drawn on log10 of the positive values (bins computed on log10 in DuckDB); values ≤ 0 are left out and " \
          "counted below the chart."
    return st.multiselect("Log scale for", scores, default=[s for s in scores if log_default(view, s)], key=key, help=why)


def log_note(frame: pd.DataFrame) -> None:
    """Under a chart drawn on log10 values: how many values ≤ 0 each log-scaled score left out."""
    skipped = {name: n for name, n in frame.attrs.get("non_positive", {}).items() if n}
    if skipped:
        st.caption("Left out of the log scale (values ≤ 0): "
                   + ", ".join(f"{name} {n:,}" for name, n in skipped.items()) + ".")  # fmt: skip


def heatmap(matrix: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    long = matrix.reset_index(names="a").melt(id_vars="a", var_name="b", value_name="spearman")
    spec = {
        "height": 34 * max(len(matrix), 1),
        "encoding": {"x": {"field": "b", "type": "nominal", "title": None, "sort": list(matrix.columns),
                           "axis": {"labelOverlap": False, "labelAngle": -45}},
                     "y": {"field": "a", "type": "nominal", "title": None, "sort": list(matrix.index),
                           "axis": {"labelOverlap": False}}},
        "layer": [
            {"mark": "rect", "encoding": {"color": {"field": "spearman", "type": "quantitative",
                                                    "scale": {"domain": [-1, 1], "scheme": "redblue"}}}},
            {"mark": {"type": "text", "fontSize": 11},
             "encoding": {"text": {"field": "spearman", "type": "quantitative", "format": ".2f"}}},
        ],
    }  # fmt: skip
    return long, spec


def example_link(dataset: str, example_id: str) -> str:
    from urllib.parse import urlencode

    return "/inspect?" + urlencode({"dataset": dataset, "example": example_id})


class Prebuilt(go.Figure):
    """A Plotly figure spec (a plain dict of known-good parts) that ``st.plotly_chart`` draws as it is.

    Why: given a ``go.Figure``, Streamlit calls its ``to_dict()``, which deep-copies every array and merges the
    default template (~30-60 ms per chart of 1,000 points, three charts per rerun on Select); given a dict, it
    validates it in full, which costs more. This Figure skips both: ``to_dict()`` returns the spec. Build specs
    only from numbers and escaped strings, as the pages do."""

    def __init__(self, spec: dict):  # no go.Figure.__init__: nothing to validate, nothing to copy
        object.__setattr__(self, "_spec", spec)

    def to_dict(self) -> dict:
        return self._spec

    def __repr__(self) -> str:
        return f"Prebuilt({len(self._spec.get('data', []))} traces)"
